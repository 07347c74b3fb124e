"""The service: builds the object graph once (config → model set → platform → governor →
executor) and answers what the sockets ask. The only module that wires the rooms."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import platforms
from governor import Budget, Governor, build_space, levels_from_manifest
from models import ModelSet, ModelSetError, zoo
from platforms.owner import Ownership

from . import profiler, state
from .config import KEY_DOCS, Config, ConfigError
from .executor import Executor
from .metrics import Counters
from .protocol import InferRequest, InputSpec, ProtocolError

log = logging.getLogger("dnnscale.service")
BUDGET_FILE = "budget.json"
# Configuration keys a reload applies; the others need a restart (sockets, the board, the
# profile's space, the queue sizes the server was built with).
LIVE_KEYS = ("model", "threads", "batch_requests", "log_level", "profile_runs")


def lanes_for(platform, threads: Optional[int] = None, have: Optional[set] = None) -> Dict[str, int]:
    """CPU target → onnxruntime threads: one per CPU it runs on (online, and among ``have``,
    the CPUs this process may use: the calling thread's by default, so a caller whose thread
    a pin has narrowed passes the process's own), at most ``threads`` where given. Pinned to
    one CPU, a 2-thread pool would time-share it (p90 5x the median, docs/model-set.md)."""
    if platform.simulated:        # latency is the board model's: one session set
        return {}
    have = os.sched_getaffinity(0) if have is None else have
    out = {}
    for name, t in platform.targets.items():
        if t.kind == "cpu" and t.cpus:
            n = len(set(t.online) & have) or 1
            out[name] = min(n, threads) if threads else n
    return out


class Service:
    """Wired by the constructor, acted by :meth:`start`, undone by :meth:`stop` (which undoes
    whatever ``start`` got to, so one ``finally`` covers every exit path)."""

    def __init__(self, cfg: Config, progress=None, remeasure: bool = False,
                 stop_event: Optional[threading.Event] = None,
                 config_loader: Optional[Callable[[], Config]] = None):
        """``remeasure``: measure a profile even when a stored one matches (dnnscale profile).
        ``stop_event``: set by SIGTERM; a start-up profile stops at the next configuration.
        ``config_loader``: reads the configuration again (reload); None keeps ``cfg``."""
        self.cfg = cfg
        self.config_loader = config_loader
        self.progress = progress
        self.remeasure = remeasure
        self.stop_event = stop_event or threading.Event()
        self.lock = threading.RLock()     # the governor and the platform: see executor.py
        self.started = time.time()
        self.errors: Dict[str, int] = {}
        self.served = 0
        self.counters = Counters()
        self.platform = None
        self.models: Optional[ModelSet] = None
        self.governor: Optional[Governor] = None
        self.executor: Optional[Executor] = None
        self.gpu_reason = ""
        self._platform_started = False
        # The CPUs the process may use, taken before any thread is pinned to a target: a
        # reload runs on a thread a pin may have narrowed to one cluster.
        self.cpus_allowed = set(os.sched_getaffinity(0))
        self.owner = Ownership()                 # the state directory's lock

    def start(self) -> None:
        """Load, probe and (where no stored profile matches) profile; raises ConfigError,
        ModelSetError or Interrupted with one line. The board is touched only after the
        model set loaded, and only through the platform, which :meth:`stop` restores."""
        cfg = self.cfg
        self.model_dir = zoo.resolve(cfg.model)
        try:
            platform = platforms.create(cfg.platform, root=cfg.sysfs_root, state_dir=cfg.state_dir)
        except (ValueError, platforms.PlatformError) as e:
            raise ConfigError(str(e))
        if not cfg.dvfs:
            platform.disable_dvfs("DVFS is off in the configuration (dvfs: false)")
        elif platform.dvfs_enabled:
            acc = platform.access()      # said at start, not after the first refused write
            if acc["dvfs"] and not any(acc["dvfs"].values()):
                platform.disable_dvfs("this user (%s) cannot write %s: %s" % (
                    acc["user"], acc["dvfs_blocked"], acc["remedy"]))
        doing = "dnnscale profile" if self.remeasure else "dnnscale serve"
        try:
            os.makedirs(cfg.state_dir, exist_ok=True)   # to lock it (check_writable says why it cannot be)
        except OSError:
            pass
        try:        # one owner per state directory and board, before a crash record is restored
            self.owner.claim(cfg.state_dir, "the state directory %s" % cfg.state_dir, doing)
            platform.claim(doing)
        except platforms.PlatformError as e:
            platform.release()
            self.owner.release()
            raise ConfigError(str(e))
        self.platform = platform
        for err in self.platform.restore_pending():   # what a crashed run left, before anything else
            log.error("could not restore a setting left by an earlier run: %s", err)
        state.check_writable(cfg.state_dir)
        want_gpu = cfg.gpu and "gpu" in self.platform.targets and not self.platform.simulated
        self.models = self._load_models(self.model_dir, cfg.threads, want_gpu)
        self.targets = self._usable_targets()
        self.levels = levels_from_manifest(self.models.manifest)
        self._platform_started = True
        self.platform.start()
        self.space = self._space()
        self.profile_key = profiler.key(self.models.manifest, self.platform.name, self.space)
        self.profile_per_frequency = any(c.freq_khz for c in self.space)   # the stored profile's kind
        profile = None if self.remeasure else profiler.load(cfg.state_dir, self.profile_key, self.targets)
        self.executor = Executor(self.models, self.platform, None, lock=self.lock)
        self.executor.on_dvfs_off = self._dvfs_off
        if profile is None:
            log.info("measuring a profile (%d runs per configuration)%s", cfg.profile_runs,
                     "" if self.remeasure else ": no stored one matches")
            profile = profiler.measure(self.executor, self.space, self.levels, runs=cfg.profile_runs,
                                       progress=self.progress, stop=self.stop_event)
            try:
                profiler.save(cfg.state_dir, profile, self.profile_key)   # later starts reuse it
            except OSError as e:
                log.error("could not save the profile in %s (%s): the next start measures again",
                          cfg.state_dir, e.strerror or e)
            for err in self.platform.reset():   # serve from the board's own settings
                log.error("could not restore after profiling: %s", err)
            self.executor.applied = None
            self.executor.freq_read.clear()
        self.full_profile = profile
        if not self.platform.dvfs_enabled and any(c.freq_khz for c in self.space):   # it failed while profiling
            profile = profile.at_fixed_frequency(self.frequencies())
            self.space = self._space()
        self.governor = Governor(self.space, self.levels, profile)
        self.executor.governor = self.governor
        self._load_budget()

    def frequencies(self) -> Dict[str, Optional[int]]:
        """target → the frequency the kernel reports now (kHz), None without control."""
        now = {}
        for n in self.targets:
            try:
                now[n] = self.platform.frequency(n)
            except platforms.PlatformError:
                now[n] = None
        return now

    def _space(self):
        freqs = {n: (t.freqs_khz if self.platform.dvfs_enabled else []) for n, t in self.targets.items()}
        return build_space(self.levels, freqs)

    def _dvfs_off(self) -> None:
        """DVFS failed (and was rolled back): from now on the space has no frequencies, each
        target predicted at the frequency the kernel reports for it now. Called under the lock."""
        if self.governor is None:      # while profiling: start() rebuilds the space after it
            return
        self.space = self._space()
        old = self.governor
        gov = Governor(self.space, self.levels, self.full_profile.at_fixed_frequency(self.frequencies()))
        if old is not None:
            gov.set_budget(old.budget)
            pin = {k: v for k, v in old.pinned.items() if k != "freq_khz"}
            if pin:
                gov.pin(level=pin.get("groups"), target=pin.get("target"))
        self.governor = self.executor.governor = gov

    def _default_threads(self) -> int:
        """One onnxruntime thread per CPU of the largest CPU target (a cluster): pinned to a
        4-core cluster, 8 threads would share 4 cores (XU3)."""
        have = len(self.cpus_allowed)
        sizes = [len(t.cpus) for t in self.platform.targets.values() if t.cpus]
        if self.platform.simulated or not sizes:
            return have
        return max(1, min(have, max(sizes)))

    def _load_models(self, model_dir: str, threads: Optional[int], gpu: bool) -> ModelSet:
        """The model set as start and reload both load it: a pool per lane, sized to its CPUs."""
        return ModelSet.load(model_dir, threads=threads or self._default_threads(), gpu=gpu,
                             lanes=lanes_for(self.platform, threads, self.cpus_allowed))

    def _usable_targets(self):
        targets = dict(self.platform.targets)
        if "gpu" in targets and not self.platform.simulated and "gpu" not in self.models.targets:
            targets.pop("gpu")
            self.gpu_reason = ("gpu is not a target: %s" % ("disabled in the configuration (gpu: false)"
                               if not self.cfg.gpu else "the installed onnxruntime has no CUDA/TensorRT "
                               "execution provider (see docs/deployment.md)"))
            log.warning("%s", self.gpu_reason)
        return targets

    # ------------------------------------------------------------------ inference
    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.models.input_shape, self.models.groups, self.cfg.max_batch)

    def infer(self, reqs: List[InferRequest],
              send: Optional[Callable[[List[Tuple[Dict, np.ndarray]]], None]] = None) -> List[Tuple[Dict, np.ndarray]]:
        """Run requests that share dtype, groups and deadline as one batch; one reply each.
        Each reply carries the batch's latency and its own share of the batch's energy.
        ``send`` gets the replies as soon as they exist; the governor and the counters learn
        from the run after it returns, so their work is not in the client's round trip."""
        r0 = reqs[0]
        x = np.concatenate([r.tensor for r in reqs]) if len(reqs) > 1 else r0.tensor
        if r0.dtype == "uint8":
            x = self.models.preprocess(x)
        logits, info, ran = self.executor.run(x, groups=r0.groups, deadline_ms=r0.deadline_ms)
        out, start, n = [], 0, len(x)
        for r in reqs:
            k = len(r.tensor)
            part = logits[start:start + k]
            start += k
            labels = part.argmax(1).tolist()
            head = {"id": r.id, "ok": True, "labels": labels, "names": [self.models.classes[i] for i in labels]}
            head.update(info)
            if info["energy_mj"] is not None and len(reqs) > 1:
                head["energy_mj"] = round(info["energy_mj"] * k / n, 4)
            out.append((head, part))
        if send is not None:
            send(out)
        self.served += len(reqs)
        self.counters.observe(len(reqs), n, info["latency_ms"] / 1e3, self.executor.last_limit_ms, info["energy_mj"])
        self.executor.learn(ran)
        return out

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    # ------------------------------------------------------------------ control
    def control(self, cmd: str, args: Dict[str, Any]) -> Dict:
        """One control command. A refused command changes nothing (checked, saved, then applied)."""
        if cmd == "status":
            return self.status()
        if cmd == "reload":
            return self.reload()
        with self.lock:
            if cmd == "set_budget":
                try:
                    budget = Budget(**args).validate()
                except (TypeError, ValueError) as e:
                    raise ProtocolError("bad_budget", str(e))
                if budget.empty:
                    raise ProtocolError("bad_budget", "give at least one of latency_ms, energy_mj, power_w "
                                                      "(or use clear_budget)")
                reply = self._set_budget(budget)
                if budget.energy_mj is not None or budget.power_w is not None:
                    if not self.energy_measured:
                        reply["warning"] = ("nothing measures energy here (%s): the energy/power part of the "
                                            "budget cannot be enforced" % self.energy_reason)
                return reply
            if cmd == "clear_budget":
                return self._set_budget(Budget())
            if cmd == "pin":
                return self._pin(args)
            if cmd == "release":
                replaced = dict(self.governor.pinned)
                self.governor.release()
                return {"pinned": {}, "released": replaced}
        raise ProtocolError("unknown_command", cmd)

    def _set_budget(self, budget: Budget) -> Dict:
        previous = self.governor.budget.to_dict()
        try:
            state.write_json(self._budget_path(), budget.to_dict())   # saved first: a full disk changes nothing
        except OSError as e:
            raise ProtocolError("state_unwritable", "could not save the budget in %s (%s); the budget is "
                                "unchanged" % (self.cfg.state_dir, e.strerror or e))
        self.governor.set_budget(budget)
        return {"budget": self.governor.budget.to_dict(), "replaced": previous}

    def _pin(self, args: Dict[str, Any]) -> Dict:
        g, t, f = args.get("groups"), args.get("target"), args.get("freq_khz")
        if g is None and t is None and f is None:
            raise ProtocolError("bad_pin", "pin needs at least one of groups, target, freq_khz "
                                           "(release removes a pin)")
        n = self.models.groups
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= n):
            raise ProtocolError("bad_pin", "groups must be an integer in 1..%d, got %r" % (n, g))
        if t is not None and (not isinstance(t, str) or t not in self.targets):
            raise ProtocolError("bad_pin", "target must be one of %s, got %r" % (", ".join(self.targets), t))
        if f is not None:
            if isinstance(f, bool) or not isinstance(f, int) or not 0 < f < 10 ** 9:
                raise ProtocolError("bad_pin", "freq_khz must be a positive integer (kHz), got %r" % (f,))
            have = sorted({c.freq_khz for c in self.space if c.freq_khz is not None
                           and (t is None or c.target == t)})
            if not have:
                raise ProtocolError("bad_pin", "no frequency can be pinned: %s" % (
                    self.platform.dvfs_reason or "the target has no frequency control"))
            if f not in have:
                raise ProtocolError("bad_pin", "%d MHz (%d kHz) is not an available frequency%s; choose from %s MHz"
                                    % (f // 1000, f, "" if t is None else " of " + t,
                                       ", ".join("%g" % (x / 1000) for x in have)))
        replaced = dict(self.governor.pinned)
        try:
            self.governor.pin(level=g, target=t, freq_khz=f)
        except ValueError as e:
            raise ProtocolError("bad_pin", "%s (targets: %s)" % (e, ", ".join(self.targets)))
        # Take effect now: a user who pins 1200 MHz reads 1200 MHz back, not after the next inference.
        self.executor.apply(self.governor.decide().config)
        reply = {"pinned": self.governor.pinned, "replaced": replaced}
        if self.governor.current is not None:
            reply["config"] = self.executor.reported(self.governor.space[self.governor.current])
        return reply

    def reload(self) -> Dict:
        """Re-read the configuration file, re-verify and reload the model set (with the
        same lanes as start: one onnxruntime pool per target, sized to its CPUs) and the
        stored profile, and retry DVFS if a failure had turned it off; on failure keep
        serving with what is loaded and say why. The one reload path: the control command and
        SIGHUP both come here. Keys that need new sockets, a new board or a new profile space
        are named in ``needs_restart`` and left as they are."""
        cfg, needs_restart = self.cfg, []
        if self.config_loader is not None:
            try:
                cfg = self.config_loader()
            except ConfigError as e:
                raise ProtocolError("reload_failed", "kept the running configuration: %s" % e)
            needs_restart = [k for k in KEY_DOCS if k not in LIVE_KEYS and getattr(cfg, k) != getattr(self.cfg, k)]
            if needs_restart:
                log.warning("reload: %s changed in the configuration; a restart applies %s",
                            ", ".join(needs_restart), "them" if len(needs_restart) > 1 else "it")
        try:
            model_dir = zoo.resolve(cfg.model)
            models = self._load_models(model_dir, cfg.threads, "gpu" in self.models.targets)
        except ModelSetError as e:
            raise ProtocolError("reload_failed", "kept the loaded model set: %s" % e)
        except Exception as e:   # onnxruntime's own errors, a bug in validation: never fatal
            log.exception("reload failed")
            raise ProtocolError("reload_failed", "kept the loaded model set: %s: %s" % (type(e).__name__, e))
        if models.groups != self.models.groups or models.input_shape != self.models.input_shape \
                or models.classes != self.models.classes:
            raise ProtocolError("reload_failed", "kept the loaded model set: the new one differs in its levels, "
                                "input or classes (restart the daemon to change models)")
        with self.lock:
            self.models = self.executor.models = models
            self.model_dir = model_dir
            for k in LIVE_KEYS:            # the object the server reads too
                setattr(self.cfg, k, getattr(cfg, k))
            logging.getLogger().setLevel(getattr(logging, self.cfg.log_level.upper(), logging.INFO))
            log.debug("reload: %s", ", ".join("%s=%s" % (k, getattr(self.cfg, k)) for k in LIVE_KEYS))
            if self.platform.dvfs_error and self.cfg.dvfs and self.platform.dvfs_error.startswith("frequency"):
                self.platform.dvfs_error = None
                self.space = self._space()
                gov = Governor(self.space, self.levels, self.full_profile)
                gov.set_budget(self.governor.budget)
                self.governor = self.executor.governor = gov
            profile = profiler.load(self.cfg.state_dir, self.profile_key, self.targets)
            if profile is not None:        # a new profile applies whether DVFS is on or off
                self.full_profile = profile
                if self.profile_per_frequency and not any(c.freq_khz for c in self.space):
                    profile = profile.at_fixed_frequency(self.frequencies())
                self.governor.set_profile(profile)
            return {"model": self.models.name, "profile": self.governor.profile.source,
                    "profile_created": getattr(self.governor.profile, "created", None),
                    "dvfs": bool(self.platform.dvfs_enabled), "needs_restart": needs_restart}

    @property
    def energy_measured(self) -> bool:
        return getattr(self.platform, "meter", None) is not None or bool(self.platform.simulated)

    @property
    def energy_reason(self) -> str:
        return getattr(self.platform, "energy_reason", "") or "no power sensor"

    def status(self) -> Dict:
        p = self.platform
        with self.lock:
            s = self.governor.status()
            if s.get("config"):
                s["config"] = self.executor.reported(self.governor.space[self.governor.current])
        freqs = self.frequencies()
        s.update({
            "platform": p.name,
            "simulated": bool(p.simulated),
            "targets": {n: {"kind": t.kind, "cpus": t.cpus, "offline": list(getattr(t, "offline", [])),
                            "freqs_khz": t.freqs_khz if p.dvfs_enabled else [],
                            "onnxruntime_threads": self.models.threads_of(n)}
                        for n, t in self.targets.items()},
            "frequencies_khz": freqs,
            "gpu": self.gpu_reason or ("available" if "gpu" in self.targets else "none"),
            "dvfs": {"enabled": bool(p.dvfs_enabled), "reason": p.dvfs_reason},
            "mapping": {"ok": not self.executor.mapping_error, "reason": self.executor.mapping_error},
            "energy": {"available": self.energy_measured, "reason": "" if self.energy_measured else self.energy_reason},
            "temperatures_c": p.temperatures(),
            "model": {"name": self.models.name, "kind": self.models.kind, "levels": self.models.groups,
                      "shares_weights": bool(self.models.manifest.get("shares_weights", False)),
                      "accuracy": [l.accuracy for l in self.levels], "onnxruntime_pool": self.models.pool,
                      "input_shape": list(self.models.input_shape), "classes": list(self.models.classes)},
            "max_batch": self.cfg.max_batch,
            "infer_endpoint": self.cfg.infer_endpoint,
            "profile_file": os.path.join(self.cfg.state_dir, profiler.PROFILE_FILE),
            "profile_created": getattr(self.governor.profile, "created", None),
            "state_dir": self.cfg.state_dir,
            "served": self.served,
            "images": self.counters.images,
            "errors": dict(self.errors),
            "connections": self.fd_guard_status(),
            "uptime_s": round(time.time() - self.started, 1),
        })
        b = s["budget"]
        if (b.get("energy_mj") is not None or b.get("power_w") is not None) and not self.energy_measured:
            s["feasible"] = None
            s["budget_warning"] = "the energy/power budget cannot be enforced: %s" % self.energy_reason
        return s

    fd_guard = None   # the server's FdGuard, set when it binds

    def fd_guard_status(self) -> Optional[Dict]:
        g = self.fd_guard
        if g is None:
            return None
        return {"fd_limit": g.limit, "fds_open": g.count(), "fds_peak": g.peak, "refusing": g.hidden,
                "refused_periods": g.trips}

    # ------------------------------------------------------------------ state
    def _budget_path(self) -> str:
        return os.path.join(self.cfg.state_dir, BUDGET_FILE)

    def _load_budget(self) -> None:
        try:
            self.governor.set_budget(Budget(**state.read_json(self._budget_path())))
            log.info("budget restored from %s: %s", self._budget_path(), self.governor.budget.to_dict())
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as e:
            log.error("ignoring the stored budget %s: %s", self._budget_path(), e)

    def stop(self) -> List[str]:
        """Undo whatever :meth:`start` got to: the board's settings, sensors and affinity;
        then give up the board and the state directory."""
        if self.platform is None:
            return []
        try:
            if self._platform_started:
                return self.platform.stop()
            return self.platform.reset()   # before start(): only what restore_pending left to undo
        finally:
            self.platform.release()
            self.owner.release()

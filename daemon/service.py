"""The service: builds the object graph (config → platform → executor, and the runtime:
model set, space, profile, governor, through daemon/runtime.py) and answers what the sockets
ask. With runtime.py, the only place that wires the rooms."""
from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import platforms
from governor import Budget, levels_from_manifest
from models import ModelSetError
from models.modelset import softmax
from platforms.owner import Ownership

from . import profiler, state
from .commands import COMMANDS
from .config import KEY_DOCS, Config, ConfigError
from .executor import Executor, Ran
from .metrics import Counters
from .protocol import InferRequest, InputSpec, ProtocolError
from .runtime import Builder, Runtime, same_profile

log = logging.getLogger("dnnscale.service")
BUDGET_FILE = "budget.json"
# Configuration keys a reload applies; the others need a restart (sockets, the board, the
# profile's space, the queue sizes the server was built with).
LIVE_KEYS = ("model", "threads", "batch_requests", "log_level", "profile_runs", "stop_at")
RELOAD_SWITCH_S = 0.0002     # the interpreter's thread switch interval while a reload loads
DVFS_RETRY_S = 5.0           # a target whose frequency write failed is tried again after this,
DVFS_RETRY_MAX_S = 300.0     # doubling at each failure up to this


def _settle_heap() -> None:
    """Collect now, in the calling (control) thread, and freeze what survives: the objects
    of a loaded runtime live as long as it does, and a full collection that scans them (5-9 ms
    on this VM) would otherwise run in whichever thread trips it, often the inference thread."""
    gc.collect()
    gc.freeze()


class AnytimeStats:
    """What anytime requests at one ``stop_at`` did: how many images stopped at each level,
    and the share of the decided level's MACs they ran (``work``, a moving average from 1:
    the governor decides for ``limit / work``, so that the mean meets the budget)."""

    def __init__(self) -> None:
        self.runs = self.images = 0
        self.groups: Dict[int, int] = {}
        self.work = 1.0

    def observe(self, stopped: np.ndarray, k_max: int, levels) -> None:
        macs = {l.level: l.macs for l in levels}
        for g in stopped.tolist():
            self.groups[int(g)] = self.groups.get(int(g), 0) + 1
        frac = float(np.mean([macs[int(g)] for g in stopped])) / macs[k_max]
        self.work = 0.8 * self.work + 0.2 * frac
        self.runs += 1
        self.images += len(stopped)

    def to_dict(self) -> Dict:
        return {"runs": self.runs, "images": self.images, "groups": {str(k): n for k, n in sorted(self.groups.items())},
                "work": round(self.work, 4)}


class Service:
    """Wired by the constructor, acted by :meth:`start`, undone by :meth:`stop` (which undoes
    whatever ``start`` got to, so one ``finally`` covers every exit path). What serves is one
    :class:`~daemon.runtime.Runtime` (``self.rt``), built by the one :class:`Builder` at
    start, at a reload and when DVFS is lost, and swapped under ``lock``."""

    def __init__(self, cfg: Config, progress=None, remeasure: bool = False,
                 stop_event: Optional[threading.Event] = None,
                 config_loader: Optional[Callable[[], Config]] = None,
                 board: Optional[Dict[str, Any]] = None):
        """``remeasure``: measure a profile even when a stored one matches (dnnscale profile).
        ``stop_event``: set by SIGTERM; a start-up profile stops at the next configuration.
        ``config_loader``: reads the configuration again (reload); None keeps ``cfg``.
        ``board``: keyword arguments for :func:`platforms.create` (a test's kernel double)."""
        self.cfg = cfg
        self.config_loader = config_loader
        self.progress = progress
        self.remeasure = remeasure
        self.stop_event = stop_event or threading.Event()
        self.board = board or {}
        self.lock = threading.RLock()     # the runtime, the governor and the platform: see executor.py
        self.started = time.monotonic()
        self.errors: Dict[str, int] = {}
        self.served = 0
        self.counters = Counters()
        self.anytime: Dict[Optional[float], AnytimeStats] = {}   # per stop_at
        self.platform: Optional[platforms.Platform] = None
        self.rt: Optional[Runtime] = None
        self.executor: Optional[Executor] = None
        self._platform_started = False
        # The CPUs the process may use, taken before any thread is pinned to a target: a
        # reload runs on a thread a pin may have narrowed to one cluster.
        self.cpus_allowed = set(os.sched_getaffinity(0))
        self.owner = Ownership()                 # the state directory's lock
        self._dvfs_retry_at: Dict[str, float] = {}   # target → when to try its frequency control again
        self._dvfs_backoff: Dict[str, float] = {}

    # the runtime's parts, for readers (status, metrics, the CLI)
    models = property(lambda self: self.rt.models)
    governor = property(lambda self: self.rt.governor)
    targets = property(lambda self: self.rt.targets)

    def start(self) -> None:
        """Load, probe and (where no stored profile matches) profile; raises ConfigError,
        ModelSetError or Interrupted with one line. The board is touched only after the
        model set loaded, and only through the platform, which :meth:`stop` restores."""
        cfg = self.cfg
        try:
            platform = platforms.create(cfg.platform, root=cfg.sysfs_root, state_dir=cfg.state_dir, **self.board)
        except (ValueError, platforms.PlatformError) as e:
            raise ConfigError(str(e))
        if not cfg.dvfs:
            platform.disable_dvfs("config", "DVFS is off in the configuration (dvfs: false)")
        elif platform.dvfs_enabled:
            acc = platform.access()      # said at start, not after the first refused write
            for target, ok in acc["dvfs"].items():
                if not ok:               # that target's files; a target this user can write keeps DVFS
                    platform.disable_dvfs("access", "this user (%s) cannot write %s: %s" % (
                        acc["user"], acc["dvfs_blocked_by"][target], acc["remedy"]), target=target)
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
        for err in platform.restore_pending():   # what a crashed run left, before anything else
            log.error("could not restore a setting left by an earlier run: %s", err)
        state.check_writable(cfg.state_dir)
        self.builder = Builder(platform, self.cpus_allowed)
        models, model_dir = self.builder.load_models(cfg.model, cfg.threads, cfg.gpu)
        self._platform_started = True
        platform.start()
        self.executor = Executor(platform, lock=self.lock)
        targets = self.builder.targets(models, cfg.gpu)[0]
        levels = levels_from_manifest(models.manifest)
        space = self.builder.space(levels, targets)
        self.profile_key = profiler.key(models.manifest, platform.name, space)
        per_frequency = any(c.freq_khz for c in space)     # the stored profile's kind
        profile = None if self.remeasure else profiler.load(cfg.state_dir, self.profile_key, targets)
        if profile is None:
            log.info("measuring a profile (%d runs per configuration)%s", cfg.profile_runs,
                     "" if self.remeasure else ": no stored one matches")
            profile = profiler.measure(self.executor, models, space, levels, runs=cfg.profile_runs,
                                       progress=self.progress, stop=self.stop_event,
                                       columns=lambda p: self.builder.columns(models, targets, levels, p, cfg.threads))
            try:
                profiler.save(cfg.state_dir, profile, self.profile_key)   # later starts reuse it
            except OSError as e:
                log.error("could not save the profile in %s (%s): the next start measures again",
                          cfg.state_dir, e.strerror or e)
            for err in platform.reset():   # serve from the board's own settings
                log.error("could not restore after profiling: %s", err)
            self.executor.applied = None
            self.executor.freq_read.clear()
        self.rt = self.builder.build(models, model_dir, cfg.gpu, profile, per_frequency, threads=cfg.threads)
        if self.rt.gpu_reason:
            log.warning("%s", self.rt.gpu_reason)
        self._load_budget()
        _settle_heap()

    def frequencies(self) -> Dict[str, Optional[int]]:
        """target → the frequency the kernel reports now (kHz), None without control."""
        return self.builder.frequencies(self.rt.targets)

    def _rebuild(self, models=None, model_dir=None, profile=None) -> Runtime:
        """The runtime rebuilt by the builder (under the lock): what changed given, the rest
        as the serving runtime has it; the serving governor hands over (carry_over)."""
        old = self.rt
        return self.builder.build(models or old.models, model_dir or old.model_dir, self.cfg.gpu,
                                  profile or old.profile, old.per_frequency, previous=old.governor,
                                  threads=self.cfg.threads)

    # ------------------------------------------------------------------ inference
    @property
    def input_spec(self) -> InputSpec:
        ms = self.models
        why = ms.no_columns and "it cannot stop early: " + ms.no_columns
        return InputSpec(ms.input_shape, ms.groups, self.cfg.max_batch, why, self.cfg.stop_at)

    def infer(self, reqs: List[InferRequest], emit=None) -> Tuple[List[Tuple[Dict, np.ndarray]], Ran]:
        """Run requests that share dtype, groups, deadline, stop_at and progressive as one batch
        (``emit``: sends a progressive request's replies before the last): one reply each,
        and the run for :meth:`learn`, which the caller calls once the replies are out (so the
        governor's and the counters' work is not in the client's round trip). Each reply
        carries the batch's latency and its own share of the batch's energy."""
        rt = self.rt
        r0 = reqs[0]
        x = np.concatenate([r.tensor for r in reqs]) if len(reqs) > 1 else r0.tensor
        if r0.dtype == "uint8":
            x = rt.models.preprocess(x)
        if r0.anytime:
            return self._infer_anytime(rt, reqs, x, emit)
        logits, info, ran = self.executor.run(rt, x, groups=r0.groups, deadline_ms=r0.deadline_ms)
        return self._replies(rt, reqs, logits, info), ran

    @staticmethod
    def _replies(rt: Runtime, reqs: List[InferRequest], logits: np.ndarray, info: Dict,
                 more=None) -> List[Tuple[Dict, np.ndarray]]:
        """One reply per request of a batch: its rows of the logits, their labels and class
        names, the batch's ``info`` (config, latency) with its own share of the energy;
        ``more(a, b)``: the further fields of the request whose images are rows a..b-1."""
        out, start, n = [], 0, len(logits)
        for r in reqs:
            m = len(r.tensor)
            part = logits[start:start + m]
            labels = part.argmax(1).tolist()
            head = {"id": r.id, "ok": True, "labels": labels, "names": [rt.models.classes[i] for i in labels]}
            if more is not None:
                head.update(more(start, start + m))
            head.update(info)
            if info["energy_mj"] is not None and len(reqs) > 1:
                head["energy_mj"] = round(info["energy_mj"] * m / n, 4)
            out.append((head, part))
            start += m
        return out

    def _infer_anytime(self, rt: Runtime, reqs: List[InferRequest], x: np.ndarray, emit):
        """Anytime requests (``stop_at``, ``progressive``): one run adding a group at a time;
        a progressive request gets a reply per level before the final one (``emit``)."""
        r0 = reqs[0]
        tau = r0.stop_at
        stats = self.anytime.setdefault(tau, AnytimeStats())

        def replies(k, logits, stopped, info, final):
            prob = [round(p, 6) for p in softmax(logits).max(1).tolist()]
            groups = [int(g) or k for g in stopped]         # 0: still going, at k so far

            def more(a, b):
                d = {"probabilities": prob[a:b], "groups_per_image": groups[a:b]}
                return dict(d, level=k, final=final) if r0.progressive else d
            # the rows are encoded (copied) before the run goes on and changes them
            return self._replies(rt, reqs, logits, info, more)

        def on_level(k, logits, stopped, info):
            if not stopped.all():
                emit(replies(k, logits, stopped, info, False))
        logits, stopped, info, ran = self.executor.run_anytime(
            rt, x, tau, groups=r0.groups, deadline_ms=r0.deadline_ms, work=stats.work,
            on_level=on_level if r0.progressive and emit is not None else None)
        stats.observe(stopped, ran.decision.config.level, rt.levels)
        return replies(int(stopped.max()), logits, stopped, info, True), ran

    def learn(self, ran: Ran, requests: int) -> None:
        """After the replies of one :meth:`infer`: count it, let the governor learn from it,
        and where a frequency write failed, rebuild the runtime without frequencies."""
        self.served += requests
        self.counters.observe(requests, ran.batch, ran.latency_s * ran.batch, ran.decision.latency_limit_ms,
                              None if ran.energy_j is None else ran.energy_j * ran.batch * 1e3)
        if ran.dvfs_lost:
            self._dvfs_lost()
        cause = self.executor.learn(ran, self.rt)
        if cause is not None:
            self.counters.miss(cause)

    def _dvfs_lost(self) -> None:
        """A frequency write failed (and was rolled back): from now on the space has no
        frequencies for that target, predicted at the frequency the kernel reports for it
        now; it is tried again after a backoff (:meth:`retry_dvfs`)."""
        with self.lock:
            lost = {c.target for c in self.rt.space if c.freq_khz and not self.platform.dvfs_on(c.target)}
            if lost:
                self.rt = self._rebuild()
            now = time.monotonic()
            for t in lost:
                backoff = min(2 * self._dvfs_backoff.get(t, DVFS_RETRY_S / 2), DVFS_RETRY_MAX_S)
                self._dvfs_backoff[t] = backoff
                self._dvfs_retry_at[t] = now + backoff

    def retry_dvfs(self) -> None:
        """Frequency control that a failed write turned off comes back by itself: each such
        target is tried again DVFS_RETRY_S after it failed, then after twice as long each time
        it fails again (up to DVFS_RETRY_MAX_S). Called by the control thread's loop."""
        if not self._dvfs_retry_at:
            return
        now = time.monotonic()
        due = [t for t, at in self._dvfs_retry_at.items() if now >= at]
        if not due:
            return
        with self.lock:
            back = [t for t in due if self.platform.retry_dvfs(target=t)]
            for t in due:
                self._dvfs_retry_at.pop(t, None)
            if back:
                log.info("trying frequency control again on %s", ", ".join(back))
                self.rt = self._rebuild()

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    # ------------------------------------------------------------------ control
    def control(self, cmd: str, args: Dict[str, Any]) -> Dict:
        """One control command (daemon/commands.py). A refused command changes nothing
        (checked, saved, then applied)."""
        c = COMMANDS.get(cmd)
        if c is None:
            raise ProtocolError("unknown_command", cmd)
        if not c.locked:
            return c.run(self, args)
        with self.lock:
            return c.run(self, args)

    def save_budget(self, budget: Budget) -> Dict:
        """Check ``budget`` against the model set, save it (first: a full disk changes
        nothing), then set it."""
        try:
            self.governor.check_budget(budget)
        except ValueError as e:
            raise ProtocolError("bad_budget", str(e)[:200])
        previous = self.governor.budget.to_dict()
        try:
            state.write_json(self._budget_path(), budget.to_dict())
        except OSError as e:
            raise ProtocolError("state_unwritable", "could not save the budget in %s (%s); the budget is "
                                "unchanged" % (self.cfg.state_dir, e.strerror or e))
        self.governor.set_budget(budget)
        return {"budget": self.governor.budget.to_dict(), "replaced": previous}

    def apply_now(self) -> Optional[str]:
        """Apply the governor's decision now (a pin takes effect before its reply); where the
        kernel refuses the frequency, rebuild without that target's DVFS, apply again, and say why."""
        c = self.governor.decide().config
        if self.executor.apply(c):
            return None
        self._dvfs_lost()
        self.executor.apply(self.governor.decide().config)
        return "the frequency could not be set: %s" % self.platform.dvfs_reason_for(c.target)

    def reload(self) -> Dict:
        # Its Python parts (YAML, checks, building the governor) would hold the GIL for whole
        # switch intervals (5 ms) against the inference thread, which needs it a few times per
        # request: while a reload runs, the interpreter switches threads every 0.2 ms.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(RELOAD_SWITCH_S)
        try:
            return self._reload()
        finally:
            sys.setswitchinterval(interval)

    def _reload(self) -> Dict:
        """Re-read the configuration file, re-verify and reload the model set and the stored
        profile, retry DVFS where a failed write had turned it off, and swap the new runtime
        in; on failure keep serving with what is loaded and say why. The new runtime is built
        beside the serving one (the model set outside the lock: requests keep being served)
        by the same builder as at start, so each lane keeps its threads, and the operator's
        budget and pin carry over. The one reload path: the control command and SIGHUP both
        come here. Keys that need new sockets, a new board or a new profile space are named
        in ``needs_restart`` and left as they are."""
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
        old = self.rt
        try:
            models, model_dir = self.builder.load_models(cfg.model, cfg.threads, "gpu" in old.models.targets,
                                                         loaded=old.models)
        except ModelSetError as e:
            raise ProtocolError("reload_failed", "kept the loaded model set: %s" % e)
        except Exception as e:   # onnxruntime's own errors, a bug in validation: never fatal
            log.exception("reload failed")
            raise ProtocolError("reload_failed", "kept the loaded model set: %s: %s" % (type(e).__name__, e))
        if models.groups != old.models.groups or models.input_shape != old.models.input_shape \
                or models.classes != old.models.classes:
            raise ProtocolError("reload_failed", "kept the loaded model set: the new one differs in its levels, "
                                "input or classes (restart the daemon to change models)")
        stored = profiler.load(self.cfg.state_dir, self.profile_key, old.targets)
        profile = old.profile
        if stored is not None and not same_profile(stored, old.profile):
            profile = stored               # a new profile applies whether DVFS is on or off
        with self.lock:
            for k in LIVE_KEYS:            # the object the server reads too
                setattr(self.cfg, k, getattr(cfg, k))
            logging.getLogger().setLevel(getattr(logging, self.cfg.log_level.upper(), logging.INFO))
            log.debug("reload: %s", ", ".join("%s=%s" % (k, getattr(self.cfg, k)) for k in LIVE_KEYS))
            if self.cfg.dvfs and self.platform.retry_dvfs():
                log.info("reload: DVFS on again (it had failed)")
            self.rt = self._rebuild(models=models, model_dir=model_dir, profile=profile)
            reply = {"model": self.models.name, "model_reloaded": models is not old.models,
                     "profile": self.governor.profile.source,
                     "profile_created": self.governor.profile.created,
                     "dvfs": bool(self.platform.dvfs_enabled), "needs_restart": needs_restart}
        if models is not old.models:
            retired, gone = old.models, weakref.ref(old)
            del old
            self._retire(retired, gone)
        _settle_heap()
        return reply

    def _retire(self, models, gone: "weakref.ref") -> None:
        """Free a replaced model set here, in pieces, once no request runs on its runtime
        any more (``gone()`` is None): freed whole by the inference thread, it would hold
        that thread for its whole teardown."""
        end = time.monotonic() + 2.0
        while gone() is not None and time.monotonic() < end:
            time.sleep(0.005)
        if gone() is None:
            models.close(pause_s=0.002)

    @property
    def energy_measured(self) -> bool:
        return self.platform.energy_available

    @property
    def energy_reason(self) -> str:
        return self.platform.energy_reason or "no power sensor"

    def status(self) -> Dict:
        p = self.platform
        with self.lock:
            s = self.governor.status()
            if s.get("config"):
                s["config"] = self.executor.reported(self.governor.space[self.governor.current], self.rt)
        freqs = self.frequencies()
        s.update({
            "platform": p.name,
            "simulated": bool(p.simulated),
            "targets": {n: {"kind": t.kind, "cpus": t.cpus, "offline": list(t.offline),
                            "freqs_khz": t.freqs_khz if p.dvfs_on(n) else [],
                            "onnxruntime_threads": self.models.threads_of(n),
                            **({"split": self.rt.columns.to_dict()[n]} if self.rt.is_split(n) else {})}
                        for n, t in self.targets.items()},
            "splits": self.rt.split_reason or ("available" if self.rt.columns and self.rt.columns.lanes else "none"),
            "frequencies_khz": freqs,
            "gpu": self.rt.gpu_reason or ("available" if "gpu" in self.targets else "none"),
            "dvfs": {"enabled": bool(p.dvfs_enabled), "reason": p.dvfs_reason,
                     "off": {t: o.reason for t, o in p.target_off.items()}},
            "mapping": {"ok": not self.executor.mapping_error, "reason": self.executor.mapping_error},
            "energy": {"available": self.energy_measured, "reason": "" if self.energy_measured else self.energy_reason,
                       "degraded": p.energy_degraded},
            "temperatures_c": p.temperatures(),
            "model": {"name": self.models.name, "kind": self.models.kind, "levels": self.models.groups,
                      "shares_weights": bool(self.models.manifest.get("shares_weights", False)),
                      "accuracy": [l.accuracy for l in self.rt.levels], "onnxruntime_pool": self.models.pool,
                      "input_shape": list(self.models.input_shape), "classes": list(self.models.classes)},
            "max_batch": self.cfg.max_batch,
            "infer_endpoint": self.cfg.infer_endpoint,
            "profile_file": os.path.join(self.cfg.state_dir, profiler.PROFILE_FILE),
            "profile_created": self.governor.profile.created,
            "state_dir": self.cfg.state_dir,
            "served": self.served,
            "anytime": {("off" if t is None else "%g" % t): a.to_dict() for t, a in self.anytime.items()},
            "images": self.counters.images,
            "errors": dict(self.errors),
            "connections": self.fd_guard_status(),
            "uptime_s": round(time.monotonic() - self.started, 1),
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
                "closed": sorted(k for k, v in g.closed.items() if v), "refused_periods": g.trips,
                "memory_drops": g.memory.trips if g.memory is not None else None}

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

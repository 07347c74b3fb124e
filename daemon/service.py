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
from governor import Board, Budget, levels_from_manifest
from models import ModelSetError
from models.modelset import softmax
from platforms.model import clock_table
from platforms.owner import Ownership

from . import profiler, state
from .commands import COMMANDS
from .config import KEY_DOCS, Config, ConfigError
from .executor import Executor, Ran
from .protocol import InferRequest, InputSpec, ProtocolError, unknown_model
from .runtime import Builder, Runtime, same_profile
from .served import AnytimeStats, Served, file_name

log = logging.getLogger("dnnscale.service")
# Configuration keys a reload applies; the others need a restart (sockets, the board, the
# profile's space, the queue sizes the server was built with). The models' folders reload;
# their names and priorities need a restart.
LIVE_KEYS = ("model", "models", "threads", "batch_requests", "rehearse", "log_level", "profile_runs", "stop_at")
RELOAD_SWITCH_S = 0.0002     # the interpreter's thread switch interval while a reload loads
DVFS_RETRY_S = 5.0           # a target whose frequency write failed is tried again after this,
DVFS_RETRY_MAX_S = 300.0     # doubling at each failure up to this


def _settle_heap() -> None:
    """Collect now, in the calling (control) thread, and freeze what survives: the objects
    of a loaded runtime live as long as it does, and a full collection that scans them (5-9 ms
    on this VM) would otherwise run in whichever thread trips it, often the inference thread."""
    gc.collect()
    gc.freeze()


class Service:
    """Wired by the constructor, acted by :meth:`start`, undone by :meth:`stop` (which undoes
    whatever ``start`` got to, so one ``finally`` covers every exit path). What serves is one
    :class:`~daemon.served.Served` per model set (``self.sets``, the default first), each
    with its :class:`~daemon.runtime.Runtime`, built by the one :class:`Builder` at start, at
    a reload and when DVFS is lost, and swapped under ``lock``. The sets share the board:
    one executor applies their decisions, and one :class:`governor.Board` makes each
    model's governor decide with what the others need of it."""

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
        self.platform_args = board or {}
        self.lock = threading.RLock()     # the runtimes, the governors and the platform: see executor.py
        self.started = time.monotonic()
        self.errors: Dict[str, int] = {}
        self.sets: Dict[str, Served] = {}   # by name, highest priority (the default) first
        self.board: Optional[Board] = None
        self.platform: Optional[platforms.Platform] = None
        self.executor: Optional[Executor] = None
        self._platform_started = False
        # The CPUs the process may use, taken before any thread is pinned to a target: a
        # reload runs on a thread a pin may have narrowed to one cluster.
        self.cpus_allowed = set(os.sched_getaffinity(0))
        self.owner = Ownership()                 # the state directory's lock
        self._dvfs_retry_at: Dict[str, float] = {}   # target → when to try its frequency control again
        self._dvfs_backoff: Dict[str, float] = {}

    # the default set's parts, for readers (status, metrics, the CLI)
    default = property(lambda self: next(iter(self.sets.values())))
    rt = property(lambda self: self.default.rt)
    models = property(lambda self: self.rt.models)
    governor = property(lambda self: self.rt.governor)
    targets = property(lambda self: self.rt.targets)
    served = property(lambda self: sum(s.served for s in self.sets.values()))

    def pick(self, name: Any) -> Served:
        """The set called ``name`` (None: the default); ``unknown_model`` names those served."""
        if name is None:
            return self.default
        s = self.sets.get(name) if isinstance(name, str) else None
        if s is None:
            raise unknown_model(name, self.sets)
        return s

    def start(self) -> None:
        """Load, probe and (where no stored profile matches) profile; raises ConfigError,
        ModelSetError or Interrupted with one line. The board is touched only after the
        model sets loaded, and only through the platform, which :meth:`stop` restores."""
        cfg = self.cfg
        try:
            platform = platforms.create(cfg.platform, root=cfg.sysfs_root, state_dir=cfg.state_dir,
                                        **self.platform_args)
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
        loaded = []
        for entry in cfg.entries():
            models, model_dir = self.builder.load_models(entry.model, cfg.threads, cfg.gpu)
            name = entry.name or models.name
            if any(name == n for n, _, _, _ in loaded):
                raise ConfigError("two model sets are called %s: give each a name (models: [{model: ..., "
                                  "name: ...}])" % name)
            loaded.append((name, entry, models, model_dir))
        self._platform_started = True
        platform.start()
        self.board = Board([n for n, _, _, _ in loaded], clocks=clock_table(platform.targets))
        self.executor = Executor(platform, lock=self.lock, board=self.board)
        for rank, (name, entry, models, model_dir) in enumerate(loaded):
            s = self._serve_set(rank, name, entry, models, model_dir)
            self.sets[name] = s
            if s.rt.gpu_reason:
                log.warning("%s: %s", name, s.rt.gpu_reason)
            self._load_budget(s)
        _settle_heap()

    def _serve_set(self, rank: int, name: str, entry, models, model_dir: str) -> Served:
        """The runtime of one loaded set: its stored profile where one matches, else one
        measured now (and saved)."""
        cfg, platform = self.cfg, self.platform
        targets = self.builder.targets(models, cfg.gpu)[0]
        levels = levels_from_manifest(models.manifest)
        space = self.builder.space(levels, targets)
        key = profiler.key(models.manifest, platform.name, space)
        files = file_name(rank, name)
        per_frequency = any(c.freq_khz for c in space)     # the stored profile's kind
        profile = None if self.remeasure else profiler.load(cfg.state_dir, key, targets, name=files)
        if profile is None:
            log.info("measuring a profile of %s (%d runs per configuration)%s", name, cfg.profile_runs,
                     "" if self.remeasure else ": no stored one matches")
            profile = profiler.measure(self.executor, models, space, levels, runs=cfg.profile_runs,
                                       progress=self.progress, stop=self.stop_event,
                                       columns=lambda p: self.builder.columns(models, targets, levels, p, cfg.threads))
            try:
                profiler.save(cfg.state_dir, profile, key, name=files)   # later starts reuse it
            except OSError as e:
                log.error("could not save the profile in %s (%s): the next start measures again",
                          cfg.state_dir, e.strerror or e)
            for err in platform.reset():   # serve from the board's own settings
                log.error("could not restore after profiling: %s", err)
            self.executor.forget()
        rt = self.builder.build(models, model_dir, cfg.gpu, profile, per_frequency, threads=cfg.threads, name=name)
        if cfg.stop_at is not None:
            models.warm_anytime()       # every request stops early: none pays for the step sessions
        return Served(name, entry, rank, rt, key)

    def frequencies(self) -> Dict[str, Optional[int]]:
        """target → the frequency the kernel reports now (kHz), None without control; the
        targets of every served set."""
        return self.builder.frequencies({t: None for s in self.sets.values() for t in s.rt.targets})

    def _rebuild(self, s: Served, models=None, model_dir=None, profile=None) -> Runtime:
        """Set ``s``'s runtime rebuilt by the builder (under the lock): what changed given, the
        rest as the serving runtime has it; the serving governor hands over (carry_over)."""
        old = s.rt
        return self.builder.build(models or old.models, model_dir or old.model_dir, self.cfg.gpu,
                                  profile or old.profile, old.per_frequency, previous=old.governor,
                                  threads=self.cfg.threads, name=s.name)

    # ------------------------------------------------------------------ inference
    def input_specs(self) -> Dict[str, InputSpec]:
        """What each set accepts, by name, the default first."""
        out = {}
        for name, s in self.sets.items():
            ms = s.rt.models
            why = ms.no_anytime and "it cannot stop early: " + ms.no_anytime
            out[name] = InputSpec(ms.input_shape, ms.groups, self.cfg.max_batch, why, self.cfg.stop_at)
        return out

    def infer(self, reqs: List[InferRequest], emit=None) -> Tuple[List[Tuple[Dict, np.ndarray]], Ran]:
        """Run requests that share their model, dtype, groups, deadline, stop_at and
        progressive as one batch (``emit``: sends a progressive request's replies before the
        last): one reply each, and the run for :meth:`learn`, which the caller calls once the
        replies are out (so the governor's and the counters' work is not in the client's
        round trip). Each reply carries the batch's latency and its own share of the batch's energy."""
        r0 = reqs[0]
        s = self.pick(r0.model)
        rt = s.rt
        x = np.concatenate([r.tensor for r in reqs]) if len(reqs) > 1 else r0.tensor
        if r0.dtype == "uint8":
            x = rt.models.preprocess(x)
        if r0.anytime:
            return self._infer_anytime(s, rt, reqs, x, emit)
        logits, info, ran = self.executor.run(rt, x, groups=r0.groups, deadline_ms=r0.deadline_ms)
        return self._replies(rt, reqs, logits, info), ran

    def _replies(self, rt: Runtime, reqs: List[InferRequest], logits: np.ndarray, info: Dict,
                 more=None) -> List[Tuple[Dict, np.ndarray]]:
        """One reply per request of a batch: its rows of the logits, their labels and class
        names, the batch's ``info`` (config, latency) with its own share of the energy;
        ``more(a, b)``: the further fields of the request whose images are rows a..b-1.
        Where several sets are served, each reply names its set (``model``)."""
        out, start, n = [], 0, len(logits)
        several = len(self.sets) > 1
        for r in reqs:
            m = len(r.tensor)
            part = logits[start:start + m]
            labels = part.argmax(1).tolist()
            head = {"id": r.id, "ok": True, "labels": labels, "names": [rt.models.classes[i] for i in labels]}
            if several:
                head["model"] = rt.name
            if more is not None:
                head.update(more(start, start + m))
            head.update(info)
            if info["energy_mj"] is not None and len(reqs) > 1:
                head["energy_mj"] = round(info["energy_mj"] * m / n, 4)
            out.append((head, part))
            start += m
        return out

    def _infer_anytime(self, s: Served, rt: Runtime, reqs: List[InferRequest], x: np.ndarray, emit):
        """Anytime requests (``stop_at``, ``progressive``): one run adding a group at a time;
        a progressive request gets a reply per level before the final one (``emit``)."""
        r0 = reqs[0]
        tau = r0.stop_at
        stats = s.anytime.setdefault(tau, AnytimeStats())

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
        and where a frequency write failed, rebuild the runtimes without frequencies."""
        s = self.sets.get(ran.runtime.name) or self.default
        s.served += requests
        s.counters.observe(requests, ran.batch, ran.latency_s * ran.batch, ran.decision.latency_limit_ms,
                           None if ran.energy_j is None else ran.energy_j * ran.batch * 1e3)
        if ran.dvfs_lost:
            self._dvfs_lost()
        cause = self.executor.learn(ran, s.rt)
        if cause is not None:
            s.counters.miss(cause)

    def rehearse(self, ran: Ran, waiting: Optional[Callable[[], bool]] = None) -> None:
        """The change of level that the governor of the set that just ran expects to make
        next, run once (:meth:`Executor.rehearse`), unless a request waits (``waiting``, the
        server's queues and socket: asked only where there is something to rehearse, so the
        requests in between pay nothing for it)."""
        s = self.sets.get(ran.runtime.name)
        if self.cfg.rehearse and s is not None and s.rt is ran.runtime and not ran.dvfs_lost \
                and s.rt.governor.upcoming is not None and not (waiting is not None and waiting()):
            self.executor.rehearse(s.rt)

    def _dvfs_lost(self) -> None:
        """A frequency write failed (and was rolled back): from now on the spaces have no
        frequencies for that target, predicted at the frequency the kernel reports for it
        now; it is tried again after a backoff (:meth:`retry_dvfs`)."""
        with self.lock:
            lost = {c.target for s in self.sets.values() for c in s.rt.space
                    if c.freq_khz and not self.platform.dvfs_on(c.target)}
            for s in self.sets.values():
                if any(c.freq_khz and c.target in lost for c in s.rt.space):
                    s.rt = self._rebuild(s)
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
                for s in self.sets.values():
                    s.rt = self._rebuild(s)

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

    def save_budget(self, s: Served, budget: Budget) -> Dict:
        """Check ``budget`` against set ``s``, save it (first: a full disk changes nothing),
        then set it."""
        gov = s.rt.governor
        try:
            gov.check_budget(budget)
        except ValueError as e:
            raise ProtocolError("bad_budget", str(e)[:200])
        previous = gov.budget.to_dict()
        try:
            state.write_json(s.budget_path(self.cfg.state_dir), dict(budget.to_dict(), model=s.name))
        except OSError as e:
            raise ProtocolError("state_unwritable", "could not save the budget in %s (%s); the budget is "
                                "unchanged" % (self.cfg.state_dir, e.strerror or e))
        gov.set_budget(budget)
        return {"budget": gov.budget.to_dict(), "replaced": previous}

    def apply_now(self, s: Served) -> Optional[str]:
        """Apply set ``s``'s decision now (a pin takes effect before its reply); where the
        kernel refuses the frequency, rebuild without that target's DVFS, apply again, and say why."""
        c = self._decide_now(s)
        if self.executor.apply(c):
            return None
        self._dvfs_lost()
        self.executor.apply(self._decide_now(s))
        return "the frequency could not be set: %s" % self.platform.dvfs_reason_for(c.target)

    def _decide_now(self, s: Served):
        """Set ``s``'s configuration now, decided as its runs are (through the board)."""
        return self.board.decide(s.name, s.rt.governor, running_khz=self.executor.freq_set).config

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
        """Re-read the configuration file, re-verify and reload each model set and its stored
        profile, retry DVFS where a failed write had turned it off, and swap the new runtimes
        in; on failure keep serving with what is loaded and say why. Each new runtime is built
        beside the serving one (the model set outside the lock: requests keep being served)
        by the same builder as at start, so each lane keeps its threads, and the operator's
        budget and pin carry over; a set whose files did not change keeps its sessions. The
        one reload path: the control command and SIGHUP both come here. Keys that need new
        sockets, a new board or a new profile space are named in ``needs_restart`` and left
        as they are; so are the sets' names and priorities."""
        cfg, needs_restart = self.cfg, []
        if self.config_loader is not None:
            try:
                cfg = self.config_loader()
            except ConfigError as e:
                raise ProtocolError("reload_failed", "kept the running configuration: %s" % e)
            needs_restart = [k for k in KEY_DOCS if k not in LIVE_KEYS and getattr(cfg, k) != getattr(self.cfg, k)]
        entries = cfg.entries()
        if [(e.name, e.priority) for e in entries] != [(s.entry.name, s.entry.priority) for s in self.sets.values()]:
            needs_restart.append("models")         # which sets, their names and order: a restart
            entries = [s.entry for s in self.sets.values()]
        if needs_restart:
            log.warning("reload: %s changed in the configuration; a restart applies %s",
                        ", ".join(needs_restart), "them" if len(needs_restart) > 1 else "it")
        new = {}
        for s, entry in zip(list(self.sets.values()), entries):
            old = s.rt
            try:
                models, model_dir = self.builder.load_models(entry.model, cfg.threads, "gpu" in old.models.targets,
                                                             loaded=old.models)
            except ModelSetError as e:
                raise ProtocolError("reload_failed", "kept the loaded model sets: %s: %s" % (s.name, e))
            except Exception as e:   # onnxruntime's own errors, a bug in validation: never fatal
                log.exception("reload failed")
                raise ProtocolError("reload_failed", "kept the loaded model sets: %s: %s: %s"
                                    % (s.name, type(e).__name__, e))
            if models.groups != old.models.groups or models.input_shape != old.models.input_shape \
                    or models.classes != old.models.classes:
                raise ProtocolError("reload_failed", "kept the loaded model sets: the new %s differs in its levels, "
                                    "input or classes (restart the daemon to change models)" % s.name)
            if cfg.stop_at is not None:
                models.warm_anytime()   # outside the lock, as at start
            stored = profiler.load(self.cfg.state_dir, s.profile_key, old.targets, name=s.file_name)
            profile = old.profile
            if stored is not None and not same_profile(stored, old.profile):
                profile = stored               # a new profile applies whether DVFS is on or off
            new[s.name] = (entry, models, model_dir, profile)
        retired = []
        with self.lock:
            for k in LIVE_KEYS:            # the object the server reads too
                if k not in ("model", "models"):
                    setattr(self.cfg, k, getattr(cfg, k))
            if "models" not in needs_restart:
                self.cfg.model, self.cfg.models = cfg.model, cfg.models
            logging.getLogger().setLevel(getattr(logging, self.cfg.log_level.upper(), logging.INFO))
            log.debug("reload: %s", ", ".join("%s=%s" % (k, getattr(self.cfg, k)) for k in LIVE_KEYS))
            if self.cfg.dvfs and self.platform.retry_dvfs():
                log.info("reload: DVFS on again (it had failed)")
            reloaded = []
            for name, (entry, models, model_dir, profile) in new.items():
                s = self.sets[name]
                old = s.rt
                s.entry = entry
                s.rt = self._rebuild(s, models=models, model_dir=model_dir, profile=profile)
                if models is not old.models:
                    reloaded.append(name)
                    retired.append((old.models, weakref.ref(old)))
                del old
            reply = {"model": self.models.name, "model_reloaded": self.default.name in reloaded,
                     "profile": self.governor.profile.source,
                     "profile_created": self.governor.profile.created,
                     "dvfs": bool(self.platform.dvfs_enabled), "needs_restart": needs_restart}
            if len(self.sets) > 1:
                reply["models_reloaded"] = reloaded
        new.clear()
        for models, gone in retired:
            self._retire(models, gone)
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

    def _model_status(self, s: Served) -> Dict:
        """One set's part of the status: its governor's (budget, configuration, misses...),
        its model, and what it served."""
        rt = s.rt
        st = rt.governor.status()
        if st.get("config"):
            st["config"] = self.executor.reported(rt.governor.space[rt.governor.current], rt)
        ms = rt.models
        st["model"] = {"name": ms.name, "kind": ms.kind, "levels": ms.groups,
                       "shares_weights": bool(ms.manifest.get("shares_weights", False)),
                       "accuracy": [l.accuracy for l in rt.levels], "onnxruntime_pool": ms.pool,
                       "packing": ms.packing, "onnxruntime_workers": ms.pools.describe(),
                       "input_shape": list(ms.input_shape), "classes": list(ms.classes)}
        st["served"] = s.served
        st["images"] = s.counters.images
        st["anytime"] = {("off" if t is None else "%g" % t): a.to_dict() for t, a in s.anytime.items()}
        st["profile_file"] = os.path.join(self.cfg.state_dir, profiler.filename(s.file_name))
        st["profile_created"] = rt.governor.profile.created
        b = st["budget"]
        if (b.get("energy_mj") is not None or b.get("power_w") is not None) and not self.energy_measured:
            st["feasible"] = None
            st["budget_warning"] = "the energy/power budget cannot be enforced: %s" % self.energy_reason
        return st

    def status(self) -> Dict:
        """The default set's status at the top (as with one set), the board's, and where
        several sets are served, each one's under ``models`` (by name, the default first)."""
        p = self.platform
        with self.lock:
            per = {name: self._model_status(s) for name, s in self.sets.items()}
            board = self.board.status()
        s = dict(per[self.default.name])
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
            "cpu_load": self.cpu_load_status(),
            "mapping": {"ok": not self.executor.mapping_error, "reason": self.executor.mapping_error,
                        "moves": self.executor.pin_moves},
            "rehearsals": self.executor.rehearsals,
            "energy": {"available": self.energy_measured, "reason": "" if self.energy_measured else self.energy_reason,
                       "degraded": p.energy_degraded},
            "temperatures_c": p.temperatures(),
            "max_batch": self.cfg.max_batch,
            "infer_endpoint": self.cfg.infer_endpoint,
            "state_dir": self.cfg.state_dir,
            "served": self.served,
            "errors": dict(self.errors),
            "connections": self.fd_guard_status(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "board": board,
        })
        if len(self.sets) > 1:
            for name, st in per.items():
                st["priority"] = self.sets[name].rank + 1
            s["models"] = per
        return s

    def cpu_load_status(self) -> Dict:
        """Other processes' use of each CPU target (platforms/cpuload.py): CPUs' worth lately
        and whether the governor counts the target loaded."""
        ex = self.executor
        if ex.cpu_load is None:
            return {"available": False, "reason": "simulated board: its load is the simulation's"
                    if self.platform.simulated else "DNNSCALE_LOAD_SIGNAL=off"}
        with self.lock:
            return {"available": True, "window_ms": round(ex.cpu_load.window_s * 1e3, 1),
                    "error": ex.cpu_load.error,       # why /proc/stat cannot be read now ("": it can)
                    "others_cpus": {n: None if (v := ex.others_load(n)) is None else round(v, 3)
                                    for n in self.targets},
                    "loaded": {n: ex.loaded.get(n) for n in self.targets}}

    fd_guard = None   # the server's FdGuard, set when it binds

    def fd_guard_status(self) -> Optional[Dict]:
        g = self.fd_guard
        if g is None:
            return None
        return {"fd_limit": g.limit, "fds_open": g.count(), "fds_peak": g.peak, "refusing": g.hidden,
                "closed": sorted(k for k, v in g.closed.items() if v), "refused_periods": g.trips,
                "memory_drops": g.memory.trips if g.memory is not None else None}

    # ------------------------------------------------------------------ state
    def _load_budget(self, s: Served) -> None:
        path = s.budget_path(self.cfg.state_dir)
        try:
            saved = state.read_json(path)
            owner = saved.pop("model", None) if isinstance(saved, dict) else None
            if owner is not None and owner != s.name:      # the sets were reordered since it was saved
                log.error("ignoring the stored budget %s: it was set for %s, not %s", path, owner, s.name)
                return
            s.rt.governor.set_budget(Budget(**saved))
            log.info("budget of %s restored from %s: %s", s.name, path, s.rt.governor.budget.to_dict())
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as e:
            log.error("ignoring the stored budget %s: %s", path, e)

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

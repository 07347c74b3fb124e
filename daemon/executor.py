"""One request, end to end, one way: decide → apply (only what changed) → run → measure;
then, once the server has sent the replies, the governor learns from it. A failed frequency
write is an outcome of the run (``Ran.dvfs_lost``) that the service handles after it, not
a callback in the middle of a decision.

The governor has two callers (the inference thread, and control commands such as pin or
set_budget), so every read and change of it, and every platform write, happens under
``lock``; the onnxruntime run itself does not hold it, so control stays responsive.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np

from governor import Board, Config, Decision
from platforms import Platform, PlatformError, cpuload
from platforms.model import part_frequencies

from .runtime import Runtime

log = logging.getLogger("dnnscale.executor")
SETTLE_RUNS = 3     # runs after a move to another target that the governor does not learn from


class Ran(NamedTuple):
    """One run, per image, for the governor to learn from."""
    runtime: Runtime
    decision: Decision
    latency_s: float
    energy_j: Optional[float]
    moved: bool              # one of the first runs after a move to another target
    dvfs_lost: bool          # a frequency write failed: DVFS is off, the runtime must be rebuilt
    batch: int               # images in the run


class Executor:
    """Applies decisions to the board and runs them, one run at a time, for every model set
    the daemon serves (each runtime's ``name``); what is applied survives a runtime's
    replacement (a reload swaps the model set and the governor, not the board's state).
    ``board``: how the sets' governors share the board's frequencies (governor/board.py)."""

    def __init__(self, platform: Platform, clock=time.perf_counter, lock: Optional[threading.RLock] = None,
                 board: Optional[Board] = None):
        self.platform = platform
        self.clock = clock
        self.lock = lock or threading.RLock()
        self.board = board or Board([])
        self.applied: Optional[Config] = None      # the last configuration applied (the thread's pin)
        self.freq_set: Dict[str, int] = {}         # target → kHz last written (what the board runs at)
        self.freq_read: Dict[str, Optional[int]] = {}   # target → kHz the kernel reported after our write
        self.mapping_error = ""
        self.pinned_cpus: list = []                # the CPUs of the last pin ([]: unpinned)
        self.spread_at: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # pools → pin spread in
        self.moved: Dict[str, int] = {}     # set → runs left that still pay for its last move to another target
        self.last_target: Dict[str, str] = {}   # set → the target of its last run
        self.pin_moves = 0                  # times the threads were pinned to another target
        self.cpu_load = platform.cpu_load()      # others' use of the targets' CPUs (None: unknown)
        self.loaded: Dict[str, bool] = {}        # target → the load signal's state (between thresholds: kept)
        self.rehearsals = 0                 # runs of a move up made before it (rehearse)

    def forget(self) -> None:
        """The board was put back to its own settings (after profiling): apply everything anew."""
        self.applied = None
        self.freq_set.clear()
        self.freq_read.clear()

    def _written(self, target: str, khz: int) -> None:
        """``target`` now runs at ``khz``; a target sharing its frequency control (a split and
        its parts) no longer runs at what was written for it."""
        ctl = set(self.platform.targets[target].control)
        for t in list(self.freq_set):
            if t != target and ctl & set(self.platform.targets[t].control):
                del self.freq_set[t]
        self.freq_set[target] = khz

    def apply(self, c: Config, columns=None, models=None) -> bool:
        """Pin and set the frequency, touching only what differs from the last config; False
        where the frequency could not be set: the platform rolled the change back and the
        target's DVFS is off (the caller rebuilds its runtime without its frequencies).
        ``columns``: the runtime's splits (a split target pins each lane's threads to its
        own CPUs, the calling thread to the first lane's). ``models``: the model set about to
        run, whose onnxruntime pools get a CPU per worker (models/pools.py)."""
        prev = self.applied
        if prev is None or prev.target != c.target:
            self.pin_moves += 1
            try:
                self.pinned_cpus = self.platform.pin(c.target)
                if columns is not None and c.target in columns.lanes:
                    columns.repin(c.target)
                self.mapping_error = ""
            except PlatformError as e:
                if self.mapping_error != str(e):
                    log.error("thread mapping failed, running unpinned: %s", e)
                self.mapping_error = str(e)
                self.pinned_cpus = []
        if models is not None and self.spread_at.get(models.pools) != self.pin_moves:
            # once per pin (which moves every thread) for each set that runs there
            models.pools.spread(models.threads_of(c.target), self.pinned_cpus)
            self.spread_at[models.pools] = self.pin_moves
        if c.freq_khz is not None and self.platform.dvfs_on(c.target) and self.freq_set.get(c.target) != c.freq_khz:
            try:
                self.freq_read[c.target] = self.platform.set_frequency(c.target, c.freq_khz)
                self._written(c.target, c.freq_khz)
            except (PlatformError, OSError) as e:
                # That target's frequency control is off; the other targets keep theirs.
                self.platform.disable_dvfs("failed", "frequency control failed, DVFS is off for %s: %s"
                                           % (c.target, e), target=c.target)
                log.error("%s", self.platform.dvfs_reason_for(c.target))
                self.applied = None
                self.freq_read.pop(c.target, None)
                self.freq_set.pop(c.target, None)
                return False
        self.applied = c
        return True

    def reported(self, c: Config, rt: Optional[Runtime] = None) -> Dict:
        """The configuration as the board runs it: the frequency is the kernel's read-back;
        a split's lanes with the columns each ran (and each one's frequency)."""
        d = c.to_dict()
        if c.freq_khz is not None:
            got = self.freq_read.get(c.target)
            if got is not None and got != c.freq_khz:
                d["requested_freq_khz"] = c.freq_khz
            d["freq_khz"] = got
        if rt is not None and rt.is_split(c.target):
            lanes = rt.columns.describe(c.target, c.level)
            if c.freq_khz is not None:
                for lane, f in zip(lanes, part_frequencies(self.platform.targets[c.target], c.freq_khz)):
                    lane["freq_khz"] = f
            d["lanes"] = lanes
        return d

    def run(self, rt: Runtime, x: np.ndarray, groups: Optional[int] = None,
            deadline_ms: Optional[float] = None) -> Tuple[np.ndarray, Dict, Ran]:
        """Decide, apply, run and measure; the governor learns nothing until :meth:`learn`
        is given the returned ``Ran`` (the server sends the replies first)."""
        d, ok, moved, config = self._decide(rt, groups, deadline_ms)
        c = d.config
        p = self.platform
        j0 = p.joules()
        t0 = self.clock()
        logits = rt.run(c.level, x, c.target)
        latency = self.clock() - t0
        energy = self._joules_since(j0)
        n = len(x)
        work = rt.macs(c.level, c.target)
        modelled = p.board_model([m * n for m in work] if isinstance(work, list) else work * n, c.target)
        if modelled is not None:      # a simulated board: its model's figures, labelled
            latency, energy = modelled
        info = {"config": config, "latency_ms": round(latency * 1e3, 4),
                "energy_mj": None if energy is None else round(energy * 1e3, 4)}
        if modelled is not None:
            info["simulated"] = True
        return logits, info, Ran(rt, d, latency / n, None if energy is None else energy / n, moved, not ok, n)

    def _decide(self, rt: Runtime, groups: Optional[int], deadline_ms: Optional[float], stepped: bool = False):
        """Under the lock: the set's decision (its governor's, with what the board's other
        sets need), applied; whether it applied (the frequency was set), whether this run
        still pays for the set's move to another target, and the configuration to report."""
        with self.lock:
            if self.cpu_load is not None:
                rt.governor.set_load(self.load_state(rt.governor.targets), self.cpu_load.window_s)
            d = self.board.decide(rt.name, rt.governor, deadline_ms=deadline_ms, level=groups,
                                  running_khz=self.freq_set, stepped=stepped)
            ok = self.apply(d.config, rt.columns, rt.models)
            if self.last_target.get(rt.name) != d.config.target:
                self.last_target[rt.name] = d.config.target
                self.moved[rt.name] = SETTLE_RUNS     # the next runs pay for the move (see learn)
            left = self.moved.get(rt.name, 0)
            self.moved[rt.name] = max(0, left - 1)
            return d, ok, left > 0, self.reported(d.config, rt) if ok else dict(d.config.to_dict(), freq_khz=None)

    def others_load(self, target: str) -> Optional[float]:
        """CPUs' worth of time other processes used on ``target``'s CPUs lately (None: unknown)."""
        t = self.platform.targets.get(target)
        return None if self.cpu_load is None or t is None or not t.cpus else self.cpu_load.others(t.online)

    def load_state(self, targets) -> Dict[str, Optional[bool]]:
        """Per target: loaded by other processes or quiet (platforms.cpuload.loaded); None
        where unknown."""
        out: Dict[str, Optional[bool]] = {}
        for name in targets:
            out[name] = cpuload.loaded(self.others_load(name), self.loaded.get(name))
            if out[name] is not None:
                self.loaded[name] = out[name]
        return out

    def _joules_since(self, j0: Optional[float]) -> Optional[float]:
        """J since the counter read ``j0`` (None where nothing meters energy)."""
        j1 = self.platform.joules()
        return self.platform.energy_between(j0, j1) / 1e3 if j0 is not None and j1 is not None else None

    def run_anytime(self, rt: Runtime, x: np.ndarray, stop_at: Optional[float], groups: Optional[int] = None,
                    deadline_ms: Optional[float] = None, work: float = 1.0,
                    on_level=None) -> Tuple[np.ndarray, np.ndarray, Dict, Ran]:
        """An anytime run (models.ModelSet.run_anytime): the governor decides as for a
        whole run, but for a latency limit of ``limit / work``, ``work`` being the share of
        the decided level's MACs that images stop after at this ``stop_at`` (learnt by the
        caller), so that the mean meets the budget; the decided level is the most any image
        gets. The run stops at the request's limit (per image, times the batch). It is
        decided off the split targets (governor ``stepped``); pinned to one, it runs the
        steps on the split's first lane's thread count. ``on_level(k, logits,
        groups, info)``: after every level, with what has been spent so far."""
        limit = deadline_ms if deadline_ms is not None else rt.governor.budget.latency_ms
        d, ok, _, config = self._decide(rt, groups, limit / work if limit is not None and work < 1 else deadline_ms,
                                        stepped=True)
        c = d.config
        p, n = self.platform, len(x)
        j0 = p.joules()
        t0 = self.clock()

        def spent(k, logits, stopped):
            j = self._joules_since(j0)
            on_level(k, logits, stopped, {"config": config, "latency_ms": round((self.clock() - t0) * 1e3, 4),
                                          "energy_mj": None if j is None else round(j * 1e3, 4)})
        logits, stopped = rt.run_anytime(x, stop_at, c.level, c.target,
                                         deadline_s=None if limit is None else limit * n / 1e3,
                                         on_level=spent if on_level else None, clock=self.clock)
        latency = self.clock() - t0
        energy = self._joules_since(j0)
        info = {"config": config, "latency_ms": round(latency * 1e3, 4),
                "energy_mj": None if energy is None else round(energy * 1e3, 4)}
        # counted against the limit, not learnt as the level's speed: most images ran less of it
        return logits, stopped, info, Ran(rt, dataclasses.replace(d, latency_limit_ms=limit), latency / n,
                                          None if energy is None else energy / n, True, not ok, n)

    def infer(self, rt: Runtime, x: np.ndarray, groups: Optional[int] = None,
              deadline_ms: Optional[float] = None) -> Tuple[np.ndarray, Dict]:
        """:meth:`run`, then :meth:`learn` from it at once (benchmarks, tests)."""
        logits, info, ran = self.run(rt, x, groups, deadline_ms)
        self.learn(ran, rt)
        return logits, info

    def learn(self, ran: Ran, current: Runtime) -> Optional[str]:
        """The governor's observation of one run (per image), unless its runtime was replaced
        since; the cause of its miss (None: it met its limit or was not observed)."""
        with self.lock:
            d, c = ran.decision, ran.decision.config
            if current is not ran.runtime or ran.dvfs_lost:
                return None
            missed = d.latency_limit_ms is not None and ran.latency_s * 1e3 > d.latency_limit_ms
            if missed and c.freq_khz is not None:
                self._refresh_frequency(c.target)    # a cap that came after our write shows here
            # The first runs on a target after moving there pay for the move (threads
            # migrating, the lane's pool and caches warming: 1.5-2x a steady run for about
            # three runs on this VM): counted, but not learnt as the target's speed.
            return ran.runtime.governor.observe(
                c, ran.latency_s, ran.energy_j, d.latency_limit_ms,
                ran_khz=self.freq_read.get(c.target) if c.freq_khz is not None else None, learn=not ran.moved)

    def rehearse(self, rt: Runtime) -> bool:
        """Run once, on a blank image, the change of level the governor expects to make at its
        next decision (``Governor.upcoming``: same target and frequency, so nothing is applied),
        so that the first request at that level does not find its session cold (its threads
        asleep, its weights out of cache: a median 1.42x a steady run against 1.11x after one
        such run here, ``python -m bench.firstrun``; docs/governor.md, "Moves between targets").
        The caller calls it only while no request waits; the run is not the governor's to learn
        from. False where there is nothing to do."""
        with self.lock:
            c, a = rt.governor.upcoming, self.applied
            if c is None or a is None or self.last_target.get(rt.name) != c.target or c.target != a.target \
                    or c.freq_khz != a.freq_khz or c.level == a.level:
                return False
            rt.governor.upcoming = None
        rt.run(c.level, rt.models.blank(), c.target)
        self.rehearsals += 1
        return True

    def _refresh_frequency(self, target: str) -> None:
        try:
            self.freq_read[target] = self.platform.frequency(target)
        except PlatformError:
            pass

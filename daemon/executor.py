"""One request, end to end, one way: decide → apply (only what changed) → run → measure;
then, once the server has sent the replies, the governor learns from it. A failed frequency
write is an outcome of the run (``Ran.dvfs_lost``) that the service handles after it, not
a callback in the middle of a decision.

The governor has two callers (the inference thread, and control commands such as pin or
set_budget), so every read and change of it, and every platform write, happens under
``lock``; the onnxruntime run itself does not hold it, so control stays responsive.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np

from governor import Config, Decision
from platforms import Platform, PlatformError

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
    """Applies decisions to the board and runs them; what is applied survives a runtime's
    replacement (a reload swaps the model set and the governor, not the board's state)."""

    def __init__(self, platform: Platform, clock=time.perf_counter, lock: Optional[threading.RLock] = None):
        self.platform = platform
        self.clock = clock
        self.lock = lock or threading.RLock()
        self.applied: Optional[Config] = None
        self.freq_read: Dict[str, Optional[int]] = {}   # target → kHz the kernel reported after our write
        self.mapping_error = ""
        self.moved = 0            # runs left that still pay for the last move to another target

    def apply(self, c: Config) -> bool:
        """Pin and set the frequency, touching only what differs from the last config; False
        where the frequency could not be set: the platform rolled the change back and the
        target's DVFS is off (the caller rebuilds its runtime without its frequencies)."""
        prev = self.applied
        if prev is None or prev.target != c.target:
            self.moved = SETTLE_RUNS     # the next runs pay for the move (see infer)
            try:
                self.platform.pin(c.target)
                self.mapping_error = ""
            except PlatformError as e:
                if self.mapping_error != str(e):
                    log.error("thread mapping failed, running unpinned: %s", e)
                self.mapping_error = str(e)
        if c.freq_khz is not None and self.platform.dvfs_on(c.target) and (prev is None or prev.freq_khz != c.freq_khz
                                                                           or prev.target != c.target):
            try:
                self.freq_read[c.target] = self.platform.set_frequency(c.target, c.freq_khz)
            except (PlatformError, OSError) as e:
                # That target's frequency control is off; the other targets keep theirs.
                self.platform.disable_dvfs("failed", "frequency control failed, DVFS is off for %s: %s"
                                           % (c.target, e), target=c.target)
                log.error("%s", self.platform.dvfs_reason_for(c.target))
                self.applied = None
                self.freq_read.pop(c.target, None)
                return False
        self.applied = c
        return True

    def reported(self, c: Config) -> Dict:
        """The configuration as the board runs it: the frequency is the kernel's read-back."""
        d = c.to_dict()
        if c.freq_khz is not None:
            got = self.freq_read.get(c.target)
            if got is not None and got != c.freq_khz:
                d["requested_freq_khz"] = c.freq_khz
            d["freq_khz"] = got
        return d

    def run(self, rt: Runtime, x: np.ndarray, groups: Optional[int] = None,
            deadline_ms: Optional[float] = None) -> Tuple[np.ndarray, Dict, Ran]:
        """Decide, apply, run and measure; the governor learns nothing until :meth:`learn`
        is given the returned ``Ran`` (the server sends the replies first)."""
        with self.lock:
            d = rt.governor.decide(deadline_ms=deadline_ms, level=groups)
            ok = self.apply(d.config)
            c = d.config
            moved, self.moved = self.moved > 0, max(0, self.moved - 1)
            config = self.reported(c) if ok else dict(c.to_dict(), freq_khz=None)
        p = self.platform
        j0 = p.joules()
        t0 = self.clock()
        logits = rt.models.run(c.level, x, c.target)
        latency = self.clock() - t0
        j1 = p.joules()
        energy = p.energy_between(j0, j1) / 1e3 if j0 is not None and j1 is not None else None
        n = len(x)
        modelled = p.board_model(rt.models.level(c.level)["macs"] * n, c.target)
        if modelled is not None:      # a simulated board: its model's figures, labelled
            latency, energy = modelled
        info = {"config": config, "latency_ms": round(latency * 1e3, 4),
                "energy_mj": None if energy is None else round(energy * 1e3, 4)}
        if modelled is not None:
            info["simulated"] = True
        return logits, info, Ran(rt, d, latency / n, None if energy is None else energy / n, moved, not ok, n)

    def infer(self, rt: Runtime, x: np.ndarray, groups: Optional[int] = None,
              deadline_ms: Optional[float] = None) -> Tuple[np.ndarray, Dict]:
        """:meth:`run`, then :meth:`learn` from it at once (benchmarks, tests)."""
        logits, info, ran = self.run(rt, x, groups, deadline_ms)
        self.learn(ran, rt)
        return logits, info

    def learn(self, ran: Ran, current: Runtime) -> None:
        """The governor's observation of one run (per image), unless its runtime was replaced since."""
        with self.lock:
            d, c = ran.decision, ran.decision.config
            if current is not ran.runtime or ran.dvfs_lost:
                return
            missed = d.latency_limit_ms is not None and ran.latency_s * 1e3 > d.latency_limit_ms
            if missed and c.freq_khz is not None:
                self._refresh_frequency(c.target)    # a cap that came after our write shows here
            # The first runs on a target after moving there pay for the move (threads
            # migrating, the lane's pool and caches warming: 1.5-2x a steady run for about
            # three runs on this VM): counted, but not learnt as the target's speed.
            ran.runtime.governor.observe(c, ran.latency_s, ran.energy_j, d.latency_limit_ms,
                                         ran_khz=self.freq_read.get(c.target) if c.freq_khz is not None else None,
                                         learn=not ran.moved)

    def _refresh_frequency(self, target: str) -> None:
        try:
            self.freq_read[target] = self.platform.frequency(target)
        except PlatformError:
            pass

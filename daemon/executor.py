"""One request, end to end: decide → apply (only what changed) → run → measure, then (once
the replies are out) the governor learns from it.

The governor has two callers (the inference thread, and control commands such as pin or
set_budget), so every read and change of it, and every platform write, happens under
``lock``; the onnxruntime run itself does not hold it, so control stays responsive.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np

from governor import Config, Decision, Governor
from models import ModelSet
from platforms import PlatformError

log = logging.getLogger("dnnscale.executor")
SETTLE_RUNS = 3     # runs after a move to another target that the governor does not learn from


class Ran(NamedTuple):
    """One run, per image, for the governor to learn from."""
    governor: Governor
    decision: Decision
    latency_s: float
    energy_j: Optional[float]
    moved: bool              # one of the first runs after a move to another target


class Executor:
    def __init__(self, models: ModelSet, platform, governor: Optional[Governor],
                 clock=time.perf_counter, lock: Optional[threading.RLock] = None):
        self.models = models
        self.platform = platform
        self.governor = governor
        self.clock = clock
        self.lock = lock or threading.RLock()
        self.applied: Optional[Config] = None
        self.freq_read: Dict[str, Optional[int]] = {}   # target → kHz the kernel reported after our write
        self.mapping_error = ""
        self.last_limit_ms: Optional[float] = None     # the latency limit of the last decision
        self.on_dvfs_off: Optional[Callable[[], None]] = None   # the service rebuilds its space
        self.moved = 0            # runs left that still pay for the last move to another target

    def apply(self, c: Config) -> None:
        """Pin and set the frequency, touching only what differs from the last config. A
        failed frequency change turns DVFS off (the platform rolled the change back)."""
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
        if c.freq_khz is not None and self.platform.dvfs_enabled and (prev is None or prev.freq_khz != c.freq_khz
                                                                      or prev.target != c.target):
            try:
                self.freq_read[c.target] = self.platform.set_frequency(c.target, c.freq_khz)
            except (PlatformError, OSError) as e:
                self.platform.disable_dvfs("frequency control failed, DVFS is off: %s" % e)
                log.error("%s", self.platform.dvfs_reason)
                self.applied = None
                if self.on_dvfs_off:
                    self.on_dvfs_off()
                return
        self.applied = c

    def reported(self, c: Config) -> Dict:
        """The configuration as the board runs it: the frequency is the kernel's read-back."""
        d = c.to_dict()
        if c.freq_khz is not None:
            got = self.freq_read.get(c.target)
            if got is not None and got != c.freq_khz:
                d["requested_freq_khz"] = c.freq_khz
            d["freq_khz"] = got
        return d

    def infer(self, x: np.ndarray, groups: Optional[int] = None,
              deadline_ms: Optional[float] = None) -> Tuple[np.ndarray, Dict]:
        """:meth:`run`, then :meth:`learn` from it at once."""
        logits, info, ran = self.run(x, groups, deadline_ms)
        self.learn(ran)
        return logits, info

    def run(self, x: np.ndarray, groups: Optional[int] = None,
            deadline_ms: Optional[float] = None) -> Tuple[np.ndarray, Dict, "Ran"]:
        """Decide, apply, run and measure; the governor learns nothing until :meth:`learn`
        is given the returned ``Ran`` (the server sends the replies first)."""
        with self.lock:
            gov = self.governor
            d = gov.decide(deadline_ms=deadline_ms, level=groups)
            self.apply(d.config)
            if self.governor is not gov:          # DVFS went off: decide in the new space
                gov = self.governor
                d = gov.decide(deadline_ms=deadline_ms, level=groups)
                self.apply(d.config)
            c = d.config
            moved, self.moved = self.moved > 0, max(0, self.moved - 1)
            config = self.reported(c)
            self.last_limit_ms = d.latency_limit_ms
        meter = getattr(self.platform, "meter", None)
        j0 = self._joules(meter)
        t0 = self.clock()
        logits = self.models.run(c.level, x, c.target)
        latency = self.clock() - t0
        energy = None
        j1 = self._joules(meter)
        if j0 is not None and j1 is not None:
            energy = meter.energy_between(j0, j1) / 1e3
        n = len(x)
        if self.platform.simulated:   # report the board model's numbers, labelled simulated
            macs = self.models.level(c.level)["macs"]
            latency, energy = self.platform.run(macs * n, c.target)
        info = {"config": config, "latency_ms": round(latency * 1e3, 4),
                "energy_mj": None if energy is None else round(energy * 1e3, 4)}
        if self.platform.simulated:
            info["simulated"] = True
        return logits, info, Ran(gov, d, latency / n, None if energy is None else energy / n, moved)

    def learn(self, ran: "Ran") -> None:
        """The governor's observation of one run (per image), unless it was replaced since."""
        with self.lock:
            gov, d, c = ran.governor, ran.decision, ran.decision.config
            if self.governor is not gov:
                return
            missed = d.latency_limit_ms is not None and ran.latency_s * 1e3 > d.latency_limit_ms
            if missed and c.freq_khz is not None and not self.platform.simulated:
                self._refresh_frequency(c.target)    # a cap that came after our write shows here
            # The first runs on a target after moving there pay for the move (threads
            # migrating, the lane's pool and caches warming: 1.5-2x a steady run for about
            # three runs on this VM): counted, but not learnt as the target's speed.
            gov.observe(c, ran.latency_s, ran.energy_j, d.latency_limit_ms,
                        ran_khz=self.freq_read.get(c.target) if c.freq_khz is not None else None,
                        learn=not ran.moved)

    def _refresh_frequency(self, target: str) -> None:
        try:
            self.freq_read[target] = self.platform.frequency(target)
        except PlatformError:
            pass

    def _joules(self, meter) -> Optional[float]:
        if meter is None:
            return None
        try:
            return meter.joules()
        except PlatformError as e:
            self.platform.meter = None
            self.platform.energy_reason = "energy reporting off: %s" % e
            log.error("%s", self.platform.energy_reason)
            return None

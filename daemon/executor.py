"""One request, end to end: decide → apply (only what changed) → run → measure → observe."""
from __future__ import annotations

import logging
import time
from typing import Dict, Optional, Tuple

import numpy as np

from governor import Config, Governor
from models import ModelSet
from platforms import PlatformError

log = logging.getLogger("dnnscale.executor")


class Executor:
    def __init__(self, models: ModelSet, platform, governor: Governor,
                 clock=time.perf_counter):
        self.models = models
        self.platform = platform
        self.governor = governor
        self.clock = clock
        self.applied: Optional[Config] = None

    def apply(self, c: Config) -> None:
        """Pin and set the frequency, touching only what differs from the last config."""
        prev = self.applied
        if prev is None or prev.target != c.target:
            self.platform.pin(c.target)
        if c.freq_khz is not None and self.platform.dvfs_enabled and (prev is None or prev.freq_khz != c.freq_khz
                                                                      or prev.target != c.target):
            try:
                self.platform.set_frequency(c.target, c.freq_khz)
            except (PlatformError, OSError) as e:
                self.platform.disable_dvfs("frequency control failed, DVFS is off: %s" % e)
                log.error("%s", self.platform.dvfs_reason)
        self.applied = c

    def infer(self, x: np.ndarray, groups: Optional[int] = None,
              deadline_ms: Optional[float] = None) -> Tuple[np.ndarray, Dict]:
        d = self.governor.decide(deadline_ms=deadline_ms, level=groups)
        c = d.config
        self.apply(c)
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
        self.governor.observe(c, latency / n, None if energy is None else energy / n, d.latency_limit_ms)
        info = {"config": c.to_dict(), "latency_ms": round(latency * 1e3, 4),
                "energy_mj": None if energy is None else round(energy * 1e3, 4)}
        if self.platform.simulated:
            info["simulated"] = True
        return logits, info

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

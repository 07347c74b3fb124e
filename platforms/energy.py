"""Power sensors and an energy meter that integrates them over an inference window.

Neither board has an energy counter (docs/platforms.md): power is sampled with a monotonic
timestamp and integrated. The meter keeps the running integral E(t_i) at every sample and
holds the latest power until the next sample, so the energy of a window [t0, t1] is
E(t1) - E(t0) with E(t) = E(t_i) + P_i (t - t_i). Where the sensor refreshes slower than an
inference (the XU3's INA231: every 263.8 ms) that is the window's duration times the power
over the latest sensor period, which is all such a sensor can tell. RAPL (x86) is a real
counter and is read directly at both ends.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List, Optional

from .model import Rail
from .sysfs import PlatformError, Sysfs

log = logging.getLogger("dnnscale.energy")
BACKOFF_MAX_S = 5.0     # the longest wait between retries of a failing sensor


def read_watts(fs: Sysfs, rail: Rail) -> float:
    if rail.kind == "ina231":
        return fs.read_float(rail.path)              # "%d.%06d" W
    if rail.kind == "ina3221":
        return fs.read_int(rail.path) / 1000.0       # mW
    if rail.kind == "hwmon":
        return fs.read_int(rail.path) / 1e6          # µW (hwmon's power*_input)
    raise PlatformError("rail %s (%s) is an energy counter, not a power sensor" % (rail.name, rail.kind))


class EnergyMeter:
    """Integrates the summed power of ``rails`` (or reads a RAPL counter)."""

    def __init__(self, fs: Sysfs, rails: List[Rail], clock: Callable[[], float] = time.monotonic,
                 period_s: Optional[float] = None):
        if not rails:
            raise ValueError("no rails to meter")
        self.fs = fs
        self.rails = rails
        self.clock = clock
        self.counter = rails[0].kind == "rapl"
        slowest = max(r.period_s for r in rails)
        self.period = period_s if period_s is not None else max(slowest, 0.02)
        self.error: Optional[str] = None
        self._last = None            # (t, watts, joules) of the latest sample
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- power sensors -------------------------------------------------------
    def watts(self) -> float:
        return sum(read_watts(self.fs, r) for r in self.rails)

    def sample(self) -> None:
        """Take one sample now (the sampler thread calls this every period)."""
        t, w = self.clock(), self.watts()
        last = self._last
        joules = 0.0 if last is None else last[2] + last[1] * (t - last[0])
        self._last = (t, w, joules)

    def _run(self) -> None:
        """Sample every period. A failed read (EIO, ENOENT while a driver rebinds) is a gap,
        not the end: ``error`` says why while it lasts (energy reads raise), the sampler
        retries with backoff (up to BACKOFF_MAX_S), and the first good sample ends it; over
        the gap the integral holds the last good power."""
        wait = self.period
        while not self._stop.wait(wait):
            try:
                self.sample()
            except PlatformError as e:
                if self.error is None:
                    log.warning("energy sensor read failed, retrying: %s", e)
                self.error = str(e)
                wait = min(2 * wait, BACKOFF_MAX_S)
                continue
            if self.error is not None:
                log.warning("energy sensor reads again after: %s", self.error)
                self.error = None
            wait = self.period

    def start(self) -> None:
        if self.counter or self._thread:
            return
        self.sample()
        self._thread = threading.Thread(target=self._run, name="dnnscale-energy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
            self._thread = None

    # -- energy --------------------------------------------------------------
    def joules(self) -> float:
        """The running energy integral now (J); differences of two calls are what matter."""
        if self.counter:       # read at both ends: a failed read is a gap until the next good one
            try:
                value = self.fs.read_int(self.rails[0].path) / 1e6
            except PlatformError as e:
                self.error = str(e)
                raise
            self.error = None
            return value
        if self.error:
            raise PlatformError(self.error)
        last = self._last
        if last is None:
            raise PlatformError("energy meter not started")
        return last[2] + last[1] * (self.clock() - last[0])

    def energy_between(self, j0: float, j1: float) -> float:
        """mJ between two :meth:`joules` readings (handles a RAPL counter wrap)."""
        d = j1 - j0
        if d < 0 and self.counter:
            rng = self.fs.read_int(self.rails[0].path.replace("energy_uj", "max_energy_range_uj")) / 1e6
            d += rng
        return d * 1000.0

"""The profile: predicted latency and energy of every configuration.

Measured on a few configurations, fitted per target, predicted for the rest:

* latency = a_t x MACs / f + b_t   (work over clock plus a fixed cost; f = 1 without DVFS),
  least squares per target over the measured points;
* power   = measured mean power at each measured (target, f), interpolated linearly in f
  for the frequencies not measured (None where the platform has no energy sensor);
* energy  = power x latency.

Plain data in and out (JSON-able), no I/O: the daemon stores it in its state directory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .space import Config, Level, cut_columns


@dataclass
class Sample:
    config: Config
    latency_s: float
    energy_j: Optional[float] = None


@dataclass
class TargetFit:
    a: float                      # seconds per (MAC / kHz)
    b: float                      # seconds
    power: Dict[int, float] = field(default_factory=dict)   # kHz (0: no DVFS) → W

    def latency(self, macs: float, khz: Optional[int]) -> float:
        return max(self.a * macs / (khz or 1) + self.b, 1e-7)

    def watts(self, khz: Optional[int]) -> Optional[float]:
        if not self.power:
            return None
        pts = sorted(self.power.items())
        f = khz or 0
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return float(np.interp(f, xs, ys))


def line(x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """Slope and intercept through the points: the median of the slopes between every two of
    them and the median intercept at that slope (Theil-Sen; least squares through two). One
    sample timed during a burst of noise (a median of 5 runs at 1.8x the steady time was seen
    here) moves a least-squares line, and with it every level's prediction, while this one
    passes through the others (tests/test_governor.py)."""
    if len(x) <= 2:
        a, b = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
        return float(a), float(b)
    i, j = np.triu_indices(len(x), 1)
    keep = ~np.isclose(x[i], x[j], rtol=1e-12, atol=0)
    a = float(np.median((y[j] - y[i])[keep] / (x[j] - x[i])[keep]))
    return a, float(np.median(y - a * x))


class Profile:
    def __init__(self, fits: Dict[str, TargetFit], source: str = "fitted", created: Optional[str] = None):
        self.fits = fits
        self.source = source
        self.created = created      # when it was measured (ISO 8601), where known

    @classmethod
    def fit(cls, samples: Sequence[Sample], levels: Sequence[Level], source: str = "measured") -> "Profile":
        macs = {l.level: l.macs for l in levels}
        by_target: Dict[str, List[Sample]] = {}
        for s in samples:
            by_target.setdefault(s.config.target, []).append(s)
        fits: Dict[str, TargetFit] = {}
        for target, ss in by_target.items():
            x = np.array([macs[s.config.level] / (s.config.freq_khz or 1) for s in ss])
            y = np.array([s.latency_s for s in ss])
            if len(set(np.round(x, 12))) >= 2:
                a, b = line(x, y)
                if a <= 0:                       # noise swamped the slope: fall back to a ratio
                    a, b = float(np.median(y / x)), 0.0
                b = max(float(b), 0.0)
            else:
                a, b = float(np.median(y / x)), 0.0
            power: Dict[int, List[float]] = {}
            for s in ss:
                if s.energy_j is not None and s.latency_s > 0:
                    power.setdefault(s.config.freq_khz or 0, []).append(s.energy_j / s.latency_s)
            fits[target] = TargetFit(float(a), float(b), {f: float(np.median(v)) for f, v in power.items()})
        return cls(fits, source)

    def predict(self, config: Config, macs: int) -> Tuple[float, Optional[float]]:
        fit = self.fits[config.target]
        lat = fit.latency(macs, config.freq_khz)
        w = fit.watts(config.freq_khz)
        return lat, (None if w is None else w * lat)

    def at_fixed_frequency(self, khz: Dict[str, Optional[int]]) -> "Profile":
        """The profile for a space without frequencies (DVFS off): each target predicted at
        the frequency it runs at now (``khz[target]``; None: as fitted without DVFS)."""
        fits = {}
        for t, f in self.fits.items():
            k = khz.get(t)
            if k:
                w = f.watts(k)
                fits[t] = TargetFit(f.a / k, f.b, {} if w is None else {0: w})
            else:
                fits[t] = f
        return Profile(fits, self.source + ", at fixed frequencies", self.created)

    def to_dict(self) -> Dict:
        return {"source": self.source,
                "targets": {t: {"a": f.a, "b": f.b, "power_w": {str(k): v for k, v in f.power.items()}}
                            for t, f in self.fits.items()}}

    @classmethod
    def from_dict(cls, d: Dict) -> "Profile":
        try:
            fits = {str(t): TargetFit(float(v["a"]), float(v["b"]), {int(k): float(w) for k, w in
                                                                     v.get("power_w", {}).items()})
                    for t, v in d["targets"].items()}
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise ValueError("malformed profile: %s" % e) from None
        for t, f in fits.items():       # NaN or 1e308 would steer every decision
            if not (0 < f.a < 1e6 and 0 <= f.b < 1e6) or \
                    not all(0 <= w < 1e6 for w in f.power.values()):
                raise ValueError("profile target %s: latency slope, constant and power must be finite, positive "
                                 "and plausible, got a=%r b=%r" % (t, f.a, f.b))
        if not fits:
            raise ValueError("the profile has no target")
        return cls(fits, str(d.get("source", "loaded")))


def plan_measurements(space: Sequence[Config]) -> List[Config]:
    """Which configurations ``dnnscale profile`` measures: per target, every level at the
    lowest and highest frequency (the latency slope and intercept) and the largest level at
    every frequency (power per frequency). Everything else is predicted."""
    out: List[Config] = []
    by_target: Dict[str, List[Config]] = {}
    for c in space:
        by_target.setdefault(c.target, []).append(c)
    for target, cs in by_target.items():
        freqs = sorted({c.freq_khz or 0 for c in cs})
        levels = sorted({c.level for c in cs})
        for c in cs:
            f = c.freq_khz or 0
            if f in (freqs[0], freqs[-1]) or c.level == levels[-1]:
                out.append(c)
    return out


def split_cuts(profile: Optional[Profile], col_macs: Sequence[float],
               lanes: Sequence[Tuple[str, Optional[int]]]) -> Dict[int, List[Tuple[int, int]]]:
    """Per level k, from one column per lane on: the column ranges of a split's lanes, cut
    so that they finish together (:func:`cut_columns`) by the profile's fit of each lane
    (``lanes``: name, kHz it runs at; None: as fitted without DVFS). Where the profile does
    not know every lane (the halves of one cluster, or no profile yet) they count as equal."""
    fits = profile.fits if profile is not None else {}
    if all(name in fits for name, _ in lanes):
        costs = [(fits[name].a / (khz or 1), fits[name].b) for name, khz in lanes]
    else:
        costs = [(1.0, 0.0)] * len(lanes)
    return {k: cut_columns(col_macs[:k], costs) for k in range(len(lanes), len(col_macs) + 1)}

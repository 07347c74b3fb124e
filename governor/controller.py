"""The feedback governor: per inference, the configuration that meets the budget with the
highest accuracy, and the lowest energy among equals.

* Prediction, per target (a lane: a cluster, a CPU count, the GPU): observed latency =
  ``level`` x (c0 + c1 x profile), where (c0, c1) is a constant plus a per-work term fitted
  online by exponentially forgotten least squares over that target's observations (forget
  ``shape_forget``), anchored to the profile (c0 = 0, c1 = 1) with the weight of
  ``shape_prior`` observations, so a constant per-inference cost that the profile did not
  see is not read as a ratio that differs per level; ``level`` is a fast EWMA (``alpha``)
  of the median of the last 3 observed / modelled ratios (the level so far standing for
  those not yet in), which absorbs a load step within a few inferences and ignores a lone
  spike, a target's first run included. A target that has not been observed for
  ``stale_s`` or for ``stale_runs`` decisions drifts back towards its profile, margin
  included (so it is probed again), its latency shape too unless a load signal keeps its
  quiet and loaded states apart (then the shape learnt quiet is its own, not a load's);
  where the first run after moving to a target missed (a budget something was predicted to
  meet: not while the budget is infeasible), that target waits twice as long
  before it drifts back (up to ``stale_max_s``), and ``stale_s`` again after a move there
  that met its limit: a lane that another load keeps slow is not retried every ``stale_s``.
* A load's coming and going (``set_load``, from the platform's load signal where it has one:
  other processes' time on a target's CPUs): each target model keeps what it learns apart
  for its CPUs quiet and loaded (``REGIME``) and takes up what it learnt in a state when the
  state returns, so a load's tail leaves the margin when the load leaves.
* What ran: ``observe(ran_khz=)`` takes the kernel's frequency read-back; a target held
  below what was asked (a cap) has its higher frequencies left out for ``stale_s``.
* Safety: a configuration meets a latency limit when prediction x margin <= limit, where a
  target's margin is the (1 - the budget's ``miss_rate``, else ``miss_target``) quantile of
  its last ``resid_window`` observed / predicted ratios (at least 1; until ``resid_min`` are
  in, the median of the other targets' fitted tails, at least ``1 + safety``: a lane seldom
  used is taken to be as noisy as the lanes measured, not quieter):
  the margin covers the tail that was measured, for the miss rate asked, instead of fixed
  percentages stacked on each other. ``quantile_margin=False``: the fixed ``1 + safety``.
  The current configuration is left as soon as it is at risk (step down at once).
* Hysteresis: a move up in accuracy needs the better configuration to meet the budget for
  ``up_patience`` consecutive decisions (a count, not extra slack; doubled after a move up
  that missed within ``probation`` inferences, its first run excepted), except right after
  the budget is set or cleared or a pin released (the operator's change: at once). A move
  up also expects its first run within the limit at the learnt cost of a move up's first run
  (``cold_ratio``, from those runs only): that run, at a level whose session has been idle, is
  slower than the level's own, and is not learnt from; the cost drifts back towards 1 when no
  move up has been seen for ``stale_s`` or ``stale_runs`` decisions. ``upcoming``
  names the move up the next decision makes if nothing changes (a change of level only), for
  the executor to run once while no request waits (so that first run finds the level warm).
* A move up held back by the learnt cost of a move alone (``move_ratio``, see :meth:`_move_cost`),
  to a target that runs on all of the current one's processors and more and that a load signal
  reports quiet, is made after ``move_patience`` decisions in a row in which it fits by its
  margin: there the cost stands for the move's first runs, not for a load the target's model
  has not seen, and a first run's miss, once, buys the level for every request after.
* A request that forces its level (``decide(level=k)``) gets the best configuration of
  that level but leaves the governed state (and its hysteresis) where it was.
* Settle time: a target's frequency change takes ``settle_s[target]`` to take effect (the
  platform's figure), during which it runs at the old frequency: the first run after a
  raise loses ``settle x (1 - f_old / f_new)``. That run is learnt without it (it is the
  change's cost, not the configuration's speed) and a miss there is the change's
  (``switch``). Decisions do not avoid it: it is paid once per change, which the
  hysteresis and the rate limit keep rare, and where the settle time exceeds the budget
  (a GPU's 5 ms under a 3 ms budget) avoiding it would keep the frequency low for good.
* Rate limit: a frequency change within ``freq_interval_s`` of the last one is avoided
  when a configuration at the current frequency is as accurate and feasible.
* Infeasible budget: the configuration closest to it (the smallest worst-case ratio of
  prediction to limit; on a target that runs on all of the current one's processors, times the
  learnt cost of a move), and ``feasible`` is False in the decision and the status.
* Bursts: after a miss, the margin of the target that missed, and of every target sharing a
  CPU or a GPU with it (``processors``), is at least the missed run's ratio to its prediction, fading by
  ``burst_decay`` per run.

Speed: the model is increasing in the profile's latency on each target, so for each
(level, target) "lane" the configurations that meet a latency limit are a prefix of the
lane sorted by profiled latency, and the lowest-energy one among them is a precomputed
prefix minimum: a decision is one bisection per lane, in plain Python. Budgets with a power
cap and infeasible budgets take a vectorised slow path.

Pure logic; the clock is injected. No I/O.
"""
from __future__ import annotations

import bisect
import copy
import math
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .profile import Profile
from .space import Config, Level

LIMITS = {"latency_ms": 600_000.0, "energy_mj": 1e9, "power_w": 1e4, "accuracy_min": 100.0,
          "miss_rate": 0.5}                                                                   # above: absurd
FLOORS = {"latency_ms": 1e-3, "energy_mj": 1e-6, "power_w": 1e-6, "accuracy_min": 0.0,
          "miss_rate": 0.001}     # below: a typo (or, for miss_rate, a tail 300 runs cannot show)
CAUSES = ("infeasible", "frequency_cap", "switch", "wake_up", "contention", "prediction")   # of a miss
# what a target model learns, kept apart for its CPUs quiet and loaded by other processes
# (not the guard after a miss: it is of the last runs, whatever the state; the margin follows)
REGIME = ("corr_lat", "corr_en", "c0", "c1", "sums", "resid", "resid_at", "spread", "recent", "tail")


def quantile(values, q: float) -> float:
    """``np.quantile(values, q)`` (its linear interpolation) of a deque without np.quantile's
    conversion, which reads a deque by indexing, item by item, each index a walk."""
    a = np.fromiter(values, float, len(values))
    return _quantile(a, q)


def _quantile(a: np.ndarray, q: float) -> float:
    pos = q * (len(a) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(a) - 1)
    part = np.partition(a, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (pos - lo))


def tail_quantile(values, miss: float, tail: float = 0.1) -> float:
    """The value exceeded with probability ``miss``, from a generalised-Pareto fit to the
    peaks over the (1 - ``tail``) empirical quantile (peaks over a threshold; probability-
    weighted moments, Hosking and Wallis 1987, shape clipped to [-0.5, 0.5]). Where ``miss``
    is not inside the tail, or fewer than 5 peaks are in, the plain empirical quantile. A
    plain quantile of 300 values at 1% rests on the 3 largest; the fit on the 30 largest."""
    a = np.fromiter(values, float, len(values))
    n = len(a)
    if not 0 < miss < tail or n * tail < 5:
        return _quantile(a, 1 - miss)
    a.sort()
    u = float(a[int((1 - tail) * (n - 1))])
    y = a[a > u] - u
    m = len(y)
    if m < 5:
        return _quantile(a, 1 - miss)
    a0 = float(y.mean())
    a1 = float(np.dot(y, np.arange(m - 1, -1, -1)) / (m * (m - 1)))     # E[Y (1 - F(Y))]
    d = a0 - 2 * a1
    xi = 0.5 if d <= 0 else min(max(2 - a0 / d, -0.5), 0.5)
    sigma = a0 * (1 - xi)                                                  # E[Y] = sigma / (1 - xi)
    ratio = (m / n) / miss
    return u + (sigma * math.log(ratio) if abs(xi) < 1e-6 else sigma / xi * (ratio ** xi - 1))


@dataclass
class Budget:
    latency_ms: Optional[float] = None
    energy_mj: Optional[float] = None
    power_w: Optional[float] = None
    accuracy_min: Optional[float] = None      # top-1 %: the governor's own choices stay at or above it
    miss_rate: Optional[float] = None         # the share of runs that may exceed latency_ms (None: Params')

    def validate(self) -> "Budget":
        for key, limit in LIMITS.items():
            v = getattr(self, key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ValueError("%s must be a finite number or null, got %r" % (key, v))
            if not FLOORS[key] <= v <= limit:
                raise ValueError("%s must be in [%g, %g], got %r" % (key, FLOORS[key], limit, v))
            setattr(self, key, float(v))
        if self.miss_rate is not None and self.latency_ms is None:
            raise ValueError("miss_rate is the share of runs that may exceed latency_ms: give latency_ms too")
        return self

    @property
    def empty(self) -> bool:
        return self.latency_ms is None and self.energy_mj is None and self.power_w is None \
            and self.accuracy_min is None

    def to_dict(self) -> Dict:
        return asdict(self)


@dataclass
class Decision:
    config: Config
    predicted_latency_s: float
    predicted_energy_j: Optional[float]
    feasible: bool
    latency_limit_ms: Optional[float]
    gave_way: Tuple[str, ...] = ()     # infeasible: the budget's keys the configuration does not meet


def drift(ratio: float, alpha: float) -> float:
    """One step of a learnt ratio that has gone stale back towards 1 (the profile's word)."""
    return 1 + (ratio - 1) * math.exp(-alpha)


@dataclass
class Params:
    safety: float = 0.10           # the margin until resid_min observations (or always, see below)
    miss_target: float = 0.01      # the margin is the (1 - miss_target) quantile of observed / predicted
    quantile_margin: bool = True   # False: the fixed 1 + safety
    tail_fit: bool = True          # that quantile from a generalised-Pareto tail (False: empirical)
    winsorise: bool = False        # clip the ratios at 3 spreads before they enter the window
    burst_decay: float = 0.7       # per run: how fast the guard after a miss fades
    wake_s: float = 1.0            # a run after this long without one: a miss there is a wake-up's
    resid_window: int = 300        # observations per target the quantile is taken over
    resid_min: int = 30
    shape_forget: float = 0.98     # per observation: the latency model's memory (~50 inferences)
    shape_prior: float = 2.0       # observations' worth of weight on the profile's own shape
    up_patience: int = 5
    probation: int = 20            # inferences after a move up in which a miss doubles up_patience
    alpha: float = 0.3
    stale_s: float = 2.0           # unobserved for this long → the correction decays to 1
    stale_runs: int = 200          # ... or for this many decisions (a fast request stream)
    stale_max_s: float = 64.0      # the longest wait: a target's after moves there missed; the move cost's
    freq_interval_s: float = 0.05
    window: int = 2000             # observations kept for the status percentiles
    # Accuracy points a level must beat every cheaper level (fewer MACs) by to be chosen on its
    # own: below this, its extra time and energy buy a difference the test set cannot resolve
    # (0.1 points = 10 of 10,000 images). Pins and a request's own groups still reach it.
    acc_tolerance: float = 0.1
    # decisions in a row a move up to a quiet wider target, held back by the move cost alone, waits (0: never)
    move_patience: int = 40


def worthwhile(levels: Sequence[Level], tolerance: float) -> set:
    """The levels that beat every cheaper level (fewer MACs) by more than ``tolerance`` points."""
    return {l.level for l in levels
            if not any(o.macs < l.macs and o.accuracy >= l.accuracy - tolerance for o in levels)}


class TargetModel:
    """What the governor has learnt about one target (a lane): the latency model (the fast
    level ``corr_lat`` times the shape ``c0 + c1 x profile``), the energy correction, and the
    margin from the observed tail. The module docstring gives the rules."""

    def __init__(self, p: "Params", ref_s: float, miss_rate: float):
        self.p = p
        self.ref = ref_s               # the shape fit's unit (x = profile / ref ~ 1)
        self.corr_lat = 1.0            # the fast level: EWMA of observed / modelled
        self.corr_en = 1.0
        self.c0, self.c1 = 0.0, 1.0    # the shape (c0 in seconds)
        self.sums = [0.0] * 5          # forgotten sums: w, wx, wxx, wy, wxy
        self.resid: Deque[float] = deque(maxlen=p.resid_window)
        self.resid_at: Deque[float] = deque(maxlen=p.resid_window)   # when each ratio was observed
        self.n_obs = 0
        self.spread = 0.0              # EWMA of (ratio - 1)^2, for the winsorising
        self.recent: Deque[float] = deque(maxlen=3)   # the last observed / modelled ratios
        self.miss_rate = miss_rate     # the miss rate asked (the budget's, else Params')
        self.prior = 1 + p.safety      # the tail assumed until the window holds resid_min ratios
        self.tail = self.prior         # the margin for the miss rate asked, from the observed tail
        self.guard = 1.0               # raised by a miss, fading (misses come in bursts)
        self.margin = self.tail        # the larger of the two
        self.seen = -math.inf
        self.seen_n = 0                # the governor's decision count when it last learnt from a run here
        self.stale_s = p.stale_s       # unobserved this long → decay (doubled after a move here missed)
        self.loaded = False            # other processes use this target's CPUs (set_loaded)
        self.signalled = False         # a load signal tells that (its quiet state's shape is its own)
        self._other: Optional[Dict] = None   # what was learnt in the other state (REGIME)

    def shape(self, base_s: float) -> float:
        return max(self.c0 + self.c1 * base_s, 0.05 * base_s)

    def fit_shape(self) -> None:
        """(c0, c1) from the forgotten sums, ridge-anchored at the profile's (0, 1)."""
        w, sx, sxx, sy, sxy = self.sums
        r = self.p.shape_prior
        a00, a01, a11 = w + r, sx, sxx + r
        b0, b1 = sy, sxy + r
        det = a00 * a11 - a01 * a01
        c0, c1 = (a11 * b0 - a01 * b1) / det, (a00 * b1 - a01 * b0) / det
        self.c0, self.c1 = c0 * self.ref, min(max(c1, 0.05), 50.0)

    def learnt(self) -> bool:
        """Whether a decay has anything to take back (the guard after a miss it leaves: it fades
        by the runs, so a stale target holding one is not decayed at every decision for it)."""
        return (abs(self.corr_lat - 1) > 1e-4 or abs(self.corr_en - 1) > 1e-4 or self.sums[0] > 1e-3
                or abs(self.tail - self.prior) > 1e-3)

    def decay(self) -> None:
        """One step back towards the profile (unobserved for ``stale_s``): the corrections
        and, unless a load signal keeps its loaded state apart (``signalled``), the shape, so
        a target that a load had slowed is tried again; its tail margin
        goes back to the prior (the median of the other targets' fitted tails, at least
        ``1 + safety``; when it is used again, its window starts afresh). A tail kept for a
        minute instead kept the governor on the lanes it had not missed on, 2 points below
        the best static choice on a quiet machine (``bench.static``)."""
        a = self.p.alpha
        self.corr_lat, self.corr_en = drift(self.corr_lat, a), drift(self.corr_en, a)
        if not self.signalled:          # else the shape learnt apart from others' load stays
            self.sums = [v * math.exp(-a) for v in self.sums]
            self.fit_shape()
        self.tail = self.prior          # the guard after a miss fades by the runs (fade), not here
        self.margin = max(self.tail, self.guard)
        if self.resid:
            self.resid.clear()
            self.resid_at.clear()
            self.spread = 0.0

    def observe(self, base_s: float, latency_s: float, energy_j: Optional[float], base_e: float,
                now: float, missed: bool = False, decision: int = 0) -> None:
        p, a = self.p, self.p.alpha
        shape = self.shape(base_s)
        ratio = latency_s / (shape * self.corr_lat)          # against what was predicted for it
        # A load step is a few large errors that the fast level absorbs: they must not sit in
        # the window as tail for resid_window inferences. Once the level moves (the median
        # of the last 3 runs is beyond the clip: a step, not a spike), the window's last 3
        # ratios are winsorised at 3 spreads (at least ``safety``; jitter keeps coming, grows
        # the spread and so widens the clip). A lone spike (the scheduler giving a competing
        # process the CPU for a time slice: 5x a run) stays whole: it is the tail a budget
        # must cover. ``winsorise=True``: every ratio is clipped (the older rule, which hid
        # those spikes from the margin).
        clip = 1 + max(3 * math.sqrt(self.spread), p.safety)
        if p.winsorise:
            ratio = min(max(ratio, 2 - clip), clip)
        self.spread = 0.95 * self.spread + 0.05 * (min(max(ratio, 2 - clip), clip) - 1) ** 2
        self.resid.append(ratio)
        self.resid_at.append(now)
        self.n_obs += 1
        # the quantile every 10th observation once resid_min are in
        if self.n_obs % 10 == 0:
            self.fit_tail()
        # the level follows the median of the last 3 observed / modelled ratios: a load step
        # (which repeats) moves it from the second inference on, a lone spike (a control
        # command's work on the same CPU, a page fault) not at all
        self.recent.append(min(max(latency_s / shape, 0.05), 50.0))
        # until 3 are in, the level held so far stands for the missing ones: a target's first
        # run (the first of a fresh daemon there) is a lone run, not a step
        level = sorted(list(self.recent) + [self.corr_lat] * (3 - len(self.recent)))[1]
        if len(self.recent) == 3 and not 2 - clip <= level / self.corr_lat <= clip:
            for j in range(1, min(3, len(self.resid)) + 1):
                self.resid[-j] = min(max(self.resid[-j], 2 - clip), clip)
        self.corr_lat = (1 - a) * self.corr_lat + a * level
        x, y, f = base_s / self.ref, latency_s / self.ref, p.shape_forget
        for j, v in enumerate((1.0, x, x * x, y, x * y)):
            self.sums[j] = self.sums[j] * f + v
        self.fit_shape()
        if energy_j is not None and energy_j > 0 and not math.isnan(base_e):
            self.corr_en = (1 - a) * self.corr_en + a * min(max(energy_j / base_e, 0.05), 50.0)
        # After a miss the next runs are likely to miss too (a burst), and the level, which
        # follows a median of 3, has not moved for one: the margin is at least the part of
        # the missed run that the updated model still does not predict, for a few runs
        # (:meth:`fade`).
        if missed:
            self.raise_guard(latency_s / (self.shape(base_s) * self.corr_lat))
        self.seen, self.seen_n = now, decision

    def set_loaded(self, loaded: bool, now: float, lag_s: float) -> None:
        """Other processes' load came onto this target's CPUs or went from them
        (platforms/cpuload.py): what was learnt in that state before comes back (REGIME; the
        first time: all that is known now, tail window included, which the new state's runs
        then replace), and what was learnt here is kept for when this state returns. The
        ratios of the last ``lag_s`` (the load signal's window: it tells of a change that long
        after it began) move with it, and a guard raised by a miss holds in the new state too.
        Starting the first loaded state from an empty window (the prior margin, 1.1) and
        dropping the guard at the switch let the governor move up within a burst and miss: on
        the simulated XU3 with the signal, 3.1% misses instead of 0.9% (a trial, CHANGELOG.md)."""
        if loaded == self.loaded:
            return
        mine = {f: getattr(self, f) for f in REGIME}
        moved = []
        while mine["resid_at"] and mine["resid_at"][-1] > now - lag_s:
            moved.append((mine["resid_at"].pop(), mine["resid"].pop()))
        other = self._other
        if other is None:                   # the first time: start from all that is known here
            other = copy.deepcopy(mine)
        for at, r in reversed(moved):
            other["resid_at"].append(at)
            other["resid"].append(r)
        self._other = mine
        for f in REGIME:
            setattr(self, f, other[f])
        self.loaded = loaded
        self.fit_tail()
        if len(self.resid) < self.p.resid_min:
            self.tail = self.prior
        self.margin = max(self.tail, self.guard)

    def fit_tail(self) -> None:
        """The margin for ``miss_rate`` from the window's tail (once ``resid_min`` are in)."""
        p = self.p
        if p.quantile_margin and len(self.resid) >= p.resid_min:
            self.tail = max(1.0, tail_quantile(self.resid, self.miss_rate) if p.tail_fit
                            else quantile(self.resid, 1 - self.miss_rate))
            self.margin = max(self.tail, self.guard)

    def assume(self, prior: float) -> None:
        """The tail to assume while the window is too short to fit one."""
        if prior == self.prior:
            return
        self.prior = prior
        if len(self.resid) < self.p.resid_min:
            self.tail = prior
            self.margin = max(self.tail, self.guard)

    def ask(self, miss_rate: float) -> None:
        """A budget asks for another miss rate: the margin for it from the tail seen so far."""
        if miss_rate != self.miss_rate:
            self.miss_rate = miss_rate
            self.fit_tail()

    def raise_guard(self, ratio: float) -> None:
        self.guard = max(self.guard, min(ratio, 3.0))
        self.margin = max(self.tail, self.guard)

    def fade(self) -> None:
        """One run (on any target) since: the guard after a miss fades by burst_decay."""
        if self.guard > 1.0:
            self.guard = 1 + (self.guard - 1) * self.p.burst_decay
            if self.guard < 1.001:
                self.guard = 1.0
            self.margin = max(self.tail, self.guard)

    def status(self) -> Dict:
        return {"constant_ms": round(self.c0 * 1e3, 4), "scale": round(self.c1, 4)}


class Stats:
    """What was served, for ``status``: latencies, misses, energy, decisions."""

    def __init__(self, window: int):
        self.lat_ms: Deque[float] = deque(maxlen=window)
        self.miss: Deque[bool] = deque(maxlen=window)
        self.energy_mj: Deque[float] = deque(maxlen=window)
        self.decisions = self.switches = 0
        self.restart()

    def restart(self) -> None:
        """A new budget: the miss counts start again."""
        self.budget_decided = self.budget_missed = 0
        self.causes = dict.fromkeys(CAUSES, 0)
        self.after_miss = self.after_miss_missed = 0      # runs right after a miss; of them, missed
        self.run = self.longest_run = 0                   # consecutive misses: now, the most
        self._last_missed = False

    def count(self, latency_s: float, energy_j: Optional[float], missed: bool, cause: Optional[str] = None) -> None:
        self.lat_ms.append(latency_s * 1e3)
        self.miss.append(missed)
        self.budget_decided += 1
        self.budget_missed += missed
        if self._last_missed:
            self.after_miss += 1
            self.after_miss_missed += missed
        self._last_missed = missed
        self.run = self.run + 1 if missed else 0
        self.longest_run = max(self.longest_run, self.run)
        if missed and cause is not None:
            self.causes[cause] += 1
        if energy_j is not None:
            self.energy_mj.append(energy_j * 1e3)

    def status(self) -> Dict:
        lat = np.array(self.lat_ms) if self.lat_ms else None
        return {
            "latency_ms": None if lat is None else {q: round(float(np.percentile(lat, int(q[1:]))), 4)
                                                    for q in ("p50", "p95", "p99")},
            "miss_rate": round(self.budget_missed / self.budget_decided, 5) if self.budget_decided else 0.0,
            "miss_rate_recent": round(float(np.mean(self.miss)), 5) if self.miss else 0.0,
            "observed_since_budget": self.budget_decided,
            "misses": {"causes": dict(self.causes), "longest_run": self.longest_run,
                       "p_miss_after_miss": round(self.after_miss_missed / self.after_miss, 4)
                       if self.after_miss else None},
            "energy_mj_mean": round(float(np.mean(self.energy_mj)), 4) if self.energy_mj else None,
            "decisions": self.decisions, "switches": self.switches,
        }


class _Lane:
    """The allowed configurations of one (level, target), sorted by base latency."""
    __slots__ = ("target", "idx", "lat", "best")

    def __init__(self, target: int, idx: List[int], base_lat, base_ekey, freq):
        idx = sorted(idx, key=lambda i: (base_lat[i], -freq[i]))
        self.target = target
        self.idx = idx
        self.lat = [float(base_lat[i]) for i in idx]
        self.best: List[int] = []       # best[j]: lowest-energy config among idx[0..j]
        for i in idx:                   # (ties, or unknown energy: the lowest frequency)
            if not self.best:
                self.best.append(i)
                continue
            b = self.best[-1]
            self.best.append(i if (base_ekey[i], freq[i]) < (base_ekey[b], freq[b]) else b)


class Governor:
    """The decision (:meth:`decide`), the feedback (:meth:`observe`) and the operator's
    restrictions (:meth:`pin`, :meth:`set_budget`), over three parts: a :class:`TargetModel`
    per target, one rule for what is allowed (:meth:`_build_lanes`) and :class:`Stats`."""

    def __init__(self, space: Sequence[Config], levels: Sequence[Level], profile: Profile,
                 clock: Callable[[], float] = time.monotonic, params: Optional[Params] = None,
                 settle_s: Optional[Dict[str, float]] = None, splits: Sequence[str] = (),
                 processors: Optional[Dict[str, Sequence]] = None):
        if not space:
            raise ValueError("empty configuration space")
        self.space = list(space)
        self.index = {c: i for i, c in enumerate(self.space)}
        self.levels = {l.level: l for l in levels}
        self.clock = clock
        self.p = params or Params()
        self.targets = sorted({c.target for c in self.space})
        t_of = {t: i for i, t in enumerate(self.targets)}
        self._tgt = np.array([t_of[c.target] for c in self.space])
        # a split runs a whole level's columns at once on its lanes; an anytime run adds them
        # one at a time, which the profile does not measure there: decided elsewhere if it can
        self._whole = ~np.isin(self._tgt, [t_of[t] for t in splits if t in t_of])
        self._lvl = np.array([c.level for c in self.space])
        self._freq = np.array([c.freq_khz or 0 for c in self.space], dtype=float)
        self._acc = np.array([self.levels[c.level].accuracy for c in self.space])
        self._tgt_l, self._freq_l, self._acc_l = self._tgt.tolist(), self._freq.tolist(), self._acc.tolist()
        self.settle_s = [float((settle_s or {}).get(t, 0.0)) for t in self.targets]
        # per target, the others that run on one of its processors (``processors``: target →
        # its CPUs and GPU): a burst that slows one slows them too
        own = [set((processors or {}).get(t, ())) for t in self.targets]
        self._peers = [[u for u in range(len(own)) if u != t and own[t] & own[u]] for t in range(len(own))]
        # ... and those that run on all of its processors: a load that slows it slows them as much
        self._over = [[u for u in self._peers[t] if own[t] <= own[u]] for t in range(len(own))]
        # ... and those that run on all of them and more
        self._wider = [[u for u in self._over[t] if own[t] < own[u]] for t in range(len(own))]
        self._khz_now: Dict[int, float] = {}        # target → the frequency of its last decision
        # levels by accuracy, best first (level number breaks ties)
        self._level_order = sorted({c.level for c in self.space},
                                   key=lambda l: (-self.levels[l].accuracy, -l))
        self.budget = Budget()
        self.pinned: Dict = {}
        self.caps: Dict[str, int] = {}               # target → kHz the kernel held it to (read-back)
        self.floors: Dict[str, int] = {}             # target → kHz other models on the board need there
        self._cap_at: Dict[str, float] = {}
        self.tm: List[TargetModel] = []
        self.set_profile(profile)
        self.current: Optional[int] = None
        self._up_count = 0
        self._blocked = 0                      # decisions a move up was held back by the move cost alone
        self._patience = self.p.up_patience    # doubled after each move up that missed at once
        self._probe, self._probation = None, 0
        self._freq_changed_at = -math.inf
        self._switched: Optional[int] = None     # decided on another target or frequency: its first run
        self._ran: Optional[int] = None          # the last decision's configuration (forced ones too)
        self._cold: Optional[int] = None         # decided at another level than the run before, same target
        self._cold_up = False                    # ... a more accurate one
        self._switch_loss = 0.0                  # what the last decision's settling was predicted to cost
        self.move_ratio = 1.0          # EWMA of the first run after a target move / its prediction
        self.cold_ratio = 1.0          # EWMA of a move up's first run (same target) / its prediction
        self._cold_at = (-math.inf, 0)  # (clock, decisions) at the last move up's first run
        self._moved_at = (-math.inf, 0)  # ... at the last move's first run
        self._last_target: Optional[int] = None
        self._observed_at = -math.inf
        self.last: Optional[Decision] = None
        self.stats = Stats(self.p.window)
        self._fresh_decision = False
        # the move up the next decision makes if the budget still holds it, where it is a change of
        # level only (same target and frequency): the executor may run it once while no request
        # waits, so that its first run does not find the level's session cold (``rehearsal``)
        self.upcoming: Optional[Config] = None

    # ------------------------------------------------------------------ inputs
    def set_profile(self, profile: Profile) -> None:
        """A new profile: the predictions, and the latency models start again from it."""
        missing = {c.target for c in self.space} - set(profile.fits)
        if missing:
            raise ValueError("the profile has no fit for target(s) %s" % ", ".join(sorted(missing)))
        self.profile = profile
        preds = [profile.predict(c, self.levels[c.level].macs) for c in self.space]
        self._base_lat = np.array([p[0] for p in preds])
        self._base_en = np.array([np.nan if p[1] is None else p[1] for p in preds])
        self._base_ekey = np.where(np.isnan(self._base_en), np.inf, self._base_en)
        self._lat_l, self._ekey_l = self._base_lat.tolist(), self._base_ekey.tolist()
        # per target, the profile's fastest run of the most accurate level it serves: where no
        # energy tells configurations apart, the stronger target, from which the next level up
        # is likelier to fit without a move
        top = {t: max(self._lvl[self._tgt == t]) for t in range(len(self.targets))}
        self._reach = [float(self._base_lat[(self._tgt == t) & (self._lvl == top[t])].min())
                       for t in range(len(self.targets))]
        # the unit of the shape fit per target (x = profile / ref ~ 1): its median profile latency
        self.tm = [TargetModel(self.p, float(np.median(self._base_lat[self._tgt == t])), self.miss_rate)
                   for t in range(len(self.targets))]
        self._build_lanes()

    def carry_over(self, old: "Governor") -> None:
        """Take up what ``old`` (the governor this one replaces: a reload, DVFS lost) knew,
        where it still applies: the operator's budget and pin (the pin's frequency only where
        this space has it), the statistics, and, under the same profile, each target's
        latency model and margin and the caps in force. Hysteresis starts afresh."""
        self.budget = old.budget
        for m in self.tm:
            m.ask(self.miss_rate)
        pin = dict(old.pinned)
        if pin.get("target") is not None and pin["target"] not in self.targets:
            pin.pop("target")
        if pin.get("freq_khz") is not None and not self._matching(target=pin.get("target"),
                                                                  freq_khz=pin["freq_khz"]).any():
            pin.pop("freq_khz")           # that frequency is no longer in the space (DVFS lost there)
        if pin:
            self.pin(level=pin.get("groups"), target=pin.get("target"), freq_khz=pin.get("freq_khz"))
        self.stats = old.stats
        if old.profile is self.profile:
            for t, name in enumerate(self.targets):
                if name in old.targets:
                    self.tm[t] = old.tm[old.targets.index(name)]
            self.caps = {n: k for n, k in old.caps.items() if n in self.targets and (self._freq > 0).any()}
            self._cap_at = {n: old._cap_at[n] for n in self.caps}
            self._build_lanes()

    def _build_lanes(self) -> None:
        """The one rule for what may run: the operator's pin and the caps in force. A request
        that forces its level replaces the pin's level only: ``_forced`` keeps the pinned
        target and frequency and the caps for it."""
        self._pin_place = self._matching(target=self.pinned.get("target"), freq_khz=self.pinned.get("freq_khz"))
        place = self._pin_place.copy()                  # the pin's target and frequency, the caps
        for name, khz in self.caps.items():
            place &= ~((self._tgt == self.targets.index(name)) & (self._freq > khz))
        self._own_place = place                         # before what other models need
        place = place & self._floor_mask(self.floors)
        self._place = place
        self._allowed = place & ((self._lvl == self.pinned["groups"]) if self.pinned.get("groups") is not None
                                 else True)
        self._lanes = self._lanes_of(self._allowed)
        self._forced = self._lanes_of(place)
        self._stepped: Dict[bool, Dict[int, List[_Lane]]] = {}   # forced → lanes off the splits (decide)
        # where the caps leave nothing under the pin, the pin alone (``_slow``): its levels
        levels = [lv for lv in self._level_order if self._lanes[lv]] or \
            [lv for lv in self._level_order if (self._pin_place & (self._lvl == lv)).any()
             and self.pinned.get("groups") in (None, lv)]
        keep = worthwhile([self.levels[lv] for lv in levels], self.p.acc_tolerance)
        self._auto_order = [lv for lv in self._level_order if lv in keep]

    def _floor_mask(self, floors: Dict[str, int]):
        """The configurations at or above ``floors`` (target → kHz) on their targets."""
        mask = np.ones(len(self.space), bool)
        for name, khz in floors.items():
            if name in self.targets:
                mask &= ~((self._tgt == self.targets.index(name)) & (self._freq > 0) & (self._freq < khz))
        return mask

    def share(self, floors: Dict[str, int], running_khz: Optional[Dict[str, int]] = None) -> None:
        """What the board's other models impose (governor/board.py): ``floors``, target →
        the kHz they need there (this model's configurations below it are left out: the
        target runs at least that fast while they are served); ``running_khz``, target →
        the frequency set now (the settle a change costs is counted from it)."""
        floors = {t: k for t, k in floors.items() if t in self.targets}
        if floors != self.floors:
            self.floors = floors
            self._build_lanes()
        for name, khz in (running_khz or {}).items():
            if name in self.targets and khz:
                self._khz_now[self.targets.index(name)] = khz

    def need_khz(self, config: Config, limit_ms: Optional[float]) -> Optional[int]:
        """The frequency ``config``'s level would run at on its target without the other
        models: the one the governor picks there alone (the least energy that meets the
        budget, :meth:`_best_at`'s order), the fastest where none meets it. None for a target
        without frequency control."""
        if config.freq_khz is None or config.target not in self.targets:
            return None
        idx = np.flatnonzero(self._own_place & self._matching(config.level, config.target)).tolist()
        if not idx:
            return config.freq_khz
        limit_s = None if limit_ms is None else limit_ms / 1e3
        meets = [i for i in idx if self._meets(i, limit_s)]
        if not meets:
            return int(max(self._freq_l[i] for i in idx))
        return int(self._freq_l[min(meets, key=lambda i: (self._ekey(i), self._freq_l[i], self._lat(i)))])

    def floor_khz(self, config: Config, limit_ms: Optional[float], need: Optional[int] = None) -> int:
        """The lowest frequency another model may leave ``config``'s target at so that this
        model's next run there, settling up to :meth:`need_khz` (the target's settle time at
        the old frequency, as :meth:`_settle` predicts it), still meets its latency limit
        with its margin: 0 where the slack covers the whole settle time (or there is no limit,
        or no known settle time), the need itself where there is no slack. ``need``: what
        :meth:`need_khz` gave, where the caller has it."""
        need = self.need_khz(config, limit_ms) if need is None else need
        if need is None or limit_ms is None:
            return 0
        t = self.targets.index(config.target)
        s = self.settle_s[t]
        i = self.index.get(Config(config.level, config.target, need))
        if not s or i is None:
            return 0
        slack = limit_ms / 1e3 / (self.tm[t].margin * self._move_cost(t)) - self._lat(i)
        if slack >= s:
            return 0
        if slack <= 0:
            return need
        lowest = need * (1 - slack / s)
        steps = {f for f, tt in zip(self._freq_l, self._tgt_l) if tt == t and lowest <= f <= need}
        return int(min(steps, default=need))

    def best_accuracy(self, floors: Dict[str, int], deadline_ms: Optional[float] = None) -> float:
        """The best accuracy a decision could meet the budget with under ``floors``
        (-inf: none meets it), without deciding."""
        limit_ms = deadline_ms if deadline_ms is not None else self.budget.latency_ms
        _, _, worst = self._ratios(None if limit_ms is None else limit_ms / 1e3)
        ok = self._own_place & self._floor_mask(floors) & np.isin(self._lvl, self._floored(self._auto_order)) \
            & (worst <= 1.0)
        return float(self._acc[ok].max()) if ok.any() else -math.inf

    def _lanes_of(self, mask) -> Dict[int, List[_Lane]]:
        lanes: Dict[int, List[_Lane]] = {}
        for lv in self._level_order:
            lanes[lv] = []
            for t in range(len(self.targets)):
                idx = np.flatnonzero(mask & (self._lvl == lv) & (self._tgt == t)).tolist()
                if idx:
                    lanes[lv].append(_Lane(t, idx, self._base_lat, self._base_ekey, self._freq))
        return lanes

    def set_budget(self, budget: Budget) -> None:
        """A new budget is a fresh decision: no hysteresis carried over from the old one (after
        a clear, the best configuration from the next request), and the miss rate restarts."""
        self.budget = self.check_budget(budget)
        for m in self.tm:
            m.ask(self.miss_rate)
        self._share_tails()                   # the fitted tails are for the new rate now
        self._fresh()
        self.stats.restart()

    @property
    def miss_rate(self) -> float:
        """The miss rate the margins are for: the budget's, else ``Params.miss_target``."""
        b = self.budget.miss_rate
        return self.p.miss_target if b is None else b

    def check_budget(self, budget: Budget) -> Budget:
        """``budget`` validated, and its accuracy floor reachable by some level (ValueError)."""
        budget = budget.validate()
        best = max(self.levels[lv].accuracy for lv in self._level_order)
        if budget.accuracy_min is not None and budget.accuracy_min > best:
            raise ValueError("accuracy_min %g is above every level's accuracy (the best: %g)"
                             % (budget.accuracy_min, best))
        return budget

    def clear_budget(self) -> None:
        self.set_budget(Budget())

    def _matching(self, level: Optional[int] = None, target: Optional[str] = None,
                  freq_khz: Optional[int] = None):
        """The configurations with what is given (any subset; an unknown target: none)."""
        mask = np.ones(len(self.space), bool)
        if level is not None:
            mask &= self._lvl == level
        if target is not None:
            mask &= self._tgt == (self.targets.index(target) if target in self.targets else -1)
        if freq_khz is not None:
            mask &= self._freq == freq_khz
        return mask

    def pin(self, level: Optional[int] = None, target: Optional[str] = None,
            freq_khz: Optional[int] = None) -> None:
        """Restrict decisions to configurations matching what is given (any subset)."""
        if not self._matching(level, target, freq_khz).any():
            raise ValueError("no configuration has %s" % ", ".join(
                "%s=%s" % kv for kv in (("groups", level), ("target", target), ("freq_khz", freq_khz))
                if kv[1] is not None))
        self.pinned = {k: v for k, v in (("groups", level), ("target", target), ("freq_khz", freq_khz))
                       if v is not None}
        self._build_lanes()

    def release(self) -> None:
        self.pinned = {}
        self._build_lanes()
        self._fresh()

    def _on_probation(self, i: int, missed: bool) -> None:
        """A move up that misses within ``probation`` inferences doubles the count the next
        move up waits for (up to 64x): a configuration that the model keeps finding just
        inside the budget, and the board just outside, is tried less and less often."""
        if self._probation <= 0 or i != self._probe:
            return
        if missed:
            self._patience = min(2 * self._patience, 64 * self.p.up_patience)
            self._probation = 0
        else:
            self._probation -= 1
            if self._probation == 0:
                self._patience = self.p.up_patience

    def _fresh(self) -> None:
        """The next decision moves wherever is best at once: hysteresis guards against noise,
        not against the operator's own change (the frequency rate limit still holds)."""
        self._fresh_decision = True
        self.upcoming = None
        self._up_count = 0
        self._blocked = 0
        self._patience = self.p.up_patience
        self._probation = 0

    # ------------------------------------------------------------------ decide
    def _decay_stale(self) -> None:
        """A target unobserved for its ``stale_s`` or for ``stale_runs`` decisions (both
        doubled alike after a move there missed) steps back towards its profile. Time alone
        let a lane that looked slow in a few runs stay out of every budget for thousands of
        requests at a fast request rate; decisions alone would let it stay out for minutes
        at a slow one."""
        now, n = self.clock(), self.stats.decisions
        # so does the cost of a change of level, unobserved as long: one slow first run (2.4x,
        # in a burst) kept k=2 out of a whole budget that k=2 alone kept at 0.17% misses, and
        # with it the changes of level that would have taught the cost again
        def stale(at: Tuple[float, int], wait_s: float) -> bool:
            return now - at[0] > wait_s or n - at[1] > self._stale_runs(wait_s)
        if self.cold_ratio > 1.0001 and stale(self._cold_at, self.p.stale_s):
            self.cold_ratio = drift(self.cold_ratio, self.p.alpha)
        # and so does the cost of a move to another target, learnt from moves alone, after the
        # longest wait (``stale_max_s``): after a 9 ms first run on one CPU (3x its prediction)
        # the governor stayed there, k=1, for a whole budget at which k=2 on both CPUs kept
        # within 1%, the cost keeping it from the moves that would have lowered it. Not sooner:
        # the cost also stands for a load on processors the target moved to shares with the one
        # it left, which that target's model has not seen; drifting back after ``stale_s``, the
        # simulated XU3 retried such moves under its load and missed there (0.89% misses
        # against 0.41%)
        if self.move_ratio > 1.0001 and stale(self._moved_at, self.p.stale_max_s):
            self.move_ratio = drift(self.move_ratio, self.p.alpha)
        decayed = False
        for m in self.tm:
            if stale((m.seen, m.seen_n), m.stale_s) and m.learnt():
                m.decay()
                decayed = True
        if decayed:
            self._share_tails()

    def set_load(self, loaded: Dict[str, Optional[bool]], lag_s: float) -> None:
        """Which targets other processes load now (target → True / False; None or absent:
        unknown, as it was): each target model takes up what it learnt in that state
        (:meth:`TargetModel.set_loaded`); ``lag_s``: how long after a change the signal tells of it."""
        changed = False
        now = self.clock()
        for name, m in zip(self.targets, self.tm):
            flag = loaded.get(name)
            if flag is not None:
                m.signalled = True
                if flag != m.loaded:
                    m.set_loaded(flag, now, lag_s)
                    changed = True
        if changed:
            self._share_tails()

    def _stale_runs(self, wait_s: float) -> float:
        """The decisions that stand for a wait of ``wait_s``: ``stale_runs`` per ``stale_s``
        (a target's wait, doubled after a move there missed, doubles them alike)."""
        return self.p.stale_runs * wait_s / self.p.stale_s

    def _cap(self, t: int, khz: int) -> None:
        """The kernel ran target ``t`` below what was asked (a thermal or power cap): leave
        its higher frequencies out until the cap is older than ``stale_s``, then ask again."""
        name = self.targets[t]
        self._cap_at[name] = self.clock()
        if self.caps.get(name) != khz:
            self.caps[name] = khz
            self._build_lanes()

    def _lift_caps(self) -> None:
        now = self.clock()
        for name in [n for n, at in self._cap_at.items() if now - at > self.p.stale_s]:
            self.caps.pop(name, None)
            self._cap_at.pop(name, None)
        self._build_lanes()

    def _lat(self, i: int) -> float:
        m = self.tm[self._tgt_l[i]]
        return m.shape(self._lat_l[i]) * m.corr_lat

    def _ekey(self, i: int) -> float:
        return self._ekey_l[i] * self.tm[self._tgt_l[i]].corr_en

    def _settle(self, i: int) -> float:
        """The time configuration ``i`` loses to its target's frequency settling: the settle
        time at the last frequency instead of its own (0 where it goes down or stays)."""
        t = self._tgt_l[i]
        s, f_new, f_old = self.settle_s[t], self._freq_l[i], self._khz_now.get(t)
        if not s or not f_new or not f_old or f_old >= f_new:
            return 0.0
        return s * (1 - f_old / f_new)

    def _meets(self, i: int, lat_limit_s: Optional[float]) -> bool:
        if lat_limit_s is not None and self._lat(i) * self.tm[self._tgt_l[i]].margin > lat_limit_s:
            return False
        e = self.budget.energy_mj
        return e is None or not self._ekey(i) > e / 1e3 or math.isinf(self._ekey(i))

    def _best_at(self, lanes: Dict[int, List[_Lane]], lv: int, lat_limit_s: Optional[float],
                 extra: Optional[int] = None, costless: Optional[List[int]] = None) -> Optional[int]:
        """Lowest-energy configuration of level ``lv`` among ``lanes`` meeting the budget
        (``extra``: one more candidate to consider, the current configuration; ``costless``:
        only these targets, judged without the move cost)."""
        e_lim = self.budget.energy_mj
        best, best_key = None, None
        for lane in lanes.get(lv, ()):
            if costless is not None and lane.target not in costless:
                continue
            if lat_limit_s is None:
                j = len(lane.lat) - 1
            else:
                m = self.tm[lane.target]
                margin = m.margin * (1.0 if costless is not None else self._move_cost(lane.target))
                shape_max = lat_limit_s / (margin * m.corr_lat)     # c0 + c1 x profile <= this
                j = bisect.bisect_right(lane.lat, (shape_max - m.c0) / m.c1) - 1
                while j >= 0 and self._lat(lane.idx[j]) * margin > lat_limit_s:   # the 5% floor
                    j -= 1
                if j < 0:
                    continue
            i = lane.best[j]
            key = self._key(i)
            if e_lim is not None and key[0] > e_lim / 1e3 and not math.isinf(key[0]):
                continue
            if best_key is None or key < best_key:
                best, best_key = i, key
        if extra is not None and self._lvl[extra] == lv:
            if best_key is None or self._key(extra) < best_key:
                best = extra
        return best

    def _key(self, i: int) -> Tuple:
        """What orders the configurations of one level that meet the budget: the energy, then
        the lower frequency; where neither tells them apart (no energy known), the stronger
        target (``_reach``: the level above is likelier to fit there without a move), then
        the faster. (``decide`` leaves a safe current configuration for an equally accurate one
        only where that is cheaper, or on a stronger target after ``up_patience``.)"""
        return self._ekey(i), self._freq_l[i], self._reach[self._tgt_l[i]], self._lat(i)

    def decide(self, deadline_ms: Optional[float] = None, level: Optional[int] = None,
               stepped: bool = False) -> Decision:
        """The configuration for the next inference. ``level``: the request forces its group
        count; the pinned target and frequency and the caps still hold (:meth:`_build_lanes`).
        ``stepped``: an anytime run (groups added one at a time), decided off the split
        targets unless only they are allowed (the operator pinned one)."""
        self._decay_stale()
        if self.caps and any(self.clock() - at > self.p.stale_s for at in self._cap_at.values()):
            self._lift_caps()
        b = self.budget
        limit_ms = deadline_ms if deadline_ms is not None else b.latency_ms
        limit_s = None if limit_ms is None else limit_ms / 1e3
        forced = level is not None
        order = [level] if forced else self._floored(self._auto_order)
        lanes = self._forced if forced else self._lanes
        allowed = (self._place & (self._lvl == level)) if forced else self._allowed
        if stepped and (allowed & self._whole).any():
            allowed = allowed & self._whole
            lanes = self._stepped.get(forced)
            if lanes is None:                 # built on the first anytime decision after a change
                lanes = self._stepped[forced] = self._lanes_of((self._place if forced else self._allowed) & self._whole)
        cur = self.current
        self.upcoming = None
        if b.power_w is not None:
            cand, feasible = self._slow(order, limit_s, allowed)
        else:
            cand = None
            cur_safe = cur is not None and allowed[cur] and self._meets(cur, limit_s) and not self._fresh_decision
            if cur_safe:
                # Current is safe: a move up in accuracy needs the better configuration to
                # fit for up_patience decisions in a row (no hopping on noise).
                for lv in order:
                    cand = self._best_at(lanes, lv, limit_s, extra=cur)
                    if cand is not None and (self._acc_l[cand] <= self._acc_l[cur] or self._first_fits(cand, cur, limit_s)):
                        break
                if cand is not None and self._acc_l[cand] > self._acc_l[cur]:
                    self._up_count += 1
                    if self._up_count < self._patience:
                        if self._up_count == self._patience - 1 and not forced and not stepped \
                                and self._tgt_l[cand] == self._tgt_l[cur] and self._freq_l[cand] == self._freq_l[cur]:
                            self.upcoming = self.space[cand]
                        cand = self._best_at(lanes, int(self._lvl[cur]), limit_s, extra=cur)
                    else:                   # moving up: on probation (see observe)
                        self._probe, self._probation = cand, self.p.probation
                elif cand is not None and cand != cur and self._acc_l[cand] == self._acc_l[cur] \
                        and not self._cheaper(cand, cur):
                    # as accurate and no cheaper: a move would only add risk, but to a stronger
                    # target (the level above fits there without a move) after up_patience too
                    self._up_count = self._up_count + 1 if self._stronger(cand, cur) else 0
                    if self._up_count < self._patience:
                        cand = cur
                else:
                    self._up_count = 0
                quiet: List[int] = []
                if self.p.move_patience and not forced and not stepped \
                        and self._acc_l[cand if cand is not None else cur] <= self._acc_l[cur]:
                    # no move up found: the wider targets a load signal reports quiet might allow
                    # one but for the move cost
                    quiet = [u for u in self._wider[self._tgt_l[cur]] if self.tm[u].signalled and not self.tm[u].loaded]
                if quiet:
                    alt = self._blocked_up(lanes, order, cur, limit_s, quiet)
                    self._blocked = self._blocked + 1 if alt is not None else 0
                    if self._blocked >= self.p.move_patience:
                        cand, self._blocked = alt, 0
                        self._probe, self._probation = cand, self.p.probation
                else:                         # in a row: a decision without such a move ends the count
                    self._blocked = 0
            else:
                self._up_count = 0
                self._blocked = 0
                for lv in order:
                    cand = self._best_at(lanes, lv, limit_s)
                    if cand is not None:
                        break
            feasible = cand is not None
            if not feasible:
                cand, feasible = self._slow(order, limit_s, allowed)
            elif cur is not None and cand != cur and self._freq_l[cand] != self._freq_l[cur] and \
                    self.clock() - self._freq_changed_at < self.p.freq_interval_s:
                alt = self.index.get(Config(self.space[cand].level, self.space[cur].target, self.space[cur].freq_khz))
                if alt is not None and allowed[alt] and self._meets(alt, limit_s):
                    cand = alt
        if cur is not None and cand != cur:
            self.stats.switches += 1
            if self._freq_l[cand] != self._freq_l[cur] or self._tgt_l[cand] != self._tgt_l[cur]:
                self._freq_changed_at = self.clock()
                self._switched = cand
        # the first run at another level on the same target finds that level's session cold
        prev, self._ran = self._ran, cand
        self._cold = cand if prev is not None and self.space[cand].level != self.space[prev].level \
            and self._tgt_l[cand] == self._tgt_l[prev] else None
        self._cold_up = self._cold is not None and self._acc_l[cand] > self._acc_l[prev]
        if not forced:   # a request that forces its level does not move the governed state
            self.current = cand
            self._fresh_decision = False
        self.stats.decisions += 1
        e = self._ekey(cand)
        floor = self.budget.accuracy_min
        feasible = feasible and (floor is None or self._acc_l[cand] >= floor)
        self.last = Decision(self.space[cand], self._lat(cand), None if math.isinf(e) else e,
                             feasible, limit_ms, () if feasible else self._gave_way(cand, limit_s))
        self._switch_loss = self._settle(cand)
        if self._freq_l[cand]:
            self._khz_now[self._tgt_l[cand]] = self._freq_l[cand]
        return self.last

    def _blocked_up(self, lanes, order, cur: int, limit_s: Optional[float], quiet: List[int]) -> Optional[int]:
        """The move up in accuracy that ``quiet`` (targets that run on all of ``cur``'s processors
        and more, which a load signal reports quiet: there the move cost stands for the first
        runs alone) would allow but for the move cost."""
        for lv in order:
            if self.levels[lv].accuracy <= self._acc_l[cur]:
                return None
            alt = self._best_at(lanes, lv, limit_s, costless=quiet)
            if alt is not None:
                return alt
        return None

    def _move_cost(self, t: int) -> float:
        """How much slower than predicted the first run after a move to target ``t`` is
        expected to be (threads migrating, the lane's pools and caches cold: learnt from the
        moves so far, drifting back towards 1 after ``stale_max_s`` without one); 1 for the
        target served now."""
        return 1.0 if self.current is None or self._tgt_l[self.current] == t else self.move_ratio

    def _first_fits(self, cand: int, cur: int, limit_s: Optional[float]) -> bool:
        """Whether a move up from ``cur`` to ``cand`` expects its first run within the limit:
        at another level on the same target that run is slower by ``cold_ratio`` (learnt from
        the level changes so far). Not stacked on the margin, which is for the runs after it:
        where the level fits with less to spare than its first run needs, a move up misses
        there more often than not."""
        return limit_s is None or self._tgt_l[cand] != self._tgt_l[cur] \
            or self._lat(cand) * self.cold_ratio <= limit_s

    def _cheaper(self, a: int, b: int) -> bool:
        """Whether configuration ``a`` is predicted to cost less energy than ``b``: by the
        energy model where both have one, else a lower frequency of the same target."""
        ea, eb = self._ekey(a), self._ekey(b)
        if not math.isinf(ea) and not math.isinf(eb):
            return ea < eb
        return self._tgt_l[a] == self._tgt_l[b] and self._freq_l[a] < self._freq_l[b]

    def _stronger(self, a: int, b: int) -> bool:
        """Whether ``a`` lies on a stronger target than ``b`` (``_key``) where no energy tells
        them apart, at the same frequency."""
        return math.isinf(self._ekey(a)) and math.isinf(self._ekey(b)) and self._freq_l[a] == self._freq_l[b] \
            and self._reach[self._tgt_l[a]] < self._reach[self._tgt_l[b]]

    def _floored(self, order: List[int]) -> List[int]:
        """The levels of ``order`` at or above the budget's accuracy floor (all of them where
        none is: a pin below the floor holds, and the floor gives way)."""
        lo = self.budget.accuracy_min
        kept = [lv for lv in order if lo is None or self.levels[lv].accuracy >= lo]
        return kept or list(order)

    def _gave_way(self, i: int, limit_s: Optional[float]) -> Tuple[str, ...]:
        """The budget's keys that configuration ``i`` does not meet (by the prediction)."""
        b, out = self.budget, []
        if b.accuracy_min is not None and self._acc_l[i] < b.accuracy_min:
            out.append("accuracy_min")
        if limit_s is not None and self._lat(i) * self.tm[self._tgt_l[i]].margin > limit_s:
            out.append("latency_ms")
        e = self._ekey(i)
        if b.energy_mj is not None and not math.isinf(e) and e > b.energy_mj / 1e3:
            out.append("energy_mj")
        if b.power_w is not None and not math.isinf(e) and e / self._lat(i) > b.power_w:
            out.append("power_w")
        return tuple(out)

    def _ratios(self, limit_s: Optional[float]):
        """Per configuration, as the models predict it now: latency, energy, and the worst
        ratio to the budget (<= 1: it meets every part)."""
        b = self.budget
        ct = np.array([m.corr_lat for m in self.tm])
        ce = np.array([m.corr_en for m in self.tm])
        c0 = np.array([m.c0 for m in self.tm])
        c1 = np.array([m.c1 for m in self.tm])
        shape = np.maximum(c0[self._tgt] + c1[self._tgt] * self._base_lat, 0.05 * self._base_lat)
        lat = shape * ct[self._tgt]
        en = self._base_en * ce[self._tgt]
        ratios = [np.zeros_like(lat)]
        if limit_s is not None:
            ratios.append(lat * np.array([m.margin for m in self.tm])[self._tgt] / limit_s)
        if b.energy_mj is not None:
            ratios.append(np.where(np.isnan(en), 0.0, en / (b.energy_mj / 1e3)))
        if b.power_w is not None:
            ratios.append(np.where(np.isnan(en), 0.0, en / lat / b.power_w))
        return lat, en, np.max(ratios, axis=0)

    def _slow(self, order: Sequence[int], limit_s: Optional[float], allowed) -> Tuple[int, bool]:
        """Vectorised decision for power caps, and the closest configuration when nothing
        meets the budget; among the ``allowed`` configurations of the levels in ``order``
        (where the caps leave none, the pin alone)."""
        lat, _, worst = self._ratios(limit_s)
        ce = np.array([m.corr_en for m in self.tm])
        allowed = np.isin(self._lvl, order) & allowed
        if not allowed.any():        # caps below every allowed frequency: the pin alone
            allowed = np.isin(self._lvl, order) & self._pin_place
        ok = allowed & (worst <= 1.0)
        feasible = bool(ok.any())
        if not feasible:
            # closest, counting a move's first run to a target on all the current one's processors
            # (the load that made the budget infeasible is there too); where the move leaves
            # some of them behind, it may leave the load too, and is not held back
            over = self._over[self._tgt_l[self.current]] if self.current is not None else ()
            if over:
                worst = worst * np.where(np.isin(self._tgt, over), self.move_ratio, 1.0)
            m = worst[allowed].min()
            ok = allowed & (worst <= m * (1 + 1e-9))
        idx = np.flatnonzero(ok)
        idx = idx[self._acc[idx] == self._acc[idx].max()]
        ekey = self._base_ekey[idx] * ce[self._tgt[idx]]
        return int(idx[np.lexsort((lat[idx], self._freq[idx], ekey))[0]]), feasible

    # ------------------------------------------------------------------ feedback
    def observe(self, config: Config, latency_s: float, energy_j: Optional[float] = None,
                limit_ms: Optional[float] = None, ran_khz: Optional[int] = None,
                learn: bool = True) -> Optional[str]:
        """Feed back one measured inference; ``limit_ms`` is the latency limit it was
        decided under (default: the last decision's) for the miss rate; ``ran_khz``: the
        frequency the kernel reported after setting ``config``'s (a cap shows there);
        ``learn=False``: count it (miss rate, status) but do not learn the target's speed
        from it (the first run after a move to another target). Returns the cause of a miss
        (:meth:`_cause`; None where it met the limit)."""
        i = self.index.get(config)
        if i is None or not latency_s > 0:
            return None
        if limit_ms is None and self.last is not None:
            limit_ms = self.last.latency_limit_ms
        missed = limit_ms is not None and latency_s * 1e3 > limit_ms
        # The first run at another level on the same target (its session's threads asleep, its
        # weights out of cache: docs/governor.md, "Moves between targets") is the change's cost,
        # as a move's first run is: a miss there is the change's (``switch``), neither the
        # level's speed nor its tail, no burst's start and no failed probation.
        cold = i == self._cold
        up = cold and self._cold_up
        self._on_probation(i, missed and not cold)
        t = self._tgt_l[i]
        now = self.clock()
        switched = self._switched
        cause = self._cause(config, t, ran_khz, switched=not learn or i == switched or cold,
                            idle_s=now - self._observed_at) if missed else None
        self._switched, self._cold, self._observed_at = None, None, now
        for m in self.tm:
            m.fade()
        # learnt without what the change's settling was predicted to cost it
        own = max(latency_s - self._switch_loss, 0.05 * latency_s) if i == switched else latency_s
        if self._last_target is not None and t != self._last_target:      # the first run after a move
            self.move_ratio = self._first_run_ratio(self.move_ratio, own, i)
            self._moved_at = (now, self.stats.decisions)
            m = self.tm[t]                  # a move the prediction allowed that missed: retried later
            if cause == "switch":
                m.stale_s = min(2 * m.stale_s, self.p.stale_max_s)
            elif not missed:
                m.stale_s = self.p.stale_s
        self._last_target = t
        if up:      # what a move up must expect (_first_fits); a step down's first run is no guide to it
            self.cold_ratio = self._first_run_ratio(self.cold_ratio, own, i)
            self._cold_at = (now, self.stats.decisions)
        own_missed = limit_ms is not None and own * 1e3 > limit_ms
        if learn and not cold:
            if ran_khz is not None and config.freq_khz is not None and ran_khz != config.freq_khz:
                if ran_khz < config.freq_khz:
                    self._cap(t, ran_khz)
                i = self.index.get(Config(config.level, config.target, ran_khz), i)   # the model learns what ran
            self.tm[t].observe(self._lat_l[i], own, energy_j, self._base_en[i], now, own_missed,
                               self.stats.decisions)
            if self.tm[t].n_obs % 10 == 0:          # its tail was refitted
                self._share_tails()
        elif own_missed and not cold:    # not its speed, but a burst may have begun: the guard holds
            self.tm[t].raise_guard(own / self._lat(i))
        if own_missed and not cold:      # ... on every target that shares a processor with it
            for u in self._peers[t]:
                self.tm[u].raise_guard(self.tm[t].guard)
        self.stats.count(latency_s, energy_j, missed, cause)
        return cause

    def _first_run_ratio(self, ratio: float, own: float, i: int) -> float:
        """``ratio`` (an EWMA of a first run's latency over its prediction: a move's, a change
        of level's) updated with ``own``, the first run of configuration ``i``."""
        a = self.p.alpha
        return (1 - a) * ratio + a * min(max(own / self._lat(i), 1.0), 3.0)

    def _share_tails(self) -> None:
        """A target whose window is too short to fit a tail assumes the median of the other
        targets' fitted ones (at least ``1 + safety``): a lane seldom used is as noisy as the
        lanes measured, not quieter."""
        if not self.p.quantile_margin:
            return
        fitted = [(m, m.tail) for m in self.tm if len(m.resid) >= self.p.resid_min]
        for m in self.tm:
            others = [tail for n, tail in fitted if n is not m and n.loaded == m.loaded]
            m.assume(max(1 + self.p.safety, float(np.median(others))) if others else 1 + self.p.safety)

    def _cause(self, config: Config, t: int, ran_khz: Optional[int], switched: bool, idle_s: float) -> str:
        """Why a run missed, the first that applies: it was decided as the closest to a budget
        that nothing meets (infeasible); the kernel held the frequency below what
        was asked; it was the first run after a move to another target or frequency (the
        move and the clock's settling); it came after ``wake_s`` without a run; the target's
        level (the median of its last 3 observed / modelled ratios, before this run) stood
        above its tail margin: it was running slower than its measured tail allows, a change
        of level (contention); else a lone error of the prediction (the tail left out)."""
        if self.last is not None and not self.last.feasible and self.last.config == config:
            return "infeasible"
        if ran_khz is not None and config.freq_khz is not None and ran_khz < config.freq_khz:
            return "frequency_cap"
        if switched:
            return "switch"
        if idle_s > self.p.wake_s:
            return "wake_up"
        recent = sorted(self.tm[t].recent)
        return "contention" if recent and recent[len(recent) // 2] > self.tm[t].tail else "prediction"

    # ------------------------------------------------------------------ status
    @property
    def decisions(self) -> int:
        return self.stats.decisions

    @property
    def switches(self) -> int:
        return self.stats.switches

    def status(self) -> Dict:
        s = {
            "budget": self.budget.to_dict(),
            "feasible": None if self.last is None else self.last.feasible,
            "config": None if self.current is None else self.space[self.current].to_dict(),
            "pinned": dict(self.pinned),
            "caps_khz": dict(self.caps),
            "floors_khz": dict(self.floors),
            "predicted_latency_ms": None if self.last is None else round(self.last.predicted_latency_s * 1e3, 4),
            "gave_way": [] if self.last is None else list(self.last.gave_way),
            "corrections": {t: round(float(m.corr_lat), 3) for t, m in zip(self.targets, self.tm)},
            "latency_model": {t: m.status() for t, m in zip(self.targets, self.tm)},
            "margins": {t: round(float(m.margin), 3) for t, m in zip(self.targets, self.tm)},
            "loaded": {t: m.loaded for t, m in zip(self.targets, self.tm)},
            "move_cost": round(self.move_ratio, 3),
            "level_change_cost": round(self.cold_ratio, 3),
            "up_patience": self._patience,
            "stale_after": {t: {"s": m.stale_s, "decisions": int(self._stale_runs(m.stale_s))}
                            for t, m in zip(self.targets, self.tm)},
            "profile": self.profile.source,
        }
        s.update(self.stats.status())
        return s

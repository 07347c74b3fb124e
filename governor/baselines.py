"""Policies the governor is compared with (bench/governor.py). Same interface as
:class:`governor.controller.Governor`: ``set_budget``, ``decide``, ``observe``, ``status``.

* ``Performance``: the full model on the fastest target at its highest frequency (what the
  Linux ``performance`` governor gives a static model).
* ``Ondemand``: the full model on the fastest target; frequency by the classic ondemand
  rule: utilisation over the last sampling period above ``up`` → maximum, else the lowest
  frequency that would keep utilisation at ``up``.
* ``StepManager``: the step-level manager of Dynamic-OFA (Lou et al.): one level down on a
  deadline miss, one up after ``patience`` inferences with slack; no DVFS.
* ``Fixed``: one configuration, always (the static configurations a governor is judged
  against: the best of them in hindsight).
* ``Oracle``: knows the true latency and energy of every configuration at every moment
  (the interference trace included) and picks the best feasible one.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .controller import Budget, Decision, Params, worthwhile
from .profile import Profile
from .space import Config, Level


class _Static:
    name = "static"

    def __init__(self, space: Sequence[Config], levels: Sequence[Level], profile: Profile,
                 clock: Callable[[], float] = time.monotonic):
        self.space, self.profile, self.clock = list(space), profile, clock
        self.levels = {l.level: l for l in levels}
        self.top = max(self.levels)
        self.budget = Budget()
        full = [c for c in self.space if c.level == self.top]
        # fastest target at its highest frequency, by the profile
        self.target = min(full, key=lambda c: self._predict(c)[0]).target
        self.freqs = sorted({c.freq_khz for c in full if c.target == self.target}, key=lambda f: f or 0)

    def _predict(self, c: Config) -> Tuple[float, Optional[float]]:
        return self.profile.predict(c, self.levels[c.level].macs)

    def _decision(self, c: Config, deadline_ms=None) -> Decision:
        lat, en = self._predict(c)
        limit = deadline_ms if deadline_ms is not None else self.budget.latency_ms
        return Decision(c, lat, en, True, limit)

    def set_budget(self, budget: Budget) -> None:
        self.budget = budget.validate()

    def observe(self, config: Config, latency_s: float, energy_j=None, limit_ms=None, ran_khz=None, learn=True) -> None:
        pass

    def status(self) -> Dict:
        return {"policy": self.name}


class Performance(_Static):
    name = "performance"

    def decide(self, deadline_ms=None, level=None) -> Decision:
        return self._decision(Config(self.top, self.target, self.freqs[-1]), deadline_ms)


class Fixed(_Static):
    def __init__(self, space: Sequence[Config], levels: Sequence[Level], profile: Profile, config: Config,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(space, levels, profile, clock)
        self.config = config
        self.name = "k=%d on %s at %s" % (config.level, config.target,
                                           "%d MHz" % (config.freq_khz // 1000) if config.freq_khz else "-")

    def decide(self, deadline_ms=None, level=None) -> Decision:
        return self._decision(self.config, deadline_ms)


class Ondemand(_Static):
    name = "ondemand"

    def __init__(self, *a, up: float = 0.8, period_s: float = 0.1, **kw):
        super().__init__(*a, **kw)
        self.up, self.period = up, period_s
        self.freq = self.freqs[-1]
        self._start = None
        self._busy = 0.0

    def decide(self, deadline_ms=None, level=None) -> Decision:
        now = self.clock()
        if self._start is None:
            self._start = now
        elif now - self._start >= self.period:
            util = min(1.0, self._busy / (now - self._start))
            if util > self.up or self.freq is None:
                self.freq = self.freqs[-1]
            else:
                want = (self.freq or 0) * util / self.up
                self.freq = next((f for f in self.freqs if (f or 0) >= want), self.freqs[-1])
            self._start, self._busy = now, 0.0
        return self._decision(Config(self.top, self.target, self.freq), deadline_ms)

    def observe(self, config, latency_s, energy_j=None, limit_ms=None, ran_khz=None, learn=True) -> None:
        self._busy += latency_s


class StepManager(_Static):
    name = "step (Dynamic-OFA)"

    def __init__(self, *a, slack: float = 0.25, patience: int = 10, **kw):
        super().__init__(*a, **kw)
        self.level, self.slack, self.patience = self.top, slack, patience
        self._ok = 0
        self._limit = None

    def decide(self, deadline_ms=None, level=None) -> Decision:
        d = self._decision(Config(self.level, self.target, self.freqs[-1]), deadline_ms)
        self._limit = d.latency_limit_ms
        return d

    def observe(self, config, latency_s, energy_j=None, limit_ms=None, ran_khz=None, learn=True) -> None:
        limit = limit_ms if limit_ms is not None else self._limit
        if limit is None:
            self.level = self.top
            return
        ms = latency_s * 1e3
        if ms > limit:
            self.level, self._ok = max(1, self.level - 1), 0
        elif ms < (1 - self.slack) * limit:
            self._ok += 1
            if self._ok >= self.patience and self.level < self.top:
                self.level, self._ok = self.level + 1, 0
        else:
            self._ok = 0


class Oracle:
    """Best feasible configuration under the true (noise-free) costs at this moment."""
    name = "oracle"

    def __init__(self, space: Sequence[Config], levels: Sequence[Level],
                 truth: Callable[[Config], Tuple[float, float]], safety: float = 0.05,
                 acc_tolerance: float = Params.acc_tolerance):
        keep = worthwhile(levels, acc_tolerance)   # the governor's objective, with perfect knowledge
        self.space = [c for c in space if c.level in keep]
        self.levels = {l.level: l for l in levels}
        self.truth, self.safety = truth, safety
        self.budget = Budget()

    def set_budget(self, budget: Budget) -> None:
        self.budget = budget.validate()

    def decide(self, deadline_ms=None, level=None) -> Decision:
        limit = deadline_ms if deadline_ms is not None else self.budget.latency_ms
        rows: List = []
        for c in self.space:
            lat, en = self.truth(c)
            ok = (limit is None or lat * (1 + self.safety) <= limit / 1e3) and \
                 (self.budget.energy_mj is None or en <= self.budget.energy_mj / 1e3)
            rows.append((ok, self.levels[c.level].accuracy, -en, -lat, c, lat, en))
        feasible = [r for r in rows if r[0]]
        if feasible:
            best = max(feasible, key=lambda r: (r[1], r[2], r[3]))
        else:
            best = min(rows, key=lambda r: r[5])
        return Decision(best[4], best[5], best[6], bool(feasible), limit)

    def observe(self, *a, **kw) -> None:
        pass

    def status(self) -> Dict:
        return {"policy": self.name}

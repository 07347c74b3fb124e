"""One board, several model sets: the frequency of a target (a CPU cluster, the GPU) is one,
whichever model runs there, so the models' governors decide with what the others need.

The daemon runs one inference at a time (daemon/executor.py), so two models never share a
cluster's cores at the same moment, and each run may set its own frequency; what one model
does to another is the frequency it leaves behind. A change takes effect only after the
target's settle time, during which the next run goes at the old frequency: a model that
takes the clock down may make the next model's run, which must take it up again, miss.

The rule (docs/governor.md, "Several models on one board"): a model that ran on a target
within the last ``idle_s`` *claims* it: the frequency it would choose there alone
(:meth:`Governor.need_khz`) and the lowest it can be left at, from which its next run can
settle up in time (:meth:`Governor.floor_khz`: 0 where its slack covers the settle time).
Every other model decides with that target's frequencies below the floor left out; above
it, each model runs at its own choice, so where switching costs no deadline the models
decide as if alone. Where the floors of models of lower priority (later in the
configuration) would cost a model accuracy or its budget (:meth:`Governor.best_accuracy`),
it decides without them: the lower-priority model's budget gives way (its run pays the
settle), and ``status`` names who overruled whom.

Pure: plain data in, decisions out, an injectable clock.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .controller import Decision, Governor


class Board:
    def __init__(self, order: Sequence[str], clock: Callable[[], float] = time.monotonic, idle_s: float = 1.0):
        """``order``: the model names, highest priority first."""
        self.rank = {n: i for i, n in enumerate(order)}
        self.clock = clock
        self.idle_s = idle_s
        self.claims: Dict[str, Tuple[str, int, int, float]] = {}   # model → (target, its kHz, its floor, when)
        self.overruled: Dict[str, List[str]] = {}              # model → lower-priority models it decided without

    def _floors(self, name: str, now: float, below_too: bool) -> Dict[str, int]:
        floors: Dict[str, int] = {}
        mine = self.rank.get(name, len(self.rank))
        for other, (target, _, khz, at) in self.claims.items():
            if other == name or not khz or now - at > self.idle_s or (not below_too and self.rank.get(other, 0) > mine):
                continue
            floors[target] = max(floors.get(target, 0), khz)
        return floors

    def decide(self, name: str, gov: Governor, deadline_ms: Optional[float] = None, level: Optional[int] = None,
               running_khz: Optional[Dict[str, int]] = None) -> Decision:
        """Model ``name``'s decision by its governor ``gov`` under the others' floors;
        ``running_khz``: the frequencies the board runs at now (target → kHz). Alone on the
        board, a set's governor decides as it would without one (nobody reads its claim)."""
        if len(self.rank) <= 1:
            return gov.decide(deadline_ms=deadline_ms, level=level)
        now = self.clock()
        floors = self._floors(name, now, below_too=True)
        self.overruled.pop(name, None)
        if floors:
            above = self._floors(name, now, below_too=False)
            if above != floors and gov.best_accuracy(floors, deadline_ms) < gov.best_accuracy(above, deadline_ms):
                mine = self.rank.get(name, len(self.rank))
                self.overruled[name] = sorted(o for o, (t, _, k, at) in self.claims.items()
                                              if self.rank.get(o, 0) > mine and now - at <= self.idle_s
                                              and k > above.get(t, 0))
                floors = above
        gov.share(floors, running_khz)
        d = gov.decide(deadline_ms=deadline_ms, level=level)
        c = d.config
        need = gov.need_khz(c, d.latency_limit_ms)
        if need is None:
            self.claims.pop(name, None)
        else:
            self.claims[name] = (c.target, need, gov.floor_khz(c, d.latency_limit_ms), now)
        return d

    def status(self) -> Dict:
        """target → each model served there: the frequency it chooses and its floor; the
        target's floor (the highest)."""
        now = self.clock()
        out: Dict[str, Dict] = {}
        for name, (target, khz, floor, at) in sorted(self.claims.items(), key=lambda kv: self.rank.get(kv[0], 0)):
            if now - at <= self.idle_s:
                t = out.setdefault(target, {"floor_khz": 0, "claims": {}})
                t["claims"][name] = {"khz": khz, "floor_khz": floor}
                t["floor_khz"] = max(t["floor_khz"], floor)
        return {"targets": out, "overruled": {n: list(v) for n, v in self.overruled.items() if v}}

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

Targets may share a clock (a cluster and a split over it; a split's parts each run at a
frequency of their own): given ``clocks`` (target → {its step → {clock → kHz}}, plain data
from the platform), a floor holds each clock the claimed target's frequency sets, and every
target on those clocks gets the lowest step that keeps them at or above it. Without it, each
target is a clock of its own.

A claim and the priority check are worked out again when a set's configuration or limit
changes, and every ``REFRESH``-th decision otherwise (as the set's latency model moves): per
decision they would cost 20 times the decision itself.

Pure: plain data in, decisions out, an injectable clock.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .controller import Decision, Governor

REFRESH = 10     # decisions of a set between two workings-out of its claim and its priority check


class Board:
    def __init__(self, order: Sequence[str], clock: Callable[[], float] = time.monotonic, idle_s: float = 1.0,
                 clocks: Optional[Dict[str, Dict[int, Dict[str, int]]]] = None):
        """``order``: the model names, highest priority first; ``clocks``: which clocks each
        target's frequency steps set (platforms.model.clock_table)."""
        self.rank = {n: i for i, n in enumerate(order)}
        self.clock = clock
        self.idle_s = idle_s
        self.clocks = {t: table for t, table in (clocks or {}).items() if table}
        self._steps = {t: sorted(table) for t, table in self.clocks.items()}
        self._on = {t: {c for step in table.values() for c in step} for t, table in self.clocks.items()}
        self._named = set().union(*self._on.values())    # every clock a table names
        self.claims: Dict[str, Tuple[str, int, int, float]] = {}   # model → (target, its kHz, its floor, when)
        self.overruled: Dict[str, List[str]] = {}              # model → lower-priority models it decided without
        self._ticks: Dict[str, int] = {}                         # model → decisions since its claim was worked out
        self._claimed: Dict[str, Tuple] = {}                     # model → (config, limit) its claim is for
        self._checked: Dict[str, Tuple] = {}                     # model → (floors, above, the floors it took)
        self._floors_of: Dict[frozenset, Dict[str, int]] = {}    # the (target, kHz) claims held → floors

    def _floors(self, name: str, now: float, below_too: bool) -> Dict[str, int]:
        """target → the lowest kHz the other models' claims leave ``name`` there (those of
        lower priority too where ``below_too``). Read-only: the same dict while the claims
        that hold stay the same (worked out once per set of them)."""
        mine = self.rank.get(name, len(self.rank))
        holding = frozenset((target, khz) for other, (target, _, khz, at) in self.claims.items()
                            if other != name and khz and now - at <= self.idle_s
                            and (below_too or self.rank.get(other, 0) <= mine))
        floors = self._floors_of.get(holding)
        if floors is None:
            if len(self._floors_of) > 256:          # claims move with the budgets: keep the recent ones
                self._floors_of.clear()
            floors = self._floors_of[holding] = self._work_out(holding)
        return floors

    def _work_out(self, holding) -> Dict[str, int]:
        held: Dict[str, int] = {}          # clock (or a target without a table) → kHz
        for target, khz in holding:
            for c, k in self._clocks_at(target, khz).items():
                held[c] = max(held.get(c, 0), k)
        floors = {t: k for t, k in held.items() if t not in self._named}   # targets without a table
        for t, table in self.clocks.items():
            if self._on[t] & held.keys():
                floors[t] = next((f for f in self._steps[t] if all(k >= held.get(c, 0) for c, k in table[f].items())),
                                 self._steps[t][-1])
        return floors

    def _clocks_at(self, target: str, khz: int) -> Dict[str, int]:
        """The clocks ``target`` at ``khz`` runs at (the step at or above ``khz``)."""
        steps = self._steps.get(target)
        if not steps:
            return {target: khz}
        return self.clocks[target][next((f for f in steps if f >= khz), steps[-1])]

    def decide(self, name: str, gov: Governor, deadline_ms: Optional[float] = None, level: Optional[int] = None,
               running_khz: Optional[Dict[str, int]] = None, stepped: bool = False) -> Decision:
        """Model ``name``'s decision by its governor ``gov`` under the others' floors;
        ``running_khz``: the frequencies the board runs at now (target → kHz). Alone on the
        board, a set's governor decides as it would without one (nobody reads its claim)."""
        if len(self.rank) <= 1:
            return gov.decide(deadline_ms=deadline_ms, level=level, stepped=stepped)
        now = self.clock()
        tick = self._ticks.get(name, 0)
        self._ticks[name] = tick + 1
        fresh = tick % REFRESH == 0
        floors = self._floors(name, now, below_too=True)
        if floors:
            above = self._floors(name, now, below_too=False)
            key = (floors, above)
            done = self._checked.get(name)
            if fresh or done is None or done[:2] != key:
                take = floors
                self.overruled.pop(name, None)
                if above != floors and gov.best_accuracy(floors, deadline_ms) < gov.best_accuracy(above, deadline_ms):
                    mine = self.rank.get(name, len(self.rank))
                    self.overruled[name] = sorted(o for o, (t, _, k, at) in self.claims.items()
                                                  if self.rank.get(o, 0) > mine and now - at <= self.idle_s
                                                  and k > above.get(t, 0))
                    take = above
                done = self._checked[name] = key + (take,)
            floors = done[2]
        else:
            self.overruled.pop(name, None)
        gov.share(floors, running_khz)
        d = gov.decide(deadline_ms=deadline_ms, level=level, stepped=stepped)
        c = d.config
        claim = self.claims.get(name)
        if fresh or claim is None or self._claimed.get(name) != (c, d.latency_limit_ms):
            need = gov.need_khz(c, d.latency_limit_ms)
            self._claimed[name] = (c, d.latency_limit_ms)
            if need is None:
                self.claims.pop(name, None)
                return d
            self.claims[name] = (c.target, need, gov.floor_khz(c, d.latency_limit_ms, need), now)
        else:
            self.claims[name] = claim[:3] + (now,)
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

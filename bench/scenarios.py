"""Closed-loop governor scenarios on the simulated boards (simulated time: deterministic).

A scenario is a list of events at inference indices: budget changes, a background load
that takes a share of a target, a forced thermal cap. Every policy runs the same requests
on its own copy of the board; the metrics skip the first ``settle`` inferences after each
event (the issue's "outside the first 20 inferences after each change").
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from governor import (Budget, Config, Governor, Level, Params, Profile, Sample, build_space, column_macs,
                      plan_measurements, split_cuts, split_macs)
from governor.baselines import Fixed, Oracle, Ondemand, Performance, StepManager
from platforms.model import Target, governor_facts
from platforms.sim import Interference, SimBoard

GROUP_ACC = [82.0, 85.0, 86.5, 87.5]   # placeholder accuracies when no manifest is given


@dataclass
class Event:
    at: int
    budget: Optional[Budget] = None
    load: Optional[Tuple[str, float]] = None        # (target, share); share 0 ends it
    cap: Optional[Tuple[str, Optional[int]]] = None  # (target, kHz); None lifts it


@dataclass
class Scenario:
    name: str
    board: str
    n: int
    gap_s: float
    events: List[Event] = field(default_factory=list)


def default_levels(macs_per_level: List[int], accuracies: List[float] = GROUP_ACC) -> List[Level]:
    return [Level(i + 1, a, m) for i, (a, m) in enumerate(zip(accuracies, macs_per_level))]


def scenarios() -> List[Scenario]:
    xu3 = Scenario("XU3: budgets, load on a15, thermal cap", "sim-odroid-xu3", 1600, 0.02, [
        Event(0, budget=Budget(latency_ms=8.0)),
        Event(300, load=("a15", 0.5)),
        Event(600, load=("a15", 0.0)),
        Event(800, budget=Budget(latency_ms=4.0)),
        Event(1000, cap=("a15", 1200000)),
        Event(1200, cap=("a15", None)),
        Event(1300, budget=Budget(latency_ms=20.0, energy_mj=15.0)),
    ])
    nano = Scenario("Nano: budgets, load on cpu, GPU cap", "sim-jetson-nano", 1600, 0.02, [
        Event(0, budget=Budget(latency_ms=6.0)),
        Event(300, load=("cpu", 0.6)),
        Event(600, load=("cpu", 0.0)),
        Event(800, budget=Budget(latency_ms=3.0)),
        Event(1000, cap=("gpu", 460800)),
        Event(1200, cap=("gpu", None)),
        Event(1300, budget=Budget(latency_ms=15.0, energy_mj=12.0)),
    ])
    # The same Nano scenario with the load on the target that serves the inference (the GPU),
    # as the XU3's is on its A15s: in the model a CPU load does not touch GPU inference.
    nano_gpu = Scenario("Nano: budgets, load on gpu, GPU cap", nano.board, nano.n, nano.gap_s,
                        [Event(e.at, e.budget, ("gpu", e.load[1]) if e.load else None, e.cap) for e in nano.events])
    return [xu3, nano, nano_gpu]


class Work:
    """What level k costs on a target of a simulated board: its MACs, or a split's per lane,
    cut as the daemon cuts it (governor.cut_columns, from the profile of the lanes)."""

    def __init__(self, board: SimBoard, levels: List[Level], profile: Optional[Profile] = None):
        self.macs = {l.level: l.macs for l in levels}
        self.cols = column_macs(levels)
        self.cuts: Dict[Tuple[str, int], List[Tuple[int, int]]] = {}
        for name, t in board.targets.items():
            if t.is_split and profile is not None:
                cuts = split_cuts(profile, self.cols, [(p.name, max(p.freqs_khz)) for p in t.parts])
                self.cuts.update({(name, k): c for k, c in cuts.items()})

    def __call__(self, c: Config):
        cut = self.cuts.get((c.target, c.level))
        return split_macs(self.cols, cut) if cut else self.macs[c.level]


def measure_profile(board: SimBoard, space: List[Config], levels: List[Level]) -> Profile:
    """What ``dnnscale profile`` does, on a simulated board: measure the planned subset; the
    splits last, cut from the profile of their lanes."""
    plan = plan_measurements(space)
    samples = []
    for split in (False, True):
        work = Work(board, levels, Profile.fit(samples, levels) if split else None)
        for c in plan:
            if board.targets[c.target].is_split == split:
                board.set_frequency(c.target, c.freq_khz)
                lat, en = board.predict(work(c), c.target)
                samples.append(Sample(c, lat, en))
    return Profile.fit(samples, levels, source="simulated measurement")


def board_space(board: SimBoard, levels: List[Level], splits: bool = False) -> List[Config]:
    """Every configuration of the board; its split targets only where ``splits``."""
    return build_space(levels, {n: t.freqs_khz for n, t in board.targets.items() if splits or not t.is_split},
                       {n: len(t.parts) for n, t in board.targets.items() if t.is_split})


FIXED = "dnnscale, fixed 10% margin"   # the governor without its quantile margin
POLICIES = ("dnnscale", FIXED, "performance", "ondemand", "step (Dynamic-OFA)", "oracle")


def policy_from_profile(policy: str, space: List[Config], levels: List[Level], profile: Profile,
                        clock=time.monotonic, targets: Optional[Dict[str, Target]] = None):
    """Every policy of POLICIES but the oracle (each bench builds that from what it knows);
    ``targets``: the board's, whose DVFS settle times and processors the daemon gives its governor."""
    if policy in ("dnnscale", FIXED):
        return Governor(space, levels, profile, clock=clock, **governor_facts(targets or {}),
                        params=Params(quantile_margin=False) if policy == FIXED else None)
    if policy == "performance":
        return Performance(space, levels, profile, clock=clock)
    if policy == "ondemand":
        return Ondemand(space, levels, profile, clock=clock)
    if policy.startswith("step"):
        return StepManager(space, levels, profile, clock=clock)
    raise ValueError(policy)


def run(scenario: Scenario, policy, levels: List[Level], seed: int = 0,
        settle: int = 20, splits: bool = False) -> Dict:
    """One policy through one scenario (a name of POLICIES, or a Config: that configuration
    always); ``splits``: the split targets are in its space."""
    board = SimBoard(scenario.board, seed=seed)
    space = board_space(board, levels, splits)
    profile = measure_profile(SimBoard(scenario.board), space, levels)
    work = Work(board, levels, profile)
    acc = {l.level: l.accuracy for l in levels}
    clock = lambda: board.now
    if isinstance(policy, Config):
        pol = Fixed(space, levels, profile, policy, clock)
    elif policy == "oracle":
        def truth(c: Config):
            khz = c.freq_khz if board.targets[c.target].is_split else board.effective(c.target, c.freq_khz)
            return board.predict(work(c), c.target, khz)
        pol = Oracle(space, levels, truth)
    else:
        pol = policy_from_profile(policy, space, levels, profile, clock, board.targets)
    events = {e.at: e for e in scenario.events}
    loads: Dict[str, Interference] = {}
    rows = []
    since_event = 0
    prev: Optional[Config] = None
    switches = 0
    for i in range(scenario.n):
        e = events.get(i)
        if e is not None:
            since_event = 0
            if e.budget is not None:
                pol.set_budget(Budget(**e.budget.to_dict()))
            if e.load is not None:
                tgt, share = e.load
                if tgt in loads:
                    loads.pop(tgt).end_s = board.now
                if share > 0:
                    loads[tgt] = Interference(tgt, share, board.now)
                    board.interference.append(loads[tgt])
            if e.cap is not None:
                tgt, khz = e.cap
                if khz is None:
                    board.forced_cap.pop(tgt, None)
                else:
                    board.forced_cap[tgt] = khz
        d = pol.decide()
        c = d.config
        if prev is not None and c != prev:
            switches += 1
        prev = c
        if c.freq_khz is not None:
            board.set_frequency(c.target, c.freq_khz)
        lat, energy = board.run(work(c), c.target, idle_s=scenario.gap_s)
        ran = board.frequency(c.target) if c.freq_khz is not None else None
        pol.observe(c, lat, energy, d.latency_limit_ms, ran_khz=ran)   # what the kernel reports
        limit = d.latency_limit_ms
        miss = limit is not None and lat * 1e3 > limit
        rows.append((i, lat * 1e3, energy * 1e3, c.level, c.target, board.frequency(c.target),
                     limit, miss, since_event >= settle))
        since_event += 1
    arr = [r for r in rows if r[8]]
    return {
        "scenario": scenario.name, "board": scenario.board, "policy": getattr(pol, "name", policy),
        "miss_rate": float(np.mean([r[7] for r in arr])) if arr else 0.0,
        "accuracy": float(np.mean([acc[r[3]] for r in rows])),
        "energy_mj": float(np.mean([r[2] for r in rows])),
        "switches": switches, "trace": rows,
    }


SWEEP = (1.1, 1.25, 1.5, 2.0, 3.0, None)   # latency budget / the board's fastest full-model latency


def fastest_full_ms(board: str, levels: List[Level]) -> float:
    """The noise-free latency of the full model at the fastest target's top frequency."""
    b = SimBoard(board)
    top = max(levels, key=lambda l: l.macs)
    return 1e3 * min(b.predict(top.macs, t, khz=max(st.freqs_khz))[0] for t, st in b.targets.items()
                     if not st.is_split)


def sweep(board: str, levels: List[Level], multiples=SWEEP, n: int = 300) -> List[Dict]:
    """Steady latency budgets, no load and no cap: how the saving against ``performance``
    depends on the slack the budget leaves (None: no budget)."""
    fastest = fastest_full_ms(board, levels)
    rows = []
    for m in multiples:
        budget = Budget() if m is None else Budget(latency_ms=m * fastest)
        sc = Scenario("%s, budget %s" % (board, m), board, n, 0.02, [Event(0, budget=budget)])
        res = {p: run(sc, p, levels) for p in ("dnnscale", "oracle", "performance")}
        rows.append({"multiple": m, "budget_ms": None if m is None else m * fastest, **res})
    return rows

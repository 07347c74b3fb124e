"""The governor: each rule on a small synthetic space, then the closed loop on the
simulated boards (simulated time: deterministic and fast)."""
from __future__ import annotations

import numpy as np
import pytest

from governor import Budget, Config, Governor, Level, Params, Profile, Sample, TargetFit, build_space, plan_measurements
from models.arch import Arch

LEVELS = [Level(1, 80.0, 10_000_000), Level(2, 84.0, 20_000_000), Level(3, 86.0, 30_000_000),
          Level(4, 87.0, 40_000_000)]
FREQS = {"big": [500000, 1000000, 2000000], "little": [500000, 1000000]}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def profile():
    # big: 1 ms per 10 MMAC at 1 GHz; little: 3x slower. Power grows with f; energy = P x t.
    return Profile({"big": TargetFit(1e-3 / (1e7 / 1e6), 0.0, {500000: 0.5, 1000000: 1.2, 2000000: 4.0}),
                    "little": TargetFit(3e-3 / (1e7 / 1e6), 0.0, {500000: 0.1, 1000000: 0.25})})


def gov(**params):
    clock = Clock()
    g = Governor(build_space(LEVELS, FREQS), LEVELS, profile(), clock=clock, params=Params(**params))
    return g, clock


def pred(g, c):
    return g.profile.predict(c, g.levels[c.level].macs)


def modelled(g, c):
    """The governor's latency prediction for ``c`` now (model x fast level, before the margin)."""
    return g._lat(g.index[c])


def test_no_budget_best_accuracy_lowest_energy():
    g, _ = gov()
    d = g.decide()
    assert d.config.level == 4 and d.feasible
    same = [c for c in g.space if c.level == 4]
    assert pred(g, d.config)[1] == min(pred(g, c)[1] for c in same)


def test_latency_budget_highest_level_that_fits():
    g, _ = gov()
    g.set_budget(Budget(latency_ms=2.5))     # level 4 on big at 2 GHz: 2.0 ms x 1.1 = 2.2 ok
    d = g.decide()
    assert d.config == Config(4, "big", 2000000)
    g.set_budget(Budget(latency_ms=1.5))     # level 4 needs 2.2: level 2 at 2 GHz (1.1) fits, level 3 (1.65) not
    assert g.decide().config.level == 2


def test_steps_down_at_once_on_risk():
    g, clock = gov()
    g.set_budget(Budget(latency_ms=2.5))
    d = g.decide()
    assert d.config.level == 4
    for _ in range(2):                       # interference: the big cluster runs 1.5x slower
        g.observe(d.config, pred(g, d.config)[0] * 1.5)
    d2 = g.decide()
    assert d2.config.level < 4 and d2.feasible
    assert modelled(g, d.config) > 1.3 * pred(g, d.config)[0]    # two inferences moved the model most of the way


def test_hysteresis_waits_before_going_up():
    g, clock = gov(up_patience=5, quantile_margin=False)    # the rule alone (the quantile margin: below)
    g.set_budget(Budget(latency_ms=2.5))
    d = g.decide()
    for _ in range(3):
        g.observe(d.config, pred(g, d.config)[0] * 1.5)
    d = g.decide()
    assert d.config.level < 4
    ups = []
    for i in range(12):                      # the load is gone: observations match the profile
        g.observe(d.config, pred(g, d.config)[0])
        d = g.decide()
        ups.append(d.config.level)
    first_up = next(i for i, l in enumerate(ups) if l == 4)
    assert first_up >= 4                     # not on the first slack decision
    assert ups[-1] == 4


def test_the_first_run_at_another_level_is_the_changes_cost_not_the_levels_speed():
    """A move up whose first run is slow (the level's session cold: on this VM a p90 of up to
    1.6x the level's p50, docs/governor.md) misses there: the miss is the change's (``switch``), the level is
    not learnt slower from it, no guard steps the governor down again and the next move up
    does not wait longer for it. The second run at the level is learnt as usual."""
    g, _ = gov(up_patience=5, quantile_margin=False)
    g.set_budget(Budget(latency_ms=2.5))
    d = g.decide()
    assert d.config.level == 4
    for _ in range(3):                          # a load: level 4 no longer fits
        g.observe(d.config, pred(g, d.config)[0] * 1.5)
        d = g.decide()
    assert d.config.level < 4
    while d.config.level < 4:                   # the load is gone: up after up_patience
        g.observe(d.config, pred(g, d.config)[0])
        d = g.decide()
    t = g.targets.index(d.config.target)
    before, guard = modelled(g, d.config), g.tm[t].guard
    cause = g.observe(d.config, 2.5e-3 * 1.2)   # its first run: cold, a miss
    assert cause == "switch" and g.status()["misses"]["causes"]["switch"] == 1
    assert modelled(g, d.config) == pytest.approx(before) and g.tm[t].guard <= guard
    d2 = g.decide()
    assert d2.config == d.config and g.status()["up_patience"] == 5
    g.observe(d2.config, 2.5e-3 * 1.2)          # the second run is the level's own: learnt, at risk
    assert g.decide().config.level < 4


def test_a_move_up_waits_where_the_levels_first_run_would_miss():
    """Level 4 fits a 2.25 ms budget by its margin (2.0 ms x 1.1) but not its first run after
    a change of level where those take 1.3x: the governor stays a level below. Where first runs
    cost nothing extra it moves up as before."""
    def up_after_a_load(first_run: float) -> int:
        g, _ = gov(up_patience=5, quantile_margin=False)
        g.set_budget(Budget(latency_ms=2.25))
        d = g.decide()
        assert d.config.level == 4
        g.observe(d.config, pred(g, d.config)[0])
        for _ in range(10):                         # requests forcing their level teach what a change costs
            for lv in (3, 4):
                d = g.decide(level=lv)
                g.observe(d.config, pred(g, d.config)[0] * first_run)
        assert g.status()["level_change_cost"] == pytest.approx(first_run, rel=0.05)
        d = g.decide()
        for _ in range(3):                          # a load: level 4 no longer fits
            g.observe(d.config, pred(g, d.config)[0] * 1.5)
            d = g.decide()
        assert d.config.level < 4
        top = 0
        for _ in range(30):                         # the load is gone
            g.observe(d.config, pred(g, d.config)[0])
            d = g.decide()
            top = max(top, d.config.level)
        return top

    assert up_after_a_load(1.3) == 3
    assert up_after_a_load(1.0) == 4


def test_the_move_up_to_come_is_announced_one_decision_ahead():
    """``upcoming`` names the change of level that the next decision makes if nothing changes
    (the executor runs it once while no request waits, so that its first run does not find
    the level cold): set at the decision before each move up, only for a change of level on
    the same target at the same frequency (anything else would need the board changed), and
    never for the operator's change or a request's forced level."""
    g, _ = gov(up_patience=5, quantile_margin=False)
    g.pin(target="big", freq_khz=2000000)
    g.set_budget(Budget(latency_ms=2.25))
    d = g.decide()
    assert d.config.level == 4 and g.upcoming is None       # the operator's change: at once
    moves, announced_at = [], []
    for n, load in enumerate([1.0] + [1.5] * 3 + [1.0] * 30):      # a load steps it down, then it moves up
        g.observe(d.config, pred(g, d.config)[0] * load)
        announced, before = g.upcoming, d.config
        d = g.decide()
        if d.config.level > before.level:
            assert announced == d.config
            moves.append(n)
        if g.upcoming is not None:
            assert (g.upcoming.target, g.upcoming.freq_khz) == (d.config.target, d.config.freq_khz)
            assert g.upcoming.level > d.config.level
            announced_at.append(n + 1)
    assert len(moves) >= 2 and announced_at == moves          # 2 → 3 → 4, each announced, nothing else
    g.observe(d.config, pred(g, d.config)[0] * 1.5)
    assert g.decide(level=1).config.level == 1 and g.upcoming is None


def test_a_stale_target_keeps_its_quiet_shape_where_a_load_signal_keeps_loads_apart():
    """A stale target drifts back towards its profile. Without a load signal the shape it
    learnt goes too (learnt under a load, it would keep the target out for good); where the
    signal tells a target's quiet state from its loaded one (``set_load``), the shape learnt
    quiet is the target's own (here a constant of 0.5 ms the profile missed: on this host the
    start-up profile, timed back to back, predicted 0.15 ms for runs of 0.25 ms 3 ms apart)
    and stays, so the target is not tried again as if it were faster than it is."""
    from governor.controller import TargetModel
    for signalled in (False, True):
        m = TargetModel(Params(), 2e-3, 0.01)
        m.signalled = signalled
        for i in range(60):                      # three levels at 1, 2, 3 ms in the profile, each 0.5 ms more
            base = (1 + i % 3) * 1e-3
            m.observe(base, base + 0.5e-3, None, float("nan"), 0.0)
        learnt = m.shape(1e-3) * m.corr_lat
        assert learnt > 1.4e-3
        for _ in range(30):
            m.decay()
        assert m.shape(1e-3) * m.corr_lat == pytest.approx(learnt if signalled else 1e-3, rel=0.02)
    g, _ = gov()
    g.set_load({"big": False}, 0.03)              # the daemon's executor, each decision
    assert [m.signalled for m in g.tm] == [True, False]


def test_a_slow_first_run_at_another_level_does_not_keep_the_level_out_for_good():
    """One first run of a move up at 2.4x (in a burst) lifts the learnt cost of a change of
    level (to 1.42) above what level 4's 2.0 ms leaves under a 2.25 ms budget, so the governor
    stays a level below: then no change of level happens that could teach the cost again. Like
    a target's model, the cost unobserved for ``stale_runs`` decisions drifts back towards 1,
    and level 4 is tried again. A step down's first run, as slow, is no guide to a move up's
    and leaves the cost alone."""
    g, _ = gov(up_patience=5, quantile_margin=False, stale_runs=50)
    g.set_budget(Budget(latency_ms=2.25))
    d = g.decide()
    assert d.config.level == 4
    g.observe(d.config, pred(g, d.config)[0])
    for lv in (3, 4):                              # requests forcing their level: two changes, slow
        d = g.decide(level=lv)
        g.observe(d.config, pred(g, d.config)[0] * 2.4)
        # an EWMA of the moves up's first runs: untouched by the step down, 1.42 after the move up
        assert g.status()["level_change_cost"] == pytest.approx(1.0 if lv == 3 else 1.42, abs=0.01)
    d = g.decide()
    for _ in range(3):                             # a load: level 4 no longer fits
        g.observe(d.config, pred(g, d.config)[0] * 1.5)
        d = g.decide()
    assert d.config.level < 4
    served = []
    for _ in range(100):                           # the load is gone
        g.observe(d.config, pred(g, d.config)[0])
        d = g.decide()
        served.append(d.config.level)
    assert max(served[:40]) == 3                   # the cost holds it below while it is fresh
    assert served[-1] == 4 and g.status()["level_change_cost"] < 1.1


def moved_to_b(params: Params, processors=None, loaded=None) -> Governor:
    """Two targets: "a" serves level 2 under a 2.5 ms budget, "b" (1.4x slower) level 1 only;
    the operator pins b, and the move's first run there takes 1.7x its prediction (the move
    cost 1.21); then the pin is released. ``loaded``: a load signal's report, given first."""
    levels = LEVELS[:2]
    prof = Profile({"a": TargetFit(1e-4, 0.0, {1000000: 2.0}), "b": TargetFit(1.4e-4, 0.0, {1000000: 1.0})})
    g = Governor(build_space(levels, {"a": [1000000], "b": [1000000]}), levels, prof, clock=Clock(),
                 params=params, processors=processors)
    if loaded is not None:
        g.set_load(loaded, 0.03)
    g.set_budget(Budget(latency_ms=2.5))
    d = g.decide()
    assert d.config == Config(2, "a", 1000000)
    g.observe(d.config, pred(g, d.config)[0])
    g.pin(target="b")
    d = g.decide()
    g.observe(d.config, pred(g, d.config)[0] * 1.7, learn=False)   # the move's first run, cold
    g.release()
    return g


def served_steady(g: Governor, n: int) -> list:
    """The configurations of ``n`` decisions, each run as predicted."""
    served = []
    for _ in range(n):
        d = g.decide()
        g.observe(d.config, pred(g, d.config)[0])
        served.append(d.config)
    return served


def test_a_slow_first_run_after_a_move_does_not_keep_the_governor_on_the_lane_it_moved_to():
    """Two targets: "a" serves level 2 under a 2.5 ms budget, "b" (1.4x slower, cheaper) level
    1 only. A move to b (the operator's pin) whose first run took 1.7x its prediction (within
    the limit) lifts the move cost to 1.21, and level 2 on a no longer fits with it: the governor stays on b, a level
    below, and makes no move that could teach the cost otherwise. Like the cost of a change of
    level, the move cost drifts back towards 1 when no move has been made for the longest wait
    (``stale_max_s``, or as many decisions as ``stale_runs`` are to ``stale_s``), and the
    governor moves back to level 2 on a."""
    g = moved_to_b(Params(up_patience=5, quantile_margin=False, stale_runs=50, stale_max_s=4.0))
    assert g.status()["move_cost"] == pytest.approx(1.21)
    served = served_steady(g, 150)
    assert set(served[:90]) == {Config(1, "b", 1000000)}     # the cost holds it there: 100 decisions
    assert served[-1] == Config(2, "a", 1000000)
    assert g.status()["move_cost"] < 1.2


def test_a_move_up_held_back_by_the_move_cost_alone_is_made_once_it_has_waited_where_the_target_is_quiet():
    """The setting above, with a load signal, and "a" on b's CPU and one more. Where the signal
    reports "a" quiet, the move cost (1.21) stands for the first runs after the move alone, not
    for a load on "a" that its model has not seen: level 2 on a, which meets the budget by its
    margin and is held back by the cost alone, is taken after ``move_patience`` decisions in a
    row (a first run's miss, once, against a level below for every request after). Where the
    signal reports "a" loaded, or "a" runs on b's CPU alone (not a wider target), the cost holds."""
    for a_loaded, a_cpus in ((False, ["cpu0", "cpu1"]), (True, ["cpu0", "cpu1"]), (False, ["cpu1"])):
        g = moved_to_b(Params(up_patience=5, quantile_margin=False, stale_runs=10_000, move_patience=40),
                       processors={"a": a_cpus, "b": ["cpu1"]}, loaded={"a": a_loaded, "b": False})
        served = served_steady(g, 150)
        if a_loaded or a_cpus == ["cpu1"]:
            assert set(served) == {Config(1, "b", 1000000)}
        else:
            first = served.index(Config(2, "a", 1000000))
            assert 39 <= first <= 41 and set(served[first:]) == {Config(2, "a", 1000000)}
            assert set(served[:first]) == {Config(1, "b", 1000000)}


def test_the_margin_is_the_measured_tail_and_the_misses_follow_it():
    """With +-25% scatter around the profile, the margin becomes the 99th percentile of the
    observed / predicted ratios (the tail fit's, near the plain one's), and the closed loop misses its budget about as rarely as
    asked (1%) while still serving the high levels; with quantile_margin=False it stays 1.1."""
    import random
    for quantile in (True, False):
        rnd = random.Random(1)
        g, _ = gov(quantile_margin=quantile)
        g.set_budget(Budget(latency_ms=2.5))
        misses, levels = [], []
        d = g.decide()
        for _ in range(3000):
            lat = pred(g, d.config)[0] * rnd.uniform(0.75, 1.25)
            misses.append(lat * 1e3 > 2.5)
            levels.append(d.config.level)
            g.observe(d.config, lat)
            d = g.decide()
        t = g.targets.index("big")
        m = g.status()["margins"]["big"]
        if quantile:
            from governor.controller import tail_quantile
            assert m == pytest.approx(max(1.0, tail_quantile(g.tm[t].resid, 0.01)), rel=0.03)
            assert m == pytest.approx(np.quantile(list(g.tm[t].resid), 0.99), rel=0.1)
            assert 1.15 < m < 1.5
            assert np.mean(misses[500:]) <= 0.02 and np.mean(levels[500:]) >= 3
        else:
            assert m == pytest.approx(1.1)


def test_a_load_step_moves_the_model_not_the_margin_for_long():
    g, _ = gov()
    g.set_budget(Budget(latency_ms=2.5))
    d = g.decide()
    for _ in range(400):                     # a step to 1.3x that stays: no scatter
        g.observe(d.config, pred(g, d.config)[0] * 1.3)
        d = g.decide()
    assert modelled(g, d.config) == pytest.approx(1.3 * pred(g, d.config)[0], rel=0.02)
    assert g.status()["margins"]["big"] < 1.05    # the step's first errors have left the window


def test_a_constant_cost_the_profile_missed_does_not_keep_a_better_level_out():
    """The profile has no fixed cost; the machine adds 0.4 ms to every inference (a constant
    that a per-target ratio would spread over the levels as if it grew with the work). Level 2
    then takes 1.4 ms on big at 2 GHz, under a 1.6 ms budget with 14% slack: the governor must
    get there from level 1 and stay, without misses."""
    g, _ = gov(up_patience=5)
    g.set_budget(Budget(latency_ms=1.6))
    truth = lambda c: pred(g, c)[0] + 0.4e-3
    d = g.decide()
    levels, misses = [], 0
    for _ in range(300):
        lat = truth(d.config)
        misses += lat * 1e3 > 1.6
        g.observe(d.config, lat)
        d = g.decide()
        levels.append(d.config.level)
    assert levels[-1] == 2 and set(levels[-100:]) == {2}
    assert misses == 0
    ratio = g.status()["latency_model"]["big"]
    assert ratio["constant_ms"] > 0.1              # it learnt that there is a constant


def test_no_hopping_on_noise():
    g, clock = gov()
    g.set_budget(Budget(latency_ms=2.3))
    d = g.decide()
    import random
    rng = random.Random(1)
    for _ in range(300):
        clock.t += 0.01
        g.observe(d.config, pred(g, d.config)[0] * (1 + rng.gauss(0, 0.02)))
        d = g.decide()
    assert g.switches <= 3


def test_infeasible_budget_closest_and_flagged():
    g, _ = gov()
    g.set_budget(Budget(latency_ms=0.1))     # nothing is that fast
    d = g.decide()
    assert not d.feasible
    assert d.config == Config(1, "big", 2000000)   # the fastest: closest to the budget
    assert g.status()["feasible"] is False


def test_energy_budget():
    g, _ = gov()
    g.set_budget(Budget(energy_mj=2.0))
    d = g.decide()
    assert d.predicted_energy_j * 1e3 <= 2.0
    best = max((c for c in g.space if pred(g, c)[1] * 1e3 <= 2.0), key=lambda c: g.levels[c.level].accuracy)
    assert g.levels[d.config.level].accuracy == g.levels[best.level].accuracy


def test_power_budget():
    g, _ = gov()
    g.set_budget(Budget(power_w=1.0))
    d = g.decide()
    assert d.predicted_energy_j / d.predicted_latency_s <= 1.0 and d.feasible


def test_request_deadline_overrides_budget():
    g, _ = gov()
    g.set_budget(Budget(latency_ms=100.0))
    assert g.decide().config.level == 4
    d = g.decide(deadline_ms=0.9)
    assert d.config.level == 1 and d.latency_limit_ms == 0.9
    assert g.budget.latency_ms == 100.0


def test_forced_level():
    g, _ = gov()
    g.set_budget(Budget(latency_ms=100.0))
    assert g.decide(level=2).config.level == 2


def test_a_level_no_better_than_a_cheaper_one_is_not_chosen():
    """k=4 at +0.01 points over k=3 costs a third more for one test image in 10,000: within
    acc_tolerance the cheaper level wins; a pin or a request's groups still reach k=4."""
    levels = LEVELS[:3] + [Level(4, 86.01, 40_000_000)]
    g = Governor(build_space(levels, FREQS), levels, profile(), clock=Clock())
    assert g.decide().config.level == 3
    assert g.decide(level=4).config.level == 4
    g.pin(level=4)
    assert g.decide().config.level == 4
    g.release()
    strict = Governor(build_space(levels, FREQS), levels, profile(), clock=Clock(), params=Params(acc_tolerance=0))
    assert strict.decide().config.level == 4


def test_rate_limit_on_frequency_changes():
    g, clock = gov(freq_interval_s=1.0)
    assert g.decide().config == Config(4, "little", 500000)     # no budget: the frugal one
    clock.t = 0.01
    g.set_budget(Budget(latency_ms=15.0))    # 24 ms at 500 MHz misses: a forced change
    assert g.decide().config == Config(4, "little", 1000000)
    clock.t = 0.02
    g.set_budget(Budget(latency_ms=100.0))   # 500 MHz would save energy again, but the last
    assert g.decide().config.freq_khz == 1000000                # change was 10 ms ago
    clock.t = 1.5
    assert g.decide().config.freq_khz == 500000


def test_pin_and_release():
    g, _ = gov()
    g.pin(target="little")
    assert g.decide().config.target == "little"
    g.pin(level=1, freq_khz=500000)
    d = g.decide()
    assert (d.config.level, d.config.freq_khz) == (1, 500000)
    with pytest.raises(ValueError, match="no configuration has target=gpu"):
        g.pin(target="gpu")
    g.release()
    levels = [g.decide().config.level for _ in range(6)]   # up in accuracy at once: the operator's change
    assert levels == [4] * 6


@pytest.mark.parametrize("bad", [dict(latency_ms=-1), dict(latency_ms=0), dict(latency_ms=float("nan")),
                                 dict(energy_mj=float("inf")), dict(power_w=1e9), dict(latency_ms=True),
                                 dict(latency_ms="5")])
def test_budget_validation(bad):
    with pytest.raises(ValueError):
        Budget(**bad).validate()


def test_profile_fit_recovers_the_model():
    true = TargetFit(2e-9 * 1e3, 3e-4, {})
    levels = LEVELS
    space = build_space(levels, {"big": FREQS["big"]})
    samples = [Sample(c, true.latency(levels[c.level - 1].macs, c.freq_khz), 1.0 * true.latency(
        levels[c.level - 1].macs, c.freq_khz)) for c in plan_measurements(space)]
    p = Profile.fit(samples, levels)
    assert p.fits["big"].a == pytest.approx(true.a, rel=1e-6)
    assert p.fits["big"].b == pytest.approx(true.b, rel=1e-6)
    for c in space:
        assert p.predict(c, levels[c.level - 1].macs)[0] == pytest.approx(true.latency(levels[c.level - 1].macs, c.freq_khz))
    assert len(plan_measurements(space)) < len(space)
    assert Profile.from_dict(p.to_dict()).fits["big"].a == p.fits["big"].a


def test_one_sample_timed_in_a_burst_of_noise_does_not_move_the_others_predictions():
    """A start-up profile times each level 5 times; a median taken during a burst of the
    host's noise (1.8x was seen) must not shift the line every level is predicted from."""
    true = TargetFit(2e-9 * 1e3, 3e-4, {})
    space = [Config(k, "big", 1000000) for k in range(1, 5)]
    samples = [Sample(c, true.latency(LEVELS[c.level - 1].macs, c.freq_khz) * (1.8 if c.level == 3 else 1.0))
               for c in space]
    p = Profile.fit(samples, LEVELS)
    for c in space:
        if c.level != 3:
            assert p.predict(c, LEVELS[c.level - 1].macs)[0] == pytest.approx(true.latency(LEVELS[c.level - 1].macs, c.freq_khz), rel=0.02)
    two = Profile.fit(samples[:2], LEVELS)          # two points: the line through them
    assert two.fits["big"].a == pytest.approx(true.a) and two.fits["big"].b == pytest.approx(true.b)


def test_the_profiler_warms_each_configuration_and_times_more_where_the_runs_spread():
    """daemon/profiler.py: WARM_RUNS untimed runs, then ``runs`` timed; where those spread by
    more than SPREAD (one run in a burst of noise), twice as many more, and the median of all."""
    import time
    from collections import Counter
    from types import SimpleNamespace
    from daemon import profiler

    class Models:
        input_shape = (1,)

        def __init__(self):
            self.calls = Counter()

        def run(self, k, x, target):
            self.calls[k] += 1
            time.sleep(0.03 if (k == 2 and self.calls[k] == profiler.WARM_RUNS + 2) else 0.01)

    platform = SimpleNamespace(targets={"cpu": SimpleNamespace(is_split=False)}, settle_s=0.0,
                               energy_available=False, board_model=lambda *a, **k: None)
    executor = SimpleNamespace(platform=platform, apply=lambda c, cols, models: None)
    levels = [Level(1, 80.0, 10_000_000), Level(2, 84.0, 20_000_000)]
    m = Models()
    prof = profiler.measure(executor, m, [Config(1, "cpu", None), Config(2, "cpu", None)], levels, runs=5)
    assert m.calls == {1: profiler.WARM_RUNS + 5, 2: profiler.WARM_RUNS + 15}
    assert prof.predict(Config(2, "cpu", None), levels[1].macs)[0] < 0.02     # the slow run is not the median


def test_a_targets_first_run_is_a_lone_run_and_two_are_a_step():
    """The fast level follows the median of a target's last 3 runs: before 3 are in, the
    level held so far stands for the missing ones, so a fresh target's first slow run (the
    first of a fresh daemon there) does not move it, and two in a row do."""
    from governor.controller import TargetModel
    m = TargetModel(Params(), 1e-3, 0.01)
    m.observe(1e-3, 2e-3, None, float("nan"), 0.0)
    assert m.corr_lat == 1.0
    m.observe(1e-3, 2e-3, None, float("nan"), 0.0)
    assert m.corr_lat > 1.05


def test_profile_from_bad_dict():
    with pytest.raises(ValueError, match="malformed profile"):
        Profile.from_dict({"targets": {"cpu": {"a": "x"}}})


# ----------------------------------------------------------------------------- closed loop
@pytest.fixture(scope="module")
def closed_loop():
    from bench import scenarios as S
    levels = S.default_levels([Arch().cost(k)["macs"] for k in range(1, 5)])
    return {sc.name: {p: S.run(sc, p, levels) for p in S.POLICIES} for sc in S.scenarios()}


@pytest.mark.parametrize("scenario", ["XU3: budgets, load on a15, thermal cap", "Nano: budgets, load on cpu, GPU cap",
                                      "Nano: budgets, load on gpu, GPU cap"])
def test_closed_loop_targets(closed_loop, scenario):
    r = closed_loop[scenario]
    ours, oracle, perf = r["dnnscale"], r["oracle"], r["performance"]
    assert ours["miss_rate"] <= 0.01
    assert ours["accuracy"] >= oracle["accuracy"] - 1.0
    assert ours["miss_rate"] <= perf["miss_rate"]
    assert ours["energy_mj"] <= oracle["energy_mj"] * 1.02     # as frugal as the oracle
    assert ours["energy_mj"] < perf["energy_mj"]


@pytest.mark.parametrize("scenario", ["XU3: budgets, load on a15, thermal cap", "Nano: budgets, load on gpu, GPU cap"])
def test_closed_loop_saves_a_fifth_of_the_energy(closed_loop, scenario):
    """The issue's 20% (the Nano scenario with its load on the CPU saves 19.7%, the oracle
    18.9%: docs/governor.md)."""
    r = closed_loop[scenario]
    assert r["dnnscale"]["energy_mj"] <= 0.8 * r["performance"]["energy_mj"]


@pytest.mark.parametrize("board", ["sim-odroid-xu3", "sim-jetson-nano"])
def test_budget_sweep(board):
    """Steady budgets: never more energy than performance; with slack (>= 1.5x the fastest
    full-model latency) the full model at the oracle's energy, and with no budget too."""
    from bench import scenarios as S
    levels = S.default_levels([Arch().cost(k)["macs"] for k in range(1, 5)])
    rows = S.sweep(board, levels, multiples=(1.1, 1.5, None), n=120)
    assert [r["multiple"] for r in rows] == [1.1, 1.5, None]
    for r in rows:
        ours, oracle, perf = r["dnnscale"], r["oracle"], r["performance"]
        assert ours["energy_mj"] < perf["energy_mj"] and ours["miss_rate"] == 0
        if r["multiple"] != 1.1:
            assert ours["accuracy"] == oracle["accuracy"] == levels[-1].accuracy
            assert ours["energy_mj"] == pytest.approx(oracle["energy_mj"], rel=0.02)


def test_nano_gpu_load_is_met_by_stepping_down(closed_loop):
    """A load on the GPU slows the GPU-served inference and the governor steps down for it;
    the same load on the CPU does not touch it (in the simulator's model)."""
    def levels_served(name, a, b):
        return np.mean([row[3] for row in closed_loop[name]["dnnscale"]["trace"][a:b]])
    cpu, gpu = "Nano: budgets, load on cpu, GPU cap", "Nano: budgets, load on gpu, GPU cap"
    assert levels_served(cpu, 320, 600) == levels_served(cpu, 20, 300)
    assert levels_served(gpu, 320, 600) < levels_served(gpu, 20, 300)
    assert closed_loop[gpu]["dnnscale"]["miss_rate"] <= 0.01


def test_clearing_the_budget_or_a_pin_moves_up_at_once():
    """Hysteresis guards against noise, not against the operator: after a clear or a release
    the best configuration is served from the very next decision (up_patience is 5)."""
    g, clock = gov()
    g.set_budget(Budget(latency_ms=1.5))
    for _ in range(3):
        c = g.decide().config
        g.observe(c, pred(g, c)[0])
    assert c.level == 2
    g.clear_budget()
    assert g.decide().config.level == 4                 # not after 5 more requests
    g.pin(level=1)
    assert g.decide().config.level == 1
    g.release()
    assert g.decide().config.level == 4


def test_miss_rate_is_since_the_budget_was_set():
    g, clock = gov()
    g.set_budget(Budget(latency_ms=2.5))
    for _ in range(10):
        c = g.decide().config
        g.observe(c, 0.010)                              # 10 ms: every one misses
    assert g.status()["miss_rate"] == 1.0
    g.set_budget(Budget(latency_ms=50.0))
    for _ in range(4):
        c = g.decide().config
        g.observe(c, 0.001)
    s = g.status()
    assert s["miss_rate"] == 0.0 and s["observed_since_budget"] == 4
    assert 0 < s["miss_rate_recent"] < 1                # the window still holds the old misses


def test_a_frequency_cap_read_back_keeps_the_governor_below_it_until_it_lifts():
    """The kernel ran big at 1 GHz when 2 GHz was asked (a thermal cap): the model learns from
    the configuration that ran, frequencies above the cap are left out, and after stale_s
    the governor asks for them again."""
    g, clock = gov()
    g.set_budget(Budget(latency_ms=2.5))
    d = g.decide()
    assert d.config == Config(4, "big", 2000000)
    ran = Config(4, "big", 1000000)
    g.observe(d.config, pred(g, ran)[0], ran_khz=1000000)       # 4 ms: what 1 GHz gives
    assert g.status()["caps_khz"] == {"big": 1000000}
    assert modelled(g, ran) == pytest.approx(pred(g, ran)[0], rel=0.05)   # learnt as what ran
    d = g.decide()
    assert d.config.freq_khz <= 1000000 and d.config.level == 2    # 2 ms at 1 GHz fits 2.5
    clock.t += g.p.stale_s + 0.1
    for _ in range(g.p.up_patience + 1):
        d = g.decide()
    assert d.config == Config(4, "big", 2000000) and g.status()["caps_khz"] == {}


def test_a_cap_below_a_pinned_frequency_leaves_the_pin_not_a_crash():
    """The operator pinned big at 2 GHz and the kernel holds it at 1 GHz: no configuration is
    left under both the pin and the cap, and every decision (fast path, infeasible, power cap)
    runs the pin as the kernel allows it, instead of failing (it raised on an empty choice)."""
    g, _ = gov()
    g.pin(target="big", freq_khz=2000000)
    g.observe(g.decide().config, 0.004, ran_khz=1000000)
    assert g.status()["caps_khz"] == {"big": 1000000}
    for budget in (Budget(), Budget(latency_ms=2.5), Budget(latency_ms=1e-3), Budget(power_w=0.1)):
        g.set_budget(budget)
        for _ in range(3):
            d = g.decide()
            assert (d.config.target, d.config.freq_khz) == ("big", 2000000), budget


def test_a_move_up_that_misses_at_once_waits_twice_as_long_next_time():
    """Level 4 fits by the model and misses on the board, every time: each failed try doubles
    the decisions the next one waits for, so the misses thin out instead of recurring every up_patience decisions."""
    g, _ = gov(up_patience=5)
    g.set_budget(Budget(latency_ms=2.5))
    tries = []
    d = g.decide()
    for i in range(400):
        lat = pred(g, d.config)[0] * (1.5 if d.config.level == 4 else 1.0)   # level 4 runs over
        if d.config.level == 4:
            tries.append(i)
        g.observe(d.config, lat)
        d = g.decide()
    starts = [t for j, t in enumerate(tries) if j == 0 or t != tries[j - 1] + 1]   # each try of level 4
    assert 3 <= len(starts) <= 7 and g._patience >= 8 * g.p.up_patience
    assert min(np.diff(starts)[2:]) >= 8 * g.p.up_patience   # the tries thin out: not every up_patience decisions
    assert g.status()["up_patience"] == g._patience          # status shows what the next move up waits for


def test_runs_not_learnt_from_count_but_do_not_move_the_model():
    g, _ = gov()
    g.set_budget(Budget(latency_ms=2.5))
    d = g.decide()
    before = modelled(g, d.config)
    g.observe(d.config, pred(g, d.config)[0] * 3, learn=False)     # a run paying for a move
    assert modelled(g, d.config) == before
    assert g.status()["miss_rate"] == 1.0 and g.status()["observed_since_budget"] == 1


def test_quantile_of_a_deque_is_numpys():
    """The margin's quantile (governor.controller.quantile) is np.quantile's linear one."""
    from collections import deque
    from governor.controller import quantile
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 30, 299, 300):
        d = deque(rng.lognormal(0, 0.3, n).tolist(), maxlen=300)
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            assert quantile(d, q) == pytest.approx(float(np.quantile(d, q)), rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------- tails, bursts, causes, floors
def test_the_tail_fit_estimates_a_one_percent_quantile_better_than_the_plain_one():
    """Windows of 300 ratios from a known heavy-ish tail (1 + exponential, and a Pareto):
    the generalised-Pareto fit to the peaks over the 90th percentile lands closer to the true
    99th percentile than the empirical quantile of the same window, which rests on 3 values."""
    from governor.controller import quantile, tail_quantile
    rng = np.random.default_rng(0)
    for draw, truth in ((lambda: 1 + 0.05 * rng.exponential(size=300), 1 + 0.05 * np.log(100)),
                        (lambda: 1 + 0.02 * (rng.pareto(4.0, size=300)), 1 + 0.02 * (100 ** 0.25 - 1))):
        fit, plain = [], []
        for _ in range(400):
            w = draw()
            fit.append(tail_quantile(w, 0.01))
            plain.append(quantile(w, 0.99))
        err_fit = np.sqrt(np.mean((np.array(fit) - truth) ** 2))
        err_plain = np.sqrt(np.mean((np.array(plain) - truth) ** 2))
        print(err_fit, err_plain, np.median(fit), truth)
        assert err_fit < err_plain
        assert abs(np.median(fit) - truth) < 0.1 * (truth - 1)


def test_after_a_miss_the_margin_holds_the_ratio_that_missed_and_fades():
    """A miss raises the target's margin to the ratio of the missed run to what the updated
    model predicts for it, so the next decisions keep away from the edge during a burst; it
    fades by burst_decay per run."""
    g, _ = gov(quantile_margin=False)
    g.set_budget(Budget(latency_ms=2.5))
    d = g.decide()
    assert d.config == Config(4, "big", 2000000)
    for _ in range(60):                                          # as profiled: the model settles there
        g.observe(d.config, pred(g, d.config)[0])
        assert g.decide().config == d.config
    g.observe(d.config, pred(g, d.config)[0] * 1.3)              # 2.6 ms: a lone miss
    # the level (a median of 3) did not move for one run; the guard is the part of the run
    # that the updated model still does not predict
    assert g.status()["margins"]["big"] == pytest.approx(2.6e-3 / modelled(g, d.config), abs=0.001)
    assert g.status()["margins"]["big"] > 1.25
    assert g.decide().config.level < 4
    for _ in range(30):
        c = g.decide().config
        g.observe(c, pred(g, c)[0])                          # the board runs as profiled again
    assert g.status()["margins"]["big"] == pytest.approx(1.1, abs=0.01)   # back to 1 + safety
    assert g.decide().config.level == 4


def test_every_miss_has_a_cause_and_bursts_are_counted():
    g, clock = gov(quantile_margin=False)
    g.set_budget(Budget(latency_ms=2.5))
    c = g.decide().config
    assert c == Config(4, "big", 2000000)
    lat = pred(g, c)[0]

    def run(factor, **kw):
        clock.t += 0.01
        return g.observe(c, lat * factor, limit_ms=2.5, **kw)
    assert run(1.0) is None
    assert run(1.3, ran_khz=1000000) == "frequency_cap"
    g, clock = gov(quantile_margin=False)
    g.set_budget(Budget(latency_ms=2.5))
    assert run(1.3, learn=False) == "switch"          # the first runs after a move
    assert run(1.0) is None
    clock.t += 5.0
    assert run(1.3) == "wake_up"
    assert run(1.0) is None
    assert run(1.4) == "prediction"                   # a lone run over the margin
    assert run(1.4) == "contention"                   # the one before it ran over too
    assert run(1.4) == "contention"
    m = g.status()["misses"]
    assert m["causes"] == {"infeasible": 0, "frequency_cap": 0, "switch": 1, "wake_up": 1, "contention": 2, "prediction": 1}
    assert m["longest_run"] == 3
    # after a miss (5 of them, the last has no successor): 2 then missed, 2 did not
    assert m["p_miss_after_miss"] == pytest.approx(2 / 4)
    g.set_budget(Budget(latency_ms=2.5))
    assert g.status()["misses"]["longest_run"] == 0 and sum(g.status()["misses"]["causes"].values()) == 0


def test_a_switch_to_another_frequency_is_the_cause_of_its_first_run_missing():
    g, clock = gov(quantile_margin=False)
    g.set_budget(Budget(latency_ms=2.5))
    d = g.decide()
    g.observe(d.config, pred(g, d.config)[0])
    g.set_budget(Budget(latency_ms=10.0))             # level 4 at 500 MHz: the lowest energy
    d2 = g.decide()
    assert d2.config == Config(4, "big", 500000)
    assert g.observe(d2.config, 0.0105) == "switch"   # its first run
    assert g.observe(d2.config, 0.0105) == "contention"


def test_an_accuracy_floor_holds_and_the_latency_gives_way():
    g, _ = gov()
    g.set_budget(Budget(latency_ms=1.5))
    assert g.decide().config.level == 2                       # 84 %
    g.set_budget(Budget(latency_ms=1.5, accuracy_min=85.0))   # level 3 needs 1.65 ms
    d = g.decide()
    assert d.config.level >= 3 and not d.feasible and d.gave_way == ("latency_ms",)
    assert d.config == Config(3, "big", 2000000)              # the closest to the limit at the floor
    g.set_budget(Budget(latency_ms=2.5, accuracy_min=85.0))
    d = g.decide()
    assert d.feasible and d.gave_way == () and d.config.level == 4
    with pytest.raises(ValueError, match="accuracy_min 90 is above every level's accuracy"):
        g.set_budget(Budget(accuracy_min=90.0))
    with pytest.raises(ValueError, match="accuracy_min"):
        Budget(accuracy_min=101).validate()
    g.pin(level=1)                                            # the operator's pin wins over the floor
    d = g.decide()
    assert d.config.level == 1 and "accuracy_min" in d.gave_way


def test_the_run_after_a_frequency_change_is_learnt_without_its_settling():
    """Big settles in 0.5 ms: from 500 MHz, the first run of level 4 at 2 GHz loses
    0.5 x (1 - 0.5/2) = 0.375 ms. The decision does not avoid it (paid once per change); the
    model learns the run without it, where a governor told of no settle time learns it as
    the configuration's speed; a miss there is the change's."""
    def at_500(settle):
        g = Governor(build_space(LEVELS, FREQS), LEVELS, profile(), clock=Clock(),
                     params=Params(quantile_margin=False), settle_s=settle)
        g.set_budget(Budget(latency_ms=10.0))
        assert g.decide().config == Config(4, "big", 500000)
        g.set_budget(Budget(latency_ms=2.5))
        d = g.decide()
        assert d.config == Config(4, "big", 2000000)
        return g, d.config
    g, c = at_500({"big": 0.5e-3})
    naive, _ = at_500({})
    first = pred(g, c)[0] + 0.375e-3
    assert g.observe(c, first) is None and naive.observe(c, first) is None
    assert modelled(g, c) == pytest.approx(pred(g, c)[0], rel=0.01)
    assert modelled(naive, c) > 1.05 * pred(g, c)[0]
    g, c = at_500({"big": 0.5e-3})
    naive, _ = at_500({})
    assert g.observe(c, 2.6e-3) == "switch" and naive.observe(c, 2.6e-3) == "switch"
    assert modelled(g, c) < modelled(naive, c)          # 2.225 ms learnt, not 2.6


def test_a_lane_whose_first_run_after_a_move_missed_waits_longer_before_it_is_retried():
    """The first run on a target the governor moved to missed: that target waits twice as
    long (up to stale_max_s) before its correction drifts back to the profile and draws the
    governor there again; a move there that met its limit resets the wait. (The executor
    gives the first runs after a move ``learn=False``: their misses are the move's.)"""
    g, clock = gov()
    big, little = Config(4, "big", 2000000), Config(1, "little", 1000000)
    t = g.targets.index("little")
    g.observe(big, 1e-3, limit_ms=5.0)
    for want in (4.0, 8.0, 16.0):
        g.observe(little, 9e-3, limit_ms=5.0, learn=False)     # moved to little: the first run missed
        assert g.tm[t].stale_s == want
        assert g.status()["stale_after"]["little"] == {"s": want, "decisions": int(g.p.stale_runs * want / g.p.stale_s)}
        g.observe(little, 9e-3, limit_ms=5.0)                   # and the runs after it, learnt
        g.observe(big, 1e-3, limit_ms=5.0)
    g.tm[t].corr_lat = 3.0
    clock.t += 3.0                                      # past stale_s, not past the 16 s wait
    g.decide()
    assert g.tm[t].corr_lat == 3.0
    clock.t += 14.0
    g.decide()
    assert g.tm[t].corr_lat < 3.0                       # drifting back now
    g.observe(little, 1e-3, limit_ms=5.0, learn=False)      # a move there that met the limit
    assert g.tm[t].stale_s == g.p.stale_s


def test_with_no_energy_known_a_level_is_served_on_the_target_the_next_level_fits_on():
    """A host without energy sensors: two CPU targets, the one-CPU lane a hair faster at
    level 1 and much slower above it. Where level 1 is all that fits, it runs on the stronger
    target (the whole-network latency tells them apart), so that when the budget widens the
    next level up is a step on the same target, not a move; at equal accuracy the governor
    does not move over for the hair, and where a miss sent it to the weaker target it comes
    back once the stronger fits again."""
    fits = Profile({"cpu": TargetFit(8e-12, 0.12e-3), "cpu:1": TargetFit(19e-12, 0.0)})
    g = Governor(build_space(LEVELS, {"cpu": [], "cpu:1": []}), LEVELS, fits, clock=Clock())
    assert pred(g, Config(1, "cpu:1", None))[0] < pred(g, Config(1, "cpu", None))[0]
    g.set_budget(Budget(latency_ms=0.25))            # level 1 only (x 1.1), on either
    assert g.decide().config == Config(1, "cpu", None)
    for _ in range(20):
        g.observe(Config(1, "cpu", None), 0.2e-3)
        assert g.decide().config == Config(1, "cpu", None)
    g.observe(Config(1, "cpu", None), 0.3e-3)          # a miss: cpu's guard keeps level 1 out there
    assert g.decide().config == Config(1, "cpu:1", None)
    back = []
    for _ in range(15):                               # the guard fades: back where level 2 can follow
        back.append(g.decide().config)
        g.observe(back[-1], 0.19e-3)
    home = back.index(Config(1, "cpu", None))
    assert 0 < home and set(back[:home]) == {Config(1, "cpu:1", None)} and set(back[home:]) == {Config(1, "cpu", None)}
    g.set_budget(Budget(latency_ms=0.45))            # level 2 fits (with the miss in cpu's tail)
    seen = []
    for _ in range(g.p.up_patience + 2):
        seen.append(g.decide().config)
        g.observe(seen[-1], pred(g, seen[-1])[0])
    assert seen[-1] == Config(2, "cpu", None) and {c.target for c in seen} == {"cpu"}


def test_a_lane_unobserved_for_stale_runs_decisions_drifts_back_though_no_time_passed():
    """At a fast request rate ``stale_s`` is thousands of requests: a target unobserved for
    ``stale_runs`` decisions (doubled with ``stale_s`` after a move there missed) drifts
    back towards its profile too, so a lane that looked slow in a few runs is tried again."""
    g, clock = gov()
    little = Config(1, "little", 1000000)
    t = g.targets.index("little")
    for wait in (g.p.stale_runs, 2 * g.p.stale_runs):
        g.observe(little, 1e-3, limit_ms=5.0)
        g.tm[t].stale_s = g.p.stale_s * wait / g.p.stale_runs     # as after a move there missed
        g.tm[t].corr_lat = 3.0
        for _ in range(wait):
            g.decide()
        assert g.tm[t].corr_lat == 3.0 and clock.t == 0.0
        g.decide()
        g.decide()
        assert g.tm[t].corr_lat < 3.0


def test_a_budget_that_asks_for_fewer_misses_gets_a_wider_margin_and_keeps_it():
    """``miss_rate``: the margin is the tail quantile for the rate asked. On runs whose
    observed / predicted ratios have a known tail, asking 0.2% instead of the default 1%
    widens the margin at once (from the tail already seen) and the decision stays below the
    limit by it; the misses over a long run are near each rate asked. Without latency_ms it
    is refused; out of range too."""
    rng = np.random.default_rng(1)
    rates = {}
    for asked in (None, 0.002):
        g, clock = gov()
        g.set_budget(Budget(latency_ms=2.5))
        missed = served = 0
        for i in range(3000):
            if i == 300 and asked is not None:        # the tail is known by then
                before = g.status()["margins"]["big"]
                g.set_budget(Budget(latency_ms=2.5, miss_rate=asked))
                assert g.status()["margins"]["big"] > before
                assert g.status()["budget"]["miss_rate"] == asked
            d = g.decide()
            assert d.feasible and modelled(g, d.config) * g.status()["margins"][d.config.target] <= 2.5e-3 * 1.005
            lat = pred(g, d.config)[0] * (1 + 0.05 * rng.exponential())
            clock.t += 0.01
            g.observe(d.config, lat, limit_ms=2.5)
            if i >= 600:
                served += 1
                missed += lat > 2.5e-3
        rates[asked] = (missed / served, g.status()["margins"]["big"])
    assert rates[0.002][1] > rates[None][1]
    assert rates[0.002][0] < rates[None][0] <= 0.02
    assert rates[0.002][0] <= 0.006
    with pytest.raises(ValueError, match="give latency_ms too"):
        Budget(energy_mj=5, miss_rate=0.01).validate()
    with pytest.raises(ValueError, match="miss_rate must be in"):
        Budget(latency_ms=2, miss_rate=0.9).validate()


def test_a_target_seldom_used_is_taken_to_be_as_noisy_as_the_targets_measured():
    """Until its window holds resid_min ratios, a target's margin is the median of the fitted
    tails of the others (at least 1 + safety), not an optimistic 1 + safety that made a lane
    seldom used look quieter than the measured ones (and drew moves that missed); once it has
    its own window, its own tail; after it decays (unobserved for stale_s), the prior again."""
    rng = np.random.default_rng(2)
    g, clock = gov()
    g.set_budget(Budget(latency_ms=50.0))
    for target, noise in (("big", 0.08), ("little", 0.002)):
        g.pin(target=target)
        for _ in range(200):
            c = g.decide().config
            clock.t += 0.001
            g.observe(c, pred(g, c)[0] * (1 + noise * rng.exponential()))
        m = g.status()["margins"]
        if target == "big":
            assert m["big"] > 1.15 and m["little"] == m["big"]       # the prior: big's tail
        else:
            assert m["little"] < 1.05 < m["big"]                        # its own, quieter tail
    clock.t += 10.0                                                     # both stale: back to the prior
    g.release()
    g.decide()
    m = g.status()["margins"]
    assert m["big"] == m["little"] == pytest.approx(1.1)             # no fitted tail left: 1 + safety
    g2, _ = gov(quantile_margin=False)
    assert g2.status()["margins"] == {"big": 1.1, "little": 1.1}


def test_a_burst_on_shared_cpus_guards_every_target_there_and_the_governor_does_not_hop_between_them():
    """``cpu`` (CPUs 0-1) and ``cpu:1`` (CPU 0) share CPU 0; ``gpu`` shares none. A miss on
    ``cpu`` raises the guard on ``cpu:1`` as well (the burst is on its CPU too), not on the
    GPU's. Then a burst that no configuration fits: the closest is no longer the target that
    did not miss last (its quiet speed unproven and its first run after the move a miss too),
    which had the governor alternating between the two at every run."""
    fits = Profile({"cpu": TargetFit(8e-12, 0.12e-3), "cpu:1": TargetFit(19e-12, 0.0), "gpu": TargetFit(60e-12, 0.0)})
    cpus = {"cpu": [0, 1], "cpu:1": [0], "gpu": ["gpu"]}        # what each runs on

    def burst(cpus):
        g = Governor(build_space(LEVELS, {t: [] for t in fits.fits}), LEVELS, fits, clock=Clock(), processors=cpus)
        g.set_budget(Budget(latency_ms=0.25))                  # level 1 fits, on either CPU target
        for _ in range(20):
            prev = g.decide().config
            g.observe(prev, 0.2e-3)
        assert prev == Config(1, "cpu", None)
        ran, margins = [], []
        for _ in range(16):                                    # CPU 0 busy: every run 0.3 ms, a move's 0.39
            c = g.decide().config
            moved = c.target != prev.target
            g.observe(c, 0.3e-3 * (1.3 if moved else 1), learn=not moved)
            ran.append(c.target)
            margins.append(g.status()["margins"])
            prev = c
        return ran, margins

    ran, margins = burst(cpus)
    assert margins[0]["cpu:1"] == margins[0]["cpu"] > 1.4 and margins[0]["gpu"] == pytest.approx(1.1)
    moves = sum(a != b for a, b in zip(ran, ran[1:]))
    assert set(ran) <= {"cpu", "cpu:1"} and moves <= 3
    alone, _ = burst({})                                       # each target on CPUs of its own
    assert sum(a != b for a, b in zip(alone, alone[1:])) >= 12

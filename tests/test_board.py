"""Several models on one board (governor/board.py): each rule on the governor tests' small
synthetic space (tests/test_governor.py), by simulated time."""
from __future__ import annotations

import pytest

from governor import Board, Budget, Governor, Params, build_space

from .test_governor import FREQS, LEVELS, Clock, profile


def two(order=("a", "b"), settle_s=5e-3):
    """Two governors on one board whose clocks settle in ``settle_s`` (default: longer than
    any slack here, as the Nano GPU's 5 ms: a set's claim holds the clock where it needs it)."""
    clock = Clock()
    govs = {n: Governor(build_space(LEVELS, FREQS), LEVELS, profile(), clock=clock, params=Params(),
                        settle_s={"big": settle_s, "little": settle_s}) for n in order}
    return Board(order, clock=clock), govs, clock


def test_a_model_decides_at_the_frequency_another_needs_and_spends_it_as_accuracy():
    board, g, _ = two()
    g["a"].pin(target="big")
    g["b"].pin(target="big")
    g["a"].set_budget(Budget(latency_ms=2.5))   # level 4 at 2 GHz: 2.0 ms x 1.1
    g["b"].set_budget(Budget(latency_ms=2.5))
    g["b"].pin(level=1, target="big")           # alone: level 1 meets 2.5 ms from 500 MHz (2.0 x 1.1)
    assert g["b"].need_khz(board.decide("b", g["b"]).config, 2.5) == 500000
    a = board.decide("a", g["a"]).config
    assert (a.level, a.freq_khz) == (4, 2000000)
    b = board.decide("b", g["b"]).config
    assert b.freq_khz == 2000000                # not 500 MHz: the target runs at 2 GHz for a anyway
    g["b"].release()
    g["b"].pin(target="big")
    assert board.decide("b", g["b"]).config == a   # and the floor buys b level 4 at its budget
    assert board.status()["targets"]["big"] == {"floor_khz": 2000000, "claims": {
        "a": {"khz": 2000000, "floor_khz": 2000000}, "b": {"khz": 2000000, "floor_khz": 2000000}}}


def test_where_the_slack_covers_the_settle_each_set_runs_at_its_own_clock():
    board, g, _ = two(settle_s=0.1e-3)
    for n in g:
        g[n].pin(target="big")
        g[n].set_budget(Budget(latency_ms=2.5))
    g["b"].pin(level=1, target="big")
    assert board.decide("a", g["a"]).config.freq_khz == 2000000
    assert board.decide("b", g["b"]).config.freq_khz == 500000     # a's next run settles up in time
    assert g["b"].floors == {}


def test_a_claim_lapses_after_idle():
    board, g, clock = two()
    for n in g:
        g[n].pin(target="big")
    g["a"].set_budget(Budget(latency_ms=2.5))
    board.decide("a", g["a"])
    g["b"].set_budget(Budget(energy_mj=4.5))    # alone: level 4 at 500 MHz (4 mJ)
    d = board.decide("b", g["b"])                # under a's floor: level 2 at 2 GHz (4 mJ)
    assert g["b"].floors == {"big": 2000000} and (d.config.level, d.config.freq_khz) == (2, 2000000)
    clock.t += 1.5                              # a has not run for longer than idle_s
    for _ in range(Params().up_patience):       # the move up waits out the governor's hysteresis
        d = board.decide("b", g["b"])
    assert g["b"].floors == {} and (d.config.level, d.config.freq_khz) == (4, 500000)


def test_a_lower_priority_floor_that_costs_accuracy_is_overruled():
    board, g, _ = two(("a", "b"))
    for n in g:
        g[n].pin(target="big")
    g["b"].set_budget(Budget(latency_ms=2.5))   # b needs 2 GHz for level 4
    board.decide("b", g["b"])
    g["a"].set_budget(Budget(energy_mj=5))      # level 4 at 2 GHz is 8 mJ: under b's floor a would drop to level 2
    d = board.decide("a", g["a"])
    assert (d.config.level, d.config.freq_khz) == (4, 500000) and d.feasible
    assert board.status()["overruled"] == {"a": ["b"]}
    # ranked the other way round, the same budget gives way to the floor
    board, g, _ = two(("b", "a"))
    for n in g:
        g[n].pin(target="big")
    g["b"].set_budget(Budget(latency_ms=2.5))
    board.decide("b", g["b"])
    g["a"].set_budget(Budget(energy_mj=5))
    d = board.decide("a", g["a"])
    assert d.config.freq_khz == 2000000 and d.config.level == 2 and board.status()["overruled"] == {}


def test_one_model_on_a_board_decides_as_its_governor_alone():
    board, g, clock = two(("a",))
    alone = Governor(build_space(LEVELS, FREQS), LEVELS, profile(), clock=clock, params=Params())
    for gv in (g["a"], alone):
        gv.set_budget(Budget(latency_ms=1.8))
    for i in range(50):
        d1, d2 = board.decide("a", g["a"]), alone.decide()
        assert d1 == d2
        lat = 1.3e-3 if i % 7 else 2.5e-3
        g["a"].observe(d1.config, lat)
        alone.observe(d2.config, lat)
        clock.t += 0.01


@pytest.mark.parametrize("settle_s, floor", [(0.2e-3, 0), (0.5e-3, 1000000), (2e-3, 2000000), (0.0, 0)])
def test_a_floor_is_what_lets_the_next_run_settle_up_in_time(settle_s, floor):
    """Level 4 at 2 GHz: 2.0 ms, 2.2 with the 10% margin, under a 2.5 ms limit: 0.27 ms to
    lose. A settle time within it leaves the clock free (0); a longer one holds it where the
    run still makes it (at 1 GHz the first 0.5 ms cost 0.25 ms: in time); no known settle
    time (0) binds nothing."""
    g = Governor(build_space(LEVELS, FREQS), LEVELS, profile(), clock=Clock(), params=Params(),
                 settle_s={"big": settle_s})
    g.pin(target="big")
    g.set_budget(Budget(latency_ms=2.5))
    c = g.decide().config
    assert (c.level, c.freq_khz) == (4, 2000000) and g.need_khz(c, 2.5) == 2000000
    assert g.floor_khz(c, 2.5) == floor
    assert g.floor_khz(c, None) == 0                  # no latency limit: nothing to settle in time for


def test_a_split_holds_the_clocks_of_the_clusters_it_runs_on():
    """A split's frequency sets each of its parts' clocks (platforms.model.clock_table): a
    model on the split at 2 GHz, whose next run could not settle up in time, holds the little
    cluster at the 1 GHz the split runs it at; a model on the little cluster alone decides
    above it. Without the clocks, the split and the cluster were unrelated names."""
    from governor import Profile, TargetFit
    from platforms.model import Target, clock_table, split
    big = Target("big", "cpu", [4, 5], FREQS["big"], ["policy4"])
    little = Target("little", "cpu", [0, 1], FREQS["little"], ["policy0"])
    both = split([big, little])
    clocks = clock_table({"big": big, "little": little, both.name: both})
    assert clocks[both.name][2000000] == {"policy4": 2000000, "policy0": 1000000}
    freqs = dict(FREQS, **{both.name: both.freqs_khz})
    prof = Profile({"big": TargetFit(1e-4, 0.0, {500000: 0.5, 1000000: 1.2, 2000000: 4.0}),
                    "little": TargetFit(3e-4, 0.0, {500000: 0.1, 1000000: 0.25}),
                    both.name: TargetFit(0.6e-4, 0.0, {500000: 0.6, 1000000: 1.45, 2000000: 4.2})})

    def decide_b(clocks):
        clock = Clock()
        g = {n: Governor(build_space(LEVELS, freqs), LEVELS, prof, clock=clock, params=Params(),
                         settle_s={t: 5e-3 for t in freqs}) for n in "ab"}
        board = Board("ab", clock=clock, clocks=clocks)
        g["a"].pin(target=both.name)
        g["a"].set_budget(Budget(latency_ms=1.5))      # level 4 on the split needs 2 GHz (1.2 ms x 1.1)
        a = board.decide("a", g["a"]).config
        assert (a.level, a.freq_khz) == (4, 2000000)
        g["b"].pin(target="little")
        g["b"].set_budget(Budget(latency_ms=30))      # alone: level 4 at 500 MHz (24 ms, the least energy)
        return board.decide("b", g["b"]).config

    assert decide_b(None).freq_khz == 500000
    assert decide_b(clocks).freq_khz == 1000000

"""Several models on one board (governor/board.py): each rule on the governor tests' small
synthetic space (tests/test_governor.py), by simulated time."""
from __future__ import annotations

from governor import Board, Budget, Governor, Params, build_space

from .test_governor import FREQS, LEVELS, Clock, profile


def two(order=("a", "b")):
    clock = Clock()
    govs = {n: Governor(build_space(LEVELS, FREQS), LEVELS, profile(), clock=clock, params=Params()) for n in order}
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
    assert board.status()["targets"]["big"] == {"floor_khz": 2000000, "claims": {"a": 2000000, "b": 2000000}}


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

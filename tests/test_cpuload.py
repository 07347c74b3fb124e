"""The load signal (platforms/cpuload.py): others' share of some CPUs from /proc/stat, on a
file written like the kernel's and on this machine's own, and the governor's use of it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Dict

import numpy as np
import pytest

from governor import Budget, Config
from platforms.cpuload import BUSY_FIELDS, LOADED_AT, QUIET_AT, OthersLoad, from_env, parse_stat
from tests.test_governor import gov, modelled, pred

STAT = """cpu  0 0 0 {tot} 0 0 0 0 0 0
cpu0 10 5 7 {i0} 3 0 1 0 0 0
cpu1 20 0 0 {i1} 0 0 0 2 0 0
intr 1 2 3
ctxt 99
"""


def _write(path, i0, i1):
    path.write_text(STAT.format(tot=i0 + i1, i0=i0, i1=i1))


def test_idle_ticks_per_cpu_are_idle_and_iowait():
    assert parse_stat(STAT.format(tot=900, i0=400, i1=500)) == {0: 400 + 3, 1: 500}
    assert parse_stat(STAT.format(tot=900, i0=400, i1=500), BUSY_FIELDS) == {0: 10 + 5 + 7 + 1, 1: 20 + 2}
    with pytest.raises(ValueError, match="/proc/stat: unreadable line 'cpu0 x"):
        parse_stat("cpu0 x y\n")
    with pytest.raises(ValueError, match="line 'cpu0 1 2 3' has no idle and iowait"):
        parse_stat("cpu0 1 2 3\n")
    with pytest.raises(ValueError, match="no cpuN line"):
        parse_stat("intr 1\n")
    assert set(parse_stat(open("/proc/stat").read())) == set(range(len(parse_stat(open("/proc/stat").read()))))


def test_others_share_is_the_time_not_idle_less_own_time_over_the_window(tmp_path):
    stat = tmp_path / "stat"
    now, own = [0.0], [0.0]
    load = OthersLoad(str(stat), window_s=0.04, min_gap_s=0.005, own=lambda: own[0], clock=lambda: now[0], hz=100)
    _write(stat, 100, 100)
    assert load.others([0]) is None                    # one sample: nothing spans the window yet
    now[0] = 0.02
    _write(stat, 101, 102)
    assert load.others([0]) is None                    # 20 ms: still under the window
    now[0], own[0] = 0.04, 0.004
    _write(stat, 101, 104)                             # cpu0 idle 1 tick of 4, cpu1 all 4; 4 ms ours
    assert load.others([0]) == pytest.approx((0.03 - 0.004) / 0.04)
    assert load.others([1]) == 0.0                     # never below 0: our time ran on cpu0
    assert load.others([0, 1, 7]) == pytest.approx(0.65)  # a CPU /proc/stat lacks counts nothing
    assert load.others([7]) is None
    now[0] = 0.041                                     # within min_gap: no new read
    _write(stat, 100, 100)
    assert load.others([0]) == pytest.approx(0.65)
    now[0] = 0.09                                      # the window slides: 0.04 .. 0.09, cpu0 idle throughout
    _write(stat, 106, 109)
    assert load.others([0]) == pytest.approx(0.0)
    stat.unlink()                                      # unreadable: the last samples stand, the error is kept
    now[0] = 0.2
    assert load.others([0]) == pytest.approx(0.0) and "stat" in load.error
    _write(stat, 106, 109)                             # readable again: the error goes
    now[0] = 0.3
    load.others([0])
    assert load.error == ""


def test_the_signal_counts_a_cpu_busy_in_short_slices_by_its_share_not_its_ticks():
    """The reason the signal reads idle time: CPU 0 kept 30% busy in 0.3 ms slices (a daemon's
    runs) reads at or above LOADED_AT in hardly any 30 ms window through the idle fields, where the
    busy fields, counted at the ticks, read so in 8-12% of them on this VM (bench.loadsignal
    --stat-only; on a kernel that ticks when idle the two would be alike, which the last line allows)."""
    from bench.loadsignal import stat_readings
    if not os.path.exists("/proc/stat") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs /proc/stat and two CPUs")
    v = stat_readings(0.3, 200)
    busy, idle = v["busy fields (sampled at the ticks)"], v["elapsed less idle (the signal's)"]
    assert 0.15 < idle.mean() < 0.6 and 0.15 < busy.mean() < 0.6     # both see the share on average
    assert np.mean(idle >= LOADED_AT) < 0.05                          # at most 10 windows of 200
    assert np.mean(idle >= LOADED_AT) <= np.mean(busy >= LOADED_AT) + 0.02


def test_the_signal_is_switched_by_the_environment(monkeypatch):
    monkeypatch.setenv("DNNSCALE_LOAD_SIGNAL", "off")
    assert from_env() is None
    monkeypatch.setenv("DNNSCALE_LOAD_SIGNAL", "on")
    assert isinstance(from_env(), OthersLoad)
    monkeypatch.setenv("DNNSCALE_LOAD_SIGNAL", "yes")
    with pytest.raises(ValueError, match="DNNSCALE_LOAD_SIGNAL='yes': expected one of on, off"):
        from_env()


def _busy_on(cpu: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(p.pid, {cpu})
    return p


def _settled(load: OthersLoad, cpus, s: float = 0.3):
    """The signal's values over ``s`` seconds, read every 5 ms."""
    out = []
    end = time.monotonic() + s
    while time.monotonic() < end:
        v = load.others(cpus)
        if v is not None:
            out.append(v)
        time.sleep(0.005)
    return out


def test_a_busy_process_on_a_cpu_of_this_machine_shows_and_its_end_too():
    """This machine's /proc/stat: a busy process held on one CPU counts most of that CPU
    from a window after it starts, and under half of it a window after it ends."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    load = OthersLoad()
    p = _busy_on(cpu)
    try:
        time.sleep(0.1)
        busy = _settled(load, [cpu])
    finally:
        p.kill()
        p.wait()
    time.sleep(load.window_s * 2)
    after = _settled(load, [cpu])
    assert np.median(busy) >= 0.7, busy
    assert np.median(after) < 0.5 and np.median(after) < np.median(busy) - 0.4, after


def _run(g, clock, n, ratio, dt=0.004):
    d = g.decide()
    for _ in range(n):
        g.observe(d.config, pred(g, d.config)[0] * ratio)
        clock.t += dt
        d = g.decide()
    return d


def test_what_was_learnt_under_a_load_comes_back_with_it_and_leaves_with_it():
    """A target's corrections, shape and tail are kept apart for its CPUs quiet and loaded:
    after a load the quiet margin and level are there at once (not after the window has
    forgotten the load), and when the load returns its level is there at once too."""
    g, clock = gov()
    g.set_budget(Budget(latency_ms=2.5))
    g.pin(target="big", freq_khz=2000000)
    rnd = np.random.default_rng(0)
    d = g.decide()
    for _ in range(300):                                # quiet: +-5% around the profile
        g.observe(d.config, pred(g, d.config)[0] * rnd.uniform(0.95, 1.05))
        clock.t += 0.004
        d = g.decide()
    m = g.tm[g.targets.index("big")]
    c = Config(2, "big", 2000000)
    quiet_margin, quiet_lat = m.margin, modelled(g, c)
    assert quiet_margin < 1.1
    g.set_load({"big": True}, lag_s=0.03)
    assert g.status()["loaded"] == {"big": True, "little": False}
    # the first time: all that is known (the quiet window, to be replaced by the loaded runs)
    assert len(m.resid) == 300 and m.margin == pytest.approx(quiet_margin, rel=0.05)
    g.observe(d.config, pred(g, d.config)[0] * 3.0)          # a miss: its guard holds across a change
    assert m.guard > 1.5
    g.set_load({"big": False}, lag_s=0.0)
    assert m.guard > 1.5 and len(m.resid) == 300 - 7        # the runs of the last 30 ms went with the load
    g.set_load({"big": True}, lag_s=0.0)
    seen = []
    for i in range(300):                                 # loaded: 1.6x, with spikes of 2.5x
        g.observe(d.config, pred(g, d.config)[0] * (2.5 if i % 20 == 0 else 1.6))
        clock.t += 0.004
        d = g.decide()
        seen.append(modelled(g, d.config) / pred(g, d.config)[0])
    # the level that ran under the load (the mean of the last 50 decisions': the prediction of
    # the level just moved to lags the shape, which its one level's runs cannot pin down)
    assert np.mean(seen[-50:]) > 1.5
    loaded_lat, loaded_margin = modelled(g, c), m.margin
    assert loaded_lat > 1.2 * quiet_lat and loaded_margin > 1.3
    g.set_load({"big": False}, lag_s=0.0)
    # (the quiet window lacks the ratios of the 30 ms that went with the load: its refit moves a little)
    assert m.margin == pytest.approx(quiet_margin, rel=0.01) and modelled(g, c) == pytest.approx(quiet_lat)
    g.set_load({"big": True}, lag_s=0.0)
    assert modelled(g, c) == pytest.approx(loaded_lat) and m.margin == pytest.approx(loaded_margin)
    g.set_load({"big": None}, lag_s=0.0)                 # unknown: as it was
    assert m.loaded


def test_without_the_signal_nothing_changes():
    """Where the signal cannot tell (a GPU target, /proc/stat unreadable: the executor passes
    None) or the platform has none (the simulated boards), the governor learns from latency
    alone, as it did before the signal."""
    a, ca = gov()
    b, cb = gov()
    for g, c in ((a, ca), (b, cb)):
        g.set_budget(Budget(latency_ms=2.5))
    for _ in range(4):
        b.set_load({"big": None, "little": None}, lag_s=0.03)
        for g, c in ((a, ca), (b, cb)):
            _run(g, c, 50, 1.2)
    assert a.status()["margins"] == b.status()["margins"]
    assert a.current == b.current and isinstance(a.space[a.current], Config)


def test_the_real_daemon_tells_when_a_load_comes_onto_its_cpus_and_goes(tmp_path):
    """``dnnscale serve`` on this machine: a busy process held on the CPU of a one-CPU
    target shows in ``status.cpu_load`` and the governor's ``loaded`` within a few requests,
    and is gone from both a few requests after it ends."""
    from models import zoo
    from tests.daemon_harness import Daemon
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile_runs: 1\n")
    d = Daemon(str(tmp_path / "run"), zoo.resolve("fashion-mnist-g4"), config=str(cfg))
    p = None
    try:
        d.wait_ready()
        with d.client() as c:
            s = c.status()
            assert s["cpu_load"]["available"] and s["cpu_load"]["window_ms"] == 30.0 and s["cpu_load"]["error"] == ""
            one = next(n for n, t in s["targets"].items() if t["kind"] == "cpu" and len(t["cpus"]) == 1)
            img = np.zeros((1, 28, 28, 1), np.uint8)

            def serve_until(want: bool, s: float = 3.0) -> Dict:
                end = time.monotonic() + s
                while time.monotonic() < end:
                    c.infer(img)
                    time.sleep(0.005)
                    st = c.status()
                    if st["loaded"][one] is want:
                        return st
                raise AssertionError("target %s never %s: %s" % (one, "loaded" if want else "quiet", st["cpu_load"]))

            p = _busy_on(s["targets"][one]["cpus"][0])
            st = serve_until(True)
            # (read again for status: between the thresholds it stays loaded)
            assert st["cpu_load"]["loaded"][one] is True and st["cpu_load"]["others_cpus"][one] >= QUIET_AT
            p.kill()
            p.wait()
            p = None
            st = serve_until(False)
            assert st["cpu_load"]["loaded"][one] is False
    finally:
        if p is not None:
            p.kill()
            p.wait()
        d.stop()


def test_a_bad_load_signal_setting_stops_the_daemon_with_one_line(tmp_path):
    from models import zoo
    from tests.daemon_harness import Daemon
    d = Daemon(str(tmp_path / "run"), zoo.resolve("fashion-mnist-g4"), env={"DNNSCALE_LOAD_SIGNAL": "maybe"})
    try:
        assert d.proc.wait(60) != 0
        out = d.output()
        assert "DNNSCALE_LOAD_SIGNAL='maybe': expected one of on, off" in out and "Traceback" not in out, out
    finally:
        d.stop()

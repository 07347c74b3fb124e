"""onnxruntime's intra-op workers a CPU apart (models/pools.py): in a set, and in the real daemon."""
from __future__ import annotations

import os

import numpy as np
import pytest

from models import ModelSet, zoo
from models.pools import Pools, thread_ids
from tests.daemon_harness import Daemon

CPUS = sorted(os.sched_getaffinity(0))
two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to spread a pool over")


def _affinity(tid: int) -> set:
    """A thread's CPUs, this process's or another's (thread ids are system-wide)."""
    return set(os.sched_getaffinity(tid))


@two_cpus
def test_each_worker_of_a_sets_pools_gets_a_cpu_of_its_own():
    ms = ModelSet.load(zoo.resolve("fashion-mnist-g4"), threads=2, lanes={"one": 1})
    try:
        cpus = CPUS[:2]
        pools = ms.pools._workers
        assert len(pools[2]) == ms.groups and all(len(p) == 1 for p in pools[2])   # a level session each
        assert 1 not in pools                     # a one-thread session has no pool
        assert ms.pools.spread(2, cpus) == ms.groups
        assert all(_affinity(p[0]) == {cpus[1]} for p in pools[2])
        assert os.sched_getaffinity(0) == {cpus[0]}, "the calling thread runs on the first CPU"
        # the anytime steps, made after the spread, are spread as they are made
        ms._steps(2, False)
        assert len(pools[2]) == 2 * ms.groups
        assert all(_affinity(p[0]) == {cpus[1]} for p in pools[2])
        assert ms.pools.describe() == {"2": {"pools": 2 * ms.groups, "cpus": cpus}}
        # answers are the same wherever the workers run
        x = np.random.RandomState(0).rand(3, *ms.input_shape).astype(np.float32)
        logits, _ = ms.run_anytime(x, None)
        assert np.allclose(logits, ms.run(ms.groups, x), atol=1e-5)
    finally:
        ms.close()
        os.sched_setaffinity(0, CPUS)
    assert ms.pools.describe() == {}


def test_a_pool_is_recorded_only_where_as_many_threads_appeared_as_it_has_workers():
    """A session's workers are the threads that appeared while it was made; where their
    number is not the pool's, another thread started meanwhile, and nothing is recorded."""
    import threading
    pools, stop = Pools(), threading.Event()
    stray = []

    def make():
        t = threading.Thread(target=stop.wait)
        t.start()
        stray.append(t)
        return "session"
    try:
        assert pools.made(3, make) == "session"      # one thread appeared, three-thread pools have two
        assert pools.describe() == {}
        assert pools.made(2, make) == "session"      # one appeared: taken for the worker
        assert pools.describe() == {"2": {"pools": 1, "cpus": []}}
        assert pools.made(1, make) == "session" and pools.describe()["2"]["pools"] == 1
        assert pools.spread(2, []) == 0              # unpinned: nothing moves
    finally:
        stop.set()
        for t in stray:
            t.join()
    try:
        assert pools.spread(2, CPUS) == 0            # its thread is gone: nothing to pin
    finally:
        os.sched_setaffinity(0, CPUS)                # spread pinned this (calling) thread
    assert set(thread_ids()) >= {threading.get_native_id()}


@two_cpus
def test_the_daemon_spreads_the_pools_of_the_target_it_runs(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile_runs: 1\n")
    d = Daemon(str(tmp_path / "run"), zoo.resolve("fashion-mnist-g4"), config=str(cfg), threads=None)
    try:
        d.wait_ready()
        with d.client() as c:
            s = c.status()
            whole = max(s["targets"], key=lambda n: len(s["targets"][n]["cpus"])
                        if s["targets"][n]["kind"] != "split" else -1)
            cpus = s["targets"][whole]["cpus"]
            n = s["targets"][whole]["onnxruntime_threads"]
            c.pin(groups=s["model"]["levels"], target=whole)
            img = np.zeros((1, 28, 28, 1), np.uint8)
            c.infer(img)
            c.infer(img, stop_at=0.95)             # builds the steps: spread as they are made
            w = c.status()["model"]["onnxruntime_workers"][str(n)]
            assert w["cpus"] == sorted(cpus) and w["pools"] >= 2 * s["model"]["levels"]
            # the process's threads: as many pinned to a CPU past the first of the target
            # as the pools have workers there
            aff = {int(t): _affinity(int(t)) for t in os.listdir("/proc/%d/task" % d.proc.pid)}
            assert sum(1 for a in aff.values() if len(a) == 1 and a <= set(cpus[1:])) >= w["pools"] * (n - 1)
            # the inference thread is held on the first CPU (as are the threads of any split
            # lane of that CPU alone; test_each_worker_of_a_sets_pools_gets_a_cpu_of_its_own
            # checks the calling thread itself)
            assert sum(1 for a in aff.values() if a == {min(cpus)}) >= 1
    finally:
        d.stop()



@two_cpus
def test_free_workers_are_recorded_and_left_where_they_are(monkeypatch):
    """DNNSCALE_ORT_WORKERS (what the benchmarks compare): ``free`` pins nothing, ``workers``
    the workers only; anything else is refused."""
    monkeypatch.setenv("DNNSCALE_ORT_WORKERS", "free")
    ms = ModelSet.load(zoo.resolve("fashion-mnist-g4"), threads=2)
    try:
        assert ms.pools.spread(2, CPUS[:2]) == 0
        assert ms.pools.describe() == {"2": {"pools": ms.groups, "cpus": []}}
        assert all(_affinity(p[0]) == set(CPUS) for p in ms.pools._workers[2])
        assert os.sched_getaffinity(0) == set(CPUS)
    finally:
        ms.close()
    monkeypatch.setenv("DNNSCALE_ORT_WORKERS", "workers")
    ms = ModelSet.load(zoo.resolve("fashion-mnist-g4"), threads=2)
    try:
        assert ms.pools.spread(2, CPUS[:2]) == ms.groups
        assert all(_affinity(p[0]) == {CPUS[1]} for p in ms.pools._workers[2])
        assert os.sched_getaffinity(0) == set(CPUS)
    finally:
        ms.close()
    with pytest.raises(ValueError, match="DNNSCALE_ORT_WORKERS must be one of spread, workers, free"):
        Pools("pinned")


@two_cpus
def test_the_executor_spreads_each_set_it_runs_on_the_same_target(random_set, tmp_path):
    """Two sets on one target: the pin happens once, and each set's pools are spread when it
    first runs there (a reload that swaps the set is the same case), not at every request."""
    from governor import Config
    from tests.test_runtime import _service
    svc = _service(random_set, tmp_path, extra={"threads": 2})
    try:
        ex = svc.executor
        cpus = ex.platform.pin("cpu")
        a, b = (ModelSet.load(random_set, threads=2) for _ in range(2))
        try:
            c = Config(a.groups, "cpu", None)
            ex.apply(c, None, a)
            moves = ex.pin_moves
            assert a.pools.describe()["2"]["cpus"] == sorted(cpus) and "2" not in b.pools._cpus
            ex.apply(c, None, b)
            assert ex.pin_moves == moves, "the same target: no pin again"
            assert b.pools.describe()["2"]["cpus"] == sorted(cpus)
            assert all(_affinity(p[0]) == {sorted(cpus)[1]} for p in b.pools._workers[2])
            # back to the first set: spread once per pin, not per request (a worker moved by
            # hand here stays where it is) ...
            tid = a.pools._workers[2][0][0]
            os.sched_setaffinity(tid, CPUS)
            ex.apply(c, None, a)
            assert _affinity(tid) == set(CPUS)
            # ... and again after the next pin, which moves every thread
            ex.apply(Config(1, "cpu:1", None), None, a)
            ex.apply(c, None, a)
            assert ex.pin_moves == moves + 2 and _affinity(tid) == {sorted(cpus)[1]}
        finally:
            a.close()
            b.close()
    finally:
        svc.stop()

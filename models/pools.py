"""Where onnxruntime's intra-op worker threads run.

A CPU session of n intra-op threads runs on the calling thread and a pool of n - 1 worker
threads of its own. Pinning the process to a target's CPUs leaves every worker free to run on
any of them, and the kernel often wakes a worker that has slept a while on the CPU the caller
is busy on, where it waits until the run is over: a set has a pool per session (level, lane
size, anytime step), so an anytime run of four steps wakes four pools one after another. Each
worker of a pool gets a CPU of its own, the caller's first CPU left to the caller
(docs/model-set.md, "Anytime answers", has the measurements; ``python -m bench.anytime --wake``).
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Dict, List, Optional, Set


def thread_ids() -> Set[int]:
    """The ids of this process's threads (empty where /proc cannot be read)."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


class Pools:
    """The worker threads of the CPU sessions a set makes, by intra-op thread count, and
    the CPUs each count's pools were last spread over. ``pin`` False (default: where
    ``DNNSCALE_ORT_WORKERS=free``, for the benchmarks that compare): the workers are
    recorded but never pinned."""

    def __init__(self, pin: Optional[bool] = None) -> None:
        self.pin = os.environ.get("DNNSCALE_ORT_WORKERS") != "free" if pin is None else pin
        self._workers: Dict[int, List[List[int]]] = {}     # threads → each pool's worker ids
        self._cpus: Dict[int, List[int]] = {}              # threads → the CPUs spread over
        self._lock = threading.Lock()

    def made(self, threads: int, make: Callable):
        """``make()`` (which creates a session of ``threads`` intra-op threads), its pool's
        workers recorded and, where this count's pools are spread, spread at once. A pool
        is recorded only where exactly ``threads - 1`` threads appeared meanwhile: another
        thread started at the same moment cannot be told from a worker, and is not pinned."""
        if threads < 2:
            return make()
        before = thread_ids()
        session = make()
        new = sorted(thread_ids() - before)
        if len(new) == threads - 1:
            with self._lock:
                self._workers.setdefault(threads, []).append(new)
                cpus = self._cpus.get(threads)
            if cpus:
                _spread(new, cpus)
        return session

    def spread(self, threads: int, cpus: List[int]) -> int:
        """Pin worker j (1..threads-1) of every pool of ``threads`` intra-op threads to
        ``cpus[j % len(cpus)]``, the pools made later likewise; the number of workers pinned.
        The calling thread stays free on all of ``cpus`` (the scheduler keeps it off the
        workers' CPUs when it can, and moves it under contention). ``cpus`` empty: nothing
        (the process runs unpinned)."""
        cpus = sorted(cpus) if self.pin else []
        with self._lock:
            self._cpus[threads] = cpus
            pools = list(self._workers.get(threads, ()))
        return sum(_spread(p, cpus) for p in pools) if cpus else 0

    def describe(self) -> Dict[str, Dict]:
        """Per intra-op thread count: the pools recorded, and the CPUs their workers were
        last spread over ([]: free on the process's CPUs)."""
        with self._lock:
            return {str(n): {"pools": len(p), "cpus": list(self._cpus.get(n, []))}
                    for n, p in sorted(self._workers.items())}

    def clear(self) -> None:
        with self._lock:
            self._workers.clear()
            self._cpus.clear()


def _spread(workers: List[int], cpus: List[int]) -> int:
    done = 0
    for j, tid in enumerate(workers, start=1):
        try:
            os.sched_setaffinity(tid, [cpus[j % len(cpus)]])
            done += 1
        except OSError:          # gone (its session was dropped) or a CPU the kernel refuses
            pass
    return done

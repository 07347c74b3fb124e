"""Where onnxruntime's threads run: the calling thread on the target's first CPU, and each
worker of a session's pool on a CPU of its own.

A CPU session of n intra-op threads runs on the calling thread and a pool of n - 1 worker
threads of its own. Pinning the process to a target's CPUs leaves all of them free to run on
any of those CPUs. On the VM measured here, with a few ms idle between requests, a quarter of
the daemon's two-thread runs then took 3-5 ms instead of 0.3 while the calling thread's own
CPU time stayed 0.3 ms: it waited off its CPU, as it does where a worker that spins inside a
run (onnxruntime's workers do) shares that CPU until the next scheduler tick. onnxruntime
itself pins its workers one per core where it sizes a pool (and not where it is told a thread
count, as the lanes are). docs/model-set.md, "Thread pools", has the measurements
(``python -m bench.placement``, ``python -m bench.anytime --wake``).
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


MODES = ("spread", "workers", "free")


class Pools:
    """The worker threads of the CPU sessions a set makes, by intra-op thread count, and
    the CPUs each count's pools were last spread over. ``mode`` (default:
    ``DNNSCALE_ORT_WORKERS``, else ``spread``): ``spread`` pins the workers and the calling
    thread, ``workers`` the workers only and ``free`` nothing (the last two for the
    benchmarks that compare)."""

    def __init__(self, mode: Optional[str] = None) -> None:
        mode = mode or os.environ.get("DNNSCALE_ORT_WORKERS") or "spread"
        if mode not in MODES:
            raise ValueError("DNNSCALE_ORT_WORKERS must be one of %s, got %r" % (", ".join(MODES), mode))
        self.mode = mode
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
        """Pin the calling thread (the one that runs the sessions) to ``cpus[0]`` and worker
        j (1..threads-1) of every pool of ``threads`` intra-op threads to ``cpus[j %
        len(cpus)]``, the pools made later likewise; the number of workers pinned. Nothing
        where ``cpus`` is empty (the process runs unpinned) or the pools have no workers."""
        cpus = sorted(cpus) if self.mode != "free" else []
        with self._lock:
            self._cpus[threads] = cpus
            pools = list(self._workers.get(threads, ()))
        if threads > 1 and len(cpus) > 1 and self.mode == "spread":
            try:
                os.sched_setaffinity(0, [cpus[0]])
            except OSError:
                pass
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

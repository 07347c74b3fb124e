"""Running a group set's columns on lanes of their own (docs/model-set.md, "Columns").

A *lane* is one processor a split runs some of an inference's columns on: a set of CPUs
(with an onnxruntime pool sized to them) or the GPU. Each lane has one worker thread,
pinned to the lane's CPUs before it creates the lane's sessions, so the sessions' pool
threads start there too; the threads it saw appear are remembered, so that :meth:`repin`
can put all of them back after the process was pinned as a whole (a move to another target
pins every thread). A run's first lane runs in the calling thread (one hand-off less), which
:meth:`repin` pins with it.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, List, Set

import numpy as np


def _tids() -> Set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


class ColumnLane:
    """One lane: ``cpus`` (this machine's; empty: not pinned), ``threads`` per session, and
    ``make(file, threads)`` that creates a session on the lane's device."""

    def __init__(self, name: str, cpus: List[int], threads: int, make: Callable):
        self.name, self.cpus, self.threads = name, list(cpus), threads
        self._make = make
        self._sessions: Dict[str, object] = {}
        self._tids: Set[int] = set()            # the worker and the pool threads it created
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lane-" + name)
        self._pool.submit(self._start).result()

    def _start(self) -> None:
        self._worker = threading.get_native_id()
        self._tids.add(self._worker)
        self._pin_self()

    def _pin_self(self) -> None:
        if self.cpus:
            try:
                os.sched_setaffinity(0, self.cpus)
            except OSError:
                pass

    def session(self, file: str):
        """The lane's session of a column graph, created in the lane's worker (so its pool's
        threads start on the lane's CPUs) on first use."""
        with self._lock:
            s = self._sessions.get(file)
        if s is None:
            s = self._create(file) if threading.get_native_id() == self._worker \
                else self._pool.submit(self._create, file).result()
        return s

    def _create(self, file: str):
        with self._lock:
            if file in self._sessions:
                return self._sessions[file]
            before = _tids()
            s = self._make(file, self.threads)
            self._tids |= _tids() - before
            self._sessions[file] = s
            return s

    def submit(self, file: str, x: np.ndarray) -> Future:
        return self._pool.submit(self.run, file, x)

    def run(self, file: str, x: np.ndarray) -> np.ndarray:
        return self.session(file).run(None, {"input": x})[0]

    def repin(self, caller: bool = False) -> None:
        """Pin the lane's threads to its CPUs again (and the calling thread with them, where
        ``caller``: the run's first lane runs there)."""
        if not self.cpus:
            return
        tids = set(self._tids) | ({threading.get_native_id()} if caller else set())
        for tid in tids:
            try:
                os.sched_setaffinity(tid, self.cpus)
            except OSError:          # a thread that has exited
                self._tids.discard(tid)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            self._sessions.clear()


def run_lanes(lanes: List[ColumnLane], files: List[str], x: np.ndarray) -> List[np.ndarray]:
    """Each lane runs its file at once: the first in the calling thread, the others in their
    workers (onnxruntime releases the GIL in a run); their features in lane order."""
    later = [lane.submit(f, x) for lane, f in zip(lanes[1:], files[1:])]
    first = lanes[0].run(files[0], x)
    return [first] + [f.result() for f in later]


def features_of(outs: List[np.ndarray]) -> np.ndarray:
    return np.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]

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
from typing import Callable, Dict, List, Optional, Set

import numpy as np

from .pools import thread_ids


class _Worker(threading.Thread):
    """One thread that runs one job at a time, handed over through two C-level locks (a
    ThreadPoolExecutor's queue and Future cost more on every run). ``call`` may come from
    several threads; they take turns."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self._go, self._done, self._turn = threading.Lock(), threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._job: Optional[Callable] = None
        self._out = self._err = None
        self.start()

    def run(self) -> None:
        while True:
            self._go.acquire()
            job = self._job
            if job is None:
                self._done.release()
                return
            try:
                self._out, self._err = job(), None
            except BaseException as e:      # handed to the caller
                self._out, self._err = None, e
            self._done.release()

    def begin(self, job: Callable) -> None:
        self._turn.acquire()
        self._job = job
        self._go.release()

    def end(self):
        self._done.acquire()
        out, err, self._out, self._err = self._out, self._err, None, None
        self._turn.release()
        if err is not None:
            raise err
        return out

    def call(self, job: Callable):
        self.begin(job)
        return self.end()

    def stop(self) -> None:
        if self.is_alive():
            self.call(None)


class ColumnLane:
    """One lane: ``cpus`` (this machine's; empty: not pinned), ``threads`` per session, and
    ``make(file, threads)`` that creates a session on the lane's device."""

    def __init__(self, name: str, cpus: List[int], threads: int, make: Callable):
        self.name, self.cpus, self.threads = name, list(cpus), threads
        self._make = make
        self._sessions: Dict[str, object] = {}
        self._tids: Set[int] = set()            # the worker and the pool threads it created
        self._lock = threading.Lock()
        self._worker = _Worker("lane-" + name)
        self._worker_tid = self._worker.call(self._start)

    def _start(self) -> int:
        tid = threading.get_native_id()
        self._tids.add(tid)
        if self.cpus:
            try:
                os.sched_setaffinity(0, self.cpus)
            except OSError:
                pass
        return tid

    def session(self, file: str):
        """The lane's session of a column graph, created in the lane's worker (so its pool's
        threads start on the lane's CPUs) on first use."""
        with self._lock:
            s = self._sessions.get(file)
        if s is None:
            s = self._create(file) if threading.get_native_id() == self._worker_tid \
                else self._worker.call(lambda: self._create(file))
        return s

    def _create(self, file: str):
        with self._lock:
            if file in self._sessions:
                return self._sessions[file]
            before = thread_ids()
            s = self._make(file, self.threads)
            self._tids |= thread_ids() - before
            self._sessions[file] = s
            return s

    def begin(self, file: str, x: np.ndarray) -> None:
        """Start ``file`` on ``x`` in the lane's worker; :meth:`end` waits for its features."""
        self._worker.begin(lambda: self.run(file, x))

    def end(self) -> np.ndarray:
        return self._worker.end()

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
        self._worker.stop()
        with self._lock:
            self._sessions.clear()


def run_lanes(lanes: List[ColumnLane], files: List[str], x: np.ndarray) -> List[np.ndarray]:
    """Each lane runs its file at once: the first in the calling thread, the others in their
    workers (onnxruntime releases the GIL in a run); their features in lane order."""
    for lane, f in zip(lanes[1:], files[1:]):
        lane.begin(f, x)
    try:
        first = lanes[0].run(files[0], x)
    finally:
        rest = [lane.end() for lane in lanes[1:]]      # every lane's turn ends, whatever failed
    return [first] + rest


def features_of(outs: List[np.ndarray]) -> np.ndarray:
    return np.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]

"""How much of some CPUs other processes used lately: what tells the governor that a load
has come onto a target's CPUs or has gone from them, before a run there shows it (and for
the targets it is not running on, whose runs cannot show it).

From ``/proc/stat``: each CPU's busy time (user, nice, system, irq, softirq, steal), which
the kernel counts in ticks of ``USER_HZ`` (10 ms where it is 100), less this process's own
CPU time (``time.process_time``, all its threads, wherever they ran: the share of others is
under- rather than over-counted). Over the last ``window_s`` (at least three ticks, so that
one tick more or less does not cross the executor's thresholds): on this machine a busy
process held on a CPU counts at least 0.7 of it (tests/test_cpuload.py, which also has the
arithmetic); through ``bench.deadlines``' bursts (one busy process per CPU) the two-CPU
target read 1.4-2.5 CPUs, and 0-0.4 between them, a client's own work included (a probe
reading ``status``; docs/platforms.md, "Other processes' load").
"""
from __future__ import annotations

import collections
import os
import time
from typing import Callable, Deque, Dict, Optional, Sequence, Tuple

BUSY_FIELDS = (0, 1, 2, 5, 6, 7)     # user nice system [idle iowait] irq softirq steal
LOADED_AT, QUIET_AT = 0.5, 0.25     # CPUs' worth that others use on a target: loaded at or above, quiet below


def loaded(others: Optional[float], was: Optional[bool]) -> Optional[bool]:
    """A target's state from the CPUs' worth ``others`` use there: loaded at or above
    ``LOADED_AT``, quiet below ``QUIET_AT``, else as it was (so one tick more or less does not
    flip it); as it was where ``others`` is unknown (None)."""
    if others is None:
        return was
    return others >= LOADED_AT or (bool(was) and others >= QUIET_AT)


def parse_stat(text: str) -> Dict[int, int]:
    """Busy ticks per CPU from the text of ``/proc/stat`` (its ``cpuN`` lines)."""
    busy = {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *vals = line.split()
        try:
            cpu, ticks = int(name[3:]), [int(v) for v in vals]
        except ValueError:
            raise ValueError("/proc/stat: unreadable line %r" % line[:80]) from None
        busy[cpu] = sum(ticks[i] for i in BUSY_FIELDS if i < len(ticks))
    if not busy:
        raise ValueError("/proc/stat: no cpuN line")
    return busy


class OthersLoad:
    """Samples ``path`` at most every ``min_gap_s`` and
    answers, for a set of CPUs, the CPUs' worth of time that other processes used on them
    over about the last ``window_s``. ``own``: this process's CPU seconds; ``clock``:
    monotonic seconds; ``hz``: the ticks per second of ``/proc/stat``."""

    def __init__(self, path: str = "/proc/stat", window_s: float = 0.03, min_gap_s: float = 0.005,
                 own: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic,
                 hz: Optional[int] = None):
        self.path = path
        self.window_s = window_s
        self.min_gap_s = min_gap_s
        self.own = own
        self.clock = clock
        self.hz = hz or os.sysconf("SC_CLK_TCK")
        self.samples: Deque[Tuple[float, float, Dict[int, int]]] = collections.deque()
        self.error = ""

    def _read(self) -> Optional[Dict[int, int]]:
        try:
            with open(self.path, "rb") as f:
                busy = parse_stat(f.read().decode("ascii", "replace"))
        except (OSError, ValueError) as e:
            self.error = str(e)         # the samples so far stand; the status says why
            return None
        self.error = ""
        return busy

    def sample(self) -> None:
        now = self.clock()
        if self.samples and now - self.samples[-1][0] < self.min_gap_s:
            return
        busy = self._read()
        if busy is None:
            return
        self.samples.append((now, self.own(), busy))
        # keep the newest sample at least window_s old, and what came after it
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def others(self, cpus: Sequence[int]) -> Optional[float]:
        """CPUs' worth of time others used on ``cpus`` over the window (None until the
        samples span ``window_s``, or where ``/proc/stat`` cannot be read)."""
        self.sample()
        if len(self.samples) < 2:
            return None
        (t0, own0, b0), (t1, own1, b1) = self.samples[0], self.samples[-1]
        if t1 - t0 < self.window_s:
            return None
        cpus = [c for c in cpus if c in b0 and c in b1]
        if not cpus:
            return None
        ticks = sum(b1[c] - b0[c] for c in cpus)
        return max(0.0, (ticks / self.hz - (own1 - own0)) / (t1 - t0))


MODES = ("on", "off")


def from_env() -> Optional[OthersLoad]:
    """The load signal, unless ``DNNSCALE_LOAD_SIGNAL=off`` (for benchmarks that compare the
    governor with and without it); any other value is an error naming the variable."""
    mode = os.environ.get("DNNSCALE_LOAD_SIGNAL", "on")
    if mode not in MODES:
        raise ValueError("DNNSCALE_LOAD_SIGNAL=%r: expected one of %s" % (mode, ", ".join(MODES)))
    return OthersLoad() if mode == "on" else None

"""How much of some CPUs other processes used lately: what tells the governor that a load
has come onto a target's CPUs or has gone from them, before a run there shows it (and for
the targets it is not running on, whose runs cannot show it).

From ``/proc/stat``: each CPU's idle time (idle and iowait, in ticks of ``USER_HZ``: 10 ms
where it is 100); its busy time is the time elapsed less that, and others' is that less
this process's own CPU time (``time.process_time``, all its threads, wherever they ran: the
share of others is under- rather than over-counted). Over the last ``window_s`` (at least
three ticks, so that one tick more or less does not cross the executor's thresholds).

Idle, not the busy fields: on a tickless kernel (``NO_HZ_IDLE``: this VM's, and Linux's
arm64 defconfig; the boards' vendor kernels unproven) the kernel counts idle time exactly and
only prints it in ticks, where the busy fields count the ticks at which the CPU was busy, a
sample, so the daemon's own runs that held a tick read as others' time. A process busy 30% of
one CPU in 0.3 ms slices read 0.5 CPUs or more in 11.7% and 8.0% of 30 ms windows through the
busy fields and in 0.3% through the idle time, two runs (``python -m bench.loadsignal
--stat-only``; docs/platforms.md, "Other processes' load"). Where the kernel ticks when idle,
idle is sampled too and the two are alike. Idle and iowait together: the kernel counts a
sleeping CPU's time in one or the other as I/O waits begin and end. On this machine a busy
process held on a CPU counts at least 0.7 of it (tests/test_cpuload.py, which also has the
arithmetic).
"""
from __future__ import annotations

import collections
import os
import time
from typing import Callable, Deque, Dict, Optional, Sequence, Tuple

IDLE_FIELDS = (3, 4)                 # user nice system [idle iowait] irq softirq steal
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)     # the busy ones, counted at the ticks (bench.loadsignal compares them)
LOADED_AT, QUIET_AT = 0.5, 0.25     # CPUs' worth that others use on a target: loaded at or above, quiet below


def loaded(others: Optional[float], was: Optional[bool]) -> Optional[bool]:
    """A target's state from the CPUs' worth ``others`` use there: loaded at or above
    ``LOADED_AT``, quiet below ``QUIET_AT``, else as it was (so one tick more or less does not
    flip it); as it was where ``others`` is unknown (None)."""
    if others is None:
        return was
    return others >= LOADED_AT or (bool(was) and others >= QUIET_AT)


def parse_stat(text: str, fields: Sequence[int] = IDLE_FIELDS) -> Dict[int, int]:
    """Ticks per CPU in ``fields`` (default: idle and iowait) from the text of ``/proc/stat``
    (its ``cpuN`` lines)."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *vals = line.split()
        try:
            cpu, ticks = int(name[3:]), [int(v) for v in vals]
        except ValueError:
            raise ValueError("/proc/stat: unreadable line %r" % line[:80]) from None
        if len(ticks) <= max(IDLE_FIELDS):
            raise ValueError("/proc/stat: line %r has no idle and iowait fields" % line[:80])
        out[cpu] = sum(ticks[i] for i in fields if i < len(ticks))
    if not out:
        raise ValueError("/proc/stat: no cpuN line")
    return out


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
                idle = parse_stat(f.read().decode("ascii", "replace"))
        except (OSError, ValueError) as e:
            self.error = str(e)         # the samples so far stand; the status says why
            return None
        self.error = ""
        return idle

    def sample(self) -> None:
        now = self.clock()
        if self.samples and now - self.samples[-1][0] < self.min_gap_s:
            return
        idle = self._read()
        if idle is None:
            return
        self.samples.append((now, self.own(), idle))
        # keep the newest sample at least window_s old, and what came after it
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def others(self, cpus: Sequence[int]) -> Optional[float]:
        """CPUs' worth of time others used on ``cpus`` over the window (None until the
        samples span ``window_s``, or where ``/proc/stat`` cannot be read)."""
        self.sample()
        if len(self.samples) < 2:
            return None
        (t0, own0, i0), (t1, own1, i1) = self.samples[0], self.samples[-1]
        if t1 - t0 < self.window_s:
            return None
        cpus = [c for c in cpus if c in i0 and c in i1]
        if not cpus:
            return None
        busy = len(cpus) * (t1 - t0) - sum(i1[c] - i0[c] for c in cpus) / self.hz
        return max(0.0, (busy - (own1 - own0)) / (t1 - t0))


MODES = ("on", "off")


def from_env() -> Optional[OthersLoad]:
    """The load signal, unless ``DNNSCALE_LOAD_SIGNAL=off`` (for benchmarks that compare the
    governor with and without it); any other value is an error naming the variable."""
    mode = os.environ.get("DNNSCALE_LOAD_SIGNAL", "on")
    if mode not in MODES:
        raise ValueError("DNNSCALE_LOAD_SIGNAL=%r: expected one of %s" % (mode, ", ".join(MODES)))
    return OthersLoad() if mode == "on" else None

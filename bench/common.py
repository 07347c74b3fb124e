"""Helpers shared by the benchmarks: fresh-process runs, tables, the machine description."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def in_fresh_process(code: str, timeout: float = 600, env: Optional[Dict[str, str]] = None) -> Dict:
    """Run ``code`` in a new interpreter (``env``: extra environment variables); it must
    print one JSON object as its last line."""
    env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("benchmark subprocess failed:\n" + r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine() -> str:
    """The CPU (with its widest vector unit: onnxruntime's kernels differ by it, and this VM
    has been given hosts of different speed), the CPU count, Python and onnxruntime."""
    cpu, flags = "?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu == "?":
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vec = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON")) if flag in flags),
               None)
    import onnxruntime
    return "%s%s, %d CPUs, Python %s, onnxruntime %s (measured on this machine)" % (
        cpu, " (%s)" % vec if vec else "", os.cpu_count(), platform.python_version(), onnxruntime.__version__)


def spread(xs: Sequence[float], fmt: str = "%.3g") -> str:
    """The median of ``xs`` and their range: ``median (min-max)``."""
    xs = [float(x) for x in xs]
    return (fmt + " (" + fmt + "-" + fmt + ")") % (statistics.median(xs), min(xs), max(xs))


def table(headers: Sequence[str], rows: List[Sequence]) -> str:
    """A Markdown table (also readable as plain text)."""
    def fmt(v):
        if isinstance(v, float):
            return "%.3g" % v if abs(v) < 1000 else "%.0f" % v
        return str(v)
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    return "\n".join([line(headers), "| " + " | ".join("-" * w for w in widths) + " |"] + [line(c) for c in cells])


class Awake:
    """One SCHED_IDLE busy loop per CPU while the block runs: the CPUs never go idle, and the
    scheduler runs the loops only when nothing else wants a CPU. On this VM a halted vCPU
    costs a host wake-up on every hand-off between processes (a pyzmq echo measured 4-5x
    slower with the machine otherwise idle than beside these loops: docs/benchmarks.md), so
    round-trip figures are taken both ways; ``Awake(0)`` does nothing."""

    def __init__(self, n: Optional[int] = None):
        self.n = os.cpu_count() if n is None else n
        self.procs: List[subprocess.Popen] = []

    def __enter__(self) -> "Awake":
        code = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def whole_cpu(status: Dict) -> str:
    """The CPU target (not a split) with the most CPUs, from a daemon's ``status``."""
    targets = status["targets"]
    return max((n for n, t in targets.items() if t["kind"] == "cpu"), key=lambda n: len(targets[n]["cpus"]))


def round_trip_args(p) -> None:
    """The options of the benchmarks that time round trips in interleaved rounds."""
    p.add_argument("--model", default=None)
    p.add_argument("--requests", type=int, default=1000, help="requests per row and thread count (default 1000)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds they are split into (default 10)")
    p.add_argument("--threads", type=int, action="append", help="onnxruntime threads (repeat; default 1 and all)")
    p.add_argument("--awake", action="store_true",
                   help="keep every CPU busy with an idle-class loop (this VM's halted vCPUs wake slowly)")


def priority(nice: Optional[int], fifo: int = 0):
    """What :func:`running_daemon` runs in the daemon's process before it starts: niceness
    ``nice`` and, where ``fifo`` > 0, the real-time policy SCHED_FIFO at that priority (every
    thread the daemon starts inherits both); None where neither is asked."""
    if nice is None and not fifo:
        return None

    def apply() -> None:
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if fifo:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(fifo))
    return apply


def fifo_refused(prio: int) -> Optional[str]:
    """Why a process started from here could not take SCHED_FIFO at ``prio`` (root without
    CAP_SYS_NICE, as in most containers, or a user without RLIMIT_RTPRIO), tried in a child;
    None where it can."""
    code = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(%d))" % prio
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]


@contextlib.contextmanager
def running_daemon(model, profile_runs: int = 2, nice: Optional[int] = None, env: Optional[Dict[str, str]] = None,
                   fifo: int = 0):
    """A real ``dnnscale serve`` of ``model`` (a folder or a shipped set's name, or a list of
    them: several sets in one daemon) as deployed: each target's own thread count, a quick
    start-up profile; ``nice``: the daemon's niceness (the systemd unit's ``Nice=``; lowering
    it needs root); ``fifo``: run it under SCHED_FIFO at this priority (needs root; not as
    deployed, docs/governor.md "Scheduling priority"); ``env``: added to its environment.
    Yields the running tests.daemon_harness.Daemon."""
    import tempfile
    from models import zoo
    from tests.daemon_harness import Daemon
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "c.yaml")
        with open(cfg, "w") as f:
            f.write("profile_runs: %d\n" % profile_runs)
        models = [zoo.resolve(m) for m in ([model] if isinstance(model, str) else model)]
        d = Daemon(os.path.join(tmp, "run"), models, config=cfg, threads=None, env=env,
                   preexec=priority(nice, fifo))
        try:
            d.wait_ready()
            yield d
        finally:
            d.stop()


@contextlib.contextmanager
def serving(model, profile_runs: int = 2, nice: Optional[int] = None, fifo: int = 0):
    """A client of :func:`running_daemon`."""
    with running_daemon(model, profile_runs, nice, fifo=fifo) as d, d.client(timeout_s=30) as c:
        yield c

"""What the load signal (platforms/cpuload.py) tells the governor, against what runs: through
the real daemon serving the shipped cifar10-g4 under a budget, one batch-1 request every
``--gap-ms``, with ``bench.deadlines``' pattern (busy processes, one per CPU, in bursts of
``--burst`` requests on and off in the middle third). After every request, ``status``
``cpu_load``; per CPU target:

* in the quiet thirds (nothing else runs but the client): the share of reads that counted
  the target loaded, and the CPUs' worth of others' time read (p50, p90, max);
* per burst: the requests until the signal first said loaded; per gap after a burst: the
  requests until it first said quiet again.

The client's own work on the same CPUs counts as others' time (it does compete), and so does
the ``status`` read after every request.

``--stat-only``: how the two ways of reading ``/proc/stat`` see one CPU that a process keeps
busy a known share of the time in short slices (0.3 ms busy of every 1 ms for 30%: a
daemon's runs): per 30 ms window, the CPUs' worth by the busy fields (counted at the ticks)
and by the time elapsed less the idle fields (what the signal reads: exact on a tickless
kernel, printed in ticks); their mean, spread, and the share of windows at or above the
signal's ``LOADED_AT``, where a quiet reading would tell a load that is not there.

    python -m bench.loadsignal [--model NAME] [--runs 1] [--requests 600] [--burst 25] [--gap-ms 3]
    python -m bench.loadsignal --stat-only [--windows 300]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from typing import Dict, List, Sequence

import numpy as np

from .common import machine, serving, table
from .deadlines import Bursts, busy_at, middle_third, pattern_args


def summarise(reads: Sequence[Dict], n: int, burst: int) -> Dict[str, Dict]:
    """Per target, from one read per request (``{"loaded": {target: bool}, "others_cpus":
    {target: float or None}}``) under the pattern of :func:`bench.deadlines.busy_at`."""
    out = {}
    quiet = [i for i in range(n) if not middle_third(i, n)]
    for t in reads[0]["loaded"]:
        flags = [bool(r["loaded"].get(t)) for r in reads]
        others = [v for v in (reads[i]["others_cpus"].get(t) for i in quiet) if v is not None]
        on, off = [], []
        for s in range(n // 3, 2 * n // 3, 2 * burst):
            during, after = flags[s:s + burst], flags[s + burst:min(s + 2 * burst, 2 * n // 3)]
            on.append(during.index(True) if True in during else None)
            if after:
                off.append(after.index(False) if False in after else None)
        out[t] = {"quiet_loaded": float(np.mean([flags[i] for i in quiet])),
                  "others_quiet": (float(np.percentile(others, 50)), float(np.percentile(others, 90)),
                                   float(max(others))) if others else None,
                  "to_loaded": on, "to_quiet": off}
    return out


def one_run(model: str, n: int, burst: int, gap_s: float) -> List[Dict]:
    bursts = Bursts()
    reads = []
    try:
        with serving(model, profile_runs=5) as c:
            x = np.zeros((1, 32, 32, 3), np.uint8)
            c.set_budget(latency_ms=1.0)
            for _ in range(50):
                c.infer(x)
            for i in range(n):
                bursts.on() if busy_at(i, n, burst) else bursts.off()
                c.infer(x)
                time.sleep(gap_s)
                load = c.status()["cpu_load"]
                if not load.get("available"):
                    raise SystemExit("the daemon has no load signal: %s" % load.get("reason"))
                reads.append({"loaded": load["loaded"], "others_cpus": load["others_cpus"]})
            bursts.off()
    finally:
        bursts.close()
    return reads


def report(runs: List[Dict[str, Dict]], burst: int) -> str:
    def steps(v):
        return ", ".join("-" if s is None else str(s) for s in v)
    rows = []
    for i, per in enumerate(runs):
        for t, s in per.items():
            o = s["others_quiet"]
            rows.append([i + 1, t, "%.1f" % (100 * s["quiet_loaded"]),
                         "-" if o is None else "%.2f / %.2f / %.2f" % o, steps(s["to_loaded"]), steps(s["to_quiet"])])
    return ("Load signal (%s): one `status` read after every request\n\n" % machine()
            + table(["run", "target", "quiet thirds: reads loaded %", "quiet thirds: others' CPUs p50 / p90 / max",
                     "requests into each burst until loaded", "requests into each gap until quiet (of %d)" % burst],
                    rows) + "\n")


# ------------------------------------------------------------------ --stat-only
def _busy_share(share: float, stop) -> None:
    """Keep CPU 0 busy ``share`` of the time in slices of ``share`` ms of every 1 ms."""
    os.sched_setaffinity(0, {0})
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < share * 1e-3:
            pass
        time.sleep((1 - share) * 1e-3)


def stat_readings(share: float, windows: int, window_s: float = 0.03) -> Dict[str, np.ndarray]:
    """CPU 0's busy CPUs' worth per window, read both ways, while a process keeps it busy
    ``share`` of the time (0: nothing of ours runs there)."""
    from platforms.cpuload import BUSY_FIELDS, IDLE_FIELDS, parse_stat
    hz = os.sysconf("SC_CLK_TCK")

    def read():
        text = open("/proc/stat").read()
        return time.monotonic(), parse_stat(text, BUSY_FIELDS)[0], parse_stat(text, IDLE_FIELDS)[0]
    mine = os.sched_getaffinity(0)
    stop = mp.Event()
    proc = mp.Process(target=_busy_share, args=(share, stop)) if share > 0 else None
    busy, idle = [], []
    try:
        if (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, set(range(1, os.cpu_count())))     # the reader off CPU 0
        if proc:
            proc.start()
            time.sleep(0.3)
        t0, b0, i0 = read()
        for _ in range(windows):
            time.sleep(window_s)
            t1, b1, i1 = read()
            busy.append((b1 - b0) / hz / (t1 - t0))
            idle.append(1 - (i1 - i0) / hz / (t1 - t0))
            t0, b0, i0 = t1, b1, i1
    finally:
        stop.set()
        if proc and proc.is_alive():
            proc.join()
        os.sched_setaffinity(0, mine)       # the caller's CPUs back (a test process runs on)
    return {"busy fields (sampled at the ticks)": np.array(busy), "elapsed less idle (the signal's)": np.array(idle)}


def report_stat(windows: int, shares: Sequence[float] = (0.0, 0.3, 1.0)) -> str:
    from platforms.cpuload import LOADED_AT
    rows = []
    for share in shares:
        for way, v in stat_readings(share, windows).items():
            rows.append(["%.0f%%" % (100 * share), way, "%.2f" % v.mean(), "%.2f" % v.std(),
                         "%.2f" % np.percentile(v, 90), "%.1f" % (100 * np.mean(v >= LOADED_AT))])
    return ("/proc/stat read two ways (%s): CPU 0 kept busy a share of the time in slices of under 1 ms, "
            "%d windows of 30 ms; the other processes on CPU 0 count too\n\n" % (machine(), windows)
            + table(["CPU 0 kept busy", "read by", "CPUs' worth: mean", "spread (sd)", "p90",
                     "windows >= %.1f (loaded) %%" % LOADED_AT], rows) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadsignal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    pattern_args(p)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--stat-only", action="store_true",
                   help="only compare the two ways of reading /proc/stat (no daemon)")
    p.add_argument("--windows", type=int, default=300, help="--stat-only: 30 ms windows per share (default 300)")
    a = p.parse_args(argv)
    if a.stat_only:
        if a.windows < 10:
            p.error("--windows must be at least 10, got %d" % a.windows)
        print(report_stat(a.windows))
        return 0
    if a.requests < 6 * a.burst:
        p.error("--requests must hold the middle third's bursts: at least 6 x --burst (%d)" % (6 * a.burst))
    runs = []
    for i in range(a.runs):
        runs.append(summarise(one_run(a.model, a.requests, a.burst, a.gap_ms / 1e3), a.requests, a.burst))
        print("run %d of %d done" % (i + 1, a.runs), file=sys.stderr)
    print(report(runs, a.burst))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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

    python -m bench.loadsignal [--model NAME] [--runs 1] [--requests 600] [--burst 25] [--gap-ms 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List, Sequence

import numpy as np

from .common import machine, serving, table
from .deadlines import Bursts, busy_at, pattern_args


def summarise(reads: Sequence[Dict], n: int, burst: int) -> Dict[str, Dict]:
    """Per target, from one read per request (``{"loaded": {target: bool}, "others_cpus":
    {target: float or None}}``) under the pattern of :func:`bench.deadlines.busy_at`."""
    out = {}
    quiet = [i for i in range(n) if not n // 3 <= i < 2 * n // 3]
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadsignal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    pattern_args(p)
    p.add_argument("--runs", type=int, default=1)
    a = p.parse_args(argv)
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

"""What the first run at another level costs, and what a rehearsal saves (config ``rehearse``):
through the real daemon serving the shipped cifar10-g4 on the whole CPU, one batch-1 request
every ``--gap-ms``. Each block serves level a for ``--lead`` requests, pins level b (the same
target: only the level changes, as in the governor's own change of level) and times the
next three requests at b; in a rehearsed block one request at b comes first, untimed (what
the daemon runs on a blank image while idle, before a move up it expects). Cold and rehearsed
blocks alternate, over every change k -> k+1 (up) and k+1 -> k (down). Each timed run over its
level's steady p50 (``--steady`` requests per level, measured first): per kind and direction,
the median and p90 of the first, second and third run's ratio.

    python -m bench.firstrun [--model NAME] [--reps 30] [--gap-ms 3] [--lead 30] [--steady 200]
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List

import numpy as np

from .common import machine, serving, table, whole_cpu


def one_run(model, reps: int, gap_s: float, lead: int, steady: int) -> Dict:
    x = np.zeros((1, 32, 32, 3), np.uint8)
    blocks = []
    with serving(model, profile_runs=5) as c:
        st = c.status()
        target, G = whole_cpu(st), len(st["model"]["accuracy"])

        def timed(n):
            out = []
            for _ in range(n):
                out.append(c.infer(x).latency_ms)
                time.sleep(gap_s)
            return out
        p50 = {}
        for k in range(1, G + 1):
            c.pin(groups=k, target=target)
            timed(20)
            p50[k] = float(np.median(timed(steady)))
        changes = [(k, k + 1) for k in range(1, G)] + [(k + 1, k) for k in range(1, G)]
        for rep in range(reps):
            for a, b in changes:
                rehearsed = (rep + a) % 2 == 1          # alternating, and each change both ways
                c.pin(groups=a, target=target)
                timed(lead)
                c.pin(groups=b, target=target)
                if rehearsed:
                    timed(1)
                blocks.append({"from": a, "to": b, "rehearsed": rehearsed, "ms": timed(3)})
        c.release()
    return {"p50": p50, "blocks": blocks}


def summarise(run: Dict) -> Dict:
    """Per (direction, rehearsed): n, and per run after the change (1st, 2nd, 3rd) the
    median and p90 of its latency over its level's steady p50."""
    out = {}
    for up in (True, False):
        for rehearsed in (False, True):
            r = np.array([[ms / run["p50"][b["to"]] for ms in b["ms"]] for b in run["blocks"]
                          if (b["to"] > b["from"]) == up and b["rehearsed"] == rehearsed]).reshape(-1, 3)
            out[(up, rehearsed)] = {"n": len(r),
                                    "median": np.median(r, 0).tolist() if len(r) else None,
                                    "p90": np.percentile(r, 90, 0).tolist() if len(r) else None}
    return out


def report(runs: List[Dict]) -> str:
    rows = []
    for i, run in enumerate(runs):
        s = summarise(run)
        for (up, rehearsed), v in s.items():
            fmt = (lambda xs: " / ".join("%.2f" % x for x in xs)) if v["n"] else (lambda xs: "-")
            rows.append([i + 1, "up" if up else "down", "rehearsed" if rehearsed else "cold", v["n"],
                         fmt(v["median"]), fmt(v["p90"])])
    p50 = "; ".join(", ".join("k=%d %.3f" % kv for kv in sorted(r["p50"].items())) for r in runs)
    return ("First runs after a change of level (%s), over each level's steady p50 (ms: %s)\n\n" % (machine(), p50)
            + table(["run", "change", "kind", "changes", "median: 1st / 2nd / 3rd run", "p90: 1st / 2nd / 3rd run"],
                    rows) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.firstrun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10-g4", help="a shipped group set or a folder (default cifar10-g4)")
    p.add_argument("--reps", type=int, default=30, help="rounds over every change of level (default 30)")
    p.add_argument("--gap-ms", type=float, default=3.0, help="between requests (default 3)")
    p.add_argument("--lead", type=int, default=30, help="requests at the level before each change (default 30)")
    p.add_argument("--steady", type=int, default=200, help="requests per level for its steady p50 (default 200)")
    p.add_argument("--runs", type=int, default=1, help="fresh daemons (default 1)")
    a = p.parse_args(argv)
    if a.reps < 2 or a.lead < 1 or a.steady < 10:
        p.error("--reps must be at least 2 (cold and rehearsed alternate), --lead at least 1, --steady at least 10")
    runs = []
    for i in range(a.runs):
        runs.append(one_run(a.model, a.reps, a.gap_ms / 1e3, a.lead, a.steady))
        print("run %d of %d done" % (i + 1, a.runs), file=sys.stderr)
    print(report(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

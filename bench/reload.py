"""Requests around reloads: does a reload stall the requests being served?

Two cases: the set unchanged on disk (a reload for a new configuration or profile: the
loaded sessions are kept once no file is seen changed) and the set rewritten (its files
touched: loaded again, beside the serving one, and swapped in). A client sends batch-1
requests back to back to the real ``dnnscale serve`` (generic
platform, shipped model set) and times each round trip. Per round: a steady window of
``--steady-s`` seconds, then ``--reloads`` reloads (``Client.reload()`` from a
second client, one after another, each returning once the new set is in), then the
window's end. The table gives, per round, the steady p50 and p99, the worst request while
a reload was in progress, its ratio to the steady p99 (issue 32's target: <= 3x), and when
that request began, as a fraction of its reload's span (0: as the reload began, 1: as it
returned).

    python -m bench.reload [--model DIR] [--rounds N] [--reloads N] [--steady-s S] [--threads N]
                           [--mode unchanged|rewritten|both]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from typing import Dict, List

import numpy as np

from .common import machine, table


def measure(model_dir: str, rounds: int = 3, reloads: int = 3, steady_s: float = 4.0,
            threads: int = 1, rewrite: bool = False) -> List[Dict]:
    """``rewrite``: touch the weights before each reload, so that it loads the set again
    (new sessions beside the serving ones); else the files are unchanged and the loaded
    sessions are kept (after the check that no file changed)."""
    from tests.daemon_harness import Daemon
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        model_copy = os.path.join(tmp, "model")
        shutil.copytree(model_dir, model_copy)
        d = Daemon(os.path.join(tmp, "d"), model_copy, platform="generic", threads=threads)
        try:
            d.wait_ready(300)
            client, ctl = d.client(30), d.client(120)
            x = np.zeros((1, 3, 32, 32), np.float32)
            for _ in range(50):
                client.infer(x)
            for _ in range(rounds):
                times: List[tuple] = []          # (start, end) per request
                stop = threading.Event()

                def load():
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        client.infer(x)
                        times.append((t0, time.perf_counter()))
                th = threading.Thread(target=load)
                th.start()
                time.sleep(steady_s)
                steady_end = time.perf_counter()
                spans = []
                for _ in range(reloads):
                    if rewrite:
                        os.utime(os.path.join(model_copy, "weights.bin"))
                    r0 = time.perf_counter()
                    r = ctl.reload()
                    spans.append((r0, time.perf_counter()))
                    assert r["model_reloaded"] == rewrite, r
                    time.sleep(0.3)
                time.sleep(0.5)
                stop.set()
                th.join()
                steady = np.array([(b - a) * 1e3 for a, b in times if b <= steady_end])
                # a request overlapping a reload (it started before the reload ended and ended after it began)
                during = [(b - a) * 1e3 for a, b in times if any(a < r1 and b > r0 for r0, r1 in spans)]
                worst_at = max(((b - a, a) for a, b in times if any(a < r1 and b > r0 for r0, r1 in spans)),
                               default=(0, 0))[1]
                span = next((s for s in spans if worst_at < s[1] + 0.1), spans[-1])
                p99 = float(np.percentile(steady, 99))
                out.append({"steady_n": len(steady), "p50": float(np.median(steady)), "p99": p99,
                            "during_n": len(during), "worst": max(during) if during else float("nan"),
                            "reload_s": float(np.median([r1 - r0 for r0, r1 in spans])),
                            "ratio": (max(during) if during else float("nan")) / p99,
                            "worst_at": (worst_at - span[0]) / (span[1] - span[0])})
            client.close()
            ctl.close()
        finally:
            d.stop()
    return out


def report(rows: List[Dict], reloads: int) -> str:
    body = [[r["mode"], r["round"], r["steady_n"], "%.2f" % r["p50"], "%.2f" % r["p99"], r["during_n"], "%.2f" % r["worst"],
             "%.2fx" % r["ratio"], "%.2f" % r["reload_s"], "%.2f" % r["worst_at"]] for r in rows]
    out = ("Requests around reloads (%d reloads per round, batch 1, ipc, generic platform; %s)\n\n" % (
        reloads, machine()) + table(["model set", "round", "steady n", "steady p50 ms", "steady p99 ms", "during n",
                                     "worst during ms", "worst / p99", "reload s", "worst began at"], body)
        + "\n")
    for mode in dict.fromkeys(r["mode"] for r in rows):
        ratios = [r["ratio"] for r in rows if r["mode"] == mode]
        out += "\n%s: worst / steady p99 median %.2fx, range %.2f-%.2fx (target <= 3x)" % (
            mode, float(np.median(ratios)), min(ratios), max(ratios))
    return out + "\n"


def run(model_dir: str, rounds: int = 3, reloads: int = 3, steady_s: float = 4.0, threads: int = 1,
        modes=("unchanged", "rewritten")) -> List[Dict]:
    rows = []
    for mode in modes:
        for i, r in enumerate(measure(model_dir, rounds, reloads, steady_s, threads, rewrite=mode == "rewritten")):
            rows.append(dict(r, mode=mode, round=i + 1))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.reload", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model set directory (default: the shipped cifar10-g4)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--steady-s", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", choices=("unchanged", "rewritten", "both"), default="both",
                    help="reload an unchanged set (sessions kept), one whose files were rewritten "
                         "(loaded again beside the serving one), or both (default)")
    a = ap.parse_args(argv)
    from models import zoo
    model = a.model or zoo.resolve("cifar10-g4")
    rows = run(model, a.rounds, a.reloads, a.steady_s, a.threads,
               ("unchanged", "rewritten") if a.mode == "both" else (a.mode,))
    print(report(rows, a.reloads))


if __name__ == "__main__":
    main()

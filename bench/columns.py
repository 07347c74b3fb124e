"""One inference on several processors at once: the group columns of k split over two
one-CPU lanes, against the one-CPU lane and the all-CPU lane running k whole.

Direct ``ModelSet`` runs at batch 1 (not through the daemon: a split is not a daemon target
yet), one process, the three rows in interleaved blocks (``--blocks`` blocks of ``--runs``
runs each, a row's block after the other rows'), so that all of them see the same moments of
a noisy machine. The split runs columns 1..c in the calling thread pinned to CPU 0 and c+1..k
in a worker pinned to CPU 1, each a one-thread onnxruntime session, and joins them in the head; c is
chosen so both halves have about the same MACs. The one-CPU lane is pinned to CPU 0; the
all-CPU lane is one session with a thread per CPU. Medians of the per-block p50 and p99 with
their ranges; issue 33's targets at k=G: split p50 <= 0.7x the one-CPU lane's and <= 1.1x the
all-CPU lane's, p99 <= 1.2x the all-CPU lane's.

    python -m bench.columns [--model NAME] [--blocks N] [--runs N]
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

import numpy as np

from .common import in_fresh_process, machine, table

_SET_WITH_SPLIT = r'''
import json, numpy as np, psutil
from concurrent.futures import ThreadPoolExecutor
from models import ModelSet
ms = ModelSet.load(%(model)r)
x = np.zeros((1,) + ms.input_shape, np.float32)
for k in range(1, ms.groups + 1): ms.run(k, x)
with ThreadPoolExecutor(1) as pool:
    for c in range(1, ms.groups):
        ms.run_split(ms.groups, x, [(1, c, 1), (c + 1, ms.groups, 1)], pool=pool)
print(json.dumps({"pss_mib": psutil.Process().memory_full_info().pss / 2**20}))
'''

_ALONE = r'''
import json, numpy as np, onnxruntime as ort, psutil
s = ort.InferenceSession(%(path)r, providers=["CPUExecutionProvider"])
s.run(None, {"input": np.zeros((1,) + tuple(s.get_inputs()[0].shape[1:]), np.float32)})
print(json.dumps({"pss_mib": psutil.Process().memory_full_info().pss / 2**20}))
'''


def memory(model: str) -> Dict:
    """PSS of a fresh process: the k=G sub-network alone (its own embedded .onnx, one session)
    against the whole set with every k and every two-way split of k=G loaded and run."""
    import tempfile
    from models import zoo
    from .modelset import standalone_models
    d = zoo.resolve(model)
    with tempfile.TemporaryDirectory() as tmp:
        alone = standalone_models(d, tmp)[-1]
        a = in_fresh_process(_ALONE % {"path": alone})["pss_mib"]
    s = in_fresh_process(_SET_WITH_SPLIT % {"model": d})["pss_mib"]
    return {"alone_mib": a, "set_mib": s}


def _pinned_pool(cpus: List[int]) -> ThreadPoolExecutor:
    """A worker per CPU, each pinned to its own (its first task pins it)."""
    pool = ThreadPoolExecutor(len(cpus))
    barrier = threading.Barrier(len(cpus))

    def pin(cpu):
        os.sched_setaffinity(0, {cpu})
        barrier.wait()
    list(pool.map(pin, cpus))
    return pool


def _cut(levels: List[Dict], k: int) -> int:
    """The column c splitting 1..k into two halves of about equal MACs (a column's MACs: the
    difference between consecutive levels')."""
    macs = [levels[0]["macs"]] + [levels[i]["macs"] - levels[i - 1]["macs"] for i in range(1, k)]
    total, acc = sum(macs), 0
    for c in range(1, k):
        acc += macs[c - 1]
        if acc >= total / 2:
            return c
    return k - 1


def run(model: str, k: int = None, blocks: int = 10, runs: int = 100) -> Dict:
    from models import ModelSet, zoo
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("bench.columns needs 2 CPUs")
    d = zoo.resolve(model)
    one = ModelSet.load(d, threads=1)
    wide = ModelSet.load(d, threads=len(cpus))
    k = k or one.groups
    c = _cut(one.manifest["levels"], k)
    x = np.zeros((1,) + one.input_shape, np.float32)
    pool = _pinned_pool(cpus[1:2])
    here = os.sched_getaffinity(0)
    rows = {"one-CPU lane (k whole, 1 thread)": [], "all-CPU lane (k whole, %d threads)" % len(cpus): [],
            "split (columns 1-%d | %d-%d, 1 thread each)" % (c, c + 1, k): []}
    names = list(rows)

    fns = [lambda: one.run(k, x), lambda: wide.run(k, x),
           lambda: one.run_split(k, x, [(1, c, 1), (c + 1, k, 1)], pool=pool)]
    for fn in fns:                        # warm every session
        for _ in range(20):
            fn()
    try:
        for _ in range(blocks):
            for name, fn in zip(names, fns):
                if not name.startswith("all-CPU"):
                    os.sched_setaffinity(0, {cpus[0]})
                t = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    fn()
                    t.append(time.perf_counter() - t0)
                os.sched_setaffinity(0, here)
                rows[name].append((np.percentile(t, 50) * 1e3, np.percentile(t, 99) * 1e3))
    finally:
        pool.shutdown()
    return {"k": k, "cut": c, "rows": rows, "blocks": blocks, "runs": runs, "model": model}


def report(r: Dict) -> str:
    names = list(r["rows"])
    med = {n: (float(np.median([b[0] for b in r["rows"][n]])), float(np.median([b[1] for b in r["rows"][n]])))
           for n in names}
    body = []
    for n in names:
        p50s = [b[0] for b in r["rows"][n]]
        p99s = [b[1] for b in r["rows"][n]]
        body.append([n, "%.3f (%.3f-%.3f)" % (med[n][0], min(p50s), max(p50s)),
                     "%.3f (%.3f-%.3f)" % (med[n][1], min(p99s), max(p99s))])
    one, wide, split = names
    ratios = []
    for i in range(r["blocks"]):         # per block, so that each ratio compares the same moments
        s, o, w = r["rows"][split][i], r["rows"][one][i], r["rows"][wide][i]
        ratios.append((s[0] / o[0], s[0] / w[0], s[1] / w[1]))
    rs = np.array(ratios)
    lines = ["Columns in parallel, %s k=%d, batch 1, direct ModelSet runs (%s)" % (r["model"], r["k"], machine()), "",
             table(["row", "p50 ms (range over %d blocks)" % r["blocks"], "p99 ms (range)"], body), "",
             "split p50 / one-CPU lane p50: median %.2fx (%.2f-%.2f), target <= 0.7x" % (
                 np.median(rs[:, 0]), rs[:, 0].min(), rs[:, 0].max()),
             "split p50 / all-CPU lane p50: median %.2fx (%.2f-%.2f), target <= 1.1x" % (
                 np.median(rs[:, 1]), rs[:, 1].min(), rs[:, 1].max()),
             "split p99 / all-CPU lane p99: median %.2fx (%.2f-%.2f), target <= 1.2x" % (
                 np.median(rs[:, 2]), rs[:, 2].min(), rs[:, 2].max())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.columns", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cifar10-g4", help="a group set with columns (default cifar10-g4)")
    ap.add_argument("--k", type=int, default=None, help="the level (default: all groups)")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100)
    a = ap.parse_args(argv)
    print(report(run(a.model, a.k, a.blocks, a.runs)))
    m = memory(a.model)
    print("PSS: the k=G sub-network alone %.1f MiB; the set with every k and every two-way split of k=G "
          "loaded and run %.1f MiB: %.2fx (target <= 1.10x)" % (m["alone_mib"], m["set_mib"],
                                                               m["set_mib"] / m["alone_mib"]))


if __name__ == "__main__":
    main()

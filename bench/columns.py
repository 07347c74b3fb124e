"""One inference on several processors at once: the group columns of k split over two
one-CPU lanes, against the one-CPU lane and the all-CPU lane running k whole.

First direct ``ModelSet`` runs at batch 1, then the same rows through a real ``dnnscale
serve`` (client round trips; pins of ``cpu:1``, ``cpu`` and the split target), each time one
process timing the three rows in interleaved blocks (``--blocks`` blocks of ``--runs`` runs
each, a row's block after the other rows'), so that all of them see the same moments of a
noisy machine. The split runs columns 1..c in the calling thread pinned to CPU 0 and c+1..k
in the lane worker pinned to CPU 1, each a one-thread onnxruntime session, and joins them in
the head; c is chosen so both halves have about the same MACs (governor.cut_columns, as the
daemon cuts equal lanes). The one-CPU lane is pinned to CPU 0; the all-CPU lane is one
session with a thread per CPU. Medians of the per-block p50 and p99 with their ranges;
issue 33's targets at k=G: split p50 <= 0.7x the one-CPU lane's and <= 1.1x the all-CPU
lane's, p99 <= 1.2x the all-CPU lane's. Then the memory: PSS of the set as the daemon holds
it with its split against the k=G network alone.

    python -m bench.columns [--model NAME] [--k K] [--blocks N] [--runs N] [--direct-only]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List

import numpy as np

from .common import in_fresh_process, machine, serving, spread, table

_SET_WITH_SPLIT = r'''
import json, numpy as np, psutil
from governor import column_macs, cut_columns, levels_from_manifest
from models import ModelSet
ms = ModelSet.load(%(model)r)
x = np.zeros((1,) + ms.input_shape, np.float32)
for k in range(1, ms.groups + 1): ms.run(k, x)
cols = column_macs(levels_from_manifest(ms.manifest))
lanes = [ms.lane("cpu0", [], 1), ms.lane("cpu1", [], 1)]
for k in range(2, ms.groups + 1):    # every cut the daemon's split of two equal lanes uses
    ms.run_split(k, x, cut_columns(cols[:k], [(1.0, 0.0)] * 2), lanes)
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
    against the whole set with every k and the split's cuts of k = 2..G loaded and run,
    packed (as served) and unpacked (``DNNSCALE_PACK=0``)."""
    import tempfile
    from models import zoo
    from .modelset import standalone_models
    d = zoo.resolve(model)
    with tempfile.TemporaryDirectory() as tmp:
        alone = standalone_models(d, tmp)[-1]
        a = in_fresh_process(_ALONE % {"path": alone})["pss_mib"]
    s = in_fresh_process(_SET_WITH_SPLIT % {"model": d})["pss_mib"]
    u = in_fresh_process(_SET_WITH_SPLIT % {"model": d}, env={"DNNSCALE_PACK": "0"})["pss_mib"]
    return {"alone_mib": a, "set_mib": s, "unpacked_mib": u}


def run(model: str, k: int = None, blocks: int = 10, runs: int = 100) -> Dict:
    from models import ModelSet, zoo
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("bench.columns needs 2 CPUs")
    d = zoo.resolve(model)
    one = ModelSet.load(d, threads=1)
    wide = ModelSet.load(d, threads=len(cpus))
    k = k or one.groups
    from governor import column_macs, cut_columns, levels_from_manifest
    c = cut_columns(column_macs(levels_from_manifest(one.manifest))[:k], [(1.0, 0.0)] * 2)[0][1]
    x = np.zeros((1,) + one.input_shape, np.float32)
    lanes = [one.lane("cpu%d" % cpus[0], [cpus[0]], 1), one.lane("cpu%d" % cpus[1], [cpus[1]], 1)]
    here = os.sched_getaffinity(0)
    rows = {"one-CPU lane (k whole, 1 thread)": [], "all-CPU lane (k whole, %d threads)" % len(cpus): [],
            "split (columns 1-%d | %d-%d, 1 thread each)" % (c, c + 1, k): []}
    names = list(rows)

    fns = [lambda: one.run(k, x), lambda: wide.run(k, x),
           lambda: one.run_split(k, x, [(1, c), (c + 1, k)], lanes)]
    for fn in fns:                        # warm every session
        for _ in range(20):
            fn()
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
    return {"k": k, "cut": c, "rows": rows, "blocks": blocks, "runs": runs, "model": model}


def through_daemon(model: str, ks: List[int], blocks: int = 10, runs: int = 100) -> Dict:
    """The same three rows through a real ``dnnscale serve`` (client round trips at batch 1
    over ipc), each a pin of the target: the one-CPU lane (``cpu:1``), the all-CPU lane
    (``cpu``) and the split over single-CPU lanes; per block and k, the rows in turn."""
    out = {"rows": {}, "blocks": blocks, "runs": runs, "model": model, "labels": {}}
    with serving(model) as c:
        st = c.status()
        split = next((n for n, t in st["targets"].items() if "split" in t), None)
        if split is None:
            raise SystemExit("bench.columns: the daemon has no split target (%s)" % st["splits"])
        targets = [("one-CPU lane (cpu:1)", "cpu:1"), ("all-CPU lane (cpu)", "cpu"),
                   ("split (%s)" % split, split)]
        img = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
        x = img[:1]
        for k in ks:                     # the labels: the split's are the whole network's
            got = {}
            for _, t in targets:
                c.pin(groups=k, target=t)
                got[t] = [l for i in range(0, len(img), 64) for l in c.infer(img[i:i + 64]).labels]
            out["labels"][k] = all(got[t] == got["cpu"] for _, t in targets)
        for _ in range(blocks):
            for k in ks:
                for name, t in targets:
                    c.pin(groups=k, target=t)
                    for _ in range(10):
                        c.infer(x)
                    rt = []
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        c.infer(x)
                        rt.append(time.perf_counter() - t0)
                    out["rows"].setdefault(k, {}).setdefault(name, []).append(
                        (np.percentile(rt, 50) * 1e3, np.percentile(rt, 99) * 1e3))
        out["lanes"] = st["targets"][split]["split"]
    return out


def report(r: Dict) -> str:
    names = list(r["rows"])
    body = []
    for n in names:
        p50s = [b[0] for b in r["rows"][n]]
        p99s = [b[1] for b in r["rows"][n]]
        body.append([n, spread(p50s, "%.3f"), spread(p99s, "%.3f")])
    one, wide, split = names
    ratios = []
    for i in range(r["blocks"]):         # per block, so that each ratio compares the same moments
        s, o, w = r["rows"][split][i], r["rows"][one][i], r["rows"][wide][i]
        ratios.append((s[0] / o[0], s[0] / w[0], s[1] / w[1]))
    rs = np.array(ratios)
    lines = ["Columns in parallel, %s k=%d, batch 1, direct ModelSet runs (%s)" % (r["model"], r["k"], machine()), "",
             table(["row", "p50 ms (range over %d blocks)" % r["blocks"], "p99 ms (range)"], body), "",
             "split p50 / one-CPU lane p50: median %s, target <= 0.7x" % spread(rs[:, 0], "%.2fx"),
             "split p50 / all-CPU lane p50: median %s, target <= 1.1x" % spread(rs[:, 1], "%.2fx"),
             "split p99 / all-CPU lane p99: median %s, target <= 1.2x" % spread(rs[:, 2], "%.2fx")]
    return "\n".join(lines) + "\n"


def report_daemon(r: Dict) -> str:
    lines = ["Through the daemon: client round trips at batch 1 over ipc, %s, %d blocks of %d requests per row "
             "and k (%s)" % (r["model"], r["blocks"], r["runs"], machine()), ""]
    body = []
    for k, rows in r["rows"].items():
        one, wide, split = list(rows)
        rs = np.array([(s[0] / o[0], s[0] / w[0], s[1] / w[1]) for o, w, s in zip(rows[one], rows[wide], rows[split])])
        for n in (one, wide, split):
            p50s, p99s = [b[0] for b in rows[n]], [b[1] for b in rows[n]]
            body.append([k, n, spread(p50s, "%.3f"), spread(p99s, "%.3f"),
                         "" if n != split else spread(rs[:, 0], "%.2fx"),
                         "" if n != split else spread(rs[:, 1], "%.2fx"),
                         "" if n != split else spread(rs[:, 2], "%.2fx"),
                         "" if n != split else ("yes" if r["labels"][k] else "NO")])
    lines.append(table(["k", "row", "p50 ms (range over blocks)", "p99 ms (range)", "split p50 / one-CPU p50",
                        "split p50 / all-CPU p50", "split p99 / all-CPU p99", "same labels (256 images)"], body))
    lines += ["", "Targets at k=G: split p50 <= 0.7x the one-CPU lane's and <= 1.1x the all-CPU lane's, "
              "p99 <= 1.2x the all-CPU lane's. The split's lanes and columns: %s" % json.dumps(r["lanes"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.columns", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cifar10-g4", help="a group set with columns (default cifar10-g4)")
    ap.add_argument("--k", type=int, default=None, help="the level (default: all groups)")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--direct-only", action="store_true", help="skip the rows through the daemon")
    ap.add_argument("--memory-only", action="store_true", help="only the memory line")
    a = ap.parse_args(argv)
    if not a.memory_only:
        print(report(run(a.model, a.k, a.blocks, a.runs)))
    if not (a.direct_only or a.memory_only):
        from models import ModelSet, zoo
        G = ModelSet.load(zoo.resolve(a.model), threads=1).groups
        print(report_daemon(through_daemon(a.model, [a.k] if a.k else list(range(2, G + 1)), a.blocks, a.runs)))
    m = memory(a.model)   # the whole set and every two-way split of k=G loaded
    print("PSS: the k=G sub-network alone %.1f MiB; the set with every k and the split's cuts of k = 2..G "
          "loaded and run %.1f MiB: %.2fx (target <= 1.10x); unpacked %.1f MiB: %.2fx"
          % (m["alone_mib"], m["set_mib"], m["set_mib"] / m["alone_mib"], m["unpacked_mib"],
             m["unpacked_mib"] / m["alone_mib"]))


if __name__ == "__main__":
    main()

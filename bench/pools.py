"""onnxruntime's thread pools: ModelSet's per-session pools whose workers spin only inside a
run (the default) against spinning off (what onnxruntime < 1.13 gets), spinning on
(onnxruntime's own default) and the process-wide pool (onnxruntime >= 1.23, one size only),
for steady latency and level switching.
``python -m bench.pools [--model DIR] [--threads N] [--reps R] [--runs N]``.

Each mode runs in its own fresh process (a global pool is fixed per process), the modes in
alternating blocks, ``reps`` times; the table gives the median over blocks and the range.
Switch overhead = first inference after a level change minus the steady inference at that
level (median over ``runs`` switches into each level).
"""
from __future__ import annotations

import argparse
from typing import Dict, List

from .common import in_fresh_process, machine, spread, table

_CODE = r'''
import json, time, numpy as np
from models import ModelSet
ms = ModelSet.load(%(model)r, threads=%(threads)d)
x = np.zeros((1,) + ms.input_shape, np.float32)
L = ms.groups
for k in range(1, L + 1):
    for _ in range(30): ms.run(k, x)
steady, first = {}, {k: [] for k in range(1, L + 1)}
for k in range(1, L + 1):
    t = []
    for _ in range(%(runs)d):
        t0 = time.perf_counter(); ms.run(k, x); t.append(time.perf_counter() - t0)
    steady[k] = float(np.median(t))
for rep in range(%(runs)d // (L - 1) + 1):
    for a in range(1, L + 1):
        for b in range(1, L + 1):
            if a == b: continue
            for _ in range(3): ms.run(a, x)
            t0 = time.perf_counter(); ms.run(b, x); first[b].append(time.perf_counter() - t0)
print(json.dumps({"pool": ms.pool, "steady_us": [steady[k] * 1e6 for k in range(1, L + 1)],
                  "switch_us": [(float(np.median(first[k])) - steady[k]) * 1e6 for k in range(1, L + 1)]}))
'''
MODES = ("per-session, spinning in runs", "per-session, spinning off", "per-session, spinning on", "global")
ENV = {"per-session, spinning in runs": {"DNNSCALE_ORT_SPIN": "run"},
       "per-session, spinning off": {"DNNSCALE_ORT_SPIN": "0"},
       "per-session, spinning on": {"DNNSCALE_ORT_SPIN": "1"},
       "global": {"DNNSCALE_ORT_POOL": "global"}}


def run(model_dir: str, threads: int = 2, reps: int = 3, runs: int = 200) -> Dict:
    blocks: Dict[str, List[Dict]] = {m: [] for m in MODES}
    for _ in range(reps):
        for mode in MODES:
            r = in_fresh_process(_CODE % {"model": model_dir, "threads": threads, "runs": runs}, env=ENV[mode])
            if mode == "global" and r["pool"] != "global":
                continue             # this onnxruntime has no process-wide pool
            blocks[mode].append(r)
    return {"machine": machine(), "threads": threads, "reps": reps, "runs": runs, "blocks": blocks}


def _cell(vals: List[float]) -> str:
    return spread(vals, "%.0f")


def report(r: Dict) -> str:
    levels = len(r["blocks"][MODES[0]][0]["steady_us"])
    rows = []
    for mode in MODES:
        bs = r["blocks"][mode]
        if not bs:
            continue
        rows.append([mode, "steady"] + [_cell([b["steady_us"][k] for b in bs]) for k in range(levels)])
        rows.append([mode, "switch overhead"] + [_cell([b["switch_us"][k] for b in bs]) for k in range(levels)])
    head = ["pool", "µs, batch 1"] + ["k=%d" % (k + 1) for k in range(levels)]
    return ("onnxruntime thread pools, %d intra-op threads, %d alternating blocks per mode, %d switches into "
            "each level per block; median (range) over blocks. %s\n\n" % (r["threads"], r["reps"], r["runs"],
                                                                       r["machine"]) + table(head, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model-set folder (default: the shipped CIFAR-10 set)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runs", type=int, default=200)
    a = ap.parse_args()
    from models import zoo
    print(report(run(a.model or zoo.default_path(), a.threads, a.reps, a.runs)))


if __name__ == "__main__":
    main()

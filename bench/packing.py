"""Packed sets (models/packed.py) against unpacked (``DNNSCALE_PACK=0``): memory, load time
and latency per level, for each shipped group set.

Memory: PSS of a fresh process that loads the set as the daemon does (a session set per
lane size: all CPUs and one CPU), runs every level on both, a two-lane split of every k
and the anytime steps, above a process that imported the same modules; the two kinds in
alternating processes, ``reps`` times. Latency: both kinds loaded in one process, batch 1,
every level, in alternating blocks (median per block; the ratio packed / unpacked per
block, its median and range). Load time: ``ModelSet.load`` in fresh processes, alternating.

    python -m bench.packing [--reps R] [--blocks B] [--runs N]
"""
from __future__ import annotations

import argparse
import os
import statistics
from typing import Dict, List

from .common import in_fresh_process, machine, spread, table

SETS = ("cifar10-g4", "fashion-mnist-g4")

_BASE = r'''
import json, psutil, numpy as np
from models import ModelSet, zoo
from governor import column_macs, cut_columns, levels_from_manifest
print(json.dumps({"pss_mib": psutil.Process().memory_full_info().pss / 2**20}))
'''

_LOADED = r'''
import json, os, time, psutil, numpy as np
from models import ModelSet, zoo
from governor import column_macs, cut_columns, levels_from_manifest
n = len(os.sched_getaffinity(0))
t0 = time.perf_counter()
ms = ModelSet.load(zoo.resolve(%(name)r), threads=n, lanes={"cpu:1": 1})
load_s = time.perf_counter() - t0
x = np.zeros((1,) + ms.input_shape, np.float32)
for k in range(1, ms.groups + 1):
    ms.run(k, x); ms.run(k, x, "cpu:1")
cols = column_macs(levels_from_manifest(ms.manifest))
lanes = [ms.lane("cpu0", [], 1), ms.lane("cpu1", [], 1)]
for k in range(2, ms.groups + 1):
    ms.run_split(k, x, cut_columns(cols[:k], [(1.0, 0.0)] * 2), lanes)
ms.run_anytime(x, threads=n); ms.run_anytime(x, threads=1)
print(json.dumps({"pss_mib": psutil.Process().memory_full_info().pss / 2**20, "load_s": load_s,
                  "packing": ms.packing}))
'''

_LATENCY = r'''
import json, time, numpy as np
from models import ModelSet, zoo
d = zoo.resolve(%(name)r)
sets = {"packed": ModelSet.load(d, threads=%(threads)d, pack=True),
        "unpacked": ModelSet.load(d, threads=%(threads)d, pack=False)}
x = np.zeros((1,) + sets["packed"].input_shape, np.float32)
out = {kind: {k: [] for k in range(1, 5)} for kind in sets}
for b in range(%(blocks)d):
    for kind in (("packed", "unpacked") if b %% 2 == 0 else ("unpacked", "packed")):
        ms = sets[kind]
        for k in range(1, ms.groups + 1):
            for _ in range(20): ms.run(k, x)
            t = []
            for _ in range(%(runs)d):
                t0 = time.perf_counter(); ms.run(k, x); t.append(time.perf_counter() - t0)
            out[kind][k].append(float(np.median(t)) * 1e6)
print(json.dumps(out))
'''


def memory(name: str, reps: int) -> Dict[str, Dict[str, List[float]]]:
    out = {kind: {"pss": [], "load_s": []} for kind in ("packed", "unpacked")}
    for rep in range(reps):
        for kind in (("packed", "unpacked") if rep % 2 == 0 else ("unpacked", "packed")):
            env = {"DNNSCALE_PACK": "1" if kind == "packed" else "0"}
            base = in_fresh_process(_BASE, env=env)["pss_mib"]
            r = in_fresh_process(_LOADED % {"name": name}, env=env)
            out[kind]["pss"].append(r["pss_mib"] - base)
            out[kind]["load_s"].append(r["load_s"])
    return out


def latency(name: str, threads: int, blocks: int, runs: int) -> Dict[str, Dict[str, List[float]]]:
    return in_fresh_process(_LATENCY % {"name": name, "threads": threads, "blocks": blocks, "runs": runs})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.packing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=4, help="fresh processes per kind for memory and load time")
    p.add_argument("--blocks", type=int, default=8, help="alternating latency blocks")
    p.add_argument("--runs", type=int, default=200, help="runs per level per block")
    a = p.parse_args(argv)
    from models import zoo
    mem_rows, lat_rows = [], []
    for name in SETS:
        w = os.path.getsize(os.path.join(zoo.resolve(name), "weights.bin")) / 2**20
        m = memory(name, a.reps)
        for kind in ("packed", "unpacked"):
            mem_rows.append([name, kind, spread(m[kind]["pss"], "%.1f"), "%.1f" % w,
                             "%.1f" % (statistics.median(m[kind]["pss"]) / w), spread(m[kind]["load_s"], "%.2f")])
        for threads in sorted({1, len(os.sched_getaffinity(0))}):
            r = latency(name, threads, a.blocks, a.runs)
            for k in sorted(r["packed"], key=int):
                pk, un = r["packed"][k], r["unpacked"][k]
                ratios = [x / y for x, y in zip(pk, un)]
                lat_rows.append([name, threads, k, "%.0f" % statistics.median(pk), "%.0f" % statistics.median(un),
                                 spread(ratios, "%.3f")])
    print("Packed against unpacked sets (%s)\n" % machine())
    print("Memory: PSS above the imported modules of a process holding the set as the daemon does "
          "(every level at both lane sizes, the split's cuts, the anytime steps), median (range) of %d "
          "processes per kind\n" % a.reps)
    print(table(["set", "kind", "PSS MiB", "weights.bin MiB", "PSS / weights", "ModelSet.load s"], mem_rows))
    print("\nLatency, batch 1: medians of %d alternating blocks of %d runs per level\n" % (a.blocks, a.runs))
    print(table(["set", "threads", "k", "packed µs", "unpacked µs", "packed / unpacked per block"], lat_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

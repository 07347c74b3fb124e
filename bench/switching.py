"""Switching cost and memory: the group set against G separate models and the DNNShifter
portfolio (the seed paper's "2.4x smaller memory footprint", DNNShifter's switching and
memory claims).

Switching overhead = first inference after a change minus the steady-state inference,
medians over many switches, each kind in a fresh process:
* level k (group set, all sessions resident), variant (portfolio, all resident);
* loading a level or variant on demand (session creation + first run) instead of resident;
* target (re-pinning the threads: this machine, cpu <-> cpu:1);
* frequency: no DVFS here; the simulated boards' modelled DVFS latency, labelled.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from .common import in_fresh_process, machine, table

_SWITCH = r'''
import json, time, numpy as np
from models import ModelSet
ms = ModelSet.load(%(model)r)
x = np.zeros((1,) + ms.input_shape, np.float32)
L = ms.groups
for k in range(1, L + 1):
    for _ in range(30): ms.run(k, x)
steady = {}
for k in range(1, L + 1):
    t = []
    for _ in range(%(runs)d):
        t0 = time.perf_counter(); ms.run(k, x); t.append(time.perf_counter() - t0)
    steady[k] = float(np.median(t))
first = {k: [] for k in range(1, L + 1)}
for rep in range(%(runs)d):
    for a in range(1, L + 1):
        for b in range(1, L + 1):
            if a == b: continue
            for _ in range(3): ms.run(a, x)
            t0 = time.perf_counter(); ms.run(b, x); first[b].append(time.perf_counter() - t0)
over = [float(np.median(first[k])) - steady[k] for k in first]
# on demand: a fresh session for the level, created and run once
import onnxruntime as ort, os
from models.modelset import session_options
lazy = []
for k in range(1, L + 1):
    t0 = time.perf_counter()
    s = ort.InferenceSession(os.path.join(%(model)r, ms.level(k)["file"]), session_options(), providers=["CPUExecutionProvider"])
    s.run(None, {"input": x})
    lazy.append(time.perf_counter() - t0 - steady[k])
print(json.dumps({"steady_ms": [steady[k] * 1e3 for k in sorted(steady)], "switch_over_us": [o * 1e6 for o in over],
                  "on_demand_over_ms": [l * 1e3 for l in lazy]}))
'''

_TARGET = r'''
import json, time, numpy as np, platforms
from models import ModelSet
ms = ModelSet.load(%(model)r)
p = platforms.create("generic")
x = np.zeros((1,) + ms.input_shape, np.float32)
G = ms.groups
ts = [n for n, t in p.targets.items() if not t.is_split]
res = {}
if len(ts) > 1:
    steady = {}
    for t in ts:
        p.pin(t)
        for _ in range(30): ms.run(G, x)
        v = []
        for _ in range(%(runs)d):
            t0 = time.perf_counter(); ms.run(G, x); v.append(time.perf_counter() - t0)
        steady[t] = float(np.median(v))
    first = {t: [] for t in ts}
    for rep in range(%(runs)d):
        for a in ts:
            for b in ts:
                if a == b: continue
                p.pin(a)
                for _ in range(3): ms.run(G, x)
                t0 = time.perf_counter(); p.pin(b); ms.run(G, x); first[b].append(time.perf_counter() - t0)
    res = {t: (float(np.median(first[t])) - steady[t]) * 1e6 for t in ts}
p.stop()
print(json.dumps(res))
'''

_PSS = r'''
import json, psutil, numpy as np
kind = %(kind)r
x = np.zeros((1, 3, 32, 32), np.float32)
if kind == "set":
    from models import ModelSet
    ms = ModelSet.load(%(path)r)
    for k in range(1, ms.groups + 1): ms.run(k, x)
else:
    import onnxruntime as ort
    ss = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in %(paths)r]
    for s in ss: s.run(None, {"input": x})
print(json.dumps({"pss_mib": psutil.Process().memory_full_info().pss / 2**20}))
'''


def _set_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith((".onnx", ".bin")))


def memory(model_dir: str, portfolio_dir: Optional[str]) -> Dict:
    import tempfile
    from .modelset import standalone_models
    out = {"machine": machine(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        alone = standalone_models(model_dir, tmp)
        base = in_fresh_process(_PSS % {"kind": "separate", "path": "", "paths": []})["pss_mib"]
        grp = in_fresh_process(_PSS % {"kind": "set", "path": model_dir, "paths": []})["pss_mib"]
        sep = in_fresh_process(_PSS % {"kind": "separate", "path": "", "paths": alone})["pss_mib"]
        out["rows"].append(["group set, every k loaded", grp, grp - base, _set_bytes(model_dir)])
        out["rows"].append(["G separately stored models, all loaded", sep, sep - base, sum(map(os.path.getsize, alone))])
    if portfolio_dir:
        port = in_fresh_process(_PSS % {"kind": "set", "path": portfolio_dir, "paths": []})["pss_mib"]
        out["rows"].append(["DNNShifter-style portfolio, every variant loaded", port, port - base,
                            _set_bytes(portfolio_dir)])
    out["baseline_mib"] = base
    return out


def memory_report(r: Dict) -> str:
    first = r["rows"][0]
    return ("Machine: %s. PSS of a fresh process after loading and running each level once; "
            "'above baseline' subtracts a process that imported numpy + onnxruntime (%.1f MiB).\n\n" % (
                r["machine"], r["baseline_mib"]) +
            table(["what", "PSS MiB", "above baseline MiB", "ratio to the group set", "on disk bytes",
                   "disk ratio"],
                  [[w, p, a, a / first[2], d, d / first[3]] for w, p, a, d in r["rows"]]))


def run(model_dir: str, portfolio_dir: Optional[str], runs: int = 100) -> Dict:
    from platforms.sim import SimBoard
    res = {"machine": machine(), "group": in_fresh_process(_SWITCH % {"model": model_dir, "runs": runs}),
           "target": in_fresh_process(_TARGET % {"model": model_dir, "runs": runs})}
    if portfolio_dir:
        res["portfolio"] = in_fresh_process(_SWITCH % {"model": portfolio_dir, "runs": runs})
    res["dvfs_sim_us"] = {name: {t: st.settle_s * 1e6 for t, st in SimBoard(name).sim_targets.items()}
                          for name in ("sim-odroid-xu3", "sim-jetson-nano")}
    return res


def report(r: Dict) -> str:
    rows = []
    for kind in ("group", "portfolio"):
        if kind not in r:
            continue
        g = r[kind]
        for i, (st, ov, lz) in enumerate(zip(g["steady_ms"], g["switch_over_us"], g["on_demand_over_ms"]), 1):
            rows.append([kind, "level %d" % i, st, ov, lz * 1e3])
    lines = ["Machine: %s.\n" % r["machine"],
             table(["set", "switch to", "steady ms", "switch overhead µs (resident)", "on-demand load overhead µs"],
                   rows), ""]
    if r["target"]:
        lines += [table(["re-pin to target", "overhead µs (first inference after re-pinning minus steady)"],
                        [[t, v] for t, v in r["target"].items()]), ""]
    lines.append(table(["board (SIMULATED)", "target", "modelled DVFS latency µs"],
                       [[b, t, v] for b, d in r["dvfs_sim_us"].items() for t, v in d.items()]))
    return "\n".join(lines)


def kinds_report(model_dir: str, portfolio_dir: Optional[str], mem: Dict, sw: Dict) -> str:
    """The two kinds of dynamic DNN side by side, from the memory and switching runs above
    and the manifests (accuracy on test_batch, parameters, training time)."""
    from models import manifest as mf
    rows = []
    for kind, d, mem_row in (("group", model_dir, 0), ("portfolio", portfolio_dir, 2)):
        if d is None or kind not in sw:
            continue
        m, g = mf.read(d), sw[kind]
        lv = m["levels"]
        params = [x.get("nonzero_params", x["params"]) for x in lv]
        epochs = m.get("provenance", {}).get("training_epoch_seconds", {})
        per_device = epochs.get("per_device", {"not recorded": epochs.get("total")})
        structured = sum(x.get("structured_seconds", 0.0) for x in lv)
        rows.append([kind + (" (weights shared)" if m.get("shares_weights") else " (no sharing)"),
                     len(lv), " / ".join("%.1f" % x["accuracy"] for x in lv),
                     max(params) / min(params),
                     max(g["steady_ms"]) / min(g["steady_ms"]),
                     sorted(g["switch_over_us"])[len(g["switch_over_us"]) // 2],
                     sorted(g["on_demand_over_ms"])[len(g["on_demand_over_ms"]) // 2] * 1e3,
                     mem["rows"][mem_row][2], mem["rows"][mem_row][3] / 2 ** 20,
                     ", ".join("%.0f min %s" % (s / 60, "(device not recorded)" if d == "not recorded" else "on " + d)
                               for d, s in per_device.items()) if epochs.get("total") else "not recorded",
                     "%.2f s" % structured if kind == "portfolio" else "none"])
    return ("Both kinds in this run (machine: %s). Accuracy is the manifest's (test_batch), smallest level "
            "first; the parameter span counts nonzero weights; latency range is max/min of the steady-state "
            "medians in the switching table; training time is the summed wall time of the epochs that "
            "produced the set, per device its epochs recorded (epochs trained before they recorded "
            "their device say so); the structured step is the "
            "portfolio's BatchNorm folding and all-zero filter removal, summed over its variants.\n\n" % sw["machine"] +
            table(["kind", "levels", "top-1 % per level", "param span x", "latency range x",
                   "switch overhead µs (median level)", "on-demand load µs (median level)",
                   "PSS above baseline MiB", "on disk MiB", "training time", "structured step"], rows))

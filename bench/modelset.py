"""ModelSet performance (issue 2): per level, ``ModelSet.run`` latency against the fastest
onnxruntime setup of that sub-network alone; memory (PSS) of the loaded set against the
k=G sub-network loaded alone; on-disk size against G separately stored models.

Each memory figure comes from a fresh process. Latencies are medians of batch-1 runs;
the ratio column compares two medians taken in the same run.

    python -m bench.modelset [--model DIR] [--runs N]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Dict, List

from .common import in_fresh_process, machine, table

# The fastest standalone setup of one level: its own embedded .onnx, ORT_ENABLE_ALL,
# the default per-session thread pool of all CPUs (shared/notes/onnxruntime.md §1).
_ALONE = r'''
import json, numpy as np, onnxruntime as ort, psutil
from models.evaluate import timings
so = ort.SessionOptions(); so.log_severity_level = 3
s = ort.InferenceSession(%(path)r, so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
t = timings(lambda: s.run(None, {"input": x}), %(runs)d, warmup=50)
print(json.dumps({"p50_ms": float(np.median(t)) * 1e3, "pss_mib": psutil.Process().memory_full_info().pss / 2**20}))
'''

_SET = r'''
import json, numpy as np, psutil
from models import ModelSet
from models.evaluate import timings
ms = ModelSet.load(%(model)r)
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
out = {"pss_mib": psutil.Process().memory_full_info().pss / 2**20, "p50_ms": {}}
for k in range(1, ms.groups + 1):
    out["p50_ms"][k] = float(np.median(timings(lambda: ms.run(k, x), %(runs)d, warmup=50))) * 1e3
print(json.dumps(out))
'''

_BASELINE = r'''
import json, psutil, numpy, onnxruntime
print(json.dumps({"pss_mib": psutil.Process().memory_full_info().pss / 2**20}))
'''


def standalone_models(model_dir: str, out_dir: str) -> List[str]:
    """Each level as a self-contained .onnx with embedded weights (what storing G separate
    models means)."""
    import onnx
    from models import manifest as mf
    m = mf.read(model_dir)
    paths = []
    for lv in m["levels"]:
        model = onnx.load(os.path.join(model_dir, lv["file"]))   # pulls the external data in
        p = os.path.join(out_dir, "alone_%s" % lv["file"])
        onnx.save(model, p)
        paths.append(p)
    return paths


def run(model_dir: str, runs: int = 300) -> Dict:
    with tempfile.TemporaryDirectory() as tmp:
        alone = standalone_models(model_dir, tmp)
        per_k = [in_fresh_process(_ALONE % {"path": p, "runs": runs}) for p in alone]
        the_set = in_fresh_process(_SET % {"model": model_dir, "runs": runs})
        base = in_fresh_process(_BASELINE)
        set_bytes = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir)
                        if f.endswith((".onnx", ".bin")))
        sep_bytes = sum(os.path.getsize(p) for p in alone)
    rows = []
    for k, a in enumerate(per_k, 1):
        s = the_set["p50_ms"][str(k)]   # JSON object keys are strings
        rows.append({"k": k, "alone_ms": a["p50_ms"], "set_ms": s, "ratio": s / a["p50_ms"]})
    return {"rows": rows, "pss_set_mib": the_set["pss_mib"], "pss_alone_G_mib": per_k[-1]["pss_mib"],
            "pss_python_ort_mib": base["pss_mib"], "set_bytes": set_bytes, "separate_bytes": sep_bytes,
            "machine": machine()}


def report(r: Dict) -> str:
    lat = table(["k", "alone p50 ms", "ModelSet.run p50 ms", "ratio (target <= 1.05)"],
                [[x["k"], x["alone_ms"], x["set_ms"], x["ratio"]] for x in r["rows"]])
    mem = table(["what", "PSS MiB", "ratio to k=G alone (target <= 1.10)"], [
        ["python + numpy + onnxruntime imported", r["pss_python_ort_mib"], "-"],
        ["k=G sub-network alone (one session)", r["pss_alone_G_mib"], 1.0],
        ["the whole set loaded (every k)", r["pss_set_mib"], r["pss_set_mib"] / r["pss_alone_G_mib"]],
    ])
    disk = table(["what", "bytes", "ratio"], [
        ["the set (weights.bin + graphs)", r["set_bytes"], 1.0],
        ["G separately stored models", r["separate_bytes"], r["separate_bytes"] / r["set_bytes"]],
    ])
    return "Machine: %s\n\n%s\n\n%s\n\n%s\n" % (r["machine"], lat, mem, disk)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model set (default: the shipped one)")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from models import zoo
    r = run(a.model or zoo.default_path(), a.runs)
    print(json.dumps(r, indent=1) if a.json else report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

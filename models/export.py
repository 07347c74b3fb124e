"""Export a trained group network as a model set (needs the ``train`` extra).

Folds BatchNorm, writes the ONNX set (:mod:`models.onnxset`), measures every level on the
test set with the exported files themselves (``ModelSet``), and writes the manifest with
those numbers, checksums and provenance.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Dict, Optional

from . import evaluate, manifest as mf, onnxset
from .cifar import MEAN, STD
from .modelset import ModelSet
from .network import fold_column, head_arrays


def package_versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "onnx", "onnxruntime", "torch"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except ImportError:
                continue
        out[mod] = str(getattr(m, "__version__", "?"))
    return out


def export_group_set(result: Dict, out_dir: str, cfg, name: Optional[str] = None,
                     command: str = "") -> Dict:
    """``result`` is :meth:`models.train.Trainer.run`'s; returns the written manifest."""
    arch = cfg.arch
    data = result["data"]
    groups = [fold_column(c) for c in result["columns"]]
    heads = [head_arrays(h) for h in result["heads"]]
    files = onnxset.write_group_set(out_dir, arch, groups, heads)
    levels = []
    for k in range(1, len(groups) + 1):
        cost = arch.cost(k)
        levels.append({"level": k, "file": onnxset.level_file(k), "head": result["head_kinds"][k - 1],
                       "accuracy": None, "confidence": None, "macs": cost["macs"], "params": cost["params"],
                       "val_accuracy": round(result["val"][k - 1]["chosen_acc"], 2)})
    m = {
        "format": mf.FORMAT,
        "kind": "group",
        "name": name or os.path.basename(os.path.abspath(out_dir)),
        "shares_weights": True,
        "input": {"name": onnxset.INPUT, "shape": [arch.in_channels, arch.image, arch.image],
                  "layout": "NCHW", "dtype": "float32",
                  "image": {"shape": [arch.image, arch.image, arch.in_channels], "layout": "NHWC",
                            "dtype": "uint8", "scale": "1/255"},
                  "mean": list(MEAN), "std": list(STD), "classes": list(data.classes)},
        "output": {"name": onnxset.OUTPUT, "shape": ["N", arch.classes], "meaning": "logits"},
        "arch": arch.to_dict(),
        "opset": onnxset.OPSET,
        "levels": levels,
        "files": {f: {} for f in files},
        "provenance": {
            "command": command, "seed": cfg.seed, "training": cfg.to_dict(),
            "data_sha256": data.sha256, "packages": package_versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }
    mf.write(out_dir, m)  # checksums first, so ModelSet can verify the files it measures
    ms = ModelSet.load(out_dir)
    for row in evaluate.accuracy_table(ms, data.x_test, data.y_test):
        lv = levels[row["level"] - 1]
        lv["accuracy"], lv["confidence"] = row["accuracy"], row["confidence"]
    m["measured_on"] = "test_batch (%d images)" % len(data.y_test)
    mf.write(out_dir, m)
    return m


def format_table(m: Dict) -> str:
    lines = ["%-5s %8s %10s %9s %9s %7s" % ("k", "top-1 %", "confidence", "MMACs", "params", "head")]
    for lv in m["levels"]:
        lines.append("%-5d %8.2f %10.4f %9.2f %9d %7s" % (lv["level"], lv["accuracy"], lv["confidence"],
                                                        lv["macs"] / 1e6, lv["params"], lv["head"]))
    return "\n".join(lines)

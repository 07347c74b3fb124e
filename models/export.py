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
import time
from typing import Dict, Optional

from . import evaluate, manifest as mf, onnxset
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
    m = _manifest("group", name, out_dir, arch, data, cfg, command, levels, files, shares_weights=True,
                  histories=[v["history"] for v in result["val"]])
    m["columns"] = onnxset.columns_entry(len(groups))
    _measure(out_dir, m, data)
    return m


def export_portfolio(result: Dict, out_dir: str, cfg, name: Optional[str] = None, command: str = "") -> Dict:
    """Structured-prune the chosen sparse models and write them as a portfolio set."""
    import dataclasses
    import numpy as np
    import torch
    from . import prune
    from .network import Column
    from .portfolio import choose_variants
    arch, data = cfg.arch, result["data"]
    os.makedirs(out_dir, exist_ok=True)
    chosen = choose_variants(result["states"], cfg.max_variants)[::-1]   # smallest first
    levels, files = [], []
    probe = torch.from_numpy(np.random.default_rng(0).standard_normal((8, arch.in_channels, arch.image, arch.image))
                             .astype(np.float32))
    for i, st in enumerate(chosen, 1):
        col = Column(arch)
        col.load_state_dict(st["column"])
        col.eval()
        t0 = time.perf_counter()
        folded = fold_column(col)
        small, report = prune.remove_dead(folded, len(arch.widths), arch.final_size)
        structured_s = time.perf_counter() - t0
        w, hidden = prune.widths(small, len(arch.widths))
        varch = dataclasses.replace(arch, widths=tuple(w), hidden=hidden)
        fname = "v%d.onnx" % i
        onnxset.write_dense(os.path.join(out_dir, fname), varch, small)
        files.append(fname)
        with torch.no_grad():
            want = col(probe).numpy()
        params, nonzero = prune.count(small)
        levels.append({"level": i, "file": fname, "accuracy": None, "confidence": None,
                       "macs": varch.cost(1)["macs"], "params": params, "nonzero_params": nonzero,
                       "density": round(st["density"], 4), "compression": round(1 / st["density"], 2),
                       "imp_level": st["level"], "widths": list(w), "hidden": hidden,
                       "removed_channels": {k: len(v["removed"]) for k, v in report.items()},
                       "structured_seconds": round(structured_s, 6),
                       "val_accuracy": round(st["val_acc"], 2), "_check": want})
    m = _manifest("portfolio", name, out_dir, arch, data, cfg, command, levels, files, shares_weights=False,
                  histories=[st["history"] for st in result["states"]])
    checks = [lv.pop("_check") for lv in levels]
    mf.write(out_dir, m)
    ms = ModelSet.load(out_dir)
    for lv, want in zip(levels, checks):   # the structured variant must equal its sparse model
        err = float(np.abs(ms.run(lv["level"], probe.numpy()) - want).max())
        if err > 1e-4:
            raise RuntimeError("variant %d differs from its sparse model by %g: not exporting" % (lv["level"], err))
        lv["max_abs_diff_vs_sparse"] = err
    _measure(out_dir, m, data, ms)
    return m


def _manifest(kind: str, name: Optional[str], out_dir: str, arch, data, cfg, command: str, levels, files,
              shares_weights: bool, histories) -> Dict:
    # Wall time of every training epoch (incl. its validation pass) that produced the set, summed
    # over the phases (groups; or dense + every pruning level); head fitting and export excluded.
    epoch_seconds = [round(sum(e["seconds"] for e in h), 1) for h in histories]
    per_device: Dict[str, float] = {}   # a run can move between devices on --resume
    for e in (e for h in histories for e in h):
        dev = e.get("device", "not recorded")
        per_device[dev] = per_device.get(dev, 0.0) + e["seconds"]
    return {
        "format": mf.FORMAT,
        "kind": kind,
        "name": name or os.path.basename(os.path.abspath(out_dir)),
        "shares_weights": shares_weights,
        "input": {"name": onnxset.INPUT, "shape": [arch.in_channels, arch.image, arch.image],
                  "layout": "NCHW", "dtype": "float32",
                  "image": {"shape": [arch.image, arch.image, arch.in_channels], "layout": "NHWC",
                            "dtype": "uint8", "scale": "1/255"},
                  "mean": list(data.mean), "std": list(data.std), "classes": list(data.classes)},
        "output": {"name": onnxset.OUTPUT, "shape": ["N", arch.classes], "meaning": "logits"},
        "arch": arch.to_dict(),
        "opset": onnxset.OPSET,
        "levels": levels,
        "files": {f: {} for f in files},
        "provenance": {
            "command": command, "seed": cfg.seed, "training": cfg.to_dict(),
            "training_epoch_seconds": {"per_phase": epoch_seconds, "total": round(sum(epoch_seconds), 1),
                                       "per_device": {d: round(s, 1) for d, s in per_device.items()}},
            "data_sha256": data.sha256, "packages": package_versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def _measure(out_dir: str, m: Dict, data, ms: Optional[ModelSet] = None) -> None:
    """Accuracy and confidence per level, measured on the test set with the written files
    (checksums are written first, so ModelSet verifies the files it measures)."""
    if ms is None:
        mf.write(out_dir, m)
        ms = ModelSet.load(out_dir)
    for row in evaluate.accuracy_table(ms, data.x_test, data.y_test):
        lv = m["levels"][row["level"] - 1]
        lv["accuracy"], lv["confidence"] = row["accuracy"], row["confidence"]
    m["measured_on"] = "%s (%d images)" % ("test_batch" if getattr(data, "layout", "cifar") == "cifar"
                                          else "the test split", len(data.y_test))
    mf.write(out_dir, m)


def format_table(m: Dict) -> str:
    extra = "head" if m["kind"] == "group" else "compression"
    lines = ["%-5s %8s %10s %9s %9s %11s" % ("level", "top-1 %", "confidence", "MMACs", "params", extra)]
    for lv in m["levels"]:
        x = lv["head"] if m["kind"] == "group" else "%.1fx" % lv["compression"]
        lines.append("%-5d %8.2f %10.4f %9.2f %9d %11s" % (lv["level"], lv["accuracy"], lv["confidence"],
                                                          lv["macs"] / 1e6, lv["params"], x))
    return "\n".join(lines)

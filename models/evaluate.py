"""Evaluate a model set per level: top-1, confidence, MACs, params, latency (no torch)."""
from __future__ import annotations

import time
from typing import Dict, List, Optional

import numpy as np

from . import datasets
from .modelset import ModelSet, softmax


def accuracy_table(ms: ModelSet, x_u8: np.ndarray, y: np.ndarray, batch: int = 500) -> List[Dict]:
    """Per level: top-1 (%) and the seed paper's confidence: the summed softmax probability
    of the true class, normalised to the largest level's (so the largest level is 1.0)."""
    rows, true_prob = [], []
    for k in range(1, ms.groups + 1):
        correct, p_true = 0, 0.0
        for i in range(0, len(y), batch):
            logits = ms.run(k, ms.preprocess(x_u8[i:i + batch]))
            yy = y[i:i + batch]
            correct += int((logits.argmax(1) == yy).sum())
            p_true += float(softmax(logits)[np.arange(len(yy)), yy].sum())
        rows.append({"level": k, "accuracy": round(100.0 * correct / len(y), 2)})
        true_prob.append(p_true)
    for r, p in zip(rows, true_prob):
        r["confidence"] = round(p / true_prob[-1], 4)
    return rows


def timings(fn, runs: int, warmup: int = 20) -> List[float]:
    """Wall times (s) of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def latency_ms(ms: ModelSet, k: int, runs: int = 200, warmup: int = 20, target=None) -> float:
    """Median wall time of batch-1 ``ModelSet.run`` at level k, in ms."""
    x = np.random.default_rng(0).standard_normal((1,) + ms.input_shape).astype(np.float32)
    return float(np.median(timings(lambda: ms.run(k, x, target), runs, warmup)) * 1e3)


def evaluate(model_dir: str, data_dir: str, threads: Optional[int] = None,
             limit: Optional[int] = None, latency_runs: int = 200) -> List[Dict]:
    ms = ModelSet.load(model_dir, threads=threads)
    c, h, _ = ms.input_shape
    data = datasets.load(data_dir, train=False, image=h, channels=c)
    if len(data.classes) != len(ms.classes):
        raise datasets.DataError("%s has %d classes, the model set %d" % (data_dir, len(data.classes), len(ms.classes)))
    x, y = data.x_test[:limit], data.y_test[:limit]
    rows = accuracy_table(ms, x, y)
    for r in rows:
        lv = ms.level(r["level"])
        r["macs"], r["params"] = lv["macs"], lv["params"]
        r["manifest_accuracy"] = lv.get("accuracy")
        r["latency_ms"] = round(latency_ms(ms, r["level"], runs=latency_runs), 3) if latency_runs else None
    return rows


def format_rows(rows: List[Dict]) -> str:
    head = "%-5s %9s %10s %9s %9s %11s" % ("level", "top-1 %", "confidence", "MMACs", "params", "latency ms")
    lines = [head, "-" * len(head)]
    for r in rows:
        lat = "-" if r.get("latency_ms") is None else "%.3f" % r["latency_ms"]
        lines.append("%-5d %9.2f %10.4f %9.2f %9d %11s" % (r["level"], r["accuracy"], r["confidence"],
                                                          r["macs"] / 1e6, r["params"], lat))
    return "\n".join(lines)

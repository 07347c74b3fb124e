"""Structured removal of all-zero filters (numpy only): DNNShifter's step from a sparse
model to a smaller dense one with exactly the same outputs.

Input: one folded dense network (``models.network.fold_column`` layout: ``conv{i}.w``
[out, in, k, k], ``conv{i}.b``, ``fc1.w`` [hidden, C*s*s], ``fc1.b``, ``fc2.w``, ``fc2.b``).
A conv filter is *dead* when its weights and its (BN-folded) bias are all zero: its output
is exactly 0 after ReLU, and after max-pool, so removing it, and the matching input
channels of the next layer (or the FC1 inputs it feeds), changes no output, padding
included. FC1 neurons with zero weights and bias are dead the same way. The classifier's
outputs (FC2 rows) are never removed.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np


def dead_filters(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean mask of output channels whose weights and bias are all exactly zero."""
    return np.all(w.reshape(len(w), -1) == 0, axis=1) & (b == 0)


def remove_dead(t: Dict[str, np.ndarray], n_conv: int, spatial: int) -> Tuple[Dict[str, np.ndarray], Dict]:
    """Return the smaller dense tensors and a report: per layer the kept and removed
    channel indices (in the original numbering)."""
    out = {k: v.copy() for k, v in t.items()}
    report: Dict[str, Dict[str, List[int]]] = {}
    keep_in = None
    for i in range(n_conv):
        w, b = out["conv%d.w" % i], out["conv%d.b" % i]
        if keep_in is not None:
            w = w[:, keep_in]
        dead = dead_filters(w, b)
        if dead.all():   # keep one filter so the network stays a network (its output is 0)
            dead[0] = False
        keep = np.flatnonzero(~dead)
        report["conv%d" % i] = {"kept": keep.tolist(), "removed": np.flatnonzero(dead).tolist()}
        out["conv%d.w" % i], out["conv%d.b" % i] = w[keep], b[keep]
        keep_in = keep
    # FC1 sees the last conv's channels, each as s*s consecutive inputs (C, H, W order).
    cols = (keep_in[:, None] * spatial * spatial + np.arange(spatial * spatial)).reshape(-1)
    w1 = out["fc1.w"][:, cols]
    dead = np.all(w1 == 0, axis=1) & (out["fc1.b"] == 0)
    if dead.all():
        dead[0] = False
    keep = np.flatnonzero(~dead)
    report["fc1"] = {"kept": keep.tolist(), "removed": np.flatnonzero(dead).tolist()}
    out["fc1.w"], out["fc1.b"] = w1[keep], out["fc1.b"][keep]
    out["fc2.w"] = out["fc2.w"][:, keep]
    return out, report


def widths(t: Dict[str, np.ndarray], n_conv: int) -> Tuple[List[int], int]:
    return [int(t["conv%d.w" % i].shape[0]) for i in range(n_conv)], int(t["fc1.w"].shape[0])


def count(t: Dict[str, np.ndarray]) -> Tuple[int, int]:
    """(parameters, non-zero parameters)."""
    return sum(v.size for v in t.values()), sum(int(np.count_nonzero(v)) for v in t.values())

"""The grouped network in torch (needs the ``train`` extra).

A :class:`Column` is one group of every layer. The k-group network is ``columns[:k]`` and
``heads[k-1]``; :class:`GroupedNet` wires them for training-time evaluation and tests.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .arch import Arch


class Column(nn.Module):
    """Group ``group`` (1-based) of every layer of ``arch``; ``self.arch`` is that group alone."""

    def __init__(self, arch: Arch, group: int = 1):
        super().__init__()
        self.arch = arch = arch.group(group)
        convs, bns = [], []
        cin = arch.in_channels
        for w, k in zip(arch.widths, arch.kernels):
            convs.append(nn.Conv2d(cin, w, k, padding=k // 2, bias=False))
            bns.append(nn.BatchNorm2d(w))
            cin = w
        self.convs = nn.ModuleList(convs)
        self.bns = nn.ModuleList(bns)
        self.fc1 = nn.Linear(arch.flat, arch.hidden)
        self.fc2 = nn.Linear(arch.hidden, arch.classes)  # the group's own classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn, pool in zip(self.convs, self.bns, self.arch.pools):
            x = F.relu(bn(conv(x)))
            if pool:
                x = F.max_pool2d(x, 3, 2, 1)
        return F.relu(self.fc1(torch.flatten(x, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def mean_head(columns: Sequence[Column]) -> nn.Linear:
    """The head that averages the columns' own logits, as one Linear over their features."""
    k = len(columns)
    head = nn.Linear(sum(c.arch.hidden for c in columns), columns[0].arch.classes,
                     device=columns[0].fc2.weight.device)
    with torch.no_grad():
        head.weight.copy_(torch.cat([c.fc2.weight for c in columns], dim=1) / k)
        head.bias.copy_(torch.stack([c.fc2.bias for c in columns]).mean(0))
    return head


class GroupedNet(nn.Module):
    """The k-group network: k columns and the head over their concatenated features."""

    def __init__(self, columns: Sequence[Column], head: nn.Linear):
        super().__init__()
        self.columns = nn.ModuleList(columns)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([c.features(x) for c in self.columns], dim=1))


def fold_column(col: Column) -> Dict[str, np.ndarray]:
    """Fold BatchNorm (eval statistics) into the convs; return float32 numpy tensors.

    Keys: ``conv{i}.w`` [out, in, kh, kw], ``conv{i}.b``, ``fc1.w`` [hidden, flat],
    ``fc1.b``, ``fc2.w`` [classes, hidden], ``fc2.b``.
    """
    out: Dict[str, np.ndarray] = {}
    with torch.no_grad():
        for i, (conv, bn) in enumerate(zip(col.convs, col.bns)):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            out["conv%d.w" % i] = (conv.weight * scale[:, None, None, None]).numpy()
            out["conv%d.b" % i] = (bn.bias - bn.running_mean * scale).numpy()
        for name in ("fc1", "fc2"):
            lin = getattr(col, name)
            out[name + ".w"] = lin.weight.detach().numpy()
            out[name + ".b"] = lin.bias.detach().numpy()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def head_arrays(head: nn.Linear) -> Dict[str, np.ndarray]:
    return {"w": head.weight.detach().numpy().astype(np.float32).copy(),
            "b": head.bias.detach().numpy().astype(np.float32).copy()}


def state_equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    """Bit-identical comparison of two state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def columns_from_states(arch: Arch, states: List[Dict[str, torch.Tensor]]) -> List[Column]:
    cols = []
    for g, st in enumerate(states, 1):
        c = Column(arch, g)
        c.load_state_dict(st)
        c.eval()
        cols.append(c)
    return cols

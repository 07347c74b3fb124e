"""The grouped AlexNet-style architecture as plain data (no torch, no onnx).

One *group* (column) is: conv-BN-ReLU layers (max-pool 3/2/1 after some), then
FC ``flat -> hidden`` + ReLU (the group's features). Group g of every layer sees only
group g of the layer before; the first conv sees the image. The k-group network is the
first k columns plus a head of its own, a Linear ``hidden*k -> classes`` over the
concatenated features (stored once per k). Every per-group tensor of the k-network is an
out-channel prefix of the G-network's, which is what lets one copy of the weights serve
every k.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Dict, Tuple


@dataclass(frozen=True)
class Arch:
    widths: Tuple[int, ...] = (16, 48, 96, 64, 64)   # conv output channels per group
    kernels: Tuple[int, ...] = (5, 5, 3, 3, 3)
    pools: Tuple[bool, ...] = (True, True, False, False, True)
    hidden: int = 128
    classes: int = 10
    image: int = 32
    in_channels: int = 3

    def __post_init__(self):
        if not (len(self.widths) == len(self.kernels) == len(self.pools)) or not self.widths:
            raise ValueError("widths, kernels and pools must have the same non-zero length")
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError("kernels must be odd (same padding)")

    @property
    def final_size(self) -> int:
        s = self.image
        for p in self.pools:
            if p:
                s = (s + 2 * 1 - 3) // 2 + 1
        return s

    @property
    def flat(self) -> int:
        return self.widths[-1] * self.final_size ** 2

    def to_dict(self) -> Dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Dict) -> "Arch":
        known = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()})

    def scaled(self, mult: float) -> "Arch":
        """The same network with every conv width and the hidden layer times ``mult``."""
        if not mult > 0:
            raise ValueError("width multiplier must be > 0, got %r" % mult)
        return replace(self, widths=tuple(max(1, round(w * mult)) for w in self.widths),
                       hidden=max(1, round(self.hidden * mult)))

    def cost(self, k: int) -> Dict[str, int]:
        """MACs per image and parameters of the k-group network (BN folded into the convs)."""
        macs = params = 0
        s, cin = self.image, self.in_channels
        for i, (w, ks, p) in enumerate(zip(self.widths, self.kernels, self.pools)):
            per_group_in = cin if i == 0 else self.widths[i - 1]
            macs += k * w * s * s * per_group_in * ks * ks
            params += k * (w * per_group_in * ks * ks + w)
            if p:
                s = (s + 2 - 3) // 2 + 1
        macs += k * self.flat * self.hidden
        params += k * (self.flat * self.hidden + self.hidden)
        macs += self.hidden * k * self.classes
        params += self.hidden * k * self.classes + self.classes
        return {"macs": macs, "params": params}


TINY = Arch(widths=(4, 8, 8, 8, 8), hidden=16)  # for tests: trains in seconds

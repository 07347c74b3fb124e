"""The grouped AlexNet-style architecture as plain data (no torch, no onnx).

One *group* (column) is: conv-BN-ReLU layers (max-pool 3/2/1 after some), then
FC ``flat -> hidden`` + ReLU (the group's features). Group g of every layer sees only
group g of the layer before; the first conv sees the image. The k-group network is the
first k columns plus a head of its own, a Linear over the k columns' concatenated features
(stored once per k). No tensor of a column depends on k, which is what lets one copy of
the weights serve every k.

``group_widths`` makes the columns unequal: group g's conv widths and hidden layer are
``widths`` and ``hidden`` times ``group_widths[g-1]`` (empty: every group the same), so
the later groups are the larger, stronger members and k=1 the cheapest network.
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
    group_widths: Tuple[float, ...] = ()   # per-group width multipliers; () = equal groups

    def __post_init__(self):
        if not (len(self.widths) == len(self.kernels) == len(self.pools)) or not self.widths:
            raise ValueError("widths, kernels and pools must have the same non-zero length")
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError("kernels must be odd (same padding)")
        if any(not m > 0 for m in self.group_widths):
            raise ValueError("group widths must be > 0, got %s" % ",".join(map(str, self.group_widths)))

    @property
    def equal_groups(self) -> bool:
        """Every group has the same widths (then each is ``group(1)``)."""
        return len(set(self.group_widths)) <= 1

    def group(self, g: int) -> "Arch":
        """Group g (1-based) alone: a one-column network of its own widths."""
        if not self.group_widths:
            return self
        if not 1 <= g <= len(self.group_widths):
            raise ValueError("group %d: the network has %d groups" % (g, len(self.group_widths)))
        return replace(self, group_widths=()).scaled(self.group_widths[g - 1])

    def features(self, k: int) -> int:
        """Width of the k-group network's concatenated features (its head's input)."""
        return sum(self.group(g).hidden for g in range(1, k + 1))

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
        for a in (self.group(g) for g in range(1, k + 1)):
            s, cin = a.image, a.in_channels
            for w, ks, p in zip(a.widths, a.kernels, a.pools):
                macs += w * s * s * cin * ks * ks
                params += w * cin * ks * ks + w
                s, cin = ((s + 2 - 3) // 2 + 1 if p else s), w
            macs += a.flat * a.hidden
            params += a.flat * a.hidden + a.hidden
        macs += self.features(k) * self.classes
        params += self.features(k) * self.classes + self.classes
        return {"macs": macs, "params": params}


TINY = Arch(widths=(4, 8, 8, 8, 8), hidden=16)  # for tests: trains in seconds

"""The configuration space: every (level, target, frequency) the platform and model offer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Config:
    level: int                 # k groups (or a portfolio variant), 1..levels
    target: str
    freq_khz: Optional[int]    # None where the target has no frequency control

    def to_dict(self) -> Dict:
        return {"groups": self.level, "target": self.target, "freq_khz": self.freq_khz}


@dataclass(frozen=True)
class Level:
    level: int
    accuracy: float            # top-1 %, from the model manifest
    macs: int


def build_space(levels: Sequence[Level], targets: Dict[str, Sequence[int]],
                min_level: Optional[Dict[str, int]] = None) -> List[Config]:
    """``targets``: name → available frequencies in kHz (empty: not controllable);
    ``min_level``: a target's lowest level (a split of n lanes needs n columns)."""
    out: List[Config] = []
    low = min_level or {}
    for lv in levels:
        for name, freqs in targets.items():
            if lv.level < low.get(name, 1):
                continue
            for f in (sorted(freqs) or [None]):
                out.append(Config(lv.level, name, f))
    return out


def levels_from_manifest(manifest: Dict) -> List[Level]:
    return [Level(int(l["level"]), float(l.get("accuracy") or 0.0), int(l["macs"]))
            for l in manifest["levels"]]


def subset(space: Iterable[Config], level: Optional[int] = None, target: Optional[str] = None,
           freq_khz: Optional[int] = None) -> List[Config]:
    return [c for c in space if (level is None or c.level == level) and
            (target is None or c.target == target) and (freq_khz is None or c.freq_khz == freq_khz)]


def column_macs(levels: Sequence[Level]) -> List[int]:
    """Each group column's MACs: what level k adds to level k-1 (its head's few included)."""
    out, prev = [], 0
    for lv in sorted(levels, key=lambda l: l.level):
        out.append(lv.macs - prev)
        prev = lv.macs
    return out


def cut_columns(col_macs: Sequence[float], costs: Sequence[Tuple[float, float]]) -> List[Tuple[int, int]]:
    """Columns 1..len(col_macs) as consecutive ranges, one per lane (each at least one
    column), that finish as close together as the columns allow: the ranges whose slowest
    lane's predicted time (``a`` x MACs + ``b``, a lane's ``costs``) is least. Equal lanes
    get equal MACs; a lane twice as fast gets about twice the work."""
    k, n = len(col_macs), len(costs)
    if n > k:
        raise ValueError("%d lanes need at least %d columns, got %d" % (n, n, k))
    best: Optional[Tuple[float, List[Tuple[int, int]]]] = None

    def walk(first: int, lane: int, ranges: List[Tuple[int, int]], worst: float) -> None:
        nonlocal best
        if lane == n - 1:
            a, b = costs[lane]
            t = max(worst, a * sum(col_macs[first - 1:]) + b)
            if best is None or t < best[0] - 1e-15:
                best = (t, ranges + [(first, k)])
            return
        for last in range(first, k - (n - 1 - lane) + 1):
            a, b = costs[lane]
            walk(last + 1, lane + 1, ranges + [(first, last)], max(worst, a * sum(col_macs[first - 1:last]) + b))
    walk(1, 0, [], 0.0)
    return best[1]


def split_macs(col_macs: Sequence[float], cuts: Sequence[Tuple[int, int]]) -> List[float]:
    """The MACs each lane of a split runs."""
    return [float(sum(col_macs[a - 1:b])) for a, b in cuts]

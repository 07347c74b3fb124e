"""How the daemon runs a split target: one inference's group columns at once on the split's
lanes (models/columns.py), the columns each lane runs chosen from the profile so that the
lanes finish together (governor.cut_columns)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from governor import Level, Profile, column_macs, split_cuts, split_macs
from models import ModelSet
from platforms import Platform


class Columns:
    """The splits of one runtime: per split target its lanes, and per level the column
    ranges each lane runs (``cuts[target][k]``)."""

    def __init__(self, models: ModelSet, platform: Platform, splits: Sequence[str], levels: List[Level],
                 profile: Optional[Profile], cpus: Set[int], threads: Optional[int] = None):
        self.models, self.platform = models, platform
        self.col_macs = column_macs(levels)
        self.lanes: Dict[str, List] = {}
        self.cuts: Dict[str, Dict[int, List[Tuple[int, int]]]] = {}
        for name in splits:
            parts = platform.lanes_of(name)
            lanes = []
            for lane, host, kind in parts:
                use = sorted(set(host) & cpus)
                n = len(use) or max(1, len(cpus) // len(parts))
                lanes.append(models.lane(lane, use, min(n, threads) if threads else n,
                                         gpu=kind == "gpu" and platform.host_gpu()))
            self.lanes[name] = lanes
            # each lane at its top frequency (as fitted, where DVFS is off)
            on = platform.dvfs_on(name)
            self.cuts[name] = split_cuts(profile, self.col_macs, [
                (p.name, max(p.freqs_khz) if p.freqs_khz and on else None) for p in platform.targets[name].parts])

    def run(self, k: int, x: np.ndarray, target: str) -> np.ndarray:
        return self.models.run_split(k, x, self.cuts[target][k], self.lanes[target])

    def part_macs(self, k: int, target: str) -> List[float]:
        return split_macs(self.col_macs, self.cuts[target][k])

    def repin(self, target: str) -> None:
        """After the process was pinned to the split's CPUs as a whole: each lane's threads
        to its own (the calling thread runs the first lane)."""
        for i, lane in enumerate(self.lanes[target]):
            lane.repin(caller=i == 0)
        self.platform.pin_lost()

    def warm(self) -> None:
        """Create and run every session the cuts use, so no request pays for one."""
        x = self.models.blank()
        for name, by_k in self.cuts.items():
            for k in by_k:
                self.run(k, x, name)

    def describe(self, target: str, k: int) -> List[Dict]:
        """The lanes of ``target`` at level k, as replies and status name them."""
        return [{"lane": lane.name, "columns": [a, b]} for lane, (a, b) in zip(self.lanes[target], self.cuts[target][k])]

    def to_dict(self) -> Dict:
        return {name: {"lanes": [{"name": l.name, "cpus": l.cpus, "threads": l.threads} for l in lanes],
                       "columns": {str(k): [list(c) for c in cuts] for k, cuts in self.cuts[name].items()}}
                for name, lanes in self.lanes.items()}

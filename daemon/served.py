"""One model set the daemon serves: its runtime (daemon/runtime.py), what it has served and
counted, and where its budget and profile are kept. A daemon serves one or several."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from .config import ModelEntry
from .metrics import Counters
from .runtime import Runtime

BUDGET_FILE = "budget.json"


def file_name(rank: int, name: str) -> Optional[str]:
    """What a set's state files are named by: None for the default set (rank 0: its files
    keep the one-set names), else its name."""
    return None if rank == 0 else name


class AnytimeStats:
    """What anytime requests at one ``stop_at`` did: how many images stopped at each level,
    and the share of the decided level's MACs they ran (``work``, a moving average from 1:
    the governor decides for ``limit / work``, so that the mean meets the budget)."""

    def __init__(self) -> None:
        self.runs = self.images = 0
        self.groups: Dict[int, int] = {}
        self.work = 1.0

    def observe(self, stopped: np.ndarray, k_max: int, levels) -> None:
        macs = {l.level: l.macs for l in levels}
        for g in stopped.tolist():
            self.groups[int(g)] = self.groups.get(int(g), 0) + 1
        frac = float(np.mean([macs[int(g)] for g in stopped])) / macs[k_max]
        self.work = 0.8 * self.work + 0.2 * frac
        self.runs += 1
        self.images += len(stopped)

    def to_dict(self) -> Dict:
        return {"runs": self.runs, "images": self.images, "groups": {str(k): n for k, n in sorted(self.groups.items())},
                "work": round(self.work, 4)}


@dataclass
class Served:
    name: str
    entry: ModelEntry
    rank: int                       # 0: the default set, and the first to keep its budget (governor/board.py)
    rt: Runtime
    profile_key: Dict
    counters: Counters = field(default_factory=Counters)
    anytime: Dict[Optional[float], AnytimeStats] = field(default_factory=dict)   # per stop_at
    served: int = 0

    @property
    def file_name(self) -> Optional[str]:
        return file_name(self.rank, self.name)

    def budget_path(self, state_dir: str) -> str:
        n = self.file_name
        return os.path.join(state_dir, BUDGET_FILE if n is None else "budget-%s.json" % n)

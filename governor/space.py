"""The configuration space: every (level, target, frequency) the platform and model offer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence


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


def build_space(levels: Sequence[Level], targets: Dict[str, Sequence[int]]) -> List[Config]:
    """``targets``: name → available frequencies in kHz (empty: not controllable)."""
    out: List[Config] = []
    for lv in levels:
        for name, freqs in targets.items():
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

"""Plain data the platform layer hands out: what a board is, as discovered."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass(frozen=True)
class BoardSpec:
    """What tells one board from another: identification and naming rules, no code."""
    name: str
    compatible: Tuple[str, ...] = ()            # device-tree compatible strings (any one matches)
    hardware: Tuple[str, ...] = ()              # /proc/cpuinfo "Hardware" values
    cluster_names: Dict[str, str] = field(default_factory=dict)   # CPU part → target name
    gpu_devfreq: Tuple[str, ...] = ()           # substrings of the GPU devfreq's parent device
    gpu_is_target: bool = False                 # can onnxruntime run on it (CUDA EP)?
    ina3221_channels: Dict[int, str] = field(default_factory=dict)  # channel → rail name
    ina231_addresses: Dict[int, str] = field(default_factory=dict)  # I2C address → rail (mainline hwmon)
    energy_rails: Tuple[str, ...] = ()          # rails whose sum is "the energy of an inference"
    thread_mapping: bool = False                # expose cpu:1..cpu:N-1 as mapping choices
    thermal_types: Tuple[str, ...] = ()         # zones worth reporting first (all are read)
    notes: str = ""


@dataclass
class Target:
    name: str
    kind: str                                   # "cpu" or "gpu"
    cpus: List[int] = field(default_factory=list)
    freqs_khz: List[int] = field(default_factory=list)
    control: List[str] = field(default_factory=list)   # cpufreq policy dirs, or the devfreq dir
    method: str = "none"                        # "userspace", "minmax" or "none"
    offline: List[int] = field(default_factory=list)   # of ``cpus``, those offline at discovery

    @property
    def online(self) -> List[int]:
        return [c for c in self.cpus if c not in self.offline]

    def to_dict(self) -> Dict:
        return asdict(self)


@dataclass
class Rail:
    name: str
    kind: str                                   # "ina231" (W), "ina3221" (mW), "hwmon" (µW), "rapl" (µJ counter)
    path: str                                   # the file read for power or energy
    enable: Optional[str] = None                # INA231: must hold 1 for readings
    period_s: float = 0.0                       # sensor refresh period (0: reads are fresh)


@dataclass
class Description:
    platform: str
    simulated: bool
    targets: Dict[str, Target]
    rails: List[Rail]
    thermal: Dict[str, str]                     # zone type → temp file
    gpu: Optional[Target] = None                # the GPU devfreq, target or not
    warnings: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict:
        return {"platform": self.platform, "simulated": self.simulated,
                "targets": {n: t.to_dict() for n, t in self.targets.items()},
                "gpu": self.gpu.to_dict() if self.gpu else None,
                "rails": [asdict(r) for r in self.rails], "thermal": dict(self.thermal),
                "warnings": list(self.warnings)}

"""Plain data the platform layer hands out (what a board is, as discovered), and the
interface every board implements, real or simulated (``Platform``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple


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


class DvfsOff(NamedTuple):
    """Why frequency control is off. ``cause`` is one of :data:`DVFS_CAUSES`; only a
    ``failed`` write is worth trying again (on reload): the others hold until the
    configuration, the user's rights or the crash record change, which a restart sees."""
    cause: str
    reason: str


DVFS_CAUSES = ("config", "access", "record", "failed")


class Platform:
    """What the daemon may use of a board, real (:class:`platforms.adapter.SysfsPlatform`)
    or simulated (:class:`platforms.sim.SimBoard`): one interface, so that nothing above
    this room asks which kind it has. ``simulated`` is a label for output, not a switch."""

    name: str
    simulated = False
    targets: Dict[str, Target]
    energy_reason = ""

    def __init__(self) -> None:
        self.dvfs_off: Optional[DvfsOff] = None          # the whole board's
        self.target_off: Dict[str, DvfsOff] = {}          # one target's (its cluster gone, its files refused)

    # -- frequency control: per target, on or off with a typed cause ----------------------
    def has_dvfs(self) -> bool:
        """Whether the board has frequency control at all (whatever turned it off)."""
        return any(t.freqs_khz and t.control for t in self.targets.values())

    def dvfs_on(self, target: str) -> bool:
        t = self.targets.get(target)
        return (self.dvfs_off is None and target not in self.target_off
                and t is not None and bool(t.freqs_khz and t.control))

    @property
    def dvfs_enabled(self) -> bool:
        """Whether any target's frequency can be set."""
        return any(self.dvfs_on(t) for t in self.targets)

    @property
    def dvfs_reason(self) -> str:
        if self.dvfs_off is not None:
            return self.dvfs_off.reason
        if self.target_off and not self.dvfs_enabled:
            return "; ".join("%s: %s" % (t, o.reason) for t, o in sorted(self.target_off.items()))
        return "" if self.has_dvfs() else "no frequency control found (no cpufreq/devfreq)"

    def dvfs_reason_for(self, target: str) -> str:
        if self.dvfs_off is not None:
            return self.dvfs_off.reason
        off = self.target_off.get(target)
        return off.reason if off else ("" if self.dvfs_on(target) else "the target has no frequency control")

    def disable_dvfs(self, cause: str, reason: str, target: Optional[str] = None) -> None:
        """Frequency control off for ``target`` (its other targets keep theirs), or for the
        whole board where no target is named."""
        if cause not in DVFS_CAUSES:
            raise ValueError("unknown cause %r" % cause)
        if target is None:
            self.dvfs_off = DvfsOff(cause, reason)
        else:
            self.target_off[target] = DvfsOff(cause, reason)

    def retry_dvfs(self, target: Optional[str] = None) -> bool:
        """Turn frequency control back on where a failed write turned it off (the board's and
        every target's, or ``target``'s only); whether anything came back."""
        back = False
        if target is None and self.dvfs_off is not None and self.dvfs_off.cause == "failed":
            self.dvfs_off, back = None, True
        for t in [t for t, o in self.target_off.items() if o.cause == "failed" and target in (None, t)]:
            del self.target_off[t]
            back = True
        return back

    # -- what runs where on this machine --------------------------------------------------
    def host_cpus(self, target: str) -> List[int]:
        """The CPUs of this machine that ``target``'s onnxruntime threads run on ([] where
        the target is not a set of this machine's CPUs: a GPU, a simulated board)."""
        return []

    def host_gpu(self) -> bool:
        """Whether the ``gpu`` target is this machine's GPU (onnxruntime may run there)."""
        return False

    def board_model(self, macs: float, target: str, noise: bool = True) -> Optional[Tuple[float, float]]:
        """A simulated board's (latency s, energy J) of work of ``macs`` on ``target`` at its
        frequency now; None where the run on this machine is the measurement."""
        return None

    # -- energy ---------------------------------------------------------------------------
    @property
    def energy_available(self) -> bool:
        return False

    # How long after a frequency change power reads belong to the new frequency (s).
    settle_s = 0.0

    @property
    def energy_degraded(self) -> str:
        """Why energy reads fail right now (a transient sensor error the meter retries), or ""."""
        return ""

    def joules(self) -> Optional[float]:
        """The energy counter now (J), None where nothing meters energy."""
        return None

    def energy_between(self, j0: float, j1: float) -> float:
        """mJ between two :meth:`joules` reads."""
        return (j1 - j0) * 1e3

    # -- lifecycle (a simulated board has nothing to own, restore or switch on) -----------
    def claim(self, doing: str) -> None:
        pass

    def release(self) -> None:
        pass

    def restore_pending(self) -> List[str]:
        return []

    def start(self) -> List[str]:
        return []

    def reset(self) -> List[str]:
        return []

    def stop(self) -> List[str]:
        return []

    # -- control and readings: each board's own ------------------------------------------
    def pin(self, target: str) -> List[int]:
        raise NotImplementedError

    def set_frequency(self, target: str, khz: int) -> int:
        raise NotImplementedError

    def frequency(self, target: str) -> int:
        raise NotImplementedError

    def temperatures(self) -> Dict[str, float]:
        raise NotImplementedError

    def access(self) -> Dict:
        raise NotImplementedError

    def describe(self) -> Dict:
        raise NotImplementedError

"""Plain data the platform layer hands out (what a board is, as discovered), and the
interface every board implements, real or simulated (``Platform``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

from .sysfs import PlatformError


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
    parts: List["Target"] = field(default_factory=list)  # a split's lanes, in column order
    settle_s: float = 0.0                       # a frequency change's time to take effect (0: unknown)

    @property
    def online(self) -> List[int]:
        return [c for c in self.cpus if c not in self.offline]

    @property
    def is_split(self) -> bool:
        return bool(self.parts)

    @property
    def processors(self) -> List:
        """What the target runs on, to tell which targets share hardware: its CPUs (numbers)
        and a GPU (by name); a split, its parts' too."""
        own = list(self.cpus) + ([self.name] if self.kind == "gpu" else [])
        for p in self.parts:
            own += [x for x in p.processors if x not in own]
        return own

    def to_dict(self) -> Dict:
        return asdict(self)


def split(parts: List[Target]) -> Target:
    """The split over ``parts``: one inference's group columns run at once, the first
    columns on the first part (docs/model-set.md, "Columns"). Named by its parts joined with
    ``+``. Its frequencies are one ladder, the table of the part with the most steps (the
    lead); each other part runs at the same fraction of its own table
    (:func:`part_frequencies`): the clusters move together, each at a frequency of its own."""
    ctl = [p for p in parts if p.freqs_khz and p.control]
    lead = max(ctl, key=lambda p: len(p.freqs_khz)) if ctl else None
    return Target("+".join(p.name for p in parts), "split", sorted({c for p in parts for c in p.cpus}),
                  list(lead.freqs_khz) if lead else [], [d for p in ctl for d in p.control],
                  "split" if lead else "none", sorted({c for p in parts for c in p.offline}), list(parts),
                  max((p.settle_s for p in parts), default=0.0))


def part_frequencies(t: Target, khz: int) -> List[Optional[int]]:
    """A split's frequency (a step of its ladder) → each part's (None: no control)."""
    i = t.freqs_khz.index(khz)
    frac = i / max(1, len(t.freqs_khz) - 1)
    return [p.freqs_khz[int(round(frac * (len(p.freqs_khz) - 1)))] if p.freqs_khz and p.control else None
            for p in t.parts]


def governor_facts(targets: Dict[str, Target]) -> Dict[str, Dict]:
    """What a board tells its governor about its targets (``Governor``'s keyword arguments):
    each one's DVFS settle time and what it runs on."""
    return {"settle_s": {n: t.settle_s for n, t in targets.items()},
            "processors": {n: t.processors for n, t in targets.items()}}


def clock_table(targets: Dict[str, Target]) -> Dict[str, Dict[int, Dict[str, int]]]:
    """target → {its frequency step (kHz) → {clock (its control dir) → kHz}}: which clocks a
    target's frequency sets, and to what (a split's parts each at its own,
    :func:`part_frequencies`). Two targets share a clock where they share a control dir: a
    cluster and a split over it, or ``cpu`` and ``cpu:1`` of one policy. Targets without
    frequency control are left out."""
    out: Dict[str, Dict[int, Dict[str, int]]] = {}
    for name, t in targets.items():
        if not t.freqs_khz or not t.control:
            continue
        if t.parts:
            out[name] = {f: {p.control[0]: k for p, k in zip(t.parts, part_frequencies(t, f))
                             if k is not None and p.control} for f in t.freqs_khz}
        else:
            out[name] = {f: {d: f for d in t.control} for f in t.freqs_khz}
    return out


def with_splits(targets: Dict[str, Target], lanes: Optional[List[Target]] = None) -> Dict[str, Target]:
    """``targets`` and the split over their processors, last: the CPU clusters (fastest table
    first) and a GPU target; or, on a machine of one cluster, ``lanes`` (the halves of its
    CPUs). Nothing to split where there is one processor."""
    if lanes is None:
        cpu = [t for t in targets.values() if t.kind == "cpu" and not t.name.startswith("cpu:")]
        cpu.sort(key=lambda t: (-max(t.freqs_khz, default=0), min(t.cpus, default=0)))
        lanes = cpu + [t for t in targets.values() if t.kind == "gpu"]
    if len(lanes) < 2:
        return targets
    s = split(lanes)
    return dict(targets, **{s.name: s})


def halves(cpu: Target) -> List[Target]:
    """A cluster's online CPUs as two lanes (``cpu0-1``, ``cpu2-3``; ``cpu0``, ``cpu1``),
    each with the cluster's frequency control (one policy: their frequency is the same)."""
    on = cpu.online
    if len(on) < 2:
        return []
    h = len(on) // 2

    def lane(cpus):
        name = "cpu%d" % cpus[0] if len(cpus) == 1 else "cpu%d-%d" % (cpus[0], cpus[-1])
        return Target(name, "cpu", list(cpus), list(cpu.freqs_khz), list(cpu.control), cpu.method,
                      settle_s=cpu.settle_s)
    return [lane(on[:h]), lane(on[h:])]


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
                and t is not None and bool(t.freqs_khz and t.control)
                and all(p.name not in self.target_off for p in t.parts))

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

    def lanes_of(self, target: str) -> List[Tuple[str, List[int], str]]:
        """A split's parts in column order: (name, the CPUs of this machine its threads run
        on as :meth:`host_cpus` says, kind); [] for a target that is not a split."""
        t = self.targets.get(target)
        return [(p.name, self._host_cpus_of(p), p.kind) for p in t.parts] if t is not None else []

    def _host_cpus_of(self, t: Target) -> List[int]:
        return []

    def pin_lost(self) -> None:
        """Threads were pinned behind the platform's back (a split's lanes, each to its own
        CPUs): the next :meth:`pin` pins every thread again."""

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

    # -- frequencies: a split sets each of its parts --------------------------------------
    def _target(self, target: str) -> Target:
        t = self.targets.get(target)
        if t is None:
            raise ValueError("unknown target %r (have %s)" % (target, ", ".join(self.targets)))
        return t

    def set_frequency(self, target: str, khz: int) -> Optional[int]:
        """Set ``target`` to exactly ``khz`` (a value from its table); a split sets each part
        to its step of the ladder, and puts back the parts already set where one fails.
        Returns what the kernel reports after the writes (a split: its lead part's)."""
        t = self._target(target)
        if not t.freqs_khz or not t.control:
            raise PlatformError("target %s has no frequency control" % target)
        if khz not in t.freqs_khz:
            raise ValueError("%d kHz is not an available frequency of %s (%s)"
                             % (khz, target, " ".join(map(str, t.freqs_khz))))
        if not t.parts:
            return self._set_frequency(t, khz)
        done: List[Tuple[Target, Optional[int]]] = []
        try:
            for p, f in zip(t.parts, part_frequencies(t, khz)):
                if f is not None:
                    before = self._frequency(p)
                    self._set_frequency(p, f)
                    done.append((p, before))
        except Exception:
            for p, before in reversed(done):
                if before in p.freqs_khz:
                    try:
                        self._set_frequency(p, before)
                    except Exception:    # the first error is the one to report
                        pass
            raise
        return self.frequency(target)

    def frequency(self, target: str) -> Optional[int]:
        """The frequency the kernel reports now (kHz; a split: its lead part's, the one whose
        table is the split's), or None without frequency control."""
        t = self._target(target)
        if t.parts:
            lead = next((p for p in t.parts if p.freqs_khz == t.freqs_khz and p.control), None)
            return self._frequency(lead) if lead is not None else None
        return self._frequency(t)

    # -- control and readings: each board's own ------------------------------------------
    def cpu_load(self):
        """A :class:`platforms.cpuload.OthersLoad` that tells how much of some CPUs other
        processes use, or None where nothing does (the simulated boards: their load is known
        to the simulation alone)."""
        return None

    def pin(self, target: str) -> List[int]:
        raise NotImplementedError

    def _set_frequency(self, t: Target, khz: int) -> Optional[int]:
        """Set one processor (not a split) to ``khz``, a value of its table."""
        raise NotImplementedError

    def _frequency(self, t: Target) -> Optional[int]:
        raise NotImplementedError

    def temperatures(self) -> Dict[str, float]:
        raise NotImplementedError

    def access(self) -> Dict:
        raise NotImplementedError

    def describe(self) -> Dict:
        raise NotImplementedError

"""Simulated boards: ``sim-odroid-xu3`` and ``sim-jetson-nano``.

The same interface as :class:`platforms.adapter.SysfsPlatform`, backed by a model instead
of sysfs, so the governor can be evaluated and regression-tested without hardware.
Everything they report is labelled simulated (``simulated = True``; ``describe()`` says so).

Model, per target (a CPU cluster or a GPU), at frequency f with supply voltage V(f):

* latency  = MACs / (units x MAC_per_cycle x efficiency x f) / (1 - stolen) + overhead
* power    = P_static(V) + C_eff x V^2 x f x units          (while the inference runs)
* energy   = power x latency (+ the idle power of the other rails, see RAIL_IDLE_W)
* thermal  = a first-order RC model driven by the target's power; above the trip point the
  maximum frequency is capped the way the board's thermal governor does (docs/platforms.md).

Sources of the constants (HARD: read from a kernel/vendor table; ASSUMED: an engineering
estimate, stated as such, that the evaluation does not depend on in detail):

* Frequency tables: docs/platforms.md, "The boards as the tests see them" (HARD).
* XU3 voltages: Linux ``arch/arm/boot/dts/exynos5800.dtsi`` A15/A7 OPP tables (HARD).
* Nano CPU voltages: Linux ``drivers/clk/tegra/clk-tegra124-dfll-fcpu.c``, tegra210
  CPU_CVB_TABLE c0 values, clamped at min 850 mV (HARD).
* MAC/cycle: Cortex-A15 and A57 NEON execute one 128-bit fp32 FMA per cycle (4 MACs);
  Cortex-A7 NEON is 64 bits wide (2 MACs); GM20B has 128 CUDA cores x 1 FMA (HARD,
  ARM/NVIDIA product documentation).
* efficiency (fraction of peak an fp32 onnxruntime conv reaches), overhead, C_eff and
  P_static: ASSUMED, chosen so that the A15 cluster at 2 GHz draws about 5 W and the A7
  cluster at 1.4 GHz about 0.7 W, and the Nano module stays inside its 10 W MAXN budget
  (NVIDIA L4T power guide: MAXN = 10 W).
* DVFS settle time (a frequency change takes effect this long after the write; until then
  the target runs at the old frequency): CPU 1 ms, GPU 5 ms (MEASURED, but on a Jetson
  Orin, not on these boards: Kang, arXiv 2606.16106). The XU3's kernel declares 140 µs for
  its clusters (``clock-latency`` in the exynos5420 device tree, read back as
  ``cpuinfo_transition_latency``): the PLL's relock alone, less than the measured settle.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from .model import Description, Platform, Target, part_frequencies, with_splits

XU3_A15_UV = {2000: 1312500, 1900: 1262500, 1800: 1237500, 1700: 1250000, 1600: 1250000,
              1500: 1100000, 1400: 1100000, 1300: 1100000, 1200: 1000000, 1100: 1000000,
              1000: 1000000, 900: 1000000, 800: 900000, 700: 900000, 600: 900000, 500: 900000,
              400: 900000, 300: 900000, 200: 900000}
XU3_A7_UV = {1400: 1275000, 1300: 1250000, 1200: 1250000, 1100: 1250000, 1000: 1100000,
             900: 1100000, 800: 1100000, 700: 1000000, 600: 1000000, 500: 1000000,
             400: 1000000, 300: 900000, 200: 900000}
# tegra210 CPU_CVB_TABLE: (MHz, µV); Nano frequencies are interpolated, min 850 mV.
NANO_CPU_CVB = [(204, 742283), (306, 776249), (408, 810215), (510, 844181), (612, 878147),
                (714, 912113), (816, 946079), (918, 980045), (1020, 1014011), (1122, 1047977),
                (1224, 1081943), (1326, 1090000), (1479, 1090000)]


def _interp(table: List[Tuple[int, int]], mhz: float) -> float:
    pts = sorted(table)
    if mhz <= pts[0][0]:
        return pts[0][1]
    for (f0, v0), (f1, v1) in zip(pts, pts[1:]):
        if mhz <= f1:
            return v0 + (v1 - v0) * (mhz - f0) / (f1 - f0)
    return pts[-1][1]


@dataclass
class SimTarget:
    name: str
    kind: str
    cpus: List[int]
    freqs_khz: List[int]
    volts: Callable[[int], float]          # kHz → V
    units: int                             # cores or CUDA cores used
    mac_per_cycle: int
    efficiency: float                      # ASSUMED
    overhead_s: float                      # ASSUMED: framework + launch cost per inference
    c_eff: float                           # ASSUMED: F per unit
    static_w_per_v: float                  # ASSUMED: leakage ~ linear in V
    rail: str
    settle_s: float = 1e-3                 # MEASURED on another SoC (see the module docstring)

    def latency(self, macs: float, khz: int, stolen: float = 0.0) -> float:
        rate = self.units * self.mac_per_cycle * self.efficiency * khz * 1e3
        return macs / rate / max(1e-3, 1.0 - stolen) + self.overhead_s

    def power(self, khz: int) -> float:
        v = self.volts(khz)
        return self.static_w_per_v * v + self.c_eff * v * v * khz * 1e3 * self.units


@dataclass
class SimSpec:
    name: str
    targets: List[SimTarget]
    idle_w: Dict[str, float]               # ASSUMED: idle power of each rail
    thermal_trip_c: float
    throttle_khz: Dict[str, int]           # max frequency per target once above the trip
    ambient_c: float = 35.0
    r_th: float = 8.0                      # ASSUMED: °C per W
    tau_s: float = 20.0                    # ASSUMED: thermal time constant
    notes: str = ""


def _xu3() -> SimSpec:
    a15 = [200000 + 100000 * i for i in range(19)]
    a7 = [200000 + 100000 * i for i in range(13)]
    return SimSpec(
        "sim-odroid-xu3",
        [SimTarget("a7", "cpu", [0, 1, 2, 3], a7, lambda k: XU3_A7_UV[k // 1000] / 1e6, 4, 2, 0.30,
                   0.8e-3, 7.5e-11, 0.08, "kfc"),
         SimTarget("a15", "cpu", [4, 5, 6, 7], a15, lambda k: XU3_A15_UV[k // 1000] / 1e6, 4, 4, 0.30,
                   0.4e-3, 3.3e-10, 0.40, "arm")],
        idle_w={"arm": 0.25, "kfc": 0.05, "mem": 0.15, "g3d": 0.03},
        thermal_trip_c=85.0, throttle_khz={"a15": 1600000},   # docs/platforms.md: 2.0 → 1.6 GHz at 85 °C
        notes="Exynos 5422; energy = A15 + A7 + GPU + DRAM rails (the INA231 rails)")


def _nano() -> SimSpec:
    cpu = [102000, 204000, 307200, 403200, 518400, 614400, 710400, 825600, 921600, 1036800,
           1132800, 1224000, 1326000, 1428000, 1479000]
    gpu = [76800 * i for i in range(1, 13)]
    cpu_v = lambda k: max(0.85, _interp(NANO_CPU_CVB, k / 1000) / 1e6)
    gpu_v = lambda k: 0.80 + 0.25 * (k - gpu[0]) / (gpu[-1] - gpu[0])   # ASSUMED: no public GM20B table
    return SimSpec(
        "sim-jetson-nano",
        [SimTarget("cpu", "cpu", [0, 1, 2, 3], cpu, cpu_v, 4, 4, 0.30, 0.4e-3, 3.0e-10, 0.30, "cpu"),
         SimTarget("gpu", "gpu", [], gpu, gpu_v, 128, 1, 0.25, 1.5e-3, 1.6e-11, 0.30, "gpu",
                   settle_s=5e-3)],
        idle_w={"in": 1.25, "cpu": 0.20, "gpu": 0.05},   # "in" is the module total (docs/platforms.md)
        thermal_trip_c=97.0, throttle_khz={"cpu": 1224000, "gpu": 768000},
        notes="Tegra X1 (T210); energy = POM_5V_IN, the module total")


SPECS = {"sim-odroid-xu3": _xu3, "sim-jetson-nano": _nano}


@dataclass
class Interference:
    """A background load: from ``start_s`` to ``end_s`` it takes ``share`` of ``target``."""
    target: str
    share: float
    start_s: float
    end_s: float = math.inf


class SimBoard(Platform):
    simulated = True
    energy_reason = "simulated energy model"

    def __init__(self, name: str, seed: int = 0, noise: float = 0.02,
                 interference: Optional[List[Interference]] = None):
        super().__init__()
        if name not in SPECS:
            raise ValueError("unknown simulated board %r (have %s)" % (name, ", ".join(SPECS)))
        self.spec = SPECS[name]()
        self.sim_targets: Dict[str, SimTarget] = {t.name: t for t in self.spec.targets}
        self.targets: Dict[str, Target] = with_splits({
            t.name: Target(t.name, t.kind, list(t.cpus), list(t.freqs_khz), ["(simulated %s)" % t.name], "simulated",
                           settle_s=t.settle_s)
            for t in self.spec.targets})
        self._freq = {t.name: t.freqs_khz[-1] for t in self.spec.targets}
        self.interference = list(interference or [])
        self.rng = random.Random(seed)
        self.noise = noise
        self.now = 0.0                      # simulated seconds
        self._settling: Dict[str, Tuple[int, float]] = {}   # target → (old kHz, until)
        self.temp_c = self.spec.ambient_c
        self.cap_khz: Dict[str, int] = {}     # the thermal model's cap in force
        self.forced_cap: Dict[str, int] = {}  # a cap a scenario imposes (e.g. a thermal event)

    # -- the Platform interface ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def energy_available(self) -> bool:
        return True

    def board_model(self, macs: float, target: str, noise: bool = True) -> Optional[Tuple[float, float]]:
        return self.run(macs, target) if noise else self.predict(macs, target)

    def describe(self) -> Dict:
        d = Description(self.spec.name, True, self.targets, [], {"soc (simulated)": "model"}).to_dict()
        d["energy"] = {"available": True, "reason": "SIMULATED", "rails": list(self.spec.idle_w)}
        d["dvfs"] = {"enabled": self.dvfs_enabled, "reason": self.dvfs_reason}
        d["notes"] = "SIMULATED board. " + self.spec.notes
        return d

    def access(self) -> Dict:
        """A simulated board has no files: everything is allowed."""
        return {"user": "", "dvfs": {t: True for t in self.targets}, "dvfs_blocked": "", "dvfs_blocked_by": {},
                "energy": True,
                "energy_blocked": "", "remedy": ""}

    def _frequency(self, t: Target) -> int:
        return self.effective(t.name, self._freq[t.name])

    def effective(self, target: str, khz: int) -> int:
        """The frequency a request for ``khz`` runs at under the caps in force."""
        caps = [c for c in (self.cap_khz.get(target), self.forced_cap.get(target)) if c]
        return min([khz] + caps)

    def _set_frequency(self, t: Target, khz: int) -> int:
        if self._freq[t.name] != khz:      # the old frequency holds for settle_s from now
            self._settling[t.name] = (self._frequency(t), self.now + self.sim_targets[t.name].settle_s)
        self._freq[t.name] = khz
        return self._frequency(t)

    def pin(self, target: str) -> List[int]:
        return list(self.targets[target].cpus)

    def temperatures(self) -> Dict[str, float]:
        return {"soc (simulated)": round(self.temp_c, 2)}

    def read_power(self) -> Dict[str, float]:
        return dict(self.spec.idle_w)

    # -- simulation --------------------------------------------------------------------
    def stolen(self, target: str, t: Optional[float] = None) -> float:
        t = self.now if t is None else t
        return min(0.95, sum(i.share for i in self.interference
                             if i.target == target and i.start_s <= t < i.end_s))

    def predict(self, macs, target: str, khz: Optional[int] = None,
                stolen: Optional[float] = None, now: Optional[float] = None) -> Tuple[float, float]:
        """Noise-free (latency s, energy J) of one inference: the model without the board's
        state (``now``: with it, a frequency change still settling at that moment: its part
        runs at the old frequency until then). A split's ``macs`` is one figure per part (its columns; the head's few MACs
        go to the first): its latency is its slowest part's, its energy each part's power
        while it runs, and the idle power of every other rail for the whole inference."""
        parts = self.targets[target].parts
        if not parts:
            macs, khz = [macs], [khz]
            names = [target]
        else:
            names = [p.name for p in parts]
            khz = part_frequencies(self.targets[target], khz) if khz else [None] * len(names)
        lats, busy = [], 0.0
        for n, m, f in zip(names, macs, khz):
            st = self.sim_targets[n]
            f = f or self._frequency(self.targets[n])
            share = self.stolen(n) if stolen is None else stolen
            lat = st.latency(m, f, share)
            old = self._settling.get(n) if now is not None else None
            if old is not None and now < old[1]:
                s, lat_old = old[1] - now, st.latency(m, old[0], share)
                lat = lat_old if lat_old <= s else s + (1 - s / lat_old) * lat
            lats.append(lat)
            busy += st.power(f) * lat
        lat = max(lats)
        rails = {self.sim_targets[n].rail for n in names}
        idle = sum(w for r, w in self.spec.idle_w.items() if r not in rails)
        # a part that finishes first idles at its rail's idle power for the rest
        wait = sum(self.spec.idle_w[self.sim_targets[n].rail] * (lat - l) for n, l in zip(names, lats))
        return lat, busy + idle * lat + wait

    def run(self, macs, target: str, idle_s: float = 0.0) -> Tuple[float, float]:
        """Simulate one inference now: returns (latency s, energy J); advances the clock and
        the thermal state. ``idle_s``: idle time before it (a request gap)."""
        if idle_s > 0:
            self._heat(0.0, idle_s)
        base, energy = self.predict(macs, target, now=self.now)
        lat = max(base * (1.0 + self.rng.gauss(0.0, self.noise)), 1e-6)
        energy = energy * lat / max(base, 1e-9)
        self._heat(energy / lat, lat)
        return lat, energy

    def _heat(self, watts: float, dt: float) -> None:
        self.now += dt
        target_c = self.spec.ambient_c + self.spec.r_th * watts
        self.temp_c += (target_c - self.temp_c) * (1 - math.exp(-dt / self.spec.tau_s))
        if self.temp_c >= self.spec.thermal_trip_c:
            self.cap_khz.update(self.spec.throttle_khz)
        elif self.temp_c < self.spec.thermal_trip_c - 5:
            for k in self.spec.throttle_khz:
                self.cap_khz.pop(k, None)

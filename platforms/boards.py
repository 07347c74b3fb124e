"""The boards, as data. Sources: docs/platforms.md, "The boards as the tests see them"."""
from __future__ import annotations

from .model import BoardSpec

ODROID_XU3 = BoardSpec(
    name="odroid-xu3",
    compatible=("hardkernel,odroid-xu3",),                    # §1 board id
    hardware=("ODROID-XU3", "ODROID-XU3 Lite", "ODROID-XU4"),
    cluster_names={"0xc07": "a7", "0xc0f": "a15"},            # §3: CPU part of A7 / A15
    gpu_devfreq=("mali", "11800000.gpu"),                     # §5: by parent device (4.14 Mali, mainline panfrost)
    gpu_is_target=False,                                      # no onnxruntime EP for Mali
    energy_rails=("arm", "kfc", "g3d", "mem"),                # §7: the four INA231 rails
    ina231_addresses={0x40: "arm", 0x41: "mem", 0x44: "g3d", 0x45: "kfc"},   # §7: the same on every kernel
    thermal_types=("cpu0-thermal", "cpu1-thermal", "cpu2-thermal", "cpu3-thermal", "gpu-thermal"),
    notes="INA231 rails are A15, A7, GPU and DRAM only, not board power (docs/platforms.md)",
)

JETSON_NANO = BoardSpec(
    name="jetson-nano",
    compatible=("nvidia,tegra210",),
    cluster_names={},                                         # one A57 cluster → "cpu"
    gpu_devfreq=("57000000.gpu", "gpu"),
    gpu_is_target=True,
    ina3221_channels={0: "in", 1: "gpu", 2: "cpu"},           # §7: JetPack 4 numbering from 0
    energy_rails=("in",),                                     # POM_5V_IN is module power
    thermal_types=("CPU-therm", "GPU-therm", "AO-therm"),     # §8: PMIC-Die is a constant
    notes="rail names are root-only (0600); channel map 0/1/2 = IN/GPU/CPU is fixed (docs/platforms.md)",
)

GENERIC = BoardSpec(
    name="generic",
    thread_mapping=True,
    energy_rails=("package-0",),
    notes="mapping choices are the number of CPUs used (cpu = all, cpu:N = the first N)",
)

PROBE_ORDER = (ODROID_XU3, JETSON_NANO, GENERIC)
BY_NAME = {b.name: b for b in PROBE_ORDER}

"""Discovery over the sysfs engine: one function per kind of thing, shared by every board.

Nothing here hard-codes a frequency, a bus number or an index: cpufreq policies are globbed
(``policy*``, else per-cpu ``cpuN/cpufreq`` on older kernels), the GPU devfreq is found by
its parent device, sensors by driver directory, thermal zones by ``type``.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

from .model import BoardSpec, Description, Rail, Target, halves, with_splits
from .sysfs import PlatformError, Sysfs

CPU = "/sys/devices/system/cpu"


def board_matches(fs: Sysfs, spec: BoardSpec) -> bool:
    """Device-tree compatible first (case-insensitive: Hardkernel's 3.10 tree says
    "Hardkernel,odroid-xu3"), then /proc/cpuinfo's Hardware line (mainline ARM kernels say
    "Samsung Exynos (Flattened Device Tree)" there, so the device tree must suffice)."""
    if spec.compatible and fs.exists("/proc/device-tree/compatible"):
        with open(fs.path("/proc/device-tree/compatible"), "rb") as f:
            compat = [c.decode("ascii", "replace").lower() for c in f.read().split(b"\0") if c]
        if any(c.lower() in compat for c in spec.compatible):
            return True
    if spec.hardware and fs.exists("/proc/cpuinfo"):
        hw = re.search(r"^Hardware\s*:\s*(.+)$", fs.read("/proc/cpuinfo"), re.M)
        if hw and hw.group(1).strip() in spec.hardware:
            return True
    return False


def cpu_parts(fs: Sysfs) -> Dict[int, str]:
    """cpu number → ``CPU part`` from /proc/cpuinfo (ARM), empty elsewhere."""
    if not fs.exists("/proc/cpuinfo"):
        return {}
    parts, cpu = {}, None
    for line in fs.read("/proc/cpuinfo").splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "processor" and val.isdigit():
            cpu = int(val)
        elif key == "CPU part" and cpu is not None:
            parts[cpu] = val.lower()
    return parts


def cpufreq_policies(fs: Sysfs) -> List[str]:
    """Policy directories: ``cpufreq/policy*`` (≥ 4.x), else distinct ``cpuN/cpufreq`` (3.10)."""
    pols = [p for p in fs.glob(CPU + "/cpufreq/policy*") if fs.isdir(p)]
    if pols:
        return pols
    seen, out = set(), []
    for d in fs.glob(CPU + "/cpu[0-9]*/cpufreq"):
        real = fs.realpath(d)
        if fs.isdir(d) and real not in seen:
            seen.add(real)
            out.append(real)
    return out


def _under_cap(fs: Sysfs, max_file: str, freqs: List[int], where: str, warnings: List[str],
               scale: int = 1) -> List[int]:
    """The table up to the limit in force at discovery (nvpmodel's mode on the Nano, a thermal
    cap): dnnscale never raises a limit it did not set. 0 means unset (XU3 4.14 devfreq)."""
    try:
        cap = fs.read_int(max_file) // scale
    except PlatformError:
        return freqs
    kept = [f for f in freqs if not cap or f <= cap]
    if kept and len(kept) < len(freqs):
        warnings.append("%s: frequencies above %d MHz are left out: the limit in force (nvpmodel mode or a "
                        "thermal cap) is %d MHz" % (where, cap // 1000, cap // 1000))
        return kept
    return freqs


def online_cpus(fs: Sysfs) -> Optional[List[int]]:
    return fs.read_cpulist(CPU + "/online") if fs.exists(CPU + "/online") else None


def _governors(fs: Sysfs, path: str) -> List[str]:
    return fs.read(path).split() if fs.exists(path) else []


def cpu_targets(fs: Sysfs, spec: BoardSpec, warnings: List[str]) -> Dict[str, Target]:
    parts = cpu_parts(fs)
    clusters: List[Tuple[List[int], List[int], str, str]] = []
    for pol in cpufreq_policies(fs):
        try:
            cpus = fs.read_cpulist(pol + "/related_cpus")
            freqs = sorted(set(fs.read_ints(pol + "/scaling_available_frequencies")))
        except PlatformError as e:
            warnings.append("skipping cpufreq policy %s: %s" % (pol, e))
            continue
        freqs = _under_cap(fs, pol + "/scaling_max_freq", freqs, pol, warnings)
        govs = _governors(fs, pol + "/scaling_available_governors")
        clusters.append((cpus, freqs, pol, "userspace" if "userspace" in govs else "minmax",
                         _transition_s(fs, pol)))
    online = online_cpus(fs)
    if not clusters:
        cpus = online or list(range(os.cpu_count() or 1))
        warnings.append("no cpufreq on this machine: frequency control is off")
        return _finish_cpu({"cpu": Target("cpu", "cpu", cpus)}, spec, online)
    named: Dict[str, Target] = {}
    for cpus, freqs, pol, method, settle in clusters:
        if online is not None and not set(cpus) & set(online):
            warnings.append("skipping cpufreq policy %s: all its CPUs (%s) are offline" % (pol, _cpustr(cpus)))
            continue
        name = spec.cluster_names.get(parts.get(cpus[0], ""), "cpu")
        t = named.get(name)
        if t is None:
            named[name] = Target(name, "cpu", list(cpus), freqs, [pol], method, settle_s=settle)
        else:  # one target over several policies (x86: one policy per core): common freqs only
            t.settle_s = max(t.settle_s, settle)
            t.cpus += cpus
            t.freqs_khz = sorted(set(t.freqs_khz) & set(freqs))
            t.control.append(pol)
            if method != "userspace":
                t.method = "minmax"
    if spec.cluster_names and set(named) == {"cpu"} and len(clusters) > 1:
        warnings.append("could not tell the clusters apart (no CPU part in /proc/cpuinfo)")
    for t in named.values():
        if online is not None and set(t.cpus) - set(online):
            warnings.append("target %s: CPUs %s are offline (hotplug, or an nvpmodel mode); it runs on %s"
                            % (t.name, _cpustr(sorted(set(t.cpus) - set(online))),
                               _cpustr(sorted(set(t.cpus) & set(online)))))
    return _finish_cpu(named, spec, online)


def _transition_s(fs: Sysfs, pol: str) -> float:
    """The policy's ``cpuinfo_transition_latency`` (ns, the driver's own figure for a
    frequency change) in seconds; 0 where it is absent, unreadable or CPUFREQ_ETERNAL."""
    path = pol + "/cpuinfo_transition_latency"
    try:
        ns = fs.read_ints(path)[0] if fs.exists(path) else 0
    except (PlatformError, IndexError):
        return 0.0
    return ns / 1e9 if 0 < ns < 0xFFFFFFFF else 0.0


def _cpustr(cpus: List[int]) -> str:
    return ",".join(map(str, cpus))


def _finish_cpu(targets: Dict[str, Target], spec: BoardSpec, online: Optional[List[int]]) -> Dict[str, Target]:
    for t in targets.values():
        t.offline = sorted(set(t.cpus) - set(online)) if online is not None else []
    if spec.thread_mapping and "cpu" in targets:
        base = targets["cpu"]
        usable = [c for c in sorted(base.cpus) if c not in base.offline]
        for n in range(1, len(usable)):
            targets["cpu:%d" % n] = Target("cpu:%d" % n, "cpu", usable[:n],
                                           list(base.freqs_khz), list(base.control), base.method,
                                           settle_s=base.settle_s)
    # "cpu" first, then by first CPU and size (a7 before a15; cpu:1 before cpu:2)
    return dict(sorted(targets.items(), key=lambda kv: (kv[0] != "cpu", min(kv[1].cpus, default=0),
                                                         len(kv[1].cpus), kv[0])))


def gpu_devfreq(fs: Sysfs, spec: BoardSpec, warnings: List[str]) -> Optional[Target]:
    if not spec.gpu_devfreq:
        return None
    for d in fs.glob("/sys/class/devfreq/*"):
        real = fs.realpath(d)
        parent = real.split("/devfreq/")[0].rsplit("/", 1)[-1]
        if not any(s in parent for s in spec.gpu_devfreq):
            continue
        try:
            freqs_hz = sorted(set(fs.read_ints(real + "/available_frequencies")))
        except PlatformError as e:
            warnings.append("GPU devfreq %s unreadable: %s" % (real, e))
            return None
        govs = _governors(fs, real + "/available_governors")
        khz = _under_cap(fs, real + "/max_freq", [f // 1000 for f in freqs_hz], real, warnings, scale=1000)
        return Target("gpu", "gpu", [], khz, [real],
                      "userspace" if "userspace" in govs else "minmax")
    return None


def _period(fs: Sysfs, p: str, per_second: float, default: float) -> float:
    """A sensor's refresh period in seconds from ``p`` (in 1/``per_second`` s), else ``default``."""
    try:
        return fs.read_int(p) / per_second if fs.exists(p) else default
    except PlatformError:
        return default


def rails(fs: Sysfs, spec: BoardSpec) -> List[Rail]:
    out: List[Rail] = []
    for name_file in fs.glob("/sys/class/hwmon/hwmon*/name"):   # mainline ina2xx (XU3 on 5.x/6.x)
        d = os.path.dirname(name_file)
        if fs.read(name_file) not in ("ina230", "ina231", "ina226") or not fs.exists(d + "/power1_input"):
            continue
        # the I2C device it belongs to: its `device` link, else the path it lives under
        # (/sys/devices/.../i2c-0/0-0040/hwmon/hwmon0)
        where = fs.realpath(d + "/device") if fs.exists(d + "/device") else fs.realpath(d)
        m = re.search(r"/\d+-00([0-9a-f]{2})(?:/|$)", where)
        name = spec.ina231_addresses.get(int(m.group(1), 16)) if m else None
        out.append(Rail(name or os.path.basename(d), "hwmon", d + "/power1_input", None,
                        _period(fs, d + "/update_interval", 1e3, 0.0)))
    for name_file in fs.glob("/sys/bus/i2c/drivers/INA231/*/sensor_name"):  # XU3 (bus varies)
        d = os.path.dirname(name_file)
        name = fs.read(name_file).replace("sensor_", "")
        out.append(Rail(name, "ina231", d + "/sensor_W", d + "/enable", _period(fs, d + "/update_period", 1e6, 0.264)))
    for p in fs.glob("/sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power*_input"):  # Nano
        m = re.search(r"/in_power(\d+)_input$", p)   # not in_powerN_trigger_input (docs/platforms.md)
        if m:
            ch = int(m.group(1))
            out.append(Rail(spec.ina3221_channels.get(ch, "ch%d" % ch), "ina3221", p))
    for d in fs.glob("/sys/class/powercap/intel-rapl:*"):  # x86 package counters
        if re.search(r"intel-rapl:\d+$", d) and fs.exists(d + "/energy_uj"):
            name = fs.read(d + "/name") if fs.exists(d + "/name") else os.path.basename(d)
            out.append(Rail(name, "rapl", d + "/energy_uj"))
    return out


def thermal_zones(fs: Sysfs) -> Dict[str, str]:
    zones: Dict[str, str] = {}
    for d in fs.glob("/sys/class/thermal/thermal_zone*"):
        if fs.exists(d + "/type") and fs.exists(d + "/temp"):
            zones.setdefault(fs.read(d + "/type"), d + "/temp")
    tmu = "/sys/devices/10060000.tmu/temp"   # XU3 on 3.10: one file, "sensorN : <m°C>" lines
    if fs.exists(tmu):                       # beside the one exynos-therm zone 3.10 also has
        for line in fs.read(tmu).splitlines():
            name = line.split(":")[0].strip()
            if name:
                zones[name] = tmu + "#" + name
    return zones


def describe(fs: Sysfs, spec: BoardSpec) -> Description:
    warnings: List[str] = []
    targets = cpu_targets(fs, spec, warnings)
    gpu = gpu_devfreq(fs, spec, warnings)
    if gpu and spec.gpu_is_target:
        targets["gpu"] = gpu
    lanes = halves(targets["cpu"]) if spec.thread_mapping and "cpu" in targets else None
    targets = with_splits(targets, lanes)
    return Description(spec.name, False, targets, rails(fs, spec), thermal_zones(fs), gpu, warnings)

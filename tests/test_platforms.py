"""Platform adapters against fake sysfs trees with the kernel's write rules."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess

import pytest

import platforms
from platforms import boards
from platforms.adapter import ORIGINALS, SysfsPlatform
from platforms.energy import EnergyMeter
from platforms.model import Rail
from platforms.sysfs import KernelRejected, NotPermitted, Sysfs, Vanished
from tests.fixtures import trees
from tests.fixtures.kernel import KernelSysfs, snapshot

POL0 = "/sys/devices/system/cpu/cpufreq/policy0"
POL4 = "/sys/devices/system/cpu/cpufreq/policy4"
NANO_GPU = "/sys/devices/57000000.gpu/devfreq/57000000.gpu"


def tree(tmp_path, name):
    return trees.build(name, str(tmp_path / name))


def board(tmp_path, name, spec, state=True):
    root = tree(tmp_path, name)
    fs = KernelSysfs(root)
    return SysfsPlatform(spec, root, str(tmp_path / "state") if state else None, fs=fs), fs, root


# ----------------------------------------------------------------------------- discovery
@pytest.mark.parametrize("name, want", [
    ("odroid-xu3", "odroid-xu3"), ("odroid-xu3-3.10", "odroid-xu3"), ("odroid-xu3-6.1", "odroid-xu3"),
    ("jetson-nano", "jetson-nano"),
    ("generic", "generic"), ("generic-nocpufreq", "generic"),
])
def test_detect(tmp_path, name, want):
    assert platforms.detect(tree(tmp_path, name)).name == want


def test_discover_xu3_414(tmp_path):
    p = platforms.detect(tree(tmp_path, "odroid-xu3"))
    assert list(p.targets) == ["a7", "a15", "a15+a7"]
    a7, a15 = p.targets["a7"], p.targets["a15"]
    assert a7.cpus == [0, 1, 2, 3] and a15.cpus == [4, 5, 6, 7]
    assert a7.freqs_khz == [200000 + 100000 * i for i in range(13)]
    assert a15.freqs_khz[-1] == 2000000 and len(a15.freqs_khz) == 19
    assert a15.control == [POL4] and a15.method == "minmax"   # userspace is a module, not listed
    assert a15.settle_s == a7.settle_s == 300e-6 == p.targets["a15+a7"].settle_s   # cpuinfo_transition_latency
    assert p.desc.gpu.freqs_khz[0] == 177000 and "11800000.mali" in p.desc.gpu.control[0]
    assert {r.name for r in p.desc.rails} == {"arm", "kfc", "g3d", "mem"}
    assert all(abs(r.period_s - 0.263808) < 1e-9 for r in p.desc.rails)
    assert "gpu-thermal" in p.desc.thermal


def test_discover_xu3_310_per_cpu_dirs_and_other_bus(tmp_path):
    """Hardkernel 3.10 as it is: tables listed highest first, no userspace governor, the
    TMU's five sensors beside the one exynos-therm zone, "Hardkernel," in the device tree."""
    root = tree(tmp_path, "odroid-xu3-3.10")
    assert open(os.path.join(root, "sys/devices/system/cpu/cpu4/cpufreq/scaling_available_frequencies")
                ).read().startswith("2000000 1900000")
    info = os.path.join(root, "proc", "cpuinfo")             # the device tree alone tells the board
    text = open(info).read()
    open(info, "w").write("".join(l for l in text.splitlines(True) if not l.startswith("Hardware")))
    p = platforms.detect(root)
    assert p.name == "odroid-xu3"
    assert p.targets["a15"].control == ["/sys/devices/system/cpu/cpu4/cpufreq"]
    assert p.targets["a15"].freqs_khz == trees.XU3_A15 and p.targets["a15"].method == "minmax"
    assert all(r.path.startswith("/sys/bus/i2c/drivers/INA231/3-00") for r in p.desc.rails)
    temps = p.temperatures()
    assert temps["sensor0"] == 45.0 and temps["sensor4"] == 49.0 and "exynos-therm" in temps


def test_discover_xu3_mainline(tmp_path):
    """Mainline 6.1: cpufreq-dt, panfrost's devfreq named after the GPU among 16 others, the
    INA231s as ina2xx hwmon devices in µW, /proc/cpuinfo without the board's name."""
    root = tree(tmp_path, "odroid-xu3-6.1")
    assert len(os.listdir(os.path.join(root, "sys/class/devfreq"))) == 17
    p = platforms.detect(root)
    assert p.name == "odroid-xu3" and list(p.targets) == ["a7", "a15", "a15+a7"]
    assert p.desc.gpu.control == ["/sys/devices/platform/soc/11800000.gpu/devfreq/11800000.gpu"]
    assert p.desc.gpu.freqs_khz == [f // 1000 for f in trees.XU3_MALI]
    rails = {r.name: r for r in p.desc.rails}
    assert set(rails) == {"arm", "mem", "g3d", "kfc"} and all(r.kind == "hwmon" for r in rails.values())
    assert rails["arm"].path == "/sys/class/hwmon/hwmon0/power1_input" and rails["arm"].enable is None
    p.start()
    try:
        assert p.meter is not None and p.meter.watts() == pytest.approx(1.25 + 0.21 + 0.03 + 0.12)
    finally:
        assert p.stop() == []
    d = p.describe()
    assert d["energy"]["available"] and d["dvfs"]["enabled"] and d["access"]["remedy"] == ""
    for n in range(4):                          # no `device` link: the path still names the address
        os.remove(os.path.join(root, "sys/devices/platform/soc/12c60000.i2c/i2c-0/0-00%s/hwmon/hwmon%d/device"
                               % (trees.XU3_RAILS[n][0], n)))
    assert {r.name for r in platforms.detect(root).desc.rails} == {"arm", "mem", "g3d", "kfc"}


def test_platform_answers_for_its_user(tmp_path):
    """`dnnscale platform` run as a user: what that user may do, and what grants the rest."""
    from daemon.cli import format_platform
    root = tree(tmp_path, "jetson-nano")
    p = SysfsPlatform(boards.JETSON_NANO, root, fs=KernelSysfs(root, uid=1000))
    d = p.describe()
    assert not d["dvfs"]["enabled"] and "uid 1000" in d["dvfs"]["reason"]
    assert not d["energy"]["available"] and "in_power0_input" in d["energy"]["reason"]   # 0600 on R32
    assert "dnnscale-sysfs.conf" in d["access"]["remedy"]
    text = format_platform(d)
    assert "76.8-921.6 MHz" in text and "to change that:" in text
    trees.apply_deployment_rules(root)
    d = SysfsPlatform(boards.JETSON_NANO, root, fs=KernelSysfs(root, uid=1000)).describe()
    assert d["dvfs"]["enabled"] and d["energy"]["available"] and d["access"]["remedy"] == ""


def test_discover_nano(tmp_path):
    p = platforms.detect(tree(tmp_path, "jetson-nano"))
    assert list(p.targets) == ["cpu", "gpu", "cpu+gpu"]
    assert p.targets["cpu"].freqs_khz[-1] == 1479000 and p.targets["cpu"].method == "userspace"
    assert p.targets["gpu"].freqs_khz == [76800 * i for i in range(1, 13)]
    assert {r.name: r.kind for r in p.desc.rails} == {"in": "ina3221", "gpu": "ina3221", "cpu": "ina3221"}
    assert p.temperatures()["CPU-therm"] == 45.0
    # what each runs on (the governor's guard after a miss spreads over shared processors)
    assert p.targets["cpu+gpu"].processors == [0, 1, 2, 3, "gpu"] and p.targets["gpu"].processors == ["gpu"]


def test_discover_generic_mapping_and_no_cpufreq(tmp_path):
    p = platforms.detect(tree(tmp_path, "generic"))
    assert list(p.targets) == ["cpu", "cpu:1", "cpu0+cpu1"] and p.targets["cpu:1"].cpus == [0]
    assert p.dvfs_enabled
    q = platforms.detect(tree(tmp_path, "generic-nocpufreq"))
    assert q.targets["cpu"].freqs_khz == [] and not q.dvfs_enabled
    assert "no frequency control" in q.dvfs_reason


def test_platform_cli_json(tmp_path):
    from daemon.cli import main
    import io
    root = tree(tmp_path, "jetson-nano")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["platform", "--sysfs-root", root, "--json"]) == 0
    d = json.loads(out.getvalue())
    assert d["platform"] == "jetson-nano" and d["targets"]["gpu"]["freqs_khz"][-1] == 921600


# ----------------------------------------------------------------------------- writes
def test_xu3_minmax_write_order(tmp_path):
    p, fs, root = board(tmp_path, "odroid-xu3", boards.ODROID_XU3)
    assert p.set_frequency("a15", 1000000) == 1000000          # lowering: min first
    assert fs.writes == [(POL4 + "/scaling_min_freq", "1000000"), (POL4 + "/scaling_max_freq", "1000000")]
    fs.writes.clear()
    assert p.set_frequency("a15", 1800000) == 1800000          # raising: max first
    assert fs.writes == [(POL4 + "/scaling_max_freq", "1800000"), (POL4 + "/scaling_min_freq", "1800000")]
    fs.writes.clear()
    p.set_frequency("a15", 1800000)                            # unchanged: no write
    assert fs.writes == []


def test_nano_userspace_cpu_and_gpu(tmp_path):
    p, fs, root = board(tmp_path, "jetson-nano", boards.JETSON_NANO)
    assert p.set_frequency("cpu", 921600) == 921600
    assert fs.writes == [(POL0 + "/scaling_governor", "userspace"), (POL0 + "/scaling_setspeed", "921600")]
    fs.writes.clear()
    assert p.set_frequency("gpu", 460800) == 460800
    assert fs.writes == [(NANO_GPU + "/governor", "userspace"), (NANO_GPU + "/userspace/set_freq", "460800000")]
    fs.writes.clear()
    p.set_frequency("cpu", 1479000)                            # governor already userspace
    assert fs.writes == [(POL0 + "/scaling_setspeed", "1479000")]


def test_reject_frequency_not_in_table(tmp_path):
    p, fs, _ = board(tmp_path, "jetson-nano", boards.JETSON_NANO)
    with pytest.raises(ValueError, match="not an available frequency of cpu"):
        p.set_frequency("cpu", 1000000)
    with pytest.raises(ValueError, match="unknown target"):
        p.set_frequency("a15", 1000000)
    assert fs.writes == []


def test_stop_restores_every_file(tmp_path):
    p, fs, root = board(tmp_path, "odroid-xu3", boards.ODROID_XU3)
    before = snapshot(root)
    p.start()
    p.set_frequency("a15", 600000)
    p.set_frequency("a7", 1400000)
    assert snapshot(root) != before
    assert p.stop() == []
    assert snapshot(root) == before
    assert not os.path.exists(str(tmp_path / "state" / ORIGINALS))


def test_restore_after_crash(tmp_path):
    p, fs, root = board(tmp_path, "jetson-nano", boards.JETSON_NANO)
    before = snapshot(root)
    p.set_frequency("cpu", 403200)
    p.set_frequency("gpu", 76800)
    saved = json.load(open(str(tmp_path / "state" / ORIGINALS)))["files"]
    assert saved[POL0 + "/scaling_governor"] == "schedutil"
    del p                                                       # the process dies: no stop()
    q = SysfsPlatform(boards.JETSON_NANO, root, str(tmp_path / "state"), fs=KernelSysfs(root))
    assert q.restore_pending() == []
    assert snapshot(root) == before


@pytest.mark.parametrize("name, spec, target", [("odroid-xu3", boards.ODROID_XU3, "a15"),
                                                ("jetson-nano", boards.JETSON_NANO, "cpu")])
def test_after_a_crash_the_frequency_table_is_the_boards_not_the_crashed_runs(tmp_path, name, spec, target):
    """A run killed while it held a cluster's max at a low frequency (the min = max method, or
    the limits a pin leaves): the next start must not take that max for the limit in force,
    which would leave it a table cut at the crashed run's frequency (found under a real
    systemd: the watchdog's restart offered a15 one frequency). Discovered again after the
    restore, the table is the board's whole one."""
    p, fs, root = board(tmp_path, name, spec)
    full = list(p.targets[target].freqs_khz)
    p.set_frequency(target, full[0])
    del p                                                       # the process dies: no stop()
    q = SysfsPlatform(spec, root, str(tmp_path / "state"), fs=KernelSysfs(root))
    assert q.restore_pending() == []
    assert q.targets[target].freqs_khz == full


@contextlib.contextmanager
def read_only(path):
    """A read-only view of ``path``: a read-only bind mount as root, chmod otherwise."""
    if os.geteuid() != 0:
        subprocess.check_call(["chmod", "-R", "a-w", path])
        yield
        subprocess.check_call(["chmod", "-R", "u+w", path])
        return
    if subprocess.call(["mount", "--bind", path, path], stderr=subprocess.DEVNULL) != 0:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.check_call(["mount", "-o", "remount,bind,ro", path])
        yield
    finally:
        subprocess.call(["umount", path])


def test_read_only_tree_gives_typed_error(tmp_path):
    root = tree(tmp_path, "jetson-nano")
    p = SysfsPlatform(boards.JETSON_NANO, root, str(tmp_path / "state"))
    with read_only(os.path.join(root, "sys")):
        with pytest.raises(NotPermitted, match=r"scaling_governor.*Run dnnscale as root"):
            p.set_frequency("cpu", 921600)


def test_vanished_file(tmp_path):
    p, fs, root = board(tmp_path, "jetson-nano", boards.JETSON_NANO)
    os.remove(os.path.join(root, POL0.lstrip("/"), "scaling_setspeed"))
    with pytest.raises(Vanished, match="scaling_setspeed"):
        p.set_frequency("cpu", 921600)


# ----------------------------------------------------------------------------- sensors
def test_xu3_sensors_enabled_at_start_and_restored(tmp_path):
    p, fs, root = board(tmp_path, "odroid-xu3", boards.ODROID_XU3)
    enable = "/sys/bus/i2c/drivers/INA231/0-0040/enable"
    p.start()
    assert fs.read(enable) == "1" and p.meter is not None
    p.stop()
    assert fs.read(enable) == "0"


def test_energy_integration_zero_order_hold(tmp_path):
    root = tree(tmp_path, "jetson-nano")
    fs = Sysfs(root)
    iio = "/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    now = [100.0]
    m = EnergyMeter(fs, [Rail("in", "ina3221", iio + "/in_power0_input")], clock=lambda: now[0])
    fs.write(iio + "/in_power0_input", 2000)       # 2 W
    m.sample()
    j0 = m.joules()
    now[0] += 0.5
    fs.write(iio + "/in_power0_input", 4000)       # 4 W from t = 100.5
    m.sample()
    now[0] += 0.25
    assert m.energy_between(j0, m.joules()) == pytest.approx(2.0 * 0.5 * 1000 + 4.0 * 0.25 * 1000)


def test_rapl_counter_and_wrap(tmp_path):
    root = tree(tmp_path, "generic-rapl")
    p = platforms.detect(root)
    p.start()
    e = "/sys/class/powercap/intel-rapl:0/energy_uj"
    j0 = p.meter.joules()
    p.fs.write(e, 1000000 + 2500)                  # +2.5 mJ
    assert p.meter.energy_between(j0, p.meter.joules()) == pytest.approx(2.5)
    p.fs.write(e, 500)                             # wrapped past max_energy_range_uj
    assert p.meter.energy_between(j0, p.meter.joules()) > 0


def test_no_sensor_means_no_energy(tmp_path):
    p = platforms.detect(tree(tmp_path, "generic-nocpufreq"))
    p.start()
    assert p.meter is None and "no power sensor" in p.describe()["energy"]["reason"]


# ----------------------------------------------------------------------------- mapping
def test_pin_to_missing_cpus_warns_not_crashes(tmp_path, caplog):
    p = platforms.detect(tree(tmp_path, "odroid-xu3"))
    have = os.cpu_count()
    cpus = p.pin("a15")                           # cpu4-7: absent on a small machine
    assert cpus == [c for c in (4, 5, 6, 7) if c < have]
    if have <= 4:
        assert "wants CPUs" in caplog.text


def test_pin_and_unpin(tmp_path):
    if os.cpu_count() < 2:
        pytest.skip("needs 2 CPUs")
    before = os.sched_getaffinity(0)
    p = platforms.detect(tree(tmp_path, "generic"))
    assert p.pin("cpu:1") == [0]
    assert os.sched_getaffinity(0) == {0}
    p.stop()
    assert os.sched_getaffinity(0) == before


# ---------------------------------------------------------------- the kernel's rules, and DVFS that tells the truth
def test_kernel_double_follows_the_kernel(tmp_path):
    root = trees.build("odroid-xu3", str(tmp_path / "xu3"))
    fs = KernelSysfs(root)
    avail = POL0 + "/scaling_available_governors"
    assert "userspace" not in fs.read(avail).split()          # a module on XU3 4.14
    with pytest.raises(KernelRejected):
        fs.write(POL0 + "/scaling_setspeed", 500000)           # only under userspace
    fs.write(POL0 + "/scaling_governor", "userspace")          # request_module loads it
    assert "userspace" in fs.read(avail).split()
    fs.write(POL0 + "/scaling_max_freq", 1000000)
    fs.write(POL0 + "/scaling_setspeed", 1250000)              # clamped to max, then RELATION_L
    assert fs.read_int(POL0 + "/scaling_cur_freq") == 1000000
    fs.write(POL0 + "/scaling_setspeed", 450000)               # rounds up
    assert fs.read_int(POL0 + "/scaling_cur_freq") == 500000
    with pytest.raises(KernelRejected):
        fs.write(POL0 + "/scaling_governor", "nosuch")
    mali = "/sys/class/devfreq/devfreq0"
    fs.write(mali + "/governor", "userspace")
    fs.write(mali + "/userspace/set_freq", 400000000)          # to an OPP: the lowest at or above
    assert fs.read_int(mali + "/cur_freq") == 420000000
    fs.write(mali + "/max_freq", 480000000)
    fs.write(mali + "/userspace/set_freq", 599000000)          # clamped to max_freq
    assert fs.read_int(mali + "/cur_freq") == 480000000
    fs.write(mali + "/governor", "simple_ondemand")
    assert not os.path.exists(os.path.join(root, "sys/devices/platform/11800000.mali/devfreq/devfreq0/userspace"))
    nano = trees.build("jetson-nano", str(tmp_path / "nano"))
    trees.apply_deployment_rules(nano)
    user = KernelSysfs(nano, uid=1000)
    gpu = "/sys/class/devfreq/57000000.gpu"
    user.write(gpu + "/governor", "userspace")                 # g+w by the udev rule
    with pytest.raises(NotPermitted):                          # recreated root-only by the switch
        user.write(gpu + "/userspace/set_freq", 460800000)
    with pytest.raises(NotPermitted):
        user.read("/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_0")   # 0600


def test_tree_modes_and_symlinks_are_the_kernels(tmp_path):
    root = trees.build("jetson-nano", str(tmp_path / "nano"))
    mode = lambda p: stat.S_IMODE(os.stat(os.path.join(root, p.lstrip("/"))).st_mode)
    assert mode(POL0 + "/cpuinfo_cur_freq") == 0o400
    assert mode(POL0 + "/scaling_cur_freq") == 0o444
    assert mode("/sys/devices/57000000.gpu/railgate_enable") == 0o744
    assert mode("/sys/devices/57000000.gpu/devfreq/57000000.gpu/governor") == 0o644
    iio = "/sys/devices/50000000.host1x/546c0000.i2c/i2c-6/6-0040/iio:device0"
    assert mode(iio + "/crit_current_limit_0") == 0o600 and mode(iio + "/in_power0_trigger_input") == 0o444
    assert mode(iio + "/in_power0_input") == 0o600        # R32: root-only (a real Nano's tegrastats strace)
    for link in ("/sys/devices/system/cpu/cpu1/cpufreq", "/sys/class/devfreq/57000000.gpu",
                 "/sys/bus/i2c/drivers/ina3221x/6-0040", "/sys/devices/gpu.0", "/sys/class/thermal/thermal_zone0"):
        assert os.path.islink(os.path.join(root, link.lstrip("/"))), link
    assert open(os.path.join(root, POL0.lstrip("/"), "scaling_available_frequencies")).read().endswith(" \n")


def test_nano_rails_skip_trigger_inputs(tmp_path):
    p, _, _ = board(tmp_path, "jetson-nano", boards.JETSON_NANO, state=False)
    assert sorted((r.name, os.path.basename(r.path)) for r in p.desc.rails) == \
        [("cpu", "in_power2_input"), ("gpu", "in_power1_input"), ("in", "in_power0_input")]


class FailingSysfs(KernelSysfs):
    """The kernel double, refusing writes to one file (EBUSY), as a busy driver would."""

    def __init__(self, root, fail):
        super().__init__(root)
        self.fail = fail

    def write(self, p, value):
        if p.endswith(self.fail):
            self._fail(p, value, errno.EBUSY)
        super().write(p, value)


def test_frequency_change_is_all_or_nothing(tmp_path):
    """generic: target cpu spans two policies; the second refuses, so the first is put back."""
    root = trees.build("generic", str(tmp_path / "sysfs"))
    before = snapshot(root)
    fs = FailingSysfs(root, "policy1/scaling_governor")
    p = SysfsPlatform(boards.GENERIC, root, str(tmp_path / "state"), fs=fs)
    with pytest.raises(KernelRejected):
        p.set_frequency("cpu", 1800000)
    assert any("policy0" in w for w, _ in fs.writes)           # something was written, then undone
    assert snapshot(root) == before
    fs.fail = "nothing"
    assert p.set_frequency("cpu", 1800000) == 1800000          # and a retry writes it all
    assert p.stop() == []
    assert snapshot(root) == before


def test_minmax_pair_rolled_back_when_the_second_write_fails(tmp_path):
    root = trees.build("odroid-xu3", str(tmp_path / "sysfs"))
    before = snapshot(root)
    fs = FailingSysfs(root, "policy4/scaling_min_freq")
    p = SysfsPlatform(boards.ODROID_XU3, root, str(tmp_path / "state"), fs=fs)
    with pytest.raises(KernelRejected):
        p.set_frequency("a15", 1200000)                        # lowering: min first → fails at once
    assert snapshot(root) == before
    fs.fail = "policy4/scaling_max_freq"
    with pytest.raises(KernelRejected):
        p.set_frequency("a15", 1200000)                        # min written, max refused → min put back
    assert snapshot(root) == before
    fs.fail = "nothing"
    assert p.set_frequency("a15", 1200000) == 1200000
    fs.fail = "policy4/scaling_min_freq"
    with pytest.raises(KernelRejected):
        p.set_frequency("a15", 1800000)                        # raising: max written, min refused → max back
    assert fs.read_int(POL4 + "/scaling_min_freq") == 1200000 == fs.read_int(POL4 + "/scaling_max_freq")
    fs.fail = "nothing"
    assert p.stop() == []
    assert snapshot(root) == before


def test_nonroot_gpu_falls_back_to_min_equals_max(tmp_path):
    """The documented non-root Nano deployment: userspace/set_freq is recreated root-only on the
    governor switch, so the GPU is pinned with min_freq = max_freq under its own governor."""
    root = trees.build("jetson-nano", str(tmp_path / "sysfs"))
    trees.apply_deployment_rules(root)
    before = snapshot(root)
    fs = KernelSysfs(root, uid=1000)
    p = SysfsPlatform(boards.JETSON_NANO, root, str(tmp_path / "state"), fs=fs)
    gpu = "/sys/devices/57000000.gpu/devfreq/57000000.gpu"
    assert p.set_frequency("gpu", 460800) == 460800
    assert fs.read(gpu + "/governor") == "nvhost_podgov"
    assert fs.read_int(gpu + "/min_freq") == fs.read_int(gpu + "/max_freq") == 460800000
    assert p.set_frequency("gpu", 768000) == 768000            # raising: max first
    assert p.set_frequency("cpu", 1036800) == 1036800          # the CPU: userspace + setspeed (g+w)
    assert p.stop() == []
    assert snapshot(root) == before


def test_readback_reports_a_thermal_cap(tmp_path):
    root = trees.build("jetson-nano", str(tmp_path / "sysfs"))
    fs = KernelSysfs(root)
    p = SysfsPlatform(boards.JETSON_NANO, root, str(tmp_path / "state"), fs=fs)
    fs.thermal_cap(POL0, 1036800)
    assert p.set_frequency("cpu", 1479000) == 1036800           # what the kernel set, not what was asked
    assert p.frequency("cpu") == 1036800
    p.stop()


def test_nano_5w_offline_cpus_and_caps(tmp_path):
    p, fs, root = board(tmp_path, "jetson-nano-5w", boards.JETSON_NANO)
    cpu = p.targets["cpu"]
    assert cpu.cpus == [0, 1, 2, 3] and cpu.offline == [2, 3] and cpu.online == [0, 1]
    assert max(cpu.freqs_khz) <= trees.NANO_5W_CPU_MAX < max(trees.NANO_CPU)   # nvpmodel's cap kept
    assert max(p.targets["gpu"].freqs_khz) == trees.NANO_5W_GPU_MAX // 1000
    assert any("offline" in w for w in p.desc.warnings)
    pinned = p.pin("cpu")
    assert set(pinned) <= {0, 1} and set(os.sched_getaffinity(0)) == set(pinned)
    p.stop()
    assert set(os.sched_getaffinity(0)) == set(p._affinity_before)


def test_xu3_cluster_hotplugged_out_refuses_pinning(tmp_path):
    p, fs, root = board(tmp_path, "odroid-xu3-cpu0-offline", boards.ODROID_XU3)
    assert p.targets["a7"].offline == [0]
    with open(os.path.join(root, "sys/devices/system/cpu/online"), "w") as f:
        f.write("4-7\n")                                        # the whole A7 cluster went offline later
    with pytest.raises(KernelRejected, match="offline"):
        p.pin("a7")
    p.stop()


def test_pinning_failure_is_reported(tmp_path, monkeypatch):
    p, _, _ = board(tmp_path, "generic", boards.GENERIC, state=False)

    def refuse(tid, cpus):
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    with pytest.raises(KernelRejected, match="pinning thread"):
        p.pin("cpu:1")


def test_a_sampled_sensor_that_fails_is_retried_until_it_reads_again(tmp_path):
    """INA231-style sampling: a read that fails (EIO/ENOENT while a driver rebinds) sets the
    meter's error and energy reads fail; the sampler keeps retrying, and the first good read
    clears it. Over the gap the integral holds the last good power."""
    import time
    from platforms.energy import EnergyMeter
    from platforms.model import Rail
    from platforms.sysfs import PlatformError, Sysfs
    d = tmp_path / "sys/bus/i2c/drivers/INA231/4-0040"
    d.mkdir(parents=True)
    (d / "sensor_W").write_text("2.000000\n")
    m = EnergyMeter(Sysfs(str(tmp_path)), [Rail("arm", "ina231", "/sys/bus/i2c/drivers/INA231/4-0040/sensor_W")],
                    period_s=0.01)
    m.start()
    try:
        j0, t_j0 = m.joules(), time.monotonic()
        (d / "sensor_W").unlink()
        end = time.monotonic() + 5
        while m.error is None and time.monotonic() < end:
            time.sleep(0.01)
        assert m.error and "sensor_W" in m.error
        with pytest.raises(PlatformError):
            m.joules()
        (d / "sensor_W").write_text("2.000000\n")
        end = time.monotonic() + 10
        while m.error is not None and time.monotonic() < end:
            time.sleep(0.01)
        assert m.error is None
        j1, t_j1 = m.joules(), time.monotonic()
        assert j1 - j0 == pytest.approx(2.0 * (t_j1 - t_j0), rel=0.05)   # 2 W all along, the gap included
    finally:
        m.stop()

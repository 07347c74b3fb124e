"""The simulated boards: labelled, monotone in work and frequency, interference, thermal cap."""
import pytest

import platforms
from platforms.sim import Interference, SimBoard

MACS = 59_315_200


@pytest.mark.parametrize("name", platforms.SIMULATED)
def test_labelled_and_interface(name):
    b = platforms.create(name)
    d = b.describe()
    assert d["simulated"] is True and "SIMULATED" in d["notes"]
    t = next(iter(b.targets.values()))
    assert b.set_frequency(t.name, t.freqs_khz[0]) == t.freqs_khz[0]
    with pytest.raises(ValueError, match="not an available frequency"):
        b.set_frequency(t.name, 123)


def test_latency_and_energy_follow_work_and_frequency():
    b = SimBoard("sim-odroid-xu3")
    fast = b.predict(MACS, "a15", 2000000)
    slow = b.predict(MACS, "a15", 1000000)
    small = b.predict(MACS / 4, "a15", 2000000)
    little = b.predict(MACS, "a7", 1400000)
    assert slow[0] > fast[0] > small[0]
    assert slow[1] < fast[1]                   # lower V: less energy per inference
    assert little[0] > fast[0] and little[1] < fast[1]


def test_interference_steals_time():
    b = SimBoard("sim-jetson-nano", noise=0.0)
    base = b.run(MACS, "cpu")[0]
    b.interference.append(Interference("cpu", 0.5, 0.0))
    assert b.run(MACS, "cpu")[0] == pytest.approx(2 * base - b.sim_targets["cpu"].overhead_s, rel=1e-6)
    assert b.run(MACS, "gpu")[0] < base          # the GPU is not affected


def test_thermal_cap_engages_when_hot():
    b = SimBoard("sim-odroid-xu3", noise=0.0)
    b.temp_c = 90.0
    b.run(MACS, "a15")
    assert b.frequency("a15") == 1600000         # docs/platforms.md: 2.0 → 1.6 GHz at 85 °C
    b.temp_c = 40.0
    b.run(MACS, "a7", idle_s=1.0)
    assert b.frequency("a15") == 2000000


def test_a_frequency_change_settles_at_the_old_frequency_first():
    """For settle_s after a change (GPU 5 ms, CPU 1 ms: the module docstring's source) the
    target runs at its old frequency: a run that starts at once is slower than the new
    frequency alone gives, and one after the settle time is not."""
    b = SimBoard("sim-jetson-nano", noise=0.0)
    gpu = b.sim_targets["gpu"]
    assert gpu.settle_s == 5e-3 and b.sim_targets["cpu"].settle_s == 1e-3
    assert b.targets["gpu"].settle_s == 5e-3 and b.targets["cpu+gpu"].settle_s == 5e-3
    lo, hi = gpu.freqs_khz[0], gpu.freqs_khz[-1]
    b.set_frequency("gpu", lo)
    b.run(MACS, "cpu", idle_s=1.0)
    b.set_frequency("gpu", hi)
    at_hi, at_lo = b.predict(MACS, "gpu", hi)[0], b.predict(MACS, "gpu", lo)[0]
    s = gpu.settle_s
    expect = at_lo if at_lo <= s else s + (1 - s / at_lo) * at_hi
    assert b.run(MACS, "gpu")[0] == pytest.approx(expect, rel=1e-9) and expect > 1.05 * at_hi
    b.run(MACS, "cpu", idle_s=s)
    assert b.run(MACS, "gpu")[0] == pytest.approx(at_hi, rel=1e-9)

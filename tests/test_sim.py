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

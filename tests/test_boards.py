"""The real ``dnnscale serve`` on every board tree the project claims (tests/fixtures/trees.py:
the drivers' whole file sets, modes and symlinks), with the kernel's write rules in force
(tests/fixtures/kernel.py): discovery, inference on every target, a frequency pin that takes
effect at once, a budget, status, then SIGTERM, and SIGKILL + restart, each ending with the
tree exactly as it was (contents, modes, symlinks, no file left behind)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.daemon_harness import ROOT, Daemon, kernel_cmd
from tests.fixtures import trees
from tests.fixtures.kernel import KernelSysfs, snapshot

EXPECT = {   # tree → (platform, targets, offline CPUs per target)
    "odroid-xu3": ("odroid-xu3", ["a7", "a15", "a15+a7"], {}),
    "odroid-xu3-3.10": ("odroid-xu3", ["a7", "a15", "a15+a7"], {}),
    "odroid-xu3-6.1": ("odroid-xu3", ["a7", "a15", "a15+a7"], {}),
    "odroid-xu3-cpu0-offline": ("odroid-xu3", ["a7", "a15", "a15+a7"], {"a7": [0]}),
    "jetson-nano": ("jetson-nano", ["cpu", "gpu", "cpu+gpu"], {}),
    "jetson-nano-5w": ("jetson-nano", ["cpu", "gpu", "cpu+gpu"], {"cpu": [2, 3]}),
    "generic": ("generic", ["cpu", "cpu:1", "cpu0+cpu1"], {}),
    "generic-nocpufreq": ("generic", ["cpu", "cpu:1", "cpu0+cpu1"], {}),
    "generic-rapl": ("generic", ["cpu", "cpu:1", "cpu0+cpu1"], {}),
}
IMG = np.zeros((1, 32, 32, 3), np.uint8)


def cur_freq_file(root: str, platform: dict, target: str) -> str:
    t = platform["targets"][target]
    d = t["control"][0]
    return os.path.join(root, d.lstrip("/"), "cur_freq" if t["kind"] == "gpu" else "scaling_cur_freq")


def read_khz(path: str, gpu: bool) -> int:
    v = int(open(path).read().split()[0])
    return v // 1000 if gpu else v


def platform_json(root: str) -> dict:
    r = subprocess.run(kernel_cmd() + ["platform", "--json", "--sysfs-root", root], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)


def test_every_tree_is_in_the_expectations():
    assert set(EXPECT) == set(trees.BUILDERS)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_serve_on_board_tree(name, random_set, tmp_path):
    root = trees.build(name, str(tmp_path / "sysfs"))
    before = snapshot(root)
    want_platform, want_targets, want_offline = EXPECT[name]
    desc = platform_json(root)
    assert desc["platform"] == want_platform
    assert list(desc["targets"]) == want_targets
    for t, off in want_offline.items():
        assert desc["targets"][t]["offline"] == off
        assert any("offline" in w for w in desc["warnings"])
    assert snapshot(root) == before, "dnnscale platform must only read"
    from models.modelset import gpu_provider
    if gpu_provider() is None:   # no CUDA execution provider here: the daemon serves the CPU only
        want_targets = [t for t in want_targets if "gpu" not in t]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile_runs: 1\n")
    d = Daemon(str(tmp_path / "run"), random_set, sysfs_root=root, config=str(cfg), kernel_uid=0)
    try:
        d.wait_ready()
        with d.client() as c:
            s = c.status()
            assert s["platform"] == want_platform and list(s["targets"]) == want_targets
            assert s["dvfs"]["enabled"] == bool(desc["dvfs"]["enabled"])
            for t in want_targets:
                freqs = s["targets"][t]["freqs_khz"]
                f = freqs[1] if len(freqs) > 1 else None
                parts = desc["targets"][t]["parts"]
                k = len(parts) if parts else 1       # a split of n lanes runs from k = n
                c.pin(groups=k, target=t, freq_khz=f) if f else c.pin(groups=k, target=t)
                if f and not parts:   # in effect when pinned, before any inference
                    gpu = desc["targets"][t]["kind"] == "gpu"
                    assert read_khz(cur_freq_file(root, desc, t), gpu) == f
                    assert c.status()["frequencies_khz"][t] == f
                r = c.infer(IMG)
                assert r.config["target"] == t and r.config["groups"] == k
                assert r.config["freq_khz"] == f
                if parts:   # each lane ran its columns at its own step of the split's ladder
                    assert [l["lane"] for l in r.config["lanes"]] == [p["name"] for p in parts]
                    assert [l["columns"] for l in r.config["lanes"]] == [[i, i] for i in range(1, k + 1)]
                    for p, lane in zip(parts, r.config["lanes"]):
                        if f:
                            assert lane["freq_khz"] in p["freqs_khz"]
                            if p["name"] in desc["targets"]:
                                assert read_khz(cur_freq_file(root, desc, p["name"]), p["kind"] == "gpu") == lane["freq_khz"]
                if name.startswith(("odroid-xu3", "jetson-nano")):
                    # from the first start on, though the XU3 boots with its INA231 off: the
                    # sensors the start-up profile enabled stay on (twice the INA231's 263.8 ms
                    # period first, so that the reading is not one taken before serving began)
                    time.sleep(0.6)
                    r = c.infer(IMG)
                    assert s["energy"]["available"] and r.energy_mj > 0, (s["energy"], r.energy_mj)
                if t in want_offline:
                    assert not set(s["targets"][t]["offline"]) - set(want_offline[t])
            c.release()
            c.set_budget(latency_ms=50.0)
            assert len(c.infer(np.zeros((3, 32, 32, 3), np.uint8)).labels) == 3
            s = c.status()
            assert s["budget"]["latency_ms"] == 50.0 and s["pinned"] == {}
            assert s["mapping"]["ok"], s["mapping"]
            c.clear_budget()
    finally:
        assert d.stop(signal.SIGTERM) == 0, d.output()
    assert "Traceback" not in d.output(), d.output()
    assert snapshot(root) == before

    # SIGKILL with a frequency pinned, then a restart restores before anything else.
    d = Daemon(str(tmp_path / "run2"), random_set, sysfs_root=root, config=str(cfg), kernel_uid=0,
               extra=["--state-dir", str(tmp_path / "run" / "state")])
    try:
        d.wait_ready()
        with d.client() as c:
            t = want_targets[0]
            freqs = c.status()["targets"][t]["freqs_khz"]
            if freqs:
                c.pin(target=t, freq_khz=freqs[0])
                assert snapshot(root) != before
    finally:
        d.stop(signal.SIGKILL)
    d = Daemon(str(tmp_path / "run3"), random_set, sysfs_root=root, config=str(cfg), kernel_uid=0,
               extra=["--state-dir", str(tmp_path / "run" / "state")])
    try:
        d.wait_ready()
        # (while serving, the XU3's INA231 sensors are enabled: the only difference allowed)
        now = snapshot(root)
        assert {k: v for k, v in now.items() if not k.endswith("/enable")} == \
            {k: v for k, v in before.items() if not k.endswith("/enable")}, "the restart restores first"
    finally:
        assert d.stop(signal.SIGTERM) == 0, d.output()
    assert snapshot(root) == before


PIN = {"odroid-xu3": ("a15", 1200000), "jetson-nano": ("cpu", 710400)}


@pytest.mark.parametrize("name", ["odroid-xu3", "odroid-xu3-3.10", "odroid-xu3-6.1", "jetson-nano",
                                  "jetson-nano-5w"])
def test_nonroot_with_the_deployment_rules(name, random_set, tmp_path):
    """The documented non-root deployment on every board tree: the shipped tmpfiles/udev
    rules grant group dvfs the cpufreq/devfreq files (policyN, or 3.10's cpuN/cpufreq), the
    INA231 `enable` and the Nano's root-only INA3221 readings; the daemon runs as a user in
    that group, sets frequencies and meters energy from the first start."""
    root = trees.build(name, str(tmp_path / "sysfs"))
    trees.apply_deployment_rules(root)
    before = snapshot(root)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile_runs: 1\n")
    platform = EXPECT[name][0]
    d = Daemon(str(tmp_path / "run"), random_set, sysfs_root=root, config=str(cfg), kernel_uid=1000)
    try:
        d.wait_ready()
        with d.client() as c:
            s = c.status()
            assert s["platform"] == platform and s["dvfs"]["enabled"], s["dvfs"]
            assert s["energy"]["available"], s["energy"]
            target, khz = PIN[platform]
            c.pin(target=target, freq_khz=khz)
            policy = platform_json(root)["targets"][target]["control"][0]
            assert read_khz(os.path.join(root, policy.lstrip("/"), "scaling_cur_freq"), False) == khz
            time.sleep(0.6)                 # a fresh sensor period (the XU3's INA231: 263.8 ms)
            r = c.infer(IMG)
            assert r.config["freq_khz"] == khz and r.energy_mj > 0, r.header
    finally:
        assert d.stop(signal.SIGTERM) == 0, d.output()
    assert "could not" not in d.output(), d.output()
    assert snapshot(root) == before


def test_a_refused_write_leaves_no_record(random_set, tmp_path):
    """Non-root without the rules: every write is refused (DVFS and energy off, with their
    reasons); nothing was changed, so nothing is left to restore: no crash record, no
    "could not roll back/restore" at start or stop, and the next start is as clean."""
    root = trees.build("odroid-xu3", str(tmp_path / "sysfs"))
    before = snapshot(root)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile_runs: 1\n")
    state = str(tmp_path / "state")
    for run in ("run1", "run2"):
        d = Daemon(str(tmp_path / run), random_set, sysfs_root=root, config=str(cfg), kernel_uid=1000,
                   extra=["--state-dir", state])
        try:
            d.wait_ready()
            with d.client() as c:
                s = c.status()
                assert not s["dvfs"]["enabled"] and "cannot write" in s["dvfs"]["reason"], s["dvfs"]
                assert not s["energy"]["available"] and "enable" in s["energy"]["reason"], s["energy"]
                assert not os.path.exists(os.path.join(state, "platform-originals.json"))
        finally:
            assert d.stop(signal.SIGTERM) == 0, d.output()
        out = d.output()
        assert "could not roll back" not in out and "could not restore" not in out and "earlier run" not in out, out
        assert snapshot(root) == before


def test_profile_waits_for_the_sensor(random_set, tmp_path):
    """XU3: the INA231 refreshes every 263.8 ms, so the profile waits two meter periods after
    every frequency change (each frequency once: the plan is sorted by frequency) and takes
    the power over at least two periods."""
    from daemon.executor import Executor
    from daemon.profiler import measure
    from governor import build_space, levels_from_manifest, plan_measurements
    from models import ModelSet
    from platforms import boards
    from platforms.adapter import SysfsPlatform
    root = trees.build("odroid-xu3", str(tmp_path / "sysfs"))
    before = snapshot(root)
    p = SysfsPlatform(boards.ODROID_XU3, root, str(tmp_path / "state"), fs=KernelSysfs(root))
    p.start()
    try:
        assert p.meter.period == pytest.approx(0.263808)
        assert p.settle_s == pytest.approx(2 * 0.263808)
        p.meter.period = 0.01            # the fake sensor never changes: keep the test short
        ms = ModelSet.load(random_set, threads=1)
        levels = levels_from_manifest(ms.manifest)
        space = build_space(levels, {n: t.freqs_khz for n, t in p.targets.items() if not t.is_split})
        sleeps = []
        prof = measure(Executor(p), ms, space, levels, runs=1, sleep=sleeps.append)
        changes = {(c.target, c.freq_khz) for c in plan_measurements(space)}
        assert len(sleeps) == len(changes) == len(trees.XU3_A7) + len(trees.XU3_A15)
        assert all(s == pytest.approx(0.02) for s in sleeps)
        assert set(prof.fits["a15"].power) == set(trees.XU3_A15)   # one power per frequency
    finally:
        p.stop()
    assert snapshot(root) == before

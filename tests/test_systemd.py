"""The shipped unit under a real systemd (PID 1 in a container: tests/fixtures/nspawn.py),
installed by the deployment guide's own command blocks (docs/deployment.md, ``guide:``),
serving the XU3 fake tree, in root mode and then in the non-root mode.

Root, systemd-nspawn and mmdebstrap (with a reachable Debian mirror the first time) are
needed; elsewhere it skips. ``python -m pytest -m systemd_boot`` runs only this."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.daemon_harness import ROOT
from tests.fixtures import nspawn, trees
from tests.fixtures.kernel import snapshot

pytestmark = pytest.mark.systemd_boot

BOARD = "/srv/board"
CONFIG = """platform: odroid-xu3
sysfs_root: %s
profile_runs: 1
""" % BOARD
EXPOSURE_MAX = 5.0


def _checkout_copy(dst: str) -> None:
    """The working tree as a user's checkout has it: tracked and untracked-but-not-ignored files."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                       capture_output=True, check=True)
    for rel in r.stdout.decode().split("\0"):
        if not rel or not os.path.isfile(os.path.join(ROOT, rel)):
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), os.path.join(dst, rel), follow_symlinks=False)


def _exposure(m: nspawn.Machine) -> float:
    out = m.sh("systemd-analyze security --no-pager dnnscale.service").stdout
    return float(re.search(r"Overall exposure level for dnnscale.service: ([0-9.]+)", out).group(1))


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    why = nspawn.missing_tools()
    if why:
        pytest.skip(why)
    if not shutil.which("git") or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("needs a git checkout (the guide installs from one)")
    try:
        image = nspawn.root_image(log=lambda s: print(s, file=sys.stderr))
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip("could not build the container root (no Debian mirror?): %s" % e)
    work = tmp_path_factory.mktemp("systemd")
    src, board = str(work / "src"), str(work / "board")
    _checkout_copy(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    os.path.join(src, "dist"), src], check=True, capture_output=True, timeout=600)
    trees.build("odroid-xu3", board)
    # Time, not behaviour: the INA231s' update period set to 20 ms (the driver's update_period
    # is writable on the board too), so the start-up profile waits 0.04 s per frequency for the
    # sensors instead of 0.53 s (32 frequencies: 17 s of a fake sensor that never changes).
    for dirpath, _, files in os.walk(os.path.join(board, "sys")):
        if "update_period" in files and "sensor_W" in files:
            with open(os.path.join(dirpath, "update_period"), "w") as f:
                f.write("20000 usec\n")
    m = nspawn.Machine(image, {src: "/src", board: BOARD})
    m.host_board = board
    try:
        for user in ("alice", "mallory"):
            m.sh("useradd -m %s" % user)
        m.sh("mkdir -p /etc/dnnscale /etc/systemd/system/dnnscale.service.d && cat > /etc/dnnscale/config.yaml "
             "<<'EOF'\n%sEOF" % CONFIG)
        # The one stand-in: /srv/board plays /sys, which ProtectSystem=strict leaves writable.
        # And one for time: the watchdog fires after 10 s of silence instead of the unit's 30.
        m.sh("printf '[Service]\\nReadWritePaths=%s\\nWatchdogSec=10\\n' > "
             "/etc/systemd/system/dnnscale.service.d/test-board.conf" % BOARD)
        m.guide = nspawn.guide_blocks(open(os.path.join(ROOT, "docs", "deployment.md")).read())
        yield m
    finally:
        if os.environ.get("DNNSCALE_KEEP_CONTAINER"):
            print("container PID 1: %d" % m.pid, file=sys.stderr)
        else:
            m.close()


def _run_block(m: nspawn.Machine, name: str, user_env=None) -> None:
    assert name in m.guide, "docs/deployment.md has no guide:%s block" % name
    for line in m.guide[name]:
        m.sh(line, cwd="/src", env=user_env)


def _status(m, user="alice") -> dict:
    return json.loads(m.sh("dnnscale status --json", user=user).stdout)


def _main_pid(m) -> int:
    return int(m.unit("MainPID"))


def _active_with_new_pid(m, old: int):
    def restarted():
        """the unit active again with a new main process"""
        pid = _main_pid(m)
        return pid if pid not in (0, old) and m.unit("ActiveState") == "active" else None
    return restarted


def _packs(m: nspawn.Machine) -> list:
    """The pids named by the packed model sets in the runtime directory (models/packed.py)."""
    names = m.sh("ls /run/dnnscale").stdout.split()
    return sorted(int(n.split("-")[2]) for n in names if n.startswith("dnnscale-pack-"))


def _service_round(m: nspawn.Machine, before: dict, mode: str) -> None:
    """What both modes must do: status and inference from the group, the refusal outside it,
    reloads, the pin written to the board, a clean stop leaving the tree as it was."""
    st = _status(m)
    assert st["platform"] == "odroid-xu3" and st["dvfs"]["enabled"], (mode, st["dvfs"])
    assert st["energy"]["available"], (mode, st["energy"])
    assert st["model"]["packing"].startswith("one optimised copy"), st["model"]["packing"]   # in the sandbox
    assert _packs(m) == [_main_pid(m)]
    r = m.sh("dnnscale infer /src/examples/cat.png", user="alice")
    assert "cat.png: cat" in r.stdout and "ms per image" in r.stdout, r.stdout
    for cmd in ("dnnscale status", "dnnscale infer /src/examples/cat.png"):
        r = m.sh(cmd, user="mallory", check=False)
        lines = [l for l in r.stderr.strip().splitlines() if not l.startswith("note: ")]
        assert r.returncode == 1 and len(lines) == 1, (cmd, r.stdout, r.stderr)
        assert "permission denied" in lines[0] and "group 'dnnscale'" in lines[0] \
            and "usermod -aG dnnscale mallory" in lines[0], lines[0]
    # A pin reaches the board's file and survives a reload with a changed config.
    freq = st["targets"]["a7"]["freqs_khz"][2]
    m.sh("dnnscale pin --target a7 --freq-mhz %g" % (freq / 1000), user="alice")
    policy0 = os.path.join(m.host_board, "sys/devices/system/cpu/cpufreq/policy0")
    assert m.wait_for(lambda: open(os.path.join(policy0, "scaling_max_freq")).read().strip() == str(freq)
                      or open(os.path.join(policy0, "scaling_setspeed")).read().strip() == str(freq), 10)
    threads = st["targets"]["a7"]["onnxruntime_threads"]
    assert threads >= 1
    m.sh("echo 'threads: 1' >> /etc/dnnscale/config.yaml && systemctl reload dnnscale")

    def reloaded():
        """the reload's new thread count in status"""
        s = _status(m)
        return s if s["targets"]["a7"]["onnxruntime_threads"] == 1 else None
    st = m.wait_for(reloaded, 30)
    assert st["pinned"] == {"target": "a7", "freq_khz": freq}, st["pinned"]
    # A new profile is taken up by a reload.
    m.sh("python3 - <<'EOF'\nimport json\np='/var/lib/dnnscale/profile.json'\nd=json.load(open(p))\n"
         "d['created']='2026-01-02T03:04:05+0000'\njson.dump(d, open(p, 'w'))\nEOF")
    m.sh("systemctl reload dnnscale")
    m.wait_for(lambda: _status(m)["profile_created"] == "2026-01-02T03:04:05+0000", 30)
    m.sh("sed -i '/^threads: 1$/d' /etc/dnnscale/config.yaml")
    m.sh("dnnscale release", user="alice")
    exposure = _exposure(m)
    print("systemd-analyze security, %s mode: %.1f" % (mode, exposure))
    assert exposure <= EXPOSURE_MAX


def _clean_stop(m: nspawn.Machine, before: dict) -> None:
    m.sh("systemctl stop dnnscale")
    assert m.unit("ExecMainStatus") == "0" and m.unit("Result") == "success", m.journal()
    assert snapshot(m.host_board) == before, "the board tree differs after a clean stop"


def test_the_guide_under_a_real_systemd(machine):
    m = machine
    before = snapshot(m.host_board)
    _run_block(m, "venv")
    t0 = time.time()
    _run_block(m, "service")          # enable --now: returns once READY=1 came (Type=notify)
    ready_s = time.time() - t0
    assert m.unit("ActiveState") == "active" and m.unit("Type") == "notify", m.journal()
    m.sh("test -f /usr/share/doc/dnnscale/deployment.md")   # the unit's Documentation=
    _run_block(m, "allow", user_env={"USER": "alice"})
    assert m.sh("stat -c '%a %U %G' /run/dnnscale /run/dnnscale/control.sock /run/dnnscale/infer.sock"
                ).stdout.split("\n")[:3] == ["750 root dnnscale", "660 root dnnscale", "660 root dnnscale"]
    _service_round(m, before, "root")

    # The watchdog: a stopped daemon is killed and restarted; the restart restores the board.
    pid = _main_pid(m)
    m.sh("kill -STOP %d" % pid)
    pid2 = m.wait_for(_active_with_new_pid(m, pid), 120, 1.0)
    assert "watchdog timeout" in m.sh("journalctl --no-pager -o cat").stdout.lower(), m.journal()
    # kill -9 under a pin: restarted, and the restart puts back what the killed run changed.
    st = _status(m)
    assert st["dvfs"]["enabled"], (st["dvfs"]["reason"], m.journal())
    freq = st["targets"]["a15"]["freqs_khz"][1]
    m.sh("dnnscale pin --target a15 --freq-mhz %g" % (freq / 1000), user="alice")
    m.sh("kill -9 %d" % pid2)
    pid3 = m.wait_for(_active_with_new_pid(m, pid2), 120, 1.0)
    assert _status(m)["pinned"] == {}
    assert _packs(m) == [pid3]            # the killed run's pack swept by the new one
    m.sh("dnnscale release", user="alice")
    _clean_stop(m, before)

    # A configuration error: failed once with its reason, not restarted in a loop.
    m.sh("cp /etc/dnnscale/config.yaml /root/config.yaml && echo 'max_batch: -1' >> /etc/dnnscale/config.yaml")
    r = m.sh("systemctl start dnnscale", check=False)
    assert r.returncode != 0
    time.sleep(6)                     # RestartSec=2: a loop would have restarted by now
    assert m.unit("ActiveState") == "failed" and m.unit("NRestarts") == "0", (m.unit("ActiveState"),
                                                                              m.unit("NRestarts"))
    assert "max_batch must be a positive integer" in m.journal(), m.journal()
    m.sh("cp /root/config.yaml /etc/dnnscale/config.yaml && systemctl reset-failed dnnscale")
    assert snapshot(m.host_board) == before

    # The non-root mode: the guide's rules (their /sys/ paths pointed at the fake tree), the drop-in.
    _run_block(m, "nonroot")
    assert m.sh("ps -o user= -p %d" % _main_pid(m)).stdout.strip() == "dnnscale"
    m.sh("systemctl stop dnnscale && sed -i 's| /sys/| %s/sys/|' /etc/tmpfiles.d/dnnscale-sysfs.conf && "
         "systemd-tmpfiles --create /etc/tmpfiles.d/dnnscale-sysfs.conf" % BOARD)
    before_nonroot = snapshot(m.host_board)      # the rules' modes, as the board boots with them
    m.sh("systemctl start dnnscale")
    _service_round(m, before_nonroot, "non-root")
    _clean_stop(m, before_nonroot)
    print("ready after enable --now: %.1f s" % ready_s)

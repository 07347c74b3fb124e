"""The CLI verbs that do not need a running daemon: train, eval, profile, platform."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.daemon_harness import ROOT, dnnscale_cmd


def run(*args, timeout=300):
    return subprocess.run(dnnscale_cmd() + list(args), cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=timeout)


def run_here(*args):
    """The CLI's ``main`` in this process (argument checks: one torch import for all of them;
    ``run`` covers the real process)."""
    import contextlib
    import io
    from daemon.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:
            rc = e.code
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def test_train_then_eval(tiny_data, tmp_path):
    pytest.importorskip("torch")
    out = str(tmp_path / "set")
    r = run("train", "--data", tiny_data, "--groups", "2", "--epochs", "1", "--size", "tiny", "--val", "100",
            "--batch", "50", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "model set written to" in r.stdout and os.path.isfile(os.path.join(out, "manifest.yaml"))
    assert "group 2/2" in r.stderr   # progress per group and epoch
    r = run("eval", "--model", out, "--data", tiny_data, "--latency-runs", "5")
    assert r.returncode == 0, r.stderr
    rows = [l for l in r.stdout.splitlines() if l[:1].isdigit()]
    assert len(rows) == 2 and all(len(l.split()) == 6 for l in rows)
    # running it again without --resume refuses, with one line that says what to do
    r = run("train", "--data", tiny_data, "--groups", "2", "--epochs", "1", "--size", "tiny", "--val", "100",
            "--batch", "50", "--out", out)
    assert r.returncode == 2 and "--resume" in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("data, expect", [("/nonexistent/cifar", "does not exist"), (ROOT, "none of the layouts")])
def test_train_bad_data_dir_is_one_line(tmp_path, data, expect):
    r = run("train", "--data", data, "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and expect in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_eval_bad_model(tiny_data, tmp_path):
    r = run("eval", "--model", str(tmp_path), "--data", tiny_data)
    assert r.returncode == 2 and "manifest.yaml is missing" in r.stderr


def test_eval_takes_a_shipped_name_like_serve(tiny_data):
    r = run("eval", "--model", "cifar10-g4", "--data", tiny_data, "--limit", "20", "--latency-runs", "0")
    assert r.returncode == 0 and "top-1" in r.stdout, r.stderr
    r = run("eval", "--model", "nope", "--data", tiny_data)
    assert r.returncode == 2 and "model nope is neither a model-set folder nor a shipped set (shipped: cifar10-g4" in r.stderr


def test_profile_on_simulated_board(random_set, tmp_path):
    state = str(tmp_path / "state")
    r = run("profile", "--model", random_set, "--platform", "sim-jetson-nano", "--state-dir", state, "--runs", "2")
    assert r.returncode == 0, r.stderr
    d = json.load(open(os.path.join(state, "profile.json")))
    assert set(d["profile"]["targets"]) == {"cpu", "gpu", "cpu+gpu"} and d["key"]["platform"] == "sim-jetson-nano"
    # 3 levels x (15 CPU + 12 GPU frequencies), and the split's 15-step ladder from k = 2
    assert "profiled" in r.stdout and "of 111 configurations" in r.stdout
    assert re.search(r"cpu\+gpu k=2 [0-9.]+ ms, k=3 [0-9.]+ ms", r.stdout), r.stdout


def test_platform_unknown_name():
    r = run("platform", "--platform", "raspberry-pi")
    assert r.returncode == 2 and "unknown platform 'raspberry-pi'" in r.stderr


def test_help_explains():
    r = run("--help")
    assert r.returncode == 0 and "serve" in r.stdout and "budget" in r.stdout
    r = run("serve", "--help")
    assert "--sysfs-root" in r.stdout and "--control-endpoint" in r.stdout


def test_train_bad_width_is_one_line(tiny_data, tmp_path):
    r = run("train", "--data", tiny_data, "--out", str(tmp_path / "o"), "--width", "0")
    assert r.returncode == 2 and "--width must be > 0" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, expect", [
    (["--swa-epochs", "-1"], "--swa-epochs must be >= 0 and --swa-lr > 0, got -1 and 0.01"),
    (["--swa-epochs", "5", "--swa-lr", "0"], "--swa-epochs must be >= 0 and --swa-lr > 0, got 5 and 0.0"),
    (["--groups", "3", "--epochs", "1,2"], "--epochs lists 2 numbers for 3 groups"),
    (["--epochs", "1,x"], "--epochs: expected a number or numbers separated by commas, got '1,x'"),
    (["--kind", "portfolio", "--epochs", "3,4"], "a portfolio trains one dense network"),
    (["--erase", "1.5"], "--erase must be a probability between 0 and 1, got 1.5"),
    (["--groups", "3", "--group-widths", "0.5,1"], "--group-widths needs 3 numbers > 0 (one per group), got 0.5,1"),
    (["--groups", "2", "--group-widths", "0,1"], "--group-widths needs 2 numbers > 0"),
    (["--group-widths", "a,b"], "--group-widths: expected a number or numbers separated by commas, got 'a,b'"),
    (["--kind", "portfolio", "--group-widths", "1"], "--group-widths: a portfolio is one dense network"),
])
def test_train_bad_swa_is_one_line(tiny_data, tmp_path, args, expect):
    r = run_here("train", "--data", tiny_data, "--out", str(tmp_path / "o"), "--size", "tiny", *args)
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("device, expect", [
    ("tpu", "--device must be cpu, cuda or cuda:N, got 'tpu'"),
    ("cuda:99", "--device cuda:99"),
])
def test_train_bad_device_is_one_line(tiny_data, tmp_path, device, expect):
    r = run_here("train", "--data", tiny_data, "--out", str(tmp_path / "o"), "--device", device, "--size", "tiny")
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_images_one_rule_for_every_input(tmp_path):
    """16-bit PNGs are scaled, not clipped white; any size keeps its aspect (shorter side
    scaled, centre crop); .npy follows the same rule; grayscale models get one channel."""
    from PIL import Image
    from daemon import images
    a16 = np.full((32, 32), 40000, np.uint16)
    Image.fromarray(a16).save(str(tmp_path / "deep.png"))
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :32, 0] = 255                      # left half red, right half blue
    wide[:, 32:, 2] = 255
    Image.fromarray(wide).save(str(tmp_path / "wide.png"))
    np.save(str(tmp_path / "wide.npy"), wide)
    x, names, problems, notes = images.read([str(tmp_path / f) for f in ("deep.png", "wide.png", "wide.npy")])
    assert problems == [] and x.shape == (3, 32, 32, 3)
    assert 150 <= x[0].mean() <= 160            # 40000 / 65535 of white, not 255
    for im in x[1:]:                            # the centre 32 columns: half red, half blue
        assert im[:, :14, 0].min() > 200 and im[:, 18:, 2].min() > 200
    assert len(notes) == 1 and "wide.png 64x32" in notes[0] and "centre crop" in notes[0]
    g, _, _, _ = images.read([str(tmp_path / "wide.png")], (28, 28, 1))
    assert g.shape == (1, 28, 28, 1)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    x, names, problems, _ = images.read([str(tmp_path / "junk.png"), str(tmp_path / "wide.png")])
    assert len(x) == 1 and problems[0][0].endswith("junk.png") and "cannot be read" in problems[0][1]
    p = images.top_k(np.array([[0.0, 2.0, 1.0]]), 2)[0]
    assert [c for c, _ in p] == [1, 2] and abs(p[0][1] - np.exp(2.0) / np.exp([0.0, 2.0, 1.0]).sum()) < 1e-9


def test_every_config_key_is_documented(tmp_path):
    """One list of keys: the Config dataclass, serve --help, systemd/config.yaml, docs."""
    from dataclasses import fields
    from daemon.config import KEY_DOCS, Config, load
    keys = [f.name for f in fields(Config) if f.name != "source"]
    assert list(KEY_DOCS) == keys
    example = open(os.path.join(ROOT, "systemd", "config.yaml")).read()
    docs = open(os.path.join(ROOT, "docs", "deployment.md")).read()
    helptext = subprocess.run(dnnscale_cmd() + ["serve", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    for k in keys:
        assert "#%s:" % k in example and "`%s`" % k in docs and k in helptext, k
    uncommented = tmp_path / "config.yaml"             # the example, every default uncommented, is valid
    uncommented.write_text("\n".join(l[1:] for l in example.splitlines() if l.startswith("#") and ":" in l
                                     and not l.startswith("# ") and "null" not in l))
    cfg = load(str(uncommented))
    assert cfg.max_batch == Config().max_batch and cfg.dvfs is True


def test_sample_photos_are_what_the_readme_says():
    """README's `dnnscale infer examples/cat.png examples/rocket.png`: the cat is a cat at
    every k with high probability; the rocket (no CIFAR-10 class) gets no confident answer."""
    from daemon import images
    from models import ModelSet, zoo
    ms = ModelSet.load(zoo.default_path())
    x, names, problems, _ = images.read([os.path.join(ROOT, "examples", f) for f in ("cat.png", "rocket.png")])
    assert problems == []
    for k in range(1, ms.groups + 1):
        top = images.top_k(ms.run(k, ms.preprocess(x)), 1)
        assert ms.classes[top[0][0][0]] == "cat" and top[0][0][1] > 0.9
        assert top[1][0][1] < 0.8


def test_the_system_service_and_a_users_daemon_share_nothing_unless_asked(monkeypatch, tmp_path):
    """Only the service (systemd's directories, or --system) reads /etc/dnnscale and uses
    /var/lib/dnnscale and /run/dnnscale; root's own `dnnscale serve` keeps to per-user places.
    A client takes the user's own daemon where its socket exists, else the service's."""
    from daemon import config
    for v in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR", "DNNSCALE_SYSTEM", "DNNSCALE_CONFIG"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert config.default_state_dir() == str(tmp_path / ".local" / "state" / "dnnscale")
    assert config.default_runtime_dir() == "/tmp/dnnscale-%d" % os.getuid()
    assert config.SYSTEM_CONFIG not in config.default_paths()
    assert config.default_infer_endpoint() == "ipc:///tmp/dnnscale-%d/infer.sock" % os.getuid()
    monkeypatch.setenv("DNNSCALE_SYSTEM", "1")            # serve/profile --system
    assert config.default_state_dir() == config.SYSTEM_STATE == "/var/lib/dnnscale"
    assert config.default_runtime_dir() == "/run/dnnscale" and config.default_paths() == [config.SYSTEM_CONFIG]
    assert config.default_infer_endpoint() == "ipc:///run/dnnscale/infer.sock"
    monkeypatch.delenv("DNNSCALE_SYSTEM")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/x")   # started by systemd
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/x")
    assert config.default_state_dir() == "/var/lib/x" and config.default_infer_endpoint() == "ipc:///run/x/infer.sock"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    os.makedirs(tmp_path / "run" / "dnnscale")
    monkeypatch.setattr(config, "SYSTEM_RUNTIME", str(tmp_path / "service"))
    own = "ipc://%s" % (tmp_path / "run" / "dnnscale" / "control.sock")
    assert config.default_control_endpoint(for_client=True) == own          # no service
    os.makedirs(tmp_path / "service")
    assert config.default_control_endpoint(for_client=True) == "ipc://%s" % (tmp_path / "service" / "control.sock")
    open(tmp_path / "run" / "dnnscale" / "control.sock", "w").close()       # the user's own daemon runs
    assert config.default_control_endpoint(for_client=True) == own


def test_version_and_top_once_without_a_daemon(tmp_path):
    """`--version` names the installed version; `top` without rich names what to install;
    `top --once` with nothing to show fails."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(dnnscale_cmd() + ["--version"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("dnnscale "), r
    # without rich, top says what to install (in one line, before reaching for a daemon)
    code = "import sys; sys.modules['rich'] = None; from daemon.cli import main; sys.exit(main(['top', '--once']))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "dnnscale top: error: dnnscale top needs rich: " \
        "pip install 'dnnscale[top]'", r
    pytest.importorskip("rich")
    r = subprocess.run(dnnscale_cmd() + ["top", "--once", "--control-endpoint", "ipc://%s/none.sock" % tmp_path],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no dnnscale daemon" in r.stdout + r.stderr


def test_every_control_command_has_its_client_method_verb_and_protocol_row():
    """daemon/commands.py is the one table: each command's keys are its client method's
    parameters, it has a CLI verb, and docs/protocol.md has its row."""
    import inspect
    from daemon.cli import build_parser
    from daemon.client import Client
    from daemon.commands import COMMANDS
    protocol = open(os.path.join(ROOT, "docs", "protocol.md")).read()
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, c in COMMANDS.items():
        params = [p for p in inspect.signature(getattr(Client, name)).parameters if p != "self"]
        assert params == list(c.keys), (name, params, c.keys)
        assert {"set_budget": "budget", "clear_budget": "budget"}.get(name, name) in sub.choices, name
        assert "| `%s` |" % name in protocol, name

"""Run an emulated dnnscale (an arm64 or armhf interpreter under qemu-user) against the Nano
and XU3 fixture trees, drive it from this machine over its ipc sockets, and compare its
logits with this machine's. Called by scripts/emulate-boards.sh; prints one table.

    python3 scripts/emulate_boards.py --python "qemu-aarch64 -L ROOT ROOT/usr/bin/python3" \\
        --site SITE --arch arm64 --work DIR
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from daemon.client import Client, ClientError  # noqa: E402
from models import ModelSet, zoo  # noqa: E402
from tests.fixtures import trees  # noqa: E402
from tests.fixtures.kernel import snapshot  # noqa: E402


def images(n: int = 8) -> np.ndarray:
    """Real CIFAR-10 test images where ../shared has them, else seeded noise."""
    p = os.path.join(REPO, "..", "shared", "data", "cifar10", "cifar-10-batches-py")
    if os.path.isfile(os.path.join(p, "test_batch")):
        from models import cifar
        return np.ascontiguousarray(cifar.load(p, train=False).x_test[:n])
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def run_tree(py, env, tree: str, work: str, host: ModelSet, x: np.ndarray) -> dict:
    shutil.rmtree(work, ignore_errors=True)        # a run before this one left its tree and state
    os.makedirs(work)
    root = trees.build(tree, os.path.join(work, "sysfs"))
    before = snapshot(root)
    row = {"tree": tree}
    t0 = time.time()
    r = subprocess.run(py + ["-m", "daemon.cli", "platform", "--json", "--sysfs-root", root], env=env,
                       capture_output=True, text=True, timeout=900)
    row["platform_s"] = round(time.time() - t0, 1)
    if r.returncode != 0:
        raise SystemExit("dnnscale platform failed on %s:\n%s" % (tree, r.stderr[-2000:]))
    desc = json.loads(r.stdout)
    row["platform"] = desc["platform"]
    row["targets"] = ",".join(desc["targets"])
    cfg = os.path.join(work, "config.yaml")
    with open(cfg, "w") as f:
        f.write("profile_runs: 1\n")
    iep, cep = "ipc://%s/infer.sock" % work, "ipc://%s/control.sock" % work
    log = open(os.path.join(work, "serve.log"), "w")
    t0 = time.time()
    proc = subprocess.Popen(py + ["-m", "daemon.cli", "serve", "--sysfs-root", root, "--config", cfg,
                                  "--state-dir", os.path.join(work, "state"), "--infer-endpoint", iep,
                                  "--control-endpoint", cep, "--threads", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with Client(iep, cep, timeout_s=30) as c:
            status = None
            while status is None and time.time() - t0 < 1800:
                if proc.poll() is not None:
                    raise SystemExit("serve exited (%s) on %s:\n%s" % (proc.returncode, tree,
                                                                       open(log.name).read()[-3000:]))
                try:
                    status = c.status()
                except ClientError:
                    time.sleep(2)
            row["ready_s"] = round(time.time() - t0, 1)
            diffs, lat = [], []
            for k in range(1, host.groups + 1):
                t1 = time.time()
                res = c.infer(x, groups=k)
                lat.append(time.time() - t1)
                diffs.append(float(np.abs(res.logits - host.run(k, host.preprocess(x))).max()))
            row["max_abs_diff"] = "%.1e" % max(diffs)
            row["infer_s_k1_kG"] = "%.2f / %.2f" % (lat[0], lat[-1])
            s = c.status()
            row["dvfs"] = s["dvfs"]["enabled"]
            row["model"] = s["model"]["name"]
            row["pool"] = s["model"].get("onnxruntime_pool")
            row["packing"] = s["model"].get("packing")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            row["rc"] = proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            row["rc"] = "killed"
        log.close()
    row["restored"] = snapshot(root) == before
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", required=True, help="the emulated interpreter, as a command line")
    ap.add_argument("--site", required=True, help="where the project and its wheels are installed")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    py = shlex.split(a.python)
    env = dict(os.environ, PYTHONPATH=a.site)
    env.pop("NOTIFY_SOCKET", None)
    v = subprocess.run(py + ["-c", "import sys, onnxruntime, numpy; print(sys.version.split()[0], "
                                   "onnxruntime.__version__, numpy.__version__)"],
                       env=env, capture_output=True, text=True, timeout=900)
    if v.returncode != 0:
        raise SystemExit("the emulated interpreter cannot import onnxruntime:\n" + v.stderr[-2000:])
    pyv, ortv, npv = v.stdout.split()
    host = ModelSet.load(zoo.default_path(), threads=1)
    x = images()
    rows = [run_tree(py, env, t, os.path.join(a.work, t), host, x) for t in ("jetson-nano", "odroid-xu3")]
    print("\n%s: Python %s, onnxruntime %s, numpy %s (emulated by qemu-user)" % (a.arch, pyv, ortv, npv))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("| " + " | ".join("---" for _ in keys) + " |")
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    ok = all(r["rc"] == 0 and r["restored"] and float(r["max_abs_diff"]) < 1e-4 for r in rows)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Data beyond CIFAR-10: an image folder and IDX files, at a non-CIFAR shape, through
train → export → load → the real daemon → ``dnnscale infer``."""
from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess

import numpy as np
import pytest

from tests.daemon_harness import ROOT, Daemon, dnnscale_cmd
from tests.fixtures import trees


def digit_like(n: int, classes: int, seed: int, size: int = 28):
    """Grayscale images whose class is their brightness (survives crops and flips)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (rng.integers(0, 30, (n, size, size)) + (20 + 200 * y // max(classes - 1, 1))[:, None, None])
    return x.clip(0, 255).astype(np.uint8), y


def write_folder(root: str, classes: int = 5, per_class: int = 40, size: int = 28):
    from PIL import Image
    names = ["c%d" % i for i in range(classes)]
    for split, seed, n in (("train", 0, classes * per_class), ("test", 1, classes * 10)):
        x, y = digit_like(n, classes, seed, size)
        for i, (a, c) in enumerate(zip(x, y)):
            d = os.path.join(root, split, names[c])
            os.makedirs(d, exist_ok=True)
            Image.fromarray(a, "L").save(os.path.join(d, "%04d.png" % i))
    return names


def write_idx(root: str, x: np.ndarray, y: np.ndarray, prefix: str) -> None:
    os.makedirs(root, exist_ok=True)
    with gzip.open(os.path.join(root, "%s-images-idx3-ubyte.gz" % prefix), "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">III", *x.shape) + x.tobytes())
    with gzip.open(os.path.join(root, "%s-labels-idx1-ubyte.gz" % prefix), "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, 1) + struct.pack(">I", len(y)) + y.astype(np.uint8).tobytes())


def test_layouts_and_one_line_errors(tmp_path):
    from models import datasets
    from models.cifar import DataError
    write_folder(str(tmp_path / "folder"), classes=3, per_class=4)
    d = datasets.load(str(tmp_path / "folder"))
    assert d.layout == "folder" and d.classes == ["c0", "c1", "c2"] and d.x_train.shape[1:] == (28, 28, 1)
    assert len(d.mean) == 1 and 0 < d.mean[0] < 1                      # from the training images
    x, y = digit_like(30, 10, 0)
    write_idx(str(tmp_path / "idx"), x, y, "train")
    write_idx(str(tmp_path / "idx"), x[:10], y[:10], "t10k")
    d = datasets.load(str(tmp_path / "idx"))
    assert d.layout == "idx" and d.classes[0] == "t-shirt/top" and d.x_test.shape == (10, 28, 28, 1)
    assert datasets.describe(str(tmp_path / "idx")) == ((28, 28, 1), 10)
    assert datasets.load(str(tmp_path / "idx"), image=32, channels=3).x_test.shape == (10, 32, 32, 3)
    with pytest.raises(DataError, match="none of the layouts"):
        datasets.load(str(tmp_path))
    os.makedirs(tmp_path / "bad" / "train" / "only")
    with pytest.raises(DataError, match="has no images"):
        datasets.load(str(tmp_path / "bad"))
    from PIL import Image
    Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(str(tmp_path / "bad" / "train" / "only" / "a.png"))
    with pytest.raises(DataError, match="no test/ folder"):
        datasets.load(str(tmp_path / "bad"))
    os.makedirs(tmp_path / "bad" / "test" / "only")
    with pytest.raises(DataError, match="at least 2"):
        datasets.load(str(tmp_path / "bad"))
    (tmp_path / "idx" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" + b"\0" * 5))
    with pytest.raises(DataError, match="truncated"):
        datasets.load(str(tmp_path / "idx"))


def test_train_serve_infer_a_grayscale_folder(tmp_path):
    """5 classes of 1x28x28 images, unequal groups (the shipped Fashion-MNIST set's kind):
    dnnscale train → the model set → the real daemon serves it unchanged → dnnscale infer
    classifies a 28x28 grayscale PNG."""
    pytest.importorskip("torch")
    from PIL import Image
    data = str(tmp_path / "data")
    names = write_folder(data)
    out = str(tmp_path / "set")
    r = subprocess.run(dnnscale_cmd() + ["train", "--data", data, "--out", out, "--groups", "2", "--epochs", "2",
                                         "--size", "tiny", "--group-widths", "1,1.5", "--val", "40", "--batch", "32",
                                         "--threads", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    from models import ModelSet
    ms = ModelSet.load(out)
    assert ms.input_shape == (1, 28, 28) and ms.classes == names and ms.groups == 2
    assert ms.manifest["arch"]["classes"] == 5 and ms.level(1)["accuracy"] > 35   # chance: 20
    assert ms.manifest["arch"]["group_widths"] == [1, 1.5] and ms.level(2)["macs"] > 2 * ms.level(1)["macs"]
    assert len(ms.manifest["input"]["mean"]) == 1 and ms.manifest["input"]["mean"][0] != 0.4914   # its own data's
    root = trees.build("generic", str(tmp_path / "sysfs"))
    d = Daemon(str(tmp_path / "run"), out, sysfs_root=root)
    try:
        d.wait_ready()
        x, y = digit_like(1, 5, 7)
        Image.fromarray(x[0], "L").save(str(tmp_path / "one.png"))
        r = subprocess.run(dnnscale_cmd() + ["infer", str(tmp_path / "one.png"), "--json", "--endpoint", d.infer_ep,
                                             "--control-endpoint", d.control_ep], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        row = json.loads(r.stdout)["images"][0]
        assert row["name"] in names and len(row["top"]) == 3
        with d.client() as c:                      # the protocol's shape comes from the manifest
            assert len(c.infer(np.zeros((2, 28, 28, 1), np.uint8)).labels) == 2
        r = subprocess.run(dnnscale_cmd() + ["eval", "--model", out, "--data", data, "--latency-runs", "0"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "top-1" in r.stdout, r.stderr
    finally:
        assert d.stop() == 0, d.output()

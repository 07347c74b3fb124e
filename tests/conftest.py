"""Shared fixtures: tiny CIFAR-format data made here, tiny model sets, the real data if present."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARED_CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10", "cifar-10-batches-py")


def make_images(n: int, seed: int):
    """Images whose class is visible in their colour and a stripe, so a tiny net learns it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 90, (n, 32, 32, 3))
    x[:, :, :, 0] += (y * 16)[:, None, None]
    for i, c in enumerate(y):
        x[i, 3 * c:3 * c + 3, :, 1] += 120
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from models import cifar
    root = str(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py")
    xtr, ytr = make_images(800, 0)
    xte, yte = make_images(200, 1)
    cifar.write_batches(root, xtr, ytr, xte, yte)
    return root


def tiny_config(groups=3, epochs=1, **kw):
    from models.arch import TINY
    from models.train import TrainConfig
    kw.setdefault("arch", TINY)
    return TrainConfig(groups=groups, epochs=epochs, val=100, batch=50, head_epochs=2, **kw)


@pytest.fixture(scope="session")
def tiny_trained(tiny_data, tmp_path_factory):
    """A trained and exported tiny G=3 group set: (model_dir, trainer result, config)."""
    pytest.importorskip("torch")
    from models import export
    from models.train import Trainer
    out = str(tmp_path_factory.mktemp("tinyset"))
    cfg = tiny_config()
    result = Trainer(tiny_data, os.path.join(out, "checkpoints"), cfg, log=lambda s: None).run()
    export.export_group_set(result, out, cfg, name="tiny", command="test")
    return out, result, cfg


def write_random_set(out_dir: str, groups: int = 3, seed: int = 0, arch=None) -> str:
    """A group model set with random weights, written without torch (needs onnx)."""
    from models import manifest as mf, onnxset
    from models.arch import TINY
    from models.cifar import DEFAULT_CLASSES, MEAN, STD
    arch = arch or TINY
    rng = np.random.default_rng(seed)
    s = arch.final_size

    def t(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    per_group = []
    for grp in range(1, groups + 1):
        g, a = {}, arch.group(grp)
        cin = a.in_channels
        for i, (w, k) in enumerate(zip(a.widths, a.kernels)):
            g["conv%d.w" % i], g["conv%d.b" % i] = t(w, cin, k, k), t(w)
            cin = w
        g["fc1.w"], g["fc1.b"] = t(a.hidden, a.widths[-1] * s * s), t(a.hidden)
        per_group.append(g)
    heads = [{"w": t(arch.classes, arch.features(k)), "b": t(arch.classes)} for k in range(1, groups + 1)]
    files = onnxset.write_group_set(out_dir, arch, per_group, heads)
    m = {"format": mf.FORMAT, "kind": "group", "name": "random", "shares_weights": True,
         "input": {"name": "input", "shape": [arch.in_channels, arch.image, arch.image], "layout": "NCHW",
                   "dtype": "float32", "mean": list(MEAN[:arch.in_channels]), "std": list(STD[:arch.in_channels]),
                   "classes": (list(DEFAULT_CLASSES) + ["class %d" % i for i in range(10, arch.classes)])[:arch.classes]},
         "output": {"name": "logits", "shape": ["N", arch.classes]}, "arch": arch.to_dict(),
         "levels": [dict(level=k, file=onnxset.level_file(k), accuracy=50.0 + k, confidence=1.0,
                         **arch.cost(k)) for k in range(1, groups + 1)],
         "files": {f: {} for f in files}, "columns": onnxset.columns_entry(groups)}
    mf.write(out_dir, m)
    return out_dir


@pytest.fixture(scope="session")
def random_set(tmp_path_factory):
    pytest.importorskip("onnx")
    return write_random_set(str(tmp_path_factory.mktemp("randomset")))


@pytest.fixture
def shared_cifar():
    if not os.path.isfile(os.path.join(SHARED_CIFAR, "test_batch")):
        pytest.skip("../shared/data/cifar10 is not here")
    return SHARED_CIFAR


@pytest.fixture(scope="session")
def tiny_portfolio(tiny_data, tmp_path_factory):
    pytest.importorskip("torch")
    from models import export
    from models.arch import TINY
    from models.portfolio import PortfolioConfig, PortfolioTrainer
    out = str(tmp_path_factory.mktemp("portfolio"))
    cfg = PortfolioConfig(epochs=2, rewind_epoch=1, levels=4, level_epochs=1, rate=0.5, val=100, batch=50,
                          arch=TINY)
    result = PortfolioTrainer(tiny_data, os.path.join(out, "ck"), cfg, log=lambda s: None).run()
    m = export.export_portfolio(result, out, cfg, name="tiny-portfolio", command="test")
    return out, result, m


@pytest.fixture(autouse=True)
def _cpus_as_found():
    """A test that runs the executor in this process pins this thread (the inference thread's
    place, models/pools.py); the next test, and any daemon it starts, inherit it. Put back."""
    cpus = os.sched_getaffinity(0)
    yield
    if os.sched_getaffinity(0) != cpus:
        os.sched_setaffinity(0, cpus)

"""The shipped model sets in models/zoo/: they load (checksums verified), serve every level,
and their manifests tell the truth about the test set."""
import os

import numpy as np
import pytest

from models import ModelSet, zoo
from models.manifest import ModelSetError

SHIPPED = zoo.available()


def test_default_set_is_shipped():
    assert zoo.DEFAULT in SHIPPED
    with pytest.raises(ModelSetError, match="no shipped model set named 'nope'"):
        zoo.path("nope")


FASHION_MNIST = "/usr/share/datasets/fashion-mnist"     # Debian's dataset-fashion-mnist


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_set_loads_and_runs_every_level(name):
    ms = ModelSet.load(zoo.path(name))   # verifies every file's checksum
    c, h, w = ms.input_shape
    x = ms.preprocess(np.random.default_rng(0).integers(0, 256, (3, h, w, c), dtype=np.uint8))
    for k in range(1, ms.groups + 1):
        out = ms.run(k, x)
        assert out.shape == (3, len(ms.classes)) and np.isfinite(out).all()
    levels = ms.manifest["levels"]
    assert ms.manifest["measured_on"] in ("test_batch (10000 images)", "the test split (10000 images)")
    assert all(lv["accuracy"] is not None for lv in levels)


def _test_data(name, request):
    """The test split a shipped set was measured on (skip where it is not installed)."""
    from models import datasets
    if name.startswith("fashion-mnist"):
        if not os.path.isdir(FASHION_MNIST):
            pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
        return datasets.load(FASHION_MNIST, train=False)
    return datasets.load(request.getfixturevalue("shared_cifar"), train=False)


@pytest.mark.shared
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_manifest_accuracy_is_what_the_files_give(name, request):
    """The manifest is the measured truth: re-measuring the smallest level on its test split
    gives its number (every level: ``dnnscale eval --data DIR``, about a minute)."""
    data = _test_data(name, request)
    ms = ModelSet.load(zoo.path(name))
    pred = np.concatenate([ms.run(1, ms.preprocess(data.x_test[i:i + 1000])).argmax(1) for i in range(0, 10000, 1000)])
    assert 100.0 * (pred == data.y_test).mean() == pytest.approx(ms.level(1)["accuracy"], abs=0.02)


def _readme_tables():
    """{set name: [(level, top-1 %), ...]} from README.md's ``<!-- table:NAME -->`` blocks."""
    import os
    import re
    from tests.conftest import ROOT
    text = open(os.path.join(ROOT, "README.md")).read()
    out = {}
    for name, body in re.findall(r"<!-- table:([\w.-]+) -->(.*?)<!-- /table -->", text, re.S):
        out[name] = [(int(a), float(b)) for a, b in re.findall(r"^\| (\d+) \| ([\d.]+) \|", body, re.M)]
    return out


def test_readme_tables_are_the_shipped_manifests():
    """README's per-level tables must be the manifests' numbers, for every shipped set."""
    tables = _readme_tables()
    assert sorted(tables) == sorted(SHIPPED)
    for name, rows in tables.items():
        levels = ModelSet.load(zoo.path(name)).manifest["levels"]
        assert rows == [(lv["level"], round(lv["accuracy"], 2)) for lv in levels], name

"""The shipped model sets in models/zoo/: they load (checksums verified), serve every level,
and their manifests tell the truth about the test set."""
import numpy as np
import pytest

from models import ModelSet, zoo
from models.manifest import ModelSetError

SHIPPED = zoo.available()


def test_default_set_is_shipped():
    assert zoo.DEFAULT in SHIPPED
    with pytest.raises(ModelSetError, match="no shipped model set named 'nope'"):
        zoo.path("nope")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_set_loads_and_runs_every_level(name):
    ms = ModelSet.load(zoo.path(name))   # verifies every file's checksum
    x = ms.preprocess(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    for k in range(1, ms.groups + 1):
        out = ms.run(k, x)
        assert out.shape == (3, 10) and np.isfinite(out).all()
    levels = ms.manifest["levels"]
    assert ms.manifest["measured_on"] == "test_batch (10000 images)"
    assert all(lv["accuracy"] is not None for lv in levels)


@pytest.mark.shared
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_manifest_accuracy_is_what_the_files_give(name, shared_cifar):
    """The manifest is the measured truth: re-measuring the smallest level on test_batch gives
    its number (every level: ``dnnscale eval --data DIR``, about a minute)."""
    from models import cifar
    data = cifar.load(shared_cifar, train=False)
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

"""The columns of a group set on their own (models/onnxset.py ``write_columns``): every range
of columns gives its features from the same bytes of weights.bin, the head of k joins them,
and any split of 1..k into ranges run at once gives the logits of ``kN.onnx``."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest

from models import ModelSet


def splits(k):
    """Every split of columns 1..k into consecutive ranges."""
    if k == 0:
        yield []
        return
    for first_len in range(1, k + 1):
        for rest in splits(k - first_len):
            yield [(1, first_len)] + [(a + first_len, b + first_len) for a, b in rest]


@pytest.mark.parametrize("unequal", [False, True])
def test_every_split_equals_the_whole_network(tmp_path, unequal):
    pytest.importorskip("onnx")
    from models.arch import TINY
    from tests.conftest import write_random_set
    arch = dataclasses.replace(TINY, group_widths=(0.5, 1.0, 2.0)) if unequal else TINY
    ms = ModelSet.load(write_random_set(str(tmp_path / "set"), groups=3, arch=arch), threads=1)
    x = np.random.default_rng(1).standard_normal((5,) + ms.input_shape).astype(np.float32)
    for k in range(1, 4):
        want = ms.run(k, x)
        for split in splits(k):
            got = ms.run_split(k, x, split)
            # float32 convs summed in another order (a grouped conv against its groups
            # alone): within 2e-5 of the largest logit (these random weights give ~13)
            err = float(np.abs(got - want).max() / np.abs(want).max())
            assert err < 2e-5, (k, split, err)


def test_a_split_must_cover_the_columns_in_order(random_set):
    ms = ModelSet.load(random_set, threads=1)
    x = np.zeros((1,) + ms.input_shape, np.float32)
    for bad in ([(1, 1)], [(2, 3)], [(1, 1), (3, 3)], [(1, 2), (2, 3)]):
        with pytest.raises(ValueError, match="cover 1..3"):
            ms.run_split(3, x, bad)


@pytest.mark.parametrize("unequal", [False, True])
def test_columns_added_to_an_older_set_are_the_exported_ones(tmp_path, unequal):
    """A set exported before the columns existed gets them (ranges, heads, anytime steps)
    from its own kN graphs: the same bytes as an export writes."""
    pytest.importorskip("onnx")
    import os
    from models import onnxset
    from models.arch import TINY
    from tests.conftest import write_random_set
    arch = dataclasses.replace(TINY, group_widths=(0.5, 1.0, 2.0)) if unequal else TINY
    d = write_random_set(str(tmp_path / "set"), groups=3, arch=arch)
    names = sorted(f for part in onnxset.columns_entry(3).values() for f in part.values())
    exported = {n: open(os.path.join(d, n), "rb").read() for n in names}
    for n in names:
        os.remove(os.path.join(d, n))
    from models import manifest as mf
    added = onnxset.add_columns(d, mf.read(d, verify=False))
    assert sorted(added) == sorted(names)
    assert {n: open(os.path.join(d, n), "rb").read() for n in names} == exported


@pytest.mark.parametrize("name", ["cifar10-g4", "fashion-mnist-g4"])
def test_the_shipped_sets_columns_give_their_logits(name):
    """The shipped group sets carry their columns (`dnnscale columns`): every two-way split of
    k=G gives the labels of k=G and logits within 2e-5 of its largest."""
    from models import zoo
    ms = ModelSet.load(zoo.resolve(name), threads=1)
    G = ms.groups
    x = ms.preprocess(np.random.default_rng(2).integers(0, 256, (16,) + tuple(ms.manifest["input"]["image"]["shape"]),
                                                        dtype=np.uint8))
    want = ms.run(G, x)
    for cut in range(1, G):
        got = ms.run_split(G, x, [(1, cut), (cut + 1, G)])
        assert (got.argmax(1) == want.argmax(1)).all()
        assert float(np.abs(got - want).max() / np.abs(want).max()) < 2e-5, cut

"""The dynamic DNN: data loading, incremental training, export, ModelSet."""
from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import yaml

from models import ModelSet, ModelSetError, cifar, manifest as mf
from tests.conftest import ROOT, make_images, tiny_config


# ----------------------------------------------------------------------------- data
def test_cifar_roundtrip(tmp_path):
    x, y = make_images(50, 3)
    cifar.write_batches(str(tmp_path), x, y, x[:10], y[:10])
    d = cifar.load(str(tmp_path))
    assert np.array_equal(d.x_train, x) and np.array_equal(d.y_train, y)
    assert np.array_equal(d.x_test, x[:10]) and d.classes[0] == "airplane"
    assert cifar.load(str(tmp_path)).sha256 == d.sha256  # the data checksum is stable


def test_cifar_accepts_parent_folder(tmp_path):
    x, y = make_images(20, 3)
    cifar.write_batches(str(tmp_path / "cifar-10-batches-py"), x, y, x, y)
    assert len(cifar.load(str(tmp_path)).x_test) == 20


@pytest.mark.parametrize("damage, expect", [
    ("nodir", "does not exist"),
    ("missing", "test_batch is missing"),
    ("garbage", "not a CIFAR-10 python batch"),
    ("evil", "refusing to load posix.system"),
    ("shape", "must be uint8 [N, 3072]"),
    ("labels", "labels outside 0..9"),
])
def test_cifar_bad_data_dir(tmp_path, damage, expect):
    x, y = make_images(20, 3)
    root = str(tmp_path / "d")
    cifar.write_batches(root, x, y, x, y)
    tb = os.path.join(root, "test_batch")
    if damage == "nodir":
        root = str(tmp_path / "nope")
    elif damage == "missing":
        os.remove(tb)
    elif damage == "garbage":
        open(tb, "wb").write(b"not a pickle at all")
    elif damage == "evil":
        class Evil:
            def __reduce__(self):
                return (os.system, ("true",))
        pickle.dump({b"data": Evil(), b"labels": []}, open(tb, "wb"))
    elif damage == "shape":
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, open(tb, "wb"))
    elif damage == "labels":
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, open(tb, "wb"))
    with pytest.raises(cifar.DataError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        cifar.load(root)


@pytest.mark.shared
def test_real_cifar10(shared_cifar):
    d = cifar.load(shared_cifar)
    assert d.x_train.shape == (50000, 32, 32, 3) and d.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(d.y_test).tolist() == [1000] * 10
    assert d.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


# ----------------------------------------------------------------------------- training
def _levels_equal_torch(ms, result):
    """Every level of ``ms`` equals the torch network of its first k groups and its head (1e-5)."""
    import torch
    from models.network import GroupedNet
    x = np.random.default_rng(5).standard_normal((7, 3, 32, 32)).astype(np.float32)
    for k in range(1, ms.groups + 1):
        ref = GroupedNet(result["columns"][:k], result["heads"][k - 1]).eval()
        with torch.no_grad():
            want = ref(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ms.run(k, x), want, rtol=1e-5, atol=1e-5)


def test_round_trip_and_prefix_exactness(tiny_trained):
    """train -> export -> load -> run: every level equals the torch network of its first k
    groups and its head (1e-5)."""
    out, result, cfg = tiny_trained
    ms = ModelSet.load(out)
    assert ms.groups == 3 and ms.kind == "group"
    _levels_equal_torch(ms, result)
    for lv in ms.manifest["levels"]:
        assert 0 <= lv["accuracy"] <= 100 and lv["macs"] > 0 and lv["params"] > 0
    assert ms.manifest["levels"][-1]["confidence"] == 1.0
    assert ms.manifest["provenance"]["data_sha256"] == result["data"].sha256
    spent = ms.manifest["provenance"]["training_epoch_seconds"]   # the time to produce the set, per group
    assert len(spent["per_phase"]) == 3 and spent["total"] == pytest.approx(sum(spent["per_phase"]), abs=0.2)
    assert all(s > 0 for s in spent["per_phase"])
    assert list(spent["per_device"]) == ["cpu"]   # every epoch records where it ran
    assert spent["per_device"]["cpu"] == pytest.approx(spent["total"], abs=0.2)


@pytest.fixture(scope="module")
def tiny_unequal(tiny_data, tmp_path_factory):
    """A trained and exported tiny G=3 set of unequal groups (x0.5, x1, x2)."""
    import dataclasses
    pytest.importorskip("torch")
    from models import export
    from models.arch import TINY
    from models.train import Trainer
    out = str(tmp_path_factory.mktemp("tinyunequal"))
    cfg = tiny_config(epochs=2, arch=dataclasses.replace(TINY, group_widths=(0.5, 1.0, 2.0)), ens_weight=1.0)
    result = Trainer(tiny_data, os.path.join(out, "checkpoints"), cfg, log=lambda s: None).run()
    export.export_group_set(result, out, cfg, name="tiny-unequal", command="test")
    return out, result, cfg


def test_unequal_groups_round_trip_and_share_weights(tiny_unequal):
    """group_widths: group g has its own widths; every level equals the torch network of its
    first k groups, every kN points into the one weights.bin, a group's tensors are the same
    bytes in every level that has it, and the manifest's cost is the unequal groups'."""
    import onnx
    out, result, cfg = tiny_unequal
    ms = ModelSet.load(out)
    _levels_equal_torch(ms, result)
    assert [c.fc1.out_features for c in result["columns"]] == [8, 16, 32]        # TINY hidden 16 x 0.5, 1, 2
    assert [c.convs[0].out_channels for c in result["columns"]] == [2, 4, 8]
    where = {}
    for k in (1, 2, 3):
        model = onnx.load(os.path.join(out, "k%d.onnx" % k), load_external_data=False)
        for t in model.graph.initializer:
            ext = {e.key: e.value for e in t.external_data}
            assert ext["location"] == "weights.bin"
            if not t.name.startswith("head"):
                assert where.setdefault(t.name, (ext["offset"], ext["length"])) == (ext["offset"], ext["length"])
    assert {n.split(".")[0] for n in where} == {"g1", "g2", "g3"}
    levels = ms.manifest["levels"]
    assert [lv["macs"] for lv in levels] == [cfg.arch.cost(k)["macs"] for k in (1, 2, 3)]
    assert levels[2]["macs"] - levels[1]["macs"] > levels[1]["macs"] - levels[0]["macs"] > 0
    assert ms.manifest["arch"]["group_widths"] == [0.5, 1.0, 2.0]


def test_unequal_groups_leave_the_earlier_ones_and_resume_bit_identical(tiny_data, tiny_unequal, tmp_path):
    import dataclasses
    from models.network import state_equal
    from models.train import Trainer, TrainError
    _, three, cfg = tiny_unequal
    ck = str(tmp_path / "ck")
    with pytest.raises(Stop):
        Trainer(tiny_data, ck, cfg, log=stop_in_group2).run()
    resumed = Trainer(tiny_data, ck, cfg, resume=True, log=lambda s: None).run()
    for a, b in zip(resumed["columns"], three["columns"]):
        assert state_equal(a.state_dict(), b.state_dict())
    with pytest.raises(TrainError, match="--group-widths lists 3 numbers for 2 groups"):
        Trainer(tiny_data, str(tmp_path / "two"), dataclasses.replace(cfg, groups=2), log=lambda s: None)


def test_equal_groups_are_one_grouped_conv_per_layer(random_set):
    """Without group_widths (the shipped sets) a level is one grouped Conv per layer, as before."""
    import onnx
    from models.arch import TINY
    model = onnx.load(os.path.join(random_set, "k3.onnx"), load_external_data=False)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == len(TINY.widths) + 1     # the convs and FC1
    assert [a.i for n in convs[1:] for a in n.attribute if a.name == "group"] == [3] * len(TINY.widths)


def test_training_learns(tiny_trained):
    out, _, _ = tiny_trained
    accs = [lv["accuracy"] for lv in ModelSet.load(out).manifest["levels"]]
    assert max(accs) > 30  # 10 classes: chance is 10%


def test_frozen_groups_bit_identical(tiny_data, tiny_trained, tmp_path):
    """Training group g changes nothing for k < g: a 1-group run gives the same column 1,
    bit for bit (weights and BatchNorm statistics), as the 3-group run."""
    from models.train import Trainer
    from models.network import state_equal
    _, three, _ = tiny_trained
    one = Trainer(tiny_data, str(tmp_path / "ck"), tiny_config(groups=1), log=lambda s: None).run()
    a, b = one["columns"][0].state_dict(), three["columns"][0].state_dict()
    assert state_equal(a, b)
    assert any("running_mean" in k for k in a)  # BN statistics are part of the comparison


def test_frozen_group_file_untouched(tiny_data, tmp_path):
    """The finished group-1 checkpoint is not rewritten while group 2 trains."""
    from models.train import Trainer
    ck = str(tmp_path / "ck")
    Trainer(tiny_data, ck, tiny_config(groups=2), log=lambda s: None).run()
    digest = mf.sha256_file(os.path.join(ck, "group1.pt"))
    os.remove(os.path.join(ck, "group2.pt"))
    Trainer(tiny_data, ck, tiny_config(groups=2), resume=True, log=lambda s: None).run()
    assert mf.sha256_file(os.path.join(ck, "group1.pt")) == digest


class Stop(Exception):
    pass


def stop_in_group2(msg):
    """A training log callback that interrupts a 3-group, 2-epoch run after group 2's first epoch."""
    if msg.startswith("group 2/3 epoch 1/2"):
        raise Stop


def test_resume_is_bit_identical(tiny_data, tiny_trained, tmp_path):
    from models.train import Trainer
    from models.network import state_equal

    cfg = tiny_config(epochs=2)
    ck = str(tmp_path / "ck")
    with pytest.raises(Stop):
        Trainer(tiny_data, ck, cfg, log=stop_in_group2).run()
    assert os.path.exists(os.path.join(ck, "group2.partial.pt"))
    resumed = Trainer(tiny_data, ck, cfg, resume=True, log=lambda s: None).run()
    fresh = Trainer(tiny_data, str(tmp_path / "ck2"), cfg, log=lambda s: None).run()
    for a, b in zip(resumed["columns"], fresh["columns"]):
        assert state_equal(a.state_dict(), b.state_dict())


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")


def test_cuda_run_resumes_on_the_cpu(tiny_data, tmp_path):
    """A run stopped while training on the GPU continues on the CPU: checkpoints hold CPU
    tensors, and the GPU-trained group 1 is what the CPU run keeps (frozen, bit for bit)."""
    _cuda()
    import torch
    from models.train import Trainer
    from models.network import state_equal

    cfg = tiny_config(epochs=2)
    ck = str(tmp_path / "ck")
    with pytest.raises(Stop):
        Trainer(tiny_data, ck, cfg, log=stop_in_group2, device="cuda").run()
    g1 = torch.load(os.path.join(ck, "group1.pt"), weights_only=True)
    assert all(v.device.type == "cpu" for v in g1["column"].values())
    part = torch.load(os.path.join(ck, "group2.partial.pt"), weights_only=False)
    assert part["epoch"] == 1 and part["opt"]["state"][0]["momentum_buffer"].device.type == "cpu"
    done = Trainer(tiny_data, ck, cfg, resume=True, log=lambda s: None).run()
    assert state_equal(done["columns"][0].state_dict(), g1["column"])
    acc = _test_accuracy(done, tiny_data)
    assert acc > 30, acc  # it learned, on both devices
    devices = {e["device"] for v in done["val"] for e in v["history"]}
    assert devices == {"cpu", "cuda: " + torch.cuda.get_device_name(0)}


def test_cuda_swa_stage(tiny_data, tmp_path):
    """The SWA stage on the GPU: its record and BatchNorm pass, CPU tensors in the checkpoint."""
    _cuda()
    import torch
    from models.train import Trainer
    ck = tmp_path / "ck"
    swa = Trainer(tiny_data, str(ck), tiny_config(groups=2, swa_epochs=1, swa_from=2),
                  log=lambda s: None, device="cuda").run()
    rec = swa["val"][1]
    assert "swa" not in swa["val"][0] and rec["swa"]["epochs"] == 1
    assert [e["epoch"] for e in rec["history"]] == [1, 1]
    assert all(int(bn.num_batches_tracked) == 2 for bn in swa["columns"][1].bns)
    g2 = torch.load(ck / "group2.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in g2["column"].values())


def _test_accuracy(result, data_dir) -> float:
    import torch
    from models import cifar as c
    from models.network import GroupedNet
    d = c.load(data_dir)
    x = torch.from_numpy(c.normalize(d.x_test))
    net = GroupedNet(result["columns"], result["heads"][-1]).eval()
    with torch.no_grad():
        return float((net(x).argmax(1).numpy() == d.y_test).mean() * 100)


def test_resume_guards(tiny_data, tmp_path):
    from models.train import Trainer, TrainError
    ck = str(tmp_path / "ck")
    Trainer(tiny_data, ck, tiny_config(groups=1), log=lambda s: None).run()
    with pytest.raises(TrainError, match="--resume"):
        Trainer(tiny_data, ck, tiny_config(groups=1), log=lambda s: None)
    with pytest.raises(TrainError, match="epochs was 1 .* now 3"):
        Trainer(tiny_data, ck, tiny_config(groups=1, epochs=3), resume=True, log=lambda s: None)


def test_ensemble_term_changes_only_the_groups_it_applies_to(tiny_data, tmp_path):
    """ens_weight adds CE of the k=g mean logits for groups >= ens_from: earlier groups stay
    bit-identical to a run without it, later ones differ; frozen groups still untouched."""
    from models.train import Trainer
    from models.network import state_equal
    plain = Trainer(tiny_data, str(tmp_path / "a"), tiny_config(), log=lambda s: None).run()
    ens = Trainer(tiny_data, str(tmp_path / "b"), tiny_config(ens_weight=1.0, ens_from=3), log=lambda s: None).run()
    same = lambda a, b: state_equal(a.state_dict(), b.state_dict())
    assert same(plain["columns"][0], ens["columns"][0]) and same(plain["columns"][1], ens["columns"][1])
    assert not same(plain["columns"][2], ens["columns"][2])


def test_swa_changes_only_the_groups_it_applies_to(tiny_data, tmp_path):
    """SWA runs after a group's own epochs for groups >= swa_from: earlier groups stay bit for
    bit as without it; the SWA group records the accuracies it started from and its epochs;
    its BatchNorm statistics are recomputed over one pass of the training set."""
    from models.train import Trainer
    from models.network import state_equal
    plain = Trainer(tiny_data, str(tmp_path / "a"), tiny_config(), log=lambda s: None).run()
    swa = Trainer(tiny_data, str(tmp_path / "b"), tiny_config(swa_epochs=2, swa_from=3), log=lambda s: None).run()
    same = lambda a, b: state_equal(a.state_dict(), b.state_dict())
    assert same(plain["columns"][0], swa["columns"][0]) and same(plain["columns"][1], swa["columns"][1])
    assert not same(plain["columns"][2], swa["columns"][2])
    assert "swa" not in swa["val"][1]
    rec = swa["val"][2]
    assert rec["swa"]["before"]["chosen_acc"] == plain["val"][2]["chosen_acc"]
    assert rec["swa"]["before"]["alone_acc"] == plain["val"][2]["history"][-1]["val_acc"]
    assert [e["epoch"] for e in rec["history"]] == [1, 1, 2]  # the group's epoch, then 2 SWA epochs
    # 700 training images in batches of 500, counted from zero
    assert all(int(bn.num_batches_tracked) == 2 for bn in swa["columns"][2].bns)


def stop_in_swa(msg):
    if msg.startswith("group 3/3 SWA epoch 1/2"):
        raise Stop


def test_swa_on_a_finished_run_and_resumed(tiny_data, tmp_path):
    """A finished run's groups copied into a new folder get the SWA stage there; stopped in
    the middle of it and resumed, the result equals an uninterrupted SWA run bit for bit."""
    from models.train import Trainer
    from models.network import state_equal
    Trainer(tiny_data, str(tmp_path / "plain"), tiny_config(), log=lambda s: None).run()
    branch = tmp_path / "branch"
    branch.mkdir()
    for g in (1, 2, 3):
        shutil.copy(tmp_path / "plain" / ("group%d.pt" % g), branch / ("group%d.pt" % g))
    cfg = tiny_config(swa_epochs=2, swa_from=3)
    with pytest.raises(Stop):
        Trainer(tiny_data, str(branch), cfg, resume=True, log=stop_in_swa).run()
    assert os.path.exists(branch / "group3.swa.partial.pt")
    resumed = Trainer(tiny_data, str(branch), cfg, resume=True, log=lambda s: None).run()
    assert not os.path.exists(branch / "group3.swa.partial.pt")
    fresh = Trainer(tiny_data, str(tmp_path / "fresh"), cfg, log=lambda s: None).run()
    for a, b in zip(resumed["columns"], fresh["columns"]):
        assert state_equal(a.state_dict(), b.state_dict())
    assert resumed["val"][2]["swa"] == fresh["val"][2]["swa"]


def test_epochs_per_group_on_a_finished_run(tiny_data, tmp_path):
    """--epochs 1,1,2 on a copy of a 1-epoch run's groups 1-2: those stay bit for bit, group 3
    gets its own 2-epoch schedule, and equals a run with those epochs from the start."""
    from models.train import Trainer
    from models.network import state_equal
    Trainer(tiny_data, str(tmp_path / "plain"), tiny_config(), log=lambda s: None).run()
    branch = tmp_path / "branch"
    branch.mkdir()
    for g in (1, 2):
        shutil.copy(tmp_path / "plain" / ("group%d.pt" % g), branch / ("group%d.pt" % g))
    cfg = tiny_config(epochs=[1, 1, 2])
    longer = Trainer(tiny_data, str(branch), cfg, log=lambda s: None).run()
    fresh = Trainer(tiny_data, str(tmp_path / "fresh"), cfg, log=lambda s: None).run()
    assert [len(v["history"]) for v in longer["val"]] == [1, 1, 2]
    for a, b in zip(longer["columns"], fresh["columns"]):
        assert state_equal(a.state_dict(), b.state_dict())
    import json
    assert json.load(open(branch / "run.json"))["config"]["epochs"] == [1, 1, 2]


def test_epochs_per_group_checks():
    from models.train import TrainError
    assert tiny_config(epochs=[2, 2, 2]).epochs == 2          # one way to record equal epochs
    with pytest.raises(TrainError, match="--epochs lists 2 numbers for 3 groups"):
        tiny_config(epochs=[1, 2]).check_epochs()
    with pytest.raises(TrainError, match="--epochs must be >= 1, got 1,0,1"):
        tiny_config(epochs=[1, 0, 1]).check_epochs()


def test_weight_average_is_the_mean_of_the_snapshots():
    import torch
    from models.arch import TINY
    from models.network import Column
    from models.train import _Average
    cols = [Column(TINY) for _ in range(3)]
    avg = _Average(cols[0])
    for c in cols:
        avg.add(c)
    out = Column(TINY)
    avg.apply(out)
    for name, p in out.named_parameters():
        want = torch.stack([dict(c.named_parameters())[name] for c in cols]).mean(0)
        assert torch.allclose(p, want, atol=1e-6), name


def test_resume_of_a_run_from_before_a_setting_existed(tiny_data, tmp_path):
    """A run.json without a later-added key resumes when that key has its default value."""
    import json
    from models.train import Trainer, TrainError
    ck = str(tmp_path / "ck")
    Trainer(tiny_data, ck, tiny_config(groups=1), log=lambda s: None).run()
    run = os.path.join(ck, "run.json")
    d = json.load(open(run))
    del d["config"]["ens_weight"]
    json.dump(d, open(run, "w"))
    Trainer(tiny_data, ck, tiny_config(groups=1), resume=True, log=lambda s: None).run()
    with pytest.raises(TrainError, match="ens_weight was 0.0 .* now 0.5"):
        Trainer(tiny_data, ck, tiny_config(groups=1, ens_weight=0.5), resume=True, log=lambda s: None)


# ----------------------------------------------------------------------------- ModelSet
def _copy(src, tmp_path):
    dst = str(tmp_path / "set")
    shutil.copytree(src, dst)
    return dst


def test_manifest_missing_file(random_set, tmp_path):
    d = _copy(random_set, tmp_path)
    os.remove(os.path.join(d, "k2.onnx"))
    with pytest.raises(ModelSetError, match="k2.onnx is missing"):
        ModelSet.load(d)


def test_manifest_altered_file(random_set, tmp_path):
    d = _copy(random_set, tmp_path)
    p = os.path.join(d, "weights.bin")
    data = bytearray(open(p, "rb").read())
    data[100] ^= 0xFF
    open(p, "wb").write(bytes(data))
    with pytest.raises(ModelSetError, match="weights.bin is altered"):
        ModelSet.load(d)


def test_manifest_bad_yaml(random_set, tmp_path):
    d = _copy(random_set, tmp_path)
    open(os.path.join(d, "manifest.yaml"), "w").write("format: [unclosed\n")
    with pytest.raises(ModelSetError, match="manifest.yaml is not valid YAML"):
        ModelSet.load(d)


@pytest.mark.parametrize("edit, expect", [
    (lambda m: m.pop("levels"), "missing key 'levels'"),
    (lambda m: m.update(kind="weird"), "kind must be one of"),
    (lambda m: m["levels"][1].update(level=5), r"levels\[1\]: level must be 2"),
    (lambda m: m["files"].update({"../etc/passwd": {"sha256": "0"}}), "plain names"),
    (lambda m: m["input"].update(std=[0, 1, 1]), "std must be positive"),
])
def test_manifest_bad_keys(random_set, tmp_path, edit, expect):
    d = _copy(random_set, tmp_path)
    p = os.path.join(d, "manifest.yaml")
    m = yaml.safe_load(open(p))
    edit(m)
    yaml.safe_dump(m, open(p, "w"))
    with pytest.raises(ModelSetError, match=expect):
        ModelSet.load(d)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(ModelSetError, match="manifest.yaml is missing"):
        ModelSet.load(str(tmp_path))


def test_run_validates_input(random_set):
    ms = ModelSet.load(random_set)
    good = np.zeros((2, 3, 32, 32), np.float32)
    assert ms.run(1, good).shape == (2, 10)
    for k in (0, 4, 1.5, True, "2"):
        with pytest.raises(ModelSetError, match="level must be an integer in 1..3"):
            ms.run(k, good)
    for bad in (good.astype(np.float64), np.zeros((2, 32, 32, 3), np.float32), good[0],
                np.zeros((0, 3, 32, 32), np.float32)):
        with pytest.raises(ModelSetError, match="input must be float32"):
            ms.run(1, bad)
    with pytest.raises(ModelSetError, match="target gpu is not available"):
        ms.run(1, good, target="gpu")


def test_preprocess_matches_training_normalisation(random_set):
    ms = ModelSet.load(random_set)
    x, _ = make_images(4, 9)
    np.testing.assert_allclose(ms.preprocess(x), cifar.normalize(x), rtol=1e-6, atol=1e-6)   # float rounding near 0
    with pytest.raises(ModelSetError, match="uint8"):
        ms.preprocess(x.astype(np.float32))


def test_levels_share_one_weight_file(random_set):
    """Every level's ONNX file holds no weights of its own: all point into weights.bin."""
    import onnx
    for k in (1, 2, 3):
        model = onnx.load(os.path.join(random_set, "k%d.onnx" % k), load_external_data=False)
        locs = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert locs == {"weights.bin"}
        assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    sizes = [os.path.getsize(os.path.join(random_set, "k%d.onnx" % k)) for k in (1, 2, 3)]
    assert max(sizes) < 10_000


def _runs_in_flight():
    """(folder, dnnscale train arguments) of every run training/README.md says how to continue."""
    import re
    from tests.conftest import ROOT
    readme = os.path.join(ROOT, "training", "README.md")
    if not os.path.exists(readme):
        return []
    return re.findall(r"\| `([\w.-]+)/` \|[^|]*\| `dnnscale (train [^`]*)` \|", open(readme).read())


@pytest.mark.parametrize("folder,command", _runs_in_flight() or [pytest.param(None, None, marks=pytest.mark.skip(
    reason="no training run in flight"))])
def test_runs_in_flight_still_resumable(folder, command):
    """The command training/README.md gives to continue each run must still produce the
    settings that run started with (what `--resume` compares)."""
    import json
    import shlex
    from tests.conftest import ROOT
    from daemon.cli import build_parser, train_setup
    from models.train import config_differences
    run = os.path.join(ROOT, "training", folder, "run.json")
    assert os.path.exists(run), run
    args = shlex.split(command)
    data = args[args.index("--data") + 1]
    if not os.path.exists(os.path.join(ROOT, data)):      # ../shared, or a Debian dataset package
        pytest.skip("the run's data folder %s is not here" % data)
    cfg = train_setup(build_parser().parse_args(args))[0]
    assert config_differences(json.load(open(run))["config"], cfg) == []


def test_arch_groups_of_their_own_widths():
    from models.arch import TINY, Arch
    a = Arch(group_widths=(0.5, 1.0, 2.0))
    assert a.group(1).widths == Arch().scaled(0.5).widths and a.group(3).hidden == 256
    assert a.group(2) == Arch() and a.features(3) == 64 + 128 + 256 and not a.equal_groups
    # one group's cost is that of its one-column network; the k-network adds its head's
    assert a.cost(1) == Arch().scaled(0.5).cost(1)
    assert a.cost(2)["params"] - a.cost(1)["params"] == Arch().cost(1)["params"] - 10
    assert Arch(group_widths=(1, 1)).equal_groups and Arch(group_widths=(1, 1)).cost(2) == Arch().cost(2)
    assert Arch(group_widths=(0.5, 0.5)).cost(2) == Arch().scaled(0.5).cost(2)
    assert Arch.from_dict(a.to_dict()) == a and Arch.from_dict(TINY.to_dict()).group_widths == ()
    with pytest.raises(ValueError, match="group widths must be > 0"):
        Arch(group_widths=(1, 0))
    with pytest.raises(ValueError, match="group 4: the network has 3 groups"):
        a.group(4)


def test_arch_scaled_multiplies_widths_and_hidden():
    from models.arch import TINY, Arch
    wide = TINY.scaled(2)
    assert wide.widths == (8, 16, 16, 16, 16) and wide.hidden == 32 and wide.kernels == TINY.kernels
    assert Arch().scaled(1.0) == Arch()
    assert Arch().scaled(1.25).widths == (20, 60, 120, 80, 80)
    # conv MACs grow with the square of the multiplier (except the first layer's fixed input)
    assert 3.5 < Arch().scaled(2).cost(1)["macs"] / Arch().cost(1)["macs"] < 4.0
    with pytest.raises(ValueError, match="multiplier"):
        TINY.scaled(0)


# ---------------------------------------------------------------- lanes: thread counts and pools
LANE_THREADS = r"""
import os, sys, json, numpy as np
from models import ModelSet
tasks = lambda: len(os.listdir("/proc/self/task"))
base = tasks()
one = ModelSet.load(sys.argv[1], threads=1)
after_one = tasks()
two = ModelSet.load(sys.argv[1], threads=1, lanes={"cpu": 2, "cpu:1": 1})
x = np.random.default_rng(0).standard_normal((2,) + one.input_shape).astype(np.float32)
print(json.dumps({"one": after_one - base, "two": tasks() - after_one, "pool": two.pool,
                  "threads": {t: two.threads_of(t) for t in ("cpu", "cpu:1", "other")},
                  "same": all(np.allclose(two.run(k, x, "cpu"), two.run(k, x, "cpu:1"), atol=1e-5)
                              and np.allclose(one.run(k, x), two.run(k, x, "cpu"), atol=1e-5)
                              for k in range(1, one.groups + 1))}))
"""


def test_each_lane_runs_with_its_own_thread_count(random_set):
    """A lane's sessions have exactly its thread count: a one-thread set creates no pool
    thread at all (the caller runs every operator), a two-thread lane one worker per level's
    session; every lane gives the same logits."""
    import json
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", LANE_THREADS, random_set], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    levels = ModelSet.load(random_set).groups
    assert got["one"] == 0
    assert got["two"] == levels            # the 2-thread sessions: one worker each; cpu:1 reuses size 1
    assert got["threads"] == {"cpu": 2, "cpu:1": 1, "other": 1}
    assert got["same"] and got["pool"] == "per-session, spinning in runs only"


def test_spinning_follows_what_the_installed_onnxruntime_supports(monkeypatch):
    """onnxruntime >= 1.13 stops a pool's spinning when a run ends; the boards' 1.11/1.12
    lack that option, and there the workers never spin (no core burnt between requests)."""
    from models import modelset

    def entry(so, key):
        try:
            return so.get_session_config_entry(key)
        except Exception:            # onnxruntime raises when the key was never set
            return None
    monkeypatch.delenv("DNNSCALE_ORT_SPIN", raising=False)
    monkeypatch.delenv("DNNSCALE_ORT_POOL", raising=False)
    monkeypatch.setattr(modelset.ort, "__version__", "1.11.0")
    so = modelset.session_options(3)
    assert so.intra_op_num_threads == 3 and modelset.spin_mode() == "off"
    assert entry(so, "session.intra_op.allow_spinning") == "0"
    assert entry(so, "session.force_spinning_stop") is None
    monkeypatch.setattr(modelset.ort, "__version__", "1.13.1")
    so = modelset.session_options(2)
    assert modelset.spin_mode() == "run"
    assert entry(so, "session.intra_op.allow_spinning") == "1"
    assert entry(so, "session.force_spinning_stop") == "1"


def test_lane_thread_counts_are_checked(random_set):
    with pytest.raises(ModelSetError, match="lane cpu:1: threads must be a positive integer, got 0"):
        ModelSet.load(random_set, lanes={"cpu:1": 0})


def test_random_erasing_blanks_one_rectangle_and_costs_no_draws_when_off():
    """--erase P: each image gets, with probability P, one rectangle of 2-40% of its area set
    to 0 after the crop and flip; at P = 0 the generator is drawn exactly as before, so runs
    without it (the shipped sets' checkpoints) resume bit for bit."""
    import torch
    from models.train import _augment
    x = torch.ones(256, 1, 28, 28)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(_augment(x, a), _augment(x, b, 0.0)) and torch.equal(a.get_state(), b.get_state())
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain, erased = _augment(x, a), _augment(x, b, 1.0)
    blank = ((plain != 0) & (erased == 0)).float().flatten(1).sum(1) / (28 * 28)   # zeros the crop did not make
    assert blank.min() > 0 and blank.max() <= 0.4 + 1e-6
    assert torch.equal(erased[erased != 0], plain[erased != 0])      # nothing else changed
    half = _augment(x, torch.Generator().manual_seed(4), 0.5)
    hit = (((_augment(x, torch.Generator().manual_seed(4)) != 0) & (half == 0)).flatten(1).any(1)).float().mean()
    assert 0.35 < float(hit) < 0.65

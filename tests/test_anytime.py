"""Anytime answers (issue 34): a request's columns are computed once and added one at a time;
an image stops at the first level whose top-1 probability reaches ``stop_at``; a progressive
request gets one reply per added level, the last final. Through the real daemon."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from models import ModelSet, zoo
from tests.daemon_harness import Daemon, dnnscale_cmd


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["cifar10-g4", "fashion-mnist-g4"])
def test_incremental_levels_equal_the_whole_networks(name):
    """At every k the incremental logits are those of kN.onnx, and an image that stops at k
    has k's logits."""
    ms = ModelSet.load(zoo.resolve(name), threads=1)
    hwc = tuple(ms.manifest["input"]["image"]["shape"])
    x = ms.preprocess(np.random.default_rng(3).integers(0, 256, (24,) + hwc, dtype=np.uint8))
    whole = {k: ms.run(k, x) for k in range(1, ms.groups + 1)}
    for k in whole:
        got, groups = ms.run_anytime(x, None, k)
        assert (groups == k).all()
        assert float(np.abs(got - whole[k]).max() / np.abs(whole[k]).max()) < 1e-5
    got, groups = ms.run_anytime(x, 0.9)
    assert groups.min() >= 1 and groups.max() <= ms.groups
    for i, k in enumerate(groups):
        assert np.allclose(got[i], whole[int(k)][i], rtol=0, atol=1e-5 * np.abs(whole[int(k)]).max())
        p = np.exp(whole[int(k)][i] - whole[int(k)][i].max())
        top = p.max() / p.sum()
        assert top >= 0.9 or k == ms.groups
        for j in range(1, int(k)):      # it did not stop earlier: no earlier level was sure enough
            q = np.exp(whole[j][i] - whole[j][i].max())
            assert q.max() / q.sum() < 0.9


def test_a_portfolio_cannot_stop_early():
    ms = ModelSet.load(zoo.resolve("cifar10-portfolio"), threads=1)
    with pytest.raises(Exception, match="has no group columns \\(a portfolio\\): it cannot stop early"):
        ms.run_anytime(np.zeros((1,) + ms.input_shape, np.float32), 0.9)
    # the daemon refuses the fields for it, with the reason; a daemon-wide default does not apply
    import json
    from daemon.protocol import InputSpec, ProtocolError, decode_infer
    spec = InputSpec((3, 32, 32), 4, 64, "it cannot stop early: " + ms.no_columns, stop_at=0.9)
    body = bytes(32 * 32 * 3)
    for field, code in (({"stop_at": 0.9}, "bad_stop_at"), ({"progressive": True}, "bad_progressive")):
        head = dict({"dtype": "uint8", "shape": [1, 32, 32, 3]}, **field)
        with pytest.raises(ProtocolError, match="a portfolio") as e:
            decode_infer([json.dumps(head).encode(), body], spec)
        assert e.value.code == code
    assert decode_infer([json.dumps({"dtype": "uint8", "shape": [1, 32, 32, 3]}).encode(), body], spec).stop_at is None


def test_stop_at_and_progressive_through_the_daemon(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile_runs: 1\n")
    d = Daemon(str(tmp_path / "run"), zoo.resolve("cifar10-g4"), config=str(cfg))
    try:
        d.wait_ready()
        with d.client() as c:
            img = _images(64)
            G = c.status()["model"]["levels"]
            whole = {k: c.infer(img, groups=k) for k in range(1, G + 1)}
            r = c.infer(img, stop_at=0.95)
            groups = r.header["groups_per_image"]
            assert len(groups) == 64 and 1 <= min(groups) and max(groups) <= G
            assert r.labels == [whole[k].labels[i] for i, k in enumerate(groups)]
            assert min(groups) < G, "some of 64 random images must be easy at 0.95"
            # a progressive request: a reply per level, groups 1..G, the last final
            replies = list(c.infer_progressive(img[:4]))
            assert [p.header["level"] for p in replies] == list(range(1, G + 1))
            assert [p.header["final"] for p in replies] == [False] * (G - 1) + [True]
            for p in replies:
                assert p.labels == whole[p.header["level"]].labels[:4]
                assert all(0 < q <= 1 for q in p.header["probabilities"])
            # progressive with stop_at: it ends at the level where every image had stopped
            replies = list(c.infer_progressive(img[:1], stop_at=0.5))
            assert replies[-1].header["final"] and replies[-1].header["groups_per_image"][0] == len(replies)
            s = c.status()
            # batch 64 at every level, whole and column by column, is not growth the memory
            # guard takes for a held message (sessions keep no arena: models/modelset.py)
            assert s["connections"]["memory_drops"] == 0, s["connections"]
            assert s["anytime"]["0.95"]["images"] == 64
            assert sum(s["anytime"]["0.95"]["groups"].values()) == 64
            # decided off the split (its profile is of whole levels), unless pinned there
            kinds = {n: t["kind"] for n, t in s["targets"].items()}
            split = next(n for n, k in kinds.items() if k == "split")
            c.pin(groups=G)
            assert kinds[c.infer(img[:1], stop_at=0.95).config["target"]] != "split"
            c.pin(groups=G, target=split)
            assert c.infer(img[:1], stop_at=0.95).config["target"] == split
            c.release()
            # the refusals say what is wrong
            for bad in (0, 1.5, "x", True):
                with pytest.raises(Exception, match="stop_at"):
                    c.infer(img[:1], stop_at=bad)
        # and the CLI: where each image stopped, and the answer after every group
        np.save(str(tmp_path / "x.npy"), img[:2])
        ep = ["--endpoint", d.infer_ep, "--control-endpoint", d.control_ep]
        r = subprocess.run(dnnscale_cmd() + ["infer", str(tmp_path / "x.npy"), "--stop-at", "0.95"] + ep,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.count("stopped at k=") == 2, r.stdout + r.stderr
        r = subprocess.run(dnnscale_cmd() + ["infer", str(tmp_path / "x.npy"), "--progressive"] + ep,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert [l.split(" so far")[0] for l in r.stdout.splitlines() if "so far" in l] == \
            ["k=%d" % k for k in range(1, G)]
    finally:
        d.stop()


def test_a_set_exported_before_its_step_graphs_says_how_to_get_them(tmp_path):
    """A group set whose manifest lists columns but no anytime steps (exported before them)
    still splits; a stop_at request is refused with the command that adds them, and after
    `dnnscale columns` it stops early."""
    import os
    import shutil
    from models import manifest as mf
    d = str(tmp_path / "old")
    shutil.copytree(zoo.resolve("fashion-mnist-g4"), d)
    m = mf.read(d)
    for k, f in m["columns"].pop("steps").items():
        os.remove(os.path.join(d, f))
        del m["files"][f]
    mf.write(d, m)
    ms = ModelSet.load(d, threads=1)
    assert ms.has_columns and "run `dnnscale columns` on it" in ms.no_anytime
    x = np.zeros((1,) + ms.input_shape, np.float32)
    with pytest.raises(Exception, match="exported before its anytime step graphs.*it cannot stop early"):
        ms.run_anytime(x, 0.9)
    assert ms.run_split(ms.groups, x, [(1, 1), (2, ms.groups)]).shape == (1, 10)
    out = subprocess.run(dnnscale_cmd() + ["columns", d], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ms = ModelSet.load(d, threads=1)
    assert ms.no_anytime == "" and ms.run_anytime(x, 0.9)[1].shape == (1,)


@pytest.mark.parametrize("stop_at", [None, 0.9])
def test_a_daemon_wide_stop_at_builds_the_steps_at_start(random_set, tmp_path, stop_at):
    """With a daemon-wide stop_at every request stops early: the step sessions of every
    thread count are built at start (and at a reload that sets it), not by a request.
    Without one they are built on a first stop_at request (memory for those that never ask)."""
    from tests.test_runtime import _service
    svc = _service(random_set, tmp_path, extra={"stop_at": stop_at, "threads": None})
    try:
        ms = svc.default.rt.models
        want = {(n, False) for n in ms._cpu}
        assert len(want) >= 1
        assert set(ms._anytime) == (want if stop_at else set())
        x = np.zeros((1, 32, 32, 3), np.uint8)
        from daemon.protocol import InferRequest
        replies, ran = svc.infer([InferRequest(1, "uint8", x, None, None, 0.9)])
        assert replies[0][0]["groups_per_image"][0] >= 1
        assert set(ms._anytime) >= {(ms.threads_of(ran.decision.config.target), False)}
        if stop_at is None:            # a reload that sets it builds the rest
            svc.cfg.stop_at = 0.9
            svc.reload()
            assert svc.default.rt.models is ms and set(ms._anytime) == want
    finally:
        svc.stop()


def test_an_anytime_request_is_not_decided_onto_a_split():
    """A split target runs a level's columns at once; an anytime run adds them one at a time,
    which the split's profile does not predict: a stepped decision takes the best target that
    is not a split, even where the split is the fastest for the whole level; pinned to the
    split, it stays there."""
    from governor import Config, Governor, Level, Profile, TargetFit, build_space
    levels = [Level(1, 80.0, 10_000_000), Level(2, 85.0, 20_000_000)]
    space = build_space(levels, {"big": [], "split": []})
    prof = Profile({"big": TargetFit(1e-10, 0.0, {}), "split": TargetFit(0.5e-10, 0.0, {})})   # 2 ms, 1 ms at k=2
    g = Governor(space, levels, prof, splits=["split"])
    assert g.decide().config == Config(2, "split", None)
    assert g.decide(stepped=True).config == Config(2, "big", None)
    assert g.decide(level=1, stepped=True).config == Config(1, "big", None)
    g.pin(target="split")
    assert g.decide(stepped=True).config == Config(2, "split", None)

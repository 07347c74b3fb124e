"""The DNNShifter-style portfolio: structured removal is exact, IMP training, serving."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from models import ModelSet
from models.arch import TINY
from models.prune import dead_filters, remove_dead


def _random_dense(rng, arch, dead):
    """Folded dense tensors with the given (layer → channels) filters dead (zero w and b)."""
    t, cin, s = {}, arch.in_channels, arch.final_size
    for i, (w, k) in enumerate(zip(arch.widths, arch.kernels)):
        t["conv%d.w" % i] = rng.standard_normal((w, cin, k, k)).astype(np.float32) * 0.3
        t["conv%d.b" % i] = rng.standard_normal(w).astype(np.float32) * 0.1
        for c in dead.get(i, ()):
            t["conv%d.w" % i][c] = 0
            t["conv%d.b" % i][c] = 0
        cin = w
    t["fc1.w"] = rng.standard_normal((arch.hidden, arch.widths[-1] * s * s)).astype(np.float32) * 0.1
    t["fc1.b"] = rng.standard_normal(arch.hidden).astype(np.float32) * 0.1
    for j in dead.get("fc1", ()):
        t["fc1.w"][j] = 0
        t["fc1.b"][j] = 0
    t["fc2.w"] = rng.standard_normal((arch.classes, arch.hidden)).astype(np.float32)
    t["fc2.b"] = rng.standard_normal(arch.classes).astype(np.float32)
    return t


def _run_onnx(path, x):
    import onnxruntime as ort
    from models.modelset import session_options
    return ort.InferenceSession(path, session_options(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_structured_removal_is_exact_and_removes_only_dead(tmp_path):
    pytest.importorskip("onnx")
    from models import onnxset
    rng = np.random.default_rng(0)
    dead = {0: [1], 1: [0, 5], 3: [2, 3, 4], 4: [7], "fc1": [3, 9]}
    full = _random_dense(rng, TINY, dead)
    full["conv2.w"][:, 5] = 7.0        # inputs from a dead channel: removed with it, changes nothing
    small, report = remove_dead(full, 5, TINY.final_size)
    for i in range(5):
        assert report["conv%d" % i]["removed"] == sorted(dead.get(i, []))
    assert report["fc1"]["removed"] == [3, 9]
    # a filter is only removed if it is entirely zero
    near = _random_dense(rng, TINY, {})
    near["conv0.w"][0] = 0
    near["conv0.b"][0] = 1e-30
    assert not dead_filters(near["conv0.w"], near["conv0.b"])[0]
    w, hidden = [small["conv%d.w" % i].shape[0] for i in range(5)], small["fc1.w"].shape[0]
    onnxset.write_dense(str(tmp_path / "full.onnx"), TINY, full)
    onnxset.write_dense(str(tmp_path / "small.onnx"), dataclasses.replace(TINY, widths=tuple(w), hidden=hidden), small)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_run_onnx(str(tmp_path / "small.onnx"), x), _run_onnx(str(tmp_path / "full.onnx"), x),
                               rtol=1e-5, atol=1e-5)
    assert os.path.getsize(str(tmp_path / "small.onnx")) < os.path.getsize(str(tmp_path / "full.onnx"))


def test_imp_masks_are_nested_and_density_falls(tiny_portfolio):
    _, result, _ = tiny_portfolio
    states = result["states"]
    dens = [s["density"] for s in states]
    assert dens[0] == 1.0 and all(b < a for a, b in zip(dens, dens[1:]))
    assert abs(dens[1] - 0.5) < 0.02          # rate 0.5 of the remaining weights per level
    for a, b in zip(states[1:], states[2:]):  # pruned weights stay pruned
        for n in a["masks"]:
            assert bool(((b["masks"][n] > 0) <= (a["masks"][n] > 0)).all())


def test_variants_equal_their_sparse_models(tiny_portfolio):
    """Each exported variant's outputs equal its sparse model's (1e-5), and the removed
    channels are exactly the sparse model's all-zero filters."""
    import torch
    from models.network import Column, fold_column
    from models.portfolio import choose_variants
    out, result, m = tiny_portfolio
    ms = ModelSet.load(out)
    assert ms.kind == "portfolio" and ms.manifest["shares_weights"] is False
    chosen = choose_variants(result["states"], 6)[::-1]
    x = np.random.default_rng(3).standard_normal((5, 3, 32, 32)).astype(np.float32)
    for lv, st in zip(m["levels"], chosen):
        col = Column(TINY)
        col.load_state_dict(st["column"])
        col.eval()
        with torch.no_grad():
            want = col(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ms.run(lv["level"], x), want, rtol=1e-5, atol=1e-5)
        folded = fold_column(col)
        for i in range(5):
            zero = int(dead_filters(folded["conv%d.w" % i], folded["conv%d.b" % i]).sum())
            assert lv["removed_channels"]["conv%d" % i] == min(zero, TINY.widths[i] - 1)
            assert lv["widths"][i] == TINY.widths[i] - lv["removed_channels"]["conv%d" % i]
    assert sum(m["levels"][0]["removed_channels"].values()) > 0   # the smallest variant did shrink
    assert m["levels"][0]["params"] < m["levels"][-1]["params"]
    params = [lv["nonzero_params"] for lv in m["levels"]]
    assert params == sorted(params)            # smallest first
    assert m["levels"][-1]["compression"] == 1.0


def test_daemon_serves_a_portfolio(tiny_portfolio, tmp_path):
    from tests.daemon_harness import Daemon
    out, _, m = tiny_portfolio
    d = Daemon(str(tmp_path / "run"), out, platform="sim-odroid-xu3")
    try:
        d.wait_ready()
        with d.client() as c:
            r = c.infer(np.zeros((1, 32, 32, 3), np.uint8), groups=1)
            assert r.config["groups"] == 1 and r.header["simulated"] is True
            s = c.status()
            assert s["model"]["kind"] == "portfolio" and s["model"]["shares_weights"] is False
            assert s["model"]["levels"] == len(m["levels"])
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("mode", ["finetune", "weights"])
def test_rewind_modes(tiny_data, tmp_path, mode):
    """Level 1 retrains from the trained dense weights (finetune) or from the rewind point
    (weights, DNNShifter's choice)."""
    pytest.importorskip("torch")
    import torch
    from models import export
    from models.portfolio import PortfolioConfig, PortfolioTrainer
    from models.network import state_equal
    seen = []

    class Spy(PortfolioTrainer):
        def _column(self, state):
            seen.append({k: v.clone() for k, v in state.items()})
            return super()._column(state)

    cfg = PortfolioConfig(epochs=2, rewind_epoch=1, levels=2, level_epochs=1, rate=0.5, val=100, batch=50,
                          arch=TINY, rewind=mode)
    result = Spy(tiny_data, str(tmp_path / "ck"), cfg, log=lambda s: None).run()
    dense = result["states"][0]["column"]
    rewind = torch.load(str(tmp_path / "ck" / "rewind.pt"), weights_only=False)["column"]
    # calls: the masks' shape (dense), level 1's magnitudes (dense), level 1's starting weights
    start = seen[2]
    want = dense if mode == "finetune" else rewind
    assert state_equal(start, want)
    assert not all(torch.equal(start[k], dense[k]) for k in dense) or mode == "finetune"
    m = export.export_portfolio(result, str(tmp_path / "set"), cfg)
    assert all(lv["max_abs_diff_vs_sparse"] < 1e-4 for lv in m["levels"])
    assert m["provenance"]["training"]["rewind"] == mode
    assert len(m["provenance"]["training_epoch_seconds"]["per_phase"]) == 3   # dense + 2 levels
    assert all(0 < lv["structured_seconds"] < 60 for lv in m["levels"])


def test_rewind_point_does_not_change_dense_training(tiny_data, tmp_path):
    """Saving the rewind point splits dense training in two; the learning-rate schedule and the
    random streams run on across the split, so the dense weights do not depend on where it is."""
    pytest.importorskip("torch")
    from models.portfolio import PortfolioConfig, PortfolioTrainer
    from models.network import state_equal
    dense = []
    for r in (1, 2):
        cfg = PortfolioConfig(epochs=3, rewind_epoch=r, levels=0, level_epochs=1, rate=0.5, val=100, batch=50,
                              arch=TINY)
        dense.append(PortfolioTrainer(tiny_data, str(tmp_path / str(r)), cfg, log=lambda s: None)
                     .run()["states"][0]["column"])
    assert state_equal(dense[0], dense[1])

"""The second kind of dynamic DNN: a DNNShifter-style portfolio (Eccles et al., 2023).

1. Train one dense network (a :class:`models.network.Column`), keeping its weights after
   ``rewind_epoch`` epochs as the rewind point.
2. Iterative magnitude pruning: per level, prune ``rate`` (20%) of the remaining conv and
   FC1 weights by global magnitude, rewind the surviving weights to the rewind point, and
   retrain ``level_epochs`` with the mask held (``rewind="finetune"``: keep the trained
   weights instead and retrain from a lower learning rate, a cheaper variant). A filter whose weights are all pruned also
   has its BatchNorm scale and shift pruned (and an FC1 neuron its bias), so it outputs
   exactly 0: that is what makes the structured step exact.
3. Pick one sparse model per compression ratio 1, 2, 4, 8, ... (weights kept vs dense).
4. Fold BatchNorm, remove every all-zero filter and the matching inputs of the next layer
   (:mod:`models.prune`): a smaller dense network with the sparse model's outputs, no
   fine-tuning. Export each as its own ONNX file; they share no weights.

Checkpoints (``run.json``, ``dense.pt``, ``rewind.pt``, ``level{l}.pt``, ``partial.pt``)
make every phase resumable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List

import torch

from .network import Column
from .train import TrainConfig, Trainer, _atomic_save, _cpu, _load


@dataclass
class PortfolioConfig(TrainConfig):
    groups: int = 1
    rewind_epoch: int = 2
    levels: int = 10
    level_epochs: int = 10
    rate: float = 0.2
    max_variants: int = 6
    # "weights": DNNShifter's weight rewinding (retrain from the early weights; needs about
    # the full schedule per level to recover). "finetune": keep the trained weights and
    # retrain level_epochs from finetune_lr: far cheaper per level, not DNNShifter's choice.
    rewind: str = "weights"
    finetune_lr: float = 0.01


def _prunable(col: Column) -> Dict[str, torch.Tensor]:
    return {n: p for n, p in col.named_parameters() if (n.startswith("convs.") or n == "fc1.weight")
            and n.endswith("weight")}


class PortfolioTrainer(Trainer):
    """Dense training, then IMP with rewinding; ``run()`` returns the chosen sparse models."""

    def _p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def run(self) -> Dict:
        cfg = self.cfg
        from .train import TrainError
        if not 0 < cfg.rewind_epoch < cfg.epochs:
            raise TrainError("--rewind-epoch must be between 0 and --epochs")
        if cfg.rewind not in ("weights", "finetune"):
            raise TrainError("--rewind must be weights or finetune, got %r" % cfg.rewind)
        dense = self._dense()
        rewind = _load(self._p("rewind.pt"))
        states = [dense]
        masks = {n: torch.ones_like(p) for n, p in _prunable(self._column(dense["column"])).items()}
        for level in range(1, cfg.levels + 1):
            path = self._p("level%d.pt" % level)
            if os.path.exists(path):
                done = _load(path)
                self.log("level %d/%d: done earlier (keeps %.1f%%, val %.2f%%)"
                         % (level, cfg.levels, 100 * done["density"], done["val_acc"]))
            else:
                done = self._level(level, states[-1], rewind, masks)
                _atomic_save(done, path)
            masks = done["masks"]
            states.append(done)
        return {"states": states, "data": self.data}

    def _column(self, state) -> Column:
        c = Column(self.cfg.arch)
        c.load_state_dict(state)
        return c.eval()

    def _dense(self) -> Dict:
        path = self._p("dense.pt")
        if os.path.exists(path):
            return _load(path)
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        col = Column(cfg.arch).to(self.device, memory_format=torch.channels_last)
        opt = self._optimizer(col)
        gen = torch.Generator().manual_seed(cfg.seed)
        start, history = self._resume(self._p("partial.pt"), col, opt, gen)
        if start < cfg.rewind_epoch:
            self._epochs(col, opt, gen, start, cfg.epochs, self._p("partial.pt"), "dense", history,
                         stop=cfg.rewind_epoch)
            _atomic_save({"column": _cpu(col.state_dict())}, self._p("rewind.pt"))
            start = cfg.rewind_epoch
        self._epochs(col, opt, gen, start, cfg.epochs, self._p("partial.pt"), "dense", history)
        out = {"column": _cpu(col.state_dict()), "density": 1.0,
               "val_acc": history[-1]["val_acc"], "history": history, "level": 0, "masks": None}
        _atomic_save(out, path)
        os.remove(self._p("partial.pt"))
        return out

    def _level(self, level: int, prev: Dict, rewind: Dict, masks: Dict[str, torch.Tensor]) -> Dict:
        cfg = self.cfg
        trained = self._column(prev["column"])
        params = _prunable(trained)
        # Global magnitude threshold over the weights still alive.
        alive = torch.cat([params[n].detach().abs()[masks[n].bool()] for n in params])
        k = int(cfg.rate * alive.numel())
        thresh = alive.kthvalue(max(k, 1)).values
        masks = {n: (masks[n].bool() & (params[n].detach().abs() > thresh)).float() for n in params}
        start_from = rewind["column"] if cfg.rewind == "weights" else prev["column"]
        col = self._column(start_from).to(self.device, memory_format=torch.channels_last)
        extra = self._dead_masks(col, masks)
        every = {n: m.to(self.device) for n, m in dict(masks, **extra).items()}
        named = dict(col.named_parameters())

        def apply():
            with torch.no_grad():
                for n, m in every.items():
                    named[n].mul_(m)

        apply()
        opt = self._optimizer(col)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + 100 + level)
        torch.manual_seed(cfg.seed * 1000 + 100 + level)
        start, history = self._resume(self._p("partial.pt"), col, opt, gen)
        self._epochs(col, opt, gen, start, cfg.level_epochs, self._p("partial.pt"),
                     "level %d/%d" % (level, cfg.levels), history, after_step=apply,
                     lr=cfg.lr if cfg.rewind == "weights" else cfg.finetune_lr)
        kept = sum(float(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        out = {"column": _cpu(col.to(memory_format=torch.contiguous_format).state_dict()),
               "masks": masks, "density": kept / total, "val_acc": history[-1]["val_acc"], "history": history,
               "level": level}
        if os.path.exists(self._p("partial.pt")):
            os.remove(self._p("partial.pt"))
        self.log("level %d/%d: keeps %.1f%% of the weights, val %.2f%%"
                 % (level, cfg.levels, 100 * out["density"], out["val_acc"]))
        return out

    @staticmethod
    def _dead_masks(col: Column, masks: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """BN scale/shift of filters with no weight left, and FC1 biases of dead neurons."""
        out: Dict[str, torch.Tensor] = {}
        for i in range(len(col.convs)):
            m = masks["convs.%d.weight" % i]
            alive = (m.reshape(len(m), -1).sum(1) > 0).float()
            out["bns.%d.weight" % i] = alive
            out["bns.%d.bias" % i] = alive.clone()
        m = masks["fc1.weight"]
        out["fc1.bias"] = (m.sum(1) > 0).float()
        return out


def choose_variants(states: List[Dict], max_variants: int) -> List[Dict]:
    """One sparse model per compression ratio 1, 2, 4, ...: the first level reaching it."""
    chosen, ratio = [], 1.0
    for s in states:
        if 1.0 / s["density"] >= ratio - 1e-9:
            chosen.append(s)
            ratio *= 2
        if len(chosen) == max_variants:
            break
    return chosen

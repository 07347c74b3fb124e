"""Incremental training of the grouped network (needs the ``train`` extra: torch).

Group 1 is trained alone; group g is then trained with groups 1..g-1 frozen. Each new
group is trained on its *own* classifier's loss, so it becomes a strong, diverse member
of the ensemble (training it on the averaged logits makes it learn only a residual and
adds nothing: see shared/notes/training.md). After group g's epochs, the head of the
g-group network is fitted on the frozen features of groups 1..g; the validation split
(held out of training) then picks, per k, the better of that learned head and the plain
mean of the groups' own logits.

Frozen groups are never handed to an optimizer and run in ``eval()`` under ``no_grad``,
so their parameters and BatchNorm statistics stay bit-identical and nothing for k < g
changes when group g is trained.

Everything is checkpointed under ``checkpoint_dir``: ``run.json`` (the settings),
``group{g}.partial.pt`` after every epoch of the group in progress, ``group{g}.pt`` when
a group (and its head) is done. ``resume=True`` continues where an interrupted run
stopped, bit-for-bit as if it had not been interrupted (on the same kind of device).

Stochastic weight averaging (``swa_epochs``) is a stage of its own after a group is done:
it starts from the finished ``group{g}.pt`` with a fresh optimizer and its own random
stream, checkpoints to ``group{g}.swa.partial.pt`` and then replaces ``group{g}.pt``
(whose ``val["swa"]`` keeps the accuracies before it). So a finished run gets it by
copying its ``group*.pt`` into a new checkpoint folder and running there with the
SWA settings: the groups it does not apply to are kept bit for bit.

``device="cuda"`` trains on a GPU: the data, the columns and the augmentation run there,
while the random draws (order, crops, flips) stay on the CPU generator, so a run can
move between devices on ``--resume``; cuDNN's kernels make GPU runs close to, not
bit-identical with, CPU runs. Checkpoints always hold CPU tensors.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import cifar, datasets
from .arch import Arch
from .network import Column, columns_from_states, mean_head


class TrainError(RuntimeError):
    """A training run cannot start or continue (bad settings, mismatched checkpoints)."""


@dataclass
class TrainConfig:
    groups: int = 4
    epochs: Union[int, List[int]] = 30   # per group: one number for all, or one per group
    seed: int = 0
    batch: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    val: int = 2500            # training images held out to choose each k's head
    head_epochs: int = 15
    head_aug_passes: int = 2   # augmented passes over the training set to fit a head on
    # Groups g >= ens_from add ens_weight x the cross-entropy of the k=g mean logits (the frozen
    # groups' logits, no gradient, plus the new group's) to their own loss: the extra gradient is
    # largest where the frozen groups are wrong. 0 = own loss only.
    ens_weight: float = 0.0
    ens_from: int = 2
    # Groups g >= swa_from get swa_epochs more epochs at the constant swa_lr once their cosine
    # schedule is done, and keep the average of the weights at the end of each of those epochs
    # (stochastic weight averaging, Izmailov et al. 2018), BatchNorm statistics recomputed for it.
    swa_epochs: int = 0
    swa_lr: float = 0.01
    swa_from: int = 1
    # Random erasing (Zhong et al. 2017) in the training epochs: with this probability an image
    # gets one rectangle of 2-40% of its area, aspect 0.3-3.3, set to 0 (the normalised mean).
    erase: float = 0.0
    arch: Arch = field(default_factory=Arch)

    def __post_init__(self):
        # One way to record a run: a list of equal epochs is the single number.
        if isinstance(self.epochs, (list, tuple)):
            self.epochs = list(self.epochs)
            if len(set(self.epochs)) == 1:
                self.epochs = self.epochs[0]

    def epochs_of(self, g: int) -> int:
        """The cosine schedule's length for group g (1-based)."""
        return self.epochs[g - 1] if isinstance(self.epochs, list) else self.epochs

    def check_epochs(self) -> None:
        per = self.epochs if isinstance(self.epochs, list) else [self.epochs]
        if isinstance(self.epochs, list) and len(per) != self.groups:
            raise TrainError("--epochs lists %d numbers for %d groups: give one, or one per group"
                             % (len(per), self.groups))
        if min(per) < 1:
            raise TrainError("--epochs must be >= 1, got %s" % ",".join(map(str, per)))

    def to_dict(self) -> Dict:
        d = dict(self.__dict__)
        d["arch"] = self.arch.to_dict()
        return d


def config_differences(old: Dict, cfg: TrainConfig) -> List[Tuple[str, object, object]]:
    """(key, old value, new value) for every setting of ``cfg`` that differs from a run's
    recorded ``old`` config; a setting added after the run started had its default there."""
    defaults = type(cfg)(arch=cfg.arch).to_dict()
    old = dict(old)
    if "arch" in old:   # likewise an architecture setting (group_widths) added after the run started
        old["arch"] = Arch.from_dict(old["arch"]).to_dict()
    return [(k, old.get(k, defaults[k]), v) for k, v in cfg.to_dict().items() if old.get(k, defaults[k]) != v]


def _atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load(path: str, weights_only: bool = False):
    """A checkpoint, onto the CPU whatever device wrote it."""
    return torch.load(path, map_location="cpu", weights_only=weights_only)


def _cpu(obj):
    """A copy of a state dict (a module's or an optimizer's) with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True).contiguous()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; a GPU torch cannot see is a :class:`TrainError`."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise TrainError("--device must be cpu, cuda or cuda:N, got %r" % name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device %s: this torch (%s) sees no CUDA GPU" % (name, torch.__version__))
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainError("--device %s: torch sees %d CUDA GPU(s)" % (name, torch.cuda.device_count()))
    return dev


def _augment(x: torch.Tensor, gen: torch.Generator, erase: float = 0.0) -> torch.Tensor:
    """Random crop (zero pad 4) and horizontal flip of a normalised NCHW batch, then with
    probability ``erase`` per image one erased rectangle (no extra draws when it is 0)."""
    b, c, h, w = x.shape
    dev = x.device
    p = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (b,), generator=gen).to(dev)
    dx = torch.randint(0, 9, (b,), generator=gen).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]       # b,1,h,1
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]       # b,1,1,w
    out = p[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
            rows, cols]
    flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
    out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return _erase(out, gen, erase) if erase else out


def _erase(x: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(0.02, 0.4, generator=gen) * h * w
    aspect = torch.exp(torch.empty(b).uniform_(math.log(0.3), math.log(1 / 0.3), generator=gen))
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=gen) * (h - eh + 1)).long()
    x0 = (torch.rand(b, generator=gen) * (w - ew + 1)).long()
    on = torch.rand(b, generator=gen) < p
    rows, cols = torch.arange(h), torch.arange(w)
    inside = (((rows[None] >= y0[:, None]) & (rows[None] < (y0 + eh)[:, None]))[:, :, None]
              & ((cols[None] >= x0[:, None]) & (cols[None] < (x0 + ew)[:, None]))[:, None, :] & on[:, None, None])
    return x.masked_fill(inside[:, None].to(x.device), 0.0)


def _features(cols: List[Column], x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.cat([c.features(x[i:i + batch]) for c in cols], 1)
                          for i in range(0, len(x), batch)])


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) * 100 if len(y) else float("nan")


class _Average:
    """The running mean of a column's parameters over the snapshots added to it."""

    def __init__(self, col: Column):
        self.n = 0
        self.mean = {k: torch.zeros_like(p) for k, p in col.named_parameters()}

    def add(self, col: Column) -> None:
        self.n += 1
        with torch.no_grad():
            for k, p in col.named_parameters():
                self.mean[k] += (p - self.mean[k]) / self.n

    def apply(self, col: Column) -> None:
        with torch.no_grad():
            for k, p in col.named_parameters():
                p.copy_(self.mean[k])

    def state(self) -> Dict:
        return {"n": self.n, "mean": _cpu(self.mean)}

    def load(self, state: Dict) -> None:
        self.n = state["n"]
        for k, v in state["mean"].items():
            self.mean[k].copy_(v)


class Trainer:
    def __init__(self, data_dir: str, checkpoint_dir: str, cfg: TrainConfig,
                 resume: bool = False, threads: Optional[int] = None,
                 log: Callable[[str], None] = None, device: str = "cpu"):
        self.cfg = cfg
        self.device = resolve_device(device)
        self.device_label = "cpu" if self.device.type == "cpu" else "cuda: " + torch.cuda.get_device_name(self.device)
        self.dir = checkpoint_dir
        self.log = log or (lambda s: tqdm.write(s, file=sys.stderr))
        if cfg.groups < 1:
            raise TrainError("--groups must be >= 1, got %d" % cfg.groups)
        if cfg.arch.group_widths and len(cfg.arch.group_widths) != cfg.groups:
            raise TrainError("--group-widths lists %d numbers for %d groups: give one per group"
                             % (len(cfg.arch.group_widths), cfg.groups))
        cfg.check_epochs()
        if threads:
            torch.set_num_threads(threads)
        arch = cfg.arch
        self.data = datasets.load(data_dir, image=arch.image, channels=arch.in_channels)
        if len(self.data.classes) != arch.classes:
            raise TrainError("%s has %d classes, the network %d (pass --classes %d)"
                             % (data_dir, len(self.data.classes), arch.classes, len(self.data.classes)))
        n = len(self.data.x_train)
        if n <= cfg.val + cfg.batch:
            raise TrainError("%d training images: too few for a validation split of %d and "
                             "a batch of %d" % (n, cfg.val, cfg.batch))
        self._prepare_dir(resume)
        perm = np.random.default_rng(cfg.seed).permutation(n)
        val_idx, train_idx = np.sort(perm[:cfg.val]), np.sort(perm[cfg.val:])
        to_x = lambda a: torch.from_numpy(cifar.normalize(a, self.data.mean, self.data.std)).to(self.device).contiguous(
            memory_format=torch.channels_last)
        to_y = lambda a: torch.from_numpy(a).to(self.device)
        self.x_train, self.y_train = to_x(self.data.x_train[train_idx]), to_y(self.data.y_train[train_idx])
        self.x_val, self.y_val = to_x(self.data.x_train[val_idx]), to_y(self.data.y_train[val_idx])

    # ----------------------------------------------------------------- checkpoints
    def _prepare_dir(self, resume: bool) -> None:
        os.makedirs(self.dir, exist_ok=True)
        run = os.path.join(self.dir, "run.json")
        settings = {"config": self.cfg.to_dict(), "data_sha256": self.data.sha256}
        if os.path.exists(run):
            if not resume:
                raise TrainError("%s already holds a training run: pass --resume to continue it, "
                                 "or choose another --out/--checkpoint-dir" % self.dir)
            with open(run) as f:
                old = json.load(f)
            for key in ("data_sha256",):
                if old.get(key) != settings[key]:
                    raise TrainError("cannot resume: the data differs from the run in %s" % self.dir)
            diffs = config_differences(old["config"], self.cfg)
            if diffs:
                raise TrainError("cannot resume: " + "; ".join("%s was %r in %s, now %r" % (k, was, self.dir, now)
                                                               for k, was, now in diffs))
        else:
            with open(run, "w") as f:
                json.dump(settings, f, indent=1)

    def _path(self, g: int, stage: str = "") -> str:
        """``group{g}.pt`` (done), or the partial checkpoint of ``stage`` ("partial", "swa.partial")."""
        return os.path.join(self.dir, "group%d%s.pt" % (g, "." + stage if stage else ""))

    # ----------------------------------------------------------------- training
    def run(self) -> Dict:
        """Train (or resume) every group; return the finished state (see :meth:`result`)."""
        cfg = self.cfg
        states: List[Dict] = []
        for g in range(1, cfg.groups + 1):
            if os.path.exists(self._path(g)):
                done = _load(self._path(g), weights_only=True)
                self.log("group %d/%d: done earlier (val k=%d %.2f%%)"
                         % (g, cfg.groups, g, done["val"]["chosen_acc"]))
            else:
                done = self._finish(g, self._train_group(g, states), "partial")
            if cfg.swa_epochs and g >= cfg.swa_from and "swa" not in done["val"]:
                done = self._finish(g, self._swa_group(g, states, done), "swa.partial")
            states.append(done)
        return self.result(states)

    def _finish(self, g: int, done: Dict, stage: str) -> Dict:
        _atomic_save(done, self._path(g))
        if os.path.exists(self._path(g, stage)):
            os.remove(self._path(g, stage))
        return done

    def result(self, states: List[Dict]) -> Dict:
        arch = self.cfg.arch
        cols = columns_from_states(arch, [s["column"] for s in states])
        heads = []
        for k, s in enumerate(states, 1):
            h = mean_head(cols[:k])
            if s["head"] is not None:
                h.load_state_dict(s["head"])
            heads.append(h)
        return {"columns": cols, "heads": heads,
                "head_kinds": [s["val"]["head"] for s in states],
                "val": [s["val"] for s in states], "data": self.data}

    def _optimizer(self, col: Column) -> torch.optim.Optimizer:
        cfg = self.cfg
        decay = [p for n, p in col.named_parameters() if n.endswith("weight") and p.dim() > 1]
        other = [p for n, p in col.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
        return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                {"params": other, "weight_decay": 0.0}],
                               lr=cfg.lr, momentum=cfg.momentum, nesterov=True)

    def _resume(self, path: str, col: Column, opt, gen: torch.Generator, average: Optional["_Average"] = None):
        """Load a partial checkpoint if there is one; return (epochs done, history)."""
        if not os.path.exists(path):
            return 0, []
        ck = _load(path)
        col.load_state_dict(ck["column"])
        opt.load_state_dict(ck["opt"])
        if average is not None:
            average.load(ck["average"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        return ck["epoch"], ck["history"]

    def _epochs(self, col: Column, opt, gen: torch.Generator, start: int, epochs: int, ckpt: str,
                tag: str, history: List[Dict], after_step=None, lr: Optional[float] = None,
                frozen: Optional[List[Column]] = None, stop: Optional[int] = None,
                average: Optional["_Average"] = None) -> None:
        """Epochs ``start``..``stop`` (default ``epochs``) of SGD with per-step cosine decay from
        ``lr`` (default: the configured one) to 0 at ``epochs``, augmentation, a checkpoint after
        every epoch. ``after_step`` runs after each optimizer step (masks); ``frozen`` columns add
        the ensemble term (ens_weight); with ``average`` the rate stays ``lr`` and the weights at
        the end of every epoch are added to the average (SWA)."""
        cfg = self.cfg
        stop = epochs if stop is None else stop
        lr = cfg.lr if lr is None else lr
        n = len(self.x_train)
        steps = n // cfg.batch
        total = steps * epochs
        for epoch in range(start, stop):
            col.train()
            t0 = time.time()
            order = torch.randperm(n, generator=gen)
            bar = tqdm(range(steps), desc="%s epoch %d/%d" % (tag, epoch + 1, epochs),
                       leave=False, file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0)
            run_loss = run_acc = 0.0
            for s in bar:
                t = epoch * steps + s
                for group in opt.param_groups:
                    group["lr"] = lr if average is not None else lr * 0.5 * (1 + math.cos(math.pi * t / total))
                idx = order[s * cfg.batch:(s + 1) * cfg.batch].to(self.device)
                x = _augment(self.x_train[idx], gen, cfg.erase).contiguous(memory_format=torch.channels_last)
                y = self.y_train[idx]
                logits = col(x)
                loss = F.cross_entropy(logits, y)
                if frozen:
                    with torch.no_grad():
                        prior = torch.stack([f(x) for f in frozen]).sum(0)
                    loss = loss + cfg.ens_weight * F.cross_entropy((prior + logits) / (len(frozen) + 1), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step()
                run_loss = 0.98 * run_loss + 0.02 * loss.item() if s else loss.item()
                run_acc = 0.98 * run_acc + 0.02 * _accuracy(logits, y) if s else _accuracy(logits, y)
                if s % 20 == 0:
                    bar.set_postfix(loss="%.3f" % run_loss, acc="%.1f" % run_acc, refresh=False)
            col.eval()
            val_acc = _accuracy(self._val_logits([col]), self.y_val)
            history.append({"epoch": epoch + 1, "loss": run_loss, "val_acc": val_acc,
                            "seconds": round(time.time() - t0, 1), "device": self.device_label})
            ck = {"column": _cpu(col.state_dict()), "opt": _cpu(opt.state_dict()), "gen": gen.get_state(),
                  "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "history": history}
            if average is not None:
                average.add(col)
                ck["average"] = average.state()
            _atomic_save(ck, ckpt)
            self.log("%s epoch %d/%d: loss %.3f, %s val %.2f%% (%.0f s)"
                     % (tag, epoch + 1, epochs, run_loss, "group alone" if tag.startswith("group") else "model",
                        val_acc, time.time() - t0))
        col.eval()

    def _frozen(self, g: int, earlier: List[Dict]) -> Tuple[List[Column], Optional[List[Column]]]:
        """Groups 1..g-1 on the device, and the copies that give group g its ensemble term (or None)."""
        cfg = self.cfg
        frozen = [f.to(self.device) for f in columns_from_states(cfg.arch, [s["column"] for s in earlier])]
        ens = [f.to(memory_format=torch.channels_last).requires_grad_(False) for f in frozen] \
            if cfg.ens_weight and g >= max(cfg.ens_from, 2) else None
        return frozen, ens

    def _train_group(self, g: int, earlier: List[Dict]) -> Dict:
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 1000 + g)
        col = Column(cfg.arch, g).to(self.device, memory_format=torch.channels_last)
        opt = self._optimizer(col)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + g)
        start, history = self._resume(self._path(g, "partial"), col, opt, gen)
        if start:
            self.log("group %d/%d: resuming after epoch %d" % (g, cfg.groups, start))
        frozen, ens = self._frozen(g, earlier)
        self._epochs(col, opt, gen, start, cfg.epochs_of(g), self._path(g, "partial"), "group %d/%d" % (g, cfg.groups),
                     history, frozen=ens)
        frozen = [f.to(memory_format=torch.contiguous_format) for f in frozen]
        head, val = self._fit_head(frozen + [col.to(memory_format=torch.contiguous_format)], gen)
        val["history"] = history
        return {"column": _cpu(col.state_dict()), "head": head, "val": val}

    def _swa_group(self, g: int, earlier: List[Dict], done: Dict) -> Dict:
        """The SWA stage of finished group g (see the module's docstring)."""
        cfg = self.cfg
        col = Column(cfg.arch, g)
        col.load_state_dict(done["column"])
        col = col.to(self.device, memory_format=torch.channels_last)
        opt = self._optimizer(col)
        torch.manual_seed(cfg.seed * 1000 + 500 + g)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + g)
        average = _Average(col)
        start, history = self._resume(self._path(g, "swa.partial"), col, opt, gen, average)
        if start:
            self.log("group %d/%d SWA: resuming after epoch %d" % (g, cfg.groups, start))
        frozen, ens = self._frozen(g, earlier)
        self._epochs(col, opt, gen, start, cfg.swa_epochs, self._path(g, "swa.partial"),
                     "group %d/%d SWA" % (g, cfg.groups), history, lr=cfg.swa_lr, frozen=ens, average=average)
        average.apply(col)
        self._update_bn(col, gen)
        frozen = [f.to(memory_format=torch.contiguous_format) for f in frozen]
        head, val = self._fit_head(frozen + [col.to(memory_format=torch.contiguous_format)], gen)
        before = done["val"]
        # The group alone before SWA is the last epoch of its own training (same weights, same val).
        alone = [before["history"][-1]["val_acc"], _accuracy(self._val_logits([col]), self.y_val)]
        val["history"] = before["history"] + history
        val["swa"] = {"epochs": cfg.swa_epochs, "lr": cfg.swa_lr, "alone_acc": alone[1],
                      "before": dict({k: before[k] for k in ("mean_acc", "learned_acc", "head", "chosen_acc")},
                                     alone_acc=alone[0])}
        self.log("group %d/%d: SWA val group alone %.2f%% -> %.2f%%, k=%d %.2f%% -> %.2f%%"
                 % (g, cfg.groups, alone[0], alone[1], g, before["chosen_acc"], val["chosen_acc"]))
        return {"column": _cpu(col.state_dict()), "head": head, "val": val}

    def _update_bn(self, col: Column, gen: torch.Generator) -> None:
        """Recompute the column's BatchNorm statistics: the plain mean over one augmented pass."""
        momenta = [bn.momentum for bn in col.bns]
        for bn in col.bns:
            bn.reset_running_stats()
            bn.momentum = None
        col.train()
        with torch.no_grad():
            for i in range(0, len(self.x_train), 500):
                col(_augment(self.x_train[i:i + 500], gen).contiguous(memory_format=torch.channels_last))
        for bn, m in zip(col.bns, momenta):
            bn.momentum = m
        col.eval()

    def _val_logits(self, cols: List[Column], head=None) -> torch.Tensor:
        head = head or mean_head(cols)
        with torch.no_grad():
            return head(_features(cols, self.x_val))

    def _fit_head(self, cols: List[Column], gen: torch.Generator):
        """Fit the head of the len(cols)-group network; keep it only if it beats the mean on val."""
        k = len(cols)
        mean = mean_head(cols)
        mean_acc = _accuracy(self._val_logits(cols, mean), self.y_val)
        val = {"k": k, "mean_acc": mean_acc, "learned_acc": None, "head": "mean", "chosen_acc": mean_acc}
        if k == 1:
            return None, val
        cfg = self.cfg
        feats, labels = [], []
        for _ in range(cfg.head_aug_passes):
            for i in range(0, len(self.x_train), 1000):
                x = _augment(self.x_train[i:i + 1000], gen).contiguous(memory_format=torch.channels_last)
                feats.append(_features(cols, x))
                labels.append(self.y_train[i:i + 1000])
        feats, labels = torch.cat(feats), torch.cat(labels)
        head = mean_head(cols)
        opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9, weight_decay=cfg.weight_decay)
        steps = (len(feats) // 256) * cfg.head_epochs
        t = 0
        for _ in range(cfg.head_epochs):
            order = torch.randperm(len(feats), generator=gen)
            for s in range(len(feats) // 256):
                idx = order[s * 256:(s + 1) * 256].to(self.device)
                for group in opt.param_groups:
                    group["lr"] = 0.01 * 0.5 * (1 + math.cos(math.pi * t / steps))
                loss = F.cross_entropy(head(feats[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                t += 1
        learned_acc = _accuracy(self._val_logits(cols, head), self.y_val)
        val["learned_acc"] = learned_acc
        if learned_acc > mean_acc:
            val["head"], val["chosen_acc"] = "learned", learned_acc
        self.log("group %d/%d: val k=%d mean-of-logits head %.2f%%, learned head %.2f%% -> %s"
                 % (k, cfg.groups, k, mean_acc, learned_acc, val["head"]))
        state = _cpu(head.state_dict())
        return (state if val["head"] == "learned" else None), val

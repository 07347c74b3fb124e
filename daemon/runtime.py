"""One runtime, built one way: the model set with its lanes, the targets, the configuration
space, the profile and the governor, from the configuration, the platform, and what the
operator set. Start, reload and the loss of DVFS all build here (TuneD's reload is stop +
start for the same reason: a second way to build drifts). A reload builds the new runtime
beside the one serving and swaps it in; the governor it replaces hands over what still
applies (:meth:`governor.Governor.carry_over`: budget, pin, statistics, and what it learnt
under the same profile).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from governor import Config, Governor, Level, Profile, build_space, levels_from_manifest
from models import ModelSet, zoo
from platforms import Platform, PlatformError
from platforms.model import Target, governor_facts

from .split import Columns

log = logging.getLogger("dnnscale.runtime")


@dataclass
class Runtime:
    models: ModelSet
    model_dir: str
    targets: Dict[str, Target]       # the platform's, less a GPU onnxruntime cannot use
    gpu_reason: str                  # why the GPU is not a target ("" where it is, or there is none)
    levels: List[Level]
    space: List[Config]
    profile: Profile                 # as stored or measured
    per_frequency: bool              # whether ``profile`` was measured per frequency (DVFS on)
    governor: Governor
    columns: Optional[Columns] = None   # how the split targets run (None: there are none)
    split_reason: str = ""           # why there is no split target ("" where there is, or none fits)
    name: str = ""                   # what requests and commands call the set (daemon/served.py)

    def is_split(self, target: str) -> bool:
        return self.columns is not None and target in self.columns.lanes

    def run(self, k: int, x: np.ndarray, target: str) -> np.ndarray:
        if self.is_split(target):
            return self.columns.run(k, x, target)
        return self.models.run(k, x, target)

    def run_anytime(self, x: np.ndarray, stop_at: Optional[float], max_k: int, target: str, **kw):
        """models.ModelSet.run_anytime on ``target``: a split runs the steps one after another
        on its first lane's thread count."""
        return self.models.run_anytime(x, stop_at, max_k, target, threads=self._anytime_threads(target), **kw)

    def _anytime_threads(self, target: str) -> Optional[int]:
        return self.columns.lanes[target][0].threads if self.is_split(target) else None

    def macs(self, k: int, target: str):
        """The work of level k on ``target``: one figure, or one per lane of a split."""
        if self.is_split(target):
            return self.columns.part_macs(k, target)
        return self.models.level(k)["macs"]


class Builder:
    """Builds runtimes for one platform. ``cpus``: the CPUs this process may use, taken
    before any thread was pinned (a reload runs on a thread a pin may have narrowed)."""

    def __init__(self, platform: Platform, cpus: Optional[Set[int]] = None):
        self.platform = platform
        self.cpus = set(cpus if cpus is not None else os.sched_getaffinity(0))

    def lanes(self, threads: Optional[int] = None) -> Dict[str, int]:
        """CPU target → onnxruntime threads: one per CPU it runs on (online, and among the
        CPUs this process may use), at most ``threads`` where given. Pinned to one CPU, a
        2-thread pool would time-share it (p90 5x the median, docs/model-set.md)."""
        out = {}
        for name in self.platform.targets:
            cpus = self.platform.host_cpus(name)
            if cpus:
                n = len(set(cpus) & self.cpus) or 1
                out[name] = min(n, threads) if threads else n
        return out

    def default_threads(self) -> int:
        """One onnxruntime thread per CPU of the largest CPU target (a cluster): pinned to a
        4-core cluster, 8 threads would share 4 cores (XU3)."""
        sizes = [len(self.platform.host_cpus(n)) for n in self.platform.targets]
        sizes = [s for s in sizes if s]
        return max(1, min(len(self.cpus), max(sizes))) if sizes else len(self.cpus)

    def load_models(self, model: str, threads: Optional[int], gpu: bool,
                    loaded: Optional[ModelSet] = None) -> Tuple[ModelSet, str]:
        """The model set (verified), a pool per lane sized to its CPUs; ModelSetError says why
        not. ``loaded``: the set serving now, given back where loading again would give the
        same sessions (the same folder and pools, no file changed since it was verified)."""
        model_dir = zoo.resolve(model)
        n, lanes, gpu = threads or self.default_threads(), self.lanes(threads), gpu and self.platform.host_gpu()
        if loaded is not None and loaded.same_as(model_dir, n, lanes, gpu):
            return loaded, model_dir
        return ModelSet.load(model_dir, threads=n, gpu=gpu, lanes=lanes, low_priority=loaded is not None), model_dir

    def targets(self, models: ModelSet, gpu_enabled: bool) -> Tuple[Dict[str, Target], str, str]:
        """The targets this model set can run on, why the GPU is not one, why there is no
        split (a set without columns: a portfolio, or a group set exported before them)."""
        targets, gpu_reason, split_reason = dict(self.platform.targets), "", ""
        if "gpu" in targets and self.platform.host_gpu() and "gpu" not in models.targets:
            targets.pop("gpu")
            gpu_reason = "gpu is not a target: %s" % (
                "disabled in the configuration (gpu: false)" if not gpu_enabled else
                "the installed onnxruntime has no CUDA/TensorRT execution provider (see docs/deployment.md)")
        splits = [n for n, t in targets.items() if t.is_split]
        for n in splits:
            if not models.has_columns:
                targets.pop(n)
                split_reason = "no split target: " + models.no_columns
            elif any(p.kind == "gpu" and p.name not in targets for p in targets[n].parts):
                targets.pop(n)          # its GPU lane is not a target here
        return targets, gpu_reason, split_reason

    def space(self, levels: List[Level], targets: Dict[str, Target]) -> List[Config]:
        """Every (level, target, frequency); a target without frequency control (now) at the
        frequency it runs at; a split of n lanes from level n."""
        on = self.platform.dvfs_on
        return build_space(levels, {n: (t.freqs_khz if on(n) else []) for n, t in targets.items()},
                           {n: len(t.parts) for n, t in targets.items() if t.is_split})

    def columns(self, models: ModelSet, targets: Dict[str, Target], levels: List[Level],
                profile: Optional[Profile], threads: Optional[int] = None) -> Columns:
        """How the splits among ``targets`` run, their cuts from ``profile`` (None: equal lanes)."""
        return Columns(models, self.platform, [n for n, t in targets.items() if t.is_split], levels, profile,
                       self.cpus, threads)

    def frequencies(self, targets) -> Dict[str, Optional[int]]:
        """target → the frequency the kernel reports now (kHz), None without control."""
        now = {}
        for n in targets:
            try:
                now[n] = self.platform.frequency(n)
            except PlatformError:
                now[n] = None
        return now

    def build(self, models: ModelSet, model_dir: str, gpu_enabled: bool, profile: Profile,
              per_frequency: bool, previous: Optional[Governor] = None, threads: Optional[int] = None,
              name: str = "") -> Runtime:
        """The runtime for ``models`` under ``profile`` on the platform as it is now: without
        DVFS, each target predicted at the frequency the kernel reports for it. ``previous``:
        the governor being replaced, whose operator settings and learning carry over."""
        targets, gpu_reason, split_reason = self.targets(models, gpu_enabled)
        levels = levels_from_manifest(models.manifest)
        space = self.space(levels, targets)
        columns = self.columns(models, targets, levels, profile, threads)
        columns.warm()
        use = profile
        fixed = [n for n in targets if not any(c.freq_khz for c in space if c.target == n)]
        khz = self.frequencies(fixed) if per_frequency else {}
        if any(khz.values()):             # targets without DVFS now: predicted at the frequency they run at
            use = profile.at_fixed_frequency(khz)
        gov = Governor(space, levels, use, splits=list(columns.lanes), **governor_facts(targets))
        if previous is not None:
            if previous.profile is not use and same_profile(previous.profile, use):
                gov.set_profile(previous.profile)
            gov.carry_over(previous)
        return Runtime(models, model_dir, targets, gpu_reason, levels, space, profile, per_frequency, gov,
                       columns, split_reason, name)


def same_profile(a: Profile, b: Profile) -> bool:
    """The same measurement (a reload that read the unchanged file again)."""
    return a.created == b.created and a.to_dict() == b.to_dict()      # to_dict holds the source

"""The service: builds the object graph once (config → model set → platform → governor →
executor) and answers what the sockets ask. The only module that wires the rooms."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import platforms
from governor import Budget, Governor, build_space, levels_from_manifest
from models import ModelSet, ModelSetError, zoo

from . import profiler
from .config import Config, ConfigError
from .executor import Executor
from .protocol import InferRequest, InputSpec, ProtocolError

log = logging.getLogger("dnnscale.service")
BUDGET_FILE = "budget.json"


def resolve_model(name: Optional[str]) -> str:
    if name is None:
        return zoo.default_path()
    if os.path.isdir(name):
        return name
    if os.sep not in name and name in zoo.available():
        return zoo.path(name)
    raise ModelSetError("model %s is neither a model-set folder nor a shipped set (shipped: %s)"
                        % (name, ", ".join(zoo.available()) or "none"))


class Service:
    def __init__(self, cfg: Config, progress=None, remeasure: bool = False):
        """``remeasure``: measure a profile even when a stored one matches (dnnscale profile)."""
        self.cfg = cfg
        self.started = time.time()
        self.errors: Dict[str, int] = {}
        self.served = 0
        self.model_dir = resolve_model(cfg.model)
        os.makedirs(cfg.state_dir, exist_ok=True)
        try:
            self.platform = platforms.create(cfg.platform, root=cfg.sysfs_root, state_dir=cfg.state_dir)
        except (ValueError, platforms.PlatformError) as e:
            raise ConfigError(str(e))
        for err in self.platform.start():
            log.error("could not restore a setting left by an earlier run: %s", err)
        if not cfg.dvfs:
            self.platform.disable_dvfs("DVFS is off in the configuration (dvfs: false)")
        self.gpu_reason = ""
        want_gpu = cfg.gpu and "gpu" in self.platform.targets and not self.platform.simulated
        self.models = ModelSet.load(self.model_dir, threads=cfg.threads or self._default_threads(), gpu=want_gpu)
        self.targets = self._usable_targets()
        self.levels = levels_from_manifest(self.models.manifest)
        freqs = {n: (t.freqs_khz if self.platform.dvfs_enabled else []) for n, t in self.targets.items()}
        self.space = build_space(self.levels, freqs)
        self.profile_key = profiler.key(self.models.manifest, self.platform.name, self.space)
        profile = None if remeasure else profiler.load(cfg.state_dir, self.profile_key)
        self.executor = Executor(self.models, self.platform, None)
        if profile is None:
            log.info("measuring a profile (%d runs per configuration)%s", cfg.profile_runs,
                     "" if remeasure else ": no stored one matches")
            profile = profiler.measure(self.executor, self.space, self.levels, runs=cfg.profile_runs,
                                       progress=progress)
            profiler.save(cfg.state_dir, profile, self.profile_key)   # later starts reuse it
            for err in self.platform.reset():   # serve from the board's own settings
                log.error("could not restore after profiling: %s", err)
            self.executor.applied = None
        self.governor = Governor(self.space, self.levels, profile)
        self.executor.governor = self.governor
        self._load_budget()

    def _default_threads(self) -> int:
        """One onnxruntime thread per CPU of the largest CPU target (a cluster): pinned to a
        4-core cluster, 8 threads would share 4 cores (XU3)."""
        have = len(os.sched_getaffinity(0))
        sizes = [len(t.cpus) for t in self.platform.targets.values() if t.cpus]
        if self.platform.simulated or not sizes:
            return have
        return max(1, min(have, max(sizes)))

    def _usable_targets(self):
        targets = dict(self.platform.targets)
        if "gpu" in targets and not self.platform.simulated and "gpu" not in self.models.targets:
            targets.pop("gpu")
            self.gpu_reason = ("gpu is not a target: %s" % ("disabled in the configuration (gpu: false)"
                               if not self.cfg.gpu else "the installed onnxruntime has no CUDA/TensorRT "
                               "execution provider (see docs/deployment.md)"))
            log.warning("%s", self.gpu_reason)
        return targets

    # ------------------------------------------------------------------ inference
    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.models.input_shape, self.models.groups, self.cfg.max_batch)

    def infer(self, reqs: List[InferRequest]) -> List[Tuple[Dict, np.ndarray]]:
        """Run requests that share dtype, groups and deadline as one batch; one reply each.
        Each reply carries the batch's latency and its own share of the batch's energy."""
        r0 = reqs[0]
        x = np.concatenate([r.tensor for r in reqs]) if len(reqs) > 1 else r0.tensor
        if r0.dtype == "uint8":
            x = self.models.preprocess(x)
        logits, info = self.executor.infer(x, groups=r0.groups, deadline_ms=r0.deadline_ms)
        out, start, n = [], 0, len(x)
        for r in reqs:
            k = len(r.tensor)
            part = logits[start:start + k]
            start += k
            labels = part.argmax(1).tolist()
            head = {"id": r.id, "ok": True, "labels": labels, "names": [self.models.classes[i] for i in labels]}
            head.update(info)
            if info["energy_mj"] is not None and len(reqs) > 1:
                head["energy_mj"] = round(info["energy_mj"] * k / n, 4)
            out.append((head, part))
        self.served += len(reqs)
        return out

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    # ------------------------------------------------------------------ control
    def control(self, cmd: str, args: Dict[str, Any]) -> Dict:
        if cmd == "status":
            return self.status()
        if cmd == "set_budget":
            try:
                budget = Budget(**args)
                self.governor.set_budget(budget)   # validates every value (Budget.validate)
            except ValueError as e:
                raise ProtocolError("bad_budget", str(e))
            if budget.empty:
                raise ProtocolError("bad_budget", "give at least one of latency_ms, energy_mj, power_w "
                                                  "(or use clear_budget)")
            self._save_budget()
            return {"budget": self.governor.budget.to_dict()}
        if cmd == "clear_budget":
            self.governor.clear_budget()
            self._save_budget()
            return {"budget": self.governor.budget.to_dict()}
        if cmd == "pin":
            if not args:
                raise ProtocolError("bad_pin", "pin needs at least one of groups, target, freq_khz")
            g, t, f = args.get("groups"), args.get("target"), args.get("freq_khz")
            if g is not None and (isinstance(g, bool) or not isinstance(g, int)):
                raise ProtocolError("bad_pin", "groups must be an integer, got %r" % (g,))
            if t is not None and not isinstance(t, str):
                raise ProtocolError("bad_pin", "target must be a string, got %r" % (t,))
            if f is not None and (isinstance(f, bool) or not isinstance(f, int)):
                raise ProtocolError("bad_pin", "freq_khz must be an integer, got %r" % (f,))
            try:
                self.governor.pin(level=g, target=t, freq_khz=f)
            except ValueError as e:
                raise ProtocolError("bad_pin", "%s (targets: %s)" % (e, ", ".join(self.targets)))
            return {"pinned": self.governor.pinned}
        if cmd == "release":
            self.governor.release()
            return {"pinned": {}}
        if cmd == "reload":
            return self.reload()
        raise ProtocolError("unknown_command", cmd)

    def reload(self) -> Dict:
        """Re-verify and reload the model set and the stored profile; on failure keep serving
        with what is loaded and say why."""
        try:
            models = ModelSet.load(self.model_dir, threads=self.cfg.threads,
                                   gpu="gpu" in self.models.targets)
        except ModelSetError as e:
            raise ProtocolError("reload_failed", "kept the loaded model set: %s" % e)
        if models.groups != self.models.groups:
            raise ProtocolError("reload_failed", "kept the loaded model set: the new one has %d levels, "
                                "not %d (restart the daemon to change models)" % (models.groups, self.models.groups))
        self.models = self.executor.models = models
        profile = profiler.load(self.cfg.state_dir, self.profile_key)
        if profile is not None:
            self.governor.set_profile(profile)
        return {"model": self.models.name, "profile": self.governor.profile.source}

    def status(self) -> Dict:
        s = self.governor.status()
        p = self.platform
        s.update({
            "platform": p.name,
            "simulated": bool(p.simulated),
            "targets": {n: {"kind": t.kind, "cpus": t.cpus, "freqs_khz": t.freqs_khz} for n, t in self.targets.items()},
            "gpu": self.gpu_reason or ("available" if "gpu" in self.targets else "none"),
            "dvfs": {"enabled": bool(p.dvfs_enabled), "reason": p.dvfs_reason},
            "energy": {"available": getattr(p, "meter", None) is not None or bool(p.simulated),
                       "reason": getattr(p, "energy_reason", "")},
            "temperatures_c": p.temperatures(),
            "model": {"name": self.models.name, "kind": self.models.kind, "levels": self.models.groups,
                      "shares_weights": bool(self.models.manifest.get("shares_weights", False)),
                      "accuracy": [l.accuracy for l in self.levels]},
            "served": self.served,
            "errors": dict(self.errors),
            "uptime_s": round(time.time() - self.started, 1),
        })
        return s

    # ------------------------------------------------------------------ state
    def _budget_path(self) -> str:
        return os.path.join(self.cfg.state_dir, BUDGET_FILE)

    def _save_budget(self) -> None:
        tmp = self._budget_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.governor.budget.to_dict(), f)
        os.replace(tmp, self._budget_path())

    def _load_budget(self) -> None:
        try:
            with open(self._budget_path()) as f:
                self.governor.set_budget(Budget(**json.load(f)))
            log.info("budget restored from %s: %s", self._budget_path(), self.governor.budget.to_dict())
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as e:
            log.error("ignoring the stored budget %s: %s", self._budget_path(), e)

    def stop(self) -> List[str]:
        return self.platform.stop()

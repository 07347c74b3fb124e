"""Measuring the profile: run the planned configurations on the live platform, fit the rest.

Used at start-up (a quick pass when no stored profile matches) and by ``dnnscale profile``
(a thorough one, saved to the state directory).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from governor import Config, Level, Profile, Sample, plan_measurements

PROFILE_FILE = "profile.json"


def key(model_manifest: Dict, platform_name: str, space: List[Config]) -> Dict:
    """What a stored profile must match to be reused."""
    return {"model": model_manifest["name"],
            "weights": model_manifest["files"].get("weights.bin", {}).get("sha256")
            or sorted(v.get("sha256", "") for v in model_manifest["files"].values()),
            "platform": platform_name,
            "targets": sorted({c.target for c in space})}


def measure(executor, space: List[Config], levels: List[Level], runs: int = 5,
            progress: Optional[Callable[[int, int], None]] = None) -> Profile:
    """Time each planned configuration ``runs`` times (median) on batch-1 input."""
    plan = plan_measurements(space)
    ms = executor.models
    x = np.zeros((1,) + ms.input_shape, np.float32)
    samples: List[Sample] = []
    sim = executor.platform.simulated
    macs = {l.level: l.macs for l in levels}
    for n, c in enumerate(plan):
        executor.apply(c)
        if sim:
            lat, en = executor.platform.predict(macs[c.level], c.target)
            samples.append(Sample(c, lat, en))
        else:
            meter = getattr(executor.platform, "meter", None)
            ms.run(c.level, x, c.target)  # warm this configuration
            lats, ens = [], []
            for _ in range(runs):
                j0 = meter.joules() if meter else None
                t0 = time.perf_counter()
                ms.run(c.level, x, c.target)
                lats.append(time.perf_counter() - t0)
                if meter:
                    ens.append(meter.energy_between(j0, meter.joules()) / 1e3)
            samples.append(Sample(c, statistics.median(lats), statistics.median(ens) if ens else None))
        if progress:
            progress(n + 1, len(plan))
    return Profile.fit(samples, levels, source="simulated" if sim else "measured (%d runs each)" % runs)


def save(state_dir: str, profile: Profile, match: Dict) -> str:
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, PROFILE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"key": match, "profile": profile.to_dict()}, f, indent=1)
    os.replace(tmp, path)
    return path


def load(state_dir: str, match: Dict) -> Optional[Profile]:
    """The stored profile if it exists, is well formed and matches ``match``; else None."""
    path = os.path.join(state_dir, PROFILE_FILE)
    try:
        with open(path) as f:
            d = json.load(f)
        if d.get("key") != match:
            return None
        p = Profile.from_dict(d["profile"])
        p.source = "stored (%s)" % p.source
        return p
    except (OSError, ValueError, KeyError, TypeError):
        return None

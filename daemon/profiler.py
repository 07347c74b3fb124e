"""Measuring the profile: run the planned configurations on the live platform, fit the rest.

Used at start-up (a quick pass when no stored profile matches) and by ``dnnscale profile``
(a thorough one, saved to the state directory).
"""
from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from governor import Config, Level, Profile, Sample, plan_measurements

from . import state

PROFILE_FILE = "profile.json"
WARM_RUNS = 3        # untimed runs of each configuration first: the first after a move are slow (docs/governor.md)
SPREAD = 1.25        # timed runs further apart than this (max / min) are joined by twice as many more

log = logging.getLogger("dnnscale.profiler")


def key(model_manifest: Dict, platform_name: str, space: List[Config]) -> Dict:
    """What a stored profile must match to be reused."""
    return {"model": model_manifest["name"],
            "weights": model_manifest["files"].get("weights.bin", {}).get("sha256")
            or sorted(v.get("sha256", "") for v in model_manifest["files"].values()),
            "platform": platform_name,
            "targets": sorted({c.target for c in space}),
            "dvfs": any(c.freq_khz is not None for c in space)}


class Interrupted(Exception):
    """SIGTERM (or Ctrl-C) during profiling: stopped at a configuration boundary."""


def measure(executor, models, space: List[Config], levels: List[Level], runs: int = 5,
            progress: Optional[Callable[[int, int], None]] = None,
            stop: Optional[threading.Event] = None, sleep=time.sleep,
            columns: Optional[Callable[[Optional[Profile]], object]] = None) -> Profile:
    """Time each planned configuration ``runs`` times (median) on batch-1 input, after
    ``WARM_RUNS`` untimed, and ``2 x runs`` more where the timed ones spread by more than
    ``SPREAD`` (a burst of the host's noise). Where a
    power sensor meters energy, each frequency is given the platform's ``settle_s`` to show
    in the sensor, and the power at that frequency is taken from the largest level run for
    at least that long, so that every figure is the frequency's own (the profile keeps one
    power per frequency; the other levels are timed only). A simulated board gives its
    model's figures instead. Split targets are measured last, with ``columns(profile)`` (a
    :class:`daemon.split.Columns`) cut from the profile of the other targets: their lanes
    finish together as the profile predicts them."""
    platform = executor.platform
    splits = {c.target for c in space if platform.targets[c.target].is_split}
    if splits and columns is None:
        raise ValueError("the space has split targets (%s): measuring them needs ``columns``" % ", ".join(sorted(splits)))
    # by frequency, so each is set once; the splits last
    plan = sorted(plan_measurements(space), key=lambda c: (c.target in splits, c.target, c.freq_khz or 0, c.level))
    x = np.zeros((1,) + models.input_shape, np.float32)
    samples: List[Sample] = []
    macs = {l.level: l.macs for l in levels}
    top = max(macs)
    prev, cols, modelled = None, None, False
    for n, c in enumerate(plan):
        if stop is not None and stop.is_set():
            raise Interrupted("profiling interrupted after %d of %d configurations" % (n, len(plan)))
        run, work = models.run, macs[c.level]
        if c.target in splits:
            if cols is None:             # cut from what the other targets just measured
                cols = columns(Profile.fit(samples, levels) if samples else None)
            run, work = cols.run, cols.part_macs(c.level, c.target)
        executor.apply(c, cols, models)
        cost = platform.board_model(work, c.target, noise=False)
        if cost is not None:
            samples.append(Sample(c, *cost))
            modelled = True
        else:
            settle = platform.settle_s
            if platform.energy_available and (prev is None or (prev.target, prev.freq_khz) != (c.target, c.freq_khz)):
                sleep(settle)
            prev = c
            for _ in range(WARM_RUNS):     # warm this configuration
                run(c.level, x, c.target)
            power = platform.energy_available and c.level == top
            lats: List[float] = []

            def timed() -> None:
                t0 = time.perf_counter()
                run(c.level, x, c.target)
                lats.append(time.perf_counter() - t0)
            j0, t_start = (platform.joules() if power else None), time.monotonic()
            window = settle if power else 0.0
            while len(lats) < runs or time.monotonic() - t_start < window:
                timed()
            j1 = platform.joules() if power else None
            en = platform.energy_between(j0, j1) / 1e3 / len(lats) if j0 is not None and j1 is not None else None
            if max(lats) > SPREAD * min(lats):   # noise during the runs: the median of more
                for _ in range(2 * runs):
                    timed()
            samples.append(Sample(c, statistics.median(lats), en))
        if progress:
            progress(n + 1, len(plan))
    return Profile.fit(samples, levels, source="simulated" if modelled else "measured (%d runs each)" % runs)


def filename(name: Optional[str] = None) -> str:
    """The profile file of a model set: ``profile.json`` for the daemon's default (first) set,
    ``profile-<name>.json`` for each further one."""
    return PROFILE_FILE if name is None else "profile-%s.json" % name


def save(state_dir: str, profile: Profile, match: Dict, name: Optional[str] = None) -> str:
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, filename(name))
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    state.write_json(path, {"key": match, "created": created, "profile": profile.to_dict()}, indent=1)
    profile.created = created
    return path


def load(state_dir: str, match: Dict, targets=(), name: Optional[str] = None) -> Optional[Profile]:
    """The stored profile if it exists and matches ``match`` (else None: the start measures
    one). A damaged one (not JSON, not a profile, a missing target in ``targets``, a slope or
    power that is not a finite positive number) is set aside as ``profile.json.damaged`` with
    one log line, so that the start re-measures instead of failing every time."""
    path = os.path.join(state_dir, filename(name))
    if not os.path.lexists(path):
        return None
    try:
        d = state.read_json(path)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("key") != match:
            return None
        p = Profile.from_dict(d.get("profile"))
        missing = set(targets) - set(p.fits)
        if missing:
            raise ValueError("no fit for target(s) %s" % ", ".join(sorted(missing)))
    except (OSError, ValueError) as e:
        aside = path + ".damaged"
        try:
            os.replace(path, aside)
        except OSError:
            aside = path
        log.error("the stored profile %s is damaged (%s): kept as %s; measuring a new one", path,
                  getattr(e, "strerror", None) or e, aside)
        return None
    p.source = "stored (%s)" % p.source
    p.created = d.get("created")
    return p

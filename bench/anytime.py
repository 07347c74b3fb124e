"""Anytime answers (issue 34): accuracy against work when each image stops adding groups once
its top-1 probability reaches tau, beside static k; offline over each shipped group set's
whole test set, and through a real ``dnnscale serve`` at batch 1.

Offline: every level's logits of every test image (``ModelSet.run``; the incremental run
gives the same logits to 1e-5, tests/test_anytime.py), then per tau the level each image
stops at; MACs are the manifest's per level. Through the daemon: ``--images`` test images
one request each, in blocks of 100 that alternate between ``pin --groups G --target cpu``
(all CPUs; ``--target`` another) with plain requests, the same pin with ``stop_at`` (the pin
makes G the most an image gets) and pins of k = 1..G-1 (the floor), so that all see the same
moments of the machine; mean latency per image from the replies'
``latency_ms`` and from the client's round trips.

    python -m bench.anytime [--images N] [--stop-at T] [--sets NAME ...] [--plot PNG]
    python -m bench.anytime --sweep N      (every tau through the daemon, N images per set)
    python -m bench.anytime --direct N [--gap-us 0 300]
    python -m bench.anytime --wake [--gap-us 0 300 1000]
    python -m bench.anytime --steps-floor N [--repeat 3]

``--direct``: no daemon; this process runs ``ModelSet.run_anytime`` and ``ModelSet.run(G)``
(and ``run(k)`` for the floor) on N test images one at a time, in alternating blocks, on the
set's sessions at all CPUs (this thread and each pool's workers a CPU apart, as the daemon runs them), with an idle sleep of each ``--gap-us`` before every image (0:
back to back; a daemon's requests arrive after its round trip, a few hundred µs here). It
separates what stepping costs from what a request loop adds, and shows how the idle time
between requests weighs on short runs more than on long ones (docs/model-set.md, "Anytime
answers").

``--steps-floor``: what the steps cost by themselves, each run twice in a row (the second with
its pool awake and its weights just read), summed per image over the steps it needs, against
run(G) and run_anytime in the same blocks: the floor of any runtime that runs these step
graphs, however it keeps their pools.

``--wake``: what one session run pays after idle time, apart from its work: one step session
run three times in a row, against three sessions of that same step graph (each with its own
onnxruntime pool, as the steps of an anytime run have) run once each, with their workers free
on every CPU and spread as the daemon spreads them (models/pools.py), and run(G) both ways,
after each idle gap; alternating blocks, the median of each block, then the median and range over
blocks.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import struct
import time
from typing import Dict, List, Optional

import numpy as np

from .common import ROOT, machine, serving, spread, table, whole_cpu

TAUS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
SPECULATE_TAU = 0.95                    # the offline table's rows with columns run in pairs
DIRECT_GAPS_US = (0.0, 300.0)           # --direct's idle gaps by default
WAKE_GAPS_US = (0.0, 300.0, 1000.0)     # --wake's
DATA = {"cifar10-g4": os.path.join(ROOT, "..", "shared", "data", "cifar10", "cifar-10-batches-py"),
        "fashion-mnist-g4": "/usr/share/datasets/fashion-mnist"}


def test_set(name: str, ms):
    from models import datasets
    path = DATA[name]
    if not os.path.exists(path):
        return None
    h, w, c = ms.manifest["input"]["image"]["shape"]
    d = datasets.load(path, train=False, image=h, channels=c)
    return d.x_test, d.y_test


def offline(name: str) -> Optional[Dict]:
    from models import ModelSet, zoo
    from models.modelset import softmax
    ms = ModelSet.load(zoo.resolve(name))
    data = test_set(name, ms)
    if data is None:
        return None
    x_u8, y = data
    G = ms.groups
    logits = {k: np.concatenate([ms.run(k, ms.preprocess(x_u8[i:i + 500])) for i in range(0, len(y), 500)])
              for k in range(1, G + 1)}
    prob = {k: softmax(l).max(1) for k, l in logits.items()}
    macs = np.array([ms.level(k)["macs"] for k in range(1, G + 1)], float)
    rows = []
    for k in range(1, G + 1):
        rows.append({"policy": "static k=%d" % k, "acc": 100 * float((logits[k].argmax(1) == y).mean()),
                     "macs": 100 * macs[k - 1] / macs[-1], "at1": None})
    for tau in TAUS:
        stop = np.full(len(y), G)
        for k in range(G - 1, 0, -1):          # the first level that is sure enough
            stop = np.where(prob[k] >= tau, k, stop)
        pred = np.choose(stop - 1, [logits[k].argmax(1) for k in range(1, G + 1)])
        row = {"policy": "stop_at %.2f" % tau, "tau": tau, "acc": 100 * float((pred == y).mean()),
               "macs": 100 * float(macs[stop - 1].mean()) / macs[-1], "at1": 100 * float((stop == 1).mean())}
        rows.append(row)
        if tau == SPECULATE_TAU:           # the same answers, more work
            rows += [dict(row, policy="stop_at %.2f, columns in pairs past k=%d" % (tau, start), tau=None,
                          macs=100 * float(paired_macs(stop, macs, start).mean()) / macs[-1]) for start in (1, 2)]
    return {"set": name, "images": len(y), "rows": rows}


def paired_macs(stop: np.ndarray, macs: np.ndarray, start: int) -> np.ndarray:
    """The MACs each image spends where, past level ``start``, columns run two at a time (the
    second beside the first, on an idle processor, before the first's head has decided): an
    image that stops at the first of a pair has run the second for nothing. ``stop``: each
    image's stop level; ``macs``: each level's."""
    G = len(macs)
    first = np.arange(start + 1, G, 2)                    # the first level of each pair
    wasted = np.isin(stop, first)
    return macs[stop - 1] + np.where(wasted, macs[np.minimum(stop, G - 1)] - macs[stop - 1], 0.0)


def through_daemon(name: str, images: int, stop_at: float, block: int = 100,
                   target: Optional[str] = None, pace_ms: float = 0.0) -> Optional[Dict]:
    from models import ModelSet, zoo
    ms = ModelSet.load(zoo.resolve(name))
    data = test_set(name, ms)
    if data is None:
        return None
    x_u8, y = data[0][:images], data[1][:images]
    out = {"set": name, "images": len(y), "stop_at": stop_at, "static": [], "anytime": [], "pace_ms": pace_ms}
    with serving(name) as c:
        st = c.status()
        G = st["model"]["levels"]
        # the whole CPU (pinned to a split, an anytime request runs its steps at its first
        # lane's thread count, which would compare one CPU with two)
        target = target or whole_cpu(st)
        out["target"] = target
        for i in range(min(20, len(y))):
            for k in range(1, G + 1):
                c.pin(groups=k, target=target)
                c.infer(x_u8[i:i + 1])
            c.infer(x_u8[i:i + 1], stop_at=stop_at)
        levels = {k: [] for k in range(1, G)}      # pinned k < G: the floor below
        for start in range(0, len(y), block):
            for mode in ["static", "anytime"] + list(levels):
                c.pin(groups=mode if mode in levels else G, target=target)
                for i in range(start, min(start + block, len(y))):
                    if pace_ms:
                        time.sleep(pace_ms / 1e3)
                    t0 = time.perf_counter()
                    r = c.infer(x_u8[i:i + 1], stop_at=stop_at if mode == "anytime" else None)
                    rt = time.perf_counter() - t0
                    if mode in levels:
                        levels[mode].append(r.latency_ms)
                        continue
                    k = r.header["groups_per_image"][0] if mode == "anytime" else G
                    out[mode].append((r.labels[0] == int(y[i]), r.latency_ms, rt * 1e3, k))
        levels[G] = [row[1] for row in out["static"]]
        out["level_ms"] = {k: float(np.mean(v)) for k, v in levels.items()}
        c.pin(groups=G, target=target)
        prog = list(c.infer_progressive(x_u8[:1]))
        out["progressive"] = [(p.header["level"], p.header["final"]) for p in prog]
        out["status"] = c.status()["anytime"]
    out["macs"] = [ms.level(k)["macs"] for k in range(1, ms.groups + 1)]
    return out


def direct(name: str, images: int, stop_at: float, gaps_us=DIRECT_GAPS_US, block: int = 100) -> Optional[Dict]:
    """In this process, no daemon: per idle gap before each image, ``images`` test images one
    at a time in blocks of ``block`` that alternate run(G), run_anytime(stop_at) and run(k)
    for k < G; the time of each call (perf_counter), the level each image stopped at."""
    with placed(name, images) as got:
        return None if got is None else _direct(got[0], got[1], name, stop_at, gaps_us, block)


@contextlib.contextmanager
def placed(name: str, images: int):
    """The set ``name`` and its first ``images`` test images, normalised, with this thread and
    the set's pools placed as the daemon places them (this thread on the first CPU); this
    thread's CPUs as they were after. None where the test set is not here."""
    from models import ModelSet, zoo
    ms = ModelSet.load(zoo.resolve(name))
    data = test_set(name, ms)
    if data is None:
        yield None
        return
    x = ms.preprocess(data[0][:images])
    cpus = sorted(os.sched_getaffinity(0))
    try:
        ms.pools.spread(ms.threads, cpus)
        yield ms, x
    finally:
        os.sched_setaffinity(0, cpus)


def _direct(ms, x, name: str, stop_at: float, gaps_us, block: int) -> Dict:
    G = ms.groups
    ms.warmup()
    ms.warm_anytime()
    out = {"set": name, "images": len(x), "stop_at": stop_at, "block": block, "gaps": []}
    for gap in gaps_us:
        t = {m: [] for m in ["G", "anytime"] + list(range(1, G))}
        stops = []
        for start in range(0, len(x), block):
            for m in t:
                for i in range(start, min(start + block, len(x))):
                    xi = x[i:i + 1]
                    if gap:
                        time.sleep(gap * 1e-6)
                    t0 = time.perf_counter()
                    if m == "anytime":
                        stops.append(int(ms.run_anytime(xi, stop_at)[1][0]))
                    else:
                        ms.run(G if m == "G" else m, xi)
                    t[m].append(time.perf_counter() - t0)
        a, s = np.array(t["anytime"]) * 1e3, np.array(t["G"]) * 1e3
        stops = np.array(stops)
        level_ms = {k: float(np.mean(t[k])) * 1e3 for k in range(1, G)}
        level_ms[G] = float(s.mean())
        out["gaps"].append({"gap_us": gap, "G_ms": float(s.mean()), "anytime_ms": float(a.mean()),
                            "by_stop": {k: (float(a[stops == k].mean()), int((stops == k).sum()))
                                        for k in sorted(set(stops.tolist()))},
                            "floor_ms": float(np.mean([level_ms[k] for k in stops])), "level_ms": level_ms})
    return out


def steps_floor(name: str, images: int, stop_at: float, repeat: int = 3, block: int = 100) -> Optional[Dict]:
    """What the anytime steps cost by themselves, the floor of any way of running them in
    these graphs: in this process, placed as ``direct`` places them, ``images`` test images
    one at a time in blocks of ``block`` that alternate run(G) twice, run_anytime(stop_at),
    and each step the image needs run twice on the features of the one before (the first
    run as an anytime run meets it, the second with its pool just awake and its weights just
    read: what a runtime that kept every step hot would pay). Per repetition, means over the
    images: run(G) (first and second call), run_anytime, and per image the sum of its
    steps' first and second runs."""
    with placed(name, images) as got:
        if got is None:
            return None
        ms, x = got
        ms.warmup()
        ms.warm_anytime()
        steps = ms._steps(ms.threads, False)
        stops = ms.run_anytime(x, stop_at)[1]
        reps = []
        for _ in range(repeat):
            t = {m: [] for m in ("G", "G hot", "anytime", "steps", "steps hot")}
            for start in range(0, len(x), block):
                rows = range(start, min(start + block, len(x)))
                for i in rows:
                    t0 = time.perf_counter()
                    ms.run(ms.groups, x[i:i + 1])
                    t1 = time.perf_counter()
                    ms.run(ms.groups, x[i:i + 1])
                    t["G"].append(t1 - t0)
                    t["G hot"].append(time.perf_counter() - t1)
                for i in rows:
                    t0 = time.perf_counter()
                    ms.run_anytime(x[i:i + 1], stop_at)
                    t["anytime"].append(time.perf_counter() - t0)
                for i in rows:
                    feed, first, second = {"input": x[i:i + 1]}, 0.0, 0.0
                    for k in range(1, int(stops[i]) + 1):
                        t0 = time.perf_counter()
                        out = steps[k - 1].run(None, feed)
                        t1 = time.perf_counter()
                        steps[k - 1].run(None, feed)
                        first, second = first + t1 - t0, second + time.perf_counter() - t1
                        feed["previous"] = out[0]
                    t["steps"].append(first)
                    t["steps hot"].append(second)
            reps.append({m: float(np.mean(v)) * 1e3 for m, v in t.items()})
    return {"set": name, "images": len(x), "stop_at": stop_at, "block": block, "threads": ms.threads,
            "mean_steps": float(np.mean(stops)), "reps": reps}


def report_steps_floor(rows: List[Dict]) -> str:
    lines = ["What the anytime steps cost by themselves (%s)" % machine(), ""]
    for r in rows:
        t = [[str(j + 1), "%.3f / %.3f" % (x["G"], x["G hot"]), "%.3f (%.2fx)" % (x["anytime"], x["anytime"] / x["G"]),
              "%.3f (%.2fx)" % (x["steps"], x["steps"] / x["G"]),
              "%.3f (%.2fx, %.2fx of the hot run(G))" % (x["steps hot"], x["steps hot"] / x["G"],
                                                          x["steps hot"] / x["G hot"])]
             for j, x in enumerate(r["reps"])]
        lines += ["**%s**, %d test images, stop_at %g (%.2f steps per image), %d threads, blocks of %d alternating; "
                  "mean ms per image, ratio to run(G):" % (r["set"], r["images"], r["stop_at"], r["mean_steps"],
                                                           r["threads"], r["block"]), "",
                  table(["repetition", "run(G), first / second call", "run_anytime", "its steps, first runs",
                         "its steps, second runs (hot)"], t), ""]
    return "\n".join(lines) + "\n"


def wake(name: str, gaps_us=WAKE_GAPS_US, blocks: int = 6, block: int = 60) -> Dict:
    """Per idle gap: the time of one step session run three times in a row, of three sessions
    of that step graph run once each with this thread and their pools' workers free on every
    CPU, of three more spread as the daemon spreads them (this thread on the first CPU, each
    worker on a CPU of its own: models/pools.py), and of run(G) both ways, each after the gap; ms, the median per block of ``block`` calls,
    blocks alternating."""
    import onnxruntime as ort
    from models import ModelSet, zoo
    from models.modelset import session_options
    from models.pools import Pools
    ms = ModelSet.load(zoo.resolve(name))
    if ms.no_anytime:
        raise SystemExit("%s: %s" % (name, ms.no_anytime))
    G, threads = ms.groups, ms.threads
    path = os.path.join(ms.dir, ms.manifest["columns"]["steps"]["2"])
    make = lambda: ort.InferenceSession(path, session_options(threads),  # noqa: E731
                                        providers=["CPUExecutionProvider"])
    before = len(os.listdir("/proc/self/task"))
    free = [make() for _ in range(3)]
    pool_threads = len(os.listdir("/proc/self/task")) - before      # 3 x (threads - 1): a pool each
    cpus = sorted(os.sched_getaffinity(0))
    pools = Pools("workers")                 # the calling thread is placed below, per block
    pinned = [pools.made(threads, make) for _ in range(3)]
    pools.spread(threads, cpus)
    spread_ms = ModelSet.load(zoo.resolve(name))
    spread_ms.pools.spread(threads, cpus)
    os.sched_setaffinity(0, cpus)
    x = np.zeros((1,) + ms.input_shape, np.float32)
    feed = {"input": x, "previous": ms._steps(threads, False)[0].run(None, {"input": x})[0]}
    ms.warmup()
    first = cpus[:1] if threads > 1 else cpus     # the calling thread where the daemon puts it
    calls = {"one session, 3 runs": (lambda: [free[0].run(None, feed) for _ in range(3)], cpus),
             "3 sessions, all free": (lambda: [s.run(None, feed) for s in free], cpus),
             "3 sessions, spread": (lambda: [s.run(None, feed) for s in pinned], first),
             "run(G), all free": (lambda: ms.run(G, x), cpus),
             "run(G), spread": (lambda: spread_ms.run(G, x), first)}
    out = {"set": name, "threads": threads, "pool_threads": pool_threads, "block": block, "gaps": []}
    try:
        for f, where in calls.values():
            os.sched_setaffinity(0, where)
            for _ in range(20):
                f()
        for gap in gaps_us:
            med = {m: [] for m in calls}
            for _ in range(blocks):
                for m, (f, where) in calls.items():
                    os.sched_setaffinity(0, where)
                    t = []
                    for _ in range(block):
                        if gap:
                            time.sleep(gap * 1e-6)
                        t0 = time.perf_counter()
                        f()
                        t.append(time.perf_counter() - t0)
                    med[m].append(float(np.median(t)) * 1e3)
            out["gaps"].append({"gap_us": gap, "ms": med})
    finally:
        os.sched_setaffinity(0, cpus)
    return out


@contextlib.contextmanager
def poll_idle(on: bool = True):
    """Hold a CPU latency request of 0 µs while inside (the kernel's PM QoS: cpuidle then picks
    the polling state, and an idle CPU wakes without leaving an idle state); nothing where not
    ``on``. SystemExit where /dev/cpu_dma_latency cannot be opened (it is root's, 0600)."""
    if not on:
        yield
        return
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError as e:
        raise SystemExit("--poll-idle: /dev/cpu_dma_latency: %s" % e.strerror) from None
    try:
        os.write(fd, struct.pack("i", 0))
        yield
    finally:
        os.close(fd)                  # the request ends with the descriptor


def report_wake(r: Dict) -> str:
    names = list(r["gaps"][0]["ms"])
    rows = [["%g" % g["gap_us"]] + [spread(g["ms"][m], "%.3f") for m in names] for g in r["gaps"]]
    return ("What a session run pays after idle time (%s): **%s**, step 2's graph at %d threads, %d blocks of "
            "%d calls per gap, alternating; ms, median (range) of the blocks' medians:\n\n%s\n"
            % (machine(), r["set"], r["threads"], len(r["gaps"][0]["ms"][names[0]]), r["block"],
               table(["idle before each call, µs"] + names, rows)))


def report_direct(rows: List[Dict]) -> str:
    lines = ["Anytime answers in one process, no daemon (%s)" % machine(), ""]
    for r in rows:
        t = []
        for g in r["gaps"]:
            t.append(["%g" % g["gap_us"], "%.3f" % g["G_ms"], "%.3f" % g["anytime_ms"],
                      "%.2fx" % (g["anytime_ms"] / g["G_ms"]), "%.2fx" % (g["floor_ms"] / g["G_ms"]),
                      ", ".join("k=%d %.3f (%d)" % (k, v[0], v[1]) for k, v in g["by_stop"].items()),
                      ", ".join("k=%d %.3f" % kv for kv in sorted(g["level_ms"].items()))])
        lines += ["**%s**, %d test images per gap, blocks of %d alternating (run(G), run_anytime stop_at %g, "
                  "run(k) for k < G), all CPUs:" % (r["set"], r["images"], r["block"], r["stop_at"]), "",
                  table(["idle before each image, µs", "run(G) ms", "stop_at ms", "stop_at / run(G)",
                         "floor / run(G)", "stop_at by stop level ms (images)", "run(k) ms"], t), ""]
    return "\n".join(lines) + "\n"


def sweep(name: str, images: int, taus=TAUS, block: int = 50, target: Optional[str] = None) -> Optional[Dict]:
    """Every tau through the daemon at batch 1 on the same ``images`` test images, in blocks
    of ``block`` that alternate pinned k=G plain requests with each tau's stop_at requests
    (all pinned to ``target``, default the CPU target with the most CPUs): per tau, accuracy,
    mean MACs and mean latency_ms against pinned k=G in the same blocks."""
    from models import ModelSet, zoo
    ms = ModelSet.load(zoo.resolve(name))
    data = test_set(name, ms)
    if data is None:
        return None
    x_u8, y = data[0][:images], data[1][:images]
    macs = np.array([ms.level(k)["macs"] for k in range(1, ms.groups + 1)], float)
    modes = [None] + list(taus)
    got = {m: [] for m in modes}            # (correct, latency_ms, k)
    with serving(name) as c:
        st = c.status()
        G = st["model"]["levels"]
        target = target or whole_cpu(st)
        c.pin(groups=G, target=target)
        for tau in taus:                     # build and warm every session first
            for i in range(10):
                c.infer(x_u8[i:i + 1], stop_at=tau)
        for start in range(0, len(y), block):
            for m in modes:
                for i in range(start, min(start + block, len(y))):
                    r = c.infer(x_u8[i:i + 1], stop_at=m)
                    k = r.header["groups_per_image"][0] if m is not None else G
                    got[m].append((r.labels[0] == int(y[i]), r.latency_ms, k))
    base = np.array(got[None], float)
    rows = []
    for m in modes:
        a = np.array(got[m], float)
        rows.append({"policy": "pinned k=G" if m is None else "stop_at %.2f" % m, "acc": 100 * a[:, 0].mean(),
                     "macs": 100 * macs[a[:, 2].astype(int) - 1].mean() / macs[-1],
                     "ms": a[:, 1].mean(), "ratio": a[:, 1].mean() / base[:, 1].mean()})
    return {"set": name, "images": len(y), "target": target, "block": block, "rows": rows}


def report_sweep(sw: List[Dict]) -> str:
    lines = []
    for r in sw:
        lines += ["**%s** through the daemon at batch 1, %d test images, every tau and pinned k=G in alternating "
                  "blocks of %d on `%s`:" % (r["set"], r["images"], r["block"], r["target"]), "",
                  table(["requests", "top-1 %", "mean MACs, % of k=G", "mean latency_ms", "vs pinned k=G"],
                        [[x["policy"], "%.2f" % x["acc"], "%.1f" % x["macs"], "%.3f" % x["ms"], "%.2fx" % x["ratio"]]
                         for x in r["rows"]]), ""]
    return "\n".join(lines) + "\n"


def report(off: List[Dict], live: List[Dict]) -> str:
    lines = ["Anytime answers (%s)" % machine(), ""]
    for r in off:
        lines += ["**%s**, offline, all %d test images:" % (r["set"], r["images"]), "",
                  table(["policy", "top-1 %", "mean MACs, % of k=G", "images decided at k=1 %"],
                        [[x["policy"], "%.2f" % x["acc"], "%.1f" % x["macs"],
                          "-" if x["at1"] is None else "%.1f" % x["at1"]] for x in r["rows"]]), ""]
    for r in live:
        s, a = np.array(r["static"], float), np.array(r["anytime"], float)
        macs = np.array(r["macs"], float)
        work = 100 * macs[a[:, 3].astype(int) - 1].mean() / macs[-1]
        oracle = float(np.mean([r["level_ms"][int(k)] for k in a[:, 3]]))
        lines += ["**%s** through the daemon at batch 1, %d test images, blocks of 100 alternating "
                  "(pin --groups %d --target %s; stop_at %g)%s:"
                  % (r["set"], r["images"], len(macs), r["target"], r["stop_at"],
                     ", %g ms idle before each request" % r["pace_ms"] if r.get("pace_ms") else ""), "",
                  table(["requests", "top-1 %", "mean MACs, % of k=G", "mean latency_ms per image",
                         "mean round trip ms"],
                        [["pinned k=G", "%.2f" % (100 * s[:, 0].mean()), "100", "%.3f" % s[:, 1].mean(),
                          "%.3f" % s[:, 2].mean()],
                         ["stop_at %g" % r["stop_at"], "%.2f" % (100 * a[:, 0].mean()), "%.1f" % work,
                          "%.3f" % a[:, 1].mean(), "%.3f" % a[:, 2].mean()]]), "",
                  "Floor of any early stop: each image run whole (pinned) at the level it stopped at, "
                  "from the pinned levels' mean latency_ms in the same blocks (%s): %.3f ms, %.2fx pinned k=G."
                  % (", ".join("k=%d %.3f" % kv for kv in sorted(r["level_ms"].items())), oracle,
                     oracle / s[:, 1].mean()), "",
                  "stop_at's mean latency_ms by the level images stopped at: %s." % ", ".join(
                      "k=%d %.3f (%d images)" % (k, a[a[:, 3] == k, 1].mean(), (a[:, 3] == k).sum())
                      for k in sorted(set(a[:, 3].astype(int)))), "",
                  "stop_at / pinned k=G: accuracy %+.2f points, mean latency %.2fx, mean round trip %.2fx "
                  "(targets: within 0.1 point, MACs <= 45%%, latency <= 0.6x); a progressive request's replies "
                  "(level, final): %s; status anytime: %s" % (
                      100 * (a[:, 0].mean() - s[:, 0].mean()), a[:, 1].mean() / s[:, 1].mean(),
                      a[:, 2].mean() / s[:, 2].mean(), r["progressive"], r["status"]), ""]
    return "\n".join(lines) + "\n"


def plot(off: List[Dict], path: str) -> Optional[str]:
    """Accuracy against mean MACs, the stop_at sweep beside static k, one panel per set
    (needs matplotlib: the ``plot`` extra); the path written, or None without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(off), figsize=(5.5 * len(off), 4), squeeze=False)
    for ax, r in zip(axes[0], off):
        static = [x for x in r["rows"] if x["policy"].startswith("static")]
        sweep = [x for x in r["rows"] if x.get("tau")]
        ax.plot([x["macs"] for x in static], [x["acc"] for x in static], "s-", color="0.5", label="static k")
        for x in static:
            ax.annotate(x["policy"].split()[-1], (x["macs"], x["acc"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
        ax.plot([x["macs"] for x in sweep], [x["acc"] for x in sweep], "o-", color="C0", label="stop_at tau")
        for x in sweep:
            ax.annotate("%g" % x["tau"], (x["macs"], x["acc"]), textcoords="offset points", xytext=(3, 4),
                        fontsize=7, color="C0")
        ax.set_xlabel("mean MACs, % of k=G")
        ax.set_ylabel("top-1 %")
        ax.set_title("%s, all %d test images (offline)" % (r["set"], r["images"]), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.anytime", description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="*", default=list(DATA), help="shipped group sets (default: both)")
    ap.add_argument("--images", type=int, default=2000, help="test images through the daemon (default 2000)")
    ap.add_argument("--stop-at", type=float, default=0.95)
    ap.add_argument("--offline-only", action="store_true")
    ap.add_argument("--target", default=None, help="the target every request is pinned to (default: the CPU "
                    "target with the most CPUs)")
    ap.add_argument("--pace-ms", type=float, default=0.0,
                    help="through the daemon: idle ms before each request, as a camera's frame interval "
                         "leaves (default 0: back to back)")
    ap.add_argument("--plot", default=None, help="write the accuracy / MACs curve here (needs matplotlib)")
    ap.add_argument("--sweep", type=int, default=0, metavar="N",
                    help="only: every tau through the daemon on N test images per set (alternating blocks)")
    ap.add_argument("--direct", type=int, default=0, metavar="N",
                    help="only: N test images per set in this process, no daemon (ModelSet.run_anytime against "
                         "run(G)), after each --gap-us of idle time")
    ap.add_argument("--gap-us", type=float, nargs="+", default=None,
                    help="with --direct or --wake: idle µs before each image or call, one pass per value "
                         "(default 0 300; --wake: 0 300 1000)")
    ap.add_argument("--wake", action="store_true",
                    help="only: one step session run 3 times against 3 sessions run once each (their "
                         "workers free, then pinned a CPU apart), after each --gap-us of idle time (the "
                         "first set of --sets)")
    ap.add_argument("--poll-idle", action="store_true",
                    help="with --wake: hold /dev/cpu_dma_latency at 0 meanwhile (root), so that an idle CPU "
                         "polls instead of entering an idle state: whether a slow wake is the idle state's")
    ap.add_argument("--steps-floor", type=int, default=0, metavar="N",
                    help="only: what the steps cost by themselves on N test images per set, each run twice "
                         "(the second hot), against run(G) and run_anytime, --repeat times")
    ap.add_argument("--repeat", type=int, default=3, help="with --steps-floor: repetitions (default 3)")
    a = ap.parse_args(argv)
    if a.steps_floor:
        print(report_steps_floor([r for r in (steps_floor(n, a.steps_floor, a.stop_at, a.repeat) for n in a.sets)
                                  if r]))
        return
    if a.wake:
        with poll_idle(a.poll_idle):
            r = wake(a.sets[0], a.gap_us or WAKE_GAPS_US)
        print(report_wake(r) + ("\nIdle CPUs polled (/dev/cpu_dma_latency held at 0).\n" if a.poll_idle else ""))
        return
    if a.direct:
        print(report_direct([r for r in (direct(n, a.direct, a.stop_at, a.gap_us or DIRECT_GAPS_US) for n in a.sets) if r]))
        return
    if a.sweep:
        print(report_sweep([r for r in (sweep(n, a.sweep, target=a.target) for n in a.sets) if r]))
        return
    off = [r for r in (offline(n) for n in a.sets) if r]
    if a.plot and off:
        print("plot: %s" % (plot(off, a.plot) or "not written: matplotlib is not installed (the plot extra)"))
    live = [] if a.offline_only else [r for r in (through_daemon(n, a.images, a.stop_at, target=a.target,
                                                                 pace_ms=a.pace_ms) for n in a.sets) if r]
    print(report(off, live))


if __name__ == "__main__":
    main()

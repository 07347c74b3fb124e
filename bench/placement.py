"""Where onnxruntime's threads run, through a real ``dnnscale serve``: the latency tail of
batch-1 requests per placement of the calling thread and the pools' workers (models/pools.py).

    python -m bench.placement [--model NAME] [--reps 2] [--requests 300] [--pace-ms 0 5]

Per rep, one fresh daemon per mode (``DNNSCALE_ORT_WORKERS``: ``spread``, the default, pins
the calling thread to the target's first CPU and each worker to a CPU of its own; ``workers``
pins the workers only; ``free`` neither), the modes in turn; in each, ``--requests`` requests
of k=1 and of k=G pinned to the whole-CPU target, after ``--pace-ms`` of idle time each (0:
back to back; a camera's frames leave tens of ms). The daemon's own ``latency_ms`` (the
onnxruntime run alone): p50, p90, p99 and the share of requests over 1 ms, per mode, level and
pace, as the median (range) over reps.
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import numpy as np

from models.pools import MODES

from .common import machine, running_daemon, spread, table, whole_cpu


def measure(model: str, mode: str, requests: int, paces_ms: List[float]) -> Dict:
    """One fresh daemon in ``mode``: {(k, pace): [latency_ms ...]} for k = 1 and G."""
    with running_daemon(model, profile_runs=1, env={"DNNSCALE_ORT_WORKERS": mode}) as d, \
            d.client(timeout_s=30) as c:
        st = c.status()
        G = st["model"]["levels"]
        target = whole_cpu(st)
        ch, h, w = st["model"]["input_shape"]
        img = np.random.RandomState(0).randint(0, 256, (1, h, w, ch), np.uint8)
        out = {"target": target, "threads": st["targets"][target]["onnxruntime_threads"], "ms": {}}
        for k in (1, G):
            c.pin(groups=k, target=target)
            for _ in range(30):
                c.infer(img)
            for pace in paces_ms:
                lat = []
                for _ in range(requests):
                    if pace:
                        time.sleep(pace / 1e3)
                    lat.append(c.infer(img).latency_ms)
                out["ms"][(k, pace)] = lat
        return out


def run(model: str = "cifar10-g4", reps: int = 2, requests: int = 300, paces_ms=(0.0, 5.0)) -> Dict:
    res = {m: [] for m in MODES}
    for _ in range(reps):
        for m in MODES:
            res[m].append(measure(model, m, requests, list(paces_ms)))
    return {"model": model, "reps": reps, "requests": requests, "paces_ms": list(paces_ms), "modes": res}


def report(r: Dict) -> str:
    first = r["modes"][MODES[0]][0]
    rows = []
    for key in first["ms"]:
        k, pace = key
        for m in MODES:
            stats = [(np.percentile(x["ms"][key], 50), np.percentile(x["ms"][key], 90),
                      np.percentile(x["ms"][key], 99), 100 * np.mean(np.array(x["ms"][key]) > 1.0))
                     for x in r["modes"][m]]
            rows.append(["k=%d" % k, "%g" % pace, m] + [spread([s[i] for s in stats], "%.3f" if i < 3 else "%.1f")
                                                      for i in range(4)])
    return ("Where onnxruntime's threads run (%s): **%s** through a real daemon, target %s at %d threads, "
            "%d requests per level and pace, %d fresh daemons per mode in turn; the daemon's latency_ms, "
            "median (range) over them:\n\n%s\n"
            % (machine(), r["model"], first["target"], first["threads"], r["requests"], r["reps"],
               table(["level", "idle before each request, ms", "mode", "p50 ms", "p90 ms", "p99 ms",
                      "over 1 ms, %"], rows)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cifar10-g4", help="a shipped set (default cifar10-g4)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--requests", type=int, default=300, help="per level and pace (default 300)")
    ap.add_argument("--pace-ms", type=float, nargs="+", default=[0.0, 5.0],
                    help="idle ms before each request, one pass per value (default 0 5)")
    a = ap.parse_args(argv)
    print(report(run(a.model, a.reps, a.requests, a.pace_ms)))


if __name__ == "__main__":
    main()

"""How a configuration's latency tail grows with its size, through a real ``dnnscale serve``:
whether a run's noise is a share of the run (the tail as a ratio: p99/p50 the same at every
level) or a time of its own (p99 - p50 the same). The governor carries the tail it measured
on one level to the others as a ratio (governor/controller.py, the margin), so this tells
whether that holds.

    python -m bench.tails [--model NAME] [--blocks 4] [--requests 150] [--gap-ms 3]

Every (level, CPU target) pinned in turn, ``--requests`` batch-1 requests each one
``--gap-ms`` apart (after 5 unmeasured), the whole round repeated ``--blocks`` times so that
the host's drift falls on every configuration alike; the daemon's ``latency_ms`` (the
onnxruntime run alone). Per configuration: p50, p99, p99/p50, p99 - p50, and per block the
spread of p99 - p50 (median (range) over blocks).
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import numpy as np

from .common import machine, running_daemon, spread, table


def run(model: str = "cifar10-g4", blocks: int = 4, requests: int = 150, gap_ms: float = 3.0) -> Dict:
    with running_daemon(model, profile_runs=5, nice=-10) as d, d.client(timeout_s=30) as c:
        st = c.status()
        G = st["model"]["levels"]
        targets = [n for n, t in st["targets"].items() if t["kind"] == "cpu"]
        ch, h, w = st["model"]["input_shape"]
        img = np.random.RandomState(0).randint(0, 256, (1, h, w, ch), np.uint8)
        configs = [(k, t) for t in targets for k in range(1, G + 1)]
        lat: Dict = {cf: [] for cf in configs}
        for _ in range(blocks):
            for k, t in configs:
                c.pin(groups=k, target=t)
                for _ in range(5):
                    c.infer(img)
                    time.sleep(gap_ms / 1e3)
                block = []
                for _ in range(requests):
                    block.append(c.infer(img).latency_ms)
                    time.sleep(gap_ms / 1e3)
                lat[(k, t)].append(block)
    return {"model": model, "blocks": blocks, "requests": requests, "gap_ms": gap_ms, "ms": lat}


def report(r: Dict) -> str:
    rows: List[List] = []
    for (k, t), blocks in r["ms"].items():
        a = np.concatenate([np.asarray(b, float) for b in blocks])
        p50, p99 = np.percentile(a, 50), np.percentile(a, 99)
        per = [np.percentile(b, 99) - np.percentile(b, 50) for b in blocks]
        rows.append(["k=%d on %s" % (k, t), "%.3f" % p50, "%.3f" % p99, "%.2f" % (p99 / p50),
                     "%.3f" % (p99 - p50), spread(per, "%.3f")])
    return ("Latency tails by size (%s): **%s** through a real daemon at niceness -10, %d requests per "
            "configuration and block, %g ms apart, %d blocks in turn; the daemon's latency_ms:\n\n%s\n"
            % (machine(), r["model"], r["requests"], r["gap_ms"], r["blocks"],
               table(["configuration", "p50 ms", "p99 ms", "p99/p50", "p99 - p50 ms",
                      "p99 - p50 per block, ms"], rows)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.tails", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cifar10-g4", help="a shipped set (default cifar10-g4)")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--requests", type=int, default=150, help="per configuration and block (default 150)")
    ap.add_argument("--gap-ms", type=float, default=3.0, help="between requests (default 3)")
    a = ap.parse_args(argv)
    print(report(run(a.model, a.blocks, a.requests, a.gap_ms)))


if __name__ == "__main__":
    main()

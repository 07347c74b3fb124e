"""The daemon's cost (issue 5): end-to-end p50 at batch 1 over ipc minus a direct
``ModelSet.run`` p50 (target <= 100 µs), and throughput with 1/4/8/16 concurrent client
processes against back-to-back direct ``ModelSet.run`` (target >= 90% with 8).

Both sides run the same level (pinned to k = G) and the same onnxruntime thread count;
medians and ratios come from one run.

    python -m bench.daemon [--model DIR] [--requests N]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from typing import Dict

import numpy as np

from .common import machine, table


def _client_proc(infer_ep, control_ep, n, ready, go, done):
    from daemon.client import Client
    c = Client(infer_ep, control_ep, timeout_s=30)
    x = np.zeros((1, 3, 32, 32), np.float32)
    c.infer(x)                 # connected and warm
    ready.put(1)
    go.wait()
    for _ in range(n):
        c.infer(x)
    done.put(1)
    c.close()


def _echo_server(ep: str) -> None:
    import zmq
    s = zmq.Context().socket(zmq.ROUTER)
    s.bind(ep)
    while True:
        s.send_multipart(s.recv_multipart())


def echo_floor_us(ep: str, n: int = 1000) -> float:
    """p50 round trip of a bare ZeroMQ ROUTER/DEALER echo (12 KiB, one request like the
    daemon's) between two processes: the transport floor under any daemon's overhead."""
    import zmq
    from models.evaluate import timings
    srv = mp.get_context("fork").Process(target=_echo_server, args=(ep,), daemon=True)
    srv.start()
    c = zmq.Context.instance().socket(zmq.DEALER)
    c.setsockopt(zmq.LINGER, 0)
    c.connect(ep)
    frames = [b'{"id":1}', bytes(12288)]

    def rt():
        c.send_multipart(frames)
        c.recv_multipart()

    try:
        return float(np.median(timings(rt, n, warmup=100))) * 1e6
    finally:
        c.close()
        srv.kill()


def run(model_dir: str, requests: int = 1000, threads: int = None, clients=(1, 4, 8, 16)) -> Dict:
    from models import ModelSet
    from models.evaluate import timings
    from tests.daemon_harness import Daemon
    threads = threads or os.cpu_count()
    ms = ModelSet.load(model_dir, threads=threads)
    G = ms.groups
    x = np.zeros((1,) + ms.input_shape, np.float32)
    t = timings(lambda: ms.run(G, x), requests, warmup=100)
    direct_p50 = float(np.median(t)) * 1e3
    direct_rate = len(t) / sum(t)
    out = {"machine": machine(), "direct_p50_ms": direct_p50, "direct_per_s": direct_rate, "levels": G}
    with tempfile.TemporaryDirectory() as tmp:
        out["echo_floor_us"] = echo_floor_us("ipc://%s/echo.sock" % tmp, n=requests)
        d = Daemon(tmp, model_dir, extra=["--threads", str(threads)])
        try:
            d.wait_ready()
            c = d.client(timeout_s=30)
            targets = c.status()["targets"]
            widest = max(targets, key=lambda t: len(targets[t]["cpus"]))   # all CPUs, as the direct run
            c.pin(groups=G, target=widest)
            out["target"] = widest
            for dtype in ("float32", "uint8"):
                xx = x if dtype == "float32" else np.zeros((1, 32, 32, 3), np.uint8)
                lat = timings(lambda: c.infer(xx), requests, warmup=100)
                out["e2e_p50_ms_" + dtype] = float(np.median(lat)) * 1e3
            out["throughput"] = []
            ctx = mp.get_context("fork")
            for n_clients in clients:
                ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
                per = max(50, requests // n_clients)
                procs = [ctx.Process(target=_client_proc, args=(d.infer_ep, d.control_ep, per, ready, go, done))
                         for _ in range(n_clients)]
                for p in procs:
                    p.start()
                for _ in procs:
                    ready.get(timeout=120)
                t0 = time.perf_counter()
                go.set()
                for _ in procs:
                    done.get(timeout=600)
                wall = time.perf_counter() - t0
                for p in procs:
                    p.join()
                total = per * n_clients
                out["throughput"].append({"clients": n_clients, "requests": total, "per_s": total / wall,
                                          "ratio": total / wall / direct_rate})
            c.close()
        finally:
            d.stop()
    return out


def report(r: Dict) -> str:
    over = table(["input", "direct ModelSet.run p50 ms", "through the daemon p50 ms", "overhead µs (target <= 100)"],
                 [[dt, r["direct_p50_ms"], r["e2e_p50_ms_" + dt], (r["e2e_p50_ms_" + dt] - r["direct_p50_ms"]) * 1e3]
                  for dt in ("float32", "uint8")])
    thr = table(["clients", "requests", "inferences/s", "ratio to direct back-to-back (target >= 0.9 at 8)"],
                [[t["clients"], t["requests"], t["per_s"], t["ratio"]] for t in r["throughput"]])
    return ("Machine: %s; k = %d, target %s, batch 1, ipc.\n\n%s\n\nThe transport floor, a bare ZeroMQ "
            "ROUTER/DEALER echo of the same size between two processes: %.0f µs p50. Direct back-to-back: "
            "%.0f inferences/s.\n\n%s\n" % (r["machine"], r["levels"], r["target"], over, r["echo_floor_us"],
                                              r["direct_per_s"], thr))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from models import zoo
    r = run(a.model or zoo.default_path(), a.requests)
    print(json.dumps(r, indent=1) if a.json else report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

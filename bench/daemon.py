"""The daemon's cost (issue 5): end-to-end p50 at batch 1 over ipc minus a direct
``ModelSet.run`` p50 (target <= 100 µs), and throughput with 1/4/8/16 concurrent client
processes against back-to-back direct ``ModelSet.run`` (target >= 90% with 8).

Both sides run the same level (pinned to k = G) and the same onnxruntime thread count, once
with one thread and once with all CPUs (on a 2-core machine the second onnxruntime thread
competes with ZeroMQ's I/O threads and the clients). The direct and through-the-daemon
latencies are taken from one client process in alternating blocks, so that both see the same
moments of a noisy machine; medians and ratios come from one run. Where the overhead goes: layer
by layer (a bare ZeroMQ echo; a bare Python ROUTER around the same run; plus the daemon's
protocol code; plus its ``Service.infer``) and phase by phase (bench/daemon_trace.py).

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

from . import daemon_trace
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


def zmq_socket(kind: str):
    import zmq
    s = zmq.Context.instance().socket(getattr(zmq, kind))
    s.setsockopt(zmq.LINGER, 0)
    return s


def _echo_server(ep: str) -> None:
    s = zmq_socket("ROUTER")
    s.bind(ep)
    while True:
        s.send_multipart(s.recv_multipart())


def echo_floor_us(ep: str, n: int = 1000) -> float:
    """p50 round trip of a bare ZeroMQ ROUTER/DEALER echo (12 KiB, one request like the
    daemon's) between two processes: the transport floor under any daemon's overhead."""
    from models.evaluate import timings
    srv = mp.get_context("fork").Process(target=_echo_server, args=(ep,), daemon=True)
    srv.start()
    c = zmq_socket("DEALER")
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


LAYERS = ("bare", "protocol", "service")


def _layer_server(ep: str, model_dir: str, threads: int, layer: str, tmp: str) -> None:
    """A one-thread Python ROUTER around the same run, with the daemon's code up to ``layer``:
    bare (frombuffer, run, send), protocol (+ ``decode_infer``, labels, ``encode_reply``),
    service (+ ``Service.infer``: governor, executor, platform)."""
    from daemon.protocol import InputSpec, decode_infer, encode_reply
    if layer == "service":
        from daemon import config
        from daemon.service import Service
        empty = os.path.join(tmp, "empty-%d.yaml" % threads)
        open(empty, "w").close()
        svc = Service(config.load(empty, {"model": model_dir, "state_dir": tmp, "runtime_dir": tmp,
                                          "threads": threads}))
        svc.start()
        widest = max(svc.targets, key=lambda t: len(svc.targets[t].cpus))
        svc.control("pin", {"groups": svc.models.groups, "target": widest})
        ms, spec = svc.models, svc.input_spec
    else:
        from models import ModelSet
        ms = ModelSet.load(model_dir, threads=threads)
        spec = InputSpec(ms.input_shape, ms.groups, 1)
    s = zmq_socket("ROUTER")
    s.bind(ep)
    while True:
        ident, head, body = s.recv_multipart()
        if layer == "bare":
            out = ms.run(ms.groups, np.frombuffer(body, np.float32).reshape((1,) + ms.input_shape))
            s.send_multipart([ident, b'{"id":1}', out.tobytes()])
            continue
        r = decode_infer([head, body], spec)
        if layer == "protocol":
            out = ms.run(ms.groups, r.tensor)
            labels = out.argmax(1).tolist()
            reply = encode_reply({"id": r.id, "ok": True, "labels": labels, "names": [ms.classes[i] for i in labels],
                                  "config": {"level": ms.groups, "target": "cpu", "freq_khz": None},
                                  "latency_ms": 1.0, "energy_mj": None}, out)
        else:
            [(h, out)] = svc.infer([r])
            reply = encode_reply(h, out)
        s.send_multipart([ident] + reply)


def _layers(model_dir: str, threads: int, tmp: str, requests: int, q) -> None:
    """Per layer: a direct ``ModelSet.run`` and the same request through that layer's server
    from a bare DEALER, in alternating blocks; the p50 difference in µs."""
    import json as _json
    from models import ModelSet
    from models.evaluate import timings
    ms = ModelSet.load(model_dir, threads=threads)
    x = np.zeros((1,) + ms.input_shape, np.float32)
    frames = [_json.dumps({"id": "b-1", "dtype": "float32", "shape": list(x.shape)}).encode(), x.tobytes()]
    out = {}
    for layer in LAYERS:
        ep = "ipc://%s/layer-%s-%d.sock" % (tmp, layer, threads)
        srv = mp.get_context("spawn").Process(target=_layer_server, args=(ep, model_dir, threads, layer, tmp),
                                              daemon=True)
        srv.start()
        c = zmq_socket("DEALER")
        c.connect(ep)

        def rt():
            c.send_multipart(frames)
            c.recv_multipart()

        try:
            rt()   # waits until the server has loaded
            d, e = [], []
            for _ in range(10):
                d += timings(lambda: ms.run(ms.groups, x), max(10, requests // 10), warmup=10)
                e += timings(rt, max(10, requests // 10), warmup=10)
            out[layer] = (float(np.median(e)) - float(np.median(d))) * 1e6
        finally:
            c.close()
            srv.kill()
    q.put(out)


def _interleaved(model_dir: str, threads: int, infer_ep: str, control_ep: str, requests: int, q) -> None:
    """Direct ``ModelSet.run`` and the same request through the daemon, in alternating blocks
    from one client process, so that both see the same moments of a noisy machine."""
    from daemon.client import Client
    from models import ModelSet
    from models.evaluate import timings
    ms = ModelSet.load(model_dir, threads=threads)
    c = Client(infer_ep, control_ep, timeout_s=30)
    x = np.zeros((1,) + ms.input_shape, np.float32)
    u = np.zeros((1, 32, 32, 3), np.uint8)
    blocks, per = 10, max(10, requests // 10)
    t = {"direct": [], "float32": [], "uint8": []}
    for _ in range(blocks):
        t["direct"] += timings(lambda: ms.run(ms.groups, x), per, warmup=10)
        t["float32"] += timings(lambda: c.infer(x), per, warmup=10)
        t["uint8"] += timings(lambda: c.infer(u), per, warmup=10)
    c.close()
    q.put({"levels": ms.groups, "direct_p50_ms": float(np.median(t["direct"])) * 1e3,
           "direct_per_s": len(t["direct"]) / sum(t["direct"]),
           "e2e_p50_ms_float32": float(np.median(t["float32"])) * 1e3,
           "e2e_p50_ms_uint8": float(np.median(t["uint8"])) * 1e3})


def _fresh_process(fn, *args):
    """``fn(*args, queue)`` in a new process; what it puts on the queue. onnxruntime's global
    thread pool is sized once per process, so each thread count gets its own process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=args + (q,))
    p.start()
    try:
        return q.get(timeout=600)
    finally:
        p.join()


def _throughput(d, n_clients: int, per: int) -> float:
    ctx = mp.get_context("fork")
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
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
    return per * n_clients / wall


def run(model_dir: str, requests: int = 1000, threads=None, clients=(1, 4, 8, 16)) -> Dict:
    """Per onnxruntime thread count (default: 1 and all CPUs): direct p50 and rate, the daemon's
    p50 for float32 and uint8 input, and throughput with each number of concurrent clients."""
    from tests.daemon_harness import Daemon
    threads = threads or sorted({1, os.cpu_count()})
    out = {"machine": machine(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        out["echo_floor_us"] = echo_floor_us("ipc://%s/echo.sock" % tmp, n=requests)
        for th in threads:
            row = {"threads": th, "throughput": []}
            row["trace"] = daemon_trace.run(model_dir, th, requests)
            row["layers_us"] = _fresh_process(_layers, model_dir, th, tmp, requests)
            d = Daemon(os.path.join(tmp, "t%d" % th), model_dir, extra=["--threads", str(th)])
            try:
                d.wait_ready()
                c = d.client(timeout_s=30)
                st = c.status()
                targets = st["targets"]
                widest = max(targets, key=lambda t: len(targets[t]["cpus"]))   # all CPUs, as the direct run
                c.pin(groups=st["model"]["levels"], target=widest)
                out["target"] = widest
                row.update(_fresh_process(_interleaved, model_dir, th, d.infer_ep, d.control_ep, requests))
                out["levels"] = row["levels"]
                for n_clients in clients:
                    per = max(50, requests // n_clients)
                    per_s = _throughput(d, n_clients, per)
                    row["throughput"].append({"clients": n_clients, "requests": per * n_clients, "per_s": per_s,
                                              "ratio": per_s / row["direct_per_s"]})
                c.close()
            finally:
                d.stop()
            out["rows"].append(row)
    return out


def report(r: Dict) -> str:
    over = table(["onnxruntime threads", "input", "direct ModelSet.run p50 ms", "through the daemon p50 ms",
                  "overhead µs (target <= 100)"],
                 [[row["threads"], dt, row["direct_p50_ms"], row["e2e_p50_ms_" + dt],
                   (row["e2e_p50_ms_" + dt] - row["direct_p50_ms"]) * 1e3]
                  for row in r["rows"] for dt in ("float32", "uint8")])
    floors = table(["onnxruntime threads", "a bare ZeroMQ echo", "bare Python ROUTER + the run",
                    "+ the protocol (decode_infer, encode_reply)", "+ Service.infer (governor, executor)",
                    "the daemon, through Client"],
                   [[row["threads"], r["echo_floor_us"]] + [row["layers_us"][l] for l in LAYERS]
                    + [(row["e2e_p50_ms_float32"] - row["direct_p50_ms"]) * 1e3] for row in r["rows"]])
    thr = table(["onnxruntime threads", "clients", "requests", "inferences/s", "direct back-to-back /s",
                 "ratio (target >= 0.9 at 8)"],
                [[row["threads"], t["clients"], t["requests"], t["per_s"], row["direct_per_s"], t["ratio"]]
                 for row in r["rows"] for t in row["throughput"]])
    return ("Machine: %s; k = %d, target %s, batch 1, ipc. Direct and daemon use the same onnxruntime "
            "thread count per row.\n\n%s\n\nThe overhead layer by layer (float32, p50 µs over a direct run, each "
            "against direct runs in alternating blocks): a bare ZeroMQ ROUTER/DEALER echo of the same size "
            "between two processes (transport alone); a one-thread Python ROUTER that runs the same "
            "ModelSet.run and replies, with nothing else (no Python daemon on ZeroMQ goes below it here: the "
            "run also leaves the caches cold for the Python around it); the same with the daemon's protocol "
            "code; with its Service.infer too (all three driven by a bare DEALER); the real daemon through "
            "the real Client (the table above).\n\n%s\n\nWhere it goes (`python -m bench.daemon_trace`): "
            "one client, a time stamp at every step of each request on both sides (CLOCK_MONOTONIC); medians "
            "per phase.\n\n%s\n\n%s\n"
            % (r["machine"], r["levels"], r["target"], over, floors,
               daemon_trace.report([row["trace"] for row in r["rows"]]), thr))


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

"""Where the daemon's overhead goes: one client, sequential batch-1 requests, a time stamp at
every step of each request on both sides of the socket.

The daemon is the real ``Server`` and ``Service`` in a child process, with its steps wrapped
to record ``CLOCK_MONOTONIC`` (shared between processes on Linux); the client is the real
``Client`` in another process, its socket's send and receive wrapped the same way. Each phase's
median over the requests is reported, and the medians of the total and of the run inside the
daemon, so that "overhead" can be split into client, transport, daemon code and a slower run.

    python -m bench.daemon_trace [--model DIR] [--threads N] [--requests N]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from typing import Dict, List

import numpy as np

now = time.monotonic_ns

# (name, from mark, to mark, what it is); client marks: call, sent0, sent1, got, done;
# daemon marks: woke, decoded, run0, run1, reply0, reply1 ("transport out" starts at the
# daemon's send, so it overlaps "daemon: send": the phases do not sum to the total).
PHASES = [
    ("client: encode", "call", "sent0", "Client.infer until the send"),
    ("client: send", "sent0", "sent1", "send_multipart (queues to ZeroMQ's I/O thread)"),
    ("transport in", "sent1", "woke", "the client's send returned until the daemon's first recv returned"),
    ("daemon: receive + decode", "woke", "decoded", "the other frames, validation, numpy view"),
    ("daemon: before run", "decoded", "run0", "batching, governor decision, apply"),
    ("run", "run0", "run1", "ModelSet.run inside the daemon"),
    ("daemon: after run", "run1", "reply0", "labels, reply encoding (the governor learns after the send)"),
    ("daemon: send", "reply0", "reply1", "send_multipart (the daemon's thread can lose the CPU here)"),
    ("transport out", "reply0", "got", "the daemon's send began until the client's recv returned"),
    ("client: decode", "got", "done", "reply parsing, logits view"),
]


def _daemon(model_dir: str, threads: int, tmp: str, ready, stop, q) -> None:
    import threading
    from daemon import config
    from daemon import server as srv
    from daemon.service import Service
    empty = os.path.join(tmp, "empty.yaml")
    open(empty, "w").close()
    cfg = config.load(empty, {"model": model_dir, "state_dir": tmp, "runtime_dir": tmp, "threads": threads,
                              "infer_endpoint": "ipc://%s/infer.sock" % tmp,
                              "control_endpoint": "ipc://%s/control.sock" % tmp})
    svc = Service(cfg)
    svc.start()
    widest = max(svc.targets, key=lambda t: len(svc.targets[t].cpus))
    svc.control("pin", {"groups": svc.models.groups, "target": widest})
    marks: List[Dict[str, int]] = []

    decode = srv.decode_infer

    def decode_infer(body, spec):
        r = decode(body, spec)
        marks[-1]["decoded"] = now()
        return r

    run = svc.models.run

    def timed_run(*a, **k):
        marks[-1]["run0"] = now()
        out = run(*a, **k)
        marks[-1]["run1"] = now()
        return out

    server = srv.Server(svc, cfg)
    receive, send = server._receive, server._send

    def timed_receive(*a, **k):
        marks.append({"woke": now()})
        receive(*a, **k)
        if not server.queues:   # woken by something else than one request
            marks.pop()

    def timed_send(sock, frames):
        t0 = now()
        send(sock, frames)
        if sock is server.infer:
            marks[-1].update(reply0=t0, reply1=now())

    srv.decode_infer = decode_infer
    svc.models.run = timed_run
    server._receive, server._send = timed_receive, timed_send
    server.bind()
    halt = threading.Event()
    t = threading.Thread(target=server.serve, args=(halt,), daemon=True)
    t.start()
    ready.set()
    stop.wait()
    halt.set()
    t.join(timeout=30)
    server.close()
    svc.stop()
    q.put(marks)


def _client(tmp: str, shape, requests: int, warmup: int, q) -> None:
    from daemon.client import Client
    c = Client("ipc://%s/infer.sock" % tmp, "ipc://%s/control.sock" % tmp, timeout_s=30)
    x = np.zeros([1] + list(shape), np.float32)
    c.infer(x)
    s = c._sock(c.endpoint)
    marks: List[Dict[str, int]] = []
    send, recv = s.send_multipart, s.recv_multipart

    def timed_send(*a, **k):
        marks[-1]["sent0"] = now()
        out = send(*a, **k)
        marks[-1]["sent1"] = now()
        return out

    def timed_recv(*a, **k):
        out = recv(*a, **k)
        marks[-1]["got"] = now()
        return out

    s.send_multipart, s.recv_multipart = timed_send, timed_recv
    for _ in range(warmup + requests):
        marks.append({"call": now()})
        c.infer(x)
        marks[-1]["done"] = now()
    c.close()
    q.put(marks[warmup:])


def run(model_dir: str, threads: int = 1, requests: int = 1000, warmup: int = 100) -> Dict:
    """Median µs of each phase, of the total and of the run; the daemon's first ``warmup + 1``
    requests (the client's connect request included) are dropped with the client's warm-up."""
    from models import manifest
    shape = manifest.read(model_dir, verify=False)["input"]["shape"]
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        ready, stop, dq, cq = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
        d = ctx.Process(target=_daemon, args=(model_dir, threads, tmp, ready, stop, dq))
        d.start()
        try:
            if not ready.wait(300):
                raise RuntimeError("the traced daemon did not start")
            c = ctx.Process(target=_client, args=(tmp, shape, requests, warmup, cq))
            c.start()
            client = cq.get(timeout=600)
            c.join()
            stop.set()
            daemon = dq.get(timeout=60)[-requests:]
        finally:
            stop.set()
            d.join(timeout=60)
            if d.is_alive():
                d.kill()
    marks = [dict(a, **b) for a, b in zip(client, daemon)]
    us = lambda a, b: float(np.median([(m[b] - m[a]) / 1e3 for m in marks]))
    return {"threads": threads, "requests": len(marks),
            "phases": [{"phase": n, "p50_us": us(a, b), "what": w} for n, a, b, w in PHASES],
            "total_p50_us": us("call", "done"), "run_p50_us": us("run0", "run1"),
            "overhead_p50_us": float(np.median([((m["done"] - m["call"]) - (m["run1"] - m["run0"])) / 1e3
                                                for m in marks]))}


def report(rows: List[Dict]) -> str:
    from .common import table
    names = [p["phase"] for p in rows[0]["phases"]]
    body = [[n] + [r["phases"][i]["p50_us"] for r in rows] + [rows[0]["phases"][i]["what"]]
            for i, n in enumerate(names)]
    body.append(["total (client call)"] + [r["total_p50_us"] for r in rows] + [""])
    body.append(["total minus this request's run"] + [r["overhead_p50_us"] for r in rows] + [""])
    return table(["phase (p50 µs)"] + ["%d onnxruntime thread%s" % (r["threads"], "s" * (r["threads"] > 1))
                                       for r in rows] + ["what"], body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model-set folder (default: the shipped group set)")
    p.add_argument("--threads", type=int, action="append",
                   help="onnxruntime threads; repeat for several columns (default: 1 and all CPUs)")
    p.add_argument("--requests", type=int, default=1000, help="timed requests per column (default 1000)")
    a = p.parse_args(argv)
    from models import zoo
    rows = [run(a.model or zoo.default_path(), th, a.requests) for th in (a.threads or sorted({1, os.cpu_count()}))]
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the daemon costs per request, against the floors measured in the same run.

Targets (issue 21): at batch 1 over ipc, the daemon's p50 overhead over a direct
``ModelSet.run`` is <= 2x a bare pyzmq ROUTER/DEALER echo of the same frames, through the
project's ``Client`` and through a bare DEALER; the group range a client sees (k=G / k=1
through the daemon) is >= 0.95x the direct one; with 8 concurrent client processes the
daemon serves >= 0.9x the rate of direct back-to-back runs.

One client process times every row (direct runs, the echo, a bare Python ROUTER around the
same run, the daemon at k=1 and k=G) in rounds, block after block, so that all of them see
the same moments of a noisy machine; each figure is the median of the per-round p50s, with
their range. Once with one onnxruntime thread and once with all CPUs. Where the time goes,
phase by phase: bench/daemon_trace.py.

    python -m bench.daemon [--model DIR] [--requests N] [--rounds N] [--threads N] [--no-throughput]
                           [--baseline CHECKOUT] [--awake]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

from . import daemon_trace
from .common import Awake, machine, round_trip_args, spread, table


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


def widest_target(status: Dict) -> str:
    """The CPU target with the most CPUs: all of them, as a direct run in one process uses."""
    targets = status["targets"]
    return max(targets, key=lambda t: len(targets[t]["cpus"]))


def reply_frames(infer_ep: str, status: Dict, **header) -> List[bytes]:
    """The daemon's own reply frames to one float32 batch-1 request (``header``: more
    fields), for the echo servers to answer with, so both directions carry its sizes."""
    shape = [1] + status["model"]["input_shape"]
    s = zmq_socket("DEALER")
    s.connect(infer_ep)
    try:
        s.send_multipart([json.dumps(dict({"id": "b-1", "dtype": "float32", "shape": shape}, **header)).encode(),
                          bytes(4 * int(np.prod(shape)))])
        return s.recv_multipart()
    finally:
        s.close()


def _echo_server(ep: str, reply) -> None:
    """The transport floor: a bare pyzmq ROUTER that answers every request with ``reply``
    (the daemon's own reply frames), so both directions carry the daemon's sizes."""
    s = zmq_socket("ROUTER")
    s.bind(ep)
    while True:
        s.send_multipart([s.recv_multipart()[0]] + reply)


def _python_floor_server(ep: str, model_dir: str, threads: int) -> None:
    """A one-thread Python ROUTER around the same run and nothing else (the header is the
    level as one digit): what any Python daemon on ZeroMQ pays at least."""
    from models import ModelSet
    ms = ModelSet.load(model_dir, threads=threads)
    shape = (1,) + ms.input_shape
    s = zmq_socket("ROUTER")
    s.bind(ep)
    while True:
        ident, head, body = s.recv_multipart(copy=False)
        out = ms.run(int(head.bytes), np.frombuffer(body.buffer, np.float32).reshape(shape))
        s.send_multipart([ident, b'{"id":1}', out], copy=False)


# (row, what it is); every row is timed in each round, in this order, from one client process.
ROWS = [
    ("direct k=1", "ModelSet.run in the client process (float32)"),
    ("direct k=G", ""),
    ("echo", "bare pyzmq ROUTER/DEALER echo of the daemon's request and reply frames"),
    ("python floor k=1", "bare DEALER to a one-thread Python ROUTER that runs the same session"),
    ("daemon DEALER k=1", "the real daemon, from a bare DEALER (float32 frames built once)"),
    ("daemon Client k=1", "the real daemon, through daemon.client.Client (float32)"),
    ("daemon Client k=G", ""),
    ("daemon Client k=1 uint8", "the same with uint8 NHWC images (the daemon normalises)"),
]
BASELINE_ROWS = [("baseline Client k=1", "the daemon of the --baseline checkout, through Client (float32)"),
                 ("baseline Client k=G", "")]


def _interleaved(model_dir: str, threads: int, eps: Dict[str, str], rounds: int, per: int, q) -> None:
    """Every row of ROWS for ``per`` requests, round after round: all rows see the same
    moments of a noisy machine. Per round a p50 per row; overheads are per-round p50
    differences, so the spread over rounds says how far a figure can be trusted."""
    from daemon.client import Client
    from models import ModelSet
    from models.evaluate import timings
    ms = ModelSet.load(model_dir, threads=threads)
    G = ms.groups
    c = Client(eps["infer"], eps["control"], timeout_s=30)
    x = np.zeros((1,) + ms.input_shape, np.float32)
    ch, h, w = ms.input_shape
    u = np.zeros((1, h, w, ch), np.uint8)
    req = [json.dumps({"id": "b-1", "dtype": "float32", "shape": list(x.shape)}).encode(), x.tobytes()]
    dealer, echo, floor = zmq_socket("DEALER"), zmq_socket("DEALER"), zmq_socket("DEALER")
    dealer.connect(eps["infer"])
    echo.connect(eps["echo"])
    floor.connect(eps["floor"])
    floor_req = {k: [str(k).encode(), x.tobytes()] for k in (1, G)}
    base = Client(eps["baseline_infer"], eps["baseline_control"], timeout_s=30) if "baseline_infer" in eps else None

    def rt(sock, frames):
        sock.send_multipart(frames)
        sock.recv_multipart()

    def at(k, fn, client=c):
        def go():
            client.pin(groups=k)
            return timings(fn, per, warmup=10)
        return go

    run = {
        "direct k=1": lambda: timings(lambda: ms.run(1, x), per, warmup=10),
        "direct k=G": lambda: timings(lambda: ms.run(G, x), per, warmup=10),
        "echo": lambda: timings(lambda: rt(echo, req), per, warmup=10),
        "python floor k=1": lambda: timings(lambda: rt(floor, floor_req[1]), per, warmup=10),
        "daemon DEALER k=1": at(1, lambda: rt(dealer, req)),
        "daemon Client k=1": at(1, lambda: c.infer(x)),
        "daemon Client k=G": at(G, lambda: c.infer(x)),
        "daemon Client k=1 uint8": at(1, lambda: c.infer(u)),
    }
    rows = ROWS
    if base is not None:
        run["baseline Client k=1"] = at(1, lambda: base.infer(x), base)
        run["baseline Client k=G"] = at(G, lambda: base.infer(x), base)
        rows = ROWS + BASELINE_ROWS
    per_round = {name: [] for name, _ in rows}
    for _ in range(rounds):
        for name, _ in rows:
            per_round[name].append(float(np.median(run[name]())) * 1e6)
    for client in (c, base):
        if client is not None:
            client.release()
            client.close()
    direct_per_s = 1e6 / float(np.median(per_round["direct k=G"]))
    q.put({"levels": G, "rounds": rounds, "per": per, "p50_us": per_round, "direct_per_s": direct_per_s})


def _start_floors(tmp: str, model_dir: str, threads: int, reply) -> tuple:
    eps = {"echo": "ipc://%s/echo-%d.sock" % (tmp, threads), "floor": "ipc://%s/floor-%d.sock" % (tmp, threads)}
    procs = [mp.get_context("fork").Process(target=_echo_server, args=(eps["echo"], reply), daemon=True),
             mp.get_context("spawn").Process(target=_python_floor_server, args=(eps["floor"], model_dir, threads),
                                             daemon=True)]
    for p in procs:
        p.start()
    return eps, procs


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


def _unbatched(tmp: str, model_dir: str, th: int, target: str, levels: int, requests: int) -> float:
    """8 clients' rate against a daemon with ``batch_requests: false``."""
    from tests.daemon_harness import Daemon
    cfg = os.path.join(tmp, "unbatched-%d.yaml" % th)
    with open(cfg, "w") as f:
        f.write("batch_requests: false\n")
    d = Daemon(os.path.join(tmp, "u%d" % th), model_dir, extra=["--threads", str(th)], config=cfg)
    try:
        d.wait_ready()
        with d.client(timeout_s=30) as c:
            c.pin(groups=levels, target=target)
        return _throughput(d, 8, max(50, requests // 8))
    finally:
        d.stop()


def run(model_dir: str, requests: int = 1000, threads=None, clients=(1, 4, 8, 16), rounds: int = 10,
        baseline: Optional[str] = None) -> Dict:
    """Per onnxruntime thread count (default: 1 and all CPUs): every row of ROWS in
    ``rounds`` interleaved rounds, the phase trace, and throughput with each number of
    concurrent clients against direct back-to-back runs. ``baseline``: another checkout
    whose daemon is timed in the same rounds (a lever measured against the code before it)."""
    from tests.daemon_harness import Daemon
    threads = threads or sorted({1, os.cpu_count()})
    out = {"machine": machine(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for th in threads:
            row = {"threads": th, "throughput": []}
            row["trace"] = daemon_trace.run(model_dir, th, requests)
            d = Daemon(os.path.join(tmp, "t%d" % th), model_dir, extra=["--threads", str(th)])
            floors = []
            b = Daemon(os.path.join(tmp, "b%d" % th), model_dir, extra=["--threads", str(th)], source=baseline) \
                if baseline else None
            try:
                d.wait_ready()
                c = d.client(timeout_s=30)
                st = c.status()
                widest = widest_target(st)
                c.pin(groups=1, target=widest)
                out["target"] = widest
                eps, floors = _start_floors(tmp, model_dir, th, reply_frames(d.infer_ep, st))
                eps.update(infer=d.infer_ep, control=d.control_ep)
                if b is not None:
                    b.wait_ready()
                    with b.client(timeout_s=30) as bc:
                        bc.pin(target=widest)
                    eps.update(baseline_infer=b.infer_ep, baseline_control=b.control_ep)
                row.update(_fresh_process(_interleaved, model_dir, th, eps, rounds, max(10, requests // rounds)))
                out["levels"] = row["levels"]
                c.pin(groups=row["levels"], target=widest)
                for n_clients in clients:
                    per = max(50, requests // n_clients)
                    per_s = _throughput(d, n_clients, per)
                    row["throughput"].append({"clients": n_clients, "requests": per * n_clients, "per_s": per_s,
                                              "ratio": per_s / row["direct_per_s"]})
                c.close()
                if clients:     # the same 8 clients with every request run on its own
                    row["unbatched_8"] = _unbatched(tmp, model_dir, th, widest, row["levels"], requests)
            finally:
                for p in floors:
                    p.kill()
                d.stop()
                if b is not None:
                    b.stop()
            out["rows"].append(row)
    return out


def summary(row: Dict) -> Dict[str, list]:
    """Per-round figures of one thread count: overheads over the direct run at the same k,
    their ratios to the echo, and the group range as a client sees it against direct."""
    t = {k: np.asarray(v) for k, v in row["p50_us"].items()}
    over = lambda name: t[name] - t["direct k=1"]
    return {"echo": t["echo"], "python floor": over("python floor k=1"),
            "daemon DEALER": over("daemon DEALER k=1"), "daemon Client": over("daemon Client k=1"),
            "daemon Client uint8": over("daemon Client k=1 uint8"),
            "echo ceiling": ((t["direct k=G"] + t["echo"]) / (t["direct k=1"] + t["echo"]))
            / (t["direct k=G"] / t["direct k=1"]),
            "DEALER / echo": over("daemon DEALER k=1") / t["echo"],
            "Client / echo": over("daemon Client k=1") / t["echo"],
            "direct range": t["direct k=G"] / t["direct k=1"],
            "daemon range": t["daemon Client k=G"] / t["daemon Client k=1"],
            "range ratio": (t["daemon Client k=G"] / t["daemon Client k=1"]) / (t["direct k=G"] / t["direct k=1"])}


def report(r: Dict) -> str:
    cols = ["%d onnxruntime thread%s" % (row["threads"], "s" * (row["threads"] > 1)) for row in r["rows"]]
    names = ROWS + [br for br in BASELINE_ROWS if br[0] in r["rows"][0]["p50_us"]]
    rows_p50 = table(["p50 µs, median of the rounds' p50s (min-max over rounds)"] + cols + ["what"],
                     [[name.replace("k=G", "k=%d" % r["levels"])] + [spread(row["p50_us"][name]) for row in r["rows"]]
                      + [what] for name, what in names])
    sums = [summary(row) for row in r["rows"]]
    labels = [("echo", "the transport floor: bare pyzmq echo, µs"),
              ("python floor", "a bare Python ROUTER around the run, µs over direct"),
              ("daemon DEALER", "the daemon from a bare DEALER, µs over direct"),
              ("daemon Client", "the daemon through Client, µs over direct"),
              ("daemon Client uint8", "the same with uint8 images, µs over direct k=1 float32"),
              ("DEALER / echo", "daemon overhead / echo, bare DEALER (target <= 2)"),
              ("Client / echo", "daemon overhead / echo, Client (target <= 2)"),
              ("direct range", "k=%d / k=1, direct" % r["levels"]),
              ("daemon range", "k=%d / k=1, through the daemon (Client)" % r["levels"]),
              ("range ratio", "daemon range / direct range (target >= 0.95)"),
              ("echo ceiling", "the same for a daemon that cost only the echo")]
    over = table(["per round (median, min-max)"] + cols, [[lab] + [spread(list(s[k])) for s in sums]
                                                           for k, lab in labels])
    thr = table(["onnxruntime threads", "clients", "requests", "inferences/s", "direct back-to-back /s",
                 "ratio (target >= 0.9 at 8)"],
                [[row["threads"], t["clients"], t["requests"], t["per_s"], row["direct_per_s"], t["ratio"]]
                 for row in r["rows"] for t in row["throughput"]]
                + [[row["threads"], "8, batch_requests: false", "", row["unbatched_8"], row["direct_per_s"],
                    row["unbatched_8"] / row["direct_per_s"]] for row in r["rows"] if "unbatched_8" in row])
    rr = r["rows"][0]
    return ("Machine: %s; target %s, batch 1, ipc, %s; direct and daemon use the same onnxruntime thread count "
            "per column. One client process times every row below for %d requests, in that order, %d rounds "
            "in a row, against one real `dnnscale serve` and two floor servers started beside it, so every "
            "row sees the same moments of this noisy machine; each figure is the median of the %d per-round "
            "p50s, with their range.\n\n%s\n\nWhat the daemon costs, per round (overheads are a row's p50 "
            "minus direct k=1's in the same round):\n\n%s\n\nWhere it goes (`python -m bench.daemon_trace`): "
            "one client, a time stamp at every step of each request on both sides (CLOCK_MONOTONIC); medians "
            "per phase.\n\n%s\n\nThroughput: concurrent client processes against back-to-back direct "
            "runs at k=%d.\n\n%s\n"
            % (r["machine"], r["target"], "an idle-class busy loop on every CPU (--awake)" if r.get("awake")
               else "the CPUs otherwise idle", rr["per"], rr["rounds"], rr["rounds"], rows_p50, over,
               daemon_trace.report([row["trace"] for row in r["rows"]]), r["levels"], thr))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    round_trip_args(p)
    p.add_argument("--no-throughput", action="store_true", help="skip the concurrent-client throughput")
    p.add_argument("--baseline", default=None, metavar="CHECKOUT",
                   help="also time the daemon of another checkout (e.g. a git worktree of main) in the same rounds")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from models import zoo
    with Awake(None if a.awake else 0):
        r = run(a.model or zoo.default_path(), a.requests, a.threads, () if a.no_throughput else (1, 4, 8, 16),
                a.rounds, a.baseline)
    r["awake"] = a.awake
    print(json.dumps(r, indent=1) if a.json else report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The real ``dnnscale serve`` under hostile load: ``python -m bench.hostile [--model DIR]``.

Floods of raw connections, each against a fresh daemon at a 1024 (systemd's default soft
limit) or a 4096 descriptor limit; then one daemon (generic fake tree, 1 onnxruntime thread,
1024 descriptors, WATCHDOG_USEC=1 s) and, one after the other: a multipart bomb (a header
and 1,000 frames of 800 KiB, from a libzmq DEALER), a message never finished (a raw ZMTP
peer), and 10 s floods of junk and of valid requests from another process while a
well-behaved client sends a request every 20 ms (at least 200). On a 2-core machine the
flooding process takes a core, so the valid flood is also a CPU contest; it is run a second
time with the flooder niced +10.
Prints one table (docs/reliability.md quotes it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time

import numpy as np
import psutil
import zmq

from .common import machine, table

IMG = np.zeros((1, 32, 32, 3), np.uint8)


def _header(i) -> bytes:
    return json.dumps({"id": i, "dtype": "uint8", "shape": [1, 32, 32, 3]}).encode()


def _watch(d, stamps, stop):
    d.notify.settimeout(0.05)
    while not stop.is_set():
        try:
            m = d.notify.recv(4096).decode()
        except OSError:
            continue
        if "WATCHDOG=1" in m:
            stamps.append(time.monotonic())


def _flood(ep: str, kind: str, stop, nice: int = 0) -> None:
    """The attacker: another process sending junk or valid requests as fast as it can."""
    os.nice(nice)
    s = zmq.Context().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 100000)
    s.connect(ep)
    while not stop.is_set():
        try:
            if kind == "junk":
                s.send(b"junk", zmq.NOBLOCK)
            else:
                s.send_multipart([_header("f"), IMG.tobytes()], zmq.NOBLOCK)
        except zmq.Again:
            time.sleep(0.0005)
        while s.poll(0):
            s.recv_multipart()
    s.close()


def _flood_once(model_dir: str, limit: int) -> dict:
    """One fresh daemon at ``limit`` descriptors, and one client opening 1.075 x ``limit`` raw
    connections to its ipc inference socket as fast as it can (``test_connection_flood_at_the_fd_limit``)."""
    from daemon.client import ClientError
    from daemon.server import FdGuard
    from tests.daemon_harness import Daemon
    from tests.fixtures import trees
    from tests.fixtures.flood import raw_connections
    work = tempfile.mkdtemp(prefix="dnnscale-flood-")
    d = Daemon(os.path.join(work, "run"), model_dir, sysfs_root=trees.build("generic", os.path.join(work, "sysfs")),
               preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
    d.wait_ready(600)
    try:
        with raw_connections(d.infer_ep[len("ipc://"):], int(limit * 1.075)) as (_, refused):
            time.sleep(1)
            alive = d.proc.poll() is None
        st, t0 = None, time.time()
        while alive and st is None and time.time() - t0 < 30:     # the listeners come back once it drained
            try:
                st = d.client(timeout_s=1).status()["connections"]
            except ClientError:
                time.sleep(0.1)
        mark = FdGuard(limit=limit).marks["infer"][0]
        return {"alive": alive, "refused": refused, "peak": st["fds_peak"] if st else limit, "mark": mark,
                "relisten_s": time.time() - t0}
    finally:
        d.stop()


def floods(model_dir: str, limits=(1024, 4096), runs: int = 5) -> dict:
    """Per limit, ``runs`` floods, each against a fresh daemon, alternating the limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max(limits) + 200
    if hard < need:
        raise SystemExit("bench.hostile: the floods need %d descriptors in this process; the hard limit is %d "
                         "(ulimit -Hn)" % (need, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    out = {limit: [] for limit in limits}
    for _ in range(runs):
        for limit in limits:
            out[limit].append(_flood_once(model_dir, limit))
    return out


def run(model_dir: str, seconds: float = 10.0) -> dict:
    from tests.daemon_harness import Daemon
    from tests.fixtures import trees
    work = tempfile.mkdtemp(prefix="dnnscale-hostile-")
    root = trees.build("generic", os.path.join(work, "sysfs"))
    d = Daemon(os.path.join(work, "run"), model_dir, sysfs_root=root, env={"WATCHDOG_USEC": "1000000"},
               preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)))
    d.wait_ready(600)
    stamps, stop_watch = [], threading.Event()
    watcher = threading.Thread(target=_watch, args=(d, stamps, stop_watch), daemon=True)
    watcher.start()
    out = {"machine": machine()}
    proc = psutil.Process(d.proc.pid)
    try:
        # 2. multipart bomb
        ctx = zmq.Context.instance()
        rss0 = proc.memory_info().rss
        peak, done = [rss0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.005)
        t = threading.Thread(target=sample)
        t.start()
        b = ctx.socket(zmq.DEALER)
        b.setsockopt(zmq.LINGER, 0)
        b.connect(d.infer_ep)
        b.send_multipart([_header("bomb")] + [bytes(800 * 1024)] * 1000)
        # Past memory_bound_mb (256 MB over the floor) while libzmq holds the message, the daemon
        # drops the connection: no reply then.
        out["bomb_reply"] = (json.loads(b.recv_multipart()[0])["error"]["code"] if b.poll(20000)
                             else "none: the connection was dropped (memory guard)")
        done.set()
        t.join()
        b.close()
        out["rss_before_mb"], out["rss_peak_mb"] = rss0 / 2 ** 20, peak[0] / 2 ** 20
        time.sleep(3)                     # the daemon gives the freed heap back (malloc_trim)
        out["rss_after_mb"] = proc.memory_info().rss / 2 ** 20
        # 2b. a message never finished: a raw ZMTP peer sends 800 KiB frames until dropped
        from tests.fixtures import zmtp
        rss0, peak, sent = proc.memory_info().rss, proc.memory_info().rss, 0
        raw = zmtp.dealer(d.infer_ep)
        raw.settimeout(5)
        frame = zmtp.frame(bytes(800 * 1024), more=True)
        try:
            raw.sendall(zmtp.frame(_header("never"), more=True))
            for _ in range(2000):
                raw.sendall(frame)
                sent += 1
                if sent % 10 == 0:
                    peak = max(peak, proc.memory_info().rss)
        except OSError:
            pass
        end = time.time() + 3
        while time.time() < end:
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.02)
        raw.close()
        out["never_sent_mb"], out["never_before_mb"] = sent * 0.78125, rss0 / 2 ** 20
        out["never_peak_mb"], out["never_after_mb"] = peak / 2 ** 20, proc.memory_info().rss / 2 ** 20
        # 3. one client floods, another sends 200 requests
        for kind, nice in (("none", 0), ("junk", 0), ("valid", 0), ("valid", 10)):
            import multiprocessing as mp
            spawn = mp.get_context("spawn")
            stop = spawn.Event()
            ft = spawn.Process(target=_flood, args=(d.infer_ep, kind, stop, nice))   # another process, as an attacker is
            if kind != "none":
                ft.start()
                time.sleep(2)      # the interpreter starts
            lat, busy = [], 0
            from daemon.client import DaemonError
            with d.client() as c:
                t_end = time.time() + seconds
                while time.time() < t_end or len(lat) < 200:
                    t0 = time.perf_counter()
                    try:
                        c.infer(IMG)
                    except DaemonError:
                        busy += 1
                    lat.append(time.perf_counter() - t0)
                    time.sleep(0.02)
            stop.set()
            if kind != "none":
                ft.join()
            key = kind + ("_nice" if nice else "")
            out["%s_p50_ms" % key] = float(np.percentile(lat, 50)) * 1e3
            out["%s_p99_ms" % key] = float(np.percentile(lat, 99)) * 1e3
            out["%s_busy" % key] = busy / len(lat)
        gaps = np.diff(stamps) if len(stamps) > 1 else [float("nan")]
        out["watchdog_max_gap_s"] = float(np.max(gaps))
        out["watchdog_pings"] = len(stamps)
    finally:
        stop_watch.set()
        d.stop()
    return out


def report(r: dict) -> str:
    rows = []
    for limit, fl in sorted(r["floods"].items()):
        over = sorted(f["peak"] - f["mark"] for f in fl)
        rows.append(["raw connections opened by one client, %d fresh daemons" % len(fl),
                     "%d at a %d descriptor limit (mark %d)" % (int(limit * 1.075), limit, fl[0]["mark"]),
                     "daemon up in %d of %d; peak over the mark: %s (median %d); room past the mark %d"
                     % (sum(f["alive"] for f in fl), len(fl), ", ".join(map(str, over)), over[len(over) // 2],
                        limit - fl[0]["mark"])])
    rows += [
        ["multipart bomb: header + 1000 x 800 KiB", "reply %s" % r["bomb_reply"],
         "RSS %.0f MB before, %.0f MB at peak, %.0f MB 3 s after" % (r["rss_before_mb"], r["rss_peak_mb"],
                                                                   r["rss_after_mb"])],
        ["a message never finished (raw ZMTP peer, 800 KiB frames)",
         "dropped after %.0f MB sent" % r["never_sent_mb"],
         "RSS %.0f MB before, %.0f MB at peak, %.0f MB 3 s after" % (r["never_before_mb"], r["never_peak_mb"],
                                                                   r["never_after_mb"])],
        ["no flood (the same client alone, for comparison)", "p50 %.2f ms, p99 %.2f ms" % (r["none_p50_ms"],
                                                                                         r["none_p99_ms"]),
         "busy %.1f%%" % (100 * r["none_busy"])],
        ["another client under a junk flood", "p50 %.2f ms, p99 %.2f ms" % (r["junk_p50_ms"], r["junk_p99_ms"]),
         "busy %.1f%%" % (100 * r["junk_busy"])],
        ["another client under a flood of valid requests", "p50 %.2f ms, p99 %.2f ms" % (r["valid_p50_ms"],
                                                                                      r["valid_p99_ms"]),
         "busy %.1f%%" % (100 * r["valid_busy"])],
        ["the same, the flooder 10 nice levels below the daemon (as the unit's Nice=-10 sets it)",
         "p50 %.2f ms, p99 %.2f ms" % (r["valid_nice_p50_ms"], r["valid_nice_p99_ms"]),
         "busy %.1f%%" % (100 * r["valid_nice_busy"])],
        ["watchdog (WATCHDOG_USEC 1 s: a ping every 0.5 s)", "%d pings" % r["watchdog_pings"],
         "longest gap %.2f s" % r["watchdog_max_gap_s"]],
    ]
    return "%s\n\n%s" % (r["machine"], table(["attack", "result", "figure"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model-set folder (default: the shipped CIFAR-10 set)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each one-client flood")
    ap.add_argument("--flood-runs", type=int, default=5, help="connection floods per descriptor limit")
    a = ap.parse_args()
    from models import zoo
    model = a.model or zoo.default_path()
    fl = floods(model, runs=a.flood_runs)         # first: it says at once if this process cannot hold them
    r = run(model, a.seconds)
    r["floods"] = fl
    print(report(r))


if __name__ == "__main__":
    main()

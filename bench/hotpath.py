"""What a compiled request path would cost: bench/hotpath.c against the daemon and the floors.

Issue 21 asks, where Python cannot reach the transport's floor, what would, with a
prototype measurement. bench/hotpath.c is that prototype: a C ROUTER that reads the daemon's
request frames, runs the model set's kN.onnx through onnxruntime's C API (the same library
file and session options as the daemon) and sends the daemon's reply frames. One Python
client process times, in interleaved rounds, direct runs at k=1 and k=G, the pyzmq echo of
the daemon's frames, a C echo of the same sizes, the C path at k=1 and k=G and the real
daemon at k=1 and k=G, all from one bare DEALER with the same request bytes (the level in
the header's ``groups``); a C client (``hotpath ping``) then times the C echo and the C path
without Python on either side. Figures are medians of the per-round p50s, with their range.

Building needs a C compiler, libzmq's headers (Debian: libzmq3-dev) and onnxruntime's C
header ``onnxruntime_c_api.h``: ``ORT_INCLUDE=DIR`` (the ``include/`` of an onnxruntime
release), else /usr/include/onnxruntime (Debian's libonnxruntime-dev, in trixie and later;
``scripts/ort-headers.sh`` unpacks it without installing). It links the onnxruntime library
of the installed Python package, so both sides run the same build.

    python -m bench.hotpath [--model DIR] [--requests N] [--rounds N] [--threads N]
"""
from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import time
from typing import Dict, List

import numpy as np

from .common import ROOT, Awake, machine, round_trip_args, spread, table
from .daemon import _echo_server, _fresh_process, reply_frames, widest_target, zmq_socket

SOURCE = os.path.join(ROOT, "bench", "hotpath.c")
BUILD = os.path.join(ROOT, "bench", "build")


class BuildError(RuntimeError):
    pass


def _ort_include() -> str:
    for d in (os.environ.get("ORT_INCLUDE"), "/usr/include/onnxruntime", os.path.join(BUILD, "include")):
        if d and os.path.exists(os.path.join(d, "onnxruntime_c_api.h")):
            return d
    raise BuildError("no onnxruntime_c_api.h: set ORT_INCLUDE to the include/ folder of an onnxruntime "
                     "release, or run scripts/ort-headers.sh %s" % os.path.join(BUILD, "include"))


def build() -> str:
    """Compile bench/hotpath.c (again when the source is newer); the binary's path."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise BuildError("no C compiler (cc); install gcc")
    import onnxruntime
    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))
    if not libs:
        raise BuildError("the onnxruntime package in %s ships no libonnxruntime.so" % capi)
    include = _ort_include()
    lib_dir = os.path.join(BUILD, "lib")
    os.makedirs(lib_dir, exist_ok=True)
    # The wheel's file is libonnxruntime.so.1.N.M, its SONAME libonnxruntime.so.1: link through a name that resolves.
    link = os.path.join(lib_dir, "libonnxruntime.so.1")
    if os.path.realpath(link) != os.path.realpath(libs[-1]):
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(libs[-1], link)
    exe = os.path.join(BUILD, "hotpath")
    if os.path.exists(exe) and os.path.getmtime(exe) >= os.path.getmtime(SOURCE):
        return exe
    cmd = [cc, "-O2", "-Wall", "-o", exe, SOURCE, "-I" + include, "-lzmq", "-L" + lib_dir,
           "-l:libonnxruntime.so.1", "-Wl,-rpath," + lib_dir]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        hint = " (libzmq's headers: apt install libzmq3-dev)" if "zmq.h" in r.stderr else ""
        raise BuildError("building %s failed%s:\n%s" % (SOURCE, hint, r.stderr[-2000:]))
    return exe


class Server:
    """``hotpath serve`` or ``hotpath echo`` on an ipc endpoint, until stopped."""

    def __init__(self, exe: str, *args: str):
        self.proc = subprocess.Popen([exe] + list(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError("hotpath exited: " + self.proc.stderr.read()[-2000:])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def ping(exe: str, ep: str, n: int, header: str, body_bytes: int) -> Dict:
    r = subprocess.run([exe, "ping", ep, str(n), header, str(body_bytes)], capture_output=True,
                       text=True, timeout=600)
    if r.returncode:
        raise RuntimeError("hotpath ping failed: " + r.stderr[-2000:])
    return json.loads(r.stdout)


ROWS = [
    ("direct k=1", "ModelSet.run in the client process"),
    ("direct k=G", ""),
    ("pyzmq echo", "bare pyzmq ROUTER answering with the daemon's reply frames"),
    ("C echo", "hotpath echo: a C ROUTER answering with frames of the same sizes"),
    ("C path k=1", "hotpath serve: the C request path around the same session"),
    ("C path k=G", ""),
    ("daemon k=1", "the real dnnscale serve, level in the header"),
    ("daemon k=G", ""),
]
C_ROWS = [("C-C echo", "hotpath ping to the C echo: no Python on either side"),
          ("C-C path k=1", "hotpath ping to the C path"),
          ("C-C path k=G", "")]


def _rounds(model_dir: str, threads: int, eps: Dict[str, str], rounds: int, per: int, q) -> None:
    """The Python rows, ``per`` requests each, round after round; per round a p50 per row."""
    from models import ModelSet
    from models.evaluate import timings
    ms = ModelSet.load(model_dir, threads=threads)
    G = ms.groups
    x = np.zeros((1,) + ms.input_shape, np.float32)
    req = {k: [json.dumps({"id": "b-1", "dtype": "float32", "shape": list(x.shape), "groups": k}).encode(),
               x.tobytes()] for k in (1, G)}
    socks = {}
    for name in ("echo", "c_echo", "c_path", "daemon"):
        socks[name] = zmq_socket("DEALER")
        socks[name].connect(eps[name])

    def rt(sock, frames):
        sock.send_multipart(frames)
        sock.recv_multipart()

    run = {"direct k=1": lambda: ms.run(1, x), "direct k=G": lambda: ms.run(G, x),
           "pyzmq echo": lambda: rt(socks["echo"], req[1]), "C echo": lambda: rt(socks["c_echo"], req[1]),
           "C path k=1": lambda: rt(socks["c_path"], req[1]), "C path k=G": lambda: rt(socks["c_path"], req[G]),
           "daemon k=1": lambda: rt(socks["daemon"], req[1]), "daemon k=G": lambda: rt(socks["daemon"], req[G])}
    per_round = {name: [] for name, _ in ROWS}
    for _ in range(rounds):
        for name, _ in ROWS:
            per_round[name].append(float(np.median(timings(run[name], per, warmup=10))) * 1e6)
    q.put({"levels": G, "p50_us": per_round, "header": req[1][0].decode(), "header_G": req[G][0].decode(),
           "body_bytes": len(req[1][1])})


def run(model_dir: str, requests: int = 1000, threads=None, rounds: int = 10, awake: bool = False) -> Dict:
    """Per onnxruntime thread count, every row in ``rounds`` interleaved rounds; ``awake``:
    with an idle-class busy loop on every CPU (bench.common.Awake)."""
    with Awake(None if awake else 0):
        out = _run(model_dir, requests, threads, rounds)
    out["awake"] = awake
    return out


def _run(model_dir: str, requests: int, threads, rounds: int) -> Dict:
    from tests.daemon_harness import Daemon
    exe = build()
    threads = threads or sorted({1, os.cpu_count()})
    out = {"machine": machine(), "rows": []}
    per = max(10, requests // rounds)
    with tempfile.TemporaryDirectory() as tmp:
        for th in threads:
            eps = {"echo": "ipc://%s/echo-%d" % (tmp, th), "c_echo": "ipc://%s/cecho-%d" % (tmp, th),
                   "c_path": "ipc://%s/cpath-%d" % (tmp, th)}
            d = Daemon(os.path.join(tmp, "d%d" % th), model_dir, extra=["--threads", str(th)])
            servers: List = []
            try:
                d.wait_ready()
                with d.client(timeout_s=30) as c:
                    st = c.status()
                    widest = widest_target(st)
                    c.pin(target=widest)
                reply = reply_frames(d.infer_ep, st, groups=1)
                echo = mp.get_context("fork").Process(target=_echo_server, args=(eps["echo"], reply), daemon=True)
                echo.start()
                servers = [echo, Server(exe, "echo", eps["c_echo"], str(len(reply[0])), str(len(reply[1]))),
                           Server(exe, "serve", eps["c_path"], model_dir, str(th))]
                time.sleep(1.0)
                for sv in servers[1:]:
                    sv.check()
                eps["daemon"] = d.infer_ep
                row = {"threads": th, "target": widest, "per": per}
                row.update(_fresh_process(_rounds, model_dir, th, eps, rounds, per))
                body = row["body_bytes"]
                cc = {name: [] for name, _ in C_ROWS}
                for _ in range(rounds):
                    cc["C-C echo"].append(ping(exe, eps["c_echo"], per, row["header"], body)["p50_us"])
                    cc["C-C path k=1"].append(ping(exe, eps["c_path"], per, row["header"], body)["p50_us"])
                    cc["C-C path k=G"].append(ping(exe, eps["c_path"], per, row["header_G"], body)["p50_us"])
                row["p50_us"].update(cc)
                out["rows"].append(row)
            finally:
                for sv in servers:
                    sv.kill()
                d.stop()
    out["levels"] = out["rows"][0]["levels"]
    return out


def summary(row: Dict) -> Dict[str, np.ndarray]:
    t = {k: np.asarray(v) for k, v in row["p50_us"].items()}
    direct = t["direct k=G"] / t["direct k=1"]
    return {"pyzmq echo": t["pyzmq echo"], "C echo": t["C echo"], "C-C echo": t["C-C echo"],
            "C path": t["C path k=1"] - t["direct k=1"], "daemon": t["daemon k=1"] - t["direct k=1"],
            "C path / pyzmq echo": (t["C path k=1"] - t["direct k=1"]) / t["pyzmq echo"],
            "daemon / pyzmq echo": (t["daemon k=1"] - t["direct k=1"]) / t["pyzmq echo"],
            "direct range": direct,
            "C path range": (t["C path k=G"] / t["C path k=1"]) / direct,
            "daemon range": (t["daemon k=G"] / t["daemon k=1"]) / direct,
            "C-C path range": (t["C-C path k=G"] / t["C-C path k=1"]) / direct}


def report(r: Dict) -> str:
    cols = ["%d onnxruntime thread%s" % (row["threads"], "s" * (row["threads"] > 1)) for row in r["rows"]]
    G = r["levels"]
    p50 = table(["p50 µs, median of the rounds' p50s (min-max)"] + cols + ["what"],
                [[name.replace("k=G", "k=%d" % G)] + [spread(row["p50_us"][name]) for row in r["rows"]] + [what]
                 for name, what in ROWS + C_ROWS])
    labels = [("pyzmq echo", "transport floor from Python: pyzmq echo, µs"),
              ("C echo", "the same client against the C echo, µs"),
              ("C-C echo", "C client and C echo: libzmq alone, µs"),
              ("C path", "the C path, µs over direct (Python DEALER)"),
              ("daemon", "the daemon, µs over direct (Python DEALER)"),
              ("C path / pyzmq echo", "C path overhead / pyzmq echo"),
              ("daemon / pyzmq echo", "daemon overhead / pyzmq echo"),
              ("direct range", "k=%d / k=1, direct" % G),
              ("daemon range", "range through the daemon / direct"),
              ("C path range", "range through the C path / direct (Python client)"),
              ("C-C path range", "range through the C path / direct (C client)")]
    sums = [summary(row) for row in r["rows"]]
    over = table(["per round (median, min-max)"] + cols,
                 [[lab] + [spread(list(s[k])) for s in sums] for k, lab in labels])
    rr = r["rows"][0]
    return ("Machine: %s; target %s, batch 1, ipc, float32, %s; one Python DEALER times the first rows "
            "for %d requests each, in that order, %d rounds in a row; then the C client times the "
            "C rows, %d rounds. Each figure: the median of the per-round p50s, with their range.\n\n"
            "%s\n\n%s\n" % (r["machine"], rr["target"],
                            "an idle-class busy loop on every CPU (--awake)" if r.get("awake") else "the CPUs otherwise idle",
                            rr["per"], len(rr["p50_us"]["direct k=1"]),
                            len(rr["p50_us"]["C-C echo"]), p50, over))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    round_trip_args(p)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from models import zoo
    try:
        r = run(a.model or zoo.default_path(), a.requests, a.threads, a.rounds, a.awake)
    except BuildError as e:
        raise SystemExit("bench.hotpath: " + str(e))
    print(json.dumps(r, indent=1) if a.json else report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

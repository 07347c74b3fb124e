"""Reliability and security (issue 8): fuzzing, load and soak, fault injection, crash-safe
restore, access control. Counts are small in the normal run; ``-m slow`` runs the full
ones (docs/reliability.md). ``DNNSCALE_FUZZ_SCALE`` multiplies the fuzz counts."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from daemon.commands import COMMANDS, decode as decode_control
from daemon.protocol import InputSpec, ProtocolError, decode_infer
from tests.daemon_harness import ROOT, Daemon, dnnscale_cmd
from tests.fixtures import trees
from tests.fixtures.kernel import snapshot
from tests.fixtures.ports import free_port

SCALE = float(os.environ.get("DNNSCALE_FUZZ_SCALE", "0.3"))   # 1 or more: a longer fuzz (README, "Test it")
SPEC = InputSpec((3, 32, 32), 4, 64)
INFER_CODES = {"bad_frames", "bad_json", "too_large", "bad_header", "bad_dtype", "bad_shape", "bad_size",
               "bad_values", "bad_groups", "bad_deadline", "busy", "internal"}
CONTROL_CODES = {"bad_json", "bad_frames", "bad_request", "unknown_command", "bad_properties", "bad_budget",
                 "bad_pin", "reload_failed", "internal"}
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
    [0.0, -0.0, 5e-324, 1.7976931348623157e308, -1.0, 1e-9, 600000.0, 600000.0000001]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70), FLOATS,
                    st.text(max_size=40))
JSONISH = st.recursive(SCALARS, lambda c: st.one_of(st.lists(c, max_size=4),
                                                     st.dictionaries(st.text(max_size=8), c, max_size=4)),
                       max_leaves=12)


def headers():
    good = {"id": SCALARS, "dtype": st.sampled_from(["uint8", "float32", "float64", "", 3]),
            "shape": st.one_of(st.lists(st.integers(-3, 10 ** 12), max_size=6),
                               st.sampled_from([[1, 32, 32, 3], [2, 3, 32, 32], [65, 32, 32, 3]]), JSONISH),
            "groups": st.one_of(st.integers(-2, 9), FLOATS, st.booleans(), st.none()),
            "deadline_ms": st.one_of(FLOATS, st.integers(-5, 10 ** 9), st.text(max_size=3), st.none()),
            "evil": JSONISH}
    return st.fixed_dictionaries({}, optional=good)


def encode(h) -> bytes:
    return json.dumps(h, allow_nan=True).encode()


def tensor_for(h, rng_bytes: bytes) -> bytes:
    """Mostly the right byte count for the declared shape, sometimes off by a little."""
    try:
        n = int(math.prod(h.get("shape"))) * (1 if h.get("dtype") == "uint8" else 4)   # no int64 overflow
    except Exception:
        n = 0
    if not 0 <= n <= 64 * 12288:
        n = len(rng_bytes)
    return (rng_bytes * (n // max(len(rng_bytes), 1) + 1))[:n] if rng_bytes else bytes(n)


def check_decode(frames):
    try:
        req = decode_infer(frames, SPEC)
    except ProtocolError as e:
        assert e.code in INFER_CODES, e.code
        return "refused"
    assert req.tensor.shape[0] >= 1 and req.tensor.dtype in (np.uint8, np.float32)
    assert req.groups is None or 1 <= req.groups <= 4
    return "accepted"


# ----------------------------------------------------------------------------- decoder fuzz
@settings(max_examples=int(3000 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_fuzz_decoder_random_frames(frames):
    check_decode(frames)


@settings(max_examples=int(3000 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(headers(), st.binary(max_size=64), st.integers(0, 3))
def test_fuzz_decoder_structured(h, noise, cut):
    body = tensor_for(h, noise)
    frames = [encode(h), body[:len(body) - cut] if cut else body]
    check_decode(frames)


@settings(max_examples=int(1500 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=300), st.integers(0, 299), st.integers(0, 255))
def test_fuzz_decoder_mutated_valid_header(extra, pos, byte):
    h = bytearray(b'{"id":"q","dtype":"uint8","shape":[1,32,32,3],"groups":2,"deadline_ms":5.5}')
    h[pos % len(h)] = byte
    check_decode([bytes(h), bytes(3072)])


@settings(max_examples=int(2000 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.dictionaries(st.text(max_size=12), JSONISH, max_size=5),
                 st.fixed_dictionaries({"cmd": st.sampled_from(sorted(COMMANDS) + ["", "rm"])},
                                       optional={"latency_ms": FLOATS, "energy_mj": JSONISH, "groups": JSONISH,
                                                 "target": JSONISH, "freq_khz": JSONISH, "id": JSONISH})))
def test_fuzz_control_decoder(msg):
    try:
        rid, cmd, args = decode_control([encode(msg)])
        assert cmd in COMMANDS and set(args) <= set(COMMANDS[cmd].keys)
    except ProtocolError as e:
        assert e.code in CONTROL_CODES


@settings(max_examples=int(1500 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(headers(), st.binary(max_size=64))
def test_both_json_codecs_decide_alike(h, noise):
    """With orjson installed (the ``fast`` extra) the daemon decodes with it; without, with
    the standard library: a request is accepted or refused alike, and read alike."""
    from daemon import protocol
    pytest.importorskip("orjson")
    frames = [encode(h), tensor_for(h, noise)]
    out = []
    for loads in (protocol.loads, protocol._std_loads):
        saved = protocol.loads
        protocol.loads = loads
        try:
            r = decode_infer(frames, SPEC)
            out.append((r.id, r.dtype, r.tensor.shape, r.groups, r.deadline_ms))
        except ProtocolError:
            out.append("refused")
        finally:
            protocol.loads = saved
    assert out[0] == out[1], (h, out)


def test_replies_encode_alike_with_both_codecs():
    from daemon import protocol
    pytest.importorskip("orjson")
    head = {"id": "é-1", "ok": True, "labels": [3], "names": ["cat"], "latency_ms": 0.2913, "energy_mj": None,
            "config": {"level": 1, "target": "cpu", "freq_khz": None}, "n": np.float64(1.5)}
    assert json.loads(protocol.dumps(head)) == json.loads(protocol._std_dumps(head))


def test_one_rule_for_non_finite_numbers():
    """JSON has no NaN or Infinity: both codecs write them as null (a reply with a NaN
    measurement still goes out), and the client refuses them before sending, naming the
    field, since null would mean "none" (a NaN deadline would become no deadline)."""
    from daemon import protocol
    from daemon.client import Client, ClientError
    obj = {"a": float("nan"), "b": [float("inf"), 1.5, {"c": -float("inf")}], "d": np.float64("nan"), "e": None}
    want = {"a": None, "b": [None, 1.5, {"c": None}], "d": None, "e": None}
    assert json.loads(protocol._std_dumps(obj)) == want
    assert json.loads(protocol.dumps(obj)) == want
    assert json.loads(protocol.dumps({"big": 10 ** 400})) == {"big": 10 ** 400}   # orjson refuses it: both write it
    c = Client("ipc:///nonexistent/dnnscale-test.sock", "ipc:///nonexistent/dnnscale-control.sock", timeout_s=0.2)
    try:
        with pytest.raises(ClientError, match="deadline_ms must be a finite number, got nan"):
            c.infer(np.zeros((1, 32, 32, 3), np.uint8), deadline_ms=float("nan"))
        with pytest.raises(ClientError, match="latency_ms must be a finite number, got inf"):
            c.set_budget(latency_ms=float("inf"))
    finally:
        c.close()


def test_deep_and_huge_json_refused():
    for frame in (b"[" * 50000 + b"]" * 50000, b'{"id": "' + b"x" * 100000 + b'"}', b"\xc3\x28"):
        with pytest.raises(ProtocolError) as e:
            decode_infer([frame, b""], SPEC)
        assert e.value.code in ("too_large", "bad_json")


# ----------------------------------------------------------------------------- live daemon
@pytest.fixture(scope="module")
def live(random_set, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("rel"))
    root = trees.build("generic-rapl", os.path.join(work, "sysfs"))
    d = Daemon(os.path.join(work, "run"), random_set, sysfs_root=root)
    d.wait_ready()
    yield d, root
    d.stop()


def random_message(r: random.Random):
    kind = r.random()
    if kind < 0.25:
        return [bytes(r.getrandbits(8) for _ in range(r.randrange(0, 60))) for _ in range(r.randrange(0, 4))]
    h = {"id": r.choice([None, r.randrange(10 ** 6), "s%d" % r.randrange(100), 1.5, True])}
    if r.random() < 0.9:
        h["dtype"] = r.choice(["uint8", "float32", "int8"])
    if r.random() < 0.9:
        h["shape"] = r.choice([[r.randrange(0, 5), 32, 32, 3], [r.randrange(1, 4), 3, 32, 32], [1, 32, 32],
                               [10 ** 9, 32, 32, 3], [1, 32, 32, 4]])
    if r.random() < 0.3:
        h["groups"] = r.choice([0, 1, 3, 7, -1, True, 2.5])
    if r.random() < 0.3:
        h["deadline_ms"] = r.choice([0.001, 5, -1, 1e308, 1e6, 50.0])
    if r.random() < 0.05:
        h["surprise"] = 1
    header = json.dumps(h).encode()
    if r.random() < 0.1:
        header = header[:r.randrange(len(header))]
    try:
        n = int(np.prod(h.get("shape", [0]))) * (1 if h.get("dtype") == "uint8" else 4)
    except Exception:
        n = 0
    n = n if 0 <= n <= 64 * 12288 else 100
    if r.random() < 0.15:
        n = max(0, n + r.choice([-1, 1, -4, 13]))
    body = bytes(r.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1)
    body = body[:n]
    if h.get("dtype") == "float32" and r.random() < 0.5:
        body = np.random.default_rng(r.randrange(1000)).standard_normal(n // 4).astype(np.float32).tobytes()[:n]
    return [header, body]


def fuzz_live(d, n: int, seed: int = 0):
    r = random.Random(seed)
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(d.infer_ep)
    answered = ok = 0
    codes = {}
    i = 0
    while i < n:   # n messages sent (an empty frame list cannot be sent)
        frames = random_message(r)
        if not frames:
            continue
        i += 1
        s.send_multipart(frames)
        assert s.poll(10000), "no reply to fuzz message %d: %r" % (i, [f[:80] for f in frames])
        reply = s.recv_multipart()
        if frames[0] == b"":   # read as a REQ-style empty delimiter: the reply carries it back
            assert reply[0] == b"", reply
            reply = reply[1:]
        head = json.loads(reply[0])
        answered += 1
        if head["ok"]:
            ok += 1
        else:
            assert head["error"]["code"] in INFER_CODES, head
            codes[head["error"]["code"]] = codes.get(head["error"]["code"], 0) + 1
    s.close()
    return answered, ok, codes


def test_fuzz_live_daemon(live):
    d, _ = live
    answered, ok, codes = fuzz_live(d, int(300 * SCALE))
    assert answered > 0 and ok > 0 and len(codes) >= 5
    assert d.proc.poll() is None


@pytest.mark.slow
def test_fuzz_live_daemon_full(live):
    d, _ = live
    answered, ok, codes = fuzz_live(d, 10000, seed=1)
    print("live fuzz: %d answered, %d ok, refusals %s" % (answered, ok, codes))
    assert d.proc.poll() is None


# ----------------------------------------------------------------------------- load and soak
def load(d, clients: int, per_client: int):
    replies = {}
    errors = []

    def worker(c):
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(d.infer_ep)
        x = bytes(3072)
        try:
            for i in range(per_client):
                rid = "c%d-%d" % (c, i)
                s.send_multipart([json.dumps({"id": rid, "dtype": "uint8", "shape": [1, 32, 32, 3]}).encode(), x])
                if not s.poll(30000):
                    errors.append("no reply to %s" % rid)
                    return
                head = json.loads(s.recv_multipart()[0])
                replies.setdefault(head["id"], []).append(head["ok"])
        finally:
            s.close()

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies, errors


def test_load_every_request_answered_once(live):
    d, _ = live
    replies, errors = load(d, 16, 40)
    assert not errors
    assert len(replies) == 16 * 40 and all(v == [True] for v in replies.values())


@pytest.mark.slow
def test_load_full(live):
    d, _ = live
    t0 = time.time()
    replies, errors = load(d, 16, 2000)
    print("load: %d requests answered in %.1f s" % (len(replies), time.time() - t0))
    assert not errors and len(replies) == 32000 and all(v == [True] for v in replies.values())


def soak(d, seconds: float):
    proc = psutil.Process(d.proc.pid)
    stop = time.time() + seconds
    warm = stop - seconds * 0.8
    base = None
    vanished = answered = 0
    ctx = zmq.Context.instance()
    while time.time() < stop:
        replies, errors = load(d, 4, 10)
        assert not errors and all(v == [True] for v in replies.values())
        answered += len(replies)
        # a client that vanishes mid-request must not wedge the ROUTER
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(d.infer_ep)
        s.send_multipart([b'{"id":"gone","dtype":"uint8","shape":[4,32,32,3]}', bytes(4 * 3072)])
        s.close()
        vanished += 1
        if base is None and time.time() >= warm:
            base = settled(proc)
    return base, settled(proc, base[1] if base else None), vanished, answered


def settled(proc, floor=None):
    """RSS and open fds once ZeroMQ has finished closing the connections of clients that
    just left (it does so asynchronously, in its I/O thread, later on a loaded machine):
    the fd count is sampled for up to 5 s, until it is at ``floor`` or below."""
    time.sleep(0.5)
    fds, deadline = proc.num_fds(), time.time() + 5
    while floor is not None and fds > floor and time.time() < deadline:
        time.sleep(0.1)
        fds = proc.num_fds()
    return proc.memory_info().rss, fds


def test_soak_short(live):
    d, _ = live
    base, end, vanished, answered = soak(d, 8.0)
    assert end[0] < base[0] * 1.05 and end[1] <= base[1] and vanished > 0 and answered >= 40
    with d.client() as c:
        assert len(c.infer(np.zeros((1, 32, 32, 3), np.uint8)).labels) == 1


@pytest.mark.slow
def test_soak_full(live):
    d, _ = live
    base, end, vanished, answered = soak(d, 600.0)
    print("soak: %d requests answered, RSS %d -> %d (+%.2f%%), fds %d -> %d, %d vanished clients" % (
        answered, base[0], end[0], 100 * (end[0] / base[0] - 1), base[1], end[1], vanished))
    assert end[0] < base[0] * 1.05 and end[1] <= base[1]


def test_oversized_message_dropped_daemon_keeps_serving(live):
    d, _ = live
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(d.infer_ep)
    s.send_multipart([b'{"id":"big","dtype":"uint8","shape":[1,32,32,3]}', bytes(64 * 12288 + 200 * 1024)])
    assert not s.poll(1500)   # ZMQ_MAXMSGSIZE: the connection is dropped, nothing is read
    s.close()
    with d.client() as c:
        assert len(c.infer(np.zeros((1, 32, 32, 3), np.uint8)).labels) == 1


# ----------------------------------------------------------------------------- fault injection
def test_a_sensor_glitch_is_a_gap_not_the_end(live):
    """A power sensor that fails to read (gone while a driver rebinds): energy is null and
    ``status`` says degraded while it lasts; once it reads again, energy is back by itself."""
    d, root = live
    path = os.path.join(root, "sys/class/powercap/intel-rapl:0/energy_uj")
    with d.client() as c:
        assert c.infer(np.zeros((1, 32, 32, 3), np.uint8)).energy_mj is not None
        saved = open(path).read()
        os.remove(path)
        r = c.infer(np.zeros((1, 32, 32, 3), np.uint8))
        assert r.energy_mj is None
        s = c.status()
        assert s["energy"]["available"] is True and "energy_uj" in s["energy"]["degraded"], s["energy"]
        with open(path, "w") as f:
            f.write(saved)
        assert c.infer(np.zeros((1, 32, 32, 3), np.uint8)).energy_mj is not None
        assert c.status()["energy"]["degraded"] == ""


def test_critical_temperature_reported_keeps_serving(live):
    d, root = live
    zone = next(z for z in sorted(os.listdir(os.path.join(root, "sys/class/thermal")))
                if open(os.path.join(root, "sys/class/thermal", z, "type")).read().strip() == "x86_pkg_temp")
    with open(os.path.join(root, "sys/class/thermal", zone, "temp"), "w") as f:
        f.write("120000\n")
    with d.client() as c:
        assert len(c.infer(np.zeros((1, 32, 32, 3), np.uint8)).labels) == 1
        assert c.status()["temperatures_c"]["x86_pkg_temp"] == 120.0


@pytest.mark.parametrize("err", [errno.EBUSY, errno.EINVAL, errno.EACCES])
def test_write_failure_mid_run_turns_dvfs_off(random_set, tmp_path, err):
    """A kernel refusal in the middle of serving: DVFS off with the reason, serving goes on."""
    from daemon.executor import Executor
    from daemon.runtime import Runtime
    from governor import Governor, Profile, TargetFit, build_space, levels_from_manifest
    from models import ModelSet
    from platforms import boards
    from platforms.adapter import SysfsPlatform
    from platforms.sysfs import Sysfs, _remedy
    root = trees.build("generic", str(tmp_path / "sysfs"))

    class Failing(Sysfs):
        fail = False

        def write(self, p, value):
            if self.fail:
                raise _remedy(OSError(err, os.strerror(err)), p, str(value))
            super().write(p, value)

    fs = Failing(root)
    plat = SysfsPlatform(boards.GENERIC, root, str(tmp_path / "state"), fs=fs)
    ms = ModelSet.load(random_set)
    levels = levels_from_manifest(ms.manifest)
    space = build_space(levels, {n: t.freqs_khz for n, t in plat.targets.items() if not t.is_split})
    prof = Profile({t: TargetFit(1e-12, 1e-4, {}) for t in plat.targets})
    gov = Governor(space, levels, prof)
    ex = Executor(plat)
    rt = Runtime(ms, random_set, dict(plat.targets), "", levels, space, prof, True, gov)
    x = np.zeros((1, 3, 32, 32), np.float32)
    gov.pin(freq_khz=1800000)
    ex.infer(rt, x)
    assert plat.dvfs_enabled
    fs.fail = True
    gov.pin(freq_khz=1200000)
    logits, info, ran = ex.run(rt, x)
    target = ran.decision.config.target
    assert logits.shape == (1, 10) and not plat.dvfs_on(target) and ran.dvfs_lost
    assert plat.target_off[target].cause == "failed" and os.strerror(err) in plat.dvfs_reason_for(target)
    assert info["config"]["freq_khz"] is None       # not reported as set
    ex.infer(rt, x)   # and keeps serving


def _service(random_set, tmp_path):
    """The real Service on ipc endpoints in tmp_path, started (for in-process fault injection)."""
    from daemon.config import load as load_config
    from daemon.service import Service
    cfg = load_config(str(_empty(tmp_path)), {"model": random_set, "platform": "generic",
                                              "state_dir": str(tmp_path / "s"),
                                              "infer_endpoint": "ipc://%s/i.sock" % tmp_path,
                                              "control_endpoint": "ipc://%s/c.sock" % tmp_path})
    svc = Service(cfg)
    svc.start()
    return cfg, svc


@contextlib.contextmanager
def _serving(svc, cfg):
    """The real Server around ``svc`` in a thread (yielded), stopped and closed on exit."""
    from daemon.server import Server
    server = Server(svc, cfg)
    server.bind()
    stop = threading.Event()
    t = threading.Thread(target=server.serve, args=(stop,))
    t.start()
    try:
        yield t
    finally:
        stop.set()
        t.join()
        server.close()
        svc.stop()


def test_onnxruntime_error_in_one_run(random_set, tmp_path):
    """One failing run → an ``internal`` error reply for that request; the next succeeds."""
    from daemon.client import Client, DaemonError
    cfg, svc = _service(random_set, tmp_path)
    real_run = svc.models.run
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected")
        return real_run(*a, **kw)

    svc.models.run = flaky
    with _serving(svc, cfg):
        c = Client(cfg.infer_endpoint, cfg.control_endpoint, timeout_s=10)
        with pytest.raises(DaemonError) as e:
            c.infer(np.zeros((1, 32, 32, 3), np.uint8))
        assert e.value.code == "internal" and "injected" in e.value.message
        assert len(c.infer(np.zeros((1, 32, 32, 3), np.uint8)).labels) == 1
        assert c.status()["errors"]["internal"] == 1
        c.close()


def test_reply_goes_out_before_the_governor_learns(random_set, tmp_path):
    """The governor's and the counters' work on a run is not in the client's round trip: the
    reply is sent first. A learn step that waits for the client to have its reply must not
    hold the reply back; one that fails after the reply costs no reply, counts as internal,
    and the daemon serves on."""
    from daemon.client import Client
    cfg, svc = _service(random_set, tmp_path)
    real_learn = svc.executor.learn
    replied, seen = threading.Event(), []

    def learn(ran, current):
        seen.append(replied.wait(10))       # True: the client had its reply before this ran
        if len(seen) == 2:
            raise RuntimeError("injected in learn")
        real_learn(ran, current)

    svc.executor.learn = learn
    with _serving(svc, cfg) as t:
        c = Client(cfg.infer_endpoint, cfg.control_endpoint, timeout_s=5)
        for i in range(3):
            assert len(c.infer(np.zeros((1, 32, 32, 3), np.uint8)).labels) == 1
            replied.set()
            while len(seen) <= i and t.is_alive():
                time.sleep(0.01)
            replied.clear()
        assert seen == [True, True, True]
        st = c.status()
        assert st["errors"]["internal"] == 1 and st["served"] == 3
        c.close()


def _empty(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    return p


def test_corrupt_model_at_start_one_line(random_set, tmp_path):
    bad = str(tmp_path / "set")
    shutil.copytree(random_set, bad)
    with open(os.path.join(bad, "weights.bin"), "r+b") as f:
        f.seek(64)
        f.write(b"\xff\xff")
    r = subprocess.run(dnnscale_cmd() + ["serve", "--model", bad, "--config", str(_empty(tmp_path)),
                                         "--state-dir", str(tmp_path / "s")], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "weights.bin is altered" in r.stderr and r.stderr.strip().count("\n") == 0


def test_corrupt_model_at_reload_keeps_serving(random_set, tmp_path):
    mine = str(tmp_path / "set")
    shutil.copytree(random_set, mine)
    d = Daemon(str(tmp_path / "run"), mine)
    try:
        d.wait_ready()
        os.remove(os.path.join(mine, "k2.onnx"))
        with d.client() as c:
            from daemon.client import DaemonError
            with pytest.raises(DaemonError) as e:
                c.reload()
            assert e.value.code == "reload_failed" and "k2.onnx is missing" in e.value.message
            assert len(c.infer(np.zeros((1, 32, 32, 3), np.uint8), groups=2).labels) == 1
    finally:
        assert d.stop() == 0


# ----------------------------------------------------------------------------- crash-safe restore
def test_sigkill_then_next_start_restores_first(random_set, tmp_path):
    root = trees.build("generic", str(tmp_path / "sysfs"))
    before = snapshot(root)
    state = str(tmp_path / "run" / "state")
    d = Daemon(str(tmp_path / "run"), random_set, sysfs_root=root)
    d.wait_ready()
    with d.client() as c:
        c.pin(freq_khz=1200000)
        c.infer(np.zeros((1, 32, 32, 3), np.uint8))
    d.stop(signal.SIGKILL)
    assert snapshot(root) != before
    assert os.path.exists(os.path.join(state, "platform-originals.json"))
    d2 = Daemon(str(tmp_path / "run"), random_set, sysfs_root=root)
    try:
        d2.wait_ready()
        assert snapshot(root) == before     # restored before serving anything
        assert "restoring" in d2.output()
        assert not os.path.exists(os.path.join(state, "platform-originals.json"))
    finally:
        d2.stop()


# ----------------------------------------------------------------------------- access control
def test_defaults_are_local_only(monkeypatch):
    from daemon.config import Config
    for v in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "DNNSCALE_SYSTEM"):
        monkeypatch.delenv(v, raising=False)
    c = Config().resolve()      # a user's own daemon: both in the user's own runtime directory
    assert c.infer_endpoint == "ipc://%s/infer.sock" % c.runtime_dir and c.control_endpoint.startswith("ipc://")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/dnnscale")     # the service: group-only ipc for both
    c = Config().resolve()
    assert c.infer_endpoint == "ipc:///run/dnnscale/infer.sock" and c.control_endpoint.startswith("ipc://")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
def test_control_group(random_set, tmp_path):
    import grp
    groups = [g.gr_name for g in grp.getgrall() if g.gr_gid != 0][:2]
    if len(groups) < 2:
        pytest.skip("needs two non-root groups")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("control_group: %s\ninfer_group: %s\n" % tuple(groups))
    d = Daemon(str(tmp_path / "run"), random_set, config=str(cfg))
    try:
        d.wait_ready()
        for ep, group in ((d.control_ep, groups[0]), (d.infer_ep, groups[1])):
            st_ = os.stat(ep[6:])
            assert st_.st_gid == grp.getgrnam(group).gr_gid and st_.st_mode & 0o777 == 0o660, ep
    finally:
        d.stop()


def test_tcp_control_and_inference_with_curve(random_set, tmp_path):
    """CURVE keys admit the clients whose public keys are in the folder, on both tcp
    endpoints; a client without them is never answered."""
    import zmq.auth
    from daemon.client import Client, DaemonUnavailable
    keys, auth = tmp_path / "keys", tmp_path / "authorized"
    keys.mkdir()
    auth.mkdir()
    server_pub, server_sec = zmq.auth.create_certificates(str(keys), "server")
    client_pub, client_sec = zmq.auth.create_certificates(str(keys), "client")
    shutil.copy(client_pub, str(auth))
    ports = [free_port(), free_port()]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("curve_secret_key: %s\ncurve_authorized_keys: %s\n" % (server_sec, auth))
    d = Daemon(str(tmp_path / "run"), random_set, config=str(cfg),
               extra=["--control-endpoint", "tcp://127.0.0.1:%d" % ports[0],
                      "--infer-endpoint", "tcp://127.0.0.1:%d" % ports[1]])
    d.control_ep, d.infer_ep = "tcp://127.0.0.1:%d" % ports[0], "tcp://127.0.0.1:%d" % ports[1]
    x = np.zeros((1, 32, 32, 3), np.uint8)
    try:
        d.wait_ready()
        ok = Client(None, d.control_ep, timeout_s=10, curve_secret_key=client_sec, curve_server_key=server_pub)
        assert ok.status()["platform"] == "generic"
        assert len(ok.infer(x).labels) == 1 and ok.endpoint == d.infer_ep   # found through status
        ok.close()
        anon = Client(d.infer_ep, d.control_ep, timeout_s=1.5)   # no keys: never answered
        with pytest.raises(DaemonUnavailable):
            anon.status()
        with pytest.raises(DaemonUnavailable):
            anon.infer(x)
        anon.close()
    finally:
        d.stop()


def test_platform_writes_only_discovered_files(tmp_path):
    """Whatever is asked (good or bad), every write lands in a discovered control file."""
    from platforms import boards
    from platforms.adapter import SysfsPlatform
    from tests.fixtures.kernel import KernelSysfs
    root = trees.build("jetson-nano", str(tmp_path / "sysfs"))
    fs = KernelSysfs(root)
    p = SysfsPlatform(boards.JETSON_NANO, root, str(tmp_path / "state"), fs=fs)
    p.start()
    for target, khz in [("cpu", 921600), ("gpu", 460800), ("../../etc/passwd", 1), ("cpu", -1), ("gpu", 10 ** 12)]:
        try:
            p.set_frequency(target, khz)
        except ValueError:
            pass
    allowed = [d for t in p.targets.values() for d in t.control] + [r.enable for r in p.desc.rails if r.enable]
    assert fs.writes and all(any(w.startswith(a) for a in allowed) for w, _ in fs.writes)
    p.stop()


# ----------------------------------------------------------------------------- one owner per board
def test_one_owner_per_board_and_state_directory(random_set, tmp_path):
    """A second `serve` on the same board or the same state directory, and a `profile` of the
    board, are refused in one line naming the owner, and the owner keeps its pin (they used to
    "restore" under it). Once the owner dies (kill -9), the next start restores its record."""
    from tests.daemon_harness import kernel_cmd
    root = trees.build("odroid-xu3", str(tmp_path / "sysfs"))
    before = snapshot(root)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile_runs: 1\n")
    a = Daemon(str(tmp_path / "a"), random_set, sysfs_root=root, config=str(cfg), kernel_uid=0)
    setspeed = os.path.join(root, "sys/devices/system/cpu/cpufreq/policy4/scaling_max_freq")
    try:
        a.wait_ready()
        with a.client() as c:
            c.pin(target="a15", freq_khz=1200000)
            assert open(setspeed).read().strip() == "1200000"
            env = dict(os.environ, PYTHONPATH=ROOT)
            env.pop("NOTIFY_SOCKET", None)
            for what, args in (
                    ("the board", ["serve", "--model", random_set, "--sysfs-root", root, "--config", str(cfg),
                                   "--state-dir", str(tmp_path / "b-state"), "--infer-endpoint",
                                   "ipc://%s/b-i.sock" % tmp_path, "--control-endpoint", "ipc://%s/b-c.sock" % tmp_path]),
                    ("the state directory", ["serve", "--model", random_set, "--platform", "sim-odroid-xu3",
                                             "--config", str(cfg), "--state-dir", a.state, "--infer-endpoint",
                                             "ipc://%s/c-i.sock" % tmp_path, "--control-endpoint",
                                             "ipc://%s/c-c.sock" % tmp_path]),
                    ("the board", ["profile", "--model", random_set, "--sysfs-root", root, "--state-dir",
                                   str(tmp_path / "p-state"), "--runs", "1"])):
                r = subprocess.run(kernel_cmd(0) + args, cwd=ROOT, env=env, capture_output=True, text=True,
                                   timeout=120)
                errors = [l for l in r.stderr.splitlines() if "error" in l]
                assert r.returncode == 2 and len(errors) == 1, (args, r.stderr)
                assert "is in use by another dnnscale, pid %d" % a.proc.pid in errors[0] and what in errors[0], errors
            assert open(setspeed).read().strip() == "1200000"          # nothing restored under it
            assert c.status()["pinned"] == {"target": "a15", "freq_khz": 1200000}
            assert os.path.exists(os.path.join(a.state, "platform-originals.json"))
    finally:
        a.stop(signal.SIGKILL)
    d = Daemon(str(tmp_path / "d"), random_set, sysfs_root=root, config=str(cfg), kernel_uid=0,
               extra=["--state-dir", a.state])
    try:
        d.wait_ready()
        assert "restoring" in d.output()
    finally:
        assert d.stop() == 0, d.output()
    assert snapshot(root) == before


# ----------------------------------------------------------------------------- a restore that survives everything
@pytest.mark.parametrize("record", ["", '{"root": "', "planted"])
def test_an_untrusted_crash_record_is_kept_aside(random_set, tmp_path, record):
    """An empty, torn or planted crash record is neither discarded nor overwritten nor
    obeyed: it is kept aside, DVFS stays off with the reason in status (nothing is written to
    the board), at every start until someone deletes it; then all is as before."""
    root = trees.build("odroid-xu3", str(tmp_path / "sysfs"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    planted = record == "planted"   # the whole story for it: two starts, then resolved
    if planted:                  # a key outside the board's control files, through ..
        record = json.dumps({"root": root, "files": {"/sys/../../%s" % os.path.relpath(victim, root): "owned"}})
    state = tmp_path / "state"
    state.mkdir()
    (state / "platform-originals.json").write_text(record)
    before = snapshot(root)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile_runs: 1\n")
    for run in ("a", "b") if planted else ("a",):
        d = Daemon(str(tmp_path / run), random_set, sysfs_root=root, config=str(cfg), kernel_uid=0,
                   extra=["--state-dir", str(state)])
        try:
            d.wait_ready()
            with d.client() as c:
                s = c.status()
                assert not s["dvfs"]["enabled"] and "kept as" in s["dvfs"]["reason"], s["dvfs"]
                assert len(c.infer(np.zeros((1, 32, 32, 3), np.uint8)).labels) == 1
        finally:
            assert d.stop() == 0, d.output()
        aside = [p for p in os.listdir(state) if p.startswith("platform-originals.json.unreadable-")]
        assert len(aside) == 1 and (state / aside[0]).read_text() == record
        assert victim.read_text() == "precious\n" and snapshot(root) == before
    if not planted:
        return
    os.remove(state / aside[0])                  # resolved by the operator
    d = Daemon(str(tmp_path / "c"), random_set, sysfs_root=root, config=str(cfg), kernel_uid=0,
               extra=["--state-dir", str(state)])
    try:
        d.wait_ready()
        with d.client() as c:
            assert c.status()["dvfs"]["enabled"]
    finally:
        assert d.stop() == 0, d.output()
    assert snapshot(root) == before


def test_the_records_temporary_file_is_never_written_through_a_link(tmp_path):
    from platforms import boards
    from platforms.adapter import SysfsPlatform
    from tests.fixtures.kernel import KernelSysfs
    root = trees.build("generic", str(tmp_path / "sysfs"))
    state = tmp_path / "state"
    state.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(str(victim), str(state / "platform-originals.json.tmp"))
    p = SysfsPlatform(boards.GENERIC, root, str(state), fs=KernelSysfs(root))
    p.start()
    p.set_frequency("cpu", p.targets["cpu"].freqs_khz[0])
    assert victim.read_text() == "precious\n"
    assert json.load(open(state / "platform-originals.json"))["files"]
    assert p.stop() == [] and not os.path.lexists(state / "platform-originals.json.tmp")


def test_stray_signals_stop_cleanly_or_are_ignored(random_set, tmp_path):
    """USR1/USR2 are ignored; QUIT (like TERM) stops with the board restored and exit 0."""
    root = trees.build("generic", str(tmp_path / "sysfs"))
    before = snapshot(root)
    d = Daemon(str(tmp_path / "run"), random_set, sysfs_root=root)
    try:
        d.wait_ready()
        with d.client() as c:
            c.pin(target="cpu", freq_khz=1800000)
            assert snapshot(root) != before
            for sig in (signal.SIGUSR1, signal.SIGUSR2):
                d.proc.send_signal(sig)
            time.sleep(0.5)
            assert d.proc.poll() is None and c.status()["pinned"]
    finally:
        assert d.stop(signal.SIGQUIT) == 0, d.output()
    assert snapshot(root) == before


@pytest.mark.parametrize("field", ["dtype", "shape", "groups", "deadline_ms", "unknown"])
def test_error_replies_quote_a_short_excerpt(field):
    """A client's value is quoted, never repeated whole: a 10 KB field gives a short reply."""
    h = {"id": 1, "dtype": "uint8", "shape": [1, 32, 32, 3]}
    h["x" * 10000 if field == "unknown" else field] = ["A" * 10000] * 3 if field == "shape" else "A" * 10000
    with pytest.raises(ProtocolError) as e:
        decode_infer([encode(h), bytes(3072)], SPEC)
    assert len(str(e.value)) < 300, (field, len(str(e.value)))

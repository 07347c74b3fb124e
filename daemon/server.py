"""The ZeroMQ front: an inference ROUTER served by the inference thread, a control ROUTER
served by the main thread.

The inference thread owns the inference socket: it drains what has arrived into a bounded
backlog (over ``queue_size`` → ``busy``), decodes and validates, runs, and replies, with no
hand-off between threads on the request path. Consecutive pending requests with the same
dtype, groups and deadline run as one batch. While onnxruntime runs (it releases the GIL),
ZeroMQ's I/O thread keeps queuing incoming messages and the main thread keeps answering
control messages. No socket is shared between threads.
"""
from __future__ import annotations

import collections
import grp
import logging
import os
import socket
import stat
import threading
import time
from typing import Deque, List, Optional, Tuple

import zmq

from .config import Config, ConfigError
from .notify import Notifier
from .protocol import ProtocolError, decode_control, decode_infer, encode_reply, error_reply, peek_id
from .service import Service

log = logging.getLogger("dnnscale.server")
HEADER_SLACK = 64 * 1024


def _split(frames: List[bytes]):
    """ROUTER frames → (envelope, body). REQ clients put an empty delimiter after the identity."""
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a run that died; refuse to touch anything else."""
    if not os.path.lexists(path):
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise ConfigError("%s exists and is not a socket: refusing to replace it" % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.remove(path)   # nobody listens: stale
        return
    finally:
        probe.close()
    raise ConfigError("%s is in use: another dnnscale serve is running there" % path)


class Server:
    def __init__(self, service: Service, cfg: Config, notifier: Optional[Notifier] = None,
                 ctx: Optional[zmq.Context] = None):
        self.service = service
        self.cfg = cfg
        self.notifier = notifier or Notifier({})
        self.ctx = ctx or zmq.Context()
        self.backlog: Deque[Tuple[List[bytes], object]] = collections.deque()
        self.reload_requested = threading.Event()
        self.heartbeat = time.monotonic()   # the inference thread's last loop iteration
        self._auth = None
        self._bound_paths: List[str] = []   # ipc socket files this process created
        c, h, w = service.models.input_shape
        self.max_bytes = cfg.max_batch * c * h * w * 4 + HEADER_SLACK

    # ------------------------------------------------------------------ sockets
    def bind(self) -> None:
        self.infer = self.ctx.socket(zmq.ROUTER)
        self.control = self.ctx.socket(zmq.ROUTER)
        for s in (self.infer, self.control):
            s.setsockopt(zmq.ROUTER_MANDATORY, 1)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, self.max_bytes)
        self._bind(self.infer, self.cfg.infer_endpoint)
        ep = self.cfg.control_endpoint
        if ep.startswith("tcp://"):
            self._curve(self.control)
        self._bind(self.control, ep)
        if ep.startswith("ipc://"):
            path = ep[len("ipc://"):]
            os.chmod(path, 0o660)
            if self.cfg.control_group:
                try:
                    os.chown(path, -1, grp.getgrnam(self.cfg.control_group).gr_gid)
                except (KeyError, PermissionError) as e:
                    raise ConfigError("control_group %r: %s" % (self.cfg.control_group, e))

    def _bind(self, sock: zmq.Socket, ep: str) -> None:
        old_umask = None
        if ep.startswith("ipc://"):
            path = ep[len("ipc://"):]
            os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
            _clear_stale_socket(path)
            old_umask = os.umask(0o117)   # the socket file is born 0660: no window before chmod
        try:
            sock.bind(ep)
        except zmq.ZMQError as e:
            raise ConfigError("cannot bind %s: %s" % (ep, e))
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if ep.startswith("ipc://"):
            self._bound_paths.append(ep[len("ipc://"):])

    def _curve(self, sock: zmq.Socket) -> None:
        """A TCP control endpoint is refused unless CURVE keys are configured."""
        if not (self.cfg.curve_secret_key and self.cfg.curve_authorized_keys):
            raise ConfigError("refusing a tcp:// control endpoint without CURVE: set curve_secret_key "
                              "(a zmq certificate file) and curve_authorized_keys (a folder of client "
                              "public certificates), or use an ipc:// control endpoint")
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator
        try:
            public, secret = zmq.auth.load_certificate(self.cfg.curve_secret_key)
        except (OSError, ValueError) as e:
            raise ConfigError("curve_secret_key %s: %s" % (self.cfg.curve_secret_key, e))
        if secret is None:
            raise ConfigError("curve_secret_key %s holds no secret key" % self.cfg.curve_secret_key)
        if not os.path.isdir(self.cfg.curve_authorized_keys):
            raise ConfigError("curve_authorized_keys %s is not a folder" % self.cfg.curve_authorized_keys)
        self._auth = ThreadAuthenticator(self.ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=self.cfg.curve_authorized_keys)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True

    # ------------------------------------------------------------------ inference thread
    def _send(self, sock: zmq.Socket, frames: List[bytes]) -> None:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:   # the client left (EHOSTUNREACH) or its queue is full
            log.debug("reply dropped: %s", e)

    def _receive(self) -> None:
        """Move what has arrived into the backlog; refuse what is invalid or over the bound."""
        while self.infer.getsockopt(zmq.EVENTS) & zmq.POLLIN:   # cheaper than catching zmq.Again
            try:
                frames = self.infer.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope, body = _split(frames)
            try:
                req = decode_infer(body, self.service.input_spec)
            except ProtocolError as e:
                self.service.count_error(e.code)
                self._send(self.infer, envelope + error_reply(peek_id(body[0]) if body else None, e.code, str(e)))
                continue
            if len(self.backlog) >= self.cfg.queue_size:
                self.service.count_error("busy")
                self._send(self.infer, envelope + error_reply(req.id, "busy", "the request queue is full (%d); "
                                                              "retry later" % self.cfg.queue_size))
                continue
            self.backlog.append((envelope, req))

    def _next_batch(self):
        envelope, r0 = self.backlog.popleft()
        batch, envelopes, n = [r0], [envelope], len(r0.tensor)
        while self.backlog:
            env, r = self.backlog[0]
            if (r.dtype, r.groups, r.deadline_ms) != (r0.dtype, r0.groups, r0.deadline_ms) or \
                    n + len(r.tensor) > self.cfg.max_batch:
                break
            self.backlog.popleft()
            batch.append(r)
            envelopes.append(env)
            n += len(r.tensor)
        return envelopes, batch

    def _run_one_batch(self) -> None:
        envelopes, batch = self._next_batch()
        try:
            replies = [encode_reply(h, l) for h, l in self.service.infer(batch)]
        except Exception as e:   # an onnxruntime failure must not kill the thread
            log.exception("inference failed")
            self.service.count_error("internal")
            msg = "inference failed: %s" % (str(e).splitlines() or ["?"])[0][:300]
            replies = [error_reply(r.id, "internal", msg) for r in batch]
        for env, frames in zip(envelopes, replies):
            self._send(self.infer, env + frames)

    def _inference_loop(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(self.infer, zmq.POLLIN)
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            if not self.backlog:
                if not poller.poll(100):
                    continue
            self._receive()
            if self.backlog:
                self._run_one_batch()
        # Stop accepting; finish what was accepted.
        while self.backlog:
            self.heartbeat = time.monotonic()
            self._run_one_batch()

    def _on_control(self) -> None:
        for _ in range(64):
            try:
                frames = self.control.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope, body = _split(frames)
            rid = None
            try:
                rid, cmd, args = decode_control(body)
                reply = {"id": rid, "ok": True}
                reply.update(self.service.control(cmd, args))
            except ProtocolError as e:
                self.service.count_error(e.code)
                rid = rid if rid is not None else (peek_id(body[0]) if body else None)
                reply = {"id": rid, "ok": False, "error": {"code": e.code, "message": str(e)}}
            except Exception as e:
                log.exception("control command failed")
                reply = {"id": rid, "ok": False, "error": {"code": "internal", "message": str(e)[:300]}}
            self._send(self.control, envelope + encode_reply(reply))

    def serve(self, stop: threading.Event, ready_status: str = "serving") -> None:
        if stop.is_set():   # SIGTERM while loading: nothing to serve
            return
        worker_stop = threading.Event()
        worker = threading.Thread(target=self._inference_loop, args=(worker_stop,), name="dnnscale-infer",
                                  daemon=True)
        worker.start()
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        self.notifier.ready(ready_status)
        log.info("ready: inference on %s, control on %s", self.cfg.infer_endpoint, self.cfg.control_endpoint)
        wd = self.notifier.watchdog_s
        last_wd = 0.0
        timeout_ms = 100 if not wd else max(10, min(100, int(wd * 1000 / 4)))
        while not stop.is_set():
            if poller.poll(timeout_ms):
                self._on_control()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                try:
                    log.info("reloaded: %s", self.service.reload())
                except ProtocolError as e:
                    log.error("%s", e)
            now = time.monotonic()
            # Ping only while the inference thread is alive: a hung inference gets us restarted.
            if wd and now - last_wd >= wd / 2 and now - self.heartbeat < wd:
                self.notifier.watchdog()
                last_wd = now
        self.notifier.stopping()
        worker_stop.set()
        worker.join(timeout=60)
        log.info("stopped: %d requests served", self.service.served)

    def close(self) -> None:
        for s in ("infer", "control"):
            sock = getattr(self, s, None)
            if sock is not None:
                sock.close(linger=0)
        if self._auth:
            self._auth.stop()
        for path in self._bound_paths:   # only what this process bound: never another daemon's
            if os.path.exists(path):
                os.remove(path)

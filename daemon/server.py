"""The ZeroMQ front: an inference ROUTER, a control ROUTER, one inference worker.

The main thread owns both ROUTER sockets and polls them. Decoding and validation happen
there; valid inference requests go through a bounded queue to the worker thread, which
runs them (onnxruntime releases the GIL, so the sockets stay responsive) and hands the
reply frames back over an inproc socket; the main thread sends them to the client that
asked. Control commands are cheap and answered inline. No socket is shared between threads.
"""
from __future__ import annotations

import grp
import logging
import os
import queue
import threading
import time
from typing import List, Optional

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


class Server:
    def __init__(self, service: Service, cfg: Config, notifier: Optional[Notifier] = None,
                 ctx: Optional[zmq.Context] = None):
        self.service = service
        self.cfg = cfg
        self.notifier = notifier or Notifier({})
        self.ctx = ctx or zmq.Context()
        self.queue: "queue.Queue" = queue.Queue(maxsize=cfg.queue_size)
        self.reload_requested = threading.Event()
        self._auth = None
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
        self.replies = self.ctx.socket(zmq.PULL)
        self.replies.bind("inproc://dnnscale-replies")

    def _bind(self, sock: zmq.Socket, ep: str) -> None:
        if ep.startswith("ipc://"):
            path = ep[len("ipc://"):]
            os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
            if os.path.exists(path):
                os.remove(path)   # a stale socket file from a run that died
        try:
            sock.bind(ep)
        except zmq.ZMQError as e:
            raise ConfigError("cannot bind %s: %s" % (ep, e))

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

    # ------------------------------------------------------------------ worker
    def _worker(self) -> None:
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect("inproc://dnnscale-replies")
        while True:
            item = self.queue.get()
            if item is None:
                break
            envelope, req = item
            try:
                head, logits = self.service.infer(req)
                frames = encode_reply(head, logits)
            except Exception as e:   # an onnxruntime failure must not kill the worker
                log.exception("inference failed")
                self.service.count_error("internal")
                frames = error_reply(req.id, "internal", "inference failed: %s" % str(e).splitlines()[0][:300])
            push.send_multipart(envelope + frames)
        push.send_multipart([b"", b"worker-done"])
        push.close()

    def _send(self, sock: zmq.Socket, frames: List[bytes]) -> None:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:   # the client left (EHOSTUNREACH) or its queue is full
            log.debug("reply dropped: %s", e)

    # ------------------------------------------------------------------ loop
    def _on_infer(self) -> None:
        for _ in range(256):
            try:
                frames = self.infer.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            envelope, body = _split(frames)
            try:
                req = decode_infer(body, self.service.input_spec)
            except ProtocolError as e:
                self.service.count_error(e.code)
                self._send(self.infer, envelope + error_reply(peek_id(body[0]) if body else None, e.code, str(e)))
                continue
            try:
                self.queue.put_nowait((envelope, req))
            except queue.Full:
                self.service.count_error("busy")
                self._send(self.infer, envelope + error_reply(req.id, "busy", "the request queue is full (%d); "
                                                              "retry later" % self.cfg.queue_size))

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

    def _forward_replies(self) -> bool:
        """Send what the worker finished; False once the worker has exited."""
        while True:
            try:
                frames = self.replies.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return True
            if frames == [b"", b"worker-done"]:
                return False
            self._send(self.infer, frames)

    def serve(self, stop: threading.Event, ready_status: str = "serving") -> None:
        worker = threading.Thread(target=self._worker, name="dnnscale-worker", daemon=True)
        worker.start()
        poller = zmq.Poller()
        for s in (self.infer, self.control, self.replies):
            poller.register(s, zmq.POLLIN)
        self.notifier.ready(ready_status)
        log.info("ready: inference on %s, control on %s", self.cfg.infer_endpoint, self.cfg.control_endpoint)
        wd = self.notifier.watchdog_s
        last_wd = 0.0
        timeout_ms = 100 if not wd else max(10, min(100, int(wd * 1000 / 4)))
        while not stop.is_set():
            events = dict(poller.poll(timeout_ms))
            if self.replies in events:
                self._forward_replies()
            if self.infer in events:
                self._on_infer()
            if self.control in events:
                self._on_control()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                try:
                    log.info("reloaded: %s", self.service.reload())
                except ProtocolError as e:
                    log.error("%s", e)
            now = time.monotonic()
            if wd and now - last_wd >= wd / 2:
                self.notifier.watchdog()
                last_wd = now
        # Stop accepting; finish what is queued; send those replies.
        self.notifier.stopping()
        poller.unregister(self.infer)
        self.queue.put(None)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._forward_replies():
            if self.replies.poll(100):
                continue
        worker.join(timeout=5)

    def close(self) -> None:
        for s in ("infer", "control", "replies"):
            sock = getattr(self, s, None)
            if sock is not None:
                sock.close(linger=0)
        if self._auth:
            self._auth.stop()
        ep = self.cfg.control_endpoint or ""
        if ep.startswith("ipc://") and os.path.exists(ep[6:]):
            os.remove(ep[6:])

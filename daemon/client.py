"""``Client``: talk to a running ``dnnscale serve``.

Each call sends one request with a fresh id on a DEALER socket and waits at most
``timeout_s`` for the reply with that id (replies to earlier, timed-out requests are
discarded). No daemon → :class:`DaemonUnavailable` after the time-out, never a hang.
"""
from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import zmq

from .config import ConfigError, check_socket_dir, default_control_endpoint, default_infer_endpoint
from .protocol import dumps, loads


class ClientError(Exception):
    pass


def _refuse_non_finite(msg: Dict) -> None:
    """JSON has no NaN or Infinity (the codec would send null, which means "none"): refuse
    them here, naming the field."""
    for k, v in msg.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ClientError("%s must be a finite number, got %r" % (k, v))


class DaemonUnavailable(ClientError):
    """No reply within the time-out."""


class AccessDenied(ClientError):
    """The daemon's socket exists but this user may not connect to it."""


def _denied(path: str) -> AccessDenied:
    """One line: which socket, which group grants it, and the remedy."""
    import grp
    import pwd
    st = None
    for p in (path, os.path.dirname(path)):
        try:
            st = os.stat(p)
            break
        except OSError:
            continue
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    if st is None:
        return AccessDenied("permission denied on %s (as user %s)" % (path, user))
    try:
        group = grp.getgrgid(st.st_gid).gr_name
        listed = user in grp.getgrgid(st.st_gid).gr_mem
    except KeyError:
        group, listed = str(st.st_gid), False
    if listed or st.st_gid in os.getgroups():
        remedy = "%s is in it, but not in this session: log in again (or run `newgrp %s`)" % (user, group)
    else:
        remedy = "%s is not in it; an administrator adds you with: sudo usermod -aG %s %s (then log in again)" \
                 % (user, group, user)
    return AccessDenied("permission denied on %s: the dnnscale daemon admits group '%s' only; %s"
                        % (path, group, remedy))


class DaemonError(ClientError):
    """The daemon refused the request; ``code`` is the stable error code."""

    def __init__(self, code: str, message: str):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message


@dataclass
class Result:
    labels: List[int]
    logits: np.ndarray
    config: Dict
    latency_ms: float
    energy_mj: Optional[float]
    header: Dict


def _probe(endpoint: str) -> None:
    """Fail at once, rather than after the whole time-out, where nothing can be listening:
    an ipc path that does not exist or refuses connections, a tcp port that refuses them."""
    import socket
    hint = "(is `dnnscale serve` running?)"
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        path = endpoint[len("ipc://"):]
        try:
            os.stat(path)
        except FileNotFoundError:
            raise DaemonUnavailable("no dnnscale daemon at %s: %s does not exist %s" % (endpoint, path, hint)) \
                from None
        except PermissionError:
            raise _denied(path) from None
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = path
    elif endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if not port.isdigit() or host in ("*", ""):
            return
        host = host.strip("[]")
        probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    else:
        return
    probe.settimeout(1.0)
    try:
        probe.connect(target)
    except (ConnectionRefusedError, FileNotFoundError):
        raise DaemonUnavailable("no dnnscale daemon at %s: nothing listens there %s" % (endpoint, hint)) from None
    except PermissionError:
        raise _denied(target) from None
    except OSError:
        pass                      # unreachable for another reason: let the request time out
    finally:
        probe.close()


class Client:
    def __init__(self, endpoint: Optional[str] = None, control_endpoint: Optional[str] = None,
                 timeout_s: float = 5.0, ctx: Optional[zmq.Context] = None,
                 curve_secret_key: Optional[str] = None, curve_server_key: Optional[str] = None,
                 model: Optional[str] = None):
        """``model``: the model set this client's requests and commands name where the daemon
        serves several (None: the daemon's default set; each call may name another).
        ``endpoint``: the inference socket (default: the one the daemon at
        ``control_endpoint`` says it binds, else ipc://<runtime dir>/infer.sock). ``curve_secret_key``
        (this client's certificate file) and ``curve_server_key`` (the daemon's public
        certificate) are needed for a tcp:// control endpoint, and for a tcp:// inference
        endpoint where the daemon has CURVE keys."""
        self._endpoint = endpoint
        self.model = model
        self.control_endpoint = control_endpoint or default_control_endpoint(for_client=True)
        self.timeout_s = timeout_s
        self.ctx = ctx or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._prefix = "%d-%x" % (os.getpid(), id(self) & 0xFFFFFF)
        self._socks: Dict[str, zmq.Socket] = {}
        self._curve = None
        if curve_secret_key or curve_server_key:
            from zmq.auth import load_certificate
            pub, sec = load_certificate(curve_secret_key)
            server_pub, _ = load_certificate(curve_server_key)
            self._curve = (pub, sec, server_pub)

    @property
    def endpoint(self) -> str:
        if self._endpoint is None:
            self._endpoint = self._daemons_infer_endpoint()
        return self._endpoint

    def _daemons_infer_endpoint(self) -> str:
        """Ask the daemon where it takes inference requests (the system service: an ipc
        socket); a daemon too old to say, or none at all: the default."""
        try:
            ep = self.status().get("infer_endpoint")
        except (DaemonUnavailable, DaemonError):
            return default_infer_endpoint()
        if not isinstance(ep, str) or not ep.startswith(("tcp://", "ipc://")):
            return default_infer_endpoint()
        host, _, port = ep[len("tcp://"):].rpartition(":") if ep.startswith("tcp://") else ("", "", "")
        if host in ("*", "0.0.0.0", "[::]"):      # bound on every address: reach it on loopback
            ep = "tcp://%s:%s" % ("[::1]" if host == "[::]" else "127.0.0.1", port)
        return ep

    def _sock(self, endpoint: str) -> zmq.Socket:
        s = self._socks.get(endpoint)
        if s is None:
            if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
                try:
                    check_socket_dir(endpoint[len("ipc://"):], for_client=True)
                except ConfigError as e:
                    raise ClientError(str(e)) from None
            _probe(endpoint)
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if self._curve and (endpoint == self.control_endpoint or endpoint.startswith("tcp://")):
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = self._curve
            s.connect(endpoint)
            self._socks[endpoint] = s
        return s

    def _call(self, endpoint: str, frames: List[bytes], rid: str):
        """Send; return (the reply's parsed header, its frames)."""
        self._sock(endpoint).send_multipart(frames)
        return self._await(endpoint, rid)

    def _await(self, endpoint: str, rid: str):
        """The next reply to ``rid`` (a progressive request gets several)."""
        s = self._sock(endpoint)
        end = time.monotonic() + self.timeout_s
        while True:
            left = end - time.monotonic()
            try:
                if left <= 0:
                    raise zmq.Again()
                # A receive time-out rather than Socket.poll, which builds a Poller per call.
                s.setsockopt(zmq.RCVTIMEO, int(left * 1000) + 1)
                reply = s.recv_multipart()
            except zmq.Again:
                # Drop the socket: a late reply must not be read as the next call's.
                s.close(linger=0)
                self._socks.pop(endpoint, None)
                raise DaemonUnavailable("no reply from the dnnscale daemon at %s within %.1f s "
                                        "(is `dnnscale serve` running?)" % (endpoint, self.timeout_s)) from None
            try:
                head = loads(reply[0])
            except (ValueError, IndexError):
                continue
            if isinstance(head, dict) and head.get("id") == rid:
                return head, reply

    def _next_id(self) -> str:
        return "%s-%d" % (self._prefix, next(self._ids))

    # ------------------------------------------------------------------ inference
    def infer(self, images: np.ndarray, groups: Optional[int] = None,
              deadline_ms: Optional[float] = None, stop_at: Optional[float] = None,
              model: Optional[str] = None) -> Result:
        """Classify uint8 NHWC images or float32 NCHW normalised input. ``stop_at``: add
        groups one at a time and stop each image once its top-1 probability reaches it (the
        reply's ``groups_per_image`` says where each stopped; ``groups`` is then the most).
        ``model``: the set to run (default: the client's)."""
        rid, frames = self._request(images, groups, deadline_ms, stop_at, False, model)
        head, reply = self._call(self.endpoint, frames, rid)
        return self._result(head, reply)

    def infer_progressive(self, images: np.ndarray, groups: Optional[int] = None,
                          deadline_ms: Optional[float] = None, stop_at: Optional[float] = None,
                          model: Optional[str] = None) -> Iterator[Result]:
        """One Result per added group, as the daemon computes them (labels, ``probabilities``
        and ``groups_per_image`` so far in each header); the last has ``final`` true."""
        rid, frames = self._request(images, groups, deadline_ms, stop_at, True, model)
        head, reply = self._call(self.endpoint, frames, rid)
        while True:
            r = self._result(head, reply)
            yield r
            if head.get("final", True):
                return
            head, reply = self._await(self.endpoint, rid)

    def _request(self, images, groups, deadline_ms, stop_at, progressive, model=None):
        images = np.ascontiguousarray(images)
        if images.dtype == np.uint8:
            dtype = "uint8"
        elif images.dtype == np.float32:
            dtype = "float32"
        else:
            raise ClientError("images must be uint8 NHWC or float32 NCHW, got %s" % images.dtype)
        if images.ndim == 3:
            images = images[None]
        rid = self._next_id()
        header = {"id": rid, "dtype": dtype, "shape": list(images.shape)}
        if groups is not None:
            header["groups"] = groups
        if deadline_ms is not None:
            header["deadline_ms"] = deadline_ms
        if stop_at is not None:
            header["stop_at"] = stop_at
        if progressive:
            header["progressive"] = True
        if (model or self.model) is not None:
            header["model"] = model or self.model
        _refuse_non_finite(header)
        return rid, [dumps(header), images]

    def _result(self, head: Dict, reply: List[bytes]) -> Result:
        if not head.get("ok"):
            err = head.get("error", {})
            raise DaemonError(err.get("code", "?"), err.get("message", ""))
        logits = np.frombuffer(reply[1], dtype="<f4").reshape(len(head["labels"]), -1)
        return Result(head["labels"], logits, head["config"], head["latency_ms"], head.get("energy_mj"), head)

    # ------------------------------------------------------------------ control
    def command(self, cmd: str, **args: Any) -> Dict:
        rid = self._next_id()
        msg = dict(args, cmd=cmd, id=rid)
        _refuse_non_finite(msg)
        reply, _ = self._call(self.control_endpoint, [dumps(msg)], rid)
        if not reply.get("ok"):
            err = reply.get("error", {})
            raise DaemonError(err.get("code", "?"), err.get("message", ""))
        return reply

    def _for(self, model: Optional[str]) -> Dict:
        m = model or self.model
        return {} if m is None else {"model": m}

    def set_budget(self, latency_ms: Optional[float] = None, energy_mj: Optional[float] = None,
                   power_w: Optional[float] = None, accuracy_min: Optional[float] = None,
                   model: Optional[str] = None, miss_rate: Optional[float] = None) -> Dict:
        return self.command("set_budget", latency_ms=latency_ms, energy_mj=energy_mj, power_w=power_w,
                            accuracy_min=accuracy_min, **self._for(model),
                            **({} if miss_rate is None else {"miss_rate": miss_rate}))

    def clear_budget(self, model: Optional[str] = None) -> Dict:
        return self.command("clear_budget", **self._for(model))

    def status(self) -> Dict:
        return self.command("status")

    def pin(self, groups: Optional[int] = None, target: Optional[str] = None,
            freq_khz: Optional[int] = None, model: Optional[str] = None) -> Dict:
        args = {k: v for k, v in (("groups", groups), ("target", target), ("freq_khz", freq_khz)) if v is not None}
        return self.command("pin", **args, **self._for(model))

    def release(self, model: Optional[str] = None) -> Dict:
        return self.command("release", **self._for(model))

    def reload(self) -> Dict:
        return self.command("reload")

    def close(self) -> None:
        for s in self._socks.values():
            s.close(linger=0)
        self._socks.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

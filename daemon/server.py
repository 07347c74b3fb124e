"""The ZeroMQ front: an inference ROUTER served by the inference thread, a control ROUTER
served by the main thread.

The inference thread owns the inference socket: it takes in up to 64 arrived messages at a
time into per-client queues (over ``queue_size`` in all, or a quarter of it for one client
→ ``busy``), decodes and validates, runs, and replies, with no hand-off between threads on
the request path. Batches are formed round robin over clients from pending requests with
the same dtype, groups and deadline. While onnxruntime runs (it releases the GIL),
ZeroMQ's I/O thread keeps queuing incoming messages and the main thread keeps answering
control messages. No socket is shared between threads.
"""
from __future__ import annotations

import collections
import fcntl
import grp
import logging
import os
import resource
import socket
import stat
import threading
import time
from typing import Dict, List, NamedTuple, Optional, Set, Union

import zmq
from zmq.utils.monitor import parse_monitor_message

from models.heap import give_back_memory

from .config import Config, ConfigError, check_socket_dir
from .notify import Notifier
from . import commands
from .protocol import ProtocolError, decode_infer, encode_reply, error_reply, peek_id
from .queues import RequestQueues
from .service import Service

log = logging.getLogger("dnnscale.server")
HEADER_SLACK = 64 * 1024
MAX_FRAMES = 4          # identity, REQ's empty delimiter, header, tensor
RECEIVE_CHUNK = 64      # messages taken in per loop iteration (bounded: see _receive)
CONTROL_MAX_BYTES = 64 * 1024
CLOSE_LINGER_MS = 1000  # at stop: how long queued replies may take to leave


def _split(frames: List[bytes]):
    """ROUTER frames → (envelope, body). REQ clients put an empty delimiter after the identity."""
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


def _loopback(ep: str) -> bool:
    host = ep[len("tcp://"):].rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


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


class MemoryGuard:
    """The daemon's anonymous resident size (the heap, where libzmq keeps frames; not the
    mapped files, which each session of a packed set maps again) held within ``bound`` bytes
    of its floor (the lowest size over the last ``window_s``, so that the daemon's own slow
    growth moves the floor up).
    libzmq holds every frame of a message until its last one arrives, and nothing in its API
    bounds the frames of one message (``ZMQ_MAXMSGSIZE`` bounds a frame), so a peer that sends
    frames and never ends the message grows the daemon without limit; past the bound every
    connection is dropped (DEALER clients reconnect by themselves), which frees what libzmq
    held, and the heap is given back. While the size is over a quarter of the bound the guard
    samples every 10 ms rather than every 100 (a local peer sends about 1.5 GB/s)."""

    def __init__(self, bound: int, window_s: float = 10.0):
        self.bound = bound
        self.window_s = window_s
        self.samples: "collections.deque" = collections.deque()
        self.trips = 0
        self.rising = False              # over a quarter of the bound: sample often
        self.page = os.sysconf("SC_PAGE_SIZE")

    def anonymous(self) -> int:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * self.page     # resident - file-backed/shared

    def check(self) -> bool:
        now, r = time.monotonic(), self.anonymous()
        while self.samples and now - self.samples[0][0] > self.window_s:
            self.samples.popleft()
        self.samples.append((now, r))
        floor = min(v for _, v in self.samples)
        self.rising = r - floor > self.bound // 4
        if r - floor <= self.bound:
            return False
        self.trips += 1
        self.samples.clear()
        self.rising = False
        log.warning("anonymous resident size %d MB, %d MB over its floor (bound %d MB): an unfinished message is being "
                    "held; dropping every connection", r >> 20, (r - floor) >> 20, self.bound >> 20)
        return True


class _Watched(NamedTuple):
    """A socket FdGuard follows: its monitor, its endpoint's address (an ipc path, a tcp port)
    and the descriptors of the connections accepted there that have not closed."""
    monitor: zmq.Socket
    local: Union[str, int]
    accepted: Set[int]


SMALL_FD_LIMIT = 4096   # below it a flood can outrun the guard (measured: docs/reliability.md)
GUARD_NICE_BOOST = 10   # nice levels the guard thread takes over the daemon's other threads


class FdGuard:
    """Keeps the process clear of its descriptor limit. libzmq aborts the whole process when
    accept() on an ipc listener fails with EMFILE (src/ipc_listener.cpp asserts on it), and
    retries a tcp accept that fails with EMFILE in a busy loop, so a local client opening
    connections until the limit would take the daemon down or spin a core. A thread follows
    the sockets' monitor events (each accepted and each closed connection), looks at the
    descriptor table at each accepted one (``passed``) and counts the open descriptors where
    a mark is passed and at each wake-up. Past ``high`` of the soft limit the inference
    endpoint stops accepting (its ipc socket file is unlinked; a tcp endpoint is unbound by
    the thread that owns it); the control endpoint only past ``control_high``, so that the descriptors in
    between stay a reserve for the operator during a flood. Established connections are
    served on; below ``low`` (``control_low``) each endpoint accepts again. Idle, it wakes
    ten times a second. The thread runs ``GUARD_NICE_BOOST`` nice levels above the daemon's
    others where the process may raise a priority; it still acts after libzmq has accepted,
    so a fast enough flood passes a mark by some (docs/reliability.md)."""

    def __init__(self, high: float = 0.6, low: float = 0.4, control_high: float = 0.85, control_low: float = 0.6,
                 limit: Optional[int] = None):
        soft = limit or resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.limit = soft
        self.marks = {"infer": (int(soft * high), int(soft * low)),
                      "control": (int(soft * control_high), int(soft * control_low))}
        self.paths: Dict[str, str] = {}  # endpoint kind → its ipc socket file
        self.closed: Dict[str, bool] = {"infer": False, "control": False}
        self.rebind = set()              # endpoint kinds to bind again (by the owning thread)
        self.unbind = set()              # tcp endpoint kinds to unbind (by the owning thread)
        self.peak = 0
        self.trips = 0
        self.watched: List[_Watched] = []
        self.memory: Optional[MemoryGuard] = None
        self.trims: List[float] = []     # when to give memory back after dropping connections
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._probe = -1                 # /dev/null, duplicated by passed() (opened there, closed by stop)

    @property
    def hidden(self) -> bool:
        return any(self.closed.values())

    def watch(self, sock: zmq.Socket) -> None:
        """Follow ``sock``'s connections (call from the thread that owns it, after its bind
        and before start)."""
        ep = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.watched.append(_Watched(
            sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED),
            ep[len("ipc://"):] if ep.startswith("ipc://") else int(ep.rsplit(":", 1)[1]), set()))

    def count(self) -> int:
        try:
            return len(os.listdir("/proc/self/fd"))
        except OSError:              # EMFILE itself: as full as it gets
            return self.limit

    def passed(self) -> bool:
        """Whether the descriptor numbered as the next mark is open: a microsecond (a
        duplicate at or above it, closed again), where counting /proc/self/fd takes a fraction
        of a millisecond at a few hundred. Descriptors are allocated lowest first, so a flood
        takes that number as its count passes the mark; a hole below it (a connection closed)
        is filled first and delays the answer by one descriptor each."""
        mark = min((high for kind, (high, _) in self.marks.items() if not self.closed[kind]), default=self.limit)
        if mark >= self.limit:
            return False
        try:
            if self._probe < 0:
                self._probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            fd = fcntl.fcntl(self._probe, fcntl.F_DUPFD_CLOEXEC, mark)
        except OSError:                  # none free at or above it
            return True
        os.close(fd)
        return fd > mark

    def check(self) -> bool:
        """Count the open descriptors and close or open the endpoints by the marks; True
        where an endpoint was closed."""
        n = self.count()
        self.peak = max(self.peak, n)
        closed = False
        for kind, (high, low) in self.marks.items():
            if n >= high and not self.closed[kind]:
                self.closed[kind] = True
                self.trips += kind == "infer"
                closed = True
                path = self.paths.get(kind)
                if path:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                else:
                    self.unbind.add(kind)
                log.warning("%d of %d file descriptors in use: the %s endpoint accepts no new connections until "
                            "fewer than %d are open", n, self.limit, kind, low)
            elif n <= low and self.closed[kind]:
                self.closed[kind] = False
                self.unbind.discard(kind)
                self.rebind.add(kind)
                log.info("%d file descriptors in use: the %s endpoint accepts connections again", n, kind)
        return closed

    def _run(self) -> None:
        poller = zmq.Poller()
        for w in self.watched:
            poller.register(w.monitor, zmq.POLLIN)
        try:   # ahead of libzmq's accepting thread during a flood, where allowed (root, RLIMIT_NICE)
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) - GUARD_NICE_BOOST)
        except OSError:
            pass
        while not self._stop.is_set():
            ready = dict(poller.poll(10 if self.memory is not None and self.memory.rising else 100))
            probe = True
            for m, _, fds in self.watched:
                while m in ready and m.poll(0):
                    event = parse_monitor_message(m.recv_multipart())
                    if event["event"] != zmq.EVENT_ACCEPTED:
                        fds.discard(event["value"])
                        continue
                    fds.add(event["value"])         # the connection's descriptor
                    # A flood is accepted faster than its events are read here: look at the
                    # descriptor table itself at each one, and count where a mark is passed;
                    # a look the count does not confirm (holes below the mark) is not
                    # repeated until the next wake-up.
                    if probe and self.passed():
                        probe = self.check()
            self.check()
            if self.memory is not None and self.memory.check():
                self.drop()

    def drop(self) -> None:
        """Drop every connection, here and now: shutdown() on each accepted descriptor (the
        kernel's half of the connection, safe beside the libzmq thread that owns the socket),
        which libzmq reads as the peer gone; it ends the connection and frees the frames it
        held. The owning threads would take up to their 100 ms receive timeout to unbind."""
        for _, local, fds in self.watched:
            for fd in list(fds):
                _shutdown(fd, local)
        now = time.monotonic()           # libzmq frees the held frames as the connections end
        self.trims = [now + 0.3, now + 1.5]

    def start(self) -> None:
        if self.limit < SMALL_FD_LIMIT:
            log.warning("descriptor limit %d: a local client that opens connections as fast as it can may pass "
                        "the guard's marks by a few hundred before the guard acts (docs/reliability.md); %d or "
                        "more leaves it room (the unit sets LimitNOFILE=65536)", self.limit, SMALL_FD_LIMIT)
        self._thread = threading.Thread(target=self._run, name="dnnscale-fdguard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=3)
            self._thread = None
        for w in self.watched:
            w.monitor.close(linger=0)
        self.watched = []
        if self._probe >= 0:
            os.close(self._probe)
            self._probe = -1


def _shutdown(fd: int, local: Union[str, int]) -> None:
    """End the connection on ``fd`` if it still is one accepted on the endpoint at ``local``
    (its path or tcp port): a descriptor closed since its monitor event may have been reused
    by anything (the notify socket, a listener, a model file)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        name = s.getsockname()
        if s.type == socket.SOCK_STREAM and (name == local if isinstance(local, str) else name[1] == local):
            s.getpeername()              # a listener has none: OSError, left alone
            s.shutdown(socket.SHUT_RDWR)
    except (OSError, IndexError, TypeError):
        pass
    finally:
        s.close()                        # the duplicate only; libzmq closes its own


class Server:
    def __init__(self, service: Service, cfg: Config, notifier: Optional[Notifier] = None,
                 ctx: Optional[zmq.Context] = None):
        self.service = service
        self.cfg = cfg
        self.notifier = notifier or Notifier({})
        self.ctx = ctx or zmq.Context()
        self.queues = RequestQueues(cfg.queue_size, cfg.max_batch)
        self.trim_due, self._trimmed_at = False, 0.0   # memory to give back after a refused message
        self.reload_requested = threading.Event()
        self.heartbeat = time.monotonic()   # the inference thread's last loop iteration
        self._auth = None
        self._bound_paths: List[str] = []   # ipc socket files this process created
        self.guard = FdGuard()
        service.fd_guard = self.guard
        largest = max(c * h * w for c, h, w in (sp.chw for sp in service.input_specs().values()))
        self.max_bytes = cfg.max_batch * largest * 4 + HEADER_SLACK
        if cfg.memory_bound_mb:
            self.guard.memory = MemoryGuard(cfg.memory_bound_mb << 20)

    # ------------------------------------------------------------------ sockets
    def bind(self) -> None:
        self.infer = self.ctx.socket(zmq.ROUTER)
        self.control = self.ctx.socket(zmq.ROUTER)
        for s in (self.infer, self.control):
            s.setsockopt(zmq.ROUTER_MANDATORY, 1)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, self.max_bytes)
            s.setsockopt(zmq.BACKLOG, 32)   # connections the kernel queues past FdGuard's check
        # Replies to a client that pipelines commands wait for it rather than being dropped at
        # the default 1000; a drop past this is counted (status errors: reply_dropped).
        self.control.setsockopt(zmq.SNDHWM, 100_000)
        # Inference replies queued for one peer: twice what it may have queued (its share of
        # the queue), not libzmq's 1000; a peer that sends and never reads holds at most that
        # many replies (each at most max_batch logits and a short header; the `busy` refusals
        # of a peer that sends past its share count among them), the rest are dropped and
        # counted (reply_dropped).
        self.infer.setsockopt(zmq.SNDHWM, 2 * self.queues.per_client)
        # And requests from one peer waiting in libzmq: its share of the queue, not 1000; past
        # it libzmq stops reading that peer (it waits), so a peer that sends faster than it is
        # served holds at most twice its share of messages in the daemon (pipe and queue).
        self.infer.setsockopt(zmq.RCVHWM, self.queues.per_client)
        ep = self.cfg.control_endpoint
        if ep.startswith("ipc://@"):
            raise ConfigError("control_endpoint %s is an abstract socket, which has no file permissions (any "
                              "local user could connect): use an ipc:// path" % ep)
        if ep.startswith("tcp://"):
            self._curve(self.control, "control")
        iep = self.cfg.infer_endpoint
        if iep.startswith("ipc://@"):
            raise ConfigError("infer_endpoint %s is an abstract socket, which has no file permissions (any local "
                              "user could send): use an ipc:// path, or tcp:// on loopback" % iep)
        if iep.startswith("tcp://"):
            if self.cfg.curve_secret_key or not _loopback(iep):
                self._curve(self.infer, "inference")
            else:
                log.info("inference endpoint %s: any local user may send requests (an ipc:// endpoint with "
                         "infer_group, or CURVE keys, restricts it)", iep)
        self._bind(self.infer, iep)
        self._bind(self.control, ep)
        self.guard.watch(self.infer)
        self.guard.watch(self.control)

    def _socket_file_modes(self, path: str, key: str) -> None:
        """An ipc socket file is 0660: its owner and the group ``key`` names (default: the
        daemon's own group, the unit's Group=) may connect; nobody else."""
        os.chmod(path, 0o660)
        group = getattr(self.cfg, key)
        if group:
            try:
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
            except KeyError:
                raise ConfigError("%s %r: no such group" % (key, group))
            except PermissionError as e:
                raise ConfigError("%s %r: cannot give %s to it (%s): the daemon's user must be a member of "
                                  "that group" % (key, group, path, e.strerror))

    def _bind(self, sock: zmq.Socket, ep: str) -> None:
        old_umask = None
        abstract = ep.startswith("ipc://@")
        if ep.startswith("ipc://") and not abstract:
            path = ep[len("ipc://"):]
            d = os.path.dirname(path) or "."
            try:
                os.makedirs(d, mode=0o750, exist_ok=True)
            except OSError as e:
                raise ConfigError("cannot create the socket directory %s: %s" % (d, e.strerror or e))
            check_socket_dir(path)
            _clear_stale_socket(path)
            old_umask = os.umask(0o117)   # the socket file is born 0660: no window before chmod
        try:
            sock.bind(ep)
        except zmq.ZMQError as e:
            raise ConfigError("cannot bind %s: %s" % (ep, e))
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if ep.startswith("ipc://") and not abstract:
            path = ep[len("ipc://"):]
            if path not in self._bound_paths:
                self._bound_paths.append(path)
            self.guard.paths["control" if sock is getattr(self, "control", None) else "infer"] = path
            self._socket_file_modes(path, "control_group" if sock is getattr(self, "control", None)
                                    else "infer_group")

    def _rebind_if_asked(self, kind: str) -> None:
        """Called by the thread that owns the socket: unbind a tcp endpoint FdGuard closed,
        bind an endpoint it opens again."""
        sock, ep = (self.infer, self.cfg.infer_endpoint) if kind == "infer" else \
            (self.control, self.cfg.control_endpoint)
        if kind in self.guard.unbind:
            self.guard.unbind.discard(kind)
            try:
                sock.unbind(ep)
            except zmq.ZMQError as e:
                log.error("could not stop accepting on %s: %s", ep, e)
            return
        if kind not in self.guard.rebind or self.guard.closed[kind]:
            return
        self.guard.rebind.discard(kind)
        if ep.startswith("ipc://"):
            try:
                sock.unbind(ep)
            except zmq.ZMQError:
                pass
        try:
            self._bind(sock, ep)
        except ConfigError as e:
            log.error("could not bind %s again: %s", ep, e)

    def _curve(self, sock: zmq.Socket, what: str) -> None:
        """CURVE on a tcp endpoint: required for control and for inference off loopback, used
        wherever keys are configured; only clients whose public key is in
        curve_authorized_keys get through."""
        if not (self.cfg.curve_secret_key and self.cfg.curve_authorized_keys):
            raise ConfigError("refusing a tcp:// %s endpoint%s without CURVE: set curve_secret_key "
                              "(a zmq certificate file) and curve_authorized_keys (a folder of client "
                              "public certificates), or use an ipc:// endpoint"
                              % (what, "" if what == "control" else " off loopback"))
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
        if self._auth is None:
            self._auth = ThreadAuthenticator(self.ctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=self.cfg.curve_authorized_keys)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True

    # ------------------------------------------------------------------ inference thread
    def _send(self, sock: zmq.Socket, frames: List[bytes]) -> bool:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:   # the client left (EHOSTUNREACH) or its queue is full
            log.debug("reply dropped: %s", e)
            self.service.count_error("reply_dropped")
            return False

    def _recv_bounded(self, sock: zmq.Socket, limit: Optional[int] = None, zero_copy_last: bool = False,
                      first: Optional[zmq.Frame] = None):
        """One message, frame by frame, without keeping more than a request can hold: a
        message of too many frames or bytes is read to its end and dropped frame by frame.
        ``first``: its first frame, already received. Returns (envelope, body, refusal) with
        ``refusal`` a ProtocolError or None."""
        limit = limit or self.max_bytes
        frames, total, refusal, count = [], 0, None, 0
        while True:
            if first is not None:
                f, first = first, None
            else:
                f = sock.recv(flags=zmq.NOBLOCK, copy=False)
            count += 1
            if refusal is None:
                total += len(f)
                if count > MAX_FRAMES:
                    refusal = "too many frames"
                elif total > limit:
                    refusal = "too many bytes"
                else:
                    frames.append(f)
            if not f.more:
                break
        # The envelope and the header as bytes; an inference tensor as a zero-copy view.
        out = [fr.bytes for fr in frames[:-1]] + [frames[-1].buffer if zero_copy_last else frames[-1].bytes]
        envelope, body = _split(out)
        if zero_copy_last and len(body) == 1:      # the "tensor" was the header: make it bytes
            body = [bytes(body[0])]
        if refusal is not None:
            self.trim_due = True          # the frames libzmq held are free now: give them back
            return envelope, body, ProtocolError("too_large", "message refused (%s: %d frames, over %d bytes; a "
                                                 "request is a JSON header and one tensor of at most %d bytes)"
                                                 % (refusal, count, total if refusal == "too many bytes" else 0,
                                                    limit))
        return envelope, body, None

    def _receive(self, budget: int = RECEIVE_CHUNK, first: Optional[zmq.Frame] = None) -> None:
        """Move up to ``budget`` arrived messages into the per-client queues; refuse what is
        invalid, oversized, or over the client's share of the queue. Bounded, so that one
        flooding client cannot keep the thread from serving (or the watchdog from pinging).
        ``first``: the first frame of the first message, already received."""
        for _ in range(budget):
            if first is None and not self.infer.getsockopt(zmq.EVENTS) & zmq.POLLIN:   # cheaper than zmq.Again
                return
            try:
                envelope, body, refusal = self._recv_bounded(self.infer, zero_copy_last=True, first=first)
            except zmq.Again:
                return
            first = None
            self.heartbeat = time.monotonic()
            try:
                if refusal is not None:
                    raise refusal
                req = decode_infer(body, self.service.input_specs())
            except ProtocolError as e:
                self.service.count_error(e.code)
                self._send(self.infer, envelope + error_reply(peek_id(body[0]) if body else None, e.code, str(e)))
                continue
            if not self.queues.offer(envelope[0], envelope, req):
                self.service.count_error("busy")
                self._send(self.infer, envelope + error_reply(req.id, "busy", "the request queue is full (%d%s); "
                                                              "retry later" % (self.cfg.queue_size,
                                                                               ", %d per client" % self.queues.per_client)))

    def _run_one_batch(self) -> None:
        """infer → reply → learn (→ rehearse, while no request waits): the replies go out before the
        governor learns from the run."""
        envelopes, batch = self.queues.next_batch(self.cfg.batch_requests)
        try:
            results, ran = self.service.infer(batch, emit=lambda replies: [
                self._send(self.infer, env + encode_reply(h, l)) for env, (h, l) in zip(envelopes, replies)])
        except Exception as e:   # an onnxruntime (or governor) failure must not kill the thread
            log.exception("inference failed")
            self.service.count_error("internal")
            msg = "inference failed: %s" % (str(e).splitlines() or ["?"])[0][:300]
            for env, r in zip(envelopes, batch):
                self._send(self.infer, env + error_reply(r.id, "internal", msg))
            return
        for env, (head, logits) in zip(envelopes, results):
            self._send(self.infer, env + encode_reply(head, logits))
        try:
            self.service.learn(ran, len(batch))
        except Exception:
            log.exception("learning from a run failed")
            self.service.count_error("internal")
        try:                         # only while no request waits: it would wait for the run
            self.service.rehearse(ran, waiting=lambda: bool(self.queues)
                                  or bool(self.infer.getsockopt(zmq.EVENTS) & zmq.POLLIN))
        except Exception:
            log.exception("rehearsing a change of level failed")
            self.service.count_error("internal")

    def _inference_loop(self, stop: threading.Event) -> None:
        # Idle, the thread waits inside recv itself (100 ms at most, for the stop flag, the
        # heartbeat and a rebind): one wake-up per request, no poll() before the read.
        self.infer.setsockopt(zmq.RCVTIMEO, 100)
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            self._rebind_if_asked("infer")
            first = None
            if not self.queues:
                try:
                    first = self.infer.recv(copy=False)
                except zmq.Again:
                    continue
            self._receive(first=first)
            if self.queues:
                self._run_one_batch()
        # Stop accepting: what has arrived but was not accepted gets an error, not silence;
        # what was accepted is finished.
        for _ in range(64):
            if not self.infer.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                break
            while self.infer.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                try:
                    envelope, body, _ = self._recv_bounded(self.infer)
                except zmq.Again:
                    break
                self.service.count_error("shutting_down")
                self._send(self.infer, envelope + error_reply(peek_id(body[0]) if body else None, "shutting_down",
                                                              "the daemon is stopping; retry when it is back"))
        while self.queues:
            self.heartbeat = time.monotonic()
            self._run_one_batch()

    def _on_control(self) -> None:
        for _ in range(64):
            try:
                envelope, body, refusal = self._recv_bounded(self.control, CONTROL_MAX_BYTES)
            except zmq.Again:
                return
            rid = None
            try:
                if refusal is not None:
                    raise refusal
                rid, cmd, args = commands.decode(body)
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

    def _give_back_memory_if_due(self) -> None:
        """After a refused oversized message (at most once a second), and at the times the
        memory guard set after dropping connections."""
        now = time.monotonic()
        due = [t for t in self.guard.trims if t <= now]
        if due:
            self.guard.trims = [t for t in self.guard.trims if t > now]
        if due or (self.trim_due and now - self._trimmed_at > 1.0):
            self.trim_due, self._trimmed_at = False, now
            give_back_memory()

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
        self.guard.start()
        while not stop.is_set():
            self._rebind_if_asked("control")
            if poller.poll(timeout_ms):
                self._on_control()
            self.service.retry_dvfs()
            self._give_back_memory_if_due()
            if self.reload_requested.is_set():   # SIGHUP: the same path as the control command
                self.reload_requested.clear()
                try:
                    log.info("reloaded: %s", self.service.control("reload", {}))
                except ProtocolError as e:
                    self.service.count_error(e.code)
                    log.error("%s", e)
            now = time.monotonic()
            # Ping only while the inference thread is alive: a hung inference gets us restarted.
            if wd and now - last_wd >= wd / 2 and now - self.heartbeat < wd:
                self.notifier.watchdog()
                last_wd = now
        self.notifier.stopping()
        self.guard.stop()
        worker_stop.set()
        worker.join(timeout=60)
        log.info("stopped: %d requests served", self.service.served)

    def close(self) -> None:
        """Close the sockets; the replies still queued in libzmq (the last batch's, the
        ``shutting_down`` answers) get CLOSE_LINGER_MS to reach their clients."""
        self.guard.stop()
        for s in ("infer", "control"):
            sock = getattr(self, s, None)
            if sock is not None:
                sock.close(linger=CLOSE_LINGER_MS)
        if self._auth:
            self._auth.stop()
        for path in self._bound_paths:   # only what this process bound: never another daemon's
            if os.path.exists(path):
                os.remove(path)

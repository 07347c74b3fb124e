"""The one sysfs engine every adapter goes through.

* Every path is absolute as on the board (``/sys/...``, ``/proc/...``) and goes through
  :meth:`Sysfs.path`, which prepends the root given at construction, so adapters run
  unchanged against a fake tree in tests and against ``/`` on a board.
* Every write is one ``write()`` on an ``os.open`` descriptor, so the kernel's verdict
  (EINVAL, EBUSY, EACCES) surfaces at the write, not at a later ``close()``.
* Failures become typed errors that name the path and what to do about them.
* Every write is bounded in time (``timeout_s``): it runs in the engine's I/O thread, and
  one that does not return in time (a driver stuck in a write) raises :class:`TimedOut` in
  the caller, which goes on; the stuck thread is left to finish and a fresh one takes the
  next write. So a pin or a decision never waits on the kernel for longer, and the watchdog
  keeps being pinged. Reads stay inline: a sysfs attribute's read is answered from the
  driver's state, and a hop to the I/O thread would cost ~60 µs on every energy-counter read.
"""
from __future__ import annotations

import errno
import glob as _glob
import os
import queue
import threading
from typing import Any, Callable, List, Optional


class PlatformError(Exception):
    """Base of the platform layer's errors; the message names the path and the remedy."""


class NotPermitted(PlatformError):
    """EACCES/EPERM/EROFS: not root, or a read-only sysfs."""


class KernelRejected(PlatformError):
    """EINVAL/EBUSY: the kernel refused the value (range, order, governor)."""


class Vanished(PlatformError):
    """The file disappeared (hotplug, module unload, governor switch)."""


class BadValue(PlatformError):
    """A sysfs file holds something that is not what its layout says."""


class TimedOut(PlatformError):
    """A write that did not return within the engine's timeout."""


IO_TIMEOUT_S = 2.0


class _IoThread:
    """One thread that does the engine's file I/O, so that a call can be given up on."""

    def __init__(self):
        self.jobs: "queue.Queue" = queue.Queue()
        self.stuck = False
        threading.Thread(target=self._run, name="dnnscale-sysfs-io", daemon=True).start()

    def _run(self) -> None:
        while True:
            fn, box, done = self.jobs.get()
            try:
                box.append((True, fn()))
            except BaseException as e:       # handed to the caller
                box.append((False, e))
            done.set()
            if self.stuck:                   # given up on: a fresh thread serves the others
                return


def _remedy(e: OSError, path: str, value: Optional[str]) -> PlatformError:
    what = "writing %r to %s" % (value, path) if value is not None else "reading %s" % path
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return NotPermitted("%s: %s. Run dnnscale as root, or install the udev/tmpfiles rules "
                            "from systemd/ (see docs/deployment.md)" % (what, os.strerror(e.errno)))
    if e.errno in (errno.EINVAL, errno.EBUSY):
        return KernelRejected("%s: the kernel refused it (%s)" % (what, os.strerror(e.errno)))
    if e.errno == errno.ENOENT:
        return Vanished("%s: the file is gone" % what)
    return PlatformError("%s: %s" % (what, os.strerror(e.errno or 0) or e))


class Sysfs:
    def __init__(self, root: str = "/", timeout_s: float = IO_TIMEOUT_S):
        self.root = os.path.abspath(root)
        self.timeout_s = timeout_s
        self._io: Optional[_IoThread] = None
        self._io_lock = threading.Lock()

    def bounded(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()`` in the I/O thread, given up on after ``timeout_s`` (TimedOut naming ``what``)."""
        with self._io_lock:
            if self._io is None or self._io.stuck:
                self._io = _IoThread()
            io = self._io
            box: list = []
            done = threading.Event()
            io.jobs.put((fn, box, done))
            if not done.wait(self.timeout_s):
                io.stuck = True
                raise TimedOut("%s did not return within %g s (a driver stuck, or not a sysfs file)"
                               % (what, self.timeout_s))
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def path(self, p: str) -> str:
        """Board path → path under the root. ``p`` must be absolute (``/sys/...``)."""
        if not p.startswith("/"):
            raise ValueError("sysfs paths are absolute, got %r" % p)
        return os.path.join(self.root, p.lstrip("/")) if self.root != "/" else p

    def unroot(self, real: str) -> str:
        """Path under the root → board path."""
        if self.root == "/":
            return real
        return "/" + os.path.relpath(real, self.root)

    def exists(self, p: str) -> bool:
        return os.path.exists(self.path(p))

    def isdir(self, p: str) -> bool:
        return os.path.isdir(self.path(p))

    def glob(self, pattern: str) -> List[str]:
        """Board paths matching a board-path pattern, sorted naturally (policy4 < policy10)."""
        hits = [self.unroot(h) for h in _glob.glob(self.path(pattern))]
        return sorted(hits, key=_natural)

    def realpath(self, p: str) -> str:
        return self.unroot(os.path.realpath(self.path(p)))

    def user(self) -> str:
        """Who reads and writes through this engine (for messages)."""
        import getpass
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return str(os.getuid())

    def can(self, p: str, write: bool = False) -> bool:
        """Whether this process may read (or write) ``p``: the kernel's own answer (access(2))."""
        return os.access(self.path(p), os.W_OK if write else os.R_OK)

    def read(self, p: str) -> str:
        try:
            with open(self.path(p), "rb") as f:
                return f.read().decode("utf-8", "replace").replace("\0", "").strip()
        except OSError as e:
            raise _remedy(e, p, None) from None

    def read_int(self, p: str) -> int:
        s = self.read(p)
        try:
            return int(s.split()[0])
        except (ValueError, IndexError):
            raise BadValue("%s holds %r, expected an integer" % (p, s)) from None

    def read_float(self, p: str) -> float:
        s = self.read(p)
        try:
            return float(s.split()[0])
        except (ValueError, IndexError):
            raise BadValue("%s holds %r, expected a number" % (p, s)) from None

    def read_ints(self, p: str) -> List[int]:
        """A space-separated list (cpufreq lists carry a trailing space; devfreq's do not)."""
        s = self.read(p)
        try:
            return [int(v) for v in s.split()]
        except ValueError:
            raise BadValue("%s holds %r, expected integers" % (p, s)) from None

    def read_cpulist(self, p: str) -> List[int]:
        """``0-3``, ``4 5 6 7`` or ``0-1,4`` → [0, 1, ...]."""
        s = self.read(p).replace(",", " ")
        cpus: List[int] = []
        try:
            for part in s.split():
                if "-" in part:
                    a, b = part.split("-")
                    cpus.extend(range(int(a), int(b) + 1))
                else:
                    cpus.append(int(part))
        except ValueError:
            raise BadValue("%s holds %r, expected a CPU list" % (p, s)) from None
        return cpus

    def write(self, p: str, value) -> None:
        self.bounded(lambda: self.store(p, value), "writing %r to %s" % (str(value), p))

    def store(self, p: str, value) -> None:
        """The write itself (in the I/O thread): one ``write()`` on an ``os.open`` descriptor."""
        data = ("%s\n" % value).encode()
        try:
            fd = os.open(self.path(p), os.O_WRONLY | os.O_TRUNC)
        except OSError as e:
            raise _remedy(e, p, str(value)) from None
        try:
            os.write(fd, data)
        except OSError as e:
            raise _remedy(e, p, str(value)) from None
        finally:
            os.close(fd)


def _natural(s: str):
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]

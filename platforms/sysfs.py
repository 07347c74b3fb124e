"""The one sysfs engine every adapter goes through.

* Every path is absolute as on the board (``/sys/...``, ``/proc/...``) and goes through
  :meth:`Sysfs.path`, which prepends the root given at construction, so adapters run
  unchanged against a fake tree in tests and against ``/`` on a board.
* Every write is one ``write()`` on an ``os.open`` descriptor, so the kernel's verdict
  (EINVAL, EBUSY, EACCES) surfaces at the write, not at a later ``close()``.
* Failures become typed errors that name the path and what to do about them.
"""
from __future__ import annotations

import errno
import glob as _glob
import os
from typing import List, Optional


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
    def __init__(self, root: str = "/"):
        self.root = os.path.abspath(root)

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

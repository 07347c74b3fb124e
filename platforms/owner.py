"""One owner per board and per state directory: an exclusive flock(2) on the board's own
cpufreq directory (``/sys/devices/system/cpu`` under the sysfs root) and on the state
directory, held for as long as a daemon or a profile may write the board or its crash record.
Every dnnscale on the board contends for the same directory, whatever its user, state
directory or sockets; the kernel drops a lock when its holder dies (kill -9 included), so a
crash restore runs only once the previous owner is gone.
"""
from __future__ import annotations

import fcntl
import os
from typing import List, Optional

from .sysfs import PlatformError

BOARD_DIR = "/sys/devices/system/cpu"


class Busy(PlatformError):
    """Another process owns the board or the state directory; the message names it."""


def _holder(fd: int) -> Optional[str]:
    """The process holding the flock on ``fd``'s inode, from /proc/locks: "pid N (cmdline)"."""
    st = os.fstat(fd)
    ident = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == ident:
            pid = parts[4]
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            except OSError:
                cmd = ""
            return "pid %s%s" % (pid, " (%s)" % cmd[:160] if cmd else "")
    return None


class Ownership:
    """The locks one run holds: :meth:`claim` each directory, :meth:`release` them all."""

    def __init__(self) -> None:
        self._fds: List[int] = []

    def claim(self, path: str, what: str, doing: str) -> None:
        """Lock the directory ``path`` (``what`` names it in messages) for ``doing`` (e.g.
        "dnnscale serve"), or raise Busy naming the owner. A missing directory has nothing
        to lock (a generic machine without cpufreq)."""
        if not os.path.isdir(path):
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "another process"
            os.close(fd)
            raise Busy("%s refused: %s is in use by another dnnscale, %s; stop it first (sudo systemctl stop "
                       "dnnscale), or talk to it (dnnscale status)" % (doing, what, holder)) from None
        except OSError as e:
            os.close(fd)
            raise PlatformError("cannot lock %s: %s" % (path, e.strerror or e)) from None
        self._fds.append(fd)

    def release(self) -> None:
        for fd in self._fds:          # closing the descriptor drops its flock
            os.close(fd)
        self._fds = []

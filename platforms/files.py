"""Writing the daemon's own files (the crash record, the budget, the profile) so that
nothing half-written is ever left, and nothing is written through a link someone planted."""
from __future__ import annotations

import os


def write_atomic(path: str, data: bytes) -> None:
    """Write ``path`` atomically: a temporary file created exclusively (``O_EXCL``, never
    following a link: a planted ``.tmp`` symlink is removed, not written through), fsync,
    rename over ``path``. On failure the temporary file goes and ``path`` is as it was; the
    OSError is raised."""
    tmp = path + ".tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:            # left by a crash, or planted: unlink never follows a link
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

"""The daemon's own files (the crash record, the budget, the profile): written so that
nothing half-written is ever left and nothing goes through a link someone planted; read only
from regular files of a bounded size, so that a FIFO in their place cannot hang a start."""
from __future__ import annotations

import json
import os
from typing import Any


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


def read_regular(path: str, limit: int = 1 << 20) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes: a FIFO, a
    device or a link planted in its place is refused (OSError) without blocking on it."""
    import errno
    import stat
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if st.st_size > limit:
            raise OSError(errno.EFBIG, "over %d bytes" % limit, path)
        chunks, left = [], limit + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 16))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_json(path: str, data: Any, indent=None) -> None:
    """``data`` as JSON, written with :func:`write_atomic`."""
    write_atomic(path, json.dumps(data, indent=indent).encode())


def read_json(path: str) -> Any:
    """The JSON in ``path`` (:func:`read_regular`); OSError where it is not a regular file
    that can be read, ValueError where it is not JSON (bad UTF-8 and deep nesting included)."""
    try:
        return json.loads(read_regular(path).decode("utf-8"))
    except (RecursionError, UnicodeDecodeError) as e:
        raise ValueError("%s: %s" % (path, type(e).__name__)) from None

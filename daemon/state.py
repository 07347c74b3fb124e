"""The state directory: what survives a restart (the budget, the profile), written so that a
full or read-only disk never leaves a half-written or empty file behind."""
from __future__ import annotations

import json
import os
from typing import Any

from platforms.files import read_regular, write_atomic

from .config import ConfigError


def write_json(path: str, data: Any, indent=None) -> None:
    """Write ``path`` atomically (platforms.files.write_atomic); on failure raise the OSError,
    leaving the old file as it was."""
    write_atomic(path, json.dumps(data, indent=indent).encode())


def read_json(path: str) -> Any:
    """A state file's JSON: a regular file only (a FIFO in its place would hang the start);
    OSError or ValueError (RecursionError and bad UTF-8 included) when it is not."""
    try:
        return json.loads(read_regular(path).decode("utf-8"))
    except (RecursionError, UnicodeDecodeError) as e:
        raise ValueError("%s: %s" % (path, type(e).__name__)) from None


def check_writable(state_dir: str) -> None:
    """Refuse to start, with one line, where the state directory cannot be created or written
    (read-only, full, wrong owner): the daemon must save the board's settings before it
    changes them."""
    try:
        os.makedirs(state_dir, exist_ok=True)
        write_json(os.path.join(state_dir, ".write-test"), {"ok": True})
        os.remove(os.path.join(state_dir, ".write-test"))
    except OSError as e:
        raise ConfigError("the state directory %s is not writable (%s): dnnscale saves the board's settings "
                          "there before it changes them; fix its permissions or free space, or set state_dir"
                          % (state_dir, e.strerror or e)) from None

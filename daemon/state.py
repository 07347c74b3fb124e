"""The state directory: what survives a restart (the budget, the profile), written so that a
full or read-only disk never leaves a half-written or empty file behind."""
from __future__ import annotations

import os

# Atomic writes through no planted link, reads of regular files only (a FIFO hung the start).
from platforms.files import read_json, write_json

from .config import ConfigError

__all__ = ["read_json", "write_json", "check_writable"]


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

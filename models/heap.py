"""Giving the heap's free pages back to the kernel."""
from __future__ import annotations

import ctypes


def give_back_memory() -> None:
    """Return the heap's free pages to the kernel (glibc's malloc_trim): after work that
    allocated and freed tens of megabytes (a refused message, packing a set), the resident
    size would otherwise stay where it peaked."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):    # not glibc
        pass

"""Platform adapters: what the board is and how to read and set it.

``detect(root)`` probes the boards in a fixed order (Odroid XU3, Jetson Nano, generic
Linux); the first that matches wins, and generic always matches. ``create(name, ...)``
picks one by name, including the simulated boards.
"""
from __future__ import annotations

from typing import Callable, Optional

from .adapter import SysfsPlatform
from .boards import BY_NAME, PROBE_ORDER
from .discover import board_matches
from .model import DvfsOff, Platform
from .sysfs import BadValue, KernelRejected, NotPermitted, PlatformError, Sysfs, Vanished

SIMULATED = ("sim-odroid-xu3", "sim-jetson-nano")
NAMES = tuple(BY_NAME) + SIMULATED

__all__ = ["detect", "create", "NAMES", "Platform", "DvfsOff", "SysfsPlatform", "PlatformError", "NotPermitted",
           "KernelRejected", "Vanished", "BadValue"]


def detect(root: str = "/", state_dir: Optional[str] = None, sysfs: Callable[[str], Sysfs] = Sysfs,
           settle: bool = True) -> SysfsPlatform:
    fs = sysfs(root)
    spec = next(s for s in PROBE_ORDER if not s.compatible and not s.hardware or board_matches(fs, s))
    return SysfsPlatform(spec, root, state_dir, fs=fs, settle=settle)


def create(name: Optional[str] = None, root: str = "/", state_dir: Optional[str] = None,
           sysfs: Callable[[str], Sysfs] = Sysfs, settle: bool = True) -> Platform:
    """The adapter called ``name`` (one of NAMES), or the detected one when ``name`` is None.
    ``sysfs``: the engine's factory (a test's kernel double); ``settle``: whether to wait for
    power sensors to refresh after a frequency change (a fake tree's never do)."""
    if name is None:
        return detect(root, state_dir, sysfs, settle)
    if name in SIMULATED:
        from .sim import SimBoard
        return SimBoard(name)
    if name not in BY_NAME:
        raise ValueError("unknown platform %r (choose from %s)" % (name, ", ".join(NAMES)))
    return SysfsPlatform(BY_NAME[name], root, state_dir, fs=sysfs(root), settle=settle)

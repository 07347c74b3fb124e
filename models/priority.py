"""Work that must not take CPU time from serving: run in a helper thread at the lowest
priority (nice 19; Linux keeps a nice value per thread). The helper ends with the work, so
no thread is ever given its priority back (which would need CAP_SYS_NICE); it must not
create threads, which would inherit nice 19 (onnxruntime's pools: never build a session here)."""
from __future__ import annotations

import os
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def at_low_priority(fn: Callable[[], T]) -> T:
    """``fn()`` in a helper thread at nice 19; its result, or its exception raised here."""
    out = {}

    def body() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError):     # not Linux, or refused: run at the same priority
            pass
        try:
            out["value"] = fn()
        except BaseException as e:            # re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=body, name="dnnscale-low-priority", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]

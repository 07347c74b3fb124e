"""sd_notify(3) in pure Python: READY=1, WATCHDOG=1, STATUS=..., STOPPING=1."""
from __future__ import annotations

import os
import socket
from typing import Optional


class Notifier:
    def __init__(self, env=os.environ):
        addr = env.get("NOTIFY_SOCKET", "")
        self.addr: Optional[str] = ("\0" + addr[1:]) if addr.startswith("@") else (addr or None)
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        ok = usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_s: Optional[float] = int(usec) / 1e6 if ok else None

    def send(self, *lines: str) -> bool:
        if not self.addr:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self.addr)
                s.sendall("\n".join(lines).encode())
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", "STATUS=" + status)

    def status(self, status: str) -> bool:
        return self.send("STATUS=" + status)

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

"""Start the real ``dnnscale serve`` as a subprocess for tests and benchmarks."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dnnscale_cmd() -> List[str]:
    exe = shutil.which("dnnscale")
    return [exe] if exe else [sys.executable, "-m", "daemon.cli"]


def kernel_cmd(uid: int = 0) -> List[str]:
    """The dnnscale CLI with the kernel double (tests/fixtures/kernel.py) as its sysfs engine."""
    return [sys.executable, "-m", "tests.fixtures.kernel", "--uid", str(uid)]


class Daemon:
    """``dnnscale serve`` on ipc endpoints in ``workdir``, with a NOTIFY_SOCKET to listen on."""

    def __init__(self, workdir: str, model, sysfs_root: Optional[str] = None, platform: Optional[str] = None,
                 extra: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None,
                 config: Optional[str] = None, kernel_uid: Optional[int] = None, preexec=None,
                 source: str = ROOT, threads: Optional[int] = 1, infer_ep: Optional[str] = None):
        """``kernel_uid``: run through tests.fixtures.kernel, so that the tree answers writes
        by the kernel's rules, as the user ``kernel_uid`` (0: root; else modes count).
        ``source``: the checkout to run the daemon from (benchmarks compare revisions)."""
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.infer_ep = infer_ep or "ipc://" + os.path.join(workdir, "infer.sock")
        self.control_ep = "ipc://" + os.path.join(workdir, "control.sock")
        self.state = os.path.join(workdir, "state")
        self.notify_path = os.path.join(workdir, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if os.path.exists(self.notify_path):
            os.remove(self.notify_path)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.2)
        self.messages: List[str] = []
        cmd = dnnscale_cmd() if kernel_uid is None else kernel_cmd(kernel_uid)
        if source != ROOT:
            cmd = [sys.executable, "-m", "daemon.cli"]
        models = [model] if isinstance(model, str) else list(model)     # several: --model repeated
        args = cmd + ["serve"] + [a for m in models for a in ("--model", m)] + ["--state-dir", self.state,
                                 "--infer-endpoint", self.infer_ep, "--control-endpoint", self.control_ep]
        if threads is not None:
            args += ["--threads", str(threads)]
        if sysfs_root:
            args += ["--sysfs-root", sysfs_root]
        if platform:
            args += ["--platform", platform]
        if config is None:   # isolate from /etc/dnnscale and ~/.config: an empty config file
            config = os.path.join(workdir, "empty.yaml")
            open(config, "w").close()
        args += ["--config", config] + (extra or [])
        e = dict(os.environ, NOTIFY_SOCKET=self.notify_path, PYTHONPATH=source)
        e.update(env or {})
        self.log_path = os.path.join(workdir, "serve.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=source, env=e, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=preexec)

    def read_notify(self, until: str, timeout: float = 60.0) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            if any(until in m for m in self.messages):
                return True
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except socket.timeout:
                if self.proc.poll() is not None:
                    return False
        return any(until in m for m in self.messages)

    def wait_ready(self, timeout: float = 120.0) -> None:
        if not self.read_notify("READY=1", timeout):
            raise RuntimeError("daemon did not become ready:\n" + self.output())

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def client(self, timeout_s: float = 10.0):
        from daemon.client import Client
        return Client(self.infer_ep, self.control_ep, timeout_s=timeout_s)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.settimeout(0.05)
        while True:   # what the daemon sent while stopping
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except OSError:
                break
        self.notify.close()
        self.log.close()
        return self.proc.returncode

"""``ModelSet``: the runtime loader of a model set (numpy + onnxruntime, no torch).

Every level's session is created at load, so switching level costs no session creation.
Weights: each level's ONNX file points into the one shared ``weights.bin`` (external data),
so the set holds one copy of the weights on disk and in the page cache. (On x86,
onnxruntime's NCHWc layout pass still keeps a re-laid-out copy of the conv weights per
session; docs/benchmarks.md has the measured memory.)

Threads: where the installed onnxruntime has the process-wide intra-op pool
(``set_global_thread_pool_sizes``, onnxruntime >= 1.23 in Python), all sessions share it:
with a pool per session, the previous session's workers keep spinning after a switch and
the next inference runs at one-thread speed (docs/model-set.md, "Thread pools"). Older
onnxruntime builds (the boards' 1.11-1.21) get a pool per session of the same size with
spinning turned off, so an idle session's workers sleep instead of holding the cores.
``DNNSCALE_ORT_POOL=per-session`` forces that fallback (tests, benchmarks);
``DNNSCALE_ORT_SPIN=1`` turns spinning back on in it (python -m bench.pools compares them).
"""
from __future__ import annotations

import os
import threading
from typing import Dict, List, Optional

import numpy as np
import onnxruntime as ort

from . import manifest as mf
from .manifest import ModelSetError

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

_env_lock = threading.Lock()
_env_threads: Optional[int] = None


def pool_mode() -> str:
    """``global`` (one process-wide intra-op pool) or ``per-session`` (the fallback)."""
    if os.environ.get("DNNSCALE_ORT_POOL") == "per-session":
        return "per-session"
    try:
        from onnxruntime.capi import _pybind_state
    except ImportError:
        return "per-session"
    return "global" if hasattr(_pybind_state, "set_global_thread_pool_sizes") else "per-session"


def _ensure_pool(threads: int) -> int:
    """Fix the process's intra-op thread count once (creating the global pool where there is
    one); later calls reuse it."""
    global _env_threads
    with _env_lock:
        if _env_threads is None:
            if pool_mode() == "global":
                from onnxruntime.capi import _pybind_state
                _pybind_state.set_global_thread_pool_sizes(threads, 1)
            _env_threads = threads
        return _env_threads


def session_options(threads: Optional[int] = None) -> ort.SessionOptions:
    """Options for any onnxruntime session in a process that uses ModelSet: once the global
    thread pool exists, onnxruntime refuses sessions with a pool of their own."""
    n = _ensure_pool(threads or len(os.sched_getaffinity(0)))
    so = ort.SessionOptions()
    if pool_mode() == "global":
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if os.environ.get("DNNSCALE_ORT_SPIN") == "1" else "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def gpu_provider() -> Optional[str]:
    """The GPU execution provider the installed onnxruntime offers, or None."""
    have = ort.get_available_providers()
    return next((p for p in GPU_PROVIDERS if p in have), None)


class ModelSet:
    """A loaded model set; ``run(k, x)`` serves every level from memory."""

    def __init__(self, model_dir: str, manifest: Dict, sessions: Dict[str, List[ort.InferenceSession]],
                 threads: int):
        self.dir = model_dir
        self.manifest = manifest
        self._sessions = sessions
        self.threads = threads
        self.pool = pool_mode()
        inp = manifest["input"]
        self.input_shape = tuple(inp["shape"])          # C, H, W
        self._mean = np.asarray(inp["mean"], np.float32)
        self._std = np.asarray(inp["std"], np.float32)
        self.classes: List[str] = list(inp["classes"])

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model_dir: str, threads: Optional[int] = None, gpu: bool = False,
             verify: bool = True) -> "ModelSet":
        """Load and verify a model set. ``threads``: onnxruntime intra-op threads (default:
        all CPUs; fixed for the process once the first set is loaded). ``gpu``: also create
        sessions on the GPU execution provider if the installed onnxruntime has one."""
        m = mf.read(model_dir, verify=verify)
        threads = _ensure_pool(threads or len(os.sched_getaffinity(0)))
        targets = {"cpu": ["CPUExecutionProvider"]}
        prov = gpu_provider() if gpu else None
        if prov:
            targets["gpu"] = [prov, "CPUExecutionProvider"]
        sessions: Dict[str, List[ort.InferenceSession]] = {}
        for target, providers in targets.items():
            sessions[target] = []
            for lv in m["levels"]:
                path = os.path.join(model_dir, lv["file"])
                try:
                    sessions[target].append(ort.InferenceSession(path, session_options(threads), providers=providers))
                except Exception as e:  # onnxruntime raises its own exception types
                    raise ModelSetError("cannot load %s: %s" % (path, str(e).splitlines()[0])) from None
        want_in, n_classes = [m["input"]["shape"]], len(m["input"]["classes"])
        for sess in sessions["cpu"]:
            ishape, oshape = sess.get_inputs()[0].shape, sess.get_outputs()[0].shape
            if [list(ishape[1:])] != want_in and all(isinstance(d, int) for d in ishape[1:]):
                raise ModelSetError("%s: the ONNX input is %s, the manifest says [N, %s]"
                                    % (model_dir, ishape, ", ".join(map(str, want_in[0]))))
            if len(oshape) == 2 and isinstance(oshape[1], int) and oshape[1] != n_classes:
                raise ModelSetError("%s: the ONNX models give %d logits, the manifest names %d classes"
                                    % (model_dir, oshape[1], n_classes))
        ms = cls(model_dir, m, sessions, threads)
        ms.warmup()
        return ms

    def warmup(self, runs: int = 3) -> None:
        x = np.zeros((1,) + self.input_shape, np.float32)
        for target in self._sessions:
            for k in range(1, self.groups + 1):
                for _ in range(runs):
                    self.run(k, x, target)

    # ------------------------------------------------------------------ properties
    @property
    def groups(self) -> int:
        """Number of levels (k = 1..groups; for a portfolio, its variants, smallest first)."""
        return len(self.manifest["levels"])

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def targets(self) -> List[str]:
        """Execution targets with sessions: ``cpu`` and, when loaded with a GPU provider, ``gpu``."""
        return list(self._sessions)

    def level(self, k: int) -> Dict:
        self._check_level(k)
        return self.manifest["levels"][k - 1]

    # ------------------------------------------------------------------ inference
    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC images → normalised float32 NCHW, per the manifest's mean/std."""
        c, h, w = self.input_shape
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                or images.shape[1:] != (h, w, c):
            raise ModelSetError("images must be uint8 [N, %d, %d, %d] (NHWC), got %s %s"
                                % (h, w, c, getattr(images, "dtype", type(images).__name__),
                                   list(getattr(images, "shape", []))))
        x = images.astype(np.float32) * np.float32(1 / 255.0)
        x -= self._mean
        x /= self._std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def _check_level(self, k) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.groups:
            raise ModelSetError("level must be an integer in 1..%d, got %r" % (self.groups, k))

    def run(self, k: int, x: np.ndarray, target: Optional[str] = None) -> np.ndarray:
        """Logits [N, classes] of level k for normalised float32 NCHW input ``x``.

        ``target``: ``"gpu"`` runs on the GPU sessions; any other name (or None) runs on
        the CPU sessions (which CPUs is the platform's affinity, not the model set's)."""
        self._check_level(k)
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 \
                or x.shape[1:] != self.input_shape or x.shape[0] < 1:
            raise ModelSetError("input must be float32 [N, %s] (NCHW), got %s %s"
                                % (", ".join(map(str, self.input_shape)),
                                   getattr(x, "dtype", type(x).__name__), list(getattr(x, "shape", []))))
        device = "gpu" if target == "gpu" else "cpu"
        if device not in self._sessions:
            raise ModelSetError("target gpu is not available: onnxruntime has no GPU execution "
                                "provider here (installed: %s)" % ", ".join(ort.get_available_providers()))
        sess = self._sessions[device][k - 1]
        return sess.run(None, {"input": np.ascontiguousarray(x)})[0]

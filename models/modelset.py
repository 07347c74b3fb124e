"""``ModelSet``: the runtime loader of a model set (numpy + onnxruntime, no torch).

Every level's session is created at load, so switching level costs no session creation.
Weights: each level's ONNX file points into the one shared ``weights.bin`` (external data),
so the set holds one copy of the weights on disk. The CPU sessions load the set *packed*
(models/packed.py): every graph optimised once for this CPU, every tensor once in one file
that all of them map, so a set in memory costs about its weight file, whatever the number of
sessions (docs/model-set.md, "Memory").

Threads: a *lane* is a CPU target the platform pins the process to ("cpu", a cluster,
"cpu:1"). Each lane runs sessions with exactly as many intra-op threads as it has CPUs (one
session set per distinct size; lanes of one size share it), each session with its own pool
whose workers spin only inside a run (``session.force_spinning_stop``, onnxruntime >= 1.13;
older builds get spinning off): an idle session's workers sleep, so a switch of level or of
lane finds the cores free, and nothing spins between requests while ZeroMQ's threads need
the CPU (docs/model-set.md, "Thread pools"; ``python -m bench.pools`` measures the modes).
``DNNSCALE_ORT_SPIN=0|1|run`` and ``DNNSCALE_ORT_POOL=global`` (onnxruntime >= 1.23, one
lane size only) select the other modes for that benchmark; ``DNNSCALE_PACK=0`` loads sets
unpacked, as before packing (``python -m bench.multi --memory`` measures both).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnxruntime as ort

from . import manifest as mf
from .columns import ColumnLane, features_of, run_lanes
from .manifest import ModelSetError
from .packed import Pack, session_files
from .pools import Pools
from .priority import at_low_priority

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

def _version() -> tuple:
    try:
        return tuple(int(p) for p in ort.__version__.split(".")[:2])
    except ValueError:
        return (0, 0)


def spin_mode() -> str:
    """How the workers of a session's pool wait: ``run`` (spin inside a run only), ``off``
    (never spin) or ``on`` (onnxruntime's default: also between runs)."""
    env = os.environ.get("DNNSCALE_ORT_SPIN")
    if env in ("0", "1", "run"):
        return {"0": "off", "1": "on", "run": "run"}[env]
    return "run" if _version() >= (1, 13) else "off"


def _global_pool_available() -> bool:
    try:
        from onnxruntime.capi import _pybind_state
    except ImportError:
        return False
    return hasattr(_pybind_state, "set_global_thread_pool_sizes")


_global_lock = threading.Lock()
_global_threads: Optional[int] = None


def _use_global_pool(threads: int) -> None:
    """Benchmark-only mode (DNNSCALE_ORT_POOL=global): one process-wide pool, sized once."""
    global _global_threads
    with _global_lock:
        if _global_threads is None:
            from onnxruntime.capi import _pybind_state
            _pybind_state.set_global_thread_pool_sizes(threads, 1)
            _global_threads = threads
        elif _global_threads != threads:
            raise ModelSetError("DNNSCALE_ORT_POOL=global: this process's pool has %d threads, not %d"
                                % (_global_threads, threads))


def pool_mode() -> str:
    """``per-session`` (the default) or ``global`` (DNNSCALE_ORT_POOL=global, where it exists)."""
    return "global" if os.environ.get("DNNSCALE_ORT_POOL") == "global" and _global_pool_available() \
        else "per-session"


def session_options(threads: Optional[int] = None, optimised: bool = False) -> ort.SessionOptions:
    """The options of every onnxruntime session ModelSet creates: ``threads`` intra-op
    threads (default: all CPUs this process may use) in a pool of the session's own;
    ``optimised``: the graph is a pack's, already optimised (no pass again)."""
    n = threads or len(os.sched_getaffinity(0))
    so = ort.SessionOptions()
    if pool_mode() == "global":
        _use_global_pool(n)
        so.use_per_session_threads = False
    else:
        spin = spin_mode()
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin == "off" else "1")
        if spin == "run":
            so.add_session_config_entry("session.force_spinning_stop", "1")
    # No memory arena: an arena keeps the activations of the largest batch its session ran
    # for good (32 MB for k4 at batch 64), and a set has a session per level, lane size,
    # column range and head: a client's batch-64 requests at every level left the daemon
    # 250 MB over its floor, which the memory guard (docs/reliability.md) took for a held
    # message. Without it the latency is the same at batch 1 and 64 (measured on this VM:
    # k4 p50 1.35-1.39 ms either way on one thread, batch 64 86-94 ms).
    so.enable_cpu_mem_arena = False
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimised \
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def gpu_provider() -> Optional[str]:
    """The GPU execution provider the installed onnxruntime offers, or None."""
    have = ort.get_available_providers()
    return next((p for p in GPU_PROVIDERS if p in have), None)


def files_on_disk(model_dir: str) -> Optional[Dict[str, Tuple[int, int, int, int, int]]]:
    """The identity of every file in the folder (device, inode, size, mtime, ctime), or None
    where it cannot be listed."""
    try:
        out = {}
        for name in sorted(os.listdir(model_dir)):
            st = os.stat(os.path.join(model_dir, name))
            out[name] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return out
    except OSError:
        return None


class ModelSet:
    """A loaded model set; ``run(k, x, target)`` serves every level from memory."""

    def __init__(self, model_dir: str, manifest: Dict, cpu: Dict[int, List[ort.InferenceSession]],
                 gpu: Optional[List[ort.InferenceSession]], threads: int, lanes: Dict[str, int],
                 pack: Optional[Pack] = None, packing: str = ""):
        self.dir = model_dir
        self._pack = pack
        self.packing = packing            # how the CPU sessions hold the weights (status)
        self.manifest = manifest
        self._cpu = cpu                   # intra-op threads → one session per level
        self._gpu = gpu
        self.threads = threads            # the size of any CPU target not named in ``lanes``
        self.lanes = dict(lanes)          # CPU target → its sessions' intra-op threads
        mode = pool_mode()
        self.pool = mode if mode == "global" else "per-session, spinning %s" % (
            {"run": "in runs only", "off": "off", "on": "on"}[spin_mode()])
        inp = manifest["input"]
        self.input_shape = tuple(inp["shape"])          # C, H, W
        mean, std = np.asarray(inp["mean"], np.float32), np.asarray(inp["std"], np.float32)
        # uint8 value v of channel c → (v / 255 - mean[c]) / std[c]: one gather per image
        self._lut = ((np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0) - mean) / std).astype(np.float32)
        self._channel = np.arange(len(mean))[:, None, None]
        self.classes: List[str] = list(inp["classes"])
        self.on_disk = None               # the files as verified (see load, same_as)
        self._lanes: Dict[Tuple, ColumnLane] = {}   # a split's lanes, made on first use
        self._heads: Dict[int, ort.InferenceSession] = {}
        self._anytime: Dict[Tuple[int, bool], List] = {}   # (threads, gpu) → anytime steps
        try:
            self.pools = Pools()          # the CPU sessions' worker threads (not a pinned lane's)
        except ValueError as e:           # DNNSCALE_ORT_WORKERS
            raise ModelSetError(str(e)) from None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model_dir: str, threads: Optional[int] = None, gpu: bool = False,
             verify: bool = True, lanes: Optional[Dict[str, int]] = None,
             low_priority: bool = False, pack: Optional[bool] = None) -> "ModelSet":
        """Load and verify a model set. ``threads``: onnxruntime intra-op threads (default:
        all CPUs this process may use). ``lanes``: CPU targets that run with another thread
        count (``{"cpu:1": 1}``); one session per level is created for each distinct count.
        ``gpu``: also create sessions on the GPU execution provider if the installed
        onnxruntime has one. ``low_priority``: hash the files, pack them and warm the
        sessions up at nice 19 (a reload beside a set that serves; the sessions are built at
        the caller's priority, which their pools' threads inherit). ``pack``: the CPU sessions
        share one optimised copy of the weights (models/packed.py; default: yes, but where
        ``DNNSCALE_PACK=0``); where packing fails the set loads unpacked and ``packing`` says why."""
        before = files_on_disk(model_dir)
        m = mf.read(model_dir, verify=verify, low_priority=low_priority)
        threads = threads or len(os.sched_getaffinity(0))
        lanes = dict(lanes or {})
        for name, n in lanes.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ModelSetError("lane %s: threads must be a positive integer, got %r" % (name, n))
        sizes = sorted({threads} | set(lanes.values()))
        if pool_mode() == "global" and len(sizes) > 1:
            raise ModelSetError("DNNSCALE_ORT_POOL=global has one pool size; these lanes need %s" % sizes)
        prov = gpu_provider() if gpu else None
        packed, packing = None, "off"
        if pack if pack is not None else os.environ.get("DNNSCALE_PACK") != "0":
            try:
                make = lambda: Pack(model_dir, session_files(m))   # noqa: E731
                packed = at_low_priority(make) if low_priority else make()
                packing = "one optimised copy of the weights, %d bytes, for every CPU session" % packed.size
            except Exception as e:   # onnxruntime's and the file system's own types
                packing = "off: %s" % (str(e).splitlines() or [type(e).__name__])[0]
        ms = cls(model_dir, m, {}, None, threads, lanes, packed, packing)
        ms._cpu = {n: [ms._session(lv["file"], n) for lv in m["levels"]] for n in sizes}
        if prov:
            ms._gpu = [ms._session(lv["file"], threads, [prov, "CPUExecutionProvider"]) for lv in m["levels"]]
        if packed is not None and packed.mapped() is False:
            ms.packing = ("optimised once, but onnxruntime %s reads the weights into each session "
                          "(it maps no external data)" % ort.__version__)
        want_in, n_classes = [m["input"]["shape"]], len(m["input"]["classes"])
        for sess in ms._cpu[threads]:
            ishape, oshape = sess.get_inputs()[0].shape, sess.get_outputs()[0].shape
            if [list(ishape[1:])] != want_in and all(isinstance(d, int) for d in ishape[1:]):
                raise ModelSetError("%s: the ONNX input is %s, the manifest says [N, %s]"
                                    % (model_dir, ishape, ", ".join(map(str, want_in[0]))))
            if len(oshape) == 2 and isinstance(oshape[1], int) and oshape[1] != n_classes:
                raise ModelSetError("%s: the ONNX models give %d logits, the manifest names %d classes"
                                    % (model_dir, oshape[1], n_classes))
        at_low_priority(ms.warmup) if low_priority else ms.warmup()
        # What was verified, as the files were: a file changed while this ran is not this set.
        ms.on_disk = before if verify and before == files_on_disk(model_dir) else None
        return ms

    def same_as(self, model_dir: str, threads: int, lanes: Dict[str, int], gpu: bool) -> bool:
        """Whether loading ``model_dir`` with these pools would give this set again: the same
        folder, pools and GPU sessions, and every file unchanged since it was verified (the
        same inode, size, mtime and ctime; ctime follows any write and cannot be set back)."""
        return (self.on_disk is not None and os.path.realpath(model_dir) == os.path.realpath(self.dir)
                and threads == self.threads and dict(lanes) == self.lanes and gpu == (self._gpu is not None)
                and files_on_disk(model_dir) == self.on_disk)

    # ------------------------------------------------------------------ columns
    @property
    def has_columns(self) -> bool:
        """Whether the set ships its columns on their own (a group set exported with them)."""
        return bool(self.manifest.get("columns"))

    @property
    def no_columns(self) -> str:
        """Why the set cannot split or stop early ("" where it can)."""
        if self.has_columns:
            return ""
        return "%s has no group columns (%s)" % (self.name, "a portfolio" if self.kind != "group" else
                                                 "exported before them: run `dnnscale columns` on it")

    @property
    def no_anytime(self) -> str:
        """Why the set cannot stop early ("" where it can): it needs its step graphs."""
        if self.no_columns:
            return self.no_columns
        if not self.manifest["columns"].get("steps"):
            return "%s was exported before its anytime step graphs: run `dnnscale columns` on it" % self.name
        return ""

    def lane(self, name: str, cpus: List[int] = (), threads: int = 1, gpu: bool = False) -> ColumnLane:
        """The lane ``name`` of a split (models/columns.py): its worker pinned to ``cpus``
        (this machine's; none: not pinned), sessions of ``threads`` intra-op threads, on the
        GPU where ``gpu``. Made once per (name, cpus, threads, gpu) and kept with the set."""
        if not self.has_columns:
            raise ModelSetError("%s: it runs whole" % self.no_columns)
        key = (name, tuple(cpus), threads, bool(gpu))
        lane = self._lanes.get(key)
        if lane is None:
            if gpu and self._gpu is None:
                raise ModelSetError("lane %s: onnxruntime has no GPU execution provider here" % name)
            providers = [gpu_provider(), "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
            lane = self._lanes[key] = ColumnLane(name, list(cpus), threads,
                                                 lambda f, n: self._session(f, n, providers, spread=not cpus))
        return lane

    def _session(self, file: str, threads: int, providers: List[str] = ("CPUExecutionProvider",),
                 spread: bool = True):
        """The one place a session is made: a CPU session from the pack where there is one,
        a GPU session (CPU fallback) from the set's own file. A CPU session's pool joins
        ``pools`` where ``spread`` (a pinned lane places its own threads)."""
        path = os.path.join(self.dir, file)
        cpu = list(providers) == ["CPUExecutionProvider"]
        packed = self._pack is not None and cpu
        try:
            src = self._pack.path(file) if packed else path
            make = lambda: ort.InferenceSession(src, session_options(threads, optimised=packed),  # noqa: E731
                                                providers=list(providers))
            return self.pools.made(threads, make) if cpu and spread and pool_mode() != "global" else make()
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelSetError("cannot load %s: %s" % (path, str(e).splitlines()[0])) from None

    def _check_cuts(self, k: int, cuts) -> None:
        want = 1
        for first, last in cuts:
            if first != want or last < first:
                raise ValueError("column ranges must cover 1..%d in order, got %s" % (k, list(cuts)))
            want = last + 1
        if want != k + 1:
            raise ValueError("column ranges must cover 1..%d in order, got %s" % (k, list(cuts)))

    def run_split(self, k: int, x: np.ndarray, cuts, lanes: Optional[List[ColumnLane]] = None) -> np.ndarray:
        """The logits of level ``k`` with its columns split: ``cuts`` is a list of
        (first, last) column ranges covering 1..k in order, run at once, one per lane of
        ``lanes`` (default: unpinned one-thread lanes); their features are joined in order
        and the head of k is applied in the calling thread. Equal to ``run(k, x)``
        (tests/test_columns.py)."""
        self._check_level(k)
        self._check_cuts(k, cuts)
        lanes = lanes or [self.lane("free%d" % i) for i in range(len(cuts))]
        if len(lanes) != len(cuts):
            raise ValueError("%d column ranges for %d lanes" % (len(cuts), len(lanes)))
        ranges = self.manifest["columns"]["ranges"]
        x = np.ascontiguousarray(x, dtype=np.float32)
        feats = features_of(run_lanes(lanes, [ranges["%d-%d" % c] for c in cuts], x))
        return self.head(k).run(None, {"features": feats})[0]

    def run_anytime(self, x: np.ndarray, stop_at: Optional[float] = None, max_k: Optional[int] = None,
                    target: Optional[str] = None, deadline_s: Optional[float] = None,
                    on_level: Optional[Callable] = None, clock=time.perf_counter,
                    threads: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Anytime inference: add one group column at a time, computing each column once
        (going from k to k+1 runs column k+1 and head k+1 on the kept features, not the
        network of k+1); an image stops once its top-1 probability reaches ``stop_at``, and
        only the undecided images go on. Stops at ``max_k`` (default: all groups), and before
        a column that the time left until ``deadline_s`` (on ``clock``) would not cover at
        the pace of the last; ``threads``: the sessions' (default: ``target``'s lane's).
        ``on_level(k, logits, groups)`` is called after every level
        with every image's best logits so far and the level each stopped at (0: still going).
        Returns (logits, groups per image); at every k the logits equal ``run(k, x)``'s
        (tests/test_anytime.py)."""
        why = self.no_anytime
        if why:
            raise ModelSetError("%s: it cannot stop early" % why)
        max_k = max_k or self.groups
        self._check_level(max_k)
        t_start = clock()
        steps = self._steps(threads or self.threads_of(target), target == "gpu")
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        best = groups = None          # made when some images stop before the others
        rows = None                   # the rows still going (None: all of them)
        feed = {"input": x}
        for k in range(1, max_k + 1):
            t0 = clock()
            feed["previous"], logits, top = steps[k - 1].run(None, feed)   # step 1 has no "previous"
            now = clock()
            last = k == max_k or (deadline_s is not None and now + (now - t0) > t_start + deadline_s)
            if best is not None:
                best[rows] = logits
            if not last and stop_at is not None:
                if len(top) == 1:                    # batch 1 (or one image left): no masks
                    last = float(top[0]) >= stop_at
                else:
                    going = top < stop_at
                    if not going.any():
                        last = True
                    elif not going.all():            # some stop here, the others go on
                        if best is None:
                            best, groups, rows = logits.copy(), np.zeros(n, np.int64), np.arange(n)
                        groups[rows[~going]] = k
                        rows = rows[going]
                        feed["input"], feed["previous"] = feed["input"][going], feed["previous"][going]
            if last:
                if best is None:
                    best, groups = logits, np.full(n, k, np.int64)
                else:
                    groups[groups == 0] = k
            if on_level is not None:   # before any image stopped, this level's logits are everyone's
                on_level(k, logits if best is None else best, np.zeros(n, np.int64) if groups is None else groups)
            if last:
                return best, groups
        raise AssertionError("unreachable: the last level always stops")

    def _steps(self, threads: int, gpu: bool) -> List[ort.InferenceSession]:
        """The sessions of anytime steps 1..G (onnxset.step_file) at ``threads``."""
        key = (threads, gpu)
        steps = self._anytime.get(key)
        if steps is None:
            lane = self.lane("anytime%d" % threads, [], threads, gpu=gpu)
            files = self.manifest["columns"]["steps"]
            steps = self._anytime[key] = [lane.session(files[str(k)]) for k in range(1, self.groups + 1)]
        return steps

    def warm_anytime(self, runs: int = 3) -> None:
        """Build and run the anytime steps at every thread count the set has sessions for
        (and on the GPU where it has one), so that no request pays for building them: tens
        of ms on the first stop_at request of each thread count otherwise. Nothing where the set
        cannot stop early."""
        if self.no_anytime:
            return
        x = self.blank()
        for threads, gpu in [(n, False) for n in sorted(self._cpu)] + ([(self.threads, True)] if self._gpu else []):
            for _ in range(runs):
                self.run_anytime(x, None, target="gpu" if gpu else None, threads=threads)

    def head(self, k: int):
        """The session of level k's head (features of columns 1..k → logits; one thread)."""
        s = self._heads.get(k)
        if s is None:
            s = self._heads[k] = self._session(self.manifest["columns"]["heads"][str(k)], 1)
        return s

    def close(self, pause_s: float = 0.0) -> None:
        """Drop the sessions one by one, ``pause_s`` apart (destroying one holds the GIL for
        about half a millisecond; the whole set, about 6 ms on this VM: a daemon that serves
        beside it spreads that out). The set cannot run after this."""
        for group in list(self._cpu.values()) + ([self._gpu] if self._gpu else []):
            while group:
                group.pop()
                if pause_s:
                    time.sleep(pause_s)
        self._cpu, self._gpu = {}, None
        while self._lanes:
            self._lanes.popitem()[1].close()
            if pause_s:
                time.sleep(pause_s)
        self._heads.clear()
        self._anytime.clear()
        self.pools.clear()
        if self._pack is not None:
            self._pack.close()

    def blank(self) -> np.ndarray:
        """One image of zeros, as the sessions take it (warm-up runs)."""
        return np.zeros((1,) + self.input_shape, np.float32)

    def warmup(self, runs: int = 3) -> None:
        x = self.blank()
        for group in list(self._cpu.values()) + ([self._gpu] if self._gpu else []):
            for sess in group:
                for _ in range(runs):
                    sess.run(None, {"input": x})

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
        return ["cpu"] + (["gpu"] if self._gpu else [])

    def threads_of(self, target: Optional[str]) -> int:
        """The intra-op threads ``run`` uses for ``target`` (the GPU sessions' CPU fallback: ``threads``)."""
        return self.threads if target == "gpu" else self.lanes.get(target, self.threads)

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
        return self._lut[images.transpose(0, 3, 1, 2), self._channel]      # NCHW, contiguous

    def _check_level(self, k) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.groups:
            raise ModelSetError("level must be an integer in 1..%d, got %r" % (self.groups, k))

    def run(self, k: int, x: np.ndarray, target: Optional[str] = None) -> np.ndarray:
        """Logits [N, classes] of level k for normalised float32 NCHW input ``x``.

        ``target``: ``"gpu"`` runs on the GPU sessions; any other name (or None) runs on
        the CPU sessions of that lane's thread count (which CPUs is the platform's
        affinity, not the model set's)."""
        self._check_level(k)
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 \
                or x.shape[1:] != self.input_shape or x.shape[0] < 1:
            raise ModelSetError("input must be float32 [N, %s] (NCHW), got %s %s"
                                % (", ".join(map(str, self.input_shape)),
                                   getattr(x, "dtype", type(x).__name__), list(getattr(x, "shape", []))))
        if target == "gpu":
            if self._gpu is None:
                raise ModelSetError("target gpu is not available: onnxruntime has no GPU execution "
                                    "provider here (installed: %s)" % ", ".join(ort.get_available_providers()))
            sess = self._gpu[k - 1]
        else:
            sess = self._cpu[self.lanes.get(target, self.threads)][k - 1]
        return sess.run(None, {"input": np.ascontiguousarray(x)})[0]

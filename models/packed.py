"""A model set's graphs optimised once for this CPU, their weights in one file every session maps.

onnxruntime's full optimisation re-lays the conv weights out for this CPU (NCHWc on x86)
inside each session, so left to itself every session keeps a private copy of its weights:
a set with a session per level, lane size, column range, step and head holds up to 19 times
its weight file (docs/model-set.md, "Memory"). Packing runs that optimisation once per graph, saves the
optimised graph, and writes every initializer of every graph into one ``weights.bin``,
each tensor once: the re-laid-out weights of k keep the prefix property of the group
layout (a level's conv filter is the first rows of k=G's; a column range's, a slice), so
the file comes out the size of the set's own. The sessions load the optimised graphs
with optimisation off; onnxruntime maps their external data from the file, so all of them
share its pages (the page cache, or /run's tmpfs under systemd; onnxruntime 1.11 reads it
into each session instead, which :meth:`Pack.mapped` tells). No onnx package is needed:
the graphs are edited in protobuf's wire format.

The pack lives in a private folder (``$RUNTIME_DIRECTORY`` under systemd, else the temp
folder) for as long as the set: sessions made later (a split's lanes, the anytime steps)
load from it. A folder removed underneath (a tmp cleaner) is packed again; one a crashed
process left is removed by the next pack in that folder. The optimised graphs suit this
CPU only, so a pack is never reused by another process.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import weakref
from typing import Callable, Dict, List, Optional, Tuple

import onnxruntime as ort

from .heap import give_back_memory

PREFIX = "dnnscale-pack-"
WEIGHTS = "weights.bin"
ALIGN = 64                # each tensor starts on a 64-byte boundary of the file (MLAS's vector loads)


class PackError(Exception):
    """A set's graphs could not be packed (it then loads unpacked)."""


def pack_root() -> str:
    """Where packs are made: the service's runtime folder, else the temp folder."""
    return os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or tempfile.gettempdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(root: str) -> None:
    """Remove the packs that processes no longer running left in ``root`` (ours only)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        m = re.match(re.escape(PREFIX) + r"(\d+)-", name)
        path = os.path.join(root, name)
        try:
            if m and not _alive(int(m.group(1))) and os.stat(path).st_uid == os.geteuid():
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


# -------------------------------------------------------------------- protobuf wire format
# The daemon needs no onnx package (a board has onnxruntime only, and importing onnx costs
# 14 MiB): the few fields rewritten here are edited in the wire format. ModelProto.graph = 7,
# GraphProto.initializer = 5, TensorProto.external_data = 13 (StringStringEntryProto: key 1,
# value 2), from onnx/onnx.proto.
Field = Tuple[int, int, object]        # (number, wire type, int for a varint, else the bytes)


def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf):
            raise PackError("a truncated protobuf varint")
        b = buf[i]
        out |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return out, i
        shift += 7


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _fields(buf: bytes) -> List[Field]:
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            v, i = buf[i:i + n], i + n
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        else:
            raise PackError("protobuf wire type %d (groups) is not expected in an ONNX model" % wt)
        out.append((num, wt, v))
    if i != len(buf):
        raise PackError("a truncated protobuf message")
    return out


def _encode(fields: List[Field]) -> bytes:
    out = bytearray()
    for num, wt, v in fields:
        out += _enc_varint(num << 3 | wt)
        if wt == 0:
            out += _enc_varint(v)
        elif wt == 2:
            out += _enc_varint(len(v)) + v
        else:
            out += v
    return bytes(out)


def _entry(key: str, value: str) -> Field:
    return (13, 2, _encode([(1, 2, key.encode()), (2, 2, value.encode())]))


# -------------------------------------------------------------------- packing
class _Blob:
    """The weights file being written: each tensor placed once, at a 64-byte boundary,
    where its bytes already are (the same tensor, or the prefix or slice of a larger one
    placed before it), else appended."""

    def __init__(self):
        self.data = bytearray()
        self._seen: Dict[bytes, int] = {}              # a tensor's bytes → offset

    def place(self, data: bytes) -> int:
        at = self._seen.get(data)
        if at is None:
            at = self.data.find(data)
            while at >= 0 and at % ALIGN:
                at = self.data.find(data, at + 1)
        if at < 0:
            self.data.extend(b"\0" * (-len(self.data) % ALIGN))
            at = len(self.data)
            self.data.extend(data)
        self._seen[data] = at
        return at


def _optimise(src: str, out: str) -> bytes:
    """``src`` at onnxruntime's full optimisation for this CPU, as onnxruntime saves it: the
    initializers it made inline, the ones it kept still pointing at the set's own file."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = so.inter_op_num_threads = 1    # no pool: no thread is created
    so.enable_cpu_mem_arena = False
    so.log_severity_level = 3
    so.optimized_model_filepath = out
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    with open(out, "rb") as f:
        model = f.read()
    os.unlink(out)
    return model


class _Files:
    """The set's own data files, read once, for the initializers that still point there."""

    def __init__(self, model_dir: str):
        self.dir, self._data = model_dir, {}

    def read(self, location: str, offset: int, length: int) -> bytes:
        if not location or os.path.basename(location) != location or location in (".", ".."):
            raise PackError("an initializer's data is in %r, not a file of the set" % location)
        data = self._data.get(location)
        if data is None:
            with open(os.path.join(self.dir, location), "rb") as f:
                data = self._data[location] = f.read()
        if offset < 0 or length < 0 or offset + length > len(data):
            raise PackError("an initializer's data is not within %s" % location)
        return data[offset:offset + length]


SUBGRAPH_OPS = (b"If", b"Loop", b"Scan")


def _initializers(model: bytes, files: _Files, place: Callable[[bytes], Optional[int]]) -> bytes:
    """``model`` with each initializer's bytes (inline, or in a file of the set) handed to
    ``place``: where it returns an offset, the initializer points there in ``WEIGHTS``;
    where None (and for data in typed fields, left inline), it is left as it was."""
    def tensor(buf: bytes) -> bytes:
        fields, ext, raw = [], {}, None
        for f in _fields(buf):
            if f[0] == 13:                                # external_data {key, value}
                kv = {n: v.decode() for n, _, v in _fields(f[2])}
                ext[kv.get(1, "")] = kv.get(2, "")
            elif f[0] == 9:                               # raw_data
                raw = f[2]
            elif f[0] != 14:                              # data_location: set below
                fields.append(f)
        if ext:
            data = files.read(ext.get("location", ""), int(ext.get("offset", 0)), int(ext.get("length", -1)))
        elif raw is not None:
            data = raw
        else:
            return buf
        at = place(data)
        if at is None:
            return buf
        return _encode(fields + [(14, 0, 1), _entry("location", WEIGHTS), _entry("offset", str(at)),
                                 _entry("length", str(len(data)))])

    def graph(buf: bytes) -> bytes:
        out = []
        for n, w, v in _fields(buf):
            if n == 1 and any(op == 4 and val in SUBGRAPH_OPS for op, _, val in _fields(v)):
                raise PackError("the graph has subgraphs (If, Loop, Scan), whose data packing does not follow")
            out.append((n, w, tensor(v)) if n == 5 else (n, w, v))
        return _encode(out)

    return _encode([(n, w, graph(v)) if n == 7 else (n, w, v) for n, w, v in _fields(model)])


def write_pack(model_dir: str, files: List[str], out: str) -> int:
    """Optimise ``files`` of ``model_dir`` into ``out`` with one shared weights file; its size."""
    blob, own = _Blob(), _Files(model_dir)
    optimised = {f: _optimise(os.path.join(model_dir, f), os.path.join(out, "opt-" + f)) for f in files}
    # Every tensor placed first, largest first: a level's is then found inside k=G's.
    every: List[bytes] = []
    for model in optimised.values():
        _initializers(model, own, lambda t: every.append(t))
    for t in sorted(every, key=len, reverse=True):
        blob.place(t)
    models = {f: _initializers(model, own, blob.place) for f, model in optimised.items()}
    with open(os.path.join(out, WEIGHTS), "wb") as w:
        w.write(blob.data)
    for name, model in models.items():
        with open(os.path.join(out, name), "wb") as w:
            w.write(model)
    return len(blob.data)


def _remove(folder: str, owner: int) -> None:
    """Remove a pack, from the process that made it only (a forked child exiting must not)."""
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


class Pack:
    """The packed graphs of one set, made at construction; ``path(file)`` for a session."""

    def __init__(self, model_dir: str, files: List[str], root: Optional[str] = None):
        self.model_dir, self.files, self.root = model_dir, list(files), root or pack_root()
        self._lock = threading.Lock()
        self.dir = ""
        self.size = 0
        self._finalizer = None
        self._make()

    def _make(self) -> None:
        sweep(self.root)
        name = os.path.basename(os.path.normpath(self.model_dir))
        d = tempfile.mkdtemp(prefix="%s%d-%s-" % (PREFIX, os.getpid(), name), dir=self.root)
        try:
            self.size = write_pack(self.model_dir, self.files, d)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            give_back_memory()     # every graph's optimised weights: several times the set's, freed
        if self._finalizer is not None:
            self._finalizer()
        self.dir = d
        self._finalizer = weakref.finalize(self, _remove, d, os.getpid())

    def path(self, file: str) -> str:
        """The optimised graph of ``file`` (packed again if the folder was removed)."""
        with self._lock:
            if not os.path.exists(os.path.join(self.dir, WEIGHTS)):
                self._make()
            return os.path.join(self.dir, file)

    def mapped(self) -> Optional[bool]:
        """Whether this process maps the pack's weights (onnxruntime 1.15 and 1.32 map external
        data; 1.11 reads it into each session); None where /proc cannot tell."""
        path = os.path.join(self.dir, WEIGHTS)
        try:
            with open("/proc/self/maps") as f:
                return any(line.rstrip().endswith(path) for line in f)
        except OSError:
            return None

    def close(self) -> None:
        """Remove the folder: the sessions made keep their mapping; no more can be made."""
        if self._finalizer is not None:
            self._finalizer()


def session_files(manifest: Dict) -> List[str]:
    """Every graph a set's CPU sessions may load: levels, column ranges, heads, steps."""
    files = [lv["file"] for lv in manifest["levels"]]
    cols = manifest.get("columns") or {}
    for key in ("ranges", "heads", "steps"):
        files += list((cols.get(key) or {}).values())
    return sorted(set(files))

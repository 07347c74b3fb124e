"""The wire protocol (docs/protocol.md): decoding and validating requests, encoding replies.

Pure functions over bytes: no sockets. Nothing a client sends is unpickled or evaluated:
headers are JSON, tensors are raw bytes read with ``numpy.frombuffer``.
"""
from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

MAX_HEADER_BYTES = 16 * 1024
MAX_ID_CHARS = 256
MIN_DEADLINE_MS = 1e-3                # 1 µs: below it a deadline is a typo, not a budget
MAX_DEADLINE_MS = 600_000.0


class ProtocolError(Exception):
    """A request that is refused; ``code`` is stable (docs/protocol.md lists them)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class InferRequest:
    id: Any
    dtype: str
    tensor: np.ndarray
    groups: Optional[int]
    deadline_ms: Optional[float]
    stop_at: Optional[float] = None      # anytime: stop each image once its top-1 probability reaches it
    progressive: bool = False            # anytime: a reply per added group, the last final
    model: Optional[str] = None          # the model set's name (None: the daemon's default set)

    @property
    def anytime(self) -> bool:
        return self.stop_at is not None or self.progressive

    @property
    def batch_key(self) -> Tuple:
        """Requests run as one batch only where all of these agree."""
        return (self.model, self.dtype, self.groups, self.deadline_ms, self.stop_at, self.progressive)


@dataclass
class InputSpec:
    """What the loaded model accepts, from its manifest."""
    chw: Tuple[int, int, int]
    levels: int
    max_batch: int
    anytime: str = ""          # why the set cannot stop early ("": it can)
    stop_at: Optional[float] = None   # the daemon's default for requests that name none


def scalar_id(v) -> bool:
    """A JSON scalar that echoes back as valid JSON (no NaN/Infinity, no 10^400 integer)."""
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return abs(v) < 2 ** 63
    return v is None or isinstance(v, bool) or (isinstance(v, str) and len(v) <= MAX_ID_CHARS)


def _reject_constant(name):
    raise ValueError("%s is not allowed" % name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)   # NaN/Infinity are not JSON
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)   # replies are always valid JSON


def _std_loads(data):
    return _DECODER.decode(data if isinstance(data, str) else bytes(data).decode("utf-8"))


def _finite(obj):
    """``obj`` with every non-finite float as None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _std_dumps(obj) -> bytes:
    """One rule for both codecs: JSON has no NaN or Infinity, so a non-finite number is
    written as null (orjson's own rule). Clients refuse them before sending (client.py)."""
    try:
        return _ENCODER.encode(obj).encode()
    except ValueError:
        return _ENCODER.encode(_finite(obj)).encode()


try:            # the `fast` extra: a compiled codec, ~10 µs less per request (docs/benchmarks.md)
    import orjson

    def loads(data):
        """orjson's answer, or where it refuses (an integer over 64 bits, a lone surrogate,
        invalid input) the standard library's: both codecs decide every frame alike."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return _std_loads(data)

    _OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS   # what json.dumps also takes

    def dumps(obj) -> bytes:
        """orjson's bytes, or where it refuses (an integer over 64 bits) the standard library's."""
        try:
            return orjson.dumps(obj, option=_OPTS)
        except orjson.JSONEncodeError:
            return _std_dumps(obj)
except ImportError:
    loads, dumps = _std_loads, _std_dumps


_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 40
_BRIEF.maxlist = _BRIEF.maxdict = 6
_BRIEF.maxlevel = 2


def brief(v: Any) -> str:
    """A short, quoted excerpt of a client's value for an error message (at most ~60
    characters: a reply never repeats kilobytes of what was sent)."""
    return _BRIEF.repr(v)


def parse_json(frame: bytes, what: str) -> Dict:
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", "%s is %d bytes; the limit is %d" % (what, len(frame), MAX_HEADER_BYTES))
    try:
        obj = loads(frame)
    except UnicodeDecodeError:
        raise ProtocolError("bad_json", "%s is not valid UTF-8" % what) from None
    except (ValueError, RecursionError) as e:   # orjson.JSONDecodeError is a ValueError
        raise ProtocolError("bad_json", "%s is not valid JSON: %s" % (what, str(e)[:200])) from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", "%s must be a JSON object" % what)
    return obj


def peek_id(frame: bytes) -> Any:
    """The ``id`` of a header if it can be read at all (for error replies), else None."""
    try:
        obj = loads(bytes(frame)) if len(frame) <= MAX_HEADER_BYTES else None
        v = obj.get("id") if isinstance(obj, dict) else None
        return v if scalar_id(v) else None
    except Exception:
        return None


HEADER_KEYS = {"id", "dtype", "shape", "groups", "deadline_ms", "stop_at", "progressive", "model"}


def positive_number(v, name: str, limit: float, code: str, low: float = 0.0) -> float:
    """A finite number in (0, limit] (and >= ``low`` when given)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) \
            or not 0 < v <= limit or v < low:
        raise ProtocolError(code, "%s must be a number in (%s, %g], got %s"
                            % (name, "%g" % low if low else "0", limit, brief(v)))
    return float(v)


def unknown_model(name: Any, served) -> ProtocolError:
    """The refusal of a request or command that names a set the daemon does not serve."""
    return ProtocolError("unknown_model", "no model set called %s is served (models: %s)"
                         % (brief(name), ", ".join(str(n) for n in served)))


def decode_infer(frames: Sequence[bytes], specs: Union[InputSpec, Dict[str, InputSpec]]) -> InferRequest:
    """One request, checked against what its model set accepts: ``specs`` by set name, the
    default set first (or one spec: a daemon of one set, which takes no ``model``)."""
    if len(frames) != 2:
        raise ProtocolError("bad_frames", "an inference request is 2 frames (JSON header, tensor bytes), got %d"
                            % len(frames))
    h = parse_json(frames[0], "the header")
    unknown = set(h) - HEADER_KEYS
    if unknown:
        raise ProtocolError("bad_header", "unknown header field(s): %s (allowed: %s)"
                            % (brief(sorted(map(str, unknown))), ", ".join(sorted(HEADER_KEYS))))
    rid = h.get("id")
    if not scalar_id(rid):
        raise ProtocolError("bad_header", "id must be a JSON scalar (string of at most %d characters, number, "
                                          "boolean or null)" % MAX_ID_CHARS)
    model = h.get("model")
    if isinstance(specs, InputSpec):
        specs = {None: specs}
    if model is None:              # the default set, by its name: batched with requests that name it
        model, spec = next(iter(specs.items()))
    elif not isinstance(model, str) or model not in specs:
        raise unknown_model(model, specs)
    else:
        spec = specs[model]
    dtype = h.get("dtype")
    if dtype not in ("uint8", "float32"):
        raise ProtocolError("bad_dtype", "dtype must be \"uint8\" (NHWC images) or \"float32\" (normalised NCHW), "
                                         "got %s" % brief(dtype))
    shape = h.get("shape")
    c, hh, ww = spec.chw
    want = [hh, ww, c] if dtype == "uint8" else [c, hh, ww]
    if not isinstance(shape, list) or len(shape) != 4 or any(isinstance(s, bool) or not isinstance(s, int)
                                                             for s in shape):
        raise ProtocolError("bad_shape", "shape must be 4 integers [N, %s], got %s"
                            % (", ".join(map(str, want)), brief(shape)))
    if shape[1:] != want or shape[0] < 1:
        raise ProtocolError("bad_shape", "shape must be [N, %s] for %s with N >= 1, got %s"
                            % (", ".join(map(str, want)), dtype, brief(shape)))
    if shape[0] > spec.max_batch:
        raise ProtocolError("too_large", "batch of %d exceeds the maximum of %d" % (shape[0], spec.max_batch))
    itemsize = 1 if dtype == "uint8" else 4
    need = shape[0] * c * hh * ww * itemsize
    if len(frames[1]) != need:
        raise ProtocolError("bad_size", "shape %r of %s needs %d bytes, got %d" % (shape, dtype, need, len(frames[1])))
    tensor = np.frombuffer(frames[1], dtype=np.uint8 if dtype == "uint8" else "<f4").reshape(shape)
    if dtype == "float32":
        if not np.isfinite(tensor).all():
            raise ProtocolError("bad_values", "the tensor holds NaN or Inf")
        tensor = tensor.astype(np.float32, copy=False)
    groups = h.get("groups")
    if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= spec.levels):
        raise ProtocolError("bad_groups", "groups must be an integer in 1..%d, got %s" % (spec.levels, brief(groups)))
    deadline = h.get("deadline_ms")
    if deadline is not None:
        deadline = positive_number(deadline, "deadline_ms", MAX_DEADLINE_MS, "bad_deadline", low=MIN_DEADLINE_MS)
    stop_at = h.get("stop_at", spec.stop_at)
    if stop_at is not None:
        stop_at = positive_number(stop_at, "stop_at (a top-1 probability)", 1.0, "bad_stop_at")
    progressive = h.get("progressive", False)
    if not isinstance(progressive, bool):
        raise ProtocolError("bad_progressive", "progressive must be true or false, got %s" % brief(progressive))
    if (progressive or "stop_at" in h) and spec.anytime:
        raise ProtocolError("bad_stop_at" if "stop_at" in h else "bad_progressive", spec.anytime)
    if spec.anytime:
        stop_at = None               # a daemon-wide default does not apply to a set that cannot stop early
    return InferRequest(rid, dtype, tensor, groups, deadline, stop_at, progressive, model)


def encode_reply(header: Dict, logits: Optional[np.ndarray] = None) -> List[bytes]:
    frames = [dumps(header)]
    if logits is not None:
        frames.append(np.ascontiguousarray(logits, dtype="<f4").tobytes())
    return frames


def error_reply(rid: Any, code: str, message: str) -> List[bytes]:
    return encode_reply({"id": rid, "ok": False, "error": {"code": code, "message": message}})


# ---------------------------------------------------------------------------- control

"""The model-set manifest (``manifest.yaml``): reading, validating, checksums. No torch/onnx.

See docs/model-set.md for the format. Every problem is one :class:`ManifestError` whose
message names the file and the key or file that is wrong.
"""
from __future__ import annotations

import hashlib
import os
import reprlib
from typing import Any, Dict, List

import yaml

from .priority import at_low_priority

FORMAT = "dnnscale-modelset/1"
MANIFEST = "manifest.yaml"
KINDS = ("group", "portfolio")


class ModelSetError(ValueError):
    """The model set is incomplete, altered or malformed, or a request to it is invalid."""


class ManifestError(ModelSetError):
    """The model set's files or manifest are missing, altered or malformed."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _need(d: Dict, key: str, types, where: str):
    if not isinstance(d, dict) or key not in d:
        raise ManifestError("%s: missing key '%s'" % (where, key))
    v = d[key]
    if not isinstance(v, types) or (isinstance(v, bool) and types is int):
        raise ManifestError("%s: '%s' must be %s, got %s" % (where, key, getattr(types, "__name__", types), _brief(v)))
    return v


MAX_MANIFEST_BYTES = 1 << 20


def _brief(value: Any) -> str:   # for messages: a YAML alias bomb's full repr takes minutes
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 2, 60, 60
    return r.repr(value)


def read_yaml(path: str, limit: int, what: str, text_what: str = "") -> Any:
    """A YAML file read whole and bounded (at most ``limit`` bytes, UTF-8, nesting Python can
    parse); anything else is a ValueError of one line naming ``path`` and saying it is not a
    ``what`` (``text_what`` for bytes that are not UTF-8). The manifest and the daemon's
    configuration file both come through here."""
    try:
        with open(path, "rb") as f:
            text = f.read(limit + 1)
        if len(text) > limit:
            raise ValueError("%s is over %d bytes: not a %s" % (path, limit, what))
        return yaml.safe_load(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError("%s is not UTF-8 text (byte %d): not a %s" % (path, e.start, text_what or what)) from None
    except yaml.YAMLError as e:
        raise ValueError("%s is not valid YAML: %s" % (path, str(e).replace("\n", " ")[:300])) from None
    except RecursionError:
        raise ValueError("%s is nested too deeply: not a %s" % (path, what)) from None
    except OSError as e:
        raise ValueError("cannot read %s: %s" % (path, e.strerror or e)) from None


def read(model_dir: str, verify: bool = True, low_priority: bool = False) -> Dict[str, Any]:
    """Read and validate ``model_dir/manifest.yaml``; with ``verify`` check every file's
    sha256 (``low_priority``: hashing at nice 19, beside a daemon that serves)."""
    path = os.path.join(model_dir, MANIFEST)
    if not os.path.isdir(model_dir):
        raise ManifestError("model folder %s does not exist" % model_dir)
    if not os.path.isfile(path):
        raise ManifestError("%s is missing: not a dnnscale model set" % path)
    try:
        m = read_yaml(path, MAX_MANIFEST_BYTES, "dnnscale manifest")
    except ValueError as e:
        raise ManifestError(str(e)) from None
    if not isinstance(m, dict):
        raise ManifestError("%s must be a YAML mapping" % path)
    if m.get("format") != FORMAT:
        raise ManifestError("%s: format must be '%s', got %s" % (path, FORMAT, _brief(m.get("format"))))
    kind = _need(m, "kind", str, path)
    if kind not in KINDS:
        raise ManifestError("%s: kind must be one of %s, got %s" % (path, ", ".join(KINDS), _brief(kind)))
    _need(m, "name", str, path)
    inp = _need(m, "input", dict, path)
    for key in ("shape", "mean", "std", "classes"):
        _need(inp, key, list, path + ": input")
    shape = inp["shape"]
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 65536 for s in shape):
        raise ManifestError("%s: input shape must be [channels, height, width] (positive integers), got %s"
                            % (path, _brief(shape)))
    if len(inp["mean"]) != shape[0] or len(inp["std"]) != shape[0]:
        raise ManifestError("%s: input mean/std need one value per channel (%d)" % (path, shape[0]))
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in inp["mean"]):
        raise ManifestError("%s: input mean must be numbers" % path)
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in inp["std"]):
        raise ManifestError("%s: input std must be positive numbers" % path)
    if len(inp["classes"]) < 2 or not all(isinstance(c, str) for c in inp["classes"]):
        raise ManifestError("%s: input classes must be a list of at least 2 names" % path)
    out = m.get("output")
    if isinstance(out, dict) and isinstance(out.get("shape"), list) and len(out["shape"]) == 2 \
            and out["shape"][1] != len(inp["classes"]):
        raise ManifestError("%s: output shape has %s classes but input classes names %d"
                            % (path, _brief(out["shape"][1]), len(inp["classes"])))
    arch = m.get("arch")
    if isinstance(arch, dict) and "classes" in arch and arch["classes"] != len(inp["classes"]):
        raise ManifestError("%s: arch has %s classes but input classes names %d"
                            % (path, _brief(arch["classes"]), len(inp["classes"])))
    levels: List[Dict] = _need(m, "levels", list, path)
    if not levels:
        raise ManifestError("%s: 'levels' is empty" % path)
    files = _need(m, "files", dict, path)
    for i, lv in enumerate(levels, 1):
        where = "%s: levels[%d]" % (path, i - 1)
        if _need(lv, "level", int, where) != i:
            raise ManifestError("%s: level must be %d (levels are numbered 1..n in order)" % (where, i))
        f = _need(lv, "file", str, where)
        for key in ("macs",):
            v = lv.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ManifestError("%s: %s must be a non-negative integer, got %s" % (where, key, _brief(v)))
        acc = lv.get("accuracy")
        if acc is not None and (isinstance(acc, bool) or not isinstance(acc, (int, float))):
            raise ManifestError("%s: accuracy must be a number or null, got %s" % (where, _brief(acc)))
        if f not in files:
            raise ManifestError("%s: file %s is not listed under 'files'" % (where, f))
    digests = {}
    for name, info in files.items():
        where = "%s: files.%s" % (path, name)
        if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
            raise ManifestError("%s: file names must be plain names in the model folder" % where)
        digests[name] = _need(info, "sha256", str, where)
    if verify:
        check = lambda: _check_files(model_dir, digests)
        at_low_priority(check) if low_priority else check()
    return m


def _check_files(model_dir: str, digests: Dict[str, str]) -> None:
    for name, digest in digests.items():
        p = os.path.join(model_dir, name)
        if not os.path.isfile(p):
            raise ManifestError("model file %s is missing" % p)
        if sha256_file(p) != digest:
            raise ManifestError("model file %s is altered: its sha256 does not match the manifest" % p)


def write(model_dir: str, manifest: Dict[str, Any]) -> str:
    """Fill in ``files`` checksums and write the manifest atomically."""
    for name, info in manifest["files"].items():
        p = os.path.join(model_dir, name)
        info["sha256"] = sha256_file(p)
        info["bytes"] = os.path.getsize(p)
    path = os.path.join(model_dir, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(manifest, f, sort_keys=False, default_flow_style=None, width=100)
    os.replace(tmp, path)
    return path

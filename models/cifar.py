"""CIFAR-10 in the standard python batch format (``cifar-10-batches-py``), numpy only.

Every problem with the folder is reported as one :class:`DataError` naming the file and
what is wrong with it. The pickles are read with a restricted unpickler that accepts only
the builtin containers the format uses, so a hostile file cannot run code.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

TRAIN_FILES = tuple("data_batch_%d" % i for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
DEFAULT_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# Per-channel mean/std of the CIFAR-10 training set (RGB, on [0, 1] pixels).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class DataError(ValueError):
    """The data folder is missing, incomplete or malformed."""


# The only globals a CIFAR batch references: numpy's array reconstruction.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError("refusing to load %s.%s" % (module, name))
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


@dataclass
class Cifar10:
    x_train: np.ndarray  # uint8 [N, 32, 32, 3] (NHWC, RGB)
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray
    classes: List[str]
    sha256: str  # over all batch files, in a fixed order


def find_batches_dir(path: str) -> str:
    """Accept either the ``cifar-10-batches-py`` folder itself or a folder that holds it."""
    if not os.path.isdir(path):
        raise DataError("data folder %s does not exist" % path)
    inner = os.path.join(path, "cifar-10-batches-py")
    if not os.path.exists(os.path.join(path, TEST_FILE)) and os.path.isdir(inner):
        return inner
    return path


def _read_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise DataError("%s is missing (expected the CIFAR-10 python batch files "
                        "data_batch_1..5 and test_batch)" % path)
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as e:  # any unpickling failure is a data error
        raise DataError("%s is not a CIFAR-10 python batch (%s)" % (path, e)) from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError("%s has no b'data'/b'labels' keys" % path)
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError("%s: data must be uint8 [N, 3072], got %s %s"
                        % (name, data.dtype, list(data.shape)))
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError("%s: %d labels for %d images" % (name, labels.size, len(data)))
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError("%s: labels outside 0..9" % name)
    # Rows are 1024 R, 1024 G, 1024 B values: reshape to NCHW then move channels last.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def load(path: str, train: bool = True) -> Cifar10:
    """Load the batch folder at ``path``; ``train=False`` skips the 5 training batches."""
    root = find_batches_dir(path)
    h = hashlib.sha256()
    names = (TRAIN_FILES if train else ()) + (TEST_FILE,)
    parts = {}
    for name in names:
        p = os.path.join(root, name)
        parts[name] = _read_batch(p)
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    classes = list(DEFAULT_CLASSES)
    meta = os.path.join(root, META_FILE)
    if os.path.isfile(meta):
        try:
            with open(meta, "rb") as f:
                m = _SafeUnpickler(f, encoding="bytes").load()
            classes = [c.decode() for c in m[b"label_names"]]
        except Exception as e:
            raise DataError("%s is not a CIFAR-10 batches.meta (%s)" % (meta, e)) from None
        if len(classes) != 10:
            raise DataError("%s lists %d classes, expected 10" % (meta, len(classes)))
    empty = np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64)
    xs, ys = zip(*[parts[n] for n in TRAIN_FILES]) if train else ([empty[0]], [empty[1]])
    return Cifar10(np.concatenate(xs), np.concatenate(ys), parts[TEST_FILE][0],
                   parts[TEST_FILE][1], classes, h.hexdigest())


def write_batches(root: str, x_train: np.ndarray, y_train: np.ndarray,
                  x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Write arrays (uint8 NHWC) in the python batch format: 5 train batches + test."""
    os.makedirs(root, exist_ok=True)

    def dump(name, x, y):
        rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), 3072)
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump({b"data": rows, b"labels": [int(v) for v in y]}, f)

    for i, (xs, ys) in enumerate(zip(np.array_split(x_train, 5), np.array_split(y_train, 5))):
        dump(TRAIN_FILES[i], xs, ys)
    dump(TEST_FILE, x_test, y_test)
    with open(os.path.join(root, META_FILE), "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in DEFAULT_CLASSES]}, f)


def normalize(images_u8_nhwc: np.ndarray, mean=MEAN, std=STD) -> np.ndarray:
    """uint8 NHWC → float32 NCHW, scaled to [0, 1] then standardised per channel."""
    x = images_u8_nhwc.astype(np.float32) * np.float32(1 / 255.0)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

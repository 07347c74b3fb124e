"""Training and test data in the layouts users have, as uint8 NHWC arrays (numpy + Pillow):

* the CIFAR-10 python batches (``cifar-10-batches-py``; models/cifar.py);
* IDX files, as MNIST and Fashion-MNIST ship them (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``);
* an image folder: ``train/<class>/*.png|jpg|...`` and ``test/<class>/...``, any size
  (scaled on the shorter side and centre-cropped to the input size, by default the first
  image's shorter side), grayscale or RGB.

For IDX and folders the per-channel mean/std come from the training images and the class
names from the folder names (IDX: ``classes.txt`` beside the files, one name per line, else
the Fashion-MNIST names for 10 classes). Every problem is one :class:`DataError` naming the
file or folder and what is wrong.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from . import cifar
from .cifar import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                   "bag", "ankle boot")
IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


@dataclass
class Dataset:
    x_train: np.ndarray      # uint8 [N, H, W, C]
    y_train: np.ndarray      # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray
    classes: List[str]
    sha256: str              # over the files read, in a fixed order
    mean: Tuple[float, ...]  # per channel, on [0, 1] pixels
    std: Tuple[float, ...]
    layout: str              # "cifar", "idx" or "folder"

    @property
    def hwc(self) -> Tuple[int, int, int]:
        return tuple(self.x_test.shape[1:]) if len(self.x_test) else tuple(self.x_train.shape[1:])


def fit_image(im, h: int, w: int):
    """A PIL image scaled so that it covers h x w (bilinear), then its centre cropped."""
    from PIL import Image
    if im.size == (w, h):
        return im, False
    scale = max(w / im.width, h / im.height)
    nw, nh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - w) // 2, (nh - h) // 2
    return im.crop((left, top, left + w, top + h)), True


def layout(path: str) -> str:
    """Which layout ``path`` holds, or DataError listing the ones accepted."""
    if not os.path.isdir(path):
        raise DataError("data folder %s does not exist" % path)
    if os.path.isfile(os.path.join(cifar.find_batches_dir(path), cifar.TEST_FILE)):
        return "cifar"
    if _idx_path(path, "test_x") or _idx_path(path, "train_x"):
        return "idx"
    if os.path.isdir(os.path.join(path, "train")) or os.path.isdir(os.path.join(path, "test")):
        return "folder"
    raise DataError("%s holds none of the layouts dnnscale reads: CIFAR-10 python batches "
                    "(cifar-10-batches-py), IDX files (train-images-idx3-ubyte...), or an image folder "
                    "(train/<class>/*.png and test/<class>/*.png)" % path)


def load(path: str, train: bool = True, image: Optional[int] = None, channels: Optional[int] = None) -> Dataset:
    """The data at ``path`` (``train=False``: the test split only). ``image``/``channels``: the
    input size and channel count to produce (default: the data's own)."""
    kind = layout(path)
    if kind == "cifar":
        d = cifar.load(path, train=train)
        ds = Dataset(d.x_train, d.y_train, d.x_test, d.y_test, list(d.classes), d.sha256,
                     tuple(cifar.MEAN), tuple(cifar.STD), "cifar")
    elif kind == "idx":
        ds = _load_idx(path, train)
    else:
        ds = _load_folder(path, train, image or describe(path)[0][0], channels)   # default: the first image's size
    ds = _conform(ds, image, channels)
    if kind != "cifar":
        ds.mean, ds.std = _stats(ds.x_train if len(ds.x_train) else ds.x_test)
    return ds


def _conform(ds: Dataset, image: Optional[int], channels: Optional[int]) -> Dataset:
    """Resize / convert the arrays where the data's size or channels differ from the asked ones."""
    h, w, c = ds.hwc
    want_c = channels or c
    want = image or h
    if (h, w, c) == (want, want, want_c):
        return ds
    from PIL import Image
    mode = "L" if want_c == 1 else "RGB"

    def conv(x):
        out = np.empty((len(x), want, want, want_c), np.uint8)
        for i, a in enumerate(x):
            im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert(mode)
            im, _ = fit_image(im, want, want)
            arr = np.asarray(im, np.uint8)
            out[i] = arr[..., None] if arr.ndim == 2 else arr
        return out
    ds.x_train, ds.x_test = conv(ds.x_train), conv(ds.x_test)
    return ds


def _stats(x: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    f = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    mean, std = f.mean(0), f.std(0)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(max(s, 1e-3)), 4) for s in std)


# ---------------------------------------------------------------------------- IDX
def _idx_path(path: str, key: str) -> Optional[str]:
    for name in (IDX_FILES[key], IDX_FILES[key] + ".gz", IDX_FILES[key].replace("-idx", ".idx")):
        p = os.path.join(path, name)
        if os.path.isfile(p):
            return p
    return None


def read_idx(p: str) -> np.ndarray:
    """One IDX file (unsigned bytes), gzip or not."""
    opener = gzip.open if p.endswith(".gz") else open
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError("%s cannot be read: %s" % (p, e)) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError("%s is not an IDX file of unsigned bytes" % p)
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError("%s is truncated (its header)" % p)
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError("%s is truncated: %d bytes of data, its header says %s" % (p, body.size, list(shape)))
    return body.reshape(shape)


def _load_idx(path: str, train: bool) -> Dataset:
    h = hashlib.sha256()
    parts = {}
    for key in (("train_x", "train_y") if train else ()) + ("test_x", "test_y"):
        p = _idx_path(path, key)
        if p is None:
            raise DataError("%s: missing %s (or .gz)" % (path, IDX_FILES[key]))
        parts[key] = read_idx(p)
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    for split in (("train", "test") if train else ("test",)):
        x, y = parts[split + "_x"], parts[split + "_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError("%s: %s images %s and labels %s do not match" % (path, split, list(x.shape), list(y.shape)))
    n_classes = int(max(parts["test_y"].max(), parts.get("train_y", parts["test_y"]).max())) + 1
    names_file = os.path.join(path, "classes.txt")
    if os.path.isfile(names_file):
        with open(names_file) as f:
            classes = [l.strip() for l in f if l.strip()]
        if len(classes) < n_classes:
            raise DataError("%s names %d classes, the labels use %d" % (names_file, len(classes), n_classes))
    else:
        classes = list(FASHION_CLASSES) if n_classes == 10 else ["class %d" % i for i in range(n_classes)]
    empty = np.zeros((0,) + parts["test_x"].shape[1:] + (1,), np.uint8)
    xtr = parts["train_x"][..., None] if train else empty
    ytr = parts["train_y"].astype(np.int64) if train else np.zeros(0, np.int64)
    return Dataset(np.ascontiguousarray(xtr), ytr, np.ascontiguousarray(parts["test_x"][..., None]),
                   parts["test_y"].astype(np.int64), classes, h.hexdigest(), (0.5,), (0.5,), "idx")


# ---------------------------------------------------------------------------- image folder
def _load_folder(path: str, train: bool, image: int, channels: Optional[int]) -> Dataset:
    from PIL import Image
    splits = ("train", "test") if train else ("test",)
    for s in splits:
        if not os.path.isdir(os.path.join(path, s)):
            raise DataError("%s has no %s/ folder (expected %s/<class>/*.png)" % (path, s, s))
    classes = sorted(d for d in os.listdir(os.path.join(path, splits[0]))
                     if os.path.isdir(os.path.join(path, splits[0], d)))
    if len(classes) < 2:
        raise DataError("%s/%s has %d class folders; a classifier needs at least 2" % (path, splits[0], len(classes)))
    files = {s: [] for s in splits}
    for s in splits:
        have = sorted(d for d in os.listdir(os.path.join(path, s)) if os.path.isdir(os.path.join(path, s, d)))
        if have != classes:
            raise DataError("%s/%s has classes %s, %s/%s has %s: they must be the same folders"
                            % (path, s, have, path, splits[0], classes))
        for ci, c in enumerate(classes):
            d = os.path.join(path, s, c)
            fs = sorted(f for f in os.listdir(d) if f.lower().endswith(IMAGE_SUFFIXES))
            if not fs:
                raise DataError("%s has no images (%s)" % (d, ", ".join(IMAGE_SUFFIXES)))
            files[s] += [(os.path.join(d, f), ci) for f in fs]
    if channels is None:                  # grayscale only if every image is
        with Image.open(files[splits[0]][0][0]) as im0:
            channels = 1 if im0.mode in ("1", "L", "I;16", "I") else 3
    mode = "L" if channels == 1 else "RGB"
    h = hashlib.sha256()
    out = {}
    for s in splits:
        x = np.empty((len(files[s]), image, image, channels), np.uint8)
        for i, (p, _) in enumerate(files[s]):
            try:
                with Image.open(p) as im:
                    im = im.convert(mode)
                    im, _ = fit_image(im, image, image)
                    a = np.asarray(im, np.uint8)
            except Exception as e:       # Pillow raises many kinds; one line names the file
                raise DataError("%s is not an image Pillow can read: %s" % (p, e)) from None
            x[i] = a[..., None] if a.ndim == 2 else a
            h.update(p.encode())
            h.update(a.tobytes())
        out[s] = (x, np.array([c for _, c in files[s]], np.int64))
    xtr, ytr = out.get("train", (np.zeros((0, image, image, channels), np.uint8), np.zeros(0, np.int64)))
    return Dataset(xtr, ytr, out["test"][0], out["test"][1], classes, h.hexdigest(), (0.5,) * channels,
                   (0.5,) * channels, "folder")


def describe(path: str) -> Tuple[Tuple[int, int, int], int]:
    """((H, W, C), number of classes) of the data at ``path``, read cheaply (headers, one image)."""
    kind = layout(path)
    if kind == "cifar":
        return (32, 32, 3), 10
    if kind == "idx":
        x = read_idx(_idx_path(path, "test_x") or _idx_path(path, "train_x"))
        ys = [read_idx(p) for p in (_idx_path(path, "train_y"), _idx_path(path, "test_y")) if p]
        return (x.shape[1], x.shape[2], 1), max(int(y.max()) for y in ys) + 1
    from PIL import Image
    split = "train" if os.path.isdir(os.path.join(path, "train")) else "test"
    classes = sorted(d for d in os.listdir(os.path.join(path, split)) if os.path.isdir(os.path.join(path, split, d)))
    if not classes:
        raise DataError("%s/%s has no class folders" % (path, split))
    d = os.path.join(path, split, classes[0])
    first = next((f for f in sorted(os.listdir(d)) if f.lower().endswith(IMAGE_SUFFIXES)), None)
    if first is None:
        raise DataError("%s has no images" % d)
    with Image.open(os.path.join(d, first)) as im:
        c = 1 if im.mode in ("1", "L", "I;16", "I") else 3
        return (min(im.size), min(im.size), c), len(classes)

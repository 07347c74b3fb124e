"""Images for ``dnnscale infer``: one rule for PNG/JPEG and .npy, whatever their size.

* Channels: converted to the model's (RGB for 3, grayscale for 1). 16-bit images are
  scaled to 8 bits (not clipped, which turned a 16-bit PNG white).
* Size: the shorter side is scaled to the model's input (bilinear) and the centre is cropped,
  as the field's evaluation pipelines do, so the aspect is kept; an image already at the
  input size is left as it is. ``read`` says once when anything was resized.
* A folder stands for the images in it (sorted). A file that cannot be read is reported and
  skipped; the others are still classified.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np

from models.datasets import fit_image   # the rule training uses too

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy")


def expand(paths: List[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Files to read (folders expanded), and (path, problem) for what cannot be read."""
    files, bad = [], []
    for p in paths:
        if os.path.isdir(p):
            inside = sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(SUFFIXES))
            if not inside:
                bad.append((p, "is a folder with no image files (%s)" % ", ".join(SUFFIXES)))
            files += inside
        elif not os.path.exists(p):
            bad.append((p, "does not exist"))
        else:
            files.append(p)
    return files, bad


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    raise ValueError("holds %s values; expected 8- or 16-bit images" % a.dtype)


def _pil_from_array(a: np.ndarray):
    from PIL import Image
    a = _to_uint8(a)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return Image.fromarray(a, "L")
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        return Image.fromarray(a, "RGB" if a.shape[-1] == 3 else "RGBA")
    raise ValueError("has shape %s; expected [H, W], [H, W, 1|3|4] or a batch of those" % (list(a.shape),))


def _open(path: str):
    """A PIL image in L or RGB(A), 16-bit data scaled to 8 bits."""
    from PIL import Image
    im = Image.open(path)
    im.load()
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im)
        if a.dtype != np.uint16:      # mode I: 32-bit ints holding 16-bit data (PNG)
            a = np.clip(a, 0, 65535).astype(np.uint16)
        return Image.fromarray((a >> 8).astype(np.uint8), "L")
    return im


def read(paths: List[str], hwc: Tuple[int, int, int] = (32, 32, 3)):
    """(images uint8 [N, H, W, C], a name per image, problems [(path, what)], notes [str])."""
    h, w, c = hwc
    files, problems = expand(paths)
    out, names, resized = [], [], []
    for p in files:
        try:
            if p.lower().endswith(".npy"):
                arr = np.load(p, allow_pickle=False)
                batch = arr if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)) else arr[None]
                ims = [_pil_from_array(a) for a in batch]
                labels = ["%s[%d]" % (p, i) for i in range(len(ims))] if len(ims) > 1 else [p]
            else:
                ims, labels = [_open(p)], [p]
            for im, label in zip(ims, labels):
                before = im.size
                im = im.convert("RGB" if c == 3 else "L")
                im, changed = fit_image(im, h, w)
                if changed:
                    resized.append("%s %dx%d" % (label, before[0], before[1]))
                a = np.asarray(im, dtype=np.uint8)
                out.append(a if a.ndim == 3 else a[..., None])
                names.append(label)
        except Exception as e:   # Pillow and numpy raise many kinds; each is one line for the user
            problems.append((p, "cannot be read as an image: %s" % (str(e).splitlines() or [type(e).__name__])[0]))
    notes = []
    if resized:
        notes.append("resized to %dx%d (shorter side scaled, centre crop): %s%s" % (
            w, h, ", ".join(resized[:3]), " and %d more" % (len(resized) - 3) if len(resized) > 3 else ""))
    images = np.stack(out) if out else np.zeros((0, h, w, c), np.uint8)
    return images, names, problems, notes


def top_k(logits: np.ndarray, k: int = 3) -> List[List[Tuple[int, float]]]:
    """Per row, the k most probable classes with their softmax probabilities."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    idx = np.argsort(-p, axis=1)[:, :k]
    return [[(int(i), float(row[i])) for i in r] for r, row in zip(idx, p)]

"""Write a group model set as ONNX (needs the ``onnx`` package; no torch).

Input: per-group folded float32 tensors (see :func:`models.network.fold_column`) and one
head per k. Output in ``out_dir``:

* ``weights.bin``: every tensor of the G-group network once, plus the G heads; 64-byte
  aligned. Equal groups: each per-layer tensor is the concatenation of the groups along the
  output channels, run as one grouped Conv. Unequal groups (``Arch.group_widths``): each
  group's tensors are its own (``g{g}.conv{i}.w`` ...), run as a chain of its own, and the
  chains' features are concatenated before the head.
* ``k1.onnx`` .. ``kG.onnx``: standard ONNX graphs whose initializers are *external data*
  pointing into ``weights.bin``: a concatenated tensor of the k-network is the prefix of the
  G-network's (out-channel-major, C order), so its (offset, length) is the same offset and a
  shorter length; a group's own tensor is the same bytes in every kN that has the group.
  Any ONNX tool loads each file alone; all of them share one weight file.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .arch import Arch

OPSET = 13       # loadable by onnxruntime >= 1.6 (the Jetson Nano's JetPack 4 builds included)
IR_VERSION = 7
WEIGHTS = "weights.bin"
INPUT, OUTPUT = "input", "logits"


def level_file(k: int) -> str:
    return "k%d.onnx" % k


def _fc1_as_conv(a: Arch, w: np.ndarray) -> np.ndarray:
    """FC1 of a group is a conv over its final feature map: [hidden, C, s, s]."""
    return w.reshape(a.hidden, a.widths[-1], a.final_size, a.final_size)


def _concat_groups(arch: Arch, groups: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    full: Dict[str, np.ndarray] = {}
    if not arch.equal_groups:
        for g, t in enumerate(groups, 1):
            mine = dict(t, **{"fc1.w": _fc1_as_conv(arch.group(g), t["fc1.w"])})
            full.update(("g%d.%s" % (g, key), mine[key]) for key in t if not key.startswith("fc2."))
        return full
    for i in range(len(arch.widths)):
        full["conv%d.w" % i] = np.concatenate([g["conv%d.w" % i] for g in groups])
        full["conv%d.b" % i] = np.concatenate([g["conv%d.b" % i] for g in groups])
    full["fc1.w"] = np.concatenate([_fc1_as_conv(arch.group(1), g["fc1.w"]) for g in groups])
    full["fc1.b"] = np.concatenate([g["fc1.b"] for g in groups])
    return full


def _write_weights(path: str, tensors: Dict[str, np.ndarray]) -> Dict[str, int]:
    offsets: Dict[str, int] = {}
    with open(path, "wb") as f:
        for name, t in tensors.items():
            pad = (-f.tell()) % 64
            f.write(b"\0" * pad)
            offsets[name] = f.tell()
            f.write(np.ascontiguousarray(t, dtype="<f4").tobytes())
    return offsets


def _external(name: str, shape: Sequence[int], offset: int) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend(int(d) for d in shape)
    t.data_location = TensorProto.EXTERNAL
    length = int(np.prod(shape)) * 4
    for key, val in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = key, val
    return t


def _graph(arch: Arch, k: int, shapes: Dict[str, Tuple[int, ...]],
           tensor: Callable[[str, str, Sequence[int]], TensorProto]) -> onnx.ModelProto:
    """The k-group network of ``arch`` (k = 1: a plain dense network). ``tensor(name, key,
    shape)`` makes each initializer: external data into weights.bin, or embedded."""
    nodes, inits = [], []

    def init(name: str, key: str, shape):
        inits.append(tensor(name, key, shape))
        return name

    def column(a: Arch, n: int, tag: str, key: str) -> str:
        """Convs and FC1 of ``n`` equal groups of ``a`` (one grouped Conv per layer) on the
        input; ``tag`` suffixes the node names, ``key`` prefixes the weights.bin keys."""
        x, cin = INPUT, a.in_channels
        for i, (w, ks, pool) in enumerate(zip(a.widths, a.kernels, a.pools)):
            wn = init(key + "conv%d.w" % i, key + "conv%d.w" % i, (w * n, cin, ks, ks))
            bn = init(key + "conv%d.b" % i, key + "conv%d.b" % i, (w * n,))
            p, c = ks // 2, "conv%d%s" % (i, tag)
            nodes.append(helper.make_node("Conv", [x, wn, bn], [c], group=1 if i == 0 else n,
                                          kernel_shape=[ks, ks], pads=[p, p, p, p], name=c))
            x = "relu%d%s" % (i, tag)
            nodes.append(helper.make_node("Relu", [c], [x], name=x))
            if pool:
                nodes.append(helper.make_node("MaxPool", [x], ["pool%d%s" % (i, tag)], kernel_shape=[3, 3],
                                              strides=[2, 2], pads=[1, 1, 1, 1], name="pool%d%s" % (i, tag)))
                x = "pool%d%s" % (i, tag)
            cin = w
        s = a.final_size
        fw = init(key + "fc1.w", key + "fc1.w", (a.hidden * n, a.widths[-1], s, s))
        fb = init(key + "fc1.b", key + "fc1.b", (a.hidden * n,))
        nodes.append(helper.make_node("Conv", [x, fw, fb], ["fc1" + tag], group=n, kernel_shape=[s, s],
                                      name="fc1" + tag))
        nodes.append(helper.make_node("Relu", ["fc1" + tag], ["features4d" + tag], name="relu_fc1" + tag))
        nodes.append(helper.make_node("Flatten", ["features4d" + tag], ["features" + tag], axis=1,
                                      name="flatten" + tag))
        return "features" + tag

    if arch.equal_groups:
        features = column(arch.group(1), k, "", "")
    else:   # one chain per group; their features concatenated
        feats = [column(arch.group(g), 1, "_g%d" % g, "g%d." % g) for g in range(1, k + 1)]
        features = feats[0] if k == 1 else "features"
        if k > 1:
            nodes.append(helper.make_node("Concat", feats, [features], axis=1, name=features))
    hw = init("head.w", "head%d.w" % k, shapes["head%d.w" % k])
    hb = init("head.b", "head%d.b" % k, shapes["head%d.b" % k])
    nodes.append(helper.make_node("Gemm", [features, hw, hb], [OUTPUT], transB=1, name="head"))
    graph = helper.make_graph(
        nodes, "dnnscale_k%d" % k,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", arch.in_channels, arch.image, arch.image])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", arch.classes])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="dnnscale")
    model.ir_version = IR_VERSION
    return model


def write_group_set(out_dir: str, arch: Arch, groups: Sequence[Dict[str, np.ndarray]],
                    heads: Sequence[Dict[str, np.ndarray]]) -> List[str]:
    """Write weights.bin and k1..kG.onnx; return the file names (weights first)."""
    if len(heads) != len(groups):
        raise ValueError("need one head per k (%d groups, %d heads)" % (len(groups), len(heads)))
    os.makedirs(out_dir, exist_ok=True)
    tensors = _concat_groups(arch, groups)
    for k, h in enumerate(heads, 1):
        if h["w"].shape != (arch.classes, arch.features(k)):
            raise ValueError("head %d has shape %s, expected %s" % (k, h["w"].shape, (arch.classes, arch.features(k))))
        tensors["head%d.w" % k] = h["w"]
        tensors["head%d.b" % k] = h["b"]
    offsets = _write_weights(os.path.join(out_dir, WEIGHTS), tensors)
    shapes = {n: t.shape for n, t in tensors.items()}
    names = [WEIGHTS]
    external = lambda name, key, shape: _external(name, shape, offsets[key])
    for k in range(1, len(groups) + 1):
        model = _graph(arch, k, shapes, external)
        path = os.path.join(out_dir, level_file(k))
        onnx.save(model, path)
        onnx.checker.check_model(path)
        names.append(level_file(k))
    return names


def write_dense(path: str, arch: Arch, t: Dict[str, np.ndarray]) -> None:
    """One dense network (``fold_column`` layout, any widths) as a self-contained ONNX file
    with embedded weights: a portfolio variant, which shares nothing with the others."""
    s = arch.final_size
    data = dict(t)
    data["fc1.w"] = t["fc1.w"].reshape(arch.hidden, arch.widths[-1], s, s)
    data["head1.w"], data["head1.b"] = t["fc2.w"], t["fc2.b"]
    shapes = {n: v.shape for n, v in data.items()}

    def embedded(name, key, shape):
        arr = np.ascontiguousarray(data[key], dtype=np.float32)
        if tuple(arr.shape) != tuple(shape):
            raise ValueError("%s has shape %s, the graph needs %s" % (key, arr.shape, tuple(shape)))
        return numpy_helper.from_array(arr, name)

    model = _graph(arch, 1, shapes, embedded)
    onnx.save(model, path)
    onnx.checker.check_model(path)

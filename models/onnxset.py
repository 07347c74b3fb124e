"""Write a group model set as ONNX (needs the ``onnx`` package; no torch).

Input: per-group folded float32 tensors (see :func:`models.network.fold_column`) and one
head per k. Output in ``out_dir``:

* ``weights.bin``: every tensor of the G-group network once, plus the G heads; 64-byte
  aligned. Equal groups: each per-layer tensor is the concatenation of the groups along the
  output channels, run as one grouped Conv. Unequal groups (``Arch.group_widths``): each
  group's tensors are its own (``g{g}.conv{i}.w`` ...), run as a chain of its own, and the
  chains' features are concatenated before the head.
* ``c{a}-{b}.onnx``, ``h{k}.onnx``, ``s{k}.onnx``: the columns on their own, the heads and
  the anytime steps (:func:`write_columns`), on the same bytes of ``weights.bin``.
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


def _column(nodes: List, init: Callable, a: Arch, n: int, tag: str, key: str) -> str:
    """Convs and FC1 of ``n`` equal groups of ``a`` (one grouped Conv per layer) on the input;
    ``tag`` suffixes the node names, ``key`` prefixes the weights.bin keys. Returns the name
    of the features ([N, hidden x n])."""
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


def _features(arch: Arch, first: int, last: int, nodes: List, init: Callable) -> str:
    """The features of columns ``first``..``last`` concatenated (equal groups: one grouped
    chain; unequal: a chain per group)."""
    if arch.equal_groups:
        return _column(nodes, init, arch.group(1), last - first + 1, "", "")
    feats = [_column(nodes, init, arch.group(g), 1, "_g%d" % g, "g%d." % g) for g in range(first, last + 1)]
    if len(feats) == 1:
        return feats[0]
    nodes.append(helper.make_node("Concat", feats, ["features"], axis=1, name="features"))
    return "features"


def _model(nodes, inits, arch: Arch, name: str, output: str, width) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", arch.in_channels, arch.image, arch.image])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", width])],
        initializer=inits)
    return _opset(helper.make_model(graph, producer_name="dnnscale"))


def _graph(arch: Arch, k: int, shapes: Dict[str, Tuple[int, ...]],
           tensor: Callable[[str, str, Sequence[int]], TensorProto]) -> onnx.ModelProto:
    """The k-group network of ``arch`` (k = 1: a plain dense network). ``tensor(name, key,
    shape)`` makes each initializer: external data into weights.bin, or embedded."""
    nodes, inits = [], []

    def init(name: str, key: str, shape):
        inits.append(tensor(name, key, shape))
        return name

    features = _features(arch, 1, k, nodes, init)
    hw = init("head.w", "head%d.w" % k, shapes["head%d.w" % k])
    hb = init("head.b", "head%d.b" % k, shapes["head%d.b" % k])
    nodes.append(helper.make_node("Gemm", [features, hw, hb], [OUTPUT], transB=1, name="head"))
    return _model(nodes, inits, arch, "dnnscale_k%d" % k, OUTPUT, arch.classes)


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
        names.append(_save(out_dir, level_file(k), _graph(arch, k, shapes, external)))
    return names + write_columns(out_dir, arch, len(groups), shapes, offsets)


def range_file(first: int, last: int) -> str:
    return "c%d-%d.onnx" % (first, last)


def head_file(k: int) -> str:
    return "h%d.onnx" % k


def step_file(k: int) -> str:
    return "s%d.onnx" % k


def columns_entry(groups: int) -> Dict:
    """The manifest's ``columns``: the graph of every column range, every head and every
    anytime step."""
    return {"ranges": {"%d-%d" % (a, b): range_file(a, b) for a in range(1, groups + 1)
                       for b in range(a, groups + 1)},
            "heads": {str(k): head_file(k) for k in range(1, groups + 1)},
            "steps": {str(k): step_file(k) for k in range(1, groups + 1)}}


def write_columns(out_dir: str, arch: Arch, groups: int, shapes: Dict[str, Tuple[int, ...]],
                  offsets: Dict[str, int]) -> List[str]:
    """The columns on their own: ``c{a}-{b}.onnx`` gives the features of columns a..b
    ([N, hidden of each, concatenated]) and ``h{k}.onnx`` the head of k over the features of
    columns 1..k; their weights are the same bytes of weights.bin as the kN graphs' (a range
    of columns is a slice of every concatenated tensor, or its groups' own tensors), so one
    inference may run its column ranges at once, on different processors, and join them in
    the head (docs/model-set.md, "Columns"); ``s{k}.onnx`` is anytime step k (:func:`_step`)."""
    names = []
    for a in range(1, groups + 1):
        for b in range(a, groups + 1):
            nodes, inits = [], []
            feats = _features(arch, a, b, nodes, _slice_init(arch, groups, shapes, offsets, a, b, inits))
            nodes.append(helper.make_node("Identity", [feats], ["features_out"], name="out"))
            width = sum(arch.group(g).hidden for g in range(a, b + 1))
            names.append(_save(out_dir, range_file(a, b), _model(nodes, inits, arch, "dnnscale_c%d_%d" % (a, b),
                                                                  "features_out", width)))
    for k in range(1, groups + 1):
        w, b = shapes["head%d.w" % k], shapes["head%d.b" % k]
        graph = helper.make_graph(
            [helper.make_node("Gemm", ["features", "head.w", "head.b"], [OUTPUT], transB=1, name="head")],
            "dnnscale_h%d" % k,
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", int(w[1])])],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", int(w[0])])],
            initializer=[_external("head.w", w, offsets["head%d.w" % k]), _external("head.b", b, offsets["head%d.b" % k])])
        names.append(_save(out_dir, head_file(k), _opset(helper.make_model(graph, producer_name="dnnscale"))))
    for k in range(1, groups + 1):
        names.append(_save(out_dir, step_file(k), _step(arch, groups, shapes, offsets, k)))
    return names


def _slice_init(arch: Arch, groups: int, shapes: Dict[str, Tuple[int, ...]], offsets: Dict[str, int],
                first: int, last: int, inits: List) -> Callable:
    """The ``init`` of columns first..last: each tensor is a slice of the concatenated one in
    weights.bin (or its group's own tensor)."""
    def init(name: str, key: str, shape):
        full = shapes[key]             # all G groups (or the group's own tensor)
        if arch.equal_groups:          # out-channel-major: groups first..last are one slice
            per = int(np.prod(full)) * 4 // groups
            inits.append(_external(name, shape, offsets[key] + (first - 1) * per))
        else:
            inits.append(_external(name, shape, offsets[key]))
        return name
    return init


def _step(arch: Arch, groups: int, shapes: Dict[str, Tuple[int, ...]], offsets: Dict[str, int],
          k: int) -> onnx.ModelProto:
    """Anytime step k: column k on ``input``, its features appended to ``previous`` (those of
    columns 1..k-1; k = 1 has none), head k: outputs ``columns`` (the features of columns
    1..k, the next step's ``previous``), ``logits`` and ``top`` (the top-1 probability per image). One
    session run per added group, no numpy between them (docs/model-set.md, "Anytime answers")."""
    nodes, inits = [], []
    feats = _features(arch, k, k, nodes, _slice_init(arch, groups, shapes, offsets, k, k, inits))
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", arch.in_channels, arch.image, arch.image])]
    if k == 1:
        nodes.append(helper.make_node("Identity", [feats], ["columns"], name="columns"))
    else:
        inputs.append(helper.make_tensor_value_info("previous", TensorProto.FLOAT, ["N", arch.features(k - 1)]))
        nodes.append(helper.make_node("Concat", ["previous", feats], ["columns"], axis=1, name="columns"))
    w, b = shapes["head%d.w" % k], shapes["head%d.b" % k]
    inits += [_external("head.w", w, offsets["head%d.w" % k]), _external("head.b", b, offsets["head%d.b" % k])]
    nodes += [helper.make_node("Gemm", ["columns", "head.w", "head.b"], [OUTPUT], transB=1, name="head"),
              helper.make_node("Softmax", [OUTPUT], ["probabilities"], axis=1, name="softmax"),
              helper.make_node("ReduceMax", ["probabilities"], ["top"], axes=[1], keepdims=0, name="top")]
    graph = helper.make_graph(nodes, "dnnscale_s%d" % k, inputs,
                              [helper.make_tensor_value_info("columns", TensorProto.FLOAT, ["N", arch.features(k)]),
                               helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", arch.classes]),
                               helper.make_tensor_value_info("top", TensorProto.FLOAT, ["N"])],
                              initializer=inits)
    return _opset(helper.make_model(graph, producer_name="dnnscale"))


def _opset(model: onnx.ModelProto) -> onnx.ModelProto:
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def _save(out_dir: str, name: str, model: onnx.ModelProto) -> str:
    path = os.path.join(out_dir, name)
    onnx.save(model, path)
    onnx.checker.check_model(path)
    return name


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


def add_columns(model_dir: str, manifest: Dict) -> List[str]:
    """Write the column graphs of a group set exported before they existed, from the offsets
    and shapes its ``k{G}.onnx`` (every tensor of the G-group network) and ``k1..k{G}.onnx``
    (the heads) give for weights.bin, and list them in ``manifest`` (``files``, ``columns``;
    the caller writes it); returns the new files."""
    from .arch import Arch
    arch = Arch.from_dict(manifest["arch"])
    groups = len(manifest["levels"])
    offsets: Dict[str, int] = {}
    shapes: Dict[str, Tuple[int, ...]] = {}
    for k in range(1, groups + 1):
        model = onnx.load(os.path.join(model_dir, level_file(k)), load_external_data=False)
        for t in model.graph.initializer:
            ext = {e.key: e.value for e in t.external_data}
            key = "head%d.%s" % (k, t.name.split(".")[1]) if t.name.startswith("head.") else t.name
            if k == groups or key.startswith("head"):
                offsets[key], shapes[key] = int(ext["offset"]), tuple(int(d) for d in t.dims)
    files = write_columns(model_dir, arch, groups, shapes, offsets)
    for f in files:
        manifest["files"].setdefault(f, {})
    manifest["columns"] = columns_entry(groups)
    return files

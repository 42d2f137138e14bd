"""MobileNetV2 (1.0, 224x224) as an ONNX graph, built here with the ``onnx`` helper API.

The published architecture (Sandler et al., 2018): a 3x3 stride-2 convolution to 32
channels, seventeen inverted residual blocks (1x1 expansion by 6 — 1 in the first block —,
3x3 depthwise, 1x1 linear projection; a residual Add where stride is 1 and the widths
match) with widths 16-24-32-64-96-160-320, a 1x1 convolution to 1280, global average
pooling and a 1000-way fully connected layer. ReLU6 is ``Clip(0, 6)``. BatchNorm is folded
into the convolutions' weights and biases, as exported inference graphs have it, so the
operators and FLOPs (~300 M multiply-adds) are those of the published model; the weights
are seeded random numbers (He-scaled), so its answers mean nothing.

The model is written once to a cache directory and reused (:func:`ensure_model`).
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, List, Tuple

log = logging.getLogger("gil_adapt.bench")

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_SHAPE = (1, 3, 224, 224)
OPSET = 13
SEED = 0
# (expansion t, output channels c, repeats n, first stride s) — Table 2 of the paper
INVERTED_RESIDUAL_SETTING: List[Tuple[int, int, int, int]] = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
NUM_CLASSES = 1000
MODEL_FILE = f"mobilenetv2-1.0-224-seed{SEED}-opset{OPSET}.onnx"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gil-adapt")


def build_model(seed: int = SEED) -> Any:
    """The MobileNetV2 ``onnx.ModelProto`` (checked by ``onnx.checker``)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: List[Any] = []
    inits: List[Any] = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    six = numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min")
    inits += [six, zero]

    def conv(x: str, cin: int, cout: int, k: int, stride: int, groups: int,
             relu6: bool) -> str:
        fan_in = cin // groups * k * k
        w = (rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / fan_in))
        wname, bname = name("W"), name("B")
        inits.append(numpy_helper.from_array(w.astype(np.float32), wname))
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(cout) * 0.01).astype(np.float32), bname))
        out = name("conv")
        pad = k // 2
        nodes.append(helper.make_node("Conv", [x, wname, bname], [out], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[pad] * 4,
                                      group=groups))
        if not relu6:
            return out
        act = name("relu6")
        nodes.append(helper.make_node("Clip", [out, "relu6_min", "relu6_max"], [act]))
        return act

    x = conv(INPUT_NAME, 3, STEM_CHANNELS, 3, 2, 1, True)
    cin = STEM_CHANNELS
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = x
            if t != 1:
                h = conv(h, cin, hidden, 1, 1, 1, True)            # expansion
            h = conv(h, hidden, hidden, 3, stride, hidden, True)   # depthwise
            h = conv(h, hidden, c, 1, 1, 1, False)                 # linear projection
            if stride == 1 and cin == c:
                added = name("add")
                nodes.append(helper.make_node("Add", [x, h], [added]))
                h = added
            x, cin = h, c
    x = conv(x, cin, LAST_CHANNELS, 1, 1, 1, True)
    pooled = name("pool")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
    flat = name("flatten")
    nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
    fc_w = (rng.standard_normal((NUM_CLASSES, LAST_CHANNELS)) * np.sqrt(1.0 / LAST_CHANNELS))
    inits.append(numpy_helper.from_array(fc_w.astype(np.float32), "fc_W"))
    inits.append(numpy_helper.from_array(np.zeros(NUM_CLASSES, np.float32), "fc_B"))
    nodes.append(helper.make_node("Gemm", [flat, "fc_W", "fc_B"], [OUTPUT_NAME], transB=1))

    graph = helper.make_graph(
        nodes, "mobilenetv2",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, NUM_CLASSES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="gil-adapt-bench")
    model.ir_version = min(model.ir_version, 8)  # readable by older ONNX Runtime releases
    onnx.checker.check_model(model)
    return model


def ensure_model(cache_dir: str) -> str:
    """The path of the cached model, built and written (atomically) on first use."""
    path = os.path.join(cache_dir, MODEL_FILE)
    if os.path.exists(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    import onnx

    log.info("building MobileNetV2 (seeded weights) into %s", path)
    model = build_model()
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".onnx.tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one inference (Conv and Gemm), from the graph's shapes."""
    from onnx import numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            cout, cin_g, kh, kw = weights[node.input[1]]
            out = shapes[node.output[0]]
            macs += out[2] * out[3] * cout * cin_g * kh * kw
        elif node.op_type == "Gemm":
            n_out, n_in = weights[node.input[1]]
            macs += n_out * n_in
    return macs

"""QONNX export: the network IR as an ONNX graph with QONNX's custom ops, as FINN reads it.

:func:`to_qonnx` builds a ``ModelWrapper`` that computes exactly the IR's integer
semantics (the golden model's logits), and :func:`export_qonnx` writes it to a file.

The graph, per layer (all tensors float32 holding integers):

- input ``global_in``: uint8 pixel values ``(N, C, H, W)`` (QONNX datatype ``UINT8``);
- activation planes are ``±1`` tensors (``BIPOLAR``), one per plane;
- weight planes are ``±1`` initializers passed through ``BipolarQuant`` (scale 1);
- each op is ``Conv`` (or ``MatMul`` on the flattened ``(C, H, W)`` input) of its
  activation plane with its weight plane, times its integer gain; the ops are summed
  and the integer bias added: the IR's ``acc``. Padding is a ``Pad`` with the pad bit
  as ``±1``;
- a threshold stage is one ``MultiThreshold`` per output plane (``out_scale=2``,
  ``out_bias=-1``: ``acc >= t`` gives +1, else -1). A flipped channel ``c`` thresholds
  ``-acc`` at ``1 - t``: ``NOT(acc >= t) = (acc <= t - 1) = (-acc >= 1 - t)`` for integers;
- max-pooling is ``MaxPool`` on the ``±1`` planes (the max of ±1 is the OR of the bits);
- the affine last layer's ``acc`` is the output ``global_out`` ``(N, num_classes)``.

The first layer reads the 8 pixel bit planes. When its ops are bit-serial (gain
``c_j * 2**i`` for weight plane ``j`` and every pixel plane ``i``), the planes are
summed first: ``sum_i 2**i s_i = 2x - 255`` and the layer is one ``Conv`` per weight
plane on ``2x - 255`` (padding ``±255``), as a float first layer with integer weights.
Otherwise the planes are extracted with ``Floor``: ``bit_i = floor(x / 2**i) - 2 floor(x / 2**(i+1))``.

Exactness: every intermediate value is an integer bounded by the layer's
accumulator bound (``ir.acc_bound``), so float32 arithmetic is exact in any summation
order when that bound fits in 24-bit two's complement. A wider layer (the first
layer of an MLP with 10-bit weights reaches 25 bits) still computes each op's
``Conv``/``MatMul`` in float32 (``|value| <= 255 K``, exact), then casts it to float64
for the gains, the sum, the bias and the thresholds (exact to 53 bits; the IR allows
48); its output planes are cast back to float32, and a wide last layer makes
``global_out`` float64. Thresholds outside the reachable range are clipped to one
past it (same bits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from binforge.compiler.ir import (
    INPUT_PLANES,
    ConvLayer,
    LinearLayer,
    MaxPoolLayer,
    Network,
    acc_bound,
    bits_to_signs,
    signed_width,
    validate,
)
from onnx import TensorProto

__all__ = ["QonnxExportError", "MAX_EXACT_WIDTH", "INPUT_NAME", "OUTPUT_NAME", "to_qonnx",
           "export_qonnx", "run_qonnx"]

#: Accumulators wider than this (two's complement bits) are summed in float64.
MAX_EXACT_WIDTH = 24
#: Integers up to this magnitude are exact in float32.
FLOAT32_EXACT = 1 << 24
#: Names of the graph's input (uint8 pixels as float) and output (integer logits).
INPUT_NAME = "global_in"
OUTPUT_NAME = "global_out"
#: The ONNX domain of QONNX's custom ops (MultiThreshold, BipolarQuant).
QONNX_DOMAIN = "qonnx.custom_op.general"


class QonnxExportError(ValueError):
    """A network the QONNX export cannot express exactly; the message says why."""


class _GraphBuilder:
    """Collects nodes and initializers, handing out unique tensor names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, values: np.ndarray, dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(values, dtype=dtype), name))
        return name

    def node(self, op_type: str, inputs: list[str], hint: str, domain: str = "", **attrs) -> str:
        from onnx import helper

        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, domain=domain, **attrs))
        return out


def _check_exact(layer: ConvLayer | LinearLayer, first: bool) -> None:
    """Refuse a layer whose single products (before gains) are not exact in float32."""
    reach = layer.fan_in * (255 if first else 1)
    if reach >= FLOAT32_EXACT:
        raise QonnxExportError(
            f"layer {layer.name!r}: one product reaches {reach}, beyond the integers float32 "
            f"ONNX Conv/MatMul holds exactly ({FLOAT32_EXACT}); the layer's fan-in is too large")


def _bit_serial_factors(layer: ConvLayer | LinearLayer) -> dict[int, int] | None:
    """``{weight_plane: c_j}`` when the ops are exactly ``Op(j, i, c_j * 2**i)`` for every
    pixel plane ``i`` of each weight plane ``j`` used; ``None`` otherwise."""
    by_weight: dict[int, dict[int, int]] = {}
    for op in layer.ops:
        by_weight.setdefault(op.weight_plane, {})[op.act_plane] = op.gain
    factors = {}
    for plane, gains in by_weight.items():
        if sorted(gains) != list(range(INPUT_PLANES)) or gains[0] == 0:
            return None
        if any(gains[i] != gains[0] << i for i in range(INPUT_PLANES)):
            return None
        factors[plane] = gains[0]
    return factors


def _weight_plane(g: _GraphBuilder, layer: ConvLayer | LinearLayer, plane: int) -> str:
    """A BipolarQuant node giving weight plane ``plane`` as ±1, in ONNX's layout."""
    signs = bits_to_signs(layer.weights[plane]).astype(np.float32)
    if layer.kind == "linear":
        signs = signs.T  # (K, Co) for MatMul
    raw = g.const(f"{layer.name}_w{plane}", signs)
    scale = g.const(f"{layer.name}_w{plane}_scale", np.float32(1.0))
    return g.node("BipolarQuant", [raw, scale], f"{layer.name}_wq{plane}", domain=QONNX_DOMAIN)


def _pad(g: _GraphBuilder, layer: ConvLayer, x: str, value: float) -> str:
    if layer.kind != "conv" or layer.padding == 0:
        return x
    p = layer.padding
    pads = g.const(f"{layer.name}_pads", np.array([0, 0, p, p, 0, 0, p, p], dtype=np.int64), np.int64)
    fill = g.const(f"{layer.name}_padvalue", np.float32(value))
    return g.node("Pad", [x, pads, fill], f"{layer.name}_pad", mode="constant")


def _product(g: _GraphBuilder, layer: ConvLayer | LinearLayer, x: str, weight: str, gain: int,
             dtype: type) -> str:
    if layer.kind == "conv":
        k, s = layer.kernel, layer.stride
        y = g.node("Conv", [x, weight], f"{layer.name}_conv", kernel_shape=[k, k], strides=[s, s],
                   pads=[0, 0, 0, 0])
    else:
        y = g.node("MatMul", [x, weight], f"{layer.name}_matmul")
    if dtype is np.float64:
        y = g.node("Cast", [y], f"{layer.name}_wide", to=TensorProto.DOUBLE)
    if gain != 1:
        y = g.node("Mul", [y, g.const(f"{layer.name}_gain", np.array(gain), dtype)], f"{layer.name}_gained")
    return y


def _pixel_planes(g: _GraphBuilder, pixels: str) -> list[str]:
    """The 8 pixel bit planes of ``pixels`` as ±1: ``2 (floor(x/2^i) - 2 floor(x/2^(i+1))) - 1``."""
    floors = [pixels]
    for i in range(1, INPUT_PLANES + 1):
        div = g.node("Div", [pixels, g.const(f"pow{i}", np.float32(1 << i))], f"in_div{i}")
        floors.append(g.node("Floor", [div], f"in_floor{i}"))
    two, one = g.const("two", np.float32(2)), g.const("one", np.float32(1))
    planes = []
    for i in range(INPUT_PLANES):
        bit = g.node("Sub", [floors[i], g.node("Mul", [floors[i + 1], two], f"in_twice{i}")], f"in_bit{i}")
        planes.append(g.node("Sub", [g.node("Mul", [bit, two], f"in_double{i}"), one], f"in_plane{i}"))
    return planes


def _accumulator(g: _GraphBuilder, layer: ConvLayer | LinearLayer, planes: list[str] | str,
                 first: bool, dtype: type) -> str:
    """The integer ``acc`` of a compute layer, ``(N, Co, Ho, Wo)`` (``(N, Co, 1, 1)`` for linear)."""
    pad_sign = float(bits_to_signs(np.array(getattr(layer, "pad_bit", 1))))
    terms: list[str] = []
    factors = _bit_serial_factors(layer) if first else None
    if first and factors is not None:
        # sum_i 2**i s_i = 2x - 255: one product per weight plane on the combined value
        pixels = planes
        value = g.node("Sub", [g.node("Mul", [pixels, g.const("two", np.float32(2))], "in_double"),
                               g.const("offset", np.float32(255))], "in_value")
        value = _pad(g, layer, value, 255.0 * pad_sign)
        if layer.kind == "linear":
            value = g.node("Flatten", [value], f"{layer.name}_flat", axis=1)
        for plane, factor in sorted(factors.items()):
            terms.append(_product(g, layer, value, _weight_plane(g, layer, plane), factor, dtype))
    else:
        if first:
            planes = _pixel_planes(g, planes)
        inputs = {}
        weights = {}
        for op in layer.ops:
            if op.act_plane not in inputs:
                x = _pad(g, layer, planes[op.act_plane], pad_sign)
                if layer.kind == "linear":
                    x = g.node("Flatten", [x], f"{layer.name}_flat", axis=1)
                inputs[op.act_plane] = x
            if op.weight_plane not in weights:
                weights[op.weight_plane] = _weight_plane(g, layer, op.weight_plane)
            terms.append(_product(g, layer, inputs[op.act_plane], weights[op.weight_plane], op.gain, dtype))
    acc = terms[0] if len(terms) == 1 else g.node("Sum", terms, f"{layer.name}_sum")
    if layer.kind == "linear":
        acc = g.node("Reshape", [acc, g.const(f"{layer.name}_shape", np.array([-1, layer.out_features, 1, 1]),
                                              np.int64)], f"{layer.name}_acc4d")
    bias = np.asarray(layer.bias).reshape(1, -1, 1, 1)
    return g.node("Add", [acc, g.const(f"{layer.name}_bias", bias, dtype)], f"{layer.name}_acc")


def _threshold_planes(g: _GraphBuilder, layer: ConvLayer | LinearLayer, acc: str, dtype: type) -> list[str]:
    stage = layer.output
    lo, hi = acc_bound(layer)
    flip = np.asarray(stage.flip, dtype=np.int64)
    signs = np.where(flip == 1, -1.0, 1.0).reshape(1, -1, 1, 1)
    oriented = acc
    if np.any(flip):
        oriented = g.node("Mul", [acc, g.const(f"{layer.name}_flipsign", signs, dtype)], f"{layer.name}_oriented")
    planes = []
    for n in range(stage.planes):
        t = np.clip(np.asarray(stage.thresholds[n], dtype=np.int64), lo - 1, hi + 1)
        t = np.where(flip == 1, 1 - t, t).reshape(-1, 1)
        plane = g.node("MultiThreshold", [oriented, g.const(f"{layer.name}_t{n}", t, dtype)],
                       f"{layer.name}_plane{n}", domain=QONNX_DOMAIN, out_dtype="BIPOLAR",
                       out_scale=2.0, out_bias=-1.0, data_layout="NCHW")
        if dtype is np.float64:
            plane = g.node("Cast", [plane], f"{layer.name}_plane{n}_f32", to=TensorProto.FLOAT)
        planes.append(plane)
    return planes


def to_qonnx(net: Network, batch_size: int = 1):
    """The network as a QONNX ``ModelWrapper`` with inferred shapes and datatypes.

    Input ``global_in``: float32 ``(batch_size, C, H, W)`` holding uint8 pixel values;
    output ``global_out``: float32 ``(batch_size, num_classes)`` holding the integer logits
    (the golden model's, exactly; float64 when the last layer's accumulators are wider
    than 24 bits). Raises :class:`QonnxExportError` for a layer whose fan-in is so large
    that one product is not exact in float32.
    """
    from onnx import helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.basic import qonnx_make_model

    validate(net)
    if batch_size < 1:
        raise QonnxExportError(f"batch_size must be at least 1, not {batch_size}")
    g = _GraphBuilder()
    planes: list[str] | str = INPUT_NAME
    first = True
    logits, logits_type = None, TensorProto.FLOAT
    for layer in net.layers:
        if isinstance(layer, MaxPoolLayer):
            k, s = layer.kernel, layer.stride
            planes = [g.node("MaxPool", [p], f"{layer.name}_p{i}", kernel_shape=[k, k], strides=[s, s])
                      for i, p in enumerate(planes)]
            continue
        _check_exact(layer, first)
        wide = signed_width(*acc_bound(layer)) > MAX_EXACT_WIDTH
        dtype = np.float64 if wide else np.float32
        acc = _accumulator(g, layer, planes, first, dtype)
        first = False
        if layer.output.kind == "threshold":
            planes = _threshold_planes(g, layer, acc, dtype)
        else:
            logits, logits_type = acc, TensorProto.DOUBLE if wide else TensorProto.FLOAT
    g.nodes.append(helper.make_node("Flatten", [logits], [OUTPUT_NAME], name="logits", axis=1))

    c, h, w = net.input_shape.as_tuple()
    graph = helper.make_graph(
        g.nodes, net.name or "binforge",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch_size, c, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, logits_type, [batch_size, net.num_classes])],
        initializer=g.initializers)
    model = ModelWrapper(qonnx_make_model(graph, producer_name="binforge"))
    model.set_tensor_datatype(INPUT_NAME, DataType["UINT8"])
    model = model.transform(InferShapes())
    model = model.transform(InferDataTypes())
    return model


def export_qonnx(net: Network, path: str | Path, batch_size: int = 1) -> Path:
    """Write the network's QONNX graph (see :func:`to_qonnx`) to ``path``; return the path."""
    path = Path(path)
    to_qonnx(net, batch_size).save(str(path))
    return path


def run_qonnx(model, images: np.ndarray) -> np.ndarray:
    """Run uint8 images ``(N, C, H, W)`` through a QONNX model with QONNX's executor,
    one batch of the model's batch size at a time; return int64 logits ``(N, classes)``."""
    from qonnx.core.onnx_exec import execute_onnx

    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise QonnxExportError(f"images must be uint8 pixels, not {images.dtype}")
    batch = model.get_tensor_shape(INPUT_NAME)[0]
    if len(images) % batch:
        raise QonnxExportError(f"{len(images)} images do not split into batches of {batch}")
    parts = []
    for start in range(0, len(images), batch):
        x = images[start:start + batch].astype(np.float32)
        out = execute_onnx(model, {INPUT_NAME: x})[OUTPUT_NAME]
        parts.append(out)
    logits = np.concatenate(parts, axis=0)
    as_int = np.rint(logits).astype(np.int64)
    if not np.array_equal(as_int, logits):
        raise QonnxExportError("the QONNX model produced non-integer logits")
    return as_int

"""The network IR: what the compiler writes and the golden model and hardware execute.

This module is the one source of truth for binforge's numbers.

Bit convention (used everywhere, re-derived nowhere):

- bit 1 means +1, bit 0 means -1; ``sign(0) = +1``;
- element ``i`` of a vector is bit ``i % 64`` of word ``i // 64`` (LSB first);
- for K-bit vectors a, w: ``dot(a, w) = K - 2 * popcount(a XOR w)``.

Every layer the hardware runs is a list of ops and an output stage::

    acc[c] = sum_op gain_op * dot(W[op.weight_plane][c], window(A[op.act_plane])) + bias[c]

An activation tensor between layers is a stack of bit planes ``(planes, C, H, W)``.
The input image (uint8 pixels) is 8 planes, plane ``i`` holding bit ``i`` of each
pixel: read as +-1 digits s_i, ``2x - 255 = sum_i 2**i * s_i`` exactly, so the
first layer is the same machine with gains ``2**(i + j)``. Output stages:

- ``ThresholdStage``: ``bit[n, c] = (acc[c] >= thresholds[n, c]) XOR flip[c]``, one
  plane per activation base ``n`` the next layer uses;
- ``AffineStage``: the integer ``acc`` itself is the output (logits, real value
  ``acc * scale``); the class is the first index of the maximum.

The IR is frozen dataclasses with a schema version. :func:`save` writes
``network.json`` + ``weights.npz`` (packed bits and integers, no pickle);
:func:`load` reads and validates them and names the first problem found.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "INPUT_PLANES",
    "IRError",
    "Shape",
    "Op",
    "ThresholdStage",
    "AffineStage",
    "ConvLayer",
    "LinearLayer",
    "MaxPoolLayer",
    "Layer",
    "Network",
    "signs_to_bits",
    "bits_to_signs",
    "pack_bits",
    "unpack_bits",
    "popcount",
    "xnor_dot",
    "pixel_planes",
    "signed_width",
    "acc_bound",
    "save",
    "load",
    "validate",
]

SCHEMA_VERSION = 1
#: Bit planes of a uint8 pixel.
INPUT_PLANES = 8
#: The widest accumulator the IR allows (the golden model computes in int64).
MAX_ACC_WIDTH = 48


class IRError(ValueError):
    """An IR that cannot be used; the message names the first problem found."""


# --------------------------------------------------------------------------------------
# The bit convention
# --------------------------------------------------------------------------------------


def signs_to_bits(values: np.ndarray) -> np.ndarray:
    """Map real values to bits: ``x >= 0`` (so sign(0) = +1) is bit 1, else bit 0."""
    return (np.asarray(values) >= 0).astype(np.uint8)


def bits_to_signs(bits: np.ndarray) -> np.ndarray:
    """Map bits to +-1 integers (bit 1 -> +1, bit 0 -> -1), as int64."""
    return np.asarray(bits).astype(np.int64) * 2 - 1


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack the last axis of a 0/1 array into uint64 words, element ``i`` at bit ``i % 64``
    of word ``i // 64``. Unused high bits of the last word are 0."""
    bits = np.asarray(bits, dtype=np.uint8)
    k = bits.shape[-1]
    words = max(1, math.ceil(k / 64))
    padded = np.zeros(bits.shape[:-1] + (words * 64,), dtype=np.uint8)
    padded[..., :k] = bits
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(as_bytes).view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``k`` bits of each row, as uint8 0/1."""
    words = np.ascontiguousarray(np.asarray(words, dtype=np.uint64)).astype("<u8")
    as_bytes = words.view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :k]


def popcount(words: np.ndarray) -> np.ndarray:
    """Number of 1 bits summed over the last axis of a uint64 array (int64)."""
    return np.bitwise_count(words).sum(axis=-1, dtype=np.int64)


def xnor_dot(a: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """The +-1 dot product of packed vectors: ``k - 2 * popcount(a XOR w)``.

    ``a`` and ``w`` are packed by :func:`pack_bits` (same number of words, broadcastable).
    """
    return k - 2 * popcount(np.bitwise_xor(a, w))


def pixel_planes(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(N, C, H, W)`` -> bit planes ``(N, 8, C, H, W)``, plane ``i`` = bit ``i``.

    Read as +-1 digits s_i, ``sum_i 2**i * s_i == 2 * x - 255`` for every pixel x.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise IRError(f"input images must be uint8 pixels, not {images.dtype}")
    shifts = np.arange(INPUT_PLANES, dtype=np.uint8).reshape(1, INPUT_PLANES, 1, 1, 1)
    return (images[:, None] >> shifts) & np.uint8(1)


def signed_width(lo: int, hi: int) -> int:
    """Bits of a two's-complement integer that holds every value in ``[lo, hi]``."""
    width = 1
    while not (-(1 << (width - 1)) <= lo and hi <= (1 << (width - 1)) - 1):
        width += 1
    return width


# --------------------------------------------------------------------------------------
# The dataclasses
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Shape of one activation plane: channels, height, width."""

    channels: int
    height: int
    width: int

    @property
    def size(self) -> int:
        return self.channels * self.height * self.width

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class Op:
    """One binary convolution: weight plane x activation plane, scaled by an integer gain."""

    weight_plane: int
    act_plane: int
    gain: int


@dataclass(frozen=True, eq=False)
class ThresholdStage:
    """Bits for the next layer: ``bit[n, c] = (acc[c] >= thresholds[n, c]) XOR flip[c]``.

    ``thresholds`` is int64 ``(planes, channels)``; ``flip`` is uint8 ``(channels,)``.
    """

    thresholds: np.ndarray
    flip: np.ndarray
    kind: Literal["threshold"] = "threshold"

    @property
    def planes(self) -> int:
        return int(self.thresholds.shape[0])


@dataclass(frozen=True)
class AffineStage:
    """The integer accumulator is the output value (logits); real value = ``acc * scale``.

    ``argmax``: the layer's result is the class index, the first index of the maximum.
    """

    scale: float
    argmax: bool = True
    kind: Literal["affine"] = "affine"

    @property
    def planes(self) -> int:
        return 0


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """A k x k convolution over bit planes.

    ``weights``: uint8 bits ``(weight_planes, out_channels, in_channels, k, k)``.
    Padding positions read ``pad_bit`` in every activation plane (0 is -1, and for
    the pixel planes of the input, all-zero bits are pixel value 0).
    """

    name: str
    in_shape: Shape
    in_planes: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    pad_bit: int
    weights: np.ndarray
    ops: tuple[Op, ...]
    bias: np.ndarray
    acc_width: int
    output: ThresholdStage | AffineStage
    kind: Literal["conv"] = "conv"

    @property
    def out_shape(self) -> Shape:
        h = (self.in_shape.height + 2 * self.padding - self.kernel) // self.stride + 1
        w = (self.in_shape.width + 2 * self.padding - self.kernel) // self.stride + 1
        return Shape(self.out_channels, h, w)

    @property
    def out_planes(self) -> int:
        return self.output.planes

    @property
    def fan_in(self) -> int:
        """K: bits in one dot product."""
        return self.in_shape.channels * self.kernel * self.kernel

    @property
    def weight_planes(self) -> int:
        return int(self.weights.shape[0])


@dataclass(frozen=True, eq=False)
class LinearLayer:
    """A fully connected layer over the flattened input, in (C, H, W) order.

    ``weights``: uint8 bits ``(weight_planes, out_features, C * H * W)``.
    """

    name: str
    in_shape: Shape
    in_planes: int
    out_features: int
    weights: np.ndarray
    ops: tuple[Op, ...]
    bias: np.ndarray
    acc_width: int
    output: ThresholdStage | AffineStage
    kind: Literal["linear"] = "linear"

    @property
    def out_shape(self) -> Shape:
        return Shape(self.out_features, 1, 1)

    @property
    def out_planes(self) -> int:
        return self.output.planes

    @property
    def fan_in(self) -> int:
        return self.in_shape.size

    @property
    def out_channels(self) -> int:
        return self.out_features

    @property
    def weight_planes(self) -> int:
        return int(self.weights.shape[0])


@dataclass(frozen=True)
class MaxPoolLayer:
    """Max-pooling on bit planes: with +1 = bit 1 the max of a window is the OR of its bits."""

    name: str
    in_shape: Shape
    in_planes: int
    kernel: int
    stride: int
    kind: Literal["maxpool"] = "maxpool"

    @property
    def out_shape(self) -> Shape:
        h = (self.in_shape.height - self.kernel) // self.stride + 1
        w = (self.in_shape.width - self.kernel) // self.stride + 1
        return Shape(self.in_shape.channels, h, w)

    @property
    def out_planes(self) -> int:
        return self.in_planes


Layer = ConvLayer | LinearLayer | MaxPoolLayer


@dataclass(frozen=True)
class Network:
    """A whole network: uint8 image in, class index (and integer logits) out."""

    name: str
    input_shape: Shape
    num_classes: int
    layers: tuple[Layer, ...]
    classes: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    schema_version: int = SCHEMA_VERSION
    input_format: str = "uint8"

    @property
    def compute_layers(self) -> tuple[ConvLayer | LinearLayer, ...]:
        return tuple(layer for layer in self.layers if layer.kind in ("conv", "linear"))


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def acc_bound(layer: ConvLayer | LinearLayer) -> tuple[int, int]:
    """The smallest and largest accumulator value any input can produce (over channels)."""
    k = layer.fan_in
    reach = sum(abs(op.gain) for op in layer.ops) * k
    bias = np.asarray(layer.bias, dtype=np.int64)
    return int(bias.min()) - reach, int(bias.max()) + reach


def _check(cond: bool, where: str, problem: str) -> None:
    if not cond:
        raise IRError(f"{where}: {problem}")


def _check_array(a: Any, where: str, name: str, shape: tuple[int, ...], kinds: str) -> None:
    _check(isinstance(a, np.ndarray), where, f"{name} must be a numpy array")
    _check(a.dtype.kind in kinds, where, f"{name} has dtype {a.dtype}, expected an integer type")
    _check(
        tuple(a.shape) == tuple(shape), where, f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}"
    )


def validate(net: Network) -> Network:
    """Check a network end to end; raise :class:`IRError` naming the first problem."""
    _check(
        net.schema_version == SCHEMA_VERSION,
        "network",
        f"schema version {net.schema_version} is not supported (this binforge reads "
        f"version {SCHEMA_VERSION}); recompile the model with this binforge",
    )
    _check(net.input_format == "uint8", "network", f"input format {net.input_format!r} is not 'uint8'")
    _check(len(net.layers) > 0, "network", "has no layers")
    _check(net.num_classes >= 2, "network", f"num_classes must be at least 2, not {net.num_classes}")
    shape, planes = net.input_shape, INPUT_PLANES
    for i, layer in enumerate(net.layers):
        where = f"layer {i} ({layer.name!r}, {layer.kind})"
        _check(layer.in_shape == shape, where, f"input shape {layer.in_shape.as_tuple()} does not chain "
               f"with the previous output {shape.as_tuple()}")
        _check(layer.in_planes == planes, where, f"takes {layer.in_planes} activation planes but the "
               f"previous layer gives {planes}")
        last = i == len(net.layers) - 1
        if layer.kind == "maxpool":
            _check(layer.kernel >= 1 and layer.stride >= 1, where, "kernel and stride must be positive")
            _check(planes > 0, where, "max-pooling needs bit planes as input")
        elif layer.kind in ("conv", "linear"):
            _validate_compute(layer, where, last)
        else:  # pragma: no cover - dataclasses fix the kinds
            raise IRError(f"{where}: unknown layer kind {layer.kind!r}")
        out = layer.out_shape
        _check(out.height >= 1 and out.width >= 1, where, f"output shape {out.as_tuple()} is empty")
        shape, planes = out, layer.out_planes
    final = net.layers[-1]
    _check(final.kind != "maxpool" and final.output.kind == "affine", "network",
           "the last layer must be a conv or linear layer with an affine (logits) output")
    _check(final.out_shape.size == net.num_classes, "network",
           f"the last layer gives {final.out_shape.size} values but there are {net.num_classes} classes")
    return net


def _validate_compute(layer: ConvLayer | LinearLayer, where: str, last: bool) -> None:
    co = layer.out_channels
    if layer.kind == "conv":
        _check(layer.kernel >= 1 and layer.stride >= 1 and layer.padding >= 0, where,
               "kernel and stride must be positive and padding non-negative")
        _check(layer.pad_bit in (0, 1), where, f"pad_bit must be 0 or 1, not {layer.pad_bit!r}")
        wshape: tuple[int, ...] = (layer.weight_planes, co, layer.in_shape.channels, layer.kernel, layer.kernel)
    else:
        wshape = (layer.weight_planes, co, layer.in_shape.size)
    _check(layer.weights.ndim == len(wshape) and layer.weight_planes >= 1, where,
           f"weights must have {len(wshape)} dimensions with at least one plane")
    _check_array(layer.weights, where, "weights", wshape, "u")
    _check(bool(np.all(layer.weights <= 1)), where, "weights must hold bits (0 or 1)")
    _check(len(layer.ops) >= 1, where, "has no ops")
    seen = set()
    for j, op in enumerate(layer.ops):
        _check(0 <= op.weight_plane < layer.weight_planes, where,
               f"op {j} uses weight plane {op.weight_plane}, which does not exist ({layer.weight_planes} planes)")
        _check(0 <= op.act_plane < layer.in_planes, where,
               f"op {j} uses activation plane {op.act_plane}, which does not exist ({layer.in_planes} planes)")
        _check(op.gain != 0, where, f"op {j} has gain 0; drop the op instead")
        _check((op.weight_plane, op.act_plane) not in seen, where, f"op {j} repeats a (weight, activation) pair")
        seen.add((op.weight_plane, op.act_plane))
    _check_array(layer.bias, where, "bias", (co,), "iu")
    _check(1 <= layer.acc_width <= MAX_ACC_WIDTH, where,
           f"acc_width {layer.acc_width} is outside 1..{MAX_ACC_WIDTH}")
    lo, hi = acc_bound(layer)
    need = signed_width(lo, hi)
    _check(layer.acc_width >= need, where,
           f"acc_width {layer.acc_width} cannot hold the accumulator range [{lo}, {hi}] ({need} bits needed)")
    out = layer.output
    if out.kind == "threshold":
        _check(not last, where, "the last layer must produce logits (affine output), not bits")
        _check(out.thresholds.ndim == 2 and out.thresholds.shape[0] >= 1, where,
               "thresholds must be (planes, channels) with at least one plane")
        _check_array(out.thresholds, where, "thresholds", (out.thresholds.shape[0], co), "iu")
        _check_array(out.flip, where, "flip", (co,), "u")
        _check(bool(np.all(out.flip <= 1)), where, "flip must hold bits (0 or 1)")
        limit = 1 << (layer.acc_width - 1)
        _check(bool(np.all(np.abs(out.thresholds) <= limit)), where,
               f"thresholds must lie within +-{limit} (acc_width {layer.acc_width})")
    else:
        _check(math.isfinite(out.scale) and out.scale > 0, where, f"affine scale must be positive, not {out.scale}")


# --------------------------------------------------------------------------------------
# Files: network.json + weights.npz
# --------------------------------------------------------------------------------------

NETWORK_JSON = "network.json"
WEIGHTS_NPZ = "weights.npz"


def _packed(bits: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(bits, dtype=np.uint8).reshape(-1), bitorder="little")


def _unpacked(data: np.ndarray, shape: tuple[int, ...], where: str, name: str) -> np.ndarray:
    n = int(np.prod(shape))
    _check(data.dtype == np.uint8 and data.ndim == 1 and data.size == (n + 7) // 8, where,
           f"{name} in {WEIGHTS_NPZ} holds {data.size} bytes, expected {(n + 7) // 8} for shape {shape}")
    return np.unpackbits(data, bitorder="little")[:n].reshape(shape)


def _stage_to_json(stage: ThresholdStage | AffineStage) -> dict[str, Any]:
    if stage.kind == "threshold":
        return {"kind": "threshold", "planes": stage.planes}
    return {"kind": "affine", "scale": stage.scale, "argmax": stage.argmax}


def to_json(net: Network) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split a network into its json description and its npz arrays."""
    layers, arrays = [], {}
    for i, layer in enumerate(net.layers):
        d: dict[str, Any] = {"kind": layer.kind, "name": layer.name,
                             "in_shape": list(layer.in_shape.as_tuple()), "in_planes": layer.in_planes}
        if layer.kind == "maxpool":
            d.update(kernel=layer.kernel, stride=layer.stride)
        else:
            if layer.kind == "conv":
                d.update(out_channels=layer.out_channels, kernel=layer.kernel, stride=layer.stride,
                         padding=layer.padding, pad_bit=layer.pad_bit)
            else:
                d.update(out_features=layer.out_features)
            d.update(weight_shape=list(layer.weights.shape), acc_width=layer.acc_width,
                     ops=[[op.weight_plane, op.act_plane, op.gain] for op in layer.ops],
                     output=_stage_to_json(layer.output))
            arrays[f"layer{i}.weights"] = _packed(layer.weights)
            arrays[f"layer{i}.bias"] = np.asarray(layer.bias, dtype=np.int64)
            if layer.output.kind == "threshold":
                arrays[f"layer{i}.thresholds"] = np.asarray(layer.output.thresholds, dtype=np.int64)
                arrays[f"layer{i}.flip"] = np.asarray(layer.output.flip, dtype=np.uint8)
        layers.append(d)
    doc = {
        "format": "binforge-network",
        "schema_version": net.schema_version,
        "name": net.name,
        "input": {"shape": list(net.input_shape.as_tuple()), "format": net.input_format},
        "num_classes": net.num_classes,
        "classes": list(net.classes),
        "layers": layers,
        "meta": net.meta,
    }
    return doc, arrays


def save(net: Network, folder: str | os.PathLike) -> Path:
    """Validate ``net`` and write ``network.json`` and ``weights.npz`` into ``folder``.

    Both files are written to temporary names first and renamed, so a crash leaves
    either the old files or the new ones.
    """
    validate(net)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc, arrays = to_json(net)
    fd, tmp_npz = tempfile.mkstemp(prefix=".weights-", suffix=".npz", dir=folder)
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, **arrays)
    fd, tmp_json = tempfile.mkstemp(prefix=".network-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
        f.write("\n")
    os.replace(tmp_npz, folder / WEIGHTS_NPZ)
    os.replace(tmp_json, folder / NETWORK_JSON)
    return folder


def _get(d: dict, key: str, where: str, types: type | tuple[type, ...]) -> Any:
    _check(isinstance(d, dict) and key in d, where, f"is missing the field {key!r}")
    value = d[key]
    _check(isinstance(value, types) and not (isinstance(value, bool) and types is int), where,
           f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _shape(value: Any, where: str) -> Shape:
    _check(isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and v > 0 for v in value),
           where, f"shape {value!r} must be three positive integers [C, H, W]")
    return Shape(*value)


def from_json(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> Network:
    """Build (and validate) a network from its json description and npz arrays."""
    _check(isinstance(doc, dict) and doc.get("format") == "binforge-network", NETWORK_JSON,
           "is not a binforge network description (no 'format': 'binforge-network')")
    version = _get(doc, "schema_version", NETWORK_JSON, int)
    _check(version <= SCHEMA_VERSION, NETWORK_JSON,
           f"has schema version {version}, newer than this binforge reads ({SCHEMA_VERSION}); "
           "upgrade binforge or recompile the model with this one")
    _check(version == SCHEMA_VERSION, NETWORK_JSON, f"schema version {version} is not supported")
    inp = _get(doc, "input", NETWORK_JSON, dict)
    layers = []
    for i, d in enumerate(_get(doc, "layers", NETWORK_JSON, list)):
        where = f"layer {i}"
        kind = _get(d, "kind", where, str)
        name = _get(d, "name", where, str)
        common = dict(name=name, in_shape=_shape(_get(d, "in_shape", where, list), where),
                      in_planes=_get(d, "in_planes", where, int))
        if kind == "maxpool":
            layers.append(MaxPoolLayer(kernel=_get(d, "kernel", where, int),
                                       stride=_get(d, "stride", where, int), **common))
            continue
        _check(kind in ("conv", "linear"), where,
               f"has unknown kind {kind!r}; this binforge knows conv, linear and maxpool")
        wshape = tuple(_get(d, "weight_shape", where, list))
        _check(all(isinstance(v, int) and v > 0 for v in wshape), where, f"weight_shape {wshape} is invalid")
        for key in ("weights", "bias"):
            _check(f"layer{i}.{key}" in arrays, where, f"{WEIGHTS_NPZ} has no array 'layer{i}.{key}'")
        weights = _unpacked(arrays[f"layer{i}.weights"], wshape, where, "weights")
        ops = []
        for op in _get(d, "ops", where, list):
            _check(isinstance(op, list) and len(op) == 3 and all(isinstance(v, int) for v in op), where,
                   f"op {op!r} must be [weight_plane, act_plane, gain]")
            ops.append(Op(*op))
        out = _get(d, "output", where, dict)
        okind = _get(out, "kind", where + " output", str)
        if okind == "threshold":
            for key in ("thresholds", "flip"):
                _check(f"layer{i}.{key}" in arrays, where, f"{WEIGHTS_NPZ} has no array 'layer{i}.{key}'")
            stage: ThresholdStage | AffineStage = ThresholdStage(
                thresholds=arrays[f"layer{i}.thresholds"], flip=arrays[f"layer{i}.flip"])
            _check(stage.planes == _get(out, "planes", where, int), where,
                   "the number of threshold planes differs between json and npz")
        elif okind == "affine":
            stage = AffineStage(scale=float(_get(out, "scale", where, (int, float))),
                                argmax=bool(out.get("argmax", True)))
        else:
            raise IRError(f"{where}: unknown output stage {okind!r}")
        fields = dict(weights=weights, ops=tuple(ops), bias=arrays[f"layer{i}.bias"],
                      acc_width=_get(d, "acc_width", where, int), output=stage, **common)
        if kind == "conv":
            layers.append(ConvLayer(out_channels=_get(d, "out_channels", where, int),
                                    kernel=_get(d, "kernel", where, int), stride=_get(d, "stride", where, int),
                                    padding=_get(d, "padding", where, int), pad_bit=_get(d, "pad_bit", where, int),
                                    **fields))
        else:
            layers.append(LinearLayer(out_features=_get(d, "out_features", where, int), **fields))
    net = Network(
        name=_get(doc, "name", NETWORK_JSON, str),
        input_shape=_shape(_get(inp, "shape", "input", list), "input"),
        input_format=_get(inp, "format", "input", str),
        num_classes=_get(doc, "num_classes", NETWORK_JSON, int),
        classes=tuple(str(c) for c in doc.get("classes", [])),
        layers=tuple(layers),
        meta=dict(doc.get("meta", {})),
        schema_version=version,
    )
    return validate(net)


def load(folder: str | os.PathLike) -> Network:
    """Read ``network.json`` + ``weights.npz`` from ``folder`` and validate them."""
    folder = Path(folder)
    jpath, npath = folder / NETWORK_JSON, folder / WEIGHTS_NPZ
    for p in (jpath, npath):
        if not p.is_file():
            raise IRError(f"{p} does not exist; give a folder written by 'binforge compile'")
    try:
        doc = json.loads(jpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IRError(f"{jpath} is not valid json ({exc}); recompile the network") from None
    try:
        with open(npath, "rb") as f, np.load(f, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise IRError(f"{npath} is corrupted or not an npz file ({exc}); recompile the network") from None
    return from_json(doc, arrays)

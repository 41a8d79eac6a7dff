"""The golden model: executes a network IR with exactly the hardware's integer arithmetic.

Everything the hardware computes is checked against this module. Activations are
bit planes. A compute layer's accumulators are computed one of two ways, which
give identical integers (the tests check one against the other and both against
plain +-1 loops):

- ``method="popcount"``: every binary convolution is an XNOR-popcount over packed
  uint64 words (:func:`binforge.compiler.ir.xnor_dot`), times its integer gain:
  the hardware's own arithmetic, vectorised over the batch and output positions;
- ``method="matmul"`` (the default, several times faster): the same sum regrouped as
  one matrix product per layer. Per activation plane the ops combine into integer
  effective weights ``E_n = sum over ops on plane n of gain * W_m``; convolution
  windows are unfolded (im2col) with all planes side by side; for bits ``b`` the
  product is ``b @ (2E) - sum(E)`` (= ``(2b - 1) @ E``). When the planes' effective
  weights are integer multiples of one base (the bit-serial first layer: ``2**i``),
  the planes first combine into one integer per input (``2x - 255``). Every product
  and partial sum is an integer of magnitude at most twice the layer's reach
  ``sum |gain| * K`` (below ``2**49``, see ``ir.MAX_ACC_WIDTH``), so BLAS computes
  it exactly in float64 (float32 when below ``2**24``), in any summation order.
  The result is converted back to int64.

No float value ever rounds: thresholds, flips, pooling and logits are integers.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
from binforge.compiler.ir import (
    ConvLayer,
    IRError,
    LinearLayer,
    MaxPoolLayer,
    Network,
    bits_to_signs,
    pack_bits,
    pixel_planes,
    popcount,
)

__all__ = ["GoldenResult", "METHODS", "run_network", "run_layer", "conv_windows", "layer_accumulators"]

#: Images per chunk; bounds the memory of the XOR/popcount intermediate.
DEFAULT_CHUNK = 256
#: The two ways of computing accumulators (identical integers).
METHODS = ("matmul", "popcount")
#: Bytes of the unfolded windows of one matrix product: small steps keep the working set
#: in cache and reuse freed memory instead of faulting in fresh pages (10x faster here).
MATMUL_BYTES = 1 << 20
#: Integers up to this magnitude are exact in float32 / float64.
FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53


@dataclass(frozen=True)
class GoldenResult:
    """What the golden model computed for a batch of images.

    Attributes
    ----------
    logits:
        int64 ``(N, num_classes)``: the last layer's integer accumulators.
    predictions:
        int64 ``(N,)``: the first index of the maximum logit.
    layers:
        When asked for, each layer's output in order: uint8 bits ``(N, planes, C, H, W)``
        for threshold and max-pool layers, int64 accumulators ``(N, C, H, W)`` for the
        affine last layer. Empty otherwise.
    accumulators:
        When asked for, each compute layer's int64 accumulators ``(N, C, H, W)``
        (``None`` for max-pool layers), for debugging RTL.
    """

    logits: np.ndarray
    predictions: np.ndarray
    layers: tuple[np.ndarray, ...] = ()
    accumulators: tuple[np.ndarray | None, ...] = ()


def conv_windows(planes: np.ndarray, kernel: int, stride: int, padding: int, pad_bit: int) -> np.ndarray:
    """Bit planes ``(N, P, C, H, W)`` -> windows ``(N, P, Ho, Wo, C*k*k)``.

    The window's bits are in ``(C, ky, kx)`` order, the order of a conv weight
    ``(Co, C, k, k)`` flattened; padding positions hold ``pad_bit``.
    """
    n, p, c, h, w = planes.shape
    if padding:
        planes = np.pad(planes, ((0, 0), (0, 0), (0, 0), (padding, padding), (padding, padding)),
                        constant_values=np.uint8(pad_bit))
    ho = (h + 2 * padding - kernel) // stride + 1
    wo = (w + 2 * padding - kernel) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(planes, (kernel, kernel), axis=(3, 4))
    win = win[:, :, :, : (ho - 1) * stride + 1 : stride, : (wo - 1) * stride + 1 : stride]
    # (N, P, C, Ho, Wo, k, k) -> (N, P, Ho, Wo, C, k, k)
    win = win.transpose(0, 1, 3, 4, 2, 5, 6)
    return win.reshape(n, p, ho, wo, c * kernel * kernel)


def layer_accumulators(layer: ConvLayer | LinearLayer, planes: np.ndarray, method: str = "matmul") -> np.ndarray:
    """The integer accumulators of one compute layer for input bit planes ``(N, P, C, H, W)``.

    Returns int64 ``(N, Co, Ho, Wo)`` (``Ho = Wo = 1`` for linear layers); ``method``
    is ``"matmul"`` or ``"popcount"`` (see the module docstring), same integers.
    """
    if method == "matmul":
        return _accumulators_matmul(layer, planes)
    if method != "popcount":
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    k = layer.fan_in
    if layer.kind == "conv":
        windows = conv_windows(planes, layer.kernel, layer.stride, layer.padding, layer.pad_bit)
        weights = layer.weights.reshape(layer.weight_planes, layer.out_channels, k)
    else:
        n = planes.shape[0]
        windows = planes.reshape(n, planes.shape[1], 1, 1, k)
        weights = layer.weights
    act = pack_bits(windows)  # (N, P, Ho, Wo, words)
    wgt = pack_bits(weights)  # (Pw, Co, words)
    n, _, ho, wo, _ = act.shape
    acc = np.zeros((n, ho, wo, layer.out_channels), dtype=np.int64)
    for op in layer.ops:
        a = act[:, op.act_plane, :, :, None, :]  # (N, Ho, Wo, 1, words)
        w = wgt[op.weight_plane][None, None, None]  # (1, 1, 1, Co, words)
        dot = k - 2 * popcount(np.bitwise_xor(a, w))
        acc += op.gain * dot
    acc += np.asarray(layer.bias, dtype=np.int64)
    return acc.transpose(0, 3, 1, 2)


def _effective_weights(layer: ConvLayer | LinearLayer) -> tuple[list[int], np.ndarray]:
    """The activation planes the ops read, and int64 ``E (planes, Co, K)``: ``E[i]`` is
    ``sum over ops on plane i of gain * W_m`` (+-1 weights), an exact integer array."""
    k, co = layer.fan_in, layer.out_channels
    act_planes = sorted({op.act_plane for op in layer.ops})
    signs = bits_to_signs(layer.weights.reshape(layer.weight_planes, co, k))
    effective = np.zeros((len(act_planes), co, k), dtype=np.int64)
    where = {plane: i for i, plane in enumerate(act_planes)}
    for op in layer.ops:
        effective[where[op.act_plane]] += op.gain * signs[op.weight_plane]
    return act_planes, effective


def _plane_multiples(effective: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """When every ``E[i] = m[i] * base`` with integers ``m`` (the bit-serial first layer:
    ``m = 2**i``), return ``(m, base)``: then ``sum_i E[i] a_i = base (sum_i m[i] a_i)``."""
    flat = effective.reshape(effective.shape[0], -1)
    ref = int(np.abs(flat).max(axis=1).argmax())
    row = flat[ref]
    if not np.any(row):
        return None
    divisor = int(np.gcd.reduce(np.abs(row[row != 0])))
    base = row // divisor
    pivot = int(np.flatnonzero(base)[0])
    multiples = flat[:, pivot] // base[pivot]
    if not np.array_equal(multiples[:, None] * base[None, :], flat):
        return None
    return multiples, base.reshape(effective.shape[1:])


@dataclass(frozen=True)
class _Prepared:
    """What the matmul method derives from a layer's weights once (cached per layer)."""

    dtype: type
    act_planes: list[int]
    effective: np.ndarray  # (planes or 1, Co, K) int64
    plane_weights: np.ndarray | None  # (P,) integer multiples when the planes combine
    offset: float
    matrices: dict = field(default_factory=dict)  # weight matrices by layout, made on first use

    def matrix(self, layout: str, make) -> np.ndarray:
        if layout not in self.matrices:
            self.matrices[layout] = np.ascontiguousarray(make(self.effective).astype(self.dtype))
        return self.matrices[layout]


#: Per-layer preparations; layers are immutable, so a layer's entry never goes stale.
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _prepare(layer: ConvLayer | LinearLayer) -> _Prepared:
    prepared = _PREPARED.get(layer)
    if prepared is not None:
        return prepared
    reach = sum(abs(op.gain) for op in layer.ops) * layer.fan_in
    if 2 * reach >= FLOAT64_EXACT:  # pragma: no cover - acc_width <= 48 rules this out
        raise IRError(f"layer {layer.name!r}: accumulators reach {reach}, beyond exact float64 arithmetic")
    # bits times doubled weights (see _accumulators_matmul) reach twice as far
    dtype = np.float32 if 2 * reach < FLOAT32_EXACT else np.float64
    act_planes, effective = _effective_weights(layer)
    # The activations as integers: +-1 per plane, or one combined value per input when the
    # effective weights of the planes are integer multiples of one base (exact either way).
    factored = _plane_multiples(effective) if len(act_planes) > 1 else None
    plane_weights, offset = None, 0.0
    if factored is not None:
        multiples, effective = factored[0], factored[1][None]
        plane_weights, offset = multiples * 2, float(multiples.sum())
    prepared = _Prepared(dtype, act_planes, effective, plane_weights, offset)
    _PREPARED[layer] = prepared
    return prepared


def _accumulators_matmul(layer: ConvLayer | LinearLayer, planes: np.ndarray) -> np.ndarray:
    prepared = _prepare(layer)
    dtype, act_planes = prepared.dtype, prepared.act_planes
    factored = prepared.plane_weights is not None
    if factored:
        weights_of_planes = prepared.plane_weights.astype(dtype).reshape(1, -1, 1, 1, 1)
        offset = dtype(prepared.offset)
    co, n = layer.out_channels, planes.shape[0]
    selected = planes[:, act_planes]
    if layer.kind == "linear":
        flat = selected.reshape(n, len(act_planes), layer.fan_in)
        if factored:
            values = (flat.astype(dtype) * weights_of_planes[:, :, :, 0, 0]).sum(axis=1) - offset
        else:
            values = flat.reshape(n, -1).astype(dtype) * 2 - 1
        weight_matrix = prepared.matrix("linear", lambda e: e.transpose(0, 2, 1).reshape(-1, co))
        out = (values @ weight_matrix).astype(np.int64) + np.asarray(layer.bias, dtype=np.int64)
        return out.reshape(n, co, 1, 1)

    pad, kern, stride = layer.padding, layer.kernel, layer.stride
    if pad:
        selected = np.pad(selected, ((0, 0), (0, 0), (0, 0), (pad, pad), (pad, pad)),
                          constant_values=np.uint8(layer.pad_bit))
    if factored:  # one integer per input position: sum_i m_i (2 b_i - 1)
        values = (selected.astype(dtype) * weights_of_planes).sum(axis=1) - offset  # (N, C, Hp, Wp)
    else:  # the bits themselves (0/1); the +-1 form is restored after the product
        values = selected.reshape(n, -1, *selected.shape[3:])  # (N, P*C, Hp, Wp) uint8
    values = np.ascontiguousarray(values.transpose(0, 2, 3, 1))  # channels last: (N, Hp, Wp, D)
    depth = values.shape[3]
    ho, wo = layer.out_shape.height, layer.out_shape.width

    def matrix_rows(e):  # (D, Co, C, k, k) effective weights -> rows in (ky, kx, D) order
        e = e.reshape(e.shape[0], co, layer.in_shape.channels, kern, kern)
        return e.transpose(3, 4, 0, 2, 1).reshape(kern * kern * depth, co)

    # For bits b: sum w (2b - 1) = b @ (2w) - sum w, exact in integers.
    matrix = prepared.matrix("conv", lambda e: matrix_rows(e) * (1 if factored else 2))
    correction = 0 if factored else prepared.matrix("conv-sum", lambda e: matrix_rows(e).sum(axis=0))
    out = np.empty((n, ho, wo, co), dtype=np.int64)
    row = kern * kern * depth
    step = max(1, MATMUL_BYTES // max(1, ho * wo * row * np.dtype(dtype).itemsize))
    for first in range(0, n, step):
        part = values[first:first + step]
        m = part.shape[0]
        # Unfold the windows with k*k slice copies (contiguous channel runs, fast).
        cols = np.empty((m, ho, wo, kern, kern, depth), dtype=dtype)  # converted while copied
        for ky in range(kern):
            for kx in range(kern):
                cols[:, :, :, ky, kx] = part[:, ky:ky + (ho - 1) * stride + 1:stride,
                                             kx:kx + (wo - 1) * stride + 1:stride]
        product = cols.reshape(-1, row) @ matrix
        product -= correction
        out[first:first + step] = product.reshape(m, ho, wo, co)
    out += np.asarray(layer.bias, dtype=np.int64)
    return out.transpose(0, 3, 1, 2)


def _threshold(layer: ConvLayer | LinearLayer, acc: np.ndarray) -> np.ndarray:
    out = layer.output
    t = np.asarray(out.thresholds, dtype=np.int64)[None, :, :, None, None]  # (1, P, Co, 1, 1)
    flip = np.asarray(out.flip, dtype=np.uint8)[None, None, :, None, None]
    bits = (acc[:, None] >= t).astype(np.uint8) ^ flip
    return bits


def _maxpool(layer: MaxPoolLayer, planes: np.ndarray) -> np.ndarray:
    k, s = layer.kernel, layer.stride
    win = np.lib.stride_tricks.sliding_window_view(planes, (k, k), axis=(3, 4))
    win = win[:, :, :, ::s, ::s]
    oh, ow = layer.out_shape.height, layer.out_shape.width
    return win[:, :, :, :oh, :ow].max(axis=(5, 6))


def run_layer(layer, planes: np.ndarray, method: str = "matmul") -> tuple[np.ndarray, np.ndarray | None]:
    """Run one layer on its input bit planes; return ``(output, accumulators or None)``."""
    if layer.kind == "maxpool":
        return _maxpool(layer, planes), None
    acc = layer_accumulators(layer, planes, method)
    if layer.output.kind == "threshold":
        out = _threshold(layer, acc)
        if layer.kind == "linear":
            out = out.reshape(out.shape[0], out.shape[1], layer.out_features, 1, 1)
        return out, acc
    return acc, acc


def run_network(net: Network, images: np.ndarray, *, return_layers: bool = False,
                chunk: int = DEFAULT_CHUNK, method: str = "matmul") -> GoldenResult:
    """Run uint8 images ``(N, C, H, W)`` through ``net``; integer results, bit-exact.

    ``return_layers`` keeps every layer's output and accumulators (for RTL debugging).
    ``method`` picks how accumulators are computed (``"matmul"`` or ``"popcount"``;
    identical integers, see the module docstring). BLAS runs single-threaded here:
    the products are small (at most ``MATMUL_BYTES`` of windows each), where BLAS
    threads cost more than they give (on a busy machine, twenty times more).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _run_network(net, images, return_layers, chunk, method)


def _run_network(net: Network, images: np.ndarray, return_layers: bool, chunk: int,
                 method: str) -> GoldenResult:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    images = np.asarray(images)
    expected = net.input_shape.as_tuple()
    if images.ndim != 4 or images.shape[1:] != expected:
        raise IRError(f"images have shape {images.shape}, but the network takes (N, {', '.join(map(str, expected))})")
    logits_parts, layer_parts, acc_parts = [], [], []
    for start in range(0, max(len(images), 1), chunk):
        planes = pixel_planes(images[start : start + chunk])
        outs, accs = [], []
        x = planes
        for layer in net.layers:
            x, acc = run_layer(layer, x, method)
            if return_layers:
                outs.append(x)
                accs.append(acc)
        logits_parts.append(x.reshape(x.shape[0], -1))
        layer_parts.append(outs)
        acc_parts.append(accs)
    logits = np.concatenate(logits_parts, axis=0) if logits_parts else np.zeros((0, net.num_classes), np.int64)
    predictions = np.argmax(logits, axis=1).astype(np.int64)
    layers: tuple = ()
    accumulators: tuple = ()
    if return_layers:
        layers = tuple(np.concatenate([p[i] for p in layer_parts], axis=0) for i in range(len(net.layers)))
        accumulators = tuple(
            None if acc_parts[0][i] is None else np.concatenate([p[i] for p in acc_parts], axis=0)
            for i in range(len(net.layers))
        )
    return GoldenResult(logits=logits, predictions=predictions, layers=layers, accumulators=accumulators)

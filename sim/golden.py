"""The golden model: executes a network IR with exactly the hardware's integer arithmetic.

Everything the hardware computes is checked against this module. Activations are
bit planes; every binary convolution is an XNOR-popcount over packed uint64 words
(:func:`binforge.compiler.ir.xnor_dot`), vectorised over the batch and the output
positions. Integer arithmetic only: no float enters after the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from binforge.compiler.ir import (
    ConvLayer,
    IRError,
    LinearLayer,
    MaxPoolLayer,
    Network,
    pack_bits,
    pixel_planes,
    popcount,
)

__all__ = ["GoldenResult", "run_network", "run_layer", "conv_windows", "layer_accumulators"]

#: Images per chunk; bounds the memory of the XOR/popcount intermediate.
DEFAULT_CHUNK = 256


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


def layer_accumulators(layer: ConvLayer | LinearLayer, planes: np.ndarray) -> np.ndarray:
    """The integer accumulators of one compute layer for input bit planes ``(N, P, C, H, W)``.

    Returns int64 ``(N, Co, Ho, Wo)`` (``Ho = Wo = 1`` for linear layers).
    """
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


def run_layer(layer, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Run one layer on its input bit planes; return ``(output, accumulators or None)``."""
    if layer.kind == "maxpool":
        return _maxpool(layer, planes), None
    acc = layer_accumulators(layer, planes)
    if layer.output.kind == "threshold":
        out = _threshold(layer, acc)
        if layer.kind == "linear":
            out = out.reshape(out.shape[0], out.shape[1], layer.out_features, 1, 1)
        return out, acc
    return acc, acc


def run_network(net: Network, images: np.ndarray, *, return_layers: bool = False,
                chunk: int = DEFAULT_CHUNK) -> GoldenResult:
    """Run uint8 images ``(N, C, H, W)`` through ``net``; integer results, bit-exact.

    ``return_layers`` keeps every layer's output and accumulators (for RTL debugging).
    """
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
            x, acc = run_layer(layer, x)
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

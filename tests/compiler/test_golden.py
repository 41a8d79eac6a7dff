"""The golden model against an independent brute-force reference: plain +-1 integer loops."""

import numpy as np
import pytest
from binforge.compiler import ir
from binforge.compiler.random_network import (
    first_layer_ops,
    random_conv,
    random_linear,
    random_network,
)
from binforge.sim.golden import run_layer, run_network
from hypothesis import given, settings
from hypothesis import strategies as st


def brute_conv(layer: ir.ConvLayer, planes: np.ndarray) -> np.ndarray:
    """Integer accumulators by plain loops over +-1 values (no packing, no XOR)."""
    n, p, c, h, w = planes.shape
    s = layer.stride
    pad = layer.padding
    signs = np.full((n, p, c, h + 2 * pad, w + 2 * pad), 1 if layer.pad_bit else -1, dtype=np.int64)
    signs[:, :, :, pad:pad + h, pad:pad + w] = planes.astype(np.int64) * 2 - 1
    wsigns = layer.weights.astype(np.int64) * 2 - 1
    out = layer.out_shape
    acc = np.zeros((n, out.channels, out.height, out.width), dtype=np.int64)
    for b in range(n):
        for co in range(out.channels):
            for y in range(out.height):
                for x in range(out.width):
                    total = int(layer.bias[co])
                    for op in layer.ops:
                        window = signs[b, op.act_plane, :, y * s:y * s + layer.kernel, x * s:x * s + layer.kernel]
                        total += op.gain * int((window * wsigns[op.weight_plane, co]).sum())
                    acc[b, co, y, x] = total
    return acc


def brute_linear(layer: ir.LinearLayer, planes: np.ndarray) -> np.ndarray:
    n = planes.shape[0]
    signs = planes.reshape(n, planes.shape[1], -1).astype(np.int64) * 2 - 1
    wsigns = layer.weights.astype(np.int64) * 2 - 1
    acc = np.tile(layer.bias.astype(np.int64), (n, 1))
    for op in layer.ops:
        acc += op.gain * (signs[:, op.act_plane, None, :] * wsigns[op.weight_plane][None]).sum(-1)
    return acc


def brute_threshold(layer, acc):
    t, flip = layer.output.thresholds, layer.output.flip
    out = np.zeros((acc.shape[0], t.shape[0]) + acc.shape[1:], dtype=np.uint8)
    for n in range(t.shape[0]):
        for c in range(acc.shape[1]):
            out[:, n, c] = (acc[:, c] >= t[n, c]).astype(np.uint8) ^ flip[c]
    return out


def brute_network(net: ir.Network, images: np.ndarray) -> np.ndarray:
    # pixel digits by arithmetic, independent of ir.pixel_planes
    x = np.stack([(images.astype(np.int64) // (1 << i)) % 2 for i in range(8)], axis=1).astype(np.uint8)
    for layer in net.layers:
        if layer.kind == "maxpool":
            k, s = layer.kernel, layer.stride
            o = layer.out_shape
            y = np.zeros(x.shape[:3] + (o.height, o.width), dtype=np.uint8)
            for i in range(o.height):
                for j in range(o.width):
                    y[..., i, j] = x[..., i * s:i * s + k, j * s:j * s + k].max(axis=(-1, -2))
            x = y
            continue
        acc = brute_conv(layer, x) if layer.kind == "conv" else brute_linear(layer, x)
        if layer.output.kind == "threshold":
            x = brute_threshold(layer, acc if acc.ndim == 4 else acc[:, :, None, None])
        else:
            x = acc.reshape(acc.shape[0], -1)
    return x


@given(seed=st.integers(0, 2**32 - 1), kernel=st.sampled_from([1, 2, 3]), stride=st.sampled_from([1, 2]),
       padding=st.integers(0, 2), planes=st.integers(1, 3), weight_planes=st.integers(1, 3),
       out_planes=st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_conv_layer_matches_brute_force(seed, kernel, stride, padding, planes, weight_planes, out_planes):
    rng = np.random.default_rng(seed)
    shape = ir.Shape(int(rng.integers(1, 70)), int(rng.integers(kernel, 7)), int(rng.integers(kernel, 7)))
    layer = random_conv(rng, shape, planes, int(rng.integers(1, 5)), kernel=kernel, stride=stride,
                        padding=padding, weight_planes=weight_planes, out_planes=out_planes)
    x = rng.integers(0, 2, (3, planes) + shape.as_tuple()).astype(np.uint8)
    got, acc = run_layer(layer, x)
    expected_acc = brute_conv(layer, x)
    assert (acc == expected_acc).all()
    assert (got == brute_threshold(layer, expected_acc)).all()


@given(seed=st.integers(0, 2**32 - 1), weight_planes=st.integers(1, 4))
@settings(max_examples=25, deadline=None)
def test_bit_serial_first_layer_equals_integer_convolution(seed, weight_planes):
    """The first layer's ops compute sum_k w_k (2 x_k - 255) with odd integer weights exactly."""
    rng = np.random.default_rng(seed)
    shape = ir.Shape(int(rng.integers(1, 4)), 5, 5)
    layer = random_conv(rng, shape, ir.INPUT_PLANES, 3, kernel=3, padding=1, weight_planes=weight_planes,
                        ops=first_layer_ops(weight_planes))
    images = rng.integers(0, 256, (2,) + shape.as_tuple()).astype(np.uint8)
    _, acc = run_layer(layer, ir.pixel_planes(images))
    # odd integer weights q = sum_j 2^j t_j; pixels as 2x - 255, padding pixel 0 when pad_bit is 0
    q = (ir.bits_to_signs(layer.weights) * (2 ** np.arange(weight_planes)).reshape(-1, 1, 1, 1, 1)).sum(0)
    pad_pixel = 255 if layer.pad_bit else 0
    xs = np.pad(images.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad_pixel) * 2 - 255
    expected = np.zeros_like(acc)
    for co in range(3):
        for y in range(5):
            for x in range(5):
                expected[:, co, y, x] = (xs[:, :, y:y + 3, x:x + 3] * q[co]).sum(axis=(1, 2, 3)) + layer.bias[co]
    assert (acc == expected).all()


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=15, deadline=None)
def test_whole_network_matches_brute_force(seed):
    net = random_network(seed, in_shape=ir.Shape(2, 6, 6), channels=(3, 4), act_planes=(2, 2))
    images = np.random.default_rng(seed).integers(0, 256, (4, 2, 6, 6)).astype(np.uint8)
    result = run_network(net, images, return_layers=True, chunk=3)
    assert (result.logits == brute_network(net, images)).all()
    assert (result.predictions == np.argmax(result.logits, axis=1)).all()
    assert len(result.layers) == len(net.layers)


def test_linear_threshold_layer_matches_brute_force():
    rng = np.random.default_rng(5)
    layer = random_linear(rng, ir.Shape(3, 2, 2), 2, 5, weight_planes=2, out_planes=2)
    x = rng.integers(0, 2, (4, 2, 3, 2, 2)).astype(np.uint8)
    got, acc = run_layer(layer, x)
    expected = brute_linear(layer, x)
    assert (acc[:, :, 0, 0] == expected).all()
    assert (got[..., 0, 0] == brute_threshold(layer, expected[:, :, None, None])[..., 0, 0]).all()


def test_extremes_stay_within_recorded_width():
    """All-match and all-mismatch inputs at the largest K reach the bound and fit acc_width."""
    import dataclasses

    rng = np.random.default_rng(0)
    shape = ir.Shape(64, 3, 3)
    layer = random_conv(rng, shape, 1, 2, kernel=3, padding=0, weight_planes=2,
                        ops=(ir.Op(0, 0, 7), ir.Op(1, 0, -5)))
    layer = dataclasses.replace(layer, weights=np.ones_like(layer.weights))
    lo, hi = ir.acc_bound(layer)
    limit = 1 << (layer.acc_width - 1)
    for bit in (0, 1):
        x = np.full((1, 1) + shape.as_tuple(), bit, dtype=np.uint8)
        _, acc = run_layer(layer, x)
        assert lo <= acc.min() and acc.max() <= hi
        assert -limit <= acc.min() and acc.max() < limit
    k = layer.fan_in
    _, acc_match = run_layer(layer, np.ones((1, 1) + shape.as_tuple(), dtype=np.uint8))
    assert (acc_match[0, :, 0, 0] == (7 - 5) * k + layer.bias).all()


# ---- the two accumulator methods give the same integers ------------------------------


@given(seed=st.integers(0, 2**32 - 1), kernel=st.integers(1, 6), stride=st.sampled_from([1, 2, 3]),
       padding=st.integers(0, 2), planes=st.integers(1, 4), weight_planes=st.integers(1, 3))
@settings(max_examples=60, deadline=None)
def test_matmul_equals_popcount_and_brute_force(seed, kernel, stride, padding, planes, weight_planes):
    """Both conv paths of the matmul method (shifted slices for small kernels, unfolded
    windows for large ones) against XNOR-popcount and plain loops."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(kernel, kernel + 5))
    shape = ir.Shape(int(rng.integers(1, 20)), size, size + int(rng.integers(0, 2)))
    layer = random_conv(rng, shape, planes, int(rng.integers(1, 9)), kernel=kernel, stride=stride,
                        padding=padding, weight_planes=weight_planes)
    x = rng.integers(0, 2, (3, planes) + shape.as_tuple()).astype(np.uint8)
    _, by_matmul = run_layer(layer, x, "matmul")
    _, by_popcount = run_layer(layer, x, "popcount")
    assert by_matmul.dtype == np.int64
    assert (by_matmul == by_popcount).all()
    assert (by_matmul == brute_conv(layer, x)).all()


@given(seed=st.integers(0, 2**32 - 1), weight_planes=st.integers(1, 8), kernel=st.sampled_from([3, 8]))
@settings(max_examples=20, deadline=None)
def test_bit_serial_first_layer_both_methods(seed, weight_planes, kernel):
    """The first layer's planes combine into 2x - 255 (the factored path); with 8-bit weights
    and a whole-image kernel the reach passes 2**24, so float64 is used: still exact."""
    rng = np.random.default_rng(seed)
    shape = ir.Shape(int(rng.integers(1, 4)), 8, 8)
    layer = random_conv(rng, shape, ir.INPUT_PLANES, 4, kernel=kernel, padding=int(kernel == 3),
                        weight_planes=weight_planes, ops=first_layer_ops(weight_planes))
    images = rng.integers(0, 256, (3,) + shape.as_tuple()).astype(np.uint8)
    images[0] = 255
    planes = ir.pixel_planes(images)
    _, by_matmul = run_layer(layer, planes, "matmul")
    _, by_popcount = run_layer(layer, planes, "popcount")
    assert (by_matmul == by_popcount).all()


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=10, deadline=None)
def test_whole_network_both_methods(seed):
    net = random_network(seed, in_shape=ir.Shape(1, 9, 9), channels=(5, 6, 4), act_planes=(3, 2, 1))
    images = np.random.default_rng(seed).integers(0, 256, (5, 1, 9, 9)).astype(np.uint8)
    a = run_network(net, images, return_layers=True, method="matmul")
    b = run_network(net, images, return_layers=True, method="popcount")
    assert (a.logits == b.logits).all()
    for x, y in zip(a.layers, b.layers, strict=True):
        assert (x == y).all()


def test_large_gains_use_exact_float64():
    """A reach beyond 2**24 (float32's exact integers) is computed in float64, exactly."""
    rng = np.random.default_rng(3)
    shape = ir.Shape(40, 3, 3)
    layer = random_linear(rng, shape, 2, 3, weight_planes=2, ops=(ir.Op(0, 0, (1 << 20) + 1), ir.Op(1, 1, -3)))
    assert sum(abs(op.gain) for op in layer.ops) * layer.fan_in > 1 << 24
    x = rng.integers(0, 2, (6, 2) + shape.as_tuple()).astype(np.uint8)
    _, by_matmul = run_layer(layer, x, "matmul")
    _, by_popcount = run_layer(layer, x, "popcount")
    assert (by_matmul == by_popcount).all()
    assert (by_matmul[:, :, 0, 0] == brute_linear(layer, x)).all()


def test_unknown_method_is_refused():
    net = random_network(0)
    with pytest.raises(ValueError, match="method must be one of matmul, popcount, not 'fast'"):
        run_network(net, np.zeros((1, 1, 8, 8), dtype=np.uint8), method="fast")

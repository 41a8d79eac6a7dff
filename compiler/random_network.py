"""Random valid networks in the IR, for tests, fuzzing and hardware bring-up.

``random_network`` draws a small network with every feature the IR has: the
bit-serial first layer (8 pixel planes x weight planes, gains ``2**(i + j)``),
multi-op binary layers with fixed-point gains, padding with either pad bit,
stride, max-pooling on bits, several activation planes, flips, and an affine
last layer. Thresholds are drawn near the middle of each layer's reachable
accumulator range, so output bits are not constant.
"""

from __future__ import annotations

import numpy as np
from binforge.compiler.ir import (
    INPUT_PLANES,
    AffineStage,
    ConvLayer,
    LinearLayer,
    MaxPoolLayer,
    Network,
    Op,
    Shape,
    ThresholdStage,
    acc_bound,
    signed_width,
    validate,
)

__all__ = ["random_network", "random_conv", "random_linear", "first_layer_ops"]

#: The default input: one 8 x 8 channel, like the digits data set.
DEFAULT_SHAPE = Shape(1, 8, 8)


def first_layer_ops(weight_planes: int, act_planes: int = INPUT_PLANES) -> tuple[Op, ...]:
    """The bit-serial ops of a layer with multi-bit weights and pixel inputs: gain ``2**(i + j)``."""
    return tuple(Op(j, i, 1 << (i + j)) for i in range(act_planes) for j in range(weight_planes))


def _finish(rng, layer_cls, out_planes: int, **fields):
    fields.setdefault("bias", rng.integers(-8, 9, size=fields["out"]).astype(np.int64))
    co = fields.pop("out")
    probe = layer_cls(acc_width=1, output=AffineStage(1.0), **fields)
    lo, hi = acc_bound(probe)
    width = signed_width(lo, hi)
    if out_planes:
        spread = max(1, (hi - lo) // 8)
        mid = (int(fields["bias"].mean()))
        t = np.sort(rng.integers(mid - spread, mid + spread + 1, size=(out_planes, co)), axis=0)
        stage = ThresholdStage(thresholds=t.astype(np.int64), flip=rng.integers(0, 2, co).astype(np.uint8))
    else:
        stage = AffineStage(scale=1.0)
    return layer_cls(acc_width=width, output=stage, **fields)


def random_conv(rng: np.random.Generator, in_shape: Shape, in_planes: int, out_channels: int, *,
                kernel: int = 3, stride: int = 1, padding: int = 1, weight_planes: int = 1,
                out_planes: int = 1, ops: tuple[Op, ...] | None = None, name: str = "conv") -> ConvLayer:
    """A random conv layer; ``ops`` default: every (weight, activation) pair with small random gains."""
    if ops is None:
        ops = tuple(Op(m, n, int(rng.choice([-3, -1, 1, 2, 5])) if weight_planes * in_planes > 1 else 1)
                    for m in range(weight_planes) for n in range(in_planes))
    weights = rng.integers(0, 2, (weight_planes, out_channels, in_shape.channels, kernel, kernel)).astype(np.uint8)
    return _finish(rng, ConvLayer, out_planes, name=name, in_shape=in_shape, in_planes=in_planes,
                   out=out_channels, out_channels=out_channels, kernel=kernel, stride=stride,
                   padding=padding, pad_bit=int(rng.integers(0, 2)), weights=weights, ops=ops)


def random_linear(rng: np.random.Generator, in_shape: Shape, in_planes: int, out_features: int, *,
                  weight_planes: int = 1, out_planes: int = 0, ops: tuple[Op, ...] | None = None,
                  name: str = "linear") -> LinearLayer:
    """A random linear layer; ``out_planes=0`` makes it an affine (logits) layer."""
    if ops is None:
        ops = tuple(Op(m, n, (1 << m) if weight_planes > 1 else 1)
                    for m in range(weight_planes) for n in range(in_planes))
    weights = rng.integers(0, 2, (weight_planes, out_features, in_shape.size)).astype(np.uint8)
    return _finish(rng, LinearLayer, out_planes, name=name, in_shape=in_shape, in_planes=in_planes,
                   out=out_features, out_features=out_features, weights=weights, ops=ops)


def random_network(seed: int | np.random.Generator = 0, *, in_shape: Shape = DEFAULT_SHAPE,
                   channels: tuple[int, ...] = (4, 6), first_weight_planes: int = 2,
                   act_planes: tuple[int, ...] = (2, 1), pool: bool = True, num_classes: int = 4,
                   last_weight_planes: int = 2) -> Network:
    """A random valid network: bit-serial first conv, binary convs (multi-op where
    ``act_planes`` > 1), an optional 2x2 max-pool after the first conv, affine linear last layer."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    layers: list = []
    shape, planes = in_shape, INPUT_PLANES
    for i, co in enumerate(channels):
        out_planes = act_planes[i] if i < len(act_planes) else 1
        if i == 0:
            layer = random_conv(rng, shape, planes, co, weight_planes=first_weight_planes,
                                out_planes=out_planes, ops=first_layer_ops(first_weight_planes),
                                name=f"conv{i}")
        else:
            layer = random_conv(rng, shape, planes, co, weight_planes=int(rng.integers(1, 3)),
                                stride=1 + int(i == 2), out_planes=out_planes, name=f"conv{i}")
        layers.append(layer)
        shape, planes = layer.out_shape, layer.out_planes
        if i == 0 and pool and shape.height >= 2 and shape.width >= 2:
            layers.append(MaxPoolLayer(name="pool0", in_shape=shape, in_planes=planes, kernel=2, stride=2))
            shape = layers[-1].out_shape
    layers.append(random_linear(rng, shape, planes, num_classes, weight_planes=last_weight_planes,
                                name="classifier"))
    net = Network(name=f"random-{seed if isinstance(seed, int) else 'rng'}", input_shape=in_shape,
                  num_classes=num_classes, layers=tuple(layers))
    return validate(net)

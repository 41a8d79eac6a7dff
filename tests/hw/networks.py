"""Small random IR networks for the gateware tests (every IR feature, tiny shapes)."""

import dataclasses

import numpy as np
from binforge.compiler import ir
from binforge.compiler.random_network import (
    first_layer_ops,
    random_conv,
    random_linear,
    random_network,
)


def small_network(seed, shape=(1, 5, 5), channels=(3, 5, 4), act_planes=(2, 1, 2)):
    """Bit-serial first conv (8 pixel planes, gains 2**i), 2x2 max-pool, multi-op convs
    (one with stride 2), affine linear last layer."""
    return random_network(seed, in_shape=ir.Shape(*shape), first_weight_planes=1,
                          channels=channels, act_planes=act_planes)


def conv_logits_network(seed, shape=(2, 6, 6)):
    """A network whose last layer is a 1x1 conv with an affine output over 2x2 positions,
    after a 3x3/stride-2 max-pool and a 1x1 conv."""
    rng = np.random.default_rng(seed)
    shape = ir.Shape(*shape)
    first = random_conv(rng, shape, ir.INPUT_PLANES, 3, kernel=3, padding=1, weight_planes=2,
                        out_planes=2, ops=first_layer_ops(2), name="conv0")
    pool = ir.MaxPoolLayer(name="pool", in_shape=first.out_shape, in_planes=2, kernel=3, stride=2)
    one = random_conv(rng, pool.out_shape, 2, 6, kernel=1, padding=0, weight_planes=2, out_planes=1,
                      name="conv1x1")
    last = random_conv(rng, one.out_shape, 1, 2, kernel=1, stride=1, padding=0, weight_planes=1,
                       out_planes=0, name="head")
    net = ir.Network(name="conv-logits", input_shape=shape, num_classes=last.out_shape.size,
                     layers=(first, pool, one, last))
    return ir.validate(net)


def linear_stack_network(seed):
    """Linear layers only: threshold linear (2 planes) then affine linear."""
    rng = np.random.default_rng(seed)
    shape = ir.Shape(1, 3, 3)
    first = random_linear(rng, shape, ir.INPUT_PLANES, 7, weight_planes=1, out_planes=2,
                          ops=first_layer_ops(1), name="fc0")
    last = random_linear(rng, first.out_shape, 2, 3, weight_planes=2, name="fc1")
    net = ir.Network(name="linear-stack", input_shape=shape, num_classes=3, layers=(first, last))
    return ir.validate(net)


def strided_first_network(seed, pad_bit):
    """A stride-2 padded first conv (im2col input with pad bits), then a linear classifier."""
    rng = np.random.default_rng(seed)
    shape = ir.Shape(2, 5, 5)
    first = random_conv(rng, shape, ir.INPUT_PLANES, 3, kernel=3, stride=2, padding=1,
                        weight_planes=1, out_planes=1, ops=first_layer_ops(1), name="conv0")
    first = dataclasses.replace(first, pad_bit=pad_bit)
    last = random_linear(rng, first.out_shape, 1, 2, weight_planes=1, name="fc")
    return ir.validate(ir.Network(name="strided", input_shape=shape, num_classes=2, layers=(first, last)))

"""The network-to-array plan: layouts, refusals with exact messages, the cycle model's shape."""

import numpy as np
import pytest
from binforge.compiler import ir
from binforge.compiler.random_network import random_conv, random_linear
from binforge.hw.accelerator import Accelerator
from binforge.hw.plan import (
    analytic_cycles,
    expand_gains,
    plan_network,
    signed_digits,
    skew_advice,
    tensor_layouts,
)
from networks import linear_stack_network, small_network


def wide_logits_network():
    """A classifier whose accumulators need more than 32 bits (huge gains)."""
    rng = np.random.default_rng(0)
    first = random_conv(rng, ir.Shape(1, 3, 3), ir.INPUT_PLANES, 2, weight_planes=1, out_planes=1,
                        ops=tuple(ir.Op(0, i, 1 << i) for i in range(8)), name="conv0")
    last = random_linear(rng, first.out_shape, 1, 2, ops=(ir.Op(0, 0, 1 << 30),), name="fc")
    return ir.validate(ir.Network(name="wide", input_shape=ir.Shape(1, 3, 3), num_classes=2,
                                  layers=(first, last)))


def test_last_layer_wider_than_the_result_stream_is_refused(rejects):
    net = wide_logits_network()
    width = net.layers[-1].acc_width
    message = (f"the last layer's accumulators are {width} bits wide, wider than the 32-bit "
               "result stream")
    rejects(ValueError, message, plan_network, net, 2, 2, 4)
    rejects(ValueError, message, Accelerator, net, 2, 2, 4)


@pytest.mark.parametrize("rows,cols,simd,message", [
    (0, 1, 1, "rows must be a positive integer, not 0"),
    (1, 0, 1, "cols must be a positive integer, not 0"),
    (1, 1, 0, "simd must be a positive power of two, not 0"),
    (1, 1, 24, "simd must be a positive power of two, not 24"),
    (True, 1, 1, "rows must be a positive integer, not True"),
])
def test_accelerator_rejects_bad_parameters(rows, cols, simd, message, rejects):
    rejects(ValueError, message, Accelerator, small_network(1), rows, cols, simd)


def test_layouts_dense_only_where_read_whole():
    net = small_network(1)  # conv0, pool, conv1, conv2, linear
    layouts = tensor_layouts(net, 8)
    assert [layout.dense for layout in layouts] == [False, False, False, False, True]
    stack = tensor_layouts(linear_stack_network(1), 8)
    assert [layout.dense for layout in stack] == [True, True]
    assert stack[0].pos_stride == 1 and stack[0].plane_words == 2  # 9 bits in 8-bit words


def test_cycle_model_counts_ideal_beats():
    net = small_network(2)
    plan = plan_network(net, 2, 3, 4)
    cycles = analytic_cycles(plan)
    for p, row in zip(plan.layers, cycles["layers"], strict=True):
        if p.kind == "compute":
            assert row["ideal"] == p.ops * p.channel_groups * p.position_groups * p.kh * p.kw * p.cw_in
            assert row["cycles"] >= row["ideal"] + plan.array_latency
    assert cycles["total"] == 1 + sum(row["cycles"] for row in cycles["layers"])


@pytest.mark.parametrize("rows,cols,simd,relay,hold", [
    (4, 5, 16, 1, True),   # skew 7, drains of 5-20 cycles after 2-9 beats: guards 0-19, not 5-26
    (3, 5, 2, 4, True),    # skew 1: one cycle less where a drain outlasts its group's beats
    (1, 1, 2, 4, False),   # no guard anywhere: no hold
    (4, 2, 8, 4, False),   # no skew: the hold cannot shorten a guard
])
def test_guard_with_and_without_the_result_hold(rows, cols, simd, relay, hold):
    net = small_network(5, shape=(1, 6, 6), channels=(4, 6, 4), act_planes=(1, 1, 1))
    plan = plan_network(net, rows, cols, simd, relay=relay)
    assert plan.hold_results is hold
    skew = plan.max_skew
    for p in plan.layers:
        if p.kind != "compute":
            continue
        for drain, guard in ((p.drain_full, p.guard_full), (p.drain_last, p.guard_last)):
            need = max(drain, skew) + 1 if hold else drain + skew + 1
            assert guard == max(0, need - p.beats)


def test_skew_advice_names_the_relay_that_takes_the_skew_out():
    net = small_network(5, shape=(1, 6, 6), channels=(4, 6, 4), act_planes=(1, 1, 1))
    plan = plan_network(net, 4, 5, 16, relay=1)  # skew 7 against groups of 2-9 beats
    advice = skew_advice(plan)
    no_skew = analytic_cycles(net, 4, 5, 16, relay=5)["total"]
    assert advice["relay"] == 1 and advice["cycles"] == analytic_cycles(plan)["total"]
    assert advice["skew_cycles"] == advice["cycles"] - no_skew > advice["cycles"] / 100
    hint = advice["hint"]
    assert hint in (2, 4, 5)
    assert advice["hint_cycles"] == analytic_cycles(net, 4, 5, 16, relay=hint)["total"]
    assert advice["cycles"] - advice["hint_cycles"] >= advice["skew_cycles"] / 2
    if hint > 2:  # the smallest relay that does: half-way was not enough
        smaller = analytic_cycles(net, 4, 5, 16, relay=hint // 2)["total"]
        assert advice["cycles"] - smaller < advice["skew_cycles"] / 2
    # without skew, or with one that costs under 1 %, nothing to advise
    assert skew_advice(plan_network(net, 4, 5, 16, relay=5)) is None
    assert skew_advice(plan_network(net, 1, 1, 16)) is None


@pytest.mark.parametrize("gain", [1, -1, 2, 3, -3, 7, 139, 195, -16384, 1023])
def test_signed_digits_sum_to_the_gain(gain):
    digits = signed_digits(gain)
    assert sum(digits) == gain
    assert all(abs(d) & (abs(d) - 1) == 0 for d in digits)
    # non-adjacent: no two digits in neighbouring bit positions
    positions = sorted(abs(d).bit_length() for d in digits)
    assert all(b - a >= 2 for a, b in zip(positions, positions[1:], strict=False))


def test_shift_mode_expands_ops_and_multiply_keeps_them():
    ops = (ir.Op(0, 1, 139), ir.Op(1, 0, -4))
    assert [op.gain for op in expand_gains(ops, "shift")] == [128, 16, -4, -4, -1]
    assert expand_gains(ops, "multiply") == ops
    net = small_network(4)
    assert plan_network(net, 2, 2, 4, gain_mode="multiply").gain_format.kind == "multiply"
    assert plan_network(net, 2, 2, 4).gain_format.kind == "horner"


def test_unknown_gain_mode_is_refused(rejects):
    rejects(ValueError, "gain_mode must be one of shift, multiply, not 'fast'",
            plan_network, small_network(1), 2, 2, 4, gain_mode="fast")


def test_affine_constants_have_a_rom_of_their_own():
    """The affine layer's constants: a word per (channel group, row) in ``affine_rom``,
    based at 0 there; the constants ROM holds the threshold layers only."""
    from binforge.hw.descriptor import DescriptorFormat

    net = small_network(3)
    rows = 3
    plan = plan_network(net, rows, 2, 4)
    last = plan.layers[-1]
    assert last.affine and last.const_base == 0
    assert len(plan.affine_rom) == last.channel_groups * rows
    thresholds = [p for p in plan.layers if p.kind == "compute" and not p.affine]
    assert len(plan.const_rom) == sum(len(p.const_rows) for p in thresholds)
    assert DescriptorFormat(plan).values[-1]["const_group_step"] == rows
    cvw = plan.const_value_width
    mask = (1 << cvw) - 1
    for k, word in enumerate(plan.affine_rom):
        value, flip, valid = last.const_rows[k // rows][k % rows]
        assert word == (int(value) & mask) | (int(flip) << cvw) | (int(valid) << (cvw + 1))
    assert plan.memory_bits()["thresholds_and_biases"] == (len(plan.const_rom) * plan.const_width
                                                           + len(plan.affine_rom) * (cvw + 2))

"""The window generator on Verilator and Icarus: the beats it issues, read from the layer's
input in the plan's memory layout and the weight ROM, must give the golden model's
accumulators for every channel and position (the same sums the array would form)."""

import numpy as np
import pytest
from binforge.compiler.ir import Shape, pack_bits, pixel_planes, popcount
from binforge.compiler.random_network import random_network
from binforge.hw.descriptor import DescriptorFormat
from binforge.hw.plan import plan_network, tensor_layouts
from binforge.hw.window import WindowGenerator
from binforge.sim.cocotb_runner import build_design, run_testbench
from binforge.sim.golden import run_network
from stimulus_files import convert, memory_image, write_stimulus

pytestmark = pytest.mark.sim

ROWS, COLS, SIMD = 3, 2, 2  # two channel words for 3 channels: multi-word windows


def window_network():
    """7x7 input: padded first conv, 2x2 max-pool, 3x3 conv (two planes), stride-2 conv, linear."""
    return random_network(8, in_shape=Shape(1, 7, 7), channels=(3, 5, 4), act_planes=(2, 1, 2))


def accumulators_from_beats(rec, p, plan, mem_bits, weight_bits):
    """The sums ``acc = bias + K*sum(gains) - 2*sum(gain * popcount)`` the recorded beats make,
    (Co, positions). Each beat's gain is its op's IR gain (beats run op by op, ``beats / ops``
    each): how the PEs apply gains (codes, Horner steps) is the PE and network tests' business."""
    per_op = p.beats // p.ops
    aw = int(rec["addr_width"])
    cols, rows, s = plan.cols, plan.rows, plan.simd
    got = np.full((p.channel_groups * rows, p.position_groups * cols), np.iinfo(np.int64).min)
    group, mism = -1, None
    for b in range(len(rec["cycle"])):
        if rec["first"][b]:
            group += 1
            mism = np.zeros((rows, cols), np.int64)
            in_group = 0
        gain = p.gains[in_group // per_op]
        in_group += 1
        addr_all = int(rec["addr"][b], 16)
        w = weight_bits[rec["weight_addr"][b]]  # (R, S)
        pad_word = np.array([(rec["pad_word"][b] >> i) & 1 for i in range(s)], np.uint8)
        for c in range(cols):
            if (rec["pad"][b] >> c) & 1:
                act = pad_word
            else:
                addr = (addr_all >> (c * aw)) & ((1 << aw) - 1)
                act = mem_bits[addr] if addr < len(mem_bits) else np.zeros(s, np.uint8)
            mism[:, c] += gain * popcount(np.bitwise_xor(pack_bits(act)[None], pack_bits(w)))
        if rec["last"][b]:
            pg, cg = divmod(group, p.channel_groups)
            got[cg * rows:(cg + 1) * rows, pg * cols:(pg + 1) * cols] = mism
    layer = p.layer
    offset = np.asarray(layer.bias, np.int64) + layer.fan_in * sum(p.gains)
    return offset[:, None] - 2 * got[:p.out_c, :p.positions], group + 1


def test_window_generator_beats_give_golden_accumulators(simulator, build_root, tmp_path, record_cases):
    net = window_network()
    plan = plan_network(net, ROWS, COLS, SIMD)
    fmt = DescriptorFormat(plan)
    aw = max(1, (max(*plan.buffer_depths, plan.image_depth) - 1).bit_length())  # as the sequencer
    waw = max(1, (len(plan.weight_rom) - 1).bit_length())
    src = convert(WindowGenerator(plan, fmt.layout, aw, waw), "window", build_root / "verilog" / "window")
    design = build_design(simulator, [src], "window", build_root=build_root, name="window")
    computes = [p for p in plan.layers if p.kind == "compute"]
    max_cycles = 4 * sum(p.groups * (p.beats + p.guard_full) for p in computes) + 100
    meta = {"layers": [{"index": p.index, "descriptor": hex(fmt.const(p.index).as_bits())} for p in computes],
            "max_cycles": max_cycles}
    report = run_testbench(design, "binforge.sim.tb.window_tb", run_dir=tmp_path,
                           stimulus=write_stimulus(tmp_path / "window.npz", meta))
    image = np.random.default_rng(4).integers(0, 256, (1, *net.input_shape.as_tuple())).astype(np.uint8)
    golden = run_network(net, image, return_layers=True)
    inputs = [pixel_planes(image)[0]] + [out[0] for out in golden.layers[:-1]]
    layouts = tensor_layouts(net, SIMD)
    weight_bits = np.array([[[(int(word) >> (r * SIMD + i)) & 1 for i in range(SIMD)] for r in range(ROWS)]
                            for word in plan.weight_rom], np.uint8)
    checked = 0
    for p, rec in zip(computes, report["layers"], strict=True):
        assert rec["index"] == p.index
        rec["addr_width"] = aw
        assert len(rec["cycle"]) == p.groups * p.beats, f"layer {p.index}: beats issued"
        mem = memory_image(inputs[p.index], layouts[p.index])
        acc, groups = accumulators_from_beats(rec, p, plan, mem, weight_bits)
        assert groups == p.groups
        want = golden.accumulators[p.index][0].reshape(p.out_c, -1)
        bad = np.argwhere(acc != want)
        assert not len(bad), [f"layer {p.index} channel {c} position {pos}: expected {want[c, pos]}, "
                              f"got {acc[c, pos]}" for c, pos in bad[:5]]
        checked += want.size
        # a group's first beat waits for the previous group's guard to run down
        firsts = [rec["cycle"][b] for b in range(len(rec["cycle"])) if rec["first"][b]]
        for g in range(1, len(firsts)):
            guard = p.guard_last if (g - 1) // p.channel_groups == p.position_groups - 1 else p.guard_full
            assert firsts[g] - firsts[g - 1] == p.beats + guard, f"layer {p.index} group {g}: spacing"
    assert checked == sum(p.out_c * p.positions for p in computes)
    record_cases(checked)

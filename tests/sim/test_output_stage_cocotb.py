"""The output stage on Verilator and Icarus: fed the PE results the golden accumulators imply,
its activation writes must build the next layer's input exactly (every word of the plan's
layout, every lane, starting from garbage memory), its logit writes the golden logits,
and its class index the golden class."""

import numpy as np
import pytest
from binforge.compiler.ir import Shape
from binforge.compiler.random_network import random_network
from binforge.hw.descriptor import DescriptorFormat
from binforge.hw.output_stage import OutputStage
from binforge.hw.plan import DRAIN_TAIL_CYCLES, plan_network, tensor_layouts
from binforge.sim.cocotb_runner import build_design, run_testbench
from binforge.sim.golden import run_network
from stimulus_files import convert, memory_image, write_stimulus

pytestmark = pytest.mark.sim

ROWS, COLS, SIMD = 3, 2, 4  # 5 output channels: two channel groups, the last one partial


def output_network():
    return random_network(12, in_shape=Shape(1, 5, 5), channels=(5, 6, 4), act_planes=(2, 2, 1))


def group_results(p, plan, acc):
    """Packed PE results ``P = (offset - acc) / 2`` per group, in the generator's group order."""
    layer = p.layer
    offset = np.asarray(layer.bias, np.int64) + layer.fan_in * sum(p.gains)
    pe = (offset[:, None] - acc.reshape(p.out_c, -1)) // 2  # (Co, positions)
    mask, width = (1 << plan.pe_width) - 1, plan.pe_width
    groups, drains = [], []
    for pg in range(p.position_groups):
        for cg in range(p.channel_groups):
            word = 0
            for r in range(plan.rows):
                for c in range(plan.cols):
                    ch, pos = cg * plan.rows + r, pg * plan.cols + c
                    value = int(pe[ch, pos]) if ch < p.out_c and pos < p.positions else 0
                    word |= (value & mask) << ((r * plan.cols + c) * width)
            groups.append(hex(word))
            drains.append(p.drain_last if pg == p.position_groups - 1 else p.drain_full)
    return groups, drains


def test_output_stage_writes_golden_layer_outputs(simulator, build_root, tmp_path, record_cases):
    net = output_network()
    plan = plan_network(net, ROWS, COLS, SIMD)
    fmt = DescriptorFormat(plan)
    aw = max(1, (max(*plan.buffer_depths, plan.image_depth) - 1).bit_length())  # as the sequencer
    src = convert(OutputStage(plan, fmt.layout, aw), "output_stage", build_root / "verilog" / "output_stage")
    design = build_design(simulator, [src], "output_stage", build_root=build_root, name="output-stage")
    image = np.random.default_rng(6).integers(0, 256, (1, *net.input_shape.as_tuple())).astype(np.uint8)
    golden = run_network(net, image, return_layers=True)
    computes = [p for p in plan.layers if p.kind == "compute"]
    layers = []
    for p in computes:
        groups, drains = group_results(p, plan, golden.accumulators[p.index][0])
        layers.append({"index": p.index, "descriptor": hex(fmt.const(p.index).as_bits()), "groups": groups,
                       "drain": drains})
    stim = write_stimulus(tmp_path / "output.npz", {"seed": 3, "layers": layers, "tail": DRAIN_TAIL_CYCLES})
    report = run_testbench(design, "binforge.sim.tb.output_stage_tb", run_dir=tmp_path, stimulus=stim)
    layouts = tensor_layouts(net, SIMD)
    checked = 0
    for p, rec in zip(computes, report["layers"], strict=True):
        if p.affine:
            want = golden.logits[0]
            got = np.full(len(want), np.iinfo(np.int64).min)
            for addr, value in rec["logit"]:
                got[addr] = value
            assert got.tolist() == want.tolist(), f"layer {p.index} logits"
            assert rec["class_index"] == golden.predictions[0]
            assert not rec["act"]
            checked += len(want) + 1
            continue
        out = golden.layers[p.index][0]  # (planes, C, H, W)
        want = memory_image(out, layouts[p.index + 1])
        garbage = np.random.default_rng(p.index).integers(0, 2, want.shape).astype(np.uint8)
        mem = garbage.copy()
        for addr, data, en in rec["act"]:
            for lane in range(SIMD):
                if (en >> lane) & 1:
                    mem[addr, lane] = (data >> lane) & 1
        bad = np.argwhere(mem != want)
        assert not len(bad), [f"layer {p.index} word {w} lane {lane}: expected {want[w, lane]}, got {mem[w, lane]}"
                              for w, lane in bad[:5]]
        assert not rec["logit"]
        checked += want.size
    assert checked > 100
    record_cases(checked)

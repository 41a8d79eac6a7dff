"""Whole networks through the generated RTL on Verilator and Icarus, bit-exact against the golden
model, with random stalls on both streams, resets in the middle of an image, and the cycle
counter equal to the analytic model."""

import dataclasses

import numpy as np
import pytest
from binforge.boards.platforms import get_board
from binforge.compiler.ir import Shape
from binforge.compiler.random_network import random_network
from binforge.hw.generate import generate
from binforge.hw.plan import analytic_cycles, plan_network
from binforge.sim.cocotb_runner import SimulationFailed, build_design, run_testbench
from binforge.sim.golden import run_network
from binforge.sim.network_sim import (
    TESTBENCH,
    expected_layer_cycles,
    localise_image,
    read_hw,
    simulate_network,
    write_accelerator_stimulus,
)

pytestmark = pytest.mark.sim

def edge_and_random_images(net, count, seed):
    shape = net.input_shape.as_tuple()
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *shape)).astype(np.uint8)
    images[0] = 0  # every pixel plane 0
    images[1] = 255  # every pixel plane 1
    images[2] = np.indices(shape).sum(0) % 2 * 255  # checkerboard
    images[3] = rng.choice([0, 1, 127, 128, 254, 255], shape)  # bit-plane boundaries
    return images


def simulate_bit_exact(folder, net, images, simulator, build_root, run_dir, record_cases, seed):
    """``images`` through the RTL in ``folder`` with 30 % stalls on both streams: every
    image bit-exact. Returns the result for the cycle checks."""
    result = simulate_network(folder, net, images, simulator=simulator, run_dir=run_dir,
                              build_root=build_root, seed=seed, in_stall=0.3, out_stall=0.3)
    record_cases(result.cases, result.mismatch_count)
    assert result.mismatch_count == 0, result.mismatches[:5]
    assert result.images == result.matches == len(images)
    return result


def test_tiny_network_bit_exact_with_stalls_and_resets(simulator, build_root, tiny, tmp_path, record_cases):
    net, folder = tiny
    # Icarus is about ten times slower: fewer images there, the same features.
    count, resets = (24, [4, 17]) if simulator == "verilator" else (8, [5])
    images = edge_and_random_images(net, count, seed=2)
    result = simulate_network(folder, net, images, simulator=simulator, run_dir=tmp_path, build_root=build_root,
                              seed=9, in_stall=0.3, out_stall=0.4, reset_before=resets, chunk=12)
    record_cases(result.cases, result.mismatch_count)
    assert result.mismatch_count == 0, result.mismatches[:5]
    assert result.images == result.matches == len(images)
    assert result.resets_mid_image == len(resets)
    desc, _ = read_hw(folder)
    assert result.rtl_cycles == [desc["cycles"]["total"]] * len(images)
    # per image: class + logits + done + last + cycles + each layer's cycles
    assert result.cases == len(images) * (net.num_classes + 5 + len(net.layers))


def test_held_results_drained_while_the_next_group_lands(simulator, build_root, tmp_path, record_cases):
    # relay 1 on 4 x 5: skew 7; the first layer's 8-beat groups follow each other with no
    # guard (5 without the output stage's result hold), so each drain overlaps the next sums
    net = random_network(7, in_shape=Shape(1, 6, 6), first_weight_planes=1, channels=(4, 6, 4),
                         act_planes=(1, 1, 1))
    plan = plan_network(net, 4, 5, 16, relay=1)
    assert plan.hold_results and plan.layers[0].guard_full == 0 < plan.layers[0].drain_full
    folder = tmp_path / "hw"
    generate(net, 4, 5, 16, folder, relay=1)
    images = edge_and_random_images(net, 6, seed=4)
    result = simulate_bit_exact(folder, net, images, simulator, build_root, tmp_path / "run", record_cases, 2)
    desc, _ = read_hw(folder)
    assert result.rtl_layer_cycles == [expected_layer_cycles(desc)] * len(images)
    assert result.rtl_cycles == [analytic_cycles(plan)["total"]] * len(images)


def test_wrong_expectation_is_reported_with_image_and_channel(simulator, build_root, tiny, tmp_path):
    net, folder = tiny
    desc, verilog = read_hw(folder)
    images = edge_and_random_images(net, 4, seed=3)
    golden = run_network(net, images)
    logits = golden.logits.copy()
    logits[2, 1] += 1  # a deliberately wrong expected logit must be caught and located
    stim = write_accelerator_stimulus(tmp_path / "stim.npz", images, logits, golden.predictions,
                                      cycles=desc["cycles"]["total"] + 1,
                                      load_cycles_per_pixel=desc["protocol"]["load_cycles_per_pixel"])
    design = build_design(simulator, [verilog], "binforge_top", build_root=build_root,
                          name=f"net-{desc['network']}")
    with pytest.raises(SimulationFailed) as info:
        run_testbench(design, TESTBENCH, run_dir=tmp_path, stimulus=stim)
    found = info.value.report["mismatches"]
    logit_errors = [m for m in found if m["what"] == "logit"]
    assert logit_errors == [{"image": 2, "what": "logit", "channel": 1, "expected": int(logits[2, 1]),
                             "got": int(golden.logits[2, 1])}]
    assert sum(m["what"] == "cycles (analytic model)" for m in found) == 4


def _with_threshold(net, layer_index, channel, value):
    """``net`` with one channel's thresholds in one layer set to ``value`` (a planted fault)."""
    layer = net.layers[layer_index]
    thresholds = layer.output.thresholds.copy()
    thresholds[:, channel] = value
    changed = dataclasses.replace(layer, output=dataclasses.replace(layer.output, thresholds=thresholds))
    return dataclasses.replace(net, layers=net.layers[:layer_index] + (changed,) + net.layers[layer_index + 1:])


def test_per_layer_cycles_from_the_rtl_equal_the_analytic_model(simulator, build_root, tiny, tmp_path):
    net, folder = tiny
    images = edge_and_random_images(net, 4, seed=5)
    result = simulate_network(folder, net, images, simulator=simulator, run_dir=tmp_path, build_root=build_root,
                              seed=1, in_stall=0.2, out_stall=0.2)
    assert result.mismatch_count == 0, result.mismatches[:5]
    desc, _ = read_hw(folder)
    analytic = expected_layer_cycles(desc)
    assert [layer["name"] for layer in desc["cycles"]["layers"]] == [layer.name for layer in net.layers]
    assert result.rtl_layer_cycles == [analytic] * len(images)
    assert sum(analytic) == desc["cycles"]["total"]
    table = result.layer_table()
    assert [(r["analytic"], r["rtl_min"], r["rtl_max"]) for r in table] == [(c, c, c) for c in analytic]


def test_traced_layers_of_a_correct_run_all_agree_with_golden(simulator, build_root, tiny, tmp_path):
    net, folder = tiny
    image = edge_and_random_images(net, 4, seed=6)[3]
    found = localise_image(folder, net, image, simulator=simulator, run_dir=tmp_path, build_root=build_root)
    assert found["first_bad_layer"] is None
    golden = run_network(net, image[None], return_layers=True)
    for entry, out in zip(found["layers"], golden.layers, strict=True):
        assert entry["mismatches"] == 0, entry
        assert entry["compared"] == out[0].size  # every output value of every layer was read back


def test_a_planted_fault_is_located_at_its_layer_channel_and_position(simulator, build_root, tiny, tmp_path):
    """The RTL of ``net`` checked against a golden model whose conv1 channel 1 always fires:
    the first differing layer must be conv1, at channel 1, where the true bit was 0."""
    net, folder = tiny
    conv = next(i for i, layer in enumerate(net.layers) if layer.name == "conv1")
    faulty = _with_threshold(net, conv, 1, -(1 << (net.layers[conv].acc_width - 1)))  # always fires
    images = edge_and_random_images(net, 6, seed=0)
    true = run_network(net, images, return_layers=True)
    assert (true.logits != run_network(faulty, images).logits).any(), "the planted fault must show in the logits"
    result = simulate_network(folder, faulty, images, simulator=simulator, run_dir=tmp_path, build_root=build_root)
    assert result.mismatch_count > 0 and result.localisations
    for found in result.localisations:
        assert found["first_bad_layer"] == conv
        assert all(entry["mismatches"] == 0 for entry in found["layers"][:conv])
        at_fault = found["layers"][conv]
        bits = true.layers[conv][found["image"]][:, 1]  # (planes, H, W): channel 1 of the true output
        assert at_fault["mismatches"] == int((bits != 1 ^ int(net.layers[conv].output.flip[1])).sum())
        for value in at_fault["first"]:
            y, x = value["position"]
            assert value["channel"] == 1
            assert value["got"] == int(bits[value["plane"], y, x]) != value["expected"]


@pytest.mark.parametrize("rows,cols,simd", [(2, 2, 8), (2, 1, 32)])
def test_image_memory_in_ice40_spram_tiles(simulator, build_root, tmp_path, record_cases, rows, cols, simd):
    # Elaborated for an iCE40 UltraPlus, the im2col image memory is SB_SPRAM256KA
    # instances (one tile per column at S = 8, two side by side at S = 32), simulated with
    # Yosys's model of the primitive: bit-exact, same cycles as the portable design
    net = random_network(5, in_shape=Shape(1, 8, 8), first_weight_planes=1, channels=(4, 6),
                         act_planes=(1, 1))
    plan = plan_network(net, rows, cols, simd)
    assert plan.input_layout.im2col is not None and plan.image_depth == 8 * 64 * -(-16 // simd)
    folder = tmp_path / "hw"
    generate(net, rows, cols, simd, folder, platform=get_board("icebreaker").platform())
    _, verilog = read_hw(folder)
    assert verilog.read_text().count("SB_SPRAM256KA ") == cols * -(-simd // 16)
    images = edge_and_random_images(net, 6, seed=7)
    result = simulate_bit_exact(folder, net, images, simulator, build_root, tmp_path / "run", record_cases, 3)
    assert result.rtl_cycles == [analytic_cycles(plan)["total"]] * len(images)


@pytest.mark.parametrize("board", ["ulx3s-85f", "icebreaker"])
def test_verilog_elaborated_for_a_board(simulator, build_root, tmp_path, record_cases, board):
    # What `binforge hw --board` writes: on ECP5 the PEs' CCU2C carry chains and the image
    # memory in banks, on the UP5K the image memory in SPRAM; simulated with Yosys's
    # models of the primitives, bit-exact and with the portable design's cycles
    net = random_network(6, in_shape=Shape(1, 8, 8), first_weight_planes=1, channels=(4, 6),
                         act_planes=(1, 1))
    folder = tmp_path / "hw"
    desc = generate(net, 2, 2, 16, folder, platform=get_board(board).platform())
    text = read_hw(folder)[1].read_text()
    assert ("  CCU2C " in text) == (board == "ulx3s-85f")
    assert ("  SB_SPRAM256KA " in text) == (board == "icebreaker")
    assert desc["cycles"] == analytic_cycles(plan_network(net, 2, 2, 16))
    images = edge_and_random_images(net, 5, seed=8)
    result = simulate_bit_exact(folder, net, images, simulator, build_root, tmp_path / "run", record_cases, 4)
    assert result.rtl_cycles == [desc["cycles"]["total"]] * len(images)

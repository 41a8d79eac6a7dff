"""Whole networks through the generated RTL on Verilator and Icarus, bit-exact against the golden
model, with random stalls on both streams, resets in the middle of an image, and the cycle
counter equal to the analytic model."""

import numpy as np
import pytest
from binforge.sim.cocotb_runner import SimulationFailed, build_design, run_testbench
from binforge.sim.golden import run_network
from binforge.sim.network_sim import (
    TESTBENCH,
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
    # per image: class + logits + done + last + cycles
    assert result.cases == len(images) * (net.num_classes + 5)


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

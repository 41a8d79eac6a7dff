"""Whole networks through the generated RTL on Verilator and Icarus, bit-exact against the golden
model, with random stalls on both streams, resets in the middle of an image, and the cycle
counter equal to the analytic model."""

import numpy as np
import pytest

from binforge.compiler.ir import Shape
from binforge.compiler.random_network import random_network
from binforge.hw.generate import generate
from binforge.sim.cocotb_runner import SimulationFailed, build_design, run_testbench
from binforge.sim.golden import run_network
from binforge.sim.network_sim import TESTBENCH, read_hw, simulate_network, write_accelerator_stimulus

pytestmark = pytest.mark.sim

#: A tiny network with every IR feature: bit-serial first conv, 2x2 max-pool, multi-op conv
#: with two activation planes, affine linear classifier. Array 3 x 2 x 8 with relay 1: skewed.
NET_SEED, ROWS, COLS, SIMD, RELAY = 21, 3, 2, 8, 1


@pytest.fixture(scope="module")
def tiny(build_root):
    net = random_network(NET_SEED, in_shape=Shape(1, 6, 6), channels=(3, 5), act_planes=(2, 1))
    folder = build_root / "verilog" / f"net-{NET_SEED}-{ROWS}x{COLS}x{SIMD}"
    if not (folder / "hw.json").is_file() or read_hw(folder)[0]["network"] != net.name:
        generate(net, ROWS, COLS, SIMD, folder, relay=RELAY)
    return net, folder


def edge_and_random_images(net, count, seed):
    shape = net.input_shape.as_tuple()
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *shape)).astype(np.uint8)
    images[0] = 0  # every pixel plane 0
    images[1] = 255  # every pixel plane 1
    images[2] = np.indices(shape).sum(0) % 2 * 255  # checkerboard
    images[3] = rng.choice([0, 1, 127, 128, 254, 255], shape)  # bit-plane boundaries
    return images


def test_tiny_network_bit_exact_with_stalls_and_resets(simulator, build_root, tiny, tmp_path):
    net, folder = tiny
    images = edge_and_random_images(net, 24, seed=2)
    result = simulate_network(folder, net, images, simulator=simulator, run_dir=tmp_path, build_root=build_root,
                              seed=9, in_stall=0.3, out_stall=0.4, reset_before=[4, 17], chunk=12)
    assert result.mismatch_count == 0, result.mismatches[:5]
    assert result.images == result.matches == len(images)
    assert result.resets_mid_image == 2
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
                                      cycles=desc["cycles"]["total"] + 1)
    design = build_design(simulator, [verilog], "binforge_top", build_root=build_root,
                          name=f"net-{desc['network']}")
    with pytest.raises(SimulationFailed) as info:
        run_testbench(design, TESTBENCH, run_dir=tmp_path, stimulus=stim)
    found = info.value.report["mismatches"]
    logit_errors = [m for m in found if m["what"] == "logit"]
    assert logit_errors == [{"image": 2, "what": "logit", "channel": 1, "expected": int(logits[2, 1]),
                             "got": int(golden.logits[2, 1])}]
    assert sum(m["what"] == "cycles (analytic model)" for m in found) == 4

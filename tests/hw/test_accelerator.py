"""The whole accelerator in Amaranth's simulator against the golden model: class,
every logit and the cycle count (equal to the analytic model)."""

import numpy as np
import pytest
from accel_harness import run_accelerator
from amaranth.sim import Simulator
from binforge.hw.accelerator import Accelerator, load_cycles, load_cycles_per_pixel
from binforge.hw.plan import analytic_cycles, plan_network
from binforge.hw.sequencer import image_bank_depth
from binforge.sim.golden import run_network
from networks import conv_logits_network, linear_stack_network, small_network, strided_first_network


def images_for(net, count, seed):
    shape = net.input_shape.as_tuple()
    images = np.random.default_rng(seed).integers(0, 256, (count, *shape)).astype(np.uint8)
    images[0, ..., 0] = 0  # edge pixels: all planes 0 and all planes 1
    images[0, ..., -1] = 255
    return images


def check(net, rows, cols, simd, count=1, stall_seed=None, gain_mode="shift", image_banks="auto",
          image_memory="auto"):
    images = images_for(net, count, rows * 7 + cols)
    golden = run_network(net, images)
    acc = Accelerator(net, rows, cols, simd, gain_mode=gain_mode, image_banks=image_banks,
                      image_memory=image_memory)
    assert acc.plan.gain_format.kind in (("multiply",) if gain_mode == "multiply" else ("horner", "sign"))
    classes, logits, cycles = run_accelerator(acc, images, stall_seed=stall_seed)
    np.testing.assert_array_equal(logits, golden.logits)
    np.testing.assert_array_equal(classes, golden.predictions)
    assert cycles == [analytic_cycles(net, rows, cols, simd, gain_mode=gain_mode)["total"]] * count


@pytest.mark.parametrize("seed,rows,cols,simd,stall,gain_mode", [
    (3, 1, 1, 2, None, "shift"),
    (4, 4, 2, 8, 4, "multiply"),
    (5, 3, 5, 2, 5, "shift"),
    (6, 5, 1, 16, None, "multiply"),
])
def test_random_network_matches_golden(seed, rows, cols, simd, stall, gain_mode):
    check(small_network(seed), rows, cols, simd, stall_seed=stall, gain_mode=gain_mode)


def test_two_images_back_to_back_with_back_pressure():
    check(small_network(8, shape=(1, 4, 4), channels=(2, 3), act_planes=(1, 2)), 2, 2, 4, count=2,
          stall_seed=8)


@pytest.mark.parametrize("rows,cols,simd,shape", [(2, 3, 4, (1, 6, 6)), (8, 2, 1, (2, 5, 5))])
def test_conv_logits_network_matches_golden(rows, cols, simd, shape):
    check(conv_logits_network(11, shape), rows, cols, simd, stall_seed=1)


def test_linear_only_network_matches_golden():
    check(linear_stack_network(12), 3, 2, 8, stall_seed=2)


@pytest.mark.parametrize("pad_bit", [0, 1])
def test_strided_first_layer_from_im2col_image_memory(pad_bit):
    net = strided_first_network(13, pad_bit)
    plan = plan_network(net, 2, 2, 8)
    assert plan.input_layout.im2col is not None and plan.image_depth > 0
    assert any(plan.image_init) == bool(pad_bit)
    check(net, 2, 2, 8, stall_seed=pad_bit)


@pytest.mark.parametrize("pad_bit,bank_depth", [(0, 32), (1, 16), (1, 128)])
def test_im2col_image_memory_in_banks(pad_bit, bank_depth):
    # 216 words: 7, 14 or 2 banks, the last one partly used; the loader's merges read the
    # word through the bank multiplexer, the first layer's windows span banks
    net = strided_first_network(13, pad_bit)
    assert plan_network(net, 2, 2, 8).image_depth == 216
    check(net, 2, 2, 8, count=2, stall_seed=pad_bit + 2, image_banks=bank_depth)


@pytest.mark.parametrize("image_banks", [0, 3, 48, -8, 2.0, True, "8"])
def test_image_banks_must_be_a_power_of_two(rejects, image_banks):
    rejects(ValueError, f"image_banks must be 'auto', None or a power of two (words per bank), "
            f"not {image_banks!r}", Accelerator, strided_first_network(13, 0), 2, 2, 8,
            image_banks=image_banks)


def test_image_banks_auto_is_one_dp16kd_deep_on_ecp5_only():
    class Platform:
        def __init__(self, family):
            self.family = family
    assert image_bank_depth("auto", 32, Platform("ecp5")) == 512
    assert image_bank_depth("auto", 64, Platform("ecp5")) == 512
    assert image_bank_depth("auto", 16, Platform("ecp5")) == 1024
    assert image_bank_depth("auto", 8, Platform("ecp5")) == 2048
    assert image_bank_depth("auto", 1, Platform("ecp5")) == 16384
    assert image_bank_depth("auto", 32, Platform("ice40")) is None
    assert image_bank_depth("auto", 32, None) is None
    assert image_bank_depth(None, 32, Platform("ecp5")) is None
    assert image_bank_depth(64, 32, None) == 64


def cycles_to_first_layer(acc, image):
    """Cycles from the ``start`` pulse to the first layer's descriptor load, a pixel offered
    every cycle."""
    pixels = [int(v) for v in np.asarray(image).reshape(-1)]
    seen = []

    async def tb(ctx):
        ctx.set(acc.start, 1)
        await ctx.tick()
        ctx.set(acc.start, 0)
        i, cycle = 0, 1
        while not ctx.get(acc.debug.layer_start):
            ctx.set(acc.pixels.valid, i < len(pixels))
            ctx.set(acc.pixels.payload, pixels[min(i, len(pixels) - 1)])
            took = ctx.get(acc.pixels.valid) and ctx.get(acc.pixels.ready)
            await ctx.tick()
            i += took
            cycle += 1
            assert cycle < 100_000
        seen.append((cycle, i))

    sim = Simulator(acc)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return seen[0]


@pytest.mark.parametrize("net,simd,im2col", [
    (strided_first_network(13, 1), 8, True), (strided_first_network(13, 0), 4, True),
    (strided_first_network(13, 1), 32, True), (linear_stack_network(12), 8, False),
])
def test_load_takes_the_cycles_hw_json_states(net, simd, im2col):
    # start cycle, load_cycles, the run pulse, then the sequencer loads the first layer
    acc = Accelerator(net, 2, 2, simd)
    assert (acc.plan.input_layout.im2col is not None) == im2col
    cycle, taken = cycles_to_first_layer(acc, images_for(net, 1, 0)[0])
    assert taken == net.input_shape.size
    assert cycle == 1 + load_cycles(acc.plan) + 1
    assert load_cycles_per_pixel(acc.plan) == (1 if im2col else 24)
    if im2col and simd == 8:
        # 50 pixels (2 x 5 x 5) a cycle each, then per output position (3 x 3) its 18
        # taps (3 x 3 x 2 channels: words of 8, 8 and 2 lanes) read a cycle each, 6 idle
        # cycles before each 2-lane word, and the tail after the last read
        assert load_cycles(acc.plan) == 50 + 9 * 18 + 9 * 6 + 13


@pytest.mark.parametrize("simd,bank_depth", [(4, 64), (32, 4)])
def test_im2col_windows_at_other_widths(simd, bank_depth):
    # S = 4: 5 words a window (4 lanes, waiting 4 cycles; the last 2, waiting 6); S = 32: one of 18 lanes
    check(strided_first_network(13, 1), 2, 3, simd, count=2, stall_seed=simd, image_banks=bank_depth)


def test_drain_of_held_results_overlaps_the_next_group():
    # relay 1: skew 3 + 4 = 7 cycles; the first layer's 8-beat groups follow each other with
    # no guard (5 without the result hold), so the next group's sums land during each drain
    # (draining the PEs themselves, row 0 would read the next group's sums: wrong logits)
    net = small_network(7, shape=(1, 6, 6), channels=(4, 6, 4), act_planes=(1, 1, 1))
    rows, cols, simd = 4, 5, 16
    plan = plan_network(net, rows, cols, simd, relay=1)
    assert plan.hold_results and plan.max_skew == 7
    first = plan.layers[0]
    assert (first.beats, first.drain_full, first.guard_full) == (8, 5, 0)
    images = images_for(net, 2, 5)
    golden = run_network(net, images)
    classes, logits, cycles = run_accelerator(Accelerator(net, rows, cols, simd, relay=1), images,
                                              stall_seed=3)
    np.testing.assert_array_equal(logits, golden.logits)
    np.testing.assert_array_equal(classes, golden.predictions)
    assert cycles == [analytic_cycles(plan)["total"]] * 2


@pytest.mark.parametrize("pad_bit,simd", [(0, 8), (1, 4), (1, 32)])
def test_im2col_image_memory_single_port(pad_bit, simd):
    # one address for the loader's writes and the first layer's reads (the SPRAM structure
    # of an iCE40 UltraPlus, a plain memory here): same results, same cycles
    check(strided_first_network(13, pad_bit), 2, 3, simd, count=2, stall_seed=pad_bit + simd,
          image_memory="spram")


@pytest.mark.parametrize("image_memory", ["spram ", "SPRAM", None, 1])
def test_image_memory_must_be_known(rejects, image_memory):
    rejects(ValueError, f"image_memory must be one of 'auto', 'block', 'spram', not {image_memory!r}",
            Accelerator, strided_first_network(13, 0), 2, 2, 8, image_memory=image_memory)


def test_single_port_image_memory_has_no_banks(rejects):
    rejects(ValueError, "image_banks=16 splits a block-RAM image memory; a single-port one "
            "(image_memory='spram') has no banks", Accelerator, strided_first_network(13, 0), 2, 2, 8,
            image_banks=16, image_memory="spram")


def test_one_column_reads_the_pes_directly_only_where_their_results_hold_a_cycle_longer():
    # 3 x 1 x 4: the second conv's 4-beat groups drain 3 reads, so its guard is binding:
    # reading the PEs a cycle late would take the next group's sums; the copy stays.
    net = small_network(3)
    assert not plan_network(net, 3, 1, 4).direct_results
    assert plan_network(net, 3, 1, 4).hold_results is False
    check(net, 3, 1, 4)
    # 3 x 1 x 2: twice the beats, every guard has a cycle to spare: no copy, the same
    # results and cycles.
    assert plan_network(net, 3, 1, 2).direct_results
    assert not plan_network(net, 3, 2, 2).direct_results  # two columns: the copy selects one
    check(net, 3, 1, 2, stall_seed=3)

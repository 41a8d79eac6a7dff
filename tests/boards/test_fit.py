"""The fit estimate's memories: write granularity, whole-word buffers, the im2col image memory, the op table."""

from __future__ import annotations

import pytest
from binforge.boards.fit import bram_blocks, estimate_fit
from binforge.boards.platforms import get_board
from binforge.compiler.random_network import random_network
from binforge.hw.plan import plan_network


@pytest.fixture(scope="module")
def net():
    return random_network(3)


def test_bit_written_memories_take_a_block_per_write_enable_on_ecp5():
    # Measured in a ULX3S build of the PaBT Fashion-MNIST network (16x4x32): each column's
    # 32 x 784 activation buffer took 16 DP16KD (1024x18, 2 bits each), its 32 x 6272 image
    # memory 32 (16384x1); whole-word writes would fit in 2 and 13.
    assert bram_blocks("ecp5", 32, 784, 1) == 16
    assert bram_blocks("ecp5", 32, 6272, 1) == 32
    assert bram_blocks("ecp5", 32, 784) == 2
    assert bram_blocks("ecp5", 32, 6272) == 13
    # Groups of 9 bits fill a byte lane: whole words again.
    assert bram_blocks("ecp5", 36, 512, 9) == bram_blocks("ecp5", 36, 512) == 1
    # Xilinx RAMB36: one enable per byte lane too.
    assert bram_blocks("xilinx7", 32, 1024, 1) == 8


def test_ice40_blocks_have_a_per_bit_write_mask():
    for width, depth in [(32, 784), (8, 12544), (16, 300)]:
        assert bram_blocks("ice40", width, depth, 1) == bram_blocks("ice40", width, depth)


def test_estimate_counts_the_image_memory_and_the_op_table(net):
    plan = plan_network(net, 2, 2, 8)
    assert plan.image_depth > 0  # the pixel conv reads its windows from an im2col memory
    for board_name in ("icebreaker", "ulx3s-85f"):
        board = get_board(board_name)
        estimate = estimate_fit(plan, board)
        needs = {m.name: m for m in estimate.memories}
        image = needs["image"]
        assert (image.width, image.depth, image.copies) == (8, plan.image_depth, 2)
        assert image.bits == 2 * 8 * plan.image_depth
        n_ops = sum(len(p.plane_offsets) for p in plan.layers if p.kind == "compute")
        op_table = needs["op_table"]
        assert op_table.depth == n_ops and not op_table.in_logic and op_table.blocks >= 1
        for name in ("activations_0", "activations_1", "image"):
            m = needs[name]
            if name == "image" and board_name == "icebreaker":
                # the UP5K's single-port RAM: a tile per column, no block RAM
                assert (m.blocks, m.spram, m.in_logic) == (0, 2, False)
                assert (estimate.spram_blocks, estimate.spram_available) == (2, 4)
            elif not m.in_logic:
                # written a whole word at a time (the sequencer merges partial writes)
                assert m.blocks == 2 * bram_blocks(board.family, m.width, m.depth)
        assert estimate.bram_blocks == sum(m.blocks for m in estimate.memories)



def test_whole_word_activation_memories_on_ecp5():
    # The PaBT Fashion-MNIST network's memories at S = 32 (32 x 784 buffers, a 32 x 6272
    # image memory per column) take 2 + 2 + 13 DP16KD per column written whole words (bit
    # by bit they took 16 + 16 + 32).
    plan = plan_network(random_network(3), 4, 3, 32)
    board = get_board("ulx3s-85f")
    needs = {m.name: m for m in estimate_fit(plan, board).memories}
    for name in ("activations_0", "activations_1", "image"):
        m = needs[name]
        assert m.copies == 3
        assert m.in_logic or m.blocks == 3 * bram_blocks("ecp5", 32, m.depth)
    assert [bram_blocks("ecp5", 32, d) for d in (784, 784, 6272)] == [2, 2, 13]


def test_the_result_hold_costs_a_cell_per_bit_on_ice40_only(net):
    import dataclasses

    from binforge.boards.fit import estimate_logic

    plan = plan_network(net, 4, 5, 16, relay=1)
    assert plan.hold_results  # relay 1: skew 7, drains outlast short groups
    without = dataclasses.replace(plan, hold_results=False)
    bits = plan.rows * plan.cols * plan.pe_width
    assert estimate_logic(plan, "ice40") == pytest.approx(estimate_logic(without, "ice40") + bits)
    assert estimate_logic(plan, "ecp5") == pytest.approx(estimate_logic(without, "ecp5"))


@pytest.mark.parametrize("rows,cols,simd,spram", [
    (2, 1, 16, 1), (2, 4, 16, 4), (2, 2, 32, 4), (2, 1, 64, 4),
    (2, 5, 16, 0), (2, 3, 32, 0), (2, 1, 128, 0),  # more tiles than the UP5K's 4: block RAM
])
def test_image_memory_in_spram_where_the_up5k_has_the_tiles(net, rows, cols, simd, spram):
    plan = plan_network(net, rows, cols, simd)
    up5k = {m.name: m for m in estimate_fit(plan, get_board("icebreaker")).memories}["image"]
    hx8k = {m.name: m for m in estimate_fit(plan, get_board("ice40-hx8k")).memories}["image"]
    assert up5k.spram == spram
    assert up5k.blocks == (0 if spram else cols * bram_blocks("ice40", simd, plan.image_depth))
    assert (hx8k.spram, hx8k.blocks) == (0, cols * bram_blocks("ice40", simd, plan.image_depth))


def test_reading_the_pes_directly_saves_the_column_copy_on_ice40_only(net):
    import dataclasses

    from binforge.boards.fit import estimate_logic

    plan = plan_network(net, 4, 1, 16)
    assert plan.direct_results
    with_copy = dataclasses.replace(plan, direct_results=False)
    bits = plan.rows * plan.pe_width
    assert estimate_logic(plan, "ice40") == pytest.approx(estimate_logic(with_copy, "ice40") - bits)
    assert estimate_logic(plan, "ecp5") == pytest.approx(estimate_logic(with_copy, "ecp5"))


@pytest.mark.parametrize("rows,cols,simd,relay", [(3, 2, 4, 1), (8, 1, 16, 4), (5, 3, 2, 2), (8, 1, 8, 8)])
def test_relay_bits_are_the_arrays_input_chain_registers(net, rows, cols, simd, relay):
    import re

    from amaranth.back import verilog
    from binforge.boards.fit import relay_bits
    from binforge.hw.array import XnorPopcountArray

    plan = plan_network(net, rows, cols, simd, relay=relay)
    array = XnorPopcountArray(rows, cols, simd, plan.pe_width, plan.gain_format, relay=relay)
    text = verilog.convert(array, name="array")
    chain = re.compile(r"^\s*reg (?:\[(\d+):0\] )?\\?((?:act|ctrl|weight)\d+_(?:skew_d|relay)\d+)\b", re.M)
    found = {name: int(msb or 0) + 1 for msb, name in chain.findall(text)}
    assert found and sum(found.values()) == relay_bits(plan, relay)


def test_estimate_follows_the_relay_on_ice40_only(net):
    import dataclasses

    from binforge.boards.fit import estimate_logic, relay_bits

    plan = plan_network(net, 8, 1, 16, relay=8)
    default = dataclasses.replace(plan, relay=4)
    saved = relay_bits(default, 4) - relay_bits(plan, 8)
    assert saved > 0
    assert estimate_logic(plan, "ice40") == pytest.approx(estimate_logic(default, "ice40") - saved)
    assert estimate_logic(plan, "ecp5") == pytest.approx(estimate_logic(default, "ecp5"))


def test_logic_within_the_estimates_margin_is_left_to_the_build(net):
    import dataclasses

    from binforge.boards.fit import LOGIC_MARGIN, check_fit

    from binforge.errors import BinforgeError

    board = get_board("icebreaker")
    estimate = estimate_fit(plan_network(net, 2, 1, 8), board)
    limit = estimate.logic_available
    check_fit(dataclasses.replace(estimate, logic_cells=int(limit * (1 + LOGIC_MARGIN))), board)
    with pytest.raises(BinforgeError, match=f"needs about {int(limit * (1 + LOGIC_MARGIN)) + 1} logic cells"):
        check_fit(dataclasses.replace(estimate, logic_cells=int(limit * (1 + LOGIC_MARGIN)) + 1), board)


def test_a_refusal_names_the_relay_that_saves_the_skew_registers(net):
    import dataclasses

    from binforge.boards.fit import check_fit, relay_bits

    from binforge.errors import BinforgeError

    board = get_board("icebreaker")
    plan = plan_network(net, 8, 1, 8)  # relay 4: rows 4-7 skewed
    estimate = estimate_fit(plan, board)
    assert estimate.relay_hint == 8
    assert estimate.relay_saving == relay_bits(plan, 4) - relay_bits(plan, 8) > 0
    assert estimate.to_json()["relay_saving"] == estimate.relay_saving
    over = dataclasses.replace(estimate, logic_cells=2 * estimate.logic_available)
    with pytest.raises(BinforgeError, match=r"\(--relay 8 in 'binforge hw' drops the array's skew "
                                            rf"registers: about {estimate.relay_saving} logic cells fewer\)"):
        check_fit(over, board)
    # nothing to say where the relay already spans the array, or on LUT counts (ECP5)
    assert estimate_fit(plan_network(net, 8, 1, 8, relay=8), board).relay_saving == 0
    assert estimate_fit(plan, get_board("ulx3s-85f")).relay_saving == 0


def test_a_late_read_accumulator_costs_less_per_bit_on_ice40_only(net):
    """Split Horner PEs (read a cycle after their last term) pack their accumulator's
    flip-flops with the adder's LUTs on iCE40: the model charges them less per bit."""
    import dataclasses

    from binforge.boards.fit import LOGIC_MODEL, estimate_logic, gain_logic
    from binforge.hw.pe import GainFormat, reads_late

    plan = plan_network(net, 4, 1, 16)
    horner = dataclasses.replace(plan, gain_format=GainFormat.horner(1), pe_width=23)
    sign = dataclasses.replace(horner, gain_format=GainFormat([1, -1]))
    assert reads_late(16, 23, GainFormat.horner(1))
    assert not reads_late(16, 23, GainFormat([1, -1]))  # one chain: no split
    for family, less in (("ice40", True), ("ecp5", False)):
        model = LOGIC_MODEL[family]
        saved = 4 * 23 * (model["per_acc_bit"] - model["per_acc_bit_read_late"])
        assert (saved > 0) is less
        gains = 4 * (gain_logic(horner.gain_format, 16) - gain_logic(sign.gain_format, 16))
        assert estimate_logic(horner, family) == pytest.approx(
            estimate_logic(sign, family) + (gains - saved) * model["cell_factor"])

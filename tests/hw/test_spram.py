"""The single-port image memory (iCE40 UltraPlus SPRAM): where it goes, its checks, and its
plain-memory timing in Amaranth's simulator (the SB_SPRAM256KA tiles themselves run in the
cocotb tests against Yosys's model of the primitive)."""

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator
from binforge.hw.spram import (
    SPRAM_DEPTH,
    SinglePortImage,
    image_memory_kind,
    spram_available,
    spram_tiles,
)


def test_tiles_side_by_side_and_never_deeper_than_one():
    assert [spram_tiles(w, 100) for w in (1, 8, 16, 17, 32, 64)] == [1, 1, 1, 2, 2, 4]
    assert spram_tiles(16, SPRAM_DEPTH) == 1
    assert spram_tiles(16, SPRAM_DEPTH + 1) == 0
    assert spram_tiles(16, 0) == spram_tiles(0, 16) == 0
    assert spram_available("iCE40UP5K") == 4
    assert spram_available("iCE40HX8K") == spram_available(None) == 0


@pytest.mark.parametrize("image_memory,cols,simd,depth,device,kind", [
    ("auto", 1, 16, 6272, "iCE40UP5K", "spram"),
    ("auto", 4, 16, 6272, "iCE40UP5K", "spram"),
    ("auto", 2, 32, 6272, "iCE40UP5K", "spram"),
    ("auto", 5, 16, 6272, "iCE40UP5K", "block"),  # 5 tiles, the device has 4
    ("auto", 3, 32, 6272, "iCE40UP5K", "block"),
    ("auto", 1, 8, SPRAM_DEPTH + 1, "iCE40UP5K", "block"),  # deeper than a tile
    ("auto", 1, 16, 6272, "iCE40HX8K", "block"),
    ("auto", 1, 16, 6272, None, "block"),
    ("auto", 1, 16, 0, "iCE40UP5K", "block"),  # no image memory
    ("spram", 1, 16, 6272, None, "spram"),
    ("block", 1, 16, 6272, "iCE40UP5K", "block"),
])
def test_where_the_image_memory_goes(image_memory, cols, simd, depth, device, kind):
    assert image_memory_kind(image_memory, cols=cols, simd=simd, depth=depth, device=device) == kind


def test_forced_spram_must_fit_one_tile_deep(rejects):
    rejects(ValueError, f"the image memory has {SPRAM_DEPTH + 1} words, more than the {SPRAM_DEPTH} of one "
            f"SPRAM tile: use image_memory='block' or a wider array (simd)",
            image_memory_kind, "spram", cols=1, simd=8, depth=SPRAM_DEPTH + 1, device=None)


@pytest.mark.parametrize("width,depth,message", [
    (0, 16, "width must be a positive integer, not 0"),
    (16, 0, "depth must be a positive integer, not 0"),
    (16.0, 16, "width must be a positive integer, not 16.0"),
    (16, SPRAM_DEPTH + 1, f"depth must be at most {SPRAM_DEPTH} (one SPRAM tile), not {SPRAM_DEPTH + 1}"),
])
def test_bad_shapes_are_refused(rejects, width, depth, message):
    rejects(ValueError, message, SinglePortImage, width, depth)


class _UltraPlus:
    device = "iCE40UP5K"
    family = "iCE40"


@pytest.mark.parametrize("width,tiles", [(8, 1), (16, 1), (24, 2), (64, 4)])
def test_tiles_on_an_ultraplus(width, tiles):
    text = rtlil.convert(SinglePortImage(width, 300), name="top", platform=_UltraPlus())
    assert text.count("cell \\SB_SPRAM256KA ") == tiles
    assert "SB_SPRAM256KA" not in rtlil.convert(SinglePortImage(width, 300), name="top")


def test_plain_memory_reads_a_cycle_later_and_holds_over_writes():
    width, depth = 12, 40
    dut = SinglePortImage(width, depth)
    rng = np.random.default_rng(5)
    model = [0] * depth
    ops = [(bool(rng.random() < 0.4), int(rng.integers(depth)), int(rng.integers(1 << width)))
           for _ in range(400)]
    seen = []

    async def tb(ctx):
        last_read = None
        for we, addr, data in ops:
            ctx.set(dut.we, we)
            ctx.set(dut.addr, addr)
            ctx.set(dut.wdata, data)
            await ctx.tick()
            if we:
                model[addr] = data  # the word read before stays in rdata
            else:
                last_read = model[addr]
            if last_read is not None:
                seen.append((ctx.get(dut.rdata), last_read))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert len(seen) > 300
    assert all(got == want for got, want in seen)

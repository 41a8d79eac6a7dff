"""A real iCE40 build with the YoWASP tools (slow: a minute or two warm, more on the first run)."""

from __future__ import annotations

import json

import pytest
from binforge.boards.build import build_for_board
from binforge.compiler.ir import Shape
from binforge.compiler.random_network import random_network


@pytest.mark.slow
def test_icebreaker_bitstream_with_utilisation_and_fmax(tmp_path):
    net = random_network(1, in_shape=Shape(1, 6, 6), channels=(4, 4), num_classes=4)
    # The board's 12 MHz oscillator, no PLL (tests/boards/test_build_pll.py builds one with the PLL).
    report = build_for_board(net, 2, 2, 8, "icebreaker", tmp_path / "build", progress=False)
    out = tmp_path / "build"
    bitstream = out / "binforge.bin"
    assert report["built"] is True and bitstream.is_file() and bitstream.stat().st_size > 100_000
    lc = report["utilisation"]["logic_cells"]
    assert lc["cell"] == "ICESTORM_LC" and lc["available"] == 5280 and 500 < lc["used"] <= 5280
    assert report["utilisation"]["bram"]["used"] >= 1
    # the im2col image memory in SPRAM, a tile per column, as the fit estimate said
    assert report["utilisation"]["spram"]["used"] == report["fit_estimate"]["spram_blocks"] == 2
    conv = report["binary_conv_layers"]
    assert conv["layers"] == 1 and 0 < conv["lane_utilisation"] <= 1
    assert conv["binary_ops_per_logic_cell_per_cycle"] == pytest.approx(
        conv["binary_ops"] / conv["cycles"] / lc["used"], abs=1e-4)
    assert 0 < report["utilisation"]["flip_flops"]["used"] <= lc["used"]
    fmax = report["fmax_mhz"]["clk"]  # the oscillator pin's net clocks the design
    assert 5 < fmax < 300 and report["target_mhz"]["clk"] == pytest.approx(12, rel=1e-3)
    assert report["clock"]["source"] == "oscillator" and report["clock"]["timing_met"] is (fmax >= 12)
    path = report["critical_paths"][0]
    assert path["delay_ns"] > 0 and path["start"] and path["end"]
    assert report["images_per_second_at_fmax"] == pytest.approx(fmax * 1e6 / report["cycles_per_image"], rel=1e-3)
    assert report["image_cycles_with_loading"] > report["cycles_per_image"]
    assert report["images_per_second_at_fmax_with_loading"] == pytest.approx(
        fmax * 1e6 / report["image_cycles_with_loading"], rel=1e-3)
    assert [s["name"] for s in report["steps"]] == ["synthesis (Yosys)", "place and route (nextpnr-ice40)",
                                                    "bitstream (icepack)"]
    assert json.loads((out / "report.json").read_text())["fmax_sync_mhz"] == round(fmax, 2)


@pytest.mark.slow
def test_ulx3s_bitstream_with_the_netlist_passes(tmp_path):
    net = random_network(1, in_shape=Shape(1, 6, 6), channels=(4, 4), num_classes=4)
    report = build_for_board(net, 2, 2, 16, "ulx3s-85f", tmp_path / "build", progress=False)
    out = tmp_path / "build"
    assert report["built"] is True and (out / "binforge.bit").stat().st_size > 100_000
    assert [s["name"] for s in report["steps"]] == ["synthesis (Yosys)", "carry-chain ends (netlist pass)",
                                                    "block-RAM output registers (netlist pass)",
                                                    "place and route (nextpnr-ecp5)", "bitstream (ecppack)"]
    # the block RAMs' read registers: moved into them, or counted as left
    moved = report["bram_outreg"]
    assert set(moved) == {"bram_read_ports_registered", "flip_flops_absorbed", "bram_read_ports_left"}
    assert moved["flip_flops_absorbed"] >= moved["bram_read_ports_registered"]
    assert report["utilisation"]["bram"]["used"] == 0 or sum(moved.values()) > 0
    # every PE's popcount tree: chains whose first carry in and last carry out were opened
    opened = report["carry_ends"]
    assert opened["carry_in_opened"] >= 4 and opened["carry_out_opened"] >= opened["carry_in_opened"]
    assert (out / "build" / "carry_ends.log").read_text().startswith("carry_in_opened ")
    # nextpnr added no feed for the opened chains: its packed LUT4s are Yosys's plus the
    # feeds of Yosys's own adders, a few per adder
    lut = report["utilisation"]["logic_cells"]
    assert lut["available"] == 83640 and 0 < lut["used"] < 10_000

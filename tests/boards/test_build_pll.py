"""``binforge build --clock-mhz``: the PLL in the planned design (no tool run), the UART
divisor from the achieved clock, refusals, and the power-on reset held while unlocked."""

from __future__ import annotations

import json
import math
import re

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from binforge.boards.build import build_for_board, prepare_board_build
from binforge.boards.clocking import RESET_HOLD_SECONDS, PowerOnReset
from binforge.boards.platforms import get_board
from binforge.boards.pll import ecp5_pll, ice40_pll
from binforge.compiler.random_network import random_network

from binforge.errors import BinforgeError


@pytest.fixture(scope="module")
def net():
    return random_network(3)


def _cells(rtlil: str, cell_type: str) -> list[dict[str, str]]:
    """Parameters and connections of every ``cell_type`` cell in an RTLIL file."""
    cells = []
    for body in re.findall(rf"cell \\{cell_type} \S+\n(.*?)\n\s*end\n", rtlil, re.S):
        entries = {}
        for _kind, name, value in re.findall(r"^\s*(parameter|connect) \\(\S+) (.+)$", body, re.M):
            entries[name] = value.strip().strip('"')
        cells.append(entries)
    return cells


def _plan(net, board, tmp_path, clock_mhz=None):
    report = build_for_board(net, 2, 2, 8, board, tmp_path / board, do_build=False, clock_mhz=clock_mhz,
                             progress=False)
    build = tmp_path / board / "build"
    return report, (build / "binforge.il").read_text(), build


def test_icebreaker_pll_on_the_oscillator_pad(net, tmp_path):
    report, rtlil, build = _plan(net, "icebreaker", tmp_path, clock_mhz=36)
    (pll,) = _cells(rtlil, "SB_PLL40_PAD")
    assert {k: pll[k] for k in ("FEEDBACK_PATH", "DIVR", "DIVF", "DIVQ", "FILTER_RANGE", "PLLOUT_SELECT")} == \
        {"FEEDBACK_PATH": "SIMPLE", "DIVR": "0", "DIVF": "47", "DIVQ": "4", "FILTER_RANGE": "1",
         "PLLOUT_SELECT": "GENCLK"}
    assert pll["PACKAGEPIN"].startswith("\\clk12_0__io")  # the pin itself, no input buffer
    assert pll["RESETB"] == "1'1" and pll["BYPASS"] == "1'0" and pll["LOCK"] and pll["PLLOUTGLOBAL"]
    assert not _cells(rtlil, "SB_GB_IO") and not _cells(rtlil, "SB_PLL40_CORE")
    pcf = (build / "binforge.pcf").read_text()
    # The oscillator keeps its own constraint; nextpnr derives the PLL output's from it.
    assert "set_frequency clk12_0__io 12.0" in pcf and "36.0" not in pcf
    clock = report["clock"]
    assert clock["source"] == "pll" and clock["requested_mhz"] == 36 and clock["achieved_mhz"] == 36.0
    assert clock["target_mhz"] == 36.0 and clock["board_oscillator_mhz"] == 12.0
    assert clock["pll"] == {"primitive": "SB_PLL40_PAD", "pfd_mhz": 12.0, "vco_mhz": 576.0,
                            "dividers": {"FEEDBACK_PATH": "SIMPLE", "DIVR": 0, "DIVF": 47, "DIVQ": 4,
                                         "FILTER_RANGE": 1}}
    assert report["uart"]["divisor"] == round(36e6 / 115200) == 312
    saved = json.loads((tmp_path / "icebreaker" / "report.json").read_text())
    assert saved["clock"] == clock


def test_uart_divisor_and_reset_follow_the_achieved_clock(net):
    board = get_board("icebreaker")
    pll = ice40_pll(12e6, 50e6)  # 49.5 MHz: the highest below 50
    platform, top, _, _ = prepare_board_build(net, 2, 2, 8, board, pll=pll)
    assert top.sync_hz == 49.5e6
    assert top.core.receiver.divisor == top.core.transmitter.divisor == round(49.5e6 / 115200) == 430
    por = Fragment.get(top, platform).find_subfragment("por")  # delay counted at the achieved clock
    assert por.origins[0]._cycles == math.ceil(RESET_HOLD_SECONDS * 49.5e6)
    platform, plain, _, _ = prepare_board_build(net, 2, 2, 8, board)
    assert plain.sync_hz == 12e6 and plain.core.receiver.divisor == round(12e6 / 115200) == 104
    Fragment.get(plain, platform)


def test_hx8k_pll_from_the_buffered_clock(net, tmp_path):
    report, rtlil, _ = _plan(net, "ice40-hx8k", tmp_path, clock_mhz=50)
    (pll,) = _cells(rtlil, "SB_PLL40_CORE")
    assert (pll["DIVR"], pll["DIVF"], pll["DIVQ"], pll["FILTER_RANGE"]) == ("0", "65", "4", "1")
    assert "REFERENCECLK" in pll and "PACKAGEPIN" not in pll
    assert report["clock"]["achieved_mhz"] == 49.5 and report["uart"]["divisor"] == 430


@pytest.mark.parametrize("board_name, f_in, lpf_port", [("ulx3s-85f", 25e6, "clk25_0__io"),
                                                         ("orangecrab", 48e6, "clk_0__io")])
def test_ecp5_ehxplll_with_the_solver_dividers(net, tmp_path, board_name, f_in, lpf_port):
    report, rtlil, build = _plan(net, board_name, tmp_path, clock_mhz=90)
    expected = ecp5_pll(f_in, 90e6)
    (pll,) = _cells(rtlil, "EHXPLLL")
    for name in ("CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV", "CLKOP_CPHASE"):
        assert pll[name] == str(expected.parameters()[name])
    assert pll["FEEDBK_PATH"] == "CLKOP" and pll["CLKOP_ENABLE"] == "ENABLED"
    assert pll["CLKFB"].split()[0] == pll["CLKOP"].split()[0]  # CLKOP fed back
    assert float(expected.output_hz) == 90e6 and report["clock"]["achieved_mhz"] == 90.0
    lpf = (build / "binforge.lpf").read_text()
    assert f'FREQUENCY PORT "{lpf_port}" {f_in} HZ;' in lpf and "FREQUENCY NET" not in lpf
    assert report["uart"]["divisor"] == round(90e6 / 115200) == 781
    if board_name == "ulx3s-85f":
        assert (pll["CLKI_DIV"], pll["CLKFB_DIV"], pll["CLKOP_DIV"]) == ("5", "18", "7")  # ecppll -i 25 -o 90


def test_no_clock_request_keeps_the_oscillator(net, tmp_path):
    report, rtlil, build = _plan(net, "icebreaker", tmp_path)
    assert not _cells(rtlil, "SB_PLL40_PAD") and not _cells(rtlil, "SB_PLL40_CORE")
    assert report["clock"] == {"source": "oscillator", "target_mhz": 12.0, "requested_mhz": None,
                               "achieved_mhz": 12.0, "board_oscillator_mhz": 12.0, "timing_met": None}
    assert report["uart"]["divisor"] == 104
    assert "set_frequency clk12_0__io 12.0" in (build / "binforge.pcf").read_text()


def test_unreachable_clock_is_refused_with_the_numbers(net, tmp_path):
    with pytest.raises(BinforgeError) as info:
        build_for_board(net, 2, 2, 8, "icebreaker", tmp_path / "out", do_build=False, clock_mhz=300,
                        progress=False)
    assert str(info.value) == ("the iCEBreaker's SB_PLL40_PAD cannot make 300 MHz from its 12 MHz oscillator: "
                               "the iCE40 PLL output must be 16 MHz to 275 MHz, not 300 MHz; ask for another "
                               "--clock-mhz")
    assert not (tmp_path / "out").exists()


def test_verilog_only_boards_refuse_a_clock_request(net, tmp_path):
    with pytest.raises(BinforgeError) as info:
        build_for_board(net, 2, 2, 8, "arty-a7-35", tmp_path / "out", clock_mhz=150, progress=False)
    assert str(info.value) == (
        "--clock-mhz is not supported on the Arty A7-35T: binforge generates no clock generator "
        "(MMCM/PLL) for the xc7a35ticsg324-1L, whose design runs at its 100 MHz oscillator; leave out "
        "--clock-mhz, or add a clock wizard in Vivado to the Verilog it writes")
    assert not (tmp_path / "out").exists()


def test_power_on_reset_restarts_while_hold_is_high():
    por = PowerOnReset(10, domain="sync")  # one 4-bit stage: about 16 cycles
    trace = []

    async def bench(ctx):
        ctx.set(por.hold, 1)
        for _ in range(40):  # longer than the delay: held in reset all along
            await ctx.tick()
            trace.append(ctx.get(por.rst))
        ctx.set(por.hold, 0)
        for _ in range(60):
            await ctx.tick()
            trace.append(ctx.get(por.rst))
        ctx.set(por.hold, 1)
        await ctx.tick()
        await ctx.tick()
        trace.append(ctx.get(por.rst))

    sim = Simulator(por)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert all(trace[:40])
    released = trace[40:100]
    high = released.index(0)
    assert high >= 10 and not any(released[high:])  # at least 10 cycles after hold fell, then low
    assert trace[-1] == 1  # losing lock asserts reset again


@pytest.mark.slow
def test_icebreaker_bitstream_runs_from_the_pll_with_timing_met(tmp_path, capsys):
    from binforge.compiler.ir import Shape, save
    from binforge.hw.generate import generate

    from binforge.cli import main

    small = random_network(1, in_shape=Shape(1, 6, 6), channels=(4, 4), num_classes=4)
    generate(small, 2, 2, 8, tmp_path / "hw")
    save(small, tmp_path / "hw")
    out = tmp_path / "build"
    assert main(["build", str(tmp_path / "hw"), "--board", "icebreaker", "--clock-mhz", "24", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("clock      24 MHz from the SB_PLL40_PAD (asked 24 MHz, 12 MHz oscillator; "
            "DIVR 0, DIVF 63, DIVQ 5, FILTER_RANGE 1)") in printed
    report = json.loads((out / "report.json").read_text())
    assert report["built"] is True and (out / "binforge.bin").stat().st_size > 100_000
    clock = report["clock"]
    assert clock["source"] == "pll" and clock["requested_mhz"] == 24 and clock["achieved_mhz"] == 24.0
    assert clock["pll"]["dividers"] == {"FEEDBACK_PATH": "SIMPLE", "DIVR": 0, "DIVF": 63, "DIVQ": 5, "FILTER_RANGE": 1}
    # nextpnr derived the PLL output's constraint from the 12 MHz pin and these dividers.
    assert report["target_mhz"]["clk"] == pytest.approx(24.0, rel=1e-3)
    assert "Derived frequency constraint of 24.0 MHz for net clk" in (out / "build" / "binforge.tim").read_text()
    assert report["utilisation"]["logic_cells"]["used"] > 500
    fmax = report["fmax_sync_mhz"]
    assert fmax == report["fmax_mhz"]["clk"] and fmax >= 24.0  # ~31-33 MHz for this design
    assert clock["timing_met"] is True
    assert report["images_per_second_at_clock"] == round(24e6 / report["cycles_per_image"], 1)
    assert f"{report['images_per_second_at_clock']:.0f} images/s at the 24 MHz clock (timing met" in printed
    assert report["uart"]["divisor"] == round(24e6 / 115200)

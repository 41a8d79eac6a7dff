"""Build the accelerator for a board: fit check, Amaranth platform build, figures.

:func:`build_for_board` is what ``binforge build`` runs. It plans the network on
the array, refuses a design that does not fit the device (with the numbers) before
the long build, builds the board's top level with the open flow (YoWASP Yosys and
nextpnr) or, for vendors whose tools are not open, writes Verilog, constraints and
the vendor's build script; then it writes ``report.json`` with utilisation, Fmax,
the critical path and the throughput these give.

Without a clock request the design runs at the board's oscillator. With one
(``clock_mhz``) the board top runs it from the family's PLL at the highest frequency
the PLL reaches not above the request (:func:`binforge.boards.pll.solve_pll`), the UART
divisor and the power-on reset delay follow that achieved frequency, and nextpnr
times the PLL's output against it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from binforge.errors import BinforgeError
from binforge.outdir import atomic_output_dir, write_report

from .fit import check_fit, estimate_fit, relay_advice
from .platforms import Board, get_board, make_platform
from .pll import PLLRangeError, solve_pll
from .report import count_yosys_cells, read_nextpnr_report
from .toolchain import BRAM_OUTREG_STEP, CARRY_ENDS_STEP, run_build_plan, use_yowasp_tools
from .top import BoardTop
from .uart import uart_divisor

#: report.json's key for each netlist pass's counts.
_PASS_REPORT_KEYS = {CARRY_ENDS_STEP: "carry_ends", BRAM_OUTREG_STEP: "bram_outreg"}

__all__ = ["DEFAULT_BAUD", "DESIGN_NAME", "ICE40_ABC9_WIRE_PS", "ABC9_WIRE_KEYS", "abc9_wire_ps", "toolchain_overrides",
           "binary_ops_per_image", "board_pll", "prepare_board_build", "build_for_board"]

DEFAULT_BAUD = 115200
#: The design's name in the build folder (``binforge.bin`` / ``binforge.bit`` ...).
DESIGN_NAME = "binforge"

_BITSTREAM = {"ice40": "bin", "ecp5": "bit"}


#: Wire delay (ps) ABC9 adds per LUT input when it maps iCE40 logic (Yosys's
#: ``synth_ice40.abc9.W`` scratchpad value, ``abc9 -W``). ``synth_ice40`` uses 250 ps
#: with the HX1K cell delays (a LUT 0.45 ns, a carry step 0.13 ns): a LUT level then
#: costs about five carry steps, and ABC9, mapping for the design's deepest path (a
#: 32-bit carry chain), lets control logic grow to 7-8 LUT levels. On the UP5K with its
#: routing a LUT level costs about ten carry steps (2.9 ns against 0.28 ns in nextpnr's
#: timing), which a 1000 ps wire delay gives the HX model. Measured in docs/RESULTS.md
#: ("Logic depth on the iCE40"): control at most 6 levels (was 8), +8 % Fmax (median
#: of five placement seeds, two designs), +2 % LUTs.
ICE40_ABC9_WIRE_PS = 1000


#: Yosys scratchpad key of a family's ABC9 wire delay (``abc9 -W``), where Yosys lets
#: a script set it (``synth_lattice.abc9.W`` is one of its global constants).
ABC9_WIRE_KEYS = {"ice40": "synth_ice40.abc9.W"}


def abc9_wire_ps(board: Board, requested: int | None = None) -> int | None:
    """The ABC9 wire delay (ps) a build of ``board`` maps LUTs with: ``requested``, else
    :data:`ICE40_ABC9_WIRE_PS` on iCE40, else ``None`` (Yosys's own default). Refuses a
    request for a family whose wire delay Yosys keeps constant (ECP5) or that has no
    open flow."""
    if requested is not None and board.family not in ABC9_WIRE_KEYS:
        raise BinforgeError(f"--abc9-wire-ps is for iCE40 boards only: Yosys keeps the wire delay of "
                            f"the {board.title}'s {board.family.upper()} LUT mapping a constant; "
                            "leave the option out")
    if board.flow != "open":
        return None
    if requested is not None:
        if not 0 < int(requested) <= 100_000:
            raise BinforgeError(f"--abc9-wire-ps must be between 1 and 100000 ps, not {requested}")
        return int(requested)
    return ICE40_ABC9_WIRE_PS if board.family == "ice40" else None


def toolchain_overrides(board: Board, *, seed: int = 1, wire_ps: int | None = None) -> dict[str, str]:
    """Yosys/nextpnr options for ``board``: report json, timing allowed to fail, seed.

    ``--timing-allow-fail`` lets a build that misses its clock target still finish and
    report the frequency it reached. ECP5 synthesis uses ``-nowidelut`` (fewer LUTs,
    same Fmax, in the calibration of docs/boards.md). LUTs are mapped with ABC9's wire
    delay :func:`abc9_wire_ps` (``wire_ps``): on iCE40 one that matches the UP5K's
    routing (:data:`ICE40_ABC9_WIRE_PS`).
    """
    if board.flow != "open":
        return {}
    overrides = {"nextpnr_opts": f"--timing-allow-fail --report report.json --seed {seed}"}
    if board.family == "ecp5":
        overrides["synth_opts"] = "-nowidelut"
    wire = abc9_wire_ps(board, wire_ps)
    if wire is not None:
        overrides["script_after_read"] = f"scratchpad -set {ABC9_WIRE_KEYS[board.family]} {wire}"
    return overrides


def _layer_binary_ops(layer) -> int:
    """2 (XNOR and add) per bit of each of the layer's binary dot products, every op."""
    return 2 * layer.fan_in * layer.out_shape.size * len(layer.ops)


def binary_ops_per_image(net) -> int:
    """Binary operations per image: 2 (XNOR and add) per bit of every binary dot product.

    Counts every op of every compute layer, the first layer's bit-serial pixel planes
    included, as the array runs them.
    """
    return sum(_layer_binary_ops(layer) for layer in net.compute_layers)


def binary_conv_layers(net, layer_cycles: dict[str, int]) -> dict[str, int] | None:
    """The binary conv layers' work: every conv compute layer but the first (the pixel
    layer, bit-serial over the pixel planes), its binary ops per image (as
    :func:`binary_ops_per_image` counts them) and its cycles (``layer_cycles``: the
    analytic model's, by layer name). ``None`` when the network has none."""
    layers = [layer for layer in net.compute_layers[1:] if layer.kind == "conv"]
    if not layers:
        return None
    return {"layers": len(layers),
            "binary_ops": sum(_layer_binary_ops(layer) for layer in layers),
            "cycles": sum(int(layer_cycles[layer.name]) for layer in layers)}


def board_pll(board: Board, requested_hz: float):
    """The PLL configuration that runs ``board``'s design at (at most) ``requested_hz``.

    Raises :class:`BinforgeError`, with the numbers, for a board binforge generates no
    PLL for (the Verilog-only boards) or a request the board's PLL cannot reach.
    """
    if board.pll_primitive is None:
        raise BinforgeError(
            f"--clock-mhz is not supported on the {board.title}: binforge generates no clock "
            f"generator (MMCM/PLL) for the {board.device}, whose design runs at its "
            f"{board.clock_hz / 1e6:g} MHz oscillator; leave out --clock-mhz, or add a clock "
            "wizard in Vivado to the Verilog it writes")
    try:
        return solve_pll(board.family, board.clock_hz, requested_hz)
    except PLLRangeError as exc:
        raise BinforgeError(f"the {board.title}'s {board.pll_primitive} cannot make {requested_hz / 1e6:g} MHz "
                            f"from its {board.clock_hz / 1e6:g} MHz oscillator: {exc}; ask for another "
                            "--clock-mhz") from None


def prepare_board_build(net, rows: int, cols: int, simd: int, board: Board, *,
                        clock_hz: float | None = None, baud: int = DEFAULT_BAUD, pll=None,
                        relay: int | None = None, gain_mode: str | None = None):
    """Plan, fit-check and elaborate-ready objects for one board build.

    ``clock_hz`` is the oscillator's timing constraint (default: its frequency); with
    ``pll`` (:func:`board_pll`) the design runs at the PLL's achieved frequency, which
    then sets the UART divisor. Returns ``(platform, top, plan, estimate)``. Raises
    :class:`BinforgeError` when the design does not fit the device or the baud rate
    does not suit the design's clock. ``relay`` and ``gain_mode``: as ``binforge hw``
    took them (None: its defaults).
    """
    from binforge.hw.plan import DEFAULT_GAIN_MODE, DEFAULT_RELAY, plan_network

    from .core import BoardCore

    try:
        plan = plan_network(net, rows, cols, simd, DEFAULT_RELAY if relay is None else relay,
                            DEFAULT_GAIN_MODE if gain_mode is None else gain_mode)
    except ValueError as exc:
        raise BinforgeError(f"the network cannot be mapped onto a {rows}x{cols}x{simd} array: {exc}") from None
    estimate = estimate_fit(plan, board)
    check_fit(estimate, board)
    sync_hz = float(pll.output_hz) if pll is not None else board.clock_hz
    try:
        divisor = uart_divisor(sync_hz, baud)
    except ValueError as exc:
        raise BinforgeError(f"{exc} on the {board.title}") from None
    try:
        core = BoardCore(plan, divisor)
    except ValueError as exc:
        raise BinforgeError(f"{exc} on the {board.title}") from None
    platform = make_platform(board, clock_hz)
    top = BoardTop(core, board.clock_hz, pll=pll, pll_primitive=board.pll_primitive if pll is not None else None)
    return platform, top, plan, estimate


def build_for_board(net, rows: int, cols: int, simd: int, board_name: str, out: str | Path, *,
                    clock_mhz: float | None = None, baud: int = DEFAULT_BAUD, do_build: bool = True,
                    seed: int = 1, progress: bool = True, source: dict[str, Any] | None = None,
                    relay: int | None = None, gain_mode: str | None = None,
                    wire_ps: int | None = None) -> dict[str, Any]:
    """Build ``net`` on an R x C x S array for ``board_name`` into the folder ``out``.

    Without ``clock_mhz`` the design runs at the board's oscillator; with it, from the
    board's PLL at the highest frequency not above ``clock_mhz`` the PLL reaches
    (:func:`board_pll`; refused for the Verilog-only boards and for requests out of
    the PLL's range). With ``do_build=False`` only the files of the build (RTLIL,
    constraints, scripts) are written, no tool runs. Returns the report (also written
    as ``out/report.json``). ``relay`` and ``gain_mode`` as ``binforge hw`` took them
    (None: its defaults), so that the board gets the accelerator hw.json describes.
    ``wire_ps``: ABC9's wire delay for the LUT mapping (:func:`abc9_wire_ps`).
    """
    from binforge.hw.plan import analytic_cycles

    board = get_board(board_name)
    if clock_mhz is not None and not clock_mhz > 0:
        raise BinforgeError(f"--clock-mhz must be positive, not {clock_mhz:g}")
    pll = board_pll(board, clock_mhz * 1e6) if clock_mhz is not None else None
    sync_hz = float(pll.output_hz) if pll is not None else board.clock_hz
    platform, top, plan, estimate = prepare_board_build(net, rows, cols, simd, board, baud=baud, pll=pll,
                                                        relay=relay, gain_mode=gain_mode)
    use_yowasp_tools()
    wire = abc9_wire_ps(board, wire_ps)
    build_plan = platform.build(top, name=DESIGN_NAME, do_build=False,
                                **toolchain_overrides(board, seed=seed, wire_ps=wire))
    model = analytic_cycles(plan)
    cycles = int(model["total"])
    image = _image_cycles(plan, cycles)
    ops = binary_ops_per_image(net)
    conv = binary_conv_layers(net, {layer["name"]: layer["cycles"] for layer in model["layers"]})
    report: dict[str, Any] = {
        "board": board.name, "board_title": board.title, "device": board.device, "flow": board.flow,
        "network": net.name, "rows": rows, "cols": cols, "simd": simd, "lanes": estimate.lanes,
        "relay": plan.relay, "gain_mode": plan.gain_mode,
        "source": source or {},
        "clock": _clock_report(board, pll, clock_mhz),
        "uart": {"baud": baud, "divisor": uart_divisor(sync_hz, baud), "serial": board.serial},
        "synthesis": {"abc9_wire_ps": wire},
        "cycles_per_image": cycles, "image_cycles_with_loading": image, "binary_ops_per_image": ops,
        "binary_conv_layers": conv,
        "fit_estimate": estimate.to_json(),
    }
    with atomic_output_dir(out) as folder:
        build_dir = folder / "build"
        if board.flow == "verilog-only":
            build_plan.extract(build_dir)
            report["built"] = False
            report["note"] = (f"Verilog, constraints and the Vivado script for the {board.device} are in "
                              f"{Path(out) / 'build'}; no bitstream: the Xilinx tools (Vivado) are not "
                              "open source and not installed here, run build_binforge.sh where they are.")
        elif not do_build:
            build_plan.extract(build_dir)
            report["built"] = False
            report["note"] = "build files only (do_build=False): no tool was run"
        else:
            try:
                steps = run_build_plan(build_plan, build_dir, progress=progress)
            except BinforgeError as exc:
                # Keep the logs where the user can read them; the output folder stays absent.
                failed = Path(out).with_name(Path(out).name + ".failed")
                shutil.rmtree(failed, ignore_errors=True)
                shutil.copytree(build_dir, failed)
                over = _over_capacity(failed)
                if over:
                    raise BinforgeError(
                        f"the design does not fit the {board.device} after synthesis: {over} (the "
                        f"estimate was {estimate.logic_cells} logic cells{relay_advice(estimate)}); "
                        f"use a smaller array or network or a larger board; logs in {failed}") from None
                raise BinforgeError(str(exc).replace(str(build_dir), str(failed))) from None
            flip_flops = count_yosys_cells(build_dir / f"{DESIGN_NAME}.rpt", "SB_DFF") \
                if board.family == "ice40" else None
            figures = read_nextpnr_report(build_dir / "report.json", board.family, flip_flops=flip_flops)
            bitstream = f"{DESIGN_NAME}.{_BITSTREAM[board.family]}"
            shutil.copyfile(build_dir / bitstream, folder / bitstream)
            report["built"] = True
            report["bitstream"] = bitstream
            report["steps"] = [{"name": s.name, "seconds": s.seconds, "log": f"build/{s.log}"} for s in steps]
            for s in steps:  # the ECP5 netlist passes: what each changed
                if s.name in _PASS_REPORT_KEYS:
                    report[_PASS_REPORT_KEYS[s.name]] = s.counts
            report.update(figures.to_json())
            fmax = _sync_fmax(figures, sync_hz)
            report.update(_throughput(fmax, figures, estimate.lanes, cycles, ops, board))
            if conv is not None:
                # the figure the accelerator's efficiency target is stated on
                cells = figures.utilisation["logic_cells"].used
                conv["binary_ops_per_logic_cell_per_cycle"] = round(conv["binary_ops"] / conv["cycles"] / cells, 4)
                conv["lane_utilisation"] = round(conv["binary_ops"] / 2 / conv["cycles"] / estimate.lanes, 4)
            report["images_per_second_at_fmax_with_loading"] = round(fmax * 1e6 / image, 1) if fmax else None
            # Timing is met when nextpnr's Fmax of the design's clock reaches the clock it runs at.
            met = fmax is not None and fmax >= sync_hz / 1e6
            report["clock"]["timing_met"] = met
            report["images_per_second_at_clock"] = round(sync_hz / cycles, 1) if met else None
        write_report(folder, "build", **report)
    return report


_UTILISATION_LINE = re.compile(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")


def _over_capacity(build_dir: Path) -> str:
    """The resources nextpnr found over capacity, as "CELL used of available" ("" if none)."""
    over = []
    # nextpnr's full log is DESIGN.tim (--log); its console output, DESIGN-less, is nextpnr-*.log.
    for log in sorted(build_dir.glob("*.tim")) + sorted(build_dir.glob("nextpnr-*.log")):
        for cell, used, available in _UTILISATION_LINE.findall(log.read_text(errors="replace")):
            if int(used) > int(available):
                over.append(f"{cell} {used} of {available}")
    return ", ".join(dict.fromkeys(over))


def _clock_report(board: Board, pll, requested_mhz: float | None) -> dict[str, Any]:
    """report.json's ``clock``: source, requested and achieved frequency, PLL dividers."""
    if pll is None:
        return {"source": "oscillator", "target_mhz": board.clock_hz / 1e6, "requested_mhz": None,
                "achieved_mhz": board.clock_hz / 1e6, "board_oscillator_mhz": board.clock_hz / 1e6,
                "timing_met": None}
    achieved = float(pll.output_hz) / 1e6
    return {"source": "pll", "target_mhz": achieved, "requested_mhz": requested_mhz, "achieved_mhz": achieved,
            "board_oscillator_mhz": board.clock_hz / 1e6, "timing_met": None,
            "pll": {"primitive": board.pll_primitive, "pfd_mhz": float(pll.pfd_hz) / 1e6,
                    "vco_mhz": float(pll.vco_hz) / 1e6, "dividers": pll.parameters()}}


def _sync_fmax(figures, sync_hz: float) -> float | None:
    """The Fmax of the clock the design runs on, among nextpnr's clocks.

    That is the clock nextpnr timed at the design's frequency (the oscillator's, or the
    PLL output's); failing that, by name: the oscillator pin's net (``clk`` on iCE40,
    ``clk_buf.buf.i`` on ECP5) or the sync domain's clock; else the slowest clock.
    """
    for name, target in figures.target_mhz.items():
        if name in figures.fmax_mhz and abs(target - sync_hz / 1e6) <= 1e-3 * sync_hz / 1e6:
            return figures.fmax_mhz[name]
    for name in ("clk", "cd_sync.clk", "clk_buf.buf.i"):
        if name in figures.fmax_mhz:
            return figures.fmax_mhz[name]
    return min(figures.fmax_mhz.values()) if figures.fmax_mhz else None


def _image_cycles(plan, cycles: int) -> int:
    """Start pulse to last result word with a pixel offered every cycle: loading, the
    network, the result stream (:func:`binforge.explore.image_cycles`)."""
    from binforge.explore import image_cycles

    return image_cycles(plan, cycles)


def _throughput(fmax: float | None, figures, lanes: int, cycles: int, ops: int, board: Board) -> dict[str, Any]:
    cells = figures.utilisation["logic_cells"].used
    out: dict[str, Any] = {
        "fmax_sync_mhz": round(fmax, 2) if fmax is not None else None,
        "images_per_second_at_fmax": round(fmax * 1e6 / cycles, 1) if fmax else None,
        "images_per_second_at_board_clock": round(board.clock_hz / cycles, 1),
        "logic_cells_per_lane": round(cells / lanes, 2),
        "binary_ops_per_cycle": round(ops / cycles, 2),
        "binary_ops_per_logic_cell_per_cycle": round(ops / cycles / cells, 4),
        "peak_binary_ops_per_logic_cell_per_cycle": round(2 * lanes / cells, 4),
    }
    return out

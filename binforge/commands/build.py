"""``binforge build HW/ --board NAME [--clock-mhz F] --out BUILD/``: bitstream and figures.

Rebuilds the accelerator described by ``HW/hw.json`` (array shape, network) for a
board, with the UART host protocol around it, and writes the bitstream (or, for
vendors whose tools are not open, Verilog and constraints) and ``report.json``:
utilisation, reached Fmax, critical path, images per second. ``--clock-mhz F`` runs
the design from the board's PLL at the highest frequency it reaches not above F.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from binforge.errors import BinforgeError

__all__ = ["add_parser", "run", "load_hw_folder"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from binforge.boards.build import DEFAULT_BAUD
    from binforge.boards.platforms import BOARDS

    boards = "; ".join(f"{b.name} ({b.title}, {b.device}{', Verilog only' if b.flow != 'open' else ''})"
                       for b in BOARDS.values())
    parser = subparsers.add_parser(
        "build",
        help="build the accelerator for an FPGA board (bitstream, utilisation, Fmax)",
        description="Build the accelerator of HW/ (written by 'binforge hw') for a board, with a UART "
        "host protocol ('binforge run'). The open flow (Yosys + nextpnr from YoWASP, no install "
        "beyond pip) makes bitstreams for iCE40 and ECP5 boards; Xilinx boards get Verilog, "
        f"constraints and a Vivado script only. Boards: {boards}.",
    )
    parser.add_argument("hw", metavar="HW", help="folder written by 'binforge hw'")
    parser.add_argument("--board", required=True, choices=sorted(BOARDS), metavar="BOARD",
                        help="one of: " + ", ".join(BOARDS))
    parser.add_argument("--net", metavar="NET",
                        help="the compiled network (default: the one hw.json names)")
    parser.add_argument("--clock-mhz", type=float, metavar="F",
                        help="run the design from the board's PLL at the highest frequency it reaches "
                        "not above F MHz (reported, and what nextpnr times against); default: the "
                        "board's oscillator, no PLL. iCE40 and ECP5 boards only")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"UART baud rate (default {DEFAULT_BAUD})")
    parser.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    parser.add_argument("--abc9-wire-ps", type=int, metavar="PS",
                        help="wire delay in ps that Yosys's ABC9 adds per LUT input when it maps the "
                        "logic (abc9 -W): larger values trade LUTs for fewer LUT levels; iCE40 boards "
                        "only (default 1000, matched to the UP5K's routing)")
    parser.add_argument("--plan-only", action="store_true",
                        help="check the fit and write the build files without running any tool")
    parser.add_argument("--out", metavar="BUILD", help="output folder (default: build-BOARD)")
    parser.set_defaults(run=run)
    return parser


def load_hw_folder(hw_dir: str | Path, net_dir: str | Path | None = None):
    """Read ``hw.json`` and its network: ``(net, rows, cols, simd, hw_description)``.

    The network comes from ``net_dir`` when given, else from the folder hw.json names
    (``network_dir``), else from ``network.json`` beside hw.json.
    """
    from binforge.compiler.ir import IRError, load

    hw_dir = Path(hw_dir)
    path = hw_dir / "hw.json"
    try:
        desc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BinforgeError(f"{path} does not exist; give a folder written by 'binforge hw'") from None
    except (OSError, ValueError) as exc:
        raise BinforgeError(f"cannot read {path} ({exc}); regenerate it with 'binforge hw'") from None
    if not isinstance(desc, dict) or desc.get("format") != "binforge-hw":
        raise BinforgeError(f"{path} is not a binforge hardware description; regenerate it with 'binforge hw'")
    for key in ("rows", "cols", "simd", "network"):
        if key not in desc:
            raise BinforgeError(f"{path} has no {key!r}; regenerate it with 'binforge hw'")
    if net_dir is None:
        if desc.get("network_dir"):
            net_dir = (hw_dir / desc["network_dir"]).resolve() if not Path(desc["network_dir"]).is_absolute() \
                else Path(desc["network_dir"])
        elif (hw_dir / "network.json").is_file():
            net_dir = hw_dir
        else:
            raise BinforgeError(f"{path} does not say where its network is; give it with --net NET/")
    try:
        net = load(net_dir)
    except IRError as exc:
        raise BinforgeError(f"cannot read the network in {net_dir}: {exc}") from None
    if net.name != desc["network"]:
        raise BinforgeError(f"{net_dir} holds the network {net.name!r} but {path} was generated for "
                            f"{desc['network']!r}; give the matching --net")
    return net, int(desc["rows"]), int(desc["cols"]), int(desc["simd"]), desc


def hw_options(desc: dict) -> tuple[int | None, str | None]:
    """The relay and gain mode ``binforge hw`` generated with, from its hw.json (None:
    its defaults). A hw.json from before ``gain_mode`` was recorded says it by its gain
    format: ``multiply`` only comes from ``--gains multiply``."""
    relay = desc.get("relay")
    if relay is not None and (not isinstance(relay, int) or relay < 1):
        raise BinforgeError(f"hw.json gives relay {relay!r}, not a positive integer; regenerate it with 'binforge hw'")
    gain_mode = desc.get("gain_mode")
    if gain_mode is None and desc.get("gain_format") == "multiply":
        gain_mode = "multiply"
    return relay, gain_mode


#: nextpnr's placement seeds move a design's Fmax by about this much either way.
SEED_SPREAD = 0.05


def timing_advice(fmax_mhz: float | None, clock_mhz: float, seed: int) -> str:
    """What to try when a build misses its clock: another placement seed when the Fmax
    is short of it by no more than twice the seeds' spread, else a lower clock."""
    lower = "ask for a lower --clock-mhz"
    if fmax_mhz is None or fmax_mhz >= clock_mhz:
        return lower
    short = 1 - fmax_mhz / clock_mhz
    if short > 2 * SEED_SPREAD:
        return lower
    return (f"Fmax {fmax_mhz:.1f} MHz, {100 * short:.1f} % short: placement seeds move Fmax by "
            f"about {100 * SEED_SPREAD:.0f} %, so try another --seed than {seed}, or {lower}")


def run(args: argparse.Namespace) -> int:
    from binforge.boards.build import build_for_board
    from binforge.boards.platforms import get_board

    board = get_board(args.board)
    out = Path(args.out) if args.out else Path(f"build-{board.name}")
    net, rows, cols, simd, desc = load_hw_folder(args.hw, args.net)
    relay, gain_mode = hw_options(desc)
    print(f"board      {board.title} ({board.device}), "
          f"{'open flow: Yosys + nextpnr (YoWASP)' if board.flow == 'open' else 'Verilog only'}")
    print(f"design     {net.name} on {rows} x {cols} x {simd} = {rows * cols * simd} lanes")
    report = build_for_board(net, rows, cols, simd, args.board, out, clock_mhz=args.clock_mhz,
                             baud=args.baud, seed=args.seed, do_build=not args.plan_only,
                             source={"hw": str(args.hw), "net": str(args.net) if args.net else None},
                             relay=relay, gain_mode=gain_mode, wire_ps=args.abc9_wire_ps)
    clock = report["clock"]
    if clock["source"] == "pll":
        dividers = ", ".join(f"{k} {v}" for k, v in clock["pll"]["dividers"].items()
                             if k not in ("FEEDBACK_PATH", "FEEDBK_PATH", "CLKOP_FPHASE"))
        print(f"clock      {clock['achieved_mhz']:g} MHz from the {clock['pll']['primitive']} "
              f"(asked {clock['requested_mhz']:g} MHz, {clock['board_oscillator_mhz']:g} MHz oscillator; "
              f"{dividers})")
    else:
        print(f"clock      the board's {clock['board_oscillator_mhz']:g} MHz oscillator (no PLL)")
    fit = report["fit_estimate"]
    spram = (f", {fit['spram_blocks']} of {fit['spram_available']} SPRAM tiles (image memory)"
             if fit.get("spram_blocks") else "")
    print(f"estimate   {fit['logic_cells']} of {fit['logic_available']} logic cells, "
          f"{fit['bram_blocks']} of {fit['bram_available']} block RAMs{spram}")
    if fit["logic_cells"] > fit["logic_available"]:
        print(f"note       the logic estimate is above the device by "
              f"{fit['logic_cells'] / fit['logic_available'] - 1:.1%}, within its margin: "
              "the place-and-route's count decides")
    if report.get("built"):
        for name, use in report["utilisation"].items():
            print(f"used       {name:12s} {use['used']:6d} / {use['available']:6d}  ({use['percent']:.1f} %)")
        for net_name, fmax in report["fmax_mhz"].items():
            target = report["target_mhz"][net_name]
            verdict = "met" if fmax >= target else "NOT met"
            print(f"fmax       {net_name}: {fmax:.1f} MHz (target {target:.1f} MHz, {verdict})")
        if clock["timing_met"]:
            print(f"throughput {report['cycles_per_image']} cycles per image: "
                  f"{report['images_per_second_at_clock']:.0f} images/s at the {clock['achieved_mhz']:g} MHz "
                  f"clock (timing met; {report['images_per_second_at_fmax']:.0f} at Fmax)")
        else:
            advice = timing_advice(report.get("fmax_sync_mhz"), clock["achieved_mhz"], args.seed)
            print(f"throughput {report['cycles_per_image']} cycles per image: timing NOT met at "
                  f"{clock['achieved_mhz']:g} MHz ({advice}); "
                  f"{report['images_per_second_at_fmax']:.0f} images/s at Fmax")
        if report.get("images_per_second_at_fmax_with_loading"):
            print(f"loading    {report['image_cycles_with_loading']} cycles per image with loading and the "
                  f"result stream (a pixel offered every cycle): "
                  f"{report['images_per_second_at_fmax_with_loading']:.0f} images/s at Fmax")
        conv = report.get("binary_conv_layers")
        if conv and "binary_ops_per_logic_cell_per_cycle" in conv:
            unit = "logic cell" if report["device"].startswith("iCE40") else "LUT"
            print(f"conv       {conv['layers']} binary conv layers: {conv['binary_ops']} binary ops in "
                  f"{conv['cycles']} cycles, {conv['binary_ops_per_logic_cell_per_cycle']:.4f} ops per {unit} "
                  f"per cycle (lanes {100 * conv['lane_utilisation']:.1f} % busy)")
        print(f"bitstream  {out / report['bitstream']}")
    else:
        print(f"note       {report['note']}")
    print(f"report     {out / 'report.json'}")
    return 0

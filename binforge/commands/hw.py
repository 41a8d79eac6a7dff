"""``binforge hw NET/ --rows R --cols C --simd S --out HW/``: generate the accelerator's Verilog.

Writes ``HW/binforge_top.v``, ``HW/hw.json`` (parameters, memory sizes, analytic cycles
per layer, the top's ports) and ``HW/report.json``.
"""

from __future__ import annotations

import argparse

from binforge.errors import BinforgeError
from binforge.outdir import atomic_output_dir, write_report

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "hw",
        help="generate the accelerator (Verilog + hw.json) for a compiled network",
        description="Map a compiled network onto an R x C array of XNOR-popcount PEs with S bits "
        "per PE per cycle and write the Verilog top module binforge_top, hw.json and report.json.",
    )
    parser.add_argument("net", metavar="NET", help="folder written by 'binforge compile'")
    parser.add_argument("--rows", type=int, default=4, metavar="R",
                        help="PE rows: output channels computed at once (default 4)")
    parser.add_argument("--cols", type=int, default=4, metavar="C",
                        help="PE columns: output positions computed at once (default 4)")
    parser.add_argument("--simd", type=int, default=32, metavar="S",
                        help="bits per PE per cycle, a power of two (default 32)")
    parser.add_argument("--relay", default="auto", metavar="N",
                        help="PEs fed by one relay register: a positive integer, or auto (default): 4, "
                        "or where the array's skew would set the pace (many rows or columns, short "
                        "groups), the relay that takes it out (binforge.hw.plan.skew_advice)")
    parser.add_argument("--gains", choices=["shift", "multiply"], default="shift",
                        help="shift (default): a gain that is not a power of two runs as one op per "
                        "signed digit, PEs only shift; multiply: PEs multiply, each op runs once")
    parser.add_argument("--max-bram", type=int, default=None, metavar="KBIT",
                        help="refuse networks needing more on-chip memory than KBIT kilobits "
                        "(1 kbit = 1024 bits; iCE40UP5K has 120, ECP5-85 3744)")
    parser.add_argument("--board", default=None, metavar="BOARD",
                        help="elaborate for this board's FPGA, as 'binforge build' does: the Verilog "
                        "then holds its primitives (iCE40 UltraPlus SPRAM for the image memory, ECP5 "
                        "CCU2C carry chains), which 'binforge sim' runs with Yosys's models of them "
                        "(default: portable Verilog)")
    parser.add_argument("--out", required=True, metavar="HW", help="output folder")
    parser.set_defaults(run=run)
    return parser


def _relay(args: argparse.Namespace, net) -> tuple[int, str]:
    """The relay ``--relay`` asks for, and a note on how ``auto`` chose it."""
    from binforge.hw.plan import DEFAULT_RELAY, plan_network, skew_advice

    if args.relay != "auto":
        try:
            return int(args.relay), ""
        except ValueError:
            raise BinforgeError(f"--relay must be a positive integer or auto, not {args.relay!r}") from None
    try:
        advice = skew_advice(plan_network(net, args.rows, args.cols, args.simd, DEFAULT_RELAY, args.gains))
    except ValueError as exc:
        raise BinforgeError(f"cannot map {net.name!r} onto the array: {exc}") from None
    if advice is None:
        return DEFAULT_RELAY, " (auto)"
    return advice["hint"], (f" (auto: at relay {DEFAULT_RELAY} the array's skew would add "
                            f"{advice['skew_cycles']} cycles per image)")


def run(args: argparse.Namespace) -> int:
    from binforge.compiler.ir import IRError, load
    from binforge.hw.generate import generate

    try:
        net = load(args.net)
    except IRError as exc:
        raise BinforgeError(f"cannot read the network: {exc}") from None
    limit = None if args.max_bram is None else args.max_bram * 1024
    relay, auto_note = _relay(args, net)
    platform = None
    if args.board is not None:
        from binforge.boards.platforms import get_board

        platform = get_board(args.board).platform()
    try:
        with atomic_output_dir(args.out) as folder:
            desc = generate(net, args.rows, args.cols, args.simd, folder, relay=relay,
                            gain_mode=args.gains, max_bram_bits=limit, platform=platform)
            write_report(folder, "hw", network=net.name, rows=args.rows, cols=args.cols,
                         simd=args.simd, relay=relay, gains=args.gains,
                         gain_format=desc["gain_format"], lanes=desc["lanes"],
                         cycles=desc["cycles"]["total"], ideal_cycles=desc["cycles"]["ideal"],
                         memory_bits=desc["memory_bits_total"], skew_advice=desc["skew_advice"],
                         verilog=desc["verilog"],
                         board=args.board, device=desc["device"])
    except ValueError as exc:
        raise BinforgeError(f"cannot map {net.name!r} onto the array: {exc}") from None
    bits = desc["memory_bits"]
    print(f"network    {net.name} ({len(net.layers)} layers, {net.num_classes} classes)")
    print(f"array      {args.rows} x {args.cols} PEs x {args.simd} bits = {desc['lanes']} lanes, "
          f"relay {relay}{auto_note}")
    print(f"cycles     {desc['cycles']['total']} per image (busy array alone: {desc['cycles']['ideal']})")
    print(f"memory     {desc['memory_bits_total']} bits: " + ", ".join(f"{k} {v}" for k, v in bits.items()))
    advice = desc["skew_advice"]
    if advice is not None:
        print(f"note       the array's skew adds {advice['skew_cycles']} cycles per image at --relay "
              f"{advice['relay']} (groups wait for it); --relay {advice['hint']} takes "
              f"{advice['cycles'] - advice['hint_cycles']} of them out (fewer relay registers, "
              "each driving more PEs)")
    target = f", elaborated for the {desc['device']} of --board {args.board}" if args.board else ""
    print(f"verilog    {args.out}/{desc['verilog']} (top module {desc['top']}{target})")
    return 0

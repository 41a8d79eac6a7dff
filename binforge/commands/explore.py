"""``binforge explore``: sweep networks x array shapes x boards; CSV, Pareto plots, report."""

from __future__ import annotations

import argparse
import sys

from binforge.commands.data import add_data_options, data_options

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  binforge explore --net nets/pabt-1x1 --net nets/pabt-3x3 --rows 4,8,16 --cols 1,2,4 \\
      --simd 16,32,64 --boards icebreaker,ulx3s-85f --data digits --out exp/
  binforge explore --runs runs/psi-0.5 runs/psi-0.9 --data digits --validate 2 --out exp/
  binforge explore ... --out exp/                     # again: finished points are skipped

Cycles come from the analytic model, logic and block RAMs from the boards' calibration
model, Fmax from the device's calibration (column resources_from / fmax_from says
'estimate'); --build K replaces them by real builds, --validate K checks K shapes'
cycles and logits in simulation.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explore",
        help="co-design sweep: accuracy, cycles, logic, Fmax over networks and array shapes",
        description="Evaluate every (network, rows, cols, simd, board) point: golden accuracy, "
        "Bit-OPs, analytic cycles, estimated (or built) logic, block RAMs and Fmax, images/s, "
        "fit. Writes EXP/points.csv (resumable), Pareto plots (PNG) and report.json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--net", action="extend", nargs="+", default=[], metavar="NET",
                   help="compiled network folders (network.json + weights.npz)")
    p.add_argument("--runs", action="extend", nargs="+", default=[], metavar="RUN",
                   help="training run folders, compiled on the fly")
    p.add_argument("--rows", default="4,8,16", help="array rows R, comma-separated (default: %(default)s)")
    p.add_argument("--cols", default="1,2,4", help="array columns C (default: %(default)s)")
    p.add_argument("--simd", default="16,32,64",
                   help="bits per PE per cycle S, powers of two (default: %(default)s)")
    p.add_argument("--boards", default="icebreaker,ulx3s-85f",
                   help="boards, comma-separated (default: %(default)s)")
    add_data_options(p, default=None)
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="split for the accuracy (default: %(default)s)")
    p.add_argument("--limit", type=int, metavar="N", help="use the first N images of the split")
    p.add_argument("--build", type=int, default=0, metavar="K",
                   help="build K points with the open FPGA flow, Pareto-front points first (default: 0)")
    p.add_argument("--validate", type=int, default=0, metavar="K",
                   help="check K array shapes' cycles and logits in simulation (default: 0)")
    p.add_argument("--simulator", default="amaranth", choices=("amaranth", "verilator", "icarus"),
                   help="for --validate: Amaranth's simulator (one image, nothing to build) or an HDL "
                   "simulator on the generated Verilog (10 images) (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="EXP", help="sweep folder (resumed if it exists)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from binforge.errors import BinforgeError
    from binforge.explore import POINTS_CSV, load_networks, parse_positive_list, run_sweep

    rows = parse_positive_list("--rows", args.rows)
    cols = parse_positive_list("--cols", args.cols)
    simd = parse_positive_list("--simd", args.simd, power_of_two=True)
    boards = [b.strip() for b in args.boards.split(",") if b.strip()]
    if args.limit is not None and args.limit < 1:
        raise BinforgeError(f"--limit must be a positive number of images, not {args.limit}")
    networks = load_networks(args.net, args.runs)
    report = run_sweep(networks, rows, cols, simd, boards, args.out, data=args.data, split=args.split,
                       limit=args.limit, data_kwargs=data_options(args), build=args.build,
                       validate=args.validate, simulator=args.simulator, log=lambda m: print(m, file=sys.stderr))
    print(f"explored {len(networks)} network(s) x {len(rows) * len(cols) * len(simd)} shapes x "
          f"{len(boards)} board(s): {report['points']} points ({report['computed']} computed, "
          f"{report['resumed']} resumed), {report['fitting']} fit, {report['errors']} cannot be mapped")
    for n in report["networks"]:
        acc = f", top-1 {n['accuracy']:.2f}%" if n["accuracy"] is not None else ""
        print(f"  {n['label']}: {n['bit_ops']} Bit-OPs{acc}")
    print(f"  co-design Pareto front (fitting points; cycles, logic, accuracy): "
          f"{len(report['pareto_front'])} points")
    for point in report["pareto_front"][:8]:
        print(f"    {point['board']:<12} {point['network']:<16} {point['rows']}x{point['cols']}x{point['simd']}: "
              f"{point['cycles']} cycles, {point['logic']} logic ({point['resources_from']})")
    if report["validated"]:
        ok = sum(1 for v in report["validated"] if v["passed"])
        print(f"  validated in simulation: {ok} of {len(report['validated'])} shapes agree")
    if report["builds"]:
        print(f"  built: {sum(1 for b in report['builds'] if b['built'])} of {len(report['builds'])}")
    print(f"wrote {args.out}/{POINTS_CSV}, {', '.join(report['plots'])}, report.json")
    failed = [v for v in report["validated"] if not v["passed"]]
    return 1 if failed else 0

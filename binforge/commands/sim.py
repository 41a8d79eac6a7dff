"""``binforge sim HW/ --simulator verilator|icarus --data SPEC``: images through the RTL, bit-exact.

Builds the Verilog ``binforge hw`` wrote (Verilator or Icarus, through cocotb; the build
is reused while the Verilog is unchanged), streams each image into it with cocotb, and
checks the class index and every logit against the golden model, and the hardware's
cycle counter against the analytic model in ``hw.json``, in total and per layer (the
debug tap marks each layer's start). An image that differs is run again with every
layer's writes traced, and the first layer whose output differs from the golden model
is named with plane, channel, position, expected and got. Prints matches, cycles per
layer and image and simulation speed; writes ``report.json`` into ``--out``. Exit
status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from binforge.errors import BinforgeError
from binforge.outdir import atomic_output_dir, write_report

__all__ = ["add_parser", "run"]

#: Mismatches printed in the summary (all of the first 50 go into report.json).
PRINTED_MISMATCHES = 5


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sim",
        help="run images through the accelerator's RTL (Verilator or Icarus) and check them bit-exactly",
        description="Simulate the Verilog written by 'binforge hw' with cocotb on Verilator or Icarus: "
        "stream each image in, compare the class index and every logit with the golden model and "
        "the cycle counter with the analytic model, and report matches and simulation speed.",
    )
    parser.add_argument("hw_dir", metavar="HW", help="a folder written by 'binforge hw'")
    parser.add_argument("--simulator", choices=("verilator", "icarus"), default="verilator",
                        help="default: verilator")
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="digits | fashion-mnist[=PATH] | cifar10=PATH | folder=PATH | synthetic[=C,H,W,K]")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="default: test")
    parser.add_argument("--limit", type=int, default=20, metavar="N",
                        help="simulate the first N images (default 20)")
    parser.add_argument("--net", metavar="NET",
                        help="the compiled network the hardware was generated from "
                        "(default: HW/ itself when it holds network.json)")
    parser.add_argument("--stall", type=float, default=0.0, metavar="P",
                        help="probability of a random stall on the pixel and result streams (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random stalls (default 0)")
    parser.add_argument("--chunk", type=int, default=25, metavar="N",
                        help="images per simulator run; progress is shown per run (default 25)")
    parser.add_argument("--localise", type=int, default=3, metavar="N",
                        help="run the first N differing images again with every layer's writes traced, "
                        "and name the first layer that differs (default 3; 0: off)")
    parser.add_argument("--waves", action="store_true",
                        help="record waveforms (into the simulator's build folder; slower)")
    parser.add_argument("--build-root", metavar="DIR",
                        help="where simulator builds are kept and reused (default ~/.cache/binforge/sim)")
    parser.add_argument("--out", metavar="DIR", help="write DIR/report.json and the simulator logs")
    parser.set_defaults(run=run)
    return parser


def _network(args: argparse.Namespace):
    from binforge.compiler import ir

    folder = Path(args.net) if args.net else Path(args.hw_dir)
    if not args.net and not (folder / ir.NETWORK_JSON).is_file():
        raise BinforgeError(f"{args.hw_dir} holds no network.json: give the compiled network the "
                            "hardware was generated from with --net NET/")
    try:
        return ir.load(folder)
    except ir.IRError as exc:
        raise BinforgeError(f"cannot read the network in {folder}: {exc}") from None


def _simulate(args, net, images, run_dir: Path):
    from tqdm import tqdm

    from binforge.sim.network_sim import simulate_network

    with tqdm(total=len(images), desc=f"sim {args.simulator}", unit="img", file=sys.stderr,
              leave=False, disable=not sys.stderr.isatty()) as bar:
        done = [0]

        def progress(finished: int) -> None:
            bar.update(finished - done[0])
            done[0] = finished

        return simulate_network(args.hw_dir, net, images, simulator=args.simulator, run_dir=run_dir,
                                build_root=args.build_root, seed=args.seed, in_stall=args.stall, out_stall=args.stall,
                                chunk=args.chunk, waves=args.waves, localise=args.localise, progress=progress)


def run(args: argparse.Namespace) -> int:
    from binforge.model.data import load_dataset
    from binforge.sim.cocotb_runner import require_simulator
    from binforge.sim.network_sim import read_hw

    if args.limit is not None and args.limit < 1:
        raise BinforgeError(f"--limit must be at least 1, not {args.limit}")
    if not 0.0 <= args.stall < 1.0:
        raise BinforgeError(f"--stall must be a probability in [0, 1), not {args.stall}")
    if args.chunk < 1:
        raise BinforgeError(f"--chunk must be at least 1, not {args.chunk}")
    if args.localise < 0:
        raise BinforgeError(f"--localise must be 0 or more, not {args.localise}")
    require_simulator(args.simulator)
    desc, _ = read_hw(args.hw_dir)
    net = _network(args)
    dataset = load_dataset(args.data, args.split, limit=args.limit)
    if tuple(dataset.shape) != net.input_shape.as_tuple():
        raise BinforgeError(
            f"{args.data} images are {'x'.join(map(str, dataset.shape))} but the network takes "
            f"{'x'.join(map(str, net.input_shape.as_tuple()))}: give the data set it was trained on")
    images, labels = dataset.as_arrays()

    start = time.perf_counter()
    if args.out:
        with atomic_output_dir(args.out) as folder:
            result = _simulate(args, net, images, folder / "sim")
            figures = _figures(args, desc, net, result, labels, time.perf_counter() - start)
            write_report(folder, "sim", **figures)
    else:
        with tempfile.TemporaryDirectory(prefix="binforge-sim-") as tmp:
            result = _simulate(args, net, images, Path(tmp))
            figures = _figures(args, desc, net, result, labels, time.perf_counter() - start)
    _print_summary(args, desc, result, figures)
    return 0 if result.mismatch_count == 0 and result.images == len(images) else 1


def _figures(args, desc, net, result, labels, seconds: float) -> dict:
    rtl = np.asarray(result.rtl_predictions, dtype=np.int64)
    n = len(rtl)
    figures = {
        "hw": str(Path(args.hw_dir).resolve()), "network": net.name, "data": args.data,
        "split": args.split, "seed": args.seed, "stall": args.stall,
        "rows": desc.get("rows"), "cols": desc.get("cols"), "simd": desc.get("simd"),
        **result.as_dict(),
        "rtl_accuracy": float(np.mean(rtl == labels[:n])) if n else None,
        "golden_accuracy": float(np.mean(np.asarray(result.golden_predictions[:n]) == labels[:n])) if n else None,
        "wall_seconds": round(seconds, 3),
        "waves": bool(args.waves),
    }
    return figures


def _print_summary(args, desc, result, figures) -> None:
    print(f"sim        {args.hw_dir} on {args.simulator}: {result.images} images of {args.data} {args.split}")
    print(f"matches    {result.matches} of {result.images} images bit-exact (class and every logit); "
          f"{result.mismatch_count} mismatches in {result.cases} checked values")
    if figures["rtl_accuracy"] is not None:
        print(f"accuracy   {figures['rtl_accuracy']:.2%} (RTL), {figures['golden_accuracy']:.2%} (golden)")
    rtl = sorted(set(result.rtl_cycles))
    agree = "equal to" if rtl == [result.analytic_cycles] else "differs from"
    print(f"cycles     {', '.join(map(str, rtl)) or '-'} per image in the network ({agree} the analytic "
          f"{result.analytic_cycles}); {figures['cycles_per_image_mean'] or 0:.0f} with loading and results")
    print(f"speed      {result.images_per_second:.2f} images/s, {result.sim_cycles_per_second:.0f} cycles/s "
          f"({result.sim_seconds:.1f} s simulating, {result.build_seconds:.1f} s building)")
    for row in result.layer_table():
        rtl = row["rtl_min"] if row["rtl_min"] == row["rtl_max"] else f"{row['rtl_min']}..{row['rtl_max']}"
        mark = "" if row["rtl_min"] == row["rtl_max"] == row["analytic"] else "  <- differs"
        print(f"layer {row['layer']:<4} {row['name']:<16} {rtl!s:>9} cycles in the RTL, "
              f"{row['analytic']} analytic{mark}")
    for m in result.mismatches[:PRINTED_MISMATCHES]:
        print("mismatch   " + ", ".join(f"{k}={v}" for k, v in m.items()))
    for found in result.localisations:
        culprit = next((f for f in found["layers"] if f["mismatches"]), None)
        if culprit is None:
            print(f"localised  image {found['image']}: every layer's writes equal the golden model's")
            continue
        first = culprit["first"][0]
        where = ", ".join(f"{k}={v}" for k, v in first.items())
        print(f"localised  image {found['image']}: first differing layer {culprit['layer']} ({culprit['name']}), "
              f"{culprit['mismatches']} of {culprit['compared']} values; first: {where}")
    if args.out:
        print(f"report     {Path(args.out) / 'report.json'}")

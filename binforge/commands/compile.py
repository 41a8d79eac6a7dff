"""``binforge compile RUN/ --out NET/``: a trained run -> network IR (network.json + weights.npz)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from binforge.errors import BinforgeError
from binforge.outdir import atomic_output_dir, write_report

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from binforge.compiler.compile import (
        DEFAULT_BIAS_FRAC_BITS,
        DEFAULT_FIRST_WEIGHT_BITS,
        DEFAULT_GAIN_FRAC_BITS,
        DEFAULT_LAST_WEIGHT_BITS,
        MAX_WEIGHT_BITS,
    )

    parser = subparsers.add_parser(
        "compile",
        help="compile a trained run into the network IR",
        description="Read RUN/model.pt + RUN/config.json, fold batch norm, scales and activation "
        "thresholds into integer thresholds, quantise the float first layer and classifier to odd "
        "integers, and write NET/network.json, NET/weights.npz and NET/report.json.",
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run folder written by 'binforge train'")
    parser.add_argument("--out", required=True, metavar="NET", help="output folder (replaced whole)")
    parser.add_argument("--first-bits", type=int, default=DEFAULT_FIRST_WEIGHT_BITS, metavar="B",
                        help=f"bits of the first layer's integer weights (default {DEFAULT_FIRST_WEIGHT_BITS}, "
                        f"at most {MAX_WEIGHT_BITS}: then the golden model is the float layer to float32 precision)")
    parser.add_argument("--last-bits", type=int, default=DEFAULT_LAST_WEIGHT_BITS, metavar="B",
                        help=f"bits of the classifier's integer weights (default {DEFAULT_LAST_WEIGHT_BITS}, "
                        f"at most {MAX_WEIGHT_BITS})")
    parser.add_argument("--gain-bits", type=int, default=DEFAULT_GAIN_FRAC_BITS, metavar="F",
                        help="multi-op layers: the largest integer gain is at most 2**F "
                        f"(default {DEFAULT_GAIN_FRAC_BITS})")
    parser.add_argument("--bias-bits", type=int, default=DEFAULT_BIAS_FRAC_BITS, metavar="F",
                        help=f"fraction bits of the classifier's bias (default {DEFAULT_BIAS_FRAC_BITS})")
    parser.add_argument("--data", metavar="SPEC",
                        help="data set for the output-error figures (default: the run's own)")
    parser.add_argument("--error-images", type=int, default=256, metavar="N",
                        help="train images on which to measure the first layer's and the classifier's "
                        "output error (default 256; 0 skips it)")
    parser.add_argument("--qonnx", action="store_true",
                        help="also write NET/network.onnx: the network as a QONNX graph (MultiThreshold, "
                        "BipolarQuant; batch size 1) that computes the same integer logits, for FINN")
    parser.set_defaults(run=run)
    return parser


def _check_bits(args: argparse.Namespace) -> None:
    from binforge.compiler.compile import MAX_WEIGHT_BITS

    top = MAX_WEIGHT_BITS
    for flag, value, low, high in (("--first-bits", args.first_bits, 1, top), ("--last-bits", args.last_bits, 1, top),
                                   ("--gain-bits", args.gain_bits, 0, 24), ("--bias-bits", args.bias_bits, 0, 24)):
        if not low <= value <= high:
            raise BinforgeError(f"{flag} must be between {low} and {high}, not {value}")


def _write_qonnx(net, path: Path) -> None:
    try:
        from binforge.compiler.qonnx_export import QonnxExportError, export_qonnx

        export_qonnx(net, path)
    except ModuleNotFoundError as exc:
        raise BinforgeError(f"--qonnx needs the {exc.name} package: pip install 'binforge[onnx]'") from None
    except QonnxExportError as exc:
        raise BinforgeError(f"cannot export QONNX: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from binforge.compiler import ir
    from binforge.compiler.compile import compile_model
    from binforge.model.checkpoint import load_run

    _check_bits(args)
    if args.error_images < 0:
        raise BinforgeError(f"--error-images must be 0 or more, not {args.error_images}")
    run_dir = Path(args.run_dir)
    model, config = load_run(run_dir)
    if config.get("method") == "float":
        raise BinforgeError(f"{run_dir} is a float run; the hardware runs binary networks: compile a run "
                            "trained with a binary method (bop, mbn, pabt, ...)")
    meta = {
        "source_run": os.path.abspath(run_dir),
        "arch": config.get("arch"),
        "method": config.get("method"),
        "data": config.get("data"),
        "M": config.get("M"),
        "N": config.get("N"),
        "width": config.get("width"),
    }
    images = None
    spec = args.data or config.get("data")
    if args.error_images and spec:
        from binforge.model.data import load_dataset

        images = load_dataset(spec, "train", limit=args.error_images).as_arrays()[0]
    net, report = compile_model(
        model, tuple(config["in_shape"]), int(config["num_classes"]),
        first_weight_bits=args.first_bits, last_weight_bits=args.last_bits,
        gain_frac_bits=args.gain_bits, bias_frac_bits=args.bias_bits,
        name=f"{config.get('arch', 'net')}-{config.get('method', '')}".rstrip("-"),
        classes=tuple(str(c) for c in config.get("classes", ())), meta=meta, images=images)
    with atomic_output_dir(args.out) as tmp:
        try:
            ir.save(net, tmp)
        except ir.IRError as exc:  # a compiler bug: the network it built does not validate
            raise BinforgeError(f"the compiled network does not validate ({exc}); please report this") from None
        if args.qonnx:
            _write_qonnx(net, tmp / "network.onnx")
        write_report(tmp, "compile", run=os.path.abspath(run_dir), network=net.name, **meta,
                     **report.to_json())

    print(f"compiled   {run_dir} ({meta['arch']}, {meta['method']}) -> {args.out}")
    if args.qonnx:
        print(f"qonnx      {Path(args.out) / 'network.onnx'}")
    print(f"{'layer':<10} {'kind':<8} {'in':>12} {'out':>12} {'planes':>7} {'ops':>4} {'acc bits':>8}")
    for entry in report.layers:
        shape_in = "x".join(map(str, entry["in_shape"]))
        shape_out = "x".join(map(str, entry["out_shape"]))
        planes = f"{entry.get('in_planes', '')}->{entry.get('out_planes', '')}" if "ops" in entry else ""
        print(f"{entry['name']:<10} {entry['kind']:<8} {shape_in:>12} {shape_out:>12} {planes:>7} "
              f"{entry.get('ops', ''):>4} {entry.get('acc_width', ''):>8}")
    for entry in report.layers:
        if "output_rel_error" in entry:
            print(f"{entry['name']}: output error {entry['output_rel_error']:.3%} (relative L2, "
                  f"{entry['output_error_images']} {spec} train images)")
    summary = report.summary()
    print(f"ops {summary['ops']}, widest accumulator {summary['max_acc_width']} bits, weight error "
          f"{summary['max_weight_rel_error']:.2%} (first/last layer), gain error {summary['max_gain_rel_error']:.2%}")
    return 0

"""``binforge golden NET/ --data SPEC``: run the bit-exact golden model over a data set.

Reports the accuracy and, when the trained torch model is at hand (the run the
network was compiled from, or ``--run``), its accuracy and how often the two
predict the same class on the same images. ``--per-layer`` also compares every
activation bit, layer by layer, twice: with the trained torch model (where do
they part, and by how much) and with the torch model holding the compiler's
integer first layer and classifier (which the golden model must match except for
float ties; anything else is a compiler or golden-model error).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from binforge.errors import BinforgeError
from binforge.outdir import atomic_output_dir, write_report

__all__ = ["add_parser", "run"]

#: Images per golden-model call (and progress step).
CHUNK = 256
#: Mismatching image indices kept in report.json.
MAX_LISTED_MISMATCHES = 100
#: Logits of the torch model holding the compiler's integers may differ from golden's by float
#: rounding only: this fraction of the largest logit (float32 sums over a few thousand inputs).
LOGIT_TOLERANCE = 1e-4


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "golden",
        help="run the bit-exact golden model of a compiled network on a data set",
        description="Run NET/ (written by 'binforge compile') through the golden numpy model, the "
        "integer reference for the hardware, and report its accuracy; compare with the torch model "
        "of the run it was compiled from (or --run).",
    )
    parser.add_argument("net_dir", metavar="NET", help="a folder written by 'binforge compile'")
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="digits | fashion-mnist[=PATH] | cifar10=PATH | folder=PATH | synthetic[=C,H,W,K]")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="default: test")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    parser.add_argument("--run", dest="run_dir", metavar="RUN",
                        help="the trained run to compare with (default: the run recorded in NET/)")
    parser.add_argument("--no-torch", action="store_true", help="do not compare with the torch model")
    parser.add_argument("--per-layer", action="store_true",
                        help="compare every activation bit with the torch model, layer by layer: the trained "
                        "model, and the model holding the compiler's integers (shows where they part and why)")
    parser.add_argument("--out", metavar="DIR", help="write DIR/report.json")
    parser.set_defaults(run=run)
    return parser


def _progress(total: int, what: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="img", file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty())


def _torch_model(args: argparse.Namespace, net) -> tuple[object | None, str | None, str]:
    """The torch model to compare with, its run folder, and a note on why none."""
    from binforge.model.checkpoint import load_run

    if args.no_torch:
        return None, None, "not asked for (--no-torch)"
    if args.run_dir:
        model, _ = load_run(args.run_dir)
        return model, os.path.abspath(args.run_dir), ""
    source = net.meta.get("source_run")
    if not source:
        return None, None, "the network records no source run; give --run RUN"
    if not (Path(source) / "model.pt").is_file():
        return None, None, f"the source run {source} is not there any more; give --run RUN"
    model, _ = load_run(source)
    return model, source, ""


def _per_layer(args: argparse.Namespace, net, model, run_dir: str, images: np.ndarray, labels: np.ndarray,
               predictions: np.ndarray, figures: dict) -> None:
    """Torch against golden bit by bit: the trained model, then the model with the compiler's integers."""
    from binforge.compiler.torch_reference import (
        compare_with_torch,
        quantised_model,
        reference_report,
    )

    report = reference_report(model, net)
    comparisons = {}
    for key, what, torch_model in (("trained", "torch", model),
                                   ("compiler_integers", "torch+int", quantised_model(model, report))):
        with _progress(len(images), what) as bar:
            comparisons[key] = compare_with_torch(torch_model, net, report, images, progress=bar.update)
        if not np.array_equal(comparisons[key].golden_predictions, predictions):  # pragma: no cover
            raise BinforgeError("the golden model gave other predictions on a second run; please report this")
    trained, exact = comparisons["trained"], comparisons["compiler_integers"]
    mismatches = np.flatnonzero(trained.torch_predictions != predictions)
    figures.update(
        run=run_dir,
        torch_accuracy=float(np.mean(trained.torch_predictions == labels)) if len(labels) else 0.0,
        agreement=trained.agreement, mismatches=int(len(mismatches)),
        mismatch_indices=mismatches[:MAX_LISTED_MISMATCHES].tolist(),
        max_logit_difference=trained.max_logit_difference)
    figures["accuracy_delta_pp"] = round(100 * (figures["accuracy"] - figures["torch_accuracy"]), 4)
    unexplained = exact.first_unexplained
    first = trained.first_difference
    settings = net.meta.get("compiler", {})
    integers = (f"the first layer's and classifier's integer weights (--first-bits "
                f"{settings.get('first_weight_bits', '?')}, --last-bits {settings.get('last_weight_bits', '?')})")
    if any(len(layer.ops) > 1 for layer in net.compute_layers[1:-1]):
        integers += " and the rounded gains (--gain-bits)"
    logit_error = exact.equal_bits_logit_difference / exact.max_logit if exact.max_logit else 0.0
    if unexplained is not None:
        verdict = (f"compiler or golden-model error: in {unexplained.unexplained_images} images the golden bits "
                   f"of {unexplained.producer} are not those of the torch model holding the compiler's integers")
    elif logit_error > LOGIT_TOLERANCE:
        verdict = (f"compiler or golden-model error: every activation bit agrees with the torch model holding "
                   f"the compiler's integers, but the logits differ by up to {logit_error:.2%} of the largest one")
    elif first is None and trained.agreement == 1:
        verdict = "the golden model computes the trained torch model bit for bit on these images"
    else:
        origins = ", ".join(f"{e.producer} in {e.origin_images}" for e in trained.layers if e.origin_images)
        verdict = (f"{integers} explain every difference (the golden model is the torch model with those "
                   f"integers, up to float ties); first differing bits: {origins or 'none'} images; "
                   f"{trained.classifier_mismatches} predictions differ with every bit equal (classifier)")
    figures["per_layer"] = {"trained": trained.to_json(), "compiler_integers": exact.to_json(),
                            "verdict": verdict}
    print(f"torch      {figures['torch_accuracy']:.2%} (float model of {run_dir})")
    print(f"agreement  {trained.agreement:.2%} ({len(mismatches)} of {len(images)} predictions differ)")
    print(f"per layer  activation bits that differ from torch's (tie: |x - t| <= {trained.tie_tolerance:g})")
    print(f"  {'bits of':<10} {'read by':<10} {'trained model':>22} {'first in images':>16} "
          f"{'with compiler integers':>24}")
    for mine, theirs in zip(trained.layers, exact.layers, strict=True):
        print(f"  {mine.producer:<10} {mine.reader:<10} {_bits_cell(mine):>22} {mine.origin_images:>16} "
              f"{_bits_cell(theirs):>24}")
    print(f"  {'class':<10} {'(argmax)':<10} {1 - trained.agreement:>22.2%} {trained.classifier_mismatches:>16} "
          f"{1 - exact.agreement:>24.2%}")
    print(f"verdict    {verdict}")


def _bits_cell(entry) -> str:
    """``0``, a count of bits (under 1000), or a percentage; the ties among them in brackets."""
    if not entry.differing:
        return "0"
    cell = f"{entry.differing} bit{'s' if entry.differing > 1 else ''}" if entry.differing < 1000 \
        else f"{entry.fraction:.4%}"
    return f"{cell} ({entry.ties} tie{'s' if entry.ties > 1 else ''})" if entry.ties else cell


def run(args: argparse.Namespace) -> int:
    from binforge.compiler import ir
    from binforge.model.data import load_dataset
    from binforge.sim.golden import run_network

    try:
        net = ir.load(args.net_dir)
    except ir.IRError as exc:
        raise BinforgeError(f"cannot read the network in {args.net_dir}: {exc}") from None
    dataset = load_dataset(args.data, args.split, limit=args.limit)
    if tuple(dataset.shape) != net.input_shape.as_tuple():
        raise BinforgeError(
            f"{args.data} images are {'x'.join(map(str, dataset.shape))} but the network takes "
            f"{'x'.join(map(str, net.input_shape.as_tuple()))}: give the data set it was trained on")
    if dataset.num_classes != net.num_classes:
        raise BinforgeError(f"{args.data} has {dataset.num_classes} classes but the network has "
                            f"{net.num_classes}: give the data set it was trained on")
    images, labels = dataset.as_arrays()
    model, run_dir, why_not = _torch_model(args, net)

    start = time.perf_counter()
    parts = []
    with _progress(len(images), "golden") as bar:
        for first in range(0, len(images), CHUNK):
            parts.append(run_network(net, images[first:first + CHUNK]).logits)
            bar.update(min(CHUNK, len(images) - first))
    golden_seconds = time.perf_counter() - start
    logits = np.concatenate(parts) if parts else np.zeros((0, net.num_classes), np.int64)
    predictions = logits.argmax(axis=1)
    accuracy = float(np.mean(predictions == labels)) if len(labels) else 0.0
    figures: dict = {
        "network": os.path.abspath(args.net_dir), "data": args.data, "split": args.split,
        "images": int(len(images)), "accuracy": accuracy, "golden_seconds": round(golden_seconds, 3),
    }
    print(f"golden     {args.net_dir} on {args.data} {args.split}: {len(images)} images")
    print(f"accuracy   {accuracy:.2%} (golden, integer)")

    if args.per_layer and model is None:
        raise BinforgeError(f"--per-layer needs the torch model: {why_not}")
    if model is not None and args.per_layer:
        _per_layer(args, net, model, run_dir, images, labels, predictions, figures)
    elif model is not None:
        from binforge.compiler.torch_reference import torch_logits

        with _progress(len(images), "torch") as bar:
            torch_out = torch_logits(model, images, progress=bar.update)
        torch_predictions = torch_out.argmax(axis=1)
        mismatches = np.flatnonzero(torch_predictions != predictions)
        scale = net.layers[-1].output.scale
        figures.update(
            run=run_dir,
            torch_accuracy=float(np.mean(torch_predictions == labels)) if len(labels) else 0.0,
            agreement=float(1 - len(mismatches) / len(images)) if len(images) else 1.0,
            mismatches=int(len(mismatches)),
            mismatch_indices=mismatches[:MAX_LISTED_MISMATCHES].tolist(),
            max_logit_difference=float(np.abs(logits * scale - torch_out).max()) if len(images) else 0.0,
        )
        figures["accuracy_delta_pp"] = round(100 * (accuracy - figures["torch_accuracy"]), 4)
        print(f"torch      {figures['torch_accuracy']:.2%} (float model of {run_dir})")
        print(f"agreement  {figures['agreement']:.2%} ({len(mismatches)} of {len(images)} predictions differ)")
    else:
        figures["torch"] = f"no comparison: {why_not}"
        print(f"torch      no comparison: {why_not}")
    if args.out:
        with atomic_output_dir(args.out) as tmp:
            write_report(tmp, "golden", **figures)
        print(f"report     {Path(args.out) / 'report.json'}")
    return 0

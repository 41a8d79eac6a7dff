"""``binforge data info NAME``: what a data set holds and where it was found.

Also the data options every command that reads a data set shares
(:func:`add_data_options`, :func:`data_options`), so ``--data``, ``--allow-pickle``
and ``--image-size`` mean the same everywhere.
"""

from __future__ import annotations

import argparse

from binforge.outdir import atomic_output_dir, write_report

__all__ = ["add_parser", "run", "add_data_options", "data_options"]

DATA_HELP = "digits | fashion-mnist[=PATH] | cifar10=PATH | folder=PATH | synthetic[=C,H,W,K]"


def add_data_options(
    parser: argparse.ArgumentParser, *, positional: bool = False, default: str = "digits"
) -> None:
    """Add the data set options to a command's parser.

    ``--data SPEC`` (or a positional ``NAME`` with ``positional=True``),
    ``--allow-pickle`` and ``--image-size N``. Pass the parsed arguments to
    :func:`data_options` to get the keyword arguments of ``load_dataset``.
    """
    if positional:
        parser.add_argument("data", metavar="NAME", help=DATA_HELP)
    else:
        parser.add_argument(
            "--data", default=default, metavar="SPEC", help=f"{DATA_HELP} (default: {default})"
        )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept CIFAR-10's python-pickle batches (unsafe: unpickling can run code)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=224,
        metavar="N",
        help="height and width of folder images after resize and center crop (default 224)",
    )


def data_options(args: argparse.Namespace) -> dict[str, object]:
    """``load_dataset`` keyword arguments from options added by :func:`add_data_options`."""
    return {"allow_pickle": args.allow_pickle, "image_size": args.image_size}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "data",
        help="inspect data sets",
        description="Inspect the data sets binforge trains on and feeds to the hardware.",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    info = actions.add_parser(
        "info",
        help="show a data set's shape, classes, split sizes and source",
        description="Load both splits of a data set and show its image shape (uint8 C,H,W), "
        "classes, train/test sizes and where it was found. Writes nothing unless --out is given.",
    )
    add_data_options(info, positional=True)
    info.add_argument("--seed", type=int, default=0, help="seed of the synthetic data set")
    info.add_argument("--out", metavar="DIR", help="also write DIR/report.json")
    info.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from binforge.model.data import dataset_info

    info = dataset_info(args.data, seed=args.seed, **data_options(args))
    channels, height, width = info["shape"]
    print(f"data set   {info['dataset']}")
    print(f"source     {info['source']}")
    print(f"images     {channels}x{height}x{width} uint8 (C x H x W)")
    print(f"train      {info['train_size']} images")
    print(f"test       {info['test_size']} images")
    print(f"classes    {info['num_classes']}: {', '.join(info['classes'])}")
    if args.out:
        with atomic_output_dir(args.out) as folder:
            write_report(folder, "data info", **info)
        print(f"report     {args.out}/report.json")
    return 0

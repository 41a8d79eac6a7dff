"""Test top-1 per binary epoch from `binforge train` logs, one curve per log, as a PNG.

usage: python experiments/plot_epoch_curves.py --out PNG [--title T] [--target 92] LOG[=LABEL]...

Reads the "binary epoch E/N: ... test top-1 X%" lines a run prints (its log, e.g. the
OUT/pabt_kd20sSEED.log files of experiments/pabt_fashion_seeds.sh), so a run that was
stopped before it finished is plotted as far as it got.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

EPOCH = re.compile(r"binary epoch (\d+)/(\d+):.*test top-1 ([0-9.]+)%")


def curve(text: str) -> tuple[list[int], list[float], int]:
    """(epochs, test top-1, planned epochs) from a log's text."""
    epochs, accs, planned = [], [], 0
    for m in EPOCH.finditer(text):
        epochs.append(int(m.group(1)))
        accs.append(float(m.group(3)))
        planned = int(m.group(2))
    return epochs, accs, planned


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", metavar="LOG[=LABEL]")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="test top-1 per binary epoch")
    parser.add_argument("--target", type=float, default=None, help="draw a line at this top-1")
    parser.add_argument("--ymin", type=float, default=None)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for item in args.logs:
        path, _, label = item.partition("=")
        try:
            epochs, accs, planned = curve(Path(path).read_text(errors="replace"))
        except OSError as exc:
            print(f"error: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        if not epochs:
            print(f"error: {path} holds no 'binary epoch ... test top-1' line", file=sys.stderr)
            return 2
        if epochs[-1] < planned:
            label = f"{label or path} (stopped after epoch {epochs[-1]} of {planned})"
        ax.plot(epochs, accs, marker=".", label=label or path)
    if args.target is not None:
        ax.axhline(args.target, color="k", lw=0.8)
    if args.ymin is not None:
        ax.set_ylim(bottom=args.ymin)
    ax.set_xlabel("binary epoch")
    ax.set_ylabel("test top-1 [%] (during training)")
    ax.set_title(args.title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

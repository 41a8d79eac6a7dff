"""PaBT's Table 2 and Fig. 2 on Fashion-MNIST: what the scales, BOP and pruning each bring.

Six runs with the same architecture, data and epochs, all binary ones starting
from one float pre-training run:

- float: the float twin (the pre-training run itself);
- 1/1 BOP: M = N = 1, BOP for the binary weights, AMSGrad for the rest;
- 1/1 AMSGrad: M = N = 1, binary weights as latent weights trained by AMSGrad;
- MBN 3x3 BOP: M = N = 3, operation scales, no pruning;
- PaBT-I: M = N = 3 pruned to 1/1 by importance scores (Eq. 8);
- PaBT-R: the same schedule with random choices.

Writes ``OUT/table.md`` (top-1, final bit-widths, Bit-OPs, scaling factors),
``OUT/fig2.png`` (test top-1 and per-layer bit-widths over training steps,
t_start/t_end dotted), ``OUT/summary.json`` and every run folder under
``OUT/runs/``. Usage (reduced, as recorded in docs/RESULTS.md)::

    .venv/bin/python experiments/pabt_fashion.py --out out/pabt_fashion \\
        --width 0.125 --limit-train 8000 --limit-test 2000 --float-epochs 1 --epochs 3

or ``make experiment-pabt-fashion``. Re-running with the same ``--out``
resumes unfinished runs and reuses finished ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from binforge.model.checkpoint import CHECKPOINT_FILE
from binforge.model.metrics import plot_pabt_comparison
from binforge.model.train import RunConfig, train

#: (row label, run folder, method, multi-bit (M = N = --M), BOP) of Table 2's rows, float first.
ROWS = (
    ("float", "float", "float", False, True),
    ("1/1 BOP", "bop", "bop", False, True),
    ("1/1 AMSGrad only", "amsgrad", "bop", False, False),
    ("MBN 3x3 BOP, unpruned", "mbn", "mbn", True, True),
    ("PaBT-I 3x3 -> 1/1", "pabt", "pabt", True, True),
    ("PaBT-R 3x3 -> 1/1", "pabt-random", "pabt-random", True, True),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--arch", default="vgg-small")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--M", type=int, default=3, help="bases of the MBN and PaBT runs")
    p.add_argument("--epochs", type=int, default=10, help="binary epochs of every binary run")
    p.add_argument("--float-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.add_argument("--t-start", default="10%")
    p.add_argument("--t-end", default="75%")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


def run_one(config: RunConfig, run_dir: Path) -> dict:
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text())
    resume = (run_dir / CHECKPOINT_FILE).exists()
    print(f"== {config.method} M={config.M} N={config.N} bop={config.use_bop} -> {run_dir}",
          file=sys.stderr)  # fmt: skip
    return train(config, run_dir, resume=resume).metrics


def table(rows: list[tuple[str, dict]], command: str) -> str:
    lines = [
        "| model | bases M/N | optimizer | pruning | final W/A bits per layer | top-1 [%] | "
        "Bit-OPs / image | scaling factors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, metrics in rows:
        if metrics["method"] == "float":
            lines.append(f"| {label} | float | Adam | - | 32/32 | {metrics['final_top1']:.2f} | "
                         f"0 (float MACs {metrics['float_macs']}) | - |")  # fmt: skip
            continue
        bits = sorted({(r["weight_bits"], r["act_bits"]) for r in metrics["layers"]})
        bits_text = ", ".join(f"{w}/{a}" for w, a in bits)
        pruning = "✓ " + metrics["pabt"]["criterion"] if "pabt" in metrics else "✗"
        optimizer = "AMSGrad + BOP" if metrics["use_bop"] else "AMSGrad only"
        lines.append(
            f"| {label} | {metrics['M']}/{metrics['N']} | {optimizer} | {pruning} | {bits_text} | "
            f"{metrics['final_top1']:.2f} | {metrics['bit_ops']} | {metrics['scaling_factors']} |"
        )
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    base = RunConfig(data=args.data, arch=args.arch, width=args.width, batch_size=args.batch_size,
                     lr=args.lr, seed=args.seed, limit_train=args.limit_train,
                     limit_test=args.limit_test, t_start=args.t_start, t_end=args.t_end,
                     epochs=args.epochs, float_epochs=args.float_epochs)  # fmt: skip
    results: list[tuple[str, dict]] = []
    for label, folder, method, multi_bit, use_bop in ROWS:
        if method == "float":
            config = replace(base, method="float", epochs=args.float_epochs, M=1, N=1)
        else:
            bases = args.M if multi_bit else 1
            config = replace(base, method=method, M=bases, N=bases, use_bop=use_bop,
                             init=str(runs / "float"))  # fmt: skip
        metrics = run_one(config, runs / folder)
        metrics["use_bop"] = use_bop
        results.append((label, metrics))

    command = "experiments/pabt_fashion.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "table.md").write_text(table(results, command))
    comparison = {label: m for label, m in results if m["method"] in ("bop", "pabt", "pabt-random")
                  and m["use_bop"]}  # fmt: skip
    plot_pabt_comparison(comparison, args.out / "fig2.png",
                         title=f"{args.arch} x{args.width} on {args.data}: PaBT-I vs PaBT-R vs 1/1 BOP")  # fmt: skip
    summary = {label: {k: m[k] for k in ("final_top1", "bit_ops", "scaling_factors", "wall_time_s")}
               | {"bits": [(r["weight_bits"], r["act_bits"]) for r in m["layers"]]}
               for label, m in results}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

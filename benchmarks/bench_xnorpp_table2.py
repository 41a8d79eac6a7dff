"""XNOR-Net++ Table 2: how closely binary convolutions with each scale shape match a float one.

A float convolution ``W`` (64 x 64 x 3 x 3) on an input ``I`` (64 x 16 x 16),
both drawn from N(0, 1). The binary weights are fixed at ``sign(W)`` and the
input is ``sign(I)``; then

- direct binarization: ``sign(I) (*) sign(W)``, no scale;
- XNOR-Net: ``(sign(I) (*) sign(W)) . K alpha`` with the analytic ``alpha``
  and ``K`` (:mod:`binforge.model.methods.xnor`);
- XNOR-Net++ cases 1, 3, 4: Gamma (:class:`FusedGammaScale`) fitted with Adam
  to the float output, minimising the mean absolute difference.

The figure is the mean absolute difference per output element (the L1
distance), averaged over draws (mean and standard deviation). The
convolution is unpadded (14 x 14 outputs) unless ``--padding 1``.

    .venv/bin/python benchmarks/bench_xnorpp_table2.py --draws 10 --out out/bench_xnorpp_table2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from binforge.model.methods.xnor import FusedGammaScale, xnor_input_factor, xnor_weight_scale
from binforge.model.quant import hard_sign

__all__ = ["PAPER_TABLE2", "table2_draw", "table2", "main"]

#: XNOR-Net++ Table 2 (L1 distance, mean +- std over 100 draws).
PAPER_TABLE2 = {
    "direct": (6.36, 0.04),
    "xnor": (0.095, 0.002),
    "case1": (0.038, 0.001),
    "case3": (0.037, 0.001),
    "case4": (0.035, 0.001),
}

ROWS = ("direct", "xnor", "case1", "case3", "case4")


def _fit_gamma(case: int, weight: torch.Tensor, binary_out: torch.Tensor, float_out: torch.Tensor,
               steps: int, lr: float) -> float:
    """Fit XNOR-Net++ Gamma of ``case`` by Adam on the L1 distance; return the final distance."""
    scale = FusedGammaScale(case, binary_out.shape[1], tuple(binary_out.shape[-2:]))
    scale.reset_from_weight(weight)
    optimizer = torch.optim.Adam(scale.parameters(), lr=lr)
    for _ in range(steps):
        loss = (float_out - binary_out * scale.merged()).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((float_out - binary_out * scale.merged()).abs().mean())


def table2_draw(seed: int, channels: int = 64, size: int = 16, kernel: int = 3, padding: int = 0,
                steps: int = 1000, lr: float = 0.01, weight_std: float = 1.0) -> dict[str, float]:
    """One draw of ``W`` and ``I``: the L1 distance of every row of Table 2.

    ``W`` is drawn from N(0, ``weight_std``^2), ``I`` from N(0, 1).
    """
    generator = torch.Generator().manual_seed(seed)
    weight = weight_std * torch.randn(channels, channels, kernel, kernel, generator=generator)
    image = torch.randn(1, channels, size, size, generator=generator)
    float_out = F.conv2d(image, weight, padding=padding)
    # sign(I), then zero padding as in the float convolution (the paper's setting)
    binary_out = F.conv2d(hard_sign(image), hard_sign(weight), padding=padding)
    alpha = xnor_weight_scale(weight).view(1, -1, 1, 1)
    k_factor = xnor_input_factor(image, kernel, 1, padding)
    result = {
        "direct": float((float_out - binary_out).abs().mean()),
        "xnor": float((float_out - binary_out * alpha * k_factor).abs().mean()),
    }
    for case in (1, 3, 4):
        result[f"case{case}"] = _fit_gamma(case, weight, binary_out, float_out, steps, lr)
    return result


def table2(draws: int = 10, steps: int = 1000, lr: float = 0.01, padding: int = 0,
           first_seed: int = 0, weight_std: float = 1.0,
           progress: bool = False) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each row over ``draws`` draws (seeds ``first_seed...``)."""
    per_row: dict[str, list[float]] = {row: [] for row in ROWS}
    iterator = range(first_seed, first_seed + draws)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="draws", file=sys.stderr)
    for seed in iterator:
        for row, value in table2_draw(seed, padding=padding, steps=steps, lr=lr,
                                              weight_std=weight_std).items():
            per_row[row].append(value)
    summary = {}
    for row, values in per_row.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))
        summary[row] = {"mean": mean, "std": std, "values": values}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps per fitted Gamma")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--padding", type=int, default=0, choices=(0, 1))
    parser.add_argument("--weight-std", type=float, default=1.0,
                        help="standard deviation of W (the paper: N(0, 1))")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    summary = table2(args.draws, args.steps, args.lr, args.padding,
                     weight_std=args.weight_std, progress=True)
    seconds = time.perf_counter() - start
    print(f"{'row':8s} {'binforge L1':>18s} {'relative':>9s} {'paper L1':>16s}")
    for row in ROWS:
        s = summary[row]
        paper = PAPER_TABLE2[row]
        print(f"{row:8s} {s['mean']:11.4f} +- {s['std']:.4f} "
              f"{s['mean'] / summary['direct']['mean']:9.4f} {paper[0]:9.3f} +- {paper[1]:.3f}")
    print(f"{args.draws} draws, {args.steps} Adam steps, padding {args.padding}, "
          f"W ~ N(0, {args.weight_std:g}^2), {seconds:.1f} s")
    if args.out is not None:
        from binforge.outdir import atomic_output_dir, write_report

        with atomic_output_dir(args.out) as folder:
            write_report(folder, "bench_xnorpp_table2 " + " ".join(argv or sys.argv[1:]),
                         draws=args.draws, steps=args.steps, lr=args.lr, padding=args.padding,
                         weight_std=args.weight_std,
                         seconds=seconds, rows=summary, paper=PAPER_TABLE2)
            (folder / "table2.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

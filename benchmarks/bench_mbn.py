"""Time the fused MBN convolution against a float convolution and the naive M x N sum.

Forward + backward of one layer (default: 64 -> 64 channels, 3x3, padding 1,
16 x 16, batch 64, M = N = 3) on the CPU, two threads, after a warm-up; the
median of the repeats is reported. Run from the repository root::

    .venv/bin/python benchmarks/bench_mbn.py

Targets: fused <= 3.0x the float convolution, and >= 2.5x faster than the
naive sum of M x N separate binary convolutions (equal results: see
tests/model/test_layers.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from binforge.model.layers import MBNConv2d
from binforge.model.quant import binarize_threshold
from torch import nn


class NaiveMBNConv2d(nn.Module):
    """PaBT Eq. 10 as written: one padded binary convolution per (m, n), summed."""

    def __init__(self, fused: MBNConv2d):
        super().__init__()
        self.layer = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        p = layer.padding
        scales = layer.op_scales()
        total = 0
        for n in range(layer.N):
            a_n = binarize_threshold(x, layer.act.thresholds[n])
            a_n = F.pad(a_n, (p, p, p, p), value=layer.pad_value)
            for m in range(layer.M):
                total = total + scales[m, n] * F.conv2d(a_n, layer.weight_bases[m],
                                                        stride=layer.stride)
        return total


def time_forward_backward(module: nn.Module, x: torch.Tensor, warmup: int,
                          repeats: int) -> list[float]:
    """Wall seconds of each ``module(x).backward(upstream)`` (gradients to x and the parameters)."""
    upstream = torch.randn_like(module(x))
    samples = []
    for index in range(warmup + repeats):
        module.zero_grad(set_to_none=True)
        x.grad = None
        start = time.perf_counter()
        module(x).backward(upstream)
        elapsed = time.perf_counter() - start
        if index >= warmup:
            samples.append(elapsed)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--M", type=int, default=3)
    parser.add_argument("--N", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = args.channels
    x = torch.randn(args.batch, c, args.size, args.size, requires_grad=True)
    float_conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
    fused = MBNConv2d(c, c, 3, padding=1, M=args.M, N=args.N)
    naive = NaiveMBNConv2d(fused)
    with torch.no_grad():
        assert torch.allclose(fused(x), naive(x), rtol=1e-4, atol=1e-3)

    # Interleave the three so machine load drifts affect them alike.
    times: dict[str, list[float]] = {"float": [], "fused": [], "naive": []}
    modules = {"float": float_conv, "fused": fused, "naive": naive}
    for _ in range(3):
        for name, module in modules.items():
            times[name] += time_forward_backward(module, x, args.warmup, args.repeats)
    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}

    print(f"MBNConv2d M={args.M} N={args.N}, {c}->{c} 3x3, {args.size}x{args.size}, "
          f"batch {args.batch}, {args.threads} threads, forward+backward, median of "
          f"3 x {args.repeats} repeats")
    print(f"  {'':>6}  {'median':>9}  {'min':>9}")
    for name in ("float", "fused", "naive"):
        print(f"  {name:>6}: {median[name] * 1e3:6.1f} ms  {fastest[name] * 1e3:6.1f} ms")
    print(f"  fused / float : {median['fused'] / median['float']:.2f}x median, "
          f"{fastest['fused'] / fastest['float']:.2f}x min (target <= 3.0x)")
    print(f"  naive / fused : {median['naive'] / median['fused']:.2f}x median, "
          f"{fastest['naive'] / fastest['fused']:.2f}x min (target >= 2.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""First-layer bits against accuracy and images/s: one trained run, one array shape.

The bit-serial first layer runs one op per (weight plane, pixel plane) pair, so its
cycles follow ``binforge compile --first-bits`` while the hardware stays the same.
For each number of bits this compiles RUN, runs the golden integer model (the
accuracy of the bitstream) and the cycle model for the array, and writes:

- ``OUT/table.md``: bits, first-layer ops, golden top-1 and its agreement with the
  trained torch model, cycles per image, the first layer's cycles, images/s at the
  clock;
- ``OUT/sweep.json``: the same figures;
- ``OUT/sweep.png``: golden top-1 against images/s, each point named by its bits;
- ``OUT/nets/fbB`` and ``OUT/golden/fbB``: the compiled networks and golden reports.

Usage (as recorded in docs/RESULTS.md, "The first layer's bits on the iCEBreaker")::

    .venv/bin/python experiments/first_bits_sweep.py out/ice/pabt12 --out out/ice/fb_sweep \\
        --rows 8 --cols 1 --simd 16 --relay 8 --clock-mhz 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a binforge train run folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bits", default="10,8,6,5,4", help="first-layer bits to compile (default 10,8,6,5,4)")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--cols", type=int, default=1)
    p.add_argument("--simd", type=int, default=16)
    p.add_argument("--relay", type=int, default=4)
    p.add_argument("--clock-mhz", type=float, default=30.0, help="clock for images/s (default 30)")
    p.add_argument("--data", default="fashion-mnist", help="golden data set (default fashion-mnist)")
    p.add_argument("--limit", type=int, help="only the first N test images")
    args = p.parse_args(argv)
    try:
        args.bits = [int(b) for b in args.bits.split(",")]
    except ValueError:
        p.error(f"--bits must be integers separated by commas, not {args.bits!r}")
    if not args.bits or any(not 2 <= b <= 24 for b in args.bits):
        p.error(f"--bits must each be 2..24, not {args.bits}")
    if not (args.run / "model.pt").is_file():
        p.error(f"{args.run} has no model.pt: is it a finished `binforge train` run?")
    return args


def _binforge(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "binforge", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"binforge {' '.join(args)} failed:\n{done.stderr.strip()}")


def sweep_point(args: argparse.Namespace, bits: int, folder: Path) -> dict:
    """Compile RUN at ``bits`` into ``folder``, run the golden model, count cycles: one
    table row."""
    from binforge.compiler import ir
    from binforge.hw.plan import analytic_cycles, plan_network

    net_dir, golden_dir = folder / "nets" / f"fb{bits}", folder / "golden" / f"fb{bits}"
    _binforge("compile", str(args.run), "--first-bits", str(bits), "--out", str(net_dir))
    golden = ["golden", str(net_dir), "--data", args.data, "--out", str(golden_dir)]
    _binforge(*golden, *(["--limit", str(args.limit)] if args.limit else []))
    report = json.loads((golden_dir / "report.json").read_text())
    plan = plan_network(ir.load(net_dir), args.rows, args.cols, args.simd, relay=args.relay)
    cycles = analytic_cycles(plan)
    first = cycles["layers"][0]
    return {"bits": bits, "first_layer_ops": first["ops"], "golden_top1": report["accuracy"],
            "agreement": report.get("agreement"), "images": report["images"], "cycles": cycles["total"],
            "first_layer_cycles": first["cycles"],
            "images_per_second": args.clock_mhz * 1e6 / cycles["total"]}


def write_outputs(args: argparse.Namespace, rows: list[dict], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = f"{args.rows}x{args.cols}x{args.simd} relay {args.relay}"
    lines = [f"First-layer bits of {args.run} on {shape} at {args.clock_mhz:g} MHz "
             f"({rows[0]['images']} {args.data} test images)", "",
             "| first-layer bits | first-layer ops | golden top-1 [%] | agreement with torch [%] "
             "| cycles/image | first layer | images/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = "-" if r["agreement"] is None else f"{100 * r['agreement']:.2f}"
        lines.append(f"| {r['bits']} | {r['first_layer_ops']} | {100 * r['golden_top1']:.2f} | {agree} "
                     f"| {r['cycles']} | {r['first_layer_cycles']} | {r['images_per_second']:.0f} |")
    (folder / "table.md").write_text("\n".join(lines) + "\n")
    (folder / "sweep.json").write_text(json.dumps({"run": str(args.run), "shape": shape,
                                                     "clock_mhz": args.clock_mhz, "points": rows}, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["images_per_second"] for r in rows], [100 * r["golden_top1"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"{r['bits']} bits", (r["images_per_second"], 100 * r["golden_top1"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"images/s at {args.clock_mhz:g} MHz ({shape})")
    ax.set_ylabel("golden top-1 [%]")
    ax.set_title("first-layer bits: accuracy against throughput")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "sweep.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from binforge.outdir import atomic_output_dir

    args = parse_args(argv)
    with atomic_output_dir(args.out) as tmp:  # a failed sweep leaves no half-written folder
        rows = [sweep_point(args, bits, tmp) for bits in tqdm(args.bits, desc="first-layer bits", unit="point")]
        write_outputs(args, rows, tmp)
    print((args.out / "table.md").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

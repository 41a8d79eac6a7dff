"""Several seeds of one PaBT recipe, side by side: trained, compiled and golden top-1.

For every run folder (``binforge train`` output, e.g. from
``experiments/pabt_fashion_seeds.sh``) this compiles the network at the compiler's
default first/last-layer bits (10/8) and at 14/12, runs the golden integer model
over the whole test split and the trained torch model on this machine's CPU (fp32,
the reference the compiler's integers are checked against), and writes:

- ``OUT/table.md``: per seed the top-1 the run measured while training (on the
  device it trained on), torch on CPU, golden at 10/8 and 14/12 (with their
  agreement with torch), the gap to the float twin; mean and standard deviation;
- ``OUT/summary.json``: the same figures;
- ``OUT/curves.png``: test top-1 and bit-widths of every seed over training (Fig. 2
  of the PaBT paper);
- ``OUT/nets/`` and ``OUT/golden/``: the compiled networks and golden reports.

Usage (as recorded in docs/RESULTS.md)::

    .venv/bin/python experiments/pabt_seeds_summary.py --out out/kd/seeds20 \\
        --float out/kd/float5 out/kd/pabt_kd20s2 out/kd/pabt_kd20s3 ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from binforge.model.metrics import plot_pabt_comparison

#: (first-layer bits, classifier bits) compiled for every run: the compiler's default first.
BITS = ((10, 8), (14, 12))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="binforge train run folders (one per seed)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--float", dest="float_run", type=Path,
                   help="the float twin's run folder (for the gap column)")
    p.add_argument("--data", default="fashion-mnist")
    return p.parse_args(argv)


def _binforge(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "binforge", *args], check=True,
                   stdout=subprocess.DEVNULL)


def _metrics(run: Path) -> dict:
    path = run / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"{run} has no metrics.json: is it a finished `binforge train` run?")
    return json.loads(path.read_text())


def summarise(run: Path, out: Path, data: str) -> dict:
    metrics = _metrics(run)
    row = {"run": str(run), "seed": metrics["seed"], "device": metrics.get("runtime", {}).get("device", "cpu"),
           "train_top1": metrics["final_top1"], "wall_time_s": metrics["wall_time_s"],
           "bit_ops": metrics["bit_ops"], "golden": {}}
    for first, last in BITS:
        name = f"{run.name}_{first}_{last}"
        net, report = out / "nets" / name, out / "golden" / name
        if not (report / "report.json").is_file():
            _binforge("compile", str(run), "--out", str(net),
                      "--first-bits", str(first), "--last-bits", str(last))
            _binforge("golden", str(net), "--data", data, "--out", str(report))
        figures = json.loads((report / "report.json").read_text())
        row["golden"][f"{first}/{last}"] = {
            "accuracy": 100 * figures["accuracy"], "agreement": 100 * figures["agreement"]}
        row["torch_cpu_top1"] = 100 * figures["torch_accuracy"]
    return row


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def table(rows: list[dict], float_top1: float | None) -> str:
    head = ["seed", "device", "top-1 in training [%]", "torch on CPU [%]"]
    head += [f"golden {b} [%] (agreement)" for b in (f"{f}/{l}" for f, l in BITS)]
    head += ["gap to float [pp]"] if float_top1 is not None else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["seed"]), r["device"], f"{r['train_top1']:.2f}", f"{r['torch_cpu_top1']:.2f}"]
        cells += [f"{g['accuracy']:.2f} ({g['agreement']:.2f} %)" for g in r["golden"].values()]
        if float_top1 is not None:
            cells.append(f"{r['torch_cpu_top1'] - float_top1:+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["mean ± sd", "", _mean_sd([r["train_top1"] for r in rows]),
             _mean_sd([r["torch_cpu_top1"] for r in rows])]
    cells += [_mean_sd([r["golden"][f"{f}/{l}"]["accuracy"] for r in rows]) for f, l in BITS]
    if float_top1 is not None:
        cells.append(f"{statistics.mean(r['torch_cpu_top1'] for r in rows) - float_top1:+.2f}")
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [summarise(run, args.out, args.data) for run in args.runs]
    float_top1 = _metrics(args.float_run)["final_top1"] if args.float_run else None
    text = table(rows, float_top1)
    (args.out / "table.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(
        {"float_top1": float_top1, "runs": rows}, indent=2) + "\n")
    plot_pabt_comparison({f"seed {r['seed']}": _metrics(Path(r["run"])) for r in rows},
                         args.out / "curves.png", title="PaBT-I, seeds")
    print(text, end="")
    print(f"wrote {args.out}/table.md, summary.json, curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

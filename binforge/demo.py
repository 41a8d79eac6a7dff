"""``make demo``: the whole chain on the embedded default data set, in a few minutes.

train (digits, tiny, PaBT to 1/1) -> compile -> golden -> Verilog -> cocotb
bit-exact simulation -> iCE40 build -> a one-page summary (markdown + PNGs).

Each stage is the ``binforge`` command a user would type, run in order; a stage
whose command is not available in this binforge is not run and the summary says
so. A failing stage stops the demo with its error and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from binforge import cli

__all__ = ["main", "STAGES"]


@dataclass
class Stage:
    command: str
    title: str
    argv: list[str]
    folder: str
    figures: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    report: dict = field(default_factory=dict)
    seconds: float = 0.0


def stages(out: Path, *, board: str, simulator: str, images: int) -> list[Stage]:
    run, net, hw, gold, sim, build = (str(out / n) for n in ("run", "net", "hw", "golden", "sim", "build"))
    return [
        Stage("train", "Train and prune (PaBT 2x2 -> 1/1) on digits",
              ["train", "--data", "digits", "--arch", "mlp", "--width", "0.25", "--method", "pabt",
               "--M", "2", "--N", "2", "--float-epochs", "3", "--epochs", "6", "--seed", "0", "--out", run],
              run, ("accuracy",), ("curves.png", "pabt.png")),
        Stage("compile", "Compile to the integer IR", ["compile", run, "--out", net], net),
        Stage("golden", "Golden model on the digits test split",
              ["golden", net, "--data", "digits", "--run", run, "--out", gold], gold,
              ("accuracy", "torch_accuracy", "agreement")),
        Stage("hw", "Generate the accelerator (Amaranth -> Verilog)",
              ["hw", net, "--rows", "4", "--cols", "2", "--simd", "16", "--out", hw], hw,
              ("cycles", "lanes", "memory_bits")),
        Stage("sim", f"Bit-exact RTL simulation ({simulator})",
              ["sim", hw, "--net", net, "--simulator", simulator, "--data", "digits", "--limit", str(images), "--out", sim],
              sim, ("images", "matches", "mismatch_count", "analytic_cycles", "rtl_cycles_max")),
        Stage("build", f"FPGA build ({board}, YoWASP Yosys + nextpnr)",
              ["build", hw, "--net", net, "--board", board, "--out", build], build, ("fmax_sync_mhz", "images_per_second_at_fmax", "logic_cells_per_lane")),
    ]


STAGES = [s.command for s in stages(Path("out"), board="icebreaker", simulator="verilator", images=8)]


def _figures(report: dict, keys: tuple[str, ...]) -> dict:
    return {k: report[k] for k in keys if k in report}


def write_summary(out: Path, ran: list[Stage], skipped: list[Stage]) -> Path:
    lines = ["# binforge demo", "", "The whole chain on scikit-learn's digits (8x8, 10 classes).", ""]
    lines += ["| stage | command | seconds | figures |", "|---|---|---|---|"]
    for s in ran:
        figs = ", ".join(f"{k}={v}" for k, v in _figures(s.report, s.figures).items() if not isinstance(v, dict))
        lines.append(f"| {s.title} | `binforge {shlex.join(s.argv)}` | {s.seconds:.1f} | {figs} |")
    if skipped:
        lines += ["", "Not run (not available in this binforge): " + ", ".join(s.command for s in skipped)]
    for s in ran:
        for img in s.images:
            src = Path(s.folder) / img
            if src.is_file():
                shutil.copy(src, out / f"{s.command}-{img}")
                lines += ["", f"## {s.title}: {img}", "", f"![{img}]({s.command}-{img})"]
    for s in ran:
        lines += ["", f"## {s.command}: report.json", "", "```json", json.dumps(s.report, indent=1)[:3000], "```"]
    path = out / "SUMMARY.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m binforge.demo", description=__doc__)
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--board", default="icebreaker")
    parser.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    parser.add_argument("--images", type=int, default=8, help="images through the RTL simulation")
    parser.add_argument("--skip", default="", help="comma-separated stages not to run (e.g. build)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = {s for s in args.skip.split(",") if s}
    ran, skipped = [], []
    for stage in stages(out, board=args.board, simulator=args.simulator, images=args.images):
        if stage.command not in cli.COMMANDS or stage.command in skip:
            skipped.append(stage)
            continue
        print(f"\n== {stage.title}\n$ binforge {shlex.join(stage.argv)}", flush=True)
        start = time.perf_counter()
        status = cli.main(stage.argv)
        stage.seconds = time.perf_counter() - start
        if status != 0:
            print(f"demo: stage '{stage.command}' failed (exit {status}); stopping", file=sys.stderr)
            return status
        report = Path(stage.folder) / "report.json"
        stage.report = json.loads(report.read_text()) if report.is_file() else {}
        ran.append(stage)
    summary = write_summary(out, ran, skipped)
    print(f"\ndemo: ran {', '.join(s.command for s in ran)}; summary in {summary}")
    if skipped:
        print(f"demo: not run: {', '.join(s.command for s in skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Companion methods on Fashion-MNIST with the PaBT experiment's architecture, data and budget.

Every binary run starts from the same float pre-training run as
``experiments/pabt_fashion.py`` (same flags, same ``--out``: finished runs
there are reused) and trains for the same number of epochs:

- 1/1 BOP and PaBT-I (from the PaBT experiment, for reference);
- ste (plain BNN), bnn+ (R1 and R2), xnor (alpha; alpha and K), xnor++ (cases 1, 3, 4),
  iterative (forward, reverse, random, ascending, descending).

Writes ``OUT/companion_table.md`` (top-1, whether the model compiles to the
hardware rule, scaling factors, Bit-OPs, wall time) and
``OUT/companion_summary.json``. Usage (reduced, as recorded in docs/RESULTS.md)::

    .venv/bin/python experiments/companion_fashion.py --out out/companion_fashion \\
        --width 0.125 --limit-train 4000 --limit-test 1000 --float-epochs 1 --epochs 2
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from binforge.model.checkpoint import load_run
from binforge.model.export import UnsupportedForHardware
from binforge.model.metrics import binary_layers
from binforge.model.train import RunConfig

_PABT = Path(__file__).with_name("pabt_fashion.py")
_spec = importlib.util.spec_from_file_location("pabt_fashion", _PABT)
pabt_fashion = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pabt_fashion)

#: (row label, run folder, method, method options, M)
ROWS = (
    ("1/1 BOP (PaBT experiment)", "bop", "bop", {}, 1),
    ("PaBT-I 3x3 -> 1/1 (PaBT experiment)", "pabt", "pabt", {}, 3),
    ("ste (plain BNN)", "ste", "ste", {}, 1),
    ("bnn+ R1, beta 5, alpha p75", "bnnplus-r1", "bnn+", {"bnnplus_regularizer": "r1"}, 1),
    ("bnn+ R2, beta 5, alpha mean", "bnnplus-r2", "bnn+",
     {"bnnplus_regularizer": "r2", "bnnplus_alpha_init": "mean"}, 1),
    ("xnor (alpha)", "xnor", "xnor", {}, 1),
    ("xnor (alpha and K)", "xnor-k", "xnor", {"xnor_input_factor": True}, 1),
    ("xnor++ case 1", "xnorpp-1", "xnor++", {"xnorpp_case": 1}, 1),
    ("xnor++ case 3", "xnorpp-3", "xnor++", {"xnorpp_case": 3}, 1),
    ("xnor++ case 4", "xnorpp-4", "xnor++", {"xnorpp_case": 4}, 1),
    ("iterative forward", "iterative-forward", "iterative", {"iterative_order": "forward"}, 1),
    ("iterative reverse", "iterative-reverse", "iterative", {"iterative_order": "reverse"}, 1),
    ("iterative random", "iterative-random", "iterative", {"iterative_order": "random"}, 1),
    ("iterative ascending", "iterative-ascending", "iterative", {"iterative_order": "ascending"}, 1),
    ("iterative descending", "iterative-descending", "iterative",
     {"iterative_order": "descending"}, 1),
)


def compiles(run_dir: Path) -> str:
    """``"yes"``, or the first refusal's reason, for every binary layer's ``export_binary``."""
    model, _ = load_run(run_dir)
    for name, layer in binary_layers(model):
        try:
            layer.export_binary()
        except UnsupportedForHardware as exc:
            reason = str(exc).split(" (")[0].split(", but")[0]
            return f"no ({name}: {reason})"
    return "yes"


def main(argv: list[str] | None = None) -> int:
    args = pabt_fashion.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    base = RunConfig(data=args.data, arch=args.arch, width=args.width, batch_size=args.batch_size,
                     lr=args.lr, seed=args.seed, limit_train=args.limit_train,
                     limit_test=args.limit_test, t_start=args.t_start, t_end=args.t_end,
                     epochs=args.epochs, float_epochs=args.float_epochs)
    float_metrics = pabt_fashion.run_one(
        replace(base, method="float", epochs=args.float_epochs, M=1, N=1), runs / "float")
    # The sensitivity ranking is shared by the ascending and descending runs.
    cache = str(runs / "iterative-sensitivity.json")
    rows = [("float (pre-training)", float_metrics, "-", runs / "float")]
    for label, folder, method, options, m in ROWS:
        m = args.M if m == 3 else 1
        if method == "iterative":
            options = dict(options, iterative_cache=cache)
        config = replace(base, method=method, M=m, N=m, init=str(runs / "float"),
                         method_options=dict(options))
        metrics = pabt_fashion.run_one(config, runs / folder)
        rows.append((label, metrics, compiles(runs / folder), runs / folder))

    command = "experiments/companion_fashion.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["| method | top-1 [%] | compiles to the hardware rule | scaling factors | "
             "Bit-OPs / image | wall time [s] |", "|---|---|---|---|---|---|"]
    for label, metrics, ok, _ in rows:
        lines.append(f"| {label} | {metrics['final_top1']:.2f} | {ok} | "
                     f"{metrics.get('scaling_factors', '-')} | {metrics.get('bit_ops', '-')} | "
                     f"{metrics.get('wall_time_s', 0):.0f} |")
    text = "\n".join(lines) + f"\n\nCommand: `{command}`\n"
    (args.out / "companion_table.md").write_text(text)
    summary = {label: {"top1": m["final_top1"], "compiles": ok,
                       "scaling_factors": m.get("scaling_factors"), "bit_ops": m.get("bit_ops"),
                       "wall_time_s": m.get("wall_time_s"),
                       "iterative_order": m.get("iterative", {}).get("order"),
                       "sensitivity_error": m.get("iterative", {}).get("sensitivity_error")}
               for label, m, ok, _ in rows}
    (args.out / "companion_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

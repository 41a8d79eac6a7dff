"""QONNX export check: NET/network.onnx run by QONNX's executor against the golden model.

Usage::

    python benchmarks/check_qonnx.py NET [NET ...] --data SPEC [--split test] [--limit 100]

Each NET is a folder written by ``binforge compile ... --qonnx`` (network.json,
weights.npz, network.onnx). The script runs the first ``--limit`` images of the data
set through the ONNX file with ``qonnx.core.onnx_exec.execute_onnx`` (batch size as
exported) and through ``binforge.sim.golden.run_network``, and prints, per network,
the images, the logits that differ and the predictions that differ (both should be 0).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from binforge.compiler import ir
from binforge.compiler.qonnx_export import run_qonnx
from binforge.model.data import load_dataset
from binforge.sim.golden import run_network

__all__ = ["check_network", "main"]


def check_network(net_dir: Path, images: np.ndarray) -> dict:
    """Run ``images`` through ``net_dir``'s IR and its network.onnx; count the differences."""
    from qonnx.core.modelwrapper import ModelWrapper

    net = ir.load(net_dir)
    model = ModelWrapper(str(net_dir / "network.onnx"))
    start = time.perf_counter()
    logits = run_qonnx(model, images)
    seconds = time.perf_counter() - start
    golden = run_network(net, images)
    return {
        "network": net.name,
        "layers": len(net.layers),
        "max_acc_width": max(layer.acc_width for layer in net.compute_layers),
        "onnx_nodes": len(model.graph.node),
        "images": int(len(images)),
        "logit_mismatches": int(np.sum(logits != golden.logits)),
        "prediction_mismatches": int(np.sum(np.argmax(logits, axis=1) != golden.predictions)),
        "qonnx_seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="+", type=Path, metavar="NET")
    parser.add_argument("--data", required=True, metavar="SPEC")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args(argv)
    images = load_dataset(args.data, args.split, limit=args.limit).as_arrays()[0]
    failed = False
    for net_dir in args.nets:
        result = check_network(net_dir, images)
        failed |= bool(result["logit_mismatches"] or result["prediction_mismatches"])
        print(json.dumps({"net": str(net_dir), **result}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Golden-model inference time against the torch model's float eval of the same network.

    .venv/bin/python benchmarks/bench_golden.py --run RUN/ --images 2000
    .venv/bin/python benchmarks/bench_golden.py --arch vgg-small --width 0.25 --shape 1,28,28

With ``--run`` the trained run is compiled and its data set's test split is used;
otherwise a freshly built model (batch-norm statistics from random images) runs on
random images. Both sides use one thread and 256 images per call; each time is the
best of ``--repeat`` passes. The figure of merit is golden time / torch time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from binforge.compiler.compile import compile_model
from binforge.compiler.torch_reference import torch_logits
from binforge.sim.golden import run_network


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def built_model(arch: str, width: float, shape: tuple[int, int, int], bases: int, images: np.ndarray):
    from binforge.model.arch import build_model
    from binforge.model.data import batch_to_input

    model = build_model(arch, in_shape=shape, num_classes=10, width=width, M=bases, N=bases)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(batch_to_input(images[:256]))
    return model.eval(), {"arch": arch, "width": width, "shape": list(shape), "M": bases, "N": bases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained run folder (compiled here)")
    parser.add_argument("--data", help="data set spec (default: the run's)")
    parser.add_argument("--arch", default="vgg-small")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--shape", default="1,28,28", help="C,H,W without --run")
    parser.add_argument("--bases", type=int, default=1, help="M = N without --run")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--popcount", action="store_true", help="also time the popcount method")
    parser.add_argument("--out", help="write OUT/bench_golden.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.run:
        from binforge.model.checkpoint import load_run
        from binforge.model.data import load_dataset

        model, config = load_run(args.run)
        spec = args.data or config["data"]
        images = load_dataset(spec, "test", limit=args.images).as_arrays()[0]
        shape, classes = tuple(config["in_shape"]), int(config["num_classes"])
        what = {"run": str(Path(args.run).resolve()), "data": spec, "arch": config["arch"],
                "method": config["method"]}
    else:
        shape = tuple(int(v) for v in args.shape.split(","))
        images = np.random.default_rng(0).integers(0, 256, (args.images,) + shape).astype(np.uint8)
        model, what = built_model(args.arch, args.width, shape, args.bases, images)
        classes = 10
    net, _ = compile_model(model, shape, classes)

    golden_s = best_time(lambda: run_network(net, images), args.repeat)
    torch_s = best_time(lambda: torch_logits(model, images, batch_size=256), args.repeat)
    figures = {**what, "images": len(images), "golden_s": golden_s, "torch_s": torch_s,
               "ratio": golden_s / torch_s, "threads": 1, "machine": platform.machine()}
    if args.popcount:
        figures["golden_popcount_s"] = best_time(lambda: run_network(net, images, method="popcount"), 1)
    print(f"{len(images)} images: golden {golden_s:.3f} s, torch float eval {torch_s:.3f} s, "
          f"ratio {golden_s / torch_s:.2f}x"
          + (f"; popcount method {figures['golden_popcount_s']:.3f} s" if args.popcount else ""))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_golden.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""How fast the data loaders deliver batches: load time and images per second.

Measures, for each data set named: the time to load both splits, and the
throughput of one pass over the train split as float32 model input in batches
(``iterate_batches`` slicing whole batches, and a ``DataLoader`` over items with
``collate_to_input``), with and without the pad-4 crop / flip augmentation.
One thread, so the figure is what the loader costs a training step.

    .venv/bin/python benchmarks/bench_data.py --data digits fashion-mnist --out out/bench_data
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from binforge.model.data import collate_to_input, iterate_batches, load_dataset

from binforge.outdir import atomic_output_dir, write_report


def measure(spec: str, batch_size: int) -> dict[str, float]:
    start = time.perf_counter()
    train = load_dataset(spec, "train")
    load_dataset(spec, "test")
    figures = {"load_s": time.perf_counter() - start, "train_images": len(train)}
    for augment in (False, True):
        train.augment = augment
        tag = "augmented" if augment else "plain"
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in iterate_batches(train, batch_size, shuffle=True, generator=generator):
            pass
        figures[f"iterate_batches_{tag}_img_per_s"] = len(train) / (time.perf_counter() - start)
        loader = torch.utils.data.DataLoader(
            train, batch_size=batch_size, shuffle=True, collate_fn=collate_to_input
        )
        start = time.perf_counter()
        for _ in loader:
            pass
        figures[f"dataloader_{tag}_img_per_s"] = len(train) / (time.perf_counter() - start)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["digits", "fashion-mnist"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default="out/bench_data")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {spec: measure(spec, args.batch_size) for spec in args.data}
    print(
        f"{'data':16} {'load s':>7} {'slice':>10} {'slice+aug':>10} {'loader':>10} {'loader+aug':>10}"
    )
    for spec, f in results.items():
        print(
            f"{spec:16} {f['load_s']:7.2f} {f['iterate_batches_plain_img_per_s']:10.0f} "
            f"{f['iterate_batches_augmented_img_per_s']:10.0f} {f['dataloader_plain_img_per_s']:10.0f} "
            f"{f['dataloader_augmented_img_per_s']:10.0f}"
        )
    with atomic_output_dir(args.out) as folder:
        write_report(folder, "bench_data", batch_size=args.batch_size, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``binforge train``: float pre-training, then binary training (BOP, MBN, PaBT, companion methods)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  binforge train --data digits --arch mlp --width 0.25 --method pabt --out runs/pabt
  binforge train --data fashion-mnist --arch vgg-small --width 0.25 --method bop \\
      --float-epochs 2 --epochs 5 --out runs/bop
  binforge train ... --out runs/bop --resume          # continue an interrupted run
  torchrun --nproc-per-node 2 -m binforge train ... --out runs/ddp   # data-parallel

Under torchrun every process trains on its share of each global batch of
--batch-size images (DistributedDataParallel; gloo on CPU, nccl on CUDA); rank 0
writes the run folder. See docs/distributed.md.

--t-start/--t-end take steps (300), epochs of the binary phase (2ep, 1.5ep) or a
percentage of the binary phase (25%).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from binforge.model.train import ARCHS, RunConfig, method_names

    defaults = RunConfig()
    p = subparsers.add_parser(
        "train",
        help="train (and prune) a binary network",
        description="Train a network: float pre-training, then the binary method from the "
        "float weights. Writes RUN/model.pt + config.json (for `binforge compile`), "
        "metrics.json, curves.png, report.json, and for PaBT prune_log.jsonl and pabt.png.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=defaults.data,
                   help="digits | fashion-mnist[=PATH] | cifar10=PATH | folder=PATH | "
                   "synthetic[=C,H,W,K] (default: %(default)s)")  # fmt: skip
    p.add_argument("--arch", choices=ARCHS, default=defaults.arch, help="(default: %(default)s)")
    p.add_argument("--width", type=float, default=defaults.width,
                   help="channel multiplier (default: %(default)s)")
    p.add_argument("--method", choices=method_names(), default=defaults.method,
                   help="(default: %(default)s)")
    p.add_argument("--M", type=int, default=defaults.M, help="weight bases (default: %(default)s)")
    p.add_argument("--N", type=int, default=defaults.N,
                   help="activation bases (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=defaults.epochs,
                   help="epochs of the method (binary phase) (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=defaults.lr,
                   help="Adam/AMSGrad learning rate, cosine to 0 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--float-epochs", type=int, default=defaults.float_epochs,
                       help="float pre-training epochs (default: %(default)s)")
    start.add_argument("--init", metavar="RUN_OR_CKPT",
                       help="start from a float run folder or float state dict instead")
    p.add_argument("--limit-train", type=int, metavar="N", help="use the first N training images")
    p.add_argument("--limit-test", type=int, metavar="N", help="use the first N test images")
    p.add_argument("--augment", action="store_true",
                   help="pad-4 random crop and horizontal flip on training batches")
    p.add_argument("--no-bop", action="store_true",
                   help="AMSGrad only: binary bases as latent weights (ablation)")
    p.add_argument("--bop-threshold", type=float, default=defaults.bop_threshold,
                   help="BOP tau (default: %(default)s)")
    p.add_argument("--bop-gamma", type=float, default=defaults.bop_gamma,
                   help="BOP phi, adaptivity rate (default: %(default)s)")
    p.add_argument("--t-start", default=defaults.t_start,
                   help="PaBT: first pruning step (default: %(default)s)")
    p.add_argument("--t-end", default=defaults.t_end,
                   help="PaBT: last pruning step (default: %(default)s)")
    p.add_argument("--psi", type=float, default=None,
                   help="PaBT pruning ratio (default: (M*N-1)/(M*N), one op per layer)")
    p.add_argument("--kappa", type=float, default=defaults.kappa,
                   help="PaBT: weight of the first-order term of Eq. 8 (default: %(default)s)")
    from binforge.model.methods import add_method_arguments

    add_method_arguments(p)
    p.add_argument("--recalibrate-bn", type=int, default=defaults.recalibrate_bn, metavar="BATCHES",
                   help="after the last binary epoch, recompute batch-norm running statistics "
                   "exactly over this many training batches (at most one epoch; 0: off) "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--distill", metavar="TEACHER",
                   help="knowledge distillation in the binary phase from a float teacher: a float "
                   "run folder or a float state dict of this --arch")  # fmt: skip
    p.add_argument("--distill-weight", type=float, default=defaults.distill_weight, metavar="W",
                   help="loss = (1 - W) * cross entropy + W * T^2 * KL(teacher || student) "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--distill-temperature", type=float, default=defaults.distill_temperature,
                   metavar="T", help="softmax temperature of the distillation term "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="height and width of folder=PATH images (default: 224)")
    from binforge.model.distributed import AMP_MODES, DEVICES

    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="cpu, cuda (one GPU per process: cuda:LOCAL_RANK) or auto "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--amp", choices=AMP_MODES, default=None,
                   help="mixed-precision autocast on CUDA (fp16 with a gradient scaler)")
    p.add_argument("--tf32", action="store_true",
                   help="on CUDA, float32 convolutions and matrix products in TF32 (faster; the "
                   "accuracy measured in training then drifts from the CPU float32 reference)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for model and input (GPU convolutions)")
    p.add_argument("--no-sync-bn", action="store_true",
                   help="under torchrun: batch norm over each rank's share, not the global batch")
    p.add_argument("--resume", action="store_true", help="continue RUN/ from its checkpoint")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from binforge.model.distributed import init_distributed, shutdown_distributed
    from binforge.model.methods import method_options_from_args
    from binforge.model.train import RunConfig, train

    config = RunConfig(
        data=args.data, arch=args.arch, width=args.width, method=args.method, M=args.M, N=args.N,
        epochs=args.epochs, float_epochs=args.float_epochs, init=args.init,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, limit_train=args.limit_train,
        limit_test=args.limit_test, augment=args.augment, use_bop=not args.no_bop,
        bop_threshold=args.bop_threshold, bop_gamma=args.bop_gamma, t_start=args.t_start,
        t_end=args.t_end, psi=args.psi, kappa=args.kappa,
        method_options=method_options_from_args(args), image_size=args.image_size,
        recalibrate_bn=args.recalibrate_bn, distill=args.distill,
        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
    )  # fmt: skip
    context = init_distributed(args.device)
    try:
        result = train(config, args.out, resume=args.resume, distributed=context, amp=args.amp,
                       channels_last=args.channels_last, sync_batch_norm=not args.no_sync_bn, tf32=args.tf32)  # fmt: skip
    finally:
        shutdown_distributed(context)
    if not context.is_main:
        return 0
    metrics = result.metrics
    bits = ", ".join(f"{r['name']} {r['weight_bits']}/{r['act_bits']}" for r in metrics["layers"])
    print(f"{config.method} {config.arch} on {config.data}: top-1 {metrics['final_top1']:.2f}% "
          f"after {len(metrics['history'])} epochs, {metrics['bit_ops']} Bit-OPs, "
          f"{metrics['scaling_factors']} scaling factors, {metrics['wall_time_s']:.1f} s"
          + (f" on {context.world_size} processes" if context.distributed else ""))  # fmt: skip
    if bits:
        print(f"bit-widths (weight/activation): {bits}")
    if "pabt" in metrics:
        print(f"pruned {metrics['pabt']['pruned']} binary convolutions between steps "
              f"{metrics['pabt']['t_start']} and {metrics['pabt']['t_end']}")
    if "bn_recalibration" in metrics:
        record = metrics["bn_recalibration"]
        print(f"batch norm recalibrated over {record['batches']} training batches: test accuracy "
              f"{record['top1_before']:.2f}% -> {record['top1_after']:.2f}%")
    print(f"wrote {result.run_dir}", file=sys.stdout)
    return 0

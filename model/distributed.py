"""Data-parallel training across processes: torchrun detection, process group, synced batch norm.

``binforge train`` started by ``torchrun --nproc-per-node N`` runs one process
per rank. :func:`init_distributed` reads the variables torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the
process group (gloo on CPU, nccl on CUDA); without them it returns a
single-process :class:`DistributedContext` and nothing changes.

The training loop (:func:`binforge.model.train.train`) wraps the model in
``DistributedDataParallel``, splits every global batch across the ranks and
keeps the replicas identical. Two helpers here serve that:

- :func:`synchronize_batch_norm` makes every ``BatchNorm1d``/``BatchNorm2d``
  compute its training statistics over the *global* batch (all ranks), with
  gradients through the all-reduce, so N processes compute what one process
  computes on the whole batch. torch's ``nn.SyncBatchNorm`` only runs on GPUs;
  :class:`SyncedBatchNorm1d`/:class:`SyncedBatchNorm2d` run on CPU (gloo) and GPU.
- :func:`assert_replicas_equal` all-gathers a fingerprint of a model's
  parameters and buffers (PaBT masks included) and raises if any rank differs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from binforge.errors import BinforgeError

__all__ = [
    "DEVICES",
    "AMP_MODES",
    "DistributedContext",
    "launched_by_torchrun",
    "resolve_device",
    "init_distributed",
    "shutdown_distributed",
    "float32_math",
    "SyncedBatchNorm1d",
    "SyncedBatchNorm2d",
    "synchronize_batch_norm",
    "restore_batch_norm",
    "all_reduce_sum",
    "broadcast_buffers",
    "assert_replicas_equal",
]

#: ``--device`` choices.
DEVICES = ("cpu", "cuda", "auto")
#: ``--amp`` choices (autocast dtypes; CUDA only).
AMP_MODES = ("bf16", "fp16")

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly one-process) data-parallel run.

    Attributes
    ----------
    rank, world_size, local_rank:
        This process's global rank, the number of processes, its rank on its node.
    device:
        The device this process trains on (``cuda:LOCAL_RANK`` on GPUs).
    backend:
        ``"gloo"`` or ``"nccl"`` when a process group is up, else None.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether torchrun (or ``torch.distributed.run``) started this process."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda`` (``cuda:local_rank``; an error without a GPU) or ``auto`` (cuda if any)."""
    if device not in DEVICES:
        raise BinforgeError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BinforgeError("--device cuda needs a CUDA GPU and a CUDA build of torch; "
                            "use --device cpu (or auto)")  # fmt: skip
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise BinforgeError(f"local rank {local_rank} has no GPU of its own ({count} visible): "
                            f"start at most {count} processes per node")  # fmt: skip
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", *, timeout_s: float = 1800.0) -> DistributedContext:
    """Join torchrun's process group if torchrun started this process; pick the device.

    Parameters
    ----------
    device:
        ``cpu``, ``cuda`` or ``auto``.
    timeout_s:
        How long a collective waits for the other ranks before failing.

    Returns
    -------
    DistributedContext
        Rank 0 of 1 on ``device`` when not launched by torchrun.
    """
    if not launched_by_torchrun():
        return DistributedContext(device=resolve_device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    target = resolve_device(device, local_rank)
    if world_size == 1:
        return DistributedContext(0, 1, local_rank, target)
    backend = "nccl" if target.type == "cuda" else "gloo"
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))  # fmt: skip
    return DistributedContext(rank, world_size, local_rank, target, backend)


@contextlib.contextmanager
def float32_math(device: torch.device | str, allow_tf32: bool = False):
    """Float32 convolutions and matrix products in IEEE float32 on CUDA, for the block.

    On Ampere and newer GPUs cuDNN may round float32 convolution inputs to TF32 (a
    10-bit mantissa; torch's default for convolutions). A binary network's activations
    are signs of pre-activations, so that rounding flips some of them near zero: the
    accuracy measured while training on a GPU then differs from the same weights on a
    CPU, the float32 reference ``binforge compile`` and ``binforge golden`` compare with.
    Inside the block both cuDNN and cuBLAS are held to float32 (or allowed TF32 with
    ``allow_tf32``); the previous settings come back on exit. Elsewhere nothing changes.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.allow_tf32 = matmul.allow_tf32 = bool(allow_tf32)
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def shutdown_distributed(context: DistributedContext) -> None:
    """Leave the process group :func:`init_distributed` joined (no-op for one process)."""
    if context.backend is not None and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------
# Batch norm over the global batch
# --------------------------------------------------------------------------------------


def _group_is_up() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _SumOverRanks(torch.autograd.Function):
    """``y = sum over ranks of x`` (the same on every rank); the gradient is summed the same way."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def _synced_batch_norm(module: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Training-mode batch norm with statistics over every rank's batch (differentiable)."""
    all_reduce = _SumOverRanks.apply
    module._check_input_dim(x)
    dtype = x.dtype
    x = x.float()
    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, channels] + [1] * (x.dim() - 2)
    count = x.new_tensor([x.numel() // channels if x.numel() else 0.0])
    total = all_reduce(torch.cat([x.sum(dims), count]))
    n = total[channels].detach()
    if float(n) <= 1:
        raise ValueError(f"batch norm needs more than one value per channel over all ranks, "
                         f"got {int(n)}")  # fmt: skip
    mean = total[:channels] / n
    centred = x - mean.reshape(shape)
    var = all_reduce((centred * centred).sum(dims)) / n  # biased, as in training-mode BN
    if module.track_running_stats and module.running_mean is not None:
        with torch.no_grad():
            module.num_batches_tracked.add_(1)
            factor = (1.0 / float(module.num_batches_tracked) if module.momentum is None
                      else module.momentum)  # fmt: skip
            module.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            module.running_var.mul_(1 - factor).add_(var.detach() * (n / (n - 1)), alpha=factor)
    y = centred * torch.rsqrt(var + module.eps).reshape(shape)
    if module.affine:
        y = y * module.weight.reshape(shape) + module.bias.reshape(shape)
    return y.to(dtype)


class SyncedBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics cover the global batch of all ranks.

    Outside training, or without a process group of more than one rank, it is
    plain ``BatchNorm1d``. Same parameters, buffers and state-dict keys.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and _group_is_up():
            return _synced_batch_norm(self, x)
        return super().forward(x)


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics cover the global batch of all ranks.

    Outside training, or without a process group of more than one rank, it is
    plain ``BatchNorm2d``. Same parameters, buffers and state-dict keys.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and _group_is_up():
            return _synced_batch_norm(self, x)
        return super().forward(x)


_SYNCED = {nn.BatchNorm1d: SyncedBatchNorm1d, nn.BatchNorm2d: SyncedBatchNorm2d}
_PLAIN = {synced: plain for plain, synced in _SYNCED.items()}


def synchronize_batch_norm(model: nn.Module) -> int:
    """Make every plain ``BatchNorm1d``/``2d`` of ``model`` a synced one, in place; returns how many.

    The modules keep their identity (only their class changes; the synced
    classes add no state), so optimizers built before or after hold the same
    parameters and state dicts are unchanged.
    """
    changed = 0
    for module in model.modules():
        synced = _SYNCED.get(type(module))
        if synced is not None:
            module.__class__ = synced
            changed += 1
    return changed


def restore_batch_norm(model: nn.Module) -> int:
    """Undo :func:`synchronize_batch_norm` (plain batch-norm classes again); returns how many."""
    changed = 0
    for module in model.modules():
        plain = _PLAIN.get(type(module))
        if plain is not None:
            module.__class__ = plain
            changed += 1
    return changed


# --------------------------------------------------------------------------------------
# Collectives
# --------------------------------------------------------------------------------------


def all_reduce_sum(values: list[float], context: DistributedContext) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (float64; the values themselves for one rank)."""
    if not context.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


def broadcast_buffers(module: nn.Module, context: DistributedContext) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics, masks); no-op for one rank.

    DDP does this before every forward pass; after an epoch's last step the
    ranks' batch-norm statistics differ when each normalised its own share.
    """
    if not context.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def _fingerprint(module: nn.Module) -> tuple[list[str], torch.Tensor]:
    names, parts = [], []
    for name, tensor in module.state_dict().items():
        if not torch.is_tensor(tensor) or tensor.numel() == 0:
            continue
        flat = tensor.detach().double().flatten()
        ramp = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        names.append(name)
        parts.append(torch.stack([flat.sum(), (flat * ramp).sum() / flat.numel()]))
    return names, torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def assert_replicas_equal(module: nn.Module, context: DistributedContext, what: str) -> None:
    """Raise RuntimeError unless ``module``'s parameters and buffers agree on every rank.

    Each rank contributes a fingerprint (per tensor: the sum and a position-
    weighted sum, in float64); replicas updated by identical steps give
    bitwise identical fingerprints.
    """
    if not context.distributed:
        return
    names, local = _fingerprint(module)
    local = local.to(context.device)
    gathered = [torch.empty_like(local) for _ in range(context.world_size)]
    dist.all_gather(gathered, local)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, local):
            differing = (other != local).nonzero().flatten().tolist()
            keys = sorted({names[i // 2] for i in differing})
            raise RuntimeError(f"{what}: rank {rank} and rank {context.rank} disagree on "
                               f"{', '.join(keys[:5])}")  # fmt: skip

"""Batch-norm recalibration: exact running statistics for the weights a binary run ends with.

BOP flips binary weights directly, so the batch-norm running statistics (momentum
averages over past batches) lag behind the network that training ends with, and
test accuracy with running statistics falls below what the weights can do. The
compiler folds the running statistics into the integer thresholds the hardware
compares against, so the statistics a run saves are what the accelerator computes.

:func:`recalibrate_batch_norm` re-estimates every batch norm's ``running_mean``
and ``running_var`` from scratch as exact cumulative averages over some batches
(torch's ``momentum=None``): the mean of the per-batch means and the mean of the
per-batch *unbiased* variances, as training-mode batch norm records them. Only
the batch norms run in training mode; every other module runs in eval mode, so
activation quantizers, binary layers and method hooks compute what inference
computes and change nothing. Parameters, masks, other buffers and optimizers
are untouched.

Under data-parallel training each rank passes its share of every global batch:
the synced batch norms of :mod:`binforge.model.distributed` then average over
the global batch, so every rank ends with the one-process statistics (up to
float rounding). Plain batch norms (``--no-sync-bn``) give each rank the
statistics of its own share; the caller broadcasts rank 0's afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

import torch
from torch import nn

__all__ = ["batch_norm_layers", "recalibrate_batch_norm"]


def batch_norm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every batch norm of ``model`` that keeps running statistics, in module order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.track_running_stats and module.running_mean is not None]  # fmt: skip


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module, batches: Iterable[torch.Tensor], max_batches: int | None = None
) -> int:
    """Recompute the running statistics of every batch norm of ``model`` from ``batches``.

    Parameters
    ----------
    model:
        The network (not a DistributedDataParallel wrapper: pass its ``.module``).
    batches:
        Model inputs, one tensor per batch, on the model's device; the statistics
        are a deterministic function of them and their order.
    max_batches:
        Use at most this many batches (None: all). 0, or a model without batch
        norm, leaves the model exactly as it is (mode included).

    Returns
    -------
    int
        The number of batches the statistics average (0: nothing changed).

    Each batch norm's statistics are reset, then averaged with equal weight per
    batch (``momentum=None``; ``num_batches_tracked`` ends as the batch count);
    each module's ``momentum`` is restored afterwards. The model is left in eval
    mode. A failing forward pass restores the previous statistics. Raises
    ValueError if ``batches`` is empty or ``max_batches`` is negative.
    """
    if max_batches is not None and max_batches < 0:
        raise ValueError(f"max_batches must be >= 0 or None, not {max_batches!r}")
    norms = [module for _, module in batch_norm_layers(model)]
    if max_batches == 0 or not norms:
        return 0
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no batches to recalibrate batch norm with")
    saved = [(module.momentum, module.running_mean.clone(), module.running_var.clone(),
              module.num_batches_tracked.clone()) for module in norms]  # fmt: skip
    count = 0
    try:
        model.eval()
        for module in norms:
            module.reset_running_stats()
            module.momentum = None
            module.train()
        for inputs in chain([first], iterator):
            if max_batches is not None and count >= max_batches:
                break
            model(inputs)
            count += 1
    except BaseException:
        for module, (_, mean, var, tracked) in zip(norms, saved, strict=True):
            module.running_mean.copy_(mean)
            module.running_var.copy_(var)
            module.num_batches_tracked.copy_(tracked)
        raise
    finally:
        for module, (momentum, *_) in zip(norms, saved, strict=True):
            module.momentum = momentum
        model.eval()
    return count

"""Binarization with straight-through gradients, and the weight and activation bases of MBN layers.

Pure functions first (usable by every training method), then the one
``nn.Module`` quantizer, :class:`ActivationBases`.

The bit convention is the IR's: +1 and -1, ``sign(0) = +1``. A value ``x``
binarized against a threshold ``t`` is +1 exactly when ``x >= t``.

Straight-through estimator (STE) used throughout: the forward pass is the hard
sign, the backward pass is the derivative of ``hardtanh`` (gradient 1 where
``|x| <= 1``, inclusive, 0 elsewhere).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "hard_sign",
    "sign_ste",
    "binarize_threshold",
    "shifted_sign_bases",
    "fit_base_scales",
    "default_activation_thresholds",
    "ActivationBases",
]


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``x >= 0``, ``-1`` elsewhere (no gradient; ``sign(0) = +1``)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _SignSTE(torch.autograd.Function):
    """Hard sign forward, hardtanh derivative backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Binarize to +-1 (``sign(0) = +1``) with the straight-through gradient.

    The gradient passes unchanged where ``|x| <= 1`` and is zero elsewhere
    (the derivative of ``hardtanh``).
    """
    return _SignSTE.apply(x)


def binarize_threshold(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """+1 where ``x >= threshold``, else -1, with the straight-through gradient.

    This is ``sign_ste(x - threshold)``: the gradient reaches ``x`` where
    ``|x - threshold| <= 1`` and reaches ``threshold`` as the negative of that
    (summed over the broadcast dimensions by autograd).
    """
    return sign_ste(x - threshold)


def shifted_sign_bases(weight: torch.Tensor, num_bases: int) -> torch.Tensor:
    """ABC-Net's weight bases ``B_m = sign(W - mean(W) + u_m * std(W))``.

    ``u_m = linspace(-1, 1, num_bases)`` (``u = 0`` when ``num_bases == 1``);
    mean and standard deviation are over the whole tensor (one per layer).

    Parameters
    ----------
    weight:
        A float weight tensor of any shape.
    num_bases:
        M, the number of bases.

    Returns
    -------
    torch.Tensor
        ``(num_bases, *weight.shape)`` holding exactly +-1.
    """
    if num_bases < 1:
        raise ValueError(f"num_bases must be at least 1, not {num_bases!r}")
    weight = weight.detach()
    centred = weight - weight.mean()
    std = weight.std(unbiased=False) if weight.numel() > 1 else weight.new_zeros(())
    shifts = _spread(num_bases, 1.0, weight)
    shape = (num_bases,) + (1,) * weight.dim()
    return hard_sign(centred.unsqueeze(0) + shifts.view(shape) * std)


def fit_base_scales(weight: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """Least-squares scales ``c`` minimising ``||W - sum_m c_m B_m||^2``.

    Parameters
    ----------
    weight:
        The float weight, any shape.
    bases:
        ``(M, *weight.shape)`` +-1 bases.

    Returns
    -------
    torch.Tensor
        ``(M,)`` scales (minimum-norm solution where bases coincide).
    """
    design = bases.detach().reshape(bases.shape[0], -1).to(torch.float64)  # (M, K)
    target = weight.detach().reshape(-1).to(torch.float64)
    # pinv(B) w = pinv(B^T B) B^T w: an M x M system however large the layer.
    solution = torch.linalg.pinv(design @ design.T) @ (design @ target)
    return solution.to(weight.dtype)


def _spread(count: int, half_width: float, like: torch.Tensor) -> torch.Tensor:
    """``linspace(-half_width, half_width, count)``, or ``[0]`` for a single value."""
    if count == 1:
        return like.new_zeros(1)
    return torch.linspace(-half_width, half_width, count, dtype=like.dtype, device=like.device)


def default_activation_thresholds(num_bases: int, spread: float = 0.5) -> torch.Tensor:
    """The initial activation thresholds: ``linspace(-spread, spread, N)`` (``[0]`` for N = 1).

    Inputs of binary layers follow a batch norm, so they are roughly zero-mean
    with unit spread; thresholds at -0.5, 0, +0.5 (N = 3) cut a unit
    Gaussian into four levels holding 31 %, 19 %, 19 % and 31 % of it, and
    the mean of the N bases is a staircase approximation of
    ``clamp(x / spread, -1, 1)``.
    With one base the threshold is 0: plain ``sign``.
    """
    if num_bases < 1:
        raise ValueError(f"N must be at least 1, not {num_bases!r}")
    return _spread(num_bases, spread, torch.zeros(()))


class ActivationBases(nn.Module):
    """N binary activation bases of a tensor from N learned thresholds.

    Base ``n`` is ``+1`` where ``x >= thresholds[n]``, else ``-1``, with the
    straight-through gradient of :func:`binarize_threshold` to both ``x`` and
    the thresholds (ABC-Net's shifted binarization, with the shift learned).

    Parameters
    ----------
    num_bases:
        N, the number of activation bases.
    spread:
        The initial thresholds are ``linspace(-spread, spread, N)``
        (see :func:`default_activation_thresholds`).

    Members
    -------
    thresholds:
        ``(N,)`` learned thresholds.

    The forward pass maps ``(B, C, ...)`` to ``(B, N * C, ...)``: the N bases
    stacked along the channel dimension, base-major (channels
    ``n * C ... (n + 1) * C - 1`` hold base ``n``).
    """

    def __init__(self, num_bases: int, spread: float = 0.5):
        super().__init__()
        self.num_bases = int(num_bases)
        self.thresholds = nn.Parameter(default_activation_thresholds(self.num_bases, spread))

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N * C, ...)``; with ``indices``, only those bases (in that order)."""
        return self.bases(x, indices).flatten(1, 2)

    def bases(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """The bases as ``(B, N, C, ...)`` (or ``(B, len(indices), C, ...)``)."""
        thresholds = self.thresholds if indices is None else self.thresholds[indices]
        shape = (1, thresholds.numel()) + (1,) * (x.dim() - 1)
        return binarize_threshold(x.unsqueeze(1), thresholds.view(shape))

    def extra_repr(self) -> str:
        return f"num_bases={self.num_bases}"

"""BNN+ (Darabi et al.): SignSwish gradient for sign, R1/R2 regularisers with trainable per-filter scales.

- The forward pass is the hard ``sign`` (``sign(0) = +1``); the backward pass
  uses the derivative of SignSwish (Eq. 2-3)::

      SS_beta(x)  = 2 sigma(beta x) [1 + beta x (1 - sigma(beta x))] - 1
      SS_beta'(x) = beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))

  for activations and weights alike. With ``trainable_beta`` the gradient to
  ``beta`` is the one SS_beta itself would get, ``x SS_beta'(x) / beta``.
- Each binary layer has a trainable scale ``alpha`` per output filter,
  multiplied into the binary weights (Sec. 3.3), initialised from ``|W|`` of
  its filter: median (optimal for R1, Eq. 7-8), mean (optimal for R2, Eq. 9)
  or 75th percentile (the CIFAR-10 experiments, Sec. 4.1).
- The loss gets ``lambda * sum_l R(W_l, alpha_l)`` (Eq. 6) with
  ``R1 = sum |alpha - |w||`` (Eq. 4) or ``R2 = sum (alpha - |w|)^2`` (Eq. 5).
- Latent weights are not clipped (Sec. 3.3); Adam trains everything.

Inference form: one binary op per layer with scale ``alpha`` per output channel.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..arch import LayerFactory
from ..quant import hard_sign
from .ste import (
    CompanionMethod,
    LatentBinaryConv2d,
    LatentBinaryLayer,
    LatentBinaryLinear,
    MethodOption,
    latent_binary_layers,
)

__all__ = [
    "ALPHA_INITS",
    "REGULARIZERS",
    "sign_swish",
    "sign_swish_derivative",
    "sign_swish_sign",
    "SignSwishSign",
    "LearnedFilterScale",
    "filter_statistic",
    "bnnplus_regularizer",
    "bnnplus_layer",
    "BNNPlusMethod",
]

#: How ``alpha`` starts: median of |W| (R1's optimum), mean (R2's), 75th percentile (Sec. 4.1).
ALPHA_INITS = ("median", "mean", "p75")
#: The regularisers of Eq. 4 and 5 (and none).
REGULARIZERS = ("r1", "r2", "none")


def sign_swish(x: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    """``SS_beta(x) = 2 sigma(beta x) [1 + beta x (1 - sigma(beta x))] - 1`` (Eq. 2)."""
    s = torch.sigmoid(beta * x)
    return 2 * s * (1 + beta * x * (1 - s)) - 1


def sign_swish_derivative(x: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    """``d SS_beta / dx = beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))`` (Eq. 3).

    Zero at ``x ~ +-2.4 / beta``, ``beta`` at ``x = 0``, tends to 0 far out
    (``cosh`` overflowing to ``inf`` gives exactly 0).
    """
    u = beta * x
    return beta * (2 - u * torch.tanh(u / 2)) / (1 + torch.cosh(u))


class _SignSwishSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, beta)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, beta = ctx.saved_tensors
        derivative = sign_swish_derivative(x, beta)
        grad_x = grad_output * derivative
        grad_beta = None
        if ctx.needs_input_grad[1]:
            # SS depends on beta * x only, so dSS/dbeta = x * SS'(x) / beta.
            grad_beta = (grad_output * x * derivative).sum().reshape(beta.shape) / beta
        return grad_x, grad_beta


def sign_swish_sign(x: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    """``sign(x)`` (+1 where ``x >= 0``) whose gradient is SignSwish's derivative (Eq. 3)."""
    if not isinstance(beta, torch.Tensor):
        beta = torch.tensor(float(beta), dtype=x.dtype, device=x.device)
    return _SignSwishSign.apply(x, beta)


class SignSwishSign(nn.Module):
    """Binarizer with the SignSwish surrogate gradient.

    Parameters
    ----------
    beta:
        The asymptote scale ``beta > 0`` (the paper uses 5 and 10).
    trainable:
        Learn ``beta`` by backpropagation (an ``nn.Parameter``) instead of
        keeping it fixed (a buffer).
    """

    def __init__(self, beta: float = 5.0, trainable: bool = False):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be positive, not {beta!r}")
        value = torch.tensor(float(beta))
        if trainable:
            self.beta = nn.Parameter(value)
        else:
            self.register_buffer("beta", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_swish_sign(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={float(self.beta):g}, trainable={isinstance(self.beta, nn.Parameter)}"


def filter_statistic(weight: torch.Tensor, statistic: str) -> torch.Tensor:
    """Per output filter statistic of ``|W|``: ``"median"``, ``"mean"`` or ``"p75"``; shape ``(Co,)``.

    The median is the lower middle value for an even count (``torch.median``),
    which minimises ``sum |alpha - |w||`` like any value between the two middles.
    """
    magnitudes = weight.detach().abs().reshape(weight.shape[0], -1)
    if statistic == "median":
        return magnitudes.median(dim=1).values
    if statistic == "mean":
        return magnitudes.mean(dim=1)
    if statistic == "p75":
        return torch.quantile(magnitudes, 0.75, dim=1)
    raise ValueError(f"alpha init must be one of {', '.join(ALPHA_INITS)}, not {statistic!r}")


class LearnedFilterScale(nn.Module):
    """BNN+'s trainable scale ``alpha`` per output filter, multiplied into the binary weight.

    Parameters
    ----------
    out_channels:
        Number of filters.
    init:
        ``"median"``, ``"mean"`` or ``"p75"`` of the filter's ``|W|``
        (applied by :meth:`reset_from_weight`, which the layer calls once its
        weight exists).

    Members
    -------
    alpha:
        ``(Co,)`` parameter.
    """

    def __init__(self, out_channels: int, init: str = "p75"):
        super().__init__()
        if init not in ALPHA_INITS:
            raise ValueError(f"alpha init must be one of {', '.join(ALPHA_INITS)}, not {init!r}")
        self.init = init
        self.alpha = nn.Parameter(torch.ones(int(out_channels)))

    @torch.no_grad()
    def reset_from_weight(self, weight: torch.Tensor) -> None:
        """Set ``alpha`` to the chosen statistic of each filter's ``|W|``."""
        self.alpha.copy_(filter_statistic(weight, self.init))

    def weight_scale(self, weight: torch.Tensor) -> torch.Tensor:
        return self.alpha

    def output_factor(self, x: torch.Tensor, y: torch.Tensor) -> None:
        return None

    def export_scale(self, weight: torch.Tensor) -> torch.Tensor:
        return self.alpha.detach()

    @property
    def num_scaling_factors(self) -> int:
        return self.alpha.numel()

    def extra_repr(self) -> str:
        return f"{self.alpha.numel()}, init={self.init!r}"


def bnnplus_regularizer(layers: Iterable[LatentBinaryLayer], kind: str) -> torch.Tensor:
    """``sum_l R(W_l, alpha_l)`` over the layers with a :class:`LearnedFilterScale` (Eq. 4-6).

    ``"r1"``: ``sum |alpha_c - |w||``; ``"r2"``: ``sum (alpha_c - |w|)^2``, each
    weight against its own filter's ``alpha``; ``"none"``: 0.
    """
    if kind not in REGULARIZERS:
        raise ValueError(f"regularizer must be one of {', '.join(REGULARIZERS)}, not {kind!r}")
    total = torch.zeros(())
    if kind == "none":
        return total
    for layer in layers:
        if not isinstance(layer.scaler, LearnedFilterScale):
            continue
        weight = layer.weight
        alpha = layer.scaler.alpha.view((-1,) + (1,) * (weight.dim() - 1))
        gap = alpha - weight.abs()
        total = total + (gap.abs().sum() if kind == "r1" else gap.square().sum())
    return total


def bnnplus_layer(kind: str, in_features: int, out_features: int, *geometry: int,
                  beta: float = 5.0, trainable_beta: bool = False,
                  alpha_init: str = "p75") -> LatentBinaryLayer:
    """A BNN+ layer: SignSwish gradient for inputs and weights, learned per-filter ``alpha``.

    ``kind`` is ``"conv"`` (``geometry`` = ``kernel, stride, padding``) or
    ``"linear"`` (no geometry). Inputs and weights get a SignSwish each (each
    with its own ``beta`` when trainable).
    """
    common = dict(act_sign=SignSwishSign(beta, trainable_beta),
                  weight_sign=SignSwishSign(beta, trainable_beta),
                  scaler=LearnedFilterScale(out_features, alpha_init))
    if kind == "conv":
        return LatentBinaryConv2d(in_features, out_features, *geometry, **common)
    if kind == "linear":
        return LatentBinaryLinear(in_features, out_features, *geometry, **common)
    raise ValueError(f"layer kind must be 'conv' or 'linear', not {kind!r}")


class BNNPlusMethod(CompanionMethod):
    """``bnn+``: SignSwish gradients, learned per-filter ``alpha``, ``lambda * R`` in the loss, Adam.

    Latent weights are not clipped (Sec. 3.3).
    """

    name = "bnn+"
    options = (
        MethodOption("bnnplus_beta", 5.0, float, "BNN+: SignSwish beta (default: %(default)s)"),
        MethodOption("bnnplus_trainable_beta", False, bool, "BNN+: learn beta by backpropagation"),
        MethodOption("bnnplus_regularizer", "r1", str,
                     "BNN+: R1 |alpha-|w||, R2 (alpha-|w|)^2 or none (default: %(default)s)",
                     REGULARIZERS),
        MethodOption("bnnplus_lambda", 1e-6, float,
                     "BNN+: regulariser weight lambda (default: %(default)s)"),
        MethodOption("bnnplus_alpha_init", "p75", str,
                     "BNN+: alpha from the median, mean or 75th percentile of each filter's |W| "
                     "(default: %(default)s)", ALPHA_INITS),
    )

    def layer_factory(self, config: Any) -> LayerFactory:
        beta = float(self.option(config, "bnnplus_beta"))
        trainable = bool(self.option(config, "bnnplus_trainable_beta"))
        alpha_init = self.option(config, "bnnplus_alpha_init")

        def conv(in_ch, out_ch, kernel, stride, padding):
            return bnnplus_layer("conv", in_ch, out_ch, kernel, stride, padding, beta=beta,
                                 trainable_beta=trainable, alpha_init=alpha_init)

        def linear(in_f, out_f):
            return bnnplus_layer("linear", in_f, out_f, beta=beta, trainable_beta=trainable,
                                 alpha_init=alpha_init)

        return LayerFactory(conv=conv, linear=linear, name="bnn+")

    def start(self, context: Any) -> None:
        self._layers = [layer for _, layer in latent_binary_layers(context.model)]
        self._kind = self.option(context.config, "bnnplus_regularizer")
        self._lambda = float(self.option(context.config, "bnnplus_lambda"))

    def extra_loss(self, context: Any) -> torch.Tensor | None:
        if self._kind == "none" or self._lambda == 0.0:
            return None
        return self._lambda * bnnplus_regularizer(self._layers, self._kind)

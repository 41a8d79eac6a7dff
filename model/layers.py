"""Multi-bit network (MBN) layers, and the float first and last layers binary networks keep.

An MBN layer (PaBT Eq. 10) computes::

    y = sum_{m, n} p_mn * gamma_mn * BinaryConv(W_m, A_n)

with M binary weight bases ``W_m`` (stored as +-1, flipped by BOP, no latent
float copy), N activation bases ``A_n`` (learned thresholds, see
:class:`~binforge.model.quant.ActivationBases`), operation-oriented scales
``gamma_mn`` (PaBT Eq. 5) or ABC-Net's base-oriented ``alpha_m * beta_n``
(Eq. 1), and a 0/1 pruning mask ``p_mn``.

The M x N binary convolutions run as ONE convolution: the N activation bases
are stacked along channels (``N * Ci`` input channels) and the fused weight
block ``n`` is ``sum_m p_mn gamma_mn W_m``. That is exact (convolution is
linear in the weight), and values and gradients equal the M x N sum. An
activation base no surviving op uses is not computed at all, so pruning
activation bases makes the layer faster. Padding is binary (``pad_value``
after binarizing); it is computed as the convolution's zero padding plus the
border's constant contribution (one sample's worth), which is exact.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .export import BinaryExport
from .quant import (
    ActivationBases,
    binarize_threshold,
    fit_base_scales,
    shifted_sign_bases,
    sign_ste,
)

__all__ = [
    "SCALINGS",
    "mark_binary",
    "is_binary_parameter",
    "check_binary_conv_arguments",
    "MBNConv2d",
    "MBNLinear",
    "FloatInputConv",
    "BinaryInputLinear",
]

#: The two scale forms: one gamma per binary op, or ABC-Net's alpha_m * beta_n.
SCALINGS = ("operation", "base")


def check_binary_conv_arguments(kernel: int, stride: int, padding: int, pad_value: float) -> None:
    """Refuse a binary convolution's geometry or pad value that the hardware cannot reproduce."""
    if pad_value not in (1.0, -1.0):
        raise ValueError(f"pad_value must be +1.0 or -1.0, not {pad_value!r}")
    if kernel < 1 or stride < 1 or padding < 0:
        raise ValueError(f"bad convolution geometry kernel={kernel!r}, stride={stride!r}, "
                         f"padding={padding!r}")

Scaling = Literal["operation", "base"]


def mark_binary(parameter: nn.Parameter) -> nn.Parameter:
    """Mark ``parameter`` as binary (+-1 values) so the optimizer split gives it to BOP.

    The flag is an attribute of the parameter object; ``copy.deepcopy`` drops
    it, so layers also answer ``binary_parameters()``, which the split reads first.
    """
    parameter._binforge_binary = True
    return parameter


def is_binary_parameter(parameter: torch.Tensor) -> bool:
    """Whether ``parameter`` was marked with :func:`mark_binary`."""
    return bool(getattr(parameter, "_binforge_binary", False))


class _MBNBase(nn.Module):
    """What MBN convolution and linear layers share: bases, scales, mask, counts, export."""

    def _init_common(self, out_features: int, weight_shape: tuple[int, ...],
                     M: int, N: int, scaling: str) -> None:
        if M < 1 or N < 1:
            raise ValueError(f"M and N must be at least 1, not M={M!r}, N={N!r}")
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be 'operation' or 'base', not {scaling!r}")
        self.M = int(M)
        self.N = int(N)
        self.scaling = scaling
        self.out_channels = int(out_features)
        self.weight_bases = mark_binary(nn.Parameter(torch.ones((self.M,) + weight_shape)))
        self.act = ActivationBases(self.N)
        if scaling == "operation":
            self.gamma = nn.Parameter(torch.ones(self.M, self.N))
        else:
            self.alpha = nn.Parameter(torch.ones(self.M))
            self.beta = nn.Parameter(torch.ones(self.N))
        self.register_buffer("mask", torch.ones(self.M, self.N))
        # A random float weight (Kaiming uniform, like nn.Conv2d) decomposed into bases.
        fan_in = math.prod(weight_shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        self.init_from_float(torch.empty(weight_shape).uniform_(-bound, bound))

    def binary_parameters(self) -> list[nn.Parameter]:
        """The parameters holding +-1 values (BOP trains them): ``[weight_bases]``.

        The optimizer split asks modules this, so the answer survives
        ``copy.deepcopy`` and device moves (which drop attributes set on a
        parameter, such as :func:`mark_binary`'s flag).
        """
        return [self.weight_bases]

    # ---- scales and mask -------------------------------------------------------------

    @property
    def effective_gamma(self) -> torch.Tensor:
        """``(M, N)`` scale of each binary op (``gamma``, or ``alpha_m * beta_n``), unmasked."""
        if self.scaling == "operation":
            return self.gamma
        return self.alpha[:, None] * self.beta[None, :]

    def op_scales(self) -> torch.Tensor:
        """``(M, N)`` ``p_mn * gamma_mn``: the weight each binary op gets in the sum."""
        return self.mask * self.effective_gamma

    def prune(self, m: int, n: int) -> None:
        """Mask the binary op ``(m, n)`` out (PaBT's impose step).

        Raises ValueError for an op that is out of range, already pruned, or
        the last one surviving (a layer keeps at least one op).
        """
        if not (0 <= m < self.M and 0 <= n < self.N):
            raise ValueError(f"op ({m}, {n}) is outside the {self.M} x {self.N} op grid")
        if self.mask[m, n] == 0:
            raise ValueError(f"op ({m}, {n}) is already pruned")
        if self.surviving_ops == 1:
            raise ValueError(f"op ({m}, {n}) is the last surviving op of the layer; "
                             "a layer keeps at least one")
        self.mask[m, n] = 0.0

    @property
    def surviving_ops(self) -> int:
        """Number of unpruned binary ops."""
        return int(self.mask.sum().item())

    @property
    def surviving_op_list(self) -> list[tuple[int, int]]:
        """The unpruned ``(m, n)`` pairs, row-major."""
        return [(int(m), int(n)) for m, n in torch.nonzero(self.mask > 0).tolist()]

    @property
    def weight_bits(self) -> int:
        """Number of weight bases still used by a surviving op (the layer's weight bit-width)."""
        return int((self.mask.sum(dim=1) > 0).sum().item())

    @property
    def act_bits(self) -> int:
        """Number of activation bases still used by a surviving op (input bit-width)."""
        return int((self.mask.sum(dim=0) > 0).sum().item())

    @property
    def num_scaling_factors(self) -> int:
        """Scaling factors the layer still needs (PaBT Table 1).

        Operation form: one gamma per surviving op. Base form (ABC-Net,
        ``M + N``): one alpha per used weight base plus one beta per used
        activation base.
        """
        if self.scaling == "operation":
            return self.surviving_ops
        return self.weight_bits + self.act_bits

    def _binary_weight(self) -> torch.Tensor:
        # Identity on +-1 values with gradient 1 there (|w| <= 1), so BOP training sees the
        # plain gradient; in the AMSGrad-only ablation weight_bases is a latent weight and
        # this is the usual sign with straight-through gradient.
        return sign_ste(self.weight_bases)

    # ---- initialisation and export --------------------------------------------------

    @torch.no_grad()
    def init_from_float(self, weight: torch.Tensor) -> None:
        """Initialise bases and scales from a float weight (ABC-Net, then least squares).

        ``W_m = sign(W - mean(W) + u_m std(W))`` with ``u_m = linspace(-1, 1, M)``
        (``u = 0`` for M = 1, ``sign(0) = +1``; one mean and std per layer).
        The per-base scales ``c`` minimise ``||W - sum_m c_m W_m||^2``. The
        input is represented by the mean of its N activation bases (a staircase
        approximation of the activation), so ``gamma_mn = c_m / N``; in the
        base form ``alpha_m = c_m`` and ``beta_n = 1 / N``.
        """
        expected = tuple(self.weight_bases.shape[1:])
        if tuple(weight.shape) != expected:
            raise ValueError(f"float weight has shape {tuple(weight.shape)}, the layer needs {expected}")
        weight = weight.detach().to(self.weight_bases.device, self.weight_bases.dtype)
        bases = shifted_sign_bases(weight, self.M)
        scales = fit_base_scales(weight, bases)
        self.weight_bases.copy_(bases)
        if self.scaling == "operation":
            self.gamma.copy_(scales[:, None].expand(self.M, self.N) / self.N)
        else:
            self.alpha.copy_(scales)
            self.beta.fill_(1.0 / self.N)

    def _export(self, kernel: int, stride: int, padding: int, pad_value: float) -> BinaryExport:
        with torch.no_grad():
            weight = self._binary_weight().detach().clone()
            gamma = self.effective_gamma.detach()
            ops = [(m, n, gamma[m, n].expand(self.out_channels).clone())
                   for m, n in self.surviving_op_list]
            return BinaryExport(weight_bases=weight,
                                act_thresholds=self.act.thresholds.detach().clone(),
                                ops=ops, kernel=kernel, stride=stride, padding=padding,
                                pad_value=float(pad_value))

    def _used_act_index(self) -> torch.Tensor | None:
        """Indices of the activation bases some surviving op uses; None when all are used."""
        used = self.mask.sum(dim=0) > 0
        if bool(used.all()):
            return None
        return torch.nonzero(used).flatten()

    def _fused_weight(self, act_index: torch.Tensor | None) -> torch.Tensor:
        """``(Co, N', *rest)``: block ``n`` is ``sum_m p_mn gamma_mn W_m``.

        Only the activation bases in ``act_index`` (all when None) get a block:
        the others have no surviving op, so their block would be zero.
        """
        scales = self.op_scales()
        if act_index is not None:
            scales = scales[:, act_index]
        return torch.einsum("mn,mo...->on...", scales, self._binary_weight())


class MBNConv2d(_MBNBase):
    """Multi-bit binary 2-d convolution with M weight and N activation bases (PaBT Eq. 10).

    Parameters
    ----------
    in_ch, out_ch:
        Input and output channels.
    kernel, stride, padding:
        Square convolution geometry.
    M, N:
        Number of weight and activation bases.
    scaling:
        ``"operation"`` (one learned ``gamma_mn`` per binary op, PaBT) or
        ``"base"`` (ABC-Net: ``alpha_m * beta_n``).
    pad_value:
        The binary value (+1.0 or -1.0) padding positions hold in every
        activation base (the input is binarized first, then padded).

    Members
    -------
    weight_bases:
        ``(M, Co, Ci, k, k)`` parameter holding exactly +-1, marked binary
        (trained by BOP).
    gamma:
        ``(M, N)`` parameter (operation form); ``alpha`` ``(M,)`` and ``beta``
        ``(N,)`` in the base form.
    act:
        :class:`ActivationBases` with the ``(N,)`` thresholds ``act.thresholds``.
    mask:
        ``(M, N)`` 0/1 buffer; :meth:`prune` clears entries.

    Notes
    -----
    Bit-OPs of one image (:meth:`bit_ops`) are
    ``surviving_ops * Co * Ci * k^2 * Ho * Wo``: one binary multiply-accumulate
    per weight bit per output position for every surviving op.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
                 M: int = 3, N: int = 3, scaling: Scaling = "operation", pad_value: float = -1.0):
        super().__init__()
        check_binary_conv_arguments(kernel, stride, padding, pad_value)
        self.in_channels = int(in_ch)
        self.kernel_size = int(kernel)
        self.stride = int(stride)
        self.padding = int(padding)
        self.pad_value = float(pad_value)
        self._init_common(out_ch, (int(out_ch), int(in_ch), int(kernel), int(kernel)), M, N, scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act_index = self._used_act_index()
        bases = self.act(x, act_index)  # (B, N' * Ci, H, W), +-1
        weight = self._fused_weight(act_index)  # (Co, N', Ci, k, k)
        weight = weight.reshape(self.out_channels, bases.shape[1],
                                self.kernel_size, self.kernel_size)
        if not self.padding:
            return F.conv2d(bases, weight, stride=self.stride)
        # conv(pad(A, v)) = conv(pad(A, 0)) + conv(pad(0, v)): the convolution's own zero
        # padding plus the border's constant contribution, computed once for the batch. Exact,
        # and cheaper than padding the whole batch (no copy; no input gradient at the border).
        p = self.padding
        border = F.pad(bases.new_zeros((1,) + bases.shape[1:]), (p, p, p, p), value=self.pad_value)
        return (F.conv2d(bases, weight, stride=self.stride, padding=p)
                + F.conv2d(border, weight, stride=self.stride))

    def output_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Output height and width for an input of ``input_hw``."""
        k, s, p = self.kernel_size, self.stride, self.padding
        return tuple((size + 2 * p - k) // s + 1 for size in input_hw)

    def bit_ops(self, input_hw: tuple[int, int]) -> int:
        """Binary multiply-accumulates for one image of spatial size ``input_hw``.

        ``surviving_ops * Co * Ci * k^2 * Ho * Wo``.
        """
        ho, wo = self.output_hw(input_hw)
        return (self.surviving_ops * self.out_channels * self.in_channels
                * self.kernel_size ** 2 * ho * wo)

    def export_binary(self) -> BinaryExport:
        """The inference form for the compiler (all N thresholds, surviving ops only)."""
        return self._export(self.kernel_size, self.stride, self.padding, self.pad_value)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, M={self.M}, N={self.N}, "
                f"scaling={self.scaling!r}, pad_value={self.pad_value}")


class MBNLinear(_MBNBase):
    """Multi-bit binary fully connected layer (the 1 x 1 case of :class:`MBNConv2d`).

    Parameters
    ----------
    in_f, out_f:
        Input and output features.
    M, N, scaling:
        As for :class:`MBNConv2d`.

    Members
    -------
    weight_bases:
        ``(M, out_f, in_f)`` parameter holding exactly +-1, marked binary.
    gamma / alpha, beta; act; mask:
        As for :class:`MBNConv2d`.

    Notes
    -----
    Bit-OPs of one sample (:meth:`bit_ops`): ``surviving_ops * out_f * in_f``.
    """

    def __init__(self, in_f: int, out_f: int, M: int = 3, N: int = 3,
                 scaling: Scaling = "operation"):
        super().__init__()
        self.in_features = int(in_f)
        self.out_features = int(out_f)
        self._init_common(out_f, (int(out_f), int(in_f)), M, N, scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act_index = self._used_act_index()
        bases = self.act(x, act_index)  # (B, N' * K)
        weight = self._fused_weight(act_index).reshape(self.out_features, bases.shape[1])
        return F.linear(bases, weight)

    def bit_ops(self, input_hw: tuple[int, int] | None = None) -> int:
        """Binary multiply-accumulates for one sample: ``surviving_ops * out_f * in_f``.

        ``input_hw`` is accepted so every binary layer answers the same call;
        a linear layer has no spatial extent and ignores it.
        """
        return self.surviving_ops * self.out_features * self.in_features

    def export_binary(self) -> BinaryExport:
        """The inference form for the compiler: ``weight_bases`` is ``(M, Co, K)``."""
        return self._export(1, 1, 0, -1.0)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, M={self.M}, N={self.N}, "
                f"scaling={self.scaling!r}")


class FloatInputConv(nn.Module):
    """The first layer: a float convolution on the pixel input, padding with -1 (pixel 0).

    ``F.pad(x, (p, p, p, p), value=-1.0)`` then ``conv`` with ``padding=0``, so
    padded positions are pixel value 0 (all bit-planes 0), as the hardware does.

    Parameters
    ----------
    in_ch, out_ch, kernel, stride, padding:
        Square convolution geometry.

    Members
    -------
    conv:
        ``nn.Conv2d(in_ch, out_ch, kernel, stride, padding=0, bias=False)``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.padding = int(padding)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=0, bias=False)

    @property
    def kernel_size(self) -> int:
        return self.conv.kernel_size[0]

    @property
    def stride(self) -> int:
        return self.conv.stride[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            p = self.padding
            x = F.pad(x, (p, p, p, p), value=-1.0)
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"padding={self.padding} (value -1)"


class BinaryInputLinear(nn.Module):
    """The classifier: input binarized by one learned threshold, float weight and bias.

    ``y = W @ b + bias`` with ``b = +1 where x >= threshold else -1``
    (straight-through gradient to ``x`` and ``threshold``).

    Parameters
    ----------
    in_f, out_f:
        Input features and classes.

    Members
    -------
    threshold:
        0-d learned threshold (initialised to 0: plain sign).
    weight, bias:
        Float ``(out_f, in_f)`` and ``(out_f,)``, initialised like ``nn.Linear``.
    """

    def __init__(self, in_f: int, out_f: int):
        super().__init__()
        self.in_features = int(in_f)
        self.out_features = int(out_f)
        self.threshold = nn.Parameter(torch.zeros(()))
        reference = nn.Linear(in_f, out_f)
        self.weight = nn.Parameter(reference.weight.detach().clone())
        self.bias = nn.Parameter(reference.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(binarize_threshold(x, self.threshold), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"

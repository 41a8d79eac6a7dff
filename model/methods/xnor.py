"""XNOR-Net (analytic scales) and XNOR-Net++ (a learned fused scale Gamma of four shapes).

XNOR-Net (Rastegari et al., XNOR-Net++ paper Eq. 2)::

    I * W  ~  (sign(I) (*) sign(W)) . K alpha,    alpha_c = mean |W_c|

with ``K`` the mean over input channels of ``|I|`` averaged over each
``k x k`` window (zero padding, the layer's stride). ``K`` depends on the
input, so it is optional (``input_factor``) and a layer using it cannot be
exported to the hardware, whose ops have one fixed scale per output channel.

XNOR-Net++ (Bulat and Tzimiropoulos, Eq. 3-7) replaces ``K alpha`` by one
factor ``Gamma`` learned by backpropagation, of shape

- case 1: ``alpha`` in R^o                           (Eq. 4)
- case 2: ``alpha`` in R^{o x h_out x w_out}          (Eq. 5)
- case 3: ``alpha (x) beta``, beta in R^{h_out x w_out}  (Eq. 6)
- case 4: ``alpha (x) beta (x) gamma``, beta in R^{h_out}, gamma in R^{w_out}  (Eq. 7)

merged into one ``(o, h_out, w_out)`` tensor (:meth:`FusedGammaScale.merged`)
multiplied into the output once. Case 1 exports (one scale per channel);
cases 2-4 vary per output pixel and are refused by :meth:`export_scale`
unless the output is a single pixel.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import LayerFactory
from ..export import UnsupportedForHardware
from .ste import (
    CompanionMethod,
    LatentBinaryConv2d,
    LatentBinaryLayer,
    LatentBinaryLinear,
    MethodOption,
    float_structure,
)

__all__ = [
    "XNORPP_CASES",
    "xnor_weight_scale",
    "xnor_input_factor",
    "XnorScale",
    "FusedGammaScale",
    "xnor_layer",
    "xnorpp_layer",
    "binary_input_sizes",
    "XnorMethod",
    "XnorPPMethod",
]

#: XNOR-Net++'s four shapes of Gamma (Eq. 4-7).
XNORPP_CASES = (1, 2, 3, 4)


def xnor_weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """``alpha_c = ||W_c||_1 / n``, the mean of ``|W|`` over each output filter; shape ``(Co,)``."""
    return weight.abs().reshape(weight.shape[0], -1).mean(dim=1)


def xnor_input_factor(x: torch.Tensor, kernel: int = 1, stride: int = 1,
                      padding: int = 0) -> torch.Tensor:
    """XNOR-Net's ``K``: ``A = mean_c |I|`` convolved with a ``k x k`` box of ``1 / k^2``.

    ``x`` is ``(B, C, H, W)`` (result ``(B, 1, Ho, Wo)``, zero padding as in
    XNOR-Net) or ``(B, K)`` (result ``(B, 1)``: the mean of ``|x|``).
    """
    if x.dim() == 2:
        return x.abs().mean(dim=1, keepdim=True)
    mean_abs = x.abs().mean(dim=1, keepdim=True)
    return F.avg_pool2d(mean_abs, kernel, stride=stride, padding=padding,
                        count_include_pad=True)


class XnorScale(nn.Module):
    """XNOR-Net's analytic scales: ``alpha = mean |W|`` per filter and, optionally, ``K``.

    Parameters
    ----------
    input_factor:
        Multiply the output by the input-dependent ``K`` too (Eq. 2). Such a
        layer cannot be exported to the hardware.
    kernel, stride, padding:
        The layer's geometry, for ``K``.
    """

    def __init__(self, input_factor: bool = False, kernel: int = 1, stride: int = 1,
                 padding: int = 0):
        super().__init__()
        self.input_factor = bool(input_factor)
        self.kernel, self.stride, self.padding = int(kernel), int(stride), int(padding)

    def weight_scale(self, weight: torch.Tensor) -> torch.Tensor:
        return xnor_weight_scale(weight)

    def output_factor(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        if not self.input_factor:
            return None
        return xnor_input_factor(x, self.kernel, self.stride, self.padding)

    def export_scale(self, weight: torch.Tensor) -> torch.Tensor:
        if self.input_factor:
            raise UnsupportedForHardware(
                "XNOR-Net's input factor K is computed from each input's real-valued magnitudes "
                "at inference time, but the hardware's binary ops have one fixed scale per output "
                "channel: train with the input factor off (alpha only) to compile")
        return xnor_weight_scale(weight.detach())

    def extra_repr(self) -> str:
        return f"input_factor={self.input_factor}"


class FusedGammaScale(nn.Module):
    """XNOR-Net++'s learned fused scale Gamma (cases 1-4, Eq. 4-7).

    Parameters
    ----------
    case:
        1, 2, 3 or 4.
    out_channels:
        ``o``.
    out_hw:
        ``(h_out, w_out)`` of the layer's output; ``None`` for a linear layer
        (one output "pixel").

    Members
    -------
    alpha:
        ``(o,)`` (cases 1, 3, 4) or ``(o, h_out, w_out)`` (case 2).
    beta:
        ``(h_out, w_out)`` (case 3) or ``(h_out,)`` (case 4).
    gamma:
        ``(w_out,)`` (case 4).

    ``alpha`` starts at ``mean |W|`` of each filter (XNOR-Net's value),
    ``beta`` and ``gamma`` at 1.
    """

    def __init__(self, case: int, out_channels: int, out_hw: tuple[int, int] | None):
        super().__init__()
        if case not in XNORPP_CASES:
            raise ValueError(f"XNOR-Net++ case must be 1, 2, 3 or 4, not {case!r}")
        self.case = int(case)
        self.linear = out_hw is None
        h, w = (1, 1) if out_hw is None else (int(out_hw[0]), int(out_hw[1]))
        if h < 1 or w < 1:
            raise ValueError(f"output size must be positive, not {out_hw!r}")
        self.out_hw = (h, w)
        o = int(out_channels)
        self.alpha = nn.Parameter(torch.ones((o, h, w) if self.case == 2 else (o,)))
        if self.case == 3:
            self.beta = nn.Parameter(torch.ones(h, w))
        elif self.case == 4:
            self.beta = nn.Parameter(torch.ones(h))
            self.gamma = nn.Parameter(torch.ones(w))

    @torch.no_grad()
    def reset_from_weight(self, weight: torch.Tensor) -> None:
        """``alpha`` = XNOR-Net's ``mean |W|`` per filter (broadcast over pixels in case 2)."""
        scale = xnor_weight_scale(weight)
        self.alpha.copy_(scale.view((-1,) + (1,) * (self.alpha.dim() - 1)).expand_as(self.alpha))

    def merged(self) -> torch.Tensor:
        """Gamma as one ``(o, h_out, w_out)`` tensor (the single factor used at inference)."""
        if self.case == 1:
            gamma = self.alpha[:, None, None].expand(-1, *self.out_hw)
        elif self.case == 2:
            gamma = self.alpha
        elif self.case == 3:
            gamma = self.alpha[:, None, None] * self.beta[None]
        else:
            gamma = self.alpha[:, None, None] * self.beta[None, :, None] * self.gamma[None, None, :]
        return gamma

    def weight_scale(self, weight: torch.Tensor) -> torch.Tensor | None:
        return self.alpha if self.case == 1 else None

    def output_factor(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        if self.case == 1:
            return None
        gamma = self.merged()
        if self.linear:
            return gamma.reshape(-1)
        if tuple(y.shape[-2:]) != self.out_hw:
            raise ValueError(f"XNOR-Net++ case {self.case} was built for {self.out_hw} outputs, "
                             f"got {tuple(y.shape[-2:])}: the input size differs from the one "
                             "the model was built for")
        return gamma

    def export_scale(self, weight: torch.Tensor) -> torch.Tensor:
        if self.case == 1 or self.out_hw == (1, 1):
            return self.merged().detach().reshape(self.merged().shape[0], -1)[:, 0].clone()
        raise UnsupportedForHardware(
            f"XNOR-Net++ case {self.case} scales every output pixel by its own factor "
            f"(Gamma is {self.alpha.shape[0]} x {self.out_hw[0]} x {self.out_hw[1]}), but the "
            "hardware's binary ops have one fixed scale per output channel: train with "
            "--xnorpp-case 1 to compile")

    @property
    def num_scaling_factors(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"case={self.case}, out_hw={self.out_hw}"


def xnor_layer(kind: str, *args, input_factor: bool = False, **kwargs) -> LatentBinaryLayer:
    """An XNOR-Net layer (``kind`` ``"conv"``: ``in_ch, out_ch, kernel, stride, padding``; or ``"linear"``)."""
    if kind == "conv":
        layer = LatentBinaryConv2d(*args, **kwargs)
        layer.scaler = XnorScale(input_factor, layer.kernel_size, layer.stride, layer.padding)
        return layer
    if kind == "linear":
        return LatentBinaryLinear(*args, **kwargs, scaler=XnorScale(input_factor))
    raise ValueError(f"layer kind must be 'conv' or 'linear', not {kind!r}")


def xnorpp_layer(kind: str, *args, case: int = 1, input_hw: tuple[int, int] | None = None,
                 **kwargs) -> LatentBinaryLayer:
    """An XNOR-Net++ layer with Gamma of the given case.

    Cases 2-4 of a convolution need ``input_hw`` (the layer's input height
    and width) to size Gamma.
    """
    if kind == "conv":
        layer = LatentBinaryConv2d(*args, **kwargs)
        if case == 1:
            out_hw = (1, 1)
        elif input_hw is None:
            raise ValueError(f"XNOR-Net++ case {case} needs the layer's input size to shape Gamma")
        else:
            out_hw = layer.output_hw(tuple(input_hw))
        layer.scaler = FusedGammaScale(case, layer.out_channels, out_hw)
        layer.scaler.reset_from_weight(layer.weight.detach())
        return layer
    if kind == "linear":
        layer = LatentBinaryLinear(*args, **kwargs)
        layer.scaler = FusedGammaScale(case, layer.out_channels, None)
        layer.scaler.reset_from_weight(layer.weight.detach())
        return layer
    raise ValueError(f"layer kind must be 'conv' or 'linear', not {kind!r}")


@torch.no_grad()
def binary_input_sizes(float_model: nn.Module, in_shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    """Input height and width of every binary convolution, in the order the factory builds them.

    Runs one dummy image through the float twin (eval mode, nothing changes)
    and records the input of each float stand-in convolution.
    """
    from binforge.model.arch import FloatActConv2d

    sizes: list[tuple[int, int]] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape[-2:])))
             for m in float_model.modules() if isinstance(m, FloatActConv2d)]
    was_training = float_model.training
    float_model.eval()
    try:
        float_model(torch.zeros((1,) + tuple(in_shape)))
    finally:
        for hook in hooks:
            hook.remove()
        float_model.train(was_training)
    return sizes


class XnorMethod(CompanionMethod):
    """``xnor``: XNOR-Net's analytic ``alpha = mean |W|`` per filter (and ``K`` with the flag), Adam."""

    name = "xnor"
    options = (
        MethodOption("xnor_input_factor", False, bool,
                     "XNOR-Net: also scale by the input factor K (Eq. 2; such a model cannot be "
                     "compiled)"),
    )

    def layer_factory(self, config: Any) -> LayerFactory:
        input_factor = bool(self.option(config, "xnor_input_factor"))

        def conv(in_ch, out_ch, kernel, stride, padding):
            return xnor_layer("conv", in_ch, out_ch, kernel, stride, padding,
                              input_factor=input_factor)

        def linear(in_f, out_f):
            return xnor_layer("linear", in_f, out_f, input_factor=input_factor)

        return LayerFactory(conv=conv, linear=linear, name="xnor")


class XnorPPMethod(CompanionMethod):
    """``xnor++``: XNOR-Net++'s learned fused Gamma (case 1-4), Adam."""

    name = "xnor++"
    options = (
        MethodOption("xnorpp_case", 1, int,
                     "XNOR-Net++: shape of Gamma, 1 (per channel, compilable), 2 (o x h x w), "
                     "3 (alpha x beta_hw), 4 (alpha x beta_h x gamma_w) (default: %(default)s)",
                     XNORPP_CASES),
    )

    def layer_factory(self, config: Any) -> LayerFactory:
        case = int(self.option(config, "xnorpp_case"))
        sizes = iter(binary_input_sizes(float_structure(config), tuple(config.in_shape))
                     if case != 1 else ())

        def conv(in_ch, out_ch, kernel, stride, padding):
            input_hw = next(sizes) if case != 1 else None
            return xnorpp_layer("conv", in_ch, out_ch, kernel, stride, padding, case=case,
                                input_hw=input_hw)

        def linear(in_f, out_f):
            return xnorpp_layer("linear", in_f, out_f, case=case)

        return LayerFactory(conv=conv, linear=linear, name=f"xnor++-case{case}")

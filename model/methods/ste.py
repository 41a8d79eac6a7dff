"""Plain BNN (Hubara et al.): sign forward, hardtanh straight-through gradient, clipped latent weights.

This module also holds the binary layers every companion method shares,
:class:`LatentBinaryConv2d` and :class:`LatentBinaryLinear`: a latent float
weight binarized in the forward pass, the input binarized by ``sign`` (bit 1
where ``x >= 0``, the IR's convention), and three plug points the methods
fill in:

- ``act_sign`` and ``weight_sign``: modules mapping a tensor to +-1 with a
  surrogate gradient (:class:`SteSign` here, BNN+'s SignSwish in
  :mod:`~binforge.model.methods.bnnplus`);
- ``scaler``: a module giving the per-output-channel weight scale and/or an
  output factor (XNOR-Net's analytic scales, BNN+'s learned ``alpha``,
  XNOR-Net++'s fused ``Gamma``); ``None`` means scale 1 (plain BNN);
- ``weight_binarized``: a 0-d boolean buffer; while it is false the layer
  multiplies by the float weight (iterative training binarizes layer by
  layer).

A layer's inference form is one binary convolution with threshold 0 and one
scale per output channel, which is what :meth:`export_binary` hands over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from binforge.errors import BinforgeError

from ..arch import LayerFactory
from ..export import BinaryExport, UnsupportedForHardware
from ..layers import check_binary_conv_arguments
from ..optim import CaseOptimizer
from ..quant import hard_sign, sign_ste
from ..train import Method

__all__ = [
    "SteSign",
    "LatentBinaryLayer",
    "LatentBinaryConv2d",
    "LatentBinaryLinear",
    "latent_binary_layers",
    "clip_latent_weights",
    "ste_layer_factory",
    "MethodOption",
    "CompanionMethod",
    "float_structure",
    "SteMethod",
]


class SteSign(nn.Module):
    """``sign`` (``sign(0) = +1``) with the hardtanh straight-through gradient (:func:`sign_ste`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)


class LatentBinaryLayer(nn.Module):
    """What :class:`LatentBinaryConv2d` and :class:`LatentBinaryLinear` share.

    The sign modules, the scaler, the ``weight_binarized`` state, ``init_from_float``,
    the export and the counts the metrics read (one op, 1-bit weights and inputs).
    """

    weight: nn.Parameter

    def _init_common(self, out_channels: int, weight_shape: tuple[int, ...],
                     act_sign: nn.Module | None, weight_sign: nn.Module | None,
                     scaler: nn.Module | None) -> None:
        self.out_channels = int(out_channels)
        fan_in = math.prod(weight_shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        # nn.Conv2d / nn.Linear's default (Kaiming uniform with a = sqrt(5)).
        self.weight = nn.Parameter(torch.empty(weight_shape).uniform_(-bound, bound))
        self.act_sign = act_sign if act_sign is not None else SteSign()
        self.weight_sign = weight_sign if weight_sign is not None else SteSign()
        self.scaler = scaler
        self.register_buffer("weight_binarized", torch.tensor(True))
        if scaler is not None and hasattr(scaler, "reset_from_weight"):
            scaler.reset_from_weight(self.weight.detach())

    @torch.no_grad()
    def init_from_float(self, weight: torch.Tensor) -> None:
        """Start from a pre-trained float weight: copy it into the latent weight, reset the scales."""
        if tuple(weight.shape) != tuple(self.weight.shape):
            raise ValueError(f"float weight has shape {tuple(weight.shape)}, the layer needs "
                             f"{tuple(self.weight.shape)}")
        self.weight.copy_(weight.detach())
        if self.scaler is not None and hasattr(self.scaler, "reset_from_weight"):
            self.scaler.reset_from_weight(self.weight.detach())

    # ---- the forward pieces --------------------------------------------------------

    def effective_weight(self) -> torch.Tensor:
        """The weight the operation multiplies by: ``scale[c] * sign(W)`` (or the float ``W``).

        While ``weight_binarized`` is false (iterative training) the float
        weight is used as it is, without scale.
        """
        if not bool(self.weight_binarized):
            return self.weight
        binary = self.weight_sign(self.weight)
        if self.scaler is not None:
            scale = self.scaler.weight_scale(self.weight)
            if scale is not None:
                binary = binary * scale.view((-1,) + (1,) * (binary.dim() - 1))
        return binary

    def _output_factor(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.scaler is None or not bool(self.weight_binarized):
            return y
        factor = self.scaler.output_factor(x, y)
        return y if factor is None else y * factor

    # ---- export --------------------------------------------------------------------

    def export_scale(self) -> torch.Tensor:
        """The ``(Co,)`` scale of the one binary op (1 without a scaler).

        Raises
        ------
        UnsupportedForHardware
            If the weights are still float, or the scaler's inference form is
            not one factor per output channel.
        """
        if not bool(self.weight_binarized):
            raise UnsupportedForHardware(
                f"{type(self).__name__} still multiplies by float weights (its weights are not "
                "binarized yet): only a fully binarized layer maps onto XNOR-popcount hardware")
        if self.scaler is None:
            return torch.ones(self.out_channels)
        return self.scaler.export_scale(self.weight.detach()).detach().reshape(-1).clone()

    def _export(self, kernel: int, stride: int, padding: int, pad_value: float) -> BinaryExport:
        with torch.no_grad():
            scale = self.export_scale()
            bases = hard_sign(self.weight.detach()).unsqueeze(0).clone()
            return BinaryExport(weight_bases=bases, act_thresholds=torch.zeros(1),
                                ops=[(0, 0, scale.expand(self.out_channels).clone())],
                                kernel=kernel, stride=stride, padding=padding,
                                pad_value=float(pad_value))

    # ---- counts shared with the MBN layers -----------------------------------------

    @property
    def surviving_ops(self) -> int:
        """One binary op (the layer is a plain BNN layer)."""
        return 1

    @property
    def weight_bits(self) -> int:
        """1, or 32 while the weights are still float (iterative training)."""
        return 1 if bool(self.weight_binarized) else 32

    @property
    def act_bits(self) -> int:
        return 1

    @property
    def num_scaling_factors(self) -> int:
        """Scale parameters the layer keeps at inference (0 for plain BNN)."""
        if self.scaler is None:
            return 0
        return int(getattr(self.scaler, "num_scaling_factors", self.out_channels))


class LatentBinaryConv2d(LatentBinaryLayer):
    """Binary 2-d convolution with a latent float weight: ``scale * (sign(W) (*) sign(x))``.

    The input is binarized first (``+1`` where ``x >= 0``), then padded with
    ``pad_value``, then convolved with the binary (scaled) weight.

    Parameters
    ----------
    in_ch, out_ch, kernel, stride, padding:
        Square convolution geometry.
    pad_value:
        The binary value (+1.0 or -1.0) padding positions hold.
    act_sign, weight_sign:
        Binarizers with surrogate gradients (default :class:`SteSign`).
    scaler:
        Scale module (``weight_scale``, ``output_factor``, ``export_scale``),
        or ``None`` for scale 1.

    Members
    -------
    weight:
        ``(Co, Ci, k, k)`` latent float weight.
    weight_binarized:
        0-d boolean buffer (true unless iterative training has not reached
        this layer yet).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
                 *, pad_value: float = -1.0, act_sign: nn.Module | None = None,
                 weight_sign: nn.Module | None = None, scaler: nn.Module | None = None):
        super().__init__()
        check_binary_conv_arguments(kernel, stride, padding, pad_value)
        self.in_channels = int(in_ch)
        self.kernel_size = int(kernel)
        self.stride = int(stride)
        self.padding = int(padding)
        self.pad_value = float(pad_value)
        self._init_common(out_ch, (int(out_ch), int(in_ch), int(kernel), int(kernel)),
                          act_sign, weight_sign, scaler)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.act_sign(x)
        if self.padding:
            p = self.padding
            bits = F.pad(bits, (p, p, p, p), value=self.pad_value)
        y = F.conv2d(bits, self.effective_weight(), stride=self.stride)
        return self._output_factor(x, y)

    def output_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Output height and width for an input of ``input_hw``."""
        k, s, p = self.kernel_size, self.stride, self.padding
        return tuple((size + 2 * p - k) // s + 1 for size in input_hw)

    def bit_ops(self, input_hw: tuple[int, int]) -> int:
        """Binary multiply-accumulates for one image: ``Co * Ci * k^2 * Ho * Wo``."""
        ho, wo = self.output_hw(input_hw)
        return self.out_channels * self.in_channels * self.kernel_size ** 2 * ho * wo

    def export_binary(self) -> BinaryExport:
        """One weight base ``sign(W)``, threshold 0, one op with the per-channel scale."""
        return self._export(self.kernel_size, self.stride, self.padding, self.pad_value)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, pad_value={self.pad_value}")


class LatentBinaryLinear(LatentBinaryLayer):
    """Binary fully connected layer with a latent float weight (the 1 x 1 case of the convolution).

    Parameters
    ----------
    in_f, out_f:
        Input and output features.
    act_sign, weight_sign, scaler:
        As for :class:`LatentBinaryConv2d`.

    Members
    -------
    weight:
        ``(out_f, in_f)`` latent float weight.
    weight_binarized:
        As for :class:`LatentBinaryConv2d`.
    """

    kernel_size = 1
    stride = 1
    padding = 0

    def __init__(self, in_f: int, out_f: int, *, act_sign: nn.Module | None = None,
                 weight_sign: nn.Module | None = None, scaler: nn.Module | None = None):
        super().__init__()
        self.in_features = int(in_f)
        self.out_features = int(out_f)
        self._init_common(out_f, (int(out_f), int(in_f)), act_sign, weight_sign, scaler)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(self.act_sign(x), self.effective_weight())
        return self._output_factor(x, y)

    def bit_ops(self, input_hw: tuple[int, int] | None = None) -> int:
        """Binary multiply-accumulates for one sample: ``out_f * in_f``."""
        return self.out_features * self.in_features

    def export_binary(self) -> BinaryExport:
        """One weight base ``(1, Co, K)``, threshold 0, one op with the per-channel scale."""
        return self._export(1, 1, 0, -1.0)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


def latent_binary_layers(model: nn.Module) -> list[tuple[str, LatentBinaryLayer]]:
    """Every :class:`LatentBinaryConv2d` / :class:`LatentBinaryLinear` of ``model``, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LatentBinaryLayer)]


@torch.no_grad()
def clip_latent_weights(layers: Iterable[LatentBinaryLayer], bound: float = 1.0) -> None:
    """Clamp every layer's latent weight to ``[-bound, bound]`` (BinaryConnect / BNN)."""
    for layer in layers:
        layer.weight.clamp_(-bound, bound)


def ste_layer_factory(kind: str, *args, **kwargs) -> LatentBinaryLayer:
    """A plain BNN layer: ``kind`` is ``"conv"`` (``in_ch, out_ch, kernel, stride, padding``) or ``"linear"``."""
    if kind == "conv":
        return LatentBinaryConv2d(*args, **kwargs)
    if kind == "linear":
        return LatentBinaryLinear(*args, **kwargs)
    raise ValueError(f"layer kind must be 'conv' or 'linear', not {kind!r}")


# --------------------------------------------------------------------------------------
# The training method (plugs into binforge.model.train's Method registry)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodOption:
    """One option of a companion method: ``RunConfig.method_options[key]`` and ``--key-with-dashes``.

    ``kind`` is ``float``, ``int``, ``str`` or ``bool`` (a flag); ``choices``
    restricts the value.
    """

    key: str
    default: Any
    kind: type
    help: str
    choices: tuple | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


class CompanionMethod(Method):
    """A companion method: its layers from a :class:`LayerFactory`, Adam for every parameter.

    The binary phase starts from the float pre-trained model
    (:func:`binary_from_float` copies the first layer, batch norms and
    classifier and calls each binary layer's ``init_from_float``).
    Subclasses set ``name``, ``options`` and :meth:`layer_factory`.
    """

    options: tuple[MethodOption, ...] = ()
    clip_latent: bool = False

    def option(self, config: Any, key: str) -> Any:
        """``config.method_options[key]``, or the option's default."""
        for spec in self.options:
            if spec.key == key:
                value = (getattr(config, "method_options", None) or {}).get(key, spec.default)
                if spec.choices is not None and value not in spec.choices:
                    raise BinforgeError(
                        f"{spec.flag} must be one of {', '.join(map(str, spec.choices))}, "
                        f"not {value!r}")
                return value
        raise KeyError(f"method {self.name!r} has no option {key!r}")

    def layer_factory(self, config: Any) -> LayerFactory:
        raise NotImplementedError

    def build_model(self, config: Any, float_model: nn.Module | None) -> nn.Module:
        from binforge.model.arch import binary_from_float

        if float_model is None:
            float_model = float_structure(config)
        return binary_from_float(float_model, layer_factory=self.layer_factory(config))

    def build_optimizer(self, model: nn.Module, config: Any) -> CaseOptimizer:
        latent = [layer.weight for _, layer in latent_binary_layers(model)] if self.clip_latent else []
        params = [p for p in model.parameters() if p.requires_grad]
        return CaseOptimizer(model, {"adam": torch.optim.Adam(params, lr=config.lr)},
                             latent_clip=latent)

    def summary(self, context: Any) -> dict[str, Any]:
        return {"method_options": {spec.key: self.option(context.config, spec.key)
                                   for spec in self.options}}


def float_structure(config: Any) -> nn.Module:
    """The float twin the training loop pre-trains, built from a run's configuration."""
    from binforge.model.train import _build_float_model

    return _build_float_model(config)


class SteMethod(CompanionMethod):
    """``ste``: plain BNN (Hubara et al.): sign, hardtanh STE, latent weights clipped to [-1, 1], Adam."""

    name = "ste"
    clip_latent = True

    def layer_factory(self, config: Any) -> LayerFactory:
        def conv(in_ch, out_ch, kernel, stride, padding):
            return LatentBinaryConv2d(in_ch, out_ch, kernel, stride, padding)

        return LayerFactory(conv=conv, linear=LatentBinaryLinear, name="ste")

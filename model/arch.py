"""Network architectures (MLP, VGG-small, ResNet-20, ResNet-18 normal and Bi-Real) for any binary layer.

Every network is a :class:`BinforgeNet` whose ``body`` is an ``nn.Sequential``.
The first layer is a float :class:`~binforge.model.layers.FloatInputConv`
(padding with -1) and the last a :class:`~binforge.model.layers.BinaryInputLinear`
classifier; the layers in between come from a :class:`LayerFactory`, so
PaBT's MBN layers, the companion methods' layers and float stand-ins for
pre-training all build the same topology. A binary block is
``binary conv -> BatchNorm2d -> (MaxPool2d)``: the activation binarization
lives inside the next binary layer.

The float variant (:data:`FLOAT_LAYERS`) replaces each binary layer by
``hardtanh -> float conv`` (padding -1, like the binary layer) and the
classifier by ``hardtanh -> linear``; :func:`binary_from_float` turns a
pre-trained float model into its binary twin (same module names).

Residual networks train, but the compiler refuses them (their shortcut sums
are not a chain of layers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BinaryInputLinear, FloatInputConv, MBNConv2d, MBNLinear

__all__ = [
    "ARCHITECTURES",
    "LayerFactory",
    "mbn_layers",
    "FLOAT_LAYERS",
    "FloatActConv2d",
    "FloatActLinear",
    "FloatClassifier",
    "BasicBlock",
    "BinforgeNet",
    "build_model",
    "binary_from_float",
    "binary_layer_stats",
]


@dataclass(frozen=True)
class LayerFactory:
    """How an architecture builds its binary (or stand-in) layers.

    Parameters
    ----------
    conv:
        ``conv(in_ch, out_ch, kernel, stride, padding) -> nn.Module``: a layer
        that binarizes its own input (a binary block is ``conv -> BN``).
    linear:
        ``linear(in_f, out_f) -> nn.Module``: the same for fully connected layers.
    classifier:
        ``classifier(in_f, num_classes) -> nn.Module``; defaults to
        :class:`BinaryInputLinear`.
    name:
        Recorded in the model's ``arch_config``.
    """

    conv: Callable[[int, int, int, int, int], nn.Module]
    linear: Callable[[int, int], nn.Module]
    classifier: Callable[[int, int], nn.Module] = BinaryInputLinear
    name: str = "custom"


def mbn_layers(M: int = 3, N: int = 3, scaling: str = "operation") -> LayerFactory:
    """The factory of PaBT's MBN layers with M weight and N activation bases."""

    def conv(in_ch, out_ch, kernel, stride, padding):
        return MBNConv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, M=M, N=N,
                         scaling=scaling)

    def linear(in_f, out_f):
        return MBNLinear(in_f, out_f, M=M, N=N, scaling=scaling)

    return LayerFactory(conv=conv, linear=linear, name=f"mbn-{M}x{N}-{scaling}")


class FloatActConv2d(nn.Module):
    """Float stand-in for a binary convolution: ``hardtanh``, pad with -1, float conv.

    Members
    -------
    conv:
        ``nn.Conv2d(..., padding=0, bias=False)``; its weight initialises the
        binary layer in :func:`binary_from_float`.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.padding = int(padding)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardtanh(x)
        if self.padding:
            p = self.padding
            x = F.pad(x, (p, p, p, p), value=-1.0)
        return self.conv(x)


class FloatActLinear(nn.Module):
    """Float stand-in for a binary linear layer: ``hardtanh`` then ``linear`` (no bias)."""

    def __init__(self, in_f: int, out_f: int):
        super().__init__()
        self.linear = nn.Linear(in_f, out_f, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.hardtanh(x))


class FloatClassifier(nn.Module):
    """Float stand-in for :class:`BinaryInputLinear`: ``hardtanh`` then linear with bias.

    Members
    -------
    weight, bias:
        Copied into the binary classifier by :func:`binary_from_float`.
    """

    def __init__(self, in_f: int, out_f: int):
        super().__init__()
        reference = nn.Linear(in_f, out_f)
        self.weight = nn.Parameter(reference.weight.detach().clone())
        self.bias = nn.Parameter(reference.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.hardtanh(x), self.weight, self.bias)


#: Float pre-training: the same topologies with float layers in place of binary ones.
FLOAT_LAYERS = LayerFactory(conv=FloatActConv2d, linear=FloatActLinear,
                            classifier=FloatClassifier, name="float")


class BasicBlock(nn.Module):
    """Residual block of two 3x3 layers from a factory, each followed by batch norm.

    ``structure="normal"``: ``out = bn2(conv2(bn1(conv1(x)))) + shortcut(x)``.
    ``structure="bireal"`` (Bi-Real Net, a shortcut around every binary conv):
    ``h = bn1(conv1(x)) + shortcut(x)``, ``out = bn2(conv2(h)) + h``.
    A down-sampling shortcut is float: average pool (ceil mode), 1x1 conv, batch norm.
    """

    def __init__(self, factory: LayerFactory, in_ch: int, out_ch: int, stride: int,
                 structure: str = "normal"):
        super().__init__()
        if structure not in ("normal", "bireal"):
            raise ValueError(f"structure must be 'normal' or 'bireal', not {structure!r}")
        self.structure = structure
        self.conv1 = factory.conv(in_ch, out_ch, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = factory.conv(out_ch, out_ch, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride == 1 and in_ch == out_ch:
            self.shortcut = nn.Identity()
        else:
            pool = ([nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)]
                    if stride > 1 else [])
            self.shortcut = nn.Sequential(*pool, nn.Conv2d(in_ch, out_ch, 1, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.structure == "normal":
            return self.bn2(self.conv2(self.bn1(self.conv1(x)))) + self.shortcut(x)
        h = self.bn1(self.conv1(x)) + self.shortcut(x)
        return self.bn2(self.conv2(h)) + h


class BinforgeNet(nn.Module):
    """A network: ``forward(x) = body(x)``, plus the configuration that built it.

    Members
    -------
    body:
        ``nn.Sequential`` of the layers (what the compiler walks).
    arch_config:
        ``dict(arch, in_shape, num_classes, width, layers)``: enough to
        rebuild the topology (``layers`` is the factory's name).
    """

    def __init__(self, body: nn.Sequential, arch_config: dict):
        super().__init__()
        self.body = body
        self.arch_config = dict(arch_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _ch(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _mlp(factory, in_shape, num_classes, width):
    c, h, w = in_shape
    if h != w:
        raise ValueError(f"the mlp needs a square input (its first layer is an {h}x{w} "
                         f"convolution kernel), not {h}x{w}")
    hidden = _ch(256, width)
    # The first layer sees the whole image: a float convolution whose kernel is the image.
    return [FloatInputConv(c, hidden, h), nn.BatchNorm2d(hidden), nn.Flatten(),
            factory.linear(hidden, hidden), nn.BatchNorm1d(hidden),
            factory.linear(hidden, hidden), nn.BatchNorm1d(hidden),
            factory.classifier(hidden, num_classes)]


def _vgg_small(factory, in_shape, num_classes, width):
    c, h, w = in_shape
    widths = [_ch(64, width), _ch(128, width), _ch(256, width)]
    layers: list[nn.Module] = [FloatInputConv(c, widths[0], 3, 1, 1), nn.BatchNorm2d(widths[0])]
    previous = widths[0]
    for stage, channels in enumerate(widths):
        for conv_index in range(2):
            if stage == 0 and conv_index == 0:
                continue  # the float first layer is this stage's first conv
            layers += [factory.conv(previous, channels, 3, 1, 1), nn.BatchNorm2d(channels)]
            previous = channels
        layers.append(nn.MaxPool2d(2))
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"vgg-small pools three times: the input must be at least 8x8, "
                         f"not {in_shape[1]}x{in_shape[2]}")
    layers += [nn.Flatten(), factory.classifier(previous * h * w, num_classes)]
    return layers


def _resnet(factory, in_shape, num_classes, width, stages, blocks, structure, imagenet_stem):
    # imagenet_stem: 7x7 stride 2 and max-pool (inputs >= 64x64); else a 3x3 stride-1 stem.
    c = in_shape[0]
    first = _ch(stages[0], width)
    if imagenet_stem:
        layers: list[nn.Module] = [FloatInputConv(c, first, 7, 2, 3), nn.BatchNorm2d(first),
                                   nn.MaxPool2d(3, 2, 1)]
    else:
        layers = [FloatInputConv(c, first, 3, 1, 1), nn.BatchNorm2d(first)]
    previous = first
    for index, channels in enumerate(stages):
        channels = _ch(channels, width)
        for block in range(blocks):
            stride = 2 if index > 0 and block == 0 else 1
            layers.append(BasicBlock(factory, previous, channels, stride, structure))
            previous = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), factory.classifier(previous, num_classes)]
    return layers


def _resnet20(factory, in_shape, num_classes, width):
    return _resnet(factory, in_shape, num_classes, width, (16, 32, 64), 3, "normal",
                   min(in_shape[1:]) >= 64)


def _resnet18(factory, in_shape, num_classes, width, structure="normal"):
    imagenet_stem = min(in_shape[1:]) >= 64
    return _resnet(factory, in_shape, num_classes, width, (64, 128, 256, 512), 2, structure,
                   imagenet_stem)


#: Architecture names accepted by :func:`build_model` (underscores are accepted for dashes).
ARCHITECTURES: dict[str, Callable] = {
    "mlp": _mlp,
    "vgg-small": _vgg_small,
    "resnet20": _resnet20,
    "resnet18": lambda *a: _resnet18(*a, structure="normal"),
    "resnet18-bireal": lambda *a: _resnet18(*a, structure="bireal"),
}


def build_model(arch: str, in_shape: tuple[int, int, int], num_classes: int,
                method_layer_factory: LayerFactory | None = None, width: float = 1.0,
                M: int = 3, N: int = 3, scaling: str = "operation") -> BinforgeNet:
    """Build an architecture with the given binary layers.

    Parameters
    ----------
    arch:
        One of :data:`ARCHITECTURES` (``mlp``, ``vgg-small``, ``resnet20``,
        ``resnet18``, ``resnet18-bireal``; ``vgg_small`` etc. accepted).
    in_shape:
        ``(channels, height, width)`` of the input, e.g. ``(1, 28, 28)``.
    num_classes:
        Classifier outputs.
    method_layer_factory:
        The binary layers; ``None`` means MBN layers ``mbn_layers(M, N, scaling)``.
        :data:`FLOAT_LAYERS` builds the float twin for pre-training.
    width:
        Channel multiplier (channels are ``max(1, round(c * width))``).
    M, N, scaling:
        Used only when ``method_layer_factory`` is ``None``.
    """
    key = arch.replace("_", "-")
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be (channels, height, width), not {in_shape!r}")
    if num_classes < 1 or width <= 0:
        raise ValueError(f"num_classes and width must be positive, not {num_classes!r}, {width!r}")
    factory = method_layer_factory if method_layer_factory is not None else mbn_layers(M, N, scaling)
    layers = ARCHITECTURES[key](factory, tuple(in_shape), num_classes, width)
    config = {"arch": key, "in_shape": tuple(in_shape), "num_classes": int(num_classes),
              "width": float(width), "layers": factory.name}
    return BinforgeNet(nn.Sequential(*layers), config)


@torch.no_grad()
def binary_from_float(float_model: BinforgeNet, M: int = 3, N: int = 3,
                      scaling: str = "operation",
                      layer_factory: LayerFactory | None = None) -> BinforgeNet:
    """The binary twin of a float model built with :data:`FLOAT_LAYERS`.

    The first layer, batch norms, float shortcut convolutions and the
    classifier's weight and bias are copied; every binary layer is
    initialised with ``init_from_float`` from its float stand-in's weight
    (for MBN layers: ABC-Net's shifted signs and least-squares scales).

    Parameters
    ----------
    float_model:
        Built by :func:`build_model` with :data:`FLOAT_LAYERS`.
    M, N, scaling:
        The MBN layers, used when ``layer_factory`` is ``None``.
    layer_factory:
        Other binary layers; they must have ``init_from_float(weight)``.
    """
    config = getattr(float_model, "arch_config", None)
    if not config or config.get("layers") != "float":
        raise ValueError("binary_from_float needs a model built with FLOAT_LAYERS")
    factory = layer_factory if layer_factory is not None else mbn_layers(M, N, scaling)
    binary = build_model(config["arch"], config["in_shape"], config["num_classes"], factory,
                         width=config["width"])
    sources = dict(float_model.named_modules())
    covered: set[str] = set()
    for name, module in binary.named_modules():
        if any(name.startswith(prefix + ".") for prefix in covered):
            continue
        source = sources.get(name)
        if isinstance(source, (FloatActConv2d, FloatActLinear)):
            if not hasattr(module, "init_from_float"):
                raise ValueError(f"layer {name} ({type(module).__name__}) has no init_from_float")
            float_weight = source.conv.weight if isinstance(source, FloatActConv2d) else source.linear.weight
            module.init_from_float(float_weight)
            covered.add(name)
        elif isinstance(source, FloatClassifier):
            module.weight.copy_(source.weight)
            module.bias.copy_(source.bias)
            covered.add(name)
        elif isinstance(module, (FloatInputConv, nn.BatchNorm1d, nn.BatchNorm2d, nn.Conv2d)):
            module.load_state_dict(source.state_dict())
            covered.add(name)
    return binary


@torch.no_grad()
def binary_layer_stats(model: nn.Module, in_shape: tuple[int, int, int]) -> list[dict]:
    """Per binary layer (modules with ``bit_ops``): bit-widths, ops, scaling factors, Bit-OPs.

    Runs one dummy forward pass (batch of 2, eval mode restored afterwards)
    to learn each layer's input size. Returns one dict per layer with keys
    ``name, weight_bits, act_bits, surviving_ops, num_scaling_factors, bit_ops``;
    a layer without one of these properties is a plain binary layer and counts 1.
    """
    layers = [(name, m) for name, m in model.named_modules() if hasattr(m, "bit_ops")]
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_hook(
        lambda mod, inputs, output, name=name: sizes.__setitem__(
            name, tuple(inputs[0].shape[2:4]) if inputs[0].dim() == 4 else None))
        for name, m in layers]
    was_training = model.training
    model.eval()
    try:
        reference = next(model.parameters())
        model(torch.zeros((2,) + tuple(in_shape), device=reference.device, dtype=reference.dtype))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    stats = []
    for name, m in layers:
        stats.append({
            "name": name,
            "weight_bits": int(getattr(m, "weight_bits", 1)),
            "act_bits": int(getattr(m, "act_bits", 1)),
            "surviving_ops": int(getattr(m, "surviving_ops", 1)),
            "num_scaling_factors": int(getattr(m, "num_scaling_factors", 1)),
            "bit_ops": int(m.bit_ops(sizes.get(name))),
        })
    return stats

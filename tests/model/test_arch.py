"""Architectures: output shapes on every input size, float twins, binary_from_float, layer stats."""

import pytest
import torch
from binforge.model.arch import (
    FLOAT_LAYERS,
    BasicBlock,
    LayerFactory,
    binary_from_float,
    binary_layer_stats,
    build_model,
)
from binforge.model.layers import BinaryInputLinear, FloatInputConv, MBNConv2d, MBNLinear
from torch import nn

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32), (3, 224, 224)]
ARCHS = ["mlp", "vgg-small", "resnet20", "resnet18", "resnet18-bireal"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("in_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_output_shape_binary_and_float(arch, in_shape):
    torch.manual_seed(0)
    width = 0.0625 if arch != "mlp" else 0.05
    batch = 1 if in_shape[1] > 64 else 2  # large inputs: one image, eval mode (cheaper)
    x = torch.randn((batch,) + in_shape).clamp(-1, 1)
    for factory in (None, FLOAT_LAYERS):
        model = build_model(arch, in_shape, 10, factory, width=width, M=2, N=2)
        model.train(batch > 1)
        assert isinstance(model.body, nn.Sequential)
        assert isinstance(model.body[0], FloatInputConv)
        assert isinstance(model.body[-1], BinaryInputLinear if factory is None else nn.Module)
        assert model(x).shape == (batch, 10)


def test_chain_architectures_use_compiler_layers():
    model = build_model("vgg_small", (1, 28, 28), 10, width=0.125, M=3, N=3)
    kinds = [type(m).__name__ for m in model.body]
    assert kinds == ["FloatInputConv", "BatchNorm2d",
                     "MBNConv2d", "BatchNorm2d", "MaxPool2d",
                     "MBNConv2d", "BatchNorm2d", "MBNConv2d", "BatchNorm2d", "MaxPool2d",
                     "MBNConv2d", "BatchNorm2d", "MBNConv2d", "BatchNorm2d", "MaxPool2d",
                     "Flatten", "BinaryInputLinear"]
    assert model.body[-1].in_features == 32 * 3 * 3
    mlp = build_model("mlp", (1, 8, 8), 10, width=0.25, M=1, N=2)
    assert [type(m).__name__ for m in mlp.body] == [
        "FloatInputConv", "BatchNorm2d", "Flatten", "MBNLinear", "BatchNorm1d",
        "MBNLinear", "BatchNorm1d", "BinaryInputLinear"]
    assert mlp.body[3].M == 1 and mlp.body[3].N == 2


def test_resnet_blocks_and_bireal_structure():
    model = build_model("resnet18-bireal", (3, 32, 32), 10, width=0.0625)
    blocks = [m for m in model.body if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(b.structure == "bireal" for b in blocks)
    assert isinstance(blocks[0].conv1, MBNConv2d)
    assert len([m for m in build_model("resnet20", (3, 32, 32), 10, width=0.25).body
                if isinstance(m, BasicBlock)]) == 9


def test_custom_layer_factory_is_used():
    made = []

    def conv(in_ch, out_ch, k, stride, padding):
        made.append((in_ch, out_ch, k, stride, padding))
        return nn.Conv2d(in_ch, out_ch, k, stride, padding)

    factory = LayerFactory(conv=conv, linear=nn.Linear, name="plain")
    model = build_model("vgg-small", (1, 8, 8), 4, factory, width=0.125)
    assert made[0] == (8, 8, 3, 1, 1) and len(made) == 5
    assert model.arch_config["layers"] == "plain"
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 4)


def test_unknown_arch_and_bad_input():
    with pytest.raises(ValueError, match="unknown architecture 'alexnet'"):
        build_model("alexnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="square input"):
        build_model("mlp", (1, 8, 6), 10)


@pytest.mark.parametrize("arch", ["vgg-small", "resnet20", "mlp"])
def test_binary_from_float_keeps_first_last_and_bn(arch):
    torch.manual_seed(0)
    float_model = build_model(arch, (1, 8, 8), 10, FLOAT_LAYERS, width=0.125)
    with torch.no_grad():
        for m in float_model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.weight.uniform_(0.5, 2)
    binary = binary_from_float(float_model, M=3, N=2)
    assert torch.equal(binary.body[0].conv.weight, float_model.body[0].conv.weight)
    assert torch.equal(binary.body[-1].weight, float_model.body[-1].weight)
    assert torch.equal(binary.body[-1].bias, float_model.body[-1].bias)
    float_mods = dict(float_model.named_modules())
    checked = 0
    for name, m in binary.named_modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            assert torch.equal(m.running_mean, float_mods[name].running_mean), name
            assert torch.equal(m.weight, float_mods[name].weight), name
        if isinstance(m, MBNConv2d | MBNLinear):
            src = float_mods[name]
            w = src.conv.weight if hasattr(src, "conv") else src.linear.weight
            assert torch.equal(m.weight_bases[1], torch.where(w >= w.mean(), 1.0, -1.0)), name
            assert m.M == 3 and m.N == 2
            checked += 1
    assert checked >= 2
    with pytest.raises(ValueError, match="FLOAT_LAYERS"):
        binary_from_float(binary)


def test_binary_layer_stats_report_bit_ops_and_bits():
    model = build_model("vgg-small", (1, 8, 8), 10, width=0.125, M=2, N=3)
    model.body[2].prune(1, 0)
    stats = binary_layer_stats(model, (1, 8, 8))
    assert len(stats) == 5
    first = stats[0]
    assert first["name"] == "body.2"
    assert (first["weight_bits"], first["act_bits"], first["surviving_ops"]) == (2, 3, 5)
    assert first["bit_ops"] == 5 * 8 * 8 * 9 * 8 * 8
    assert stats[1]["bit_ops"] == 6 * 16 * 8 * 9 * 4 * 4

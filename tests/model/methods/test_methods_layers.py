"""Companion methods' binary layers: forward values, surrogate gradients, scales and exports."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from binforge.model.export import BinaryExport, UnsupportedForHardware
from binforge.model.methods.bnnplus import (
    LearnedFilterScale,
    SignSwishSign,
    bnnplus_layer,
    bnnplus_regularizer,
    filter_statistic,
    sign_swish,
    sign_swish_derivative,
    sign_swish_sign,
)
from binforge.model.methods.ste import (
    LatentBinaryConv2d,
    LatentBinaryLinear,
    clip_latent_weights,
    ste_layer_factory,
)
from binforge.model.methods.xnor import (
    FusedGammaScale,
    xnor_input_factor,
    xnor_layer,
    xnorpp_layer,
)


def run_export(export: BinaryExport, x: torch.Tensor) -> torch.Tensor:
    """What the hardware computes from an export: sum over ops of scale * BinaryConv(W_m, A_n)."""
    total = 0
    for m, n, scale in export.ops:
        bits = torch.where(x >= export.act_thresholds[n], 1.0, -1.0)
        weight = export.weight_bases[m]
        if weight.dim() == 2:
            out = F.linear(bits, weight)
            total = total + out * scale
        else:
            p = export.padding
            bits = F.pad(bits, (p, p, p, p), value=export.pad_value)
            out = F.conv2d(bits, weight, stride=export.stride)
            total = total + out * scale.view(1, -1, 1, 1)
    return total


def exportable_layers():
    torch.manual_seed(0)
    return {
        "ste-conv": ste_layer_factory("conv", 3, 5, 3, 1, 1),
        "ste-conv-stride": ste_layer_factory("conv", 3, 4, 3, 2, 0),
        "ste-linear": ste_layer_factory("linear", 12, 6),
        "bnn+-conv": bnnplus_layer("conv", 3, 5, 3, 1, 1, alpha_init="median"),
        "bnn+-linear": bnnplus_layer("linear", 12, 6, alpha_init="mean"),
        "xnor-conv": xnor_layer("conv", 3, 5, 3, 1, 1),
        "xnor-linear": xnor_layer("linear", 12, 6),
        "xnor++1-conv": xnorpp_layer("conv", 3, 5, 3, 1, 1, case=1),
        "xnor++3-linear": xnorpp_layer("linear", 12, 6, case=3),
    }


@pytest.mark.parametrize("name", list(exportable_layers()))
def test_export_reproduces_the_layer(name):
    layer = exportable_layers()[name]
    with torch.no_grad():  # make the scales non-trivial
        for p in layer.parameters():
            if p is not layer.weight:
                p.mul_(torch.empty_like(p).uniform_(0.5, 2.0))
    x = torch.randn(2, 3, 6, 6) if isinstance(layer, LatentBinaryConv2d) else torch.randn(4, 12)
    x[0].flatten()[0] = 0.0  # sign(0) = +1 on both sides
    export = layer.export_binary()
    assert isinstance(export, BinaryExport)
    assert set(export.weight_bases.unique().tolist()) <= {-1.0, 1.0}
    assert export.weight_bases.shape == (1,) + tuple(layer.weight.shape)
    assert export.act_thresholds.tolist() == [0.0]
    assert len(export.ops) == 1 and export.ops[0][:2] == (0, 0)
    assert export.ops[0][2].shape == (layer.out_channels,)
    with torch.no_grad():
        torch.testing.assert_close(run_export(export, x), layer(x), rtol=1e-5, atol=1e-5)


def test_ste_scale_is_one_and_forward_is_plain_sign_conv():
    torch.manual_seed(1)
    layer = LatentBinaryConv2d(2, 3, 3, stride=1, padding=1)
    x = torch.randn(1, 2, 5, 5)
    expected = F.conv2d(F.pad(torch.where(x >= 0, 1.0, -1.0), (1, 1, 1, 1), value=-1.0),
                        torch.where(layer.weight >= 0, 1.0, -1.0))
    torch.testing.assert_close(layer(x), expected)
    assert layer.export_binary().ops[0][2].tolist() == [1.0, 1.0, 1.0]


def test_ste_gradient_is_hardtanh_derivative_and_clip_bounds_latent_weights():
    layer = LatentBinaryLinear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -2.0, 1.0]]))
    x = torch.tensor([[0.3, 1.5, -1.0]], requires_grad=True)
    layer(x).sum().backward()
    # d/dx: sign(W) * 1{|x| <= 1}; d/dW: sign(x) * 1{|W| <= 1}
    assert x.grad.tolist() == [[1.0, 0.0, 1.0]]
    assert layer.weight.grad.tolist() == [[1.0, 0.0, -1.0]]
    clip_latent_weights([layer])
    assert layer.weight.tolist() == [[0.5, -1.0, 1.0]]


def test_sign_swish_derivative_matches_autograd_of_eq2():
    x = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    for beta in (1.0, 5.0, 10.0):
        (grad,) = torch.autograd.grad(sign_swish(x, beta).sum(), x)
        torch.testing.assert_close(sign_swish_derivative(x.detach(), beta), grad)
    # zero near +-2.4 / beta, beta at 0, finite far out
    assert sign_swish_derivative(torch.tensor(0.0), 5.0).item() == pytest.approx(5.0)
    assert abs(sign_swish_derivative(torch.tensor(2.3994 / 5), 5.0).item()) < 1e-3
    assert sign_swish_derivative(torch.tensor(1e4), 5.0).item() == 0.0


def test_sign_swish_sign_forward_is_sign_backward_is_ss_derivative_and_beta_learns():
    x = torch.tensor([-0.7, -0.1, 0.0, 0.2, 1.5], dtype=torch.float64, requires_grad=True)
    binarizer = SignSwishSign(beta=5.0, trainable=True).double()
    y = binarizer(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    (y * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights * sign_swish_derivative(x.detach(), 5.0))
    beta = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad((sign_swish(x.detach(), beta) * weights).sum(), beta)
    torch.testing.assert_close(binarizer.beta.grad, expected)
    fixed = SignSwishSign(beta=5.0, trainable=False)
    assert not any(True for _ in fixed.parameters())
    with pytest.raises(ValueError, match="beta must be positive"):
        SignSwishSign(beta=0.0)
    assert sign_swish_sign(torch.tensor([0.0]), 2.0).item() == 1.0


def test_filter_statistics_match_numpy():
    torch.manual_seed(2)
    weight = torch.randn(4, 3, 3, 3)
    magnitudes = weight.abs().reshape(4, -1).numpy()
    np.testing.assert_allclose(filter_statistic(weight, "median").numpy(),
                               np.median(magnitudes, axis=1), rtol=1e-6)  # 27 values: odd count
    np.testing.assert_allclose(filter_statistic(weight, "mean").numpy(), magnitudes.mean(1), rtol=1e-6)
    np.testing.assert_allclose(filter_statistic(weight, "p75").numpy(),
                               np.percentile(magnitudes, 75, axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="alpha init must be one of median, mean, p75"):
        filter_statistic(weight, "max")
    scale = LearnedFilterScale(4, "p75")
    scale.reset_from_weight(weight)
    np.testing.assert_allclose(scale.alpha.detach().numpy(), np.percentile(magnitudes, 75, axis=1),
                               rtol=1e-6)


def test_bnnplus_regularisers_and_alpha_in_the_weights():
    layer = bnnplus_layer("linear", 2, 2, alpha_init="mean")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.5], [0.2, 0.0]]))
        layer.scaler.alpha.copy_(torch.tensor([1.0, 0.5]))
    # R1 = |1 - .5| + |1 - 1.5| + |.5 - .2| + |.5 - 0| = 1.8; R2 = .25 + .25 + .09 + .25
    assert bnnplus_regularizer([layer], "r1").item() == pytest.approx(1.8)
    assert bnnplus_regularizer([layer], "r2").item() == pytest.approx(0.84)
    assert bnnplus_regularizer([layer], "none").item() == 0.0
    bnnplus_regularizer([layer], "r1").backward()
    assert layer.scaler.alpha.grad.tolist() == [0.0, 2.0]  # d/d alpha of sum |alpha - |w||
    with torch.no_grad():
        out = layer(torch.tensor([[1.0, 1.0]]))
    # alpha times sign(W) times sign(x): [1 * (1 - 1), 0.5 * (1 + 1)]
    assert out.tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="regularizer must be one of r1, r2, none"):
        bnnplus_regularizer([layer], "l2")


def test_xnor_scales_are_analytic():
    torch.manual_seed(3)
    layer = xnor_layer("conv", 2, 3, 3, 1, 1)
    alpha = layer.weight.abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(layer.export_binary().ops[0][2], alpha)
    x = torch.randn(1, 2, 4, 4)
    mean_abs = x.abs().mean(1, keepdim=True)
    k = F.conv2d(F.pad(mean_abs, (1, 1, 1, 1)), torch.full((1, 1, 3, 3), 1 / 9))
    torch.testing.assert_close(xnor_input_factor(x, 3, 1, 1), k)
    with_k = xnor_layer("conv", 2, 3, 3, 1, 1, input_factor=True)
    with torch.no_grad():
        with_k.weight.copy_(layer.weight)
        torch.testing.assert_close(with_k(x), layer(x) * k)
    torch.testing.assert_close(xnor_input_factor(torch.tensor([[1.0, -3.0]]), 3), torch.tensor([[2.0]]))


def test_xnorpp_gamma_shapes_and_merge():
    torch.manual_seed(4)
    for case, shapes in {1: [(5,)], 2: [(5, 4, 3)], 3: [(5,), (4, 3)], 4: [(5,), (4,), (3,)]}.items():
        scale = FusedGammaScale(case, 5, (4, 3))
        assert [tuple(p.shape) for p in scale.parameters()] == shapes
        with torch.no_grad():
            for p in scale.parameters():
                p.copy_(torch.randn_like(p))
        merged = scale.merged()
        assert merged.shape == (5, 4, 3)
        if case == 4:
            expected = torch.einsum("o,h,w->ohw", scale.alpha, scale.beta, scale.gamma)
            torch.testing.assert_close(merged, expected)
    layer = xnorpp_layer("conv", 2, 5, 3, 1, 1, case=3, input_hw=(4, 3))
    x = torch.randn(2, 2, 4, 3)
    with torch.no_grad():
        plain = F.conv2d(F.pad(torch.where(x >= 0, 1.0, -1.0), (1, 1, 1, 1), value=-1.0),
                         torch.where(layer.weight >= 0, 1.0, -1.0))
        torch.testing.assert_close(layer(x), plain * layer.scaler.merged())
    with pytest.raises(ValueError, match="needs the layer's input size"):
        xnorpp_layer("conv", 2, 5, 3, 1, 1, case=2)
    with pytest.raises(ValueError, match="case must be 1, 2, 3 or 4"):
        FusedGammaScale(5, 5, (4, 3))


@pytest.mark.parametrize("case", [2, 3, 4])
def test_xnorpp_spatial_cases_refuse_export(case):
    layer = xnorpp_layer("conv", 2, 5, 3, 1, 1, case=case, input_hw=(4, 4))
    with pytest.raises(UnsupportedForHardware, match=f"case {case} scales every output pixel"):
        layer.export_binary()


def test_xnor_input_factor_refuses_export():
    for layer in (xnor_layer("conv", 2, 3, 3, 1, 1, input_factor=True),
                  xnor_layer("linear", 4, 3, input_factor=True)):
        with pytest.raises(UnsupportedForHardware, match="input factor K is computed from each input"):
            layer.export_binary()


def test_float_weight_layer_refuses_export_until_binarized():
    layer = LatentBinaryConv2d(2, 3, 3)
    layer.weight_binarized.fill_(False)
    x = torch.randn(1, 2, 5, 5)
    expected = F.conv2d(torch.where(x >= 0, 1.0, -1.0), layer.weight)
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(UnsupportedForHardware, match="not binarized yet"):
        layer.export_binary()
    assert layer.weight_bits == 32
    layer.weight_binarized.fill_(True)
    assert layer.weight_bits == 1
    assert layer.export_binary().ops[0][2].tolist() == [1.0, 1.0, 1.0]


def test_init_from_float_copies_weight_and_resets_scales():
    layer = bnnplus_layer("conv", 2, 3, 3, 1, 1, alpha_init="mean")
    weight = torch.randn(3, 2, 3, 3)
    layer.init_from_float(weight)
    torch.testing.assert_close(layer.weight.detach(), weight)
    torch.testing.assert_close(layer.scaler.alpha.detach(), weight.abs().mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="float weight has shape"):
        layer.init_from_float(torch.randn(3, 2))

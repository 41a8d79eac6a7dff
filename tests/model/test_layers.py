"""MBN layers: the fused convolution equals the M x N sum (values and gradients), counts, init, export."""

import pytest
import torch
import torch.nn.functional as F
from binforge.model.export import BinaryExport
from binforge.model.layers import (
    BinaryInputLinear,
    FloatInputConv,
    MBNConv2d,
    MBNLinear,
    is_binary_parameter,
)


def naive_mbn_conv(layer: MBNConv2d, x: torch.Tensor) -> torch.Tensor:
    """Eq. 10 written out: one padded binary convolution per (m, n)."""
    total = 0
    p = layer.padding
    for m in range(layer.M):
        for n in range(layer.N):
            # straight-through: same forward value, hardtanh-derivative gradient
            a_n = torch.clamp(x - layer.act.thresholds[n], -1, 1)
            a_n = a_n + (torch.where(x >= layer.act.thresholds[n], 1.0, -1.0).to(x.dtype) - a_n).detach()
            a_n = F.pad(a_n, (p, p, p, p), value=layer.pad_value)
            w_m = layer.weight_bases[m]
            total = total + layer.mask[m, n] * layer.effective_gamma[m, n] * F.conv2d(
                a_n, w_m, stride=layer.stride)
    return total


def naive_mbn_linear(layer: MBNLinear, x: torch.Tensor) -> torch.Tensor:
    total = 0
    for m in range(layer.M):
        for n in range(layer.N):
            t = layer.act.thresholds[n]
            a_n = torch.clamp(x - t, -1, 1)
            a_n = a_n + (torch.where(x >= t, 1.0, -1.0).to(x.dtype) - a_n).detach()
            total = total + layer.mask[m, n] * layer.effective_gamma[m, n] * F.linear(
                a_n, layer.weight_bases[m])
    return total


def _grads(layer, x):
    names = [name for name, _ in layer.named_parameters()]
    return names, [p.grad.clone() for _, p in layer.named_parameters()] + [x.grad.clone()]


@pytest.mark.parametrize("scaling", ["operation", "base"])
@pytest.mark.parametrize("stride,padding,pad_value,pruned", [
    (1, 1, -1.0, [(0, 1), (2, 0)]),
    (2, 1, 1.0, [(0, 1), (2, 0)]),
    (1, 0, -1.0, [(0, 1), (2, 0)]),
    (1, 1, -1.0, [(0, 0), (1, 0), (2, 0), (2, 2)]),  # activation base 0 unused: skipped
])
def test_fused_conv_equals_naive_sum(scaling, stride, padding, pad_value, pruned):
    torch.manual_seed(1)
    layer = MBNConv2d(3, 5, 3, stride=stride, padding=padding, M=3, N=3, scaling=scaling,
                      pad_value=pad_value).double()
    with torch.no_grad():
        layer.act.thresholds.copy_(torch.tensor([-0.3, 0.4, 0.1]))
        if scaling == "operation":
            layer.gamma.copy_(torch.randn(3, 3))
        else:
            layer.alpha.copy_(torch.randn(3))
            layer.beta.copy_(torch.randn(3))
    for m, n in pruned:
        layer.prune(m, n)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn_like(layer(x))

    (layer(x) * upstream).sum().backward()
    names, fused = _grads(layer, x)
    fused_out = layer(x).detach()
    layer.zero_grad()
    x.grad = None
    (naive_mbn_conv(layer, x) * upstream).sum().backward()
    _, naive = _grads(layer, x)

    assert torch.allclose(fused_out, naive_mbn_conv(layer, x).detach(), atol=1e-10)
    assert "weight_bases" in names and "act.thresholds" in names
    for name, a, b in zip(names + ["input"], fused, naive, strict=True):
        assert torch.allclose(a, b, atol=1e-9), name
    # pruned ops get no gradient on their gamma
    if scaling == "operation":
        assert all(fused[names.index("gamma")][m, n] == 0 for m, n in pruned)
        assert (fused[names.index("gamma")] != 0).sum() == 9 - len(pruned)


@pytest.mark.parametrize("scaling", ["operation", "base"])
def test_fused_linear_equals_naive_sum(scaling):
    torch.manual_seed(2)
    layer = MBNLinear(6, 4, M=2, N=3, scaling=scaling).double()
    layer.prune(1, 2)
    layer.prune(0, 2)  # activation base 2 unused: skipped
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 4, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()
    names, fused = _grads(layer, x)
    layer.zero_grad()
    x.grad = None
    (naive_mbn_linear(layer, x) * upstream).sum().backward()
    _, naive = _grads(layer, x)
    assert torch.allclose(layer(x), naive_mbn_linear(layer, x), atol=1e-10)
    for name, a, b in zip(names + ["input"], fused, naive, strict=True):
        assert torch.allclose(a, b, atol=1e-9), name


def test_weight_bases_are_one_binary_parameter():
    layer = MBNConv2d(4, 8, 3, M=3, N=3)
    assert layer.weight_bases.shape == (3, 8, 4, 3, 3)
    assert set(layer.weight_bases.unique().tolist()) == {-1.0, 1.0}
    assert is_binary_parameter(layer.weight_bases)
    assert not any(is_binary_parameter(p) for n, p in layer.named_parameters() if n != "weight_bases")
    assert layer.gamma.shape == (3, 3) and layer.mask.shape == (3, 3)
    base = MBNConv2d(4, 8, 3, M=2, N=3, scaling="base")
    assert base.alpha.shape == (2,) and base.beta.shape == (3,)
    assert torch.allclose(base.effective_gamma, base.alpha[:, None] * base.beta[None, :])


def test_prune_counts_and_refuses_last_op():
    layer = MBNConv2d(4, 8, 3, padding=1, M=2, N=3)
    assert (layer.surviving_ops, layer.weight_bits, layer.act_bits) == (6, 2, 3)
    assert layer.num_scaling_factors == 6
    for n in range(3):
        layer.prune(1, n)
    assert (layer.surviving_ops, layer.weight_bits, layer.act_bits) == (3, 1, 3)
    layer.prune(0, 0)
    layer.prune(0, 2)
    assert (layer.surviving_ops, layer.weight_bits, layer.act_bits) == (1, 1, 1)
    assert layer.surviving_op_list == [(0, 1)]
    with pytest.raises(ValueError, match=r"op \(0, 1\) is the last surviving op"):
        layer.prune(0, 1)
    with pytest.raises(ValueError, match="already pruned"):
        layer.prune(1, 1)
    with pytest.raises(ValueError, match="outside"):
        layer.prune(2, 0)
    # 1 op * Co * Ci * k^2 * Ho * Wo
    assert layer.bit_ops((10, 12)) == 1 * 8 * 4 * 9 * 10 * 12
    assert MBNLinear(5, 7, M=2, N=2).bit_ops() == 4 * 7 * 5


def test_base_form_counts_scaling_factors_like_abcnet():
    layer = MBNLinear(5, 7, M=3, N=2, scaling="base")
    assert layer.num_scaling_factors == 5  # M + N
    layer.prune(2, 0)
    layer.prune(2, 1)
    assert layer.num_scaling_factors == 4


def test_init_from_float_uses_shifted_signs_and_least_squares():
    torch.manual_seed(3)
    w = torch.randn(6, 3, 3, 3)
    layer = MBNConv2d(3, 6, 3, M=3, N=3)
    layer.init_from_float(w)
    std = w.std(unbiased=False)
    for m, u in enumerate([-1.0, 0.0, 1.0]):
        assert torch.equal(layer.weight_bases[m], torch.where(w - w.mean() + u * std >= 0, 1.0, -1.0))
    approx = torch.einsum("m,m...->...", layer.gamma.sum(1), layer.weight_bases)
    # three bases approximate the float weight far better than one scaled sign
    one = MBNConv2d(3, 6, 3, M=1, N=1)
    one.init_from_float(w)
    approx_one = one.gamma[0, 0] * one.weight_bases[0]
    assert (approx - w).norm() < 0.6 * (approx_one - w).norm()
    assert torch.allclose(layer.gamma, layer.gamma[:, :1].expand(3, 3))
    with pytest.raises(ValueError, match="shape"):
        layer.init_from_float(torch.randn(6, 3, 5, 5))


def test_export_binary_lists_surviving_ops():
    layer = MBNConv2d(2, 3, 3, stride=2, padding=1, M=2, N=2, scaling="base", pad_value=1.0)
    layer.prune(0, 0)
    export = layer.export_binary()
    assert isinstance(export, BinaryExport)
    assert torch.equal(export.weight_bases, layer.weight_bases.detach())
    assert torch.equal(export.act_thresholds, layer.act.thresholds.detach())
    assert [(m, n) for m, n, _ in export.ops] == [(0, 1), (1, 0), (1, 1)]
    for m, n, scale in export.ops:
        assert scale.shape == (3,)
        assert torch.allclose(scale, (layer.alpha[m] * layer.beta[n]).expand(3))
    assert (export.kernel, export.stride, export.padding, export.pad_value) == (3, 2, 1, 1.0)
    linear = MBNLinear(4, 2, M=1, N=2).export_binary()
    assert linear.weight_bases.shape == (1, 2, 4) and linear.kernel == 1 and len(linear.ops) == 2


def test_export_reproduces_forward():
    """The export's semantics (sum of scaled binary convs) reproduce the layer's output."""
    torch.manual_seed(4)
    layer = MBNConv2d(3, 4, 3, padding=1, M=2, N=3)
    layer.prune(1, 0)
    x = torch.randn(2, 3, 5, 5)
    e = layer.export_binary()
    y = 0
    for m, n, scale in e.ops:
        a = torch.where(x >= e.act_thresholds[n], 1.0, -1.0)
        a = F.pad(a, (e.padding,) * 4, value=e.pad_value)
        y = y + scale.view(1, -1, 1, 1) * F.conv2d(a, e.weight_bases[m], stride=e.stride)
    assert torch.allclose(y, layer(x).detach(), atol=1e-5)


def test_float_input_conv_pads_with_minus_one():
    conv = FloatInputConv(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
    y = conv(torch.ones(1, 1, 4, 4))
    assert conv.conv.bias is None and conv.conv.padding == (0, 0)
    assert y[0, 0, 0, 0].item() == 4 - 5  # corner: 4 inside (+1), 5 padded (-1)
    assert y[0, 0, 1, 1].item() == 9


def test_binary_input_linear_binarizes_by_threshold():
    layer = BinaryInputLinear(3, 2)
    with torch.no_grad():
        layer.threshold.fill_(0.5)
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 1.0]]))
        layer.bias.zero_()
    x = torch.tensor([[0.5, 0.2, 3.0]], requires_grad=True)
    y = layer(x)
    assert y.tolist() == [[1 - 2 + 4, 1]]
    y.sum().backward()
    assert layer.threshold.grad.item() == pytest.approx(-(1 + 2))  # only |x - t| <= 1 pass
    assert x.grad.tolist() == [[1, 2, 0]]


def test_init_from_float_approximates_the_float_layer():
    """More bases, closer to the float layer (hardtanh then conv) it was initialised from."""
    torch.manual_seed(5)
    w = torch.randn(16, 8, 3, 3)
    x = torch.randn(4, 8, 10, 10)
    reference = F.conv2d(F.pad(F.hardtanh(2 * x), (1,) * 4, value=-1.0), w)

    def correlation(M, N):
        layer = MBNConv2d(8, 16, 3, padding=1, M=M, N=N)
        layer.init_from_float(w)
        y = layer(x).detach()
        return torch.corrcoef(torch.stack([y.flatten(), reference.flatten()]))[0, 1].item()

    one, three = correlation(1, 1), correlation(3, 3)
    assert three > 0.85  # measured 0.91 (one base each: 0.72)
    assert three > one + 0.1

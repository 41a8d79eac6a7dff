"""Binarization functions and activation bases: values, sign(0) = +1, straight-through gradients."""

import pytest
import torch
from binforge.model.quant import (
    ActivationBases,
    binarize_threshold,
    default_activation_thresholds,
    fit_base_scales,
    hard_sign,
    shifted_sign_bases,
    sign_ste,
)


def test_sign_ste_values_and_sign_of_zero():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 3.0])
    assert sign_ste(x).tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert hard_sign(torch.zeros(3)).tolist() == [1, 1, 1]


def test_sign_ste_gradient_is_hardtanh_derivative():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5], requires_grad=True)
    (sign_ste(x) * torch.arange(1.0, 8.0)).sum().backward()
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 0]


def test_binarize_threshold_values_and_gradients():
    x = torch.tensor([[-0.5, 0.2, 0.3, 2.0]], requires_grad=True)
    t = torch.tensor(0.2, requires_grad=True)
    y = binarize_threshold(x, t)
    assert y.tolist() == [[-1, 1, 1, 1]]  # x >= t is +1, x == t included
    weights = torch.tensor([[1.0, 10.0, 100.0, 1000.0]])
    (y * weights).sum().backward()
    assert x.grad.tolist() == [[1, 10, 100, 0]]  # |x - t| > 1 blocks the gradient
    assert t.grad.item() == pytest.approx(-111.0)


def test_shifted_sign_bases_follow_abcnet():
    w = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])
    bases = shifted_sign_bases(w, 3)
    std = w.std(unbiased=False)
    for m, u in enumerate([-1.0, 0.0, 1.0]):
        expected = torch.where(w - w.mean() + u * std >= 0, 1.0, -1.0)
        assert torch.equal(bases[m], expected)
    assert torch.equal(shifted_sign_bases(w, 1)[0], torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0]))


def test_fit_base_scales_recovers_exact_combination():
    torch.manual_seed(0)
    bases = torch.where(torch.randn(3, 40) >= 0, 1.0, -1.0)
    c = torch.tensor([0.5, -0.25, 2.0])
    w = (c[:, None] * bases).sum(0)
    assert torch.allclose(fit_base_scales(w, bases), c, atol=1e-5)
    # coinciding bases share the scale (minimum-norm solution)
    twin = torch.stack([bases[0], bases[0]])
    assert torch.allclose(fit_base_scales(2 * bases[0], twin), torch.tensor([1.0, 1.0]), atol=1e-5)


def test_activation_bases_stack_along_channels_base_major():
    act = ActivationBases(3)
    assert act.thresholds.tolist() == pytest.approx([-0.5, 0.0, 0.5])
    x = torch.randn(2, 4, 5, 5)
    y = act(x)
    assert y.shape == (2, 12, 5, 5)
    for n, t in enumerate([-0.5, 0.0, 0.5]):
        assert torch.equal(y[:, 4 * n:4 * (n + 1)], torch.where(x >= t, 1.0, -1.0))
    assert torch.equal(default_activation_thresholds(1), torch.zeros(1))


def test_activation_bases_thresholds_get_gradient():
    act = ActivationBases(2)
    x = torch.linspace(-1, 1, 10).reshape(1, 10)
    act(x).sum().backward()
    # each threshold gets minus the number of inputs within 1 of it
    expected = [-float(((x - t).abs() <= 1).sum()) for t in (-0.5, 0.5)]
    assert act.thresholds.grad.tolist() == expected

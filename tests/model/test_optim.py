"""BOP's flip rule, the optimizer split and its errors, AMSGrad moments for PaBT."""

import copy

import pytest
import torch
from binforge.model.layers import BinaryInputLinear, MBNConv2d, MBNLinear
from binforge.model.optim import (
    Bop,
    CaseOptimizer,
    build_optimizers,
    gamma_moments,
    split_parameters,
)
from torch import nn


def test_bop_flips_on_strong_consistent_gradient():
    w = nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, -1.0]))
    opt = Bop([w], threshold=0.1, gamma=0.5)
    # m = 0.5 * g: strong+same sign flips; strong+opposite sign, weak, or zero do not
    w.grad = torch.tensor([0.4, -0.4, -0.4, 0.1, 0.19, 0.0])
    opt.step()
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0, -1.0]
    assert torch.allclose(opt.state[w]["exp_avg"], 0.5 * w.grad)
    # moving average: m = 0.5 * m + 0.5 * g; element 4 accumulates to 0.095+0.1 >= 0.1
    w.grad = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.2, 0.0])
    opt.step()
    assert torch.allclose(opt.state[w]["exp_avg"][4], torch.tensor(0.1475))
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0, -1.0, -1.0]


def test_bop_threshold_is_inclusive_and_schedulable():
    w = nn.Parameter(torch.tensor([1.0]))
    opt = Bop([w], threshold=0.25, gamma=0.5)
    opt.param_groups[0]["threshold"] = 0.5
    w.grad = torch.tensor([1.0])  # m = 0.5 == threshold: flips (|m| >= tau)
    opt.step()
    assert w.item() == -1.0
    with pytest.raises(ValueError, match="gamma"):
        Bop([w], gamma=2.0)


def _net():
    return nn.Sequential(MBNConv2d(2, 4, 3, padding=1, M=2, N=2), nn.BatchNorm2d(4),
                         nn.Flatten(), BinaryInputLinear(4 * 5 * 5, 3))


def test_split_gives_bases_to_bop_and_the_rest_to_amsgrad():
    net = _net()
    binary, other = split_parameters(net)
    assert [name for name, _ in binary] == ["0.weight_bases"]
    assert "0.gamma" in [name for name, _ in other]
    opt = build_optimizers(net, lr=1e-3, bop_threshold=1e-6, bop_gamma=1e-3)
    assert isinstance(opt["bop"], Bop) and opt["bop"].param_groups[0]["gamma"] == 1e-3
    assert opt["amsgrad"].param_groups[0]["amsgrad"] is True
    x = torch.randn(8, 2, 5, 5)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), torch.arange(8) % 3).backward()
        opt.step()
    assert set(net[0].weight_bases.unique().tolist()) <= {-1.0, 1.0}
    state = opt.state_dict()
    assert set(state) == {"bop", "amsgrad"}
    fresh = build_optimizers(net)
    fresh.load_state_dict(state)
    assert torch.equal(fresh["bop"].state_dict()["state"][0]["exp_avg"],
                       opt["bop"].state[net[0].weight_bases]["exp_avg"])


def test_split_survives_deepcopy():
    net = copy.deepcopy(_net())
    binary, _ = split_parameters(net)
    assert [name for name, _ in binary] == ["0.weight_bases"]


def test_split_errors_name_the_parameter():
    net = _net()
    everything = list(net.parameters())
    with pytest.raises(ValueError, match=r"parameter 0\.weight_bases is claimed by both 'a' and 'b'"):
        CaseOptimizer(net, {"a": torch.optim.Adam(everything),
                            "b": Bop([net[0].weight_bases])})
    others = [p for name, p in net.named_parameters() if name != "3.threshold"]
    with pytest.raises(ValueError, match=r"parameter 3\.threshold is claimed by no optimizer"):
        CaseOptimizer(net, {"a": torch.optim.Adam(others)})


def test_amsgrad_only_ablation_trains_latent_bases():
    torch.manual_seed(0)
    net = _net()
    opt = build_optimizers(net, lr=0.5, use_bop=False)
    assert set(opt.optimizers) == {"amsgrad"}
    x = torch.randn(8, 2, 5, 5)
    before = net[0].weight_bases.detach().clone()
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), torch.arange(8) % 3).backward()
    opt.step()
    after = net[0].weight_bases.detach()
    assert not torch.equal(before, after)
    assert after.abs().max() <= 1.0  # clipped latent weights
    export = net[0].export_binary()
    assert set(export.weight_bases.unique().tolist()) <= {-1.0, 1.0}


def test_gamma_moments_are_amsgrad_state():
    net = nn.Sequential(MBNLinear(4, 3, M=2, N=2))
    opt = build_optimizers(net)
    u, v = gamma_moments(opt, net[0])
    assert torch.equal(u, torch.zeros(2, 2)) and torch.equal(v, torch.zeros(2, 2))
    net(torch.randn(5, 4)).square().sum().backward()
    opt.step()
    u, v = gamma_moments(opt, net[0])
    state = opt["amsgrad"].state[net[0].gamma]
    assert u is state["exp_avg"] and v is state["max_exp_avg_sq"]
    assert u.shape == (2, 2) and (v > 0).any()
    with pytest.raises(ValueError, match="operation-oriented"):
        gamma_moments(opt, MBNLinear(4, 3, scaling="base"))


def test_bop_learns_binary_teacher():
    """BOP alone (no latent weights) fits a layer whose target was made by +-1 weights."""
    torch.manual_seed(0)
    teacher = torch.where(torch.randn(4, 32) >= 0, 1.0, -1.0)
    student = nn.Parameter(torch.where(torch.randn(4, 32) >= 0, 1.0, -1.0))
    opt = Bop([student], threshold=1e-3, gamma=0.05)
    x = torch.randn(256, 32)
    target = x @ teacher.T
    first = None
    for _ in range(150):
        loss = (x @ student.T - target).square().mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(student.unique().tolist()) <= {-1.0, 1.0}
    assert (student == teacher).float().mean() > 0.95
    assert (x @ student.T - target).square().mean().item() < 0.1 * first

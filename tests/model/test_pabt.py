"""PaBT's pruner: Algorithm 1's schedule, Eq. 8's ordering, the last-op rule, base collapse."""

from __future__ import annotations

import json

import pytest
import torch
from binforge.model.layers import MBNLinear
from binforge.model.pabt import (
    PaBTPruner,
    PruneSchedule,
    default_psi,
    importance_scores,
    used_bases,
)


def _layers(count: int = 3, m: int = 3, n: int = 3) -> list[tuple[str, MBNLinear]]:
    torch.manual_seed(0)
    return [(f"layer{i}", MBNLinear(4, 2, M=m, N=n)) for i in range(count)]


# -- schedule arithmetic -----------------------------------------------------------------


def test_schedule_total_and_step_size_follow_algorithm_1():
    # L = 4 layers, M = N = 3, default psi = 8/9: prune_total = L*M*N*psi = 32.
    schedule = PruneSchedule.for_masks([9] * 4, default_psi(3, 3), t_start=100, t_end=420)
    assert schedule.prune_total == 32
    assert schedule.t_prune == 10.0
    # One decision at each t_start + k * t_prune, none before, all by t_end.
    assert schedule.due(99) == 0
    assert schedule.due(100) == 0
    assert [schedule.due(100 + 10 * k) for k in range(1, 33)] == list(range(1, 33))
    assert schedule.due(109) == 0 and schedule.due(110) == 1 and schedule.due(119) == 1
    assert schedule.due(420) == 32 and schedule.due(10_000) == 32


def test_schedule_with_fewer_steps_than_decisions_prunes_several_per_step():
    schedule = PruneSchedule.for_masks([9, 9], 8 / 9, t_start=0, t_end=4)
    assert schedule.prune_total == 16
    assert schedule.t_prune == 0.25
    assert [schedule.due(t) for t in range(5)] == [0, 4, 8, 12, 16]


def test_schedule_caps_at_one_op_per_layer_and_checks_arguments():
    assert PruneSchedule.for_masks([9, 4], 1.0, 0, 10).prune_total == 8 + 3
    assert PruneSchedule.for_masks([9, 9], 0.5, 0, 10).prune_total == 9
    nothing = PruneSchedule.for_masks([1, 1], default_psi(1, 1), 0, 10)  # a BNN already
    assert (nothing.prune_total, nothing.due(10)) == (0, 0)
    with pytest.raises(ValueError, match="t_start < t_end"):
        PruneSchedule(t_start=5, t_end=5, prune_total=1)
    with pytest.raises(ValueError, match="psi must lie in"):
        PruneSchedule.for_masks([9], 1.5, 0, 10)


def test_default_psi_takes_every_layer_to_one_op():
    for m, n in [(1, 1), (2, 3), (3, 3), (4, 2)]:
        total = PruneSchedule.for_masks([m * n] * 5, default_psi(m, n), 0, 100).prune_total
        assert total == 5 * (m * n - 1)


# -- importance scores ---------------------------------------------------------------------


def test_importance_scores_are_eq_8():
    gamma = torch.tensor([[2.0, -1.0]])
    u = torch.tensor([[0.5, 0.25]])
    v = torch.tensor([[0.1, 4.0]])
    f = importance_scores(gamma, u, v, kappa=2.0)
    expected = torch.tensor([[-2 * 0.5 * 2 + 0.5 * 0.1 * 4, -2 * 0.25 * -1 + 0.5 * 4.0 * 1]])
    torch.testing.assert_close(f, expected.double())


def test_pruner_takes_the_globally_least_important_op():
    layers = _layers(count=2, m=2, n=2)
    moments = {}
    for index, (_, layer) in enumerate(layers):
        with torch.no_grad():
            layer.gamma.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
        # v = 1 everywhere, u varies: f = -u + 0.5; the largest u is the least important.
        u = torch.tensor([[0.1, 0.2], [0.3, 0.4]]) + index * torch.tensor([[0.0, 0.0], [0.05, 0.5]])
        moments[id(layer)] = (u, torch.ones(2, 2))
    schedule = PruneSchedule(t_start=0, t_end=3, prune_total=3)
    pruner = PaBTPruner(layers, schedule, kappa=1.0)
    decisions = pruner.step(3, lambda layer: moments[id(layer)])
    picked = [(d.layer, d.m, d.n) for d in decisions]
    # Scores: layer0 -> 0.4,0.3,0.2,0.1; layer1 -> 0.4,0.3,0.15,-0.4. Ascending order.
    assert picked == [("layer1", 1, 1), ("layer0", 1, 1), ("layer1", 1, 0)]
    assert decisions[0].score == pytest.approx(-0.4)
    assert layers[1][1].mask.tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_last_op_of_a_layer_is_never_pruned():
    layers = _layers(count=2, m=2, n=2)
    # layer0's ops look worthless (score 0), layer1's precious: layer0 still keeps one op.
    zero = (torch.zeros(2, 2), torch.zeros(2, 2))
    precious = (torch.full((2, 2), -5.0), torch.ones(2, 2))
    moments = {id(layers[0][1]): zero, id(layers[1][1]): precious}
    schedule = PruneSchedule.for_masks([4, 4], default_psi(2, 2), 0, 6)
    pruner = PaBTPruner(layers, schedule)
    decisions = pruner.step(6, lambda layer: moments[id(layer)])
    assert len(decisions) == 6
    assert [d.layer for d in decisions[:3]] == ["layer0"] * 3
    assert all(int(layer.mask.sum()) == 1 for _, layer in layers)
    assert pruner.candidates() == []
    assert pruner.step(7, lambda layer: moments[id(layer)]) == []


def test_base_collapse_is_detected_and_bit_widths_drop():
    _, layer = _layers(count=1, m=3, n=3)[0]
    schedule = PruneSchedule(t_start=0, t_end=100, prune_total=8)
    pruner = PaBTPruner([("conv", layer)], schedule)
    # Prune row m=0 op by op: the weight base 0 collapses with the third decision.
    decisions = [pruner.impose(step, 0, 0, n, None) for step, n in ((1, 0), (2, 1), (3, 2))]
    assert [d.collapsed_weight_bases for d in decisions] == [[], [], [0]]
    assert [d.weight_bits for d in decisions] == [3, 3, 2]
    assert all(d.act_bits == 3 for d in decisions)
    # Column n=2 of the remaining rows: the activation base 2 collapses.
    d1 = pruner.impose(4, 0, 1, 2, None)
    d2 = pruner.impose(5, 0, 2, 2, None)
    assert d1.collapsed_act_bases == [] and d2.collapsed_act_bases == [2]
    assert (d2.weight_bits, d2.act_bits, d2.surviving_ops) == (2, 2, 4)
    assert (layer.weight_bits, layer.act_bits) == (2, 2)
    assert used_bases(layer.mask) == ([1, 2], [0, 1])
    assert pruner.bit_widths() == {"conv": (2, 2)}
    json.dumps(d2.as_json())  # a prune_log.jsonl line


def test_random_criterion_is_reproducible_per_seed_and_resumable():
    def run(seed: int, split_at: int | None = None) -> list[tuple[str, int, int]]:
        layers = _layers(count=3, m=2, n=3)
        schedule = PruneSchedule.for_masks([6] * 3, default_psi(2, 3), 0, 15)
        pruner = PaBTPruner(layers, schedule, criterion="random", seed=seed)
        picked = []
        for step in range(1, 16):
            if split_at is not None and step == split_at:
                state = pruner.state_dict()
                masks = [layer.mask.clone() for _, layer in layers]
                fresh = _layers(count=3, m=2, n=3)
                for (_, layer), mask in zip(fresh, masks, strict=True):
                    layer.mask.copy_(mask)
                pruner = PaBTPruner(fresh, schedule, criterion="random", seed=999)
                pruner.load_state_dict(state)
            picked += [(d.layer, d.m, d.n) for d in pruner.step(step)]
        return picked

    first = run(seed=7)
    assert len(first) == 15
    assert run(seed=7) == first
    assert run(seed=7, split_at=6) == first
    assert run(seed=8) != first


def test_pruner_rejects_unknown_criterion():
    with pytest.raises(ValueError, match="criterion must be one of"):
        PaBTPruner(_layers(1), PruneSchedule(0, 1, 1), criterion="magnitude")


# -- in the training loop --------------------------------------------------------------------


def test_a_pruned_gamma_stops_training():
    from binforge.model.optim import build_optimizers
    from binforge.model.train import MethodContext, PaBTMethod, RunConfig

    torch.manual_seed(0)
    model = torch.nn.Sequential(MBNLinear(6, 5, M=2, N=2), torch.nn.BatchNorm1d(5))
    optimizer = build_optimizers(model, lr=0.05)
    config = RunConfig(M=2, N=2, t_start="0", t_end="1", psi=0.25)  # one decision, at step 1
    context = MethodContext(model=model, optimizer=optimizer, config=config,
                            steps_per_epoch=10, total_steps=10)  # fmt: skip
    method = PaBTMethod()
    method.start(context)
    x, target = torch.randn(32, 6), torch.randint(0, 5, (32,))
    gammas = []
    for step in range(1, 6):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        context.step = step
        method.after_step(context)
        gammas.append(model[0].gamma.detach().clone())
    (decision,) = context.log
    m, n = decision["m"], decision["n"]
    assert decision["step"] == 1 and model[0].mask[m, n] == 0
    assert all(g[m, n] == gammas[0][m, n] for g in gammas[1:])
    surviving = model[0].mask.bool()
    assert not torch.equal(gammas[-1][surviving], gammas[0][surviving])


@pytest.mark.parametrize("method", ["pabt", "pabt-random"])
def test_pabt_on_digits_ends_at_one_op_per_layer(tmp_path, method):
    from binforge.model.train import RunConfig, train

    # vgg-small at width 1/16 on 8x8 digits: five 3x3 binary convolutions, M = N = 2.
    config = RunConfig(data="digits", arch="vgg-small", width=0.0625, method=method, M=2, N=2,
                       epochs=2, float_epochs=0, batch_size=32, limit_train=128,
                       limit_test=64, t_start="2", t_end="1.5ep", seed=1)  # fmt: skip
    result = train(config, tmp_path / "run")
    metrics = result.metrics
    assert len(metrics["layers"]) == 5
    for layer in metrics["layers"]:
        assert (layer["surviving_ops"], layer["weight_bits"], layer["act_bits"]) == (1, 1, 1)
    log = [json.loads(line) for line in (tmp_path / "run" / "prune_log.jsonl").read_text().splitlines()]
    assert len(log) == 5 * 3 == metrics["pabt"]["prune_total"]
    assert all(2 <= record["step"] <= 6 for record in log)  # t_end = 1.5 epochs of 4 steps
    assert [r["step"] for r in log] == sorted(r["step"] for r in log)
    # Every layer loses exactly one weight base and one activation base on its way to 1/1.
    for name in {r["layer"] for r in log}:
        records = [r for r in log if r["layer"] == name]
        assert sum(len(r["collapsed_weight_bases"]) for r in records) == 1
        assert sum(len(r["collapsed_act_bases"]) for r in records) == 1
        assert records[-1]["surviving_ops"] == 1
    assert (metrics["pabt"]["criterion"] == "random") == (method == "pabt-random")
    assert all(r["score"] is None for r in log) == (method == "pabt-random")

"""Batch-norm recalibration: exact statistics, nothing else touched, wired into ``binforge train``."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from binforge.compiler.compile import compile_model
from binforge.compiler.torch_reference import quantised_model, torch_input_bits, torch_logits
from binforge.model import checkpoint as ckpt
from binforge.model.arch import build_model
from binforge.model.bn_recalibration import batch_norm_layers, recalibrate_batch_norm
from binforge.model.checkpoint import load_run
from binforge.model.data import batch_to_input, load_dataset
from binforge.model.optim import build_optimizers
from binforge.model.train import RunConfig, train
from binforge.sim.golden import run_network
from torch import nn

from binforge.cli import main
from binforge.errors import BinforgeError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _digit_batches(count: int, size: int = 32) -> list[torch.Tensor]:
    images, _ = load_dataset("digits", "train", limit=count * size).as_arrays()
    x = batch_to_input(torch.from_numpy(images))
    return [x[i * size : (i + 1) * size] for i in range(count)]


def _mbn_model(arch: str = "mlp") -> nn.Module:
    """An MBN model with trained-looking statistics, one pruned op and optimizer state."""
    torch.manual_seed(0)
    model = build_model(arch, in_shape=(1, 8, 8), num_classes=10, width=0.125, M=2, N=2)
    batches = _digit_batches(2)
    optimizer = build_optimizers(model, lr=1e-2)
    model.train()
    for x in batches:
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    next(layer for name, layer in model.named_modules() if hasattr(layer, "prune")).prune(1, 0)
    return model, optimizer


def _statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()
            if key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}  # fmt: skip


def _everything_else(model: nn.Module) -> dict[str, torch.Tensor]:
    statistics = _statistics(model)
    return {
        key: value.clone() for key, value in model.state_dict().items() if key not in statistics
    }


def test_statistics_are_the_exact_averages_of_the_batch_statistics():
    """running_mean = mean over batches of the batch means; running_var = mean over batches of
    the unbiased batch variances (torch's momentum=None convention), of the very features each
    batch norm normalised; conv (2d) and linear (1d) batch norms."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 6), nn.BatchNorm1d(6, momentum=0.3))  # fmt: skip
    with torch.no_grad():  # statistics far from the data's, so a no-op would show
        for _, norm in batch_norm_layers(model):
            norm.running_mean.fill_(5.0)
            norm.running_var.fill_(9.0)
    batches = _digit_batches(5)[:4] + [_digit_batches(5)[4][:20]]  # the last one smaller
    seen: dict[str, list[torch.Tensor]] = {"1": [], "5": []}
    modes: list[tuple[bool, ...]] = []

    def record(name):
        def hook(module, args):
            seen[name].append(args[0].detach().clone())
            modes.append(tuple(m.training for m in model))

        return hook

    handles = [model[int(name)].register_forward_pre_hook(record(name)) for name in seen]
    used = recalibrate_batch_norm(model, batches)
    for handle in handles:
        handle.remove()
    assert used == 5
    # only the batch norms ran in training mode
    assert set(modes) == {(False, True, False, False, False, True)}
    for name, dims in (("1", (0, 2, 3)), ("5", (0,))):
        norm = model[int(name)]
        features = seen[name]
        assert len(features) == 5
        mean = torch.stack([f.mean(dims) for f in features]).mean(0)
        var = torch.stack([f.var(dims, unbiased=True) for f in features]).mean(0)
        torch.testing.assert_close(norm.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.running_var, var, rtol=1e-5, atol=1e-6)
        assert int(norm.num_batches_tracked) == 5
    # the second norm saw the first one's batch-normalised output (training mode)
    first = torch.cat(seen["1"][:1])
    normalised = (first - first.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        first.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    expected = model[4](
        torch.relu(
            normalised * model[1].weight.view(1, -1, 1, 1) + model[1].bias.view(1, -1, 1, 1)
        ).flatten(1)
    )
    torch.testing.assert_close(seen["5"][0], expected.detach(), rtol=1e-4, atol=1e-5)
    assert model[1].momentum == 0.1 and model[5].momentum == 0.3  # restored
    assert not model.training and not any(m.training for m in model)


def _assert_equal_nested(a, b, where="optimizer"):
    if torch.is_tensor(b):
        assert torch.is_tensor(a) and torch.equal(a, b), where
    elif isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in b:
            _assert_equal_nested(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal_nested(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def test_weights_bases_masks_and_optimizer_state_are_untouched():
    model, optimizer = _mbn_model()
    before = _everything_else(model)
    statistics = _statistics(model)
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    masks = [key for key in before if key.endswith("mask")]
    assert masks and any(float(before[key].sum()) < before[key].numel() for key in masks)
    model.train()
    assert recalibrate_batch_norm(model, _digit_batches(3)) == 3
    after = _everything_else(model)
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key
    changed = _statistics(model)
    assert any(not torch.equal(changed[k], statistics[k]) for k in statistics if "running" in k)
    _assert_equal_nested(optimizer.state_dict(), optimizer_state)
    assert not model.training


def test_the_statistics_are_deterministic_and_max_batches_counts():
    model, _ = _mbn_model("vgg-small")
    twin = copy.deepcopy(model)
    batches = _digit_batches(4)
    assert recalibrate_batch_norm(model, batches, max_batches=3) == 3
    assert recalibrate_batch_norm(twin, iter(batches[:3])) == 3
    for key, value in _statistics(model).items():
        assert torch.equal(value, _statistics(twin)[key]), key
    assert all(int(norm.num_batches_tracked) == 3 for _, norm in batch_norm_layers(model))


def test_zero_batches_is_a_no_op_and_bad_input_changes_nothing():
    model, _ = _mbn_model()
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}

    def unchanged():
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key

    assert recalibrate_batch_norm(model, _digit_batches(2), max_batches=0) == 0
    unchanged()
    assert model.training  # a no-op leaves even the mode alone
    assert recalibrate_batch_norm(nn.Sequential(nn.Linear(2, 2)), [torch.zeros(3, 2)]) == 0
    with pytest.raises(ValueError, match="no batches to recalibrate batch norm with"):
        recalibrate_batch_norm(model, [])
    with pytest.raises(ValueError, match="max_batches must be >= 0 or None, not -1"):
        recalibrate_batch_norm(model, _digit_batches(1), max_batches=-1)
    unchanged()
    # a forward pass that fails half-way puts the old statistics and momentum back
    broken = [*_digit_batches(2), torch.zeros(4, 1, 5, 5)]
    with pytest.raises(RuntimeError):
        recalibrate_batch_norm(model, broken)
    unchanged()
    assert all(norm.momentum == 0.1 for _, norm in batch_norm_layers(model))


# --------------------------------------------------------------------------------------
# In the training loop and on the command line
# --------------------------------------------------------------------------------------

ARGV = ["train", "--data", "digits", "--arch", "mlp", "--width", "0.125", "--method", "pabt",
        "--M", "2", "--N", "2", "--float-epochs", "1", "--epochs", "2", "--limit-train", "160",
        "--limit-test", "120", "--batch-size", "40", "--seed", "3", "--t-start", "1",
        "--t-end", "7"]  # fmt: skip


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The same tiny PaBT run from the command line: default recalibration, and switched off."""
    root = tmp_path_factory.mktemp("recalibration")
    for name, extra in (("default", []), ("off", ["--recalibrate-bn", "0"])):
        assert main([*ARGV, *extra, "--out", str(root / name)]) == 0
    return root


def test_train_records_top1_before_and_after_recalibration(cli_runs):
    metrics = json.loads((cli_runs / "default" / "metrics.json").read_text())
    record = metrics["bn_recalibration"]
    assert record["batches"] == 4  # 100 asked, one epoch (160 / 40) available
    assert metrics["final_top1"] == record["top1_after"] == metrics["history"][-1]["test_top1"]
    assert record["top1_before"] != record["top1_after"]
    assert json.loads((cli_runs / "default" / "config.json").read_text())["recalibrate_bn"] == 100
    # the saved model holds the recalibrated statistics: it scores top1_after
    model, _ = load_run(cli_runs / "default")
    images, labels = load_dataset("digits", "test", limit=120).as_arrays()
    predictions = torch_logits(model, images).argmax(1)
    assert 100.0 * float(np.mean(predictions == labels)) == pytest.approx(record["top1_after"])
    assert all(int(norm.num_batches_tracked) == 4 for _, norm in batch_norm_layers(model))

    off = json.loads((cli_runs / "off" / "metrics.json").read_text())
    assert "bn_recalibration" not in off and "bn_recalibration" not in off["history"][-1]
    # recalibration draws no random numbers and changes only the statistics: the run without
    # it ends at the same weights, with the accuracy measured before recalibrating
    assert off["final_top1"] == record["top1_before"]
    assert off["history"][:-1] == metrics["history"][:-1]
    with_state = torch.load(cli_runs / "default" / "model.pt", weights_only=True)
    off_state = torch.load(cli_runs / "off" / "model.pt", weights_only=True)
    statistics = [k for k in with_state if k.rsplit(".", 1)[-1] in ("running_mean", "running_var")]
    assert statistics
    for key in with_state:
        if key in statistics or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(with_state[key], off_state[key]), key
    assert any(not torch.equal(with_state[k], off_state[k]) for k in statistics)


def test_train_command_prints_the_recalibration_and_refuses_negative_counts(tmp_path, capsys):
    argv = [*ARGV[:-4], "--out", str(tmp_path / "run"), "--epochs", "1", "--float-epochs", "0",
            "--method", "bop", "--recalibrate-bn", "2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "batch norm recalibrated over 2 training batches: test accuracy " in printed
    assert main([*ARGV, "--out", str(tmp_path / "bad"), "--recalibrate-bn", "-1"]) == 2
    assert "--recalibrate-bn takes a number of batches >= 0" in capsys.readouterr().err


def test_resuming_a_finished_checkpoint_does_not_recalibrate_twice(cli_runs, tmp_path):
    """The checkpoint after the last epoch already holds the recalibrated statistics: a run
    that stopped before writing its outputs resumes to the same model and metrics."""
    import shutil

    run_dir = tmp_path / "crashed"
    shutil.copytree(cli_runs / "default", run_dir)
    for name in ("model.pt", "metrics.json", "report.json"):
        (run_dir / name).unlink()
    config = RunConfig(data="digits", arch="mlp", width=0.125, method="pabt", M=2, N=2, epochs=2,
                       float_epochs=1, batch_size=40, limit_train=160, limit_test=120, seed=3,
                       t_start="1", t_end="7")  # fmt: skip
    result = train(config, run_dir, resume=True)
    expected = json.loads((cli_runs / "default" / "metrics.json").read_text())
    assert result.metrics["bn_recalibration"] == expected["bn_recalibration"]
    assert result.metrics["history"] == expected["history"]
    reference = torch.load(cli_runs / "default" / "model.pt", weights_only=True)
    for key, value in torch.load(run_dir / "model.pt", weights_only=True).items():
        assert torch.equal(value, reference[key]), key

    # a checkpoint written before the option existed (no recalibrate_bn key) still resumes
    # with the default, and a changed count is named as a different configuration
    state = ckpt.load_checkpoint(run_dir)
    del state["config"]["recalibrate_bn"]
    ckpt.save_checkpoint(run_dir, {k: v for k, v in state.items() if k != "format"})
    assert train(config, run_dir, resume=True).finished
    with pytest.raises(BinforgeError, match=r"different configuration.*recalibrate_bn"):
        train(RunConfig(**{**config.to_json(), "recalibrate_bn": 5}), run_dir, resume=True)


def test_compiled_recalibrated_run_golden_equals_torch(cli_runs):
    """The compiler folds the recalibrated statistics: golden = the torch model with the
    compiler's integers, every activation bit (float ties aside) and the predictions."""
    model, config = load_run(cli_runs / "default")
    images, _ = load_dataset("digits", "test", limit=120).as_arrays()
    net, report = compile_model(model, tuple(config["in_shape"]), config["num_classes"])
    result = run_network(net, images, return_layers=True)
    reference = quantised_model(model, report)
    qlogits = torch_logits(reference, images)
    scale = net.layers[-1].output.scale
    np.testing.assert_allclose(result.logits * scale, qlogits, atol=1e-4 * np.abs(qlogits).max())
    assert np.all(qlogits.argmax(1) == result.predictions)
    checked = 0
    for index, (bits, margin) in torch_input_bits(reference, net, report, images).items():
        golden_bits = result.layers[index - 1].reshape(bits.shape)
        clear = margin > 1e-4
        assert np.array_equal(golden_bits[clear], bits[clear]), f"layer {index}"
        checked += int(clear.sum())
    assert checked > 1000

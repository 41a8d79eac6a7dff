"""The training loop: bit-exact resume, determinism, metrics.json, the run folder, the method hook."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from binforge.model.checkpoint import load_run
from binforge.model.train import (
    METHODS,
    Method,
    MethodContext,
    PaBTMethod,
    RunConfig,
    get_method,
    parse_step_spec,
    register_method,
    train,
)

from binforge.errors import BinforgeError

# 160 digits, batches of 40: 4 steps per epoch; hidden width 256 * 0.125 = 32.
TINY = RunConfig(data="digits", arch="mlp", width=0.125, method="pabt", M=2, N=2, epochs=2,
                 float_epochs=1, batch_size=40, limit_train=160, limit_test=120, seed=3,
                 t_start="1", t_end="7")  # fmt: skip


def _state(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted tiny PaBT run that several tests compare against."""
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    result = train(replace(TINY), run_dir)
    return run_dir, result


@pytest.mark.parametrize("stop_after", [1, 2])  # after the float phase / inside the binary phase
def test_resume_equals_an_uninterrupted_run_bit_for_bit(reference_run, tmp_path, stop_after):
    reference_dir, reference = reference_run
    run_dir = tmp_path / "interrupted"
    first = train(replace(TINY), run_dir, stop_after_epochs=stop_after)
    assert not first.finished
    assert not (run_dir / "model.pt").exists()
    resumed = train(replace(TINY), run_dir, resume=True)
    assert resumed.finished
    _assert_same_state(_state(run_dir), _state(reference_dir))
    assert resumed.metrics["top1_per_epoch"] == reference.metrics["top1_per_epoch"]
    assert [h["train_loss"] for h in resumed.metrics["history"]] == [
        h["train_loss"] for h in reference.metrics["history"]
    ]
    assert (run_dir / "prune_log.jsonl").read_text() == (reference_dir / "prune_log.jsonl").read_text()


def test_same_seed_same_run_other_seed_other_run(reference_run, tmp_path):
    reference_dir, reference = reference_run
    again = train(replace(TINY), tmp_path / "again")
    _assert_same_state(_state(tmp_path / "again"), _state(reference_dir))
    assert again.metrics["history"] == reference.metrics["history"]
    train(replace(TINY, seed=4), tmp_path / "other")
    other = _state(tmp_path / "other")
    assert any(not torch.equal(other[k], v) for k, v in _state(reference_dir).items())


def test_metrics_json_holds_accuracy_bit_widths_bit_ops_and_scaling_factors(reference_run):
    run_dir, result = reference_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert [h["phase"] for h in metrics["history"]] == ["float", "binary", "binary"]
    assert len(metrics["top1_per_epoch"]) == 3
    assert metrics["final_top1"] == metrics["history"][-1]["test_top1"]
    assert 0.0 <= metrics["final_top1"] <= 100.0
    assert metrics["wall_time_s"] > 0
    layers = metrics["layers"]
    assert [layer["name"] for layer in layers] == ["body.3", "body.5"]
    # PaBT ends every layer at one op: 1/1 bits, one gamma, 32 x 32 binary MACs each.
    for layer in layers:
        assert (layer["weight_bits"], layer["act_bits"], layer["surviving_ops"]) == (1, 1, 1)
        assert layer["num_scaling_factors"] == 1
        assert layer["bit_ops"] == 32 * 32
    assert metrics["bit_ops"] == 2 * 32 * 32
    assert metrics["scaling_factors"] == 2
    assert metrics["float_macs"] == 64 * 32 + 32 * 10  # 8x8 first conv + classifier
    pabt = metrics["pabt"]
    assert (pabt["t_start"], pabt["t_end"], pabt["prune_total"], pabt["pruned"]) == (1, 7, 6, 6)
    assert pabt["trajectory"][0]["bits"]["body.3"] == {"weight_bits": 2, "act_bits": 2, "ops": 4}
    assert pabt["trajectory"][-1]["bits"]["body.5"] == {"weight_bits": 1, "act_bits": 1, "ops": 1}
    report = json.loads((run_dir / "report.json").read_text())
    assert report["command"] == "train" and report["accuracy"] == metrics["final_top1"]
    for name in ("curves.png", "pabt.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_run_rebuilds_the_trained_model(reference_run):
    run_dir, result = reference_run
    model, config = load_run(run_dir)
    assert config["arch"] == "mlp" and config["in_shape"] == [1, 8, 8]
    assert config["num_classes"] == 10 and config["method"] == "pabt"
    assert config["M"] == 2 and config["N"] == 2 and len(config["classes"]) == 10
    _assert_same_state(model.state_dict(), _state(run_dir))
    assert not model.training
    from binforge.model.data import load_dataset
    from binforge.model.metrics import evaluate_top1

    images, labels = load_dataset("digits", "test", limit=120).as_arrays()
    top1 = evaluate_top1(model, torch.from_numpy(images), torch.from_numpy(labels))
    assert top1 == result.metrics["final_top1"]


def test_load_run_names_foreign_truncated_and_mismatched_checkpoints(reference_run, tmp_path):
    run_dir, _ = reference_run
    import shutil

    def copy(name):
        target = tmp_path / name
        shutil.copytree(run_dir, target)
        return target

    foreign = copy("foreign")
    (foreign / "model.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(BinforgeError, match="truncated or not a PyTorch file"):
        load_run(foreign)

    truncated = copy("truncated")
    data = (truncated / "model.pt").read_bytes()
    (truncated / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(BinforgeError, match="truncated or not a PyTorch file"):
        load_run(truncated)

    pickled = copy("pickled")
    torch.save({"weights": torch.zeros(2), "cfg": ArbitraryObject()}, pickled / "model.pt")
    with pytest.raises(BinforgeError, match="never unpickles"):
        load_run(pickled)

    other_arch = copy("other_arch")
    config = json.loads((other_arch / "config.json").read_text())
    config["width"] = 0.25
    (other_arch / "config.json").write_text(json.dumps(config))
    with pytest.raises(BinforgeError, match="does not fit a mlp pabt model"):
        load_run(other_arch)

    with pytest.raises(BinforgeError, match="not a finished binforge run"):
        load_run(tmp_path / "nowhere")


class ArbitraryObject:
    """A class a weights_only load must refuse."""


def test_resume_refuses_a_changed_configuration_and_a_foreign_checkpoint(reference_run, tmp_path):
    run_dir, _ = reference_run
    with pytest.raises(BinforgeError, match="already holds a run"):
        train(replace(TINY), run_dir)
    with pytest.raises(BinforgeError, match=r"different configuration.*epochs"):
        train(replace(TINY, epochs=5), run_dir, resume=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"model": {}}, foreign / "checkpoint.pt")
    with pytest.raises(BinforgeError, match="not a binforge training checkpoint"):
        train(replace(TINY), foreign, resume=True)


def test_step_specs():
    assert parse_step_spec("300", steps_per_epoch=50, total_steps=500) == 300
    assert parse_step_spec("2ep", steps_per_epoch=50, total_steps=500) == 100
    assert parse_step_spec("1.5ep", steps_per_epoch=50, total_steps=500) == 75
    assert parse_step_spec("10%", steps_per_epoch=50, total_steps=500) == 50
    with pytest.raises(BinforgeError, match="cannot read"):
        parse_step_spec("soon", 50, 500)


def test_a_registered_method_gets_every_hook(tmp_path):
    calls: list[str] = []

    class Recording(PaBTMethod):
        name = "recording-test"

        def start(self, context: MethodContext) -> None:
            calls.append("start")
            super().start(context)

        def extra_loss(self, context: MethodContext):
            calls.append("loss")
            return None

        def after_step(self, context: MethodContext) -> None:
            calls.append(f"step{context.step}")
            super().after_step(context)

    register_method("recording-test", Recording)
    try:
        assert isinstance(get_method("recording-test"), Method)
        config = replace(TINY, method="recording-test", epochs=1, float_epochs=0, t_end="4")
        train(config, tmp_path / "run")
    finally:
        METHODS.pop("recording-test")
    assert calls == ["start", "loss", "step1", "loss", "step2", "loss", "step3", "loss", "step4"]
    with pytest.raises(BinforgeError, match="unknown method"):
        get_method("recording-test")


def test_init_starts_the_binary_phase_from_a_float_run(tmp_path):
    float_config = replace(TINY, method="float", epochs=1)
    float_run = train(float_config, tmp_path / "float")
    assert [h["phase"] for h in float_run.metrics["history"]] == ["float"]
    assert float_run.metrics["bit_ops"] == 0
    config = replace(TINY, method="bop", epochs=1, init=str(tmp_path / "float"), use_bop=False)
    result = train(config, tmp_path / "bop")
    assert [h["phase"] for h in result.metrics["history"]] == ["binary"]
    assert result.metrics["use_bop"] is False
    assert [r["weight_bits"] for r in result.metrics["layers"]] == [1, 1]
    # The float first layer was copied from the float run, then trained one epoch.
    float_weight = _state(tmp_path / "float")["body.0.conv.weight"]
    assert not torch.equal(_state(tmp_path / "bop")["body.0.conv.weight"], float_weight)
    assert torch.allclose(_state(tmp_path / "bop")["body.0.conv.weight"], float_weight, atol=0.05)
    with pytest.raises(BinforgeError, match="does not fit the float mlp model"):
        train(replace(config, width=0.25), tmp_path / "wider")

"""Knowledge distillation from a float teacher in the binary phase (``--distill``)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from binforge.model.train import RunConfig, _load_teacher, distillation_loss, train

from binforge.cli import main
from binforge.errors import BinforgeError

# 160 digits, batches of 40: 4 steps per epoch.
TINY = RunConfig(data="digits", arch="mlp", width=0.125, method="bop", M=1, N=1, epochs=1,
                 float_epochs=1, batch_size=40, limit_train=160, limit_test=120, seed=3,
                 recalibrate_bn=0)  # fmt: skip


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("teacher") / "float"
    train(replace(TINY, method="float", epochs=2, limit_train=320), run_dir)
    return run_dir


def test_distillation_loss_matches_its_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    target = torch.randint(0, 10, (6,))
    ce = F.cross_entropy(student, target)
    t = 3.0
    p = F.softmax(teacher / t, dim=1)
    kl = (p * (p.log() - F.log_softmax(student / t, dim=1))).sum(1).mean() * t * t
    got = distillation_loss(student, teacher, ce, 1.0 / 6, weight=0.25, temperature=t)
    assert torch.allclose(got, 0.75 * ce + 0.25 * kl, atol=1e-6)
    # weight 0: cross entropy alone; a student equal to its teacher has no KL term.
    assert torch.equal(distillation_loss(student, teacher, ce, 1.0 / 6, 0.0, t), ce)
    assert float(distillation_loss(teacher, teacher, ce, 1.0 / 6, 1.0, t)) == pytest.approx(0, abs=1e-6)


def test_distillation_pulls_the_student_toward_the_teacher():
    student = torch.zeros(1, 3, requires_grad=True)
    teacher = torch.tensor([[4.0, 0.0, 0.0]])
    distillation_loss(student, teacher, torch.zeros(()), 1.0, 1.0, 1.0).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]  # descending raises the teacher's class


def test_a_distilled_run_differs_records_its_teacher_and_resumes(teacher_run, tmp_path):
    teacher = _load_teacher(replace(TINY, distill=str(teacher_run), in_shape=[1, 8, 8],
                                    num_classes=10))  # fmt: skip
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    config = replace(TINY, init=str(teacher_run), epochs=2)
    plain = train(replace(config), tmp_path / "plain")
    distilled = train(replace(config, distill=str(teacher_run), distill_weight=0.5,
                              distill_temperature=2.0), tmp_path / "kd")  # fmt: skip
    record = distilled.metrics["distill"]
    assert record["weight"] == 0.5 and record["temperature"] == 2.0
    teacher_top1 = json.loads((teacher_run / "metrics.json").read_text())["final_top1"]
    assert record["teacher_top1"] == pytest.approx(teacher_top1)
    assert "distill" not in plain.metrics
    assert distilled.metrics["history"][0]["train_loss"] != plain.metrics["history"][0]["train_loss"]
    # interrupted after one epoch and resumed: the same model as the uninterrupted run
    kd = replace(config, distill=str(teacher_run), distill_weight=0.5, distill_temperature=2.0)
    assert not train(replace(kd), tmp_path / "kd2", stop_after_epochs=1).finished
    train(replace(kd), tmp_path / "kd2", resume=True)
    a = torch.load(tmp_path / "kd" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "kd2" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_distillation_settings_are_refused(teacher_run, tmp_path):
    with pytest.raises(BinforgeError, match="--method float is not binary"):
        train(replace(TINY, method="float", distill=str(teacher_run)), tmp_path / "a")
    with pytest.raises(BinforgeError, match="--distill-weight must lie in"):
        train(replace(TINY, distill=str(teacher_run), distill_weight=1.5), tmp_path / "b")
    with pytest.raises(BinforgeError, match="does not fit the float mlp model"):
        train(replace(TINY, width=0.25, distill=str(teacher_run / "model.pt")), tmp_path / "c")
    binary = tmp_path / "binary"
    train(replace(TINY, init=str(teacher_run)), binary)
    with pytest.raises(BinforgeError, match="is a bop run without float_model.pt"):
        train(replace(TINY, distill=str(binary)), tmp_path / "d")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_distill_options(teacher_run, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train", "--method", "bop", "--M", "1", "--N", "1", "--width", "0.125",
                 "--init", str(teacher_run), "--epochs", "1", "--batch-size", "40",
                 "--limit-train", "80", "--limit-test", "60", "--recalibrate-bn", "0",
                 "--distill", str(teacher_run), "--distill-weight", "0.8", "--out", str(out)])  # fmt: skip
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["distill"] == str(teacher_run) and config["distill_weight"] == 0.8
    assert json.loads((out / "metrics.json").read_text())["distill"]["temperature"] == 1.0
    assert main(["train", "--method", "float", "--distill", str(teacher_run), "--out",
                 str(tmp_path / "x")]) == 2  # fmt: skip
    assert "is not binary" in capsys.readouterr().err

"""``binforge train`` from the command line: a tiny run, its summary, its errors."""

from __future__ import annotations

import json

from binforge.cli import main


def test_train_command_writes_a_run_and_refuses_to_overwrite_it(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", "digits", "--arch", "mlp", "--width", "0.125", "--method", "bop",
            "--float-epochs", "1", "--epochs", "1", "--limit-train", "100", "--limit-test", "50",
            "--batch-size", "50", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "bop mlp on digits: top-1" in printed and "body.3 1/1" in printed
    report = json.loads((out / "report.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert report["command"] == "train" and report["accuracy"] == metrics["final_top1"]
    assert json.loads((out / "config.json").read_text())["method"] == "bop"

    assert main(argv) == 2
    assert "add --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # a finished run resumes to the same outputs
    assert json.loads((out / "metrics.json").read_text())["history"] == metrics["history"]

"""The experiment scripts that the results are recorded with: seeds side by side, and the
several-seeds launcher's usage."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from binforge.model.train import RunConfig, train

ROOT = Path(__file__).resolve().parents[2]

TINY = RunConfig(data="digits", arch="mlp", width=0.125, method="pabt", M=2, N=2, epochs=2,
                 float_epochs=1, batch_size=64, limit_train=256, limit_test=120, t_start="1",
                 t_end="6")  # fmt: skip


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    runs = []
    for seed in (0, 1):
        train(replace(TINY, seed=seed), root / f"s{seed}")
        runs.append(root / f"s{seed}")
    train(replace(TINY, method="float", epochs=1, float_epochs=0), root / "float")
    return root, runs


def test_seeds_summary_compiles_runs_golden_and_tabulates_every_seed(seed_runs):
    root, runs = seed_runs
    out = root / "summary"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "pabt_seeds_summary.py"),
                           "--out", str(out), "--data", "digits", "--float", str(root / "float"),
                           *map(str, runs)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    float_top1 = json.loads((root / "float" / "metrics.json").read_text())["final_top1"]
    assert summary["float_top1"] == float_top1
    for row, run in zip(summary["runs"], runs, strict=True):
        assert row["train_top1"] == json.loads((run / "metrics.json").read_text())["final_top1"]
        assert set(row["golden"]) == {"10/8", "14/12"}
        # the golden figures are those `binforge golden` wrote for the compiled network
        report = json.loads((out / "golden" / f"{run.name}_10_8" / "report.json").read_text())
        assert row["golden"]["10/8"]["accuracy"] == pytest.approx(100 * report["accuracy"])
        assert row["torch_cpu_top1"] == pytest.approx(100 * report["torch_accuracy"])
        network = json.loads((out / "nets" / f"{run.name}_14_12" / "network.json").read_text())
        assert network["layers"][0]["name"] and (out / "nets" / f"{run.name}_14_12" / "weights.npz").is_file()
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 2 + 2 + 1 and table[-1].startswith("| mean ± sd")
    mean = sum(r["torch_cpu_top1"] for r in summary["runs"]) / 2
    assert f"{mean - float_top1:+.2f}" in table[-1]
    assert (out / "curves.png").stat().st_size > 0


def test_seeds_summary_refuses_a_folder_that_is_not_a_finished_run(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "pabt_seeds_summary.py"),
                           "--out", str(tmp_path / "o"), str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode != 0 and "has no metrics.json" in done.stderr
    assert not (tmp_path / "o" / "table.md").exists()


def test_seeds_launcher_prints_its_usage_without_arguments():
    done = subprocess.run(["bash", str(ROOT / "experiments" / "pabt_fashion_seeds.sh")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "usage: experiments/pabt_fashion_seeds.sh" in done.stderr

"""The experiment scripts that the results are recorded with: seeds side by side, and the
several-seeds launcher's usage."""

import json
import os
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


def _launch(tmp_path, *seeds, seconds=300, **extra_env):
    env = {**os.environ, "BINFORGE": f"{sys.executable} -m binforge", "DATA": "digits",
           "ARCH": "mlp", "WIDTH": "0.125", "EPOCHS": "3", "THREADS": "1",
           "EXTRA": "--limit-train 512 --limit-test 120", **extra_env}  # fmt: skip
    return subprocess.run(["bash", str(ROOT / "experiments" / "pabt_fashion_seeds.sh"),
                           str(tmp_path / "float"), str(tmp_path), "cpu", str(seconds),
                           *map(str, seeds)], capture_output=True, text=True, env=env)  # fmt: skip


def test_seeds_launcher_trains_the_teacher_once_then_every_seed_and_continues_unfinished_ones(tmp_path):
    done = _launch(tmp_path, 0, 1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "training the float twin" in done.stdout
    assert done.stdout.count(": finished") == 2
    finals = {}
    for seed in (0, 1):
        metrics = json.loads((tmp_path / f"pabt_kd3s{seed}" / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["method"] == "pabt" and metrics["epochs"] == 3
        assert metrics["distill"]  # distilled from the float twin
        assert metrics["layers"] and all(layer["weight_bits"] == layer["act_bits"] == 1
                                         for layer in metrics["layers"])
        finals[seed] = metrics["final_top1"]
    # an unfinished run (its checkpoint, no final outputs) is continued; the teacher is reused
    for name in ("report.json", "model.pt", "metrics.json"):
        (tmp_path / "pabt_kd3s1" / name).unlink()
    again = _launch(tmp_path, 1)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "training the float twin" not in again.stdout and "seed 1: finished" in again.stdout
    metrics = json.loads((tmp_path / "pabt_kd3s1" / "metrics.json").read_text())
    assert metrics["final_top1"] == finals[1]
    assert (tmp_path / "float.log").read_text().count("float epoch 5/5") == 1
    # PACK: every run and the teacher as one archive each, without the checkpoint
    import tarfile

    packed = _launch(tmp_path, 0, 1, PACK=str(tmp_path / "pack"))
    assert packed.returncode == 0, packed.stdout + packed.stderr
    assert sorted(p.name for p in (tmp_path / "pack").iterdir()) == ["float.tgz", "pabt_kd3s0.tgz", "pabt_kd3s1.tgz"]
    with tarfile.open(tmp_path / "pack" / "pabt_kd3s1.tgz") as tar:
        names = tar.getnames()
    assert {"pabt_kd3s1/model.pt", "pabt_kd3s1/metrics.json", "pabt_kd3s1.log"} <= set(names)
    assert not any(name.endswith("checkpoint.pt") for name in names)


def test_seeds_launcher_says_which_runs_did_not_finish(tmp_path):
    (tmp_path / "float").mkdir()
    (tmp_path / "float" / "model.pt").write_bytes(b"not a model")
    done = _launch(tmp_path, 4)
    assert done.returncode == 1 and "seed 4: not finished" in done.stdout


def test_seeds_launcher_prints_its_usage_without_arguments():
    done = subprocess.run(["bash", str(ROOT / "experiments" / "pabt_fashion_seeds.sh")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "usage: experiments/pabt_fashion_seeds.sh" in done.stderr


def _plot(*args):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "plot_epoch_curves.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip


def test_epoch_curves_plot_reads_logs_and_marks_a_run_that_stopped_early(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_epoch_curves", ROOT / "experiments" / "plot_epoch_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    log = ("18:14:16 binary epoch 1/20: loss 0.11, train top-1 90.64%, test top-1 90.77%\n"
           "noise\n18:14:54 binary epoch 2/20: loss 0.07, train top-1 91.98%, test top-1 89.62%\n")  # fmt: skip
    assert module.curve(log) == ([1, 2], [90.77, 89.62], 20)
    (tmp_path / "a.log").write_text(log)
    done = _plot("--out", str(tmp_path / "c.png"), "--target", "92", f"{tmp_path / 'a.log'}=seed 0")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_epoch_curves_plot_refuses_a_log_without_epochs(tmp_path):
    (tmp_path / "empty.log").write_text("float epoch 1/5: loss 0.44\n")
    done = _plot("--out", str(tmp_path / "c.png"), str(tmp_path / "empty.log"))
    assert done.returncode == 2 and "no 'binary epoch" in done.stderr
    assert not (tmp_path / "c.png").exists()
    done = _plot("--out", str(tmp_path / "c.png"), str(tmp_path / "missing.log"))
    assert done.returncode == 2 and "cannot read" in done.stderr


def _device(*args, **extra_env):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra_env}
    return subprocess.run(["bash", str(ROOT / "experiments" / "device_seeds.sh"), *map(str, args)],
                          capture_output=True, text=True, env=env)  # fmt: skip


def test_device_seeds_installs_the_wheels_runs_the_seeds_and_sends_back_archives(tmp_path):
    """The lent-machine call: wheels installed into WORK/site (binforge from a wheel of
    this checkout), the float twin and a seed trained, both packed into $OUT without
    checkpoints, the runs themselves left in WORK for a resumed call."""
    import tarfile

    carry = tmp_path / "carry"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(carry / "wheels"), str(ROOT)], capture_output=True, text=True)  # fmt: skip
    assert built.returncode == 0, built.stderr
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    done = _device("run", carry, work, 300, 0, OUT=str(out), DEVICE="cpu", DATA="digits", ARCH="mlp",
                   WIDTH="0.125", EPOCHS="3", THREADS="1", EXTRA="--limit-train 512 --limit-test 120")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "seed 0: finished" in done.stdout
    assert (work / "site" / "binforge").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["float5_w0.125.tgz", "pabt_kd3s0.tgz"]
    with tarfile.open(out / "pabt_kd3s0.tgz") as tar:
        names = tar.getnames()
    assert {"pabt_kd3s0/model.pt", "pabt_kd3s0/metrics.json", "pabt_kd3s0.log"} <= set(names)
    assert not any(name.endswith("checkpoint.pt") for name in names)
    assert (work / "runs" / "pabt_kd3s0" / "model.pt").is_file()


def test_device_seeds_refuses_without_out_and_prepare_names_missing_data(tmp_path):
    done = _device("run", tmp_path, tmp_path / "work", 10, 0, OUT="")
    assert done.returncode != 0 and "OUT must name the folder" in done.stderr
    prepared = _device("prepare", tmp_path / "carry", FASHION_MNIST=str(tmp_path))
    assert prepared.returncode == 1 and "set FASHION_MNIST to the folder of the IDX files" in prepared.stderr
    assert not list((tmp_path / "carry" / "wheels").iterdir())
    usage = _device()
    assert usage.returncode == 2 and "experiments/device_seeds.sh run DIR WORK SECONDS SEED" in usage.stderr


def _sweep(*args):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "first_bits_sweep.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip


def test_first_bits_sweep_compiles_each_width_and_counts_its_first_layer_cycles(seed_runs):
    """Fewer first-layer bits: fewer bit-serial ops and cycles (the rest unchanged), the
    golden accuracy that `binforge golden` reports for each compiled network, a plot."""
    from binforge.compiler import ir
    from binforge.hw.plan import analytic_cycles

    root, runs = seed_runs
    out = root / "fb"
    done = _sweep(runs[0], "--out", out, "--bits", "8,4", "--data", "digits", "--rows", 4, "--cols", 1,
                  "--simd", 8, "--clock-mhz", 12)
    assert done.returncode == 0, done.stderr[-3000:]
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [p["bits"] for p in points] == [8, 4]
    pixel_planes = points[0]["first_layer_ops"] // 8
    assert points[1]["first_layer_ops"] == 4 * pixel_planes
    assert points[1]["first_layer_cycles"] < points[0]["first_layer_cycles"]
    assert points[0]["cycles"] - points[0]["first_layer_cycles"] == points[1]["cycles"] - points[1]["first_layer_cycles"]
    for p in points:
        report = json.loads((out / "golden" / f"fb{p['bits']}" / "report.json").read_text())
        assert p["golden_top1"] == report["accuracy"] and report["images"] == p["images"] == 360  # digits test
        net = ir.load(out / "nets" / f"fb{p['bits']}")
        assert p["cycles"] == analytic_cycles(net, 4, 1, 8)["total"]
        assert p["images_per_second"] == pytest.approx(12e6 / p["cycles"])
    table = (out / "table.md").read_text()
    assert "| 4 | " in table and (out / "sweep.png").stat().st_size > 0


def test_first_bits_sweep_refuses_bad_bits_and_leaves_nothing(tmp_path, seed_runs):
    _, runs = seed_runs
    done = _sweep(runs[0], "--out", tmp_path / "o", "--bits", "8,x")
    assert done.returncode == 2 and "--bits must be integers" in done.stderr
    missing = _sweep(tmp_path, "--out", tmp_path / "o")
    assert missing.returncode == 2 and "has no model.pt" in missing.stderr
    assert not (tmp_path / "o").exists()


def _netlist(cells: dict) -> dict:
    """A flattened Yosys JSON netlist of ``cells`` ({name: (type, {port: (direction, bits)})})."""
    return {"modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                                "netnames": {"u.v.count": {"bits": [10], "hide_name": 0}},
                                "cells": {name: {"type": t,
                                                 "port_directions": {p: d for p, (d, _) in ports.items()},
                                                 "connections": {p: bits for p, (_, bits) in ports.items()}}
                                          for name, (t, ports) in cells.items()}}}}


def test_logic_depth_counts_luts_and_carry_steps_to_every_register(tmp_path):
    """Register -> LUT -> LUT -> register is 2 levels; a carry step counts 0.15; constants
    and register outputs are level 0; endpoints are grouped by their cell's module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("logic_depth", ROOT / "experiments" / "logic_depth.py")
    logic_depth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(logic_depth)
    lut = lambda ins, out: ("SB_LUT4", {"I0": ("input", ins[:1]), "I1": ("input", ins[1:2] or ["0"]),  # noqa: E731
                                        "I2": ("input", ["0"]), "I3": ("input", ["0"]), "O": ("output", [out])})
    ff = lambda d, q: ("SB_DFF", {"D": ("input", [d]), "Q": ("output", [q]), "C": ("input", [1])})  # noqa: E731
    cells = {
        "a.src_SB_DFF": ff(2, 10),
        "a.lut1": lut([10], 11),
        "a.lut2": lut([11, 10], 12),
        "u.v.sink_SB_DFF": ff(12, 13),
        "u.c0": ("SB_CARRY", {"I0": ("input", [10]), "I1": ("input", ["1"]), "CI": ("input", ["0"]),
                              "CO": ("output", [14])}),
        "u.c1": ("SB_CARRY", {"I0": ("input", [10]), "I1": ("input", [10]), "CI": ("input", [14]),
                              "CO": ("output", [15])}),
        "u.sum": lut([15], 16),
        "w.other_SB_DFF": ff(16, 17),
    }
    module = _netlist(cells)["modules"]["top"]
    endpoints, *_ = logic_depth.depths(module, carry=0.15)
    by_cell = {name: d for d, name, port, _ in endpoints if port == "D"}
    assert by_cell["u.v.sink_SB_DFF"] == pytest.approx(2.0)
    assert by_cell["w.other_SB_DFF"] == pytest.approx(1.3)  # two carry steps, then the sum LUT
    assert by_cell["a.src_SB_DFF"] == 0.0  # a port of the design (bit 2: no driver)
    assert logic_depth.module_of("core.accelerator.sequencer.window.pg_SB_DFFESR_Q_8") == \
        "core.accelerator.sequencer.window"
    path = tmp_path / "n.json"
    path.write_text(json.dumps(_netlist(cells)))
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "logic_depth.py"), str(path), "--min", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2.00  u.v" in done.stdout and "1.30  w" in done.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    refused = subprocess.run([sys.executable, str(ROOT / "experiments" / "logic_depth.py"), str(bad)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "cannot read" in refused.stderr

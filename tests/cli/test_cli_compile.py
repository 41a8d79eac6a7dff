"""``binforge compile`` and ``binforge golden``: the run -> NET/ -> report chain, and bad inputs."""

import json

import numpy as np
import pytest
import torch
from binforge.compiler import ir
from binforge.model.checkpoint import save_model
from binforge.model.data import load_dataset
from binforge.model.train import RunConfig, build_model_from_config
from binforge.sim.golden import run_network

from binforge.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_run(folder, arch="mlp", method="pabt", bases=2, data="digits", shape=(1, 8, 8), seed=0):
    """A run folder as 'binforge train' writes it (model.pt + config.json), untrained weights
    with batch-norm statistics from real images."""
    config = RunConfig(data=data, arch=arch, width=0.125, method=method, M=bases, N=bases,
                       in_shape=list(shape), num_classes=10, classes=[str(i) for i in range(10)]).to_json()
    torch.manual_seed(seed)
    model = build_model_from_config(config)
    images = load_dataset(data, "train", limit=256).as_arrays()[0] if data == "digits" else None
    if images is not None:
        from binforge.model.data import batch_to_input

        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.momentum = None
        model.train()
        with torch.no_grad():
            model(batch_to_input(images))
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder, model.eval(), config)
    return folder


def test_compile_then_golden(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    net_dir = tmp_path / "net"
    assert main(["compile", str(run), "--out", str(net_dir), "--first-bits", "16", "--last-bits", "16",
                 "--gain-bits", "20"]) == 0
    out = capsys.readouterr().out
    assert "compiled" in out and "widest accumulator" in out
    assert sorted(p.name for p in net_dir.iterdir()) == ["network.json", "report.json", "weights.npz"]
    report = json.loads((net_dir / "report.json").read_text())
    assert report["command"] == "compile" and report["arch"] == "mlp" and report["method"] == "pabt"
    assert [d["name"] for d in report["layers"]] == ["body.0", "body.3", "body.5", "body.7"]
    assert all(d["acc_width"] >= 2 for d in report["layers"])
    assert report["settings"]["first_weight_bits"] == 16
    first, classifier = report["layers"][0], report["layers"][-1]
    assert first["output_error_images"] == 256 and 0 < first["output_rel_error"] < 1e-3
    assert 0 < classifier["output_rel_error"] < 1e-3
    net = ir.load(net_dir)
    assert net.meta["source_run"] == str(run.resolve())
    assert net.classes == tuple(str(i) for i in range(10))

    out_dir = tmp_path / "golden"
    assert main(["golden", str(net_dir), "--data", "digits", "--limit", "120", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "agreement" in printed
    figures = json.loads((out_dir / "report.json").read_text())
    images, labels = load_dataset("digits", "test", limit=120).as_arrays()
    expected = float(np.mean(run_network(net, images).predictions == labels))
    assert figures["images"] == 120 and figures["accuracy"] == pytest.approx(expected)
    assert figures["agreement"] >= 0.99  # 16-bit weights, 20-bit gains: nothing left but ties
    assert figures["mismatches"] == len(figures["mismatch_indices"])
    assert figures["run"] == str(run.resolve())


def test_golden_without_the_source_run(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    net_dir = tmp_path / "net"
    assert main(["compile", str(run), "--out", str(net_dir)]) == 0
    (run / "model.pt").unlink()
    out_dir = tmp_path / "g"
    assert main(["golden", str(net_dir), "--data", "digits", "--limit", "20", "--out", str(out_dir)]) == 0
    figures = json.loads((out_dir / "report.json").read_text())
    assert "agreement" not in figures and "is not there any more" in figures["torch"]


def test_residual_run_is_refused_without_output(tmp_path, capsys):
    run = make_run(tmp_path / "run", arch="resnet20", bases=1)
    net_dir = tmp_path / "net"
    assert main(["compile", str(run), "--out", str(net_dir)]) == 2
    err = capsys.readouterr().err
    assert "BasicBlock: a block with a residual add" in err
    assert not net_dir.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left behind


def test_failed_compile_leaves_an_existing_net_alone(tmp_path, capsys):
    good = make_run(tmp_path / "good")
    net_dir = tmp_path / "net"
    assert main(["compile", str(good), "--out", str(net_dir)]) == 0
    before = {p.name: p.read_bytes() for p in net_dir.iterdir()}
    bad = make_run(tmp_path / "bad", arch="resnet20", bases=1)
    assert main(["compile", str(bad), "--out", str(net_dir)]) == 2
    assert {p.name: p.read_bytes() for p in net_dir.iterdir()} == before


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    run = make_run(tmp_path / "run", arch="mlp")
    other = make_run(tmp_path / "other", arch="vgg-small", data="synthetic=1,8,8,10")
    (run / "model.pt").write_bytes((other / "model.pt").read_bytes())
    assert main(["compile", str(run), "--out", str(tmp_path / "net")]) == 2
    assert "belongs to another architecture" in capsys.readouterr().err
    assert not (tmp_path / "net").exists()


def test_float_run_is_refused(tmp_path, capsys):
    run = make_run(tmp_path / "run", method="float")
    assert main(["compile", str(run), "--out", str(tmp_path / "net")]) == 2
    assert "is a float run" in capsys.readouterr().err


def test_bad_bit_counts(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["compile", str(run), "--out", str(tmp_path / "net"), "--first-bits", "0"]) == 2
    assert "--first-bits must be between 1 and 24, not 0" in capsys.readouterr().err


@pytest.fixture
def net_dir(tmp_path):
    run = make_run(tmp_path / "run")
    folder = tmp_path / "net"
    assert main(["compile", str(run), "--out", str(folder)]) == 0
    return folder


def test_corrupted_weights(net_dir, capsys):
    data = (net_dir / "weights.npz").read_bytes()
    (net_dir / "weights.npz").write_bytes(data[: len(data) // 2])
    assert main(["golden", str(net_dir), "--data", "digits", "--limit", "5"]) == 2
    assert "weights.npz is corrupted or not an npz file" in capsys.readouterr().err


def test_newer_schema(net_dir, capsys):
    doc = json.loads((net_dir / "network.json").read_text())
    doc["schema_version"] = ir.SCHEMA_VERSION + 1
    (net_dir / "network.json").write_text(json.dumps(doc))
    assert main(["golden", str(net_dir), "--data", "digits", "--limit", "5"]) == 2
    assert "newer than this binforge reads" in capsys.readouterr().err


def test_data_of_another_shape(net_dir, capsys):
    assert main(["golden", str(net_dir), "--data", "synthetic=1,16,16,10", "--limit", "5"]) == 2
    assert "images are 1x16x16 but the network takes 1x8x8" in capsys.readouterr().err


def test_missing_network(tmp_path, capsys):
    assert main(["golden", str(tmp_path / "nowhere"), "--data", "digits"]) == 2
    assert "network.json does not exist" in capsys.readouterr().err

"""``binforge golden --per-layer``: where the torch model and the golden model part, bit by bit."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from binforge.compiler import ir
from binforge.model.checkpoint import save_model
from binforge.model.data import batch_to_input, load_dataset
from binforge.model.train import RunConfig, build_model_from_config
from binforge.sim.golden import run_network

from binforge.cli import main

LIMIT = "80"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A VGG-small PaBT run on digits (2 weight and 2 activation bases, so multi-op layers and
    two activation planes), batch-norm statistics from 256 real images."""
    folder = tmp_path_factory.mktemp("run")
    config = RunConfig(data="digits", arch="vgg-small", width=0.125, method="pabt", M=2, N=2,
                       in_shape=[1, 8, 8], num_classes=10, classes=[str(i) for i in range(10)]).to_json()
    torch.manual_seed(0)
    model = build_model_from_config(config)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(batch_to_input(load_dataset("digits", "train", limit=256).as_arrays()[0]))
    save_model(folder, model.eval(), config)
    return folder


def compile_net(run_dir, out, first_bits, last_bits):
    assert main(["compile", str(run_dir), "--out", str(out), "--first-bits", str(first_bits),
                 "--last-bits", str(last_bits), "--gain-bits", "20", "--error-images", "0"]) == 0
    return out


def per_layer(net_dir, out, capsys):
    capsys.readouterr()
    assert main(["golden", str(net_dir), "--data", "digits", "--limit", LIMIT, "--per-layer",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    return printed, json.loads((out / "report.json").read_text())


def test_enough_bits_every_bit_agrees(run_dir, tmp_path, capsys):
    net_dir = compile_net(run_dir, tmp_path / "net", 24, 24)
    printed, report = per_layer(net_dir, tmp_path / "golden", capsys)
    trained, exact = report["per_layer"]["trained"], report["per_layer"]["compiler_integers"]
    names = [(d["producer"], d["reader"]) for d in trained["layers"]]
    assert names == [("body.0", "body.2"), ("body.4", "body.5"), ("body.5", "body.7"), ("body.9", "body.10"),
                     ("body.10", "body.12"), ("body.14", "body.16")]
    assert trained["layers"][0]["bits"] == int(LIMIT) * 2 * 8 * 8 * 8  # two planes of 8 channels, 8x8
    assert trained["layers"][1]["bits"] == int(LIMIT) * 2 * 8 * 4 * 4  # after the pool: 4x4
    # with the compiler's integers, nothing but float ties; the trained model parts from golden
    # only through first-layer rounding below the tie size
    for entry in exact["layers"] + trained["layers"]:
        assert entry["unexplained_images"] == 0 and entry["differing"] == entry["ties"]
        assert entry["fraction"] <= 1e-4
    assert exact["first_unexplained_difference"] is None
    assert exact["agreement"] == 1.0 and trained["agreement"] == 1.0 and report["agreement"] == 1.0
    assert exact["equal_bits_logit_difference"] <= 1e-5 * exact["max_logit"]
    assert "error" not in report["per_layer"]["verdict"]
    assert "per layer" in printed and "body.16" in printed and "verdict" in printed


def test_few_first_layer_bits_part_at_the_first_layer(run_dir, tmp_path, capsys):
    net_dir = compile_net(run_dir, tmp_path / "net", 2, 16)
    printed, report = per_layer(net_dir, tmp_path / "golden", capsys)
    trained, exact = report["per_layer"]["trained"], report["per_layer"]["compiler_integers"]
    first = trained["layers"][0]
    assert trained["first_difference"] == "body.0" == trained["first_unexplained_difference"]
    assert first["fraction"] > 1e-3 and first["differing"] > first["ties"]
    assert first["origin_images"] == first["images_differing"] > 0
    # differences downstream grow from the first layer's, they start nowhere else
    assert sum(d["origin_images"] for d in trained["layers"][1:]) == 0
    assert trained["layers"][-1]["images_differing"] > 0
    # the golden model is still exactly the torch model with the compiler's 2-bit first layer
    assert all(d["unexplained_images"] == 0 for d in exact["layers"])
    assert exact["agreement"] == 1.0
    assert "explain every difference" in report["per_layer"]["verdict"]
    assert "--first-bits 2" in printed


def test_a_planted_threshold_error_is_located(run_dir, tmp_path, capsys):
    """Thresholds in body.5 one input bit higher (2 x the largest op gain): a compiler error
    the per-layer comparison must pin to body.5's output bits, with every earlier bit exact."""
    net_dir = compile_net(run_dir, tmp_path / "net", 16, 16)
    net = ir.load(net_dir)
    index = next(i for i, layer in enumerate(net.layers) if layer.name == "body.5")
    layer = net.layers[index]
    one_bit = 2 * max(abs(op.gain) for op in layer.ops)
    wrong_stage = dataclasses.replace(layer.output, thresholds=layer.output.thresholds + one_bit)
    layers = list(net.layers)
    layers[index] = dataclasses.replace(layer, output=wrong_stage)
    ir.save(dataclasses.replace(net, layers=tuple(layers)), tmp_path / "planted")
    printed, report = per_layer(tmp_path / "planted", tmp_path / "golden", capsys)
    exact = report["per_layer"]["compiler_integers"]
    assert exact["first_unexplained_difference"] == "body.5"
    by_name = {d["producer"]: d for d in exact["layers"]}
    assert by_name["body.0"]["unexplained_images"] == by_name["body.4"]["unexplained_images"] == 0
    assert by_name["body.4"]["differing"] == 0
    assert by_name["body.5"]["unexplained_images"] > 0 and by_name["body.5"]["differing"] > by_name["body.5"]["ties"]
    assert "compiler or golden-model error" in report["per_layer"]["verdict"]
    assert "body.5" in printed.splitlines()[-2]  # the verdict line names the layer


def test_a_planted_classifier_bias_error_is_found(run_dir, tmp_path, capsys):
    """Every bit equal, one class's bias 5 % of the largest logit off: the logits give it away."""
    net_dir = compile_net(run_dir, tmp_path / "net", 16, 16)
    net = ir.load(net_dir)
    images = load_dataset("digits", "test", limit=int(LIMIT)).as_arrays()[0]
    largest = int(np.abs(run_network(net, images).logits).max())
    classifier = net.layers[-1]
    bias = classifier.bias.copy()
    bias[3] += largest // 20
    ir.save(dataclasses.replace(net, layers=net.layers[:-1] + (dataclasses.replace(classifier, bias=bias),)),
            tmp_path / "planted")
    _, report = per_layer(tmp_path / "planted", tmp_path / "golden", capsys)
    exact = report["per_layer"]["compiler_integers"]
    assert all(d["differing"] == d["ties"] for d in exact["layers"])
    assert exact["equal_bits_logit_difference"] >= 0.04 * exact["max_logit"]
    assert report["per_layer"]["verdict"].startswith("compiler or golden-model error: every activation bit")


def test_more_than_24_bits_are_refused(run_dir, tmp_path, capsys):
    assert main(["compile", str(run_dir), "--out", str(tmp_path / "net"), "--first-bits", "25"]) == 2
    assert "--first-bits must be between 1 and 24, not 25" in capsys.readouterr().err
    assert not (tmp_path / "net").exists()


def test_per_layer_needs_the_torch_model(run_dir, tmp_path, capsys):
    net_dir = compile_net(run_dir, tmp_path / "net", 10, 8)
    capsys.readouterr()
    assert main(["golden", str(net_dir), "--data", "digits", "--limit", "5", "--per-layer", "--no-torch"]) == 2
    assert "--per-layer needs the torch model: not asked for (--no-torch)" in capsys.readouterr().err


def test_another_run_is_refused(run_dir, tmp_path, capsys):
    """A run of another architecture does not compile to the network's layers: one clear error."""
    net_dir = compile_net(run_dir, tmp_path / "net", 10, 8)
    other = tmp_path / "mlp_run"
    config = RunConfig(data="digits", arch="mlp", width=0.125, method="pabt", M=1, N=1, in_shape=[1, 8, 8],
                       num_classes=10, classes=[str(i) for i in range(10)]).to_json()
    other.mkdir()
    save_model(other, build_model_from_config(config).eval(), config)
    capsys.readouterr()
    assert main(["golden", str(net_dir), "--data", "digits", "--limit", "5", "--per-layer",
                 "--run", str(other), "--out", str(tmp_path / "golden")]) == 2
    err = capsys.readouterr().err
    assert "does not compile to the network's layers" in err and "layer 0" in err
    assert not (tmp_path / "golden").exists()

"""Companion methods through the real training loop: train, rebuild, export or refuse, iterate."""

import argparse
import json

import pytest
import torch
from binforge.model.checkpoint import load_run
from binforge.model.export import UnsupportedForHardware
from binforge.model.methods import iterative as iterative_module
from binforge.model.methods.ste import latent_binary_layers
from binforge.model.metrics import binary_layers
from binforge.model.train import MethodContext, RunConfig, get_method, train


def tiny(method, **overrides):
    settings = dict(data="digits", arch="mlp", width=0.125, method=method, epochs=2,
                    float_epochs=0, limit_train=128, limit_test=64, batch_size=32)
    settings.update(overrides)
    return RunConfig(**settings)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method,options", [
    ("ste", {}),
    ("bnn+", {"bnnplus_regularizer": "r2", "bnnplus_lambda": 1e-3, "bnnplus_trainable_beta": True}),
    ("xnor", {}),
    ("xnor++", {"xnorpp_case": 1}),
    ("iterative", {"iterative_order": "reverse"}),
])
def test_method_trains_rebuilds_and_exports(tmp_path, method, options):
    result = train(tiny(method, method_options=options), tmp_path / "run", progress=False)
    assert result.finished
    model, config = load_run(tmp_path / "run")
    assert config["method_options"] == options
    layers = binary_layers(model)
    assert len(layers) == 2
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    x = (2 * images.float() - 255) / 255
    with torch.no_grad():
        logits = model(x)
    assert torch.isfinite(logits).all()
    for _, layer in layers:
        export = layer.export_binary()
        assert len(export.ops) == 1 and export.act_thresholds.tolist() == [0.0]
    latent = [layer.weight for _, layer in latent_binary_layers(model)]
    if method == "ste":
        assert all(w.abs().max() <= 1.0 for w in latent)
        assert all(layer.export_binary().ops[0][2].eq(1).all() for _, layer in layers)
    if method == "bnn+":
        alphas = [layer.scaler.alpha for _, layer in layers]
        betas = [layer.act_sign.beta for _, layer in layers]
        assert all(isinstance(b, torch.nn.Parameter) for b in betas)
        for (_, layer), alpha in zip(layers, alphas, strict=True):
            torch.testing.assert_close(layer.export_binary().ops[0][2], alpha.detach())
    if method == "iterative":
        assert all(bool(layer.weight_binarized) for _, layer in layers)
        assert result.metrics["iterative"]["order"] == [1, 0]
    assert result.metrics["method_options"].items() >= options.items()


def test_refused_exports_after_training(tmp_path):
    train(tiny("xnor", method_options={"xnor_input_factor": True}), tmp_path / "xnor",
          progress=False)
    model, _ = load_run(tmp_path / "xnor")
    for _, layer in binary_layers(model):
        with pytest.raises(UnsupportedForHardware, match="input factor K"):
            layer.export_binary()
    # XNOR-Net++ case 3 on a convolutional net: Gamma sized from the float twin, rebuilt alike
    train(tiny("xnor++", arch="vgg-small", epochs=1, method_options={"xnorpp_case": 3}),
          tmp_path / "xnorpp", progress=False)
    model, _ = load_run(tmp_path / "xnorpp")
    shapes = [tuple(layer.scaler.merged().shape) for _, layer in binary_layers(model)]
    assert shapes[0][1:] == (8, 8) and shapes[-1][1:] == (2, 2)
    with pytest.raises(UnsupportedForHardware, match="case 3 scales every output pixel"):
        binary_layers(model)[0][1].export_binary()


def test_iterative_binarizes_layers_in_order_during_the_phase():
    method = get_method("iterative")
    config = tiny("iterative", in_shape=[1, 8, 8], num_classes=10,
                  method_options={"iterative_order": "reverse"})
    model = method.build_model(config, None)
    layers = [layer for _, layer in latent_binary_layers(model)]
    assert [bool(layer.weight_binarized) for layer in layers] == [False, False]
    context = MethodContext(model=model, optimizer=None, config=config, steps_per_epoch=5,
                            total_steps=10)
    method.start(context)
    assert method.steps_per_layer == 3  # 10 steps // (L + 1)
    seen = []
    model.train()
    for step in range(10):
        context.step = step
        model(torch.zeros(2, 1, 8, 8))
        seen.append(tuple(bool(layer.weight_binarized) for layer in layers))
    assert seen == [(False, True)] * 3 + [(True, True)] * 7
    config.method_options = {"iterative_epochs_per_layer": 3.0}  # 15 steps per layer > 10
    with pytest.raises(Exception, match="raise --epochs or lower --iterative-epochs-per-layer"):
        get_method("iterative").start(MethodContext(model=model, optimizer=None, config=config,
                                                    steps_per_epoch=5, total_steps=10))


def test_sensitivity_ranking_is_cached_and_reused(tmp_path, monkeypatch):
    options = {"iterative_order": "ascending", "iterative_sensitivity_epochs": 1}
    result = train(tiny("iterative", method_options=options), tmp_path / "a", progress=False)
    cache = json.loads((tmp_path / "a" / "sensitivity.json").read_text())
    errors = cache["errors"]
    assert len(errors) == 2 and all(0.0 <= e <= 100.0 for e in errors)
    assert cache["ascending"] == sorted(range(2), key=lambda i: (errors[i], i))
    assert result.metrics["iterative"]["order"] == cache["ascending"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached ranking should have been reused")

    monkeypatch.setattr(iterative_module, "sensitivity_errors", must_not_run)
    reuse = dict(options, iterative_order="descending",
                 iterative_cache=str(tmp_path / "a" / "sensitivity.json"))
    result = train(tiny("iterative", method_options=reuse), tmp_path / "b", progress=False)
    assert result.metrics["iterative"]["order"] == cache["ascending"][::-1]
    with pytest.raises(AssertionError, match="should have been reused"):  # other settings
        train(tiny("iterative", limit_train=96, method_options=reuse), tmp_path / "c",
              progress=False)


def test_iterative_resume_keeps_the_order_and_matches_an_uninterrupted_run(tmp_path):
    config = dict(epochs=3, method_options={"iterative_order": "random"})
    full = train(tiny("iterative", **config), tmp_path / "full", progress=False)
    part = train(tiny("iterative", **config), tmp_path / "part", progress=False,
                 stop_after_epochs=2)
    assert not part.finished
    resumed = train(tiny("iterative", **config), tmp_path / "part", progress=False, resume=True)
    assert resumed.metrics["iterative"]["order"] == full.metrics["iterative"]["order"]
    assert resumed.top1 == full.top1
    a, _ = load_run(tmp_path / "full")
    b, _ = load_run(tmp_path / "part")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_train_command_records_method_options(tmp_path):
    from binforge.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", "digits", "--arch", "mlp", "--width", "0.125",
                              "--method", "xnor++", "--xnorpp-case", "4", "--epochs", "1",
                              "--float-epochs", "0", "--limit-train", "64", "--limit-test", "32",
                              "--out", str(tmp_path / "run")])
    assert args.run(args) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["method"] == "xnor++" and saved["method_options"] == {"xnorpp_case": 4}

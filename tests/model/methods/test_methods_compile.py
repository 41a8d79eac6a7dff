"""Companion-method models through the compiler: the golden integer model equals the torch model."""

import numpy as np
import pytest
import torch
from binforge.compiler.compile import UnsupportedModel, compile_model
from binforge.compiler.torch_reference import quantised_model, torch_input_bits
from binforge.model.methods.ste import latent_binary_layers
from binforge.model.train import RunConfig, get_method
from binforge.sim.golden import run_network


def built(method, options, arch="vgg-small"):
    config = RunConfig(data="digits", arch=arch, width=0.125, method=method, in_shape=[1, 8, 8],
                       num_classes=10, method_options=options)
    torch.manual_seed(0)
    model = get_method(method).build_model(config, None)
    with torch.no_grad():  # non-trivial batch norms and scales, some negative
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-2, 2)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(-1.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
        for _, layer in latent_binary_layers(model):
            if layer.scaler is not None:
                for p in layer.scaler.parameters():
                    p.mul_(torch.empty_like(p).uniform_(-2, 2))
    return model.eval()


@pytest.mark.parametrize("method,options,arch", [
    ("ste", {}, "vgg-small"),
    ("bnn+", {}, "vgg-small"),
    ("xnor", {}, "mlp"),
    ("xnor++", {"xnorpp_case": 1}, "vgg-small"),
    ("xnor++", {"xnorpp_case": 4}, "mlp"),  # linear layers: one output pixel, Gamma per channel
])
def test_golden_model_equals_quantised_torch_model(method, options, arch):
    model = built(method, options, arch)
    net, report = compile_model(model, (1, 8, 8), 10)
    images = np.random.default_rng(0).integers(0, 256, (48, 1, 8, 8), dtype=np.uint8)
    golden = run_network(net, images, return_layers=True)
    reference = quantised_model(model, report)
    checked = 0
    for index, (bits, margin) in torch_input_bits(reference, net, report, images).items():
        ours = golden.layers[index - 1].reshape(bits.shape)
        clear = margin > 1e-6  # float ties may go either way
        assert np.array_equal(ours[clear], bits[clear]), f"layer {index}"
        checked += int(clear.sum())
    assert checked > 1000


def test_compiler_refuses_what_the_hardware_cannot_run():
    with pytest.raises(UnsupportedModel, match="input factor K"):
        compile_model(built("xnor", {"xnor_input_factor": True}), (1, 8, 8), 10)
    with pytest.raises(UnsupportedModel, match="case 3 scales every output pixel"):
        compile_model(built("xnor++", {"xnorpp_case": 3}), (1, 8, 8), 10)
    # iterative training's layers start with float weights: not compilable until binarized
    with pytest.raises(UnsupportedModel, match="not binarized yet"):
        compile_model(built("iterative", {}), (1, 8, 8), 10)

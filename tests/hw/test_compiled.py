"""A network compiled from a tiny model (the compiler's real output) on the accelerator."""

import numpy as np
import pytest
import torch
from accel_harness import run_accelerator
from binforge.compiler.compile import compile_model
from binforge.hw.accelerator import Accelerator
from binforge.hw.plan import analytic_cycles
from binforge.model.arch import build_model
from binforge.model.data import batch_to_input, load_dataset
from binforge.sim.golden import run_network


@pytest.fixture(scope="module")
def compiled_mlp():
    """An MLP (multi-base binary layers) on digits, batch-norm statistics from real images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        images, _ = load_dataset("digits", "test", limit=64).as_arrays()
        model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, width=0.125, M=2, N=2)
        model.train()
        with torch.no_grad():
            model(batch_to_input(images))
        model.eval()
        net, _ = compile_model(model, (1, 8, 8), 10, name="tiny-mlp")
    finally:
        torch.set_num_threads(threads)
    return net, images


def test_compiled_mlp_matches_golden(compiled_mlp):
    net, images = compiled_mlp
    assert any(len(layer.ops) > 1 for layer in net.compute_layers[1:])  # multi-op binary layers
    batch = images[:1]
    golden = run_network(net, batch)
    acc = Accelerator(net, 4, 2, 16)
    classes, logits, cycles = run_accelerator(acc, batch, stall_seed=3)
    np.testing.assert_array_equal(logits, golden.logits)
    np.testing.assert_array_equal(classes, golden.predictions)
    assert cycles == [analytic_cycles(net, 4, 2, 16)["total"]]

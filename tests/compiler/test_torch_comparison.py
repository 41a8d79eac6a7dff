"""Torch against golden, bit by bit: with enough first-layer bits the golden model is the torch model."""

import copy

import numpy as np
import pytest
import torch
from binforge.compiler.compile import MAX_WEIGHT_BITS, compile_model, odd_to_planes, quantise_odd
from binforge.compiler.torch_reference import compare_with_torch, quantised_model, reference_report
from binforge.model.data import batch_to_input, load_dataset
from binforge.model.train import RunConfig, build_model_from_config

from binforge.errors import BinforgeError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_and_images():
    """VGG-small, 1/1 bits, width 0.125 on digits; batch-norm statistics from 256 real images."""
    config = RunConfig(data="digits", arch="vgg-small", width=0.125, method="bop", M=1, N=1,
                       in_shape=[1, 8, 8], num_classes=10, classes=[str(i) for i in range(10)]).to_json()
    torch.manual_seed(1)
    model = build_model_from_config(config)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(batch_to_input(load_dataset("digits", "train", limit=256).as_arrays()[0]))
    return model.eval(), load_dataset("digits", "test", limit=150).as_arrays()[0]


def test_quantise_odd_takes_up_to_24_bits():
    w = np.random.default_rng(0).normal(size=(3, 2, 3, 3))
    q, delta = quantise_odd(w, MAX_WEIGHT_BITS)
    assert MAX_WEIGHT_BITS == 24 and np.abs(q).max() <= 2**24 - 1
    rebuilt = sum((1 << j) * (plane.astype(np.int64) * 2 - 1) for j, plane in enumerate(odd_to_planes(q, 24)))
    np.testing.assert_array_equal(rebuilt, q)
    assert np.abs(q * delta[:, None, None, None] - w).max() <= 1.5e-7 * np.abs(w).max()
    with pytest.raises(ValueError, match=r"^weight bits must be in 1\.\.24, not 25$"):
        quantise_odd(w, 25)


def test_float64_torch_is_golden_bit_for_bit_at_24_bits(model_and_images):
    """With 24-bit first-layer and classifier weights the rounding left is below float32's:
    the torch model run in float64 gives every golden bit and prediction."""
    model, images = model_and_images
    net, report = compile_model(model, images.shape[1:], 10, first_weight_bits=24, last_weight_bits=24)
    assert net.layers[0].acc_width <= 48
    exact = compare_with_torch(copy.deepcopy(model).double(), net, report, images, batch_size=64)
    assert len(exact.layers) == 6 and all(entry.bits > 0 for entry in exact.layers)
    assert [entry.differing for entry in exact.layers] == [0] * 6
    assert exact.first_difference is None and exact.agreement == 1.0 and exact.classifier_mismatches == 0
    np.testing.assert_array_equal(exact.torch_predictions, exact.golden_predictions)


def test_low_bits_differences_start_in_the_first_layer(model_and_images):
    """A 3-bit first layer: differences start at the first layer's bits in every image that has
    any, and reach the classifier's input; the torch model holding the same integers is golden again."""
    model, images = model_and_images
    net, report = compile_model(model, images.shape[1:], 10, first_weight_bits=3, last_weight_bits=8)
    trained = compare_with_torch(model, net, report, images)
    first = trained.layers[0]
    assert trained.first_difference is first and trained.first_unexplained is first
    assert first.differing > first.ties and first.origin_images == first.images_differing > 0
    assert all(entry.origin_images == 0 for entry in trained.layers[1:])
    assert trained.layers[-1].images_differing > 0
    lenient = compare_with_torch(model, net, report, images, tie_tolerance=np.inf)
    assert lenient.first_unexplained is None and lenient.layers[0].ties == first.differing
    exact = compare_with_torch(quantised_model(model, report), net, report, images)
    assert exact.first_unexplained is None and exact.agreement == 1.0
    assert 0 < exact.max_logit and exact.equal_bits_logit_difference <= 1e-5 * exact.max_logit
    assert exact.to_json()["first_unexplained_difference"] is None
    assert trained.to_json()["first_difference"] == "body.0"


def test_reference_report_refuses_another_model(model_and_images):
    model, images = model_and_images
    net, _ = compile_model(model, images.shape[1:], 10)
    config = RunConfig(data="digits", arch="mlp", width=0.125, method="bop", M=1, N=1, in_shape=[1, 8, 8],
                       num_classes=10, classes=[str(i) for i in range(10)]).to_json()
    with pytest.raises(BinforgeError, match="does not compile to the network's layers"):
        reference_report(build_model_from_config(config).eval(), net)
    assert reference_report(model, net).input_bases.keys() == {1, 3, 4, 6, 7, 9}

"""Companion methods in the training registry: names, options on the command line, iterative orders."""

import argparse

import pytest
import torch
from binforge.model.methods import (
    COMPANION_METHODS,
    add_method_arguments,
    method_options_from_args,
)
from binforge.model.methods.iterative import (
    apply_binarization_state,
    binarization_order,
    binarized_count,
)
from binforge.model.methods.ste import LatentBinaryLinear
from binforge.model.train import get_method, method_names

from binforge.errors import BinforgeError


def test_every_companion_method_is_registered():
    assert list(COMPANION_METHODS) == ["ste", "bnn+", "xnor", "xnor++", "iterative"]
    names = method_names()
    for name, cls in COMPANION_METHODS.items():
        assert name in names
        assert isinstance(get_method(name), cls)


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--method")
    add_method_arguments(parser)
    return parser.parse_args(argv)


def test_method_options_from_the_command_line():
    args = parse(["--method", "xnor++", "--xnorpp-case", "3"])
    assert method_options_from_args(args) == {"xnorpp_case": 3}
    args = parse(["--method", "bnn+", "--bnnplus-beta", "10", "--bnnplus-regularizer", "r2",
                  "--bnnplus-trainable-beta", "--bnnplus-alpha-init", "median"])
    assert method_options_from_args(args) == {
        "bnnplus_beta": 10.0, "bnnplus_regularizer": "r2", "bnnplus_trainable_beta": True,
        "bnnplus_alpha_init": "median"}
    assert method_options_from_args(parse(["--method", "ste"])) == {}
    assert method_options_from_args(parse(["--method", "iterative", "--iterative-order",
                                           "ascending", "--iterative-sensitivity-epochs", "2"])) == {
        "iterative_order": "ascending", "iterative_sensitivity_epochs": 2}
    with pytest.raises(BinforgeError, match="--xnor-input-factor belongs to --method xnor, not ste"):
        method_options_from_args(parse(["--method", "ste", "--xnor-input-factor"]))
    with pytest.raises(SystemExit):
        parse(["--method", "xnor++", "--xnorpp-case", "5"])


def test_method_option_reads_config_with_defaults_and_checks_choices():
    method = get_method("xnor++")

    class Config:
        method_options = {"xnorpp_case": 4}

    assert method.option(Config(), "xnorpp_case") == 4
    Config.method_options = {}
    assert method.option(Config(), "xnorpp_case") == 1
    Config.method_options = {"xnorpp_case": 7}
    with pytest.raises(BinforgeError, match="--xnorpp-case must be one of 1, 2, 3, 4, not 7"):
        method.option(Config(), "xnorpp_case")


def test_binarization_orders():
    assert binarization_order("forward", 4) == [0, 1, 2, 3]
    assert binarization_order("reverse", 4) == [3, 2, 1, 0]
    random_order = binarization_order("random", 6, seed=3)
    assert sorted(random_order) == list(range(6))
    assert random_order == binarization_order("random", 6, seed=3)
    errors = [12.0, 3.5, 7.0, 3.5]
    assert binarization_order("ascending", 4, errors=errors) == [1, 3, 2, 0]
    assert binarization_order("descending", 4, errors=errors) == [0, 2, 3, 1]
    with pytest.raises(ValueError, match="needs one sensitivity error per layer"):
        binarization_order("ascending", 4)
    with pytest.raises(ValueError, match="order must be one of"):
        binarization_order("sideways", 4)


def test_binarization_schedule_follows_algorithm_1():
    # L = 3 layers, N = 5 steps each: layer order[0] from step 0, order[1] from step 5, ...
    counts = [binarized_count(step, 5, 3) for step in range(18)]
    assert counts == [1] * 5 + [2] * 5 + [3] * 8
    layers = [LatentBinaryLinear(2, 2) for _ in range(3)]
    apply_binarization_state(layers, [2, 0, 1], 2)
    assert [bool(layer.weight_binarized) for layer in layers] == [True, False, True]
    x = torch.randn(1, 2)
    torch.testing.assert_close(layers[1](x), torch.nn.functional.linear(torch.sign(x), layers[1].weight))

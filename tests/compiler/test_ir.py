"""The IR: bit convention, round trip through files, and validation messages."""

import json

import numpy as np
import pytest
from binforge.compiler import ir
from binforge.compiler.random_network import random_network
from hypothesis import given, settings
from hypothesis import strategies as st


@given(st.lists(st.integers(0, 1), min_size=1, max_size=300), st.data())
@settings(max_examples=60, deadline=None)
def test_pack_unpack_and_dot_match_plain_signs(bits_a, data):
    a = np.array(bits_a, dtype=np.uint8)
    w = np.array(data.draw(st.lists(st.integers(0, 1), min_size=len(a), max_size=len(a))), dtype=np.uint8)
    assert (ir.unpack_bits(ir.pack_bits(a), len(a)) == a).all()
    expected = int((ir.bits_to_signs(a) * ir.bits_to_signs(w)).sum())
    assert int(ir.xnor_dot(ir.pack_bits(a), ir.pack_bits(w), len(a))) == expected


def test_element_i_is_bit_i_lsb_first():
    bits = np.zeros(130, dtype=np.uint8)
    bits[[0, 5, 64, 129]] = 1
    words = ir.pack_bits(bits)
    assert words.tolist() == [1 | (1 << 5), 1, 2]


def test_sign_of_zero_is_plus_one():
    assert ir.signs_to_bits(np.array([-0.5, 0.0, 2.0])).tolist() == [0, 1, 1]


def test_pixel_planes_are_exact_digits():
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 1, 256)
    planes = ir.pixel_planes(x)
    value = (ir.bits_to_signs(planes) * (2 ** np.arange(8)).reshape(1, 8, 1, 1, 1)).sum(axis=1)
    assert (value == 2 * x.astype(np.int64) - 255).all()


def test_signed_width():
    assert ir.signed_width(-128, 127) == 8
    assert ir.signed_width(-129, 0) == 9
    assert ir.signed_width(0, 128) == 9
    assert ir.signed_width(0, 0) == 1


def test_round_trip(tmp_path):
    net = random_network(3)
    ir.save(net, tmp_path)
    back = ir.load(tmp_path)
    assert len(back.layers) == len(net.layers)
    for a, b in zip(net.layers, back.layers, strict=True):
        assert a.kind == b.kind and a.in_shape == b.in_shape and a.in_planes == b.in_planes
        if a.kind != "maxpool":
            assert (a.weights == b.weights).all() and (a.bias == b.bias).all()
            assert a.ops == b.ops and a.acc_width == b.acc_width
            if a.output.kind == "threshold":
                assert (a.output.thresholds == b.output.thresholds).all()
                assert (a.output.flip == b.output.flip).all()


def test_newer_schema_is_refused(tmp_path):
    ir.save(random_network(0), tmp_path)
    doc = json.loads((tmp_path / "network.json").read_text())
    doc["schema_version"] = ir.SCHEMA_VERSION + 1
    (tmp_path / "network.json").write_text(json.dumps(doc))
    with pytest.raises(ir.IRError, match="newer than this binforge reads"):
        ir.load(tmp_path)


def test_corrupted_npz_is_refused(tmp_path):
    ir.save(random_network(0), tmp_path)
    data = (tmp_path / "weights.npz").read_bytes()
    (tmp_path / "weights.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ir.IRError, match="corrupted"):
        ir.load(tmp_path)


def test_unknown_layer_kind_is_refused(tmp_path):
    ir.save(random_network(0), tmp_path)
    doc = json.loads((tmp_path / "network.json").read_text())
    doc["layers"][1]["kind"] = "depthwise"
    (tmp_path / "network.json").write_text(json.dumps(doc))
    with pytest.raises(ir.IRError, match="unknown kind 'depthwise'"):
        ir.load(tmp_path)


def test_shapes_that_do_not_chain_are_refused():
    net = random_network(0)
    bad = list(net.layers)
    bad.pop(1)  # drop the max-pool: the next layer's input no longer matches
    with pytest.raises(ir.IRError, match="does not chain"):
        ir.validate(ir.Network(name="x", input_shape=net.input_shape, num_classes=net.num_classes,
                               layers=tuple(bad)))


def test_too_narrow_accumulator_is_refused():
    import dataclasses

    net = random_network(0)
    layers = list(net.layers)
    layers[0] = dataclasses.replace(layers[0], acc_width=layers[0].acc_width - 1)
    with pytest.raises(ir.IRError, match="cannot hold the accumulator range"):
        ir.validate(dataclasses.replace(net, layers=tuple(layers)))


def test_non_bit_weights_are_refused():
    import dataclasses

    net = random_network(0)
    layers = list(net.layers)
    w = layers[0].weights.copy()
    w[0, 0, 0, 0, 0] = 2
    layers[0] = dataclasses.replace(layers[0], weights=w)
    with pytest.raises(ir.IRError, match="weights must hold bits"):
        ir.validate(dataclasses.replace(net, layers=tuple(layers)))

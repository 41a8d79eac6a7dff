"""QONNX export: the exported graph, run by QONNX's executor, gives the golden model's logits."""

import dataclasses

import numpy as np
import pytest
import torch
from binforge.compiler import ir
from binforge.compiler.ir import INPUT_PLANES, AffineStage, Network, Op, Shape
from binforge.compiler.qonnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    QonnxExportError,
    _bit_serial_factors,
    export_qonnx,
    run_qonnx,
    to_qonnx,
)
from binforge.compiler.random_network import (
    first_layer_ops,
    random_conv,
    random_linear,
    random_network,
)
from binforge.sim.golden import run_network
from onnx import TensorProto


def random_images(net: Network, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *net.input_shape.as_tuple())).astype(np.uint8)
    images[0] = 0  # the extremes: every pixel bit 0, then every bit 1
    images[1] = 255
    return images


def assert_matches_golden(net: Network, count: int = 6, batch_size: int = 3) -> None:
    images = random_images(net, count)
    model = to_qonnx(net, batch_size=batch_size)
    logits = run_qonnx(model, images)
    golden = run_network(net, images)
    np.testing.assert_array_equal(logits, golden.logits)
    np.testing.assert_array_equal(np.argmax(logits, axis=1), golden.predictions)


NETWORKS = {
    "default-0": dict(seed=0),
    "default-1": dict(seed=1),
    "three-convs-stride": dict(seed=2, in_shape=Shape(3, 10, 10), channels=(4, 5, 6), act_planes=(2, 3, 2),
                               first_weight_planes=3),
    "no-pool-one-plane": dict(seed=3, in_shape=Shape(2, 7, 6), channels=(3, 4), act_planes=(1, 1), pool=False,
                              last_weight_planes=1),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_random_networks_match_golden(name):
    net = random_network(**NETWORKS[name])
    kinds = [layer.kind for layer in net.layers]
    assert kinds[0] == "conv" and kinds[-1] == "linear"
    assert_matches_golden(net)


def test_graph_uses_qonnx_ops_and_datatypes(tmp_path):
    net = random_network(0)
    path = export_qonnx(net, tmp_path / "network.onnx")
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(path))
    ops = [node.op_type for node in model.graph.node]
    thresholds = [node for node in model.graph.node if node.op_type == "MultiThreshold"]
    # one MultiThreshold per output plane of every threshold layer
    assert len(thresholds) == sum(layer.out_planes for layer in net.compute_layers[:-1])
    assert all(node.domain == "qonnx.custom_op.general" for node in thresholds)
    assert ops.count("BipolarQuant") == sum(layer.weight_planes for layer in net.compute_layers)
    assert "MaxPool" in ops
    assert model.get_tensor_datatype(INPUT_NAME).name == "UINT8"
    assert all(model.get_tensor_datatype(node.output[0]).name == "BIPOLAR" for node in thresholds)
    assert model.get_tensor_shape(INPUT_NAME) == [1, 1, 8, 8]
    assert model.get_tensor_shape(OUTPUT_NAME) == [1, net.num_classes]
    # the file round-trips and runs, also after QONNX's own cleanup (shape inference, constant folding)
    from qonnx.util.cleanup import cleanup_model

    images = random_images(net, 2, seed=5)
    golden = run_network(net, images).logits
    np.testing.assert_array_equal(run_qonnx(model, images), golden)
    np.testing.assert_array_equal(run_qonnx(cleanup_model(model), images), golden)


def test_first_layer_with_any_ops_reads_the_pixel_bit_planes():
    """A first layer whose ops are not bit-serial: the graph extracts the 8 pixel planes."""
    rng = np.random.default_rng(7)
    first = random_conv(rng, Shape(1, 6, 6), INPUT_PLANES, 3, weight_planes=2, out_planes=2, name="conv0")
    assert _bit_serial_factors(first) is None and len(first.ops) == 2 * INPUT_PLANES
    last = random_linear(rng, first.out_shape, 2, 4, weight_planes=2, name="classifier")
    net = ir.validate(Network("mixed", Shape(1, 6, 6), 4, (first, last)))
    assert_matches_golden(net)
    assert "Floor" in [node.op_type for node in to_qonnx(net).graph.node]


def test_linear_first_layer_then_linear_layers():
    """A bit-serial linear first layer (an MLP), then a linear threshold layer."""
    rng = np.random.default_rng(11)
    shape = Shape(1, 5, 5)
    first = random_linear(rng, shape, INPUT_PLANES, 6, weight_planes=2, out_planes=2,
                          ops=first_layer_ops(2), name="fc0")
    assert _bit_serial_factors(first) == {0: 1, 1: 2}
    middle = random_linear(rng, first.out_shape, 2, 5, weight_planes=2, out_planes=1, name="fc1")
    last = random_linear(rng, middle.out_shape, 1, 3, weight_planes=1, name="classifier")
    net = ir.validate(Network("mlp", shape, 3, (first, middle, last)))
    assert_matches_golden(net, count=4, batch_size=4)


def test_thresholds_at_the_edges_of_the_range():
    """Thresholds beyond the reachable range (always / never on) and flips on every channel."""
    net = random_network(4, channels=(3,), act_planes=(2,), pool=False)
    conv = net.layers[0]
    lo, hi = ir.acc_bound(conv)
    thresholds = np.array([[lo - 1000, hi + 1000, 0], [lo, hi + 1, 1]], dtype=np.int64)
    stage = dataclasses.replace(conv.output, thresholds=thresholds, flip=np.array([1, 0, 1], np.uint8))
    net = dataclasses.replace(net, layers=(dataclasses.replace(conv, output=stage), net.layers[1]))
    assert_matches_golden(ir.validate(net))


def test_wide_accumulators_sum_in_float64():
    """Layers wider than 24 bits: products in float32, gains and sums in float64, exact."""
    net = random_network(0)
    last = net.layers[-1]
    wide = dataclasses.replace(last, ops=(Op(0, 0, (1 << 30) + 1), Op(1, 0, 3)), acc_width=1)
    wide = dataclasses.replace(wide, acc_width=ir.signed_width(*ir.acc_bound(wide)))
    assert wide.acc_width > 32
    net = ir.validate(dataclasses.replace(net, layers=net.layers[:-1] + (wide,)))
    assert_matches_golden(net)
    model = to_qonnx(net)
    assert model.get_tensor_valueinfo(OUTPUT_NAME).type.tensor_type.elem_type == TensorProto.DOUBLE
    assert [node.op_type for node in model.graph.node].count("Cast") == 2  # each op's product


def test_refuses_a_fan_in_beyond_float32():
    """A bit-serial first layer over 258 x 256 pixels: 255 K is past 2**24."""
    rng = np.random.default_rng(0)
    shape = Shape(1, 258, 256)
    first = random_linear(rng, shape, INPUT_PLANES, 2, weight_planes=1, ops=first_layer_ops(1), name="fc0")
    net = ir.validate(Network("huge", shape, 2, (first,)))
    with pytest.raises(QonnxExportError, match=r"layer 'fc0': one product reaches 16842240, beyond"):
        to_qonnx(net)


def test_compiled_model_matches_golden():
    """A model from the compiler (VGG-small, two bases, untrained weights) exports exactly."""
    from binforge.compiler.compile import compile_model
    from binforge.model.arch import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model("vgg-small", in_shape=(1, 16, 16), num_classes=10, width=0.125, M=2, N=2).eval()
        net, _ = compile_model(model, (1, 16, 16), 10, name="vgg-small")
    finally:
        torch.set_num_threads(threads)
    assert isinstance(net.layers[-1].output, AffineStage)
    assert _bit_serial_factors(net.layers[0]) == {j: 1 << j for j in range(net.layers[0].weight_planes)}
    assert_matches_golden(net, count=4, batch_size=2)


def test_compile_command_writes_network_onnx(tmp_path, capsys):
    """``binforge compile RUN --out NET --qonnx`` writes NET/network.onnx beside the IR."""
    from binforge.model.checkpoint import save_model
    from binforge.model.train import RunConfig, build_model_from_config
    from qonnx.core.modelwrapper import ModelWrapper

    from binforge.cli import main

    config = RunConfig(data="digits", arch="mlp", width=0.125, method="pabt", M=2, N=2, in_shape=[1, 8, 8],
                       num_classes=10, classes=[str(i) for i in range(10)]).to_json()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        (tmp_path / "run").mkdir()
        save_model(tmp_path / "run", build_model_from_config(config).eval(), config)
        net_dir = tmp_path / "net"
        assert main(["compile", str(tmp_path / "run"), "--out", str(net_dir), "--error-images", "0", "--qonnx"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert f"qonnx      {net_dir / 'network.onnx'}" in capsys.readouterr().out
    assert sorted(p.name for p in net_dir.iterdir()) == ["network.json", "network.onnx", "report.json", "weights.npz"]
    net = ir.load(net_dir)
    images = random_images(net, 3, seed=9)
    model = ModelWrapper(str(net_dir / "network.onnx"))
    np.testing.assert_array_equal(run_qonnx(model, images), run_network(net, images).logits)

"""``binforge sim``: images through the RTL from the command line, report.json, clear errors."""

import dataclasses
import json
import shutil

import binforge.sim.cocotb_runner as cocotb_runner
import pytest
from binforge.compiler import ir
from binforge.compiler.random_network import random_network

from binforge.cli import main

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def tiny_net_dir(tiny, tmp_path_factory):
    net, hw = tiny
    folder = tmp_path_factory.mktemp("net")
    ir.save(net, folder)
    return folder, hw


def test_sim_command_checks_images_and_writes_report(tiny_net_dir, build_root, tmp_path, capsys, record_cases):
    net_dir, hw = tiny_net_dir
    out = tmp_path / "out"
    rc = main(["sim", str(hw), "--net", str(net_dir), "--simulator", "verilator", "--data", "synthetic=1,6,6,4",
               "--limit", "6", "--stall", "0.3", "--chunk", "4", "--build-root", str(build_root), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads((out / "report.json").read_text())
    record_cases(report["cases"], report["mismatch_count"])
    assert report["command"] == "sim" and report["simulator"] == "verilator"
    assert report["images"] == report["matches"] == 6 and report["mismatch_count"] == 0
    assert report["rtl_cycles_min"] == report["rtl_cycles_max"] == report["analytic_cycles"]
    assert report["rtl_accuracy"] == report["golden_accuracy"]
    assert report["images_per_second"] > 0 and report["sim_cycles_per_second"] > 0
    assert "6 of 6 images bit-exact" in printed and "equal to the analytic" in printed
    table = report["layer_cycles"]
    assert [row["name"] for row in table] == [layer.name for layer in ir.load(net_dir).layers]
    assert all(row["rtl_min"] == row["rtl_max"] == row["analytic"] for row in table)
    assert "<- differs" not in printed and report["localisations"] == []


def test_sim_command_localises_a_differing_layer(tiny_net_dir, build_root, tmp_path, capsys):
    """Hardware checked against a network with one planted threshold fault in conv1: exit 1,
    and the summary and report name conv1 as the first layer that differs."""
    net_dir, hw = tiny_net_dir
    net = ir.load(net_dir)
    conv = next(i for i, layer in enumerate(net.layers) if layer.name == "conv1")
    layer = net.layers[conv]
    thresholds = layer.output.thresholds.copy()
    thresholds[:, 1] = -(1 << (layer.acc_width - 1))  # acc >= it always: the bit always fires
    faulty = dataclasses.replace(net, layers=net.layers[:conv] + (
        dataclasses.replace(layer, output=dataclasses.replace(layer.output, thresholds=thresholds)),)
        + net.layers[conv + 1:])
    ir.save(faulty, tmp_path / "faulty")
    out = tmp_path / "out"
    rc = main(["sim", str(hw), "--net", str(tmp_path / "faulty"), "--data", "synthetic=1,6,6,4", "--limit", "6",
               "--localise", "2", "--build-root", str(build_root), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 1, printed
    report = json.loads((out / "report.json").read_text())
    assert report["matches"] <= 4, "the planted fault must change at least two images"
    assert len(report["localisations"]) == 2  # --localise 2: the first two differing images
    assert {found["first_bad_layer"] for found in report["localisations"]} == {conv}
    assert f"first differing layer {conv} (conv1)" in printed and "channel=1" in printed


def test_sim_command_names_how_to_install_a_missing_simulator(tiny_net_dir, monkeypatch, tmp_path, capsys):
    net_dir, hw = tiny_net_dir
    real_which = cocotb_runner.shutil.which
    monkeypatch.setattr(cocotb_runner.shutil, "which", lambda name: None if name == "iverilog" else real_which(name))
    rc = main(["sim", str(hw), "--net", str(net_dir), "--simulator", "icarus", "--data", "synthetic=1,6,6,4",
               "--limit", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "iverilog not found" in err and "apt-get install -y iverilog" in err
    assert not (tmp_path / "out").exists()


def test_sim_command_refuses_a_negative_localise_count(tiny_net_dir, capsys):
    _, hw = tiny_net_dir
    rc = main(["sim", str(hw), "--data", "synthetic=1,6,6,4", "--limit", "1", "--localise", "-1"])
    assert rc == 2
    assert "--localise must be 0 or more, not -1" in capsys.readouterr().err


def test_sim_command_refuses_a_network_the_hardware_was_not_made_from(tiny_net_dir, tmp_path, capsys):
    _, hw = tiny_net_dir
    other = tmp_path / "other"
    ir.save(random_network(5), other)  # 1x8x8 input, not the hardware's 1x6x6
    rc = main(["sim", str(hw), "--net", str(other), "--data", "synthetic", "--limit", "1"])
    assert rc == 2
    assert "give the network the hardware was generated from" in capsys.readouterr().err


def test_sim_command_reads_the_network_from_hw_or_asks_for_it(tiny_net_dir, build_root, tmp_path, capsys):
    _, hw = tiny_net_dir
    # binforge hw writes the network beside the Verilog: no --net needed
    rc = main(["sim", str(hw), "--data", "synthetic=1,6,6,4", "--limit", "1", "--build-root", str(build_root)])
    assert rc == 0, capsys.readouterr()
    bare = tmp_path / "bare"
    shutil.copytree(hw, bare)
    (bare / ir.NETWORK_JSON).unlink()
    rc = main(["sim", str(bare), "--data", "synthetic=1,6,6,4", "--limit", "1"])
    assert rc == 2
    assert "--net NET/" in capsys.readouterr().err

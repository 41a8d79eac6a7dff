"""Verilog generation, hw.json, the ``binforge hw`` command and its refusals."""

import json

import pytest
from binforge.compiler import ir
from binforge.hw.generate import PORTS, TOP_NAME, generate
from binforge.hw.plan import analytic_cycles, plan_network, skew_advice
from networks import small_network, strided_first_network

from binforge.cli import main


@pytest.fixture(scope="module")
def net():
    return small_network(3)


def test_generate_writes_verilog_and_description(net, tmp_path):
    desc = generate(net, 2, 3, 4, tmp_path)
    text = (tmp_path / "binforge_top.v").read_text()
    assert f"module {TOP_NAME}(" in text
    for port in PORTS:
        width = f"[{port['width'] - 1}:0] " if port["width"] > 1 else ""
        assert f"{'input' if port['dir'] == 'in' else 'output'} {width}{port['name']};" in text
    on_disk = json.loads((tmp_path / "hw.json").read_text())
    assert on_disk == desc
    assert desc["cycles"] == analytic_cycles(net, 2, 3, 4)
    assert desc["cycles"]["total"] == sum(layer["cycles"] for layer in desc["cycles"]["layers"]) + 1
    assert desc["memory_bits"]["weights"] > 0 and desc["lanes"] == 24


def test_hw_command(net, tmp_path, capsys):
    ir.save(net, tmp_path / "net")
    assert main(["hw", str(tmp_path / "net"), "--rows", "2", "--cols", "2", "--simd", "8",
                 "--out", str(tmp_path / "hw")]) == 0
    report = json.loads((tmp_path / "hw" / "report.json").read_text())
    assert report["command"] == "hw"
    assert report["cycles"] == analytic_cycles(net, 2, 2, 8)["total"]
    assert (tmp_path / "hw" / "binforge_top.v").is_file()
    out = capsys.readouterr().out
    assert "cycles" in out
    assert report["skew_advice"] is None and "--relay" not in out  # 2 x 2 at relay 4: no skew


def test_hw_command_chooses_the_relay_by_default(tmp_path, capsys):
    net = small_network(5, shape=(1, 6, 6), channels=(4, 6, 4), act_planes=(1, 1, 1))
    ir.save(net, tmp_path / "net")
    # 2 x 16 PEs: at relay 4 the columns' skew (3) outlasts the shortest groups
    assert main(["hw", str(tmp_path / "net"), "--rows", "2", "--cols", "16", "--simd", "2",
                 "--out", str(tmp_path / "hw")]) == 0
    desc = json.loads((tmp_path / "hw" / "hw.json").read_text())
    advice = skew_advice(plan_network(net, 2, 16, 2))
    assert desc["relay"] == advice["hint"] == 8 and desc["cycles"]["total"] == advice["hint_cycles"]
    assert json.loads((tmp_path / "hw" / "report.json").read_text())["relay"] == 8
    out = capsys.readouterr().out
    assert (f"relay 8 (auto: at relay 4 the array's skew would add {advice['skew_cycles']} cycles per "
            "image)") in out
    assert main(["hw", str(tmp_path / "net"), "--rows", "2", "--cols", "2", "--simd", "2",
                 "--out", str(tmp_path / "small")]) == 0
    assert json.loads((tmp_path / "small" / "hw.json").read_text())["relay"] == 4
    assert "relay 4 (auto)" in capsys.readouterr().out


def test_hw_command_refuses_a_relay_that_is_not_a_number(tmp_path, capsys):
    net = small_network(5)
    ir.save(net, tmp_path / "net")
    assert main(["hw", str(tmp_path / "net"), "--relay", "x", "--out", str(tmp_path / "hw")]) == 2
    assert "--relay must be a positive integer or auto, not 'x'" in capsys.readouterr().err
    assert not (tmp_path / "hw").exists()


def test_hw_command_names_the_relay_when_skew_sets_the_pace(tmp_path, capsys):
    net = small_network(5, shape=(1, 6, 6), channels=(4, 6, 4), act_planes=(1, 1, 1))
    ir.save(net, tmp_path / "net")
    assert main(["hw", str(tmp_path / "net"), "--rows", "4", "--cols", "5", "--simd", "16", "--relay", "1",
                 "--out", str(tmp_path / "hw")]) == 0
    advice = json.loads((tmp_path / "hw" / "hw.json").read_text())["skew_advice"]
    assert advice == json.loads((tmp_path / "hw" / "report.json").read_text())["skew_advice"]
    assert advice["relay"] == 1 and advice["skew_cycles"] > 0
    saved = advice["cycles"] - advice["hint_cycles"]
    assert (f"the array's skew adds {advice['skew_cycles']} cycles per image at --relay 1 (groups wait "
            f"for it); --relay {advice['hint']} takes {saved} of them out") in capsys.readouterr().out


@pytest.mark.parametrize("board,device,primitive", [
    ("icebreaker", "iCE40UP5K", "SB_SPRAM256KA"),  # the im2col image memory in SPRAM
    ("ulx3s-85f", "LFE5U-85F", "CCU2C"),  # the PEs' carry chains
])
def test_hw_command_elaborates_for_a_board(tmp_path, capsys, board, device, primitive):
    net = strided_first_network(13, 1)
    ir.save(net, tmp_path / "net")
    assert main(["hw", str(tmp_path / "net"), "--rows", "2", "--cols", "2", "--simd", "8", "--board", board,
                 "--out", str(tmp_path / "hw")]) == 0
    desc = json.loads((tmp_path / "hw" / "hw.json").read_text())
    assert desc["device"] == device
    assert json.loads((tmp_path / "hw" / "report.json").read_text())["board"] == board
    assert f"  {primitive} " in (tmp_path / "hw" / "binforge_top.v").read_text()
    assert f"elaborated for the {device} of --board {board}" in capsys.readouterr().out
    # portable by default: no primitives
    assert main(["hw", str(tmp_path / "net"), "--rows", "2", "--cols", "2", "--simd", "8",
                 "--out", str(tmp_path / "plain")]) == 0
    assert json.loads((tmp_path / "plain" / "hw.json").read_text())["device"] is None
    assert f"  {primitive} " not in (tmp_path / "plain" / "binforge_top.v").read_text()


def test_hw_command_refuses_an_unknown_board(net, tmp_path, capsys):
    ir.save(net, tmp_path / "net")
    assert main(["hw", str(tmp_path / "net"), "--board", "icebraker", "--out", str(tmp_path / "hw")]) == 2
    assert "unknown board 'icebraker'; choose one of icebreaker" in capsys.readouterr().err
    assert not (tmp_path / "hw").exists()


def test_hw_command_refuses_what_does_not_fit(net, tmp_path, capsys):
    ir.save(net, tmp_path / "net")
    code = main(["hw", str(tmp_path / "net"), "--rows", "2", "--cols", "2", "--simd", "8",
                 "--max-bram", "1", "--out", str(tmp_path / "hw")])
    assert code == 2
    err = capsys.readouterr().err
    assert "bits of on-chip memory" in err and "more than the 1024 allowed" in err
    assert not (tmp_path / "hw").exists()


@pytest.mark.parametrize("rows,cols,simd,message", [
    (0, 2, 4, "rows must be a positive integer, not 0"),
    (2, -3, 4, "cols must be a positive integer, not -3"),
    (2, 2, 12, "simd must be a positive power of two, not 12"),
])
def test_generate_rejects_bad_parameters(net, tmp_path, rows, cols, simd, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        generate(net, rows, cols, simd, tmp_path)


def test_generated_folder_carries_its_network(net, tmp_path):
    generate(net, 2, 1, 16, tmp_path)
    back = ir.load(tmp_path)
    assert back.name == net.name and len(back.layers) == len(net.layers)
    for a, b in zip(net.layers, back.layers, strict=True):
        if a.kind != "maxpool":
            assert (a.weights == b.weights).all() and a.ops == b.ops

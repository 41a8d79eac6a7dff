"""``binforge run`` against a simulated board on a pseudo-terminal, and ``binforge build --plan-only``."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from amaranth.sim import Simulator
from binforge.boards.core import BoardCore
from binforge.boards.uart_model import receive_bytes, send_bytes
from binforge.compiler.ir import Shape, save
from binforge.compiler.random_network import random_network
from binforge.hw.generate import generate
from binforge.hw.plan import plan_network
from binforge.sim.golden import run_network

from binforge.cli import main

DIVISOR = 24  # a byte (240 cycles) outlasts the loader's 216 cycles per pixel (3x3 im2col)


def _simulated_board(master_fd: int, core: BoardCore, reply_bytes: int) -> None:
    """Read one request from the pty, play it on the simulated board's UART line, write back
    the bytes the board sends."""
    data = b""
    while len(data) < 3 or len(data) < 3 + int.from_bytes(data[1:3], "little"):
        data += os.read(master_fd, 4096)
    reply: list[bytes] = []

    async def host(ctx):
        ctx.set(core.rx, 1)
        await ctx.tick().repeat(3)
        await send_bytes(ctx, core.rx, data, DIVISOR)
        reply.append(await receive_bytes(ctx, core.tx, reply_bytes, DIVISOR, timeout=100_000))

    sim = Simulator(core)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.run()
    os.write(master_fd, reply[0])


@pytest.fixture(scope="module")
def hw_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hw")
    net = random_network(11, in_shape=Shape(1, 8, 8), channels=(4, 4), num_classes=10, act_planes=(1, 1))
    generate(net, 4, 4, 8, folder)
    save(net, folder)  # the network beside hw.json
    return folder, net


def test_run_classifies_an_npy_image_on_the_simulated_board(hw_folder, tmp_path, capsys):
    folder, net = hw_folder
    image = np.arange(64, dtype=np.uint8).reshape(1, 8, 8) * 4
    np.save(tmp_path / "image.npy", image)
    master, slave = os.openpty()
    core = BoardCore(plan_network(net, 4, 4, 8), DIVISOR)
    lb = (net.compute_layers[-1].acc_width + 7) // 8
    board = threading.Thread(target=_simulated_board, args=(master, core, 5 + 10 * lb + 4), daemon=True)
    board.start()
    try:
        status = main(["run", str(tmp_path / "image.npy"), "--port", os.ttyname(slave), "--hw", str(folder),
                       "--timeout", "120", "--out", str(tmp_path / "out")])
    finally:
        board.join(timeout=120)
        os.close(master)
        os.close(slave)
    golden = run_network(net, image[None])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert status == 0
    assert report["predicted"] == int(golden.predictions[0]) == report["golden_predicted"]
    assert report["logits"] == [int(v) for v in golden.logits[0]]
    assert report["agreement"] is True
    assert "the board agrees bit-exactly" in capsys.readouterr().out


def test_run_refuses_an_image_of_the_wrong_shape(hw_folder, tmp_path, capsys):
    folder, _ = hw_folder
    np.save(tmp_path / "wide.npy", np.zeros((1, 8, 9), dtype=np.uint8))
    status = main(["run", str(tmp_path / "wide.npy"), "--port", "/dev/null-none", "--hw", str(folder)])
    assert status == 2
    assert "has shape (1, 8, 9) but the network takes (1, 8, 8)" in capsys.readouterr().err


def test_run_names_a_port_it_cannot_open(tmp_path, capsys):
    np.save(tmp_path / "image.npy", np.zeros((1, 8, 8), dtype=np.uint8))
    status = main(["run", str(tmp_path / "image.npy"), "--port", str(tmp_path / "ttyNONE")])
    assert status == 2
    assert f"cannot open the serial port {tmp_path / 'ttyNONE'}" in capsys.readouterr().err


def test_build_plan_only_from_a_hw_folder(hw_folder, tmp_path, capsys):
    folder, net = hw_folder
    status = main(["build", str(folder), "--board", "ulx3s-85f", "--clock-mhz", "150", "--plan-only",
                   "--out", str(tmp_path / "build")])
    assert status == 0
    report = json.loads((tmp_path / "build" / "report.json").read_text())
    assert report["network"] == net.name and (report["rows"], report["cols"], report["simd"]) == (4, 4, 8)
    assert report["clock"]["target_mhz"] == 150
    assert "FREQUENCY PORT" in (tmp_path / "build" / "build" / "binforge.lpf").read_text()
    assert "estimate" in capsys.readouterr().out


def test_build_refuses_what_does_not_fit_before_any_tool_runs(hw_folder, tmp_path, capsys):
    folder, net = hw_folder
    # The same network on a 12 x 12 x 16 array, as hw.json would describe it.
    desc = json.loads((folder / "hw.json").read_text())
    desc.update(rows=12, cols=12, simd=16)
    big = tmp_path / "hw"
    big.mkdir()
    (big / "hw.json").write_text(json.dumps(desc))
    save(net, big)
    status = main(["build", str(big), "--board", "icebreaker", "--out", str(tmp_path / "build")])
    assert status == 2
    err = capsys.readouterr().err
    assert "binforge: error: the design does not fit the iCEBreaker: " in err
    assert "the 12x12x16 array (2304 lanes) needs about" in err
    assert "logic cells but the iCE40UP5K-SG48 has 5280" in err
    assert not (tmp_path / "build").exists() and not (tmp_path / "build.failed").exists()


def test_build_refuses_a_folder_without_hw_json(tmp_path, capsys):
    assert main(["build", str(tmp_path), "--board", "icebreaker", "--out", str(tmp_path / "b")]) == 2
    assert f"{tmp_path / 'hw.json'} does not exist" in capsys.readouterr().err


def test_a_clock_missed_by_a_little_suggests_another_placement_seed():
    from binforge.commands.build import timing_advice
    assert timing_advice(47.0, 48.0, 1) == (
        "Fmax 47.0 MHz, 2.1 % short: placement seeds move Fmax by about 5 %, so try another "
        "--seed than 1, or ask for a lower --clock-mhz")
    assert timing_advice(43.3, 48.0, 3).startswith("Fmax 43.3 MHz, 9.8 % short")  # within 2 x 5 %
    assert timing_advice(43.0, 48.0, 1) == "ask for a lower --clock-mhz"  # 10.4 % short
    assert timing_advice(None, 48.0, 1) == "ask for a lower --clock-mhz"

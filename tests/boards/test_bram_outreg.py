"""The netlist pass that moves block-RAM read registers into the DP16KDs (before nextpnr-ecp5)."""

import json

import pytest
from binforge.boards.bram_outreg import absorb_output_registers

from binforge.errors import BinforgeError

CLK = 8


def bram(read_pins, *, pdp=False, clock=CLK, rst="0", clock_mux=None):
    """A DP16KD whose data pins ``read_pins`` ({"DOB0": net, ...}) drive nets; the rest unconnected."""
    width = format(36 if pdp else 18, "032b")
    params = {"DATA_WIDTH_A": width, "DATA_WIDTH_B": width, "REGMODE_A": "NOREG", "REGMODE_B": "NOREG",
              "CLKAMUX": "CLKA", "CLKBMUX": clock_mux or "CLKB", "GSR": "DISABLED"}  # fmt: skip
    pins = {f"DO{p}{i}": [] for p in "AB" for i in range(18)}
    pins.update({pin: [net] for pin, net in read_pins.items()})
    directions = {pin: "output" for pin in pins}
    directions.update({p: "input" for p in ("CLKA", "CLKB", "CEA", "CEB", "OCEA", "OCEB", "RSTA", "RSTB")})
    conn = {"CLKA": [clock], "CLKB": [clock], "CEA": ["1"], "CEB": [5], "OCEA": ["0" if pdp else "1"],
            "OCEB": ["1"], "RSTA": ["0"], "RSTB": [rst] if isinstance(rst, int) else [rst], **pins}  # fmt: skip
    return {"type": "DP16KD", "parameters": params, "port_directions": directions, "connections": conn}


def ff(d, q, *, clock=CLK, ce=None, lsr=None, clkmux="CLK", gsr="DISABLED", regset="RESET"):
    conn = {"CLK": [clock], "DI": [d], "Q": [q], "LSR": [lsr] if lsr is not None else ["0"]}
    params = {"CLKMUX": clkmux, "CEMUX": "1 ", "LSRMUX": "LSR", "GSR": gsr, "REGSET": regset}
    if ce is not None:
        params["CEMUX"] = "CE"
        conn["CE"] = [ce]
    return {"type": "TRELLIS_FF", "parameters": params,
            "port_directions": {"CLK": "input", "DI": "input", "CE": "input", "LSR": "input", "Q": "output"},
            "connections": conn}  # fmt: skip


def lut(a, z):
    return {"type": "LUT4", "port_directions": {"A": "input", "Z": "output"}, "connections": {"A": [a], "Z": [z]}}


def run(tmp_path, cells, out_bits=(99,)):
    path = tmp_path / "netlist.json"
    module = {"attributes": {"top": "00000000000000000000000000000001"},
              "ports": {"out": {"direction": "output", "bits": list(out_bits)}}, "cells": cells}  # fmt: skip
    path.write_text(json.dumps({"creator": "test", "modules": {"top": module}}))
    counts = absorb_output_registers(path)
    return counts, json.loads(path.read_text())["modules"]["top"]["cells"]


def test_a_read_port_into_plain_registers_gets_its_output_register(tmp_path):
    cells = {"ram": bram({"DOB0": 20, "DOB1": 21, "DOB5": 22}),
             "r0": ff(20, 30), "r1": ff(21, 31), "r5": ff(22, 32), "use": lut(30, 40)}  # fmt: skip
    counts, out = run(tmp_path, cells)
    assert counts == {"bram_read_ports_registered": 1, "flip_flops_absorbed": 3, "bram_read_ports_left": 0}
    ram = out["ram"]
    assert {k: ram["connections"][k] for k in ("DOB0", "DOB1", "DOB5")} == {"DOB0": [30], "DOB1": [31], "DOB5": [32]}
    assert ram["parameters"]["REGMODE_B"] == "OUTREG" and ram["connections"]["OCEB"] == ["1"]
    assert ram["parameters"]["REGMODE_A"] == "NOREG"  # port A reads nothing
    assert set(out) == {"ram", "use"}  # the flip-flops are gone, what read them stays


def test_pseudo_dual_port_registers_both_halves_or_neither(tmp_path):
    cells = {"ram": bram({"DOA0": 20, "DOB17": 21}, pdp=True), "lo": ff(20, 30), "hi": ff(21, 31)}
    counts, out = run(tmp_path, cells)
    assert counts == {"bram_read_ports_registered": 1, "flip_flops_absorbed": 2, "bram_read_ports_left": 0}
    ram = out["ram"]
    assert ram["parameters"]["REGMODE_A"] == ram["parameters"]["REGMODE_B"] == "OUTREG"
    assert ram["connections"]["OCEA"] == ram["connections"]["OCEB"] == ["1"]
    assert ram["connections"]["DOA0"] == [30] and ram["connections"]["DOB17"] == [31]
    # one half read by logic: the whole 36-bit port keeps its flip-flops
    cells = {"ram": bram({"DOA0": 20, "DOB17": 21}, pdp=True), "lo": lut(20, 30), "hi": ff(21, 31)}
    counts, out = run(tmp_path, cells)
    assert counts == {"bram_read_ports_registered": 0, "flip_flops_absorbed": 0, "bram_read_ports_left": 1}
    assert out["ram"]["parameters"]["REGMODE_B"] == "NOREG" and "hi" in out


CASES = {
    "clock enable": lambda: {"r": ff(20, 30, ce=7)},
    "reset": lambda: {"r": ff(20, 30, lsr=9)},
    "other clock": lambda: {"r": ff(20, 30, clock=4)},
    "inverted clock": lambda: {"r": ff(20, 30, clkmux="INV")},
    "global set/reset": lambda: {"r": ff(20, 30, gsr="ENABLED")},
    "set, not reset": lambda: {"r": ff(20, 30, regset="SET")},
    "also read by logic": lambda: {"r": ff(20, 30), "l": lut(20, 31)},
    "read by logic only": lambda: {"l": lut(20, 31)},
    "a top-level output": lambda: {"r": ff(20, 30)},
}


@pytest.mark.parametrize("case", [*CASES, "block-RAM reset", "block-RAM clock inverted"])
def test_leaves_a_port_whose_registers_are_not_plain(tmp_path, case):
    ram = bram({"DOB0": 20, "DOB1": 21}, rst=6 if case == "block-RAM reset" else "0",
               clock_mux="INV" if case == "block-RAM clock inverted" else None)  # fmt: skip
    cells = {"ram": ram, "r1": ff(21, 31), **CASES.get(case, lambda: {"r": ff(20, 30)})()}
    counts, out = run(tmp_path, cells, out_bits=(20,) if case == "a top-level output" else (99,))
    assert counts == {"bram_read_ports_registered": 0, "flip_flops_absorbed": 0, "bram_read_ports_left": 1}
    assert out["ram"]["parameters"]["REGMODE_B"] == "NOREG"
    assert out["ram"]["connections"]["DOB0"] == [20] and "r1" in out


def test_not_a_netlist_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(BinforgeError, match="is not a Yosys JSON netlist"):
        absorb_output_registers(bad)
    assert bad.read_text() == "[]"

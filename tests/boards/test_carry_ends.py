"""The netlist pass that opens carry-chain ends nothing depends on (before nextpnr-ecp5)."""

import json

import pytest
from binforge.boards.carry_ends import lut4_is_zero, open_carry_ends
from binforge.boards.toolchain import BRAM_OUTREG_STEP, CARRY_ENDS_STEP, _after_synthesis
from binforge.hw.pe import _ADD, _FEED

from binforge.errors import BinforgeError

YOSYS_ADD = 0b1001011010101010  # Yosys's CCU2C adder position: its sum uses CIN


def ccu2c(init0, a0, d0, cin, s0, cout, *, inject="NO"):
    return {"type": "CCU2C",
            "parameters": {"INIT0": format(init0, "016b"), "INIT1": format(_ADD, "016b"), "INJECT1_0": inject},
            "port_directions": {"CIN": "input", "A0": "input", "B0": "input", "C0": "input", "D0": "input",
                                "A1": "input", "S0": "output", "S1": "output", "COUT": "output"},
            "connections": {"CIN": cin, "A0": a0, "B0": ["0"], "C0": ["0"], "D0": d0, "A1": [50],
                            "S0": s0, "S1": [60], "COUT": cout}}


def reader(bit):
    return {"type": "TRELLIS_FF", "port_directions": {"DI": "input", "Q": "output"},
            "connections": {"DI": [bit], "Q": [bit + 1000]}}


def netlist(cells):
    return {"creator": "test", "modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                                                   "ports": {"out": {"direction": "output", "bits": [99]}},
                                                   "cells": cells}}}


def run(tmp_path, cells):
    path = tmp_path / "netlist.json"
    path.write_text(json.dumps(netlist(cells)))
    counts = open_carry_ends(path)
    return counts, json.loads(path.read_text())["modules"]["top"]["cells"]


def test_lut4_is_zero_honours_constant_pins():
    assert lut4_is_zero(_FEED, ["0", "0", "0", "1"])  # a chain's first position: nothing fed
    assert lut4_is_zero(_FEED, [None, None, "0", "1"])  # ... or the cin lane on A and B
    assert not lut4_is_zero(_FEED, [None, None, "0", None])  # D free: the lower half counts
    assert not lut4_is_zero(YOSYS_ADD, [None, None, "0", "1"])  # an adder: its operands on A and B
    assert lut4_is_zero(YOSYS_ADD, ["0", "0", "0", "1"])  # ... unless both are constant 0


def test_opens_the_ends_of_a_chain_that_feeds_nothing_in(tmp_path):
    cells = {"first": ccu2c(_FEED, [10], ["1"], ["0"], [11], [12]),  # sum unread, carry to "next"
             "next": ccu2c(_ADD, [13], ["0"], [12], [14], [15]),  # the chain's end: COUT unread
             "ff": reader(14)}
    counts, out = run(tmp_path, cells)
    assert counts == {"carry_in_opened": 1, "carry_out_opened": 1}
    assert out["first"]["connections"]["CIN"] == ["x"] and out["first"]["connections"]["COUT"] == [12]
    assert out["next"]["connections"]["CIN"] == [12] and out["next"]["connections"]["COUT"] == ["x"]


@pytest.mark.parametrize("case", ["yosys adder", "sum read", "inject", "carry in from a net"])
def test_keeps_a_carry_in_that_something_depends_on(tmp_path, case):
    init, s0, cin, inject = _FEED, [11], ["0"], "NO"
    extra = {}
    if case == "yosys adder":
        init = YOSYS_ADD
    elif case == "sum read":
        extra = {"ff": reader(11)}
    elif case == "inject":
        inject = "YES"
    else:
        cin = [7]
    cells = {"c": ccu2c(init, [10], ["1"], cin, s0, [12], inject=inject), "cout": reader(12), **extra}
    counts, out = run(tmp_path, cells)
    assert counts == {"carry_in_opened": 0, "carry_out_opened": 0}
    assert out["c"]["connections"]["CIN"] == cin


def test_a_carry_out_read_by_the_top_or_a_cell_without_directions_stays(tmp_path):
    unknown = {"type": "MYSTERY", "connections": {"X": [21]}}
    cells = {"a": ccu2c(_ADD, [10], ["0"], [5], [11], [99]), "b": ccu2c(_ADD, [10], ["0"], [6], [12], [21]),
             "m": unknown}
    counts, out = run(tmp_path, cells)
    assert counts["carry_out_opened"] == 0
    assert out["a"]["connections"]["COUT"] == [99] and out["b"]["connections"]["COUT"] == [21]


def test_not_a_netlist_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BinforgeError, match="is not a Yosys JSON netlist"):
        open_carry_ends(bad)
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"modules": {"a": {"attributes": {"top": "1"}}, "b": {"attributes": {"top": "1"}}}}))
    with pytest.raises(BinforgeError, match="has 2 top modules, not one"):
        open_carry_ends(two)


def test_the_build_runs_the_passes_before_nextpnr_ecp5_only(tmp_path):
    (tmp_path / "top.json").write_text(json.dumps(netlist({"c": ccu2c(_FEED, [10], ["1"], ["0"], [11], [12])})))
    ecp5 = [["yosys", "-q", "top.ys"], ["nextpnr-ecp5", "--json", "top.json", "--85k"], ["ecppack", "x"]]
    step, bram_step = _after_synthesis(ecp5, tmp_path)
    assert step.name == CARRY_ENDS_STEP and step.log == "carry_ends.log"
    assert bram_step.name == BRAM_OUTREG_STEP and bram_step.log == "bram_outreg.log"
    assert bram_step.counts == {"bram_read_ports_registered": 0, "flip_flops_absorbed": 0, "bram_read_ports_left": 0}
    assert (tmp_path / "carry_ends.log").read_text() == "carry_in_opened 1\ncarry_out_opened 1\n"
    ice40 = [["yosys", "-q", "top.ys"], ["nextpnr-ice40", "--json", "top.json"], ["icepack", "x"]]
    assert _after_synthesis(ice40, tmp_path) == []

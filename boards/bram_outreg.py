"""A netlist pass between Yosys and nextpnr-ecp5: block-RAM read registers into the DP16KD.

Yosys maps memories to DP16KD block RAMs without their output register (``REGMODE
NOREG``): a read's data leaves the block RAM 5.6-5.8 ns after the clock edge (nextpnr's
timing model, speed grade 6), so every block-RAM read that ends in a flip-flop bounds
the clock near 145 MHz before any routing, and on the conv accelerators the routed path
from a block RAM to its read register was the critical path (docs/RESULTS.md "ECP5
clock of the conv network"). The gateware registers most block-RAM reads right away
(the image memory's banks, the buffers' column read registers, the weight and threshold
ROMs' data registers): a flip-flop whose data input is a DP16KD output and nothing else.

:func:`absorb_output_registers` rewrites Yosys's JSON netlist so that such flip-flops
become the block RAM's own output register (``REGMODE OUTREG``): the DP16KD's output
pins then drive the flip-flops' output nets and the flip-flops are removed. It is the
same circuit: without the output register the data pins change after the clock edge
that reads (the edge with CE high) and hold otherwise; a flip-flop enabled on every
edge takes them at the next edge. With the output register, the block RAM's latch is
loaded on the reading edge and the register takes the latch on the next edge where
OCE is high, which the pass ties high. Only flip-flops that take their data on every
edge (no clock enable), have no set or reset (a constant 0 on LSR), no global set/reset
(``GSR DISABLED``) and the block RAM's clock, not inverted, qualify; a read port
qualifies only when every data pin something reads goes to one such flip-flop and
nothing else, and its RST is a constant 0. In the 36-bit pseudo-dual-port mode
(``DATA_WIDTH_A = 36``) the read data leave on both ports' pins, clocked by CLKB:
both ports' pins must qualify, and both ports get the output register, as nextpnr
does when it converts a PDPW16KD (``REGMODE`` to both ports).

Power-up: a flip-flop of the netlist starts at 0 (``REGSET RESET``, no GSR), the
output register too (it is cleared by RST, tied to 0 here, and at configuration).
"""

from __future__ import annotations

import os
from pathlib import Path

from .netlist import constant as _constant
from .netlist import load_top, readers, write_netlist

__all__ = ["absorb_output_registers"]

_DATA_PINS = 18


def _number(value) -> int | None:
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text and set(text) <= {"0", "1"}:
        return int(text, 2)
    try:
        return int(text)
    except ValueError:
        return None


def _param(cell: dict, name: str, default: str = "") -> str:
    return str(cell.get("parameters", {}).get(name, default)).strip()


def _plain_register(ff: dict, clock: list) -> bool:
    """A TRELLIS_FF that takes its data on every rising edge of ``clock``, with no set,
    reset or global set/reset."""
    conn = ff.get("connections", {})
    if _param(ff, "CLKMUX", "CLK") != "CLK" or conn.get("CLK") != clock:
        return False
    ce_mux = _param(ff, "CEMUX", "1")
    if not (ce_mux == "1" or (ce_mux == "CE" and _constant(conn.get("CE")) == "1")):
        return False
    lsr = conn.get("LSR")
    if lsr is not None and not (_constant(lsr) == "0" and _param(ff, "LSRMUX", "LSR") == "LSR"):
        return False
    return _param(ff, "GSR", "DISABLED") == "DISABLED" and _param(ff, "REGSET", "RESET") == "RESET"


def absorb_output_registers(path: str | os.PathLike) -> dict[str, int]:
    """Rewrite the Yosys JSON netlist at ``path`` in place (see the module's docstring).

    Returns ``{"bram_read_ports_registered", "flip_flops_absorbed", "bram_read_ports_left"}``:
    read ports given their output register, the flip-flops that became those registers,
    and read ports (with data something reads) left without one.
    Raises :class:`BinforgeError` for a file that is not a Yosys netlist with one top.
    """
    path = Path(path)
    netlist, top = load_top(path)
    cells = top.get("cells", {})
    read_by = readers(top)

    registered = absorbed = left = 0
    removed: set[str] = set()
    for cell in list(cells.values()):
        if cell.get("type") != "DP16KD":
            continue
        conn = cell.setdefault("connections", {})
        pdp = _number(cell.get("parameters", {}).get("DATA_WIDTH_A", 18)) == 36
        groups = [("A", "B")] if pdp else [("A",), ("B",)]
        for group in groups:
            clock_port = "B" if pdp else group[0]
            clock = conn.get(f"CLK{clock_port}")
            pins = [f"DO{p}{i}" for p in group for i in range(_DATA_PINS) if f"DO{p}{i}" in conn]
            read = [(pin, conn[pin][0]) for pin in pins
                    if conn[pin] and isinstance(conn[pin][0], int) and read_by.get(conn[pin][0])]  # fmt: skip
            if not read:
                continue
            pairs = []
            for pin, bit in read:
                users = read_by[bit]
                if len(users) != 1 or users[0][1] != "DI" or users[0][0] is None:
                    break
                ff = cells[users[0][0]]
                if ff.get("type") != "TRELLIS_FF" or users[0][0] in removed or not _plain_register(ff, clock):
                    break
                pairs.append((pin, users[0][0]))
            ok = (
                len(pairs) == len(read)
                and isinstance(clock, list) and len(clock) == 1 and isinstance(clock[0], int)
                and _param(cell, f"CLK{clock_port}MUX", f"CLK{clock_port}") == f"CLK{clock_port}"
                and all(_param(cell, f"REGMODE_{p}", "NOREG") == "NOREG" for p in group)
                and all(_constant(conn.get(f"RST{p}", ["0"])) == "0" for p in group)
            )  # fmt: skip
            if not ok:
                left += 1
                continue
            for pin, ff_name in pairs:
                conn[pin] = list(cells[ff_name]["connections"]["Q"])
                removed.add(ff_name)
            for p in group:
                cell.setdefault("parameters", {})[f"REGMODE_{p}"] = "OUTREG"
                conn[f"OCE{p}"] = ["1"]
            registered += 1
            absorbed += len(pairs)
    for name in removed:
        del cells[name]
    write_netlist(path, netlist)
    return {"bram_read_ports_registered": registered, "flip_flops_absorbed": absorbed,
            "bram_read_ports_left": left}  # fmt: skip

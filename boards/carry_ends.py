"""A netlist pass between Yosys and nextpnr-ecp5: open the carry ends nothing depends on.

nextpnr-ecp5 gives every CCU2C carry chain whose first CIN is connected (a constant
included) a CCU2C of its own that feeds the carry in from the fabric, and every chain
whose last COUT is connected (even to a net nothing reads, which is how Yosys leaves an
unused output) one that feeds it out: two LUT4s a chain. The PEs' popcount trees are
many short chains (:class:`binforge.hw.pe._CarryChains`) whose first position feeds
nothing in: its LUT4 is 0 whatever its inputs, so its carry out is its LUT2's and does
not depend on CIN, and its sum is unused. On the 64 x 2 x 64 accelerator these feeds
were 6 724 of 35 739 LUT4s (docs/RESULTS.md).

:func:`open_carry_ends` rewrites Yosys's JSON netlist: a CCU2C's CIN becomes
unconnected where it is a constant, the first half's LUT4 is 0 for every input its
constant pins allow and nothing reads its first sum (then nothing depends on CIN); its
COUT becomes unconnected where nothing reads it. Everything else is left as it is (a
Yosys adder's constant carry in is used by its first sum, so it keeps its feed).
"""

from __future__ import annotations

import os
from pathlib import Path

from .netlist import constant as _constant
from .netlist import load_top, readers, write_netlist

__all__ = ["open_carry_ends", "lut4_is_zero"]


def lut4_is_zero(init: int, pins: list) -> bool:
    """Whether a LUT4 with truth table ``init`` (input index ``D*8 + C*4 + B*2 + A``) is 0
    for every input its pins allow: ``pins`` are A, B, C, D, each ``"0"``/``"1"`` (a
    constant) or anything else (free)."""
    for index in range(16):
        allowed = all(pin not in ("0", "1") or int(pin) == (index >> i) & 1 for i, pin in enumerate(pins))
        if allowed and (init >> index) & 1:
            return False
    return True


def _init(value) -> int | None:
    """A parameter as Yosys writes it (a string of binary digits, or a number)."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text and set(text) <= {"0", "1"}:
        return int(text, 2)
    return None


def open_carry_ends(path: str | os.PathLike) -> dict[str, int]:
    """Rewrite the Yosys JSON netlist at ``path`` in place (see the module's docstring).

    Returns ``{"carry_in_opened", "carry_out_opened"}``: how many CINs and COUTs it
    disconnected.
    Raises :class:`BinforgeError` for a file that is not a Yosys netlist with one top.
    """
    path = Path(path)
    netlist, top = load_top(path)
    read_by = readers(top)

    def unread(bit) -> bool:
        return not isinstance(bit, int) or not read_by.get(bit)

    opened_in = opened_out = 0
    for cell in top.get("cells", {}).values():
        if cell.get("type") != "CCU2C":
            continue
        conn = cell.get("connections", {})
        cin = conn.get("CIN")
        if cin is not None and _constant(cin) in ("0", "1"):
            init = _init(cell.get("parameters", {}).get("INIT0"))
            pins = [_constant(conn.get(p, ["x"])) for p in ("A0", "B0", "C0", "D0")]
            s0 = conn.get("S0", [])
            s0_unread = all(unread(b) for b in s0)
            inject = str(cell.get("parameters", {}).get("INJECT1_0", "NO"))
            if init is not None and inject == "NO" and lut4_is_zero(init, pins) and s0_unread:
                conn["CIN"] = ["x"]
                opened_in += 1
        cout = conn.get("COUT")
        if cout and all(isinstance(b, int) and unread(b) for b in cout):
            conn["COUT"] = ["x"]
            opened_out += 1
    write_netlist(path, netlist)
    return {"carry_in_opened": opened_in, "carry_out_opened": opened_out}

"""Reading and writing Yosys JSON netlists for the passes between Yosys and nextpnr
(:mod:`binforge.boards.carry_ends`, :mod:`binforge.boards.bram_outreg`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from binforge.errors import BinforgeError

__all__ = ["load_top", "readers", "write_netlist", "constant"]


def load_top(path: Path) -> tuple[dict, dict]:
    """The netlist at ``path`` and its one top module.

    Raises :class:`BinforgeError` for a file that is not a Yosys netlist with one top."""
    try:
        netlist = json.loads(path.read_text())
        tops = [m for m in netlist["modules"].values() if str(m.get("attributes", {}).get("top", "0")).strip("0")]
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise BinforgeError(f"{path} is not a Yosys JSON netlist ({exc})") from None
    if len(tops) != 1:
        raise BinforgeError(f"{path} has {len(tops)} top modules, not one")
    return netlist, tops[0]


def readers(top: dict) -> dict[int, list[tuple[str | None, str]]]:
    """Every net bit's readers: (cell, port) for cell inputs (ports of unknown direction
    count as inputs), (None, "port") for the top's outputs."""
    found: dict[int, list[tuple[str | None, str]]] = {}
    for name, cell in top.get("cells", {}).items():
        directions = cell.get("port_directions", {})
        for port, bits in cell.get("connections", {}).items():
            if directions.get(port, "input") != "output":
                for bit in bits:
                    if isinstance(bit, int):
                        found.setdefault(bit, []).append((name, port))
    for port in top.get("ports", {}).values():
        if port.get("direction") != "input":
            for bit in port.get("bits", []):
                if isinstance(bit, int):
                    found.setdefault(bit, []).append((None, "port"))
    return found


def constant(bits) -> str | None:
    """``"0"``/``"1"``/``"x"`` for a one-bit constant connection, else None."""
    return bits[0] if isinstance(bits, list) and len(bits) == 1 and isinstance(bits[0], str) else None


def write_netlist(path: Path, netlist: dict) -> None:
    """Replace the file at ``path`` at once (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(netlist))
    os.replace(tmp, path)

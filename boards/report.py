"""Reading a finished build: utilisation, reached Fmax per clock and the critical path.

nextpnr writes a json report (``--report``) with the cells used and available per
cell type, the frequency each clock reached and its critical paths. Yosys's log
gives the flip-flop count on iCE40, whose logic cells pair a LUT with a flip-flop.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from binforge.errors import BinforgeError

__all__ = ["Usage", "CriticalPath", "BuildFigures", "read_nextpnr_report", "count_yosys_cells"]

#: nextpnr cell type of each resource, per family.
_CELL_TYPES = {
    "ice40": {"logic_cells": "ICESTORM_LC", "bram": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM",
              "dsp": "ICESTORM_DSP"},
    "ecp5": {"logic_cells": "TRELLIS_COMB", "flip_flops": "TRELLIS_FF", "bram": "DP16KD",
             "dsp": "MULT18X18D"},
}


@dataclass(frozen=True)
class Usage:
    """One resource: how many are used of how many there are."""

    used: int
    available: int
    cell: str

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.available if self.available else 0.0


@dataclass(frozen=True)
class CriticalPath:
    """The slowest register-to-register path of a clock, as nextpnr timed it."""

    clock: str
    start: str
    end: str
    delay_ns: float
    logic_ns: float
    routing_ns: float
    steps: int
    nets: tuple[str, ...]


@dataclass(frozen=True)
class BuildFigures:
    """What a build reached."""

    utilisation: dict[str, Usage]
    fmax_mhz: dict[str, float]
    target_mhz: dict[str, float]
    critical_paths: tuple[CriticalPath, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "utilisation": {name: {**asdict(u), "percent": round(u.percent, 1)}
                            for name, u in self.utilisation.items()},
            "fmax_mhz": {k: round(v, 2) for k, v in self.fmax_mhz.items()},
            "target_mhz": self.target_mhz,
            "critical_paths": [asdict(p) for p in self.critical_paths],
        }


def _clock_name(name: str) -> str:
    # nextpnr-ecp5 names a clock after its global net: "$glbnet$cd_sync.clk".
    return name.removeprefix("$glbnet$")


def read_nextpnr_report(path: str | Path, family: str, *, flip_flops: int | None = None) -> BuildFigures:
    """Read nextpnr's json report for a build of ``family`` (``"ice40"`` or ``"ecp5"``).

    ``flip_flops`` (from :func:`count_yosys_cells`) fills in the flip-flop count where
    nextpnr does not count flip-flops apart from logic cells (iCE40).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        cells = doc["utilization"]
        fmax = doc["fmax"]
    except (OSError, ValueError, KeyError) as exc:
        raise BinforgeError(f"cannot read the nextpnr report {path} ({exc}); rerun the build") from None
    utilisation: dict[str, Usage] = {}
    for resource, cell in _CELL_TYPES[family].items():
        if cell in cells:
            utilisation[resource] = Usage(int(cells[cell]["used"]), int(cells[cell]["available"]), cell)
    if "flip_flops" not in utilisation and flip_flops is not None:
        lc = utilisation["logic_cells"]
        utilisation["flip_flops"] = Usage(flip_flops, lc.available, "SB_DFF*")
    paths = []
    for entry in doc.get("critical_paths", []):
        steps = entry.get("path", [])
        if not steps:
            continue
        logic = sum(s["delay"] for s in steps if s.get("type") != "routing")
        routing = sum(s["delay"] for s in steps if s.get("type") == "routing")
        nets = tuple(dict.fromkeys(s["net"] for s in steps if s.get("type") == "routing" and s.get("net")))[:12]
        paths.append(CriticalPath(
            clock=_clock_name(entry.get("from", "").split(" ", 1)[-1]),
            start=steps[0]["from"]["cell"], end=steps[-1]["to"]["cell"],
            delay_ns=round(logic + routing, 3), logic_ns=round(logic, 3), routing_ns=round(routing, 3),
            steps=len(steps), nets=nets))
    return BuildFigures(
        utilisation=utilisation,
        fmax_mhz={_clock_name(k): float(v["achieved"]) for k, v in fmax.items()},
        target_mhz={_clock_name(k): float(v["constraint"]) for k, v in fmax.items()},
        critical_paths=tuple(paths),
    )


_STAT_LINE = re.compile(r"^\s+(\d+)\s+(\S+)\s*$")


def count_yosys_cells(log_path: str | Path, prefix: str) -> int | None:
    """Cells whose type starts with ``prefix`` in the last statistics of a Yosys log.

    Reads the whole-design table (``=== design hierarchy ===``) when there is one.
    Returns ``None`` when the log has no statistics.
    """
    text = Path(log_path).read_text(errors="replace")
    start = text.rfind("Printing statistics")
    if start < 0:
        return None
    table = text[start:]
    hierarchy = table.rfind("=== design hierarchy ===")
    if hierarchy >= 0:
        table = table[hierarchy:]
    end = table.find("CHECK pass")
    if end >= 0:
        table = table[:end]
    return sum(int(m.group(1)) for line in table.splitlines()
               if (m := _STAT_LINE.match(line)) and m.group(2).startswith(prefix))

"""What every binforge testbench shares: clock and reset, the stimulus file, the scoreboard.

The stimulus is an ``.npz`` file (no pickle) written by the caller, with a json
string ``meta`` beside the arrays; its path is in ``BINFORGE_TB_STIMULUS``. The
testbench writes a json report to ``BINFORGE_TB_REPORT``: cases checked, mismatches
(each naming where it happened, what was expected and what came out), cycle counts
and simulation speed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import cocotb
import numpy as np
from binforge.compiler.ir import pack_bits
from binforge.sim.cocotb_runner import REPORT_ENV, STIMULUS_ENV
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotb.utils import get_sim_time

__all__ = ["CLOCK_NS", "Stimulus", "load_stimulus", "start_clock", "wake_combinational", "reset", "cycles_now", "bits_to_int",
           "signed_fields", "Scoreboard"]

#: Clock period of every testbench (the timescale is 1 ns / 1 ps).
CLOCK_NS = 10
#: Mismatches kept in full in a report; the rest are only counted.
KEEP_MISMATCHES = 50


class Stimulus:
    """The arrays and the ``meta`` dict of a stimulus file."""

    def __init__(self, path: str | os.PathLike) -> None:
        with np.load(path, allow_pickle=False) as npz:
            self.arrays = {k: npz[k] for k in npz.files if k != "meta"}
            self.meta: dict[str, Any] = json.loads(str(npz["meta"])) if "meta" in npz.files else {}

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def rng(self, salt: int = 0) -> np.random.Generator:
        """A generator seeded from the stimulus's ``seed`` (and ``salt``)."""
        return np.random.default_rng([int(self.meta.get("seed", 0)), salt])


def load_stimulus() -> Stimulus:
    """Read the stimulus file named by ``BINFORGE_TB_STIMULUS``."""
    return Stimulus(os.environ[STIMULUS_ENV])


def start_clock(dut) -> None:
    """Start the ``clk`` clock (``CLOCK_NS`` period)."""
    Clock(dut.clk, CLOCK_NS, unit="ns").start()


#: Yosys's Verilog backend gives every module a register named like this, read in every
#: ``always @*`` block, so that an event on it evaluates them all.
_WAKE_MARK = "dump_module"


def _wake_registers(handle, found: list, depth: int = 0) -> None:
    for child in handle:
        name = getattr(child, "_name", "")
        if _WAKE_MARK in name:
            found.append(child)
        elif depth < 32 and type(child).__name__ == "HierarchyObject":
            _wake_registers(child, found, depth + 1)


def wake_combinational(dut) -> int:
    """Evaluate every ``always @*`` block of an Amaranth (Yosys) design once, on Icarus.

    Yosys initialises a per-module register to 0 so that its ``always @*`` blocks run at
    time zero, but Icarus applies declaration initialisers without an event; a block
    whose inputs never change (a decoder of a register that stays at its reset value)
    then holds X forever. Writing 1 to those registers is the event Yosys meant. Returns
    how many were written (0 on other simulators, which evaluate everything at start).
    """
    if "icarus" not in cocotb.SIM_NAME.lower():
        return 0
    found: list = []
    _wake_registers(dut, found)
    for handle in found:
        handle.value = 1
    return len(found)


async def reset(dut, cycles: int = 2) -> None:
    """Hold ``rst`` high for ``cycles`` rising edges and release it just after an edge."""
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


def cycles_now() -> int:
    """Clock cycles since time zero (from the simulation time, no per-cycle Python)."""
    return int(get_sim_time(unit="ns")) // CLOCK_NS


def bits_to_int(bits: np.ndarray) -> int:
    """A 0/1 vector as a Python int, element ``i`` at bit ``i`` (the IR's order), any width."""
    flat = np.asarray(bits, dtype=np.uint8).reshape(-1)
    if flat.size == 0:
        return 0
    words = pack_bits(flat)
    return sum(int(w) << (64 * i) for i, w in enumerate(words))


def signed_fields(value: int, width: int, count: int) -> np.ndarray:
    """Split an unsigned int into ``count`` two's-complement fields of ``width`` bits, field 0 lowest."""
    mask, sign = (1 << width) - 1, 1 << (width - 1)
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        f = (value >> (i * width)) & mask
        out[i] = f - (1 << width) if f & sign else f
    return out


class Scoreboard:
    """Counts checked cases, records mismatches, writes the report.

    Parameters
    ----------
    name:
        What is being checked (goes into the report).

    Members
    -------
    cases: int
        Cases compared so far.
    mismatches: list[dict]
        The first ``KEEP_MISMATCHES`` mismatches; ``mismatch_count`` counts all.
    figures: dict
        Extra figures for the report (cycles, per-layer counts, ...).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.cases = 0
        self.mismatch_count = 0
        self.mismatches: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._cycle0 = cycles_now()

    def check(self, expected: int, got: int, **where: Any) -> bool:
        """Compare one value; on a mismatch record ``where`` (layer, channel, position, ...)."""
        self.cases += 1
        if int(expected) == int(got):
            return True
        self.mismatch(expected=int(expected), got=int(got), **where)
        return False

    def compare(self, expected: np.ndarray, got: np.ndarray, index_names: tuple[str, ...],
                **where: Any) -> int:
        """Compare arrays elementwise as one case each; mismatches name their index. Returns mismatches."""
        expected, got = np.asarray(expected), np.asarray(got)
        self.cases += int(expected.size)
        if expected.shape != got.shape:
            self.mismatch(expected=f"shape {expected.shape}", got=f"shape {got.shape}", **where)
            return 1
        bad = np.argwhere(expected != got)
        for idx in bad[:KEEP_MISMATCHES]:
            pos = dict(zip(index_names, (int(i) for i in idx), strict=False))
            self.mismatch(expected=int(expected[tuple(idx)]), got=int(got[tuple(idx)]), **where, **pos)
        self.mismatch_count += max(0, len(bad) - KEEP_MISMATCHES)
        return int(len(bad))

    def mismatch(self, **details: Any) -> None:
        self.mismatch_count += 1
        if len(self.mismatches) < KEEP_MISMATCHES:
            self.mismatches.append(details)

    def describe(self, limit: int = 5) -> str:
        lines = [f"{self.name}: {self.mismatch_count} mismatches in {self.cases} cases"]
        lines += ["  " + ", ".join(f"{k}={v}" for k, v in m.items()) for m in self.mismatches[:limit]]
        return "\n".join(lines)

    def write(self) -> dict[str, Any]:
        """Write the report to ``BINFORGE_TB_REPORT`` (if set) and return it."""
        seconds = time.perf_counter() - self._t0
        cycles = cycles_now() - self._cycle0
        report = {
            "name": self.name,
            "cases": self.cases,
            "mismatch_count": self.mismatch_count,
            "mismatches": self.mismatches,
            "sim_cycles": cycles,
            "sim_seconds": round(seconds, 3),
            "cycles_per_second": round(cycles / seconds, 1) if seconds > 0 else None,
            **self.figures,
        }
        path = os.environ.get(REPORT_ENV)
        if path:
            Path(path).write_text(json.dumps(report, indent=1, default=_plain) + "\n")
        return report

    def finish(self) -> dict[str, Any]:
        """Write the report, then fail the cocotb test if anything mismatched."""
        report = self.write()
        assert self.mismatch_count == 0, self.describe()
        return report


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to json")

"""Testbench of the window generator (:class:`binforge.hw.window.WindowGenerator`): a monitor.

For each layer in ``meta["layers"]`` (descriptor as a hex string, index) it loads the
descriptor (``init`` with a ``start`` pulse, then ``desc``), and records every beat the
generator issues until ``finished``: the cycle, each column's address and pad flag, the
pad word, the weight address, ``first``, ``last`` and the gain code. The records go into
the report (``layers``); the caller checks them against the golden model's windows.
The testbench itself checks that every layer finishes within ``meta["max_cycles"]``.
"""

from __future__ import annotations

import cocotb
from binforge.sim.tb.harness import (
    Scoreboard,
    load_stimulus,
    reset,
    start_clock,
    wake_combinational,
)
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["record_beats"]


@cocotb.test()
async def record_beats(dut):
    """Record every beat of every layer; fail only if a layer never finishes."""
    board = Scoreboard("window")
    stim = load_stimulus()
    meta = stim.meta
    start_clock(dut)
    wake_combinational(dut)
    dut.start.value = 0
    dut.init.value = 0
    dut.desc.value = 0
    await reset(dut)
    records = []
    for entry in meta["layers"]:
        value = int(entry["descriptor"], 16)
        dut.init.value = value
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        dut.desc.value = value
        beats = {k: [] for k in ("cycle", "addr", "pad", "pad_word", "weight_addr", "first", "last", "gain")}
        cycle, started = 0, False
        while True:
            await ReadOnly()
            if dut.beat.value:
                beats["cycle"].append(cycle)
                beats["addr"].append(hex(dut.addr.value.to_unsigned()))
                for name in ("pad", "pad_word", "weight_addr", "first", "last", "gain"):
                    beats[name].append(int(getattr(dut, name).value))
            finished = bool(dut.finished.value)
            started = started or not finished
            finished = finished and started
            await RisingEdge(dut.clk)
            cycle += 1
            if finished:
                break
            if cycle > int(meta["max_cycles"]):
                board.mismatch(layer=entry["index"], what="finished", expected=f"within {meta['max_cycles']} cycles",
                               got="still running")
                break
        records.append({"index": entry["index"], **beats})
    board.figures["layers"] = records
    board.finish()

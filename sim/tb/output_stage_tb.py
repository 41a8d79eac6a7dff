"""Testbench of the output stage (:class:`binforge.hw.output_stage.OutputStage`).

For each layer in ``meta["layers"]`` (descriptor hex, index, groups as hex strings of the
array's packed results, drain cycles per group) it pulses ``layer_start``, then presents
each group's results with a ``group_done`` pulse, holding them for the group's drain
plus a random number of idle cycles, and records every activation write (address, data,
lane enables) and every logit write until ``drained``, and then ``class_index``. The
caller checks the writes against the golden model's layer outputs.
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
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

__all__ = ["drain_groups"]


async def _monitor(dut, record: dict, stop: list) -> None:
    while not stop:
        await ReadOnly()
        if dut.act_we.value:
            record["act"].append([int(dut.act_addr.value), int(dut.act_data.value), int(dut.act_en.value)])
        if dut.logit_we.value:
            record["logit"].append([int(dut.logit_addr.value), dut.logit_data.value.to_signed()])
        if dut.drained.value:
            record["drained"] += 1
        await RisingEdge(dut.clk)


@cocotb.test()
async def drain_groups(dut):
    """Record the writes of every layer; fail if a layer never signals ``drained``."""
    board = Scoreboard("output stage")
    stim = load_stimulus()
    meta = stim.meta
    rng = stim.rng(1)
    start_clock(dut)
    wake_combinational(dut)
    for port in (dut.desc, dut.layer_start, dut.results, dut.group_done):
        port.value = 0
    await reset(dut)
    records = []
    for entry in meta["layers"]:
        dut.desc.value = int(entry["descriptor"], 16)
        dut.layer_start.value = 1
        await RisingEdge(dut.clk)
        dut.layer_start.value = 0
        record = {"index": entry["index"], "act": [], "logit": [], "drained": 0}
        stop: list = []
        monitor = cocotb.start_soon(_monitor(dut, record, stop))
        for results, drain in zip(entry["groups"], entry["drain"], strict=True):
            dut.results.value = int(results, 16)
            dut.group_done.value = 1
            await RisingEdge(dut.clk)
            dut.group_done.value = 0
            await ClockCycles(dut.clk, int(drain) + int(meta["tail"]) + int(rng.integers(0, 4)))
        await ClockCycles(dut.clk, 4)
        stop.append(True)
        await monitor
        await ReadOnly()
        record["class_index"] = int(dut.class_index.value)
        await RisingEdge(dut.clk)
        board.check(1, record["drained"], layer=entry["index"], what="drained pulses")
        records.append(record)
    board.figures["layers"] = records
    board.finish()

"""Generic testbench for a block with one stream input and one stream output.

Stimulus arrays: ``inputs`` (payloads, in order) and ``expected`` (output payloads,
in order); ``meta``: ``seed``, ``in_port``, ``out_port``, ``in_stall``, ``out_stall``,
``signed`` (read the output as two's complement).
"""

from __future__ import annotations

import cocotb
from binforge.sim.tb.harness import Scoreboard, load_stimulus, reset, start_clock
from binforge.sim.tb.streams import StreamDriver, StreamSink, stream_port

__all__ = ["stream_in_order"]


@cocotb.test()
async def stream_in_order(dut):
    """Every input payload gives the expected output payload, in order, under random stalls."""
    board = Scoreboard("stream")
    stim = load_stimulus()
    meta = stim.meta
    start_clock(dut)
    driver = StreamDriver(dut.clk, *stream_port(dut, meta.get("in_port", "i")), stim.rng(1),
                          meta.get("in_stall", 0.0))
    valid, ready, payload = stream_port(dut, meta.get("out_port", "o"))
    sink = StreamSink(dut.clk, valid, ready, {"payload": payload}, stim.rng(2), meta.get("out_stall", 0.0),
                      signed={"payload"} if meta.get("signed", False) else ())
    await reset(dut)
    expected = [int(v) for v in stim["expected"]]
    feeder = cocotb.start_soon(driver.send(int(v) for v in stim["inputs"]))
    got = [t["payload"] for t in await sink.receive(len(expected))]
    await feeder
    for index, (e, g) in enumerate(zip(expected, got, strict=True)):
        board.check(e, g, index=index)
    board.finish()

"""Testbench of the systolic array (:class:`binforge.hw.array.XnorPopcountArray`).

Stimulus arrays, one entry per beat (cycle): ``act`` bits ``(beats, cols, simd)``,
``weight`` bits ``(beats, rows, simd)``, ``first``, ``last``, ``gain`` (encoded);
``expected`` ``(sums, rows, cols)``: each sum's result per PE. ``meta``: ``rows``,
``cols``, ``acc_width``, ``latency``. The testbench checks that ``done`` pulses
``latency`` cycles after each ``last`` beat and that every PE's result is right then.
"""

from __future__ import annotations

import cocotb
from binforge.sim.tb.harness import (
    Scoreboard,
    bits_to_int,
    load_stimulus,
    signed_fields,
    start_clock,
)
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["array_sums"]


@cocotb.test()
async def array_sums(dut):
    """Each PE (row r, column c) sums ``gain * popcount(act_c ^ weight_r)``; ``done`` comes on time."""
    board = Scoreboard("array")
    stim = load_stimulus()
    rows, cols = int(stim.meta["rows"]), int(stim.meta["cols"])
    width, latency = int(stim.meta["acc_width"]), int(stim.meta["latency"])
    act = [bits_to_int(b) for b in stim["act"]]
    weight = [bits_to_int(b) for b in stim["weight"]]
    first, last, gain, expected = stim["first"], stim["last"], stim["gain"], stim["expected"]
    beats = len(act)
    due = {int(t) + latency: k for k, t in enumerate(last.nonzero()[0])}
    start_clock(dut)
    for port in (dut.act, dut.weight, dut.first, dut.last, dut.gain):
        port.value = 0  # no undriven (Z) input may reach a register
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    seen = 0
    for t in range(beats + latency + 2):
        inside = t < beats
        dut.act.value = act[t] if inside else 0
        dut.weight.value = weight[t] if inside else 0
        dut.first.value = int(first[t]) if inside else 0
        dut.last.value = int(last[t]) if inside else 0
        dut.gain.value = int(gain[t]) if inside else 0
        await ReadOnly()
        done = bool(dut.done.value)
        k = due.get(t)
        if done or k is not None:
            board.check(int(k is not None), int(done), what="done pulse", cycle=t)
        if done and k is not None:
            got = signed_fields(dut.results.value.to_unsigned(), width, rows * cols).reshape(rows, cols)
            board.compare(expected[k], got, ("row", "col"), sum=k)
            seen += 1
        await RisingEdge(dut.clk)
    board.check(len(due), seen, what="sums completed")
    board.finish()

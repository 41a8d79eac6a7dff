"""Testbench of the XNOR-popcount PE (:class:`binforge.hw.pe.XnorPopcountPE`).

Stimulus arrays, one entry per beat (cycle): ``act``, ``weight`` (bit rows ``(beats, simd)``),
``first``, ``last``, ``gain`` (encoded by the PE's ``GainFormat``), ``expected`` (the
sum ending at a ``last`` beat, else 0), ``sum_index``. ``meta``: ``popcount_depth``,
``latency``. Beats outside any sum (gaps) carry random bits and must not disturb the sums.
"""

from __future__ import annotations

import cocotb
from binforge.sim.tb.harness import Scoreboard, bits_to_int, load_stimulus, start_clock
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["pe_sums"]


@cocotb.test()
async def pe_sums(dut):
    """Every sum of ``gain * popcount(act ^ weight)`` appears in ``result`` exactly ``latency`` cycles on."""
    board = Scoreboard("pe")
    stim = load_stimulus()
    depth, latency = int(stim.meta["popcount_depth"]), int(stim.meta["latency"])
    act = [bits_to_int(row) for row in stim["act"]]
    weight = [bits_to_int(row) for row in stim["weight"]]
    first, last, gain = stim["first"], stim["last"], stim["gain"]
    expected, sum_index = stim["expected"], stim["sum_index"]
    beats = len(act)
    start_clock(dut)
    for port in (dut.act, dut.weight, dut.first, dut.last, dut.gain):
        port.value = 0  # no undriven (Z) input may reach a register
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    for t in range(beats + latency + 1):
        dut.act.value = act[t] if t < beats else 0
        dut.weight.value = weight[t] if t < beats else 0
        c = t - depth  # control travels with the beat's popcount
        ok = 0 <= c < beats
        dut.first.value = int(first[c]) if ok else 0
        dut.last.value = int(last[c]) if ok else 0
        dut.gain.value = int(gain[c]) if ok else 0
        await ReadOnly()
        done = t - latency
        if 0 <= done < beats and last[done]:
            board.check(expected[done], dut.result.value.to_signed(), sum=int(sum_index[done]),
                        beat=done, cycle=t)
        await RisingEdge(dut.clk)
    board.finish()

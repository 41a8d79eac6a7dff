"""UART receiver and transmitter against the bit-level line model, in the Amaranth simulator."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator
from binforge.boards.uart import UARTReceiver, UARTTransmitter, uart_divisor
from binforge.boards.uart_model import receive_bytes, send_bytes


def _run(dut, *testbenches, cycles):
    """Simulate ``cycles`` clock cycles (1 us each) with the testbenches."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for tb in testbenches:
        sim.add_testbench(tb)
    sim.run_until(cycles * 1e-6)


def test_uart_divisor_for_common_clocks():
    assert uart_divisor(12e6, 115200) == 104
    assert uart_divisor(25e6, 115200) == 217
    assert uart_divisor(48e6, 1_000_000) == 48


def test_uart_divisor_refuses_slow_clock_and_bad_rate():
    with pytest.raises(ValueError, match="too slow for 3000000 baud"):
        uart_divisor(10e6, 3_000_000)
    with pytest.raises(ValueError, match=r"off by 4\.2 %"):
        uart_divisor(10e6, 2_000_000 * 1.2)


def test_divisor_is_checked(rejects):
    rejects(ValueError, "divisor must be an integer of at least 4, not 3", UARTReceiver, 3)
    rejects(ValueError, "divisor must be an integer of at least 4, not 2.5", UARTTransmitter, 2.5)


@pytest.mark.parametrize("host_divisor, board_divisor, stall", [(8, 8, 0), (16, 16, 3), (33, 32, 0), (31, 32, 5)])
def test_receiver_takes_bytes_from_the_line(host_divisor, board_divisor, stall):
    rng = random.Random(host_divisor * 100 + board_divisor)
    data = bytes([0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80] + [rng.randrange(256) for _ in range(10)])
    dut = UARTReceiver(board_divisor)
    got = []

    async def line(ctx):
        await ctx.tick().repeat(5)
        await send_bytes(ctx, dut.rx, data, host_divisor, gap=rng.randrange(3))

    async def sink(ctx):
        while len(got) < len(data):
            ctx.set(dut.stream.ready, 0)
            await ctx.tick().repeat(stall + 1)
            ctx.set(dut.stream.ready, 1)
            payload, = await ctx.tick().sample(dut.stream.payload).until(dut.stream.valid)
            got.append(payload)
        ctx.set(dut.stream.ready, 0)

    _run(dut, line, sink, cycles=len(data) * (10 * host_divisor + 2) + (stall + 2) * len(data) + 50)
    assert bytes(got) == data


def test_receiver_reports_overrun_and_keeps_the_first_byte():
    dut = UARTReceiver(8)
    overruns, final = [], []

    async def line(ctx):
        await send_bytes(ctx, dut.rx, b"\x12\x34", 8)
        await ctx.tick().repeat(40)

    async def watch(ctx):
        for _ in range(300):
            _, _, overrun = await ctx.tick().sample(dut.overrun)
            overruns.append(overrun)
        final.append((ctx.get(dut.stream.valid), ctx.get(dut.stream.payload)))

    _run(dut, line, watch, cycles=320)
    assert sum(overruns) == 1
    assert final == [(1, 0x12)]


def test_receiver_drops_a_byte_with_a_bad_stop_bit():
    dut = UARTReceiver(8)
    errors, valids = [], []

    async def line(ctx):
        # Start bit, 8 data bits of 0x0F, then a 0 where the stop bit belongs.
        for bit in [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]:
            ctx.set(dut.rx, bit)
            await ctx.tick().repeat(8)
        ctx.set(dut.rx, 1)

    async def watch(ctx):
        for _ in range(150):
            _, _, error, valid = await ctx.tick().sample(dut.frame_error, dut.stream.valid)
            errors.append(error)
            valids.append(valid)

    _run(dut, line, watch, cycles=160)
    assert sum(errors) == 1 and len(valids) == 150 and not any(valids)


@pytest.mark.parametrize("divisor, stall", [(4, 0), (10, 7)])
def test_transmitter_sends_bytes_on_the_line(divisor, stall):
    data = bytes([0x00, 0xFF, 0xA5, 0x3C, 0x7E])
    dut = UARTTransmitter(divisor)

    async def source(ctx):
        for byte in data:
            ctx.set(dut.stream.payload, byte)
            ctx.set(dut.stream.valid, 1)
            await ctx.tick().until(dut.stream.ready)
            ctx.set(dut.stream.valid, 0)
            if stall:
                await ctx.tick().repeat(stall)

    got = []

    async def line(ctx):
        got.append(await receive_bytes(ctx, dut.tx, len(data), divisor, timeout=5000))

    _run(dut, source, line, cycles=len(data) * (10 * divisor + 2 + stall) + 50)
    assert got == [data]


def test_transmitter_to_receiver_loopback():
    m = Module()
    m.submodules.tx = tx = UARTTransmitter(6)
    m.submodules.rx = rx = UARTReceiver(6)
    m.d.comb += rx.rx.eq(tx.tx)
    data = bytes(range(0, 256, 17))
    got = []

    async def source(ctx):
        for byte in data:
            ctx.set(tx.stream.payload, byte)
            ctx.set(tx.stream.valid, 1)
            await ctx.tick().until(tx.stream.ready)
        ctx.set(tx.stream.valid, 0)

    async def sink(ctx):
        ctx.set(rx.stream.ready, 1)
        while len(got) < len(data):
            payload, = await ctx.tick().sample(rx.stream.payload).until(rx.stream.valid)
            got.append(payload)

    _run(m, source, sink, cycles=len(data) * 62 + 50)
    assert bytes(got) == data

"""The board's top level: clock and reset, UART pins, and the core behind them.

:class:`BoardTop` is the only part that touches the platform: it takes the
oscillator pin straight into the ``sync`` domain, holds reset with
:class:`~binforge.boards.clocking.PowerOnReset`, buffers the UART pins and lights
the first LED (where the board has one) while a request is handled.
"""

from __future__ import annotations

import math

from amaranth.build import ResourceError
from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Module, ResetSignal
from amaranth.lib import io

from .clocking import RESET_HOLD_SECONDS, PowerOnReset

__all__ = ["BoardTop"]


class BoardTop(Elaboratable):
    """Platform glue around ``core``.

    Parameters
    ----------
    core : wiring.Component
        Has ``rx: In(1)``, ``tx: Out(1)`` and ``busy: Out(1)``, all in ``sync``.
    clock_hz : float
        The oscillator's real frequency (sets the power-on reset delay).
    """

    def __init__(self, core, clock_hz: float):
        self.core = core
        self.clock_hz = clock_hz

    def elaborate(self, platform):
        m = Module()
        clk = platform.request(platform.default_clk, 0, dir="-")
        m.submodules.clk_buf = clk_buf = io.Buffer("i", clk)
        m.domains.por = ClockDomain("por", reset_less=True)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += [ClockSignal("por").eq(clk_buf.i), ClockSignal("sync").eq(clk_buf.i)]
        m.submodules.por = por = PowerOnReset(max(1, math.ceil(RESET_HOLD_SECONDS * self.clock_hz)))
        m.d.comb += ResetSignal("sync").eq(por.rst)

        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.submodules.core = core = self.core
        m.d.comb += [core.rx.eq(rx_buf.i), tx_buf.o.eq(core.tx)]

        led = _first_led(platform)
        if led is not None:
            m.submodules.led_buf = led_buf = io.Buffer("o", led)
            m.d.comb += led_buf.o.eq(core.busy)
        return m


def _first_led(platform):
    for name in ("led", "rgb_led"):
        try:
            resource = platform.request(name, 0, dir="-")
        except ResourceError:
            continue
        return resource if name == "led" else resource.g
    return None

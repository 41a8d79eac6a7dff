"""The board's top level: clock and reset, UART pins, and the core behind them.

:class:`BoardTop` is the only part that touches the platform: it takes the
oscillator pin straight into the ``sync`` domain, or through the family's PLL
(:func:`~binforge.boards.clocking.pll_instance`) when given a PLL configuration,
holds reset with :class:`~binforge.boards.clocking.PowerOnReset` (restarted while the
PLL is not locked), buffers the UART pins and lights the first LED (where the board
has one) while a request is handled.
"""

from __future__ import annotations

import math

from amaranth.build import ResourceError
from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Module, ResetSignal, Signal
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer

from .clocking import RESET_HOLD_SECONDS, PowerOnReset, pll_instance

__all__ = ["BoardTop"]


class BoardTop(Elaboratable):
    """Platform glue around ``core``.

    Parameters
    ----------
    core : wiring.Component
        Has ``rx: In(1)``, ``tx: Out(1)`` and ``busy: Out(1)``, all in ``sync``.
    clock_hz : float
        The oscillator's real frequency (sets the power-on reset delay without a PLL).
    pll : ICE40PLLConfig or ECP5PLLConfig, optional
        Run ``sync`` from the PLL with this configuration
        (:func:`~binforge.boards.pll.solve_pll`) instead of the oscillator; nextpnr times
        its output at the frequency the dividers give (derived from the oscillator's
        constraint).
    pll_primitive : str, optional
        The primitive for ``pll`` (:attr:`~binforge.boards.platforms.Board.pll_primitive`).
    """

    def __init__(self, core, clock_hz: float, *, pll=None, pll_primitive: str | None = None):
        if (pll is None) != (pll_primitive is None):
            raise ValueError("pll and pll_primitive go together")
        self.core = core
        self.clock_hz = clock_hz
        self.pll = pll
        self.pll_primitive = pll_primitive

    @property
    def sync_hz(self) -> float:
        """The frequency ``sync`` runs at: the PLL's achieved output, else the oscillator."""
        return float(self.pll.output_hz) if self.pll is not None else self.clock_hz

    def elaborate(self, platform):
        m = Module()
        clk = platform.request(platform.default_clk, 0, dir="-")
        m.domains.por = ClockDomain("por", reset_less=True)
        m.domains.sync = ClockDomain("sync")
        m.submodules.por = por = PowerOnReset(max(1, math.ceil(RESET_HOLD_SECONDS * self.sync_hz)))
        if self.pll is None:
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk)
            clock = clk_buf.i
        else:
            clock, lock, locked = Signal(name="pll_clk"), Signal(name="pll_lock"), Signal(name="pll_locked")
            if self.pll_primitive == "SB_PLL40_PAD":
                reference = clk.io  # the PLL's own input pad: no input buffer in between
            else:
                m.submodules.clk_buf = clk_buf = io.Buffer("i", clk)
                reference = clk_buf.i
            m.submodules.pll = pll_instance(self.pll_primitive, self.pll, reference=reference,
                                            clock=clock, lock=lock)
            m.submodules.lock_sync = FFSynchronizer(lock, locked, o_domain="por")
            m.d.comb += por.hold.eq(~locked)
            # No constraint of our own on the PLL output: nextpnr derives it from the oscillator
            # pin's constraint and the PLL's dividers (its "Derived frequency constraint" line),
            # which also checks the solver's arithmetic. A constraint on a named net would be
            # ignored: after synthesis the clock net carries another of its aliases' names.
        m.d.comb += [ClockSignal("por").eq(clock), ClockSignal("sync").eq(clock)]
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

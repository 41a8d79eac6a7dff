"""The board's clock domain: the oscillator pin straight in, and a cheap power-on reset.

The platforms' own ``sync`` domain on iCE40 holds reset with one wide counter, whose
carry chain alone caps a design near 90 MHz. :class:`PowerOnReset` counts the same
delay with a cascade of 4-bit counters, each enabled by the previous one's registered
carry, so its paths stay short at any clock the fabric reaches.
"""

import math

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

__all__ = ["PowerOnReset", "RESET_HOLD_SECONDS"]

#: How long reset is held after configuration: iCE40 block RAMs read as zero for ~3 us.
RESET_HOLD_SECONDS = 15e-6

_STAGE_BITS = 4


class PowerOnReset(wiring.Component):
    """Holds ``rst`` high for at least ``cycles`` cycles after configuration.

    Runs in its own reset-less domain (``domain``), whose flip-flops start at 0 on
    every FPGA family binforge targets.

    Parameters
    ----------
    cycles : int
        Minimum number of cycles ``rst`` stays high, positive.
    domain : str
        The reset-less clock domain it counts in.

    Members
    -------
    rst : Out(1)
        High until the delay has passed, then low for good.
    """

    rst: Out(1)

    def __init__(self, cycles: int, domain: str = "por"):
        if not isinstance(cycles, int) or cycles < 1:
            raise ValueError(f"cycles must be a positive integer, not {cycles!r}")
        self._cycles = cycles
        self._domain = domain
        super().__init__()

    @property
    def stages(self) -> int:
        """4-bit counters in the cascade."""
        return max(1, math.ceil(math.log2(self._cycles + 1) / _STAGE_BITS))

    def elaborate(self, platform):
        m = Module()
        sync = m.d[self._domain]
        done = Signal()
        enable = ~done
        for i in range(self.stages):
            count = Signal(_STAGE_BITS, name=f"count{i}")
            carry = Signal(name=f"carry{i}")
            sync += carry.eq(0)
            with m.If(enable):
                sync += count.eq(count + 1)
                sync += carry.eq(count == (1 << _STAGE_BITS) - 1)
            enable = carry
        with m.If(enable):
            sync += done.eq(1)
        m.d.comb += self.rst.eq(~done)
        return m

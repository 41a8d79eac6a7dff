"""The board's clock domain: the oscillator or a PLL, and a cheap power-on reset.

The platforms' own ``sync`` domain on iCE40 holds reset with one wide counter, whose
carry chain alone caps a design near 90 MHz. :class:`PowerOnReset` counts the same
delay with a cascade of 4-bit counters, each enabled by the previous one's registered
carry, so its paths stay short at any clock the fabric reaches. Its ``hold`` input
(the PLL's lock, inverted) restarts the count, so the design leaves reset only once
the PLL's clock is stable.

:func:`pll_instance` turns a configuration from :mod:`binforge.boards.pll` into the
family's PLL primitive (``SB_PLL40_PAD`` / ``SB_PLL40_CORE`` on iCE40, ``EHXPLLL`` on
ECP5).
"""

import math

from amaranth.hdl import Const, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .pll import ECP5PLLConfig, ICE40PLLConfig

__all__ = ["PowerOnReset", "RESET_HOLD_SECONDS", "PLL_PRIMITIVES", "pll_instance"]

#: The PLL primitives :func:`pll_instance` writes.
PLL_PRIMITIVES = ("SB_PLL40_PAD", "SB_PLL40_CORE", "EHXPLLL")

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
    hold : In(1)
        While high, the count restarts and ``rst`` is high (tie to ``~lock`` of a PLL,
        synchronised to ``domain``; left unconnected it is 0).
    rst : Out(1)
        High until ``cycles`` cycles have passed with ``hold`` low, then low for good
        (unless ``hold`` rises again).
    """

    hold: In(1)
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
        registers = [done]
        for i in range(self.stages):
            count = Signal(_STAGE_BITS, name=f"count{i}")
            carry = Signal(name=f"carry{i}")
            registers += [count, carry]
            sync += carry.eq(0)
            with m.If(enable):
                sync += count.eq(count + 1)
                sync += carry.eq(count == (1 << _STAGE_BITS) - 1)
            enable = carry
        with m.If(enable):
            sync += done.eq(1)
        with m.If(self.hold):
            sync += [register.eq(0) for register in registers]
        m.d.comb += self.rst.eq(~done)
        return m


def pll_instance(primitive: str, config, *, reference, clock, lock) -> Instance:
    """The PLL primitive for ``config``, its output on ``clock`` and its lock on ``lock``.

    Parameters
    ----------
    primitive : str
        ``"SB_PLL40_PAD"`` (iCE40, the oscillator on the PLL's own input pad:
        ``reference`` is the pin's I/O port, no input buffer), ``"SB_PLL40_CORE"``
        (iCE40, ``reference`` a fabric clock signal) or ``"EHXPLLL"`` (ECP5,
        ``reference`` the buffered oscillator).
    config : ICE40PLLConfig or ECP5PLLConfig
        From :func:`binforge.boards.pll.solve_pll`.
    reference, clock, lock
        The input clock (see ``primitive``), the output clock signal, the lock signal.
    """
    if primitive in ("SB_PLL40_PAD", "SB_PLL40_CORE"):
        if not isinstance(config, ICE40PLLConfig):
            raise ValueError(f"{primitive} needs an iCE40 PLL configuration, not {type(config).__name__}")
        parameters = {f"p_{name}": value for name, value in config.parameters().items()}
        parameters["p_PLLOUT_SELECT"] = "GENCLK"
        reference_port = {"io_PACKAGEPIN": reference} if primitive == "SB_PLL40_PAD" \
            else {"i_REFERENCECLK": reference}
        return Instance(primitive, **parameters, **reference_port,
                        i_RESETB=Const(1), i_BYPASS=Const(0), o_PLLOUTGLOBAL=clock, o_LOCK=lock)
    if primitive == "EHXPLLL":
        if not isinstance(config, ECP5PLLConfig):
            raise ValueError(f"EHXPLLL needs an ECP5 PLL configuration, not {type(config).__name__}")
        parameters = {f"p_{name}": value for name, value in config.parameters().items()}
        return Instance(
            "EHXPLLL",
            # The loop settings ecppll writes (as attributes nextpnr-ecp5 reads).
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            a_FREQUENCY_PIN_CLKI=f"{float(config.input_hz) / 1e6:g}",
            a_FREQUENCY_PIN_CLKOP=f"{float(config.output_hz) / 1e6:g}",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
            **parameters,
            i_CLKI=reference, i_CLKFB=clock, o_CLKOP=clock, o_LOCK=lock,
            i_RST=Const(0), i_STDBY=Const(0), i_PHASESEL0=Const(0), i_PHASESEL1=Const(0),
            i_PHASEDIR=Const(1), i_PHASESTEP=Const(1), i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0),
            i_ENCLKOP=Const(0))
    raise ValueError(f"unknown PLL primitive {primitive!r}; choose one of {', '.join(PLL_PRIMITIVES)}")

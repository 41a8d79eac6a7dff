"""PLL configurations: the dividers that bring a board's oscillator to a requested clock.

Pure arithmetic, one solver per FPGA family, with the rules of the open tools that
compute the same dividers (icestorm's ``icepll`` for iCE40, Project Trellis's
``ecppll`` for ECP5):

- iCE40 ``SB_PLL40_*`` (simple feedback): ``F_PFD = F_IN / (DIVR + 1)``,
  ``F_VCO = F_PFD * (DIVF + 1)``, ``F_OUT = F_VCO / 2**DIVQ``; DIVR 0..15, DIVF 0..127,
  DIVQ 1..6, F_IN 10..133 MHz, F_PFD 10..133 MHz, F_VCO 533..1066 MHz, F_OUT
  16..275 MHz; FILTER_RANGE from F_PFD (1 below 17 MHz, 2 below 26, 3 below 44,
  4 below 66, 5 below 101, else 6).
- ECP5 ``EHXPLLL`` (CLKOP fed back): ``F_PFD = F_IN / CLKI_DIV``,
  ``F_OUT = F_PFD * CLKFB_DIV``, ``F_VCO = F_OUT * CLKOP_DIV``; CLKI_DIV 1..128,
  CLKFB_DIV 1..80, CLKOP_DIV 1..128, F_IN 8..400 MHz, F_PFD 3.125..400 MHz, F_VCO
  400..800 MHz, F_OUT 10..400 MHz.

The rule (both families): the **highest achievable frequency not above the request**
(a clock above the request could break the timing the request was chosen for). Among
divider sets giving that same frequency, the one the reference tool would pick: for
iCE40 the first in icepll's search order (DIVR, then DIVF, then DIVQ ascending), for
ECP5 the one whose VCO is nearest 600 MHz, first in ecppll's order (CLKI_DIV,
CLKFB_DIV, CLKOP_DIV ascending) on a tie. Where the reference tool reaches the request
exactly, both give the same dividers. Frequencies are computed exactly (fractions of
Hz), not in floating point.

``CLKOP_CPHASE`` is ``CLKOP_DIV // 2`` (half a period, the 180 degree shift ecppll
intends; ecppll computes it in single precision and writes one less for some even
dividers). With CLKOP as the feedback the phase moves CLKOP against the input only;
nothing in the board design depends on that phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

__all__ = ["PLLRangeError", "ICE40PLLConfig", "ECP5PLLConfig", "ice40_pll", "ice40_filter_range", "ecp5_pll", "solve_pll",
           "PLL_FAMILIES"]

_MHZ = 1_000_000

# iCE40 (iCE40 sysCLOCK PLL design and usage guide; the ranges icepll checks).
ICE40_INPUT_HZ = (10 * _MHZ, 133 * _MHZ)
ICE40_PFD_HZ = (10 * _MHZ, 133 * _MHZ)
ICE40_VCO_HZ = (533 * _MHZ, 1066 * _MHZ)
ICE40_OUTPUT_HZ = (16 * _MHZ, 275 * _MHZ)
# ECP5 (the ranges ecppll checks).
ECP5_INPUT_HZ = (8 * _MHZ, 400 * _MHZ)
ECP5_PFD_HZ = (Fraction(3_125_000), 400 * _MHZ)
ECP5_VCO_HZ = (400 * _MHZ, 800 * _MHZ)
ECP5_OUTPUT_HZ = (10 * _MHZ, 400 * _MHZ)
_ECP5_VCO_CENTRE_HZ = 600 * _MHZ

#: Families with a solver.
PLL_FAMILIES = ("ice40", "ecp5")


class PLLRangeError(ValueError):
    """A request no configuration of the family's PLL can meet (the message has the numbers)."""


def _mhz(hz) -> str:
    return f"{float(hz) / _MHZ:g} MHz"


def _exact(hz: float, what: str) -> Fraction:
    if isinstance(hz, bool) or not isinstance(hz, (int, float, Fraction)) or not hz > 0:
        raise PLLRangeError(f"the {what} frequency must be a positive number of Hz, not {hz!r}")
    return Fraction(hz)


def _check_range(hz: Fraction, bounds, family: str, what: str) -> None:
    low, high = bounds
    if not low <= hz <= high:
        raise PLLRangeError(f"the {family} PLL {what} must be {_mhz(low)} to {_mhz(high)}, not {_mhz(hz)}")


@dataclass(frozen=True)
class ICE40PLLConfig:
    """One iCE40 PLL configuration (simple feedback path).

    Attributes
    ----------
    input_hz, output_hz:
        The reference clock and the frequency these dividers produce (exact).
    requested_hz:
        The frequency asked for.
    divr, divf, divq:
        The reference, feedback and output dividers (the values written to the
        primitive's DIVR, DIVF, DIVQ parameters).
    filter_range:
        The loop filter setting for this PFD frequency.
    """

    input_hz: Fraction
    requested_hz: Fraction
    output_hz: Fraction
    divr: int
    divf: int
    divq: int
    filter_range: int

    family = "ice40"

    @property
    def pfd_hz(self) -> Fraction:
        return self.input_hz / (self.divr + 1)

    @property
    def vco_hz(self) -> Fraction:
        return self.pfd_hz * (self.divf + 1)

    def parameters(self) -> dict[str, Any]:
        """The ``SB_PLL40_*`` parameters (``FEEDBACK_PATH``, dividers, ``FILTER_RANGE``)."""
        return {"FEEDBACK_PATH": "SIMPLE", "DIVR": self.divr, "DIVF": self.divf, "DIVQ": self.divq,
                "FILTER_RANGE": self.filter_range}

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "input_mhz": float(self.input_hz) / _MHZ,
                "requested_mhz": float(self.requested_hz) / _MHZ, "achieved_mhz": float(self.output_hz) / _MHZ,
                "pfd_mhz": float(self.pfd_hz) / _MHZ, "vco_mhz": float(self.vco_hz) / _MHZ,
                "dividers": self.parameters()}


@dataclass(frozen=True)
class ECP5PLLConfig:
    """One ECP5 ``EHXPLLL`` configuration (CLKOP fed back to CLKFB).

    Attributes
    ----------
    input_hz, output_hz:
        The reference clock and the frequency these dividers produce (exact).
    requested_hz:
        The frequency asked for.
    clki_div, clkfb_div, clkop_div:
        Reference, feedback and CLKOP output dividers.
    clkop_cphase:
        CLKOP's coarse phase, ``clkop_div // 2`` (see the module docstring).
    """

    input_hz: Fraction
    requested_hz: Fraction
    output_hz: Fraction
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int

    family = "ecp5"

    @property
    def pfd_hz(self) -> Fraction:
        return self.input_hz / self.clki_div

    @property
    def vco_hz(self) -> Fraction:
        return self.output_hz * self.clkop_div

    def parameters(self) -> dict[str, Any]:
        """The ``EHXPLLL`` divider and phase parameters."""
        return {"CLKI_DIV": self.clki_div, "CLKFB_DIV": self.clkfb_div, "CLKOP_DIV": self.clkop_div,
                "CLKOP_CPHASE": self.clkop_cphase, "CLKOP_FPHASE": 0, "FEEDBK_PATH": "CLKOP"}

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "input_mhz": float(self.input_hz) / _MHZ,
                "requested_mhz": float(self.requested_hz) / _MHZ, "achieved_mhz": float(self.output_hz) / _MHZ,
                "pfd_mhz": float(self.pfd_hz) / _MHZ, "vco_mhz": float(self.vco_hz) / _MHZ,
                "dividers": self.parameters()}


def ice40_filter_range(pfd_hz) -> int:
    """The iCE40 PLL loop filter setting for a PFD frequency (icepll's table)."""
    for setting, below_mhz in enumerate((17, 26, 44, 66, 101), start=1):
        if pfd_hz < below_mhz * _MHZ:
            return setting
    return 6


def ice40_pll(input_hz: float, requested_hz: float) -> ICE40PLLConfig:
    """The iCE40 PLL configuration giving the highest frequency not above ``requested_hz``.

    Raises
    ------
    PLLRangeError
        When the input or the request is outside the PLL's range, or no configuration
        lands between the PLL's lowest output and the request.
    """
    f_in = _exact(input_hz, "input")
    request = _exact(requested_hz, "requested")
    _check_range(f_in, ICE40_INPUT_HZ, "iCE40", "input")
    _check_range(request, ICE40_OUTPUT_HZ, "iCE40", "output")
    best = None
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not ICE40_PFD_HZ[0] <= pfd <= ICE40_PFD_HZ[1]:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not ICE40_VCO_HZ[0] <= vco <= ICE40_VCO_HZ[1]:
                continue
            for divq in range(1, 7):
                out = vco / (1 << divq)
                if ICE40_OUTPUT_HZ[0] <= out <= request and (best is None or out > best[0]):
                    best = (out, divr, divf, divq)
    if best is None:
        raise PLLRangeError(f"no iCE40 PLL configuration from {_mhz(f_in)} gives a clock from "
                            f"{_mhz(ICE40_OUTPUT_HZ[0])} to {_mhz(request)}")
    out, divr, divf, divq = best
    return ICE40PLLConfig(f_in, request, out, divr, divf, divq, ice40_filter_range(f_in / (divr + 1)))


def ecp5_pll(input_hz: float, requested_hz: float) -> ECP5PLLConfig:
    """The ECP5 ``EHXPLLL`` configuration giving the highest frequency not above ``requested_hz``.

    Raises
    ------
    PLLRangeError
        When the input or the request is outside the PLL's range, or no configuration
        lands between the PLL's lowest output and the request.
    """
    f_in = _exact(input_hz, "input")
    request = _exact(requested_hz, "requested")
    _check_range(f_in, ECP5_INPUT_HZ, "ECP5", "input")
    _check_range(request, ECP5_OUTPUT_HZ, "ECP5", "output")
    best = None
    for clki_div in range(1, 129):
        pfd = f_in / clki_div
        if not ECP5_PFD_HZ[0] <= pfd <= ECP5_PFD_HZ[1]:
            continue
        for clkfb_div in range(1, 81):
            out = pfd * clkfb_div
            if not ECP5_OUTPUT_HZ[0] <= out <= request:
                continue
            for clkop_div in range(1, 129):
                vco = out * clkop_div
                if not ECP5_VCO_HZ[0] <= vco <= ECP5_VCO_HZ[1]:
                    continue
                centre = abs(vco - _ECP5_VCO_CENTRE_HZ)
                if best is None or out > best[0] or (out == best[0] and centre < best[1]):
                    best = (out, centre, clki_div, clkfb_div, clkop_div)
    if best is None:
        raise PLLRangeError(f"no ECP5 PLL configuration from {_mhz(f_in)} gives a clock from "
                            f"{_mhz(ECP5_OUTPUT_HZ[0])} to {_mhz(request)}")
    out, _, clki_div, clkfb_div, clkop_div = best
    return ECP5PLLConfig(f_in, request, out, clki_div, clkfb_div, clkop_div, clkop_div // 2)


def solve_pll(family: str, input_hz: float, requested_hz: float) -> ICE40PLLConfig | ECP5PLLConfig:
    """The PLL configuration of ``family`` (``"ice40"`` or ``"ecp5"``) for a request.

    Raises
    ------
    PLLRangeError
        As :func:`ice40_pll` / :func:`ecp5_pll`, or for a family without a solver.
    """
    if family == "ice40":
        return ice40_pll(input_hz, requested_hz)
    if family == "ecp5":
        return ecp5_pll(input_hz, requested_hz)
    raise PLLRangeError(f"binforge has no PLL solver for the {family} family (only {', '.join(PLL_FAMILIES)})")

"""PLL solvers against the dividers icepll and ecppll print, and their refusals."""

from __future__ import annotations

from fractions import Fraction

import pytest
from binforge.boards.pll import (
    ECP5PLLConfig,
    ICE40PLLConfig,
    PLLRangeError,
    ecp5_pll,
    ice40_filter_range,
    ice40_pll,
    solve_pll,
)

MHZ = 1_000_000

# (input MHz, requested MHz, DIVR, DIVF, DIVQ, FILTER_RANGE) as printed by icestorm's icepll
# (`icepll -i IN -o OUT`, simple feedback), from configurations published with its output:
# 12 -> 48 (the icepll example), 12 -> 96 (Mark-MDO47/FPGA_RBG_2_RBGW rgb_pll/README.md),
# 48 -> 60, 48 -> 100, 48 -> 150 (wieker/electrolyser fpga/phase_dsp/const_tx/ipll.v),
# 96 -> 20, 96 -> 16, 48 -> 16, 48 -> 24 (theo-brown/f-of-e-tools verilog/hardware/processor/).
ICEPLL_REFERENCES = [
    (12, 48, 0, 63, 4, 1),
    (12, 96, 0, 63, 3, 1),
    (48, 60, 0, 19, 4, 4),
    (48, 100, 2, 49, 3, 1),
    (48, 150, 1, 24, 2, 2),
    (96, 20, 2, 19, 5, 3),
    (96, 16, 2, 31, 6, 3),
    (48, 16, 2, 63, 6, 1),
    (48, 24, 0, 15, 5, 4),
]

# (input MHz, requested MHz, CLKI_DIV, CLKFB_DIV, CLKOP_DIV, ecppll's CLKOP_CPHASE) as written by
# Project Trellis's ecppll (`ecppll -i IN -o OUT`): the ULX3S table in BrunoLevy/learn-fpga
# FemtoRV/RTL/PLL/pll_ulx3s.v ("values from ecppll -i 25 -o freq") and olofk/serv
# servant/ecp5_evn_pll.v ("generated with ecppll -i 12 -o 16").
ECPPLL_REFERENCES = [
    (25, 120, 5, 24, 5, 2),
    (25, 110, 5, 22, 5, 2),
    (25, 100, 1, 4, 6, 2),
    (25, 95, 5, 19, 6, 3),
    (25, 90, 5, 18, 7, 3),
    (25, 85, 5, 17, 7, 3),
    (25, 80, 5, 16, 7, 3),
    (25, 75, 1, 3, 8, 4),
    (25, 70, 5, 14, 9, 4),
    (25, 65, 5, 13, 9, 4),
    (25, 60, 5, 12, 10, 4),
    (25, 50, 1, 2, 12, 5),
    (12, 16, 3, 4, 37, 18),
]


@pytest.mark.parametrize("f_in, f_out, divr, divf, divq, filter_range", ICEPLL_REFERENCES)
def test_ice40_solver_gives_icepll_dividers(f_in, f_out, divr, divf, divq, filter_range):
    # The reference itself, by the PLL's formula: it makes exactly the requested clock.
    pfd = Fraction(f_in, divr + 1)
    vco = pfd * (divf + 1)
    assert vco / 2**divq == f_out and 10 <= pfd <= 133 and 533 <= vco <= 1066
    config = ice40_pll(f_in * 1e6, f_out * 1e6)
    assert (config.divr, config.divf, config.divq, config.filter_range) == (divr, divf, divq, filter_range)
    assert config.output_hz == f_out * MHZ and config.vco_hz == vco * MHZ
    assert config.parameters() == {"FEEDBACK_PATH": "SIMPLE", "DIVR": divr, "DIVF": divf, "DIVQ": divq,
                                   "FILTER_RANGE": filter_range}


@pytest.mark.parametrize("f_in, f_out, clki_div, clkfb_div, clkop_div, ecppll_cphase", ECPPLL_REFERENCES)
def test_ecp5_solver_gives_ecppll_dividers(f_in, f_out, clki_div, clkfb_div, clkop_div, ecppll_cphase):
    pfd = Fraction(f_in, clki_div)
    out = pfd * clkfb_div
    vco = out * clkop_div
    assert out == f_out and 3.125 <= pfd <= 400 and 400 <= vco <= 800
    config = ecp5_pll(f_in * 1e6, f_out * 1e6)
    assert (config.clki_div, config.clkfb_div, config.clkop_div) == (clki_div, clkfb_div, clkop_div)
    assert config.output_hz == f_out * MHZ and config.vco_hz == vco * MHZ
    # Half a period: ecppll intends the same but rounds in single precision (one less for
    # some even dividers); for odd dividers the two agree.
    assert config.clkop_cphase == clkop_div // 2
    if clkop_div % 2:
        assert config.clkop_cphase == ecppll_cphase
    assert config.clkop_cphase - ecppll_cphase in (0, 1)


def test_unreachable_request_gives_the_highest_clock_below_it():
    # 12 MHz * (DIVF + 1) / 2**DIVQ: 50 MHz is not reachable, 49.5 (66 / 16 * 12) is the next below.
    config = ice40_pll(12e6, 50e6)
    assert config.output_hz == Fraction(99, 2) * MHZ
    assert config.output_hz == Fraction(12 * MHZ, config.divr + 1) * (config.divf + 1) / 2**config.divq
    # No configuration lies between it and the request.
    for divf in range(128):
        for divq in range(1, 7):
            vco = 12 * (divf + 1)
            if 533 <= vco <= 1066:
                assert not Fraction(99, 2) < Fraction(vco, 2**divq) <= 50
    ecp5 = ecp5_pll(25e6, 107e6)
    assert ecp5.output_hz == Fraction(10625, 100) * MHZ <= 107 * MHZ  # 25 / 4 * 17
    assert (ecp5.clki_div, ecp5.clkfb_div) == (4, 17) and 400 * MHZ <= ecp5.vco_hz <= 800 * MHZ


def test_filter_range_follows_the_pfd_frequency():
    assert [ice40_filter_range(mhz * MHZ) for mhz in (10, 16.9, 17, 25.9, 26, 43, 44, 65, 66, 100, 101, 133)] == \
        [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]


def test_solve_pll_dispatches_per_family():
    assert isinstance(solve_pll("ice40", 12e6, 36e6), ICE40PLLConfig)
    assert isinstance(solve_pll("ecp5", 25e6, 90e6), ECP5PLLConfig)
    with pytest.raises(PLLRangeError, match=r"^binforge has no PLL solver for the xilinx7 family \(only ice40, ecp5\)$"):
        solve_pll("xilinx7", 100e6, 150e6)


@pytest.mark.parametrize("family, f_in, f_out, message", [
    ("ice40", 12e6, 300e6, "the iCE40 PLL output must be 16 MHz to 275 MHz, not 300 MHz"),
    ("ice40", 12e6, 8e6, "the iCE40 PLL output must be 16 MHz to 275 MHz, not 8 MHz"),
    ("ice40", 5e6, 50e6, "the iCE40 PLL input must be 10 MHz to 133 MHz, not 5 MHz"),
    ("ice40", 12e6, 16.1e6, "no iCE40 PLL configuration from 12 MHz gives a clock from 16 MHz to 16.1 MHz"),
    ("ecp5", 25e6, 450e6, "the ECP5 PLL output must be 10 MHz to 400 MHz, not 450 MHz"),
    ("ecp5", 25e6, 5e6, "the ECP5 PLL output must be 10 MHz to 400 MHz, not 5 MHz"),
    ("ecp5", 500e6, 100e6, "the ECP5 PLL input must be 8 MHz to 400 MHz, not 500 MHz"),
    ("ecp5", 25e6, -1.0, "the requested frequency must be a positive number of Hz, not -1.0"),
])
def test_bad_requests_are_refused_with_the_numbers(family, f_in, f_out, message):
    with pytest.raises(PLLRangeError) as info:
        solve_pll(family, f_in, f_out)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)

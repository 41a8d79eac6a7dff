"""The boards binforge builds for: amaranth-boards platforms plus what each device holds.

Board definitions come from amaranth-boards (pinned). This module adds only what a
build needs beyond them: the device's resources (for the fit check), the flow
(the open YoWASP flow, or Verilog and constraints only where the vendor tools are
not open), a UART where the board has none, and platform subclasses that leave the
board's programmer out of the required tools (binforge builds, it never programs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

from amaranth.build import Clock
from amaranth_boards.arty_a7 import ArtyA7_35Platform, ArtyA7_100Platform
from amaranth_boards.ice40_hx8k_b_evn import ICE40HX8KBEVNPlatform
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_85FPlatform
from amaranth_boards.resources import UARTResource
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from binforge.errors import BinforgeError

__all__ = ["DeviceResources", "Board", "BOARDS", "get_board", "make_platform"]


@dataclass(frozen=True)
class DeviceResources:
    """What one FPGA device holds.

    Attributes
    ----------
    logic_cells:
        iCE40 logic cells (one LUT4 + one flip-flop each), ECP5 LUT4s, Xilinx 7 LUT6s.
    flip_flops:
        Flip-flops.
    bram_blocks, bram_bits:
        Block RAMs and the bits each holds (iCE40 4 Kbit, ECP5 18 Kbit, Xilinx 36 Kbit).
    spram_blocks, spram_bits:
        Single-port RAMs (iCE40UP 256 Kbit each), else 0.
    dsp:
        Hard multipliers (iCE40UP SB_MAC16, ECP5 MULT18X18D, Xilinx DSP48E1).
    lut_inputs:
        Inputs of one LUT (4 or 6).
    """

    logic_cells: int
    flip_flops: int
    bram_blocks: int
    bram_bits: int
    spram_blocks: int
    spram_bits: int
    dsp: int
    lut_inputs: int

    @property
    def memory_bits(self) -> int:
        """All block and single-port RAM bits."""
        return self.bram_blocks * self.bram_bits + self.spram_blocks * self.spram_bits


@dataclass(frozen=True)
class Board:
    """One board binforge can build for.

    Attributes
    ----------
    name:
        The ``--board`` name.
    title:
        The board's name for people.
    family:
        ``"ice40"``, ``"ecp5"`` or ``"xilinx7"``.
    device:
        The FPGA part.
    flow:
        ``"open"``: Yosys + nextpnr (YoWASP) make a bitstream here; ``"verilog-only"``:
        binforge writes Verilog, constraints and the vendor's build script, and the
        vendor tools (not open, not installed) must be run elsewhere.
    resources:
        What the device holds.
    clock_hz:
        The board's oscillator.
    serial:
        How the host reaches the UART.
    platform_class:
        The amaranth-boards platform (without its programmer, see below).
    pll_primitive:
        The PLL primitive ``binforge build --clock-mhz`` instantiates
        (:func:`~binforge.boards.clocking.pll_instance`): ``"SB_PLL40_PAD"`` where the
        oscillator arrives on the iCE40 PLL's own input pad, ``"SB_PLL40_CORE"`` where it
        arrives on another pin, ``"EHXPLLL"`` on ECP5; ``None`` where binforge generates
        no PLL (the Verilog-only boards).
    """

    name: str
    title: str
    family: Literal["ice40", "ecp5", "xilinx7"]
    device: str
    flow: Literal["open", "verilog-only"]
    resources: DeviceResources
    clock_hz: float
    serial: str
    platform_class: type
    pll_primitive: str | None = None

    def platform(self):
        """A fresh platform object for this board (its resources can then be changed)."""
        return self.platform_class()


def _without_programmer(base: type, programmer: str) -> type:
    """A subclass of ``base`` that neither requires nor runs ``programmer``.

    amaranth-boards lists the board's programmer among the tools a build requires
    (and the OrangeCrab build even runs ``dfu-suffix`` on the bitstream, which only
    the USB bootloader needs). binforge never programs a device, so it drops both.
    """

    class Platform(base):
        @property
        def required_tools(self):
            return [tool for tool in super().required_tools if tool != programmer]

        @property
        def command_templates(self):
            return [template for template in super().command_templates
                    if f'invoke_tool("{programmer}")' not in template]

    Platform.__name__ = Platform.__qualname__ = f"{base.__name__}WithoutProgrammer"
    return Platform


class _OrangeCrab85FPlatform(_without_programmer(OrangeCrabR0_2_85FPlatform, "dfu-suffix")):
    # The OrangeCrab has no UART of its own: a 3.3 V USB-serial adapter goes on the
    # Feather header's RX (io 0) and TX (io 1) pins.
    resources = OrangeCrabR0_2_85FPlatform.resources + [
        UARTResource(0, rx="0", tx="1", conn=("io", 0), attrs=OrangeCrabR0_2_85FPlatform.resources[0].attrs),
    ]


_UP5K = DeviceResources(logic_cells=5280, flip_flops=5280, bram_blocks=30, bram_bits=4096,
                        spram_blocks=4, spram_bits=256 * 1024, dsp=8, lut_inputs=4)
_HX8K = DeviceResources(logic_cells=7680, flip_flops=7680, bram_blocks=32, bram_bits=4096,
                        spram_blocks=0, spram_bits=0, dsp=0, lut_inputs=4)
_ECP5_85 = DeviceResources(logic_cells=83640, flip_flops=83640, bram_blocks=208, bram_bits=18432,
                           spram_blocks=0, spram_bits=0, dsp=156, lut_inputs=4)
_A7_35 = DeviceResources(logic_cells=20800, flip_flops=41600, bram_blocks=50, bram_bits=36864,
                         spram_blocks=0, spram_bits=0, dsp=90, lut_inputs=6)
_A7_100 = DeviceResources(logic_cells=63400, flip_flops=126800, bram_blocks=135, bram_bits=36864,
                          spram_blocks=0, spram_bits=0, dsp=240, lut_inputs=6)

#: Every board ``binforge build`` knows, by ``--board`` name.
BOARDS: dict[str, Board] = {
    board.name: board
    for board in (
        Board("icebreaker", "iCEBreaker", "ice40", "iCE40UP5K-SG48", "open", _UP5K, 12e6,
              "the board's FTDI second channel (e.g. /dev/ttyUSB1)", ICEBreakerPlatform,
              pll_primitive="SB_PLL40_PAD"),
        Board("ice40-hx8k", "iCE40-HX8K breakout (ICE40HX8K-B-EVN)", "ice40", "iCE40HX8K-CT256",
              "open", _HX8K, 12e6, "the board's FTDI second channel (e.g. /dev/ttyUSB1)",
              ICE40HX8KBEVNPlatform, pll_primitive="SB_PLL40_CORE"),
        Board("ulx3s-85f", "ULX3S 85F", "ecp5", "LFE5U-85F-6BG381C", "open", _ECP5_85, 25e6,
              "the board's FTDI USB serial port (e.g. /dev/ttyUSB0)",
              _without_programmer(ULX3S_85F_Platform, "openFPGALoader"), pll_primitive="EHXPLLL"),
        Board("orangecrab", "OrangeCrab r0.2 85F", "ecp5", "LFE5U-85F-8MG285C", "open", _ECP5_85,
              48e6, "a 3.3 V USB-serial adapter on the Feather RX (io 0) and TX (io 1) pins",
              _OrangeCrab85FPlatform, pll_primitive="EHXPLLL"),
        Board("arty-a7-35", "Arty A7-35T", "xilinx7", "xc7a35ticsg324-1L", "verilog-only", _A7_35,
              100e6, "the board's FTDI USB serial port (e.g. /dev/ttyUSB1)", ArtyA7_35Platform),
        Board("arty-a7-100", "Arty A7-100T", "xilinx7", "xc7a100ticsg324-1L", "verilog-only",
              _A7_100, 100e6, "the board's FTDI USB serial port (e.g. /dev/ttyUSB1)",
              ArtyA7_100Platform),
    )
}


def get_board(name: str) -> Board:
    """The board called ``name``; a :class:`BinforgeError` listing the boards otherwise."""
    try:
        return BOARDS[name]
    except KeyError:
        raise BinforgeError(f"unknown board {name!r}; choose one of {', '.join(BOARDS)}") from None


def make_platform(board: Board, target_hz: float | None = None):
    """The board's platform, its default clock constrained to ``target_hz`` for timing.

    The constraint is the clock nextpnr times the oscillator pin's net against. With a
    PLL (``binforge build --clock-mhz``) the oscillator keeps its own frequency here and
    the board top constrains the PLL's output (:class:`~binforge.boards.top.BoardTop`).
    """
    platform = board.platform()
    if target_hz is not None:
        if not target_hz > 0:
            raise BinforgeError(f"the clock target must be positive, not {target_hz / 1e6:g} MHz")
        # amaranth-boards' Resource objects belong to the platform class: change a copy.
        key = (platform.default_clk, 0)
        resource = copy.copy(platform.resources[key])
        resource.clock = Clock(target_hz)
        platform.resources[key] = resource
    return platform

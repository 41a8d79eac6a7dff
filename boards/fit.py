"""Does a network on an R x C x S array fit a device? Checked before the long build.

Two estimates, both from the hardware plan (:func:`binforge.hw.plan.plan_network`):

- memory: each of the accelerator's memories (weight ROM, threshold/bias ROM, the two
  activation buffers, the logits) is cut into the device's block RAMs in the best of
  their width x depth configurations;
- logic: the calibration of a bare XNOR-popcount PE array built with the same flow
  (cells or LUTs per lane, per accumulator bit) plus the measured cost of the rest
  of the design (sequencer, pool engine, UART, host link) — see docs/boards.md.

A design whose estimate exceeds the device is refused with the numbers; the
estimates are not the build, which reports what was really used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from binforge.errors import BinforgeError

from .platforms import Board

__all__ = ["MemoryNeed", "FitEstimate", "LOGIC_MODEL", "BRAM_SHAPES", "estimate_fit", "check_fit"]

#: Block RAM (depth, width) configurations per family.
BRAM_SHAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),
    "ecp5": ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
    "xilinx7": ((512, 72), (1024, 36), (2048, 18), (4096, 9), (8192, 4), (16384, 2), (32768, 1)),
}

#: Logic model per family: cells (iCE40) or LUTs per XNOR-popcount lane, per bit of PE
#: accumulator (accumulator + result register), and the fixed cost of everything else.
#: Lanes and accumulator bits: MACHINE_NOTES' bare-array calibration; fixed: see docs/boards.md.
LOGIC_MODEL: dict[str, dict[str, float]] = {
    "ice40": {"per_lane": 4.0, "per_acc_bit": 2.0, "fixed": 900.0},
    "ecp5": {"per_lane": 3.7, "per_acc_bit": 1.5, "fixed": 900.0},
    "xilinx7": {"per_lane": 2.5, "per_acc_bit": 1.0, "fixed": 700.0},
}


@dataclass(frozen=True)
class MemoryNeed:
    """One memory of the design (``copies`` identical ones) and the block RAMs it takes."""

    name: str
    width: int
    depth: int
    copies: int
    bits: int
    blocks: int


@dataclass(frozen=True)
class FitEstimate:
    """What a design needs of a device, by estimate."""

    board: str
    device: str
    rows: int
    cols: int
    simd: int
    lanes: int
    memories: tuple[MemoryNeed, ...]
    bram_blocks: int
    bram_available: int
    memory_bits: int
    logic_cells: int
    logic_available: int

    @property
    def fits(self) -> bool:
        return self.bram_blocks <= self.bram_available and self.logic_cells <= self.logic_available

    def to_json(self) -> dict:
        return {**asdict(self), "memories": [asdict(m) for m in self.memories], "fits": self.fits}


def bram_blocks(family: str, width: int, depth: int) -> int:
    """Block RAMs a ``width`` x ``depth`` memory takes in its best configuration."""
    if width <= 0 or depth <= 0:
        return 0
    return min(math.ceil(depth / d) * math.ceil(width / w) for d, w in BRAM_SHAPES[family])


def _memories(plan) -> list[tuple[str, int, int, int]]:
    """(name, width, depth, copies) of each memory the sequencer builds."""
    from binforge.hw.plan import OUT_DATA_WIDTH

    s = plan.simd
    return [
        ("weights", plan.rows * s, int(len(plan.weight_rom)), 1),
        ("thresholds_and_biases", plan.const_width, int(len(plan.const_rom)), 1),
        # Each activation buffer is replicated once per array column.
        ("activations_0", s, plan.buffer_depths[0], plan.cols),
        ("activations_1", s, plan.buffer_depths[1], plan.cols),
        ("logits", OUT_DATA_WIDTH, plan.logits_depth, 1),
    ]


def estimate_fit(plan, board: Board) -> FitEstimate:
    """Estimate the block RAMs and logic ``plan`` (a ``NetworkPlan``) takes on ``board``."""
    family = board.family
    needs = [MemoryNeed(name, w, d, copies, copies * w * d, copies * bram_blocks(family, w, d))
             for name, w, d, copies in _memories(plan)]
    model = LOGIC_MODEL[family]
    lanes = plan.rows * plan.cols * plan.simd
    pes = plan.rows * plan.cols
    logic = lanes * model["per_lane"] + pes * plan.pe_width * model["per_acc_bit"] + model["fixed"]
    res = board.resources
    return FitEstimate(
        board=board.name, device=board.device, rows=plan.rows, cols=plan.cols, simd=plan.simd,
        lanes=lanes, memories=tuple(needs), bram_blocks=sum(m.blocks for m in needs),
        bram_available=res.bram_blocks, memory_bits=sum(m.bits for m in needs),
        logic_cells=math.ceil(logic), logic_available=res.logic_cells,
    )


def check_fit(estimate: FitEstimate, board: Board) -> None:
    """Raise :class:`BinforgeError` with the numbers when ``estimate`` exceeds ``board``."""
    res = board.resources
    kind = "logic cells" if board.family == "ice40" else f"LUT{res.lut_inputs}s"
    shape = f"{estimate.rows}x{estimate.cols}x{estimate.simd}"
    problems = []
    if estimate.bram_blocks > estimate.bram_available:
        detail = ", ".join(f"{m.name} {m.blocks}" for m in estimate.memories if m.blocks)
        problems.append(
            f"its memories need {estimate.bram_blocks} block RAMs ({detail}; "
            f"{estimate.memory_bits / 1024:.1f} Kbit) but the {board.device} has "
            f"{estimate.bram_available} ({estimate.bram_available} x {res.bram_bits // 1024} Kbit)")
    if estimate.logic_cells > estimate.logic_available:
        problems.append(
            f"the {shape} array ({estimate.lanes} lanes) needs about {estimate.logic_cells} {kind} "
            f"but the {board.device} has {estimate.logic_available}")
    if problems:
        raise BinforgeError(
            f"the design does not fit the {board.title}: " + "; and ".join(problems)
            + "; use a smaller network or array (--rows/--cols/--simd in 'binforge hw') "
            "or a larger board")

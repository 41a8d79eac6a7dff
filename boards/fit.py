"""Does a network on an R x C x S array fit a device? Checked before the long build.

Two estimates, both from the hardware plan (:func:`binforge.hw.plan.plan_network`):

- memory: each of the accelerator's memories (weight ROM, threshold/bias ROM, the two
  activation buffers and the im2col image memory, once per array column, the logits,
  the window generator's op table) is cut into the device's block RAMs in the best of
  their width x depth configurations (the activation memories are written a whole word
  at a time; :func:`bram_blocks` also counts memories written in narrower groups, as
  ECP5 and Xilinx block RAMs have one write enable per byte lane);
- logic: the calibration of a bare XNOR-popcount PE array built with the same flow
  (cells or LUTs per lane, per accumulator bit) plus the measured cost of the rest
  of the design (sequencer, pool engine, UART, host link) — see docs/boards.md.

A design whose estimate exceeds the device is refused with the numbers; the
estimates are not the build, which reports what was really used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from binforge.hw.pe import reads_late
from binforge.hw.plan import DEFAULT_RELAY, INPUT_PLANES
from binforge.hw.sequencer import DP16KD_SHAPES
from binforge.hw.spram import image_memory_kind, spram_tiles

from binforge.errors import BinforgeError

from .platforms import Board

__all__ = ["MemoryNeed", "FitEstimate", "LOGIC_MODEL", "LOGIC_MARGIN", "relay_bits", "BRAM_SHAPES", "BRAM_WRITE_ENABLES", "bram_blocks", "gain_logic",
           "estimate_logic", "estimate_fit", "check_fit", "BLOCK_COST", "LOGIC_BIT_COST"]

#: Block RAM (depth, width) configurations per family.
BRAM_SHAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),
    "ecp5": tuple(sorted(DP16KD_SHAPES)),
    "xilinx7": ((512, 72), (1024, 36), (2048, 18), (4096, 9), (8192, 4), (16384, 2), (32768, 1)),
}

#: Write enables per block RAM configuration (width: enables), where a block cannot
#: write each bit on its own: ECP5 DP16KD and Xilinx RAMB36 have one enable per 9-bit
#: byte lane. A memory written with a granularity of g bits stores at most
#: ``enables * min(g, width // enables)`` bits per word of such a block (a buffer
#: written bit by bit: 2 bits per 1024x18 DP16KD, measured in a ULX3S build, RESULTS
#: "The PaBT Fashion-MNIST network on the boards"; the accelerator's memories are now
#: written whole words, RESULTS "Whole-word buffer writes"). iCE40 block RAMs have a
#: per-bit write mask (no entry: every bit is writable on its own).
BRAM_WRITE_ENABLES: dict[str, dict[int, int]] = {
    "ecp5": {36: 4, 18: 2, 9: 1, 4: 1, 2: 1, 1: 1},
    "xilinx7": {72: 8, 36: 4, 18: 2, 9: 1, 4: 1, 2: 1, 1: 1},
}

#: Logic model per family, in LUT4s (iCE40, ECP5) or LUT6s (Xilinx 7), fitted to
#: hierarchical Yosys statistics of whole builds (docs/RESULTS.md, "Boards"):
#: per XNOR-popcount lane (XOR + popcount tree), plus per lane of PEs with 32 lanes or
#: more (iCE40: those trees' registered levels take cells of their own; fitted to
#: 6x1x32 and 4x1x64 builds); per PE accumulator bit (adder, result and term registers);
#: per array column (window address generation, buffer read and pad muxes, each
#: column's copy of the buffers' logic) plus per column lane; per array row (the output
#: stage's threshold compare and its row multiplexers for the affine layer) and per bit
#: of the output stage's column multiplexer (R x (C - 1) x pe_width); a fixed part
#: (sequencer, output stage, pool engine, loader, host link, UART); ``cell_factor``
#: turns LUTs into the device's logic cells (iCE40: flip-flops and carries that get a
#: cell of their own); ``per_hold_bit``: the output stage's copy of the array's results
#: (``plan.hold_results``, R x C x pe_width enabled flip-flops): a cell each on iCE40,
#: none on the LUT count elsewhere (the flip-flops pack beside the LUTs; the drain
#: multiplexer is there either way). The fits were made with the drain's registered
#: copy of a column (R x pe_width flip-flops, in ``per_row``); a plan that reads the PEs
#: directly (``plan.direct_results``) has not got it: ``per_hold_bit`` less per bit.
#:
#: ECP5 was refitted to three synthesised designs after the area changes of
#: docs/RESULTS.md, "Where the LUTs of a whole accelerator go" (the distilled PaBT
#: network at 32x2x32 and 16x4x32, a digits MLP at 8x1x16: -0.6 % to +2.2 % on the
#: three): a PE costs 1.8 LUT4 per lane (the CCU2C tree) plus one per accumulator bit.
#: Refitted again after the carry-chain pass (:mod:`binforge.boards.carry_ends`), whose
#: feed-in and feed-out CCU2Cs the counts above held, to nextpnr's packed TRELLIS_COMB of
#: four designs (the distilled PaBT network at 32x2x32, 32x4x32 and 16x4x32, a VGG-small
#: of width 1.0 at 64x2x64 relay 8; docs/RESULTS.md "Carry chains without their feeds"):
#: ``per_lane`` 1.83, ``per_row`` 81, ``per_column`` 1004 by least squares, the column
#: multiplexer's own term at 0 (a fit with it gives it -0.23); within 0.7 % on the four.
#: iCE40 was refitted to four routed iCEBreaker builds (docs/RESULTS.md, "A conv network
#: on the iCEBreaker": a digits MLP at 8x1x16, the VGG-small x0.125 conv network at
#: 4x1x16, 8x1x8 and 8x1x16; four points, four terms, so exact on them and not yet
#: checked on a fifth): ``per_row`` and, where the first layer reads an im2col image
#: memory, ``im2col`` plus ``im2col_per_simd_bit`` per SIMD bit (the window loader's
#: S-bit plane words and write buffer, the pool engine, the conv layers' wider
#: addressing). Xilinx 7 keeps its earlier fit. ``per_acc_bit_read_late`` replaces
#: ``per_acc_bit`` for PEs whose split Horner accumulator is read a cycle late
#: (:func:`~binforge.hw.pe.reads_late`): on iCE40 its flip-flops pack
#: with their sum LUTs, measured 210 cells fewer on the iCEBreaker conv network at
#: 8x1x16 (8 PEs, 23 bits: 1.14 per bit less); on ECP5 and Xilinx the accumulator is
#: one chain or the flip-flops were free, so the same.
LOGIC_MODEL: dict[str, dict[str, float]] = {
    "ice40": {"per_lane": 5.5, "per_lane_deep": 3.8, "per_acc_bit": 2.0, "per_acc_bit_read_late": 0.86,
              "per_column": 300.0,
              "per_column_lane": 2.7, "fixed": 1675.0, "cell_factor": 1.2, "per_hold_bit": 1.0,
              "per_row": 27.5, "per_mux_bit": 0.0, "im2col": 427.5, "im2col_per_simd_bit": 45.1},
    "ecp5": {"per_lane": 1.83, "per_lane_deep": 0.0, "per_acc_bit": 1.0, "per_acc_bit_read_late": 1.0,
             "per_column": 1004.0,
             "per_column_lane": 2.7, "fixed": 1139.0, "cell_factor": 1.0, "per_hold_bit": 0.0,
             "per_row": 81.0, "per_mux_bit": 0.0, "im2col": 0.0, "im2col_per_simd_bit": 0.0},
    "xilinx7": {"per_lane": 3.0, "per_lane_deep": 0.0, "per_acc_bit": 1.0, "per_acc_bit_read_late": 1.0,
                "per_column": 200.0,
                "per_column_lane": 2.0, "fixed": 1100.0, "cell_factor": 1.0, "per_hold_bit": 0.0,
                "per_row": 0.0, "per_mux_bit": 0.0, "im2col": 0.0, "im2col_per_simd_bit": 0.0},
}


def gain_logic(gain_format, simd: int) -> float:
    """LUTs of one PE's gain: negate, barrel shift or constant-width multiply of the count."""
    count_bits = simd.bit_length()
    term_bits = (simd * gain_format.largest).bit_length() + 1
    if gain_format.kind == "sign":
        return float(term_bits)
    if gain_format.kind == "shift":
        stages = max(1, (gain_format.largest.bit_length() - 1).bit_length())
        return float(term_bits * stages)
    return float(count_bits * gain_format.shape.width)


def estimate_logic(plan, family: str) -> float:
    """Logic cells (iCE40) or LUTs the accelerator and its host link take, by the model."""
    model = LOGIC_MODEL[family]
    lanes = plan.rows * plan.cols * plan.simd
    pes = plan.rows * plan.cols
    per_acc_bit = model["per_acc_bit"]
    if reads_late(plan.simd, plan.pe_width, plan.gain_format):
        per_acc_bit = model["per_acc_bit_read_late"]
    per_pe = plan.pe_width * per_acc_bit + gain_logic(plan.gain_format, plan.simd)
    per_lane = model["per_lane"] + (model["per_lane_deep"] if plan.simd >= 32 else 0.0)
    luts = (lanes * per_lane + pes * per_pe
            + plan.cols * (model["per_column"] + model["per_column_lane"] * plan.simd) + model["fixed"]
            + plan.rows * model["per_row"]
            + plan.rows * (plan.cols - 1) * plan.pe_width * model["per_mux_bit"])
    if plan.image_depth:
        luts += model["im2col"] + model["im2col_per_simd_bit"] * plan.simd
    hold = pes * plan.pe_width * model["per_hold_bit"] if plan.hold_results else 0.0
    if plan.direct_results:
        hold -= plan.rows * plan.pe_width * model["per_hold_bit"]
    # Flip-flops that differ from the designs the model was fitted to (a cell each on
    # iCE40, none on the LUT counts): the array's relay and skew registers at another
    # relay than the default, and the im2col loader's kept lanes in place of its former
    # 8 x S write buffer.
    hold += (relay_bits(plan, plan.relay) - relay_bits(plan, DEFAULT_RELAY)) * model["per_hold_bit"]
    if plan.image_depth:
        kept = sum(min(p + 1, plan.simd) for p in range(INPUT_PLANES))
        hold -= (INPUT_PLANES * plan.simd - kept) * model["per_hold_bit"]
    return luts * model["cell_factor"] + hold


def relay_bits(plan, relay: int) -> int:
    """Flip-flops of the array's input chains at ``relay`` PEs per register: activation and
    control skew and relay registers per column, weight skew and relay registers per row
    (:class:`~binforge.hw.array.XnorPopcountArray`)."""
    rows, cols, s = plan.rows, plan.cols, plan.simd
    ctrl = 2 + plan.gain_format.shape.width
    columns = sum(c // relay + (rows - 1) // relay + 1 for c in range(cols)) * (s + ctrl)
    weights = sum(r // relay + (cols - 1) // relay + 1 for r in range(rows)) * s
    return columns + weights


@dataclass(frozen=True)
class MemoryNeed:
    """One memory of the design (``copies`` identical ones) and the block RAMs it takes.

    ``in_logic``: small enough that synthesis builds it from LUTs and flip-flops
    instead (then ``blocks`` is 0). ``spram``: single-port RAM tiles it takes instead of
    block RAM (the im2col image memory on an iCE40 UltraPlus; then ``blocks`` is 0).
    """

    name: str
    width: int
    depth: int
    copies: int
    bits: int
    blocks: int
    in_logic: bool = False
    spram: int = 0


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
    spram_blocks: int = 0
    spram_available: int = 0
    #: The relay that drops the array's skew registers (one register per chain) and
    #: the logic it saves by estimate; 0 where the plan's relay already does.
    relay_hint: int = 0
    relay_saving: int = 0

    @property
    def fits(self) -> bool:
        """By the estimate itself, with no margin (the explorer's conservative answer);
        :func:`check_fit` lets a build within :data:`LOGIC_MARGIN` go ahead."""
        return (self.bram_blocks <= self.bram_available and self.logic_cells <= self.logic_available
                and self.spram_blocks <= self.spram_available)

    def to_json(self) -> dict:
        return {**asdict(self), "memories": [asdict(m) for m in self.memories], "fits": self.fits}


def bram_blocks(family: str, width: int, depth: int, write_granularity: int | None = None) -> int:
    """Block RAMs a ``width`` x ``depth`` memory takes in its best configuration.

    ``write_granularity``: the memory is written in groups of that many bits, each with
    its own enable (``None``: whole words, or a ROM).
    """
    if width <= 0 or depth <= 0:
        return 0
    enables = BRAM_WRITE_ENABLES.get(family, {})

    def usable(w: int) -> int:
        if write_granularity is None or w not in enables:
            return w
        return enables[w] * min(write_granularity, w // enables[w])

    return min(math.ceil(depth / d) * math.ceil(width / usable(w)) for d, w in BRAM_SHAPES[family])


#: Memories Yosys must put in block RAM (``ram_style`` "block"): the op table.
FORCED_BLOCK = "block"

#: Memory mapping costs, as Yosys's memory_libmap weighs them (fitted to where real
#: builds put each memory): a block RAM per family, and a bit of memory built from soft
#: logic (ROM; RAM: a flip-flop per bit on iCE40, distributed LUT RAM elsewhere). A
#: memory goes where it costs less.
BLOCK_COST = {"ice40": 64.0, "ecp5": 128.0, "xilinx7": 128.0}
LOGIC_BIT_COST = {"rom": 1.0 / 8, "ram": {"ice40": 1.0, "ecp5": 1.0 / 16, "xilinx7": 1.0 / 32}}
#: Bits an ECP5 LUT RAM (TRELLIS_DPR16X4) writes under one enable.
LUT_RAM_WIDTH = 4
#: LUTs per bit of a memory built from soft logic (a 4-input LUT holds 16 ROM bits).
LOGIC_BITS_PER_LUT = 16


def _op_table_width(plan) -> int:
    """Bits of one op-table entry: act plane offset, weight plane offset, gain code."""
    from amaranth.hdl import Shape

    offsets = [(off, woff) for p in plan.layers if p.kind == "compute"
               for off, woff in zip(p.plane_offsets, p.weight_offsets, strict=True)]
    ow = max(1, max(off for off, _ in offsets).bit_length())
    ww = max(1, max(woff for _, woff in offsets).bit_length())
    return ow + ww + Shape.cast(plan.gain_format.shape).width


def _memories(plan) -> list[tuple[str, str, int, int, int, int | None]]:
    """(name, rom/ram/block, width, depth, copies, write granularity) of each memory the
    sequencer builds."""
    from binforge.hw.plan import OUT_DATA_WIDTH

    s = plan.simd
    n_ops = sum(len(p.plane_offsets) for p in plan.layers if p.kind == "compute")
    memories = [
        ("weights", "rom", plan.rows * s, int(len(plan.weight_rom)), 1, None),
        ("thresholds_and_biases", "rom", plan.const_width, int(len(plan.const_rom)), 1, None),
        ("affine_constants", "rom", plan.affine_width, max(1, len(plan.affine_rom)), 1, None),
        # Each activation buffer is replicated once per array column and written a whole
        # S-bit word at a time (the sequencer merges partial writes: hw/sequencer.py).
        ("activations_0", "ram", s, plan.buffer_depths[0], plan.cols, None),
        ("activations_1", "ram", s, plan.buffer_depths[1], plan.cols, None),
    ]
    if plan.image_depth:
        # The im2col pixel tensor: a memory of its own per column, like the buffers.
        memories.append(("image", "ram", s, plan.image_depth, plan.cols, None))
        # ... and the loader's pixel memory, a byte per pixel, from which it builds them.
        memories.append(("pixels", "ram", 8, plan.pixel_depth, 1, None))
    memories += [
        ("logits", "ram", OUT_DATA_WIDTH, plan.logits_depth, 1, None),
        ("op_table", FORCED_BLOCK, _op_table_width(plan), n_ops, 1, None),
    ]
    return memories


def _memory_need(family: str, name: str, kind: str, width: int, depth: int, copies: int,
                 write_granularity: int | None) -> MemoryNeed:
    blocks = bram_blocks(family, width, depth, write_granularity)
    if kind == FORCED_BLOCK:
        in_logic = False
    else:
        bit_cost = LOGIC_BIT_COST["rom"] if kind == "rom" else LOGIC_BIT_COST["ram"][family]
        if kind == "ram" and family == "ecp5" and write_granularity is not None:
            # ECP5 LUT RAM (TRELLIS_DPR16X4) writes 4 bits with one enable.
            bit_cost *= LUT_RAM_WIDTH / min(LUT_RAM_WIDTH, write_granularity)
        in_logic = width * depth * bit_cost <= blocks * BLOCK_COST[family]
    return MemoryNeed(name, width, depth, copies, copies * width * depth,
                      0 if in_logic else copies * blocks, in_logic)


def _memory_logic(need: MemoryNeed, family: str) -> float:
    """LUTs (or iCE40 cells) a memory built from soft logic takes."""
    if not need.in_logic:
        return 0.0
    if family == "ice40" and (need.name.startswith("activations") or need.name in ("image", "logits")):
        return float(need.bits)  # one flip-flop (a cell) per bit
    return need.bits / LOGIC_BITS_PER_LUT


def estimate_fit(plan, board: Board) -> FitEstimate:
    """Estimate the block RAMs and logic ``plan`` (a ``NetworkPlan``) takes on ``board``."""
    family = board.family
    needs = [_memory_need(family, *memory) for memory in _memories(plan)]
    # The accelerator's image memory goes where hw/spram.py puts it on this device.
    if plan.image_depth and image_memory_kind("auto", cols=plan.cols, simd=plan.simd, depth=plan.image_depth,
                                              device=board.platform_class.device) == "spram":
        needs = [replace(m, blocks=0, in_logic=False, spram=m.copies * spram_tiles(m.width, m.depth))
                 if m.name == "image" else m for m in needs]
    lanes = plan.rows * plan.cols * plan.simd
    logic = estimate_logic(plan, family) + sum(_memory_logic(m, family) for m in needs)
    widest = max(plan.rows, plan.cols)
    saving = math.floor((relay_bits(plan, plan.relay) - relay_bits(plan, widest))
                        * LOGIC_MODEL[family]["per_hold_bit"])
    res = board.resources
    return FitEstimate(
        board=board.name, device=board.device, rows=plan.rows, cols=plan.cols, simd=plan.simd,
        lanes=lanes, memories=tuple(needs), bram_blocks=sum(m.blocks for m in needs),
        bram_available=res.bram_blocks, memory_bits=sum(m.bits for m in needs),
        logic_cells=math.ceil(logic), logic_available=res.logic_cells,
        spram_blocks=sum(m.spram for m in needs), spram_available=res.spram_blocks,
        relay_hint=widest if saving > 0 else 0, relay_saving=max(saving, 0),
    )


#: How far the logic estimate may exceed the device before a build is refused: the
#: model's error on routed builds (iCE40: 1.4-1.6 % above the packed count on the
#: iCEBreaker's conv network at 8x1x8 and 8x1x16, docs/RESULTS.md). A design within it
#: is built and the place-and-route's own count decides (refused after synthesis,
#: with the numbers, when over).
LOGIC_MARGIN = 0.02


def relay_advice(estimate: FitEstimate, kind: str = "logic cells") -> str:
    """``" (--relay R in 'binforge hw' ...: about N logic cells fewer)"`` where a relay
    spanning the array would save logic, else ``""``."""
    if not estimate.relay_saving:
        return ""
    return (f" (--relay {estimate.relay_hint} in 'binforge hw' drops the array's skew "
            f"registers: about {estimate.relay_saving} {kind} fewer)")


def check_fit(estimate: FitEstimate, board: Board) -> None:
    """Raise :class:`BinforgeError` with the numbers when ``estimate`` exceeds ``board``
    (its logic by more than :data:`LOGIC_MARGIN`)."""
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
    if estimate.logic_cells > estimate.logic_available * (1 + LOGIC_MARGIN):
        problems.append(
            f"the {shape} array ({estimate.lanes} lanes) needs about {estimate.logic_cells} {kind} "
            f"but the {board.device} has {estimate.logic_available}{relay_advice(estimate, kind)}")
    if problems:
        raise BinforgeError(
            f"the design does not fit the {board.title}: " + "; and ".join(problems)
            + "; use a smaller network or array (--rows/--cols/--simd in 'binforge hw') "
            "or a larger board")

"""How a network IR maps onto an R x C x S array: memory layouts, ROM contents, cycle model.

Everything here is plain Python on the IR; the gateware reads its constants from a
:class:`NetworkPlan` and :func:`analytic_cycles` predicts the hardware's cycle counter.

Layouts (``S = simd``):

- An activation tensor ``(planes, Ch, H, W)`` is a bit string per plane, position-major,
  channel fastest: bit ``pos * stride + ch`` of plane ``n``, in words of S bits (lane =
  bit mod S), each plane starting on a word. *Padded* layout: ``stride = cw * S`` with
  ``cw = ceil(Ch / S)``, so a position's channels start on a word (what a k x k window
  needs). *Dense* layout: ``stride = Ch``, no gaps, for a tensor read whole by a layer
  whose kernel covers it (linear layers, the full-image conv of an MLP): that layer then
  runs ``ceil(H*W*Ch / S)`` beats per op instead of ``H*W*cw``. *im2col*: the pixel
  tensor of a narrow first conv stored as that layer's windows (:func:`tensor_layouts`),
  in an image memory of its own. Unused lanes hold 0. Layer ``i``'s input lives in
  buffer ``i % 2``.
- A compute layer runs groups of R output channels x C output positions; a group is
  ``beats = ops * kh * kw * cw_in`` cycles, in the order op, ky, kx, channel word
  (a layer on a dense input is one "tap" of ``cw_in`` words).
- Weights: one ROM word of R*S bits per (channel group, weight plane, tap, word); an op
  reads its weight plane's words, so ops sharing a weight plane share ROM.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from binforge.compiler.ir import (
    INPUT_PLANES,
    ConvLayer,
    LinearLayer,
    MaxPoolLayer,
    Network,
    Op,
    signed_width,
)

from .pe import GainFormat, popcount_depth

__all__ = ["GAIN_MODES", "DEFAULT_GAIN_MODE", "signed_digits", "expand_gains", "horner_steps",
           "ComputePlan", "PoolPlan", "NetworkPlan", "TensorLayout", "plan_network", "tensor_layouts",
           "analytic_cycles", "skew_advice",
           "OUT_DATA_WIDTH", "DEFAULT_RELAY", "LAYER_LOAD_CYCLES", "OP_REGISTER_CYCLES", "READ_REGISTER_CYCLES",
           "DRAIN_TAIL_CYCLES", "ARGMAX_TAIL_CYCLES", "POOL_TAIL_CYCLES", "RMW_DRAIN_FACTOR",
           "partial_word_writes"]

#: Width of the result stream's data: the class index and every logit fit in it.
OUT_DATA_WIDTH = 32
#: PEs driven by one relay register in the array.
DEFAULT_RELAY = 4
#: How PEs apply gains that are not powers of two (see :func:`plan_network`).
GAIN_MODES = ("shift", "multiply")
DEFAULT_GAIN_MODE = "shift"

# Fixed pipeline costs of the sequencer, in cycles (see docs/hardware.md).
#: Loading one layer's descriptor.
LAYER_LOAD_CYCLES = 1
#: The window generator's outputs pass two register stages, not one: its op table's
#: entry is registered (a block RAM's clock-to-output ends in a flip-flop) before the
#: address adders that add the entry's plane and weight offsets.
OP_REGISTER_CYCLES = 1
#: The activation memories' read data is registered before the source/pad select in front
#: of the array (so a block RAM's clock-to-output ends in a flip-flop, not in logic); the
#: weight ROM is read a cycle later to match. Every beat reaches the array this much later.
READ_REGISTER_CYCLES = 1
#: From the last group's done to the next layer: drain start (1), then after the last read:
#: result/constant read, compare halves, compare/logit, lane placement, write (4).
DRAIN_TAIL_CYCLES = 5
#: The affine (last) layer only: its running argmax decides one cycle after its compare
#: (the compare of each logit is split over two cycles), so the class is ready this many
#: cycles after the last logit's write.
ARGMAX_TAIL_CYCLES = 1
#: Pool engine: address register + read + read data register + write register.
POOL_TAIL_CYCLES = 4
#: A layer whose activation writes cover part of a word (``ComputePlan.rmw``): the
#: memories are written whole words only, so such a write reads its word and writes it
#: merged two cycles later (from the read register); the output stage then drains a
#: word every third cycle (its drain cycles, and the guard they set, are tripled).
RMW_DRAIN_FACTOR = 3


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


def check_geometry(rows, cols, simd):
    """Raise ValueError with the exact message for bad array parameters."""
    _check_positive("rows", rows)
    _check_positive("cols", cols)
    if not isinstance(simd, int) or isinstance(simd, bool) or simd < 1 or simd & (simd - 1):
        raise ValueError(f"simd must be a positive power of two, not {simd!r}")


@dataclass(frozen=True, eq=False)
class ComputePlan:
    """One conv or linear layer on the array."""

    index: int
    layer: ConvLayer | LinearLayer
    kh: int
    kw: int
    stride: int
    padding: int
    pad_bit: int
    in_c: int
    in_h: int
    in_w: int
    out_c: int
    out_h: int
    out_w: int
    out_planes: int
    cw_in: int
    in_dense: bool
    out_dense: bool
    out_pos_stride: int
    out_plane_words: int
    beats: int
    channel_groups: int
    position_groups: int
    last_cols: int
    weight_base: int
    const_base: int
    const_entries: int
    drain_words: int
    drain_full: int
    drain_last: int
    guard_full: int
    guard_last: int
    plane_offsets: tuple[int, ...]
    weight_offsets: tuple[int, ...]
    steps: tuple[tuple[int, int], ...] | None
    e_last: int
    weight_group_step: int
    gains: tuple[int, ...]
    weight_words: np.ndarray = field(repr=False)
    const_rows: np.ndarray = field(repr=False)
    affine: bool = False
    #: Some of the layer's activation writes cover only part of a word (fewer than S
    #: channels of a position per write: R < S, R not a multiple of S, a dense output):
    #: the sequencer merges each into the word it reads back first (read-modify-write),
    #: so the output stage drains one word every third cycle (:data:`RMW_DRAIN_FACTOR`).
    rmw: bool = False

    kind = "compute"

    @property
    def ops(self) -> int:
        return len(self.gains)

    @property
    def positions(self) -> int:
        return self.out_h * self.out_w

    @property
    def groups(self) -> int:
        return self.channel_groups * self.position_groups

    @property
    def fan_in(self) -> int:
        return self.layer.fan_in


@dataclass(frozen=True, eq=False)
class PoolPlan:
    """One max-pool layer, run by the pool engine."""

    index: int
    layer: MaxPoolLayer
    kernel: int
    stride: int
    planes: int
    in_h: int
    in_w: int
    out_h: int
    out_w: int
    cw: int

    kind = "pool"

    @property
    def out_words(self) -> int:
        return self.planes * self.out_h * self.out_w * self.cw


@dataclass(frozen=True, eq=False)
class NetworkPlan:
    """A whole network on an R x C x S array: every constant the gateware needs."""

    net: Network
    rows: int
    cols: int
    simd: int
    relay: int
    layers: tuple[ComputePlan | PoolPlan, ...]
    gain_format: GainFormat
    pe_width: int
    const_value_width: int
    weight_rom: np.ndarray = field(repr=False)  # object array of python ints (R*S bits each)
    const_rom: np.ndarray = field(repr=False)   # object array of python ints
    #: The affine layer's constants, a word per output channel (its (value, flip, valid)
    #: field): the output stage reads the row it drains, no R:1 multiplexer.
    affine_rom: tuple[int, ...] = field(default=(), repr=False)
    buffer_depths: tuple[int, int] = (1, 1)
    logits_depth: int = 1
    input_layout: TensorLayout | None = None
    image_init: tuple[int, ...] = ()
    #: The affine layer's P is its sum / 2**affine_shift (Horner accumulation).
    affine_shift: int = 0
    #: The output stage copies the array's results at every group's ``done`` and drains
    #: the copy, so the next group's sums may land in the PEs during the drain: a group's
    #: guard needs ``max(drain, max_skew) + 1`` beats, not ``drain + max_skew + 1``. Set
    #: where that shortens some layer's guard (it costs R x C x pe_width flip-flops).
    hold_results: bool = False
    #: How the gains were planned (``plan_network``'s ``gain_mode``): rebuilding the
    #: accelerator from the plan (a board build) needs it.
    gain_mode: str = DEFAULT_GAIN_MODE
    #: One column, no hold: the output stage compares the PEs' results themselves, a
    #: cycle after reading their position, instead of a registered copy (R x pe_width
    #: flip-flops fewer). Set only where no layer's guard grows for it.
    direct_results: bool = False

    @property
    def image_depth(self) -> int:
        """Words of the separate image memory (im2col pixel tensor), 0 if none."""
        return len(self.image_init)

    @property
    def const_width(self) -> int:
        return self.rows * (self.const_value_width + 2)

    @property
    def affine_width(self) -> int:
        """Bits of an affine constant word (one (value, flip, valid) field)."""
        return self.const_value_width + 2

    @property
    def max_skew(self) -> int:
        return (self.rows - 1) // self.relay + (self.cols - 1) // self.relay

    @property
    def array_latency(self) -> int:
        return 1 + self.max_skew + popcount_depth(self.simd) + 2

    @property
    def pixel_depth(self) -> int:
        """Bytes of the im2col loader's pixel memory (the whole image), 0 if none."""
        return self.net.input_shape.size if self.image_depth else 0

    def memory_bits(self) -> dict[str, int]:
        """On-chip memory by purpose, in bits."""
        s = self.simd
        return {
            "weights": int(len(self.weight_rom)) * self.rows * s,
            "thresholds_and_biases": (int(len(self.const_rom)) * self.const_width
                                      + len(self.affine_rom) * self.affine_width),
            "activations": self.cols * (self.buffer_depths[0] + self.buffer_depths[1]
                                        + self.image_depth) * s,
            "logits": self.logits_depth * OUT_DATA_WIDTH,
            "pixels": self.pixel_depth * 8,
        }


def _reads_whole_input(layer) -> bool:
    """A compute layer whose single window is its whole input (kernel covers it, no padding)."""
    if layer.kind == "linear":
        return True
    if layer.kind == "conv":
        return (layer.padding == 0 and layer.kernel == layer.in_shape.height
                and layer.kernel == layer.in_shape.width)
    return False


@dataclass(frozen=True)
class Im2col:
    """The pixel tensor stored as the first conv layer's windows (see :func:`tensor_layouts`)."""

    kernel: int
    stride: int
    padding: int
    pad_bit: int
    in_c: int
    in_h: int
    in_w: int
    out_h: int
    out_w: int


@dataclass(frozen=True)
class TensorLayout:
    """Where an activation tensor's bits are: see the module docstring."""

    planes: int
    channels: int
    positions: int
    dense: bool
    simd: int
    im2col: Im2col | None = None

    @property
    def pos_stride(self) -> int:
        """Bits from one position to the next."""
        return self.channels if self.dense else math.ceil(self.channels / self.simd) * self.simd

    @property
    def plane_words(self) -> int:
        return math.ceil(self.positions * self.pos_stride / self.simd)

    @property
    def words(self) -> int:
        return self.planes * self.plane_words


def tensor_layouts(net: Network, simd: int) -> list[TensorLayout]:
    """The layout of each layer's input tensor (index ``i``: the input of layer ``i``).

    Dense when the consumer reads it whole and the producer is the image loader or a
    compute layer (the pool engine writes whole words of the padded layout only).
    """
    layouts = []
    shape, planes = net.input_shape, INPUT_PLANES
    for i, layer in enumerate(net.layers):
        producer_ok = i == 0 or net.layers[i - 1].kind != "maxpool"
        dense = producer_ok and _reads_whole_input(layer)
        if i == 0 and not dense and _im2col_pays(layer, simd):
            out = layer.out_shape
            k = layer.kernel
            info = Im2col(kernel=k, stride=layer.stride, padding=layer.padding, pad_bit=layer.pad_bit,
                          in_c=shape.channels, in_h=shape.height, in_w=shape.width,
                          out_h=out.height, out_w=out.width)
            layouts.append(TensorLayout(planes, shape.channels * k * k, out.height * out.width, False,
                                        simd, im2col=info))
        else:
            layouts.append(TensorLayout(planes, shape.channels, shape.height * shape.width, dense, simd))
        shape, planes = layer.out_shape, layer.out_planes
    return layouts


def _im2col_pays(layer, simd: int) -> bool:
    """The pixel layer is a conv whose windows pack into fewer words than its taps take
    (fewer channels than S), with a power-of-two stride (the loader's address arithmetic)."""
    if layer.kind != "conv" or layer.stride & (layer.stride - 1):
        return False
    k, ci = layer.kernel, layer.in_shape.channels
    return k * k * math.ceil(ci / simd) > math.ceil(k * k * ci / simd)


def im2col_init(layout: TensorLayout) -> list[int]:
    """The image memory's initial words: pad bits where a window reaches outside the image."""
    info, s = layout.im2col, layout.simd
    words = [0] * layout.words
    if not info.pad_bit:
        return words
    k = info.kernel
    for n in range(layout.planes):
        for yo in range(info.out_h):
            for xo in range(info.out_w):
                for ky in range(k):
                    for kx in range(k):
                        y, x = yo * info.stride - info.padding + ky, xo * info.stride - info.padding + kx
                        if 0 <= y < info.in_h and 0 <= x < info.in_w:
                            continue
                        for c in range(info.in_c):
                            b = (n * layout.plane_words * s + (yo * info.out_w + xo) * layout.pos_stride
                                 + (ky * k + kx) * info.in_c + c)
                            words[b // s] |= 1 << (b % s)
    return words


def signed_digits(gain: int) -> list[int]:
    """``gain`` as a sum of signed powers of two with the fewest terms (non-adjacent form)."""
    digits, value, k = [], int(gain), 0
    while value:
        if value & 1:
            d = 2 - (value & 3)  # +1 or -1
            digits.append(d << k)
            value -= d
        value >>= 1
        k += 1
    return digits


def expand_gains(ops, gain_mode: str):
    """The ops the array runs: with ``gain_mode="shift"`` an op whose gain is not a power of
    two becomes one op per signed digit of its gain (same planes), so the PEs only shift."""
    if gain_mode == "multiply":
        return tuple(ops)
    expanded = [Op(op.weight_plane, op.act_plane, d) for op in ops for d in signed_digits(op.gain)]
    # Largest power of two first: the PEs accumulate Horner-style (see GainFormat.horner).
    return tuple(sorted(expanded, key=lambda op: -abs(op.gain)))


def horner_steps(ops) -> tuple[tuple[tuple[int, int], ...], int]:
    """For ops with power-of-two gains sorted by decreasing magnitude: per op (negative,
    accumulator doublings before it), and the exponent of the last (smallest) gain."""
    exps = [abs(op.gain).bit_length() - 1 for op in ops]
    steps = tuple((int(op.gain < 0), 0 if k == 0 else exps[k - 1] - exps[k]) for k, op in enumerate(ops))
    return steps, exps[-1]


def partial_word_writes(rows: int, simd: int, out_c: int, positions: int, pos_stride: int,
                        dense: bool, drain_words: int) -> bool:
    """Whether the output stage writes part of a word anywhere in a layer's output.

    Mirrors the output stage's lane enables: a write of channel group ``cg`` at a
    position covers lanes ``start + r`` (its valid rows), and the layer's last channel
    group also clears the lanes above its channels (padded layout: each position's last
    word; dense layout: the plane's last word). Planes start on a word, so they all write
    the same lanes.
    """
    full = (1 << simd) - 1
    groups = math.ceil(out_c / rows)
    for cg in range(groups):
        valid = min(rows, out_c - cg * rows)
        seen = set()
        for pos in range(positions):
            start = (pos * pos_stride + cg * rows) % simd
            pos_last = pos == positions - 1
            key = (start, pos_last)
            if key in seen:
                continue
            seen.add(key)
            last_word = (start + valid - 1) // simd
            for word in range(drain_words):
                offset = start - word * simd
                fill = cg == groups - 1 and (not dense or pos_last) and word == last_word
                lo = max(0, offset)
                hi = simd if fill else min(simd, offset + valid)
                mask = ((1 << hi) - (1 << lo)) if hi > lo else 0
                if mask not in (0, full):
                    return True
    return False


def _guard(drain: int, beats: int, max_skew: int, hold_results: bool, late: int = 0) -> int:
    """Cycles the window generator waits after a group before the next group's first beat.

    The next group's ``last`` beat must come ``n >= need`` cycles after this group's. The
    PEs' result registers take the next sums from ``n - max_skew`` cycles after ``done``
    (the least skewed PE first), so a drain reading the PEs (``drain`` cycles from the
    cycle after ``done``) needs ``n >= drain + max_skew + 1``. With the output stage's
    result hold (``hold_results``) the drain reads a copy taken at ``done``: the copy
    needs ``n >= max_skew + 1`` and the drain, over before the next ``done``,
    ``n >= drain + 1``. ``late``: the drain uses a PE's result that many cycles after
    reading its position (the output stage without its copy of the column's results:
    ``NetworkPlan.direct_results``), so the results must hold that much longer.
    """
    need = (max(drain, max_skew) if hold_results else drain + max_skew + late) + 1
    return max(0, need - beats)


def _compute_plan(index, layer, rows, cols, simd, max_skew, weight_base, const_base,
                  in_layout: TensorLayout, out_layout: TensorLayout | None, gain_mode: str,
                  hold_results: bool = True):
    in_c, in_h, in_w = layer.in_shape.as_tuple()
    if layer.kind == "conv":
        kh = kw = layer.kernel
        stride, padding, pad_bit = layer.stride, layer.padding, layer.pad_bit
        weights = layer.weights  # (P, Co, Ci, k, k)
    else:
        kh, kw, stride, padding, pad_bit = in_h, in_w, 1, 0, 0
        weights = layer.weights.reshape(layer.weight_planes, layer.out_features, in_c, in_h, in_w)
    out = layer.out_shape
    out_c, out_h, out_w = out.as_tuple()
    affine = layer.output.kind == "affine"
    out_planes = 0 if affine else layer.out_planes
    ops = expand_gains(layer.ops, gain_mode)
    used = sorted({op.weight_plane for op in ops})
    steps, e_last = horner_steps(ops) if gain_mode == "shift" else (None, 0)
    cg_count = math.ceil(out_c / rows)
    positions = out_h * out_w
    pg_count = math.ceil(positions / cols)
    last_cols = positions - (pg_count - 1) * cols

    # Weight ROM words: channel group, used weight plane, tap, word; R*S bits each.
    weights = weights.transpose(0, 1, 3, 4, 2)  # (P, Co, kh, kw, Ci)
    if in_layout.dense or in_layout.im2col:
        # One "tap" per window: the window's bits are contiguous (dense: the whole input;
        # im2col: the windows were laid out by the image loader).
        cw_in = math.ceil(kh * kw * in_c / simd)
        flat = weights.reshape(weights.shape[0], out_c, 1, 1, kh * kw * in_c)
        kh = kw = 1
        geometry = dict(in_h=out_h, in_w=out_w, stride=1, padding=0, pad_bit=0)
        padded = np.zeros((flat.shape[0], cg_count * rows, 1, 1, cw_in * simd), dtype=np.uint8)
        padded[:, :out_c, :, :, :flat.shape[-1]] = flat
    else:
        cw_in = math.ceil(in_c / simd)
        geometry = dict(in_h=in_h, in_w=in_w, stride=stride, padding=padding, pad_bit=pad_bit)
        padded = np.zeros((weights.shape[0], cg_count * rows, kh, kw, cw_in * simd), dtype=np.uint8)
        padded[:, :out_c, :, :, :in_c] = weights
    taps_words = kh * kw * cw_in
    beats = len(ops) * taps_words
    lane_values = np.array([1 << i for i in range(simd)], dtype=object)
    words = []
    for cg in range(cg_count):
        for m in used:
            block = padded[m, cg * rows:(cg + 1) * rows].reshape(rows, taps_words, simd)
            lanes = block.astype(object) @ lane_values  # (R, taps_words) python ints
            for t in range(taps_words):
                word = 0
                for r in range(rows):
                    word |= int(lanes[r, t]) << (r * simd)
                words.append(word)

    # Per-channel constants. acc = bias + K*sum(gains) - 2*P, P = the PE's result.
    k = layer.fan_in
    offset = np.asarray(layer.bias, dtype=np.int64) + k * sum(op.gain for op in ops)
    rows_out = []  # one entry per (channel group[, plane]): R x (value, flip, valid)
    if affine:
        for cg in range(cg_count):
            entry = []
            for r in range(rows):
                ch = cg * rows + r
                entry.append((int(offset[ch]), 0, 1) if ch < out_c else (0, 0, 0))
            rows_out.append(entry)
    else:
        t = np.asarray(layer.output.thresholds, dtype=np.int64)
        flip = np.asarray(layer.output.flip, dtype=np.int64)
        for cg in range(cg_count):
            for n in range(out_planes):
                entry = []
                for r in range(rows):
                    ch = cg * rows + r
                    if ch < out_c:
                        # bit = (acc >= T) ^ flip  <=>  (P <= floor((offset - T) / 2)) ^ flip
                        # (with Horner accumulation P holds the sum / 2**e_last)
                        entry.append((int((offset[ch] - t[n, ch]) // 2) >> e_last, int(flip[ch]), 1))
                    else:
                        entry.append((0, 0, 0))
                rows_out.append(entry)

    # Drain cycles per group: threshold layers write planes x columns x words (the words
    # a column's R bits touch, at most); the affine layer writes one logit per column x row.
    rmw = False
    if affine:
        drain_words = 0
        drain_full = cols * rows
        drain_last = last_cols * rows
        out_pos_stride = out_plane_words = 0
        out_dense = False
    else:
        out_pos_stride, out_plane_words = out_layout.pos_stride, out_layout.plane_words
        out_dense = out_layout.dense
        drain_words = 1
        for cg in range(cg_count):
            valid = min(rows, out_c - cg * rows)
            starts = {(pos * out_pos_stride + cg * rows) % simd for pos in range(positions)}
            for start in starts:
                drain_words = max(drain_words, (start + valid - 1) // simd + 1)
        rmw = partial_word_writes(rows, simd, out_c, positions, out_pos_stride, out_dense, drain_words)
        factor = RMW_DRAIN_FACTOR if rmw else 1
        drain_full = out_planes * drain_words * cols * factor
        drain_last = out_planes * drain_words * last_cols * factor
    guard_full = _guard(drain_full, beats, max_skew, hold_results)
    guard_last = _guard(drain_last, beats, max_skew, hold_results)
    plane_offsets = tuple(op.act_plane * in_layout.plane_words for op in ops)
    weight_offsets = tuple(used.index(op.weight_plane) * taps_words for op in ops)
    return ComputePlan(
        index=index, layer=layer, kh=kh, kw=kw, in_c=in_c, out_c=out_c, out_h=out_h, out_w=out_w,
        out_planes=out_planes, cw_in=cw_in, in_dense=in_layout.dense, out_dense=out_dense,
        out_pos_stride=out_pos_stride, out_plane_words=out_plane_words, beats=beats,
        channel_groups=cg_count, position_groups=pg_count, last_cols=last_cols,
        weight_base=weight_base, const_base=const_base, const_entries=len(rows_out),
        drain_words=drain_words, drain_full=drain_full, drain_last=drain_last,
        guard_full=guard_full, guard_last=guard_last, plane_offsets=plane_offsets,
        weight_offsets=weight_offsets, weight_group_step=len(used) * taps_words,
        steps=steps, e_last=e_last,
        gains=tuple(op.gain for op in ops), weight_words=np.array(words, dtype=object),
        const_rows=np.array(rows_out, dtype=object).reshape(len(rows_out), rows, 3), affine=affine, rmw=rmw,
        **geometry,
    )


def plan_network(net: Network, rows: int, cols: int, simd: int, relay: int = DEFAULT_RELAY,
                 gain_mode: str = DEFAULT_GAIN_MODE) -> NetworkPlan:
    """Map ``net`` onto an R x C x S array; raise ValueError for what cannot be mapped.

    ``gain_mode``: ``"shift"`` (default) runs an op with a gain that is not a power of two
    once per signed digit of the gain, so PEs need shifters only; ``"multiply"`` gives the
    PEs a multiplier and runs every op once.
    """
    check_geometry(rows, cols, simd)
    if gain_mode not in GAIN_MODES:
        raise ValueError(f"gain_mode must be one of {', '.join(GAIN_MODES)}, not {gain_mode!r}")
    _check_positive("relay", relay)
    if not isinstance(net, Network):
        raise TypeError(f"net must be a binforge.compiler.ir.Network, not {type(net).__name__}")
    max_skew = (rows - 1) // relay + (cols - 1) // relay
    layouts = tensor_layouts(net, simd)
    layers: list = []
    # Threshold layers' constants go to the constants ROM, the affine layer's to a ROM of
    # its own (``NetworkPlan.affine_rom``, a word per row): each layer's base is in its ROM.
    weight_base = const_base = affine_base = 0
    gains: set[int] = set()
    for i, layer in enumerate(net.layers):
        if layer.kind == "maxpool":
            c, h, w = layer.in_shape.as_tuple()
            out = layer.out_shape
            layers.append(PoolPlan(index=i, layer=layer, kernel=layer.kernel, stride=layer.stride,
                                   planes=layer.in_planes, in_h=h, in_w=w, out_h=out.height,
                                   out_w=out.width, cw=math.ceil(c / simd)))
            continue
        out_layout = layouts[i + 1] if i + 1 < len(layouts) else None
        affine = layer.output.kind == "affine"
        plan = _compute_plan(i, layer, rows, cols, simd, max_skew, weight_base,
                             affine_base if affine else const_base, layouts[i], out_layout, gain_mode)
        layers.append(plan)
        weight_base += len(plan.weight_words)
        if affine:
            affine_base += plan.const_entries * rows
        else:
            const_base += plan.const_entries
        gains.update(plan.gains)
    # The output stage's result hold costs R x C x pe_width flip-flops: it is built only
    # where it shortens some layer's guard (many columns, short groups).
    hold_results = any(_guard(p.drain_full, p.beats, max_skew, False)
                       > _guard(p.drain_full, p.beats, max_skew, True)
                       or _guard(p.drain_last, p.beats, max_skew, False)
                       > _guard(p.drain_last, p.beats, max_skew, True)
                       for p in layers if p.kind == "compute")
    if not hold_results:
        layers = [dataclasses.replace(p, guard_full=_guard(p.drain_full, p.beats, max_skew, False),
                                      guard_last=_guard(p.drain_last, p.beats, max_skew, False))
                  if p.kind == "compute" else p for p in layers]
    # With one column and no hold, the output stage's copy of the column's results only
    # delays them a cycle (to meet the constants ROM's read); it reads the PEs directly
    # instead where their results hold a cycle longer at no cost: no layer's guard grows.
    direct_results = cols == 1 and not hold_results and all(
        _guard(d, p.beats, max_skew, False, late=1) == _guard(d, p.beats, max_skew, False)
        for p in layers if p.kind == "compute" for d in (p.drain_full, p.drain_last))
    last = layers[-1]
    if last.layer.acc_width > OUT_DATA_WIDTH:
        raise ValueError(f"the last layer's accumulators are {last.layer.acc_width} bits wide, "
                         f"wider than the {OUT_DATA_WIDTH}-bit result stream")
    if gain_mode == "shift":
        max_step = max(step for p in layers if p.kind == "compute" for _, step in p.steps)
        gain_format = GainFormat.horner(max_step) if max_step else GainFormat([1, -1])
    else:
        gain_format = GainFormat(gains)
    # The PE's result range: every op's mismatch count is in [0, K] (also per partial sum).
    computes = [p for p in layers if p.kind == "compute"]
    lo = min(sum(g >> p.e_last for g in p.gains if g < 0) * p.fan_in for p in computes)
    hi = max(sum(g >> p.e_last for g in p.gains if g > 0) * p.fan_in for p in computes)
    pe_width = max(signed_width(lo, hi), (simd * gain_format.largest).bit_length() + 1)
    values = [int(v) for p in computes for v in p.const_rows[:, :, 0].ravel()]
    const_value_width = max(signed_width(min(values), max(values)), pe_width)
    # Buffers: layer i reads buffer i % 2; its input tensor lives there. An im2col pixel
    # tensor has a memory of its own (its pad bits are initial contents, never overwritten).
    depths = [1, 1]
    for i, layout in enumerate(layouts):
        if layout.im2col is None:
            depths[i % 2] = max(depths[i % 2], layout.words)
    weight_rom = np.concatenate([p.weight_words for p in computes])
    cvw = const_value_width

    def field_of(value, flip, valid) -> int:
        return (int(value) & ((1 << cvw) - 1)) | (int(flip) << cvw) | (int(valid) << (cvw + 1))

    # Threshold layers: a word of R fields per (channel group, plane), in the constants
    # ROM. Affine layers: a word per (channel group, row) in a ROM of their own (the
    # descriptor's group step is R there).
    const_words, affine_words = [], []
    for p in computes:
        if p.affine:
            affine_words += [field_of(*field_) for entry in p.const_rows for field_ in entry]
            continue
        for entry in p.const_rows:
            word = 0
            for r, field_ in enumerate(entry):
                word |= field_of(*field_) << (r * (cvw + 2))
            const_words.append(word)
    return NetworkPlan(
        net=net, rows=rows, cols=cols, simd=simd, relay=relay, layers=tuple(layers),
        gain_format=gain_format, pe_width=pe_width, const_value_width=const_value_width,
        weight_rom=weight_rom, const_rom=np.array(const_words, dtype=object),
        affine_rom=tuple(affine_words), buffer_depths=(depths[0], depths[1]), logits_depth=max(net.num_classes, 1),
        input_layout=layouts[0],
        image_init=tuple(im2col_init(layouts[0])) if layouts[0].im2col else (),
        affine_shift=layers[-1].e_last, hold_results=hold_results,
        direct_results=direct_results, gain_mode=gain_mode,
    )


def _compute_cycles(p: ComputePlan, plan: NetworkPlan) -> int:
    """Cycles of one compute layer, from its descriptor load to its last write landing."""
    t = LAYER_LOAD_CYCLES  # the first beat is in stage A at cycle t (relative)
    groups = p.groups
    last_beat = 0
    for g in range(groups):
        last_beat = t + p.beats - 1
        in_last_pg = g // p.channel_groups == p.position_groups - 1
        guard = p.guard_last if in_last_pg else p.guard_full
        t = last_beat + 1 + guard
    drain = p.drain_last
    # done of the last group: last beat + 1 (window register) + the op table's register
    # + 1 (memory read) + the read data register + array latency
    done = last_beat + 2 + OP_REGISTER_CYCLES + READ_REGISTER_CYCLES + plan.array_latency
    return done + drain + DRAIN_TAIL_CYCLES + (ARGMAX_TAIL_CYCLES if p.affine else 0)


def _pool_cycles(p: PoolPlan) -> int:
    return LAYER_LOAD_CYCLES + p.out_words * p.kernel * p.kernel + POOL_TAIL_CYCLES


def analytic_cycles(net_or_plan, rows: int | None = None, cols: int | None = None,
                    simd: int | None = None, *, relay: int = DEFAULT_RELAY,
                    gain_mode: str = DEFAULT_GAIN_MODE) -> dict:
    """Predicted cycles per layer and in total (the hardware's ``cycles`` counter).

    Returns ``{"layers": [{"name", "kind", "cycles", "ideal", ...}], "total": int,
    "ideal": int}``; ``ideal`` is ``ops * ceil(Co/R) * ceil(positions/C) * beats/ops``,
    the busy-array cycles alone.
    """
    if isinstance(net_or_plan, NetworkPlan):
        plan = net_or_plan
    else:
        plan = plan_network(net_or_plan, rows, cols, simd, relay, gain_mode)
    rows_, total, ideal_total = [], 1, 0  # +1: the sequencer's start cycle
    for p in plan.layers:
        if p.kind == "compute":
            cycles = _compute_cycles(p, plan)
            ideal = p.groups * p.beats
            rows_.append({"name": p.layer.name, "kind": p.layer.kind, "cycles": cycles, "ideal": ideal,
                          "ops": p.ops, "ir_ops": len(p.layer.ops), "channel_groups": p.channel_groups,
                          "position_groups": p.position_groups, "beats_per_group": p.beats,
                          "utilisation": round(p.layer.out_shape.size * p.fan_in * len(p.layer.ops)
                                               / (cycles * plan.rows * plan.cols * plan.simd), 4)})
        else:
            cycles = _pool_cycles(p)
            ideal = p.out_words * p.kernel * p.kernel
            rows_.append({"name": p.layer.name, "kind": "maxpool", "cycles": cycles, "ideal": ideal})
        total += cycles
        ideal_total += ideal
    return {"layers": rows_, "total": total, "ideal": ideal_total}


def skew_advice(plan: NetworkPlan) -> dict | None:
    """What the array's skew costs at ``plan.relay`` and the relay that takes it out.

    A group's next one waits for the least skewed PE to take the next sums
    (:func:`_guard`: ``max_skew + 1`` cycles at least), so with many rows or columns and
    short groups the skew, ``(R - 1) // relay + (C - 1) // relay``, sets the pace instead
    of the beats. Returns ``None`` when the skew adds less than 1 % to the image's cycles
    (it always adds a few: the array's latency, once per layer), else ``{"relay",
    "cycles", "skew_cycles", "hint", "hint_cycles"}``: the cycles per image at the plan's
    relay, those the skew adds to them (against an array without skew), and the smallest
    power-of-two relay above the plan's that saves at least as many cycles as half of
    them, with its cycles. A larger relay drives more PEs from each register: fewer
    relay flip-flops and longer nets.
    """
    cycles = analytic_cycles(plan)["total"]
    widest = max(plan.rows, plan.cols)
    floor = analytic_cycles(plan.net, plan.rows, plan.cols, plan.simd, relay=widest,
                            gain_mode=plan.gain_mode)["total"] if widest > plan.relay else cycles
    skew = cycles - floor
    if skew * 100 < cycles:
        return None
    relay = plan.relay
    while True:
        relay = min(relay * 2, widest)
        hint_cycles = analytic_cycles(plan.net, plan.rows, plan.cols, plan.simd, relay=relay,
                                      gain_mode=plan.gain_mode)["total"]
        if cycles - hint_cycles >= skew / 2 or relay == widest:
            break
    return {"relay": plan.relay, "cycles": cycles, "skew_cycles": skew, "hint": relay,
            "hint_cycles": hint_cycles}

"""How a network IR maps onto an R x C x S array: memory layouts, ROM contents, cycle model.

Everything here is plain Python on the IR; the gateware reads its constants from a
:class:`NetworkPlan` and :func:`analytic_cycles` predicts the hardware's cycle counter.

Layouts (``S = simd``):

- An activation tensor ``(planes, Ch, H, W)`` is stored position-major in words of S
  bits, one channel per lane: word ``((n*H + y)*W + x)*cw + j`` holds channels
  ``j*S .. j*S+S-1`` of position ``(y, x)`` of plane ``n``, ``cw = ceil(Ch / S)``.
  Lanes past ``Ch`` hold 0. Layer ``i``'s input lives in buffer ``i % 2``.
- A compute layer runs groups of R output channels x C output positions; a group is
  ``beats = ops * kh * kw * cw_in`` cycles, in the order op, ky, kx, channel word
  (a linear layer is a convolution whose kernel covers its whole input).
- Weights: one ROM word of R*S bits per beat and channel group, in issue order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from binforge.compiler.ir import ConvLayer, LinearLayer, MaxPoolLayer, Network, signed_width

from .pe import GainFormat, popcount_depth

__all__ = ["ComputePlan", "PoolPlan", "NetworkPlan", "plan_network", "analytic_cycles",
           "OUT_DATA_WIDTH", "DEFAULT_RELAY"]

#: Width of the result stream's data: the class index and every logit fit in it.
OUT_DATA_WIDTH = 32
#: PEs driven by one relay register in the array.
DEFAULT_RELAY = 4

# Fixed pipeline costs of the sequencer, in cycles (see docs/hardware.md).
#: Loading one layer's descriptor.
LAYER_LOAD_CYCLES = 1
#: From the last group's done to its drain starting (1) and its last write (read, compute, write).
DRAIN_TAIL_CYCLES = 3
#: Pool engine: read latency + write register.
POOL_TAIL_CYCLES = 2


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
    cw_out: int
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
    gains: tuple[int, ...]
    weight_words: np.ndarray = field(repr=False)
    const_rows: np.ndarray = field(repr=False)
    affine: bool = False

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
    buffer_depths: tuple[int, int] = (1, 1)
    logits_depth: int = 1

    @property
    def input_cw(self) -> int:
        return math.ceil(self.net.input_shape.channels / self.simd)

    @property
    def const_width(self) -> int:
        return self.rows * (self.const_value_width + 2)

    @property
    def max_skew(self) -> int:
        return (self.rows - 1) // self.relay + (self.cols - 1) // self.relay

    @property
    def array_latency(self) -> int:
        return 1 + self.max_skew + popcount_depth(self.simd) + 2

    def memory_bits(self) -> dict[str, int]:
        """On-chip memory by purpose, in bits."""
        s = self.simd
        return {
            "weights": int(len(self.weight_rom)) * self.rows * s,
            "thresholds_and_biases": int(len(self.const_rom)) * self.const_width,
            "activations": self.cols * (self.buffer_depths[0] + self.buffer_depths[1]) * s,
            "logits": self.logits_depth * OUT_DATA_WIDTH,
        }


def _words_touched(lo: int, hi: int, simd: int) -> int:
    return (hi - 1) // simd - lo // simd + 1


def _compute_plan(index, layer, rows, cols, simd, max_skew, weight_base, const_base):
    if layer.kind == "conv":
        kh = kw = layer.kernel
        stride, padding, pad_bit = layer.stride, layer.padding, layer.pad_bit
        in_c, in_h, in_w = layer.in_shape.as_tuple()
        weights = layer.weights  # (P, Co, Ci, k, k)
    else:
        in_c, in_h, in_w = layer.in_shape.as_tuple()
        kh, kw, stride, padding, pad_bit = in_h, in_w, 1, 0, 0
        weights = layer.weights.reshape(layer.weight_planes, layer.out_features, in_c, in_h, in_w)
    out = layer.out_shape
    out_c, out_h, out_w = out.as_tuple()
    cw_in = math.ceil(in_c / simd)
    affine = layer.output.kind == "affine"
    out_planes = 0 if affine else layer.out_planes
    cw_out = math.ceil(out_c / simd)
    ops = layer.ops
    beats = len(ops) * kh * kw * cw_in
    cg_count = math.ceil(out_c / rows)
    positions = out_h * out_w
    pg_count = math.ceil(positions / cols)
    last_cols = positions - (pg_count - 1) * cols

    # Weight ROM words, in issue order: channel group, op, ky, kx, channel word.
    padded = np.zeros((weights.shape[0], cg_count * rows, kh, kw, cw_in * simd), dtype=np.uint8)
    padded[:, :out_c, :, :, :in_c] = weights.transpose(0, 1, 3, 4, 2)
    words = []
    lane_weights = [1 << i for i in range(simd)]
    for cg in range(cg_count):
        for op in ops:
            block = padded[op.weight_plane, cg * rows:(cg + 1) * rows]  # (R, kh, kw, cw*S)
            for ky in range(kh):
                for kx in range(kw):
                    for j in range(cw_in):
                        word = 0
                        for r in range(rows):
                            bits = block[r, ky, kx, j * simd:(j + 1) * simd]
                            lane = sum(w for w, b in zip(lane_weights, bits, strict=True) if b)
                            word |= lane << (r * simd)
                        words.append(word)

    # Per-channel constants. acc = bias + K*sum(gains) - 2*P, P = the PE's result.
    k = layer.fan_in
    offset = np.asarray(layer.bias, dtype=np.int64) + k * sum(op.gain for op in ops)
    rows_out = []  # one entry per (channel group[, plane]): list of R (value, flip, valid)
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
                        entry.append((int((offset[ch] - t[n, ch]) // 2), int(flip[ch]), 1))
                    else:
                        entry.append((0, 0, 0))
                rows_out.append(entry)

    # Drain cycles per group: threshold layers write planes x words x columns; the
    # affine layer writes one logit per column x row.
    if affine:
        drain_words = 0
        drain_full = cols * rows
        drain_last = last_cols * rows
    else:
        drain_words = 1
        for cg in range(cg_count):
            lo = cg * rows
            hi = min(lo + rows, cw_out * simd)
            drain_words = max(drain_words, min(_words_touched(lo, hi, simd), cw_out - lo // simd))
        drain_full = out_planes * drain_words * cols
        drain_last = out_planes * drain_words * last_cols
    guard_full = max(0, drain_full + max_skew + 1 - beats)
    guard_last = max(0, drain_last + max_skew + 1 - beats)
    plane_offsets = tuple(op.act_plane * in_h * in_w * cw_in for op in ops)
    return ComputePlan(
        index=index, layer=layer, kh=kh, kw=kw, stride=stride, padding=padding, pad_bit=pad_bit,
        in_c=in_c, in_h=in_h, in_w=in_w, out_c=out_c, out_h=out_h, out_w=out_w,
        out_planes=out_planes, cw_in=cw_in, cw_out=cw_out, beats=beats,
        channel_groups=cg_count, position_groups=pg_count, last_cols=last_cols,
        weight_base=weight_base, const_base=const_base, const_entries=len(rows_out),
        drain_words=drain_words, drain_full=drain_full, drain_last=drain_last,
        guard_full=guard_full, guard_last=guard_last, plane_offsets=plane_offsets,
        gains=tuple(op.gain for op in ops), weight_words=np.array(words, dtype=object),
        const_rows=np.array(rows_out, dtype=object).reshape(len(rows_out), rows, 3), affine=affine,
    )


def plan_network(net: Network, rows: int, cols: int, simd: int, relay: int = DEFAULT_RELAY) -> NetworkPlan:
    """Map ``net`` onto an R x C x S array; raise ValueError for what cannot be mapped."""
    check_geometry(rows, cols, simd)
    _check_positive("relay", relay)
    max_skew = (rows - 1) // relay + (cols - 1) // relay
    layers: list = []
    weight_base = const_base = 0
    gains: set[int] = set()
    pe_lo = pe_hi = 0
    for i, layer in enumerate(net.layers):
        if layer.kind == "maxpool":
            c, h, w = layer.in_shape.as_tuple()
            out = layer.out_shape
            layers.append(PoolPlan(index=i, layer=layer, kernel=layer.kernel, stride=layer.stride,
                                   planes=layer.in_planes, in_h=h, in_w=w, out_h=out.height,
                                   out_w=out.width, cw=math.ceil(c / simd)))
            continue
        plan = _compute_plan(i, layer, rows, cols, simd, max_skew, weight_base, const_base)
        layers.append(plan)
        weight_base += len(plan.weight_words)
        const_base += plan.const_entries
        gains.update(plan.gains)
        k = layer.fan_in
        pe_lo += sum(g for g in plan.gains if g < 0) * k
        pe_hi += sum(g for g in plan.gains if g > 0) * k
    gain_format = GainFormat(gains)
    # The PE's result range: every op's mismatch count is in [0, K] (also per partial sum).
    lo = min((sum(g for g in p.gains if g < 0) * p.fan_in for p in layers if p.kind == "compute"), default=0)
    hi = max((sum(g for g in p.gains if g > 0) * p.fan_in for p in layers if p.kind == "compute"), default=0)
    pe_width = max(signed_width(lo, hi), (simd * gain_format.largest).bit_length() + 1)
    last = layers[-1]
    values = [int(v) for p in layers if p.kind == "compute" for v in p.const_rows[:, :, 0].ravel()]
    const_value_width = max(signed_width(min(values), max(values)), pe_width)
    if last.layer.acc_width > OUT_DATA_WIDTH - 0:
        raise ValueError(f"the last layer's accumulators are {last.layer.acc_width} bits wide, "
                         f"wider than the {OUT_DATA_WIDTH}-bit result stream")
    # Buffers: layer i reads buffer i % 2; its output is layer i+1's input.
    depths = [1, 1]
    depths[0] = max(depths[0], 8 * net.input_shape.height * net.input_shape.width
                    * math.ceil(net.input_shape.channels / simd))
    for i, layer in enumerate(net.layers[:-1]):
        out = layer.out_shape
        words = layer.out_planes * out.height * out.width * math.ceil(out.channels / simd)
        depths[(i + 1) % 2] = max(depths[(i + 1) % 2], words)
    weight_rom = np.concatenate([p.weight_words for p in layers if p.kind == "compute"])
    cvw = const_value_width
    const_words = []
    for p in layers:
        if p.kind != "compute":
            continue
        for entry in p.const_rows:
            word = 0
            for r, (value, flip, valid) in enumerate(entry):
                field_ = (int(value) & ((1 << cvw) - 1)) | (int(flip) << cvw) | (int(valid) << (cvw + 1))
                word |= field_ << (r * (cvw + 2))
            const_words.append(word)
    return NetworkPlan(
        net=net, rows=rows, cols=cols, simd=simd, relay=relay, layers=tuple(layers),
        gain_format=gain_format, pe_width=pe_width, const_value_width=const_value_width,
        weight_rom=weight_rom, const_rom=np.array(const_words, dtype=object),
        buffer_depths=(depths[0], depths[1]), logits_depth=max(net.num_classes, 1),
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
    # done of the last group: last beat + 1 (memory read) + array latency
    done = last_beat + 1 + plan.array_latency
    return done + drain + DRAIN_TAIL_CYCLES


def _pool_cycles(p: PoolPlan) -> int:
    return LAYER_LOAD_CYCLES + p.out_words * p.kernel * p.kernel + POOL_TAIL_CYCLES


def analytic_cycles(net_or_plan, rows: int | None = None, cols: int | None = None,
                    simd: int | None = None) -> dict:
    """Predicted cycles per layer and in total (the hardware's ``cycles`` counter).

    Returns ``{"layers": [{"name", "kind", "cycles", "ideal", ...}], "total": int,
    "ideal": int}``; ``ideal`` is ``ops * ceil(Co/R) * ceil(positions/C) * beats/ops``,
    the busy-array cycles alone.
    """
    plan = net_or_plan if isinstance(net_or_plan, NetworkPlan) else plan_network(net_or_plan, rows, cols, simd)
    rows_, total, ideal_total = [], 1, 0  # +1: the sequencer's start cycle
    for p in plan.layers:
        if p.kind == "compute":
            cycles = _compute_cycles(p, plan)
            ideal = p.groups * p.beats
            rows_.append({"name": p.layer.name, "kind": p.layer.kind, "cycles": cycles, "ideal": ideal,
                          "ops": p.ops, "channel_groups": p.channel_groups,
                          "position_groups": p.position_groups, "beats_per_group": p.beats,
                          "utilisation": round(p.layer.out_shape.size * p.fan_in * p.ops
                                               / (cycles * plan.rows * plan.cols * plan.simd), 4)})
        else:
            cycles = _pool_cycles(p)
            ideal = p.out_words * p.kernel * p.kernel
            rows_.append({"name": p.layer.name, "kind": "maxpool", "cycles": cycles, "ideal": ideal})
        total += cycles
        ideal_total += ideal
    return {"layers": rows_, "total": total, "ideal": ideal_total}

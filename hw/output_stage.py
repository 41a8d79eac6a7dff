"""The output stage: turns each group's PE results into the next layer's bits or logits.

After every group of R channels x C positions the array's results are drained, one
column (position) per cycle: per channel a threshold compare with flip gives one bit per
activation plane, written into the next activation buffer; or, for the affine last
layer, ``acc = offset - 2 * P`` is written into the logits memory while a running argmax
(:class:`RunningArgmax`, its compare split over two cycles) keeps the first index of the
maximum.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .plan import ARGMAX_TAIL_CYCLES, OUT_DATA_WIDTH

__all__ = ["OutputStage", "RunningArgmax", "ARGMAX_LATENCY"]

#: Cycles from a value written into :class:`RunningArgmax` to ``best_index`` showing it
#: (the cycle model's ``ARGMAX_TAIL_CYCLES`` is this less the one the sequencer's finish
#: cycle already gives).
ARGMAX_LATENCY = 2


def _addr_width(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


def _lanes_below(m, value, lanes: int):
    """``lanes`` bits, bit ``i`` set where ``i < value`` (``value`` signed): a thermometer
    code decoded from ``value``'s low ``log2(lanes)`` bits, all ones when ``value >= lanes``
    and all zeros when it is negative. Each lane compares ``log2(lanes)`` bits with a
    constant (a LUT or two), not the whole signed value (a carry chain per lane). (A
    ``Switch`` over the low bits says the same, but made YoWASP's ABC9 stop without a
    message on ECP5 at 32 and 64 lanes.)"""
    log = lanes.bit_length() - 1
    out = Signal(lanes)
    low = Signal(lanes)
    for lane in range(lanes):
        m.d.comb += low[lane].eq(value[:log] > lane)
    negative = value[-1]
    big = value[log:-1].any() if len(value) - 1 > log else Const(0, 1)
    m.d.comb += out.eq(Mux(negative, 0, Mux(big, (1 << lanes) - 1, low)))
    return out


class OutputStage(wiring.Component):
    """Drains group results: thresholds with flip to bits, or affine logits with argmax.

    Parameters
    ----------
    plan : NetworkPlan
        Gives R, C, S, widths and the constants ROM (``plan.const_rom``).
    descriptor : StructLayout
        The layer descriptor layout (:class:`~binforge.hw.descriptor.DescriptorFormat`).

    Members
    -------
    desc : In(descriptor)
        The current layer's descriptor (held for the whole layer).
    layer_start : In(1)
        Pulse: a new layer begins; group counters and the argmax restart.
    results : In(rows * cols * pe_width)
        The array's results: stable for the drain of a group (and one cycle more with
        ``plan.direct_results``, read without a copy), or, with ``plan.hold_results``, in
        the cycle of ``group_done`` only (the stage keeps a copy).
    group_done : In(1)
        Pulse: the array's results of the next group are ready.
    act_addr, act_data, act_en : Out
        Activation write (address, S data bits, S lane enables); ``act_we`` says it is valid.
        The lane enables cover the whole word or none of it, except in a read-modify-write
        layer (``desc.rmw``), whose writes come every third cycle at most.
    act_we : Out(1)
    logit_addr, logit_data, logit_we : Out
        Logits memory write.
    class_index : Out
        First index of the maximum logit of the last layer drained (valid from the cycle
        after ``drained``).
    drained : Out(1)
        High in the cycle the layer's last write is issued and nothing is left to drain;
        for the affine layer ``ARGMAX_TAIL_CYCLES`` later, once the argmax has decided.

    Latency: a group's reads start the cycle after ``group_done`` and take ``drain``
    cycles (the plan records them; a read-modify-write layer, ``desc.rmw``, reads every
    third cycle and its drain ends with the second cycle after its last read); its last write is
    issued 4 cycles after its last read (result/constant read, compare halves,
    compare/logit, lane placement), with ``drained`` (affine layer: ``ARGMAX_TAIL_CYCLES``
    later; rmw layer: two cycles later, when the sequencer writes the merged word).
    """

    def __init__(self, plan, descriptor, act_addr_width: int):
        self._plan = plan
        self._desc_layout = descriptor
        r, c = plan.rows, plan.cols
        self._logit_aw = _addr_width(plan.logits_depth)
        super().__init__({
            "desc": In(descriptor),
            "layer_start": In(1),
            "results": In(r * c * plan.pe_width),
            "group_done": In(1),
            "act_addr": Out(act_addr_width),
            "act_data": Out(plan.simd),
            "act_en": Out(plan.simd),
            "act_we": Out(1),
            "logit_addr": Out(self._logit_aw),
            "logit_data": Out(OUT_DATA_WIDTH),
            "logit_we": Out(1),
            "class_index": Out(self._logit_aw),
            "drained": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        plan = self._plan
        rows, cols, s = plan.rows, plan.cols, plan.simd
        log_s = s.bit_length() - 1
        pw, cvw = plan.pe_width, plan.const_value_width
        desc = self.desc

        const_depth = max(1, len(plan.const_rom))
        m.submodules.consts = consts = memory.Memory(
            shape=unsigned(plan.const_width), depth=const_depth,
            init=[int(v) for v in plan.const_rom] or [0])
        const_rd = consts.read_port()
        # The affine layer's constants: a word per output channel, read at the row drained.
        affine_depth = max(1, len(plan.affine_rom))
        m.submodules.affine_consts = affine_consts = memory.Memory(
            shape=unsigned(plan.affine_width), depth=affine_depth,
            init=list(plan.affine_rom) or [0])
        affine_rd = affine_consts.read_port()

        # ---- D0: loop counters --------------------------------------------------------
        most_words = max((p.drain_words for p in plan.layers if p.kind == "compute"), default=1)
        most_groups = max((max(p.channel_groups, p.position_groups) for p in plan.layers
                           if p.kind == "compute"), default=1)
        busy = Signal()
        col = Signal(range(max(cols, 2)))
        row = Signal(range(max(rows, 2)))
        word = Signal(range(most_words + 1))  # word within a column's R bits
        plane = Signal(8)
        pg = Signal(range(most_groups + 1))
        cg = Signal(range(most_groups + 1))
        cg_r = Signal(range((most_groups + 1) * rows))  # cg * rows: the group's first channel
        rows_valid = Signal(range(rows + 1))  # min(rows, out_c - cg_r)
        left = Signal.like(desc.out_c)  # out_c - cg_r, stepped with cg_r (no subtractor at the read)
        pg_last = Signal()
        cg_last = Signal()
        const_group = Signal(range(max(const_depth, affine_depth) + 1))
        # The constants ROMs' read address: const_group + plane (threshold layers, the
        # constants ROM) or + row (the affine layer, its own ROM), kept in a register of
        # its own (no adder before the ROM's decode). It is exact in every cycle whose read
        # is used (busy): set with plane (row) = 0, stepped with it.
        const_addr = Signal(max(len(const_rd.addr), len(affine_rd.addr)))
        # The group counters' "at the last value" flags and the group's last column are
        # registers, updated with the counters (from the counter compared with the value
        # before the limit, the descriptor's "...l1" fields): the drain's end
        # (``finishing``), which enables most of this stage's registers, reads flags only.
        last_cols = Signal(range(max(cols, 2)))
        # Bit address of the column's first channel: plane + position + channel.
        aw = len(self.act_addr) + log_s + 2
        pg_acc = Signal(aw)  # pg * cols * pos_stride
        plane_base = Signal(aw)  # pg_acc + cg_r + plane * plane_bits
        bit_addr = Signal(aw)  # plane_base + col * pos_stride
        start_lane = Signal(log_s + 1)
        m.d.comb += start_lane.eq(bit_addr[:log_s] if log_s else 0)
        # affine index pieces: logit index = channel * hw_out + position, each kept modulo
        # 2**logit_aw (the logits memory's address width): every index written is below
        # its depth, so the sums of the pieces are exact where they are used.
        idx_cg = Signal(self._logit_aw)
        idx_row = Signal(self._logit_aw)
        pos_aff = Signal(self._logit_aw)

        # The drain counters' "at the last value" flags, in registers updated with the
        # counters (as the group counters' above), so that the
        # drain's end, which enables most of this stage's registers, is an AND of flags.
        col_done, word_last, plane_last, row_last = (
            Signal(name=n) for n in ("col_done", "word_last", "plane_last", "row_last"))
        # Read-modify-write layers (``desc.rmw``): each read is followed by two cycles in
        # which nothing is read (the counters step in the second), so that the sequencer's
        # merge of one write (read its word, write it back two cycles later) never meets
        # the next write's read (RMW_DRAIN_FACTOR).
        hold = Signal(2)  # cycles since the last read of an rmw layer
        # the counters advance this cycle: ~desc.rmw | (hold == 2), in a register of its own
        step = Signal()
        finishing = Signal()  # the group's drain ends this cycle (its last read, or the hold after it)
        with m.If(desc.affine):
            m.d.comb += finishing.eq(busy & col_done & row_last)
        with m.Else():
            m.d.comb += finishing.eq(busy & step & col_done & word_last & plane_last)

        def position_group_flags(is_last):
            """``pg_last`` and the group's last column for a position group that is the
            layer's last when ``is_last``."""
            return [pg_last.eq(is_last), last_cols.eq(Mux(is_last, desc.last_colsl, cols - 1))]

        with m.If(self.layer_start):
            m.d.sync += [busy.eq(0), pg.eq(0), cg.eq(0), cg_r.eq(0), left.eq(desc.out_c), pg_acc.eq(0),
                         idx_cg.eq(0), pos_aff.eq(0), const_group.eq(desc.const_base), cg_last.eq(desc.cgl == 0),
                         *position_group_flags(desc.pgl == 0)]
        with m.Elif(self.group_done):
            m.d.sync += [busy.eq(1), hold.eq(0), step.eq(~desc.rmw), col.eq(0), row.eq(0), word.eq(0), plane.eq(0),
                         col_done.eq(last_cols == 0), row_last.eq(rows == 1),
                         word_last.eq(desc.drain_wordsl == 0), plane_last.eq(desc.planesl == 0),
                         const_addr.eq(const_group),
                         plane_base.eq(pg_acc + cg_r), bit_addr.eq(pg_acc + cg_r), idx_row.eq(idx_cg),
                         rows_valid.eq(Mux(left >= rows, rows, left))]
        with m.Elif(busy):
            with m.If(desc.affine):
                # column outer, row inner; the affine ROM's address follows the row
                with m.If(row_last):
                    m.d.sync += [row.eq(0), row_last.eq(rows == 1), col.eq(col + 1),
                                 col_done.eq(col + 1 == last_cols), idx_row.eq(idx_cg),
                                 const_addr.eq(const_group)]
                with m.Else():
                    m.d.sync += [row.eq(row + 1), row_last.eq(row + 1 == rows - 1),
                                 idx_row.eq(idx_row + desc.hw_out), const_addr.eq(const_addr + 1)]
            with m.Elif(step):
                # plane outer, column, word inner
                with m.If(word_last):
                    m.d.sync += [word.eq(0), word_last.eq(desc.drain_wordsl == 0)]
                    with m.If(col_done):
                        m.d.sync += [col.eq(0), col_done.eq(last_cols == 0), plane.eq(plane + 1),
                                     plane_last.eq(plane == desc.planesl1),
                                     const_addr.eq(const_addr + 1),
                                     plane_base.eq(plane_base + desc.out_plane_bits),
                                     bit_addr.eq(plane_base + desc.out_plane_bits)]
                    with m.Else():
                        m.d.sync += [col.eq(col + 1), col_done.eq(col + 1 == last_cols),
                                     bit_addr.eq(bit_addr + desc.out_pos_stride)]
                with m.Else():
                    m.d.sync += [word.eq(word + 1), word_last.eq(word == desc.drain_wordsl1)]
            m.d.sync += [hold.eq(Mux(desc.rmw & (hold != 2), hold + 1, 0)),
                         step.eq(~desc.rmw | (hold == 1))]
            with m.If(finishing):
                m.d.sync += busy.eq(0)
                with m.If(cg_last):
                    m.d.sync += [cg.eq(0), cg_r.eq(0), left.eq(desc.out_c), pg.eq(pg + 1),
                                 pg_acc.eq(pg_acc + desc.out_pg_bits),
                                 pos_aff.eq(pos_aff + cols), idx_cg.eq(0), const_group.eq(desc.const_base),
                                 cg_last.eq(desc.cgl == 0), *position_group_flags(pg == desc.pgl1)]
                with m.Else():
                    m.d.sync += [cg.eq(cg + 1), cg_r.eq(cg_r + rows), left.eq(left - rows),
                                 idx_cg.eq(idx_cg + desc.hw_out * rows),
                                 const_group.eq(const_group + desc.const_group_step),
                                 cg_last.eq(cg == desc.cgl1)]

        m.d.comb += [const_rd.addr.eq(const_addr), affine_rd.addr.eq(const_addr)]

        # The results a group's drain reads: with ``plan.hold_results`` a copy of the
        # array's results taken at ``group_done``, so the next group's sums may land in the
        # PEs while this group drains (its guard needs ``max(drain, max_skew) + 1`` beats,
        # not ``drain + max_skew + 1``); otherwise the PEs' result registers themselves.
        if plan.hold_results:
            results = Signal.like(self.results, name="held_results", reset_less=True)
            with m.If(self.group_done):
                m.d.sync += results.eq(self.results)
        else:
            results = self.results

        # ---- D1: registered column results + constants ----------------------------------
        d1_valid = Signal()
        d1_affine = Signal()
        d1_results = Signal(rows * pw)
        d1_row = Signal(range(max(rows, 2)))
        d1_addr = Signal(len(self.act_addr))
        d1_offset = Signal(signed(log_s + 3 + max(most_words * s, rows).bit_length()))
        d1_fill = Signal()
        d1_idx = Signal(self._logit_aw)
        d1_last = Signal()
        d1_rows_valid = Signal.like(rows_valid)
        # Lanes past the last channel are cleared: in the padded layout the rest of the last
        # channel word of every position, in the dense layout the tail of each plane.
        last_valid_word = (start_lane + rows_valid - 1) >> log_s
        pos_last = pg_last & col_done
        fill = cg_last & (~desc.out_dense | pos_last) & (word == last_valid_word)
        m.d.sync += [d1_valid.eq(busy & (hold == 0) & ~self.layer_start), d1_affine.eq(desc.affine), d1_row.eq(row),
                     d1_addr.eq((bit_addr >> log_s) + word),
                     d1_offset.eq(start_lane - word * s), d1_fill.eq(fill),
                     d1_idx.eq(idx_row + pos_aff + col), d1_last.eq(finishing & cg_last & pg_last),
                     d1_rows_valid.eq(rows_valid)]
        if plan.direct_results:
            # One column, read a cycle late: the PEs hold their results long enough
            # (the plan's guards allow for it), so no copy of them.
            m.d.comb += d1_results.eq(results)
        else:
            with m.Switch(col):
                for c in range(cols):
                    with m.Case(c):
                        m.d.sync += d1_results.eq(Cat(
                            results[(r * cols + c) * pw:(r * cols + c + 1) * pw] for r in range(rows)))

        const_layout = data.StructLayout({"value": signed(cvw), "flip": 1, "valid": 1})
        entries = [data.View(const_layout, const_rd.data[r * (cvw + 2):(r + 1) * (cvw + 2)])
                   for r in range(rows)]

        # D1: the threshold compares (one per row), each split in halves:
        # p <= value  <=>  hi(p) < hi(value), or hi(p) == hi(value) and lo(p) <= lo(value)
        # (high halves signed, low halves unsigned); the affine row's constant picked.
        half = max(1, cvw // 2)
        hi_lt, hi_eq, lo_le = Signal(rows), Signal(rows), Signal(rows)
        flips, valids = Signal(rows), Signal(rows)
        for r in range(rows):
            p = Signal(signed(cvw), name=f"result{r}")
            e = entries[r]
            m.d.comb += [p.eq(d1_results[r * pw:(r + 1) * pw].as_signed()),
                         hi_lt[r].eq(p[half:].as_signed() < e.value[half:].as_signed()),
                         hi_eq[r].eq(p[half:] == e.value[half:]),
                         lo_le[r].eq(p[:half] <= e.value[:half]),
                         flips[r].eq(e.flip), valids[r].eq(e.valid)]
        # The affine layer's row: its constant from its own ROM (read at the row), and its
        # result picked from the registered column (an R:1 multiplexer after D1, not an
        # R*C:1 one before it).
        row_entry = data.View(const_layout, affine_rd.data)
        row_one = Signal(signed(pw))
        with m.Switch(d1_row):
            for r in range(rows):
                with m.Case(r):
                    m.d.comb += row_one.eq(d1_results[r * pw:(r + 1) * pw])

        # ---- D1b: the halves' flags registered -> bits; the row's entry -> logit ------------
        c_hi_lt, c_hi_eq, c_lo_le = Signal(rows), Signal(rows), Signal(rows)
        c_flips, c_valids = Signal(rows), Signal(rows)
        c_entry = Signal(const_layout)
        c_one = Signal.like(row_one)
        c_valid, c_affine, c_fill, c_last = Signal(), Signal(), Signal(), Signal()
        c_addr = Signal.like(d1_addr)
        c_offset = Signal.like(d1_offset)
        c_idx = Signal.like(d1_idx)
        c_rows_valid = Signal.like(d1_rows_valid)
        m.d.sync += [c_hi_lt.eq(hi_lt), c_hi_eq.eq(hi_eq), c_lo_le.eq(lo_le), c_flips.eq(flips),
                     c_valids.eq(valids), c_entry.eq(row_entry), c_one.eq(row_one),
                     c_valid.eq(d1_valid & ~self.layer_start), c_affine.eq(d1_affine),
                     c_fill.eq(d1_fill), c_last.eq(d1_last & ~self.layer_start),
                     c_addr.eq(d1_addr), c_offset.eq(d1_offset), c_idx.eq(d1_idx),
                     c_rows_valid.eq(d1_rows_valid)]
        bits = Signal(rows)
        m.d.comb += bits.eq(((c_hi_lt | (c_hi_eq & c_lo_le)) ^ c_flips) & c_valids)
        logit = Signal(signed(OUT_DATA_WIDTH))
        m.d.comb += logit.eq(c_entry.value - (c_one << (1 + plan.affine_shift)))

        # ---- D2: registered bits / logit; bits placed at lanes ``offset + r`` -----------------
        d2_bits = Signal(rows)
        d2_logit = Signal(signed(OUT_DATA_WIDTH))
        d2_logit_valid = Signal()
        d2_valid, d2_affine, d2_fill, d2_last = Signal(), Signal(), Signal(), Signal()
        d2_addr = Signal.like(d1_addr)
        d2_idx = Signal.like(d1_idx)
        m.d.sync += [d2_bits.eq(bits), d2_logit.eq(logit), d2_logit_valid.eq(c_entry.valid),
                     d2_valid.eq(c_valid & ~self.layer_start), d2_affine.eq(c_affine),
                     d2_fill.eq(c_fill), d2_last.eq(c_last & ~self.layer_start),
                     d2_addr.eq(c_addr), d2_idx.eq(c_idx)]
        # Lanes ``offset .. offset + rows_valid - 1`` take rows ``0 .. rows_valid - 1``: one
        # shifter for the word (the rows shifted right by ``s - offset``, zeros around them)
        # and two lane masks, not an R:1 multiplexer per lane. The masks are thermometer
        # codes decoded from the low bits of ``offset`` and ``offset + rows_valid`` (a
        # LUT or two per lane), not a compare per lane (a carry chain each). The shift is
        # clamped to ``s + rows`` (every row shifted out) so the shifter has few stages.
        end = Signal(signed(len(d1_offset) + 1))  # offset + rows_valid
        m.d.comb += end.eq(c_offset + c_rows_valid)
        d2_started = Signal(s)  # lane >= offset
        d2_before_end = Signal(s)  # lane < offset + rows_valid
        m.d.sync += [d2_started.eq(~_lanes_below(m, c_offset, s)),
                     d2_before_end.eq(_lanes_below(m, end, s))]
        shift_bits = (s + rows).bit_length()
        shift = Signal(len(d1_offset) + 1)  # s - offset (>= 1: offset < s)
        m.d.comb += shift.eq(s - c_offset)
        d2_shift = Signal(shift_bits)
        m.d.sync += d2_shift.eq(Mux(shift[shift_bits:].any(), (1 << shift_bits) - 1, shift[:shift_bits]))
        placed = Signal(s)
        m.d.comb += placed.eq((Cat(Const(0, s), d2_bits) >> d2_shift)[:s])
        lane_data = Signal(s)
        lane_en = Signal(s)
        m.d.comb += [lane_en.eq(d2_started & (d2_before_end | d2_fill.replicate(s))),
                     lane_data.eq(placed & d2_before_end)]

        # ---- D3: registered writes --------------------------------------------------------
        m.d.sync += [
            self.act_we.eq(d2_valid & ~d2_affine & ~self.layer_start),
            self.act_addr.eq(d2_addr),
            self.act_data.eq(lane_data),
            self.act_en.eq(lane_en),
            self.logit_we.eq(d2_valid & d2_affine & d2_logit_valid & ~self.layer_start),
            self.logit_addr.eq(d2_idx),
            self.logit_data.eq(d2_logit),
        ]
        # Argmax over the logits as they are written: the first index of the maximum, ready
        # ARGMAX_LATENCY cycles after the last logit's write.
        # It compares the logits at their own width (``offset - 2**(1 + shift) * P`` fits
        # in one bit more than the wider term), not the result word's: shorter compares.
        logit_width = min(OUT_DATA_WIDTH, max(cvw, pw + 1 + plan.affine_shift) + 1)
        m.submodules.argmax = argmax = RunningArgmax(logit_width, self._logit_aw)
        m.d.comb += [argmax.restart.eq(self.layer_start), argmax.valid.eq(self.logit_we),
                     argmax.data.eq(self.logit_data[:logit_width]), argmax.index.eq(self.logit_addr),
                     self.class_index.eq(argmax.best_index)]

        # The layer is drained once its last group's last write has been issued, and for
        # the affine layer, once the argmax holds its class: ARGMAX_TAIL_CYCLES later.
        d3_last = Signal()
        d3_affine = Signal()
        m.d.sync += [d3_last.eq(d2_last & ~self.layer_start), d3_affine.eq(d2_affine)]
        affine_last = d3_last & d3_affine
        for i in range(ARGMAX_TAIL_CYCLES):
            delayed = Signal(name=f"argmax_wait{i}")
            m.d.sync += delayed.eq(affine_last & ~self.layer_start)
            affine_last = delayed
        m.d.comb += self.drained.eq((d3_last & ~d3_affine) | affine_last)
        return m


class RunningArgmax(wiring.Component):
    """The first index of the maximum of a stream of signed values, compare pipelined.

    A value is better than the best so far if it is larger, or equal with a smaller
    index (so the result is the first index of the maximum whatever the order the values
    come in). The compare is split over two cycles: in the first, the value's high and
    low halves are compared (two short carry chains) against the best and against the
    value one cycle ahead of it; in the second, the halves' flags pick the decision,
    taking the compare against the value ahead when that value has just become the best.
    Values may come in every cycle.

    Parameters
    ----------
    data_width : int
        Width of the signed values.
    index_width : int
        Width of the indices.

    Members
    -------
    restart : In(1)
        Forget everything (also the values in flight).
    valid : In(1)
        ``data`` and ``index`` hold a value this cycle.
    data : In(signed(data_width))
    index : In(index_width)
    best_index : Out(index_width)
        Index of the best value; a value written in cycle ``t`` counts from cycle
        ``t + ARGMAX_LATENCY``.
    """

    def __init__(self, data_width: int, index_width: int):
        self._split = data_width // 2
        super().__init__({
            "restart": In(1),
            "valid": In(1),
            "data": In(signed(data_width)),
            "index": In(index_width),
            "best_index": Out(index_width),
        })

    def elaborate(self, platform):
        m = Module()
        half = self._split
        flags = data.StructLayout({"hi_gt": 1, "hi_eq": 1, "lo_gt": 1, "lo_eq": 1, "idx_lt": 1})

        def compare(value, value_index, other, other_index):
            """Split compare flags of ``(value, index)`` against ``(other, index)``."""
            out = Signal(flags)
            m.d.comb += [out.hi_gt.eq(value[half:].as_signed() > other[half:].as_signed()),
                         out.hi_eq.eq(value[half:] == other[half:]),
                         out.lo_gt.eq(value[:half] > other[:half]),
                         out.lo_eq.eq(value[:half] == other[:half]),
                         out.idx_lt.eq(value_index < other_index)]
            return out

        best = Signal.like(self.data)
        best_index = Signal.like(self.index)
        seen = Signal()  # best holds a value
        # Stage 1: the value in flight and its compare flags.
        p_valid = Signal()
        p_data = Signal.like(self.data)
        p_index = Signal.like(self.index)
        p_vs_best = Signal(flags)  # against best as it was in stage 1
        p_vs_ahead = Signal(flags)  # against the value one cycle ahead of it
        taken = Signal()  # stage 2 took its value last cycle: best is that value now
        vs_best = compare(self.data, self.index, best, best_index)
        vs_ahead = compare(self.data, self.index, p_data, p_index)
        m.d.sync += [p_valid.eq(self.valid & ~self.restart), p_data.eq(self.data), p_index.eq(self.index),
                     p_vs_best.eq(vs_best), p_vs_ahead.eq(vs_ahead)]
        # Stage 2: decide.
        f = Signal(flags)
        m.d.comb += f.eq(Mux(taken, p_vs_ahead, p_vs_best))
        better = f.hi_gt | (f.hi_eq & (f.lo_gt | (f.lo_eq & f.idx_lt)))
        take = Signal()
        m.d.comb += take.eq(p_valid & (~seen | better))
        m.d.sync += taken.eq(take & ~self.restart)
        with m.If(self.restart):
            m.d.sync += seen.eq(0)
        with m.Elif(take):
            m.d.sync += [best.eq(p_data), best_index.eq(p_index), seen.eq(1)]
        m.d.comb += self.best_index.eq(best_index)
        return m

"""The window generator: walks a conv/linear layer's beats and addresses each column's window.

For every beat (op, ky, kx, channel word) of every group (R channels x C positions) it
gives each column the address of its activation word and whether that tap falls in
the padding (the column then reads the pad word instead). Column positions advance by
C output positions per position group with add/compare steps only: no multipliers.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WindowGenerator"]

_OP_TABLES = ("auto", "block", "logic")


class WindowGenerator(wiring.Component):
    """Beat issuer and per-column window address generator of one compute layer.

    Parameters
    ----------
    plan : NetworkPlan
        Gives C, S, the op table (plane offsets and gains) and widths.
    descriptor : StructLayout
        The layer descriptor layout.
    addr_width : int
        Activation memory address width.
    weight_addr_width : int
        Weight ROM address width.
    op_table : str
        Where the op table (each op's plane offset, weight offset and gain) lives:
        ``"block"`` (a block RAM, read synchronously at the op's next address), ``"logic"``
        (a ROM in LUTs read at the op's address: the op counter's next-value logic then
        ends in flip-flops instead of a block RAM's address pins) or ``"auto"`` (default:
        ``"logic"`` on ECP5, whose block RAMs' address setup made that path the clock's
        limit, ``"block"`` elsewhere, where logic cells are scarce). The same entries in
        the same cycles.

    Members
    -------
    desc : In(descriptor)
        The layer's descriptor, valid from the cycle after ``start``.
    init : In(descriptor)
        The same descriptor while it is being loaded: valid in the ``start`` cycle.
    start : In(1)
        Pulse: a layer begins (counters restart).
    beat : Out(1)
        The outputs hold a beat this cycle.
    addr : Out(cols * addr_width)
        Column ``c``'s activation word address.
    pad : Out(cols)
        Column ``c``'s tap is in the padding.
    pad_word : Out(simd)
        The word padding taps read (``pad_bit`` in the lanes of real channels).
    weight_addr : Out(weight_addr_width)
    first, last : Out(1)
        The beat starts / ends a group's sum.
    gain : Out(gain shape)
        The beat's op gain (encoded).
    finished : Out(1)
        High from the cycle after the layer's last beat until the next ``start``.

    Latency: the outputs are registered twice; the first beat is on them 3 cycles after
    ``start``, then one beat per cycle, except that a group's first beat waits while the
    previous group's guard count (descriptor ``guard_full``/``guard_last``) runs down.
    ``finished`` rises with the cycle after the last beat is on the outputs.
    """

    def __init__(self, plan, descriptor, addr_width: int, weight_addr_width: int,
                 op_table: str = "auto"):
        if op_table not in _OP_TABLES:
            raise ValueError(f"op_table must be one of {', '.join(map(repr, _OP_TABLES))}, "
                             f"not {op_table!r}")
        self._op_table = op_table
        self._plan = plan
        cols = plan.cols
        super().__init__({
            "desc": In(descriptor),
            "init": In(descriptor),
            "start": In(1),
            "beat": Out(1),
            "addr": Out(cols * addr_width),
            "pad": Out(cols),
            "pad_word": Out(plan.simd),
            "weight_addr": Out(weight_addr_width),
            "first": Out(1),
            "last": Out(1),
            "gain": Out(plan.gain_format.shape),
            "finished": Out(1),
        })
        self._addr_width = addr_width

    def elaborate(self, platform):
        m = Module()
        plan, d = self._plan, self.desc
        cols = plan.cols
        fmt = plan.gain_format

        # Op table: per op, the act plane's word offset, the weight plane's word offset and
        # the gain, read combinationally.
        def code(p, k):
            if fmt.kind == "horner":
                return fmt.encode_step(*p.steps[k])
            if fmt.kind == "sign" and p.steps is not None:
                return fmt.encode(-1 if p.steps[k][0] else 1)
            return fmt.encode(p.gains[k])

        ops = [(off, woff, code(p, k)) for p in plan.layers if p.kind == "compute"
               for k, (off, woff) in enumerate(zip(p.plane_offsets, p.weight_offsets, strict=True))]
        gw = len(self.gain)
        ow = max(1, max(off for off, _, _ in ops).bit_length())
        ww = max(1, max(woff for _, woff, _ in ops).bit_length())
        # In a block RAM (read synchronously at the op's next address: the table's outputs
        # are registers holding the entry of ``op_addr``) or in LUTs (read at ``op_addr``);
        # either way the entry goes into a register (A') before the address adders.
        in_logic = self._op_table == "logic" or (
            self._op_table == "auto" and getattr(platform, "family", None) == "ecp5")
        m.submodules.op_table = op_table = memory.Memory(
            shape=ow + ww + gw, depth=len(ops),
            init=[off | (woff << ow) | (code << (ow + ww)) for off, woff, code in ops],
            attrs={"ram_style": "logic" if in_logic else "block"})
        op_rd = op_table.read_port(domain="comb" if in_logic else "sync")

        aw = self._addr_width + 3  # signed working width for window addresses
        # Loop counters, each as wide as its descriptor limit (the "...l" field: last value).
        op, ky, kx, j = (Signal(len(d.opl)), Signal(len(d.khl)), Signal(len(d.kwl)),
                         Signal(len(d.cwl)))
        cg, pg = Signal(len(d.cgl)), Signal(len(d.pgl))
        row_off = Signal(aw)
        tap_off = Signal(aw)
        wgroup = Signal(len(self.weight_addr) + 1)  # the channel group's first weight word
        # wgroup + the beat's index within its op, and the op table's read address
        # (op_base + op), each kept in a register of its own and stepped with its counters:
        # no adder before the op table, one after it.
        wbeat = Signal(len(self.weight_addr) + 1)
        op_addr = Signal(len(op_rd.addr))
        op_addr_next = Signal.like(op_addr)
        op_start = Signal(init=1)  # the beat is its op's first
        guard = Signal(max(len(d.guard_full), len(d.guard_last)))  # as wide as its descriptor fields
        running = Signal()
        m.d.comb += op_rd.addr.eq(op_addr if in_logic else op_addr_next)
        m.d.sync += op_addr.eq(op_addr_next)

        # The columns' tap coordinates as wide as the coordinate fields need (plus two
        # bits: every value stays within a few input widths of 0), not the address width:
        # shorter carry chains on the position advance and the pad compares.
        cw = 2 + max(len(v) for v in (d.in_h, d.in_w, d.xi0[0], d.yi0[0], d.adv_dx, d.adv_dx_wrap,
                                      d.adv_dy, d.adv_dy1, d.adv_wrap_at, d.khl, d.kwl))
        cw = min(cw, aw)
        yi0 = [Signal(signed(cw), name=f"yi0_{c}") for c in range(cols)]
        xi0 = [Signal(signed(cw), name=f"xi0_{c}") for c in range(cols)]
        base = [Signal(signed(aw), name=f"base_{c}") for c in range(cols)]

        # Registered loop flags: each counter's "at its last value" (and "all at zero",
        # "guard running") is kept in a flip-flop, updated together with its counter from
        # the counter compared with the value before the limit (the descriptor's "...l1"
        # fields: no increment before the compare). The beat control and every
        # register enable are then ANDs of flip-flops, with no compare chained through
        # the nested counters.
        op_last, ky_last, kx_last, j_last = (Signal(init=1, name=n)
                                             for n in ("op_last", "ky_last", "kx_last", "j_last"))
        cg_last, pg_last = Signal(init=1), Signal(init=1)
        at_first = Signal(init=1)  # op, ky, kx and j are all 0: a group's first beat
        guard_on = Signal()  # guard != 0

        first = at_first
        run_end = kx_last & j_last
        last = op_last & ky_last & run_end
        # A beat issues when running and not held by the guard: running & ~(at_first &
        # guard_on). That enables nearly every register here, so it is a flip-flop itself,
        # loaded with the same function of the three flags' next values (below).
        issue = Signal()
        group_end = issue & last
        guard_value = Mux(pg_last, d.guard_last, d.guard_full)
        running_next, at_first_next, guard_on_next = Signal(), Signal(), Signal()
        with m.If(self.start):
            m.d.comb += [running_next.eq(1), at_first_next.eq(1), guard_on_next.eq(0)]
        with m.Else():
            m.d.comb += [running_next.eq(running & ~(group_end & cg_last & pg_last)),
                         at_first_next.eq(Mux(issue, last, at_first)),
                         guard_on_next.eq(Mux(group_end, guard_value != 0, guard_on & (guard != 1)))]
        m.d.sync += [running.eq(running_next), at_first.eq(at_first_next), guard_on.eq(guard_on_next),
                     issue.eq(running_next & ~(at_first_next & guard_on_next))]
        # The op table's address steps with op: op_base + op.
        m.d.comb += op_addr_next.eq(op_addr)
        with m.If(self.start):
            m.d.comb += op_addr_next.eq(self.init.op_base)
        with m.Elif(issue & run_end & ky_last):
            m.d.comb += op_addr_next.eq(Mux(op_last, d.op_base, op_addr + 1))
        # Two register stages to the outputs (A -> A' -> A''). A': the tap's row and column,
        # the window address without its plane offset (base + tap_off), and the op table's
        # entry in a register of its own (a block RAM's clock-to-output then ends in a
        # flip-flop). A'': the pad compares, the plane offset and weight offset added, the
        # gain selected.
        # The one cycle this adds is OP_REGISTER_CYCLES in the cycle model.
        finished_a, finished = Signal(init=1), Signal(init=1)
        m.d.comb += self.finished.eq(finished)
        with m.If(self.start):
            m.d.sync += [finished_a.eq(0), finished.eq(0)]
        with m.Else():
            m.d.sync += [finished_a.eq(~running), finished.eq(finished_a)]
        beat_a = Signal()
        first_a, last_a, op_start_a = (Signal(reset_less=True, name=n) for n in ("first_a", "last_a", "op_start_a"))
        entry_a = Signal(len(op_rd.data), reset_less=True)
        wbeat_a = Signal.like(wbeat, reset_less=True)
        pad_word_a = Signal(len(self.pad_word), reset_less=True)
        m.d.sync += [beat_a.eq(issue & ~self.start), first_a.eq(first), last_a.eq(last),
                     op_start_a.eq(op_start), entry_a.eq(op_rd.data), wbeat_a.eq(wbeat),
                     pad_word_a.eq(Mux(j_last, d.pad_last, d.pad_full))]
        gain_code = entry_a[ow + ww:]
        if fmt.kind == "horner":
            # the accumulator doubles before an op's first beat only
            gain_code = Mux(op_start_a, gain_code, gain_code[0])
        m.d.sync += [self.beat.eq(beat_a & ~self.start), self.first.eq(first_a), self.last.eq(last_a),
                     self.gain.eq(gain_code),
                     self.weight_addr.eq(wbeat_a + entry_a[ow:ow + ww]),
                     self.pad_word.eq(pad_word_a)]
        plane_off = entry_a[:ow]
        for c in range(cols):
            # The tap's row and column in A' (an adder each), their four compares into the
            # pad bit in A'': two carry chains on each path instead of four in one.
            y_a = Signal(signed(cw + 1), name=f"y_a{c}", reset_less=True)
            x_a = Signal(signed(cw + 1), name=f"x_a{c}", reset_less=True)
            addr_a = Signal(aw, name=f"addr_a{c}", reset_less=True)
            m.d.sync += [
                addr_a.eq(base[c] + tap_off),
                y_a.eq(yi0[c] + ky), x_a.eq(xi0[c] + kx),
                self.pad[c].eq((y_a < 0) | (y_a >= d.in_h) | (x_a < 0) | (x_a >= d.in_w)),
                self.addr[c * self._addr_width:(c + 1) * self._addr_width].eq(addr_a + plane_off),
            ]

        # Each column's "x wraps at the next position-group advance" (xi0 >= adv_wrap_at) is
        # a flip-flop compared from the registers every cycle (from the loading descriptor
        # at start): advances are at least max(drain, max_skew) + 1 >= 2 cycles apart (the
        # guard), so it is up to date at every advance and no compare precedes the adders.
        wraps = [Signal(name=f"wrap_{c}") for c in range(cols)]
        for c in range(cols):
            with m.If(self.start):
                m.d.sync += wraps[c].eq(self.init.xi0[c] >= self.init.adv_wrap_at)
            with m.Else():
                m.d.sync += wraps[c].eq(xi0[c] >= d.adv_wrap_at)

        with m.If(guard_on):
            m.d.sync += guard.eq(guard - 1)
        with m.If(self.start):
            m.d.sync += [op.eq(0), ky.eq(0), kx.eq(0), j.eq(0), cg.eq(0), pg.eq(0),
                         row_off.eq(0), tap_off.eq(0), guard.eq(0)]
            m.d.sync += [wgroup.eq(self.init.weight_base), wbeat.eq(self.init.weight_base), op_start.eq(1)]
            m.d.sync += [op_last.eq(self.init.opl == 0), ky_last.eq(self.init.khl == 0),
                         kx_last.eq(self.init.kwl == 0), j_last.eq(self.init.cwl == 0),
                         cg_last.eq(self.init.cgl == 0), pg_last.eq(self.init.pgl == 0)]
            for c in range(cols):
                m.d.sync += [yi0[c].eq(self.init.yi0[c]), xi0[c].eq(self.init.xi0[c]),
                             base[c].eq(self.init.base[c])]
        with m.Elif(issue):
            m.d.sync += [wbeat.eq(wbeat + 1), op_start.eq(0)]
            with m.If(~run_end):
                m.d.sync += tap_off.eq(tap_off + 1)
                with m.If(j_last):
                    m.d.sync += [j.eq(0), j_last.eq(d.cwl == 0), kx.eq(kx + 1),
                                 kx_last.eq(kx == d.kwl1)]
                with m.Else():
                    m.d.sync += [j.eq(j + 1), j_last.eq(j == d.cwl1)]
            with m.Elif(~ky_last):
                m.d.sync += [j.eq(0), kx.eq(0), ky.eq(ky + 1), row_off.eq(row_off + d.tap_row_step),
                             tap_off.eq(row_off + d.tap_row_step)]
                m.d.sync += [j_last.eq(d.cwl == 0), kx_last.eq(d.kwl == 0), ky_last.eq(ky == d.khl1)]
            with m.Else():
                m.d.sync += [j.eq(0), kx.eq(0), ky.eq(0), row_off.eq(0), tap_off.eq(0)]
                m.d.sync += [j_last.eq(d.cwl == 0), kx_last.eq(d.kwl == 0), ky_last.eq(d.khl == 0)]
                m.d.sync += [wbeat.eq(wgroup), op_start.eq(1)]
                with m.If(~op_last):
                    m.d.sync += [op.eq(op + 1), op_last.eq(op == d.opl1)]
                with m.Else():
                    # The group's last beat.
                    m.d.sync += [op.eq(0), op_last.eq(d.opl == 0), guard.eq(guard_value)]
                    with m.If(~cg_last):
                        m.d.sync += [cg.eq(cg + 1), cg_last.eq(cg == d.cgl1),
                                     wgroup.eq(wgroup + d.weight_group_step),
                                     wbeat.eq(wgroup + d.weight_group_step)]
                    with m.Else():
                        m.d.sync += [cg.eq(0), cg_last.eq(d.cgl == 0), pg.eq(pg + 1),
                                     pg_last.eq(pg == d.pgl1), wgroup.eq(d.weight_base),
                                     wbeat.eq(d.weight_base)]
                        for c in range(cols):
                            # (pre-subtracted descriptor fields: one adder per value, the
                            # wrap compare from a flip-flop)
                            wrap = wraps[c]
                            m.d.sync += [
                                xi0[c].eq(Mux(wrap, xi0[c] + d.adv_dx_wrap, xi0[c] + d.adv_dx)),
                                yi0[c].eq(Mux(wrap, yi0[c] + d.adv_dy1, yi0[c] + d.adv_dy)),
                                base[c].eq(Mux(wrap, base[c] + d.adv_base_wrap, base[c] + d.adv_base)),
                            ]
        return m

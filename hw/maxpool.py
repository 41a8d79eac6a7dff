"""Max-pooling on bit planes: the OR of each k x k window, one memory word per read."""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["BitMaxPool"]


class BitMaxPool(wiring.Component):
    """Pool engine: reads each window's words from the source buffer, ORs them, writes one.

    With bit 1 = +1 the maximum of a window of bits is their OR. The engine walks the
    output words in storage order (plane, y, x, channel word) and, for each, the
    ``k x k`` input words of its window: one read per cycle.

    Parameters
    ----------
    descriptor : StructLayout
        The layer descriptor layout (pool fields: ``kl``, ``cwl``, ``pool_*``).
    simd : int
        Bits per memory word.
    addr_width : int
        Activation memory address width.

    Members
    -------
    desc : In(descriptor)
        The pool layer's descriptor, valid from the cycle after ``start``.
    start : In(1)
        Pulse: begin (in the cycle the descriptor is being loaded).
    rd_addr : Out(addr_width)
        Source word address, registered; ``rd_data`` follows ``read_latency`` cycles later
        (1: a block RAM's read port; 2: its data registered once more, as the sequencer
        does).
    rd_data : In(simd)
        Source word read back.
    wr_addr, wr_data, wr_we : Out
        Destination write (whole words).
    drained : Out(1)
        High in the cycle the last write is issued.

    Latency: ``1 + planes*Ho*Wo*cw*k*k + 2 + read_latency`` cycles from ``start`` to the cycle after
    ``drained``.
    """

    def __init__(self, descriptor, simd: int, addr_width: int, read_latency: int = 1):
        self._simd = simd
        self._read_latency = read_latency
        super().__init__({
            "desc": In(descriptor),
            "start": In(1),
            "rd_addr": Out(addr_width),
            "rd_data": In(simd),
            "wr_addr": Out(addr_width),
            "wr_data": Out(simd),
            "wr_we": Out(1),
            "drained": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.desc
        aw = len(self.rd_addr) + 2
        busy = Signal()
        # Each counter as wide as the descriptor field it runs up to (its compare then
        # spans no constant-zero high bits).
        n, yo, xo, j, ky, kx = (Signal(len(field), name=nm) for nm, field in (
            ("n", d.pool_planes_l), ("yo", d.pool_out_hl), ("xo", d.pool_out_wl), ("j", d.cwl),
            ("ky", d.kl), ("kx", d.kl)))
        base_n, base_y, base_x = (Signal(aw, name=nm) for nm in ("base_n", "base_y", "base_x"))
        tap_row, tap = Signal(aw), Signal(aw)
        out_addr = Signal(aw)

        first_tap = (ky == 0) & (kx == 0)
        last_tap = (ky == d.kl) & (kx == d.kl)
        last_word = last_tap & (j == d.cwl) & (xo == d.pool_out_wl) & (yo == d.pool_out_hl) & (n == d.pool_planes_l)
        # The read address in a register of its own (its adders then end in a flip-flop,
        # not in the block RAM's address pins across the fabric).
        m.d.sync += self.rd_addr.eq(base_n + base_y + base_x + j + tap)

        with m.If(self.start):
            m.d.sync += [busy.eq(1), n.eq(0), yo.eq(0), xo.eq(0), j.eq(0), ky.eq(0), kx.eq(0),
                         base_n.eq(0), base_y.eq(0), base_x.eq(0), tap_row.eq(0), tap.eq(0)]
        with m.Elif(busy):
            with m.If(~last_tap):
                with m.If(kx == d.kl):
                    m.d.sync += [kx.eq(0), ky.eq(ky + 1), tap_row.eq(tap_row + d.pool_row_step),
                                 tap.eq(tap_row + d.pool_row_step)]
                with m.Else():
                    m.d.sync += [kx.eq(kx + 1), tap.eq(tap + d.cwl + 1)]
            with m.Else():
                m.d.sync += [kx.eq(0), ky.eq(0), tap_row.eq(0), tap.eq(0)]
                with m.If(j != d.cwl):
                    m.d.sync += j.eq(j + 1)
                with m.Else():
                    m.d.sync += j.eq(0)
                    with m.If(xo != d.pool_out_wl):
                        m.d.sync += [xo.eq(xo + 1), base_x.eq(base_x + d.pool_x_step)]
                    with m.Else():
                        m.d.sync += [xo.eq(0), base_x.eq(0)]
                        with m.If(yo != d.pool_out_hl):
                            m.d.sync += [yo.eq(yo + 1), base_y.eq(base_y + d.pool_y_step)]
                        with m.Else():
                            m.d.sync += [yo.eq(0), base_y.eq(0), n.eq(n + 1),
                                         base_n.eq(base_n + d.pool_plane_step)]
                with m.If(last_word):
                    m.d.sync += busy.eq(0)

        # Read data comes back 1 + read_latency cycles later (address register, read,
        # read data register): OR it into the window's word.
        stage = (busy & ~self.start, first_tap, last_tap, busy & last_word & ~self.start)
        for i in range(1 + self._read_latency):
            regs = tuple(Signal(name=f"p{i}_{nm}") for nm in ("valid", "first", "last", "end"))
            m.d.sync += [r.eq(v) for r, v in zip(regs, stage, strict=True)]
            stage = regs
        p1_valid, p1_first, p1_last, p1_end = stage
        acc = Signal(self._simd, reset_less=True)
        combined = Signal(self._simd)
        m.d.comb += combined.eq(self.rd_data | acc)
        with m.If(p1_first):
            m.d.comb += combined.eq(self.rd_data)
        m.d.sync += acc.eq(combined)
        we = Signal()
        m.d.sync += [we.eq(p1_valid & p1_last), self.wr_data.eq(combined), self.wr_addr.eq(out_addr)]
        with m.If(self.start):
            m.d.sync += out_addr.eq(0)
        with m.Elif(p1_valid & p1_last):
            m.d.sync += out_addr.eq(out_addr + 1)
        m.d.comb += self.wr_we.eq(we)
        end = Signal()
        m.d.sync += end.eq(p1_end)
        m.d.comb += self.drained.eq(end)
        return m

"""The whole-network accelerator: pixel bytes in, class index and logits out.

``Accelerator(net, rows, cols, simd)`` is generated per network: the IR's weights,
gains, thresholds and biases are baked into the memories' initial contents.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from binforge.compiler.ir import INPUT_PLANES, Network

from .plan import DEFAULT_GAIN_MODE, DEFAULT_RELAY, OUT_DATA_WIDTH, NetworkPlan, plan_network
from .sequencer import LayerSequencer, debug_signature

__all__ = ["Accelerator", "ResultLayout", "CYCLES_WIDTH", "LOAD_CYCLES_PER_BIT", "EXPAND_TAIL_CYCLES",
           "load_cycles", "load_cycles_per_pixel"]

#: Width of the cycle counter.
CYCLES_WIDTH = 32
#: Cycles the image loader spends on one bit: the sequencer merges it into its word
#: (reads the word, writes it back whole two cycles later), so the loader's writes are
#: three cycles apart.
LOAD_CYCLES_PER_BIT = 3
#: im2col window assembly: cycles from the image's last pixel read to the loader's end:
#: the tap's coordinates, the pixel address, the read, the pixel (each registered), the
#: cycle after the word's last lane (``copy``), 8 plane writes.
EXPAND_TAIL_CYCLES = 4 + 1 + 8

def load_cycles_per_pixel(plan: NetworkPlan) -> int:
    """Cycles the loader needs from one pixel to the next: ``8 * LOAD_CYCLES_PER_BIT`` for a
    plain input (each bit plane merged into its word), 1 for an im2col input (the pixels
    go into a byte memory first; the windows are assembled after the last one)."""
    return 1 if plan.input_layout.im2col is not None else LOAD_CYCLES_PER_BIT * INPUT_PLANES


def _expand_gaps(plan: NetworkPlan) -> tuple[int, int]:
    """Idle cycles before a full window word's reads and before a position's last word's
    (one of fewer than 8 lanes waits for the previous word's 8 writes)."""
    layout, s = plan.input_layout, plan.simd
    info = layout.im2col
    n_words = layout.pos_stride // s
    last_lanes = info.kernel * info.kernel * info.in_c - (n_words - 1) * s
    return max(0, INPUT_PLANES - s), max(0, INPUT_PLANES - last_lanes)


def load_cycles(plan: NetworkPlan) -> int:
    """Cycles from the first cycle after ``start`` to the network's start, with a source
    that offers a pixel every cycle: ``8 * LOAD_CYCLES_PER_BIT`` per pixel and 1 (the
    first pixel's take) for a plain input; for an im2col input one cycle per pixel, one
    per window lane (``Ho*Wo*k*k*Ci``), the idle cycles before window words of fewer than
    8 lanes, and :data:`EXPAND_TAIL_CYCLES`."""
    layout, size = plan.input_layout, plan.net.input_shape.size
    info = layout.im2col
    if info is None:
        return LOAD_CYCLES_PER_BIT * INPUT_PLANES * size + 1
    words = layout.pos_stride // plan.simd
    taps = info.kernel * info.kernel * info.in_c
    positions = info.out_h * info.out_w
    gap_full, gap_last = _expand_gaps(plan)
    # gaps before every word but the image's first (a full word where W > 1, else a last one)
    gaps = (positions * (words - 1) - (words > 1)) * gap_full + (positions - (words == 1)) * gap_last
    return size + positions * taps + gaps + EXPAND_TAIL_CYCLES


#: One transfer of the result stream: the class index first, then every logit (signed,
#: in the IR's (C, H, W) order); ``last`` marks the final logit.
ResultLayout = data.StructLayout({"data": OUT_DATA_WIDTH, "last": 1})


class Accelerator(wiring.Component):
    """A network on an R x C x S XNOR-popcount array, from pixel bytes to class.

    Parameters
    ----------
    net : Network
        The network IR (validated).
    rows, cols : int
        Array rows (output channels) and columns (output positions), positive.
    simd : int
        Bits per PE per cycle, a positive power of two.
    relay : int
        PEs per relay register in the array (default 4).
    gain_mode : str
        ``"shift"`` (default): gains that are not powers of two run as one op per signed
        digit, the PEs only shift; ``"multiply"``: PEs multiply, every op runs once.
    image_banks : ``"auto"``, None or int
        The im2col image memory in banks, each read into a register of its own
        (:func:`~binforge.hw.sequencer.image_bank_depth`): ``"auto"`` (default) one
        DP16KD deep on ECP5, one memory elsewhere; ``None`` never; a power of two: words
        per bank. Same cycles and memory bits either way.
    image_memory : str
        ``"auto"`` (default): the im2col image memory in the SB_SPRAM256KA tiles of an
        iCE40 UltraPlus where they hold it (:func:`~binforge.hw.spram.image_memory_kind`),
        ``"block"``: block RAM, ``"spram"``: the single-port structure anywhere. Same cycles.

    Members
    -------
    pixels : In(stream.Signature(8))
        The image, one uint8 pixel per transfer, in (C, H, W) order; taken after ``start``.
    result : Out(stream.Signature(ResultLayout))
        The class index, then ``num_classes`` logits (two's complement in ``data``);
        ``last`` on the final one.
    start : In(1)
        Pulse while idle: take an image, run the network, send the result.
    busy : Out(1)
        High from the cycle after ``start`` until the last result transfer.
    done : Out(1)
        High once a run has finished, until the next ``start``.
    cycles : Out(32)
        Cycles the network took (from the first layer to the logits; not counting the
        image transfer or the result stream); valid while ``done``, counting while the
        network runs.
    debug : Out(:func:`~binforge.hw.sequencer.debug_signature`)
        The sequencer's debug tap: the running layer, its start, and its writes.

    Latency: ``cycles`` equals :func:`~binforge.hw.plan.analytic_cycles` ``["total"]``.
    Loading takes 24 cycles per pixel (three per bit plane: each bit is merged into its
    memory word, read and written back whole), or ``24 * k * k`` when the first layer reads
    its windows from an im2col image memory, plus the source's stalls
    (:data:`LOAD_CYCLES_PER_BIT`).
    """

    def __init__(self, net: Network, rows: int, cols: int, simd: int, relay: int = DEFAULT_RELAY,
                 gain_mode: str = DEFAULT_GAIN_MODE, *, image_banks="auto",
                 image_memory="auto"):
        if not isinstance(net, Network):
            raise TypeError(f"net must be a binforge.compiler.ir.Network, not {type(net).__name__}")
        self._plan = plan_network(net, rows, cols, simd, relay, gain_mode)
        self._sequencer = LayerSequencer(self._plan, image_banks=image_banks, image_memory=image_memory)
        super().__init__({
            "pixels": In(stream.Signature(8)),
            "result": Out(stream.Signature(ResultLayout)),
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "cycles": Out(CYCLES_WIDTH),
            "debug": Out(debug_signature(self._plan, self._sequencer.act_addr_width)),
        })

    @property
    def plan(self) -> NetworkPlan:
        return self._plan

    @property
    def net(self) -> Network:
        return self._plan.net

    def _expand(self, m, plan, seq, pix_rd, pix_wr, start, done):
        """The im2col windows from the pixel memory, written whole into the image memory.

        For each output position and each of its ``W`` window words, in storage order:
        read the word's (tap, channel) pixels one per cycle (``k*k*Ci`` lanes over the
        ``W`` words; a tap outside the image gives the pad bit), assemble the 8 plane
        words (lanes above the window's last are written as 0) and write them, one per
        cycle, through the sequencer's load port (whole words, no merge) while the next
        word's pixels are read into the same plane words (the lanes they overwrite
        before their plane is written are kept aside). A word of fewer than 8 lanes waits
        ``8 - lanes`` cycles before its reads, so a word's 8 writes are done before the
        next word's. ``start`` pulses in the cycle before the first read;
        ``done`` in the cycle of the last write request (:func:`load_cycles`).
        """
        layout, info, s = plan.input_layout, plan.input_layout.im2col, plan.simd
        k, st, pad, ci = info.kernel, info.stride, info.padding, info.in_c
        h, w = info.in_h, info.in_w
        n_words = layout.pos_stride // s  # window words per position
        last_word = info.out_h * info.out_w * n_words - 1
        gap_full, gap_last = _expand_gaps(plan)
        sw = signed((max(h, w) + pad + k + st).bit_length() + 1)
        # Issue stage: the lane's counters.
        reading = Signal()
        gap = Signal(range(INPUT_PLANES + 1))
        lane, ch, kx, ky = Signal(range(s)), Signal(range(ci)), Signal(range(k)), Signal(range(k))
        xo, yo = Signal(range(info.out_w)), Signal(range(info.out_h))
        row0, col0 = Signal(sw), Signal(sw)  # the window's top-left pixel: yo*st - pad, xo*st - pad
        # The tap's pixel address ch*h*w + (row0 + ky)*w + col0 + kx from counters that
        # step by constants (row0*w, and ch*h*w + ky*w), not from multiplications.
        aw = signed((ci * h * w + (h + pad + k + st) * w + w + k + st).bit_length() + 2)
        row0w, tapw = Signal(aw), Signal(aw)
        word_in_pos = Signal(range(n_words))
        last_lanes = k * k * ci - (n_words - 1) * s  # lanes of a position's last word
        last_tap = (ky == k - 1) & (kx == k - 1) & (ch == ci - 1)
        word_end = (lane == s - 1) | last_tap
        with m.If(start):
            m.d.sync += [reading.eq(1), lane.eq(0), ch.eq(0), kx.eq(0), ky.eq(0), xo.eq(0), yo.eq(0),
                         row0.eq(-pad), col0.eq(-pad), word_in_pos.eq(0), row0w.eq(-pad * w), tapw.eq(0)]
        with m.If(reading):
            m.d.sync += lane.eq(lane + 1)
            with m.If(ch != ci - 1):
                m.d.sync += [ch.eq(ch + 1), tapw.eq(tapw + h * w)]
            with m.Else():
                m.d.sync += ch.eq(0)
                with m.If(kx != k - 1):
                    m.d.sync += [kx.eq(kx + 1), tapw.eq(tapw - (ci - 1) * h * w)]
                with m.Else():
                    m.d.sync += [kx.eq(0), ky.eq(Mux(ky == k - 1, 0, ky + 1)),
                                 tapw.eq(Mux(ky == k - 1, 0, tapw + (w - (ci - 1) * h * w)))]
            with m.If(last_tap):  # the next position
                with m.If(xo != info.out_w - 1):
                    m.d.sync += [xo.eq(xo + 1), col0.eq(col0 + st)]
                with m.Else():
                    m.d.sync += [xo.eq(0), col0.eq(-pad), yo.eq(yo + 1), row0.eq(row0 + st),
                                 row0w.eq(row0w + st * w)]
            with m.If(word_end):
                m.d.sync += lane.eq(0)
                # the next word: the last of its position, or a full one
                next_is_last = (word_in_pos == n_words - 2) if n_words > 1 else 1
                next_gap = Mux(next_is_last, gap_last, gap_full)
                m.d.sync += word_in_pos.eq(Mux(word_in_pos == n_words - 1, 0, word_in_pos + 1))
                with m.If((yo == info.out_h - 1) & (xo == info.out_w - 1) & last_tap):
                    m.d.sync += reading.eq(0)  # the image's last word
                with m.Elif(next_gap != 0):
                    m.d.sync += [reading.eq(0), gap.eq(next_gap)]
        with m.If(gap != 0):
            m.d.sync += gap.eq(gap - 1)
            with m.If(gap == 1):
                m.d.sync += reading.eq(1)
        # Stage A: the tap's pixel coordinates and its row's address; A2: its address and
        # whether it lies inside the image; B: the pixel memory's read; C: the pixel, pad
        # bit chosen.
        a_valid, a_last, a_lane = Signal(), Signal(), Signal(range(s))
        a_y, a_x, a_yw = Signal(sw), Signal(sw), Signal(aw)
        a_pos_end = Signal()  # the word is its position's last
        m.d.sync += [a_valid.eq(reading), a_last.eq(word_end), a_lane.eq(lane),
                     a_pos_end.eq(word_in_pos == n_words - 1),
                     a_y.eq(row0 + ky), a_x.eq(col0 + kx), a_yw.eq(row0w + tapw)]
        a2_valid, a2_pos_end, a2_last, a2_lane, a2_inside = Signal(), Signal(), Signal(), Signal(range(s)), Signal()
        a2_addr = Signal.like(pix_rd.addr)
        m.d.sync += [a2_valid.eq(a_valid), a2_pos_end.eq(a_pos_end), a2_last.eq(a_last), a2_lane.eq(a_lane),
                     a2_inside.eq((a_y >= 0) & (a_y < h) & (a_x >= 0) & (a_x < w)),
                     a2_addr.eq(a_yw + a_x)]
        m.d.comb += pix_rd.addr.eq(a2_addr)
        b_valid, b_pos_end, b_last, b_lane, b_inside = Signal(), Signal(), Signal(), Signal(range(s)), Signal()
        m.d.sync += [b_valid.eq(a2_valid), b_pos_end.eq(a2_pos_end), b_last.eq(a2_last), b_lane.eq(a2_lane),
                     b_inside.eq(a2_inside)]
        # The pixel memory's read (an asynchronous port: ``b_byte`` is the block RAM's read
        # register, idle in the loader's write cycles, which never meet a read, so that a
        # read and a write at one address need no collision logic), then the pixel into a
        # register as the memory gives it (the block RAM's own output register where the
        # fabric has one); the pad bit after it.
        b_byte = Signal(8, reset_less=True)
        with m.If(~pix_wr.en):
            m.d.sync += b_byte.eq(pix_rd.data)
        c_valid, c_pos_end, c_last, c_lane = Signal(), Signal(), Signal(), Signal(range(s))
        c_inside, c_byte = Signal(), Signal(8, reset_less=True)
        m.d.sync += [c_valid.eq(b_valid), c_pos_end.eq(b_pos_end), c_last.eq(b_valid & b_last),
                     c_lane.eq(b_lane), c_inside.eq(b_inside), c_byte.eq(b_byte)]
        words = [Signal(s, name=f"window_plane{p}") for p in range(INPUT_PLANES)]
        for p, plane_word in enumerate(words):
            with m.If(c_valid):
                m.d.sync += plane_word.bit_select(c_lane, 1).eq(Mux(c_inside, c_byte[p], info.pad_bit))
        # A word is written plane by plane in the 8 cycles after the one after its last
        # lane (``copy``): plane p's word at p * plane_words + word, whole, from the plane
        # words themselves while the next word's lanes arrive. Lane i of the next word
        # lands at the end of cycle ``copy + i`` at the earliest and plane p is read in
        # cycle ``copy + 1 + p``, so lanes 0..p of plane p are kept at ``copy + i`` (36
        # flip-flops, not a copy of all 8 x S bits). The lanes past a position's last
        # word's ``last_lanes`` hold an earlier word's bits: masked on the way out.
        copy = Signal()
        pos_end = Signal()
        m.d.sync += [copy.eq(c_last), pos_end.eq(c_pos_end)]
        writing, plane = Signal(), Signal(range(INPUT_PLANES))
        kept = [Signal(min(p + 1, s), name=f"kept_plane{p}") for p in range(INPUT_PLANES)]
        for i in range(min(INPUT_PLANES, s)):
            with m.If(copy if i == 0 else writing & (plane == i - 1)):  # cycle copy + i
                m.d.sync += [kept[p][i].eq(words[p][i]) for p in range(i, INPUT_PLANES)]
        wr_pos_end = Signal()
        with m.If(copy):
            m.d.sync += wr_pos_end.eq(pos_end)
        word = Signal(range(last_word + 2))  # the word being written: position * W + word
        wr_addr = Signal(len(seq.load_addr))
        m.d.sync += [seq.load_we.eq(writing), seq.load_addr.eq(wr_addr)]  # whole words: no lane enables
        with m.Switch(plane):
            for p, plane_word in enumerate(words):
                bits = [kept[p][i] if i <= p else plane_word[i] for i in range(s)]
                bits = [b & ~wr_pos_end if i >= last_lanes else b for i, b in enumerate(bits)]
                with m.Case(p):
                    m.d.sync += seq.load_data.eq(Cat(*bits))
        with m.If(start):
            m.d.sync += word.eq(0)
        with m.If(writing):
            m.d.sync += [plane.eq(plane + 1), wr_addr.eq(wr_addr + layout.plane_words)]
            with m.If(plane == INPUT_PLANES - 1):
                m.d.sync += [writing.eq(0), word.eq(word + 1)]
                with m.If(word == last_word):
                    m.d.comb += done.eq(1)
        with m.If(copy):  # the previous word's last write is in this cycle at the latest
            m.d.sync += [writing.eq(1), plane.eq(0), wr_addr.eq(Mux(writing, word + 1, word))]

    def elaborate(self, platform):
        m = Module()
        plan = self._plan
        s = plan.simd
        log_s = s.bit_length() - 1
        m.submodules.sequencer = seq = self._sequencer
        wiring.connect(m, wiring.flipped(self.debug), seq.debug)
        shape = plan.net.input_shape
        layout = plan.input_layout
        hw = shape.height * shape.width

        # ---- Image loader ------------------------------------------------------------
        # A plain input (buffer 0): 8 bit-plane writes per pixel. Bit (plane, position,
        # channel) of the input tensor is bit plane * plane_bits + position * pos_stride +
        # channel of buffer 0; each is merged into its word by the sequencer.
        # An im2col input (the first conv's windows, in the image memory): the pixels go
        # into a byte memory as they come (one per cycle), then the window words are
        # assembled from it and written whole (:meth:`_expand`).
        im2col = layout.im2col
        if im2col is None:
            aw = seq.act_addr_width + log_s + 2
            byte = Signal(8)
            have = Signal()
            plane = Signal(range(INPUT_PLANES))
            channel = Signal(range(shape.channels + 1))
            pos = Signal(range(hw + 1))
            pos_acc = Signal(aw)
            plane_acc = Signal(aw)
            bit_addr = Signal(aw)
            last_plane = plane == INPUT_PLANES - 1
            # (channel, pos) is the image's last pixel: a flag kept with the counters, so
            # that the stream's ready and the loader's branches wait for no compare.
            only_pixel = shape.channels == 1 and hw == 1
            last_pixel = Signal(init=int(only_pixel))
            go = Signal()
            bit = Signal()
            m.d.comb += [bit.eq(byte.bit_select(plane, 1)), bit_addr.eq(plane_acc + pos_acc + channel)]
            # The last bit of a position's channels (padded layout) or of the plane (dense
            # layout) also clears the lanes above it: unused lanes read 0.
            fill = last_pixel if layout.dense else channel == shape.channels - 1
            lane = bit_addr[:log_s] if log_s else 0
            # One bit every third cycle: the sequencer merges each into its word (reads
            # the word, writes it back whole two cycles later), so its requests are three
            # cycles apart. ``go``: this cycle takes a bit; ``rest``: cycles left to wait
            # after one that did, or after a pixel was taken (so every pixel takes exactly
            # 8 * LOAD_CYCLES_PER_BIT cycles, the first one too).
            rest = Signal(range(LOAD_CYCLES_PER_BIT))
            m.d.comb += go.eq(have & (rest == 0))
            with m.If(go | (self.pixels.valid & self.pixels.ready)):
                m.d.sync += rest.eq(LOAD_CYCLES_PER_BIT - 1)
            with m.Elif(rest != 0):
                m.d.sync += rest.eq(rest - 1)
            # The writes are registered (the address adders get a cycle of their own).
            m.d.sync += [seq.load_addr.eq(bit_addr >> log_s),
                         seq.load_data.eq(bit << lane),
                         seq.load_we.eq(go)]
            with m.If(fill):
                m.d.sync += seq.load_en.eq(((1 << s) - 1) << lane)
            with m.Else():
                m.d.sync += seq.load_en.eq(1 << lane)
        else:
            pixels = memory.Memory(shape=unsigned(8), depth=shape.size, init=[])
            m.submodules.pixels = pixels
            pix_wr, pix_rd = pixels.write_port(), pixels.read_port(domain="comb")
            expand_start, expand_done = Signal(), Signal()
            self._expand(m, plan, seq, pix_rd, pix_wr, expand_start, expand_done)
            taken = Signal(range(shape.size + 1))
            m.d.comb += [pix_wr.addr.eq(taken), pix_wr.data.eq(self.pixels.payload)]

        count = Signal(CYCLES_WIDTH)
        m.d.comb += self.cycles.eq(count)
        with m.If(seq.busy):
            m.d.sync += count.eq(count + 1)

        word_index = Signal(range(plan.net.num_classes + 2))  # result word: 0 = class
        out_valid = Signal()
        out_payload = Signal(ResultLayout)
        m.d.comb += [self.result.valid.eq(out_valid), self.result.payload.eq(out_payload)]

        with m.FSM(name="accelerator"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.done.eq(0), count.eq(0)]
                    if im2col is None:
                        m.d.sync += [have.eq(0), plane.eq(0), channel.eq(0), pos.eq(0),
                                     last_pixel.eq(only_pixel), pos_acc.eq(0), plane_acc.eq(0)]
                    else:
                        m.d.sync += taken.eq(0)
                    m.next = "LOAD"
            if im2col is not None:
                with m.State("LOAD"):
                    # one pixel per cycle into the pixel memory, then the windows
                    m.d.comb += [self.busy.eq(1), self.pixels.ready.eq(1),
                                 pix_wr.en.eq(self.pixels.valid)]
                    with m.If(self.pixels.valid):
                        m.d.sync += taken.eq(taken + 1)
                        with m.If(taken == shape.size - 1):
                            m.d.comb += expand_start.eq(1)
                            m.next = "EXPAND"
                with m.State("EXPAND"):
                    m.d.comb += self.busy.eq(1)
                    with m.If(expand_done):
                        m.next = "RUN"
            else:
                with m.State("LOAD"):
                    m.d.comb += [self.busy.eq(1),
                                 self.pixels.ready.eq(~have | (go & last_plane & ~last_pixel))]
                    with m.If(go):
                        with m.If(last_plane):
                            m.d.sync += [plane.eq(0), plane_acc.eq(0), have.eq(0)]
                            with m.If(pos == hw - 1):
                                m.d.sync += [pos.eq(0), pos_acc.eq(0), channel.eq(channel + 1),
                                             last_pixel.eq(channel == shape.channels - 2 if hw == 1 else 0)]
                            with m.Else():
                                m.d.sync += [pos.eq(pos + 1), pos_acc.eq(pos_acc + layout.pos_stride),
                                             last_pixel.eq((channel == shape.channels - 1) & (pos == hw - 2))]
                            with m.If(last_pixel):
                                m.next = "RUN"
                        with m.Else():
                            m.d.sync += [plane.eq(plane + 1), plane_acc.eq(plane_acc + layout.plane_words * s)]
                    with m.If(self.pixels.valid & self.pixels.ready):
                        m.d.sync += [byte.eq(self.pixels.payload), have.eq(1)]
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), seq.start.eq(1)]
                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += self.busy.eq(1)
                with m.If(seq.done):
                    m.d.sync += [out_valid.eq(1), out_payload.data.eq(seq.class_index),
                                 out_payload.last.eq(0), word_index.eq(1)]
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [self.busy.eq(1), seq.logit_addr.eq(word_index - 1)]
                with m.If(self.result.ready):
                    m.d.sync += out_valid.eq(0)
                    with m.If(out_payload.last):
                        m.d.sync += self.done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("FETCH"):
                # the logits memory answers one cycle after its address
                m.d.comb += [self.busy.eq(1), seq.logit_addr.eq(word_index - 1)]
                m.d.sync += [out_valid.eq(1), out_payload.data.eq(seq.logit_data),
                             out_payload.last.eq(word_index == plan.net.num_classes),
                             word_index.eq(word_index + 1)]
                m.next = "SEND"
        return m

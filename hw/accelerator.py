"""The whole-network accelerator: pixel bytes in, class index and logits out.

``Accelerator(net, rows, cols, simd)`` is generated per network: the IR's weights,
gains, thresholds and biases are baked into the memories' initial contents.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from binforge.compiler.ir import INPUT_PLANES, Network

from .plan import DEFAULT_GAIN_MODE, DEFAULT_RELAY, OUT_DATA_WIDTH, NetworkPlan, plan_network
from .sequencer import LayerSequencer, debug_signature

__all__ = ["Accelerator", "ResultLayout", "CYCLES_WIDTH", "LOAD_CYCLES_PER_BIT"]

#: Width of the cycle counter.
CYCLES_WIDTH = 32
#: Cycles the image loader spends on one bit: the sequencer merges it into its word
#: (reads the word, writes it back whole two cycles later), so the loader's writes are
#: three cycles apart.
LOAD_CYCLES_PER_BIT = 3

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
                 gain_mode: str = DEFAULT_GAIN_MODE, *, image_banks="auto"):
        if not isinstance(net, Network):
            raise TypeError(f"net must be a binforge.compiler.ir.Network, not {type(net).__name__}")
        self._plan = plan_network(net, rows, cols, simd, relay, gain_mode)
        self._sequencer = LayerSequencer(self._plan, image_banks=image_banks)
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

        # ---- Image loader: 8 bit-plane writes per pixel (8 x k*k for an im2col input) ----
        # Bit (plane, position, channel) of the input tensor is bit
        # plane * plane_bits + position * pos_stride + channel of buffer 0; an im2col input
        # (the first conv's windows, in the image memory) takes each pixel bit once per
        # window that holds it, at window tap (ky, kx).
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
        # (channel, pos) is the image's last pixel: a flag kept with the counters, so that
        # the stream's ready and the loader's branches wait for no compare.
        only_pixel = shape.channels == 1 and hw == 1
        last_pixel = Signal(init=int(only_pixel))
        bit = Signal()
        m.d.comb += bit.eq(byte.bit_select(plane, 1))
        im2col = layout.im2col
        if im2col is None:
            m.d.comb += bit_addr.eq(plane_acc + pos_acc + channel)
            valid = Const(1)
            last_tap = Const(1)
            # The last bit of a position's channels (padded layout) or of the plane (dense
            # layout) also clears the lanes above it: unused lanes read 0.
            fill = last_pixel if layout.dense else channel == shape.channels - 1
        else:
            kernel, st = im2col.kernel, im2col.stride
            log_st = st.bit_length() - 1
            ky, kx = Signal(range(kernel)), Signal(range(kernel))
            y, x = Signal(range(shape.height)), Signal(range(shape.width))
            reach = max(shape.height, shape.width) + im2col.padding + 1
            ty, tx = Signal(signed(reach.bit_length() + 1)), Signal(signed(reach.bit_length() + 1))
            m.d.comb += [ty.eq(y + im2col.padding - ky), tx.eq(x + im2col.padding - kx)]
            yo, xo = Signal(range(im2col.out_h + 1)), Signal(range(im2col.out_w + 1))
            m.d.comb += [yo.eq(ty >> log_st), xo.eq(tx >> log_st)]
            # Two pipeline stages (the window's position and validity, then the address
            # with its constant multiplies): the loader's state changes only after a
            # ``go``, and ``go`` comes every LOAD_CYCLES_PER_BIT >= 3 cycles, so at the next
            # one both stages hold what the state has been since.
            yo_r, xo_r = Signal.like(yo), Signal.like(xo)
            tap_r, valid_r, valid = Signal(aw), Signal(), Signal()
            m.d.sync += [yo_r.eq(yo), xo_r.eq(xo),
                         tap_r.eq(plane_acc + (ky * kernel + kx) * im2col.in_c + channel),
                         valid_r.eq((ty >= 0) & (tx >= 0) & (ty[:log_st] == 0 if log_st else 1)
                                    & (tx[:log_st] == 0 if log_st else 1)
                                    & (yo < im2col.out_h) & (xo < im2col.out_w)),
                         valid.eq(valid_r),
                         bit_addr.eq(tap_r + yo_r * (im2col.out_w * layout.pos_stride)
                                     + xo_r * layout.pos_stride)]
            last_tap = (ky == kernel - 1) & (kx == kernel - 1)
            fill = Const(0)
        lane = bit_addr[:log_s] if log_s else 0
        # One bit every third cycle: the sequencer merges each into its word (reads the
        # word, writes it back whole two cycles later), so its requests are three cycles
        # apart. ``go``: this cycle takes a bit; ``rest``: cycles left to wait after one
        # that did, or after a pixel was taken (so every pixel takes exactly
        # 8 * LOAD_CYCLES_PER_BIT cycles, the first one too).
        go = Signal()
        rest = Signal(range(LOAD_CYCLES_PER_BIT))
        m.d.comb += go.eq(have & (rest == 0))
        with m.If(go | (self.pixels.valid & self.pixels.ready)):
            m.d.sync += rest.eq(LOAD_CYCLES_PER_BIT - 1)
        with m.Elif(rest != 0):
            m.d.sync += rest.eq(rest - 1)
        # The writes are registered (the address adders get a cycle of their own).
        m.d.sync += [seq.load_addr.eq(bit_addr >> log_s),
                     seq.load_data.eq(bit << lane),
                     seq.load_we.eq(go & valid)]
        with m.If(fill):
            m.d.sync += seq.load_en.eq(((1 << s) - 1) << lane)
        with m.Else():
            m.d.sync += seq.load_en.eq(1 << lane)

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
                    m.d.sync += [self.done.eq(0), have.eq(0), plane.eq(0), channel.eq(0), pos.eq(0),
                                 last_pixel.eq(only_pixel),
                                 pos_acc.eq(0), plane_acc.eq(0), count.eq(0)]
                    if im2col is not None:
                        m.d.sync += [ky.eq(0), kx.eq(0), y.eq(0), x.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.busy.eq(1),
                             self.pixels.ready.eq(~have | (go & last_plane & last_tap & ~last_pixel))]
                with m.If(go & ~last_tap):
                    # im2col: the next window tap of this pixel and plane
                    if im2col is not None:
                        with m.If(kx == kernel - 1):
                            m.d.sync += [kx.eq(0), ky.eq(ky + 1)]
                        with m.Else():
                            m.d.sync += kx.eq(kx + 1)
                with m.Elif(go):
                    if im2col is not None:
                        m.d.sync += [kx.eq(0), ky.eq(0)]
                    with m.If(last_plane):
                        m.d.sync += [plane.eq(0), plane_acc.eq(0), have.eq(0)]
                        with m.If(pos == hw - 1):
                            m.d.sync += [pos.eq(0), pos_acc.eq(0), channel.eq(channel + 1),
                                         last_pixel.eq(channel == shape.channels - 2 if hw == 1 else 0)]
                        with m.Else():
                            m.d.sync += [pos.eq(pos + 1), pos_acc.eq(pos_acc + layout.pos_stride),
                                         last_pixel.eq((channel == shape.channels - 1) & (pos == hw - 2))]
                        if im2col is not None:
                            with m.If(x == shape.width - 1):
                                m.d.sync += [x.eq(0), y.eq(Mux(y == shape.height - 1, 0, y + 1))]
                            with m.Else():
                                m.d.sync += x.eq(x + 1)
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

"""The board side of the host protocol (:mod:`binforge.boards.protocol`) in gateware.

:class:`HostLink` sits between the UART and the accelerator
(:class:`binforge.hw.accelerator.Accelerator`): it checks a request's frame, starts
the accelerator, passes the pixels on, and turns the accelerator's result stream
(class, then logits) and cycle count into the reply, byte by byte.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .protocol import CYCLE_BYTES, REPLY_MAGIC, REQUEST_MAGIC, STATUS_BAD_LENGTH, STATUS_OK

__all__ = ["HostLink", "ResultPort"]

#: The result stream as the accelerator sends it: ``data`` (32 bits) and ``last``.
RESULT_DATA_WIDTH = 32


def ResultPort():
    """The signature of the accelerator's result stream (class, then logits, ``last``)."""
    from amaranth.lib import data

    return stream.Signature(data.StructLayout({"data": RESULT_DATA_WIDTH, "last": 1}))


class HostLink(wiring.Component):
    """Request parser and reply sender, one image at a time.

    Parameters
    ----------
    pixels : int
        The network's input size in bytes; a request of any other length is read,
        dropped and answered with ``STATUS_BAD_LENGTH``.
    num_classes : int
        Logits per reply (1..255).
    logit_width : int
        Bits of one signed logit (1..32); a reply carries ``ceil(logit_width / 8)``
        bytes of each (the low bytes of the sign-extended 32-bit word).

    Members
    -------
    rx : In(stream.Signature(8))
        Bytes from the host (the UART receiver).
    tx : Out(stream.Signature(8))
        Bytes to the host (the UART transmitter).
    start : Out(1)
        Pulse: the accelerator is to take an image (sent before its pixels).
    pixels : Out(stream.Signature(8))
        The request's pixels, in order.
    result : In(ResultPort())
        The accelerator's class index, then ``num_classes`` logits, ``last`` on the final one.
    done : In(1)
        The accelerator finished the image (after its last result transfer).
    cycles : In(32)
        The accelerator's cycle count, read while ``done``.
    busy : Out(1)
        A request is being handled (from its length to the reply's last byte).
    """

    def __init__(self, pixels: int, num_classes: int, logit_width: int):
        if not isinstance(pixels, int) or not 0 < pixels <= 0xFFFF:
            raise ValueError(f"pixels must be an integer in 1..65535, not {pixels!r}")
        if not isinstance(num_classes, int) or not 0 < num_classes <= 255:
            raise ValueError(f"num_classes must be an integer in 1..255, not {num_classes!r}")
        if not isinstance(logit_width, int) or not 0 < logit_width <= RESULT_DATA_WIDTH:
            raise ValueError(f"logit_width must be an integer in 1..{RESULT_DATA_WIDTH}, not {logit_width!r}")
        self._pixels, self._num_classes, self._logit_width = pixels, num_classes, logit_width
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "start": Out(1),
            "pixels": Out(stream.Signature(8)),
            "result": In(ResultPort()),
            "done": In(1),
            "cycles": In(8 * CYCLE_BYTES),
            "busy": Out(1),
        })

    @property
    def logit_bytes(self) -> int:
        return (self._logit_width + 7) // 8

    def elaborate(self, platform):
        m = Module()
        lb, n = self.logit_bytes, self._num_classes
        length = Signal(16)
        remaining = Signal(16)
        bad = Signal()
        status = Signal(8)
        word = Signal(RESULT_DATA_WIDTH)  # the result word being sent, shifted a byte at a time
        byte_index = Signal(range(max(lb, CYCLE_BYTES) + 1))
        logits_left = Signal(range(n + 1))

        def send(value, then):
            """Offer ``value`` on tx; when taken, go to ``then``."""
            m.d.comb += [self.busy.eq(1), self.tx.valid.eq(1), self.tx.payload.eq(value)]
            with m.If(self.tx.ready):
                m.next = then

        with m.FSM():
            with m.State("magic"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid & (self.rx.payload == REQUEST_MAGIC)):
                    m.next = "length_low"
            with m.State("length_low"):
                m.d.comb += [self.rx.ready.eq(1), self.busy.eq(1)]
                with m.If(self.rx.valid):
                    m.d.sync += length[:8].eq(self.rx.payload)
                    m.next = "length_high"
            with m.State("length_high"):
                m.d.comb += [self.rx.ready.eq(1), self.busy.eq(1)]
                with m.If(self.rx.valid):
                    m.d.sync += [length[8:].eq(self.rx.payload),
                                 remaining.eq(self.rx.payload << 8 | length[:8])]
                    m.next = "check"
            with m.State("check"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += bad.eq(length != self._pixels)
                with m.If(length == self._pixels):
                    m.d.sync += status.eq(STATUS_OK)
                    m.next = "start"
                with m.Else():
                    m.d.sync += status.eq(STATUS_BAD_LENGTH)
                    with m.If(length == 0):
                        m.next = "reply_magic"
                    with m.Else():
                        m.next = "drain"
            with m.State("start"):
                m.d.comb += [self.busy.eq(1), self.start.eq(1)]
                m.next = "pixels"
            with m.State("pixels"):
                m.d.comb += [self.busy.eq(1), self.pixels.valid.eq(self.rx.valid),
                             self.pixels.payload.eq(self.rx.payload),
                             self.rx.ready.eq(self.pixels.ready)]
                with m.If(self.rx.valid & self.pixels.ready):
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        m.next = "reply_magic"
            with m.State("drain"):
                m.d.comb += [self.busy.eq(1), self.rx.ready.eq(1)]
                with m.If(self.rx.valid):
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        m.next = "reply_magic"
            with m.State("reply_magic"):
                send(REPLY_MAGIC, "reply_status")
            with m.State("reply_status"):
                send(status, "fetch_class")
            with m.State("fetch_class"):
                m.d.comb += self.busy.eq(1)
                with m.If(bad):
                    m.d.sync += word.eq(0)
                    m.next = "reply_class"
                with m.Else():
                    m.d.comb += self.result.ready.eq(1)
                    with m.If(self.result.valid):
                        m.d.sync += word.eq(self.result.payload.data)
                        m.next = "reply_class"
            with m.State("reply_class"):
                send(word[:8], "reply_logit_bytes")
            with m.State("reply_logit_bytes"):
                send(lb, "reply_count")
                m.d.sync += logits_left.eq(n)
            with m.State("reply_count"):
                send(n, "fetch_logit")
            with m.State("fetch_logit"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += byte_index.eq(0)
                with m.If(logits_left == 0):
                    m.next = "wait_done"
                with m.Elif(bad):
                    m.d.sync += [word.eq(0), logits_left.eq(logits_left - 1)]
                    m.next = "reply_logit"
                with m.Else():
                    m.d.comb += self.result.ready.eq(1)
                    with m.If(self.result.valid):
                        m.d.sync += [word.eq(self.result.payload.data), logits_left.eq(logits_left - 1)]
                        m.next = "reply_logit"
            with m.State("reply_logit"):
                m.d.comb += [self.busy.eq(1), self.tx.valid.eq(1), self.tx.payload.eq(word[:8])]
                with m.If(self.tx.ready):
                    m.d.sync += [word.eq(word >> 8), byte_index.eq(byte_index + 1)]
                    with m.If(byte_index == lb - 1):
                        m.next = "fetch_logit"
            with m.State("wait_done"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += byte_index.eq(0)
                with m.If(bad):
                    m.d.sync += word.eq(0)
                    m.next = "reply_cycles"
                with m.Elif(self.done):
                    m.d.sync += word.eq(self.cycles)
                    m.next = "reply_cycles"
            with m.State("reply_cycles"):
                m.d.comb += [self.busy.eq(1), self.tx.valid.eq(1), self.tx.payload.eq(word[:8])]
                with m.If(self.tx.ready):
                    m.d.sync += [word.eq(word >> 8), byte_index.eq(byte_index + 1)]
                    with m.If(byte_index == CYCLE_BYTES - 1):
                        m.next = "magic"
        return m

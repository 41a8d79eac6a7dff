"""The board side of the host protocol (:mod:`binforge.boards.protocol`) in gateware.

:class:`HostLink` sits between the UART and the accelerator
(:class:`binforge.hw.accelerator.Accelerator`): it checks a request's frame, starts
the accelerator, passes the pixels on, and turns the accelerator's result stream
(class, then logits) and cycle count into the reply, byte by byte.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
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
        # Registered compares, so that no state change waits for a wide compare:
        remaining_one = Signal()  # remaining == 1
        length_ok = Signal()  # length == pixels
        length_zero = Signal()  # length == 0
        bad = Signal()
        status = Signal(8)
        word = Signal(RESULT_DATA_WIDTH)  # the result word being sent, shifted a byte at a time
        byte_index = Signal(range(max(lb, CYCLE_BYTES) + 1))
        logits_left = Signal(range(n + 1))
        logits_any = Signal()  # logits_left != 0, a register updated with it
        # The pixel on its way to the accelerator: a one-byte register, so that the
        # accelerator's ready reaches only this register's "full" flag, not the request
        # counters (a byte comes only every 10 UART bits: the wait costs no throughput).
        pixel = Signal(8)
        pixel_full = Signal()

        # One flip-flop per state (one-hot): each state's next value is a small OR of its
        # entries and its stay, not a decode of a state number.
        state = _OneHotStates(_STATES)
        at = state.at
        send_states = {"reply_magic": REPLY_MAGIC, "reply_status": status, "reply_class": word[:8],
                       "reply_logit_bytes": lb, "reply_count": n, "reply_logit": word[:8],
                       "reply_cycles": word[:8]}
        m.d.comb += [
            self.busy.eq(~at["magic"]),
            self.start.eq(at["start"]),
            self.tx.valid.eq(Cat(at[name] for name in send_states).any()),
            self.rx.ready.eq(at["magic"] | at["length_low"] | at["length_high"] | at["drain"]
                             | (at["pixels"] & ~pixel_full)),
            self.pixels.valid.eq(pixel_full),
            self.pixels.payload.eq(pixel),
            self.result.ready.eq((at["fetch_class"] | (at["fetch_logit"] & logits_any)) & ~bad),
        ]
        payload = 0
        for name, value in send_states.items():
            payload = payload | Mux(at[name], value, 0)
        m.d.comb += self.tx.payload.eq(payload)

        rx_byte = self.rx.valid
        sent = self.tx.ready
        result_in = self.result.valid & self.result.ready
        state.go("magic", "length_low", rx_byte & (self.rx.payload == REQUEST_MAGIC))
        state.go("length_low", "length_high", rx_byte)
        state.go("length_high", "check", rx_byte)
        state.go("check", "start", length_ok)
        state.go("check", "reply_magic", ~length_ok & length_zero)
        state.go("check", "drain", ~length_ok & ~length_zero)
        state.go("start", "pixels", 1)
        state.go("pixels", "reply_magic", rx_byte & ~pixel_full & remaining_one)
        state.go("drain", "reply_magic", rx_byte & remaining_one)
        state.go("reply_magic", "reply_status", sent)
        state.go("reply_status", "fetch_class", sent)
        state.go("fetch_class", "reply_class", bad | self.result.valid)
        state.go("reply_class", "reply_logit_bytes", sent)
        state.go("reply_logit_bytes", "reply_count", sent)
        state.go("reply_count", "fetch_logit", sent)
        state.go("fetch_logit", "wait_done", ~logits_any)
        state.go("fetch_logit", "reply_logit", logits_any & (bad | self.result.valid))
        state.go("reply_logit", "fetch_logit", sent & (byte_index == lb - 1))
        state.go("wait_done", "reply_cycles", bad | self.done)
        state.go("reply_cycles", "magic", sent & (byte_index == CYCLE_BYTES - 1))
        state.elaborate(m)

        with m.If(at["length_low"] & rx_byte):
            m.d.sync += length[:8].eq(self.rx.payload)
        with m.If(at["length_high"] & rx_byte):
            whole = Cat(length[:8], self.rx.payload)
            m.d.sync += [length[8:].eq(self.rx.payload), remaining.eq(whole),
                         remaining_one.eq(whole == 1), length_ok.eq(whole == self._pixels),
                         length_zero.eq(whole == 0)]
        with m.If(at["check"]):
            m.d.sync += [bad.eq(~length_ok), status.eq(Mux(length_ok, STATUS_OK, STATUS_BAD_LENGTH))]
        with m.If((at["pixels"] & ~pixel_full | at["drain"]) & rx_byte):
            m.d.sync += [remaining.eq(remaining - 1), remaining_one.eq(remaining == 2)]
        with m.If(pixel_full & self.pixels.ready):
            m.d.sync += pixel_full.eq(0)
        with m.If(at["pixels"] & ~pixel_full & rx_byte):
            m.d.sync += [pixel.eq(self.rx.payload), pixel_full.eq(1)]
        with m.If(at["reply_logit_bytes"]):
            m.d.sync += [logits_left.eq(n), logits_any.eq(n != 0)]
        with m.If(at["fetch_class"]):
            with m.If(bad):
                m.d.sync += word.eq(0)
            with m.Elif(result_in):
                m.d.sync += word.eq(self.result.payload.data)
        with m.If(at["fetch_logit"]):
            m.d.sync += byte_index.eq(0)
            with m.If(logits_any & bad):
                m.d.sync += [word.eq(0), logits_left.eq(logits_left - 1), logits_any.eq(logits_left != 1)]
            with m.Elif(result_in):
                m.d.sync += [word.eq(self.result.payload.data), logits_left.eq(logits_left - 1),
                             logits_any.eq(logits_left != 1)]
        with m.If((at["reply_logit"] | at["reply_cycles"]) & sent):
            m.d.sync += [word.eq(word >> 8), byte_index.eq(byte_index + 1)]
        with m.If(at["wait_done"]):
            m.d.sync += byte_index.eq(0)
            with m.If(bad):
                m.d.sync += word.eq(0)
            with m.Elif(self.done):
                m.d.sync += word.eq(self.cycles)
        return m


_STATES = ("magic", "length_low", "length_high", "check", "start", "pixels", "drain", "reply_magic",
           "reply_status", "fetch_class", "reply_class", "reply_logit_bytes", "reply_count",
           "fetch_logit", "reply_logit", "wait_done", "reply_cycles")


class _OneHotStates:
    """A state machine with one flip-flop per state; the first state is the reset state.

    ``go(a, b, cond)`` leaves ``a`` for ``b`` when ``a`` is current and ``cond`` holds
    (the conditions out of one state must exclude each other).
    """

    def __init__(self, names):
        self.at = {name: Signal(name=f"state_{name}", init=int(i == 0)) for i, name in enumerate(names)}
        self._leave = {name: [] for name in names}
        self._enter = {name: [] for name in names}

    def go(self, source, target, cond):
        taken = self.at[source] & cond
        self._leave[source].append(taken)
        self._enter[target].append(taken)

    def elaborate(self, m):
        for name, flag in self.at.items():
            leaving = Cat(self._leave[name]).any() if self._leave[name] else 0
            entering = Cat(self._enter[name]).any() if self._enter[name] else 0
            m.d.sync += flag.eq((flag & ~leaving) | entering)

"""UART receiver and transmitter (8N1) as stream components, for the board's host link.

Both take ``divisor``, the number of clock cycles per bit (``round(clock_hz / baud)``,
see :func:`uart_divisor`). The receiver synchronises the line, checks the start bit
half a bit in, samples each data bit in its middle and checks the stop bit; the
transmitter sends one byte per stream transfer, least significant bit first.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTReceiver", "UARTTransmitter", "uart_divisor", "MIN_DIVISOR"]

#: The smallest divisor the receiver handles (it samples half a bit after the start edge).
MIN_DIVISOR = 4

#: Largest relative baud error tolerated between the two ends (8N1 allows about 4 %).
MAX_BAUD_ERROR = 0.02


def uart_divisor(clock_hz: float, baud: int) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz``; refuses rates off by more than 2 %.

    Raises
    ------
    ValueError
        When the clock is too slow for the baud rate or the nearest divisor misses it by
        more than 2 %.
    """
    if baud <= 0 or clock_hz <= 0:
        raise ValueError(f"clock_hz and baud must be positive, not {clock_hz!r} and {baud!r}")
    divisor = round(clock_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"a {clock_hz / 1e6:g} MHz clock is too slow for {baud} baud "
                         f"(needs at least {MIN_DIVISOR} cycles per bit)")
    error = abs(clock_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"{baud} baud at {clock_hz / 1e6:g} MHz is off by {100 * error:.1f} % "
                         f"(divisor {divisor}); choose another baud rate")
    return divisor


def _check_divisor(divisor) -> int:
    if not isinstance(divisor, int) or divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be an integer of at least {MIN_DIVISOR}, not {divisor!r}")
    return divisor


def _timer_steps(timer, zero):
    """``load(value)`` and ``count()`` statements for a down-counting bit timer whose
    ``timer == 0`` is kept in the register ``zero``, set with the timer (from the loaded
    constant, or from ``timer == 1`` as it counts down): the state machine's branches
    then wait for a flip-flop, not for a compare of the whole timer."""
    def load(value: int):
        return [timer.eq(value), zero.eq(int(value == 0))]

    def count():
        return [timer.eq(timer - 1), zero.eq(timer == 1)]

    return load, count


class UARTReceiver(wiring.Component):
    """8N1 UART receiver with a byte stream out.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    rx : In(1)
        The serial line (idle high). It is synchronised inside (two flip-flops).
    stream : Out(stream.Signature(8))
        Received bytes. A byte is offered until taken.
    overrun : Out(1)
        High for one cycle when a byte arrived while the previous one was still not
        taken; the new byte is dropped.
    frame_error : Out(1)
        High for one cycle when a stop bit read 0; that byte is dropped.

    Latency: a byte is offered about half a bit after the middle of its stop bit
    began, i.e. ``9.5 * divisor`` cycles (plus two synchroniser cycles) after its start edge.
    """

    rx: In(1, init=1)
    stream: Out(stream.Signature(8))
    overrun: Out(1)
    frame_error: Out(1)

    def __init__(self, divisor: int):
        self._divisor = _check_divisor(divisor)
        super().__init__()

    @property
    def divisor(self) -> int:
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(self._divisor))
        timer_zero = Signal(init=1)  # timer == 0, a register set with the timer
        load, count = _timer_steps(timer, timer_zero)
        bits = Signal(range(9))
        shift = Signal(8)

        with m.If(self.stream.ready):
            m.d.sync += self.stream.valid.eq(0)
        m.d.sync += [self.overrun.eq(0), self.frame_error.eq(0)]

        with m.FSM():
            with m.State("idle"):
                with m.If(~line):
                    m.d.sync += load(self._divisor // 2 - 1)
                    m.next = "start"
            with m.State("start"):
                with m.If(timer_zero):
                    with m.If(line):  # a glitch, not a start bit
                        m.next = "idle"
                    with m.Else():
                        m.d.sync += [*load(self._divisor - 1), bits.eq(0)]
                        m.next = "data"
                with m.Else():
                    m.d.sync += count()
            with m.State("data"):
                with m.If(timer_zero):
                    m.d.sync += [shift.eq(shift >> 1 | line << 7), bits.eq(bits + 1),
                                 *load(self._divisor - 1)]
                    with m.If(bits == 7):
                        m.next = "stop"
                with m.Else():
                    m.d.sync += count()
            with m.State("stop"):
                with m.If(timer_zero):
                    with m.If(~line):
                        m.d.sync += self.frame_error.eq(1)
                    with m.Elif(self.stream.valid & ~self.stream.ready):
                        m.d.sync += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.stream.payload.eq(shift), self.stream.valid.eq(1)]
                    m.next = "idle"
                with m.Else():
                    m.d.sync += count()
        return m


class UARTTransmitter(wiring.Component):
    """8N1 UART transmitter with a byte stream in.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    stream : In(stream.Signature(8))
        Bytes to send; one is taken whenever the transmitter is idle.
    tx : Out(1)
        The serial line (idle high).

    Latency: the start bit of a byte is on ``tx`` two cycles after the byte is taken; the
    transmitter takes the next byte ``10 * divisor + 2`` cycles after the previous one.
    """

    stream: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        self._divisor = _check_divisor(divisor)
        super().__init__()

    @property
    def divisor(self) -> int:
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self._divisor))
        timer_zero = Signal(init=1)  # timer == 0, a register set with the timer
        load, count = _timer_steps(timer, timer_zero)
        bits = Signal(range(10))
        frame = Signal(10)  # stop bit, 8 data bits, start bit (sent LSB first)

        with m.FSM():
            with m.State("idle"):
                m.d.comb += self.stream.ready.eq(1)
                with m.If(self.stream.valid):
                    m.d.sync += [frame.eq(1 << 9 | self.stream.payload << 1), bits.eq(0),
                                 *load(0)]
                    m.next = "send"
            with m.State("send"):
                with m.If(timer_zero):
                    with m.If(bits == 10):
                        m.next = "idle"
                    with m.Else():
                        m.d.sync += [self.tx.eq(frame[0]), frame.eq(frame >> 1),
                                     bits.eq(bits + 1), *load(self._divisor - 1)]
                with m.Else():
                    m.d.sync += count()
        return m

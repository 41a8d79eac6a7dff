"""The board's core: UART, host link and accelerator, with no platform in sight.

:class:`BoardCore` is what the board runs and what the protocol tests simulate: a
serial line in, a serial line out, and the accelerator for one network behind them.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .host_link import HostLink
from .uart import UARTReceiver, UARTTransmitter

__all__ = ["BoardCore", "load_cycles_per_pixel"]


def load_cycles_per_pixel(plan) -> int:
    """Cycles the accelerator's loader needs from one pixel to the next
    (:func:`binforge.hw.accelerator.load_cycles_per_pixel`, as hw.json's protocol says)."""
    from binforge.hw.accelerator import load_cycles_per_pixel as per_pixel

    return per_pixel(plan)


class BoardCore(wiring.Component):
    """UART receiver and transmitter, :class:`~binforge.boards.host_link.HostLink` and the
    :class:`~binforge.hw.accelerator.Accelerator` for one network plan.

    Parameters
    ----------
    plan : binforge.hw.plan.NetworkPlan
        The network on its array (:func:`~binforge.hw.plan.plan_network`).
    divisor : int
        UART clock cycles per bit (:func:`~binforge.boards.uart.uart_divisor`). A UART
        has no flow control, so a byte (``10 * divisor`` cycles) must take longer than
        the accelerator's loader spends on a pixel (:func:`load_cycles_per_pixel`).

    Members
    -------
    rx : In(1)
        Serial line from the host (idle high).
    tx : Out(1)
        Serial line to the host (idle high).
    busy : Out(1)
        A request is being handled.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, plan, divisor: int):
        from binforge.hw.accelerator import Accelerator

        net = plan.net
        need = load_cycles_per_pixel(plan)
        if 10 * divisor <= need:
            raise ValueError(f"a UART byte every {10 * divisor} cycles (divisor {divisor}) comes faster than "
                             f"the accelerator loads a pixel ({need} cycles); use a lower baud rate")
        self._plan = plan
        self.accelerator = Accelerator(net, plan.rows, plan.cols, plan.simd, relay=plan.relay,
                                       gain_mode=plan.gain_mode)
        self.receiver = UARTReceiver(divisor)
        self.transmitter = UARTTransmitter(divisor)
        last = net.compute_layers[-1]
        self.host_link = HostLink(net.input_shape.size, net.num_classes, last.acc_width)
        super().__init__()

    @property
    def plan(self):
        return self._plan

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = rx = self.receiver
        m.submodules.transmitter = tx = self.transmitter
        m.submodules.host_link = link = self.host_link
        m.submodules.accelerator = acc = self.accelerator
        wiring.connect(m, rx.stream, link.rx)
        wiring.connect(m, link.tx, tx.stream)
        wiring.connect(m, link.pixels, acc.pixels)
        wiring.connect(m, acc.result, link.result)
        m.d.comb += [
            rx.rx.eq(self.rx), self.tx.eq(tx.tx), self.busy.eq(link.busy),
            acc.start.eq(link.start), link.done.eq(acc.done), link.cycles.eq(acc.cycles),
        ]
        return m

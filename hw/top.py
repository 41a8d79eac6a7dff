"""``BinforgeTop``: the accelerator with flat, named ports, as the Verilog top module."""


from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .accelerator import CYCLES_WIDTH, Accelerator
from .plan import OUT_DATA_WIDTH
from .sequencer import debug_signature

__all__ = ["BinforgeTop"]


class BinforgeTop(wiring.Component):
    """The Verilog top: :class:`~binforge.hw.accelerator.Accelerator` with plain ports.

    The stream members become ``in_valid``/``in_ready``/``in_data`` and
    ``out_valid``/``out_ready``/``out_data``/``out_last``; ``clk`` and ``rst`` are the
    ``sync`` domain's clock and synchronous reset.

    Parameters
    ----------
    accelerator : Accelerator

    Members
    -------
    start : In(1)
    busy : Out(1)
    done : Out(1)
    cycles : Out(32)
    in_valid : In(1)
    in_ready : Out(1)
    in_data : In(8)
    out_valid : Out(1)
    out_ready : In(1)
    out_data : Out(32)
    out_last : Out(1)
    dbg_* : Out
        The debug tap (:func:`~binforge.hw.sequencer.debug_signature`) as ``dbg_*`` ports:
        the running layer, its start, and every activation and logit write. Testbenches
        read them for per-layer cycle counts and to find the first layer that differs.
    """

    def __init__(self, accelerator: Accelerator):
        if not isinstance(accelerator, Accelerator):
            raise TypeError(f"accelerator must be an Accelerator, not {accelerator!r}")
        self._accelerator = accelerator
        members = {
            "start": In(1), "busy": Out(1), "done": Out(1), "cycles": Out(CYCLES_WIDTH),
            "in_valid": In(1), "in_ready": Out(1), "in_data": In(8),
            "out_valid": Out(1), "out_ready": In(1), "out_data": Out(OUT_DATA_WIDTH), "out_last": Out(1),
        }
        tap = debug_signature(accelerator.plan, accelerator.debug.act_addr.shape().width)
        for name, member in tap.members.items():
            members[f"dbg_{name}"] = member
        super().__init__(members)

    @property
    def accelerator(self) -> Accelerator:
        return self._accelerator

    def elaborate(self, platform):
        m = Module()
        m.submodules.accelerator = acc = self._accelerator
        m.d.comb += [
            acc.start.eq(self.start),
            self.busy.eq(acc.busy),
            self.done.eq(acc.done),
            self.cycles.eq(acc.cycles),
            acc.pixels.valid.eq(self.in_valid),
            self.in_ready.eq(acc.pixels.ready),
            acc.pixels.payload.eq(self.in_data),
            self.out_valid.eq(acc.result.valid),
            acc.result.ready.eq(self.out_ready),
            self.out_data.eq(acc.result.payload.data),
            self.out_last.eq(acc.result.payload.last),
        ]
        for name in acc.debug.signature.members:
            m.d.comb += getattr(self, f"dbg_{name}").eq(getattr(acc.debug, name))
        return m

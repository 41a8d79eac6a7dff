"""Valid/ready stream driver and sink with seeded random stalls, for Amaranth ``lib.stream`` ports.

Amaranth writes a stream port ``x`` as three Verilog ports ``x__valid``, ``x__ready``
and ``x__payload`` (a struct payload is one flat vector, its first field in the low
bits). Both classes obey the stream rules: the driver never withdraws ``valid`` and
holds the payload until it is taken; a transfer happens at a rising clock edge where
``valid`` and ``ready`` are both high, sampled once the time step has settled.
"""

from __future__ import annotations

import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["stream_port", "StreamDriver", "StreamSink"]


def stream_port(dut, name: str):
    """The ``(valid, ready, payload)`` handles of the stream port ``name`` of ``dut``."""
    return (getattr(dut, f"{name}__valid"), getattr(dut, f"{name}__ready"),
            getattr(dut, f"{name}__payload"))


class StreamDriver:
    """Sends payloads into a stream input, idling a random number of cycles before each.

    Parameters
    ----------
    clk:
        The clock handle.
    dut, name:
        The design and the name of its stream input port.
    rng:
        A seeded ``numpy.random.Generator`` for the stalls.
    stall:
        Probability of an idle cycle (``valid`` low) before each payload; 0 sends back to back.

    Members
    -------
    sent: int
        Payloads taken by the design so far.
    """

    def __init__(self, clk, dut, name: str, rng: np.random.Generator, stall: float = 0.0) -> None:
        self.clk = clk
        self.valid, self.ready, self.payload = stream_port(dut, name)
        self.rng = rng
        self.stall = float(stall)
        self.sent = 0
        self.valid.value = 0

    async def send(self, payloads) -> None:
        """Drive every payload (python ints) until the design has taken them all.

        Must be started just after a rising edge (for example right after reset).
        """
        for value in payloads:
            while self.stall and self.rng.random() < self.stall:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.valid.value = 1
            self.payload.value = int(value)
            while True:
                await ReadOnly()
                fire = bool(self.ready.value)
                await RisingEdge(self.clk)
                if fire:
                    break
            self.sent += 1
        self.valid.value = 0


class StreamSink:
    """Takes payloads from a stream output, dropping ``ready`` at random cycles.

    Parameters
    ----------
    clk:
        The clock handle.
    dut, name:
        The design and the name of its stream output port.
    rng:
        A seeded ``numpy.random.Generator`` for the stalls.
    stall:
        Probability that ``ready`` is low in a cycle; 0 keeps it high.
    signed:
        Read payloads as two's complement.

    Members
    -------
    received: list[int]
        Payloads taken so far, in order.
    """

    def __init__(self, clk, dut, name: str, rng: np.random.Generator, stall: float = 0.0,
                 signed: bool = False) -> None:
        self.clk = clk
        self.valid, self.ready, self.payload = stream_port(dut, name)
        self.rng = rng
        self.stall = float(stall)
        self.signed = signed
        self.received: list[int] = []
        self.ready.value = 0

    async def receive(self, count: int) -> list[int]:
        """Take ``count`` payloads and return them (also kept in :attr:`received`).

        While nothing is offered the sink waits for ``valid`` to rise instead of
        polling every cycle, so long computations cost no Python time.
        """
        got: list[int] = []
        while len(got) < count:
            ready = not (self.stall and self.rng.random() < self.stall)
            self.ready.value = int(ready)
            await ReadOnly()
            if not self.valid.value and ready:
                await RisingEdge(self.valid)  # idle: sleep until something is offered
                await ReadOnly()
            fire = ready and bool(self.valid.value)
            if fire:
                v = self.payload.value
                got.append(v.to_signed() if self.signed else v.to_unsigned())
            await RisingEdge(self.clk)
        self.ready.value = 0
        self.received.extend(got)
        return got

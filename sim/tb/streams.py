"""Valid/ready stream driver and sink with seeded random stalls.

Amaranth writes a stream port ``x`` of a component as ``x__valid``, ``x__ready`` and
``x__payload`` (:func:`stream_port`); a top level may name them freely (``in_valid``,
``in_ready``, ``in_data``), so both classes take the handles themselves. They obey the
stream rules: the driver never withdraws ``valid`` and holds the payload until it is
taken; a transfer happens at a rising clock edge where ``valid`` and ``ready`` are both
high, sampled once the time step has settled (``ReadOnly``). While the other side is
not ready (or nothing is offered) they sleep on the signal's edge rather than polling
every cycle, so long computations cost no Python time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["stream_port", "StreamDriver", "StreamSink"]


def stream_port(dut, name: str):
    """The ``(valid, ready, payload)`` handles of the Amaranth stream port ``name`` of ``dut``."""
    return (getattr(dut, f"{name}__valid"), getattr(dut, f"{name}__ready"),
            getattr(dut, f"{name}__payload"))


class StreamDriver:
    """Sends payloads into a stream input, idling a random number of cycles before each.

    Parameters
    ----------
    clk, valid, ready, payload:
        The clock and the stream's handles.
    rng:
        A seeded ``numpy.random.Generator`` for the stalls.
    stall:
        Probability of an idle cycle (``valid`` low) before each payload; 0 sends back to back.

    Members
    -------
    sent: int
        Payloads taken by the design so far.
    """

    def __init__(self, clk, valid, ready, payload, rng: np.random.Generator, stall: float = 0.0) -> None:
        self.clk, self.valid, self.ready, self.payload = clk, valid, ready, payload
        self.rng = rng
        self.stall = float(stall)
        self.sent = 0
        self.valid.value = 0

    async def send(self, payloads: Iterable[int]) -> None:
        """Drive every payload (python ints) until the design has taken them all.

        Start it just after a rising edge (for example right after reset).
        """
        for value in payloads:
            while self.stall and self.rng.random() < self.stall:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.valid.value = 1
            self.payload.value = int(value)
            await ReadOnly()
            while not self.ready.value:
                await RisingEdge(self.ready)  # sleep until the design can take it
                await ReadOnly()
            await RisingEdge(self.clk)  # the transfer
            self.sent += 1
        self.valid.value = 0


class StreamSink:
    """Takes transfers from a stream output, dropping ``ready`` at random cycles.

    Parameters
    ----------
    clk, valid, ready:
        The clock and the stream's handshake handles.
    fields:
        Name -> handle of the payload signals to record with each transfer.
    rng:
        A seeded ``numpy.random.Generator`` for the stalls.
    stall:
        Probability that ``ready`` is low in a cycle; 0 keeps it high.
    signed:
        Names of the fields read as two's complement.

    Members
    -------
    received: list[dict[str, int]]
        Transfers taken so far, in order.
    """

    def __init__(self, clk, valid, ready, fields: Mapping[str, object], rng: np.random.Generator,
                 stall: float = 0.0, signed: Iterable[str] = ()) -> None:
        self.clk, self.valid, self.ready = clk, valid, ready
        self.fields = dict(fields)
        self.rng = rng
        self.stall = float(stall)
        self.signed = set(signed)
        self.received: list[dict[str, int]] = []
        self.ready.value = 0

    def _sample(self) -> dict[str, int]:
        # one-bit handles give a Logic (int() only); wider ones a LogicArray
        return {name: (h.value.to_signed() if name in self.signed else int(h.value))
                for name, h in self.fields.items()}

    async def receive(self, count: int | None = None, *, until_field: str | None = None) -> list[dict[str, int]]:
        """Take ``count`` transfers, or transfers up to one whose ``until_field`` is set."""
        got: list[dict[str, int]] = []
        while count is None or len(got) < count:
            ready = not (self.stall and self.rng.random() < self.stall)
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and not self.valid.value:
                await RisingEdge(self.valid)  # idle: sleep until something is offered
                await ReadOnly()
            item = self._sample() if ready and self.valid.value else None
            await RisingEdge(self.clk)
            if item is not None:
                got.append(item)
                if until_field is not None and item[until_field]:
                    break
        self.ready.value = 0
        self.received.extend(got)
        return got

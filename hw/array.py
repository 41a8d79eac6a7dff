"""The systolic XNOR-popcount array: R rows (output channels) x C columns (output positions).

Every cycle row ``r`` receives ``simd`` weight bits and column ``c`` receives ``simd``
activation bits; PE ``(r, c)`` sums ``gain * popcount(act_c ^ weight_r)``. Activations
(and the control that goes with them) travel down each column through a chain of
registers, one every ``relay`` rows; weights travel along each row the same way, so no
register fans out to more than ``relay`` PEs. The chains skew the PEs' timing by
``r // relay + c // relay`` cycles; inputs are pre-skewed so that every PE sees its
activation and weight bits of one beat in the same cycle.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .pe import GainFormat, XnorPopcountPE, popcount_depth

__all__ = ["XnorPopcountArray"]


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


class XnorPopcountArray(wiring.Component):
    """R x C XNOR-popcount PEs, ``simd`` lanes each, with relayed inputs.

    Parameters
    ----------
    rows : int
        PE rows (output channels computed at once), positive.
    cols : int
        PE columns (output positions computed at once), positive.
    simd : int
        Bits per PE per cycle, a positive power of two.
    acc_width : int
        Width of each PE's signed result.
    gain_format : GainFormat
        Gains the PEs apply.
    relay : int
        PEs driven by one relay register (default 4), positive.
    tree : str
        The PEs' popcount tree (:class:`~binforge.hw.pe.XnorPopcountPE`): ``"auto"``
        (default; carry-chain adders on ECP5), ``"adders"`` or ``"ccu2c"``.

    Members
    -------
    act : In(cols * simd)
        Activation bits; column ``c`` takes bits ``[c*simd, (c+1)*simd)``.
    weight : In(rows * simd)
        Weight bits; row ``r`` takes bits ``[r*simd, (r+1)*simd)``.
    first : In(1)
        This beat starts a new sum in every PE.
    last : In(1)
        This beat ends the sum; ``done`` pulses ``latency`` cycles later.
    gain : In(gain_format.shape)
        This beat's gain (:meth:`GainFormat.encode`).
    results : Out(rows * cols * acc_width)
        PE ``(r, c)``'s signed result at bits ``[(r*cols + c)*acc_width, ...)``; see
        :meth:`result`.
    done : Out(1)
        Every PE's result includes the beat marked ``last`` presented ``latency`` cycles ago.

    Latency: ``done`` pulses ``latency = 1 + max_skew + pe_latency`` cycles after the beat
    marked ``last``. The results then hold until the next ``last`` beat's sums land, the
    least skewed PE first: ``1 + pe_latency`` cycles after that beat. So results read
    within ``n - max_skew`` cycles from ``done`` are safe when the next ``last`` beat
    comes ``n`` cycles after this one.
    """

    def __init__(self, rows: int, cols: int, simd: int, acc_width: int, gain_format: GainFormat,
                 relay: int = 4, tree: str = "auto"):
        _check_positive("rows", rows)
        _check_positive("cols", cols)
        if not isinstance(simd, int) or isinstance(simd, bool) or simd < 1 or simd & (simd - 1):
            raise ValueError(f"simd must be a positive power of two, not {simd!r}")
        _check_positive("relay", relay)
        self._rows, self._cols, self._simd = rows, cols, simd
        self._relay = relay
        self._acc_width = acc_width
        self._gain_format = gain_format
        # Build the PEs now, so that bad widths fail here, with the PE's message.
        self._pes = [[XnorPopcountPE(simd, acc_width, gain_format, tree) for _ in range(cols)]
                     for _ in range(rows)]
        super().__init__({
            "act": In(cols * simd),
            "weight": In(rows * simd),
            "first": In(1),
            "last": In(1),
            "gain": In(gain_format.shape),
            "results": Out(rows * cols * acc_width),
            "done": Out(1),
        })

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def cols(self) -> int:
        return self._cols

    @property
    def simd(self) -> int:
        return self._simd

    @property
    def lanes(self) -> int:
        """XNOR-popcount lanes: ``rows * cols * simd``."""
        return self._rows * self._cols * self._simd

    @property
    def acc_width(self) -> int:
        return self._acc_width

    @property
    def relay(self) -> int:
        return self._relay

    @property
    def max_skew(self) -> int:
        """The largest relay delay of a PE: ``(rows-1)//relay + (cols-1)//relay``."""
        return (self._rows - 1) // self._relay + (self._cols - 1) // self._relay

    @property
    def pe_latency(self) -> int:
        return popcount_depth(self._simd) + 2

    @property
    def latency(self) -> int:
        """Cycles from the beat marked ``last`` to ``done``."""
        return 1 + self.max_skew + self.pe_latency

    @property
    def throughput(self) -> int:
        """XNOR-popcount bit operations per cycle when every PE is busy."""
        return self.lanes

    def result(self, row: int, col: int):
        """PE ``(row, col)``'s result as a signed value."""
        w = self._acc_width
        base = (row * self._cols + col) * w
        return self.results[base:base + w].as_signed()

    def elaborate(self, platform):
        m = Module()
        rows, cols, s, g = self._rows, self._cols, self._simd, self._relay
        depth = popcount_depth(s)

        def delayed(m, value, cycles, name):
            """``value`` through a chain of ``cycles`` reset-less registers."""
            for i in range(cycles):
                reg = Signal(len(value), name=f"{name}_d{i}", reset_less=True)
                m.d.sync += reg.eq(value)
                value = reg
            return value

        # Control aligned with the popcount of a beat: ``depth`` cycles behind its bits.
        ctrl = delayed(m, Cat(self.first, self.last, self.gain), depth, "ctrl")

        # Column chains: activation + control, pre-skewed by c // relay, one register per
        # relay group of rows.
        col_stage = []
        for c in range(cols):
            a = delayed(m, self.act[c * s:(c + 1) * s], c // g, f"act{c}_skew")
            k = delayed(m, ctrl, c // g, f"ctrl{c}_skew")
            stages = []
            for j in range((rows - 1) // g + 1):
                a_r = Signal(s, name=f"act{c}_relay{j}", reset_less=True)
                k_r = Signal(len(ctrl), name=f"ctrl{c}_relay{j}", reset_less=True)
                m.d.sync += [a_r.eq(a), k_r.eq(k)]
                stages.append((a_r, k_r))
                a, k = a_r, k_r
            col_stage.append(stages)
        # Row chains: weights, pre-skewed by r // relay, one register per relay group of columns.
        row_stage = []
        for r in range(rows):
            w = delayed(m, self.weight[r * s:(r + 1) * s], r // g, f"weight{r}_skew")
            stages = []
            for j in range((cols - 1) // g + 1):
                w_r = Signal(s, name=f"weight{r}_relay{j}", reset_less=True)
                m.d.sync += w_r.eq(w)
                stages.append(w_r)
                w = w_r
            row_stage.append(stages)

        aw = self._acc_width
        for r in range(rows):
            for c in range(cols):
                pe = self._pes[r][c]
                m.submodules[f"pe_{r}_{c}"] = pe
                a, k = col_stage[c][r // g]
                m.d.comb += [
                    pe.act.eq(a),
                    pe.weight.eq(row_stage[r][c // g]),
                    pe.first.eq(k[0]),
                    pe.last.eq(k[1]),
                    pe.gain.eq(k[2:]),
                    self.results[(r * cols + c) * aw:(r * cols + c + 1) * aw].eq(pe.result),
                ]
        # ``done`` is control: its chain has a reset, so it never pulses after a reset.
        done = self.last
        for i in range(self.latency):
            reg = Signal(name=f"done_d{i}")
            m.d.sync += reg.eq(done)
            done = reg
        m.d.comb += self.done.eq(done)
        return m

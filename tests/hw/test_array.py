"""The systolic array against a per-PE integer reference, with relay skew."""

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from binforge.hw.array import XnorPopcountArray
from binforge.hw.pe import GainFormat


def run_array(array, beats):
    """beats: list of (acts[cols], weights[rows], first, last, gain); one per cycle.

    Returns the results read in the cycle ``done`` pulses, as (rows, cols) arrays.
    """
    s, rows, cols = array.simd, array.rows, array.cols
    got = []

    async def tb(ctx):
        for t in range(len(beats) + array.latency + 2):
            if t < len(beats):
                acts, weights, first, last, gain = beats[t]
                ctx.set(array.act, sum(int(a) << (c * s) for c, a in enumerate(acts)))
                ctx.set(array.weight, sum(int(w) << (r * s) for r, w in enumerate(weights)))
                ctx.set(array.first, first)
                ctx.set(array.last, last)
                ctx.set(array.gain, array._gain_format.encode(gain))
            else:
                ctx.set(array.last, 0)
            if ctx.get(array.done):
                got.append(np.array([[ctx.get(array.result(r, c)) for c in range(cols)]
                                     for r in range(rows)]))
            await ctx.tick()

    sim = Simulator(array)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return got


def reference(beats, rows, cols):
    out, acc = [], np.zeros((rows, cols), dtype=np.int64)
    for acts, weights, first, last, gain in beats:
        mism = np.array([[bin(int(a) ^ int(w)).count("1") for a in acts] for w in weights])
        acc = gain * mism if first else acc + gain * mism
        if last:
            out.append(acc.copy())
    return out


@pytest.mark.parametrize("rows,cols,simd,relay,tree", [(1, 1, 1, 4, "auto"), (3, 5, 4, 2, "auto"),
                                                       (4, 4, 8, 4, "auto"), (2, 9, 2, 1, "auto"),
                                                       (3, 2, 8, 2, "ccu2c")])
def test_array_matches_reference(rows, cols, simd, relay, tree):
    rng = np.random.default_rng(rows * 100 + cols * 10 + simd)
    gains = (1, -2, 4)
    array = XnorPopcountArray(rows, cols, simd, 16, GainFormat(gains), relay=relay, tree=tree)
    beats = []
    for _ in range(6):
        # results are stable for (next sum's length - max_skew) cycles after done
        length = array.max_skew + 1 + int(rng.integers(0, 4))
        for i in range(length):
            beats.append((rng.integers(0, 1 << simd, cols), rng.integers(0, 1 << simd, rows),
                          i == 0, i == length - 1, int(rng.choice(gains))))
    got = run_array(array, beats)
    want = reference(beats, rows, cols)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_array_properties():
    array = XnorPopcountArray(8, 6, 32, 20, GainFormat([1]), relay=4)
    assert array.lanes == array.throughput == 8 * 6 * 32
    assert array.max_skew == 1 + 1
    assert array.latency == 1 + 2 + (5 + 2)
    Fragment.get(array, None)


@pytest.mark.parametrize("name,args,message", [
    ("rows", (0, 2, 4), "rows must be a positive integer, not 0"),
    ("cols", (2, -1, 4), "cols must be a positive integer, not -1"),
    ("simd", (2, 2, 6), "simd must be a positive power of two, not 6"),
    ("simd", (2, 2, 0), "simd must be a positive power of two, not 0"),
])
def test_array_rejects_bad_parameters(name, args, message, rejects):
    rejects(ValueError, message, XnorPopcountArray, *args, 16, GainFormat([1]))

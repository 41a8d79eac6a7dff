"""The systolic XNOR-popcount array, cycle-accurate on Verilator and Icarus: every PE, every sum."""

import numpy as np
import pytest
from binforge.compiler.ir import pack_bits, popcount
from binforge.hw.array import XnorPopcountArray
from binforge.hw.pe import GainFormat
from binforge.sim.cocotb_runner import build_design, run_testbench
from stimulus_files import convert, write_stimulus

pytestmark = pytest.mark.sim

ROWS, COLS, SIMD, RELAY = 5, 6, 8, 2  # relay 2: skewed chains (max_skew 4) are exercised
GAINS = (-2, -1, 1, 4)


def array_stimulus(array: XnorPopcountArray, fmt: GainFormat, sums: int, seed: int):
    """Sums of 1..5 beats; consecutive ``last`` beats at least ``max_skew + 1`` apart (the
    documented spacing for reading results at ``done``), idle beats in between."""
    rng = np.random.default_rng(seed)
    gains = np.array(fmt.gains)
    act, weight, first, last, gain, sum_of = [], [], [], [], [], []
    last_at = -(10**9)
    for k in range(sums):
        n = int(rng.integers(1, 6))
        while len(act) + n - 1 - last_at <= array.max_skew:  # idle beat: random bits, no control
            act.append(rng.integers(0, 2, (COLS, SIMD))), weight.append(rng.integers(0, 2, (ROWS, SIMD)))
            first.append(0), last.append(0), gain.append(gains[0]), sum_of.append(-1)
        for j in range(n):
            if k == 0:  # edge case: all mismatching bits at the largest gain
                a, w = np.ones((COLS, SIMD)), np.zeros((ROWS, SIMD))
            else:
                a = rng.random((COLS, SIMD)) < rng.random()
                w = rng.integers(0, 2, (ROWS, SIMD))
            act.append(a), weight.append(w), first.append(j == 0), last.append(j == n - 1)
            gain.append(gains.max() if k == 0 else rng.choice(gains)), sum_of.append(k)
        last_at = len(act) - 1
    act, weight = np.array(act, np.uint8), np.array(weight, np.uint8)
    sum_of, gain = np.array(sum_of), np.array(gain, np.int64)
    # counts[t, r, c] = popcount(act[t, c] ^ weight[t, r]) with the IR's helpers
    counts = popcount(np.bitwise_xor(pack_bits(act)[:, None, :, :], pack_bits(weight)[:, :, None, :]))
    expected = np.stack([(counts[sum_of == k] * gain[sum_of == k, None, None]).sum(0) for k in range(sums)])
    return dict(act=act, weight=weight, first=np.array(first, np.uint8), last=np.array(last, np.uint8),
                gain=np.array([fmt.encode(int(g)) for g in gain], np.int64), expected=expected)


def test_array_sums_bit_exact(simulator, build_root, tmp_path, record_cases):
    fmt = GainFormat(GAINS)
    acc_width = (5 * SIMD * fmt.largest).bit_length() + 2
    array = XnorPopcountArray(ROWS, COLS, SIMD, acc_width, fmt, relay=RELAY)
    src = convert(array, "xnor_array", build_root / "verilog" / "array")
    design = build_design(simulator, [src], "xnor_array", build_root=build_root, name="array")
    sums = 120
    stim = array_stimulus(array, fmt, sums=sums, seed=5)
    meta = {"rows": ROWS, "cols": COLS, "acc_width": acc_width, "latency": array.latency}
    path = write_stimulus(tmp_path / "array.npz", meta, **stim)
    report = run_testbench(design, "binforge.sim.tb.array_tb", run_dir=tmp_path, stimulus=path)
    record_cases(report["cases"], report["mismatch_count"])
    assert report["mismatch_count"] == 0
    # every PE of every sum, plus one done-pulse check per sum and the completion count
    assert report["cases"] == sums * ROWS * COLS + sums + 1

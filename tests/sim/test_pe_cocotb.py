"""The XNOR-popcount PE, cycle-accurate on Verilator and Icarus, against the IR's popcount."""

import numpy as np
import pytest
from binforge.compiler.ir import pack_bits, popcount
from binforge.hw.pe import GainFormat, XnorPopcountPE
from binforge.sim.cocotb_runner import build_design, run_testbench, simulator_missing
from stimulus_files import convert, write_stimulus

pytestmark = pytest.mark.sim

#: (simd, gains): the three ways a PE applies gains.
CONFIGS = {
    "simd16-multiply": (16, (-3, -1, 1, 2, 5)),
    "simd64-shift": (64, (-4, -1, 1, 2, 8)),
    "simd32-horner": (32, None),
}


def pe_stimulus(simd: int, fmt: GainFormat, sums: int, seed: int):
    """Random sums (1..6 beats, random gaps between them) plus edge-case sums first."""
    rng = np.random.default_rng(seed)
    gains = np.array(fmt.gains)
    act, weight, first, last, gain, sum_of = [], [], [], [], [], []

    def beat(a, w, g, f, lst, k):
        act.append(a), weight.append(w), gain.append(g), first.append(f), last.append(lst), sum_of.append(k)

    ones, zeros = np.ones(simd, np.uint8), np.zeros(simd, np.uint8)
    edge_sums = [
        [(zeros, zeros, gains.max())],  # popcount 0
        [(ones, zeros, gains.max())],  # every bit mismatches, largest gain
        [(zeros, ones, gains.min())],  # every bit mismatches, most negative gain
        [(ones, zeros, gains.max())] * 8,  # a long sum at the top of the range
        [(zeros, ones, gains.min())] * 8,  # and at the bottom
        [(ones, ones, g) for g in gains],  # every gain once, popcount 0
    ]
    k = 0
    for beats in edge_sums:
        for j, (a, w, g) in enumerate(beats):
            beat(a, w, g, j == 0, j == len(beats) - 1, k)
        k += 1
    while k < sums:
        for _ in range(int(rng.integers(0, 3))):  # gap beats: random bits outside any sum
            beat(rng.integers(0, 2, simd), rng.integers(0, 2, simd), gains[0], 0, 0, -1)
        n = int(rng.integers(1, 7))
        for j in range(n):
            density = rng.random()
            beat((rng.random(simd) < density).astype(np.uint8), rng.integers(0, 2, simd),
                 rng.choice(gains), j == 0, j == n - 1, k)
        k += 1
    act, weight = np.array(act, np.uint8), np.array(weight, np.uint8)
    # Reference: the IR's popcount of the packed XOR, per beat, times the gain, summed per sum.
    counts = popcount(np.bitwise_xor(pack_bits(act), pack_bits(weight)))
    terms = counts * np.array(gain, np.int64)
    sum_of = np.array(sum_of)
    expected = np.zeros(len(act), np.int64)
    for j in np.nonzero(last)[0]:
        expected[j] = terms[sum_of == sum_of[j]].sum()
    return dict(act=act, weight=weight, first=np.array(first, np.uint8), last=np.array(last, np.uint8),
                gain=np.array([fmt.encode(int(g)) for g in gain], np.int64), expected=expected,
                sum_index=sum_of)


#: Each gain format on one simulator (builds are the expensive part); both simulators run a PE.
PAIRS = [("verilator", "simd16-multiply"), ("icarus", "simd64-shift"), ("icarus", "simd32-horner")]
#: Horner format: the largest accumulator step (doublings before a term).
HORNER_MAX_STEP = 3


def horner_stimulus(simd: int, fmt: GainFormat, sums: int, seed: int):
    """Horner sums: each beat doubles the accumulator ``step`` times, then adds +-popcount."""
    rng = np.random.default_rng(seed)
    act, weight, first, last, sum_of, neg, steps = [], [], [], [], [], [], []
    for k in range(sums):
        for _ in range(int(rng.integers(0, 3))):  # gap beats outside any sum
            act.append(rng.integers(0, 2, simd)), weight.append(rng.integers(0, 2, simd))
            first.append(0), last.append(0), sum_of.append(-1), neg.append(0), steps.append(0)
        n = int(rng.integers(1, 6))
        for j in range(n):
            edge = k < 4  # all-mismatch beats with the largest steps: the top of the range
            act.append(np.ones(simd, np.uint8) if edge else rng.integers(0, 2, simd))
            weight.append(np.zeros(simd, np.uint8) if edge else rng.integers(0, 2, simd))
            first.append(j == 0), last.append(j == n - 1), sum_of.append(k)
            neg.append(int(k % 2 if edge else rng.integers(0, 2)))
            steps.append(HORNER_MAX_STEP if edge else int(rng.choice([0, 0, 1, 2, HORNER_MAX_STEP])))
    act, weight = np.array(act, np.uint8), np.array(weight, np.uint8)
    counts = popcount(np.bitwise_xor(pack_bits(act), pack_bits(weight)))  # the IR's popcount
    expected = np.zeros(len(act), np.int64)
    total = 0
    for t in range(len(act)):
        total = 0 if first[t] else total
        total = total * (1 << steps[t]) + (-1 if neg[t] else 1) * int(counts[t])
        if last[t]:
            expected[t] = total
    return dict(act=act, weight=weight, first=np.array(first, np.uint8), last=np.array(last, np.uint8),
                gain=np.array([fmt.encode_step(bool(n), st) for n, st in zip(neg, steps, strict=True)],
                              np.int64), expected=expected, sum_index=np.array(sum_of))


@pytest.mark.parametrize("simulator,config", PAIRS)
def test_pe_sums_bit_exact(simulator, build_root, tmp_path, config, record_cases):
    reason = simulator_missing(simulator)
    if reason is not None:
        pytest.skip(reason)
    simd, gains = CONFIGS[config]
    if gains is None:
        fmt = GainFormat.horner(HORNER_MAX_STEP)
        stim = horner_stimulus(simd, fmt, sums=1500, seed=11)
        acc_width = int(np.abs(stim["expected"]).max()).bit_length() + 2
    else:
        fmt = GainFormat(gains)
        stim = pe_stimulus(simd, fmt, sums=1500, seed=11)
        acc_width = (8 * simd * fmt.largest).bit_length() + 2
    pe = XnorPopcountPE(simd, acc_width, fmt)
    src = convert(pe, "pe", build_root / "verilog" / f"pe-{config}")
    design = build_design(simulator, [src], "pe", build_root=build_root, name=f"pe-{config}")
    path = write_stimulus(tmp_path / "pe.npz", {"popcount_depth": pe.popcount_depth, "latency": pe.latency},
                          **stim)
    report = run_testbench(design, "binforge.sim.tb.pe_tb", run_dir=tmp_path, stimulus=path)
    record_cases(report["cases"], report["mismatch_count"])
    assert report["mismatch_count"] == 0
    assert report["cases"] == 1500

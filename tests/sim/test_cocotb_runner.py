"""The cocotb runner and the stream driver/sink, on a small stream block converted here."""


import json
from pathlib import Path

import numpy as np
import pytest
from amaranth import Module, Signal, signed
from amaranth.back import verilog
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from binforge.compiler.ir import pack_bits, xnor_dot
from binforge.sim.cocotb_runner import (
    SimulationFailed,
    build_design,
    require_simulator,
    run_testbench,
    simulator_missing,
)

from binforge.errors import BinforgeError

pytestmark = pytest.mark.sim

WIDTH = 8


class XnorDot8(wiring.Component):
    """8-bit +-1 dot product as a registered stream stage (a stand-in block for the runner)."""

    i: In(stream.Signature(data.StructLayout({"a": WIDTH, "w": WIDTH})))
    o: Out(stream.Signature(signed(5)))

    def elaborate(self, platform):
        m = Module()
        agree = ~(self.i.payload.a ^ self.i.payload.w)
        count = Signal(4)
        m.d.comb += count.eq(sum(agree[k] for k in range(WIDTH)))
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(2 * count - WIDTH)]
        return m


@pytest.fixture(scope="module")
def xnor_verilog(tmp_path_factory):
    path = tmp_path_factory.mktemp("xnor") / "xnor_dot8.v"
    path.write_text(verilog.convert(XnorDot8(), name="xnor_dot8"))
    return path


def write_stimulus(path, a, w, expected, **meta):
    np.savez(path, inputs=(a.astype(np.int64) | (w.astype(np.int64) << WIDTH)), expected=expected,
             meta=np.array(json.dumps(meta)))
    return path


def random_vectors(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, n)
    w = rng.integers(0, 256, n)
    edges = np.array([0, 255, 0, 255, 0x55, 0xAA])
    a = np.concatenate([edges, a])
    w = np.concatenate([np.array([0, 255, 255, 0, 0xAA, 0xAA]), w])
    bits = lambda v: ((v[:, None] >> np.arange(WIDTH)) & 1).astype(np.uint8)  # noqa: E731
    expected = xnor_dot(pack_bits(bits(a)), pack_bits(bits(w)), WIDTH)
    return a, w, expected


def test_unknown_and_missing_simulators_are_named():
    assert "choose one of verilator, icarus" in simulator_missing("ghdl")
    with pytest.raises(BinforgeError, match="choose one of"):
        require_simulator("ghdl")


@pytest.mark.parametrize("in_stall,out_stall", [(0.0, 0.0), (0.4, 0.5)])
def test_stream_block_bit_exact_with_stalls(simulator, build_root, xnor_verilog, tmp_path, in_stall, out_stall,
                                            record_cases):
    design = build_design(simulator, [xnor_verilog], "xnor_dot8", build_root=build_root)
    a, w, expected = random_vectors(400, seed=3)
    stim = write_stimulus(tmp_path / "stim.npz", a, w, expected, seed=7, in_stall=in_stall,
                          out_stall=out_stall, signed=True)
    report = run_testbench(design, "binforge.sim.tb.stream_tb", run_dir=tmp_path, stimulus=stim)
    record_cases(report["cases"], report["mismatch_count"])
    assert report["cases"] == len(expected) and report["mismatch_count"] == 0
    # back-pressure and stalls cost cycles: at least one cycle per vector
    assert report["sim_cycles"] >= len(expected)


def test_build_is_reused_when_unchanged(simulator, build_root, xnor_verilog):
    first = build_design(simulator, [xnor_verilog], "xnor_dot8", build_root=build_root)
    again = build_design(simulator, [xnor_verilog], "xnor_dot8", build_root=build_root)
    assert again.reused and again.build_dir == first.build_dir and again.key == first.key


def test_mismatch_is_reported_with_position(simulator, build_root, xnor_verilog, tmp_path):
    design = build_design(simulator, [xnor_verilog], "xnor_dot8", build_root=build_root)
    a, w, expected = random_vectors(20, seed=4)
    expected = expected.copy()
    expected[9] += 2  # a wrong expectation must be caught and located
    stim = write_stimulus(tmp_path / "stim.npz", a, w, expected, seed=1, signed=True)
    with pytest.raises(SimulationFailed) as info:
        run_testbench(design, "binforge.sim.tb.stream_tb", run_dir=tmp_path, stimulus=stim)
    assert info.value.report["mismatch_count"] == 1
    assert info.value.report["mismatches"][0]["index"] == 9
    assert "index=9" in str(info.value)


def test_waves_are_written_into_the_build_folder_when_asked(simulator, build_root, xnor_verilog, tmp_path):
    design = build_design(simulator, [xnor_verilog], "xnor_dot8", build_root=build_root, waves=True)
    plain = build_design(simulator, [xnor_verilog], "xnor_dot8", build_root=build_root)
    assert design.waves and design.build_dir != plain.build_dir  # a separate build, its own hash
    a, w, expected = random_vectors(10, seed=5)
    stim = write_stimulus(tmp_path / "stim.npz", a, w, expected, seed=2, signed=True)
    report = run_testbench(design, "binforge.sim.tb.stream_tb", run_dir=tmp_path, stimulus=stim)
    waves = Path(report["waves"])
    assert waves.parent == design.build_dir and waves.stat().st_size > 100

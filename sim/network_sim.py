"""Whole networks through the generated RTL, checked bit-exactly against the golden model.

:func:`simulate_network` builds ``binforge_top`` (Verilog from :func:`binforge.hw.generate.generate`)
for Verilator or Icarus, runs images through it in chunks with the cocotb testbench
:mod:`binforge.sim.tb.accelerator_tb`, and checks every image's class index and every
logit against :func:`binforge.sim.golden.run_network`, and the ``cycles`` counter against
the analytic model recorded in ``hw.json``, in total and per layer. When an image
differs, it is simulated again with the debug tap traced (every activation and logit
write, per layer) and :func:`localise_layers` compares each layer's written output with
the golden model's: the first layer that differs is named, with plane, channel,
position, expected and got.
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
from binforge.sim.primitives import primitive_models

from binforge.errors import BinforgeError

__all__ = ["HW_JSON", "TESTBENCH", "NetworkSimResult", "read_hw", "write_accelerator_stimulus",
           "expected_layer_cycles", "localise_layers", "first_bad_layer", "localise_image", "simulate_network"]

#: Images whose mismatches are localised layer by layer (each costs a traced re-run).
LOCALISED_IMAGES = 3
#: Differing values listed per layer by :func:`localise_layers`.
LOCALISED_VALUES = 5

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
    layer_names, analytic_layer_cycles:
        Each layer's name and its analytic cycles (the last with the finish cycle).
    rtl_layer_cycles:
        Per image, each layer's cycles measured from the RTL's debug tap.
    localisations:
        For the first differing images, :func:`localise_layers`'s finding.
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
    layer_names: list[str] = field(default_factory=list)
    analytic_layer_cycles: list[int] = field(default_factory=list)
    rtl_layer_cycles: list[list[int]] = field(default_factory=list)
    localisations: list[dict[str, Any]] = field(default_factory=list)

    def layer_table(self) -> list[dict[str, Any]]:
        """Per layer: name, analytic cycles, and the smallest and largest RTL count seen."""
        rows = []
        for i, name in enumerate(self.layer_names):
            seen = [c[i] for c in self.rtl_layer_cycles if len(c) == len(self.layer_names)]
            rows.append({"layer": i, "name": name, "analytic": self.analytic_layer_cycles[i],
                         "rtl_min": min(seen, default=None), "rtl_max": max(seen, default=None)})
        return rows

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
            "layer_cycles": self.layer_table(),
            "localisations": self.localisations,
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


def _sources(verilog: Path, run_dir: Path) -> list[Path]:
    """The Verilog to build: the design, and the models of the vendor primitives it
    instantiates (Verilog elaborated for a platform), written into ``run_dir``."""
    models = primitive_models(verilog.read_text())
    if not models:
        return [verilog]
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "primitives.v"
    path.write_text(models)
    return [verilog, path]


def _check_matches(desc: dict[str, Any], net: Network) -> None:
    if list(desc.get("input_shape", [])) != list(net.input_shape.as_tuple()) or \
            desc.get("num_classes") != net.num_classes:
        raise BinforgeError(
            f"the hardware was generated for input {desc.get('input_shape')} and {desc.get('num_classes')} "
            f"classes, but the network {net.name!r} takes {list(net.input_shape.as_tuple())} and has "
            f"{net.num_classes}; give the network the hardware was generated from")


def _load_cycles_per_pixel(desc: dict, net) -> int:
    """Loading cycles per pixel for the testbench's time-out: the loader's own spacing, or
    its whole loading time (``protocol.load_cycles``, window assembly included) spread
    over the pixels, whichever is more."""
    protocol = desc.get("protocol", {})
    per_pixel = int(protocol.get("load_cycles_per_pixel", 8))
    total = int(protocol.get("load_cycles", 0))
    return max(per_pixel, -(-total // max(1, net.input_shape.size)))


def write_accelerator_stimulus(path: str | os.PathLike, images: np.ndarray, logits: np.ndarray,
                               classes: np.ndarray, *, seed: int = 0, in_stall: float = 0.0,
                               out_stall: float = 0.0, cycles: int | None = None,
                               reset_before: Sequence[int] = (), first_index: int = 0,
                               load_cycles_per_pixel: int = 8, layer_cycles: Sequence[int] | None = None,
                               trace: bool = False) -> Path:
    """The stimulus file of :mod:`binforge.sim.tb.accelerator_tb`.

    ``load_cycles_per_pixel`` (``hw.json`` ``protocol``) only sizes the testbench's time-out.
    ``layer_cycles`` (:func:`expected_layer_cycles`) are checked per layer; ``trace``
    records every write of the debug tap into the report.
    """
    meta = {"seed": int(seed), "in_stall": float(in_stall), "out_stall": float(out_stall),
            "load_cycles_per_pixel": int(load_cycles_per_pixel),
            "cycles": None if cycles is None else int(cycles),
            "layer_cycles": None if layer_cycles is None else [int(c) for c in layer_cycles],
            "trace": bool(trace),
            "reset_before": [int(i) for i in reset_before], "first_index": int(first_index)}
    path = Path(path)
    np.savez(path, meta=np.array(json.dumps(meta)), images=np.asarray(images, dtype=np.uint8),
             logits=np.asarray(logits, dtype=np.int64), classes=np.asarray(classes, dtype=np.int64))
    return path


def expected_layer_cycles(desc: dict[str, Any]) -> list[int]:
    """The analytic cycles of each layer as the debug tap measures them: from a layer's
    start to the next one's; the last layer also holds the sequencer's finish cycle
    (what ``cycles.total`` counts beyond the layers' sum)."""
    cycles = desc["cycles"]
    per_layer = [int(layer["cycles"]) for layer in cycles["layers"]]
    per_layer[-1] += int(cycles["total"]) - sum(per_layer)
    return per_layer


def _output_bits(layout, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word address and lane of each bit of a ``(planes, C, H, W)`` tensor in ``layout``."""
    width = expected.shape[3]
    n, c, y, x = np.indices(expected.shape)
    bit = n * layout.plane_words * layout.simd + (y * width + x) * layout.pos_stride + c
    return bit // layout.simd, bit % layout.simd


def localise_layers(net: Network, simd: int, image: np.ndarray, trace: dict[str, list]) -> list[dict[str, Any]]:
    """Compare what each layer wrote (the debug tap's trace of one image) with the golden model.

    ``trace`` holds ``act``: ``[layer, word address, data, lane enables]`` per write and
    ``logit``: ``[layer, index, value]`` per write. A threshold or max-pool layer's output
    bits are read back from its writes through the layout of the next layer's input
    (:func:`binforge.hw.plan.tensor_layouts`); the affine layer's logits from its logit writes.

    Returns one entry per layer: ``layer``, ``name``, ``kind``, ``compared``, ``mismatches``
    and, where it differs, ``first``: up to :data:`LOCALISED_VALUES` values, each with
    ``plane``, ``channel``, ``position`` ``[y, x]``, ``expected`` and ``got`` (``got`` is
    ``"not written"`` for a bit the layer never wrote). The first entry with mismatches
    is the layer at fault: later layers only inherit its error.
    """
    from binforge.hw.plan import tensor_layouts

    golden = run_network(net, np.asarray(image, dtype=np.uint8)[None], return_layers=True)
    layouts = tensor_layouts(net, simd)
    writes: dict[int, list] = {}
    for layer_index, addr, data, en in trace.get("act", []):
        writes.setdefault(int(layer_index), []).append((int(addr), int(data), int(en)))
    logit_writes: dict[int, dict[int, int]] = {}
    for layer_index, addr, value in trace.get("logit", []):
        logit_writes.setdefault(int(layer_index), {})[int(addr)] = int(value)
    findings = []
    for i, layer in enumerate(net.layers):
        entry: dict[str, Any] = {"layer": i, "name": layer.name, "kind": layer.kind}
        first: list[dict[str, Any]] = []
        if layer.kind != "maxpool" and layer.output.kind == "affine":
            expected = np.asarray(golden.layers[i][0]).reshape(-1)
            got = logit_writes.get(i, {})
            bad = 0
            for ch, want in enumerate(expected):
                have = got.get(ch, "not written")
                if have != int(want):
                    bad += 1
                    if len(first) < LOCALISED_VALUES:
                        first.append({"channel": ch, "position": [0, 0], "expected": int(want), "got": have})
            entry.update(compared=int(expected.size), mismatches=bad)
        else:
            expected = np.asarray(golden.layers[i][0], dtype=np.int64)
            if expected.ndim == 3:  # a linear layer's (planes, features) as (planes, features, 1, 1)
                expected = expected[..., None]
            layout = layouts[i + 1]
            words, lanes = _output_bits(layout, expected)
            value = np.zeros(layout.words, dtype=np.uint64)  # S <= 64 lanes a word
            written = np.zeros(layout.words, dtype=np.uint64)
            for addr, data, en in writes.get(i, []):
                if 0 <= addr < layout.words:
                    value[addr] = (value[addr] & np.uint64(~en & (2**64 - 1))) | np.uint64(data & en)
                    written[addr] |= np.uint64(en)
            shift = lanes.astype(np.uint64)
            got_bits = ((value[words] >> shift) & np.uint64(1)).astype(np.int64)
            was_written = ((written[words] >> shift) & np.uint64(1)).astype(bool)
            wrong = (got_bits != expected) | ~was_written
            for n, c, y, x in np.argwhere(wrong)[:LOCALISED_VALUES]:
                first.append({"plane": int(n), "channel": int(c), "position": [int(y), int(x)],
                              "expected": int(expected[n, c, y, x]),
                              "got": int(got_bits[n, c, y, x]) if was_written[n, c, y, x] else "not written"})
            entry.update(compared=int(expected.size), mismatches=int(wrong.sum()))
        if first:
            entry["first"] = first
        findings.append(entry)
    return findings


def first_bad_layer(findings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first layer of :func:`localise_layers`'s findings that differs, or None."""
    return next((f for f in findings if f["mismatches"]), None)


def _localise_image(design, net: Network, simd: int, image: np.ndarray, golden, number: int, folder: Path,
                    load_cycles: int, seed: int, index: int | None = None) -> dict[str, Any]:
    """Simulate one image again with the debug tap traced; localise the fault.
    ``golden`` row ``index`` (default ``number``) is the image's."""
    row = number if index is None else index
    folder.mkdir(parents=True, exist_ok=True)
    stim = write_accelerator_stimulus(
        folder / "stimulus.npz", image[None], golden.logits[row:row + 1],
        golden.predictions[row:row + 1], seed=seed + number, first_index=number,
        load_cycles_per_pixel=load_cycles, trace=True)
    try:
        report = run_testbench(design, TESTBENCH, run_dir=folder, stimulus=stim, seed=seed + number)
    except SimulationFailed as exc:
        report = exc.report or {}
    traces = report.get("traces")
    if not traces:
        raise BinforgeError(f"the traced re-run of image {number} recorded no writes; see the simulator "
                            f"log in {folder}")
    findings = localise_layers(net, simd, image, traces[0])
    culprit = first_bad_layer(findings)
    return {"image": number, "first_bad_layer": None if culprit is None else culprit["layer"],
            "layers": findings}


def localise_image(hw_dir: str | os.PathLike, net: Network, image: np.ndarray, *, simulator: str,
                   run_dir: str | os.PathLike, build_root: str | os.PathLike | None = None,
                   seed: int = 0) -> dict[str, Any]:
    """Run one uint8 image ``(C, H, W)`` through the RTL with the debug tap traced and compare
    every layer's writes with the golden model (:func:`localise_layers`).

    Returns ``{"image": 0, "first_bad_layer": index or None, "layers": findings}``.
    """
    desc, verilog = read_hw(hw_dir)
    _check_matches(desc, net)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != net.input_shape.as_tuple():
        raise BinforgeError(f"the image must be uint8 {net.input_shape.as_tuple()}, not {image.dtype} {image.shape}")
    golden = run_network(net, image[None])
    design = build_design(simulator, _sources(verilog, Path(run_dir)), desc.get("top", "binforge_top"),
                          build_root=build_root, name=f"net-{desc.get('network', 'top')}")
    load_cycles = _load_cycles_per_pixel(desc, net)
    return _localise_image(design, net, int(desc["simd"]), image, golden, 0, Path(run_dir), load_cycles, seed,
                           index=0)


def simulate_network(hw_dir: str | os.PathLike, net: Network, images: np.ndarray, *, simulator: str,
                     run_dir: str | os.PathLike, build_root: str | os.PathLike | None = None,
                     seed: int = 0, in_stall: float = 0.0, out_stall: float = 0.0,
                     reset_before: Sequence[int] = (), chunk: int = 50, waves: bool = False,
                     check_cycles: bool = True, localise: int = LOCALISED_IMAGES,
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
    localise:
        How many differing images to run again with the debug tap traced, to name the
        first layer that differs (:func:`localise_layers`); 0: none.
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
    design = build_design(simulator, _sources(verilog, Path(run_dir)), desc.get("top", "binforge_top"),
                          build_root=build_root, waves=waves, name=f"net-{desc.get('network', 'top')}")
    cycles = int(desc["cycles"]["total"]) if check_cycles else None
    layer_cycles = expected_layer_cycles(desc)
    load_cycles = _load_cycles_per_pixel(desc, net)
    result = NetworkSimResult(simulator=simulator, analytic_cycles=int(desc["cycles"]["total"]),
                              build_seconds=design.build_seconds,
                              golden_predictions=[int(p) for p in golden.predictions],
                              layer_names=[layer["name"] for layer in desc["cycles"]["layers"]],
                              analytic_layer_cycles=layer_cycles)
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
            load_cycles_per_pixel=load_cycles, layer_cycles=layer_cycles if check_cycles else None)
        t0 = time.perf_counter()
        try:
            report = run_testbench(design, TESTBENCH, run_dir=part, stimulus=stim, seed=seed + start)
        except SimulationFailed as exc:
            report = exc.report
            if report is None:
                raise BinforgeError(f"{simulator} stopped without a report: {exc}") from None
        result.sim_seconds += time.perf_counter() - t0
        mism = report.get("mismatches", [])
        bad_images = {int(m["image"]) for m in mism if "image" in m}
        for number in sorted(bad_images)[: max(0, localise - len(result.localisations))]:
            result.localisations.append(_localise_image(
                design, net, int(desc["simd"]), images[number], golden, number, run_dir / f"localise-{number:06d}",
                load_cycles, seed))
        done = int(report.get("images", 0))
        result.images += done
        result.matches += done - len(bad_images & set(range(start, start + done)))
        result.cases += int(report["cases"])
        result.mismatch_count += int(report["mismatch_count"])
        result.mismatches.extend(mism[: max(0, 50 - len(result.mismatches))])
        result.rtl_cycles.extend(int(c) for c in report.get("network_cycles", []))
        result.cycles_per_image.extend(int(c) for c in report.get("cycles_per_image", []))
        result.rtl_predictions.extend(int(c) for c in report.get("rtl_classes", []))
        result.rtl_layer_cycles.extend([int(c) for c in per] for per in report.get("layer_cycles", []))
        result.resets_mid_image += int(report.get("resets_mid_image", 0))
        if progress is not None:
            progress(stop)
        if done < stop - start:  # the design hung: later chunks would only repeat it
            break
    return result

"""Co-design exploration: networks x array shapes x boards -> accuracy, cycles, resources, Pareto fronts.

A sweep evaluates every point (network, rows R, cols C, simd S, board):

- accuracy: the golden model (:func:`binforge.sim.golden.run_network`) on a data set,
  once per network (it does not depend on the array);
- Bit-OPs and ops per layer: from the IR;
- cycles: the analytic model of the array (:func:`binforge.hw.plan.analytic_cycles`),
  which the hardware's cycle counter equals;
- logic and block RAMs: the boards' calibration model (:func:`binforge.boards.fit.estimate_fit`),
  marked ``estimate`` until a real build replaces them (marked ``built``);
- Fmax: the bare-array calibration of the device (:data:`FMAX_ESTIMATE_MHZ`) until built;
- images/s: the clock over the cycles of one image (loading, network, result).

Points go into ``points.csv`` one row at a time (the file is rewritten through a
temporary file and a rename), so an interrupted sweep resumes where it stopped:
points whose key (:data:`KEY_COLUMNS`) is already in the file are not computed again.
``--validate K`` runs K array shapes in simulation (Amaranth's simulator, or Verilator /
Icarus on the generated Verilog) and checks the cycle counter against the analytic model
and the logits against the golden model; ``--build K`` builds K points for their boards
with the open flow. Both take the co-design Pareto front's points first.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from binforge.boards.build import binary_conv_layers
from binforge.boards.fit import estimate_fit
from binforge.boards.platforms import Board, get_board
from binforge.compiler.ir import IRError, Network, load, to_json
from binforge.errors import BinforgeError
from binforge.hw.plan import (
    DEFAULT_RELAY,
    analytic_cycles,
    check_geometry,
    plan_network,
    skew_advice,
)
from binforge.outdir import write_report

__all__ = [
    "POINT_COLUMNS",
    "KEY_COLUMNS",
    "FMAX_ESTIMATE_MHZ",
    "POINTS_CSV",
    "PLOT_FILES",
    "SweepNetwork",
    "PointsTable",
    "parse_positive_list",
    "network_digest",
    "models_digest",
    "network_from_folder",
    "network_from_run",
    "load_networks",
    "bit_ops",
    "array_bit_ops",
    "image_cycles",
    "golden_accuracy",
    "evaluate_shape",
    "pareto_front",
    "front_keys",
    "SIMULATORS",
    "simulate_image",
    "validate_shape",
    "build_point",
    "plot_sweep",
    "run_sweep",
]

POINTS_CSV = "points.csv"
#: The PNGs a sweep writes.
PLOT_FILES = ("accuracy_vs_bitops.png", "cycles_vs_logic.png", "images_per_second.png")

#: Columns of ``points.csv``, in order.
POINT_COLUMNS: tuple[str, ...] = (
    "network", "net_hash", "source", "data", "models", "rows", "cols", "simd", "relay", "lanes", "board", "device",
    "accuracy", "bit_ops", "array_bit_ops", "ops_per_layer",
    "cycles", "ideal_cycles", "image_cycles", "conv_ops_per_logic",
    "logic", "logic_estimate", "logic_unit", "logic_available", "bram_blocks", "bram_available",
    "memory_bits", "fits", "resources_from",
    "fmax_mhz", "fmax_estimate_mhz", "fmax_from", "board_clock_mhz", "images_per_s", "images_per_s_at_fmax",
    "validated", "simulator", "sim_images", "sim_cycles", "sim_image_cycles", "built", "build_dir", "error",
)
#: A point is identified by these columns; resuming skips keys already in the file.
KEY_COLUMNS: tuple[str, ...] = ("net_hash", "data", "models", "rows", "cols", "simd", "board")

#: Fmax of the bare XNOR-popcount array with registered adder trees, by device, from the
#: calibration builds in MACHINE_NOTES / docs/boards.md (YoWASP flow, one seed). The whole
#: accelerator adds memories and a sequencer, so read these as upper bounds until a build
#: (``--build``) measures the point. Devices without a calibration have no estimate.
FMAX_ESTIMATE_MHZ: dict[str, float] = {
    "iCE40UP5K-SG48": 96.0,       # 16x32 PEs x lanes, register after every adder level
    "LFE5U-85F-6BG381C": 254.0,   # 32x64, registered levels, activations relayed every 4 PEs
    "LFE5U-85F-8MG285C": 382.0,   # same array, speed grade 8
}



# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def parse_positive_list(option: str, text: str, *, power_of_two: bool = False) -> list[int]:
    """``"4,8,16"`` -> ``[4, 8, 16]``; a :class:`BinforgeError` naming ``option`` otherwise."""
    what = "powers of two" if power_of_two else "positive integers"
    example = "16,32,64" if power_of_two else "4,8,16"
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value < 1 or (power_of_two and value & (value - 1)):
            raise BinforgeError(f"{option} must be a comma-separated list of {what} such as {example}, "
                                f"not {text!r}")
        if value not in values:
            values.append(value)
    return values


@dataclass(frozen=True, eq=False)
class SweepNetwork:
    """One network of a sweep.

    Attributes
    ----------
    label:
        Its name in the table and the plots (the folder's name).
    source:
        Where it came from (a NET folder, a RUN folder, or a description).
    net:
        The validated IR.
    digest:
        :func:`network_digest` of ``net``: the key that ties points to this network.
    info:
        What is known about how it was made (method, bases, psi), for the report.
    """

    label: str
    source: str
    net: Network
    digest: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.digest:
            object.__setattr__(self, "digest", network_digest(self.net))


def network_digest(net: Network) -> str:
    """First 16 hex digits of the SHA-256 of the IR's numbers (layers, arrays; not ``meta``)."""
    doc, arrays = to_json(net)
    doc = {k: v for k, v in doc.items() if k != "meta"}
    h = hashlib.sha256(json.dumps(doc, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


#: What the report records of how a network was made, where known.
_INFO_KEYS = ("arch", "method", "M", "N", "psi", "width", "data")


def network_from_folder(path: str | os.PathLike) -> SweepNetwork:
    """A compiled NET folder (``network.json`` + ``weights.npz``) as a sweep network."""
    path = Path(path)
    if not path.is_dir():
        raise BinforgeError(f"the network folder {path} does not exist; give a folder written by "
                            "'binforge compile' (network.json + weights.npz)")
    if not (path / "network.json").exists() and (path / "config.json").exists():
        raise BinforgeError(f"{path} is a training run, not a compiled network; give it with --runs "
                            "(compiled on the fly) or compile it with 'binforge compile'")
    try:
        net = load(path)
    except IRError as exc:
        raise BinforgeError(f"cannot read the network in {path}: {exc}") from None
    info = {k: net.meta[k] for k in _INFO_KEYS if net.meta.get(k) is not None}
    return SweepNetwork(label=path.resolve().name, source=str(path), net=net, info=info)


def network_from_run(path: str | os.PathLike) -> SweepNetwork:
    """A training RUN folder, compiled on the fly with the compiler's defaults."""
    from binforge.compiler.compile import compile_model
    from binforge.model.checkpoint import load_run

    path = Path(path)
    if not path.exists():
        raise BinforgeError(f"the run folder {path} does not exist; give a folder written by 'binforge train'")
    if (path / "network.json").exists() and not (path / "config.json").exists():
        raise BinforgeError(f"{path} is a compiled network, not a training run; give it with --net")
    model, config = load_run(path)
    if config.get("method") == "float":
        raise BinforgeError(f"{path} is a float run; the hardware runs binary networks: give runs trained "
                            "with a binary method (bop, mbn, pabt, ...)")
    name = path.resolve().name
    info = {k: config[k] for k in _INFO_KEYS if config.get(k) is not None}
    net, _ = compile_model(model, tuple(config["in_shape"]), int(config["num_classes"]), name=name,
                           classes=tuple(config.get("classes", ()) or ()), meta={"run": str(path), **info})
    return SweepNetwork(label=name, source=str(path), net=net, info=info)


def load_networks(nets: Iterable[str | os.PathLike] = (), runs: Iterable[str | os.PathLike] = ()) -> list[SweepNetwork]:
    """NET folders and RUN folders as sweep networks, with unique labels.

    A network given twice (the same numbers, :func:`network_digest`) is kept once.
    """
    networks = [network_from_folder(p) for p in nets] + [network_from_run(p) for p in runs]
    if not networks:
        raise BinforgeError("no network to explore; give compiled networks with --net NET/ "
                            "or training runs with --runs RUN/")
    digests: set[str] = set()
    seen: dict[str, int] = {}
    unique = []
    for n in networks:
        if n.digest in digests:
            continue
        digests.add(n.digest)
        count = seen.get(n.label, 0)
        seen[n.label] = count + 1
        label = n.label if count == 0 else f"{n.label}-{count + 1}"
        unique.append(SweepNetwork(label=label, source=n.source, net=n.net, digest=n.digest, info=n.info))
    return unique


# --------------------------------------------------------------------------------------
# Figures of one network and one point
# --------------------------------------------------------------------------------------


def bit_ops(net: Network) -> int:
    """Bit-OPs of one image as the PaBT paper counts them: binary multiply-accumulates
    (surviving ops x fan-in x outputs) of the binary layers, the first (pixel) and last
    (classifier) layers left out."""
    layers = net.compute_layers
    return sum(len(layer.ops) * layer.fan_in * layer.out_shape.size for layer in layers[1:-1])


def array_bit_ops(net: Network) -> int:
    """Binary multiply-accumulates of one image as the array runs them: every compute
    layer, the bit-serial first layer and the classifier included."""
    return sum(len(layer.ops) * layer.fan_in * layer.out_shape.size for layer in net.compute_layers)


def image_cycles(plan, cycles: int) -> int:
    """Cycles of one image on the accelerator of ``plan`` (a ``NetworkPlan``), start pulse
    to last result word, with a source that offers a pixel every cycle and an always-ready
    sink: loading (``hw.json``'s ``protocol.load_cycles``, exact), the network
    (``cycles``), then the result stream. The ``2 * num_classes + 3`` cycles of the start
    pulse, the run pulse and the result stream were measured in simulation
    (:func:`simulate_image` reports the real count, so ``--validate`` shows any drift)."""
    from binforge.hw.accelerator import load_cycles

    return load_cycles(plan) + cycles + 2 * plan.net.num_classes + 3


def golden_accuracy(net: Network, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of the golden model of ``net``."""
    from binforge.sim.golden import run_network

    predictions = run_network(net, images).predictions
    return 100.0 * float(np.mean(predictions == np.asarray(labels))) if len(labels) else float("nan")


def models_digest() -> str:
    """First 12 hex digits of a hash of the models behind the figures: the source of the
    cycle model (:mod:`binforge.hw.plan`) and of the fit model (:mod:`binforge.boards.fit`)
    and :data:`FMAX_ESTIMATE_MHZ`. Points made with other models are computed again."""
    import inspect

    import binforge.boards.fit as fit_model
    import binforge.hw.plan as cycle_model

    h = hashlib.sha256()
    for module in (cycle_model, fit_model):
        h.update(inspect.getsource(module).encode())
    h.update(json.dumps(FMAX_ESTIMATE_MHZ, sort_keys=True).encode())
    return h.hexdigest()[:12]


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def evaluate_shape(network: SweepNetwork, rows: int, cols: int, simd: int, boards: Sequence[Board], *,
                   data_label: str = "", accuracy: float | None = None,
                   models: str | None = None) -> list[dict[str, str]]:
    """The table rows of one network on one R x C x S array, one per board (estimates)."""
    net = network.net
    base = {
        "network": network.label, "net_hash": network.digest, "source": network.source, "data": data_label,
        "models": models if models is not None else models_digest(),
        "rows": str(rows), "cols": str(cols), "simd": str(simd), "lanes": str(rows * cols * simd),
        "accuracy": _fmt(accuracy, 2), "bit_ops": str(bit_ops(net)), "array_bit_ops": str(array_bit_ops(net)),
        "ops_per_layer": " ".join(str(len(layer.ops)) for layer in net.compute_layers),
        "validated": "no", "built": "no",
    }
    try:
        plan = plan_network(net, rows, cols, simd)
        advice = skew_advice(plan)
        if advice is not None:  # the array's skew sets the pace: take the relay that removes it
            plan = plan_network(net, rows, cols, simd, relay=advice["hint"])
    except ValueError as exc:
        return [{**base, "board": b.name, "device": b.device, "fits": "no", "error": f"cannot map: {exc}"}
                for b in boards]
    base["relay"] = str(plan.relay)
    cycles = analytic_cycles(plan)
    conv = binary_conv_layers(net, {layer["name"]: layer["cycles"] for layer in cycles["layers"]})
    total = int(cycles["total"])
    per_image = image_cycles(plan, total)
    out = []
    for board in boards:
        estimate = estimate_fit(plan, board)
        fmax = FMAX_ESTIMATE_MHZ.get(board.device)
        out.append({
            **base, "board": board.name, "device": board.device,
            "cycles": str(total), "ideal_cycles": str(int(cycles["ideal"])), "image_cycles": str(per_image),
            "conv_ops_per_logic": _conv_ops_per_logic(conv, estimate.logic_cells),
            "logic": str(estimate.logic_cells), "logic_estimate": str(estimate.logic_cells),
            "logic_unit": "LC" if board.family == "ice40" else f"LUT{board.resources.lut_inputs}",
            "logic_available": str(estimate.logic_available), "bram_blocks": str(estimate.bram_blocks),
            "bram_available": str(estimate.bram_available), "memory_bits": str(estimate.memory_bits),
            "fits": "yes" if estimate.fits else "no", "resources_from": "estimate",
            "fmax_mhz": _fmt(fmax, 1), "fmax_estimate_mhz": _fmt(fmax, 1),
            "fmax_from": "estimate" if fmax is not None else "unknown",
            "board_clock_mhz": _fmt(board.clock_hz / 1e6, 3),
            "images_per_s": _fmt(board.clock_hz / per_image, 1),
            "images_per_s_at_fmax": _fmt(fmax * 1e6 / per_image if fmax else None, 1),
            "error": "",
        })
    return out


def _conv_ops_per_logic(conv: dict[str, int] | None, logic: int) -> str:
    """Binary ops per logic cell (LUT) per cycle on the binary conv layers ('' without any)."""
    if not conv or not conv["cycles"] or not logic:
        return ""
    return _fmt(conv["binary_ops"] / conv["cycles"] / logic, 4)


def _relay(value: str | None) -> int:
    """The relay a point was evaluated at, from its ``relay`` column (tables written
    before the column: the default)."""
    return int(value or DEFAULT_RELAY)


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(c, "")) for c in KEY_COLUMNS)


class PointsTable:
    """``points.csv``: one row per point, rewritten atomically after every change.

    Parameters
    ----------
    path:
        The CSV file; its rows are read if it exists (a sweep resumes from them).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: dict[tuple[str, ...], dict[str, str]] = {}
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                missing = [c for c in KEY_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise BinforgeError(f"{self.path} is not a binforge explore table (no {', '.join(missing)} "
                                        "column); give a new --out folder")
                for row in reader:
                    full = {c: row.get(c) or "" for c in POINT_COLUMNS}
                    self.rows[_key(full)] = full

    def __contains__(self, key: tuple[str, ...]) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def put(self, *rows: dict[str, str]) -> None:
        """Add or replace ``rows`` (by key) and rewrite the file."""
        for row in rows:
            self.rows[_key(row)] = {c: str(row.get(c, "") or "") for c in POINT_COLUMNS}
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(POINT_COLUMNS))
            writer.writeheader()
            writer.writerows(self.rows.values())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------------------
# Pareto fronts and choosing points
# --------------------------------------------------------------------------------------


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates, every coordinate minimised.

    A point dominates another when it is no worse in every coordinate and better in
    at least one. Equal points do not dominate each other: both stay on the front.
    Indices come back in ascending order.
    """
    pts = [tuple(float(v) for v in p) for p in points]
    front = []
    for i, p in enumerate(pts):
        dominated = any(all(a <= b for a, b in zip(q, p, strict=True)) and q != p for q in pts)
        if not dominated:
            front.append(i)
    return front


def _usable(row: dict[str, str]) -> bool:
    return not row.get("error") and row.get("cycles", "") != "" and row.get("logic", "") != ""


def front_keys(rows: Iterable[dict[str, str]], *, per_network: bool = False,
               with_accuracy: bool = True) -> set[tuple[str, ...]]:
    """Keys of the Pareto-optimal fitting points of each board (of each board and network
    with ``per_network``).

    The objectives are fewest cycles, least logic and, when ``with_accuracy`` and every
    point of the group has a measured accuracy, the highest accuracy: the co-design
    front, on which a slower point stays if its network is more accurate.
    """
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for row in rows:
        if _usable(row) and row.get("fits") == "yes":
            group = (row["board"], row["network"]) if per_network else (row["board"],)
            groups.setdefault(group, []).append(row)
    keys = set()
    for members in groups.values():
        use_accuracy = with_accuracy and all(r.get("accuracy") for r in members)
        points = [(int(r["cycles"]), int(r["logic"])) + ((-float(r["accuracy"]),) if use_accuracy else ())
                  for r in members]
        keys.update(_key(members[i]) for i in pareto_front(points))
    return keys


def _ranked(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Fitting points, the Pareto-front ones first, each group by fewest cycles x logic."""
    front = front_keys(rows)
    fitting = [r for r in rows if _usable(r) and r.get("fits") == "yes"]
    return sorted(fitting, key=lambda r: (_key(r) not in front, int(r["cycles"]) * int(r["logic"]),
                                          r["network"], r["board"]))


# --------------------------------------------------------------------------------------
# Validation in simulation, builds
# --------------------------------------------------------------------------------------


def simulate_image(net: Network, rows: int, cols: int, simd: int, image: np.ndarray, *,
                   max_cycles: int | None = None, relay: int = DEFAULT_RELAY) -> dict[str, Any]:
    """Run one uint8 image through the accelerator in Amaranth's simulator.

    The pixel source offers a byte every cycle and the result sink is always ready.
    Returns the hardware's cycle counter (``cycles``), the cycles from the start pulse
    to the last result transfer (``image_cycles``), the class and the logits. A run
    longer than ``max_cycles`` (default: 4x the analytic image cycles + 1000) raises.
    """
    from amaranth.sim import Simulator

    from binforge.hw.accelerator import Accelerator

    acc = Accelerator(net, rows, cols, simd, relay=relay)
    if max_cycles is None:
        max_cycles = 4 * image_cycles(acc.plan, int(analytic_cycles(acc.plan)["total"])) + 1000
    pixels = [int(v) for v in np.asarray(image, dtype=np.uint8).reshape(-1)]
    result: dict[str, Any] = {}

    async def bench(ctx):
        ctx.set(acc.result.ready, 1)
        ctx.set(acc.start, 1)
        await ctx.tick()
        ctx.set(acc.start, 0)
        elapsed, taken, words = 1, 0, []
        while True:
            if elapsed > max_cycles:
                raise BinforgeError(f"the {rows}x{cols}x{simd} accelerator did not finish within "
                                    f"{max_cycles} cycles in simulation")
            if taken < len(pixels):
                ctx.set(acc.pixels.valid, 1)
                ctx.set(acc.pixels.payload, pixels[taken])
            else:
                ctx.set(acc.pixels.valid, 0)
            took = ctx.get(acc.pixels.valid) and ctx.get(acc.pixels.ready)
            out = ctx.get(acc.result.payload) if ctx.get(acc.result.valid) else None
            await ctx.tick()
            elapsed += 1
            taken += int(bool(took))
            if out is not None:
                value = int(out.data)
                words.append(value - (1 << 32) if value >> 31 else value)
                if out.last:
                    break
        result.update(cycles=int(ctx.get(acc.cycles)), image_cycles=elapsed, predicted=words[0],
                      logits=words[1:])

    sim = Simulator(acc)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result


#: Simulators ``--simulator`` takes: Amaranth's (on the Amaranth design, nothing to build)
#: or an HDL simulator on the generated Verilog (through :mod:`binforge.sim.network_sim`).
SIMULATORS = ("amaranth", "verilator", "icarus")


def validate_shape(net: Network, rows: int, cols: int, simd: int, images: np.ndarray, *,
                   simulator: str = "amaranth", work_dir: str | os.PathLike | None = None,
                   relay: int = DEFAULT_RELAY) -> dict[str, Any]:
    """Check one array shape in simulation: the cycle counter against the analytic model and
    the class and logits against the golden model.

    ``images`` is uint8 ``(N, C, H, W)`` (or one ``(C, H, W)`` image). ``"amaranth"``
    simulates the first image on the Amaranth design; ``"verilator"`` and ``"icarus"``
    generate the Verilog into ``work_dir`` and run every image through it
    (:func:`binforge.sim.network_sim.simulate_network`). ``passed`` says whether every
    cycle counter and every logit agree; ``cycles`` and ``image_cycles`` are the first
    image's.
    """
    from binforge.sim.golden import run_network

    images = np.asarray(images, dtype=np.uint8)
    if images.ndim == 3:
        images = images[None]
    plan = plan_network(net, rows, cols, simd, relay=relay)
    expected = int(analytic_cycles(plan)["total"])
    if simulator == "amaranth":
        images = images[:1]
        sim = simulate_image(net, rows, cols, simd, images[0], relay=relay)
        golden = run_network(net, images)
        logits_match = ([int(v) for v in golden.logits[0]] == sim["logits"]
                        and int(golden.predictions[0]) == sim["predicted"])
        counters = [sim["cycles"]]
        first_image_cycles = sim["image_cycles"]
    elif simulator in SIMULATORS:
        from binforge.hw.generate import generate
        from binforge.sim.cocotb_runner import require_simulator
        from binforge.sim.network_sim import simulate_network

        if work_dir is None:
            raise ValueError("an HDL simulator needs a work_dir for the Verilog and its runs")
        require_simulator(simulator)
        hw_dir = Path(work_dir) / "hw"
        try:
            generate(net, rows, cols, simd, hw_dir, relay=relay)
        except ValueError as exc:
            raise BinforgeError(f"cannot generate the {rows}x{cols}x{simd} accelerator: {exc}") from None
        result = simulate_network(hw_dir, net, images, simulator=simulator, run_dir=Path(work_dir) / "sim",
                                  check_cycles=False)
        logits_match = result.images == len(images) and result.matches == len(images)
        counters = list(result.rtl_cycles) if len(result.rtl_cycles) == len(images) else [-1]
        first_image_cycles = result.cycles_per_image[0] if result.cycles_per_image else -1
    else:
        raise BinforgeError(f"unknown simulator {simulator!r}; choose one of {', '.join(SIMULATORS)}")
    cycles_match = all(c == expected for c in counters)
    return {"simulator": simulator, "images": len(images), "cycles": counters[0], "image_cycles": first_image_cycles,
            "analytic_cycles": expected, "cycles_match": cycles_match,
            "image_cycles_estimate": image_cycles(plan, expected), "logits_match": logits_match,
            "passed": cycles_match and logits_match}


def build_point(net: Network, row: dict[str, str], out: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Build one point for its board with the open flow (:func:`binforge.boards.build.build_for_board`)."""
    from binforge.boards.build import build_for_board

    return build_for_board(net, int(row["rows"]), int(row["cols"]), int(row["simd"]), row["board"], out,
                           relay=_relay(row.get("relay")), progress=progress, source={"explore": row["network"], "net_hash": row["net_hash"]})


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def plot_sweep(rows: Sequence[dict[str, str]], out: str | os.PathLike) -> list[Path]:
    """Write the sweep's PNGs into ``out``; return their paths.

    - ``accuracy_vs_bitops.png``: one point per network (Bit-OPs; accuracy where measured);
    - ``cycles_vs_logic.png``: per board, cycles against logic of every mapped point,
      hollow where it does not fit, each network's own front as a step line and the
      co-design front (:func:`front_keys`) circled;
    - ``images_per_second.png``: per board and network, the best images/s of a fitting
      point (at Fmax where the device has one, else at the board's clock).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    out = Path(out)
    usable = [r for r in rows if _usable(r)]
    networks = sorted({r["network"] for r in rows})
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(networks)}
    written = []

    # 1. accuracy vs Bit-OPs
    fig, ax = plt.subplots(figsize=(6, 4.2))
    per_net = {}
    for r in rows:
        per_net.setdefault(r["network"], r)
    have_accuracy = any(r["accuracy"] for r in per_net.values())
    for name, r in per_net.items():
        y = float(r["accuracy"]) if r["accuracy"] else 0.0
        ax.scatter(int(r["bit_ops"]), y, color=colors[name], s=50, zorder=3,
                   marker="o" if r["accuracy"] else "x")
        ax.annotate(name, (int(r["bit_ops"]), y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("Bit-OPs per image (binary MACs of the binary layers)")
    ax.set_ylabel("top-1 accuracy, golden model (%)" if have_accuracy else "no accuracy (no --data)")
    if any(int(r["bit_ops"]) > 0 for r in per_net.values()):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    data = next((r["data"] for r in per_net.values() if r["data"]), "")
    ax.set_title(f"Accuracy vs Bit-OPs{' on ' + data if data else ''}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(out / PLOT_FILES[0])
    _save(fig, written[-1])
    plt.close(fig)

    # 2. cycles vs logic, one panel per board, Pareto front marked
    boards = sorted({r["board"] for r in rows})
    fig, axes = plt.subplots(1, max(1, len(boards)), figsize=(5.2 * max(1, len(boards)), 4.4), squeeze=False)
    front = front_keys(usable)
    network_fronts = front_keys(usable, per_network=True, with_accuracy=False)
    with_accuracy = bool(usable) and all(r["accuracy"] for r in usable)
    for ax, board in zip(axes[0], boards, strict=False):
        board_rows = [r for r in usable if r["board"] == board]
        for name in networks:
            mine = [r for r in board_rows if r["network"] == name]
            fit = [r for r in mine if r["fits"] == "yes"]
            nofit = [r for r in mine if r["fits"] != "yes"]
            ax.scatter([int(r["logic"]) for r in fit], [int(r["cycles"]) for r in fit], color=colors[name],
                       s=22, label=name, zorder=3)
            ax.scatter([int(r["logic"]) for r in nofit], [int(r["cycles"]) for r in nofit], s=22,
                       facecolors="none", edgecolors=[colors[name]], zorder=2)
            steps = sorted((int(r["logic"]), int(r["cycles"])) for r in fit if _key(r) in network_fronts)
            if steps:
                ax.plot([p[0] for p in steps], [p[1] for p in steps], "-", color=colors[name], lw=1,
                        drawstyle="steps-post", zorder=4)
        on_front = [(int(r["logic"]), int(r["cycles"])) for r in board_rows if _key(r) in front]
        if on_front:
            what = "cycles, logic, accuracy" if with_accuracy else "cycles, logic"
            ax.scatter([p[0] for p in on_front], [p[1] for p in on_front], s=70, facecolors="none",
                       edgecolors="k", zorder=5, label=f"Pareto front ({what})")
        available = next((int(r["logic_available"]) for r in board_rows if r["logic_available"]), None)
        if available:
            ax.axvline(available, color="r", ls="--", lw=1, label="device size")
        unit = next((r["logic_unit"] for r in board_rows), "")
        sources = {r["resources_from"] for r in board_rows}
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"logic ({unit}, {'/'.join(sorted(sources))})")
        ax.set_ylabel("cycles, first layer to logits (analytic)")
        ax.set_title(f"{board}: latency vs logic (hollow: does not fit;\nlines: each network's own front)",
                     fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / PLOT_FILES[1])
    _save(fig, written[-1])
    plt.close(fig)

    # 3. best images/s per board and network
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(boards) * max(1, len(networks)) / 2 + 3), 4.2))
    width = 0.8 / max(1, len(networks))
    for j, name in enumerate(networks):
        heights, labels = [], []
        for board in boards:
            fit = [r for r in usable if r["board"] == board and r["network"] == name and r["fits"] == "yes"]
            best, label = 0.0, "does not fit"
            for r in fit:
                rate = float(r["images_per_s_at_fmax"] or r["images_per_s"] or 0)
                if rate > best:
                    best, label = rate, f"{r['rows']}x{r['cols']}x{r['simd']}"
            heights.append(best)
            labels.append(label)
        xs = [i + (j - (len(networks) - 1) / 2) * width for i in range(len(boards))]
        bars = ax.bar(xs, heights, width=width, color=colors[name], label=name)
        for bar, label in zip(bars, labels, strict=True):
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=6, rotation=90, textcoords="offset points", xytext=(0, 2))
    ax.set_xticks(range(len(boards)))
    ax.set_xticklabels([_board_label(board, rows) for board in boards], fontsize=8)
    ax.set_ylabel("images/s (best fitting R x C x S)")
    ax.margins(y=0.18)
    ax.set_title("Throughput per board")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    written.append(out / PLOT_FILES[2])
    _save(fig, written[-1])
    plt.close(fig)
    return written


def _board_label(board: str, rows: Sequence[dict[str, str]]) -> str:
    mine = [r for r in rows if r["board"] == board]
    fmax = next((r["fmax_mhz"] for r in mine if r["fmax_mhz"]), "")
    source = next((r["fmax_from"] for r in mine if r["fmax_mhz"]), "")
    if fmax:
        return f"{board}\nat Fmax {fmax} MHz ({source})"
    clock = next((r["board_clock_mhz"] for r in mine), "")
    return f"{board}\nat board clock {clock} MHz"


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------


def _load_data(networks: Sequence[SweepNetwork], data: str, split: str, limit: int | None,
               data_kwargs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from binforge.model.data import load_dataset

    dataset = load_dataset(data, split, limit=limit, **data_kwargs)
    images = getattr(dataset, "images", None)
    if images is None:
        images = np.stack([np.asarray(dataset[i][0]) for i in range(len(dataset))])
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(dataset.labels if hasattr(dataset, "labels") else
                        [int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)
    for n in networks:
        shape = n.net.input_shape.as_tuple()
        if tuple(images.shape[1:]) != shape:
            raise BinforgeError(f"the network {n.label} takes {'x'.join(map(str, shape))} images but --data "
                                f"{data} gives {'x'.join(map(str, images.shape[1:]))}; use the data set it "
                                "was trained on")
        if len(labels) and int(labels.max()) >= n.net.num_classes:
            raise BinforgeError(f"the network {n.label} has {n.net.num_classes} classes but --data {data} "
                                f"has labels up to {int(labels.max())}; use the data set it was trained on")
    return images, labels


def run_sweep(networks: Sequence[SweepNetwork], rows: Sequence[int], cols: Sequence[int], simd: Sequence[int],
              boards: Sequence[str], out: str | os.PathLike, *, data: str | None = None, split: str = "test",
              limit: int | None = None, data_kwargs: dict[str, Any] | None = None, build: int = 0,
              validate: int = 0, simulator: str = "amaranth", progress: bool = True,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Sweep ``networks`` x ``rows`` x ``cols`` x ``simd`` x ``boards`` into the folder ``out``.

    Writes ``points.csv`` (resumed if present), the PNGs of :func:`plot_sweep` and
    ``report.json``; ``validate`` array shapes are checked in ``simulator`` (one of
    :data:`SIMULATORS`) and ``build``
    points built (Pareto-front points first). Returns the report.
    """
    say = log or (lambda message: None)
    try:
        for r, c, s in ((r, c, s) for r in rows for c in cols for s in simd):
            check_geometry(r, c, s)
    except ValueError as exc:
        raise BinforgeError(f"{exc}; give positive --rows and --cols and power-of-two --simd") from None
    if build < 0 or validate < 0:
        raise BinforgeError("--build and --validate take a number of points, 0 or more")
    if simulator not in SIMULATORS:
        raise BinforgeError(f"unknown simulator {simulator!r}; choose one of {', '.join(SIMULATORS)}")
    if validate and simulator != "amaranth":
        from binforge.sim.cocotb_runner import require_simulator

        require_simulator(simulator)
    board_objects = [get_board(b) for b in boards]
    if not board_objects:
        raise BinforgeError("no board given; name at least one with --boards, e.g. icebreaker")
    out = Path(out)
    table = PointsTable(out / POINTS_CSV)  # the folder appears with the first finished point
    data_label = "" if data is None else f"{data}:{split}:{limit if limit else 'all'}"
    models = models_digest()
    shapes = [(r, c, s) for r in rows for c in cols for s in simd]

    pending = []
    for network in networks:
        for r, c, s in shapes:
            keys = [(network.digest, data_label, models, str(r), str(c), str(s), b.name) for b in board_objects]
            missing = [b for b, k in zip(board_objects, keys, strict=True) if k not in table]
            if missing:
                pending.append((network, (r, c, s), missing))
    total_points = len(networks) * len(shapes) * len(board_objects)
    resumed = total_points - sum(len(m) for _, _, m in pending)
    if resumed:
        say(f"resuming: {resumed} of {total_points} points already in {out / POINTS_CSV}")

    images = labels = None
    if data is not None and (pending or validate):
        images, labels = _load_data(networks, data, split, limit, data_kwargs or {})
    accuracy: dict[str, float | None] = {}
    for network in networks:  # accuracy already measured (resumed rows) is not measured again
        done = [row for row in table.rows.values() if row["net_hash"] == network.digest
                and row["data"] == data_label and row["accuracy"]]
        if done:
            accuracy[network.digest] = float(done[0]["accuracy"])

    bar = tqdm(total=total_points - resumed, desc="explore", unit="point", disable=not progress, file=sys.stderr)
    computed = 0
    for network, (r, c, s), missing in pending:
        if data is not None and network.digest not in accuracy:
            bar.set_postfix_str(f"golden {network.label}")
            accuracy[network.digest] = golden_accuracy(network.net, images, labels)
        bar.set_postfix_str(f"{network.label} {r}x{c}x{s}")
        new_rows = evaluate_shape(network, r, c, s, missing, data_label=data_label,
                                  accuracy=accuracy.get(network.digest), models=models)
        table.put(*new_rows)
        computed += len(new_rows)
        bar.update(len(new_rows))
    bar.close()

    by_digest = {n.digest: n for n in networks}
    sweep_keys = {(n.digest, data_label, models, str(r), str(c), str(s), b.name)
                  for n in networks for r, c, s in shapes for b in board_objects}
    validations = (_validate(table, sweep_keys, by_digest, validate, images, say, simulator, out)
                   if validate else [])
    builds = _build(table, sweep_keys, by_digest, build, out, progress, say) if build else []

    rows_now = [table.rows[k] for k in sorted(sweep_keys, key=_sort_key) if k in table]
    out.mkdir(parents=True, exist_ok=True)
    pngs = plot_sweep(rows_now, out)
    front = front_keys(rows_now)
    report = {
        "networks": [{"label": n.label, "source": n.source, "net_hash": n.digest, "info": n.info,
                      "bit_ops": bit_ops(n.net), "array_bit_ops": array_bit_ops(n.net),
                      "accuracy": accuracy.get(n.digest)} for n in networks],
        "data": data_label or None,
        "rows": list(rows), "cols": list(cols), "simd": list(simd), "boards": list(boards),
        "points": len(rows_now), "computed": computed, "resumed": resumed,
        "errors": sum(1 for r in rows_now if r["error"]),
        "fitting": sum(1 for r in rows_now if r["fits"] == "yes"),
        "pareto_front": [{c: r[c] for c in ("network", "rows", "cols", "simd", "board", "cycles", "logic",
                                              "resources_from", "images_per_s_at_fmax")}
                         for r in rows_now if _key(r) in front],
        "validated": validations, "builds": builds,
        "validated_points": sum(1 for r in rows_now if r["validated"] == "yes"),
        "built_points": sum(1 for r in rows_now if r["built"] == "yes"),
        "csv": POINTS_CSV, "plots": [p.name for p in pngs],
    }
    write_report(out, "explore", **report)
    return report


def _sort_key(key: tuple[str, ...]) -> tuple:
    digest, data, models, r, c, s, board = key
    return (digest, data, models, board, int(r), int(c), int(s))


#: Images an HDL simulator runs per validated shape (Amaranth's simulator runs one).
HDL_VALIDATION_IMAGES = 10


def _validate(table, sweep_keys, by_digest, k, images, say, simulator, out):
    rows = [table.rows[key] for key in sweep_keys if key in table]
    done = {(r["net_hash"], r["rows"], r["cols"], r["simd"], r["relay"]) for r in rows
            if r["validated"] in ("yes", "FAILED")}
    chosen: list[tuple[str, str, str, str, str]] = []
    ordered = _ranked(rows) + sorted((r for r in rows if _usable(r)), key=lambda r: int(r["cycles"]))
    for row in ordered:
        if len(done) + len(chosen) >= k:
            break
        shape = (row["net_hash"], row["rows"], row["cols"], row["simd"], row["relay"])
        if shape not in done and shape not in chosen:
            chosen.append(shape)
    results = []
    for digest, r, c, s, relay in tqdm(chosen, desc="validate", unit="shape", file=sys.stderr, disable=not chosen):
        net = by_digest[digest].net
        count = 1 if simulator == "amaranth" else HDL_VALIDATION_IMAGES
        if images is not None and len(images):
            chosen_images = images[:count]
        else:  # no data set: fixed random images
            shape = (count, *net.input_shape.as_tuple())
            chosen_images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        name = f"{by_digest[digest].label}-{r}x{c}x{s}"
        check = validate_shape(net, int(r), int(c), int(s), chosen_images, simulator=simulator,
                               work_dir=out / "validate" / name, relay=_relay(relay))
        mark = "yes" if check["passed"] else "FAILED"
        updated = []
        for row in rows:
            if (row["net_hash"], row["rows"], row["cols"], row["simd"], row["relay"]) == (digest, r, c, s, relay):
                updated.append({**row, "validated": mark, "simulator": simulator, "sim_images": str(check["images"]),
                                "sim_cycles": str(check["cycles"]), "sim_image_cycles": str(check["image_cycles"])})
        table.put(*updated)
        say(f"validated {name} with {simulator} on {check['images']} image(s): cycle counter {check['cycles']}, "
            f"analytic {check['analytic_cycles']}, logits {'match' if check['logits_match'] else 'DIFFER'}; "
            f"{check['image_cycles']} cycles per image (estimate {check['image_cycles_estimate']})")
        results.append({"network": by_digest[digest].label, "rows": int(r), "cols": int(c), "simd": int(s),
                        "simulator": simulator, "images": check["images"], "cycles_match": check["cycles_match"],
                        "sim_cycles": check["cycles"], "analytic_cycles": check["analytic_cycles"],
                        "sim_image_cycles": check["image_cycles"],
                        "image_cycles_estimate": check["image_cycles_estimate"], "logits_match": check["logits_match"],
                        "passed": check["passed"]})
    return results


def _build(table, sweep_keys, by_digest, k, out, progress, say):
    rows = [table.rows[key] for key in sweep_keys if key in table]
    already = sum(1 for r in rows if r["built"] == "yes")
    candidates = [r for r in _ranked(rows) if r["built"] != "yes" and get_board(r["board"]).flow == "open"]
    results = []
    for row in candidates[: max(0, k - already)]:
        name = f"{row['network']}-{row['rows']}x{row['cols']}x{row['simd']}-{row['board']}"
        folder = out / "builds" / name
        say(f"building {name} ...")
        try:
            report = build_point(by_digest[row["net_hash"]].net, row, folder, progress=progress)
        except BinforgeError as exc:
            table.put({**row, "built": "failed", "error": f"build: {exc}"})
            results.append({"point": name, "built": False, "error": str(exc)})
            continue
        used = report.get("utilisation", {})
        fmax = report.get("fmax_sync_mhz")
        per_image = int(row["image_cycles"])
        updated = {**row, "built": "yes", "build_dir": str(Path("builds") / name), "resources_from": "built",
                   "logic": str(used.get("logic_cells", {}).get("used", row["logic"])),
                   "bram_blocks": str(used.get("bram", {}).get("used", row["bram_blocks"])),
                   "fits": "yes"}
        if fmax:
            updated.update(fmax_mhz=_fmt(fmax, 1), fmax_from="built",
                           images_per_s_at_fmax=_fmt(fmax * 1e6 / per_image, 1))
        table.put(updated)
        results.append({"point": name, "built": True, "logic": int(updated["logic"]),
                        "logic_estimate": int(row["logic_estimate"]), "fmax_mhz": fmax,
                        "fmax_estimate_mhz": float(row["fmax_estimate_mhz"]) if row["fmax_estimate_mhz"] else None})
    return results

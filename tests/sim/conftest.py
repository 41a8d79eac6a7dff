"""Shared fixtures of the simulator tests: one build folder for the whole run, simulator choice,
and the count of values verified against the golden model (printed at the end of the run)."""

from __future__ import annotations

import fcntl
import json
import uuid
from pathlib import Path

import pytest
from binforge.compiler.ir import Shape
from binforge.compiler.random_network import random_network
from binforge.hw.generate import generate
from binforge.sim.cocotb_runner import SIMULATORS, simulator_missing

#: Simulator builds are shared by every test and every xdist worker, keyed by the design's hash.
BUILD_ROOT = Path(__file__).resolve().parents[2] / "build" / "sim"
#: One line per simulator run: test, simulator, values compared, mismatches.
CASES_DIR = BUILD_ROOT / "verified"


def _run_id(config) -> str:
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        return worker["testrunuid"]
    if not hasattr(config, "_binforge_run_id"):
        config._binforge_run_id = uuid.uuid4().hex
    return config._binforge_run_id


@pytest.fixture(scope="session")
def build_root() -> Path:
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    return BUILD_ROOT


@pytest.fixture(params=SIMULATORS)
def simulator(request) -> str:
    """Each simulator in turn; skipped only when it is not installed (the reason says how)."""
    reason = simulator_missing(request.param)
    if reason is not None:
        pytest.skip(reason)
    return request.param


@pytest.fixture
def record_cases(request):
    """``record(cases, mismatches=0)``: add a simulator run's checked values to this run's tally."""

    def record(cases: int, mismatches: int = 0) -> None:
        CASES_DIR.mkdir(parents=True, exist_ok=True)
        path = CASES_DIR / f"{_run_id(request.config)}.jsonl"
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps({"test": request.node.nodeid, "cases": int(cases),
                                "mismatches": int(mismatches)}) + "\n")

    return record


def tally(run_id: str) -> dict:
    """Cases and mismatches recorded under ``run_id``."""
    path = CASES_DIR / f"{run_id}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {"runs": len(rows), "cases": sum(r["cases"] for r in rows),
            "mismatches": sum(r["mismatches"] for r in rows)}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = tally(_run_id(config))
    if counts["runs"]:
        terminalreporter.write_sep("-", f"cocotb: {counts['cases']} values verified against the golden model, "
                                        f"{counts['mismatches']} mismatches, {counts['runs']} simulator runs "
                                        f"(build/sim/verified/{_run_id(config)}.jsonl)")


#: A tiny network with every IR feature: bit-serial first conv, 2x2 max-pool, multi-op conv
#: with two activation planes, affine linear classifier. Array 3 x 2 x 8 with relay 1: skewed.
NET_SEED, ROWS, COLS, SIMD, RELAY = 21, 3, 2, 8, 1


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny network and a folder of its freshly generated hardware. Every worker generates
    its own; identical Verilog has the same hash, so the simulator build is shared."""
    net = random_network(NET_SEED, in_shape=Shape(1, 6, 6), channels=(3, 5), act_planes=(2, 1))
    folder = tmp_path_factory.mktemp(f"hw-{NET_SEED}-{ROWS}x{COLS}x{SIMD}")
    generate(net, ROWS, COLS, SIMD, folder, relay=RELAY)
    return net, folder

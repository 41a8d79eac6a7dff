"""Shared fixtures of the simulator tests: one build folder for the whole run, simulator choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from binforge.sim.cocotb_runner import SIMULATORS, simulator_missing

#: Simulator builds are shared by every test and every xdist worker, keyed by the design's hash.
BUILD_ROOT = Path(__file__).resolve().parents[2] / "build" / "sim"


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

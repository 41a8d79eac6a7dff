"""Verilog generation: ``generate(net, rows, cols, simd, out_dir)`` writes the accelerator.

Writes ``binforge_top.v`` (module ``binforge_top``), ``hw.json`` (parameters, memory
sizes, analytic cycles, port list) and returns the same description as a dict.
"""

from __future__ import annotations

import json
from pathlib import Path

from amaranth.back import verilog
from binforge.compiler import ir
from binforge.compiler.ir import Network

from .accelerator import CYCLES_WIDTH, Accelerator, load_cycles, load_cycles_per_pixel
from .plan import (
    DEFAULT_GAIN_MODE,
    DEFAULT_RELAY,
    OUT_DATA_WIDTH,
    analytic_cycles,
    plan_network,
    skew_advice,
)
from .top import BinforgeTop

__all__ = ["generate", "describe", "ports", "PORTS", "DEBUG_PORTS", "TOP_NAME", "VERILOG_FILE", "HW_JSON"]

TOP_NAME = "binforge_top"
VERILOG_FILE = "binforge_top.v"
HW_JSON = "hw.json"


#: The port list of ``binforge_top`` (clk and rst are the sync domain's clock and reset).
PORTS = [
    {"name": "clk", "dir": "in", "width": 1, "what": "clock, rising edge"},
    {"name": "rst", "dir": "in", "width": 1, "what": "synchronous reset, active high"},
    {"name": "start", "dir": "in", "width": 1, "what": "pulse while idle: take an image and run"},
    {"name": "busy", "dir": "out", "width": 1, "what": "from the cycle after start until the last result transfer"},
    {"name": "done", "dir": "out", "width": 1, "what": "a run has finished (until the next start)"},
    {"name": "cycles", "dir": "out", "width": CYCLES_WIDTH,
     "what": "cycles of the last run, first layer to logits (equals hw.json cycles.total)"},
    {"name": "in_valid", "dir": "in", "width": 1, "what": "pixel stream: a byte is offered"},
    {"name": "in_ready", "dir": "out", "width": 1, "what": "pixel stream: the byte is taken this cycle if valid"},
    {"name": "in_data", "dir": "in", "width": 8, "what": "pixel stream: uint8 pixel, (C, H, W) order"},
    {"name": "out_valid", "dir": "out", "width": 1, "what": "result stream: a word is offered"},
    {"name": "out_ready", "dir": "in", "width": 1, "what": "result stream: the word is taken this cycle if valid"},
    {"name": "out_data", "dir": "out", "width": OUT_DATA_WIDTH,
     "what": "result stream: class index, then each logit (two's complement)"},
    {"name": "out_last", "dir": "out", "width": 1, "what": "result stream: the final logit"},
]


#: What each debug tap port carries (widths depend on the network: see :func:`ports`).
DEBUG_PORTS = {
    "layer": "debug: index of the running layer",
    "layer_start": "debug: high in the cycle a layer's descriptor loads",
    "act_we": "debug: the running layer writes an activation word this cycle",
    "act_addr": "debug: activation write word address",
    "act_data": "debug: activation write data (S bits)",
    "act_en": "debug: activation write lane enables (S bits)",
    "logit_we": "debug: a logit is written this cycle",
    "logit_addr": "debug: logit index",
    "logit_data": "debug: logit value (two's complement)",
}


def ports(top) -> list[dict]:
    """``binforge_top``'s port list: :data:`PORTS` and the ``dbg_*`` tap of ``top``."""
    out = list(PORTS)
    for name, what in DEBUG_PORTS.items():
        port = getattr(top, f"dbg_{name}")
        out.append({"name": f"dbg_{name}", "dir": "out", "width": len(port), "what": what})
    return out


def describe(plan, cycles: dict, port_list: list[dict] | None = None, device: str | None = None) -> dict:
    """hw.json's content for a plan; ``device``: the FPGA the Verilog was elaborated for
    (its vendor primitives in it), ``None`` for portable Verilog."""
    net = plan.net
    return {
        "format": "binforge-hw",
        "version": 1,
        "top": TOP_NAME,
        "verilog": VERILOG_FILE,
        "network": net.name,
        "input_shape": list(net.input_shape.as_tuple()),
        "num_classes": net.num_classes,
        "rows": plan.rows,
        "cols": plan.cols,
        "simd": plan.simd,
        "relay": plan.relay,
        "lanes": plan.rows * plan.cols * plan.simd,
        "device": device,
        "pe_width": plan.pe_width,
        "gain_mode": plan.gain_mode,
        "hold_results": plan.hold_results,
        "direct_results": plan.direct_results,
        "gain_format": plan.gain_format.kind,
        "gains": list(plan.gain_format.gains),
        "array_latency": plan.array_latency,
        "memory_bits": plan.memory_bits(),
        "memory_bits_total": sum(plan.memory_bits().values()),
        "cycles": cycles,
        "skew_advice": skew_advice(plan),
        "ports": PORTS if port_list is None else port_list,
        "protocol": {
            "input": "after a start pulse, num pixels = C*H*W bytes on in_*, (C, H, W) order",
            "output": "1 + num_classes words on out_*: class index, then logits; out_last on the final one",
            "load_cycles_per_pixel": load_cycles_per_pixel(plan),
            "load_cycles": load_cycles(plan),
        },
    }


def generate(net: Network, rows: int, cols: int, simd: int, out_dir, *, relay: int = DEFAULT_RELAY,
             gain_mode: str = DEFAULT_GAIN_MODE, max_bram_bits: int | None = None, platform=None) -> dict:
    """Write ``binforge_top.v``, ``hw.json`` and the network itself (``network.json`` +
    ``weights.npz``) for ``net`` on an R x C x S array into ``out_dir``.

    ``platform`` (default none: portable Verilog) is what the design is elaborated for:
    on an iCE40 UltraPlus the im2col image memory becomes SB_SPRAM256KA instances
    (:mod:`binforge.hw.spram`), whose simulation model
    :func:`binforge.sim.primitives.primitive_models` gives.

    Raises ValueError when the network cannot be mapped (bad parameters, widths, or
    memories beyond ``max_bram_bits``). Returns hw.json's content.
    """
    plan = plan_network(net, rows, cols, simd, relay, gain_mode)
    bits = sum(plan.memory_bits().values())
    if max_bram_bits is not None and bits > max_bram_bits:
        detail = ", ".join(f"{k} {v}" for k, v in plan.memory_bits().items())
        raise ValueError(f"the network needs {bits} bits of on-chip memory ({detail}), more than "
                         f"the {max_bram_bits} allowed")
    top = BinforgeTop(Accelerator(net, rows, cols, simd, relay=relay, gain_mode=gain_mode))
    text = verilog.convert(top, name=TOP_NAME, emit_src=False, platform=platform)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / VERILOG_FILE).write_text(text)
    # HW/ carries the network it was generated from, so `sim` and `build` need no --net.
    ir.save(net, out)
    desc = describe(plan, analytic_cycles(plan), ports(top), getattr(platform, "device", None))
    (out / HW_JSON).write_text(json.dumps(desc, indent=2) + "\n")
    return desc

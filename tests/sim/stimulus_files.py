"""Helpers of the block tests: Verilog from an Amaranth component, stimulus files."""

import json
from pathlib import Path

import numpy as np
from amaranth.back import verilog


def convert(component, name: str, folder: Path) -> Path:
    """Write ``component`` as Verilog module ``name`` into ``folder``; return the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.v"
    text = verilog.convert(component, name=name)
    if not path.is_file() or path.read_text() != text:  # same text: same hash, build reused
        path.write_text(text)
    return path


def write_stimulus(path: Path, meta: dict, **arrays) -> Path:
    """An npz stimulus file: the arrays plus ``meta`` as a json string."""
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


def memory_image(bits, layout):
    """(planes, C, H, W) bits -> the activation memory's words in ``layout`` (bit b at word b // S)."""
    planes, c, h, w = bits.shape
    total = layout.words * layout.simd
    flat = np.zeros(total, np.uint8)
    n, ch, y, x = np.nonzero(bits)
    flat[n * layout.plane_words * layout.simd + (y * w + x) * layout.pos_stride + ch] = 1
    return flat.reshape(layout.words, layout.simd)

"""Helpers of the block tests: Verilog from an Amaranth component, stimulus files."""

import json
from pathlib import Path

import numpy as np
from amaranth.back import verilog
from binforge.sim.golden import conv_windows


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
    """(planes, C, H, W) bits -> the activation memory's words in ``layout`` (bit b at word b // S).

    An im2col layout stores the first conv's windows instead: they come from the golden
    model's :func:`~binforge.sim.golden.conv_windows`, reordered to (ky, kx, channel).
    """
    if layout.im2col is not None:
        info = layout.im2col
        win = conv_windows(bits[None], info.kernel, info.stride, info.padding, info.pad_bit)[0]
        p, ho, wo, _ = win.shape
        win = win.reshape(p, ho, wo, info.in_c, info.kernel, info.kernel).transpose(0, 1, 2, 4, 5, 3)
        bits = win.reshape(p, ho, wo, -1).transpose(0, 3, 1, 2)
    planes, c, h, w = bits.shape
    total = layout.words * layout.simd
    flat = np.zeros(total, np.uint8)
    n, ch, y, x = np.nonzero(bits)
    flat[n * layout.plane_words * layout.simd + (y * w + x) * layout.pos_stride + ch] = 1
    return flat.reshape(layout.words, layout.simd)

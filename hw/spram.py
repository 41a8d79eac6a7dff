"""The im2col image memory in single-port RAM (iCE40 UltraPlus SPRAM).

The image memory is written only while the image loads and read only while the first
layer runs, never both in one cycle: one address port is enough. On an iCE40
UltraPlus (UP5K, UP3K) it can then live in the device's SB_SPRAM256KA tiles (16 384 x
16 bits each, 1 Mbit on the UP5K), which the block RAMs could not spare: the image of a
28 x 28 conv layer alone takes 25 of the UP5K's 30 block RAMs at S = 16. SPRAM has no
initial contents, and needs none: the window loader writes every word of the image.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SPRAM_DEPTH", "SPRAM_WIDTH", "SPRAM_TILES", "IMAGE_MEMORIES", "spram_tiles", "spram_available",
           "image_memory_kind", "SinglePortImage"]

#: Words and bits of one SB_SPRAM256KA tile.
SPRAM_DEPTH = 16384
SPRAM_WIDTH = 16
#: SB_SPRAM256KA tiles per device.
SPRAM_TILES = {"iCE40UP5K": 4, "iCE40UP3K": 4}
#: Where the im2col image memory goes: ``"auto"`` (single-port RAM where the device has
#: enough, block RAM elsewhere), ``"block"``, ``"spram"`` (the single-port structure on any
#: platform: SB_SPRAM256KA tiles on an iCE40 UltraPlus, a plain memory elsewhere).
IMAGE_MEMORIES = ("auto", "block", "spram")


def spram_tiles(width: int, depth: int) -> int:
    """SB_SPRAM256KA tiles a ``width`` x ``depth`` memory takes: ``ceil(width / 16)`` side
    by side (0 for an empty memory); a memory deeper than one tile (16 384 words) takes
    none, it does not go in SPRAM."""
    if width <= 0 or depth <= 0 or depth > SPRAM_DEPTH:
        return 0
    return -(-width // SPRAM_WIDTH)


def spram_available(device: str | None) -> int:
    """SB_SPRAM256KA tiles of ``device`` (0 where it has none)."""
    return SPRAM_TILES.get(device or "", 0)


def image_memory_kind(image_memory: str, *, cols: int, simd: int, depth: int, device: str | None) -> str:
    """``"spram"`` or ``"block"``: where the image memory (``cols`` copies of ``simd`` x
    ``depth``) goes. ``"auto"`` takes single-port RAM when ``device`` has tiles for every
    copy, each at most one tile (16 384 words) deep."""
    if image_memory not in IMAGE_MEMORIES:
        raise ValueError(f"image_memory must be one of {', '.join(map(repr, IMAGE_MEMORIES))}, "
                         f"not {image_memory!r}")
    if image_memory == "spram" and depth > SPRAM_DEPTH:
        raise ValueError(f"the image memory has {depth} words, more than the {SPRAM_DEPTH} of one SPRAM "
                         f"tile: use image_memory='block' or a wider array (simd)")
    if image_memory != "auto" or not depth:
        return image_memory if depth else "block"
    need = cols * spram_tiles(simd, depth)
    return "spram" if 0 < need <= spram_available(device) else "block"


class SinglePortImage(wiring.Component):
    """A ``width`` x ``depth`` memory with one address for reads and writes.

    On an iCE40 UltraPlus platform (``platform.device`` in :data:`SPRAM_TILES`) it is
    built from SB_SPRAM256KA tiles, ``ceil(width / 16)`` side by side. Elsewhere (and
    in simulation) it is an ``amaranth.lib.memory.Memory`` with the same timing.

    Parameters
    ----------
    width : int
        Bits per word, positive.
    depth : int
        Words, positive, at most 16 384 (one tile deep).

    Members
    -------
    addr : In(range(depth))
        The word read or written.
    we : In(1)
        Write ``wdata`` at ``addr`` in this cycle (no read).
    wdata : In(width)
    rdata : Out(width)
        The word at ``addr`` of the cycle before, when that cycle did not write. After a
        write it is undefined on the device (SPRAM) and holds in the plain memory: read
        only what a read cycle fetched.

    Latency: one cycle from ``addr`` to ``rdata`` (the tile's output register).
    """

    def __init__(self, width: int, depth: int):
        for name, value in (("width", width), ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if depth > SPRAM_DEPTH:
            raise ValueError(f"depth must be at most {SPRAM_DEPTH} (one SPRAM tile), not {depth!r}")
        self._width, self._depth = width, depth
        super().__init__({
            "addr": In(range(depth)),
            "we": In(1),
            "wdata": In(width),
            "rdata": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        if spram_available(getattr(platform, "device", None)):
            self._tiles(m)
            return m
        mem = memory.Memory(shape=unsigned(self._width), depth=self._depth, init=[])
        m.submodules.mem = mem
        rd, wr = mem.read_port(domain="comb"), mem.write_port()
        m.d.comb += [rd.addr.eq(self.addr), wr.addr.eq(self.addr), wr.data.eq(self.wdata),
                     wr.en.eq(self.we)]
        with m.If(~self.we):
            m.d.sync += self.rdata.eq(rd.data)
        return m

    def _tiles(self, m):
        slices = -(-self._width // SPRAM_WIDTH)
        padded_in, padded_out = Signal(slices * SPRAM_WIDTH), Signal(slices * SPRAM_WIDTH)
        addr = Signal(14)
        m.d.comb += [padded_in.eq(self.wdata), addr.eq(self.addr), self.rdata.eq(padded_out)]
        for j in range(slices):
            part = slice(j * SPRAM_WIDTH, (j + 1) * SPRAM_WIDTH)
            m.submodules[f"spram_{j}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr, i_DATAIN=padded_in[part], i_MASKWREN=Const(0b1111, 4), i_WREN=self.we,
                i_CHIPSELECT=Const(1, 1), i_CLOCK=ClockSignal("sync"), i_STANDBY=Const(0, 1),
                i_SLEEP=Const(0, 1), i_POWEROFF=Const(1, 1), o_DATAOUT=padded_out[part])

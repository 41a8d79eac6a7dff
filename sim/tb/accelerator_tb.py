"""Testbench of the whole accelerator (``binforge_top`` from :func:`binforge.hw.generate.generate`).

For each image: pulse ``start``, send the pixels as bytes on ``in_*`` (the driver idles
at random), take the class index and the logits from ``out_*`` (the sink drops
``ready`` at random), then check ``done``, every logit, the class and the ``cycles``
counter against the analytic model, in total and per layer (the ``dbg_layer_start``
tap marks where each layer begins). Before the images listed in ``meta["reset_before"]``
a partial image is sent and the design is reset in the middle of loading it; the
next image must come out right.

Stimulus arrays: ``images`` uint8 ``(N, C, H, W)``, ``logits`` int64 ``(N, K)``,
``classes`` int64 ``(N,)``. ``meta``: ``seed``, ``in_stall``, ``out_stall``,
``cycles`` (analytic total, or null to skip), ``layer_cycles`` (analytic cycles per
layer, the last one including the sequencer's finish cycle, or null to skip),
``trace`` (record every activation and logit write of every image from the debug tap,
for :func:`binforge.sim.network_sim.localise_layers`), ``reset_before`` (image indices),
``first_index`` (number of the first image in a larger run, for messages),
``load_cycles_per_pixel`` (sizes the time-out).
"""

from __future__ import annotations

import time

import cocotb
from binforge.sim.tb.harness import (
    Scoreboard,
    cycles_now,
    load_stimulus,
    start_clock,
    wake_combinational,
)
from binforge.sim.tb.streams import StreamDriver, StreamSink
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, SimTimeoutError, with_timeout

__all__ = ["classify_images"]


class LayerClock:
    """Reads the ``cycles`` counter whenever a layer starts (``dbg_layer_start``).

    ``stamps`` holds ``(layer, cycles before that layer)`` since the last :meth:`clear`.
    Costs one trigger per layer, not one per cycle.
    """

    def __init__(self, dut) -> None:
        self.dut = dut
        self.stamps: list[tuple[int, int]] = []

    def clear(self) -> None:
        self.stamps = []

    async def run(self) -> None:
        dut = self.dut
        while True:
            await RisingEdge(dut.dbg_layer_start)
            await ReadOnly()
            self.stamps.append((dut.dbg_layer.value.to_unsigned(), dut.cycles.value.to_unsigned()))

    def per_layer(self, total: int) -> list[int]:
        """Cycles of each layer: from its start to the next one's; the last to ``total``."""
        starts = [c for _, c in self.stamps] + [total]
        return [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]


class WriteTrace:
    """Records every write of the debug tap, one entry per cycle with a write (per-cycle Python:
    for localising a mismatch in a few images, not for long runs)."""

    def __init__(self, dut) -> None:
        self.dut = dut
        self.act: list[list[int]] = []
        self.logit: list[list[int]] = []

    def clear(self) -> None:
        self.act, self.logit = [], []

    async def run(self) -> None:
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if int(dut.dbg_act_we.value):
                self.act.append([dut.dbg_layer.value.to_unsigned(), dut.dbg_act_addr.value.to_unsigned(),
                                 dut.dbg_act_data.value.to_unsigned(), dut.dbg_act_en.value.to_unsigned()])
            if int(dut.dbg_logit_we.value):
                self.logit.append([dut.dbg_layer.value.to_unsigned(), dut.dbg_logit_addr.value.to_unsigned(),
                                   dut.dbg_logit_data.value.to_signed()])


async def _reset(dut, cycles: int = 3) -> None:
    dut.start.value = 0
    dut.in_valid.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def _pulse_start(dut) -> None:
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0


@cocotb.test()
async def classify_images(dut):
    """Every image's class and logits equal the golden model's; ``cycles`` equals the analytic model."""
    board = Scoreboard("accelerator")
    stim = load_stimulus()
    meta = stim.meta
    images, logits, classes = stim["images"], stim["logits"], stim["classes"]
    first_index = int(meta.get("first_index", 0))
    expected_cycles = meta.get("cycles")
    expected_layers = meta.get("layer_cycles")
    reset_before = {int(i) for i in meta.get("reset_before", [])}
    rng_in, rng_out, rng_abort = stim.rng(1), stim.rng(2), stim.rng(3)
    in_stall, out_stall = float(meta.get("in_stall", 0.0)), float(meta.get("out_stall", 0.0))
    pixels_per_image = int(images[0].size) if len(images) else 0
    # Generous per-image bound: loading, the network, the result stream, with stalls.
    slack = 1.0 / max(1e-3, 1.0 - max(in_stall, out_stall))
    load = int(meta.get("load_cycles_per_pixel", 8)) + 1
    budget = int((load * pixels_per_image + 2 * (expected_cycles or 10**6) + 64 * logits.shape[1] + 1000) * slack)

    start_clock(dut)
    wake_combinational(dut)
    dut.out_ready.value = 0
    dut.in_data.value = 0
    await _reset(dut)
    driver = StreamDriver(dut.clk, dut.in_valid, dut.in_ready, dut.in_data, rng_in, in_stall)
    sink = StreamSink(dut.clk, dut.out_valid, dut.out_ready, {"data": dut.out_data, "last": dut.out_last},
                      rng_out, out_stall, signed={"data"})
    clock = LayerClock(dut)
    cocotb.start_soon(clock.run())
    trace = WriteTrace(dut) if meta.get("trace") else None
    if trace is not None:
        cocotb.start_soon(trace.run())
    per_image_cycles, run_cycles, rtl_classes, layer_cycles, traces = [], [], [], [], []
    t0 = time.perf_counter()
    for i, image in enumerate(images):
        number = first_index + i
        flat = [int(v) for v in image.reshape(-1)]
        if i in reset_before:
            # Abort: start an image, send part of it, reset in the middle of loading.
            await _pulse_start(dut)
            partial = int(rng_abort.integers(1, max(2, len(flat))))
            await driver.send(int(v) for v in rng_abort.integers(0, 256, partial))
            await _reset(dut)
            board.figures["resets_mid_image"] = board.figures.get("resets_mid_image", 0) + 1
        begin = cycles_now()
        clock.clear()
        if trace is not None:
            trace.clear()
        await _pulse_start(dut)
        feeder = cocotb.start_soon(driver.send(flat))
        try:
            words = await with_timeout(sink.receive(until_field="last"), budget * 10, "ns")
        except SimTimeoutError:  # the design never answered
            board.mismatch(image=number, what="result stream", expected="1 + classes words",
                           got=f"nothing complete after {budget} cycles")
            feeder.cancel()
            break
        await feeder
        await ReadOnly()
        board.check(1, int(dut.done.value), image=number, what="done after the result")
        hw_cycles = dut.cycles.value.to_unsigned()
        await RisingEdge(dut.clk)
        per_image_cycles.append(cycles_now() - begin)
        run_cycles.append(hw_cycles)
        k = logits.shape[1]
        rtl_classes.append(words[0]["data"] if words else -1)
        board.check(1 + k, len(words), image=number, what="result words")
        if len(words) == 1 + k:
            board.check(classes[i], words[0]["data"], image=number, what="class")
            for c in range(k):
                board.check(logits[i, c], words[1 + c]["data"], image=number, what="logit", channel=c)
            board.check(1, words[-1]["last"], image=number, what="out_last on the final logit")
        if expected_cycles is not None:
            board.check(int(expected_cycles), hw_cycles, image=number, what="cycles (analytic model)")
        measured = clock.per_layer(hw_cycles)
        layer_cycles.append(measured)
        if expected_layers is not None:
            if len(measured) != len(expected_layers):
                board.mismatch(image=number, what="layers started", expected=len(expected_layers),
                               got=len(measured))
            else:
                for li, (want, got) in enumerate(zip(expected_layers, measured, strict=True)):
                    board.check(int(want), got, image=number, what="layer cycles (analytic model)", layer=li)
        if trace is not None:
            traces.append({"act": trace.act, "logit": trace.logit})
    seconds = time.perf_counter() - t0
    board.figures.update(
        images=len(per_image_cycles),
        network_cycles=run_cycles,
        layer_cycles=layer_cycles,
        rtl_classes=rtl_classes,
        cycles_per_image=per_image_cycles,
        images_per_second=round(len(per_image_cycles) / seconds, 3) if seconds > 0 else None,
        analytic_cycles=expected_cycles,
    )
    if trace is not None:
        board.figures["traces"] = traces
    board.finish()

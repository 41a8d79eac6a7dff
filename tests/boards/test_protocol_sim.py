"""The board's host protocol end to end in the Amaranth simulator: bytes on the UART line
in, the reply on the line out, checked bit-exactly against the golden model."""

from __future__ import annotations

import gc
import warnings

import numpy as np
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator
from binforge.boards.core import BoardCore, load_cycles_per_pixel
from binforge.boards.protocol import (
    STATUS_BAD_LENGTH,
    STATUS_OK,
    Reply,
    decode_reply,
    encode_reply,
    encode_request,
    reply_length,
)
from binforge.boards.uart_model import receive_bytes, send_bytes
from binforge.compiler.ir import Shape
from binforge.compiler.random_network import random_network
from binforge.hw.plan import analytic_cycles, plan_network
from binforge.sim.golden import run_network

DIVISOR = 24  # a byte every 240 cycles


def _exchange(core: BoardCore, requests: list[bytes], reply_bytes: list[int], *, host_divisor=DIVISOR):
    """Send each request on the line and read its reply; returns the replies' bytes."""
    replies: list[bytes] = []
    counted: list[int] = []

    async def host(ctx):
        ctx.set(core.rx, 1)
        await ctx.tick().repeat(3)
        for request, count in zip(requests, reply_bytes, strict=True):
            await send_bytes(ctx, core.rx, request, host_divisor)
            replies.append(await receive_bytes(ctx, core.tx, count, host_divisor, timeout=200_000))
            # The accelerator's own count, valid while it is done, for the replies to carry.
            counted.append(ctx.get(core.accelerator.cycles) if ctx.get(core.accelerator.done) else None)

    sim = Simulator(core)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.run()
    return replies, counted


def _expected(net, images):
    golden = run_network(net, images)
    lb = (net.compute_layers[-1].acc_width + 7) // 8
    return golden, lb


def test_bad_length_is_drained_and_the_next_image_classified():
    """A random network with every IR feature; a short request, then a real one."""
    net = random_network(3)
    plan = plan_network(net, 4, 4, 8)
    core = BoardCore(plan, DIVISOR)
    image = np.random.default_rng(3).integers(0, 256, size=(1, *net.input_shape.as_tuple()), dtype=np.uint8)
    golden, lb = _expected(net, image)
    n = net.num_classes
    requests = [encode_request(image[0].reshape(-1)[:5]), encode_request(image[0])]
    replies, counted = _exchange(core, requests, [reply_length(n, lb)] * 2)
    assert decode_reply(replies[0]) == Reply(STATUS_BAD_LENGTH, 0, 0, (0,) * n)
    reply = decode_reply(replies[1])
    assert reply.status == STATUS_OK
    assert reply.predicted == golden.predictions[0]
    assert reply.logits == tuple(int(v) for v in golden.logits[0])
    assert reply.cycles == counted[1] == analytic_cycles(plan)["total"]
    assert replies[1] == encode_reply(reply, lb)


def test_digits_images_back_to_back_through_a_small_network():
    """Real images (scikit-learn digits, 8x8) through a small random network of their shape."""
    from binforge.model.data import load_dataset

    dataset = load_dataset("digits", "test", limit=2)
    images = np.stack([np.asarray(dataset[i][0], dtype=np.uint8) for i in range(2)])
    net = random_network(11, in_shape=Shape(*images.shape[1:]), channels=(4, 4), num_classes=10,
                         act_planes=(1, 1))
    plan = plan_network(net, 4, 4, 8)
    core = BoardCore(plan, DIVISOR)
    golden, lb = _expected(net, images)
    replies, counted = _exchange(core, [encode_request(im) for im in images], [reply_length(10, lb)] * 2)
    got = [decode_reply(r) for r in replies]
    assert [r.status for r in got] == [STATUS_OK] * 2
    assert [r.predicted for r in got] == [int(p) for p in golden.predictions]
    assert [r.logits for r in got] == [tuple(int(v) for v in row) for row in golden.logits]
    assert [r.cycles for r in got] == counted == [analytic_cycles(plan)["total"]] * 2


def test_a_uart_faster_than_the_loader_is_refused(rejects):
    # a plain input (8 channels at S = 8: no im2col) merges each bit plane: 24 cycles a pixel
    plan = plan_network(random_network(3, in_shape=Shape(8, 3, 3)), 4, 4, 8)
    assert plan.input_layout.im2col is None
    rejects(ValueError, "a UART byte every 20 cycles (divisor 2) comes faster than the accelerator "
            "loads a pixel (24 cycles); use a lower baud rate", BoardCore, plan, 2)
    # an im2col input takes a pixel every cycle (the windows are assembled after the last)
    plan = plan_network(random_network(3), 4, 4, 8)
    assert plan.input_layout.im2col is not None
    assert load_cycles_per_pixel(plan) == 1
    with warnings.catch_warnings():  # built, not elaborated: collected here, warning muted
        warnings.simplefilter("ignore", UnusedElaboratable)
        core = BoardCore(plan, 4)  # 40 cycles a byte
        assert core.accelerator.plan.input_layout.im2col is not None
        del core
        gc.collect()

"""Drive an Accelerator in Amaranth's simulator: pixels in, class and logits out."""

import numpy as np
from amaranth.sim import Simulator


def run_accelerator(acc, images, *, stall_seed=None, max_cycles=2_000_000):
    """Run ``images`` (N, C, H, W uint8) one after another; return (classes, logits, cycles).

    With ``stall_seed`` the pixel source and the result sink stall at random.
    """
    rng = np.random.default_rng(stall_seed) if stall_seed is not None else None
    results = []

    def stall():
        return rng is not None and rng.random() < 0.3

    async def tb(ctx):
        for image in images:
            ctx.set(acc.start, 1)
            await ctx.tick()
            ctx.set(acc.start, 0)
            pixels = [int(v) for v in np.asarray(image).reshape(-1)]
            i = 0
            words = []
            budget = max_cycles
            ctx.set(acc.result.ready, 0)
            while True:
                budget -= 1
                assert budget > 0, "the accelerator did not finish"
                if i < len(pixels) and not stall():
                    ctx.set(acc.pixels.valid, 1)
                    ctx.set(acc.pixels.payload, pixels[i])
                else:
                    ctx.set(acc.pixels.valid, 0)
                ready = not stall()
                ctx.set(acc.result.ready, ready)
                took_pixel = ctx.get(acc.pixels.valid) and ctx.get(acc.pixels.ready)
                out = None
                if ready and ctx.get(acc.result.valid):
                    out = ctx.get(acc.result.payload)
                await ctx.tick()
                if took_pixel:
                    i += 1
                if out is not None:
                    value = out.data
                    words.append(value - (1 << 32) if value >> 31 else value)
                    if out.last:
                        break
            ctx.set(acc.pixels.valid, 0)
            ctx.set(acc.result.ready, 0)
            await ctx.tick()
            assert ctx.get(acc.done) == 1
            assert i == len(pixels)
            results.append((words[0], words[1:], ctx.get(acc.cycles)))

    sim = Simulator(acc)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    classes = np.array([r[0] for r in results], dtype=np.int64)
    logits = np.array([r[1] for r in results], dtype=np.int64)
    cycles = [r[2] for r in results]
    return classes, logits, cycles

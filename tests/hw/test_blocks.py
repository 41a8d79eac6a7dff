"""The window generator, the output stage and the bit max-pool engine, each alone,
against plain-Python references of the layouts in ``binforge.hw.plan``."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import memory
from amaranth.sim import Simulator
from binforge.compiler import ir
from binforge.compiler.random_network import random_conv, random_linear
from binforge.hw.descriptor import DescriptorFormat
from binforge.hw.maxpool import BitMaxPool
from binforge.hw.output_stage import ARGMAX_LATENCY, OutputStage, RunningArgmax, _lanes_below
from binforge.hw.plan import ARGMAX_TAIL_CYCLES, DRAIN_TAIL_CYCLES, plan_network, tensor_layouts
from binforge.hw.window import WindowGenerator
from binforge.sim.golden import run_network
from networks import conv_logits_network, small_network


def simulate(top, testbench):
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


def pack_tensor(bits, layout):
    """(planes, C, H, W) bits -> list of S-bit words in ``layout``."""
    planes, c, h, w = bits.shape
    s = layout.simd
    words = [0] * layout.words
    for n in range(planes):
        for pos in range(h * w):
            y, x = divmod(pos, w)
            for ch in range(c):
                if bits[n, ch, y, x]:
                    b = n * layout.plane_words * s + pos * layout.pos_stride + ch
                    words[b // s] |= 1 << (b % s)
    return words


# ---- window generator ---------------------------------------------------------------------


def expected_beats(p, plan):
    """Every beat of a compute layer: (valid columns' (addr or None if pad), weight addr, first, last)."""
    beats = []
    cols = plan.cols
    for pg in range(p.position_groups):
        for cg in range(p.channel_groups):
            for o in range(p.ops):
                for ky in range(p.kh):
                    for kx in range(p.kw):
                        for j in range(p.cw_in):
                            addrs = []
                            for c in range(cols):
                                pos = pg * cols + c
                                if pos >= p.positions:
                                    addrs.append("skip")
                                    continue
                                yo, xo = divmod(pos, p.out_w)
                                y = yo * p.stride - p.padding + ky
                                x = xo * p.stride - p.padding + kx
                                if not (0 <= y < p.in_h and 0 <= x < p.in_w):
                                    addrs.append(None)
                                else:
                                    addrs.append(p.plane_offsets[o] + (y * p.in_w + x) * p.cw_in + j)
                            in_op = (ky * p.kw + kx) * p.cw_in + j
                            waddr = p.weight_base + cg * p.weight_group_step + p.weight_offsets[o] + in_op
                            first = o == 0 and in_op == 0
                            last = o == p.ops - 1 and in_op == p.kh * p.kw * p.cw_in - 1
                            beats.append((addrs, waddr, first, last))
    return beats


@pytest.mark.parametrize("rows,cols,simd", [(2, 3, 4), (3, 2, 1), (1, 5, 8)])
@pytest.mark.parametrize("which", ["small", "conv_logits"])
@pytest.mark.parametrize("op_table", ["block", "logic"])
def test_window_generator_walks_every_window(rows, cols, simd, which, op_table):
    net = small_network(7) if which == "small" else conv_logits_network(7)
    plan = plan_network(net, rows, cols, simd)
    fmt = DescriptorFormat(plan)
    aw = max(1, (max(*plan.buffer_depths, plan.image_depth) - 1).bit_length())
    wg = WindowGenerator(plan, fmt.layout, aw, max(1, (len(plan.weight_rom) - 1).bit_length()),
                         op_table=op_table)
    computes = [p for p in plan.layers if p.kind == "compute"]
    got = {}

    async def tb(ctx):
        for p in computes:
            ctx.set(wg.init, fmt.const(p.index))
            ctx.set(wg.start, 1)
            await ctx.tick()
            ctx.set(wg.start, 0)
            ctx.set(wg.desc, fmt.const(p.index))
            beats, cycle, first_cycles = [], 0, []
            while not ctx.get(wg.finished):
                if ctx.get(wg.beat):
                    addrs = []
                    for c in range(cols):
                        pad = (ctx.get(wg.pad) >> c) & 1
                        addr = (ctx.get(wg.addr) >> (c * aw)) & ((1 << aw) - 1)
                        addrs.append(None if pad else addr)
                    beats.append((addrs, ctx.get(wg.weight_addr), bool(ctx.get(wg.first)),
                                  bool(ctx.get(wg.last))))
                    if ctx.get(wg.first):
                        first_cycles.append(cycle)
                await ctx.tick()
                cycle += 1
            got[p.index] = (beats, first_cycles)

    simulate(wg, tb)
    for p in computes:
        beats, first_cycles = got[p.index]
        want = expected_beats(p, plan)
        assert len(beats) == len(want)
        for (addrs, waddr, first, last), (waddrs, wwaddr, wfirst, wlast) in zip(beats, want, strict=True):
            assert (waddr, first, last) == (wwaddr, wfirst, wlast)
            for a, w in zip(addrs, waddrs, strict=True):
                if w != "skip":
                    assert a == w
        # a group's first beat waits for the previous group's guard
        for g in range(1, len(first_cycles)):
            in_last_pg = (g - 1) // p.channel_groups == p.position_groups - 1
            guard = p.guard_last if in_last_pg else p.guard_full
            assert first_cycles[g] - first_cycles[g - 1] == p.beats + guard


def test_window_generator_refuses_an_unknown_op_table(rejects):
    plan = plan_network(small_network(7), 2, 2, 4)
    fmt = DescriptorFormat(plan)
    rejects(ValueError, "op_table must be one of 'auto', 'block', 'logic', not 'lut'",
            WindowGenerator, plan, fmt.layout, 8, 8, op_table="lut")


# ---- output stage -------------------------------------------------------------------------


def output_layer_network(seed, out_planes, affine):
    """conv -> (the layer under test: conv 3x3 with 2 output planes or affine) -> linear."""
    rng = np.random.default_rng(seed)
    first = random_conv(rng, ir.Shape(1, 4, 5), ir.INPUT_PLANES, 5, weight_planes=1, out_planes=1,
                        ops=tuple(ir.Op(0, i, 1 << i) for i in range(8)), name="conv0")
    if affine:
        head = random_conv(rng, first.out_shape, 1, 6, kernel=3, padding=1, out_planes=0, name="head")
        layers = (first, head)
        classes = head.out_shape.size
    else:
        mid = random_conv(rng, first.out_shape, 1, 7, kernel=3, padding=1, out_planes=out_planes, name="mid")
        last = random_linear(rng, mid.out_shape, out_planes, 3, name="fc")
        layers, classes = (first, mid, last), 3
    return ir.validate(ir.Network(name="out", input_shape=ir.Shape(1, 4, 5), num_classes=classes,
                                  layers=layers))


@pytest.mark.parametrize("rows,cols,simd", [(2, 3, 4), (3, 4, 2), (8, 2, 8), (5, 5, 4)])
@pytest.mark.parametrize("case", ["threshold", "affine"])
def test_output_stage_writes_bits_and_logits(rows, cols, simd, case):
    net = output_layer_network(rows + cols, 2, case == "affine")
    plan = plan_network(net, rows, cols, simd)
    assert plan.hold_results is (rows >= 5)  # skew 1-2 with 8-24 cycle drains after 9 beats
    p = plan.layers[1]
    fmt = DescriptorFormat(plan)
    aw = max(1, (max(*plan.buffer_depths, plan.image_depth) - 1).bit_length())
    stage = OutputStage(plan, fmt.layout, aw)
    rng = np.random.default_rng(simd)
    # PE results P for every (channel, position); the stage turns them into acc = offset - 2P.
    k = p.fan_in
    lo = sum(g for g in p.gains if g < 0) * k
    hi = sum(g for g in p.gains if g > 0) * k
    results = rng.integers(lo, hi + 1, (p.out_c, p.positions))
    pw = plan.pe_width
    layouts = tensor_layouts(net, simd)
    memory_words = {}
    logits = {}

    async def tb(ctx):
        ctx.set(stage.desc, fmt.const(p.index))
        ctx.set(stage.layer_start, 1)
        await ctx.tick()
        ctx.set(stage.layer_start, 0)
        for pg in range(p.position_groups):
            for cg in range(p.channel_groups):
                value = 0
                for r in range(rows):
                    for c in range(cols):
                        ch, pos = cg * rows + r, pg * cols + c
                        v = int(results[ch, pos]) if ch < p.out_c and pos < p.positions else 0
                        value |= (v & ((1 << pw) - 1)) << ((r * cols + c) * pw)
                ctx.set(stage.results, value)
                ctx.set(stage.group_done, 1)
                await ctx.tick()
                ctx.set(stage.group_done, 0)
                if plan.hold_results:
                    # the stage drains its own copy: the next group's sums may land now
                    ctx.set(stage.results, int(rng.integers(0, 1 << 62)) * 0x9E3779B97F4A7C15
                            % (1 << (rows * cols * pw)))
                # without the hold, hold the results for the whole drain (the sequencer
                # guarantees it); the last write comes DRAIN_TAIL_CYCLES - 1 cycles after the last read
                for _ in range(p.drain_full + DRAIN_TAIL_CYCLES - 1):
                    if ctx.get(stage.act_we):
                        addr, data, en = (ctx.get(x) for x in (stage.act_addr, stage.act_data, stage.act_en))
                        old = memory_words.get(addr, (1 << simd) - 1)  # stale ones: cleared?
                        memory_words[addr] = (old & ~en) | (data & en)
                    if ctx.get(stage.logit_we):
                        v = ctx.get(stage.logit_data)
                        logits[ctx.get(stage.logit_addr)] = v - (1 << 32) if v >> 31 else v
                    await ctx.tick()
        await ctx.tick()
        ctx.set(stage.layer_start, 0)
        logits["class"] = ctx.get(stage.class_index)

    simulate(stage, tb)
    layer = p.layer
    offset = np.asarray(layer.bias, np.int64) + k * sum(p.gains)
    acc = offset[:, None] - 2 * results  # (Co, positions)
    if case == "affine":
        flat = acc.reshape(-1)  # (C, H, W) order: channel-major
        assert [logits[i] for i in range(flat.size)] == flat.tolist()
        assert logits["class"] == int(np.argmax(flat))
    else:
        t = np.asarray(layer.output.thresholds)[:, :, None]
        bits = ((acc[None] >= t).astype(np.uint8) ^ np.asarray(layer.output.flip)[None, :, None])
        bits = bits.reshape(p.out_planes, p.out_c, p.out_h, p.out_w)
        want = pack_tensor(bits, layouts[2])
        assert [memory_words.get(a, "unwritten") for a in range(len(want))] == want


@pytest.mark.parametrize("lanes,width", [(1, 3), (2, 4), (8, 6), (16, 9), (64, 10)])
def test_lane_masks_are_the_lanes_below_a_signed_value(lanes, width):
    """The output stage's thermometer decode: bit i set exactly where i < value, for
    every value of a signed ``width``-bit signal (negative, inside, at and past the word)."""
    m = Module()
    value = Signal(signed(width))
    mask = _lanes_below(m, value, lanes)

    async def tb(ctx):
        for v in range(-(1 << (width - 1)), 1 << (width - 1)):
            ctx.set(value, v)
            want = sum(1 << i for i in range(lanes) if i < v)
            assert ctx.get(mask) == want, (v, bin(ctx.get(mask)))

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("seed", range(4))
def test_running_argmax_keeps_the_first_index_of_the_maximum(seed):
    """Streams with many ties (values from a few levels, or equal in one half only),
    written back to back or with gaps, indices in any order, restarted in between: after
    each write the index shown ARGMAX_LATENCY cycles later is the smallest index among
    the largest values so far."""
    rng = np.random.default_rng(seed)
    width, index_width = 32, 6
    argmax = RunningArgmax(width, index_width)
    half = width // 2
    levels = [-(1 << 31), -1, 0, 1, 5 << half, (5 << half) + 3, (5 << half) - 1, (1 << 31) - 1]
    streams = []
    for _ in range(6):
        n = int(rng.integers(1, 12))
        values = [int(rng.choice(levels)) if rng.random() < 0.7 else int(rng.integers(-(1 << 31), 1 << 31))
                  for _ in range(n)]
        indices = [int(i) for i in rng.permutation(1 << index_width)[:n]]
        gaps = [int(rng.choice([0, 0, 0, 1, 2])) for _ in range(n)]
        streams.append(list(zip(values, indices, gaps, strict=True)))
    checked = []

    async def tb(ctx):
        for stream in streams:
            ctx.set(argmax.restart, 1)
            await ctx.tick()
            ctx.set(argmax.restart, 0)
            history = []  # (cycle written, expected best index after it)
            seen = []
            cycle = 0
            pending = list(stream)
            while pending or (history and cycle <= history[-1][0] + ARGMAX_LATENCY):
                due = [want for at, want in history if at + ARGMAX_LATENCY == cycle]
                if due:
                    checked.append((ctx.get(argmax.best_index), due[0]))
                if pending and pending[0][2] == 0:
                    value, index, _ = pending.pop(0)
                    ctx.set(argmax.valid, 1)
                    ctx.set(argmax.data, value)
                    ctx.set(argmax.index, index)
                    seen.append((value, index))
                    top = max(v for v, _ in seen)
                    history.append((cycle, min(i for v, i in seen if v == top)))
                else:
                    if pending:
                        v, i, g = pending[0]
                        pending[0] = (v, i, g - 1)
                    ctx.set(argmax.valid, 0)
                await ctx.tick()
                cycle += 1
            ctx.set(argmax.valid, 0)

    simulate(argmax, tb)
    assert len(checked) == sum(len(s) for s in streams)
    assert [got for got, _ in checked] == [want for _, want in checked]


def test_argmax_tail_is_the_argmax_latency_beyond_the_finish_cycle():
    assert ARGMAX_TAIL_CYCLES == ARGMAX_LATENCY - 1


# ---- bit max-pool ---------------------------------------------------------------------------




def pool_network(kernel, stride, channels, planes):
    rng = np.random.default_rng(kernel * 10 + stride)
    first = random_conv(rng, ir.Shape(1, 7, 6), ir.INPUT_PLANES, channels, weight_planes=1,
                        out_planes=planes, ops=tuple(ir.Op(0, i, 1 << i) for i in range(8)), name="conv0")
    pool = ir.MaxPoolLayer(name="pool", in_shape=first.out_shape, in_planes=planes, kernel=kernel,
                           stride=stride)
    last = random_linear(rng, pool.out_shape, planes, 2, name="fc")
    return ir.validate(ir.Network(name="pool", input_shape=ir.Shape(1, 7, 6), num_classes=2,
                                  layers=(first, pool, last)))


@pytest.mark.parametrize("kernel,stride,channels,planes,simd,read_latency", [
    (2, 2, 3, 1, 4, 1), (3, 2, 5, 2, 2, 2), (1, 1, 2, 1, 8, 1), (2, 1, 9, 2, 4, 2),
])
def test_bit_max_pool_is_the_or_of_each_window(kernel, stride, channels, planes, simd, read_latency):
    net = pool_network(kernel, stride, channels, planes)
    plan = plan_network(net, 2, 2, simd)
    p = plan.layers[1]
    fmt = DescriptorFormat(plan)
    layouts = tensor_layouts(net, simd)
    images = np.random.default_rng(kernel).integers(0, 256, (1, 1, 7, 6)).astype(np.uint8)
    golden = run_network(net, images, return_layers=True)
    src_words = pack_tensor(golden.layers[0][0], layouts[1])
    want = pack_tensor(golden.layers[1][0], layouts[2])
    aw = max(1, (max(len(src_words), len(want)) - 1).bit_length())

    m = Module()
    m.submodules.pool = pool = BitMaxPool(fmt.layout, simd, aw, read_latency=read_latency)
    m.submodules.src = src = memory.Memory(shape=simd, depth=len(src_words), init=src_words)
    m.submodules.dst = dst = memory.Memory(shape=simd, depth=len(want), init=[])
    rd, wr = src.read_port(), dst.write_port()
    data = rd.data
    for _ in range(read_latency - 1):  # the read data registered again, as in the sequencer
        reg = Signal.like(data)
        m.d.sync += reg.eq(data)
        data = reg
    m.d.comb += [rd.addr.eq(pool.rd_addr), pool.rd_data.eq(data), wr.addr.eq(pool.wr_addr),
                 wr.data.eq(pool.wr_data), wr.en.eq(pool.wr_we)]
    cycles = []

    async def tb(ctx):
        ctx.set(pool.start, 1)
        await ctx.tick()
        ctx.set(pool.start, 0)
        ctx.set(pool.desc, fmt.const(p.index))
        count = 1
        while not ctx.get(pool.drained):
            await ctx.tick()
            count += 1
        await ctx.tick()
        cycles.append(count + 1)
        cycles.append([ctx.get(dst.data[i]) for i in range(len(want))])

    simulate(m, tb)
    assert cycles[1] == want
    assert cycles[0] == 1 + p.out_words * kernel * kernel + 2 + read_latency  # address, read(s), write

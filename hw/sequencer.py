"""The layer sequencer: runs a network's layers one after another on the one array.

It owns the on-chip memories, all initialised from the IR at generation time: the
weight ROM, the op table (in the window generator), the threshold/offset ROM (in the
output stage), and the two activation buffers (ping-pong: layer ``i`` reads buffer
``i % 2`` and writes the other), each replicated once per array column so that every
column reads its own word each cycle. It loads each layer's descriptor, then lets the
window generator issue beats into the array while the output stage drains finished
groups, or lets the pool engine run a max-pool layer.
"""

from __future__ import annotations

import functools
import operator

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .array import XnorPopcountArray
from .descriptor import DescriptorFormat
from .maxpool import BitMaxPool
from .output_stage import OutputStage
from .plan import OUT_DATA_WIDTH, NetworkPlan
from .spram import SinglePortImage, image_memory_kind
from .window import WindowGenerator

__all__ = ["LayerSequencer", "debug_signature"]


def _addr_width(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


#: ECP5 DP16KD configurations (depth, width), deepest first (also the fit estimate's).
DP16KD_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))


def image_bank_depth(image_banks, simd: int, platform) -> int | None:
    """Words per bank of the image memory (``None``: one memory, not banked).

    ``image_banks`` is ``"auto"`` (on ECP5 a bank is one DP16KD deep at S-bit words, so
    each block RAM's output ends in a register of its own before the bank multiplexer;
    elsewhere, and in simulation, one memory), ``None`` (never banked) or a power of two
    (words per bank, on any platform: how tests run the banked memory).
    """
    if image_banks is None:
        return None
    if image_banks == "auto":
        if getattr(platform, "family", None) != "ecp5":
            return None
        return next((d for d, w in DP16KD_SHAPES if w >= simd), 512)
    return image_banks


def _check_image_banks(image_banks):
    if image_banks is None or image_banks == "auto":
        return
    if isinstance(image_banks, bool) or not isinstance(image_banks, int) or image_banks < 1 \
            or image_banks & (image_banks - 1):
        raise ValueError(f"image_banks must be 'auto', None or a power of two (words per bank), "
                         f"not {image_banks!r}")


def debug_signature(plan: NetworkPlan, act_addr_width: int) -> wiring.Signature:
    """The debug tap: which layer runs, when it starts, and every write it makes.

    ``layer`` is the running layer's index; ``layer_start`` is high in the one cycle in
    which a layer's descriptor loads. ``act_*`` is the activation write of the running
    layer (output stage or pool engine): word address, S data bits, S lane enables,
    valid when ``act_we``; ``logit_*`` the logits memory write. Nothing reads the tap
    inside the design: a board top that leaves it open pays no logic for it.
    """
    return wiring.Signature({
        "layer": Out(range(len(plan.layers) + 1)),
        "layer_start": Out(1),
        "act_we": Out(1),
        "act_addr": Out(act_addr_width),
        "act_data": Out(plan.simd),
        "act_en": Out(plan.simd),
        "logit_we": Out(1),
        "logit_addr": Out(_addr_width(plan.logits_depth)),
        "logit_data": Out(OUT_DATA_WIDTH),
    })


class LayerSequencer(wiring.Component):
    """All layers of one network on an R x C x S array.

    Parameters
    ----------
    plan : NetworkPlan
        The network mapped on the array (:func:`~binforge.hw.plan.plan_network`).

    Members
    -------
    start : In(1)
        Pulse: run the network on the image in buffer 0.
    busy : Out(1)
        High from the cycle after ``start`` up to and including the ``done`` cycle.
    done : Out(1)
        Pulse: the logits and ``class_index`` are ready.
    load_addr, load_data, load_en, load_we : In
        Image write while idle (word address, S bits, S lane enables). Into buffer 0:
        merged into its word (read in this cycle, written two cycles later), so two such
        writes must be at least three cycles apart. Into the im2col image memory (where
        the plan has one): a whole word, every cycle if need be (``load_en`` ignored).
    logit_addr : In(logit address width)
        Logits memory read address; ``logit_data`` follows one cycle later.
    logit_data : Out(32)
    class_index : Out
        First index of the maximum logit.
    debug : Out(:func:`debug_signature`)
        The debug tap (layer index, layer start, activation and logit writes).

    Latency: ``busy`` lasts :func:`~binforge.hw.plan.analytic_cycles` ``["total"]`` cycles.

    ``image_banks`` (see :func:`image_bank_depth`) splits the im2col image memory into
    banks, each read into a register of its own; the bank multiplexer then shares the
    cycle of the source/pad select (no block RAM clock-to-output before it). Same cycles,
    same memory bits.

    ``image_memory`` (:func:`~binforge.hw.spram.image_memory_kind`) puts the im2col image
    memory in single-port RAM: ``"auto"`` (default) on an iCE40 UltraPlus whose SPRAM tiles
    hold every column's copy, ``"spram"`` on any platform (a plain memory with one address
    off the UltraPlus: how tests run it), ``"block"`` never. Same cycles.
    """

    def __init__(self, plan: NetworkPlan, *, image_banks="auto", image_memory="auto"):
        if not isinstance(plan, NetworkPlan):
            raise TypeError(f"plan must be a NetworkPlan, not {plan!r}")
        _check_image_banks(image_banks)
        image_memory_kind(image_memory, cols=plan.cols, simd=plan.simd, depth=plan.image_depth, device=None)
        if image_memory == "spram" and isinstance(image_banks, int):
            raise ValueError(f"image_banks={image_banks!r} splits a block-RAM image memory; "
                             f"a single-port one (image_memory='spram') has no banks")
        self._plan = plan
        self._image_banks = image_banks
        self._image_memory = image_memory
        self._format = DescriptorFormat(plan)
        self._act_aw = _addr_width(max(*plan.buffer_depths, plan.image_depth))
        self._logit_aw = _addr_width(plan.logits_depth)
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "load_addr": In(self._act_aw),
            "load_data": In(plan.simd),
            "load_en": In(plan.simd),
            "load_we": In(1),
            "logit_addr": In(self._logit_aw),
            "logit_data": Out(OUT_DATA_WIDTH),
            "class_index": Out(self._logit_aw),
            "debug": Out(debug_signature(plan, self._act_aw)),
        })

    @property
    def plan(self) -> NetworkPlan:
        return self._plan

    @property
    def act_addr_width(self) -> int:
        return self._act_aw

    def elaborate(self, platform):
        m = Module()
        plan, fmt = self._plan, self._format
        rows, cols, s = plan.rows, plan.cols, plan.simd
        layout = fmt.layout
        n_layers = len(plan.layers)

        desc = Signal(layout)
        # The descriptor of the layer that loads next, decoded a cycle ahead into a
        # register (from ``layer + 1``, or 0 while idle): LOAD and the window generator's
        # counter set-up read flip-flops, not the layer counter through the descriptor
        # ROM's decode. ``layer`` is stable for at least a cycle before every LOAD.
        next_desc = Signal(layout)
        layer = Signal(range(n_layers + 1))
        next_layer = Signal(range(n_layers + 1))
        with m.Switch(next_layer):
            for i in range(n_layers):
                with m.Case(i):
                    m.d.sync += next_desc.eq(fmt.const(i))

        weight_depth = max(1, len(plan.weight_rom))
        m.submodules.weights = weights = memory.Memory(
            shape=unsigned(rows * s), depth=weight_depth, init=[int(w) for w in plan.weight_rom])
        weight_rd = weights.read_port()

        m.submodules.window = window = WindowGenerator(plan, layout, self._act_aw, _addr_width(weight_depth))
        m.submodules.array = array = XnorPopcountArray(rows, cols, s, plan.pe_width, plan.gain_format,
                                                       relay=plan.relay)
        m.submodules.output = output = OutputStage(plan, layout, self._act_aw)
        m.d.comb += [window.desc.eq(desc), window.init.eq(next_desc), output.desc.eq(desc)]
        # The pool engine only where the network has a max-pool layer.
        pool = None
        if any(p.kind == "pool" for p in plan.layers):
            m.submodules.pool = pool = BitMaxPool(layout, s, self._act_aw, read_latency=2)
            m.d.comb += pool.desc.eq(desc)

        m.submodules.logits = logits = memory.Memory(shape=unsigned(OUT_DATA_WIDTH), depth=plan.logits_depth,
                                                     init=[])
        logit_wr = logits.write_port()
        logit_rd = logits.read_port()
        m.d.comb += [logit_wr.addr.eq(output.logit_addr), logit_wr.data.eq(output.logit_data),
                     logit_wr.en.eq(output.logit_we), logit_rd.addr.eq(self.logit_addr),
                     self.logit_data.eq(logit_rd.data), self.class_index.eq(output.class_index)]

        # ---- FSM ------------------------------------------------------------------------
        load = Signal()
        m.d.comb += next_layer.eq(layer + 1)
        with m.FSM(name="sequencer"):
            with m.State("IDLE"):
                m.d.comb += next_layer.eq(0)
                with m.If(self.start):
                    m.d.sync += layer.eq(0)
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [load.eq(1), self.busy.eq(1)]
                m.d.sync += desc.eq(next_desc)
                m.next = "RUN"
                if pool is not None:
                    with m.If(next_desc.pool):
                        m.next = "POOL"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(output.drained):
                    with m.If(desc.last_layer):
                        m.next = "FINISH"
                    with m.Else():
                        m.d.sync += layer.eq(layer + 1)
                        m.next = "LOAD"
            if pool is not None:
                with m.State("POOL"):
                    m.d.comb += self.busy.eq(1)
                    with m.If(pool.drained):
                        m.d.sync += layer.eq(layer + 1)
                        m.next = "LOAD"
            with m.State("FINISH"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"

        dbg = self.debug
        m.d.comb += [dbg.layer.eq(layer), dbg.layer_start.eq(load),
                     dbg.logit_we.eq(output.logit_we), dbg.logit_addr.eq(output.logit_addr),
                     dbg.logit_data.eq(output.logit_data)]
        m.d.comb += [dbg.act_we.eq(self.busy & output.act_we), dbg.act_addr.eq(output.act_addr),
                     dbg.act_data.eq(output.act_data), dbg.act_en.eq(output.act_en)]
        if pool is not None:
            with m.If(desc.pool):
                m.d.comb += [dbg.act_we.eq(self.busy & pool.wr_we), dbg.act_addr.eq(pool.wr_addr),
                             dbg.act_data.eq(pool.wr_data), dbg.act_en.eq((1 << s) - 1)]

        is_pool = Signal()
        m.d.comb += window.start.eq(load & ~is_pool)
        if pool is not None:
            m.d.comb += [is_pool.eq(next_desc.pool), pool.start.eq(load & is_pool)]
        output_start = Signal()
        m.d.sync += output_start.eq(load & ~is_pool)
        m.d.comb += output.layer_start.eq(output_start)

        # ---- Stage B: memory reads, pad select -> array ----------------------------------
        # Every activation memory is written a whole S-bit word at a time (a block RAM then
        # holds S bits of every word, not one bit per write enable). A write that changes
        # part of a word (the image loader's bits; the output stage in a layer whose writes
        # cover fewer than S lanes, ``desc.rmw``) is merged: its word is read from column
        # 0's copy in the request cycle and written back merged two cycles later (the
        # writers space such requests three cycles apart at least, so a merge's read never
        # meets a write).
        #
        # No read whose data is used meets a write of the same memory: a layer reads its
        # source and writes its destination (never the same memory), the loader writes
        # while no layer runs, and a merge reads between writes. Each read port's data
        # register is therefore enabled only in cycles without a write to its memory:
        # Yosys sees the two enables exclusive, leaves the collision a don't-care and adds
        # no read-first/transparency logic around the block RAM (an asynchronous read port
        # and this register are what it merges into the block RAM's read port).
        aw = self._act_aw
        image = bool(plan.image_depth)  # a separate image memory (im2col pixel tensor)
        n_mems = 3 if image else 2
        loaded = 2 if image else 0  # the memory the image loader writes
        rmw_layers = any(p.kind == "compute" and p.rmw for p in plan.layers)
        # The image memory takes whole words from its loader (the im2col windows), no merge.
        mergeable = sorted({*(() if image else (0,)), *((0, 1) if rmw_layers else ())})
        write_en = [Signal(name=f"mem{b}_write") for b in range(n_mems)]
        write_addr = Signal(aw)
        write_data = Signal(s)
        merge_read = [Signal(name=f"mem{b}_merge_read") for b in range(n_mems)]
        request_addr = Signal(aw)
        read_data = [[None] * cols for _ in range(n_mems)]
        # The image memory in banks (``image_banks``): bank ``addr >> bank_bits`` holds the
        # word at ``addr``'s low bits; each bank's read register is enabled in cycles
        # without a write to that bank, and the bank index follows the read by a register.
        single_port = image and image_memory_kind(
            self._image_memory, cols=cols, simd=s, depth=plan.image_depth,
            device=getattr(platform, "device", None)) == "spram"
        bank_depth = image_bank_depth(self._image_banks, s, platform) if image and not single_port else None
        banks = -(-plan.image_depth // bank_depth) if bank_depth else 1
        bank_bits = (bank_depth - 1).bit_length() if banks > 1 else 0
        bank_select = [None] * cols
        for b in range(n_mems):
            for c in range(cols):
                addr = window.addr[c * aw:(c + 1) * aw]
                if c == 0 and (pool is not None or b in mergeable):
                    addr = Signal(aw, name=f"mem{b}_read_addr")
                    m.d.comb += addr.eq(window.addr[:aw])
                    if pool is not None and b < 2:
                        with m.If(desc.pool):
                            m.d.comb += addr.eq(pool.rd_addr)
                    if b in mergeable:
                        with m.If(merge_read[b]):
                            m.d.comb += addr.eq(request_addr)
                if b == 2 and (banks > 1 or single_port):
                    # The write registered, one copy per column: a shared read/write address
                    # (the banks': Yosys gives a bank one port for both, its read register
                    # enabled only without a write; the single-port memory's) then follows a
                    # flip-flop, not the write request's logic from the sequencer's state.
                    # Only the image loader writes this memory, and the run starts after it.
                    image_we = Signal(name=f"image_col{c}_write_en")
                    image_waddr = Signal(aw, name=f"image_col{c}_write_addr", reset_less=True)
                    image_wdata = Signal(s, name=f"image_col{c}_write_data", reset_less=True)
                    m.d.sync += [image_we.eq(write_en[b]), image_waddr.eq(write_addr), image_wdata.eq(write_data)]
                if b == 2 and banks > 1:
                    bank_data = []
                    for k in range(banks):
                        lo = k * bank_depth
                        words = plan.image_init[lo:lo + bank_depth]
                        mem = memory.Memory(shape=unsigned(s), depth=len(words), init=list(words))
                        m.submodules[f"image_col{c}_bank{k}"] = mem
                        rd, wr = mem.read_port(domain="comb"), mem.write_port()
                        bank_we = Signal(name=f"image_col{c}_bank{k}_write")
                        m.d.comb += [bank_we.eq(image_we & (image_waddr[bank_bits:] == k)),
                                     wr.addr.eq(image_waddr[:bank_bits]), wr.data.eq(image_wdata),
                                     wr.en.eq(bank_we), rd.addr.eq(addr[:bank_bits])]
                        data = Signal(s, name=f"image_col{c}_bank{k}_data", reset_less=True)
                        with m.If(~bank_we):
                            m.d.sync += data.eq(rd.data)
                        bank_data.append(data)
                    select = Signal(range(banks), name=f"image_col{c}_bank", reset_less=True)
                    m.d.sync += select.eq(addr[bank_bits:])
                    read_data[b][c] = bank_data
                    bank_select[c] = select
                    continue
                if b == 2 and single_port:
                    # One address for the loader's (registered) writes and the first
                    # layer's reads (never in the same cycle); the word registered as below.
                    spram = SinglePortImage(s, plan.image_depth)
                    m.submodules[f"image_col{c}"] = spram
                    m.d.comb += [spram.addr.eq(Mux(image_we, image_waddr, addr)), spram.we.eq(image_we),
                                 spram.wdata.eq(image_wdata)]
                    read_data[b][c] = spram.rdata
                    continue
                if b == 2:
                    mem = memory.Memory(shape=unsigned(s), depth=plan.image_depth,
                                        init=list(plan.image_init))
                    m.submodules[f"image_col{c}"] = mem
                else:
                    mem = memory.Memory(shape=unsigned(s), depth=plan.buffer_depths[b], init=[])
                    m.submodules[f"buffer{b}_col{c}"] = mem
                rd = mem.read_port(domain="comb")
                wr = mem.write_port()
                m.d.comb += [wr.addr.eq(write_addr), wr.data.eq(write_data), wr.en.eq(write_en[b])]
                data = Signal(s, name=f"mem{b}_col{c}_data", reset_less=True)
                with m.If(~write_en[b]):
                    m.d.sync += data.eq(rd.data)
                m.d.comb += rd.addr.eq(addr)
                read_data[b][c] = data
        # The weight ROM is read one cycle after the activation memories (its address
        # waits in a register): its data meets the activations after their read register.
        weight_addr_r = Signal.like(window.weight_addr)
        m.d.sync += weight_addr_r.eq(window.weight_addr)
        m.d.comb += weight_rd.addr.eq(weight_addr_r)

        # ---- Stage B': the read data registered (a block RAM's clock-to-output then ends
        # in a flip-flop), then the source/pad select -> the array (READ_REGISTER_CYCLES) --
        def delayed(value, cycles, name):
            for i in range(cycles):
                reg = Signal.like(value, name=f"{name}_d{i}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        src_r = Signal(2)  # the descriptor is stable for the whole layer: one register
        m.d.sync += src_r.eq(desc.src)
        pad_1 = delayed(window.pad, 1, "pad")
        pad_r = delayed(pad_1, 1, "pad_r")
        pad_word_r = delayed(window.pad_word, 2, "pad_word")
        first_r, last_r, beat_r = (delayed(window.first, 2, "first"), delayed(window.last, 2, "last"),
                                   delayed(window.beat, 2, "beat"))
        gain_r = delayed(window.gain, 2, "gain")
        acts = []
        held_words = {}
        # The array's activation word: the source memory's read register (or, for the
        # banked image memory, its bank's), or the pad word. Each candidate has a select
        # flip-flop, set the cycle before from the source, the pad bit and the bank index
        # (all registers then), so the word is an AND-OR of registers: no decode of the
        # source, bank and pad in front of the array.
        source_is = [(src_r != 1) & ((src_r != 2) if image else 1), src_r == 1, src_r == 2]
        for c in range(cols):
            candidates = []  # (word, its select's next value)
            for b in range(n_mems):
                if b == 2 and banks > 1:
                    # Each bank's word in a register of its own (the block RAM's output
                    # register), each a candidate selected with its bank index (only the
                    # array reads the image memory: no merge, no pool engine).
                    bank_regs = [Signal(s, name=f"read2_col{c}_bank{k}", reset_less=True)
                                 for k in range(banks)]
                    m.d.sync += [r.eq(data) for r, data in zip(bank_regs, read_data[b][c], strict=True)]
                    for k, bank_reg in enumerate(bank_regs):
                        candidates.append((bank_reg, source_is[b] & (bank_select[c] == k)))
                else:
                    reg = Signal(s, name=f"read{b}_col{c}", reset_less=True)
                    m.d.sync += reg.eq(read_data[b][c])
                    candidates.append((reg, source_is[b]))
                    if c == 0:
                        held_words[b] = reg
            word = Signal(s, name=f"act{c}")
            terms = []
            for k, (value, select_next) in enumerate(candidates):
                select = Signal(name=f"act{c}_select{k}")
                m.d.sync += select.eq(select_next & ~pad_1[c])
                terms.append(value & select.replicate(s))
            terms.append(pad_word_r & pad_r[c].replicate(s))
            m.d.comb += word.eq(functools.reduce(operator.or_, terms))
            acts.append(word)
        m.d.comb += [array.act.eq(Cat(acts)), array.weight.eq(weight_rd.data),
                     array.first.eq(first_r & beat_r), array.last.eq(last_r & beat_r),
                     array.gain.eq(gain_r),
                     output.results.eq(array.results), output.group_done.eq(array.done)]
        if pool is not None:
            # from the column-0 read registers (not a block RAM's clock-to-output)
            m.d.comb += pool.rd_data.eq(held_words[0])
            with m.If(src_r == 1):
                m.d.comb += pool.rd_data.eq(held_words[1])

        # ---- Writes: the image loader (idle), the output stage, the pool engine ------------
        # The writers' requests (memory, address, data, lane enables; ``merge``: read the
        # word now, write it merged two cycles later, ``pending``) are chosen by the
        # sequencer's state and registered: the memories' write and merge-read pins then
        # follow flip-flops, not the state's multiplexers. Every write lands a cycle after
        # its writer issued it; the next reader of that memory starts cycles later.
        request_we, request_merge = Signal(), Signal()
        request_mem = Signal(2)
        request_data, request_en = Signal(s, reset_less=True), Signal(s, reset_less=True)
        issued_we, issued_merge = Signal(), Signal()
        issued_mem = Signal(2)
        issued_addr = Signal(aw)
        issued_data, issued_en = Signal(s), Signal(s)
        m.d.sync += [request_we.eq(issued_we), request_merge.eq(issued_merge),
                     request_mem.eq(issued_mem), request_addr.eq(issued_addr),
                     request_data.eq(issued_data), request_en.eq(issued_en)]
        with m.If(~self.busy):
            m.d.comb += [issued_we.eq(self.load_we), issued_merge.eq(not image), issued_mem.eq(loaded),
                         issued_addr.eq(self.load_addr), issued_data.eq(self.load_data),
                         issued_en.eq(self.load_en)]
        with m.Else():
            # The output stage's lane enables cover all lanes or none, except in rmw layers.
            m.d.comb += [issued_we.eq(output.act_we & (desc.rmw | output.act_en[0])),
                         issued_merge.eq(desc.rmw), issued_mem.eq(desc.dst),
                         issued_addr.eq(output.act_addr), issued_data.eq(output.act_data),
                         issued_en.eq(output.act_en)]
            if pool is not None:
                with m.If(desc.pool):
                    m.d.comb += [issued_we.eq(pool.wr_we), issued_merge.eq(0),
                                 issued_addr.eq(pool.wr_addr), issued_data.eq(pool.wr_data)]
        # Two register stages: the word read in the request cycle is merged from its read
        # register (``read{b}_col0``, below), not from the block RAM's output, so the merge
        # adds nothing after a block RAM's clock-to-output (and a deep memory's output mux).
        wait_we, pending = Signal(), Signal()
        wait_mem, pending_mem = Signal(2), Signal(2)
        wait_addr, pending_addr = Signal(aw), Signal(aw)
        wait_data, pending_data = Signal(s), Signal(s)
        wait_en, pending_en = Signal(s), Signal(s)
        m.d.sync += [wait_we.eq(request_we & request_merge), wait_mem.eq(request_mem),
                     wait_addr.eq(request_addr), wait_data.eq(request_data), wait_en.eq(request_en),
                     pending.eq(wait_we), pending_mem.eq(wait_mem), pending_addr.eq(wait_addr),
                     pending_data.eq(wait_data), pending_en.eq(wait_en)]
        old = Signal(s)  # the pending word as read (column 0's copy), from its read register
        with m.Switch(pending_mem):
            for b in mergeable:
                with m.Case(b):
                    m.d.comb += old.eq(held_words[b])
        for b in range(n_mems):
            hit = request_mem == b
            if b in mergeable:
                m.d.comb += merge_read[b].eq(request_we & request_merge & hit)
                direct = request_we & ~request_merge & hit
                m.d.comb += write_en[b].eq(direct | (pending & (pending_mem == b)))
            else:
                m.d.comb += write_en[b].eq(request_we & ~request_merge & hit)
        m.d.comb += [write_addr.eq(request_addr), write_data.eq(request_data)]
        with m.If(pending):
            m.d.comb += [write_addr.eq(pending_addr),
                         write_data.eq((old & ~pending_en) | (pending_data & pending_en))]
        return m

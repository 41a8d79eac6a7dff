"""Layer descriptors: the per-layer constants the sequencer loads into registers.

A :class:`DescriptorFormat` holds one ``lib.data.StructLayout`` wide enough for every
layer of one :class:`~binforge.hw.plan.NetworkPlan`, and builds each layer's constant.
"""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data
from binforge.compiler.ir import signed_width

from .plan import ComputePlan, NetworkPlan, PoolPlan

__all__ = ["DescriptorFormat"]


#: The loop limits whose previous value the descriptor also holds (``"<limit>1"``).
_LIMITS_BEFORE = ("opl", "khl", "kwl", "cwl", "cgl", "pgl", "planesl", "drain_wordsl")


def _ubits(value: int) -> int:
    return max(1, int(value).bit_length())


class DescriptorFormat:
    """The descriptor layout of a network plan and each layer's values.

    Parameters
    ----------
    plan : NetworkPlan
    """

    def __init__(self, plan: NetworkPlan):
        self.plan = plan
        self.values = [self._values(p) for p in plan.layers]
        widths: dict[str, int] = {}
        signed_fields: set[str] = set()
        for vals in self.values:
            for key, value in vals.items():
                items = value if isinstance(value, list) else [value]
                for v in items:
                    if v < 0:
                        signed_fields.add(key)
        for vals in self.values:
            for key, value in vals.items():
                items = value if isinstance(value, list) else [value]
                for v in items:
                    w = signed_width(min(v, 0), max(v, 0)) if key in signed_fields else _ubits(v)
                    widths[key] = max(widths.get(key, 1), w)
        fields = {}
        for key in self.values[0]:
            shape = signed(widths[key] + 1) if key in signed_fields else unsigned(widths[key])
            if isinstance(self.values[0][key], list):
                fields[key] = data.ArrayLayout(shape, len(self.values[0][key]))
            else:
                fields[key] = shape
        self.layout = data.StructLayout(fields)

    def const(self, index: int):
        """Layer ``index``'s descriptor as a constant of :attr:`layout`."""
        return self.layout.const(self.values[index])

    def _values(self, p: ComputePlan | PoolPlan) -> dict:
        plan, cols, s = self.plan, self.plan.cols, self.plan.simd
        last_layer = p.index == len(plan.layers) - 1
        src = 2 if p.index == 0 and plan.input_layout.im2col else p.index % 2
        common = {"pool": 0, "last_layer": int(last_layer), "src": src, "dst": (p.index + 1) % 2}
        if p.kind == "pool":
            cw = p.cw
            pool = {
                "pool": 1,
                "kl": p.kernel - 1, "cwl": cw - 1, "pool_planes_l": p.planes - 1,
                "pool_out_hl": p.out_h - 1, "pool_out_wl": p.out_w - 1,
                "pool_x_step": p.stride * cw, "pool_y_step": p.stride * p.in_w * cw,
                "pool_row_step": p.in_w * cw, "pool_plane_step": p.in_h * p.in_w * cw,
            }
            return {**self._blank(), **common, **pool}
        yi0, xi0, base = [], [], []
        for c in range(cols):
            yo, xo = divmod(c, p.out_w)
            y, x = yo * p.stride - p.padding, xo * p.stride - p.padding
            yi0.append(y)
            xi0.append(x)
            base.append((y * p.in_w + x) * p.cw_in)
        dy, dx = divmod(cols, p.out_w)
        s_, w_, cw = p.stride, p.in_w, p.cw_in
        if p.in_dense or not p.pad_bit:
            pad_full = pad_last = 0
        else:
            pad_full = (1 << s) - 1
            pad_last = (1 << (p.in_c - (p.cw_in - 1) * s)) - 1
        compute = {
            "affine": int(p.affine), "rmw": int(p.rmw),
            "opl": p.ops - 1, "op_base": self._op_base(p.index),
            "khl": p.kh - 1, "kwl": p.kw - 1, "cwl": cw - 1,
            "cgl": p.channel_groups - 1, "pgl": p.position_groups - 1,
            "weight_base": p.weight_base, "weight_group_step": p.weight_group_step,
            "tap_row_step": w_ * cw,
            "in_h": p.in_h, "in_w": p.in_w,
            "yi0": yi0, "xi0": xi0, "base": base,
            # column x advance: wrap to the next row when xi0 >= adv_wrap_at (i.e. xi0 + adv_dx
            # reaches out_w * stride - padding), then add adv_dx_wrap instead of adv_dx
            "adv_dx": dx * s_, "adv_wrap_at": p.out_w * s_ - p.padding - dx * s_,
            "adv_dx_wrap": dx * s_ - p.out_w * s_,
            "adv_dy": dy * s_, "adv_dy1": (dy + 1) * s_,
            "adv_base": (dy * s_ * w_ + dx * s_) * cw,
            "adv_base_wrap": ((dy + 1) * s_ * w_ + (dx - p.out_w) * s_) * cw,
            "pad_full": pad_full, "pad_last": pad_last,
            "guard_full": p.guard_full, "guard_last": p.guard_last,
            "last_colsl": p.last_cols - 1,
            "planesl": max(p.out_planes, 1) - 1, "drain_wordsl": max(p.drain_words, 1) - 1,
            "out_dense": int(p.out_dense), "out_pos_stride": p.out_pos_stride,
            "out_plane_bits": p.out_plane_words * s, "out_pg_bits": cols * p.out_pos_stride,
            "out_c": p.out_c, "const_base": p.const_base,
            "const_group_step": plan.rows if p.affine else max(p.out_planes, 1),
            "hw_out": p.out_h * p.out_w,
        }
        # Each loop limit's value before it ("...l1": last - 1, 0 where the loop has one
        # value and its counter never steps): the "next is last" flags then compare the
        # counter with a constant field, no increment before the compare.
        compute.update({f"{key}1": max(compute[key] - 1, 0) for key in _LIMITS_BEFORE})
        return {**self._blank(), **common, **compute}

    def _op_base(self, index: int) -> int:
        base = 0
        for p in self.plan.layers[:index]:
            if p.kind == "compute":
                base += p.ops
        return base

    def _blank(self) -> dict:
        cols = self.plan.cols
        keys = ["affine", "rmw", "opl", "op_base", "khl", "kwl", "cwl", "cgl", "pgl", "weight_base",
                "weight_group_step", "tap_row_step", "in_h", "in_w", "adv_dx", "adv_wrap_at",
                "adv_dx_wrap", "adv_dy", "adv_dy1", "adv_base", "adv_base_wrap", "pad_full", "pad_last",
                "guard_full", "guard_last", "last_colsl", "planesl", "drain_wordsl", "out_dense",
                "out_pos_stride", "out_plane_bits", "out_pg_bits", "out_c", "const_base",
                "const_group_step", "hw_out", *(f"{key}1" for key in _LIMITS_BEFORE),
                "kl", "pool_planes_l", "pool_out_hl", "pool_out_wl", "pool_x_step", "pool_y_step",
                "pool_row_step", "pool_plane_step"]
        blank = {k: 0 for k in keys}
        blank.update(yi0=[0] * cols, xi0=[0] * cols, base=[0] * cols)
        return blank

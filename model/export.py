"""What a trained binary layer hands to the compiler: its bases, thresholds and ops.

Every binary layer, PaBT's MBN layers and the companion methods' layers alike,
implements ``export_binary() -> BinaryExport``. The compiler reads nothing else
of a binary layer, so a new training method reaches the hardware by
implementing this one method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BinaryExport", "UnsupportedForHardware"]


class UnsupportedForHardware(ValueError):
    """A layer whose inference form does not map onto the hardware rule (the message says why)."""


@dataclass(frozen=True)
class BinaryExport:
    """The inference form of one binary layer.

    ``y[c] = sum over ops (m, n, scale) of scale[c] * BinaryConv(W_m, A_n)[c]``,
    computed before the batch norm that follows the layer.

    Attributes
    ----------
    weight_bases:
        ``(P, Co, Ci, k, k)`` for convolutions or ``(P, Co, K)`` for linear layers,
        float tensors holding exactly +1 or -1.
    act_thresholds:
        ``(N,)``: activation base ``n`` is +1 where the layer's input ``x >= act_thresholds[n]``,
        else -1.
    ops:
        The surviving binary convolutions: ``(weight_plane, act_plane, scale)`` with
        ``scale`` a ``(Co,)`` float tensor.
    kernel, stride, padding:
        Convolution geometry (``kernel=1, stride=1, padding=0`` for linear layers).
    pad_value:
        The binary value (+1.0 or -1.0) padding positions hold in every activation base.
    """

    weight_bases: torch.Tensor
    act_thresholds: torch.Tensor
    ops: list[tuple[int, int, torch.Tensor]]
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    pad_value: float = -1.0

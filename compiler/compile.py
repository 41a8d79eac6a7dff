"""The compiler: a trained model (a chain in ``model.body``) -> the network IR.

Every number the hardware uses is decided here, by the rule of
``ARCHITECTURE.md`` ("Numbers in hardware") and the bit convention of
:mod:`binforge.compiler.ir`:

- the float first layer (on pixels ``x' = (2x - 255) / 255``) gets odd integer
  weights ``q = sum_j 2**j t_j`` (B weight planes) and ops ``(j, i)`` with gain
  ``2**(i + j)`` over the 8 pixel planes, so ``acc = sum q (2x - 255)`` exactly
  and the float layer is ``acc * delta[c] / 255``;
- a binary layer (anything with ``export_binary()``) keeps its +-1 bases as
  bits; one op's scale folds into the next threshold, several ops' scales become
  fixed-point integer gains;
- batch norm, scale and the next layer's activation threshold fold into one
  integer threshold per channel and activation plane (``acc >= T``, with a flip
  for a negative scale); max-pooling after batch norm becomes an OR of bits;
- the classifier (``BinaryInputLinear``) gets odd integer weights with one scale
  per tensor, gains ``2**(j + F)`` and a fixed-point bias: its integer
  accumulators are the logits in units of :attr:`AffineStage.scale`.

Accumulator widths come from :func:`~binforge.compiler.ir.acc_bound`, so no
accumulator can overflow. Structures the hardware rule cannot express (residual
adds, per-channel multi-op scales, unknown modules) are refused with
:class:`UnsupportedModel`, naming the module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from binforge.compiler.ir import (
    INPUT_PLANES,
    AffineStage,
    ConvLayer,
    LinearLayer,
    MaxPoolLayer,
    Network,
    Op,
    Shape,
    ThresholdStage,
    acc_bound,
    signed_width,
    signs_to_bits,
    validate,
)
from torch import nn

from binforge.errors import BinforgeError

__all__ = [
    "DEFAULT_FIRST_WEIGHT_BITS",
    "DEFAULT_LAST_WEIGHT_BITS",
    "DEFAULT_GAIN_FRAC_BITS",
    "DEFAULT_BIAS_FRAC_BITS",
    "MAX_WEIGHT_BITS",
    "UnsupportedModel",
    "CompileReport",
    "compile_model",
    "quantise_odd",
    "odd_to_planes",
    "fold_threshold",
    "fixed_point_gains",
]

#: Bits of the first layer's odd integer weights.
DEFAULT_FIRST_WEIGHT_BITS = 10
#: Bits of the classifier's odd integer weights.
DEFAULT_LAST_WEIGHT_BITS = 8
#: The largest multi-op gain is in ``(2**(F-1), 2**F]``: relative gain error <= 2**-F.
DEFAULT_GAIN_FRAC_BITS = 8
#: Fraction bits of the classifier's bias, in units of its weight step.
DEFAULT_BIAS_FRAC_BITS = 4
#: The most bits odd integer weights may have: 24 holds a float32 weight's whole significand,
#: enough for the golden model to compute the float first layer as torch does (docs/verification.md).
MAX_WEIGHT_BITS = 24

#: Modules that are the identity in eval mode and carry no numbers.
_PASS_THROUGH = (nn.Identity, nn.Dropout)


class UnsupportedModel(BinforgeError, ValueError):
    """A model (or one of its modules) the hardware rule cannot express; the message says which."""


@dataclass
class CompileReport:
    """What the compiler decided, layer by layer, and how far the integers are from the floats.

    Attributes
    ----------
    layers:
        One json-ready dict per IR layer: name, kind, source module, shapes, planes,
        ops and gains, accumulator range and width, quantisation errors, threshold facts.
    settings:
        The fixed-point choices (weight bits, gain and bias fraction bits).
    dequantised:
        For the float first layer and the classifier: parameter name (``body.0.conv.weight``)
        -> the float value the integers represent exactly (``delta * q``; the classifier's
        rounded bias too), for building a torch model that computes what the hardware computes.
    input_bases:
        For every IR compute layer after the first: IR layer index -> (source module
        name, the torch activation base index of each of its input planes, the
        thresholds). ``None`` as the base list means the classifier's single threshold.
    """

    layers: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    dequantised: dict[str, torch.Tensor] = field(default_factory=dict)
    input_bases: dict[int, tuple[str, list[int] | None, list[float]]] = field(default_factory=dict)
    rounded_scales: dict[str, list[tuple[int, int, np.ndarray]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The json-ready part: settings and per-layer figures."""
        return {"settings": dict(self.settings), "layers": [dict(d) for d in self.layers],
                "summary": self.summary()}

    def summary(self) -> dict[str, Any]:
        """The figures one line of output needs: layers, ops, widest accumulator, worst errors."""
        compute = [d for d in self.layers if d["kind"] in ("conv", "linear")]
        errors = [d["weight_rel_error"] for d in compute if d.get("weight_rel_error") is not None]
        gain_errors = [d["gain_rel_error"] for d in compute if d.get("gain_rel_error") is not None]
        return {
            "layers": len(self.layers),
            "compute_layers": len(compute),
            "ops": sum(d["ops"] for d in compute),
            "max_acc_width": max((d["acc_width"] for d in compute), default=0),
            "max_weight_rel_error": max(errors, default=0.0),
            "max_gain_rel_error": max(gain_errors, default=0.0),
        }


# --------------------------------------------------------------------------------------
# Numbers: odd integer weights, fixed-point gains, thresholds
# --------------------------------------------------------------------------------------


def quantise_odd(weight: np.ndarray, bits: int, *, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Float weights ``(Co, ...)`` -> odd integers ``q`` in ``[-(2**bits - 1), 2**bits - 1]`` and steps.

    ``weight ~= delta[c] * q``. Each weight goes to the nearest odd multiple of the
    step (``2 floor(w / 2 delta) + 1``, clipped); the step of each output channel
    (or one for the whole tensor) is the one of 71 candidates between 0.3 and 1.0
    times ``max|w| / (2**bits - 1)`` with the least squared error. A channel whose
    weights are all zero gets step 0 (its output is the constant 0).

    Returns ``(q int64 same shape, delta float64 (Co,))``.
    """
    if not 1 <= bits <= MAX_WEIGHT_BITS:
        raise ValueError(f"weight bits must be in 1..{MAX_WEIGHT_BITS}, not {bits!r}")
    w = np.asarray(weight, dtype=np.float64)
    co = w.shape[0]
    rows = w.reshape(co, -1) if per_channel else w.reshape(1, -1)
    top = (1 << bits) - 1
    peak = np.abs(rows).max(axis=1)  # (R,)
    factors = np.linspace(0.3, 1.0, 71)
    steps = factors[:, None] * np.where(peak > 0, peak, 1.0)[None, :] / top  # (F, R)
    q = np.clip(2 * np.floor(rows[None] / (2 * steps[:, :, None])) + 1, -top, top)  # (F, R, K)
    err = ((q * steps[:, :, None] - rows[None]) ** 2).sum(axis=2)  # (F, R)
    best = err.argmin(axis=0)
    delta = steps[best, np.arange(rows.shape[0])]
    q_best = q[best, np.arange(rows.shape[0])]
    delta = np.where(peak > 0, delta, 0.0)
    q_best = np.where((peak > 0)[:, None], q_best, 1.0)
    if not per_channel:
        delta = np.full(co, delta[0])
    return q_best.reshape(w.shape).astype(np.int64), delta


def odd_to_planes(q: np.ndarray, bits: int) -> np.ndarray:
    """Odd integers ``q = sum_j 2**j t_j`` (``t_j = +-1``) -> weight planes ``(bits, *q.shape)``.

    Plane ``j`` holds ``t_j`` as a bit (1 = +1): bit ``j`` of ``(q + 2**bits - 1) / 2``.
    """
    q = np.asarray(q, dtype=np.int64)
    top = (1 << bits) - 1
    if np.any(q % 2 == 0) or np.any(np.abs(q) > top):
        raise ValueError(f"weights must be odd integers within +-{top}")
    u = (q + top) // 2
    return np.stack([((u >> j) & 1).astype(np.uint8) for j in range(bits)])


def fixed_point_gains(ratios: np.ndarray, frac_bits: int) -> tuple[np.ndarray, float, float]:
    """Per-op scalars ``r`` -> integer gains ``g`` and a unit ``u`` with ``g * u ~= r``.

    ``g = round(r * 2**F)`` with ``F = frac_bits - ceil(log2(max|r|))``, so the
    largest gain lies in ``(2**(frac_bits - 1), 2**frac_bits]``, then every gain is
    divided by the largest power of two they share (exact; smaller adders).
    Dyadic scalars with few significant bits come out exact.

    Returns ``(gains int64, unit, relative error max|g u - r| / max|r|)``.
    """
    r = np.asarray(ratios, dtype=np.float64)
    peak = float(np.abs(r).max())
    if not math.isfinite(peak) or peak == 0:
        raise ValueError("fixed-point gains need at least one non-zero finite scale")
    exponent = frac_bits - math.ceil(math.log2(peak))
    gains = np.round(np.ldexp(r, exponent)).astype(np.int64)
    nonzero = gains[gains != 0]
    shift = 0
    while nonzero.size and np.all(nonzero % (1 << (shift + 1)) == 0):
        shift += 1
    gains = gains >> shift if shift else gains
    unit = math.ldexp(1.0, shift - exponent)
    error = float(np.abs(gains * unit - r).max() / peak)
    return gains, unit, error


def fold_threshold(a: np.ndarray, b: np.ndarray, t: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer thresholds for ``bit[n, c] = (a[c] * acc + b[c] >= t[n])`` as ``(acc >= T) XOR flip``.

    - ``a > 0``: ``T = ceil((t - b) / a)``, flip 0;
    - ``a < 0``: ``a acc + b >= t`` iff ``acc <= (t - b) / a`` iff NOT ``acc >= floor((t - b) / a) + 1``: flip 1;
    - ``a == 0``: the bit is the constant ``b >= t``: ``T = lo`` (always) or ``hi + 1`` (never), flip 0.

    ``T`` is clamped into ``[lo, hi + 1]`` (the accumulator cannot leave ``[lo, hi]``,
    so the comparison is unchanged). Returns ``(T int64 (N, Co), flip uint8 (Co,))``.
    """
    a = np.asarray(a, dtype=np.float64)[None, :]
    b = np.asarray(b, dtype=np.float64)[None, :]
    t = np.asarray(t, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (t - b) / a
    up = np.ceil(v)
    down = np.floor(v) + 1
    constant = np.where(b >= t, float(lo), float(hi + 1))
    chosen = np.where(a > 0, up, np.where(a < 0, down, constant))
    chosen = np.clip(np.nan_to_num(chosen, nan=float(lo), posinf=float(hi + 1), neginf=float(lo)), lo, hi + 1)
    flip = (a[0] < 0).astype(np.uint8)
    return chosen.astype(np.int64), flip


# --------------------------------------------------------------------------------------
# Reading the chain
# --------------------------------------------------------------------------------------


@dataclass
class _Group:
    """A compute module and the modules up to the next one."""

    name: str
    module: nn.Module
    flatten_before: bool = False
    bn: nn.Module | None = None
    pools: list[tuple[str, nn.MaxPool2d]] = field(default_factory=list)
    flatten_after: bool = False


def _is_binary(module: nn.Module) -> bool:
    return callable(getattr(module, "export_binary", None))


def _classifier_types() -> tuple[type, ...]:
    from binforge.model.layers import BinaryInputLinear

    return (BinaryInputLinear,)


def _float_input_types() -> tuple[type, ...]:
    from binforge.model.layers import FloatInputConv

    return (FloatInputConv, nn.Conv2d, nn.Linear)


def _is_compute(module: nn.Module) -> bool:
    return _is_binary(module) or isinstance(module, _classifier_types() + _float_input_types())


def _refuse_unknown(name: str, module: nn.Module) -> UnsupportedModel:
    kind = type(module).__name__
    inner = [m for n, m in module.named_modules() if n]
    if hasattr(module, "shortcut") or any(_is_binary(m) for m in inner):
        return UnsupportedModel(
            f"{name} is a {kind}: a block with a residual add (shortcut) around its layers; the "
            "hardware runs plain chains only: train a chain architecture (mlp or vgg-small) to compile it")
    own_weights = any(p.dim() >= 2 for p in module.parameters(recurse=False))
    if own_weights or any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in inner):
        return UnsupportedModel(
            f"{name} is a {kind}, a float layer without export_binary(); the hardware runs binary "
            "layers only (besides the first layer and the classifier): compile a binary run")
    return UnsupportedModel(
        f"{name} is a {kind}, which the compiler does not know; a compilable body holds only "
        "FloatInputConv, binary layers with export_binary(), BatchNorm, MaxPool2d, Flatten and "
        "BinaryInputLinear")


def _groups(model: nn.Module) -> list[_Group]:
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Sequential):
        raise UnsupportedModel(
            f"the model ({type(model).__name__}) has no 'body' chain (nn.Sequential); the compiler "
            "takes models built by binforge's architectures")
    groups: list[_Group] = []
    flatten_pending = False
    for index, module in enumerate(body):
        name = f"body.{index}"
        if isinstance(module, _PASS_THROUGH):
            continue
        if _is_compute(module):
            groups.append(_Group(name, module, flatten_before=flatten_pending))
            flatten_pending = False
            continue
        if isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                raise UnsupportedModel(f"{name} flattens dims {module.start_dim}..{module.end_dim}; "
                                       "only Flatten(1, -1) is supported")
            if groups:
                groups[-1].flatten_after = True
            flatten_pending = True
            continue
        if not groups:
            raise UnsupportedModel(f"{name} ({type(module).__name__}) comes before the first layer; the "
                                   "body must start with the float input layer (FloatInputConv)")
        group = groups[-1]
        if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if group.bn is not None or group.pools or group.flatten_after:
                raise UnsupportedModel(f"{name}: a BatchNorm must directly follow its layer "
                                       f"({group.name}); found it after pooling, flattening or another BatchNorm")
            group.bn = module
        elif isinstance(module, nn.MaxPool2d):
            if group.flatten_after:
                raise UnsupportedModel(f"{name}: max-pooling after Flatten is not supported")
            group.pools.append((name, module))
        else:
            raise _refuse_unknown(name, module)
    if not groups:
        raise UnsupportedModel("the model's body has no layers to compile")
    return groups


# --------------------------------------------------------------------------------------
# One compute layer: ops, weights, and its float output as an affine map of acc
# --------------------------------------------------------------------------------------


@dataclass
class _Core:
    """A compute layer before its output stage: ``float output[c] ~= a0[c] * acc[c] + b0[c]``."""

    kind: str  # "conv" | "linear"
    fields: dict[str, Any]
    a0: np.ndarray
    b0: np.ndarray
    input_thresholds: np.ndarray  # thresholds of the planes this layer reads (the previous layer emits)
    input_bases: list[int] | None
    info: dict[str, Any]
    affine_scale: float | None = None  # classifier only


def _pair(value: Any, what: str, name: str) -> int:
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise UnsupportedModel(f"{name}: non-square {what} {value} is not supported")
        value = value[0]
    return int(value)


def _float_input_core(name: str, module: nn.Module, group: _Group, shape: Shape, bits: int,
                      report: CompileReport) -> _Core:
    from binforge.model.layers import FloatInputConv

    if isinstance(module, FloatInputConv):
        conv, padding = module.conv, module.padding
    elif isinstance(module, nn.Conv2d):
        conv, padding = module, 0
    else:
        conv, padding = None, 0
    if conv is not None:
        if group.flatten_before:
            raise UnsupportedModel(f"{name}: a convolution cannot follow Flatten")
        if _pair(conv.padding, "padding", name) != 0 or conv.padding_mode != "zeros":
            raise UnsupportedModel(f"{name}: the first convolution must pad explicitly with -1 "
                                   "(FloatInputConv); zero padding is not a pixel value")
        if _pair(conv.dilation, "dilation", name) != 1 or conv.groups != 1:
            raise UnsupportedModel(f"{name}: dilated or grouped first convolutions are not supported")
        weight = conv.weight.detach().double().cpu().numpy()
        if weight.shape[1] != shape.channels:
            raise UnsupportedModel(f"{name} takes {weight.shape[1]} input channels, the images have {shape.channels}")
        kernel = _pair(conv.kernel_size, "kernel", name)
        stride = _pair(conv.stride, "stride", name)
        bias = conv.bias
        kind = "conv"
    else:
        weight = module.weight.detach().double().cpu().numpy()
        if weight.shape[1] != shape.size:
            raise UnsupportedModel(f"{name} takes {weight.shape[1]} inputs, the images have {shape.size} pixels")
        bias = module.bias
        kind = "linear"
    q, delta = quantise_odd(weight, bits, per_channel=True)
    co = weight.shape[0]
    planes = odd_to_planes(q, bits)
    deq = q * delta.reshape((co,) + (1,) * (weight.ndim - 1))
    report.dequantised[f"{name}.conv.weight" if isinstance(module, FloatInputConv) else f"{name}.weight"] = (
        torch.from_numpy(deq).to(torch.float32))
    b0 = bias.detach().double().cpu().numpy() if bias is not None else np.zeros(co)
    ops = tuple(Op(j, i, 1 << (i + j)) for i in range(INPUT_PLANES) for j in range(bits))
    fields: dict[str, Any] = dict(in_shape=shape, in_planes=INPUT_PLANES, weights=planes, ops=ops,
                                  bias=np.zeros(co, dtype=np.int64))
    if kind == "conv":
        fields.update(out_channels=co, kernel=kernel, stride=stride, padding=padding, pad_bit=0)
    else:
        fields.update(out_features=co)
    info = {"weight_bits": bits, "weight_scale": "per output channel",
            "weight_rel_error": _rel_error(deq, weight), "gains": sorted({op.gain for op in ops})}
    return _Core(kind, fields, a0=delta / 255.0, b0=b0, input_thresholds=np.zeros(0), input_bases=None,
                 info=info)


def _rel_error(approx: np.ndarray, exact: np.ndarray) -> float:
    norm = float(np.linalg.norm(exact))
    return float(np.linalg.norm(approx - exact) / norm) if norm else 0.0


def _split_scales(name: str, scales: np.ndarray, frac_bits: int) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Op scales ``S (ops, Co)`` -> integer gains ``g (ops,)`` and per-channel ``s (Co,)``, ``S ~= g s``."""
    if scales.shape[0] == 1:
        return np.ones(1, dtype=np.int64), scales[0].copy(), None
    if np.all(scales == scales[:, :1]):
        ratios, channel = scales[:, 0], np.ones(scales.shape[1])
    else:
        # rank one: S[op, c] = r[op] * s[c], with s the row of largest magnitude
        ref = int(np.abs(scales).max(axis=1).argmax())
        channel = scales[ref].copy()
        safe = np.where(channel != 0, channel, 1.0)
        per_channel = scales / safe[None, :]
        ratios = per_channel[:, int(np.abs(channel).argmax())]
        live = channel != 0
        zero_ok = np.all(scales[:, ~live] == 0)
        if not zero_ok or not np.allclose(per_channel[:, live], ratios[:, None], rtol=1e-6, atol=0):
            raise UnsupportedModel(
                f"{name} has {scales.shape[0]} binary ops whose scales vary per output channel "
                "independently; the hardware shares one integer gain per op across channels: "
                "use per-op scalar scales (gamma_mn) or prune the layer to one op")
    gains, unit, error = fixed_point_gains(ratios, frac_bits)
    return gains, channel * unit, error


def _binary_core(name: str, module: nn.Module, group: _Group, shape: Shape, frac_bits: int,
                 report: CompileReport) -> _Core:
    from binforge.model.export import UnsupportedForHardware

    try:
        export = module.export_binary()
    except UnsupportedForHardware as exc:
        raise UnsupportedModel(f"{name} ({type(module).__name__}) cannot run on the hardware: {exc}") from None
    bases = export.weight_bases.detach().double().cpu().numpy()
    if not np.all(np.abs(bases) == 1):
        raise UnsupportedModel(f"{name}: export_binary() gave weight bases that are not exactly +-1")
    thresholds = export.act_thresholds.detach().double().cpu().numpy().reshape(-1)
    if not export.ops:
        raise UnsupportedModel(f"{name}: export_binary() lists no ops")
    used_w = sorted({int(m) for m, _, _ in export.ops})
    used_a = sorted({int(n) for _, n, _ in export.ops})
    for m, n, _ in export.ops:
        if not (0 <= m < bases.shape[0] and 0 <= n < thresholds.size):
            raise UnsupportedModel(f"{name}: op ({m}, {n}) refers to a base that does not exist")
    co = bases.shape[1]
    scales = np.stack([s.detach().double().cpu().numpy().reshape(-1) * np.ones(co) for _, _, s in export.ops])
    if not np.all(np.isfinite(scales)):
        raise UnsupportedModel(f"{name}: an op scale is not finite")
    gains, channel_scale, gain_error = _split_scales(name, scales, frac_bits)
    report.rounded_scales[name] = [(int(m), int(n), g * channel_scale)
                                   for (m, n, _), g in zip(export.ops, gains, strict=True)]
    remap_w = {m: i for i, m in enumerate(used_w)}
    remap_a = {n: i for i, n in enumerate(used_a)}
    ops, dropped = [], 0
    for (m, n, _), g in zip(export.ops, gains, strict=True):
        if g == 0:
            dropped += 1
            continue
        ops.append(Op(remap_w[int(m)], remap_a[int(n)], int(g)))
    weights = signs_to_bits(bases[used_w])
    fields: dict[str, Any] = dict(in_shape=shape, in_planes=len(used_a), weights=weights, ops=tuple(ops),
                                  bias=np.zeros(co, dtype=np.int64))
    if bases.ndim == 5:
        if group.flatten_before:
            raise UnsupportedModel(f"{name}: a convolution cannot follow Flatten")
        if bases.shape[2] != shape.channels or bases.shape[3] != export.kernel:
            raise UnsupportedModel(f"{name}: weight bases {tuple(bases.shape)} do not fit the input "
                                   f"{shape.as_tuple()} with kernel {export.kernel}")
        if export.pad_value not in (1.0, -1.0):
            raise UnsupportedModel(f"{name}: pad value {export.pad_value} is not +1 or -1")
        kind = "conv"
        fields.update(out_channels=co, kernel=int(export.kernel), stride=int(export.stride),
                      padding=int(export.padding), pad_bit=int(export.pad_value > 0))
    elif bases.ndim == 3:
        if bases.shape[2] != shape.size:
            raise UnsupportedModel(f"{name}: weight bases {tuple(bases.shape)} take {bases.shape[2]} inputs, "
                                   f"the previous layer gives {shape.size}")
        kind = "linear"
        fields.update(out_features=co)
    else:
        raise UnsupportedModel(f"{name}: weight bases of shape {tuple(bases.shape)} are neither conv nor linear")
    info = {"weight_bits": len(used_w), "act_bits": len(used_a), "gain_rel_error": gain_error,
            "ops_dropped_by_rounding": dropped, "weight_rel_error": None,
            "gains": [int(g) for g in gains if g != 0]}
    return _Core(kind, fields, a0=channel_scale, b0=np.zeros(co), input_thresholds=thresholds[used_a],
                 input_bases=used_a, info=info)


def _classifier_core(name: str, module: nn.Module, shape: Shape, bits: int, bias_frac: int,
                     report: CompileReport) -> _Core:
    weight = module.weight.detach().double().cpu().numpy()
    bias = module.bias.detach().double().cpu().numpy() if module.bias is not None else np.zeros(weight.shape[0])
    if weight.shape[1] != shape.size:
        raise UnsupportedModel(f"{name} takes {weight.shape[1]} inputs, the previous layer gives {shape.size}")
    q, delta = quantise_odd(weight, bits, per_channel=False)
    step = float(delta[0])
    if step == 0:
        raise UnsupportedModel(f"{name}: the classifier's weights are all zero")
    report.dequantised[f"{name}.weight"] = torch.from_numpy(q * step).to(torch.float32)
    unit = math.ldexp(step, -bias_frac)
    int_bias = np.round(bias / unit).astype(np.int64)
    if module.bias is not None:
        report.dequantised[f"{name}.bias"] = torch.from_numpy(int_bias * unit).to(torch.float32)
    ops = tuple(Op(j, 0, 1 << (j + bias_frac)) for j in range(bits))
    fields = dict(in_shape=shape, in_planes=1, weights=odd_to_planes(q, bits), ops=ops, bias=int_bias,
                  out_features=weight.shape[0])
    threshold = float(module.threshold.detach().double().cpu().reshape(-1)[0])
    info = {"weight_bits": bits, "weight_scale": "one per tensor", "bias_frac_bits": bias_frac,
            "weight_rel_error": _rel_error(q * step, weight),
            "bias_abs_error": float(np.abs(int_bias * unit - bias).max()) if bias.size else 0.0,
            "gains": [op.gain for op in ops]}
    return _Core("linear", fields, a0=np.full(weight.shape[0], unit), b0=np.zeros(weight.shape[0]),
                 input_thresholds=np.array([threshold]), input_bases=None, info=info, affine_scale=unit)


def _bn_affine(name: str, bn: nn.Module | None, a0: np.ndarray, b0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if bn is None:
        return a0, b0
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedModel(f"{name}: BatchNorm without running statistics normalises by the batch; "
                               "the hardware needs fixed statistics (track_running_stats=True)")
    if bn.num_features != a0.shape[0]:
        raise UnsupportedModel(f"{name}: BatchNorm has {bn.num_features} features, its layer gives {a0.shape[0]}")
    mean = bn.running_mean.detach().double().cpu().numpy()
    inv = 1.0 / np.sqrt(bn.running_var.detach().double().cpu().numpy() + bn.eps)
    gamma = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(mean)
    beta = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros_like(mean)
    return a0 * gamma * inv, (b0 - mean) * gamma * inv + beta


# --------------------------------------------------------------------------------------
# The whole chain
# --------------------------------------------------------------------------------------


def _output_errors(model: nn.Module, groups: list[_Group], report: CompileReport, images: np.ndarray) -> None:
    """Relative L2 output error of the quantised first layer and classifier on ``images``."""
    from binforge.model.data import batch_to_input

    ends = {"first": groups[0], "classifier": groups[-1]}
    inputs: dict[str, list[torch.Tensor]] = {key: [] for key in ends}
    outputs: dict[str, list[torch.Tensor]] = {key: [] for key in ends}
    def keeper(key: str):
        def hook(_module, args, out) -> None:
            inputs[key].append(args[0].detach())
            outputs[key].append(out.detach())
        return hook

    handles = [group.module.register_forward_hook(keeper(key)) for key, group in ends.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for first in range(0, len(images), 256):
                model(batch_to_input(np.ascontiguousarray(images[first:first + 256])))
            for handle in handles:
                handle.remove()
            for key, group in ends.items():
                module = group.module
                saved = {n: p.detach().clone() for n, p in module.named_parameters()}
                for n, p in module.named_parameters():
                    value = report.dequantised.get(f"{group.name}.{n}")
                    if value is not None:
                        p.copy_(value)
                quantised = torch.cat([module(x) for x in inputs[key]]).double()
                for n, p in module.named_parameters():
                    p.copy_(saved[n])
                exact = torch.cat(outputs[key]).double()
                error = float(torch.linalg.vector_norm(quantised - exact) / torch.linalg.vector_norm(exact))
                entry = next(d for d in report.layers if d["name"] == group.name)
                entry["output_rel_error"] = error
                entry["output_error_images"] = int(len(images))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _out_shape(kind: str, fields: dict[str, Any]) -> Shape:
    shape = fields["in_shape"]
    if kind == "linear":
        return Shape(fields["out_features"], 1, 1)
    k, s, p = fields["kernel"], fields["stride"], fields["padding"]
    return Shape(fields["out_channels"], (shape.height + 2 * p - k) // s + 1, (shape.width + 2 * p - k) // s + 1)


def _pool_layer(name: str, pool: nn.MaxPool2d, shape: Shape, planes: int) -> MaxPoolLayer:
    kernel = _pair(pool.kernel_size, "pool kernel", name)
    stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size, "pool stride", name)
    if _pair(pool.padding, "pool padding", name) != 0 or _pair(pool.dilation, "pool dilation", name) != 1:
        raise UnsupportedModel(f"{name}: max-pooling with padding or dilation is not supported")
    if pool.ceil_mode and ((shape.height - kernel) % stride or (shape.width - kernel) % stride):
        raise UnsupportedModel(f"{name}: max-pooling with ceil_mode on a size it does not divide is not supported")
    return MaxPoolLayer(name=name, in_shape=shape, in_planes=planes, kernel=kernel, stride=stride)


def compile_model(model: nn.Module, in_shape: tuple[int, int, int] | Shape, num_classes: int, *,
                  first_weight_bits: int = DEFAULT_FIRST_WEIGHT_BITS,
                  last_weight_bits: int = DEFAULT_LAST_WEIGHT_BITS,
                  gain_frac_bits: int = DEFAULT_GAIN_FRAC_BITS,
                  bias_frac_bits: int = DEFAULT_BIAS_FRAC_BITS,
                  name: str | None = None, classes: tuple[str, ...] = (),
                  meta: dict[str, Any] | None = None,
                  images: np.ndarray | None = None) -> tuple[Network, CompileReport]:
    """Compile a trained chain model into a validated network IR.

    Parameters
    ----------
    model:
        A model whose ``body`` (``nn.Sequential``) is a chain: float input layer
        (``FloatInputConv``, or ``Flatten`` + ``nn.Linear``), then binary layers
        (``export_binary()``) each followed by optional BatchNorm, max-pooling and
        Flatten, ending with ``BinaryInputLinear``. Read in eval mode, not changed.
    in_shape:
        ``(C, H, W)`` of the uint8 images.
    num_classes:
        Classes; the classifier must give this many outputs.
    first_weight_bits, last_weight_bits:
        Bits of the odd integer weights of the first layer and of the classifier.
    gain_frac_bits:
        Multi-op layers: the largest integer gain lies in ``(2**(F-1), 2**F]``.
    bias_frac_bits:
        Fraction bits of the classifier's bias (in units of its weight step).
    name, classes, meta:
        Recorded in the network.
    images:
        Optional uint8 images ``(N, C, H, W)``: the report then also gives the relative
        L2 error of the first layer's and the classifier's outputs on them
        (``output_rel_error``; each layer fed the float model's own inputs).

    Returns
    -------
    (Network, CompileReport)
        The validated IR and what the compiler decided.

    Raises
    ------
    UnsupportedModel
        For any module or structure the hardware rule cannot express.
    """
    shape = in_shape if isinstance(in_shape, Shape) else Shape(*(int(v) for v in in_shape))
    report = CompileReport(settings={
        "first_weight_bits": first_weight_bits, "last_weight_bits": last_weight_bits,
        "gain_frac_bits": gain_frac_bits, "bias_frac_bits": bias_frac_bits,
        "threshold_rule": "bit = (acc >= T) XOR flip; T = ceil((t - b) / a) for a > 0, "
                          "floor((t - b) / a) + 1 with flip for a < 0",
    })
    groups = _groups(model)
    classifier_types = _classifier_types()
    if not isinstance(groups[-1].module, classifier_types):
        raise UnsupportedModel(f"the body ends with {groups[-1].name} ({type(groups[-1].module).__name__}); "
                               "the compiler needs a BinaryInputLinear classifier last")
    last = groups[-1]
    if last.bn is not None or last.pools or last.flatten_after:
        raise UnsupportedModel(f"{last.name}: nothing may follow the classifier")

    was_training = model.training
    model.eval()
    try:
        cores: list[_Core] = []
        shapes: list[Shape] = []
        for index, group in enumerate(groups):
            module = group.module
            is_float = isinstance(module, _float_input_types()) and not _is_binary(module)
            if index == 0 and not is_float:
                raise UnsupportedModel(f"{group.name} ({type(module).__name__}) is the first layer but does not "
                                       "take pixels; the body must start with FloatInputConv")
            if index > 0 and is_float:
                raise UnsupportedModel(f"{group.name} ({type(module).__name__}) is a float layer inside the "
                                       "network; only the first layer and the classifier may be float")
            if index == 0:
                core = _float_input_core(group.name, module, group, shape, first_weight_bits, report)
            elif isinstance(module, classifier_types):
                core = _classifier_core(group.name, module, shape, last_weight_bits, bias_frac_bits, report)
            else:
                core = _binary_core(group.name, module, group, shape, gain_frac_bits, report)
            cores.append(core)
            shapes.append(shape)
            shape = _out_shape(core.kind, core.fields)
            for pname, pool in group.pools:
                shape = _pool_layer(pname, pool, shape, 1).out_shape
        if cores[-1].fields["out_features"] != num_classes:
            raise UnsupportedModel(f"the classifier gives {cores[-1].fields['out_features']} outputs, "
                                   f"the model was configured for {num_classes} classes")

        layers: list = []
        for index, (group, core) in enumerate(zip(groups, cores, strict=True)):
            layer_cls = ConvLayer if core.kind == "conv" else LinearLayer
            if index < len(groups) - 1:
                nxt = cores[index + 1]
                probe = layer_cls(name=group.name, acc_width=1, output=AffineStage(1.0), **core.fields)
                lo, hi = acc_bound(probe)
                width = signed_width(lo, hi)
                a, b = _bn_affine(group.name, group.bn, core.a0, core.b0)
                thresholds, flip = fold_threshold(a, b, nxt.input_thresholds, lo, hi)
                stage: ThresholdStage | AffineStage = ThresholdStage(thresholds=thresholds, flip=flip)
                const = int(np.sum(np.all((thresholds <= lo) | (thresholds > hi), axis=0)))
                extra = {"flipped_channels": int(flip.sum()), "constant_channels": const,
                         "threshold_planes": int(thresholds.shape[0])}
                report.input_bases[len(layers) + 1 + len(group.pools)] = (
                    groups[index + 1].name, nxt.input_bases, [float(t) for t in nxt.input_thresholds])
            else:
                probe = layer_cls(name=group.name, acc_width=1, output=AffineStage(1.0), **core.fields)
                lo, hi = acc_bound(probe)
                width = signed_width(lo, hi)
                stage = AffineStage(scale=float(core.affine_scale))
                extra = {"logit_scale": float(core.affine_scale)}
            layer = layer_cls(name=group.name, acc_width=width, output=stage, **core.fields)
            layers.append(layer)
            report.layers.append({
                "name": group.name, "kind": core.kind, "source": type(group.module).__name__,
                "in_shape": list(layer.in_shape.as_tuple()), "out_shape": list(layer.out_shape.as_tuple()),
                "in_planes": layer.in_planes, "out_planes": layer.out_planes,
                "weight_planes": layer.weight_planes, "ops": len(layer.ops), "fan_in": layer.fan_in,
                "acc_range": [lo, hi], "acc_width": width, **core.info, **extra})
            planes, out = layer.out_planes, layer.out_shape
            for pname, pool in group.pools:
                pool_layer = _pool_layer(pname, pool, out, planes)
                layers.append(pool_layer)
                out = pool_layer.out_shape
                report.layers.append({"name": pname, "kind": "maxpool", "source": "MaxPool2d",
                                      "in_shape": list(pool_layer.in_shape.as_tuple()),
                                      "out_shape": list(out.as_tuple()), "kernel": pool_layer.kernel,
                                      "stride": pool_layer.stride})
    finally:
        model.train(was_training)

    if images is not None and len(images):
        _output_errors(model, groups, report, images)
    net_meta = dict(meta or {})
    net_meta["compiler"] = {**report.settings, **report.summary()}
    net = Network(name=name or type(model).__name__, input_shape=Shape(*shapes[0].as_tuple()),
                  num_classes=num_classes, layers=tuple(layers), classes=tuple(classes), meta=net_meta)
    return validate(net), report

"""What a training run measures: top-1, per-layer bit-widths, Bit-OPs, scaling factors, plots.

Bit-OPs follow the PaBT paper: binary multiply-accumulates of one image, summed
over the binary layers (each layer's ``bit_ops(input_hw)``: surviving ops x
weight bits per output position). The float first and last layers are counted
apart as ``float_macs``. Plots use matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from binforge.model.data import batch_to_input
from torch import nn

__all__ = [
    "binary_layers",
    "evaluate_top1",
    "layer_summary",
    "model_summary",
    "plot_training",
    "plot_pabt",
    "plot_pabt_comparison",
]


def binary_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every binary layer of ``model`` (a module with ``export_binary``), in module order."""
    return [(name, module) for name, module in model.named_modules()
            if callable(getattr(module, "export_binary", None))]  # fmt: skip


@torch.no_grad()
def evaluate_top1(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> float:
    """Top-1 accuracy in percent of ``model`` on uint8 ``images`` ``(N, C, H, W)``.

    The model runs in eval mode (batch-norm running statistics) and is put back
    into the mode it was in. No random numbers are drawn.
    """
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(labels), batch_size):
            logits = model(batch_to_input(images[start : start + batch_size]))
            correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    finally:
        model.train(was_training)
    return 100.0 * correct / max(1, len(labels))


def _record_shape(shapes: dict[str, tuple[int, ...]], name: str, module: nn.Module,
                  args: tuple[Any, ...]) -> None:
    shapes.setdefault(name, tuple(args[0].shape[1:]))


def _spatial_inputs(model: nn.Module, in_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Input shape (without batch) of every leaf and binary module, from one dummy forward."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if name and (not list(module.children()) or hasattr(module, "export_binary")):
            handles.append(module.register_forward_pre_hook(partial(_record_shape, shapes, name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *in_shape)))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def layer_summary(model: nn.Module, in_shape: Sequence[int]) -> list[dict[str, Any]]:
    """One dict per binary layer (``binforge.model.arch.binary_layer_stats``).

    Keys: ``name``, ``weight_bits``, ``act_bits``, ``surviving_ops``,
    ``num_scaling_factors``, ``bit_ops`` (one image).
    """
    from binforge.model.arch import binary_layer_stats

    return binary_layer_stats(model, tuple(in_shape))


def _float_macs(model: nn.Module, in_shape: Sequence[int]) -> int:
    """Multiply-accumulates of the float convolutions and linear layers (one image)."""
    binary_names = {name for name, _ in binary_layers(model)}
    shapes = _spatial_inputs(model, in_shape)
    total = 0
    for name, module in model.named_modules():
        if any(name == b or name.startswith(b + ".") for b in binary_names):
            continue
        shape = shapes.get(name)
        if shape is None:
            continue
        if isinstance(module, nn.Conv2d):
            h, w = shape[1:]
            k, s = module.kernel_size, module.stride
            pad = module.padding if isinstance(module.padding, tuple) else (0, 0)
            ho = (h + 2 * pad[0] - k[0]) // s[0] + 1
            wo = (w + 2 * pad[1] - k[1]) // s[1] + 1
            total += module.out_channels * module.in_channels // module.groups * k[0] * k[1] * ho * wo
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        elif hasattr(module, "in_features") and hasattr(module, "out_features") and not list(
            module.children()
        ):
            total += int(module.in_features) * int(module.out_features)
    return total


def model_summary(model: nn.Module, in_shape: Sequence[int]) -> dict[str, Any]:
    """Per-layer rows (:func:`layer_summary`) and totals: Bit-OPs, float MACs, scaling factors."""
    rows = layer_summary(model, in_shape)
    return {
        "layers": rows,
        "bit_ops": sum(r["bit_ops"] for r in rows),
        "float_macs": _float_macs(model, in_shape),
        "scaling_factors": sum(r["num_scaling_factors"] for r in rows),
        "binary_layers": len(rows),
    }


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Training loss and test top-1 per epoch (float and binary phases) as a PNG."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for phase, style in (("float", "--"), ("binary", "-")):
        points = [h for h in history if h["phase"] == phase]
        if not points:
            continue
        x = [h["global_epoch"] for h in points]
        ax_loss.plot(x, [h["train_loss"] for h in points], style, marker="o", label=phase)
        ax_acc.plot(x, [h["test_top1"] for h in points], style, marker="o", label=phase)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test top-1 [%]")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bitwidth_series(
    trajectory: Sequence[Mapping[str, Any]], key: str
) -> dict[str, tuple[list[int], list[int]]]:
    series: dict[str, tuple[list[int], list[int]]] = {}
    for point in trajectory:
        for layer, bits in point["bits"].items():
            steps, values = series.setdefault(layer, ([], []))
            steps.append(point["step"])
            values.append(bits[key])
    return series


def plot_pabt(metrics: Mapping[str, Any], path: str | os.PathLike, title: str = "") -> None:
    """A run's Fig. 2: per-layer weight and activation bit-width over training steps,
    and test top-1, with ``t_start`` and ``t_end`` as dotted lines."""
    plot_pabt_comparison({metrics.get("method", "run"): metrics}, path, title=title)


def plot_pabt_comparison(
    runs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str = ""
) -> None:
    """Fig. 2 of the PaBT paper for several runs (binary phase, x = training step).

    Top: test top-1 of each run after every epoch. Below: weight and activation
    bit-width of every binary layer of each pruned run (step plots). Dotted
    vertical lines mark ``t_start`` and ``t_end`` of the pruned runs.
    """
    plt = _pyplot()
    pruned = {label: m for label, m in runs.items() if m.get("pabt")}
    rows = 1 + (2 if pruned else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(8, 2.6 * rows), sharex=True, squeeze=False)
    axes = axes[:, 0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, metrics) in enumerate(runs.items()):
        points = [h for h in metrics["history"] if h["phase"] == "binary"]
        axes[0].plot([h["step"] for h in points], [h["test_top1"] for h in points],
                     marker="o", color=colors[index % len(colors)], label=label)
    axes[0].set_ylabel("test top-1 [%]")
    axes[0].legend(fontsize=8)
    for row, key, name in ((1, "weight_bits", "weight bits"), (2, "act_bits", "activation bits")):
        if not pruned:
            break
        for index, (label, metrics) in enumerate(runs.items()):
            if label not in pruned:
                continue
            series = _bitwidth_series(metrics["pabt"]["trajectory"], key)
            last_step = max(h["step"] for h in metrics["history"] if h["phase"] == "binary")
            for steps, values in series.values():  # hold the final bit-width to the end
                if steps[-1] < last_step:
                    steps.append(last_step)
                    values.append(values[-1])
            # Layers are drawn slightly apart so that equal bit-widths stay visible.
            for layer_index, (steps, values) in enumerate(series.values()):
                axes[row].step(steps, np.asarray(values) + 0.04 * layer_index - 0.1 * index,
                               where="post", color=colors[index % len(colors)], alpha=0.7,
                               linewidth=1, label=label if layer_index == 0 else None)
            axes[row].legend(fontsize=8)
        axes[row].set_ylabel(name)
        axes[row].set_yticks(range(0, 1 + max(
            max(p["bits"][layer][key] for p in m["pabt"]["trajectory"] for layer in p["bits"])
            for m in pruned.values())))
    for metrics in pruned.values():
        for ax in axes:
            for t in (metrics["pabt"]["t_start"], metrics["pabt"]["t_end"]):
                ax.axvline(t, linestyle=":", color="grey")
    axes[-1].set_xlabel("training step (binary phase)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

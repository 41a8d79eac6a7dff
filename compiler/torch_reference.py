"""The torch model's view of the images the golden model runs: logits and activation bits.

Used to check the compiler: the golden model's predictions against the torch
model's, and layer by layer, each compute layer's input bit planes against the
activation bases the torch model feeds the same layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from binforge.compiler.compile import CompileReport
from binforge.compiler.ir import Network
from torch import nn

__all__ = ["torch_logits", "quantised_model", "torch_input_bits"]


def _batches(images: np.ndarray, batch_size: int):
    from binforge.model.data import batch_to_input

    for start in range(0, len(images), batch_size):
        yield start, batch_to_input(np.ascontiguousarray(images[start:start + batch_size]))


def torch_logits(model: nn.Module, images: np.ndarray, *, batch_size: int = 256,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Float logits ``(N, classes)`` of the model in eval mode for uint8 images ``(N, C, H, W)``.

    ``progress(n)`` is called with the number of images done after each batch.
    """
    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            for _, x in _batches(images, batch_size):
                parts.append(model(x).double().cpu().numpy())
                if progress is not None:
                    progress(len(x))
    finally:
        model.train(was_training)
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0))


def quantised_model(model: nn.Module, report: CompileReport) -> nn.Module:
    """A copy of ``model`` whose float first layer and classifier hold the compiler's integers
    (``delta * q``, rounded bias), and whose MBN layers in the operation form hold the
    op scales the integer gains represent: the torch model of what the hardware computes.

    (Other binary layers keep their scales; with one op per layer, or dyadic scales,
    the gains are exact anyway.)
    """
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in report.dequantised.items():
            copied.get_parameter(name).copy_(value)
        for name, ops in report.rounded_scales.items():
            layer = copied.get_submodule(name)
            if getattr(layer, "scaling", None) != "operation" or not hasattr(layer, "gamma"):
                continue
            for m, n, scale in ops:
                if np.all(scale == scale[0]):
                    layer.gamma[m, n] = float(scale[0])
    return copied


def torch_input_bits(model: nn.Module, net: Network, report: CompileReport, images: np.ndarray, *,
                     batch_size: int = 256) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each IR compute layer after the first: the bits the torch model feeds it.

    Returns IR layer index -> ``(bits uint8 (N, planes, in_size), margin float (N, planes, in_size))``
    where ``margin = |x - t|`` is the distance of the torch value from its threshold
    (small margins are float ties the integer rule may decide either way).
    """
    captured: dict[int, list[torch.Tensor]] = {index: [] for index in report.input_bases}
    handles = []
    for index, (name, _, _) in report.input_bases.items():
        module = model.get_submodule(name)

        def hook(_module, args, index=index):
            captured[index].append(args[0].detach().double().cpu())

        handles.append(module.register_forward_pre_hook(hook))
    try:
        torch_logits(model, images, batch_size=batch_size)
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    for index, (_, _, thresholds) in report.input_bases.items():
        x = torch.cat(captured[index]).numpy().reshape(len(images), 1, -1)
        t = np.asarray(thresholds, dtype=np.float64).reshape(1, -1, 1)
        size = net.layers[index].in_shape.size
        if x.shape[2] != size:
            raise ValueError(f"layer {index} takes {size} inputs per plane, the torch model gives {x.shape[2]}")
        result[index] = ((x >= t).astype(np.uint8), np.abs(x - t))
    return result

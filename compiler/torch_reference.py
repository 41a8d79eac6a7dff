"""The torch model's view of the images the golden model runs: logits and activation bits.

Used to check the compiler: the golden model's predictions against the torch
model's, and layer by layer, each compute layer's input bit planes against the
activation bases the torch model feeds the same layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from binforge.compiler.compile import (
    DEFAULT_BIAS_FRAC_BITS,
    DEFAULT_FIRST_WEIGHT_BITS,
    DEFAULT_GAIN_FRAC_BITS,
    DEFAULT_LAST_WEIGHT_BITS,
    CompileReport,
    compile_model,
)
from binforge.compiler.ir import Network
from torch import nn

from binforge.errors import BinforgeError

__all__ = [
    "TIE_TOLERANCE",
    "BitAgreement",
    "TorchComparison",
    "torch_logits",
    "quantised_model",
    "torch_input_bits",
    "reference_report",
    "compare_with_torch",
]


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


# --------------------------------------------------------------------------------------
# Layer by layer: where the torch model and the golden model part
# --------------------------------------------------------------------------------------

#: Torch values within this distance of their threshold are float ties: the float32
#: torch model and the exact integer rule may decide them either way.
TIE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class BitAgreement:
    """How often torch and golden give the same activation bit, for the bits one layer reads.

    Attributes
    ----------
    layer:
        IR index of the compute layer that reads the bits.
    reader:
        Its name (the torch module that binarizes its input).
    producer:
        Name of the IR layer that writes the bits (a compute layer, or its last max-pool).
    bits:
        Bits compared: images x planes x inputs per plane.
    differing:
        Bits where the golden model and torch differ.
    images_differing:
        Images with at least one differing bit.
    ties:
        Differing bits whose torch value lies within the tie tolerance of its threshold.
    max_margin:
        The largest ``|x - t|`` (torch value minus threshold) among differing bits; 0 if none.
    origin_images:
        Images whose first differing bit (in network order) is in this set of bits.
    unexplained_images:
        Of those, the images with a differing bit here that is not a tie. (A difference
        downstream of an earlier one is its consequence, tie or not: one flipped bit
        moves the accumulators it feeds by 2.)
    """

    layer: int
    reader: str
    producer: str
    bits: int
    differing: int
    images_differing: int
    ties: int
    max_margin: float
    origin_images: int
    unexplained_images: int

    @property
    def fraction(self) -> float:
        """Fraction of the bits that differ."""
        return self.differing / self.bits if self.bits else 0.0

    def to_json(self) -> dict:
        """A json-ready dict of the figures (``fraction`` included)."""
        return {"layer": self.layer, "reader": self.reader, "producer": self.producer, "bits": self.bits,
                "differing": self.differing, "fraction": self.fraction,
                "images_differing": self.images_differing, "ties": self.ties, "max_margin": self.max_margin,
                "origin_images": self.origin_images, "unexplained_images": self.unexplained_images}


@dataclass(frozen=True)
class TorchComparison:
    """Torch against golden on the same images: every set of activation bits, then the logits.

    Attributes
    ----------
    images:
        Images compared.
    layers:
        One :class:`BitAgreement` per compute layer after the first, in network order.
    torch_predictions, golden_predictions:
        int64 ``(images,)`` classes (first index of the largest logit).
    max_logit_difference:
        ``max |golden logit * scale - torch logit|``.
    max_logit:
        ``max |torch logit|`` (the size the differences compare with).
    equal_bits_logit_difference:
        ``max |golden logit * scale - torch logit|`` over the images whose every
        activation bit agrees: the classifier's own share (0 when there are none).
    classifier_mismatches:
        Images predicted differently although every activation bit agrees: the
        classifier's integer weights and bias decide them.
    tie_tolerance:
        The distance from a threshold under which a differing bit counts as a tie.
    """

    images: int
    layers: tuple[BitAgreement, ...]
    torch_predictions: np.ndarray
    golden_predictions: np.ndarray
    max_logit_difference: float
    max_logit: float
    equal_bits_logit_difference: float
    classifier_mismatches: int
    tie_tolerance: float

    @property
    def agreement(self) -> float:
        """Fraction of images on which torch and golden predict the same class."""
        return float(np.mean(self.torch_predictions == self.golden_predictions)) if self.images else 1.0

    @property
    def first_difference(self) -> BitAgreement | None:
        """The first set of bits in which torch and golden differ at all (None: every bit agrees)."""
        return next((entry for entry in self.layers if entry.differing), None)

    @property
    def first_unexplained(self) -> BitAgreement | None:
        """The first set of bits where some image's first difference is not a float tie (None: none).

        Compared with :func:`quantised_model`, such a difference is a compiler or
        golden-model error; compared with the trained model, it is where integer
        weights (or rounded gains) first change a bit.
        """
        return next((entry for entry in self.layers if entry.unexplained_images), None)

    def to_json(self) -> dict:
        """A json-ready dict: per-layer agreement, first difference, prediction agreement."""
        first, unexplained = self.first_difference, self.first_unexplained
        return {
            "images": self.images, "tie_tolerance": self.tie_tolerance,
            "layers": [entry.to_json() for entry in self.layers],
            "first_difference": first.producer if first else None,
            "first_unexplained_difference": unexplained.producer if unexplained else None,
            "agreement": self.agreement,
            "mismatches": int(np.sum(self.torch_predictions != self.golden_predictions)),
            "max_logit_difference": self.max_logit_difference, "max_logit": self.max_logit,
            "equal_bits_logit_difference": self.equal_bits_logit_difference,
            "classifier_mismatches": self.classifier_mismatches,
        }


def reference_report(model: nn.Module, net: Network) -> CompileReport:
    """Compile ``model`` again with the settings recorded in ``net`` and return the report
    (which torch module reads each IR layer's input bits, against which thresholds, and
    the integers the compiler chose for the float first layer and the classifier).

    Raises :class:`~binforge.errors.BinforgeError` when the model's compiled structure
    (layer names, kinds, planes, shapes) is not the network's: it is not the model
    ``net`` was compiled from.
    """
    settings = dict(net.meta.get("compiler") or {})
    rebuilt, report = compile_model(
        model, net.input_shape, net.num_classes,
        first_weight_bits=int(settings.get("first_weight_bits", DEFAULT_FIRST_WEIGHT_BITS)),
        last_weight_bits=int(settings.get("last_weight_bits", DEFAULT_LAST_WEIGHT_BITS)),
        gain_frac_bits=int(settings.get("gain_frac_bits", DEFAULT_GAIN_FRAC_BITS)),
        bias_frac_bits=int(settings.get("bias_frac_bits", DEFAULT_BIAS_FRAC_BITS)))

    def structure(network: Network) -> list[tuple]:
        return [(layer.name, layer.kind, layer.in_shape.as_tuple(), layer.out_shape.as_tuple(),
                 layer.in_planes, layer.out_planes) for layer in network.layers]

    mine, theirs = structure(rebuilt), structure(net)
    if mine != theirs:
        where = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs)))
        raise BinforgeError(
            f"the torch model does not compile to the network's layers (layer {where}: "
            f"{mine[where] if where < len(mine) else 'none'} in the model, "
            f"{theirs[where] if where < len(theirs) else 'none'} in the network): "
            "compare with the run the network was compiled from")
    return report


def compare_with_torch(model: nn.Module, net: Network, report: CompileReport, images: np.ndarray, *,
                       tie_tolerance: float = TIE_TOLERANCE, batch_size: int = 256,
                       progress: Callable[[int], None] | None = None) -> TorchComparison:
    """Run torch and golden on the same uint8 images and compare every activation bit and the logits.

    For each IR compute layer after the first, the bits it reads in the golden model are
    compared with ``x >= t`` for the value ``x`` the torch model feeds the matching
    module (``report.input_bases``; see :func:`reference_report`). Works in batches, so
    memory stays bounded on a whole test set. ``model`` is the trained model, or
    :func:`quantised_model` (then every difference beyond float ties is a compiler or
    golden-model error). ``progress(n)`` is called with the images done after each batch.
    """
    from binforge.model.data import batch_to_input
    from binforge.sim.golden import run_network

    if not report.input_bases:
        raise ValueError("the compile report names no layers reading activation bits")
    readers = sorted(report.input_bases)
    # per reader: bits, differing, images differing, ties, largest margin, origin images, unexplained images
    counts = {index: np.zeros(7, dtype=np.float64) for index in readers}
    torch_parts, golden_parts, classifier_mismatches = [], [], 0
    logit_gap = logit_size = equal_bits_gap = 0.0
    scale = net.layers[-1].output.scale
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for index in readers:
        module = model.get_submodule(report.input_bases[index][0])

        def hook(_module, args, index=index):
            captured[index] = args[0].detach().double().cpu()

        handles.append(module.register_forward_pre_hook(hook))
    dtype = next(model.parameters()).dtype  # a float64 copy of the model gets float64 input
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[start:start + batch_size])
            n = len(chunk)
            with torch.no_grad():
                torch_out = model(batch_to_input(chunk).to(dtype)).double().cpu().numpy()
            golden = run_network(net, chunk, return_layers=True)
            torch_parts.append(torch_out.argmax(axis=1))
            golden_parts.append(golden.predictions)
            gap = np.abs(golden.logits * scale - torch_out).max(axis=1)
            logit_gap = max(logit_gap, float(gap.max()))
            logit_size = max(logit_size, float(np.abs(torch_out).max()))
            settled = np.zeros(n, dtype=bool)  # images with a difference in an earlier layer
            for index in readers:
                thresholds = np.asarray(report.input_bases[index][2], dtype=np.float64).reshape(1, -1, 1)
                x = captured.pop(index).numpy().reshape(n, 1, -1)
                theirs = golden.layers[index - 1].reshape(n, thresholds.shape[1], -1)
                if x.shape[2] != theirs.shape[2]:
                    raise ValueError(f"layer {index} reads {theirs.shape[2]} inputs per plane, "
                                     f"the torch model gives {x.shape[2]}")
                margin = np.abs(x - thresholds)
                wrong = (x >= thresholds) != theirs.astype(bool)
                per_image = wrong.reshape(n, -1).any(axis=1)
                beyond_tie = (wrong & (margin > tie_tolerance)).reshape(n, -1).any(axis=1)
                origin = per_image & ~settled
                counts[index] += (wrong.size, wrong.sum(), per_image.sum(), np.sum(wrong & (margin <= tie_tolerance)),
                                  0.0, origin.sum(), np.sum(origin & beyond_tie))
                settled |= per_image
                if wrong.any():
                    counts[index][4] = max(counts[index][4], float(margin[wrong].max()))
            classifier_mismatches += int(np.sum(~settled & (torch_parts[-1] != golden.predictions)))
            if not settled.all():
                equal_bits_gap = max(equal_bits_gap, float(gap[~settled].max()))
            if progress is not None:
                progress(n)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    layers = []
    for index in readers:
        bits, differing, images_differing, ties, margin, origin, unexplained = counts[index]
        layers.append(BitAgreement(layer=index, reader=net.layers[index].name,
                                   producer=net.layers[index - 1].name, bits=int(bits),
                                   differing=int(differing), images_differing=int(images_differing),
                                   ties=int(ties), max_margin=float(margin), origin_images=int(origin),
                                   unexplained_images=int(unexplained)))
    empty = np.zeros(0, dtype=np.int64)
    return TorchComparison(
        images=int(len(images)), layers=tuple(layers),
        torch_predictions=np.concatenate(torch_parts).astype(np.int64) if torch_parts else empty,
        golden_predictions=np.concatenate(golden_parts).astype(np.int64) if golden_parts else empty,
        max_logit_difference=logit_gap, max_logit=logit_size, equal_bits_logit_difference=equal_bits_gap,
        classifier_mismatches=classifier_mismatches,
        tie_tolerance=float(tie_tolerance))

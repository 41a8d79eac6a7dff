"""Iterative training (Lan): binarize the weights layer by layer, in a chosen order (Algorithm 1).

The binary phase starts with every binary layer's weights in float (the
layers still binarize their inputs with ``sign``, so the finished network is
a plain BNN the hardware runs). Layer ``order[0]`` is binarized at step 0,
``order[1]`` after ``steps_per_layer`` more steps, and so on; after
``L * steps_per_layer`` steps every layer is binary and training goes on to
the end of the phase (Algorithm 1, lines 12-18). Binarization is
BinaryConnect's sign with the straight-through gradient, without weight
clipping (Sec. 2); Adam trains everything.

Orders (``--iterative-order``):

- ``forward`` (input to output), ``reverse``, ``random`` (seeded by the run's seed);
- ``ascending`` / ``descending`` from sensitivity pre-training (Sec. 3): L
  models, each the start-of-phase model with only layer ``l``'s weights
  binarized, are trained for K epochs on the training images minus a
  held-out validation part and ranked by validation error (ascending: the
  least sensitive layer first). The ranking is cached as json (in the run
  folder, or ``--iterative-cache PATH``) and reused when its settings match.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from binforge.errors import BinforgeError

from ..arch import LayerFactory
from .ste import (
    CompanionMethod,
    LatentBinaryConv2d,
    LatentBinaryLayer,
    LatentBinaryLinear,
    MethodOption,
    latent_binary_layers,
)

__all__ = [
    "ORDERS",
    "SENSITIVITY_FORMAT",
    "SENSITIVITY_FILE",
    "binarization_order",
    "binarized_count",
    "apply_binarization_state",
    "sensitivity_errors",
    "IterativeMethod",
]

#: Layer binarization orders.
ORDERS = ("forward", "reverse", "random", "ascending", "descending")
#: Version tag of the cached sensitivity ranking.
SENSITIVITY_FORMAT = "binforge-sensitivity-1"
#: The cache's name in the run folder.
SENSITIVITY_FILE = "sensitivity.json"


def binarization_order(kind: str, num_layers: int, *, seed: int = 0,
                       errors: list[float] | None = None) -> list[int]:
    """The order layers are binarized in (indices into the model's binary layers).

    ``ascending``/``descending`` need the sensitivity ``errors`` (one per
    layer); ties keep the forward order.
    """
    if kind not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {kind!r}")
    forward = list(range(num_layers))
    if kind == "forward":
        return forward
    if kind == "reverse":
        return forward[::-1]
    if kind == "random":
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randperm(num_layers, generator=generator).tolist()
    if errors is None or len(errors) != num_layers:
        raise ValueError(f"order {kind!r} needs one sensitivity error per layer ({num_layers})")
    ascending = sorted(forward, key=lambda index: (errors[index], index))
    return ascending if kind == "ascending" else ascending[::-1]


def binarized_count(step: int, steps_per_layer: int, num_layers: int) -> int:
    """How many layers (a prefix of the order) are binary for the step after ``step`` done steps."""
    return min(num_layers, step // max(1, steps_per_layer) + 1)


def apply_binarization_state(layers: list[LatentBinaryLayer], order: list[int], count: int) -> None:
    """Binarize the first ``count`` layers of ``order``; the others multiply by float weights."""
    binary = set(order[:count])
    for index, layer in enumerate(layers):
        layer.weight_binarized.fill_(index in binary)


def _split_validation(images: torch.Tensor, labels: torch.Tensor, fraction: float,
                      seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    count = len(labels)
    held = max(1, int(round(count * fraction)))
    if held >= count:
        raise BinforgeError(f"sensitivity pre-training needs more than {count} training images "
                            "to hold out a validation part: raise --limit-train")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed) + 7919))
    train_idx, val_idx = order[held:], order[:held]
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def sensitivity_errors(model: nn.Module, config: Any, epochs: int,
                       validation_fraction: float = 0.1, progress: bool = False) -> list[float]:
    """Sensitivity pre-training (Sec. 3): validation error (%) with only layer ``l`` binarized.

    Each of the L models is a copy of ``model`` (its current weights) with
    only binary layer ``l``'s weights binarized, trained for ``epochs``
    epochs with Adam (cosine learning rate) through the training loop's
    epoch function, on the training split minus a held-out
    ``validation_fraction``, then evaluated on that held-out part. The RNG
    state of the caller is left as it was.
    """
    from binforge.model.data import load_dataset
    from binforge.model.metrics import evaluate_top1
    from binforge.model.train import CosineSchedule, _run_epoch
    from tqdm import tqdm

    dataset = load_dataset(config.data, "train", limit=config.limit_train, seed=config.seed)
    images, labels = dataset.as_arrays()
    images, labels = torch.from_numpy(images), torch.from_numpy(labels).long()
    train_x, train_y, val_x, val_y = _split_validation(images, labels, validation_fraction,
                                                       config.seed)
    steps_per_epoch = math.ceil(len(train_y) / config.batch_size)
    num_layers = len(latent_binary_layers(model))
    errors = []
    with torch.random.fork_rng():
        for index in range(num_layers):
            torch.manual_seed(int(config.seed) * 1009 + index)
            candidate = copy.deepcopy(model)
            layers = [layer for _, layer in latent_binary_layers(candidate)]
            apply_binarization_state(layers, [index], 1)
            optimizer = torch.optim.Adam(candidate.parameters(), lr=config.lr)
            schedule = CosineSchedule([optimizer], steps_per_epoch * epochs)
            for epoch in range(epochs):
                with tqdm(total=steps_per_epoch, desc=f"sensitivity layer {index + 1}/{num_layers} "
                          f"epoch {epoch + 1}/{epochs}", file=sys.stderr, disable=not progress,
                          leave=False) as bar:
                    _run_epoch(candidate, optimizer, schedule, None, None, train_x, train_y, config,
                               f"sensitivity-{index}", epoch, bar)
            errors.append(100.0 - evaluate_top1(candidate, val_x, val_y))
            print(f"sensitivity: layer {index + 1}/{num_layers} binarized alone for {epochs} "
                  f"epoch(s), held-out error {errors[-1]:.2f}%", file=sys.stderr)
    return errors


class IterativeMethod(CompanionMethod):
    """``iterative``: weights binarized layer by layer in a chosen order (Algorithm 1), Adam."""

    name = "iterative"
    options = (
        MethodOption("iterative_order", "forward", str,
                     "iterative: layer binarization order (default: %(default)s)", ORDERS),
        MethodOption("iterative_epochs_per_layer", None, float,
                     "iterative: epochs between two layer binarizations (default: the binary "
                     "phase's epochs / (L + 1), so the last stretch is fully binary)"),
        MethodOption("iterative_sensitivity_epochs", 1, int,
                     "iterative: K, epochs of each sensitivity pre-training model "
                     "(ascending/descending orders) (default: %(default)s)"),
        MethodOption("iterative_validation_fraction", 0.1, float,
                     "iterative: part of the training images held out to rank sensitivities "
                     "(default: %(default)s)"),
        MethodOption("iterative_cache", None, str,
                     "iterative: json file caching the sensitivity ranking (default: "
                     f"RUN/{SENSITIVITY_FILE})"),
    )

    def __init__(self) -> None:
        self.order: list[int] | None = None
        self.errors: list[float] | None = None
        self.steps_per_layer = 1
        self._layers: list[LatentBinaryLayer] = []
        self._hook = None

    def layer_factory(self, config: Any) -> LayerFactory:
        def conv(in_ch, out_ch, kernel, stride, padding):
            layer = LatentBinaryConv2d(in_ch, out_ch, kernel, stride, padding)
            layer.weight_binarized.fill_(False)
            return layer

        def linear(in_f, out_f):
            layer = LatentBinaryLinear(in_f, out_f)
            layer.weight_binarized.fill_(False)
            return layer

        return LayerFactory(conv=conv, linear=linear, name="iterative")

    def start(self, context: Any) -> None:
        config = context.config
        self._layers = [layer for _, layer in latent_binary_layers(context.model)]
        num_layers = len(self._layers)
        if num_layers == 0:
            raise BinforgeError(f"{config.arch} has no binary layer to binarize iteratively")
        per_layer = self.option(config, "iterative_epochs_per_layer")
        if per_layer is None:
            self.steps_per_layer = max(1, context.total_steps // (num_layers + 1))
        else:
            self.steps_per_layer = max(1, int(round(float(per_layer) * context.steps_per_epoch)))
        needed = (num_layers - 1) * self.steps_per_layer + 1
        if needed > context.total_steps:
            raise BinforgeError(
                f"iterative training binarizes {num_layers} layers every {self.steps_per_layer} "
                f"steps, which needs {needed} steps but the binary phase has "
                f"{context.total_steps}: raise --epochs or lower --iterative-epochs-per-layer")
        self._context = context
        self.order = None
        self._hook = context.model.register_forward_pre_hook(self._before_forward)

    def _before_forward(self, model: nn.Module, args: Any) -> None:
        if not model.training:
            return  # evaluation sees the current state as it is
        if self.order is None:
            self.order = self._choose_order(self._context)
        count = binarized_count(self._context.step, self.steps_per_layer, len(self._layers))
        apply_binarization_state(self._layers, self.order, count)

    def _choose_order(self, context: Any) -> list[int]:
        config = context.config
        kind = self.option(config, "iterative_order")
        num_layers = len(self._layers)
        if kind in ("ascending", "descending"):
            # The sensitivity models are copies of this model: copy it without this hook.
            self._hook.remove()
            try:
                self.errors = self._sensitivity(context)
            finally:
                self._hook = context.model.register_forward_pre_hook(self._before_forward)
        order = binarization_order(kind, num_layers, seed=config.seed, errors=self.errors)
        context.log.append({"iterative_order": kind, "order": order,
                            "layers": self._layer_names(context.model),
                            "sensitivity_error": self.errors})
        return order

    @staticmethod
    def _layer_names(model: nn.Module) -> list[str]:
        return [name for name, _ in latent_binary_layers(model)]

    def _cache_path(self, context: Any) -> Path | None:
        explicit = self.option(context.config, "iterative_cache")
        if explicit:
            return Path(explicit)
        run_dir = getattr(context, "run_dir", None)
        return Path(run_dir) / SENSITIVITY_FILE if run_dir is not None else None

    def _sensitivity_key(self, context: Any) -> dict[str, Any]:
        config = context.config
        return {"data": config.data, "arch": config.arch, "width": config.width,
                "limit_train": config.limit_train, "seed": config.seed,
                "float_epochs": config.float_epochs, "init": config.init,
                "batch_size": config.batch_size, "lr": config.lr, "augment": config.augment,
                "epochs": int(self.option(config, "iterative_sensitivity_epochs")),
                "validation_fraction": float(self.option(config, "iterative_validation_fraction")),
                "layers": self._layer_names(context.model)}

    def _sensitivity(self, context: Any) -> list[float]:
        key = self._sensitivity_key(context)
        path = self._cache_path(context)
        if path is not None and path.is_file():
            try:
                cached = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise BinforgeError(f"sensitivity cache {path} is not valid json ({exc}): "
                                    "delete it to recompute the ranking") from None
            if cached.get("format") == SENSITIVITY_FORMAT and cached.get("key") == key:
                return [float(e) for e in cached["errors"]]
        errors = sensitivity_errors(context.model, context.config, key["epochs"],
                                    key["validation_fraction"], progress=sys.stderr.isatty())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({
                "format": SENSITIVITY_FORMAT, "key": key, "errors": errors,
                "ascending": binarization_order("ascending", len(errors), errors=errors),
            }, indent=2) + "\n")
            os.replace(tmp, path)
        return errors

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order, "errors": self.errors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order = list(state["order"]) if state.get("order") is not None else None
        self.errors = list(state["errors"]) if state.get("errors") is not None else None

    def summary(self, context: Any) -> dict[str, Any]:
        result = super().summary(context)
        result["iterative"] = {
            "order": self.order, "layers": self._layer_names(context.model),
            "steps_per_layer": self.steps_per_layer, "sensitivity_error": self.errors,
            "binarized": [bool(layer.weight_binarized) for layer in self._layers],
        }
        return result

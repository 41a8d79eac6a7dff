"""The training loop: float pre-training, then binary training, resumable bit for bit.

A run (``binforge train``, or :func:`train` from Python) goes through up to two
phases, each a number of epochs over the training split:

1. **float**: the architecture's float variant (Adam, cosine learning rate) —
   skipped when ``init`` names a pre-trained float model;
2. **binary**: the method's model built from the float weights (for MBN:
   ``binary_from_float``), trained by the method's optimizers (BOP + AMSGrad by
   default, cosine learning rate for AMSGrad), with the method's hooks.

Method ``float`` runs phase 1 only, for ``epochs`` epochs.

Training methods plug in through :class:`Method` and :func:`register_method`:
a method builds its binary model, its optimizers, may add a loss term and runs
a hook after every optimizer step (PaBT prunes there). Built in: ``float``,
``bop`` (M = N = 1 with BOP), ``mbn`` (M x N, no pruning), ``pabt`` (PaBT-I) and
``pabt-random`` (PaBT-R); ``binforge.model.methods`` registers the companion
methods when imported.

After the last binary epoch the batch norms' running statistics are recomputed
exactly over ``recalibrate_bn`` training batches
(:mod:`binforge.model.bn_recalibration`; BOP's flips leave the momentum
averages behind), before the final evaluation, checkpoint and export; the
history's last entry and ``metrics.json`` keep the test top-1 before and after.

After every epoch the test split is evaluated and ``RUN/checkpoint.pt`` is
rewritten atomically with everything resuming needs: model, optimizer,
schedule, RNG states (torch, numpy, python), epoch and the method's state (the
pruner's). Shuffling draws from a generator seeded by (seed, phase, epoch), so
a resumed run repeats exactly the batches, flips and pruning decisions of an
uninterrupted one. When a run ends, ``RUN/`` holds ``model.pt`` +
``config.json`` (what :func:`binforge.model.checkpoint.load_run` rebuilds),
``metrics.json``, ``curves.png`` and ``report.json``; PaBT runs add
``prune_log.jsonl`` and ``pabt.png``.

Data-parallel training (``torchrun``, see ``docs/distributed.md``): give
:func:`train` the :class:`~binforge.model.distributed.DistributedContext` of
:func:`~binforge.model.distributed.init_distributed`. Every rank draws the same
epoch order, takes every ``world_size``-th image of each global batch of
``batch_size`` images, and runs ``DistributedDataParallel``; the loss is scaled
so that the averaged gradient is the global batch's mean gradient, batch norm
statistics cover the global batch (``sync_batch_norm``), so N processes follow
the one-process run up to float rounding. BOP's moving averages and flips and
PaBT's pruning decisions are computed on every rank from identical state and
checked equal (an all-gather of a fingerprint of the model, masks included,
after every pruning decision and every epoch). Rank 0 alone writes files, logs
and progress bars; the test split is evaluated in shards whose correct counts
are summed.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from binforge.model import checkpoint as ckpt
from binforge.model.bn_recalibration import recalibrate_batch_norm
from binforge.model.data import augment_batch, batch_to_input, load_dataset
from binforge.model.distributed import (
    AMP_MODES,
    DistributedContext,
    all_reduce_sum,
    assert_replicas_equal,
    broadcast_buffers,
    float32_math,
    restore_batch_norm,
    synchronize_batch_norm,
)
from binforge.model.metrics import (
    binary_layers,
    model_summary,
    plot_pabt,
    plot_training,
)
from binforge.model.optim import build_optimizers, gamma_moments
from binforge.model.pabt import PaBTPruner, PruneSchedule, default_psi
from torch import nn

from binforge.errors import BinforgeError
from binforge.outdir import write_json_atomic, write_report

__all__ = [
    "ARCHS",
    "RunConfig",
    "MethodContext",
    "Method",
    "METHODS",
    "register_method",
    "get_method",
    "method_names",
    "build_model_from_config",
    "parse_step_spec",
    "CosineSchedule",
    "train",
    "TrainResult",
]

#: Architectures ``binforge.model.arch.build_model`` knows.
ARCHS = ("mlp", "vgg-small", "resnet20", "resnet18", "resnet18-bireal")

METRICS_FILE = "metrics.json"
PRUNE_LOG_FILE = "prune_log.jsonl"
FLOAT_MODEL_FILE = "float_model.pt"


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything that defines a run (saved as ``config.json``; ``--resume`` checks it).

    Attributes
    ----------
    data, arch, width, method, M, N:
        Data spec, architecture, channel multiplier, training method and its base counts.
    epochs:
        Epochs of the method's phase (binary phase; for ``float`` the float phase).
    float_epochs:
        Float pre-training epochs before a binary method (ignored with ``init``).
    init:
        A float run folder or state-dict file to start the binary phase from.
    batch_size, lr, seed:
        Mini-batch size, learning rate of Adam / AMSGrad (cosine to 0), seed.
    limit_train, limit_test:
        Keep only the first N images of a split.
    augment:
        Pad-4 random crop and horizontal flip on training batches.
    use_bop, bop_threshold, bop_gamma:
        BOP for binary weights (tau, phi); ``use_bop=False`` is the AMSGrad-only ablation.
    t_start, t_end, psi, kappa:
        PaBT schedule (steps ``"500"``, epochs ``"2ep"``/``"1.5ep"``, or fractions
        of the binary phase ``"10%"``), pruning ratio (None: ``(MN - 1) / MN``)
        and the weighting of Eq. 8.
    in_shape, num_classes, classes:
        Filled in from the data set.
    method_options:
        Options of a companion method (``binforge.model.methods``), by key.
    image_size:
        Height and width of ``folder`` images (None: 224).
    recalibrate_bn:
        After the last binary epoch, recompute every batch norm's running
        statistics over this many training batches (at most one epoch's worth;
        0: keep the momentum averages). See :mod:`binforge.model.bn_recalibration`.
    distill, distill_weight, distill_temperature:
        Knowledge distillation in the binary phase: a float teacher (a float run
        folder, any architecture with the same data shape, or a float state dict or
        ``float_model.pt`` of this run's architecture); the loss becomes
        ``(1 - w) * CE + w * T^2 * KL(teacher_T || student_T)`` with the logits of
        both divided by ``T`` (Hinton et al.; ``w = 1, T = 1`` is the distributional
        loss of ReActNet). None: cross entropy only.
    """

    data: str = "digits"
    arch: str = "mlp"
    width: float = 1.0
    method: str = "pabt"
    M: int = 3
    N: int = 3
    epochs: int = 10
    float_epochs: int = 5
    init: str | None = None
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    augment: bool = False
    use_bop: bool = True
    bop_threshold: float = 1e-8
    bop_gamma: float = 1e-4
    t_start: str = "10%"
    t_end: str = "75%"
    psi: float | None = None
    kappa: float = 1.0
    in_shape: list[int] = field(default_factory=list)
    num_classes: int = 0
    classes: list[str] = field(default_factory=list)
    method_options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    recalibrate_bn: int = 100
    distill: str | None = None
    distill_weight: float = 1.0
    distill_temperature: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_STEP_SPEC = re.compile(r"^\s*(?P<value>\d+(\.\d*)?|\.\d+)\s*(?P<unit>ep|%)?\s*$")


def parse_step_spec(spec: str | int, steps_per_epoch: int, total_steps: int) -> int:
    """A point of the binary phase as a step count: ``"300"`` (steps), ``"2ep"`` or ``"1.5ep"``
    (epochs, rounded to the nearest step) or ``"25%"`` (of the phase's ``total_steps``)."""
    match = _STEP_SPEC.match(str(spec))
    if match is None:
        raise BinforgeError(
            f"cannot read {spec!r} as a training step: give steps (300), epochs (2ep) or a "
            "percentage of the binary phase (25%)"
        )
    value, unit = float(match["value"]), match["unit"]
    if unit == "ep":
        return int(round(value * steps_per_epoch))
    if unit == "%":
        return int(round(value / 100.0 * total_steps))
    if value != int(value):
        raise BinforgeError(f"a step count must be a whole number, not {spec!r} (use 'ep' for epochs)")
    return int(value)


# --------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------


class CosineSchedule:
    """Cosine decay of every ``lr`` param group of some optimizers to 0 over ``total_steps``.

    ``lr(t) = base_lr * (1 + cos(pi * t / total_steps)) / 2`` after ``t`` steps,
    computed in closed form (no drift). Groups without ``lr`` (BOP's) are left alone.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], total_steps: int) -> None:
        # Groups are looked up on every use: ``Optimizer.load_state_dict`` replaces them.
        self.optimizers = list(optimizers)
        self.base = [float(g["lr"]) for g in self._groups()]
        self.total_steps = max(1, int(total_steps))
        self.steps = 0
        self._apply()

    def _groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups if "lr" in g]

    def _apply(self) -> None:
        factor = 0.5 * (1.0 + math.cos(math.pi * min(self.steps, self.total_steps) / self.total_steps))
        for group, base in zip(self._groups(), self.base, strict=True):
            group["lr"] = base * factor

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "base": list(self.base), "total_steps": self.total_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.base = [float(b) for b in state["base"]]
        self.total_steps = int(state["total_steps"])
        self._apply()


def _torch_optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    inner = getattr(optimizer, "optimizers", None)
    if isinstance(inner, dict):
        return list(inner.values())
    if isinstance(inner, (list, tuple)):
        return list(inner)
    raise TypeError(f"cannot find the torch optimizers inside {type(optimizer).__name__}")


# --------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------


@dataclass
class MethodContext:
    """What a method's hooks see: the model, its optimizer and where training stands.

    ``step`` counts optimizer steps of the binary phase from 1; ``total_steps``
    is the phase's length. ``log`` is the list behind ``RUN/prune_log.jsonl``
    (json-able dicts; append to it). ``run_dir`` is the run folder (None
    outside :func:`train`), for methods that keep files of their own there.
    """

    model: nn.Module
    optimizer: Any
    config: RunConfig
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    epoch: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None


class Method:
    """A way to train the binary network; subclass, then :func:`register_method`.

    The loop calls, in order: :meth:`build_model` (once, from the float model,
    or with ``float_model=None`` to rebuild a trained model's structure before
    loading its state dict), :meth:`build_optimizer`, :meth:`start` (once the
    phase length is known; also on resume, before :meth:`load_state_dict`),
    then per mini-batch :meth:`extra_loss` (added to the cross entropy) and,
    after the optimizer step, :meth:`after_step`. :meth:`state_dict` is saved
    in every checkpoint; :meth:`summary` goes into ``metrics.json``.

    Attributes
    ----------
    name:
        The ``--method`` value.
    binary:
        False only for ``float``: no binary phase.
    """

    name: str = ""
    binary: bool = True

    def build_model(self, config: RunConfig, float_model: nn.Module | None) -> nn.Module:
        """The binary model, initialised from ``float_model`` (None: fresh structure)."""
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module, config: RunConfig) -> Any:
        """An object with ``zero_grad``, ``step``, ``state_dict``, ``load_state_dict`` and
        either is a ``torch.optim.Optimizer`` or has ``.optimizers`` (their ``lr`` groups get
        the cosine schedule). Default: BOP for binary bases, AMSGrad for the rest."""
        return build_optimizers(model, lr=config.lr, bop_threshold=config.bop_threshold,
                                bop_gamma=config.bop_gamma, use_bop=config.use_bop)  # fmt: skip

    def start(self, context: MethodContext) -> None:
        """Called once before the first step of the binary phase (and when resuming)."""

    def extra_loss(self, context: MethodContext) -> torch.Tensor | None:
        """A term added to the loss of every mini-batch (BNN+ regularisers), or None."""
        return None

    def after_step(self, context: MethodContext) -> None:
        """Called after every optimizer step (``context.step`` already counts it)."""

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs (tensors and plain containers only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def summary(self, context: MethodContext) -> dict[str, Any]:
        """Extra entries for ``metrics.json``."""
        return {}


METHODS: dict[str, Callable[[], Method]] = {}


def register_method(name: str, factory: Callable[[], Method]) -> None:
    """Make ``--method NAME`` build its :class:`Method` with ``factory()``."""
    if name in METHODS and METHODS[name] is not factory:
        raise ValueError(f"method {name!r} is already registered")
    METHODS[name] = factory


def _import_companion_methods() -> None:
    try:
        import binforge.model.methods  # noqa: F401  (registers the companion methods)
    except ImportError as exc:  # pragma: no cover - only while methods/ is incomplete
        if "binforge.model.methods" not in str(exc):
            raise


def method_names() -> list[str]:
    """Every registered method name."""
    _import_companion_methods()
    return list(METHODS)


def get_method(name: str) -> Method:
    """A fresh :class:`Method` for ``name``; a BinforgeError lists the known ones."""
    _import_companion_methods()
    if name not in METHODS:
        raise BinforgeError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name]()


def _build_float_model(config: RunConfig) -> nn.Module:
    from binforge.model.arch import FLOAT_LAYERS, build_model

    return build_model(config.arch, tuple(config.in_shape), config.num_classes, FLOAT_LAYERS,
                       width=config.width)


def build_model_from_config(config: RunConfig | dict[str, Any]) -> nn.Module:
    """The (untrained) model structure a run's ``config.json`` describes."""
    if isinstance(config, dict):
        config = RunConfig.from_json(config)
    return get_method(config.method).build_model(config, None)


class FloatMethod(Method):
    """``float``: the architecture's float variant, Adam; the float phase is the run."""

    name = "float"
    binary = False

    def build_model(self, config: RunConfig, float_model: nn.Module | None) -> nn.Module:
        return float_model if float_model is not None else _build_float_model(config)

    def build_optimizer(self, model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=config.lr)


class MBNMethod(Method):
    """``mbn``: M x N MBN layers with operation scales, BOP + AMSGrad, no pruning.

    ``bop`` is the same with M = N = 1 forced.
    """

    name = "mbn"
    force_single_base = False

    def bases(self, config: RunConfig) -> tuple[int, int]:
        return (1, 1) if self.force_single_base else (config.M, config.N)

    def build_model(self, config: RunConfig, float_model: nn.Module | None) -> nn.Module:
        from binforge.model.arch import binary_from_float, build_model

        m, n = self.bases(config)
        if float_model is None:
            return build_model(config.arch, tuple(config.in_shape), config.num_classes,
                               width=config.width, M=m, N=n)
        return binary_from_float(float_model, M=m, N=n)


class BopMethod(MBNMethod):
    """``bop``: the plain BNN baseline, M = N = 1, BOP + AMSGrad."""

    name = "bop"
    force_single_base = True


class PaBTMethod(MBNMethod):
    """``pabt`` (PaBT-I) and ``pabt-random`` (PaBT-R): MBN training with Algorithm 1's pruning.

    The pruner acts after the optimizer step ``t`` (Algorithm 1, lines 13-21).
    Once an op is pruned its ``gamma``'s first AMSGrad moment is zeroed: with
    the mask its gradient is 0 from then on, so the scale no longer moves.
    """

    name = "pabt"
    criterion = "importance"

    def __init__(self) -> None:
        self.pruner: PaBTPruner | None = None
        self.trajectory: list[dict[str, Any]] = []

    def start(self, context: MethodContext) -> None:
        config = context.config
        layers = [(name, layer) for name, layer in binary_layers(context.model)
                  if hasattr(layer, "mask") and hasattr(layer, "prune")]  # fmt: skip
        if not layers:
            raise BinforgeError(f"{config.arch} has no prunable MBN layer; PaBT needs one")
        t_start = parse_step_spec(config.t_start, context.steps_per_epoch, context.total_steps)
        t_end = parse_step_spec(config.t_end, context.steps_per_epoch, context.total_steps)
        if not 0 <= t_start < t_end <= context.total_steps:
            raise BinforgeError(
                f"the pruning phase must satisfy 0 <= t_start < t_end <= {context.total_steps} "
                f"(the binary phase's steps), not t_start={t_start}, t_end={t_end}: "
                "change --t-start/--t-end or --epochs"
            )
        psi = config.psi if config.psi is not None else default_psi(config.M, config.N)
        schedule = PruneSchedule.for_masks([layer.mask.numel() for _, layer in layers], psi,
                                           t_start, t_end)  # fmt: skip
        self.pruner = PaBTPruner(layers, schedule, criterion=self.criterion, kappa=config.kappa,
                                 seed=config.seed)  # fmt: skip
        self.trajectory = [self._point(0)]

    def _point(self, step: int) -> dict[str, Any]:
        bits = self.pruner.bit_widths()
        ops = {name: int((layer.mask != 0).sum()) for name, layer in self.pruner.layers}
        return {"step": step, "bits": {name: {"weight_bits": w, "act_bits": a, "ops": ops[name]}
                                       for name, (w, a) in bits.items()}}  # fmt: skip

    def after_step(self, context: MethodContext) -> None:
        assert self.pruner is not None

        def moments(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            return gamma_moments(context.optimizer, layer)

        decisions = self.pruner.step(context.step, moments if self.criterion == "importance" else None)
        if not decisions:
            return
        layers = dict(self.pruner.layers)
        for decision in decisions:
            u, _ = gamma_moments(context.optimizer, layers[decision.layer])
            u[decision.m, decision.n] = 0.0
            context.log.append(decision.as_json())
        self.trajectory.append(self._point(context.step))

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict() if self.pruner else None,
                "trajectory": self.trajectory}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.pruner is not None and state.get("pruner") is not None:
            self.pruner.load_state_dict(state["pruner"])
        self.trajectory = list(state.get("trajectory", []))

    def summary(self, context: MethodContext) -> dict[str, Any]:
        assert self.pruner is not None
        schedule = self.pruner.schedule
        trajectory = list(self.trajectory)
        if trajectory and trajectory[-1]["step"] < context.step:
            trajectory.append(self._point(context.step))  # the bit-widths the run ends with
        return {"pabt": {
            "criterion": self.criterion,
            "t_start": schedule.t_start,
            "t_end": schedule.t_end,
            "prune_total": schedule.prune_total,
            "t_prune": schedule.t_prune if schedule.prune_total else None,
            "pruned": self.pruner.done,
            "kappa": self.pruner.kappa,
            "trajectory": trajectory,
        }}  # fmt: skip


class PaBTRandomMethod(PaBTMethod):
    """``pabt-random``: PaBT-R, the same schedule with uniformly random, seeded choices."""

    name = "pabt-random"
    criterion = "random"


for _method in (FloatMethod, BopMethod, MBNMethod, PaBTMethod, PaBTRandomMethod):
    register_method(_method.name, _method)


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, its final top-1 and ``metrics.json``.

    ``finished`` is False when ``stop_after_epochs`` ended the call early.
    """

    run_dir: Path
    top1: float | None
    metrics: dict[str, Any]
    finished: bool


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


def _epoch_generator(seed: int, phase: str, epoch: int) -> torch.Generator:
    offset = {"float": 0, "recalibration": 2}.get(phase, 1)
    return torch.Generator().manual_seed((seed * 1_000_003 + offset * 10_007 + epoch) % (2**63))


@dataclass
class _Split:
    """One split: in-memory pixels (array data sets), or decoded per batch (image folders)."""

    dataset: Any
    labels: torch.Tensor
    images: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 ``(len(index), C, H, W)`` images at ``index``."""
        if self.images is not None:
            return self.images[index]
        return torch.from_numpy(np.ascontiguousarray(self.dataset._images(index.numpy())))


def _load_split(config: RunConfig, split: str, limit: int | None) -> _Split:
    dataset = load_dataset(config.data, split, limit=limit, seed=config.seed,
                           image_size=config.image_size or 224)  # fmt: skip
    labels = torch.from_numpy(np.asarray(dataset.labels)).long()
    if hasattr(dataset, "images"):
        images, labels_array = dataset.as_arrays()
        return _Split(dataset, torch.from_numpy(labels_array).long(), torch.from_numpy(images))
    return _Split(dataset, labels, None)


@dataclass
class _Runtime:
    """How the loop executes (not part of the run's configuration): ranks, device, precision."""

    dist: DistributedContext
    amp: str | None = None
    channels_last: bool = False
    sync_batch_norm: bool = True
    scaler: Any = None

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def autocast(self) -> Any:
        if self.amp is None:
            return torch.autocast("cpu", enabled=False)
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        x = batch_to_input(pixels).to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def place(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.channels_last:  # 4-d tensors only (MBN weight bases are 5-d)
            with torch.no_grad():
                for tensor in [*model.parameters(), *model.buffers()]:
                    if tensor.dim() == 4:
                        tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training forward goes through: DDP across ranks, else the model."""
        if not self.dist.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.sync_batch_norm:
            synchronize_batch_norm(model)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)  # buffers (masks) from rank 0


def _evaluate(model: nn.Module, split: _Split, runtime: _Runtime, batch_size: int = 500) -> float:
    """Test top-1 (%): each rank evaluates every ``world_size``-th image; correct counts are summed.

    With one process this is :func:`binforge.model.metrics.evaluate_top1` (same batches).
    """
    was_training = model.training
    model.eval()
    rank, world = runtime.dist.rank, runtime.dist.world_size
    indices = torch.arange(len(split))[rank::world] if world > 1 else torch.arange(len(split))
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(indices), batch_size):
                index = indices[start : start + batch_size]
                with runtime.autocast():
                    logits = model(runtime.to_input(split.pixels(index)))
                correct += int((logits.argmax(dim=1).cpu() == split.labels[index]).sum())
    finally:
        model.train(was_training)
    (total,) = all_reduce_sum([float(correct)], runtime.dist)
    return 100.0 * total / max(1, len(split))


def _recalibration_inputs(split: _Split, config: RunConfig, runtime: _Runtime, batches: int):
    """Model inputs of this rank for batch-norm recalibration: its share of each of the first
    ``batches`` global batches of a shuffled, un-augmented pass over the training split.

    The order comes from a generator of its own (seeded by the run's seed), so recalibrating
    draws nothing from the global RNGs and a resumed run stays bit-exact.
    """
    rank, world = runtime.dist.rank, runtime.dist.world_size
    order = torch.randperm(len(split), generator=_epoch_generator(config.seed, "recalibration", 0))
    for start in range(0, min(len(order), batches * config.batch_size), config.batch_size):
        index = order[start : start + config.batch_size]
        yield runtime.to_input(split.pixels(index[rank::world] if world > 1 else index))


def _recalibrate(model: nn.Module, split: _Split, config: RunConfig, runtime: _Runtime,
                 test_split: _Split, top1_before: float) -> dict[str, Any]:  # fmt: skip
    """Recalibrate batch norm after the last binary epoch; the record kept in the history."""
    with runtime.autocast():
        used = recalibrate_batch_norm(model, _recalibration_inputs(split, config, runtime,
                                                                   config.recalibrate_bn))
    broadcast_buffers(model, runtime.dist)  # --no-sync-bn: rank 0's statistics, as in training
    top1_after = _evaluate(model, test_split, runtime)
    return {"batches": used, "top1_before": top1_before, "top1_after": top1_after}


def _float_state_from_init(init: str) -> dict[str, torch.Tensor]:
    path = Path(init)
    if path.is_dir():
        if (path / FLOAT_MODEL_FILE).is_file():
            path = path / FLOAT_MODEL_FILE
        else:
            config = ckpt.read_config(path)
            if config.get("method") != "float":
                raise BinforgeError(
                    f"{init} is a {config.get('method')} run without {FLOAT_MODEL_FILE}: "
                    "--init needs a float run or a float state dict"
                )
            path = path / ckpt.MODEL_FILE
    state = ckpt.load_state_file(path, what="float model")
    if not isinstance(state, dict):
        raise BinforgeError(f"{path} is not a state dict: --init needs a float run or state dict")
    return state


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise BinforgeError(
            f"{source} does not fit the float {arch} model ({detail}): give a float model of the "
            "same --arch, --width and data shape"
        ) from None


def _optimizer_step(optimizer: Any, loss: torch.Tensor, runtime: _Runtime) -> None:
    optimizer.zero_grad(set_to_none=True)
    if runtime.scaler is None:
        loss.backward()
        optimizer.step()
        return
    # fp16: unscale, skip steps with inf/nan gradients (per torch optimizer), then
    # the latent-weight clipping CaseOptimizer.step would do.
    runtime.scaler.scale(loss).backward()
    for inner in _torch_optimizers(optimizer):
        runtime.scaler.step(inner)
    runtime.scaler.update()
    latent = getattr(optimizer, "latent_clip", None)
    if latent:
        with torch.no_grad():
            for p in latent:
                p.clamp_(-1.0, 1.0)


def _run_epoch(model, optimizer, schedule, method, context, images, labels, config, phase,
               epoch, progress) -> tuple[float, float]:  # fmt: skip
    """One pass of one process over in-memory ``images``/``labels``; (mean loss, train top-1 %).

    The form ``binforge.model.methods.iterative`` drives its sensitivity models with.
    """
    return _train_epoch(model, model, optimizer, schedule, method, context,
                        _Split(None, labels, images), config, phase, epoch, progress,
                        _Runtime(DistributedContext()))  # fmt: skip


def _train_epoch(model, net, optimizer, schedule, method, context, split, config, phase,
                 epoch, progress, runtime, teacher=None) -> tuple[float, float]:  # fmt: skip
    """One pass over the training split; returns (mean loss, train top-1 %) over all ranks.

    ``net`` is what the forward pass goes through (``model`` or its DDP wrapper);
    ``teacher`` (a float model in eval mode, or None) adds the distillation loss.
    Each global batch of ``config.batch_size`` images is split across the ranks,
    rank ``r`` taking positions ``r, r + world_size, ...`` of it.
    """
    model.train()
    rank, world = runtime.dist.rank, runtime.dist.world_size
    generator = _epoch_generator(config.seed, phase, epoch)
    order = torch.randperm(len(split), generator=generator)
    total_loss, correct, seen = 0.0, 0, 0
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        if config.augment:  # the global batch's draws, so every rank's generator stays in step
            batch = augment_batch(split.pixels(index), generator=generator)
            if world > 1:
                batch = batch[rank::world]
        else:
            batch = split.pixels(index[rank::world] if world > 1 else index)
        target = split.labels[index[rank::world] if world > 1 else index].to(runtime.device)
        with runtime.autocast():
            x = runtime.to_input(batch)
            logits = net(x)
            if world > 1:  # DDP averages over ranks: sum / global count gives the global mean
                scale = world / len(index)
                loss = F.cross_entropy(logits.float(), target, reduction="sum") * scale
            else:
                scale = 1.0 / len(target)
                loss = F.cross_entropy(logits, target)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x).float()
                loss = distillation_loss(logits.float(), teacher_logits, loss, scale,
                                         config.distill_weight, config.distill_temperature)  # fmt: skip
        if method is not None:
            extra = method.extra_loss(context)
            if extra is not None:
                loss = loss + extra
        _optimizer_step(optimizer, loss, runtime)
        schedule.step()
        if method is not None:
            context.step += 1
            decisions_before = len(context.log)
            method.after_step(context)
            if world > 1 and len(context.log) != decisions_before:
                assert_replicas_equal(model, runtime.dist, f"pruning at step {context.step}")
        total_loss += float(loss.detach()) * len(index) / world
        correct += int((logits.detach().argmax(1) == target).sum())
        seen += len(target)
        progress.update(1)
        progress.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    total_loss, correct, seen = all_reduce_sum([total_loss, correct, seen], runtime.dist)
    return total_loss / max(1, seen), 100.0 * correct / max(1, seen)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, cross_entropy: torch.Tensor,
                      scale: float, weight: float, temperature: float) -> torch.Tensor:  # fmt: skip
    """``(1 - weight) * cross_entropy + weight * T^2 * KL(softmax(t / T) || softmax(s / T))``.

    The KL term is summed over the batch and multiplied by ``scale`` (1 / batch, or
    the global-batch factor under DDP), the same reduction as ``cross_entropy``.
    """
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="sum", log_target=True) * scale * (t * t)  # fmt: skip
    return (1.0 - weight) * cross_entropy + weight * kl


def _load_teacher(config: RunConfig) -> nn.Module:
    """The float teacher ``config.distill`` names, in eval mode, without gradients."""
    source = Path(config.distill)
    if source.is_dir() and not (source / FLOAT_MODEL_FILE).is_file():
        saved = ckpt.read_config(source)
        if saved.get("method") != "float":
            raise BinforgeError(
                f"--distill {source} is a {saved.get('method')} run without {FLOAT_MODEL_FILE}: "
                "the teacher must be a float run folder or a float state dict"
            )
        teacher_config = RunConfig.from_json(saved)
        if list(teacher_config.in_shape) != list(config.in_shape) or \
                teacher_config.num_classes != config.num_classes:  # fmt: skip
            raise BinforgeError(
                f"--distill {source} was trained on {teacher_config.in_shape} inputs and "
                f"{teacher_config.num_classes} classes, this run has {config.in_shape} and "
                f"{config.num_classes}: give a teacher trained on the same data"
            )
        teacher = _build_float_model(teacher_config)
        _load_into(teacher, ckpt.load_state_file(source / ckpt.MODEL_FILE, what="teacher model"),
                   str(source), teacher_config.arch)  # fmt: skip
    else:
        teacher = _build_float_model(config)
        _load_into(teacher, _float_state_from_init(str(source)), str(source), config.arch)
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def _config_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    # A key the saved configuration lacks is an option added since: it had its default.
    saved = {**RunConfig().to_json(), **saved}
    return [f"{k} (saved {saved.get(k)!r}, now {current.get(k)!r})"
            for k in current if saved.get(k) != current.get(k)]  # fmt: skip


def train(
    config: RunConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool | None = None,
    distributed: DistributedContext | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    sync_batch_norm: bool = True,
    tf32: bool = False,
) -> TrainResult:
    """Run (or resume) a training run into ``run_dir``.

    Parameters
    ----------
    config:
        The run's configuration; ``in_shape``, ``num_classes`` and ``classes``
        are filled in from the data set.
    run_dir:
        The run folder (created; an existing finished or unfinished run in it is
        an error unless ``resume``).
    resume:
        Continue from ``run_dir/checkpoint.pt``; the configuration must equal the saved one.
    stop_after_epochs:
        Return after this many epochs (of either phase) have run in this call,
        leaving a checkpoint to resume from: a planned interruption.
    progress:
        Show tqdm progress bars on stderr (None: only on a terminal); rank 0 only.
    distributed:
        This process's rank, the number of processes and the device
        (:func:`binforge.model.distributed.init_distributed`); None: one process on CPU.
    amp:
        ``"bf16"`` or ``"fp16"``: autocast the forward pass (CUDA only; fp16 with a
        gradient scaler). None: float32.
    channels_last:
        Model and input in channels-last memory format (faster convolutions on GPUs).
    sync_batch_norm:
        With several processes, batch-norm statistics over the global batch (the
        one-process result); False: each rank normalises with its own share.
    tf32:
        On CUDA, let float32 convolutions and matrix products use TF32. Off by default:
        the run then measures its accuracy with the float32 arithmetic of the CPU
        reference (:func:`binforge.model.distributed.float32_math`).
    """
    context = distributed or DistributedContext()
    with float32_math(context.device, allow_tf32=tf32):
        return _train(config, run_dir, resume=resume, stop_after_epochs=stop_after_epochs,
                      progress=progress, distributed=context, amp=amp,
                      channels_last=channels_last, sync_batch_norm=sync_batch_norm, tf32=tf32)


def _train(config: RunConfig, run_dir: str | os.PathLike, *, resume: bool,
           stop_after_epochs: int | None, progress: bool | None,
           distributed: DistributedContext, amp: str | None, channels_last: bool,
           sync_batch_norm: bool, tf32: bool) -> TrainResult:
    """:func:`train` under its float32 settings."""
    from tqdm import tqdm

    runtime = _Runtime(distributed, amp=amp, channels_last=channels_last,
                       sync_batch_norm=sync_batch_norm)  # fmt: skip
    if amp is not None:
        if amp not in AMP_MODES:
            raise BinforgeError(f"unknown --amp {amp!r}; use one of {', '.join(AMP_MODES)}")
        if runtime.device.type != "cuda":
            raise BinforgeError("--amp runs on CUDA only; drop --amp or use --device cuda")
        if amp == "fp16":
            runtime.scaler = torch.amp.GradScaler("cuda")
    main = runtime.dist.is_main
    run_dir = Path(run_dir)
    method = get_method(config.method)
    if config.arch not in ARCHS:
        raise BinforgeError(f"unknown architecture {config.arch!r}; use one of {', '.join(ARCHS)}")
    if config.epochs < 1 or config.float_epochs < 0 or config.batch_size < 1:
        raise BinforgeError("epochs and batch size must be positive, float epochs >= 0")
    if config.recalibrate_bn < 0:
        raise BinforgeError(f"--recalibrate-bn takes a number of batches >= 0 (0: off), "
                            f"not {config.recalibrate_bn}")  # fmt: skip

    if config.image_size is not None and config.image_size < 1:
        raise BinforgeError(f"image size must be a positive number of pixels, not {config.image_size}")
    train_split = _load_split(config, "train", config.limit_train)
    test_split = _load_split(config, "test", config.limit_test)
    dataset = train_split.dataset
    config.in_shape = [int(s) for s in dataset.shape]
    config.num_classes = int(dataset.num_classes)
    config.classes = [str(c) for c in dataset.classes]
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    teacher, distill_summary = None, None
    if config.distill is not None:
        if not method.binary:
            raise BinforgeError(f"--distill trains a binary network from a float teacher; "
                                f"--method {config.method} is not binary: drop --distill")  # fmt: skip
        if not 0.0 <= config.distill_weight <= 1.0 or config.distill_temperature <= 0:
            raise BinforgeError(
                f"--distill-weight must lie in [0, 1] and --distill-temperature be positive, "
                f"not {config.distill_weight} and {config.distill_temperature}"
            )
        teacher = runtime.place(_load_teacher(config))
        distill_summary = {"teacher": config.distill, "weight": config.distill_weight,
                           "temperature": config.distill_temperature,
                           "teacher_top1": _evaluate(teacher, test_split, runtime)}  # fmt: skip

    phases: list[tuple[str, int]] = []
    if not method.binary:
        phases.append(("float", config.epochs))
    else:
        if config.init is None:
            phases.append(("float", config.float_epochs))
        phases.append(("binary", config.epochs))

    state: dict[str, Any] | None = None
    if resume:
        state = ckpt.load_checkpoint(run_dir)
        mismatch = _config_mismatch(state["config"], config.to_json())
        if mismatch:
            raise BinforgeError(
                f"--resume with a different configuration than {run_dir} was started with: "
                f"{'; '.join(mismatch)}; repeat the original options"
            )
    else:
        if (run_dir / ckpt.CHECKPOINT_FILE).exists() or (run_dir / ckpt.CONFIG_FILE).exists():
            raise BinforgeError(
                f"{run_dir} already holds a run: add --resume to continue it or choose a new --out"
            )
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
        _seed_everything(config.seed)

    history: list[dict[str, Any]] = list(state["history"]) if state else []
    log: list[dict[str, Any]] = list(state["log"]) if state else []
    wall = float(state["wall_time"]) if state else 0.0
    epochs_this_call = 0
    t0 = time.perf_counter()
    show = (sys.stderr.isatty() if progress is None else progress) and main

    model: nn.Module | None = None
    context: MethodContext | None = None
    start_phase = state["phase"] if state else phases[0][0]
    start_epoch = int(state["epoch"]) if state else 0
    phase_names = [p for p, _ in phases]
    float_model: nn.Module | None = None

    for phase, phase_epochs in phases[phase_names.index(start_phase):]:
        resuming_here = state is not None and phase == start_phase
        first_epoch = start_epoch if resuming_here else 0
        total_steps = steps_per_epoch * phase_epochs
        if phase == "float":
            model = runtime.place(_build_float_model(config))
            optimizer = torch.optim.Adam(model.parameters(), lr=config.lr) if method.binary \
                else method.build_optimizer(model, config)
            phase_method = None
        else:
            if resuming_here:
                model = method.build_model(config, None)
            else:
                if float_model is None:
                    float_model = _build_float_model(config)
                    if config.init is not None:
                        _load_into(float_model, _float_state_from_init(config.init), config.init,
                                   config.arch)  # fmt: skip
                model = method.build_model(config, float_model.cpu())
            model = runtime.place(model)
            optimizer = method.build_optimizer(model, config)
            phase_method = method
        schedule = CosineSchedule(_torch_optimizers(optimizer), total_steps)
        context = MethodContext(model=model, optimizer=optimizer, config=config,
                                steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                log=log, run_dir=run_dir)  # fmt: skip
        if phase_method is not None:
            phase_method.start(context)
        if resuming_here:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            if phase_method is not None:
                phase_method.load_state_dict(state["method"])
            context.step = first_epoch * steps_per_epoch
            ckpt.set_rng_state(state["rng"])
        net = runtime.wrap(model)

        for epoch in range(first_epoch, phase_epochs):
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                return TrainResult(run_dir, None, {}, finished=False)
            context.epoch = epoch
            with tqdm(total=steps_per_epoch, desc=f"{phase} epoch {epoch + 1}/{phase_epochs}",
                      file=sys.stderr, disable=not show, leave=False) as bar:  # fmt: skip
                loss, train_top1 = _train_epoch(model, net, optimizer, schedule, phase_method,
                                                context, train_split, config, phase, epoch, bar,
                                                runtime, teacher if phase == "binary" else None)  # fmt: skip
            broadcast_buffers(model, runtime.dist)  # rank 0's statistics (--no-sync-bn)
            top1 = _evaluate(model, test_split, runtime)
            recalibration = None
            if phase == "binary" and epoch + 1 == phase_epochs and config.recalibrate_bn > 0:
                # before the checkpoint: a resume from it neither repeats nor skips this
                recalibration = _recalibrate(model, train_split, config, runtime, test_split, top1)
                top1 = recalibration["top1_after"]
            assert_replicas_equal(model, runtime.dist, f"{phase} epoch {epoch + 1}")
            history.append({
                "phase": phase, "epoch": epoch + 1,
                "global_epoch": len(history) + 1,
                "step": context.step if phase == "binary" else (epoch + 1) * steps_per_epoch,
                "train_loss": loss, "train_top1": train_top1, "test_top1": top1,
            })  # fmt: skip
            if recalibration is not None:
                history[-1]["bn_recalibration"] = recalibration
            epochs_this_call += 1
            wall_now = wall + time.perf_counter() - t0
            if main:
                print(f"{phase} epoch {epoch + 1}/{phase_epochs}: loss {loss:.4f}, "
                      f"train top-1 {train_top1:.2f}%, test top-1 {top1:.2f}%", file=sys.stderr)  # fmt: skip
                if recalibration is not None:
                    print(f"batch norm recalibrated over {recalibration['batches']} batches: "
                          f"test top-1 {recalibration['top1_before']:.2f}% -> "
                          f"{recalibration['top1_after']:.2f}%", file=sys.stderr)  # fmt: skip
                last_of_phase = epoch + 1 == phase_epochs
                if phase == "float" and last_of_phase and method.binary:
                    ckpt.save_state_atomic(_cpu_state(model), run_dir / FLOAT_MODEL_FILE)
                ckpt.save_checkpoint(run_dir, {
                    "config": config.to_json(), "phase": phase, "epoch": epoch + 1,
                    "model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "method": phase_method.state_dict() if phase_method is not None else {},
                    "rng": ckpt.rng_state(), "history": history, "log": log,
                    "wall_time": wall_now,
                })  # fmt: skip
                if log:
                    _write_log(run_dir / PRUNE_LOG_FILE, log)
            _barrier(runtime.dist)  # every rank returns or resumes from a written checkpoint
        restore_batch_norm(model)
        if phase == "float" and method.binary:
            float_model = model
        state = None  # later phases start afresh

    assert model is not None and context is not None
    wall = wall + time.perf_counter() - t0
    model.cpu()
    metrics = _final_metrics(config, model, method, context, history, wall)
    if distill_summary is not None:
        metrics["distill"] = distill_summary
    if runtime.dist.distributed or runtime.device.type != "cpu":
        metrics["runtime"] = {"world_size": runtime.dist.world_size, "device": runtime.device.type,
                              "backend": runtime.dist.backend, "amp": amp,
                              "tf32": tf32 and runtime.device.type == "cuda",
                              "channels_last": channels_last,
                              "sync_batch_norm": sync_batch_norm}  # fmt: skip
    if main:
        _write_outputs(run_dir, config, model, method, metrics, log)
    _barrier(runtime.dist)
    return TrainResult(run_dir, metrics["final_top1"], metrics, finished=True)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu() for key, value in model.state_dict().items()}


def _barrier(context: DistributedContext) -> None:
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()


def _write_log(path: Path, log: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in log))
    os.replace(tmp, path)


def _final_metrics(config: RunConfig, model: nn.Module, method: Method, context: MethodContext,
                   history: list[dict[str, Any]], wall: float) -> dict[str, Any]:  # fmt: skip
    summary = model_summary(model, config.in_shape)
    metrics: dict[str, Any] = {
        "method": config.method,
        "arch": config.arch,
        "data": config.data,
        "width": config.width,
        "M": config.M,
        "N": config.N,
        "use_bop": config.use_bop,
        "epochs": config.epochs,
        "seed": config.seed,
        "top1_per_epoch": [h["test_top1"] for h in history],
        "final_top1": history[-1]["test_top1"] if history else None,
        "history": history,
        "layers": summary["layers"],
        "bit_ops": summary["bit_ops"],
        "float_macs": summary["float_macs"],
        "scaling_factors": summary["scaling_factors"],
        "wall_time_s": round(wall, 3),
    }
    if history and "bn_recalibration" in history[-1]:
        metrics["bn_recalibration"] = dict(history[-1]["bn_recalibration"])
    if method.binary:
        metrics.update(method.summary(context))
    return metrics


def _write_outputs(run_dir: Path, config: RunConfig, model: nn.Module, method: Method,
                   metrics: dict[str, Any], log: list[dict[str, Any]]) -> None:  # fmt: skip
    ckpt.save_model(run_dir, model, config.to_json())
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    plot_training(metrics["history"], run_dir / "curves.png")
    if "pabt" in metrics:
        _write_log(run_dir / PRUNE_LOG_FILE, log)
        plot_pabt(metrics, run_dir / "pabt.png", title=f"{config.method} {config.arch}")
    write_report(run_dir, "train", method=config.method, arch=config.arch, data=config.data,
                 accuracy=metrics["final_top1"], bit_ops=metrics["bit_ops"],
                 scaling_factors=metrics["scaling_factors"],
                 bit_widths={r["name"]: [r["weight_bits"], r["act_bits"]]
                             for r in metrics["layers"]},
                 wall_time_s=metrics["wall_time_s"])  # fmt: skip

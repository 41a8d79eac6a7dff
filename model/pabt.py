"""PaBT: pruning binary convolutions of a multi-bit network down to a plain BNN.

Implements Sec. 3.4 and Algorithm 1 of the PaBT paper. Every MBN layer holds a
0/1 mask ``P_l`` (M x N) over its binary convolutions ``gamma_mn *
BinaryConv(W_m, A_n)`` (Eq. 9-10). Between the training steps ``t_start`` and
``t_end`` the pruner removes ``prune_total = sum_l M_l N_l psi`` binary
convolutions (``L x M x N x psi`` when every layer has the same M and N), one
decision every ``t_prune = (t_end - t_start) / prune_total`` steps:

- *derive*: the importance of each surviving op is Eq. 8,
  ``f = -kappa * u * gamma + 1/2 * v * gamma**2``, with ``u`` and ``v`` the first
  and second moments AMSGrad keeps for ``gamma_mn`` (binforge reads ``u`` =
  ``exp_avg`` and ``v`` = ``max_exp_avg_sq``, the second moment AMSGrad actually
  divides by). It is the second-order Taylor estimate of the loss increase when
  ``gamma_mn`` is set to zero, gradient ~ ``u`` and curvature ~ ``v``;
- *sort*: all surviving ops of all binary layers are ranked together;
- *impose*: the least important op gets ``p_mn = 0``.

A layer's last op is never pruned, so with the default
``psi = (M N - 1) / (M N)`` every layer ends at exactly one op (one gamma): a BNN.
When no surviving op of a layer uses weight base ``m`` (or activation base
``n``) that base is gone and the layer's bit-width drops ("base collapse").
PaBT-R (``criterion="random"``) picks uniformly among the same candidates on the
same schedule, from its own seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "PruneSchedule",
    "PruneDecision",
    "PaBTPruner",
    "importance_scores",
    "default_psi",
    "used_bases",
    "CRITERIA",
]

#: Pruning criteria: PaBT-I (Eq. 8 importance scores) and the PaBT-R ablation.
CRITERIA = ("importance", "random")


def default_psi(m: int, n: int) -> float:
    """The pruning ratio that takes an ``m x n`` layer to exactly one op: ``(mn - 1) / mn``."""
    if m < 1 or n < 1:
        raise ValueError(f"M and N must be positive, not {m!r} and {n!r}")
    return (m * n - 1) / (m * n)


def importance_scores(
    gamma: torch.Tensor, u: torch.Tensor, v: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """Eq. 8: ``f = -kappa * u * gamma + 0.5 * v * gamma**2`` elementwise.

    ``u`` and ``v`` are AMSGrad's first moment (``exp_avg``) and the maximum of
    its second moment (``max_exp_avg_sq``) for ``gamma``. A small ``f`` means a
    small estimated loss increase if the op is removed: the op to prune first.
    """
    if not (gamma.shape == u.shape == v.shape):
        raise ValueError(
            f"gamma, u and v must have the same shape, not {tuple(gamma.shape)}, "
            f"{tuple(u.shape)} and {tuple(v.shape)}"
        )
    gamma = gamma.detach().double()
    return -kappa * u.detach().double() * gamma + 0.5 * v.detach().double() * gamma * gamma


def used_bases(mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """The weight bases ``m`` and activation bases ``n`` some surviving op of ``mask`` still uses."""
    alive = mask.detach() != 0
    weight = [int(m) for m in torch.nonzero(alive.any(dim=1)).flatten()]
    act = [int(n) for n in torch.nonzero(alive.any(dim=0)).flatten()]
    return weight, act


@dataclass(frozen=True)
class PruneSchedule:
    """When Algorithm 1 prunes: ``prune_total`` decisions spread evenly over ``[t_start, t_end]``.

    Steps count optimizer steps of binary training from 1. The number of
    decisions due after step ``t`` is
    ``floor(prune_total * (t - t_start) / (t_end - t_start))`` (clamped to
    ``[0, prune_total]``): with an integer ``t_prune`` that is exactly one
    decision at every ``t_start + k * t_prune`` (the paper's
    ``t mod t_prune == 0`` counted from ``t_start``); with ``t_prune < 1``
    several decisions fall on one step; the last one is always at ``t_end``.

    Parameters
    ----------
    t_start, t_end:
        First and last step of the pruning phase, ``0 <= t_start < t_end``.
    prune_total:
        Number of binary convolutions to prune in all.
    """

    t_start: int
    t_end: int
    prune_total: int

    def __post_init__(self) -> None:
        if not (0 <= self.t_start < self.t_end):
            raise ValueError(
                f"the pruning phase needs 0 <= t_start < t_end, not t_start={self.t_start} "
                f"and t_end={self.t_end}"
            )
        if self.prune_total < 0:
            raise ValueError(f"prune_total must be >= 0, not {self.prune_total}")

    @classmethod
    def for_masks(
        cls, mask_sizes: Sequence[int], psi: float, t_start: int, t_end: int
    ) -> PruneSchedule:
        """Algorithm 1, line 2: ``prune_total = sum over layers of (M_l N_l) * psi``.

        ``prune_total`` is rounded to the nearest integer and capped at
        ``sum(M_l N_l - 1)``, the most that can go while every layer keeps one op.
        """
        if not 0.0 <= psi <= 1.0:
            raise ValueError(f"psi must lie in [0, 1], not {psi!r}")
        raw = sum(mask_sizes) * psi
        total = min(int(math.floor(raw + 0.5 + 1e-9)), sum(size - 1 for size in mask_sizes))
        return cls(t_start=t_start, t_end=t_end, prune_total=total)

    @property
    def t_prune(self) -> float:
        """Algorithm 1, line 3: steps between two decisions, ``(t_end - t_start) / prune_total``."""
        if self.prune_total == 0:
            return math.inf
        return (self.t_end - self.t_start) / self.prune_total

    def due(self, step: int) -> int:
        """Decisions that must have been made once training step ``step`` has run."""
        if step < self.t_start or self.prune_total == 0:
            return 0
        if step >= self.t_end:
            return self.prune_total
        return (self.prune_total * (step - self.t_start)) // (self.t_end - self.t_start)


@dataclass(frozen=True)
class PruneDecision:
    """One imposed pruning decision (one line of ``prune_log.jsonl``)."""

    step: int
    layer: str
    m: int
    n: int
    score: float | None
    criterion: str
    weight_bits: int
    act_bits: int
    surviving_ops: int
    collapsed_weight_bases: list[int] = field(default_factory=list)
    collapsed_act_bases: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


Moments = Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor]]


class PaBTPruner:
    """Algorithm 1's derive / sort / impose over a model's MBN layers.

    Parameters
    ----------
    layers:
        ``(name, layer)`` pairs; each layer has a ``gamma`` (M, N) parameter, a
        ``mask`` (M, N) 0/1 buffer and a ``prune(m, n)`` method.
    schedule:
        When to prune (:class:`PruneSchedule`).
    criterion:
        ``"importance"`` (PaBT-I, Eq. 8) or ``"random"`` (PaBT-R).
    kappa:
        The weighting of the first-order term in Eq. 8.
    seed:
        Seed of PaBT-R's generator (unused by PaBT-I).
    """

    def __init__(
        self,
        layers: Sequence[tuple[str, nn.Module]],
        schedule: PruneSchedule,
        *,
        criterion: str = "importance",
        kappa: float = 1.0,
        seed: int = 0,
    ) -> None:
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, not {criterion!r}")
        if not layers:
            raise ValueError("PaBT needs at least one MBN layer to prune")
        self.layers = list(layers)
        self.schedule = schedule
        self.criterion = criterion
        self.kappa = float(kappa)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.done = 0

    # -- Algorithm 1 ---------------------------------------------------------------
    def candidates(self) -> list[tuple[int, int, int]]:
        """Surviving ops that may go, as ``(layer index, m, n)``: never a layer's last op."""
        result = []
        for index, (_, layer) in enumerate(self.layers):
            alive = torch.nonzero(layer.mask.detach() != 0).tolist()
            if len(alive) > 1:
                result.extend((index, m, n) for m, n in alive)
        return result

    def derive(self, moments: Moments) -> dict[int, torch.Tensor]:
        """Eq. 8 importance scores of every layer (index -> (M, N) float64 tensor)."""
        scores = {}
        for index, (_, layer) in enumerate(self.layers):
            u, v = moments(layer)
            scores[index] = importance_scores(layer.gamma, u, v, self.kappa)
        return scores

    def select(self, moments: Moments | None) -> tuple[int, int, int, float | None] | None:
        """Sort and pick the op to prune: ``(layer index, m, n, score)``; None if nothing can go.

        PaBT-I takes the smallest score over all layers (ties: first layer, then
        row-major ``(m, n)``); PaBT-R draws uniformly from the same candidates.
        """
        candidates = self.candidates()
        if not candidates:
            return None
        if self.criterion == "random":
            pick = int(torch.randint(len(candidates), (1,), generator=self.generator))
            index, m, n = candidates[pick]
            return index, m, n, None
        if moments is None:
            raise ValueError("PaBT-I needs the optimizer's moments of gamma")
        scores = self.derive(moments)
        values = torch.tensor([float(scores[i][m, n]) for i, m, n in candidates], dtype=torch.float64)
        best = int(torch.argmin(values))  # argmin returns the first minimum
        index, m, n = candidates[best]
        return index, m, n, float(values[best])

    def impose(self, step: int, index: int, m: int, n: int, score: float | None) -> PruneDecision:
        """Set ``p_mn = 0`` in layer ``index`` and report the layer's new bit-widths."""
        name, layer = self.layers[index]
        weight_before, act_before = used_bases(layer.mask)
        layer.prune(m, n)
        weight_after, act_after = used_bases(layer.mask)
        self.done += 1
        return PruneDecision(
            step=int(step),
            layer=name,
            m=int(m),
            n=int(n),
            score=score,
            criterion=self.criterion,
            weight_bits=len(weight_after),
            act_bits=len(act_after),
            surviving_ops=int((layer.mask != 0).sum()),
            collapsed_weight_bases=sorted(set(weight_before) - set(weight_after)),
            collapsed_act_bases=sorted(set(act_before) - set(act_after)),
        )

    def step(self, step: int, moments: Moments | None = None) -> list[PruneDecision]:
        """Run after optimizer step ``step``: impose every decision the schedule has due."""
        decisions = []
        while self.done < self.schedule.due(step):
            choice = self.select(moments)
            if choice is None:
                break
            decisions.append(self.impose(step, *choice))
        return decisions

    # -- reporting and resuming ------------------------------------------------------
    def bit_widths(self) -> dict[str, tuple[int, int]]:
        """``{layer name: (weight bits, activation bits)}`` from the current masks."""
        result = {}
        for name, layer in self.layers:
            weight, act = used_bases(layer.mask)
            result[name] = (len(weight), len(act))
        return result

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs besides the masks (which live in the model's state dict)."""
        return {"done": self.done, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = int(state["done"])
        self.generator.set_state(state["generator"])

"""BOP for binary weights and the optimizer split (each parameter claimed by exactly one optimizer).

:class:`Bop` (Helwegen et al., PaBT Eqs. 6-7) keeps an exponential moving
average ``m`` of each binary weight's gradient and flips the weight when the
signal is strong (``|m| >= threshold``) and agrees in sign with the weight
(the gradient pushes the weight toward the other value). There is no latent
float weight.

:func:`build_optimizers` gives every parameter marked binary
(a layer's ``binary_parameters()``) to BOP and everything else
(scales, thresholds, batch norm, first and last layers) to AMSGrad, inside a
:class:`CaseOptimizer` that checks the split covers the model exactly once.

The "AMSGrad only" ablation (``use_bop=False``) trains the binary bases as
latent weights: the MBN layers binarize ``weight_bases`` with
:func:`~binforge.model.quant.sign_ste` in every forward pass (the identity,
with gradient 1, on +-1 values, so BOP training is unaffected), AMSGrad updates
them like any float parameter, and :class:`CaseOptimizer` clips them to
``[-1, 1]`` after each step (BinaryConnect), so the straight-through gradient
never dies. Their export is the sign of the latent value.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .layers import is_binary_parameter

__all__ = [
    "Bop",
    "CaseOptimizer",
    "split_parameters",
    "build_optimizers",
    "gamma_moments",
]


class Bop(torch.optim.Optimizer):
    """Binary optimizer: flip +-1 weights on a strong, consistent gradient (PaBT Eqs. 6-7).

    ``m <- (1 - gamma) m + gamma g``; flip ``w`` where ``|m| >= threshold`` and
    ``sign(m) == sign(w)``. ``m`` is ``state[p]["exp_avg"]``.

    Parameters
    ----------
    params:
        Parameters holding exactly +-1.
    threshold:
        tau, the flip threshold on ``|m|``.
    gamma:
        phi, the adaptivity rate of the moving average.

    ``threshold`` and ``gamma`` live in ``param_groups`` so schedules can change them.
    """

    def __init__(self, params: Iterable, threshold: float = 1e-8, gamma: float = 1e-4):
        if not threshold >= 0:
            raise ValueError(f"threshold must be non-negative, not {threshold!r}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], not {gamma!r}")
        super().__init__(params, {"threshold": threshold, "gamma": gamma})

    @torch.no_grad()
    def step(self, closure=None):
        """Update the moving averages and flip the weights that qualify."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            threshold, gamma = group["threshold"], group["gamma"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                m.mul_(1.0 - gamma).add_(p.grad, alpha=gamma)
                flip = (m.abs() >= threshold) & (torch.sign(m) == torch.sign(p))
                p.mul_(1.0 - 2.0 * flip.to(p.dtype))
        return loss


class CaseOptimizer:
    """Several optimizers acting as one, each model parameter claimed by exactly one.

    Parameters
    ----------
    model:
        The model whose trainable parameters must be covered.
    optimizers:
        Named optimizers (e.g. ``{"bop": ..., "amsgrad": ...}``).
    latent_clip:
        Parameters to clamp to ``[-1, 1]`` after every step (the latent binary
        weights of the AMSGrad-only ablation).

    Raises
    ------
    ValueError
        Naming the parameter, if one is claimed by two optimizers or by none.
    """

    def __init__(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                 latent_clip: Iterable[torch.Tensor] = ()):
        self.optimizers = dict(optimizers)
        self.latent_clip = list(latent_clip)
        owner: dict[int, str] = {}
        for opt_name, optimizer in self.optimizers.items():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if id(p) in owner:
                        raise ValueError(
                            f"parameter {_name_of(model, p)} is claimed by both "
                            f"{owner[id(p)]!r} and {opt_name!r}")
                    owner[id(p)] = opt_name
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in owner:
                raise ValueError(f"parameter {name} is claimed by no optimizer")

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()
        if self.latent_clip:
            with torch.no_grad():
                for p in self.latent_clip:
                    p.clamp_(-1.0, 1.0)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, expected {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


def _name_of(model: nn.Module, parameter: torch.Tensor) -> str:
    for name, p in model.named_parameters():
        if p is parameter:
            return name
    return f"<parameter of shape {tuple(parameter.shape)} outside the model>"


def split_parameters(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]],
                                                list[tuple[str, nn.Parameter]]]:
    """``(binary, other)`` named trainable parameters.

    Binary parameters are those a module lists in its ``binary_parameters()``
    (MBN layers: ``weight_bases``) and those flagged by ``mark_binary``.
    """
    binary_ids = {id(p) for module in model.modules()
                  if callable(getattr(module, "binary_parameters", None))
                  for p in module.binary_parameters()}
    binary, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_binary = id(p) in binary_ids or is_binary_parameter(p)
        (binary if is_binary else other).append((name, p))
    return binary, other


def build_optimizers(model: nn.Module, lr: float = 1e-3, bop_threshold: float = 1e-8,
                     bop_gamma: float = 1e-4, use_bop: bool = True) -> CaseOptimizer:
    """BOP for every binary weight base, AMSGrad for everything else.

    Parameters
    ----------
    model:
        The network.
    lr:
        AMSGrad learning rate.
    bop_threshold, bop_gamma:
        BOP's tau and phi.
    use_bop:
        False for the "AMSGrad only" ablation: binary bases become latent
        weights trained by AMSGrad (sign with straight-through gradient in the
        forward pass, clipped to ``[-1, 1]`` after each step).

    Returns
    -------
    CaseOptimizer
        With ``"amsgrad"`` and, when there are binary parameters and
        ``use_bop``, ``"bop"``.
    """
    binary, other = split_parameters(model)
    binary_params = [p for _, p in binary]
    optimizers: dict[str, torch.optim.Optimizer] = {}
    latent_clip: list[torch.Tensor] = []
    if use_bop:
        if binary_params:
            optimizers["bop"] = Bop(binary_params, threshold=bop_threshold, gamma=bop_gamma)
        adam_params = [p for _, p in other]
    else:
        adam_params = [p for _, p in other] + binary_params
        latent_clip = binary_params
    if adam_params:
        optimizers["amsgrad"] = torch.optim.Adam(adam_params, lr=lr, amsgrad=True)
    return CaseOptimizer(model, optimizers, latent_clip=latent_clip)


def gamma_moments(optimizer: CaseOptimizer | torch.optim.Optimizer,
                  layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """AMSGrad's moments of ``layer.gamma``: ``(u, v) = (exp_avg, max_exp_avg_sq)``, each (M, N).

    PaBT's importance scores (Eq. 8) use them. Before the first step both are
    zero (no gradient information yet).

    Raises
    ------
    ValueError
        If the layer has no operation-oriented ``gamma``, or no AMSGrad
        optimizer holds it.
    """
    gamma = getattr(layer, "gamma", None)
    if not isinstance(gamma, torch.Tensor):
        raise ValueError(f"{type(layer).__name__} has no operation-oriented gamma "
                         "(importance scores need scaling='operation')")
    candidates = (optimizer.optimizers.values() if isinstance(optimizer, CaseOptimizer)
                  else [optimizer])
    for opt in candidates:
        for group in opt.param_groups:
            if any(p is gamma for p in group["params"]):
                if not group.get("amsgrad", False):
                    raise ValueError("the optimizer holding gamma is not AMSGrad "
                                     "(torch.optim.Adam with amsgrad=True)")
                state = opt.state.get(gamma, {})
                if "exp_avg" not in state:
                    zeros = torch.zeros_like(gamma)
                    return zeros, zeros.clone()
                return state["exp_avg"], state["max_exp_avg_sq"]
    raise ValueError("no optimizer holds this layer's gamma")

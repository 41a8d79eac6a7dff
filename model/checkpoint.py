"""Checkpoints that resume a run exactly, and the run folder the compiler reads.

A training run folder ``RUN/`` holds

- ``checkpoint.pt``: everything ``binforge train --resume`` needs (model,
  optimizer and scheduler states, RNG states, epoch, pruning state), rewritten
  after every epoch through a temporary file and a rename, so it is always whole;
- ``model.pt`` (a plain state dict) and ``config.json`` (what the model is:
  architecture, input shape, classes, method, M, N, width, data): together they
  rebuild the trained model, which :func:`load_run` does.

Everything is read with ``torch.load(..., weights_only=True)``: no pickle.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from binforge.errors import BinforgeError

__all__ = [
    "CHECKPOINT_FILE",
    "MODEL_FILE",
    "CONFIG_FILE",
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "load_state_file",
    "save_state_atomic",
    "rng_state",
    "set_rng_state",
    "save_model",
    "load_run",
    "read_config",
]

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
#: Version tag stored in every checkpoint; a checkpoint without it is not binforge's.
CHECKPOINT_FORMAT = "binforge-checkpoint-1"


def save_state_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_state_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with every failure turned into a BinforgeError."""
    path = Path(path)
    if not path.is_file():
        raise BinforgeError(f"{what} {path} does not exist: train the run first or check the path")
    if not zipfile.is_zipfile(path):
        raise BinforgeError(
            f"{what} {path} is truncated or not a PyTorch file (no zip archive): "
            "re-run the training that writes it"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        culprit = f" ({found.group(1)})" if found else ""
        raise BinforgeError(
            f"{what} {path} holds objects other than tensors and plain containers{culprit}; "
            "refused, binforge never unpickles: use a file written by binforge"
        ) from None
    except Exception as exc:  # torch raises many types for damaged archives
        raise BinforgeError(
            f"{what} {path} is truncated or not a PyTorch file ({str(exc).splitlines()[0]}): "
            "re-run the training that writes it"
        ) from None


# --------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The torch, numpy and python RNG states, in weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))


# --------------------------------------------------------------------------------------
# Resumable checkpoints
# --------------------------------------------------------------------------------------


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``RUN/checkpoint.pt`` atomically (temporary file, then rename)."""
    path = Path(run_dir) / CHECKPOINT_FILE
    save_state_atomic({"format": CHECKPOINT_FORMAT, **state}, path)
    return path


def load_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``RUN/checkpoint.pt``; a file binforge did not write gives a BinforgeError."""
    path = Path(run_dir) / CHECKPOINT_FILE
    state = load_state_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise BinforgeError(
            f"{path} is not a binforge training checkpoint (no '{CHECKPOINT_FORMAT}' tag): "
            "start the run afresh without --resume"
        )
    return state


# --------------------------------------------------------------------------------------
# The run folder the compiler reads
# --------------------------------------------------------------------------------------


def save_model(run_dir: str | os.PathLike, model: nn.Module, config: dict[str, Any]) -> None:
    """Write ``RUN/model.pt`` (state dict) and ``RUN/config.json``, each atomically."""
    run_dir = Path(run_dir)
    save_state_atomic(model.state_dict(), run_dir / MODEL_FILE)
    tmp = run_dir / f".{CONFIG_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, run_dir / CONFIG_FILE)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/config.json`` as a dict, checked for the keys a model is rebuilt from."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise BinforgeError(f"{path} does not exist: {run_dir} is not a finished binforge run")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BinforgeError(f"{path} is not valid json ({exc}): re-run the training") from None
    missing = [k for k in ("arch", "in_shape", "num_classes", "method") if k not in config]
    if not isinstance(config, dict) or missing:
        raise BinforgeError(f"{path} lacks {', '.join(missing)}: re-run the training")
    return config


def load_run(run_dir: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from ``RUN/config.json`` and load ``RUN/model.pt`` into it.

    Returns the model in eval mode and the config dict. A missing, foreign or
    truncated file, or a state dict that does not fit the configured
    architecture, raises a :class:`BinforgeError` naming the problem.
    """
    from binforge.model.train import build_model_from_config  # the method registry lives there

    run_dir = Path(run_dir)
    if run_dir.is_file():
        run_dir = run_dir.parent
    config = read_config(run_dir)
    state = load_state_file(run_dir / MODEL_FILE, what="model file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BinforgeError(
            f"{run_dir / MODEL_FILE} is not a state dict of tensors: use the model.pt binforge "
            "train writes"
        )
    model = build_model_from_config(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 300:
            detail = detail[:300] + "..."
        raise BinforgeError(
            f"{run_dir / MODEL_FILE} does not fit a {config['arch']} {config['method']} model as "
            f"configured in {CONFIG_FILE} ({detail}): the checkpoint belongs to another architecture"
        ) from None
    model.eval()
    return model, config

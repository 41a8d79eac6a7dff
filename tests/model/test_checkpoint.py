"""Checkpoint files: atomic writes, weights-only loading, RNG states, clear errors."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from binforge.model.checkpoint import (
    load_checkpoint,
    load_state_file,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

from binforge.errors import BinforgeError


def _draws():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)])


def test_rng_state_round_trip_survives_a_weights_only_file(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    _draws()
    save_checkpoint(tmp_path, {"rng": rng_state()})
    expected = _draws()
    _draws()  # move every generator on
    set_rng_state(load_checkpoint(tmp_path)["rng"])
    assert _draws() == expected


def test_checkpoint_is_written_by_rename_and_leaves_no_temporary_file(tmp_path):
    path = save_checkpoint(tmp_path, {"epoch": 1, "model": {"w": torch.ones(2)}})
    save_checkpoint(tmp_path, {"epoch": 2, "model": {"w": torch.zeros(2)}})
    assert sorted(os.listdir(tmp_path)) == [path.name]
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.zeros(2))


class NotATensor:
    pass


def test_damaged_and_foreign_files_give_one_clear_error(tmp_path):
    with pytest.raises(BinforgeError, match="does not exist"):
        load_state_file(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(os.urandom(300))
    with pytest.raises(BinforgeError, match="truncated or not a PyTorch file"):
        load_state_file(tmp_path / "garbage.pt")
    torch.save({"x": NotATensor()}, tmp_path / "object.pt")
    with pytest.raises(BinforgeError, match="never unpickles"):
        load_state_file(tmp_path / "object.pt")
    torch.save({"epoch": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(BinforgeError, match="not a binforge training checkpoint"):
        load_checkpoint(tmp_path)
    data = (save_checkpoint(tmp_path, {"epoch": 1})).read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[:-40])
    with pytest.raises(BinforgeError, match="truncated"):
        load_checkpoint(tmp_path)

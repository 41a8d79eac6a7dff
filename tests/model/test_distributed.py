"""Data-parallel training: two gloo ranks on CPU equal one process; torchrun; the paper's loaders."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from binforge.model.distributed import (
    DistributedContext,
    SyncedBatchNorm2d,
    assert_replicas_equal,
    float32_math,
    launched_by_torchrun,
    resolve_device,
    restore_batch_norm,
    synchronize_batch_norm,
)
from binforge.model.train import PaBTMethod, RunConfig, register_method, train
from PIL import Image
from torch import nn

from binforge.errors import BinforgeError

# 155 random 1 x 8 x 8 images, global batches of 40 (20 per rank; the last 35 split 18/17,
# which checks the loss scaling for unequal shares): 4 steps per epoch; PaBT
# prunes 3 of the 2 x 2 ops of each of 2 layers between steps 1 and 7. Random pixels, not
# digits: digits' constant border pixels give first-layer weights a gradient that is exactly
# zero up to rounding, which Adam normalises into +-lr steps (rounding noise, amplified).
TINY = RunConfig(data="synthetic=1,8,8,4", arch="mlp", width=0.125, method="pabt-capture", M=2, N=2,
                 epochs=2, float_epochs=1, batch_size=40, limit_train=155, limit_test=120,
                 seed=3, t_start="1", t_end="7")  # fmt: skip


class CaptureMethod(PaBTMethod):
    """PaBT that also saves each rank's final model state (the loop writes rank 0's only)."""

    name = "pabt-capture"

    def summary(self, context):
        rank = dist.get_rank() if dist.is_initialized() else 0
        state = {k: v.detach().cpu().clone() for k, v in context.model.state_dict().items()}
        torch.save(state, context.run_dir.parent / f"{context.run_dir.name}.rank{rank}.pt")
        return super().summary(context)


register_method(CaptureMethod.name, CaptureMethod)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    register_method(CaptureMethod.name, CaptureMethod)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)  # fmt: skip
    try:
        context = DistributedContext(rank, world_size, rank, torch.device("cpu"), "gloo")
        root_path = Path(root)
        train(replace(TINY), root_path / "ddp", distributed=context, progress=False)
        # interrupted inside the binary phase, then resumed
        partial = train(replace(TINY), root_path / "resumed", distributed=context,
                        stop_after_epochs=2, progress=False)  # fmt: skip
        assert not partial.finished
        train(replace(TINY), root_path / "resumed", distributed=context, resume=True,
              progress=False)  # fmt: skip
        # the replica check: silent on equal replicas, names the tensor that differs
        probe = nn.Linear(2, 2)
        outcomes = []
        for value in (1.0, 1.0 + rank):
            with torch.no_grad():
                probe.weight.fill_(value)
                probe.bias.fill_(0.5)
            try:
                assert_replicas_equal(probe, context, "probe")
                outcomes.append("equal")
            except RuntimeError as exc:
                outcomes.append(str(exc))
        (root_path / f"probe.rank{rank}.json").write_text(json.dumps(outcomes))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    # The port is free when chosen but not reserved: another test's processes (pytest-xdist)
    # can take it before gloo's rendezvous, and a rank then aborts. Such a rank dies by a
    # signal; only that is tried again, on a new port (a worker's failed assertion is a
    # ProcessRaisedException and fails the fixture at once).
    for attempt in range(3):
        try:
            mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2, join=True)
            break
        except mp.ProcessExitedException as exc:
            if exc.signal_name is None or attempt == 2:
                raise
            shutil.rmtree(root)
            root.mkdir()
    train(replace(TINY), root / "single", progress=False)
    return root


def _load(path):
    return torch.load(path, weights_only=True)


def test_two_ranks_end_with_identical_masks_and_weights(runs):
    for name in ("ddp", "resumed"):
        rank0, rank1 = _load(runs / f"{name}.rank0.pt"), _load(runs / f"{name}.rank1.pt")
        assert rank0.keys() == rank1.keys()
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), (name, key)


def test_replica_check_names_the_tensor_that_differs(runs):
    for rank in (0, 1):
        equal, differing = json.loads((runs / f"probe.rank{rank}.json").read_text())
        assert equal == "equal"
        assert differing.startswith("probe: rank ") and "disagree on weight" in differing
        assert "bias" not in differing


def test_two_ranks_match_one_process_with_the_same_global_batch(runs):
    ddp, single = _load(runs / "ddp.rank0.pt"), _load(runs / "single.rank0.pt")
    assert ddp.keys() == single.keys()
    masks = [k for k in ddp if k.endswith("mask")]
    bases = [k for k in ddp if k.endswith("weight_bases")]
    assert masks and bases
    for key in masks + bases:  # discrete: PaBT decisions and BOP flips are the same
        assert torch.equal(ddp[key], single[key]), key
    assert any(float(single[k].sum()) < single[k].numel() for k in masks)  # something was pruned
    for key in ddp:  # gamma, thresholds, batch norm (running statistics too), float layers
        if ddp[key].is_floating_point():
            torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(ddp[key], single[key]), key
    # rank 0 wrote the run folder; the same pruning log and per-epoch accuracies
    ddp_log = (runs / "ddp" / "prune_log.jsonl").read_text().splitlines()
    single_log = (runs / "single" / "prune_log.jsonl").read_text().splitlines()
    key = lambda line: {k: v for k, v in json.loads(line).items() if k != "score"}  # noqa: E731
    assert [key(x) for x in ddp_log] == [key(x) for x in single_log]
    ddp_metrics = json.loads((runs / "ddp" / "metrics.json").read_text())
    single_metrics = json.loads((runs / "single" / "metrics.json").read_text())
    assert ddp_metrics["top1_per_epoch"] == single_metrics["top1_per_epoch"]
    # batch-norm recalibration over the same 4 global batches (synced statistics)
    assert ddp_metrics["bn_recalibration"] == single_metrics["bn_recalibration"]
    assert ddp_metrics["bn_recalibration"]["batches"] == 4
    assert ddp_metrics["runtime"]["world_size"] == 2 and "runtime" not in single_metrics
    assert not list((runs / "ddp").glob(".*tmp*"))


def test_resume_under_ddp_equals_the_uninterrupted_run(runs):
    a, b = _load(runs / "ddp.rank0.pt"), _load(runs / "resumed.rank0.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _load(runs / "ddp" / "model.pt").keys() == a.keys()


def test_torchrun_runs_the_cli_with_two_gloo_processes(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "binforge", "train", "--data", "digits", "--arch", "mlp", "--width", "0.125",
               "--method", "bop", "--M", "1", "--N", "1", "--float-epochs", "1", "--epochs", "1",
               "--batch-size", "40", "--limit-train", "80", "--limit-test", "40", "--device", "cpu",
               "--no-sync-bn",
               "--out", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("top-1") == 1  # rank 0 alone prints the summary
    assert "on 2 processes" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "train"
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()
    runtime = json.loads((out / "metrics.json").read_text())["runtime"]
    assert runtime == {"world_size": 2, "device": "cpu", "backend": "gloo", "amp": None, "tf32": False,
                       "channels_last": False, "sync_batch_norm": False}  # fmt: skip


# --------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------


def test_device_and_amp_choices(tmp_path, monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(BinforgeError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BinforgeError, match="needs a CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BinforgeError, match="CUDA only"):
        train(replace(TINY, method="bop"), tmp_path / "amp", amp="bf16")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched_by_torchrun()


def test_float32_math_holds_cuda_to_float32_and_restores_the_settings():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        with float32_math("cuda"):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
        cudnn.allow_tf32 = matmul.allow_tf32 = False
        with float32_math(torch.device("cuda", 0), allow_tf32=True):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        cudnn.allow_tf32 = True
        with pytest.raises(RuntimeError, match="inside"), float32_math("cuda"):
            raise RuntimeError("inside")
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, False)
        with float32_math("cpu"):  # the CPU has no TF32: nothing changes
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, False)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_train_runs_under_float32_math_for_its_device(tmp_path, monkeypatch):
    import binforge.model.train as train_module

    calls = []
    real = train_module.float32_math

    def spy(device, allow_tf32=False):
        calls.append((torch.device(device).type, allow_tf32))
        return real(device, allow_tf32)

    monkeypatch.setattr(train_module, "float32_math", spy)
    train(replace(TINY, method="bop", epochs=1), tmp_path / "a", tf32=True)
    train(replace(TINY, method="bop", epochs=1), tmp_path / "b")
    assert calls == [("cpu", True), ("cpu", False)]


def test_synced_batch_norm_is_plain_batch_norm_without_a_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(64))
    reference = nn.Sequential(*[m for m in model])  # same modules
    x = torch.randn(5, 3, 6, 6)
    expected = reference(x).detach().clone()
    bn = model[1]
    assert synchronize_batch_norm(model) == 2 and type(bn) is SyncedBatchNorm2d
    assert model[1] is bn  # same module, same parameters: optimizers keep working
    torch.testing.assert_close(model(x), expected)
    assert restore_batch_norm(model) == 2 and type(model[1]) is nn.BatchNorm2d


# --------------------------------------------------------------------------------------
# the paper's data sets by path: a few steps on generated files
# --------------------------------------------------------------------------------------


def _write_cifar_binary(folder: Path, per_batch: int = 4) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=(per_batch, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        (folder / f"{stem}.bin").write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())


def test_resnet20_trains_on_cifar10_binary_batches(tmp_path):
    _write_cifar_binary(tmp_path / "c10")
    config = RunConfig(data=f"cifar10={tmp_path / 'c10'}", arch="resnet20", width=0.25,
                       method="bop", M=1, N=1, epochs=1, float_epochs=0, batch_size=20,
                       augment=True, seed=1)  # fmt: skip
    result = train(config, tmp_path / "run", progress=False, channels_last=True)
    assert result.finished and len(result.metrics["history"]) == 1
    assert result.metrics["history"][0]["step"] == 1  # 20 training images: one step
    assert config.in_shape == [3, 32, 32] and config.num_classes == 10
    assert (tmp_path / "run" / "model.pt").is_file()


def test_resnet18_trains_on_an_image_folder_at_a_small_size(tmp_path):
    for split in ("train", "val"):
        for k, name in enumerate(("ant", "bee")):
            folder = tmp_path / "imgs" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = np.full((40, 48, 3), 60 * k + 20 * i, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    for arch in ("resnet18", "resnet18-bireal"):
        config = RunConfig(data=f"folder={tmp_path / 'imgs'}", arch=arch, width=0.0625,
                           method="bop", M=1, N=1, epochs=1, float_epochs=0, batch_size=4,
                           image_size=32)  # fmt: skip
        result = train(config, tmp_path / arch, progress=False)
        assert result.finished and result.metrics["history"][0]["step"] == 1
        assert config.in_shape == [3, 32, 32] and config.classes == ["ant", "bee"]

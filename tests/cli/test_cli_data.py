"""``binforge data info``: the summary it prints, the report it writes, its errors."""

from __future__ import annotations

import json

import numpy as np

from binforge.cli import main


def test_data_info_digits_prints_summary_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "info", "digits"]) == 0
    out = capsys.readouterr().out
    assert "1x8x8 uint8" in out
    assert "train      1437 images" in out and "test       360 images" in out
    assert "classes    10: 0, 1, 2" in out
    assert "scikit-learn" in out
    assert list(tmp_path.iterdir()) == []


def test_data_info_writes_report_with_out(capsys, tmp_path):
    out_dir = tmp_path / "info"
    assert main(["data", "info", "synthetic=3,4,4,5", "--seed", "2", "--out", str(out_dir)]) == 0
    report = json.loads((out_dir / "report.json").read_text())
    assert report["command"] == "data info"
    assert report["shape"] == [3, 4, 4] and report["num_classes"] == 5
    assert (report["train_size"], report["test_size"]) == (5 * 256, 5 * 64)
    assert report["source"] == "generated (seed 2)"
    assert "report.json" in capsys.readouterr().out


def test_data_info_cifar_pickle_needs_the_flag(capsys, tmp_path):
    import pickle

    folder = tmp_path / "py"
    folder.mkdir()
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [4]}
        (folder / stem).write_bytes(pickle.dumps(batch))
    assert main(["data", "info", f"cifar10={folder}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("binforge: error: ") and "--allow-pickle" in err
    assert main(["data", "info", f"cifar10={folder}", "--allow-pickle"]) == 0
    assert "train      5 images" in capsys.readouterr().out


def test_data_info_unknown_name_exits_2(capsys, tmp_path):
    assert main(["data", "info", "imagenet", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "binforge: error: unknown data set 'imagenet'; use one of digits, fashion-mnist, "
        "cifar10, folder, synthetic (cifar10 and folder need =PATH)"
    )
    assert not (tmp_path / "x").exists()


def test_data_info_missing_fashion_mnist_names_the_fix(capsys, tmp_path):
    assert main(["data", "info", f"fashion-mnist={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install -y dataset-fashion-mnist" in err
    assert "give fashion-mnist=PATH" in err
    assert err.count("\n") == 1


def test_shared_data_options_give_load_dataset_arguments():
    import argparse

    from binforge.model.data import load_dataset

    from binforge.commands.data import add_data_options, data_options

    parser = argparse.ArgumentParser()
    add_data_options(parser)
    args = parser.parse_args([])
    assert args.data == "digits"
    assert data_options(args) == {"allow_pickle": False, "image_size": 224}
    args = parser.parse_args(
        ["--data", "synthetic=1,4,4,3", "--image-size", "32", "--allow-pickle"]
    )
    assert data_options(args) == {"allow_pickle": True, "image_size": 32}
    assert load_dataset(args.data, "test", **data_options(args)).shape == (1, 4, 4)

"""Data loaders: shapes, dtypes, classes, file-format checks, augmentation, pixel map."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from binforge.compiler.ir import pixel_planes
from binforge.model.data import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ArrayImageDataset,
    FolderImageDataset,
    augment_batch,
    batch_to_input,
    collate_to_input,
    dataset_info,
    iterate_batches,
    load_dataset,
    parse_spec,
    pixels_to_input,
    read_cifar10_binary,
    read_idx,
)
from PIL import Image

from binforge.errors import BinforgeError

# --------------------------------------------------------------------------------------
# helpers that write small files in the formats the loaders parse
# --------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_like(folder, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
            f.write(idx_bytes(images, 2051))
        with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
            f.write(idx_bytes(labels, 2049))
        arrays[prefix] = (images, labels)
    return arrays


def cifar_records(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return labels, pixels, np.concatenate([labels[:, None], pixels], axis=1).tobytes()


def write_cifar_binary(folder, per_batch=3):
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for k, stem in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        labels, pixels, raw = cifar_records(per_batch, seed=k)
        (folder / f"{stem}.bin").write_bytes(raw)
        expected[stem] = (labels, pixels)
    return expected


def write_png_folder(root, classes=("cat", "dog", "emu"), per_class=2, size=(20, 12)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")


# --------------------------------------------------------------------------------------
# pixels_to_input
# --------------------------------------------------------------------------------------


def test_pixels_to_input_is_exactly_2x_minus_255_over_255():
    x = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    y = pixels_to_input(x)
    assert y.dtype == torch.float32
    expected = torch.tensor([(2 * v - 255) / 255 for v in range(256)], dtype=torch.float64)
    assert torch.equal(y, expected.to(torch.float32))
    assert y[0] == -1.0 and y[255] == 1.0
    # the first float conv pads with -1: that is pixel 0
    assert pixels_to_input(torch.zeros(1, dtype=torch.uint8)).item() == -1.0


def test_pixels_to_input_matches_the_hardware_bit_planes():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    planes = pixel_planes(pixels)  # (1, 8, 1, 16, 16), bit 1 = +1, bit 0 = -1
    digits = planes.astype(np.int64) * 2 - 1
    value = sum((1 << i) * digits[:, i] for i in range(8))
    assert np.array_equal(value, 2 * pixels.astype(np.int64) - 255)
    expected = torch.from_numpy(value.astype(np.float32)) / 255.0
    assert torch.equal(pixels_to_input(pixels), expected)


def test_pixels_to_input_refuses_non_uint8():
    with pytest.raises(ValueError, match="pixels must be uint8, not torch.float32"):
        pixels_to_input(torch.zeros(3))


def test_collate_to_input_converts_per_batch():
    ds = load_dataset("synthetic", "test", limit=6)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_to_input)
    inputs, labels = next(iter(loader))
    assert inputs.shape == (4, 1, 8, 8) and inputs.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert torch.equal(inputs, batch_to_input(torch.from_numpy(ds.images[:4])))
    assert torch.equal(labels, torch.from_numpy(ds.labels[:4]))


# --------------------------------------------------------------------------------------
# real data sets
# --------------------------------------------------------------------------------------


def test_digits_shapes_split_and_pixels():
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert isinstance(train, ArrayImageDataset)
    assert (len(train), len(test)) == (1437, 360)
    assert train.shape == (1, 8, 8) and train.num_classes == 10
    assert train.images.dtype == np.uint8 and train.images.shape == (1437, 1, 8, 8)
    assert train.labels.dtype == np.int64
    # stratified: every class in both splits, test about a fifth of each class
    counts = np.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # 0..16 scaled to 0..255: the only values are round(k * 255 / 16)
    allowed = {int(np.floor(k * 255 / 16 + 0.5)) for k in range(17)}
    assert set(np.unique(train.images).tolist()) <= allowed
    assert train.images.max() == 255
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8) and isinstance(label, int)


def test_digits_split_is_deterministic_and_disjoint():
    a = load_dataset("digits", "test")
    b = load_dataset("digits", "test", seed=5)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    train = load_dataset("digits", "train")
    train_rows = {
        row.tobytes() + bytes([lab]) for row, lab in zip(train.images, train.labels, strict=True)
    }
    test_rows = {row.tobytes() + bytes([lab]) for row, lab in zip(a.images, a.labels, strict=True)}
    # sklearn's digits has a few exact duplicates; the split must not copy rows across
    assert len(test_rows - train_rows) >= 350


def test_fashion_mnist_real_files():
    # the Debian package dataset-fashion-mnist (installed by `make`)
    test = load_dataset("fashion-mnist", "test")
    assert len(test) == 10000 and test.shape == (1, 28, 28)
    assert test.images.dtype == np.uint8 and test.images.shape == (10000, 1, 28, 28)
    assert test.classes == FASHION_MNIST_CLASSES and test.num_classes == 10
    assert np.array_equal(np.bincount(test.labels), np.full(10, 1000))
    assert test.source == str(FASHION_MNIST_DIR)
    train = load_dataset("fashion-mnist", "train", limit=100)
    assert len(train) == 100 and train.images.shape == (100, 1, 28, 28)
    assert len(load_dataset(f"fashion-mnist={FASHION_MNIST_DIR}", "train")) == 60000


# --------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_a_path_gzip_or_plain(tmp_path, gz):
    arrays = write_fashion_like(tmp_path / "fm", gz=gz)
    ds = load_dataset(f"fashion-mnist={tmp_path / 'fm'}", "train")
    images, labels = arrays["train"]
    assert np.array_equal(ds.images[:, 0], images)
    assert np.array_equal(ds.labels, labels.astype(np.int64))
    test = load_dataset("fashion-mnist", "test", root=tmp_path / "fm")
    assert len(test) == 5 and test.source == str(tmp_path / "fm")


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8), 2049 + 2))
    with pytest.raises(BinforgeError, match="has IDX magic number 2051, not 2049"):
        read_idx(path, magic=2049)


def test_idx_truncated_plain_and_gzip(tmp_path):
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8), 2051)
    plain = tmp_path / "plain"
    plain.write_bytes(raw[:-10])
    with pytest.raises(
        BinforgeError, match=r"is truncated: 2358 bytes where dimensions \(3, 28, 28\) need 2368"
    ):
        read_idx(plain, magic=2051)
    packed = gzip.compress(raw)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(BinforgeError, match="gzip stream is truncated or damaged"):
        read_idx(gz, magic=2051)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(raw[:6])
    with pytest.raises(BinforgeError, match="truncated inside its IDX header"):
        read_idx(tiny, magic=2051)


def test_idx_mismatched_pair(tmp_path):
    folder = tmp_path / "fm"
    write_fashion_like(folder, gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8), 2049))
    with pytest.raises(BinforgeError, match="holds 12 images but .* holds 3 labels"):
        load_dataset(f"fashion-mnist={folder}", "train")


def test_fashion_mnist_missing_path_names_the_fix(tmp_path):
    with pytest.raises(BinforgeError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist={tmp_path / 'nowhere'}", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BinforgeError, match="t10k-images-idx3-ubyte.*give fashion-mnist=PATH"):
        load_dataset(f"fashion-mnist={tmp_path / 'empty'}", "test")


# --------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------


def test_cifar10_binary_batches(tmp_path):
    expected = write_cifar_binary(tmp_path / "c10")
    train = load_dataset(f"cifar10={tmp_path / 'c10'}", "train")
    test = load_dataset(f"cifar10={tmp_path / 'c10'}", "test")
    assert len(train) == 15 and len(test) == 3
    assert train.shape == (3, 32, 32) and train.classes == CIFAR10_CLASSES
    labels, pixels = expected["test_batch"]
    assert np.array_equal(test.labels, labels.astype(np.int64))
    # record layout: 1024 red, then green, then blue, row-major
    assert np.array_equal(test.images[:, 0, 0, :], pixels[:, :32])
    assert np.array_equal(test.images[:, 1, 0, 0], pixels[:, 1024])
    assert np.array_equal(test.images[:, 2, 31, 31], pixels[:, 3071])
    labels1, _ = expected["data_batch_1"]
    assert np.array_equal(train.labels[:3], labels1.astype(np.int64))


def test_cifar10_batches_in_the_official_subfolder_with_meta(tmp_path):
    folder = tmp_path / "dl" / "cifar-10-batches-bin"
    write_cifar_binary(folder)
    names = [f"name{k}" for k in range(10)]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    ds = load_dataset(f"cifar10={tmp_path / 'dl'}", "test")
    assert ds.classes == tuple(names) and ds.source == str(folder)


def test_cifar10_truncated_batch(tmp_path):
    _, _, raw = cifar_records(2, seed=0)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(raw[:-1])
    with pytest.raises(BinforgeError, match="6145 bytes, not a whole number of 3073-byte"):
        read_cifar10_binary(path)
    write_cifar_binary(tmp_path / "c10")
    (tmp_path / "c10" / "data_batch_3.bin").write_bytes(raw[:100])
    with pytest.raises(BinforgeError, match="data_batch_3.bin is 100 bytes"):
        load_dataset(f"cifar10={tmp_path / 'c10'}", "train")


def test_cifar10_bad_label(tmp_path):
    _, _, raw = cifar_records(1, seed=0)
    path = tmp_path / "b.bin"
    path.write_bytes(bytes([57]) + raw[1:])
    with pytest.raises(BinforgeError, match="has label 57"):
        read_cifar10_binary(path)


def test_cifar10_needs_a_path_and_the_batches(tmp_path):
    with pytest.raises(BinforgeError, match="CIFAR-10 needs a path: give cifar10=PATH"):
        load_dataset("cifar10", "test")
    (tmp_path / "c10").mkdir()
    with pytest.raises(BinforgeError, match="no CIFAR-10 batches"):
        load_dataset(f"cifar10={tmp_path / 'c10'}", "test")
    write_cifar_binary(tmp_path / "c10")
    (tmp_path / "c10" / "data_batch_4.bin").unlink()
    with pytest.raises(BinforgeError, match="data_batch_4.bin is missing"):
        load_dataset(f"cifar10={tmp_path / 'c10'}", "train")


def write_cifar_pickle(folder, payload=None, protocol=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = payload or {
            b"data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8),
            b"labels": [3, 7],
        }
        raw = pickle.dumps(batch, protocol=protocol)
        if protocol == 2:
            # the official batches were written by numpy 1 (module numpy.core)
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            assert b"numpy.core.multiarray\n_reconstruct" in raw
        (folder / stem).write_bytes(raw)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_pickle_only_when_allowed(tmp_path, protocol):
    write_cifar_pickle(tmp_path / "py", protocol=protocol)
    with pytest.raises(BinforgeError, match="python-pickle batches.*--allow-pickle"):
        load_dataset(f"cifar10={tmp_path / 'py'}", "test")
    ds = load_dataset(f"cifar10={tmp_path / 'py'}", "test", allow_pickle=True)
    assert ds.images.shape == (2, 3, 32, 32) and ds.labels.tolist() == [3, 7]
    assert len(load_dataset(f"cifar10={tmp_path / 'py'}", "train", allow_pickle=True)) == 10


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_pickle_refuses_foreign_objects(tmp_path):
    write_cifar_pickle(tmp_path / "py", payload={b"data": Evil(), b"labels": [1]})
    with pytest.raises(BinforgeError, match="refusing to load builtins.print"):
        load_dataset(f"cifar10={tmp_path / 'py'}", "test", allow_pickle=True)


# --------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------


def test_folder_loader_resizes_and_crops(tmp_path):
    write_png_folder(tmp_path / "imgs")
    ds = load_dataset(f"folder={tmp_path / 'imgs'}", "train", image_size=8)
    assert isinstance(ds, FolderImageDataset)
    assert not hasattr(ds, "images")
    assert ds.classes == ("cat", "dog", "emu") and ds.num_classes == 3
    assert len(ds) == 6 and ds.shape == (3, 8, 8)
    # interleaved across classes so that a prefix covers every class
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2]
    image, label = ds[4]
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8) and label == 1
    images, labels = ds.as_arrays()
    assert images.shape == (6, 3, 8, 8) and images.dtype == np.uint8
    assert np.array_equal(labels, ds.labels)
    test = load_dataset(f"folder={tmp_path / 'imgs'}", "test", image_size=8, limit=2)
    assert len(test) == 2 and test.labels.tolist() == [0, 1]


def test_folder_center_crop_keeps_the_middle(tmp_path):
    # a wide image: left third red, middle third green, right third blue
    pixels = np.zeros((30, 90, 3), np.uint8)
    pixels[:, :30, 0] = pixels[:, 30:60, 1] = pixels[:, 60:, 2] = 255
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / split / "a" / "x.png")
    image, _ = load_dataset(f"folder={tmp_path}", "test", image_size=14)[0]
    assert image.shape == (3, 14, 14)
    assert image[1].min() == 255 and image[0].max() == 0 and image[2].max() == 0


def test_folder_errors(tmp_path):
    with pytest.raises(BinforgeError, match="needs a path"):
        load_dataset("folder", "train")
    (tmp_path / "flat" / "cat").mkdir(parents=True)
    with pytest.raises(BinforgeError, match="has no train/ subfolder"):
        load_dataset(f"folder={tmp_path / 'flat'}", "train")
    write_png_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "val" / "yak").mkdir()
    with pytest.raises(BinforgeError, match="class folder 'yak' that train/ lacks"):
        load_dataset(f"folder={tmp_path / 'imgs'}", "test")
    bad = tmp_path / "imgs" / "train" / "cat" / "9.png"
    bad.write_bytes(b"not a png")
    ds = load_dataset(f"folder={tmp_path / 'imgs'}", "train", image_size=4)
    with pytest.raises(BinforgeError, match="cannot decode image .*9.png"):
        ds.as_arrays()


# --------------------------------------------------------------------------------------
# synthetic data, augmentation, specs
# --------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_shaped():
    a = load_dataset("synthetic", "train", seed=3)
    b = load_dataset("synthetic", "train", seed=3)
    c = load_dataset("synthetic", "train", seed=4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.shape == (1, 8, 8) and a.num_classes == 4 and len(a) == 1024
    assert np.array_equal(np.bincount(a.labels), np.full(4, 256))
    custom = load_dataset("synthetic=3,6,5,7", "test")
    assert custom.images.shape == (7 * 64, 3, 6, 5) and custom.num_classes == 7


def test_synthetic_classes_are_learnable():
    # nearest class mean from the train split classifies the test split well
    train = load_dataset("synthetic", "train")
    test = load_dataset("synthetic", "test")
    x_train = train.images.reshape(len(train), -1).astype(np.float64)
    x_test = test.images.reshape(len(test), -1).astype(np.float64)
    means = np.stack([x_train[train.labels == k].mean(0) for k in range(4)])
    predicted = np.argmin(((x_test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    accuracy = (predicted == test.labels).mean()
    assert accuracy > 0.9
    # test images are not copies of train images
    assert not set(map(bytes, test.images)) & set(map(bytes, train.images))


def test_synthetic_bad_geometry():
    with pytest.raises(BinforgeError, match="is not C,H,W,K"):
        load_dataset("synthetic=1,8,8", "train")
    with pytest.raises(BinforgeError, match="is not C,H,W,K"):
        load_dataset("synthetic=1,8,8,1", "train")


def test_augment_batch_shapes_crops_and_flips():
    g = torch.Generator().manual_seed(0)
    images = torch.arange(2 * 3 * 5 * 6, dtype=torch.int64).remainder(250).add(1).to(torch.uint8)
    images = images.reshape(2, 3, 5, 6)
    out = augment_batch(images.repeat(200, 1, 1, 1), generator=g)
    assert out.shape == (400, 3, 5, 6) and out.dtype == torch.uint8
    # every output is a shifted (maybe flipped) window of the zero-padded input
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    seen_flip = seen_plain = False
    for k in range(40):
        src = padded[k % 2]
        windows = [src[:, dy : dy + 5, dx : dx + 6] for dy in range(9) for dx in range(9)]
        plain = any(torch.equal(out[k], w) for w in windows)
        flipped = any(torch.equal(out[k], w.flip(-1)) for w in windows)
        assert plain or flipped
        seen_plain |= plain and not torch.equal(out[k], out[k].flip(-1))
        seen_flip |= flipped
    assert seen_plain and seen_flip
    assert torch.equal(augment_batch(images, padding=0, generator=g).sum(), images.sum())


def test_augmented_dataset_items():
    torch.manual_seed(0)
    ds = load_dataset("digits", "train", augment=True, limit=50)
    image, label = ds[3]
    assert image.shape == (1, 8, 8) and image.dtype == torch.uint8
    assert label == int(ds.labels[3])
    changed = sum(not torch.equal(ds[i][0], torch.from_numpy(ds.images[i])) for i in range(50))
    assert changed > 25
    plain = load_dataset("digits", "train", limit=50)
    assert torch.equal(plain[3][0], torch.from_numpy(plain.images[3]))


def test_specs_and_unknown_names():
    assert str(parse_spec("fashion-mnist=/x/y")) == "fashion-mnist=/x/y"
    assert parse_spec("digits").argument is None
    with pytest.raises(
        BinforgeError, match="unknown data set 'mnist'; use one of digits, fashion-mnist"
    ):
        load_dataset("mnist", "train")
    with pytest.raises(BinforgeError, match="unknown split 'val'"):
        load_dataset("digits", "val")
    with pytest.raises(BinforgeError, match="limit must be a positive"):
        load_dataset("digits", "test", limit=0)
    with pytest.raises(BinforgeError, match="takes no path"):
        load_dataset("digits=/tmp", "test")


def test_dataset_info_digits():
    info = dataset_info("digits")
    assert info["shape"] == [1, 8, 8] and info["num_classes"] == 10
    assert (info["train_size"], info["test_size"]) == (1437, 360)
    assert sum(info["test_class_counts"]) == 360
    assert info["source"] == "scikit-learn load_digits"


def test_iterate_batches_covers_every_image_once():
    ds = load_dataset("synthetic", "test", limit=10)
    batches = list(iterate_batches(ds, 4, as_input=False))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b for b, _ in batches]), torch.from_numpy(ds.images))
    g = torch.Generator().manual_seed(1)
    shuffled = list(iterate_batches(ds, 4, shuffle=True, generator=g, drop_last=True))
    assert [len(labels) for _, labels in shuffled] == [4, 4]
    inputs = torch.cat([x for x, _ in shuffled])
    labels = torch.cat([y for _, y in shuffled])
    assert inputs.dtype == torch.float32
    # each (input, label) pair is one of the data set's, none twice
    pairs = {(pixels_to_input(img).numpy().tobytes(), int(lab)) for img, lab in
             zip(ds.images, ds.labels, strict=True)}  # fmt: skip
    got = [(x.numpy().tobytes(), int(y)) for x, y in zip(inputs, labels, strict=True)]
    assert len(set(got)) == 8 and set(got) <= pairs


def test_iterate_batches_augments_and_reads_folders(tmp_path):
    ds = load_dataset("digits", "test", augment=True, limit=64)
    g = torch.Generator().manual_seed(0)
    ((images, labels),) = list(iterate_batches(ds, 64, generator=g, as_input=False))
    assert images.shape == (64, 1, 8, 8) and torch.equal(labels, torch.from_numpy(ds.labels))
    assert not torch.equal(images, torch.from_numpy(ds.images))
    write_png_folder(tmp_path / "imgs")
    folder = load_dataset(f"folder={tmp_path / 'imgs'}", "train", image_size=6)
    batches = list(iterate_batches(folder, 4))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 6, 6), (2, 3, 6, 6)]
    expected, _ = folder.as_arrays()
    assert torch.equal(torch.cat([x for x, _ in batches]), batch_to_input(expected))


def test_items_do_not_alias_read_only_images():
    images = np.arange(2 * 1 * 3 * 3, dtype=np.uint8).reshape(2, 1, 3, 3)
    images.flags.writeable = False
    ds = ArrayImageDataset(
        images, np.array([0, 1]), name="tiny", split="test", classes=("a", "b"), source="test"
    )
    image, label = ds[np.int64(1)]
    image[0, 0, 0] = 200
    assert ds.images[1, 0, 0, 0] == 9 and label == 1
    with pytest.raises(IndexError, match="index 2 out of range for 2 images"):
        ds[2]


def test_folder_converts_grayscale_and_rgba_to_rgb(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "g").mkdir(parents=True)
        Image.new("L", (9, 9), 77).save(tmp_path / split / "g" / "a.jpg", quality=100)
        Image.new("RGBA", (9, 9), (10, 20, 30, 40)).save(tmp_path / split / "g" / "b.png")
    images, _ = load_dataset(f"folder={tmp_path}", "test", image_size=5).as_arrays()
    assert images.shape == (2, 3, 5, 5)
    assert abs(int(images[0].min()) - 77) <= 1 and abs(int(images[0].max()) - 77) <= 1
    assert images[1, :, 2, 2].tolist() == [10, 20, 30]


def crops_and_flips_of(outs, padded, size):
    """For each output, the (dy, dx, flip) whose window of ``padded`` it equals."""
    candidates, keys = [], []
    for dy in range(9):
        for dx in range(9):
            window = padded[:, dy : dy + size, dx : dx + size]
            candidates += [window, window.flip(-1)]
            keys += [(dy, dx, False), (dy, dx, True)]
    match = (torch.stack(list(outs))[:, None] == torch.stack(candidates)[None]).flatten(2).all(2)
    assert torch.equal(match.sum(1), torch.ones(len(outs), dtype=torch.int64))
    return [keys[k] for k in match.int().argmax(1).tolist()]


@pytest.mark.parametrize("per_item", [False, True])
def test_augmentation_draws_every_crop_and_flips_half(per_item):
    image = torch.arange(1, 37, dtype=torch.uint8).reshape(1, 6, 6)
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    draws = 2000
    if per_item:
        torch.manual_seed(0)
        ds = ArrayImageDataset(
            image[None].numpy(), np.zeros(1), name="t", split="train", classes=("a",),
            source="test", augment=True,
        )  # fmt: skip
        outs = [ds[0][0] for _ in range(draws)]
    else:
        g = torch.Generator().manual_seed(0)
        outs = augment_batch(image[None].repeat(draws, 1, 1, 1), generator=g)
    found = crops_and_flips_of(outs, padded, 6)
    assert {(dy, dx) for dy, dx, _ in found} == {(dy, dx) for dy in range(9) for dx in range(9)}
    flips = sum(flip for _, _, flip in found) / draws
    assert 0.45 < flips < 0.55


def test_iterate_batches_shards_for_distributed_training():
    ds = load_dataset("synthetic", "test", limit=10)
    shards = []
    for rank in range(3):
        g = torch.Generator().manual_seed(7)  # same seed on every process
        batches = list(
            iterate_batches(
                ds, 2, shuffle=True, generator=g, rank=rank, world_size=3, as_input=False
            )
        )
        assert [len(labels) for _, labels in batches] == [2, 2]  # 10 -> 12 -> 4 each
        shards.append(torch.cat([images for images, _ in batches]))
    seen = {bytes(image.numpy()) for shard in shards for image in shard}
    assert seen == {bytes(image) for image in ds.images}
    with pytest.raises(ValueError, match="rank must be in"):
        next(iterate_batches(ds, 2, rank=3, world_size=3))


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "folder"])
def test_a_file_where_a_folder_belongs(tmp_path, name):
    path = tmp_path / "file"
    path.write_bytes(b"x")
    with pytest.raises(BinforgeError, match=f"{path} is a file, not a folder"):
        load_dataset(f"{name}={path}", "train")
    with pytest.raises(BinforgeError, match=f"{tmp_path / 'nope'} does not exist"):
        load_dataset(f"{name}={tmp_path / 'nope'}", "train")

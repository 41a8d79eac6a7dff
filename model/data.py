"""Data sets as 8-bit pixels: the loaders every stage shares, and the pixel-to-input map.

Every loader yields ``(uint8 tensor (C, H, W), int label)``. The raw pixels stay
uint8 because the hardware consumes 8-bit pixels (bit-serially, one bit plane at a
time); the network's float input is derived from them on the fly by
:func:`pixels_to_input`, which is exactly the value the hardware computes with.

Data sets (``spec`` strings, as given to ``--data``):

- ``digits``: scikit-learn's 8x8 digits (embedded in the wheel, the default);
- ``fashion-mnist`` or ``fashion-mnist=PATH``: the IDX files of Fashion-MNIST;
- ``cifar10=PATH``: CIFAR-10's binary batches (the python-pickle batches only with
  ``allow_pickle=True``);
- ``folder=PATH``: ImageNet-style class folders, decoded lazily with Pillow;
- ``synthetic`` or ``synthetic=C,H,W,K``: seeded random images with class structure.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from binforge.errors import BinforgeError

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
    "DatasetSpec",
    "ImageDataset",
    "ArrayImageDataset",
    "FolderImageDataset",
    "parse_spec",
    "pixels_to_input",
    "batch_to_input",
    "collate_to_input",
    "augment_batch",
    "iterate_batches",
    "load_dataset",
    "dataset_info",
    "read_idx",
    "read_cifar10_binary",
    "read_cifar10_pickle",
]

#: The data set names a spec may start with, in the order the help lists them.
DATASET_NAMES: tuple[str, ...] = ("digits", "fashion-mnist", "cifar10", "folder", "synthetic")

#: Where Debian's ``dataset-fashion-mnist`` package puts the files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

#: Fraction of scikit-learn's digits held out as the test split (stratified, fixed seed).
DIGITS_TEST_FRACTION = 0.2
#: The digits split never depends on ``seed``: test figures stay comparable across runs.
DIGITS_SPLIT_SEED = 0

#: Default ``synthetic`` geometry: channels, height, width, classes.
SYNTHETIC_DEFAULT = (1, 8, 8, 4)
#: Samples per class in the ``synthetic`` train and test splits.
SYNTHETIC_PER_CLASS = {"train": 256, "test": 64}

#: IDX magic numbers: unsigned bytes (0x08) with 3 (images) or 1 (labels) dimensions.
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

#: One CIFAR-10 binary record: a label byte, then 3 x 32 x 32 pixel bytes (R, G, B planes).
CIFAR10_RECORD = 1 + 3 * 32 * 32

#: Padding of the papers' augmentation (pad-4 random crop, horizontal flip).
AUGMENT_PADDING = 4

#: Image file suffixes the folder loader takes.
FOLDER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm"})

Split = Literal["train", "test"]


# --------------------------------------------------------------------------------------
# Pixels to network input
# --------------------------------------------------------------------------------------


def pixels_to_input(pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 pixels ``x`` -> float32 network input ``(2x - 255) / 255`` in ``[-1, 1]``.

    This is the hardware's own view of a pixel, not an arbitrary normalisation:
    read the 8 bit planes of ``x`` as +-1 digits ``s_i`` (bit 1 = +1, bit 0 = -1);
    then ``sum_i 2**i * s_i = 2x - 255`` exactly. So a first layer trained on this
    input is computed exactly by bit-serial XNOR-popcount ops with gains ``2**i``.
    Zero padding in hardware is pixel 0 (all planes -1), i.e. input ``-1``, which is
    why the first float convolution pads with ``-1``.

    ``2x - 255`` is an exact float32 integer and the division is correctly rounded,
    so the result is the float32 nearest to the exact quotient.
    """
    tensor = torch.as_tensor(pixels)
    if tensor.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8, not {tensor.dtype}")
    return (tensor.to(torch.float32) * 2.0 - 255.0) / 255.0


def batch_to_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A uint8 batch ``(N, C, H, W)`` -> float32 model input (see :func:`pixels_to_input`)."""
    tensor = torch.as_tensor(images)
    if tensor.dim() != 4:
        raise ValueError(f"a batch must be (N, C, H, W), not shape {tuple(tensor.shape)}")
    return pixels_to_input(tensor)


def collate_to_input(
    samples: Sequence[tuple[torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``DataLoader`` collate function: ``[(uint8 image, label)]`` -> (float32 input, int64 labels).

    Use as ``DataLoader(dataset, batch_size=..., collate_fn=collate_to_input)``; the
    conversion to float happens per batch, so the data set itself stays uint8.
    """
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([int(label) for _, label in samples], dtype=torch.int64)
    return batch_to_input(images), labels


# --------------------------------------------------------------------------------------
# Augmentation (on uint8)
# --------------------------------------------------------------------------------------


def augment_batch(
    images: torch.Tensor,
    *,
    padding: int = AUGMENT_PADDING,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The papers' augmentation on a uint8 batch: pad with 0, random crop, random h-flip.

    ``images`` is ``(N, C, H, W)`` uint8; the result has the same shape and dtype.
    Padding is pixel 0, the same value the first layer pads with. Random numbers
    come from ``generator`` (torch's global generator when ``None``).
    """
    if images.dim() != 4:
        raise ValueError(f"a batch must be (N, C, H, W), not shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, not {padding!r}")
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding), value=0)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)[None, :]  # (N, H)
    cols = dx[:, None] + torch.arange(w)[None, :]  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[
        torch.arange(n)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def _augment_one(image: torch.Tensor, padding: int = AUGMENT_PADDING) -> torch.Tensor:
    """:func:`augment_batch` for one ``(C, H, W)`` image (torch's global generator), cheaply."""
    _, h, w = image.shape
    span = 2 * padding + 1
    # one draw, decoded into a uniform (dy, dx, flip)
    draw = int(torch.randint(0, span * span * 2, (1,)))
    flip, offset = draw % 2, draw // 2
    dy, dx = divmod(offset, span)
    padded = torch.nn.functional.pad(image, (padding, padding, padding, padding), value=0)
    crop = padded[:, dy : dy + h, dx : dx + w]
    return crop.flip(-1) if flip else crop.contiguous()


# --------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """A split of an image data set: ``(uint8 tensor (C, H, W), int label)`` items.

    Parameters
    ----------
    name:
        The data set's name (``"digits"``, ``"fashion-mnist"``, ...).
    split:
        ``"train"`` or ``"test"``.
    shape:
        ``(C, H, W)`` of every image.
    classes:
        Class names; label ``k`` is ``classes[k]``.
    labels:
        ``(N,)`` int64 labels.
    source:
        Where the data was found (a path, or ``"scikit-learn"`` / ``"generated"``).
    augment:
        Apply :func:`augment_batch` (pad-4 random crop, horizontal flip) per item.

    Attributes
    ----------
    num_classes:
        ``len(classes)``.
    """

    def __init__(
        self,
        *,
        name: str,
        split: Split,
        shape: tuple[int, int, int],
        classes: Sequence[str],
        labels: np.ndarray,
        source: str,
        augment: bool = False,
    ) -> None:
        self.name = name
        self.split = split
        self.shape = tuple(int(s) for s in shape)
        self.classes = tuple(classes)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.source = source
        self.augment = augment

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _image(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        # a copy: the item never aliases (or mutates) the data set's own array
        image = torch.from_numpy(np.array(self._image(index), dtype=np.uint8, copy=True))
        if self.augment:
            image = _augment_one(image)
        return image, int(self.labels[index])

    def _images(self, indices: np.ndarray) -> np.ndarray:
        """Un-augmented images at ``indices`` as one uint8 ``(len(indices), C, H, W)`` array."""
        images = np.empty((len(indices), *self.shape), dtype=np.uint8)
        for row, index in enumerate(indices):
            images[row] = self._image(int(index))
        return images

    def as_arrays(self, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """All images, un-augmented, as ``(uint8 (N, C, H, W), int64 (N,))`` numpy arrays.

        ``progress`` shows a tqdm bar on stderr while images are decoded.
        """
        images = np.empty((len(self), *self.shape), dtype=np.uint8)
        rows = range(len(self))
        if progress:
            from tqdm import tqdm

            rows = tqdm(rows, desc=f"decoding {self.name}", unit="img", leave=False)
        for index in rows:
            images[index] = self._image(index)
        return images, self.labels.copy()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"len={len(self)}, shape={self.shape}, num_classes={self.num_classes})"
        )


class ArrayImageDataset(ImageDataset):
    """An image data set held in memory.

    Parameters
    ----------
    images:
        ``(N, C, H, W)`` uint8 pixels; exposed as ``.images``.
    **kwargs:
        As :class:`ImageDataset` (``shape`` is taken from ``images``).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, **kwargs: Any) -> None:
        images = np.ascontiguousarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), not {images.dtype} {images.shape}"
            )
        if images.shape[0] != len(labels):
            raise ValueError(f"{images.shape[0]} images but {len(labels)} labels")
        super().__init__(shape=images.shape[1:], labels=labels, **kwargs)
        self.images = images

    def _image(self, index: int) -> np.ndarray:
        return self.images[index]

    def _images(self, indices: np.ndarray) -> np.ndarray:
        return self.images[indices]

    def as_arrays(self, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return self.images.copy(), self.labels.copy()


class FolderImageDataset(ImageDataset):
    """Image files decoded on demand with Pillow, resized and center-cropped, as RGB uint8.

    Each image's shorter side is scaled to ``round(image_size * 8 / 7)`` (256 for 224, the
    usual ImageNet evaluation) and the central ``image_size`` square is kept.

    Parameters
    ----------
    files:
        One path per image.
    image_size:
        Height and width of every image.
    **kwargs:
        As :class:`ImageDataset`.
    """

    def __init__(
        self, files: Sequence[Path], labels: np.ndarray, *, image_size: int, **kwargs: Any
    ) -> None:
        super().__init__(shape=(3, image_size, image_size), labels=labels, **kwargs)
        self.files = [Path(f) for f in files]
        self.image_size = image_size

    def _image(self, index: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self.files[index]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise BinforgeError(
                f"cannot decode image {path} ({exc}); remove or replace the file"
            ) from exc
        return _resize_center_crop(image, self.image_size)


def _resize_center_crop(image: Any, size: int) -> np.ndarray:
    from PIL import Image

    width, height = image.size
    short = max(size, round(size * 8 / 7))
    scale = short / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def iterate_batches(
    dataset: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    as_input: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a data set without a ``DataLoader``: ``(images, int64 labels)`` tensors.

    In-memory data sets are sliced a whole batch at a time (much faster than
    per-item ``__getitem__``). The data set's ``augment`` flag is honoured, per
    batch, with ``generator``'s random numbers, as is the shuffle order.

    Parameters
    ----------
    dataset:
        Any :class:`ImageDataset`.
    batch_size:
        Images per batch (the last one may be smaller unless ``drop_last``).
    shuffle:
        Visit the images in a random order drawn from ``generator``.
    generator:
        Source of the shuffle order and the augmentation (torch's global one if ``None``).
    drop_last:
        Skip a final batch smaller than ``batch_size``.
    as_input:
        Yield float32 model input (:func:`batch_to_input`); ``False`` yields uint8 pixels.
    rank, world_size:
        Distributed training: this process's share of the (shuffled) order, like
        ``DistributedSampler``: the order is padded by wrapping around to a multiple
        of ``world_size`` and process ``rank`` takes every ``world_size``-th index,
        so every process gets the same number of batches. Give every process a
        generator with the same seed so that they agree on the order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), not {rank!r} of {world_size!r}")
    count = len(dataset)
    if shuffle:
        order = torch.randperm(count, generator=generator).numpy()
    else:
        order = np.arange(count)
    if world_size > 1:
        total = -(-count // world_size) * world_size
        order = np.resize(order, total)[rank::world_size]
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        indices = order[start : start + batch_size]
        images = torch.from_numpy(np.ascontiguousarray(dataset._images(indices)))
        if dataset.augment:
            images = augment_batch(images, generator=generator)
        labels = torch.from_numpy(dataset.labels[indices])
        yield (batch_to_input(images) if as_input else images), labels


# --------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``--data`` value: the data set's name and its argument (a path or geometry)."""

    name: str
    argument: str | None = None

    def __str__(self) -> str:
        return self.name if self.argument is None else f"{self.name}={self.argument}"


def parse_spec(spec: str) -> DatasetSpec:
    """``"name"`` or ``"name=ARG"`` -> :class:`DatasetSpec`, checking the name."""
    name, sep, argument = spec.partition("=")
    name = name.strip().lower()
    if name not in DATASET_NAMES:
        raise BinforgeError(
            f"unknown data set {spec!r}; use one of {', '.join(DATASET_NAMES)} "
            "(cifar10 and folder need =PATH)"
        )
    if sep and not argument:
        raise BinforgeError(f"data set {spec!r} has an empty value after '='; give {name}=PATH")
    return DatasetSpec(name, argument if sep else None)


def _check_split(split: str) -> Split:
    if split not in ("train", "test"):
        raise BinforgeError(f"unknown split {split!r}; use 'train' or 'test'")
    return split  # type: ignore[return-value]


def _data_path(spec: DatasetSpec, root: str | os.PathLike | None) -> Path | None:
    if spec.argument is not None and root is not None and Path(spec.argument) != Path(root):
        raise BinforgeError(
            f"data set {str(spec)!r} names a path and root={os.fspath(root)!r} names another; "
            "give only one"
        )
    if spec.argument is not None:
        return Path(spec.argument).expanduser()
    if root is not None:
        return Path(root).expanduser()
    return None


# --------------------------------------------------------------------------------------
# File formats
# --------------------------------------------------------------------------------------


def _read_maybe_gzip(path: Path) -> bytes:
    if not path.is_file():
        raise BinforgeError(f"{path} does not exist or is not a file; check the data path")
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
            handle.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=handle) as unzipped:
                    return unzipped.read()
            return handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise BinforgeError(
            f"cannot read {path}: the gzip stream is truncated or damaged ({exc}); "
            "download or install the file again"
        ) from exc


def read_idx(path: str | os.PathLike, *, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip or plain) and check its magic number and length.

    The IDX header is a big-endian int32 magic number (``0x0000080D``: unsigned bytes,
    ``D`` dimensions; 2051 for images, 2049 for labels), then ``D`` big-endian uint32
    sizes, then the bytes.

    Raises
    ------
    BinforgeError
        Wrong magic number, or a file shorter or longer than its header says.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise BinforgeError(f"{path} is truncated: {len(raw)} bytes, not even an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise BinforgeError(
            f"{path} has IDX magic number {found}, not {magic}; "
            "check that it is the right (uncorrupted) images or labels file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BinforgeError(f"{path} is truncated inside its IDX header; download it again")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise BinforgeError(
            f"{path} is {state}: {len(raw)} bytes where dimensions {dims} need {expected}; "
            "download or install it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_cifar10_binary(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch: ``(uint8 (N, 3, 32, 32), int64 (N,))``.

    Each record is one label byte and 3072 pixel bytes (1024 red, 1024 green, 1024
    blue, row-major), so the file length must be a multiple of 3073.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) == 0 or len(raw) % CIFAR10_RECORD:
        raise BinforgeError(
            f"{path} is {len(raw)} bytes, not a whole number of {CIFAR10_RECORD}-byte "
            "CIFAR-10 records (truncated or not a binary batch); download the binary version again"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CIFAR10_CLASSES):
        raise BinforgeError(
            f"{path} has label {int(labels.max())} (CIFAR-10 has 10 classes): it is not a "
            "CIFAR-10 binary batch (CIFAR-100's binary format is not supported)"
        )
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 python batch holds: dicts, lists, bytes, numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        ("_codecs", "encode"): ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(*target)


def read_cifar10_pickle(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python-pickle batch (``data_batch_1``, ``test_batch``).

    Unpickling can run code, so this is only reached with ``allow_pickle=True``;
    as a further guard the unpickler accepts only the numpy array types the
    official batches hold.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            batch = _CifarUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise BinforgeError(
            f"cannot read {path} as a CIFAR-10 python batch ({exc}); use the binary version"
        ) from exc
    if not isinstance(batch, dict):
        raise BinforgeError(f"{path} is not a CIFAR-10 python batch (no dict inside)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise BinforgeError(f"{path} has no 'data' and 'labels' entries; is it a CIFAR-10 batch?")
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise BinforgeError(
            f"{path} holds data of shape {data.shape} and {labels.shape[0]} labels, "
            "not (N, 3072) and N"
        )
    return data.reshape(-1, 3, 32, 32).copy(), labels


# --------------------------------------------------------------------------------------
# The individual loaders
# --------------------------------------------------------------------------------------


@functools.cache
def _digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits of scikit-learn's digits, read once per process (arrays read-only)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # values 0..16 -> 0..255, rounding half up (only 8 -> 127.5 -> 128 is a tie)
    pixels = np.floor(bunch.images * (255.0 / 16.0) + 0.5).astype(np.uint8)[:, None]
    index = np.arange(len(bunch.target))
    train_index, test_index = train_test_split(
        index,
        test_size=DIGITS_TEST_FRACTION,
        stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    splits = {}
    for name, chosen in (("train", train_index), ("test", test_index)):
        images, labels = pixels[chosen], bunch.target[chosen].astype(np.int64)
        images.flags.writeable = labels.flags.writeable = False
        splits[name] = (images, labels)
    return splits


def _load_digits(split: Split) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    images, labels = _digits_split()[split]
    classes = tuple(str(k) for k in range(10))
    return images.copy(), labels.copy(), classes, "scikit-learn load_digits"


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise BinforgeError(
        f"Fashion-MNIST file {stem}(.gz) is missing from {folder}; install it with "
        "`apt-get install -y dataset-fashion-mnist` or give fashion-mnist=PATH"
    )


def _load_fashion_mnist(split: Split, folder: Path | None) -> tuple[np.ndarray, np.ndarray, Path]:
    folder = FASHION_MNIST_DIR if folder is None else folder
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise BinforgeError(
            f"Fashion-MNIST folder {folder} {state}; install it with "
            "`apt-get install -y dataset-fashion-mnist` or give fashion-mnist=PATH"
        )
    prefix = "train" if split == "train" else "t10k"
    images_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = _read_idx_pair(
        images_path, labels_path, _file_stamp(images_path), _file_stamp(labels_path)
    )
    return images.copy(), labels.copy(), folder


def _file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _read_idx_pair(
    images_path: Path, labels_path: Path, *_stamps: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A checked pair of IDX image and label files, parsed once per process while unchanged.

    The files' modification times and sizes (``_stamps``) are part of the cache key.
    """
    images = read_idx(images_path, magic=IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, magic=IDX_LABELS_MAGIC).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise BinforgeError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; install a matching pair of files"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise BinforgeError(
            f"{labels_path} has label {int(labels.max())}, but Fashion-MNIST has 10 classes; "
            "check the file"
        )
    images = images[:, None]
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _cifar_folder(path: Path) -> Path:
    """The folder holding the batches: PATH itself or a ``cifar-10-batches-*`` inside it."""
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise BinforgeError(
            f"CIFAR-10 folder {path} {state}; give cifar10=PATH with the folder "
            "of data_batch_1.bin .. test_batch.bin"
        )
    for candidate in (path, path / "cifar-10-batches-bin", path / "cifar-10-batches-py"):
        if (candidate / "test_batch.bin").is_file() or (candidate / "test_batch").is_file():
            return candidate
    raise BinforgeError(
        f"no CIFAR-10 batches (test_batch.bin) in {path}; give cifar10=PATH with the folder "
        "of the binary version's data_batch_1.bin .. test_batch.bin"
    )


def _load_cifar10(
    split: Split, path: Path | None, allow_pickle: bool
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], Path]:
    if path is None:
        raise BinforgeError(
            "CIFAR-10 needs a path: give cifar10=PATH with the folder of the binary "
            "version's data_batch_1.bin .. test_batch.bin"
        )
    folder = _cifar_folder(path)
    stems = [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]
    if all((folder / f"{stem}.bin").is_file() for stem in stems):
        parts = [read_cifar10_binary(folder / f"{stem}.bin") for stem in stems]
    elif all((folder / stem).is_file() for stem in stems):
        if not allow_pickle:
            raise BinforgeError(
                f"{folder} holds CIFAR-10's python-pickle batches, which can run code when "
                "loaded; use the binary version, or pass --allow-pickle if you trust the files"
            )
        parts = [read_cifar10_pickle(folder / stem) for stem in stems]
    else:
        missing = [s for s in stems if not (folder / f"{s}.bin").is_file()]
        raise BinforgeError(
            f"CIFAR-10 batch {missing[0]}.bin is missing from {folder}; "
            "give cifar10=PATH with all of data_batch_1.bin .. data_batch_5.bin and test_batch.bin"
        )
    classes = CIFAR10_CLASSES
    meta = folder / "batches.meta.txt"
    if meta.is_file():
        names = tuple(line.strip() for line in meta.read_text().splitlines() if line.strip())
        if len(names) == len(CIFAR10_CLASSES):
            classes = names
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, classes, folder


def _folder_split_dir(path: Path, split: Split) -> Path:
    names = ("train",) if split == "train" else ("val", "test")
    for name in names:
        if (path / name).is_dir():
            return path / name
    raise BinforgeError(
        f"image folder {path} has no {' or '.join(names)}/ subfolder; lay it out as "
        "PATH/train/<class>/*.png and PATH/val/<class>/*.png"
    )


def _folder_classes(path: Path) -> tuple[str, ...]:
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise BinforgeError(
            f"image folder {path} {state}; give folder=PATH with PATH/train/<class>/ "
            "and PATH/val/<class>/"
        )
    train = _folder_split_dir(path, "train")
    classes = tuple(sorted(d.name for d in train.iterdir() if d.is_dir()))
    if not classes:
        raise BinforgeError(f"{train} has no class subfolders; put images in {train}/<class>/")
    return classes


def _folder_files(
    path: Path, split: Split, classes: tuple[str, ...]
) -> tuple[list[Path], np.ndarray]:
    """The split's image files, interleaved across classes so that a prefix covers all classes."""
    split_dir = _folder_split_dir(path, split)
    extra = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and d.name not in set(classes))
    if extra:
        raise BinforgeError(
            f"{split_dir} has class folder {extra[0]!r} that train/ lacks; "
            "use the same class folders in both splits"
        )
    keyed: list[tuple[int, int, Path]] = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in FOLDER_SUFFIXES)
        keyed.extend((rank, label, f) for rank, f in enumerate(files))
    if not keyed:
        raise BinforgeError(
            f"{split_dir} holds no images ({', '.join(sorted(FOLDER_SUFFIXES))}); "
            f"put them in {split_dir}/<class>/"
        )
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [f for _, _, f in keyed], np.array([label for _, label, _ in keyed], dtype=np.int64)


def _synthetic_geometry(argument: str | None) -> tuple[int, int, int, int]:
    if argument is None:
        return SYNTHETIC_DEFAULT
    try:
        values = tuple(int(v) for v in argument.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1 or values[3] < 2:
        raise BinforgeError(
            f"synthetic={argument} is not C,H,W,K with positive integers and K >= 2 classes; "
            "give for example synthetic=1,8,8,4"
        )
    if values[0] * values[1] * values[2] > 3 * 64 * 64:
        raise BinforgeError(
            f"synthetic={argument} asks for {values[0] * values[1] * values[2]} pixels per "
            "image; keep C*H*W <= 12288 (synthetic data is for quick checks)"
        )
    return values  # type: ignore[return-value]


def _load_synthetic(
    split: Split, argument: str | None, seed: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Class prototypes from ``seed`` (shared by both splits); samples = shifted prototype + noise.

    Each class has a fixed random prototype of smooth blobs; a sample shifts it by up
    to one pixel and adds Gaussian noise (std 40 on the 0..255 scale). Train and test
    draw their samples from different streams of the same seed.
    """
    channels, height, width, num_classes = _synthetic_geometry(argument)
    proto_rng = np.random.default_rng([seed, 0])
    coarse = proto_rng.uniform(0, 255, size=(num_classes, channels, 4, 4))
    rows = np.minimum(np.arange(height) * 4 // height, 3)
    cols = np.minimum(np.arange(width) * 4 // width, 3)
    prototypes = coarse[:, :, rows][:, :, :, cols]
    prototypes = 0.5 * prototypes + 0.5 * proto_rng.uniform(0, 255, size=prototypes.shape)
    per_class = SYNTHETIC_PER_CLASS[split]
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    labels = np.tile(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    shifts = rng.integers(-1, 2, size=(labels.size, 2))
    images = np.empty((labels.size, channels, height, width), dtype=np.float64)
    for index, (label, (dy, dx)) in enumerate(zip(labels, shifts, strict=True)):
        images[index] = np.roll(prototypes[label], (int(dy), int(dx)), axis=(1, 2))
    images += rng.normal(0.0, 40.0, size=images.shape)
    pixels = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    classes = tuple(f"class{k}" for k in range(num_classes))
    return pixels, labels.astype(np.int64), classes


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def load_dataset(
    spec: str,
    split: Split = "train",
    *,
    root: str | os.PathLike | None = None,
    augment: bool = False,
    limit: int | None = None,
    seed: int = 0,
    allow_pickle: bool = False,
    image_size: int = 224,
) -> ImageDataset:
    """Load one split of a data set named by ``spec`` (see the module docstring).

    Parameters
    ----------
    spec:
        ``digits``, ``fashion-mnist[=PATH]``, ``cifar10=PATH``, ``folder=PATH`` or
        ``synthetic[=C,H,W,K]``.
    split:
        ``"train"`` or ``"test"`` (a folder's test split is its ``val/`` or ``test/``).
    root:
        The data set's folder, instead of ``=PATH`` in ``spec``.
    augment:
        Pad-4 random crop and random horizontal flip on every item (uint8, padding 0).
    limit:
        Keep only the first ``limit`` items (file order; folder data sets are
        interleaved across classes, so a prefix covers every class).
    seed:
        Seed of the ``synthetic`` data set. Splits never depend on it.
    allow_pickle:
        Accept CIFAR-10's python-pickle batches (unsafe: unpickling can run code).
    image_size:
        Height and width of ``folder`` images after resize and center crop.

    Returns
    -------
    ImageDataset
        An :class:`ArrayImageDataset` (with ``.images``) or, for ``folder``, a
        :class:`FolderImageDataset` that decodes on demand.
    """
    parsed = parse_spec(spec)
    split = _check_split(split)
    if limit is not None and limit < 1:
        raise BinforgeError(f"limit must be a positive number of images, not {limit}")
    if image_size < 1:
        raise BinforgeError(f"image size must be a positive number of pixels, not {image_size}")
    path = _data_path(parsed, root)
    common = {"name": parsed.name, "split": split, "augment": augment}

    if parsed.name == "folder":
        if path is None:
            raise BinforgeError(
                "the folder data set needs a path: give folder=PATH with PATH/train/<class>/ "
                "and PATH/val/<class>/"
            )
        classes = _folder_classes(path)
        files, labels = _folder_files(path, split, classes)
        if limit is not None:
            files, labels = files[:limit], labels[:limit]
        return FolderImageDataset(
            files, labels, image_size=image_size, classes=classes, source=str(path), **common
        )

    if parsed.name == "digits":
        if path is not None:
            raise BinforgeError("digits is embedded in scikit-learn and takes no path; use digits")
        images, labels, classes, source = _load_digits(split)
    elif parsed.name == "fashion-mnist":
        images, labels, folder = _load_fashion_mnist(split, path)
        classes, source = FASHION_MNIST_CLASSES, str(folder)
    elif parsed.name == "cifar10":
        images, labels, classes, folder = _load_cifar10(split, path, allow_pickle)
        source = str(folder)
    else:  # synthetic
        if root is not None:
            raise BinforgeError("synthetic data takes no root folder; use synthetic=C,H,W,K")
        images, labels, classes = _load_synthetic(split, parsed.argument, seed)
        source = f"generated (seed {seed})"
    if limit is not None:
        images, labels = images[:limit].copy(), labels[:limit].copy()
    return ArrayImageDataset(images, labels, classes=classes, source=source, **common)


def dataset_info(
    spec: str,
    *,
    root: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    image_size: int = 224,
    seed: int = 0,
) -> dict[str, Any]:
    """What ``binforge data info`` shows: name, shape, classes, split sizes, where it was found."""
    splits = {
        split: load_dataset(
            spec, split, root=root, allow_pickle=allow_pickle, image_size=image_size, seed=seed
        )
        for split in ("train", "test")
    }
    train, test = splits["train"], splits["test"]
    return {
        "dataset": str(parse_spec(spec)),
        "name": train.name,
        "shape": list(train.shape),
        "num_classes": train.num_classes,
        "classes": list(train.classes),
        "train_size": len(train),
        "test_size": len(test),
        "train_class_counts": np.bincount(train.labels, minlength=train.num_classes).tolist(),
        "test_class_counts": np.bincount(test.labels, minlength=test.num_classes).tolist(),
        "pixels": "uint8",
        "source": train.source,
    }

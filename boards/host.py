"""The host side of the board protocol: send an image over a serial port, read the reply.

Works on any object with pyserial's ``read(n)`` / ``write(data)`` (a ``serial.Serial``,
or a simulated board in the tests). Images come from a ``.png``, a ``.npy`` or a
data set item (``NAME:INDEX``, test split).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from binforge.errors import BinforgeError

from .protocol import (
    CYCLE_BYTES,
    REPLY_HEADER_BYTES,
    ProtocolError,
    Reply,
    decode_reply,
    encode_request,
)

__all__ = ["classify_over_serial", "load_image", "open_serial"]


def _read_exactly(port, count: int, timeout: float) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + timeout
    while len(data) < count:
        chunk = port.read(count - len(data))
        if chunk:
            data += chunk
        elif time.monotonic() > deadline:
            raise BinforgeError(f"the board sent {len(data)} of {count} expected bytes within {timeout:g} s; "
                                "check the port, the baud rate and that the bitstream is loaded")
    return bytes(data)


def classify_over_serial(port, pixels: np.ndarray, *, timeout: float = 5.0) -> Reply:
    """Send one uint8 image (C, H, W) to the board on ``port`` and return its reply.

    Raises :class:`BinforgeError` on a timeout, a malformed reply or a length the
    board refused.
    """
    port.write(encode_request(pixels))
    header = _read_exactly(port, REPLY_HEADER_BYTES, timeout)
    logit_bytes, count = header[3], header[4]
    body = _read_exactly(port, logit_bytes * count + CYCLE_BYTES, timeout)
    try:
        reply = decode_reply(header + body)
    except ProtocolError as exc:
        raise BinforgeError(f"the board's reply is malformed ({exc}); check the baud rate") from None
    if reply.status != 0:
        raise BinforgeError(f"the board refused an image of {np.asarray(pixels).size} pixels (wrong length "
                            "for its network); send an image of the network's input shape")
    return reply


def load_image(spec: str, shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, int | None, str]:
    """An image as uint8 ``(C, H, W)``, its label (or ``None``) and where it came from.

    ``spec`` is a ``.png`` file, a ``.npy`` file (uint8, ``(H, W)`` or ``(C, H, W)``) or
    ``NAME:INDEX`` (a data set spec as ``--data`` takes it, test split). ``shape`` is
    checked when given.
    """
    path = Path(spec)
    label = None
    if path.suffix.lower() == ".png" and path.is_file():
        from PIL import Image

        with Image.open(path) as img:
            mode = "L" if shape is None or shape[0] == 1 else "RGB"
            arr = np.asarray(img.convert(mode), dtype=np.uint8)
        image = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    elif path.suffix.lower() == ".npy" and path.is_file():
        arr = np.load(path, allow_pickle=False)
        if arr.dtype != np.uint8:
            raise BinforgeError(f"{path} holds {arr.dtype} values; save the image as uint8 pixels")
        image = arr[None] if arr.ndim == 2 else arr
    elif ":" in spec and not path.exists():
        name, _, index_text = spec.rpartition(":")
        try:
            index = int(index_text)
        except ValueError:
            raise BinforgeError(f"{spec!r}: the part after ':' must be an image index") from None
        from binforge.model.data import load_dataset

        dataset = load_dataset(name, "test")
        if not 0 <= index < len(dataset):
            raise BinforgeError(f"{spec!r}: index {index} is outside the test split (0..{len(dataset) - 1})")
        item, label = dataset[index]
        image = np.asarray(item, dtype=np.uint8)
        label = int(label)
    else:
        raise BinforgeError(f"{spec!r} is not a .png or .npy file nor a data set item NAME:INDEX")
    if image.ndim != 3:
        raise BinforgeError(f"{spec!r} has shape {image.shape}; an image is (H, W) or (C, H, W)")
    if shape is not None and tuple(image.shape) != tuple(shape):
        raise BinforgeError(f"{spec!r} has shape {tuple(image.shape)} but the network takes {tuple(shape)}")
    return np.ascontiguousarray(image), label, spec


def open_serial(device: str, baud: int, timeout: float = 0.2):
    """Open ``device`` (a serial port path) 8N1 at ``baud``."""
    try:
        import serial
    except ImportError:
        raise BinforgeError("pyserial is not installed; run 'pip install pyserial'") from None
    try:
        return serial.Serial(device, baudrate=baud, bytesize=8, parity="N", stopbits=1, timeout=timeout)
    except (serial.SerialException, OSError) as exc:
        raise BinforgeError(f"cannot open the serial port {device} ({exc}); check the device path "
                            "and its permissions") from None

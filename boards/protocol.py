"""The host protocol over the board's UART: one framed image in, one framed result out.

Request (host to board)::

    0xB1, length (2 bytes, little-endian), length pixel bytes (C, H, W order)

Reply (board to host)::

    0xB2, status, class, L, N, N logits of L bytes each (little-endian two's
    complement), cycles (4 bytes, little-endian)

``status`` is 0 for a classified image and 1 when ``length`` was not the network's
input size (the board then reads and drops ``length`` bytes and replies with class,
logits and cycles all zero). ``cycles`` is the accelerator's own count of the
network's run (the image transfer not included). This module is the one definition of the format:
the host client and the board's gateware tests both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "REQUEST_MAGIC",
    "REPLY_MAGIC",
    "STATUS_OK",
    "STATUS_BAD_LENGTH",
    "REPLY_HEADER_BYTES",
    "CYCLE_BYTES",
    "ProtocolError",
    "Reply",
    "encode_request",
    "reply_length",
    "encode_reply",
    "decode_reply",
]

REQUEST_MAGIC = 0xB1
REPLY_MAGIC = 0xB2
STATUS_OK = 0
STATUS_BAD_LENGTH = 1
#: magic, status, class, L, N.
REPLY_HEADER_BYTES = 5
#: Bytes of the cycle count, at the end of a reply.
CYCLE_BYTES = 4
#: The largest image one request carries (the length field is 16 bits).
MAX_PIXELS = 0xFFFF


class ProtocolError(ValueError):
    """Bytes that are not a valid reply; the message says what is wrong."""


@dataclass(frozen=True)
class Reply:
    """One reply from the board.

    Attributes
    ----------
    status:
        :data:`STATUS_OK` or :data:`STATUS_BAD_LENGTH`.
    predicted:
        The class index.
    cycles:
        Accelerator clock cycles the image took.
    logits:
        The integer logits, one per class.
    """

    status: int
    predicted: int
    cycles: int
    logits: tuple[int, ...]


def encode_request(pixels: np.ndarray) -> bytes:
    """Frame one uint8 image (any shape, sent in C-order) as a request."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, not {pixels.dtype}")
    if not 0 < pixels.size <= MAX_PIXELS:
        raise ValueError(f"an image must have 1 to {MAX_PIXELS} pixels, not {pixels.size}")
    return bytes([REQUEST_MAGIC]) + pixels.size.to_bytes(2, "little") + pixels.tobytes(order="C")


def reply_length(num_classes: int, logit_bytes: int) -> int:
    """Bytes in a reply for ``num_classes`` logits of ``logit_bytes`` bytes each."""
    return REPLY_HEADER_BYTES + num_classes * logit_bytes + CYCLE_BYTES


def encode_reply(reply: Reply, logit_bytes: int) -> bytes:
    """The bytes a board sends for ``reply`` (the reference for the gateware)."""
    out = bytearray([REPLY_MAGIC, reply.status, reply.predicted, logit_bytes, len(reply.logits)])
    for value in reply.logits:
        out += int(value).to_bytes(logit_bytes, "little", signed=True)
    out += int(reply.cycles).to_bytes(CYCLE_BYTES, "little")
    return bytes(out)


def decode_reply(data: bytes) -> Reply:
    """Parse one reply; raise :class:`ProtocolError` naming what is wrong."""
    data = bytes(data)
    if len(data) < REPLY_HEADER_BYTES:
        raise ProtocolError(f"a reply has at least {REPLY_HEADER_BYTES} bytes, got {len(data)}")
    if data[0] != REPLY_MAGIC:
        raise ProtocolError(f"a reply starts with 0x{REPLY_MAGIC:02X}, not 0x{data[0]:02X}")
    status, predicted = data[1], data[2]
    if status not in (STATUS_OK, STATUS_BAD_LENGTH):
        raise ProtocolError(f"unknown reply status {status}")
    logit_bytes, count = data[3], data[4]
    if logit_bytes == 0:
        raise ProtocolError("a reply's logit width is 0 bytes")
    if len(data) != reply_length(count, logit_bytes):
        raise ProtocolError(f"a reply with {count} logits of {logit_bytes} bytes has "
                            f"{reply_length(count, logit_bytes)} bytes, got {len(data)}")
    body = data[REPLY_HEADER_BYTES:len(data) - CYCLE_BYTES]
    logits = tuple(int.from_bytes(body[i:i + logit_bytes], "little", signed=True)
                   for i in range(0, len(body), logit_bytes))
    cycles = int.from_bytes(data[len(data) - CYCLE_BYTES:], "little")
    return Reply(status, predicted, cycles, logits)

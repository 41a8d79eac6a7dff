"""Host side: images from files and data sets, reply framing, errors named."""

from __future__ import annotations

import numpy as np
import pytest
from binforge.boards.host import classify_over_serial, load_image
from binforge.boards.protocol import (
    ProtocolError,
    Reply,
    decode_reply,
    encode_reply,
    encode_request,
    reply_length,
)
from PIL import Image

from binforge.errors import BinforgeError


def test_png_is_read_as_one_channel_uint8(tmp_path):
    pixels = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)
    Image.fromarray(pixels, mode="L").save(tmp_path / "x.png")
    image, label, _ = load_image(str(tmp_path / "x.png"), (1, 28, 28))
    assert image.shape == (1, 28, 28) and image.dtype == np.uint8 and label is None
    assert np.array_equal(image[0], pixels)


def test_npy_must_hold_uint8(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(BinforgeError, match="holds float32 values; save the image as uint8 pixels"):
        load_image(str(tmp_path / "f.npy"))


def test_dataset_item_has_its_label():
    image, label, source = load_image("digits:0", (1, 8, 8))
    assert image.shape == (1, 8, 8) and image.dtype == np.uint8
    assert 0 <= label < 10 and source == "digits:0"


def test_unknown_image_spec_is_named():
    with pytest.raises(BinforgeError, match="is not a .png or .npy file nor a data set item NAME:INDEX"):
        load_image("picture.jpg")


def test_request_and_reply_framing():
    image = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    assert encode_request(image) == bytes([0xB1, 6, 0, 0, 1, 2, 3, 4, 5])
    reply = Reply(0, 3, 123456, (-5, 300, 0, -70000))
    raw = encode_reply(reply, 3)
    assert len(raw) == reply_length(4, 3) == 5 + 12 + 4
    assert raw[:5] == bytes([0xB2, 0, 3, 3, 4])
    assert decode_reply(raw) == reply
    with pytest.raises(ProtocolError, match="a reply starts with 0xB2, not 0xB1"):
        decode_reply(b"\xb1" + raw[1:])
    with pytest.raises(ProtocolError, match="has 21 bytes, got 20"):
        decode_reply(raw[:-1])


class _LoopbackBoard:
    """A port whose reply bytes are given up front (to test the client's reading)."""

    def __init__(self, reply: bytes, chunk: int):
        self._reply, self._chunk, self.written = reply, chunk, b""

    def write(self, data):
        self.written += data

    def read(self, n):
        out, self._reply = self._reply[:min(n, self._chunk)], self._reply[min(n, self._chunk):]
        return out


def test_client_reads_a_reply_in_pieces_and_names_a_timeout():
    image = np.zeros((1, 2, 2), dtype=np.uint8)
    raw = encode_reply(Reply(0, 1, 99, (7, -7)), 2)
    port = _LoopbackBoard(raw, chunk=3)
    assert classify_over_serial(port, image) == Reply(0, 1, 99, (7, -7))
    assert port.written == encode_request(image)
    with pytest.raises(BinforgeError, match="the board sent 5 of 8 expected bytes within 0.05 s"):
        classify_over_serial(_LoopbackBoard(raw[:10], chunk=3), image, timeout=0.05)
    with pytest.raises(BinforgeError, match="the board refused an image of 4 pixels"):
        classify_over_serial(_LoopbackBoard(encode_reply(Reply(1, 0, 0, (0, 0)), 2), 64), image)

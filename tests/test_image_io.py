"""Safe decoding of encoded images: header sizes against PIL, clear errors for bad input."""

import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from overfeat_tf.image_io import decode_image, header_size

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 255, size=(37, 53, 3), dtype=np.uint8)


def _encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(out, format=fmt)
    return out.getvalue()


CASES = {
    "jpeg": _encode(RGB, "JPEG"),
    "png": _encode(RGB, "PNG"),
    "png_gray": _encode(RGB, "PNG", "L"),
    "png_rgba": _encode(RGB, "PNG", "RGBA"),
    "gif": _encode(RGB, "GIF", "P"),
    "bmp": _encode(RGB, "BMP"),
}

graph_decode = tf.function(
    lambda s: decode_image(s, max_pixels=10_000), input_signature=[tf.TensorSpec([], tf.string)]
)


def _png_header(height: int, width: int) -> bytes:
    """A PNG signature and IHDR chunk (no image data): enough for the header check."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_header_size_and_decode_match_pil(name):
    contents = CASES[name]
    assert tuple(header_size(tf.constant(contents)).numpy()) == (37, 53)
    image = decode_image(tf.constant(contents))
    assert image.dtype == tf.uint8 and image.shape == (37, 53, 3)
    want = np.asarray(Image.open(io.BytesIO(contents)).convert("RGB"))
    if name == "jpeg":  # two JPEG decoders may round differently
        assert np.abs(image.numpy().astype(int) - want).mean() < 2
    else:
        np.testing.assert_array_equal(image.numpy(), want)
    np.testing.assert_array_equal(graph_decode(contents).numpy(), image.numpy())


def test_top_down_bmp_has_positive_height():
    header = bytearray(CASES["bmp"])
    height = struct.unpack("<i", header[22:26])[0]
    header[22:26] = struct.pack("<i", -height)
    assert tuple(header_size(tf.constant(bytes(header))).numpy()) == (37, 53)


@pytest.mark.parametrize(
    "contents,message",
    [
        (b"", "Empty image string"),
        (b"hello, world", "Undecodable image"),
        (_png_header(100_000, 100_000), "Image too large"),
        (_png_header(0, 10), "Zero-sized image"),
    ],
)
def test_bad_input_is_a_clear_invalid_argument(contents, message):
    for decode in (graph_decode, lambda s: decode_image(tf.constant(s), max_pixels=10_000)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            decode(contents)
    assert graph_decode(CASES["png"]).shape == (37, 53, 3)  # the next call still works


def test_truncated_data_fails_in_the_decoder_not_the_process():
    with pytest.raises(tf.errors.InvalidArgumentError):
        graph_decode(CASES["png"][:60])
    assert graph_decode(CASES["jpeg"]).shape == (37, 53, 3)


def test_inside_tf_data():
    ds = tf.data.Dataset.from_tensor_slices([CASES["png"], CASES["gif"], CASES["jpeg"]])
    shapes = [tuple(x.shape) for x in ds.map(decode_image)]
    assert shapes == [(37, 53, 3)] * 3

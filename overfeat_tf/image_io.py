"""Decoding encoded images safely in TF ops (used by the serving signatures and the CLIs).

`decode_image` reads the size from the file header *before* decoding, so an image over the
pixel bound fails with a clear `InvalidArgumentError` instead of allocating it, and every
other bad input (empty string, unknown format, zero-sized image, corrupt data) fails with a
message that names the problem. Only core TF ops: safe inside a SavedModel and TF Serving.

Supported formats are those of `tf.io.decode_image`: JPEG, PNG, GIF (first frame) and BMP.
Output: RGB `uint8` `[H, W, 3]` (grayscale is repeated to three channels, alpha dropped).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

# A default bound on decoded pixels (about 64 MP: 192 MiB as RGB uint8).
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

_MAGIC = {  # first bytes -> format
    "jpeg": b"\xff\xd8\xff",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF8",
    "bmp": b"BM",
}
_FORMATS = "JPEG, PNG, GIF or BMP"


def _uint(bytes_: tf.Tensor, start: int, width: int, big_endian: bool) -> tf.Tensor:
    """Unsigned integer of `width` bytes at `start` of a uint8 vector, as int64."""
    part = tf.cast(bytes_[start : start + width], tf.int64)
    if not big_endian:
        part = tf.reverse(part, [0])
    weights = tf.constant([256 ** (width - 1 - i) for i in range(width)], tf.int64)
    return tf.reduce_sum(part * weights)


def _int32_le(bytes_: tf.Tensor, start: int) -> tf.Tensor:
    """Signed little-endian int32 at `start` (BMP heights are negative for top-down rows)."""
    value = _uint(bytes_, start, 4, big_endian=False)
    return tf.where(value >= 2**31, value - 2**32, value)


def _starts_with(contents: tf.Tensor, magic: bytes) -> tf.Tensor:
    return tf.equal(tf.strings.substr(contents, 0, len(magic)), magic)


def after(value: tf.Tensor, *checks: Any) -> tf.Tensor:
    """`value`, computed only once `checks` (assert ops) have passed.

    In a graph, an assert runs but gates nothing unless something depends on it: this makes
    the next step wait, so a failing check stops the work it guards (eager asserts have
    already raised and return None).
    """
    with tf.control_dependencies([c for c in checks if c is not None]):
        return tf.identity(value)


def size_checks(height: tf.Tensor, width: tf.Tensor, max_pixels: int) -> list[Any]:
    """Assert ops: an image of `height` x `width` is not empty and within `max_pixels`."""
    height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    return [
        tf.debugging.Assert(
            (height > 0) & (width > 0),
            ["Zero-sized image: its height or width is 0 (height, width:", height, width, ")."],
        ),
        tf.debugging.Assert(
            height * width <= max_pixels,
            [
                "Image too large:",
                height,
                "x",
                width,
                f"pixels is over this model's bound of {max_pixels} pixels; resize it before "
                "sending (the bound is set at export: export.py --max-pixels).",
            ],
        ),
    ]


def header_size(contents: tf.Tensor) -> tf.Tensor:
    """(height, width) as int64 `[2]` from the header of an encoded image (scalar string).

    Reads only the header: JPEG through `tf.image.extract_jpeg_shape`, PNG (IHDR), GIF
    (logical screen) and BMP (DIB header) from their fixed byte offsets. Fails with
    `InvalidArgumentError` for an empty string or bytes of no supported format (checked in
    that order, each check gating the next step).
    """
    length = tf.strings.length(contents)
    contents = after(
        contents,
        tf.debugging.Assert(
            length > 0,
            [f"Empty image string: send the encoded bytes of a {_FORMATS} image."],
        ),
    )
    is_jpeg, is_png, is_gif, is_bmp = (_starts_with(contents, m) for m in _MAGIC.values())
    known = tf.reduce_any(tf.stack([is_jpeg, is_png, is_gif, is_bmp]))
    contents = after(
        contents,
        tf.debugging.Assert(
            known,
            [
                f"Undecodable image: the bytes are not a {_FORMATS} file (they start with",
                tf.strings.substr(contents, 0, tf.minimum(length, 8)),
                '). Send the encoded file\'s bytes (in REST: base64 as {"b64": ...}).',
            ],
        ),
    )
    padded = tf.strings.join([contents, tf.constant(b"\0" * 32)])
    head = tf.io.decode_raw(tf.strings.substr(padded, 0, 32), tf.uint8)  # [32]

    def jpeg() -> tf.Tensor:
        return tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64)

    def other() -> tf.Tensor:
        png = tf.stack([_uint(head, 20, 4, True), _uint(head, 16, 4, True)])
        gif = tf.stack([_uint(head, 8, 2, False), _uint(head, 6, 2, False)])
        bmp = tf.stack([tf.abs(_int32_le(head, 22)), _int32_le(head, 18)])
        return tf.where(is_png, png, tf.where(is_gif, gif, bmp))

    return tf.cond(is_jpeg, jpeg, other)


def decode_image(contents: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Encoded bytes (scalar string) -> RGB uint8 `[H, W, 3]`, checked before decoding.

    Raises `InvalidArgumentError` (never crashes or runs out of memory) for, in this order:
    an empty string, bytes that are no JPEG/PNG/GIF/BMP, a zero-sized image, an image of
    more than `max_pixels` pixels (checked from the header, before any pixel is decoded:
    every check gates the next step), and corrupt data (from the decoder).
    """
    size = header_size(contents)
    contents = after(contents, *size_checks(size[0], size[1], max_pixels))
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def check_pixels(image: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """A decoded `[H, W, C]` image, passed on only once it is not empty nor over
    `max_pixels` (the same errors as `decode_image`)."""
    shape = tf.shape(image, out_type=tf.int64)
    return after(image, *size_checks(shape[0], shape[1], max_pixels))

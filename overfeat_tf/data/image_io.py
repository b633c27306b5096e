"""Image input, the package's one implementation: decode and convert to RGB.

    encoded bytes (JPEG, PNG, GIF, BMP) --decode_image--> uint8 RGB [H, W, 3]   (TF ops)
    decoded [H, W, C], any real dtype   --to_rgb-------> float32 RGB 0..255     (TF ops)
    path / bytes / PIL image / array    --load_image---> uint8 RGB [H, W, 3]    (eager)

`decode_image` reads the size from the file header *before* decoding, so an image over the
pixel bound fails with a clear `InvalidArgumentError` instead of allocating it, and every
other bad input (empty string, unknown format, zero-sized image, unsupported BMP, corrupt
data) fails with a message that names the problem (input bytes only in hex, so the message
stays valid UTF-8). Only core TF ops: safe in `Dataset.map`, a SavedModel and TF Serving.
Every reader of the package (training data, inference, features, serving) goes through it,
so an image gives the same pixels on every path.

Conversions to RGB (all paths): grey is repeated to three channels; alpha is dropped (not
composited); palette images (PNG, GIF, 8-bit BMP) are looked up in their palette; JPEG is
decoded with libjpeg's accurate integer IDCT (the pixels PIL gives; CMYK converted by TF);
16-bit PNG samples keep their high byte (`v >> 8`); an animated GIF gives its first frame.
EXIF orientation is not applied (neither does `tf.io.decode_jpeg` nor `PIL.Image.open`).
BMP: uncompressed 8-bit (palette), 24-bit and 32-bit; RLE-compressed and 1/4/16-bit BMPs
are refused with a clear error (TF's decoder would return wrong pixels).

Resizing is `ops.resizing`'s.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import numpy as np
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
_HEAD = 66  # header bytes read: up to the BMP colour masks (offsets 54..65)
_BMP_MASKS = (0x00FF0000, 0x0000FF00, 0x000000FF)  # the BITFIELDS masks TF's decoder assumes


class ImageNotFoundError(FileNotFoundError, ValueError):
    """`load_image` was given a path that is not a file (both an OSError and a ValueError)."""


# --- header ---------------------------------------------------------------------------------


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


def _bytes_at(contents: tf.Tensor, start: tf.Tensor | int, count: int) -> tf.Tensor:
    """`count` bytes of a string from `start` as uint8 `[count]` (zeros past its end)."""
    padded = tf.strings.join([contents, tf.constant(b"\0" * count)])
    start = tf.cast(start, tf.int64)
    part = tf.strings.substr(padded, start, tf.constant(count, tf.int64))
    return tf.ensure_shape(tf.io.decode_raw(part, tf.uint8), [count])


_HEX = [f"{i:02x}" for i in range(256)]


def hex_bytes(contents: tf.Tensor, count: int) -> tf.Tensor:
    """The first `count` bytes of a string as hex pairs ("89 50 4e 47"): error messages carry
    this, never raw input bytes (a status message must stay valid UTF-8 for clients)."""
    length = tf.minimum(tf.strings.length(contents), count)
    values = tf.cast(_bytes_at(contents, 0, count)[:length], tf.int32)
    return tf.strings.reduce_join(tf.gather(tf.constant(_HEX), values), separator=" ")


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


def _header(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(size int64 `[2]`, is_bmp, the first `_HEAD` bytes, the checked contents)."""
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
                tf.strings.join(
                    [
                        f"Undecodable image: the bytes are not a {_FORMATS} file (they start "
                        "with, in hex: ",
                        hex_bytes(contents, 8),
                        '). Send the encoded file\'s bytes (in REST: base64 as {"b64": ...}).',
                    ]
                )
            ],
        ),
    )
    head = _bytes_at(contents, 0, _HEAD)

    def jpeg() -> tf.Tensor:
        return tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64)

    def other() -> tf.Tensor:
        png = tf.stack([_uint(head, 20, 4, True), _uint(head, 16, 4, True)])
        gif = tf.stack([_uint(head, 8, 2, False), _uint(head, 6, 2, False)])
        bmp = tf.stack([tf.abs(_int32_le(head, 22)), _int32_le(head, 18)])
        return tf.where(is_png, png, tf.where(is_gif, gif, bmp))

    return tf.cond(is_jpeg, jpeg, other), is_bmp, head, contents


def header_size(contents: tf.Tensor) -> tf.Tensor:
    """(height, width) as int64 `[2]` from the header of an encoded image (scalar string).

    Reads only the header: JPEG through `tf.image.extract_jpeg_shape`, PNG (IHDR), GIF
    (logical screen) and BMP (DIB header) from their fixed byte offsets. Fails with
    `InvalidArgumentError` for an empty string or bytes of no supported format (checked in
    that order, each check gating the next step).
    """
    return _header(contents)[0]


# --- decode ---------------------------------------------------------------------------------


def _bmp_check(is_bmp: tf.Tensor, head: tf.Tensor) -> Any:
    """Assert op: a BMP is one TF decodes right (uncompressed 8/24/32-bit, or 32-bit with
    the standard BITFIELDS masks); TF's decoder would return wrong pixels for the others."""
    dib, bits = _uint(head, 14, 4, False), _uint(head, 28, 2, False)
    compression = _uint(head, 30, 4, False)
    masks = tf.stack([_uint(head, 54 + 4 * i, 4, False) for i in range(3)])
    standard = tf.reduce_all(tf.equal(masks, tf.constant(_BMP_MASKS, tf.int64)))
    supported = (dib >= 40) & (
        ((compression == 0) & ((bits == 8) | (bits == 24) | (bits == 32)))
        | ((compression == 3) & (bits == 32) & standard)
    )
    return tf.debugging.Assert(
        tf.logical_not(is_bmp) | supported,
        [
            "Unsupported BMP (bits per pixel, compression:",
            bits,
            compression,
            "): only uncompressed 8-bit (palette), 24-bit and 32-bit BMPs are read; save the "
            "image as PNG or a 24-bit BMP.",
        ],
    )


def _bmp_palette_image(contents: tf.Tensor, head: tf.Tensor) -> tf.Tensor:
    """An 8-bit BMP through its palette (BGRX entries after the DIB header) -> RGB uint8."""
    used = _uint(head, 46, 4, False)
    count = tf.where(used == 0, tf.constant(256, tf.int64), tf.minimum(used, 256))
    table = tf.reshape(_bytes_at(contents, 14 + _uint(head, 14, 4, False), 1024), [256, 4])
    in_use = tf.range(256, dtype=tf.int64)[:, tf.newaxis] < count
    table = tf.where(in_use, table, tf.zeros_like(table))
    index = tf.io.decode_bmp(contents, channels=0)[..., 0]  # the raw palette indices
    return tf.gather(table[:, 2::-1], tf.cast(index, tf.int32))  # BGR -> RGB


def decode_image(contents: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Encoded bytes (scalar string) -> RGB uint8 `[H, W, 3]`, checked before decoding.

    JPEG (RGB, grey, CMYK), PNG (grey, grey + alpha, RGB, RGBA, palette, 8 or 16 bits), GIF
    (first frame) and BMP; the conversions are in the module docstring. Raises
    `InvalidArgumentError` (never crashes or runs out of memory) for, in this order: an
    empty string, bytes that are no JPEG/PNG/GIF/BMP, a zero-sized image, an image of more
    than `max_pixels` pixels (checked from the header, before any pixel is decoded: every
    check gates the next step), an unsupported BMP, and corrupt data (from the decoder).
    """
    size, is_bmp, head, contents = _header(contents)
    checks = [*size_checks(size[0], size[1], max_pixels), _bmp_check(is_bmp, head)]
    contents = after(contents, *checks)
    palette_bmp = is_bmp & tf.equal(_uint(head, 28, 2, False), 8)

    def jpeg() -> tf.Tensor:  # libjpeg's accurate IDCT: the pixels PIL and libjpeg give
        return tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE")

    def other() -> tf.Tensor:
        return tf.cond(
            palette_bmp,
            lambda: _bmp_palette_image(contents, head),
            lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
        )

    image = tf.cond(_starts_with(contents, _MAGIC["jpeg"]), jpeg, other)
    return tf.ensure_shape(image, [None, None, 3])


def check_pixels(image: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """A decoded `[H, W, C]` image, passed on only once it is not empty nor over
    `max_pixels` (the same errors as `decode_image`)."""
    shape = tf.shape(image, out_type=tf.int64)
    return after(image, *size_checks(shape[0], shape[1], max_pixels))


def to_rgb(image: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """An image as stored -> float32 RGB `[H, W, 3]`, values 0..255 (for training).

    Accepts encoded bytes (scalar string: `decode_image`, bounded by `max_pixels`) or a
    decoded `[H, W, C]` tensor of any real dtype with C = 1 (grey), 2 (grey + alpha), 3
    (RGB) or 4 (RGBA): alpha is dropped, grey repeated. uint16 images are scaled by 1/257
    (0..65535 -> 0..255); other integer and float images are taken as 0..255.

    Raises `ValueError` for a tensor that is not `[H, W, C]` and `InvalidArgumentError` (at
    run time) for undecodable bytes, C not in 1..4, or an empty image.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.string:
        return tf.cast(decode_image(image, max_pixels), tf.float32)
    if image.shape.rank not in (None, 3):
        raise ValueError(f"Expected an image [H, W, C], got shape {image.shape}.")
    if image.dtype == tf.bool or not (image.dtype.is_integer or image.dtype.is_floating):
        raise ValueError(f"Expected an image of real numbers, got dtype {image.dtype.name}.")
    scale = 1 / 257 if image.dtype == tf.uint16 else 1.0
    channels = tf.shape(image)[-1]
    image = after(
        image,
        tf.debugging.Assert(
            (channels >= 1) & (channels <= 4) & (tf.size(image) > 0),
            ["Expected a non-empty image [H, W, C] with C in 1..4; got shape", tf.shape(image)],
        ),
    )
    # grey (1) and grey + alpha (2) -> [0, 0, 0]; RGB / RGBA -> [0, 1, 2]
    index = tf.where(channels < 3, tf.zeros([3], tf.int32), tf.range(3))
    image = tf.cast(tf.gather(image, index, axis=-1), tf.float32)
    if scale != 1.0:
        image = image * scale
    return tf.ensure_shape(image, [None, None, 3])


# --- eager loading --------------------------------------------------------------------------


def _unquote(part: str) -> str:
    """`b'text'` (how an eager assert prints a string) -> `text`."""
    match = re.fullmatch(r"b(['\"])(.*)\1", part.strip())
    return match.group(2).replace("\\'", "'") if match else part.strip()


def short_message(error: BaseException) -> str:
    """One line of an error, without TF's decorations (`{{function_node ...}}`, `[Op:...]`,
    the `Expected ... to be true. Summarized data:` and `assertion failed: [...]` wrappers
    of a failed `tf.debugging.Assert`)."""
    message = getattr(error, "message", None) or str(error)
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message.strip())
    if "Summarized data: " in message:  # an eager assert: one data item per line
        items = message.split("Summarized data: ", 1)[1].splitlines()
        return " ".join(_unquote(i) for i in items if i.strip() and not i.strip().startswith("[["))
    message = re.sub(r"\s*\[Op:[^\]]*\].*$", "", message.splitlines()[0] if message else "")
    if message.startswith("assertion failed: "):  # a graph assert: "[item] [item] ..."
        message = message[len("assertion failed: ") :].strip("[]").replace("] [", " ")
        message = message.replace("\\'", "'").replace('\\"', '"')
    return message or type(error).__name__


def _pil_array(image: Any) -> np.ndarray:
    """A PIL image as an RGB uint8 array; 16-bit modes keep their high byte (as TF's PNG
    decoder), 32-bit int ("I") and float ("F") modes go through the array rules."""
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if image.mode in ("I", "F"):
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def _array_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """`[H, W]` or `[H, W, C]` (C in 1..4) of any real dtype -> RGB uint8 `[H, W, 3]`."""
    if array.ndim == 2:
        array = array[..., np.newaxis]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or array.size == 0:
        raise ValueError(
            f"{name}: expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (grey, RGB "
            f"or RGBA), got an array of shape {array.shape}."
        )
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name}: expected an image of real numbers, got dtype {array.dtype}.")
    array = array[..., [0, 0, 0]] if array.shape[-1] < 3 else array[..., :3]
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)  # as TF's decoder reads a 16-bit PNG
    low, high = float(array.min()), float(array.max())
    if not (low >= -0.5 and high < 255.5):  # what rounds into 0..255 (NaN fails too)
        raise ValueError(
            f"{name}: pixel values must be 0..255, got {low:g}..{high:g}; scale the image to "
            "0..255 (or pass uint16 for 16-bit data)."
        )
    if np.issubdtype(array.dtype, np.floating) and 0 < high <= 1:
        raise ValueError(
            f"{name}: float pixels all within 0..1 look like a [0, 1]-scaled image; multiply "
            "by 255 (pixel values are 0..255)."
        )
    return np.clip(np.round(array), 0, 255).astype(np.uint8)


def _decode_eager(contents: tf.Tensor, name: str, max_pixels: int) -> tf.Tensor:
    try:
        return decode_image(contents, max_pixels)
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(f"{name} is not a readable image: {short_message(error)}") from error


def load_image(image_or_path: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Any image, eagerly (notebooks, command lines) -> RGB uint8 `[H, W, 3]` tensor.

    Args:
        image_or_path: a file path (str or PathLike; `tf.io.gfile` paths such as gs://
            work), encoded bytes or a scalar `tf.string` tensor (through `decode_image`, so
            a file gives the same pixels as the serving signature), a PIL image of any mode
            (L, LA, P, RGB, RGBA, CMYK, I;16, ...), or an array / tensor `[H, W]` or
            `[H, W, C]` with C = 1, 2, 3 or 4 (alpha dropped). uint8 is taken as it is,
            uint16 keeps its high byte, other dtypes must hold values 0..255 (rounded;
            float images scaled to 0..1 are refused).
        max_pixels: bound on the decoded pixels of an encoded image.

    Raises:
        ImageNotFoundError (a FileNotFoundError and a ValueError): the path is not a file.
        ValueError: bytes that are no (readable) image, an array of another shape or with
            values outside 0..255; the message names the file.
    """
    if isinstance(image_or_path, str | os.PathLike):
        path = os.fspath(image_or_path)
        if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
            what = "is a directory, not an image file" if tf.io.gfile.exists(path) else "not found"
            raise ImageNotFoundError(f"Image file {path} {what}.")
        return _decode_eager(tf.io.read_file(path), f"Image file {path}", max_pixels)
    if isinstance(image_or_path, bytes | bytearray):
        return _decode_eager(tf.constant(bytes(image_or_path)), "The image bytes", max_pixels)
    if isinstance(image_or_path, tf.Tensor) and image_or_path.dtype == tf.string:
        if image_or_path.shape.rank != 0:
            raise ValueError(f"Expected one encoded image (a scalar string), got {image_or_path}.")
        return _decode_eager(image_or_path, "The image bytes", max_pixels)
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(image_or_path, pil.Image):
        array, name = _pil_array(image_or_path), f"PIL image of mode {image_or_path.mode}"
    else:
        array, name = np.asarray(image_or_path), "The image array"
    return tf.convert_to_tensor(_array_rgb(array, name))

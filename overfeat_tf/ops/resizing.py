"""Resizing images, the package's one resize: the bounded short-side size and the resize op.

    [H, W, 3] or [B, H, W, 3]  --short_side_size, resize, resize_short_side-->  float32 0..255

`short_side_size` gives the size that gives an image a short side of `side` px, keeping its
aspect ratio up to a bound (`max_aspect_ratio`, default 4: a more elongated image is
squeezed to it, so a resized image has at most side x 4 side pixels whatever its input);
`resize` is bilinear, antialiased when shrinking, clipped to 0..255. The pyramid, the
training inputs, the features and the export all call them. Core TF ops, graph-safe.

`resize_windows` is the training augmentation's form of the same bilinear resize: a batch of
windows (random scale, offset and flip each) cut from a batch of images, each as if the image
had been resized first and the window cropped from it, but computed in one op at the cost of
the outputs alone (`tf.image.crop_and_resize` with half-pixel centres), not of the resized
images (up to 4x larger at the spatial tasks' largest scale).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

# A default bound on the long side of every resized image, in units of its short side: an
# image more elongated than this is squeezed to it (see `short_side_size`).
DEFAULT_MAX_ASPECT_RATIO = 4.0


def _check_side(side: Any, minimum: int) -> None:
    if isinstance(side, bool) or (isinstance(side, int) and side < minimum):
        raise ValueError(
            f"The short side must be an int >= {minimum} (pixels), got {side!r}"
            + ("; 0 keeps the original size." if minimum == 0 else ".")
        )


def short_side_size(
    hw: Any, side: int | tf.Tensor, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
) -> tf.Tensor:
    """The size (h, w) int32 `[2]` that gives an image of size `hw` (H, W) a short side of
    `side` px, keeping its aspect ratio: `round((H, W) * side / min(H, W))`, each >= side,
    and the long side at most `floor(side * max_aspect_ratio)`.

    The bound makes the cost of a resized image a function of `side` alone (at most
    `side * floor(side * max_aspect_ratio)` pixels), whatever the input's shape: an image
    more elongated than `max_aspect_ratio` : 1 (a 5000 x 2 px strip, say) is squeezed along
    its long side to that ratio instead of becoming millions of pixels long.
    `side` may be a Python int or an int tensor (e.g. drawn at random in `tf.data`).
    """
    _check_side(side, 1)
    check_aspect_ratio(max_aspect_ratio)
    hw = tf.cast(hw, tf.float32)
    scale = tf.cast(side, tf.float32) / tf.reduce_min(hw)
    size = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), tf.cast(side, tf.int32))
    longest = tf.cast(tf.math.floor(tf.cast(side, tf.float32) * max_aspect_ratio), tf.int32)
    return tf.minimum(size, longest)


def check_aspect_ratio(max_aspect_ratio: Any) -> float:
    """`max_aspect_ratio` as a float >= 1, or ValueError."""
    if (
        isinstance(max_aspect_ratio, bool)
        or not isinstance(max_aspect_ratio, int | float)
        or not max_aspect_ratio >= 1
    ):
        raise ValueError(
            f"max_aspect_ratio must be a number >= 1 (long side / short side), got "
            f"{max_aspect_ratio!r}."
        )
    return float(max_aspect_ratio)


def resize(image: tf.Tensor, size: Any) -> tf.Tensor:
    """Resize `[H, W, C]` or `[B, H, W, C]` (any real dtype, 0..255) to `size` (h, w) px.

    Bilinear (`tf.image.resize`), antialiased when either side shrinks (antialiasing is a
    no-op, but slower, when both grow); clipped to 0..255. Returns float32. Graph-safe:
    the sizes may be unknown until run time.
    """
    image = tf.cast(image, tf.float32)
    size = tf.cast(size, tf.int32)
    shrinks = tf.reduce_any(size < tf.shape(image)[-3:-1])
    resized = tf.cond(
        shrinks,
        lambda: tf.image.resize(image, size, method="bilinear", antialias=True),
        lambda: tf.image.resize(image, size, method="bilinear"),
    )
    return tf.clip_by_value(resized, 0.0, 255.0)


def resize_short_side(
    image: tf.Tensor,
    side: int | tf.Tensor,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> tf.Tensor:
    """Resize `[H, W, C]` or `[B, H, W, C]` so its short side is `side` px, keeping the
    aspect ratio up to `max_aspect_ratio` (`short_side_size`, then `resize`). float32
    0..255; `side=0` only casts."""
    _check_side(side, 0)
    image = tf.convert_to_tensor(image)
    if isinstance(side, int) and side == 0:
        return tf.cast(image, tf.float32)
    return resize(image, short_side_size(tf.shape(image)[-3:-1], side, max_aspect_ratio))


def resize_windows(
    images: tf.Tensor, windows: tf.Tensor, size: int, fill: float = 0.0
) -> tf.Tensor:
    """Bilinear `size` x `size` views of windows of a batch of images, in one op.

    Window `b` is a box of `images[b]` in continuous PIXEL coordinates yxyx
    (pixel `i` covers `[i, i + 1)`; the box may extend past the image, and `x0 > x1` gives
    the mirrored view). Output pixel `(i, j)` samples the image at the centre of its cell,
    `y0 + (i + 0.5) * (y1 - y0) / size` (and so for x), bilinearly, with half-pixel
    centres: exactly what `resize` (not shrinking) of the whole image to `(H, W) * scale`
    followed by a crop would give, where the window is the crop's box divided by `scale`.
    Samples outside the image read `fill` (a uint8 batch padded by `padded_batch` should be
    padded with the same value); within half a pixel of an edge they blend the edge with
    `fill`. No antialiasing (a shrink by up to ~2x aliases little; the spatial tasks' scales
    mostly enlarge).

    Args:
        images: `[B, H, W, C]` any real dtype (e.g. uint8 padded to the batch's largest).
        windows: `[B, 4]` float32 yxyx in pixels of `images` (one per image).
        size: the output side (px).
        fill: the value outside the images.

    Returns:
        float32 `[B, size, size, C]`.
    """
    _check_side(size, 1)
    windows = tf.cast(windows, tf.float32)
    start, end = windows[:, :2], windows[:, 2:]
    step = (end - start) / size  # source px per output px (negative: mirrored)
    first = start + 0.5 * step - 0.5  # sample coordinates of the first and last output pixels
    last = start + (size - 0.5) * step - 0.5
    extent = tf.cast(tf.maximum(tf.shape(images)[1:3] - 1, 1), tf.float32)
    boxes = tf.concat([first / extent, last / extent], axis=1)
    count = tf.shape(images)[0]
    return tf.image.crop_and_resize(
        images, boxes, tf.range(count), [size, size], extrapolation_value=fill
    )

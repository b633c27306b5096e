"""Bounding-box utilities: formats, areas, overlaps, window geometry, regression targets.

Conventions (every function restates the ones it uses):
- `yxyx` = `[ymin, xmin, ymax, xmax]` (the package-wide order, as in the TF Object Detection
  API); `xyxy` = `[xmin, ymin, xmax, ymax]`; `centre-size` = `[cy, cx, h, w]`.
- Pixel boxes use continuous coordinates: pixel (r, c) covers [r, r + 1) x [c, c + 1), so a
  box `[0, 0, H, W]` covers an H x W image and its area is `(ymax - ymin) * (xmax - xmin)`.
- Normalized boxes are pixel boxes divided by (H, W), so they lie in [0, 1].
- Image sizes are always `(height, width)`.

All functions are TF ops (graph-safe, usable in `tf.data` and `tf.function` with unknown
shapes) and are batched over any leading dims; box tensors have a last dim of 4.

Window geometry (paper §3.3, §4.2). For a network whose output map has stride `s` (the
model's `fine_stride` or `coarse_stride`) and whose output cell sees a square window of side
`crop_size`, output cell (i, j) sees the window `[i*s, j*s, i*s + crop, j*s + crop]` (yxyx
pixels) of the *resized* (and possibly flipped) image that was fed to the net. A pyramid
level is an original image (H0, W0) resized to (Hs, Ws) and optionally flipped left-right;
`level_to_original` / `original_to_level` map boxes between the two frames.

Regression targets (paper §4.2: "the ground-truth bounding box, shifted into the frame of
reference of the regressor's translation offset"): a box is encoded relative to the window
that predicts it as

    deltas = (box - [wy0, wx0, wy0, wx0]) / [wh, ww, wh, ww]     (wh = wy1 - wy0, ww = ...)

i.e. the box edges in units of the window side, with the window's top-left corner at 0 and
its bottom-right corner at 1 (windows are square, so wh == ww == crop_size).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = [
    "box_area",
    "center_size_to_corners",
    "clip_boxes",
    "corners_to_center_size",
    "coverage",
    "decode_boxes",
    "denormalize_boxes",
    "encode_boxes",
    "flip_left_right",
    "intersection",
    "level_to_original",
    "normalize_boxes",
    "original_to_level",
    "pairwise_intersection",
    "pairwise_iou",
    "window_boxes",
    "xyxy_to_yxyx",
    "yxyx_to_xyxy",
]

TensorLike = tf.Tensor | tf.Variable | float | int | list | tuple


def _as_boxes(boxes: TensorLike, dtype: tf.DType | None = None) -> tf.Tensor:
    """Converts to a float tensor and checks the last dim is 4 (statically when known)."""
    boxes = tf.convert_to_tensor(boxes)
    if dtype is not None:
        boxes = tf.cast(boxes, dtype)
    elif not boxes.dtype.is_floating:
        boxes = tf.cast(boxes, tf.float32)
    last = boxes.shape[-1] if boxes.shape.rank is not None else None
    if boxes.shape.rank == 0:
        raise ValueError("Boxes must have a last dimension of 4, got a scalar.")
    if last is not None and last != 4:
        raise ValueError(f"Boxes must have a last dimension of 4, got shape {boxes.shape}.")
    return boxes


def _size_yxyx(image_size: TensorLike, dtype: tf.DType) -> tf.Tensor:
    """(height, width) [..., 2] -> [..., 4] scale `[h, w, h, w]`."""
    size = tf.cast(tf.convert_to_tensor(image_size), dtype)
    if size.shape.rank == 0:
        raise ValueError("image_size must be (height, width), got a scalar.")
    if size.shape.rank is not None and size.shape[-1] is not None and size.shape[-1] != 2:
        raise ValueError(f"image_size must have a last dimension of 2, got {size.shape}.")
    return tf.concat([size, size], axis=-1)


# --- formats --------------------------------------------------------------------------------
def yxyx_to_xyxy(boxes: TensorLike) -> tf.Tensor:
    """`[ymin, xmin, ymax, xmax]` -> `[xmin, ymin, xmax, ymax]`, any units. [..., 4] -> [..., 4]."""
    boxes = _as_boxes(boxes)
    return tf.gather(boxes, [1, 0, 3, 2], axis=-1)


def xyxy_to_yxyx(boxes: TensorLike) -> tf.Tensor:
    """`[xmin, ymin, xmax, ymax]` -> `[ymin, xmin, ymax, xmax]`, any units. [..., 4] -> [..., 4]."""
    boxes = _as_boxes(boxes)
    return tf.gather(boxes, [1, 0, 3, 2], axis=-1)


def corners_to_center_size(boxes: TensorLike) -> tf.Tensor:
    """yxyx corners -> `[cy, cx, h, w]`, any units (pixels or normalized). [..., 4] -> [..., 4]."""
    boxes = _as_boxes(boxes)
    y0, x0, y1, x1 = tf.unstack(boxes, 4, axis=-1)
    return tf.stack([(y0 + y1) * 0.5, (x0 + x1) * 0.5, y1 - y0, x1 - x0], axis=-1)


def center_size_to_corners(boxes: TensorLike) -> tf.Tensor:
    """`[cy, cx, h, w]` -> yxyx corners, any units (pixels or normalized). [..., 4] -> [..., 4]."""
    boxes = _as_boxes(boxes)
    cy, cx, h, w = tf.unstack(boxes, 4, axis=-1)
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def normalize_boxes(boxes: TensorLike, image_size: TensorLike) -> tf.Tensor:
    """yxyx pixels -> yxyx normalized (divided by height / width).

    Args:
        boxes: [..., 4] yxyx in pixels.
        image_size: (height, width), shape [2] or [..., 2] broadcastable against
            `boxes[..., :2]` (e.g. [B, 1, 2] for boxes [B, N, 4]).

    Returns:
        [..., 4] yxyx normalized to [0, 1] for boxes inside the image.
    """
    boxes = _as_boxes(boxes)
    return boxes / _size_yxyx(image_size, boxes.dtype)


def denormalize_boxes(boxes: TensorLike, image_size: TensorLike) -> tf.Tensor:
    """yxyx normalized -> yxyx pixels (multiplied by height / width).

    Args:
        boxes: [..., 4] yxyx normalized.
        image_size: (height, width), [2] or [..., 2] broadcastable against `boxes[..., :2]`.

    Returns:
        [..., 4] yxyx in pixels.
    """
    boxes = _as_boxes(boxes)
    return boxes * _size_yxyx(image_size, boxes.dtype)


def clip_boxes(boxes: TensorLike, image_size: TensorLike) -> tf.Tensor:
    """Clips yxyx boxes to the image `[0, H] x [0, W]`.

    Units follow `image_size`: pixels with `(H, W)`, normalized with `(1, 1)`.

    Args:
        boxes: [..., 4] yxyx.
        image_size: (height, width), [2] or [..., 2] broadcastable against `boxes[..., :2]`.

    Returns:
        [..., 4] yxyx, every coordinate within the image.
    """
    boxes = _as_boxes(boxes)
    upper = _size_yxyx(image_size, boxes.dtype)
    return tf.minimum(tf.maximum(boxes, tf.zeros_like(boxes)), upper)


def flip_left_right(boxes: TensorLike, width: TensorLike) -> tf.Tensor:
    """Mirrors yxyx boxes in an image of the given width: x -> width - x, xmin/xmax swapped.

    Units follow `width`: pixels with the image width, normalized with 1.

    Args:
        boxes: [..., 4] yxyx.
        width: scalar or [...] broadcastable against `boxes[..., 0]`.

    Returns:
        [..., 4] yxyx of the mirrored boxes (an involution: flipping twice is the identity).
    """
    boxes = _as_boxes(boxes)
    width = tf.cast(width, boxes.dtype)
    y0, x0, y1, x1 = tf.unstack(boxes, 4, axis=-1)
    return tf.stack([y0, width - x1, y1, width - x0], axis=-1)


# --- areas and overlaps ---------------------------------------------------------------------
def box_area(boxes: TensorLike) -> tf.Tensor:
    """Area of yxyx boxes, in squared units of the boxes (0 for empty / inverted boxes).

    [..., 4] -> [...].
    """
    boxes = _as_boxes(boxes)
    y0, x0, y1, x1 = tf.unstack(boxes, 4, axis=-1)
    return tf.nn.relu(y1 - y0) * tf.nn.relu(x1 - x0)


def intersection(boxes1: TensorLike, boxes2: TensorLike) -> tf.Tensor:
    """Element-wise intersection area of yxyx boxes, any units, with broadcasting.

    [..., 4] x [..., 4] -> [...] (e.g. [N, 1, 4] x [1, M, 4] -> [N, M]).
    """
    boxes1 = _as_boxes(boxes1)
    boxes2 = _as_boxes(boxes2, boxes1.dtype)
    a = tf.unstack(boxes1, 4, axis=-1)
    b = tf.unstack(boxes2, 4, axis=-1)
    ih = tf.nn.relu(tf.minimum(a[2], b[2]) - tf.maximum(a[0], b[0]))
    iw = tf.nn.relu(tf.minimum(a[3], b[3]) - tf.maximum(a[1], b[1]))
    return ih * iw


def pairwise_intersection(boxes1: TensorLike, boxes2: TensorLike) -> tf.Tensor:
    """Intersection areas of every pair of yxyx boxes, any units.

    Args:
        boxes1: [..., N, 4] yxyx.
        boxes2: [..., M, 4] yxyx (same leading dims as `boxes1`, or broadcastable).

    Returns:
        [..., N, M] intersection areas.
    """
    boxes1 = _as_boxes(boxes1)
    boxes2 = _as_boxes(boxes2, boxes1.dtype)
    return intersection(tf.expand_dims(boxes1, -2), tf.expand_dims(boxes2, -3))


def pairwise_iou(boxes1: TensorLike, boxes2: TensorLike) -> tf.Tensor:
    """Intersection over union of every pair of yxyx boxes, any units (0 when the union is 0).

    Args:
        boxes1: [..., N, 4] yxyx.
        boxes2: [..., M, 4] yxyx (same leading dims as `boxes1`, or broadcastable).

    Returns:
        [..., N, M] IoU in [0, 1].
    """
    boxes1 = _as_boxes(boxes1)
    boxes2 = _as_boxes(boxes2, boxes1.dtype)
    inter = pairwise_intersection(boxes1, boxes2)  # [..., N, M]
    union = tf.expand_dims(box_area(boxes1), -1) + tf.expand_dims(box_area(boxes2), -2) - inter
    return tf.math.divide_no_nan(inter, union)


def coverage(boxes: TensorLike, windows: TensorLike) -> tf.Tensor:
    """Fraction of each yxyx box inside its window: area(box ∩ window) / area(box), any units.

    Element-wise with broadcasting ([..., 4] x [..., 4] -> [...]); 0 for empty boxes. Used to
    skip training windows whose field of view holds < 50% of the box (paper §4.2).
    """
    boxes = _as_boxes(boxes)
    windows = _as_boxes(windows, boxes.dtype)
    return tf.math.divide_no_nan(intersection(boxes, windows), box_area(boxes))


# --- window geometry ------------------------------------------------------------------------
def window_boxes(
    out_h: int | tf.Tensor,
    out_w: int | tf.Tensor,
    stride: int | float | tf.Tensor,
    window: int | float | tf.Tensor,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """The input window each output cell sees, yxyx in pixels of the resized image.

    Cell (i, j) of an `out_h x out_w` map at `stride` (e.g. `config.fine_stride`) sees
    `[i*stride, j*stride, i*stride + window, j*stride + window]` where `window` is
    `config.crop_size`.

    Args:
        out_h, out_w: output map size (Python ints or scalar tensors).
        stride: input pixels between neighbouring output cells.
        window: side in input pixels of the window one cell sees.
        dtype: float dtype of the result.

    Returns:
        [out_h, out_w, 4] yxyx pixel windows.
    """
    if (isinstance(out_h, int) and out_h < 0) or (isinstance(out_w, int) and out_w < 0):
        raise ValueError(f"Output map size must be >= 0, got {out_h}x{out_w}.")
    if isinstance(stride, int | float) and stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}.")
    if isinstance(window, int | float) and window <= 0:
        raise ValueError(f"window must be > 0, got {window}.")
    stride = tf.cast(stride, dtype)
    window = tf.cast(window, dtype)
    ys = tf.cast(tf.range(out_h), dtype) * stride  # [out_h]
    xs = tf.cast(tf.range(out_w), dtype) * stride  # [out_w]
    y0, x0 = tf.meshgrid(ys, xs, indexing="ij")  # [out_h, out_w] each
    return tf.stack([y0, x0, y0 + window, x0 + window], axis=-1)


def level_to_original(
    boxes: TensorLike,
    original_size: TensorLike,
    level_size: TensorLike,
    flipped: bool | tf.Tensor = False,
) -> tf.Tensor:
    """Maps yxyx pixel boxes from a pyramid level back to the original image.

    The original image (H0, W0) was resized to (Hs, Ws) and, if `flipped`, mirrored
    left-right before the net. A box in the level's pixels is unflipped (x -> Ws - x, xmin and
    xmax swapped) and then scaled by (H0 / Hs, W0 / Ws). Inverse of `original_to_level`.

    Args:
        boxes: [..., 4] yxyx, pixels of the resized (and flipped) image.
        original_size: (H0, W0), [2] or [..., 2] broadcastable against `boxes[..., :2]`.
        level_size: (Hs, Ws), same shape rules.
        flipped: bool, scalar or [...] broadcastable against `boxes[..., 0]`.

    Returns:
        [..., 4] yxyx in pixels of the original image.
    """
    boxes = _as_boxes(boxes)
    level = _size_yxyx(level_size, boxes.dtype)  # [..., 4] = [Hs, Ws, Hs, Ws]
    original = _size_yxyx(original_size, boxes.dtype)
    unflipped = flip_left_right(boxes, level[..., 1])
    flipped = tf.convert_to_tensor(flipped, tf.bool)
    boxes = tf.where(flipped[..., tf.newaxis], unflipped, boxes)
    return boxes * original / level


def original_to_level(
    boxes: TensorLike,
    original_size: TensorLike,
    level_size: TensorLike,
    flipped: bool | tf.Tensor = False,
) -> tf.Tensor:
    """Maps yxyx pixel boxes from the original image into a pyramid level.

    Scales by (Hs / H0, Ws / W0) and then, if `flipped`, mirrors left-right in the level
    (x -> Ws - x, xmin and xmax swapped). Inverse of `level_to_original`.

    Args:
        boxes: [..., 4] yxyx, pixels of the original image.
        original_size: (H0, W0), [2] or [..., 2] broadcastable against `boxes[..., :2]`.
        level_size: (Hs, Ws), same shape rules.
        flipped: bool, scalar or [...] broadcastable against `boxes[..., 0]`.

    Returns:
        [..., 4] yxyx in pixels of the resized (and flipped) image.
    """
    boxes = _as_boxes(boxes)
    level = _size_yxyx(level_size, boxes.dtype)
    original = _size_yxyx(original_size, boxes.dtype)
    boxes = boxes * level / original
    mirrored = flip_left_right(boxes, level[..., 1])
    flipped = tf.convert_to_tensor(flipped, tf.bool)
    return tf.where(flipped[..., tf.newaxis], mirrored, boxes)


# --- regression targets ---------------------------------------------------------------------
def encode_boxes(boxes: TensorLike, windows: TensorLike) -> tf.Tensor:
    """Regression targets: yxyx boxes in the frame of the windows that predict them.

    `deltas = (box - [wy0, wx0, wy0, wx0]) / [wh, ww, wh, ww]` with `wh = wy1 - wy0`,
    `ww = wx1 - wx0`: the box edges in units of the window side, the window's top-left at 0
    and its bottom-right at 1. Boxes and windows share units (pixels of the same image).

    Args:
        boxes: [..., 4] yxyx.
        windows: [..., 4] yxyx, broadcastable against `boxes`, with positive sides.

    Returns:
        [..., 4] deltas `[ymin, xmin, ymax, xmax]` in window units.
    """
    boxes = _as_boxes(boxes)
    windows = _as_boxes(windows, boxes.dtype)
    origin = tf.gather(windows, [0, 1, 0, 1], axis=-1)  # [..., 4] = [wy0, wx0, wy0, wx0]
    wy0, wx0, wy1, wx1 = tf.unstack(windows, 4, axis=-1)
    side = tf.stack([wy1 - wy0, wx1 - wx0, wy1 - wy0, wx1 - wx0], axis=-1)
    return (boxes - origin) / side


def decode_boxes(deltas: TensorLike, windows: TensorLike) -> tf.Tensor:
    """Inverse of `encode_boxes`: window-frame deltas -> yxyx boxes in the windows' units.

    `box = deltas * [wh, ww, wh, ww] + [wy0, wx0, wy0, wx0]`.

    Args:
        deltas: [..., 4] `[ymin, xmin, ymax, xmax]` in window units.
        windows: [..., 4] yxyx, broadcastable against `deltas` (pixels or normalized).

    Returns:
        [..., 4] yxyx boxes, in the units of `windows`.
    """
    deltas = _as_boxes(deltas)
    windows = _as_boxes(windows, deltas.dtype)
    origin = tf.gather(windows, [0, 1, 0, 1], axis=-1)
    wy0, wx0, wy1, wx1 = tf.unstack(windows, 4, axis=-1)
    side = tf.stack([wy1 - wy0, wx1 - wx0, wy1 - wy0, wx1 - wx0], axis=-1)
    return deltas * side + origin

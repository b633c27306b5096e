"""Spatial training data for localization (box regressor, paper §4.2) and detection (§5).

Both tasks train on whole output *maps*: a training image is rescaled (short side drawn
from several scales, so the regressor learns to predict across scales, §4.2; the smallest
is the net's window, padded to the training size), cropped to a fixed `train_size` x
`train_size` (so images batch), flipped at random, and every cell of
the fine-stride output map gets targets from the ground-truth boxes and the window the cell
sees (`boxes.window_boxes`):

    window w, box b:   coverage = |b ∩ w| / |b|,   fill = |b ∩ w| / |w|,   IoU(b, w)

- box target (localization): cells with a box of coverage >= 0.5 ("windows whose field of
  view holds less than 50% of the box are not trained on"), regressing the box of highest
  IoU among those, as its edges in the window's frame (`boxes.encode_boxes`); the loss
  (`losses.WindowBoxLoss`: smooth L1 by default, the paper's L2 with `box_loss="l2"`) is on
  the 4 numbers of that box's class (class-specific) or the single 4 (class-agnostic).
- class target (detection): the class of the box of highest IoU among those with
  coverage >= 0.5 and fill >= `min_fill` (the object is mostly inside and not tiny in the
  window); background when no box has coverage >= 0.25 with fill >= `min_fill / 2`;
  ignored in between. Background is class `C` (the extra, last logit). Negatives are picked
  on the fly in every image (paper §5): all positives, plus `negative_ratio` negatives per
  positive (at least `min_negatives`), half of them the most offending (highest non-
  background probability), the rest at random.

Box parametrization: the targets are the box's yxyx edges in units of the window side,
relative to the window's top-left corner (`(box - [wy0, wx0, wy0, wx0]) / crop_size`; the
window itself is `[0, 0, 1, 1]`). They do not depend on the image or window size in pixels
(a box twice the size in a window twice the size has the same target) and they are bounded
by the coverage rule, whatever the box's size: coverage >= 0.5 needs at least half of the
box's height inside the window along y (and half its width along x), so the box is at most
2 windows tall (wide), reaches at most 1 window past the window's edge, and overlaps it:
ymin, xmin in [-1, 1) and ymax, xmax in (0, 2]. Boxes much larger than the window (a photo-
filling object at a large scale) are never regressed by that window; smaller scales of
the same image train them. A fresh regressor starts by predicting its own window (`reg_out`
bias `[0, 0, 1, 1]` per class, kernel N(0, 1e-3)): the first loss is the target's distance
from the window, not a random output's, so the first steps on real photos stay small
(`training.tasks.init_window_regressor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from overfeat_tf.architecture.config import PIXEL_MEAN, ModelConfig
from overfeat_tf.data import image_io, tfds_io
from overfeat_tf.data import inputs as data
from overfeat_tf.ops import boxes as box_ops
from overfeat_tf.ops import resizing

TARGET_RANGE = (-1.0, 2.0)  # every box-target edge lies in this range (module docstring)
COVERAGE = 0.5  # paper §4.2: train on windows holding >= 50% of the box
_NO_BOX = -1  # box_class target of cells with no box to regress
_IGNORE = -1  # class target of cells left out of the detection loss


def default_train_size(config: ModelConfig) -> int:
    """The spatial training crop: crop + 4 fine strides (a 5x5 fine output map)."""
    return config.crop_size + 4 * config.fine_stride


def default_short_sides(train_size: int, crop_size: int | None = None) -> tuple[int, ...]:
    """Rescaled short sides before the crop: 1x, 1.4x and 2x the training size, and first
    the net's window (`crop_size`) when it is smaller than the training size: at that
    scale a photo-filling object fits in about one window, so it gets regression and class
    targets (at the larger scales its box covers too little of any window, module
    docstring); the image is padded to the training size (`random_spatial_window`)."""
    sides = (train_size, round(1.4 * train_size), 2 * train_size)
    return ((crop_size,) if crop_size and crop_size < train_size else ()) + sides


# --- targets --------------------------------------------------------------------------------
def spatial_targets(
    boxes: tf.Tensor,
    labels: tf.Tensor,
    config: ModelConfig,
    size: int,
    num_classes: int,
    min_fill: float = 0.1,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-cell targets of a `size` x `size` training image (`map_targets` with the fine
    output map of that size; h = w = `config.output_size(size)`)."""
    out = config.output_size(size, "fine")
    return map_targets(boxes, labels, config, (out, out), num_classes, min_fill)


def map_targets(
    boxes: tf.Tensor,
    labels: tf.Tensor,
    config: ModelConfig,
    out_size: tuple[Any, Any],
    num_classes: int,
    min_fill: float = 0.1,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Targets of every cell of a fine-stride output map (module docstring rules).

    Args:
        boxes: `[N, 4]` yxyx in PIXELS of the training image (may extend past its border).
        labels: `[N]` int classes in `[0, num_classes)`.
        config: the network (fine stride, window = crop size).
        out_size: (h, w) of the output map, ints or scalar tensors (the map of an H x W
            image: `config.output_size(H)`, `config.output_size(W)`).
        num_classes: C; background is class C.
        min_fill: smallest fraction of the window a positive object must fill.

    Returns:
        class_target int32 `[h, w]` (class, C = background, -1 = ignored) and
        box_target float32 `[h, w, 5]`: 4 edges yxyx in window units (window frame, each in
        `TARGET_RANGE`; see the module docstring) and the box's class as a float (-1 where
        there is no box to regress).
    """
    out_h, out_w = out_size
    windows = tf.reshape(
        box_ops.window_boxes(out_h, out_w, config.fine_stride, config.crop_size), [-1, 4]
    )  # [P, 4]
    # A zero-area dummy box far away keeps every reduction non-empty (images without boxes).
    boxes = tf.concat([tf.cast(boxes, tf.float32), tf.fill([1, 4], -1e6)], axis=0)  # [N+1, 4]
    labels = tf.concat([tf.cast(labels, tf.int32), [_NO_BOX]], axis=0)
    coverage = box_ops.coverage(boxes[tf.newaxis], windows[:, tf.newaxis])  # [P, N+1]
    fill = box_ops.coverage(windows[:, tf.newaxis], boxes[tf.newaxis])  # window filled
    iou = box_ops.pairwise_iou(windows, boxes)

    def best(mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        index = tf.argmax(tf.where(mask, iou, -1.0), axis=1, output_type=tf.int32)  # [P]
        return index, tf.reduce_any(mask, axis=1)

    positive, is_positive = best((coverage >= COVERAGE) & (fill >= min_fill))
    near = tf.reduce_any((coverage >= COVERAGE / 2) & (fill >= min_fill / 2), axis=1)
    class_target = tf.where(
        is_positive,
        tf.gather(labels, positive),
        tf.where(near, _IGNORE, num_classes),
    )
    regress, has_box = best(coverage >= COVERAGE)
    deltas = box_ops.encode_boxes(tf.gather(boxes, regress), windows)  # [P, 4]
    box_class = tf.where(has_box, tf.gather(labels, regress), _NO_BOX)
    box_target = tf.concat([deltas, tf.cast(box_class, tf.float32)[:, tf.newaxis]], axis=1)
    box_target = tf.where(has_box[:, tf.newaxis], box_target, tf.constant([0, 0, 0, 0, -1.0]))
    return tf.reshape(class_target, [out_h, out_w]), tf.reshape(box_target, [out_h, out_w, 5])


# --- input pipeline -------------------------------------------------------------------------
def decode_detection_example(example: dict[str, Any]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A detection-schema example -> (image float32 `[H, W, 3]` 0..255, boxes `[N, 4]`
    normalized yxyx float32, labels `[N]` int32)."""
    objects = example.get("objects")
    if not isinstance(objects, dict) or "bbox" not in objects:
        raise ValueError(
            "Localization and detection need a detection dataset (`objects/bbox`, "
            f"`objects/label`); this one has {sorted(example)}."
        )
    image = image_io.to_rgb(example["image"])
    return image, tf.cast(objects["bbox"], tf.float32), tf.cast(objects["label"], tf.int32)


# The value of the canvas around a scale smaller than the training size: the mean pixel
# (0 after the net's normalization), as uint8 so cached uint8 images can be padded with it.
FILL = round(PIXEL_MEAN)
_EDGE = 1  # px of edge replicated around an image before its windows are cut


def random_spatial_window(
    image_size: tf.Tensor,
    boxes: tf.Tensor,
    size: int,
    short_sides: Sequence[int],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Draw one training view of an image: its short side rescaled to one of
    `short_sides` (`resizing.short_side_size`), padded to `size` where smaller (at a random
    offset), a random `size` x `size` crop, a random horizontal flip.

    Args:
        image_size: (H, W) of the image.
        boxes: `[N, 4]` yxyx NORMALIZED to the image.
        size: crop side (px).
        short_sides: candidate rescaled short sides (px).
        seed: int `[2]` stateless seed.

    Returns:
        window float32 `[4]`: the crop as a yxyx box in continuous PIXELS of the image
        (`x0 > x1` when flipped; it extends past the image where the view is padded), for
        `resizing.resize_windows`; and the boxes `[N, 4]` yxyx in PIXELS of the crop
        (unclipped: boxes may extend past the crop).
    """
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    sides = tf.constant(list(short_sides), tf.int32)
    side = sides[tf.random.stateless_uniform([], seeds[0], 0, len(short_sides), tf.int32)]
    hw = tf.cast(image_size, tf.int32)
    new_hw = resizing.short_side_size(hw, side)  # each side >= side
    pad = tf.maximum(size - new_hw, 0)  # [2]
    pad_seeds = tf.random.experimental.stateless_split(seeds[3], num=2)
    top = tf.random.stateless_uniform([], pad_seeds[0], 0, pad[0] + 1, tf.int32)
    left = tf.random.stateless_uniform([], pad_seeds[1], 0, pad[1] + 1, tf.int32)
    canvas = new_hw + pad
    y0 = tf.random.stateless_uniform([], seeds[1], 0, canvas[0] - size + 1, tf.int32)
    x0 = tf.random.stateless_uniform([], seeds[2], 0, canvas[1] - size + 1, tf.int32)
    origin = tf.cast(tf.stack([y0 - top, x0 - left]), tf.float32)  # crop corner, resized px
    scale = tf.cast(new_hw, tf.float32) / tf.cast(hw, tf.float32)  # resized px per image px
    start = origin / scale
    end = (origin + size) / scale
    boxes = box_ops.denormalize_boxes(boxes, new_hw) - tf.tile(origin, [2])
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
    window = tf.where(
        flip,
        tf.stack([start[0], end[1], end[0], start[1]]),
        tf.concat([start, end], 0),
    )
    boxes = tf.cond(flip, lambda: box_ops.flip_left_right(boxes, size), lambda: boxes)
    return window, boxes


def _with_edge(image: tf.Tensor) -> tf.Tensor:
    """uint8 `[H, W, 3]` with `_EDGE` px of its edge replicated around it, so windows cut
    from it by `resize_windows` read the edge up to the image's border, as `resize` does."""
    edge = [[_EDGE, _EDGE], [_EDGE, _EDGE], [0, 0]]
    return tf.pad(tf.cast(tf.round(image), tf.uint8), edge, mode="SYMMETRIC")


def random_spatial_crop(
    image: tf.Tensor,
    boxes: tf.Tensor,
    size: int,
    short_sides: Sequence[int],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One training view of one image (`random_spatial_window`, cut by
    `resizing.resize_windows`): `spatial_dataset` does the same per batch.

    Args:
        image: `[H, W, 3]` 0..255 (rounded to uint8, as the input pipeline caches images).
        boxes: `[N, 4]` yxyx NORMALIZED to the image.
        size: crop side (px).
        short_sides: candidate rescaled short sides (px).
        seed: int `[2]` stateless seed.

    Returns:
        image float32 `[size, size, 3]` and boxes `[N, 4]` yxyx in PIXELS of the crop
        (unclipped: boxes may extend past the crop).
    """
    image = tf.convert_to_tensor(image)
    window, boxes = random_spatial_window(tf.shape(image)[:2], boxes, size, short_sides, seed)
    crop = resizing.resize_windows(_with_edge(image)[None], window[None] + _EDGE, size, FILL)
    return tf.ensure_shape(crop[0], [size, size, 3]), boxes


def spatial_dataset(
    name_or_dataset: str | tf.data.Dataset,
    split: str,
    config: ModelConfig,
    batch_size: int,
    *,
    train_size: int | None = None,
    short_sides: Sequence[int] | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    shuffle_buffer: int = 2000,
    cache: bool = False,
    counter: data.CorruptRecordCounter | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches of (images `[B, S, S, 3]`, {"boxes": `[B, N, 4]`, "labels": `[B, N]`}) for
    `OverFeatDetector.fit`, repeated forever: every image rescaled, padded, cropped and
    flipped (`random_spatial_window`); its boxes yxyx NORMALIZED to the crop (they may extend
    past it), rows past an image's objects padded (boxes 0, labels -1). The detector builds
    the cells' targets from them in its train step (`map_targets`).

    Pipeline: records (files shuffled) -> shuffle -> repeat -> decode, corrupt records
    skipped and counted (with `cache=True`: decode once, keep the uint8 images in memory,
    then shuffle and repeat there) -> draw each image's view -> batch (images padded to the
    batch's largest) -> cut every view of the batch in one op (`resizing.resize_windows`)
    -> prefetch. The views cost the batch's outputs, not the rescaled images (up to 2x the
    training size per side): about 1 ms per image on one core, off the train step's path.

    With an `input_context` (`strategy.distribute_datasets_from_function`), this input
    pipeline's shard (`tfds_io.raw_split`) and the per-replica batch (`batch_size` is global).
    `cache` needs about `examples * H * W * 3` bytes (2.7 GB for overfeat_shapes' 8000
    training images).
    """
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    size = train_size or default_train_size(config)
    sides = tuple(short_sides or default_short_sides(size, config.crop_size))
    if min(sides) < config.crop_size:
        raise ValueError(
            f"Every short side {sides} must be >= the net's window {config.crop_size} px."
        )
    if config.output_size(size) < 1:
        raise ValueError(f"train_size {size} is smaller than the net's crop {config.crop_size}.")
    dataset = tfds_io.raw_split(
        name_or_dataset, split, data_dir, shuffle_files=True, seed=seed, input_context=input_context
    )

    def decoded(dataset: tf.data.Dataset) -> tf.data.Dataset:
        dataset = dataset.apply(data.skip_corrupt(decode_detection_example, counter))
        return dataset.map(
            lambda image, boxes, labels: (_with_edge(image), boxes, labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    if cache:
        dataset = decoded(dataset).cache().shuffle(shuffle_buffer, seed=seed).repeat()
    else:
        dataset = decoded(dataset.shuffle(shuffle_buffer, seed=seed).repeat())
    dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.random(seed).batch(2)))

    def view(example: tuple, example_seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, dict]:
        image, boxes, labels = example
        inner = tf.shape(image)[:2] - 2 * _EDGE
        window, boxes = random_spatial_window(inner, boxes, size, sides, example_seed)
        return image, window + _EDGE, {"boxes": boxes / size, "labels": labels}

    def cut(images: tf.Tensor, windows: tf.Tensor, targets: dict) -> tuple[tf.Tensor, dict]:
        crops = resizing.resize_windows(images, windows, size, FILL)
        return tf.ensure_shape(crops, [None, size, size, 3]), targets

    dataset = dataset.map(view, num_parallel_calls=tf.data.AUTOTUNE)
    fill = tf.constant(FILL, tf.uint8)
    padding = (fill, 0.0, {"boxes": tf.constant(0.0), "labels": tf.constant(-1)})
    dataset = dataset.padded_batch(batch_size, padding_values=padding, drop_remainder=True)
    return dataset.map(cut, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

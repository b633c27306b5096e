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
    docstring); the image is padded to the training size (`random_spatial_crop`)."""
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


def random_spatial_crop(
    image: tf.Tensor,
    boxes: tf.Tensor,
    size: int,
    short_sides: Sequence[int],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Rescale (short side drawn from `short_sides`; `resizing.short_side_size` and
    `resizing.resize`), pad to `size` where smaller, random `size` crop, random flip.

    A side smaller than `size` is padded with `PIXEL_MEAN` (0 after the net's
    normalization) at a random offset.

    Args:
        image: `[H, W, 3]` float32 0..255.
        boxes: `[N, 4]` yxyx NORMALIZED to the image.
        size: crop side (px).
        short_sides: candidate rescaled short sides (px).
        seed: int `[2]` stateless seed.

    Returns:
        image float32 `[size, size, 3]` and boxes `[N, 4]` yxyx in PIXELS of the crop
        (unclipped: boxes may extend past the crop).
    """
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    sides = tf.constant(list(short_sides), tf.int32)
    side = sides[tf.random.stateless_uniform([], seeds[0], 0, len(short_sides), tf.int32)]
    new_hw = resizing.short_side_size(tf.shape(image)[:2], side)  # each side >= side
    image = resizing.resize(image, new_hw)
    boxes = box_ops.denormalize_boxes(boxes, new_hw)
    pad = tf.maximum(size - new_hw, 0)  # [2]
    pad_seeds = tf.random.experimental.stateless_split(seeds[3], num=2)
    top = tf.random.stateless_uniform([], pad_seeds[0], 0, pad[0] + 1, tf.int32)
    left = tf.random.stateless_uniform([], pad_seeds[1], 0, pad[1] + 1, tf.int32)
    paddings = [[top, pad[0] - top], [left, pad[1] - left], [0, 0]]
    image = tf.pad(image, paddings, constant_values=PIXEL_MEAN)
    new_hw = new_hw + pad
    boxes = boxes + tf.cast(tf.stack([top, left, top, left]), tf.float32)
    y0 = tf.random.stateless_uniform([], seeds[1], 0, new_hw[0] - size + 1, tf.int32)
    x0 = tf.random.stateless_uniform([], seeds[2], 0, new_hw[1] - size + 1, tf.int32)
    image = image[y0 : y0 + size, x0 : x0 + size]
    boxes = boxes - tf.cast(tf.stack([y0, x0, y0, x0]), tf.float32)
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    boxes = tf.cond(flip, lambda: box_ops.flip_left_right(boxes, size), lambda: boxes)
    return tf.ensure_shape(image, [size, size, 3]), boxes


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
    counter: data.CorruptRecordCounter | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches of (images `[B, S, S, 3]`, {"boxes": `[B, N, 4]`, "labels": `[B, N]`}) for
    `OverFeatDetector.fit`, repeated forever: every image rescaled, padded, cropped and
    flipped by `random_spatial_crop`; its boxes yxyx NORMALIZED to the crop (they may extend
    past it), rows past an image's objects padded (boxes 0, labels -1). The detector builds
    the cells' targets from them in its train step (`map_targets`).

    With an `input_context` (`strategy.distribute_datasets_from_function`), this input
    pipeline's shard (`tfds_io.raw_split`) and the per-replica batch (`batch_size` is global).
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
    dataset = dataset.shuffle(shuffle_buffer, seed=seed).repeat()
    dataset = dataset.apply(data.skip_corrupt(decode_detection_example, counter))
    dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.random(seed).batch(2)))

    def prepare(example: tuple, example_seed: tf.Tensor) -> tuple[tf.Tensor, dict]:
        image, boxes, labels = example
        image, boxes = random_spatial_crop(image, boxes, size, sides, example_seed)
        return image, {"boxes": boxes / size, "labels": labels}

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    padding = (tf.constant(0.0), {"boxes": tf.constant(0.0), "labels": tf.constant(-1)})
    return dataset.padded_batch(batch_size, padding_values=padding, drop_remainder=True).prefetch(
        tf.data.AUTOTUNE
    )

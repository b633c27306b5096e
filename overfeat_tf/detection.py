"""Localization and detection inference (paper §4.1, §4.3), in TF ops.

    image -> pyramid levels x flips -> model (fine/coarse stride)      `inference.run_levels`
          -> per level: the top-k classes (spatial max of the softmax)
          -> every output cell of those classes predicts a box: the regressor's deltas
             decoded in its window's frame (or the window itself without a regressor),
             mapped back to the original image (unflip, unscale), normalized yxyx
          -> boxes below `score_threshold` dropped, at most `max_boxes` kept
          -> greedy merge (paper §4.3, `merge.greedy_merge`): merged boxes average their
             members' coordinates and *add* their confidences (or, for comparison,
             per-class non-maximum suppression: `combine="nms"`)
          -> the `max_detections` merged boxes with the highest accumulated scores.

Confidence of a box = the softmax probability of its class at the window that predicted it.
A detection's score is the sum of its members' confidences over every window, scale and flip
(not a probability: it grows with the number of agreeing windows). Box convention of every
output: `[ymin, xmin, ymax, xmax]` normalized to the original image (TF Object Detection API),
except the notebook `detect` / `localize`, which return pixels of the original image.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from overfeat_tf import boxes as box_ops
from overfeat_tf.inference import LevelOutput, load_image, object_probabilities, run_levels
from overfeat_tf.layers import STRIDES
from overfeat_tf.merge import DEFAULT_MAX_OUTPUT, MERGE_THRESHOLD, MergeResult, greedy_merge
from overfeat_tf.pyramid import Scale, check_scales

COMBINE = ("merge", "nms")


@dataclasses.dataclass(frozen=True)
class DetectionOptions:
    """Everything that shapes a detection, besides the model.

    Attributes:
        scales: pyramid scales (see `pyramid`); None = the net's defaults (Table 5 style).
        flips: also run each level's left-right flip.
        stride: "fine" or "coarse".
        top_k: classes kept per level (by spatial max of their probability).
        score_threshold: windows whose class probability is below this predict no box.
        max_boxes: at most this many boxes (the most confident) go into the merge.
        merge_threshold: `t` of the greedy merge (`merge.MERGE_THRESHOLD`).
        max_detections: merged boxes returned (padded).
        combine: "merge" (the paper's greedy merge) or "nms" (per-class
            `tf.image.non_max_suppression` at IoU `nms_iou`, for comparison): how the boxes
            of all windows become detections.
        nms_iou: IoU threshold of "nms".
    """

    scales: tuple[Scale, ...] | None = None
    flips: bool = True
    stride: str = "fine"
    top_k: int = 5
    score_threshold: float = 0.01
    max_boxes: int = 4000
    merge_threshold: float = MERGE_THRESHOLD
    max_detections: int = DEFAULT_MAX_OUTPUT
    combine: str = "merge"
    nms_iou: float = 0.5

    def __post_init__(self) -> None:
        if self.scales is not None:
            object.__setattr__(self, "scales", check_scales(self.scales))
        if not isinstance(self.flips, bool):
            raise ValueError(f"flips must be True or False, got {self.flips!r}.")
        if self.stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {self.stride!r}.")
        for name in ("top_k", "max_boxes", "max_detections"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not 0 <= self.score_threshold < 1:
            raise ValueError(f"score_threshold must be in [0, 1), got {self.score_threshold}.")
        if self.merge_threshold <= 0:
            raise ValueError(f"merge_threshold must be > 0, got {self.merge_threshold}.")
        if self.combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {self.combine!r}.")
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}.")

    def replace(self, **changes: Any) -> DetectionOptions:
        return dataclasses.replace(self, **changes)


# Fields set by the shared command-line flags (`add_detection_arguments`).
_CLI_FIELDS = (
    "flips",
    "stride",
    "top_k",
    "score_threshold",
    "max_boxes",
    "merge_threshold",
    "max_detections",
)


def add_detection_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line flags of the `DetectionOptions` fields every detection CLI shares
    (`--flips/--no-flips`, `--stride`, `--top-k`, `--score-threshold`, `--max-boxes`,
    `--merge-threshold`, `--max-detections`); read them back with `detection_arguments`."""
    defaults = DetectionOptions()
    parser.add_argument(
        "--flips",
        action=argparse.BooleanOptionalAction,
        default=defaults.flips,
        help="also run each scale's left-right flip (default: on)",
    )
    parser.add_argument("--stride", choices=STRIDES, default=defaults.stride)
    parser.add_argument(
        "--top-k", type=int, default=defaults.top_k, help="classes per scale that predict boxes"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=defaults.score_threshold,
        help="windows below this class probability predict no box",
    )
    parser.add_argument(
        "--max-boxes", type=int, default=defaults.max_boxes, help="boxes into the merge, at most"
    )
    parser.add_argument(
        "--merge-threshold",
        type=float,
        default=defaults.merge_threshold,
        help="merge threshold t (lower = fewer merges)",
    )
    parser.add_argument(
        "--max-detections",
        type=int,
        default=defaults.max_detections,
        help="detections per image (outputs are padded to this)",
    )


def detection_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The `DetectionOptions` keyword arguments of `add_detection_arguments`' flags."""
    return {name: getattr(args, name) for name in _CLI_FIELDS}


def level_boxes(
    output: LevelOutput, num_classes: int, top_k: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Every box one pyramid level predicts for its top-k classes (one image and its flips).

    Args:
        output: a `LevelOutput` of `run_levels` on ONE image (its N entries are the image
            and, with flips, its mirror).
        num_classes: C, the object classes (background, if any, is dropped).
        top_k: classes per entry, by the spatial max of their probability.

    Returns:
        boxes `[M, 4]` yxyx normalized to the original image, clipped to [0, 1];
        scores `[M]` (the class probability of the predicting window); classes `[M]` int32;
        class_scores `[N, C]` (the spatial max per class, for classification).
    """
    level = output.level
    probs = object_probabilities(output.outputs["class_logits"], num_classes)  # [N, h, w, C]
    class_scores = tf.reduce_max(probs, axis=[1, 2])  # [N, C]
    k = min(top_k, num_classes)
    top = tf.math.top_k(class_scores, k=k).indices  # [N, K]
    scores = tf.gather(probs, top, axis=3, batch_dims=1)  # [N, h, w, K]
    shape = tf.shape(probs)
    windows = box_ops.window_boxes(shape[1], shape[2], output.stride, output.window)  # [h,w,4]
    windows = windows[tf.newaxis, :, :, tf.newaxis]  # [1, h, w, 1, 4]
    deltas = output.outputs.get("box_deltas")
    if deltas is None:  # no regressor: each window is its own box
        boxes = tf.broadcast_to(windows, tf.concat([shape[:3], [k, 4]], 0))
    else:
        per_class = tf.shape(deltas)[-1] // 4
        deltas = tf.reshape(deltas, tf.concat([shape[:3], [per_class, 4]], 0))  # [N,h,w,P,4]
        if deltas.shape[3] != 1:  # class-specific: the chosen classes' boxes
            deltas = tf.gather(deltas, top, axis=3, batch_dims=1)  # [N, h, w, K, 4]
        boxes = box_ops.decode_boxes(deltas, windows)  # [N, h, w, K|1, 4] level px
        # a regressor may predict a max edge before its min edge: order each pair
        boxes = tf.concat(
            [
                tf.minimum(boxes[..., :2], boxes[..., 2:]),
                tf.maximum(boxes[..., :2], boxes[..., 2:]),
            ],
            axis=-1,
        )
        boxes = tf.broadcast_to(boxes, tf.concat([shape[:3], [k, 4]], 0))
    flipped = level.flipped[:, tf.newaxis, tf.newaxis, tf.newaxis]  # [N, 1, 1, 1]
    boxes = box_ops.level_to_original(boxes, level.original_size, level.size, flipped)
    boxes = box_ops.normalize_boxes(boxes, level.original_size)
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    classes = tf.broadcast_to(top[:, tf.newaxis, tf.newaxis, :], tf.shape(scores))
    return (
        tf.reshape(boxes, [-1, 4]),
        tf.reshape(scores, [-1]),
        tf.reshape(tf.cast(classes, tf.int32), [-1]),
        class_scores,
    )


def dense_boxes(
    model: keras.Model, image: tf.Tensor, options: DetectionOptions
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """All boxes of one image over every level and flip, before merging.

    Args:
        model: an `OverFeat` model (with a regressor for real boxes).
        image: `[H, W, 3]` RGB 0..255.
        options: scales, flips, stride, top-k.

    Returns:
        boxes `[M, 4]` normalized yxyx, scores `[M]`, classes `[M]` int32, and the
        multi-scale classification scores `[C]` (mean over levels of the spatial max).
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3:
        raise ValueError(f"Expected one image [H, W, 3], got shape {image.shape}.")
    outputs = run_levels(model, image, options.scales, options.flips, options.stride)
    parts = [level_boxes(out, model.num_classes, options.top_k) for out in outputs]
    boxes, scores, classes, class_scores = (tf.concat(p, axis=0) for p in zip(*parts, strict=True))
    return boxes, scores, classes, tf.reduce_mean(class_scores, axis=0)


def detect_tensor(
    model: keras.Model, image: tf.Tensor, options: DetectionOptions | None = None
) -> dict[str, tf.Tensor]:
    """Detection of one image in TF ops (graph-safe: used by the SavedModel export).

    Args:
        model: an `OverFeat` model.
        image: `[H, W, 3]` RGB 0..255, any size (at least the net's crop on its short side
            after scaling; smaller images are scaled up by the pyramid).
        options: `DetectionOptions` (defaults if None).

    Returns:
        A dict of tensors, padded to `options.max_detections` rows:
        `detection_boxes` `[D, 4]` float32 normalized yxyx of the original image,
        `detection_scores` `[D]` accumulated confidences, `detection_classes` `[D]` int32,
        `detection_members` `[D]` int32 boxes merged into each, `num_detections` `[]` int32,
        and `class_scores` `[C]`: multi-scale classification (mean of spatial maxima).
    """
    options = options or DetectionOptions()
    boxes, scores, classes, class_scores = dense_boxes(model, image, options)
    kept = kept_boxes(boxes, scores, classes, options)
    merged = combine_boxes(*kept, options, options.combine)
    return {
        "detection_boxes": merged.boxes,
        "detection_scores": merged.scores,
        "detection_classes": merged.classes,
        "detection_members": merged.num_members,
        "num_detections": merged.num_merged,
        "class_scores": class_scores,
    }


def kept_boxes(
    boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor, options: DetectionOptions
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The dense boxes that go into the combination, as `detection.detect_tensor` keeps them:
    score >= `options.score_threshold`, then the `options.max_boxes` highest scores.
    Boxes `[M, 4]` (any units) -> the kept `[m, 4]`, `[m]`, `[m]`."""
    keep = tf.reshape(tf.where(scores >= options.score_threshold), [-1])
    count = tf.minimum(tf.size(keep), options.max_boxes)
    keep = tf.gather(keep, tf.math.top_k(tf.gather(scores, keep), k=count).indices)
    return tf.gather(boxes, keep), tf.gather(scores, keep), tf.gather(classes, keep)


def combine_boxes(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    options: DetectionOptions,
    combine: str,
) -> MergeResult:
    """Kept boxes `[m, 4]` yxyx -> detections (padded to `options.max_detections`, best
    first) by greedy merging (`combine="merge"`) or per-class NMS (`"nms"`)."""
    if combine == "nms":
        return class_nms(boxes, scores, classes, options.nms_iou, options.max_detections)
    if combine == "merge":
        return greedy_merge(
            boxes,
            scores,
            classes,
            threshold=options.merge_threshold,
            max_output=options.max_detections,
        )
    raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}.")


def class_nms(
    boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor, iou: float, max_output: int
) -> MergeResult:
    """Per-class non-maximum suppression (the usual alternative to merging), padded like
    `greedy_merge`'s output: boxes `[M, 4]` yxyx (any units) -> `MergeResult`, best first.

    Boxes of different classes never suppress each other (they are offset by class, the
    standard trick, so one `tf.image.non_max_suppression` call serves every class).
    `num_members` is 1 for every kept box.
    """
    extent = tf.reduce_max(tf.concat([tf.abs(tf.reshape(boxes, [-1])), [0.0]], axis=0))
    offset = tf.cast(classes, boxes.dtype)[:, tf.newaxis] * (2.0 + extent)  # [M, 1]
    keep = tf.image.non_max_suppression(boxes + offset, scores, max_output, iou)  # [n]
    n = tf.shape(keep)[0]
    pad = max_output - n

    def take(t: tf.Tensor) -> tf.Tensor:
        t = tf.gather(t, keep)
        return tf.pad(t, [[0, pad]] + [[0, 0]] * (t.shape.rank - 1))

    return MergeResult(
        boxes=tf.ensure_shape(take(boxes), [max_output, 4]),
        scores=tf.ensure_shape(take(scores), [max_output]),
        classes=tf.ensure_shape(take(classes), [max_output]),
        num_members=tf.ensure_shape(take(tf.ones_like(classes)), [max_output]),
        num_merged=n,
    )


_COMPILED: dict = {}


def _compiled_detect(model: keras.Model, options: DetectionOptions):
    """One traced `tf.function` per (model, options), reused across images of any size."""
    key = (id(model), options)
    if key not in _COMPILED:
        _COMPILED[key] = tf.function(
            lambda image: detect_tensor(model, image, options),
            input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
            reduce_retracing=True,
        )
    return _COMPILED[key]


def detect(
    model: keras.Model,
    image_or_path: Any,
    options: DetectionOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Detect objects in one image (notebook API).

    Args:
        model: an `OverFeat` model with a regressor (e.g. `keras.models.load_model(...)`).
        image_or_path: a file path, encoded bytes or an RGB array `[H, W, 3]` (0..255).
        options: `DetectionOptions`; keyword overrides (scales=, flips=, stride=, top_k=,
            score_threshold=, merge_threshold=, max_detections=, ...) apply on top.

    Returns:
        `{"boxes": float32 [n, 4] yxyx in PIXELS of the original image, "scores": [n],
        "class_ids": [n] int, "class_names": [n] (None without `model.class_names`)}`,
        best first.
    """
    options = (options or DetectionOptions()).replace(**overrides)
    image = tf.cast(load_image(image_or_path), tf.float32)
    out = _compiled_detect(model, options)(image)
    n = int(out["num_detections"])
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    boxes = box_ops.denormalize_boxes(out["detection_boxes"][:n], size).numpy()
    class_ids = out["detection_classes"][:n].numpy()
    names = getattr(model, "class_names", None)
    return {
        "boxes": boxes,
        "scores": out["detection_scores"][:n].numpy(),
        "class_ids": class_ids,
        "class_names": [names[i] if names else None for i in class_ids],
    }


def localize(
    model: keras.Model,
    image_or_path: Any,
    guesses: int = 5,
    options: DetectionOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """ILSVRC-style localization (paper §4): `guesses` (class, box) pairs for one image.

    Runs `detect` with the top `guesses` classes per level, then keeps the best merged box
    of each class, best classes first. Boxes in PIXELS of the original image, yxyx.
    """
    if not isinstance(guesses, int) or guesses < 1:
        raise ValueError(f"guesses must be a positive int, got {guesses!r}.")
    overrides.setdefault("top_k", guesses)
    found = detect(model, image_or_path, options, **overrides)
    return first_box_per_class(found, guesses)


def first_box_per_class(found: dict[str, Any], guesses: int) -> dict[str, Any]:
    """The best-scoring detection of each class, at most `guesses`, best first."""
    _, first = np.unique(np.asarray(found["class_ids"]), return_index=True)
    order = np.sort(first)[:guesses]
    return {
        key: (value[order] if isinstance(value, np.ndarray) else [value[i] for i in order])
        for key, value in found.items()
    }

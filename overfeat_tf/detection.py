"""Network outputs -> boxes (paper §4.1-4.2), in TF ops: the detector's box stage.

    image -> pyramid levels x flips -> backbone (fine/coarse stride)   `inference.run_levels`
          -> per level: the top-k classes (spatial max of the softmax)
                                                      `inference.level_probabilities`
          -> every output cell of those classes predicts a box: the regressor's deltas
             decoded in its window's frame (or the window itself without a regressor),
             mapped back to the original image (unflip, unscale), normalized yxyx
                                                                         `level_boxes`
          -> boxes below `score_threshold` dropped, at most `max_boxes` kept  `kept_boxes`
          -> a prediction decoder (`decoders`: the greedy merge, or NMS for comparison)
          -> detections                                           `detector.OverFeatDetector`

Confidence of a box = the softmax probability of its class at the window that predicted it.
A merged detection's score is the sum of its members' confidences over every window, scale
and flip (not a probability: it grows with the number of agreeing windows).

`DetectionOptions` holds every setting that shapes a detection besides the weights; its
fields are also the flags of every detection command (`cli.add_option_arguments`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from overfeat_tf import boxes as box_ops
from overfeat_tf.cli import option
from overfeat_tf.decoders import COMBINE
from overfeat_tf.image_io import DEFAULT_MAX_ASPECT_RATIO, check_aspect_ratio
from overfeat_tf.inference import LevelOutput, level_probabilities, spatial_max
from overfeat_tf.layers import STRIDES
from overfeat_tf.merge import DEFAULT_MAX_OUTPUT, MERGE_THRESHOLD
from overfeat_tf.pyramid import Scale, check_scales, parse_scales


@dataclasses.dataclass(frozen=True)
class DetectionOptions:
    """Everything that shapes a detection, besides the model (each field is also a flag).

    Attributes:
        scales: pyramid scales (see `pyramid`); None = the net's defaults (Table 5 style).
        flips: also run each level's left-right flip.
        stride: "fine" or "coarse".
        top_k: classes kept per level (by spatial max of their probability).
        score_threshold: windows whose class probability is below this predict no box.
        max_boxes: at most this many boxes (the most confident) go into the merge.
        max_aspect_ratio: no pyramid level is more elongated than this (long side / short
            side): a longer image is squeezed to it, so a level's cost is bounded by its
            scale alone (`pyramid.max_level_size`).
        merge_threshold: `t` of the greedy merge (`merge.MERGE_THRESHOLD`).
        max_detections: merged boxes returned (padded).
        combine: "merge" (the paper's greedy merge, `decoders.BoxMergeDecoder`) or "nms"
            (per-class NMS at IoU `nms_iou`, `decoders.NMSDecoder`, for comparison).
        nms_iou: IoU threshold of "nms".
    """

    scales: tuple[Scale, ...] | None = option(
        None,
        "pyramid scales: short sides and/or HxW sizes, comma-separated, e.g. 245,281x317",
        parse=parse_scales,
        metavar="S,S,...",
    )
    flips: bool = option(True, "also run each scale's left-right flip")
    stride: str = option("fine", "output stride: all pooling offsets or offset 0", choices=STRIDES)
    top_k: int = option(5, "classes per scale that predict boxes")
    score_threshold: float = option(0.01, "windows below this class probability predict no box")
    max_boxes: int = option(4000, "boxes into the merge, at most (the most confident)")
    max_aspect_ratio: float = option(
        DEFAULT_MAX_ASPECT_RATIO,
        "pyramid levels are at most this elongated (long side / short side); a longer image "
        "is squeezed to it, which bounds what any image costs",
    )
    merge_threshold: float = option(MERGE_THRESHOLD, "merge threshold t (lower = fewer merges)")
    max_detections: int = option(
        DEFAULT_MAX_OUTPUT, "detections per image (outputs are padded to this)"
    )
    combine: str = option(
        "merge", "merge (the paper's greedy merge) or nms (for comparison)", choices=COMBINE
    )
    nms_iou: float = option(0.5, "IoU threshold of --combine nms")

    def __post_init__(self) -> None:
        if self.scales is not None:
            object.__setattr__(self, "scales", check_scales(self.scales))
        if not isinstance(self.flips, bool):
            raise ValueError(f"flips must be True or False, got {self.flips!r}.")
        if self.stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {self.stride!r}.")
        for name in ("top_k", "max_boxes", "max_detections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        object.__setattr__(self, "max_aspect_ratio", check_aspect_ratio(self.max_aspect_ratio))
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: scales as ints / [h, w] lists."""
        values = dataclasses.asdict(self)
        if self.scales is not None:
            values["scales"] = [list(s) if isinstance(s, tuple) else s for s in self.scales]
        return values


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
    probs = level_probabilities(output, num_classes)  # [N, h, w, C]
    class_scores = spatial_max(probs)  # [N, C]
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


def kept_boxes(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    score_threshold: float,
    max_boxes: int,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The dense boxes that go into the decoder: score >= `score_threshold`, then the
    `max_boxes` highest scores. Boxes `[M, 4]` (any units, kept) -> `[m, 4]`, `[m]`, `[m]`."""
    keep = tf.reshape(tf.where(scores >= score_threshold), [-1])
    count = tf.minimum(tf.size(keep), max_boxes)
    keep = tf.gather(keep, tf.math.top_k(tf.gather(scores, keep), k=count).indices)
    return tf.gather(boxes, keep), tf.gather(scores, keep), tf.gather(classes, keep)

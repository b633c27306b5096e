"""Prediction decoders: one image's dense boxes -> its detections (the detector's last stage).

    dense boxes of every window, scale and flip  `[M, 4]` yxyx, scores, classes
      -> `BoxMergeDecoder` (paper §4.3, `merge.merge_boxes`): boxes of one class that match
         merge; a merged box averages its members' coordinates and ADDS their scores
      -> or `NMSDecoder` (per-class non-maximum suppression, the usual alternative, for
         comparison)
      -> `detection_boxes` `[D, 4]`, `detection_scores` `[D]`, `detection_classes` `[D]`,
         `detection_members` `[D]`, `num_detections` `[]`: padded to D = `max_detections`
         rows, best first.

They play the part of keras-hub's `prediction_decoder` (RetinaNet's `NonMaxSuppression`
layer): serializable Keras layers whose options are part of the detector's config, so
`keras.models.load_model` restores them. Both keep the boxes' order and units (yxyx). The
merge's score is not invariant to a different scale per axis: give it boxes in pixels of the
original image (or any units with the same scale on both axes).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from overfeat_tf.ops.merge import DEFAULT_MAX_OUTPUT, MERGE_THRESHOLD, MergeResult, merge_boxes

COMBINE = ("merge", "nms")


def _check_max_detections(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"max_detections must be a positive int, got {value!r}.")
    return value


def detections_dict(result: MergeResult) -> dict[str, tf.Tensor]:
    """A `MergeResult` as the decoders' output dict (TF Object Detection API names)."""
    return {
        "detection_boxes": result.boxes,
        "detection_scores": result.scores,
        "detection_classes": result.classes,
        "detection_members": result.num_members,
        "num_detections": result.num_merged,
    }


@keras.saving.register_keras_serializable(package="overfeat_tf")
class BoxMergeDecoder(keras.layers.Layer):
    """The paper's box merge as a prediction decoder (`merge.merge_boxes`).

    Paper: Sermanet et al., "OverFeat: Integrated Recognition, Localization and Detection
    using Convolutional Networks", ICLR 2014, §4.3: boxes of one class whose `match_score`
    is <= `merge_threshold` merge; a merged box is the mean of its members and its
    confidence the SUM of theirs. Here in rounds: every cluster finds its best match of its
    class and all mutual best matches at <= t merge at once, until a round merges nothing.

    Input: `boxes` `[M, 4]` yxyx in pixels of the original image (or any units with the
    same scale on both axes; the output keeps them), `scores` `[M]`, `classes` `[M]` int.
    Output: the dict of `detections_dict`, padded to D = `max_detections` rows:
    `detection_boxes` `[D, 4]`, `detection_scores` `[D]`, `detection_classes` `[D]`,
    `detection_members` `[D]`, `num_detections` `[]` (valid rows, min(D, clusters)).

    Args:
        merge_threshold: `t` of the merge (`merge.MERGE_THRESHOLD`); lower merges less.
        max_detections: D, the merged boxes kept (highest accumulated scores).
        jit_compile: score the merge's rounds with XLA-compiled kernels (notebooks); same
            results. Keep False in anything exported (TF Serving may lack the XLA JIT).

    Example:
        >>> decoder = BoxMergeDecoder(merge_threshold=0.5, max_detections=10)
        >>> out = decoder(tf.constant([[0., 0., 50., 50.], [0., 0., 50., 52.]]),
        ...               tf.constant([.9, .8]), tf.constant([3, 3]))
        >>> int(out["num_detections"]), round(float(out["detection_scores"][0]), 3)
        (1, 1.7)
    """

    def __init__(
        self,
        merge_threshold: float = MERGE_THRESHOLD,
        max_detections: int = DEFAULT_MAX_OUTPUT,
        jit_compile: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not merge_threshold > 0:
            raise ValueError(f"merge_threshold must be > 0, got {merge_threshold}.")
        if jit_compile not in (True, False):
            raise ValueError(f"jit_compile must be True or False, got {jit_compile!r}.")
        self.merge_threshold = float(merge_threshold)
        self.max_detections = _check_max_detections(max_detections)
        self.jit_compile = bool(jit_compile)

    def call(self, boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor) -> dict:
        result = merge_boxes(
            boxes,
            scores,
            classes,
            self.merge_threshold,
            self.max_detections,
            jit_compile=self.jit_compile,
        )
        return detections_dict(result)

    def loop_iterations(self, boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
        """The merge's dependent loop iterations on these boxes ([] int32: its rounds, the
        last one included, plus row blocks of multi-block rounds; `merge.merge_boxes`)."""
        args = (boxes, scores, classes, self.merge_threshold, self.max_detections)
        return merge_boxes(*args, jit_compile=self.jit_compile, return_iterations=True)[1]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            merge_threshold=self.merge_threshold,
            max_detections=self.max_detections,
            jit_compile=self.jit_compile,
        )
        return config


@keras.saving.register_keras_serializable(package="overfeat_tf")
class GreedyMergeDecoder(BoxMergeDecoder):
    """`BoxMergeDecoder` under the name stored in older `.keras` files; same behaviour.

    Accepts and ignores their `algorithm` key ("rounds" or "sequential": there is one merge,
    the rounds of `merge.merge_boxes`, so files asking for "sequential" run it too) and
    reads `jit_compile: null` as False.
    """

    def __init__(
        self,
        merge_threshold: float = MERGE_THRESHOLD,
        max_detections: int = DEFAULT_MAX_OUTPUT,
        algorithm: str | None = None,
        jit_compile: bool | None = False,
        **kwargs: Any,
    ) -> None:
        del algorithm
        super().__init__(merge_threshold, max_detections, bool(jit_compile), **kwargs)


def class_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    iou: float,
    max_output: int,
    per_class: bool = True,
) -> MergeResult:
    """Non-maximum suppression, padded like `merge.merge_boxes`' output.

    Boxes `[M, 4]` yxyx (any units) -> `MergeResult`, best first. With `per_class`, boxes of
    different classes never suppress each other (they are offset by class, so one
    `tf.image.non_max_suppression` call serves every class); without, any better box
    suppresses (class-agnostic NMS). `num_members` is 1 per kept box.
    """
    extent = tf.reduce_max(tf.concat([tf.abs(tf.reshape(boxes, [-1])), [0.0]], axis=0))
    offset = tf.cast(classes, boxes.dtype)[:, tf.newaxis] * (2.0 + extent)  # [M, 1]
    offset = offset if per_class else tf.zeros_like(offset)
    keep = tf.image.non_max_suppression(boxes + offset, scores, max_output, iou)  # [n]
    n = tf.shape(keep)[0]
    pad = max_output - n

    def take(t: tf.Tensor) -> tf.Tensor:
        t = tf.gather(t, keep)
        return tf.pad(t, [[0, pad]] + [[0, 0]] * (t.shape.rank - 1))

    return MergeResult(
        boxes=tf.ensure_shape(take(boxes), [max_output, 4]),
        scores=tf.ensure_shape(take(scores), [max_output]),
        classes=tf.ensure_shape(take(tf.cast(classes, tf.int32)), [max_output]),
        num_members=tf.ensure_shape(take(tf.ones_like(classes, tf.int32)), [max_output]),
        num_merged=n,
    )


@keras.saving.register_keras_serializable(package="overfeat_tf")
class NMSDecoder(keras.layers.Layer):
    """Per-class non-maximum suppression as a prediction decoder (the baseline the paper's
    merge is compared with, OverFeat §4.3 / R-CNN).

    Input and output as `BoxMergeDecoder`: `boxes` `[M, 4]` yxyx (any units), `scores`
    `[M]`, `classes` `[M]` -> the kept boxes, padded to `max_detections` rows, best first;
    a detection's score is its own window's (nothing is accumulated), `detection_members` 1.

    Args:
        iou_threshold: a box is suppressed by a better one of its class above this IoU.
        max_detections: D, the boxes kept.
        per_class: only boxes of the same class suppress each other (default); False:
            class-agnostic NMS.

    Example:
        >>> decoder = NMSDecoder(iou_threshold=0.5, max_detections=10)
        >>> out = decoder(tf.constant([[0., 0., .5, .5], [0., 0., .5, .52]]),
        ...               tf.constant([.9, .8]), tf.constant([3, 3]))
        >>> int(out["num_detections"])
        1
    """

    def __init__(
        self,
        iou_threshold: float = 0.5,
        max_detections: int = DEFAULT_MAX_OUTPUT,
        per_class: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
        if not isinstance(per_class, bool):
            raise ValueError(f"per_class must be True or False, got {per_class!r}.")
        self.iou_threshold = float(iou_threshold)
        self.max_detections = _check_max_detections(max_detections)
        self.per_class = per_class

    def call(self, boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor) -> dict:
        result = class_nms(
            boxes, scores, classes, self.iou_threshold, self.max_detections, self.per_class
        )
        return detections_dict(result)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            iou_threshold=self.iou_threshold,
            max_detections=self.max_detections,
            per_class=self.per_class,
        )
        return config


# The decoder's options, as a detector lists them (`OverFeatDetector.options`).
DECODER_OPTIONS = ("combine", "merge_threshold", "nms_iou", "max_detections")


def make_decoder(
    combine: str = "merge",
    merge_threshold: float = MERGE_THRESHOLD,
    nms_iou: float = 0.5,
    max_detections: int = DEFAULT_MAX_OUTPUT,
) -> keras.layers.Layer:
    """The decoder layer of a `combine` choice: "merge" -> `BoxMergeDecoder`, "nms" ->
    `NMSDecoder`."""
    if combine == "merge":
        return BoxMergeDecoder(merge_threshold, max_detections)
    if combine == "nms":
        return NMSDecoder(nms_iou, max_detections)
    raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}.")


def decoder_options(decoder: keras.layers.Layer) -> dict[str, Any]:
    """`DECODER_OPTIONS` of a decoder layer (the other kind's threshold at its default)."""
    merge = isinstance(decoder, BoxMergeDecoder)
    return {
        "combine": "merge" if merge else "nms",
        "merge_threshold": decoder.merge_threshold if merge else MERGE_THRESHOLD,
        "nms_iou": NMSDecoder().iou_threshold if merge else decoder.iou_threshold,
        "max_detections": decoder.max_detections,
    }

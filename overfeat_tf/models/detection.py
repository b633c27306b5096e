"""Network outputs -> boxes (paper §4.1-4.2), in TF ops: the detector's box stage.

    image -> pyramid levels x flips -> backbone (fine/coarse stride)   `inference.run_levels`
          -> per level: the top-k classes (spatial max of the softmax)
                                                      `inference.level_probabilities`
          -> every output cell of those classes predicts a box: the regressor's deltas
             decoded in its window's frame (or the window itself without a regressor),
             mapped back to the original image (unflip, unscale): yxyx PIXELS of the
             original image, clipped to it                              `level_boxes`
          -> boxes below `score_threshold` dropped, at most `max_boxes` kept  `kept_boxes`
          -> a prediction decoder (`decoders`: the merge, or NMS for comparison), on the
             pixel boxes: the merge's score compares boxes as they are in the image
          -> detections, normalized to the image            `detector.OverFeatDetector`

Confidence of a box = the softmax probability of its class at the window that predicted it.
A merged detection's score is the sum of its members' confidences over every window, scale
and flip (not a probability: it grows with the number of agreeing windows).
"""

from __future__ import annotations

import tensorflow as tf

from overfeat_tf.models.inference import LevelOutput, level_probabilities, spatial_max
from overfeat_tf.ops import boxes as box_ops


def level_boxes(
    output: LevelOutput, num_classes: int, top_k: int | tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Every box one pyramid level predicts for its top-k classes (one image and its flips).

    Args:
        output: a `LevelOutput` of `run_levels` on ONE image (its N entries are the image
            and, with flips, its mirror).
        num_classes: C, the object classes (background, if any, is dropped).
        top_k: classes per entry, by the spatial max of their probability (a Python int or
            an int32 scalar tensor, e.g. a request's option; at most `num_classes` are used).

    Returns:
        boxes `[M, 4]` yxyx in pixels of the original image, clipped to it;
        scores `[M]` (the class probability of the predicting window); classes `[M]` int32;
        class_scores `[N, C]` (the spatial max per class, for classification).
    """
    level = output.level
    probs = level_probabilities(output, num_classes)  # [N, h, w, C]
    class_scores = spatial_max(probs)  # [N, C]
    if isinstance(top_k, int):
        k = min(top_k, num_classes)
    else:  # a tensor: the same TopKV2 kernel, K known only at run time
        k = tf.minimum(tf.cast(top_k, tf.int32), num_classes)
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
    boxes = box_ops.clip_boxes(boxes, level.original_size)
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
    score_threshold: float | tf.Tensor,
    max_boxes: int,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The dense boxes that go into the decoder: score >= `score_threshold` (a float or a
    float32 scalar tensor), then the `max_boxes` highest scores. Boxes `[M, 4]` yxyx (any
    units, kept) -> `[m, 4]`, `[m]`, `[m]`."""
    keep = tf.reshape(tf.where(scores >= score_threshold), [-1])
    count = tf.minimum(tf.size(keep), max_boxes)
    keep = tf.gather(keep, tf.math.top_k(tf.gather(scores, keep), k=count).indices)
    return tf.gather(boxes, keep), tf.gather(scores, keep), tf.gather(classes, keep)

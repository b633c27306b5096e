"""The match score of the paper's box merging (§4.3) in TF ops, shared by every merge algorithm.

For two yxyx boxes b1, b2 with centres c1, c2 and areas A1, A2 (any units: pixels or
normalized coordinates alike, the score is invariant to scaling both boxes):

    match_score(b1, b2) = ||c1 - c2||_2 / sqrt(max(min(A1, A2), eps))  +  (1 - IoU(b1, b2))

Lower is better: 0 for identical boxes, > 1 for disjoint boxes of positive area. The score
rules (why IoU, the choice of `MERGE_THRESHOLD`) are in the docstring of `overfeat_tf.merge`.

Also here: `first_argmin`, the tie-exact argmin (first index on ties) that makes a merge's
pair order deterministic. Boxes are handled as their `derive`d quantities, computed the same
way for every box, so that `pair_scores` is bitwise symmetric.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["MERGE_THRESHOLD", "derive", "first_argmin", "match_score", "pair_scores"]

# Default threshold t. Chosen with `python benchmarks/bench_merge.py --sweep`: synthetic
# accurate-net box sets (6 scales x 2 flips, fine stride, every window predicting a box: the
# windows that see >= 50% of an object predict it with regressor noise, the others a random
# box of low confidence), 3 objects placed at random or in a row overlapping (IoU ~0.1-0.3),
# 6 images each. Result: the top-3 merged boxes are exactly the 3 objects for t >= 0.4 with
# regressor noise 8% of the object side, but only for t >= 0.7 with 15% noise (below, objects
# split into several clusters); no t <= 1 merged two objects, since cluster means of objects
# in a row score > 1. Upper bound from the definition: two same-size boxes shifted by a
# fraction d of their side score d + 2d / (1 + d), so t = 0.7 merges objects overlapping by
# IoU > ~0.56 (d < ~0.28) and t = 1 by IoU > ~0.42; disjoint boxes never merge for t <= 1.
# t = 0.7: the lowest value robust to 15% regressor noise, keeping objects at IoU <= 0.5 apart.
MERGE_THRESHOLD = 0.7

# Floor on min(A1, A2) in match_score, so degenerate (zero-area) boxes give a large finite
# distance term instead of inf / nan.
_MIN_AREA = 1e-12


def derive(y0: tf.Tensor, x0: tf.Tensor, y1: tf.Tensor, x1: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Per-box quantities of `pair_scores`: (y0, x0, y1, x1, y0 + y1, x0 + x1, area).

    Computed the same way for every box, so that the score of a pair does not depend on
    which side of the comparison each box is on. Any (broadcastable) shapes; yxyx, any units.
    """
    return y0, x0, y1, x1, y0 + y1, x0 + x1, tf.nn.relu(y1 - y0) * tf.nn.relu(x1 - x0)


def pair_scores(a: tuple[tf.Tensor, ...], b: tuple[tf.Tensor, ...]) -> tf.Tensor:
    """match_score of `derive`d boxes, element-wise with broadcasting; bitwise symmetric."""
    ay0, ax0, ay1, ax1, acy, acx, area_a = a
    by0, bx0, by1, bx1, bcy, bcx, area_b = b
    ih = tf.nn.relu(tf.minimum(ay1, by1) - tf.maximum(ay0, by0))
    iw = tf.nn.relu(tf.minimum(ax1, bx1) - tf.maximum(ax0, bx0))
    inter = ih * iw
    iou = tf.math.divide_no_nan(inter, area_a + area_b - inter)
    # acy, bcy... are twice the centres: ||c1 - c2|| = sqrt(d2) / 2.
    dy, dx = acy - bcy, acx - bcx
    min_area = tf.maximum(tf.minimum(area_a, area_b), tf.cast(_MIN_AREA, ay0.dtype))
    return tf.sqrt((dy * dy + dx * dx) / min_area) * 0.5 - iou + 1.0


def match_score(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """The merge score of yxyx boxes (any units), element-wise with broadcasting.

    `||c1 - c2|| / sqrt(max(min(A1, A2), eps)) + 1 - IoU(b1, b2)`; lower = better match,
    0 for identical boxes, > 1 for disjoint boxes. Bitwise symmetric in its arguments.

    Args:
        boxes1: [..., 4] yxyx.
        boxes2: [..., 4] yxyx, broadcastable against `boxes1` (e.g. [N, 1, 4] x [1, M, 4]).

    Returns:
        [...] scores.
    """
    boxes1 = tf.convert_to_tensor(boxes1)
    if not boxes1.dtype.is_floating:
        boxes1 = tf.cast(boxes1, tf.float32)
    boxes2 = tf.cast(boxes2, boxes1.dtype)
    return pair_scores(
        derive(*tf.unstack(boxes1, 4, axis=-1)), derive(*tf.unstack(boxes2, 4, axis=-1))
    )


def first_argmin(values: tf.Tensor, iota: tf.Tensor, big: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Min over the last axis and the FIRST index attaining it (n if the min is inf).

    `tf.math.argmin` does not promise which index it returns on ties; this does. (Under XLA
    it would, but its (value, index) reduction is not vectorized on CPU: ~1.5x slower than
    these two plain reductions.) `iota` holds the index of every element along the last
    axis and `big` the value n, both with the shape of `values` (materialized once by the
    caller, since broadcasting binary ops are slow on CPU). [..., n] -> [...], [...] int32.
    """
    shape = tf.shape(values, out_type=tf.int32)
    low = tf.reduce_min(values, axis=-1)
    at_low = tf.equal(values, tf.broadcast_to(low[..., tf.newaxis], shape))
    arg = tf.reduce_min(tf.where(at_low, iota, big), axis=-1)
    return low, tf.where(tf.math.is_inf(low), shape[-1], arg)

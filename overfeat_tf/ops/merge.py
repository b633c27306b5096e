"""Box merging of the paper (OverFeat, Sermanet et al. 2014, §4.3) in rounds, in core TF ops.

The boxes predicted by every window, scale and flip are merged instead of suppressed: boxes of
one class that match well merge; a merged box is the mean of its members' coordinates and its
score the SUM of their scores, so coherent clusters accumulate confidence while isolated false
positives stay low.

match_score
-----------
For two yxyx boxes b1, b2 with centres c1, c2 and areas A1, A2:

    match_score(b1, b2) = ||c1 - c2||_2 / sqrt(max(min(A1, A2), 1e-12))  +  (1 - IoU(b1, b2))

with A = relu(y1 - y0) * relu(x1 - x0) and IoU = 0 when the union is empty. Lower is better:
0 for identical boxes, symmetric (bitwise), > 1 for disjoint boxes of positive area (so no
threshold t <= 1 merges them). IoU rather than intersection / min area, so that a part-sized
box nested in an object box does not match it at score 0.

Box convention: the score is invariant to a uniform scale of both axes, but NOT to scaling y
and x differently (the centre distance is measured in one unit for both axes). Pass boxes in
PIXELS of the original image, or in any units with the same scale on both axes; coordinates
normalized by the image height and width change the scores of non-square images.

Algorithm: mutual best matches, in rounds
-----------------------------------------
    clusters = the boxes; boxes of one class with identical coordinates form one cluster
    repeat (a round):
        best(p) = the other cluster q of p's class with the lowest match_score of the cluster
            boxes (the smallest key on ties; a cluster's key is its smallest member's input
            index); low(p) = that score (inf if p is alone in its class)
        every pair p, q with best(p) = q, best(q) = p and low(p) <= t merges, all at once
            (count-weighted mean box, scores added, the smaller key kept)
    until a round merges nothing

The lowest-scoring pair of a class is always mutual, so every round makes the merge the
paper's one-pair-per-step rule would make first, plus other disjoint mutual pairs; at the end
no mutual pair scores <= t. Output: accumulated score descending, ties by key ascending.

A round on m live clusters: the clusters are kept sorted by (class, key) and compacted after
every round (merged-away clusters dropped), so later rounds are smaller. The best partners
come from one masked [m, m] score matrix over all classes at once (pairs of different classes
or k = l masked to inf): a fixed number of ops (kernels on a GPU) per round, whatever m.
Memory: a few [m, m] temporaries of 4 m^2 bytes each in float32 (64 MiB at m = 4096). When
m^2 exceeds `BLOCK_SCORES` = 2^24 the matrix is scored in row blocks of BLOCK_SCORES // m
rows, an inner loop; with the detector's box budget (max_boxes = 4000) a round is one block.

Dependent loop iterations (`return_iterations=True`): one per round, including the last one
that merges nothing, plus one per row block in rounds of more than one block (a one-block
round runs no inner loop). 4000 clustered detector boxes take about 30-40.

`jit_compile=True` runs each block as an XLA-compiled kernel on padded shapes (a power of two
>= 128 rows and columns; one compile per size met, once per process and dtype); the rest of
the loop stays plain TF. Same results as `jit_compile=False`, which uses core TF ops only and
is what exports must use (TF Serving may run without the XLA JIT).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = [
    "BLOCK_SCORES",
    "DEFAULT_MAX_OUTPUT",
    "MERGE_THRESHOLD",
    "MergeResult",
    "match_score",
    "merge_boxes",
    "mutual_merge",
]

# Default threshold t (match_score <= t merges). Two same-size boxes shifted by a fraction d
# of their side score d + 2d / (1 + d): t = 0.7 merges them for d < ~0.28 (IoU > ~0.56), and
# on synthetic dense box sets it is the lowest t at which 15% regressor noise still gives one
# cluster per object, while objects overlapping at IoU <= 0.5 stay apart.
MERGE_THRESHOLD = 0.7

# Default number of merged boxes kept per image.
DEFAULT_MAX_OUTPUT = 100

# Scores per block of a round: one block while m * m <= BLOCK_SCORES (m <= 4096).
BLOCK_SCORES = 1 << 24

_MIN_AREA = 1e-12  # floor on min(A1, A2) in match_score: finite scores for zero-area boxes
_MIN_PADDED = 128  # smallest padded size of an XLA block


class MergeResult(NamedTuple):
    """Padded output of `merge_boxes`: rows `[:num_merged]` are the merged boxes, accumulated
    score descending (ties: the cluster holding the earliest input box first); the rest is
    zeros.

    Attributes:
        boxes: [max_output, 4] merged boxes, yxyx, in the units of the input boxes.
        scores: [max_output] accumulated scores (sum over the members).
        classes: [max_output] int32 class of each merged box.
        num_members: [max_output] int32 number of input boxes in each merged box.
        num_merged: [] int32 number of valid rows (<= max_output).
    """

    boxes: tf.Tensor
    scores: tf.Tensor
    classes: tf.Tensor
    num_members: tf.Tensor
    num_merged: tf.Tensor


def _derive(boxes: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Per-box terms of the score: (y0, x0, y1, x1, y0 + y1, x0 + x1, area); [..., 4] -> 7 x
    [...]. Computed alike for every box, so that `_pair_scores` is bitwise symmetric."""
    y0, x0, y1, x1 = tf.unstack(boxes, 4, axis=-1)
    return y0, x0, y1, x1, y0 + y1, x0 + x1, tf.nn.relu(y1 - y0) * tf.nn.relu(x1 - x0)


def _pair_scores(a: tuple[tf.Tensor, ...], b: tuple[tf.Tensor, ...]) -> tf.Tensor:
    """match_score of `_derive`d boxes, element-wise with broadcasting."""
    ay0, ax0, ay1, ax1, acy, acx, area_a = a
    by0, bx0, by1, bx1, bcy, bcx, area_b = b
    inter = tf.nn.relu(tf.minimum(ay1, by1) - tf.maximum(ay0, by0)) * tf.nn.relu(
        tf.minimum(ax1, bx1) - tf.maximum(ax0, bx0)
    )
    iou = tf.math.divide_no_nan(inter, area_a + area_b - inter)
    dy, dx = acy - bcy, acx - bcx  # twice the centre offsets: ||c1 - c2|| = sqrt(d2) / 2
    min_area = tf.maximum(tf.minimum(area_a, area_b), tf.cast(_MIN_AREA, ay0.dtype))
    return tf.sqrt((dy * dy + dx * dx) / min_area) * 0.5 - iou + 1.0


def match_score(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """The merge score of yxyx boxes (module docstring), element-wise with broadcasting.

    Boxes in pixels of the original image (or any units with the same scale on both axes):
    the score is invariant to a uniform scale, not to a different scale per axis.

    Args:
        boxes1: [..., 4] yxyx. boxes2: [..., 4] yxyx, broadcastable against `boxes1`.

    Returns:
        [...] scores (lower = better match; 0 for identical boxes).
    """
    boxes1 = tf.convert_to_tensor(boxes1)
    if not boxes1.dtype.is_floating:
        boxes1 = tf.cast(boxes1, tf.float32)
    return _pair_scores(_derive(boxes1), _derive(tf.cast(boxes2, boxes1.dtype)))


def _best_in_block(
    rows: tf.Tensor, row_pos: tf.Tensor, row_group: tf.Tensor, cols: tf.Tensor, col_group: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Each row's best partner among the columns: the lowest score against a column of its
    class group other than itself, and the first such column (`tf.argmin` does not promise
    which index it returns on ties; this does).

    Args:
        rows: [r, 4] boxes, row_pos [r] int32 their column index, row_group [r] int32 class
            group. cols: [w, 4], col_group [w] int32 (-1: padding, never a partner).

    Returns:
        low [r] (inf if no partner), arg [r] int32 (w if no partner).
    """
    scores = _pair_scores(
        tuple(x[:, tf.newaxis] for x in _derive(rows)), tuple(x[tf.newaxis] for x in _derive(cols))
    )  # [r, w]
    w = tf.shape(cols, out_type=tf.int32)[0]
    columns = tf.range(w)
    partner = tf.logical_and(
        tf.equal(row_group[:, tf.newaxis], col_group[tf.newaxis]),
        tf.not_equal(row_pos[:, tf.newaxis], columns[tf.newaxis]),
    )
    scores = tf.where(partner, scores, tf.constant(np.inf, scores.dtype))
    low = tf.reduce_min(scores, axis=1)
    at_low = tf.equal(scores, low[:, tf.newaxis])
    arg = tf.reduce_min(tf.where(at_low, columns[tf.newaxis], w), axis=1)
    return low, tf.where(tf.math.is_inf(low), w, arg)


_best_in_block_xla = tf.function(
    _best_in_block, jit_compile=True, reduce_retracing=True, autograph=False
)


def _padded(n: tf.Tensor) -> tf.Tensor:
    """The smallest power of two >= max(n, _MIN_PADDED) (int32)."""
    x = tf.maximum(n, _MIN_PADDED) - 1
    for shift in (1, 2, 4, 8, 16):
        x = tf.bitwise.bitwise_or(x, tf.bitwise.right_shift(x, shift))
    return x + 1


def _block(
    boxes: tf.Tensor, group: tf.Tensor, start: tf.Tensor, size: tf.Tensor, xla: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """Best partners of the rows [start, start + size) against all m clusters."""
    rows = tf.range(start, start + size)
    args = (tf.gather(boxes, rows), rows, tf.gather(group, rows), boxes, group)
    if not xla:
        return _best_in_block(*args)
    m = tf.shape(group, out_type=tf.int32)[0]
    r_pad, w_pad = _padded(size) - size, _padded(m) - m
    low, arg = _best_in_block_xla(
        tf.pad(args[0], [[0, r_pad], [0, 0]]),
        tf.pad(rows, [[0, r_pad]], constant_values=-1),
        tf.pad(args[2], [[0, r_pad]], constant_values=-1),
        tf.pad(boxes, [[0, w_pad], [0, 0]]),
        tf.pad(group, [[0, w_pad]], constant_values=-1),
    )
    return low[:size], tf.minimum(arg[:size], m)


def _best_partners(
    boxes: tf.Tensor, group: tf.Tensor, xla: bool
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """low [m], arg [m] (m if alone) of every cluster and the inner-loop iterations []: one
    block if m * m <= BLOCK_SCORES, else a loop over blocks of BLOCK_SCORES // m rows."""
    m = tf.shape(group, out_type=tf.int32)[0]
    rows = tf.clip_by_value(BLOCK_SCORES // tf.maximum(m, 1), 1, tf.maximum(m, 1))

    def one_block():
        return (*_block(boxes, group, 0, m, xla), tf.constant(0, tf.int32))

    def row_blocks():
        def body(i, lows, args):
            start = i * rows
            low, arg = _block(boxes, group, start, tf.minimum(rows, m - start), xla)
            return i + 1, lows.write(i, low), args.write(i, arg)

        count = (m + rows - 1) // rows
        arrays = (
            tf.TensorArray(boxes.dtype, size=count, infer_shape=False),
            tf.TensorArray(tf.int32, size=count, infer_shape=False),
        )
        _, lows, args = tf.while_loop(lambda i, *_: i < count, body, (0, *arrays))
        return lows.concat(), args.concat(), count

    low, arg, inner = tf.cond(m <= rows, one_block, row_blocks)
    return tf.reshape(low, [m]), tf.reshape(arg, [m]), inner


def _round(
    sums: tf.Tensor,
    key: tf.Tensor,
    cls: tf.Tensor,
    group: tf.Tensor,
    threshold: tf.Tensor,
    xla: bool,
) -> tuple[tf.Tensor, ...]:
    """One round on the clusters (sorted by class, key): every mutual best pair at <=
    threshold merges into its first member. sums [m, 6]: sums of the members' y0, x0, y1,
    x1, the member count and the score sum; key, cls, group [m] int32.

    Returns (sums, key, cls, group) of the remaining clusters, pairs merged [], inner-loop
    iterations []."""
    boxes = tf.math.divide_no_nan(sums[:, :4], sums[:, 4:5])
    low, arg, inner = _best_partners(boxes, group, xla)
    m = tf.shape(key, out_type=tf.int32)[0]
    position = tf.range(m)
    partner = tf.minimum(arg, m - 1)
    mutual = tf.logical_and(low <= threshold, tf.equal(tf.gather(arg, partner), position))
    absorbs = tf.logical_and(mutual, arg > position)  # p of a pair p < q
    stays = tf.logical_not(tf.logical_and(mutual, arg < position))  # not a q
    sums = sums + tf.where(absorbs[:, tf.newaxis], tf.gather(sums, partner), tf.zeros_like(sums))
    index = tf.reshape(tf.where(stays), [-1])  # one Where: one size read back per round
    kept = tuple(tf.gather(x, index) for x in (sums, key, cls, group))
    return (*kept, tf.reduce_sum(tf.cast(absorbs, tf.int32)), inner)


def _initial_clusters(boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor) -> tuple:
    """(sums [K, 6], key, cls, group [K]) of the clusters before the first round, sorted by
    (class, key): boxes of a class with identical coordinates form one cluster (they score
    0 and would otherwise take one round per copy). group: the class's rank (0, 1, ...)."""
    n = tf.shape(classes, out_type=tf.int32)[0]
    order = tf.range(n)
    # Sorted by (class, y0, x0, y1, x1), input order among equals: stable sorts, last key first.
    for column in (boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], classes):
        order = tf.gather(order, tf.argsort(tf.gather(column, order), stable=True))
    sorted_boxes, sorted_classes = tf.gather(boxes, order), tf.gather(classes, order)
    differs = tf.logical_or(
        tf.reduce_any(tf.not_equal(sorted_boxes[1:], sorted_boxes[:-1]), axis=1),
        tf.not_equal(sorted_classes[1:], sorted_classes[:-1]),
    )
    is_first = tf.concat([tf.ones([tf.minimum(n, 1)], tf.bool), differs], 0)
    same = tf.cumsum(tf.cast(is_first, tf.int32)) - 1  # [N] cluster of each sorted box
    count = tf.math.segment_sum(tf.ones([n], boxes.dtype), same)
    score = tf.math.segment_sum(tf.gather(scores, order), same)
    box = tf.boolean_mask(sorted_boxes, is_first)
    key = tf.boolean_mask(order, is_first)  # the first of a group has the smallest index
    cls = tf.boolean_mask(sorted_classes, is_first)
    by_key = tf.argsort(key, stable=True)
    order = tf.gather(by_key, tf.argsort(tf.gather(cls, by_key), stable=True))
    sums = tf.concat([box * count[:, None], count[:, None], score[:, None]], axis=1)
    cls = tf.gather(cls, order)
    new_class = tf.concat(
        [
            tf.zeros([tf.minimum(tf.size(cls), 1)], tf.int32),
            tf.cast(tf.not_equal(cls[1:], cls[:-1]), tf.int32),
        ],
        0,
    )
    return tf.gather(sums, order), tf.gather(key, order), cls, tf.cumsum(new_class)


def _rank(sums: tf.Tensor, key: tf.Tensor, cls: tf.Tensor, max_output: int) -> MergeResult:
    """The `max_output` best clusters in output order, zero-padded."""
    by_key = tf.argsort(key, stable=True)  # top_k keeps the lower index first on ties
    scores = tf.gather(sums[:, 5], by_key)
    num_merged = tf.minimum(tf.shape(scores)[0], max_output)
    top = tf.math.top_k(scores, k=num_merged, sorted=True).indices
    pick = tf.gather(by_key, top)
    pad = max_output - num_merged
    boxes = tf.math.divide_no_nan(sums[:, :4], sums[:, 4:5])
    return MergeResult(
        tf.ensure_shape(tf.pad(tf.gather(boxes, pick), [[0, pad], [0, 0]]), [max_output, 4]),
        tf.ensure_shape(tf.pad(tf.gather(scores, top), [[0, pad]]), [max_output]),
        tf.ensure_shape(tf.pad(tf.gather(cls, pick), [[0, pad]]), [max_output]),
        tf.ensure_shape(
            tf.pad(tf.cast(tf.gather(sums[:, 4], pick), tf.int32), [[0, pad]]), [max_output]
        ),
        num_merged,
    )


@tf.function(reduce_retracing=True, autograph=False)
def _merge_graph(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: tf.Tensor,
    max_output: int,
    xla: bool,
) -> tuple[MergeResult, tf.Tensor]:
    """`merge_boxes` on checked inputs, as a graph: (MergeResult, iterations [])."""
    sums, key, cls, group = _initial_clusters(boxes, scores, classes)

    def body(sums, key, cls, group, merged, iterations):
        sums, key, cls, group, merged, inner = _round(sums, key, cls, group, threshold, xla)
        return sums, key, cls, group, merged, iterations + 1 + inner

    zero = tf.constant(0, tf.int32)
    sums, key, cls, _, _, iterations = tf.while_loop(
        lambda sums, key, cls, group, merged, it: tf.logical_and(merged > 0, tf.shape(key)[0] >= 2),
        body,
        (sums, key, cls, group, tf.constant(1, tf.int32), zero),
        shape_invariants=(
            tf.TensorShape([None, 6]),
            *[tf.TensorShape([None])] * 3,
            *[tf.TensorShape([])] * 2,
        ),
    )
    return _rank(sums, key, cls, max_output), iterations


def _check_inputs(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: float | tf.Tensor,
    max_output: int,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Converted inputs (boxes' float dtype for boxes, scores and threshold; int32 classes),
    with run-time checks of the number of boxes and finiteness."""
    if isinstance(threshold, int | float) and not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}.")
    if (
        not isinstance(max_output, int | np.integer)
        or isinstance(max_output, bool)
        or max_output < 1
    ):
        raise ValueError(f"max_output must be a positive int, got {max_output!r}.")
    boxes = tf.convert_to_tensor(boxes)
    if not boxes.dtype.is_floating:
        boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, boxes.dtype)
    classes = tf.convert_to_tensor(classes)
    if not classes.dtype.is_integer:
        raise ValueError(f"classes must be an integer tensor, got {classes.dtype}.")
    classes = tf.cast(classes, tf.int32)
    for t, rank, what in (
        (boxes, 2, "boxes [M, 4]"),
        (scores, 1, "scores [M]"),
        (classes, 1, "classes [M]"),
    ):
        if t.shape.rank is not None and t.shape.rank != rank:
            raise ValueError(f"{what} must have rank {rank}, got shape {t.shape}.")
    if boxes.shape.rank is not None and boxes.shape[-1] not in (None, 4):
        raise ValueError(f"boxes must have a last dimension of 4, got shape {boxes.shape}.")
    threshold = tf.cast(threshold, boxes.dtype)
    n = tf.shape(boxes)[:1]
    checks = [
        tf.debugging.assert_equal(
            n,
            tf.shape(scores),
            message="merge_boxes: boxes and scores disagree on the number of boxes.",
        ),
        tf.debugging.assert_equal(
            n,
            tf.shape(classes),
            message="merge_boxes: boxes and classes disagree on the number of boxes.",
        ),
        tf.debugging.assert_all_finite(boxes, "merge_boxes: boxes must be finite."),
        tf.debugging.assert_all_finite(scores, "merge_boxes: scores must be finite."),
        tf.debugging.assert_all_finite(threshold, "merge_boxes: threshold must be finite."),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(boxes), scores, classes, threshold


def merge_boxes(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: float | tf.Tensor = MERGE_THRESHOLD,
    max_output: int = DEFAULT_MAX_OUTPUT,
    jit_compile: bool = False,
    return_iterations: bool = False,
) -> MergeResult | tuple[MergeResult, tf.Tensor]:
    """Merges one image's boxes in rounds of mutual best matches (module docstring).

    Per class, clusters whose `match_score` is <= `threshold` and that are each other's best
    match merge, round after round; a merged box is the mean of its members, its score the
    sum of theirs. Core TF ops: eager, `tf.function` (any number of boxes), `tf.data`,
    SavedModels; no Python ops.

    Args:
        boxes: [M, 4] yxyx boxes in PIXELS of the original image, or any units with the same
            scale on both axes (the score is not invariant to a per-axis scale). float32 or
            float64 (the computation dtype); finite.
        scores: [M] confidence of each box. classes: [M] integer class of each box; boxes
            of different classes never merge.
        threshold: mutual best matches merge while their match_score is <= threshold.
        max_output: rows of the padded output (Python int >= 1); the best clusters are kept.
        jit_compile: score each round's blocks with XLA-compiled kernels (padded shapes, one
            compile per size met). Same results; exports must keep False.
        return_iterations: also return the dependent loop iterations ([] int32): rounds
            (including the last, which merges nothing) plus row blocks of multi-block rounds.

    Returns:
        `MergeResult` (`max_output` rows, `num_merged` valid, accumulated score descending,
        ties by smallest member index); with `return_iterations`, (MergeResult, iterations).
    """
    if jit_compile not in (True, False):
        raise ValueError(f"jit_compile must be True or False, got {jit_compile!r}.")
    args = _check_inputs(boxes, scores, classes, threshold, max_output)
    result, iterations = _merge_graph(*args, int(max_output), bool(jit_compile))
    result = MergeResult(*result)
    return (result, iterations) if return_iterations else result


# The name of the algorithm: rounds of mutual best matches.
mutual_merge = merge_boxes

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

Cost of a round on m live clusters (kept sorted by (class, key), compacted after every
round). The first round scores one masked [m, m] matrix over all classes at once (pairs of
different classes, and p with itself, masked to inf). A later round rescores only what the
last one changed: the k merged clusters against all ([m, k]) and the f clusters whose box or
best partner changed against all ([f, m]); every other cluster keeps its partner unless a
merged cluster now scores lower. Same results, and when k + f >= m one [m, m] block instead.
Either way a fixed number of ops (kernels on a GPU) per round, whatever m. Memory: a few
score temporaries of 4 bytes per pair; a block of more than `BLOCK_SCORES` = 2^24 pairs is
scored in row blocks, an inner loop (never with the detector's 4000-box budget).

Dependent loop iterations (`return_iterations=True`): one per round, including the last one
that merges nothing, plus one per row block of multi-block scoring. 4000 clustered detector
boxes take about 30-40.

`jit_compile=True` runs each block as an XLA-compiled kernel on padded shapes (a power of two
>= 128 rows and columns; one compile per size met, once per process and dtype); the rest of
the loop stays plain TF. Same results as `jit_compile=False`, which uses core TF ops only and
is what exports must use (TF Serving may run without the XLA JIT).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["BLOCK_SCORES", "DEFAULT_MAX_OUTPUT", "MERGE_THRESHOLD", "MergeResult"]
__all__ += ["match_score", "merge_boxes", "mutual_merge"]

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


def _best_in_block(rows, row_pos, row_group, cols, col_pos, col_group, none) -> tuple:
    """Each row's best partner among the columns: the lowest score against a column of its
    class group other than itself, and the smallest such column position (`tf.argmin` does
    not promise which index it returns on ties; this does).

    Args:
        rows: [r, 4] boxes, row_pos [r] int32 their positions, row_group [r] int32 class
            group. cols: [w, 4], col_pos [w] int32, col_group [w] int32 (-1: padding, never
            a partner). none: [] int32 position returned for a row without partner.

    Returns:
        low [r] (inf if no partner), arg [r] int32 (the partner's position, else `none`).
    """
    scores = _pair_scores(
        tuple(x[:, tf.newaxis] for x in _derive(rows)), tuple(x[tf.newaxis] for x in _derive(cols))
    )  # [r, w]
    partner = tf.logical_and(
        tf.equal(row_group[:, tf.newaxis], col_group[tf.newaxis]),
        tf.not_equal(row_pos[:, tf.newaxis], col_pos[tf.newaxis]),
    )
    scores = tf.where(partner, scores, tf.constant(np.inf, scores.dtype))
    low = tf.reduce_min(scores, axis=1)
    at_low = tf.equal(scores, low[:, tf.newaxis])
    arg = tf.reduce_min(tf.where(at_low, col_pos[tf.newaxis], none), axis=1)
    return low, tf.where(tf.math.is_inf(low), none, arg)


_best_in_block_xla = tf.function(
    _best_in_block, jit_compile=True, reduce_retracing=True, autograph=False
)


def _padded(x: tf.Tensor, value: int) -> tf.Tensor:
    """`x` padded along axis 0 with `value` to the smallest power of two >= 128."""
    n = tf.shape(x, out_type=tf.int32)[0]
    size = tf.maximum(n, _MIN_PADDED) - 1
    for shift in (1, 2, 4, 8, 16):
        size = tf.bitwise.bitwise_or(size, tf.bitwise.right_shift(size, shift))
    pads = [[0, size + 1 - n]] + [[0, 0]] * (x.shape.rank - 1)
    return tf.pad(x, pads, constant_values=value)


def _block(
    boxes: tf.Tensor, group: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, xla: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """Best partners of the clusters at positions `rows` [r] among those at `cols` [w]."""
    m = tf.shape(group, out_type=tf.int32)[0]
    args = [tf.gather(boxes, rows), rows, tf.gather(group, rows)]
    args += [tf.gather(boxes, cols), cols, tf.gather(group, cols)]
    if not xla:
        return _best_in_block(*args, m)
    padded = [_padded(x, value) for x, value in zip(args, (0, -1, -1) * 2, strict=True)]
    low, arg = _best_in_block_xla(*padded, m)
    r = tf.shape(rows)[0]
    return low[:r], arg[:r]


def _best_partners(
    boxes: tf.Tensor, group: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, xla: bool
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """low [r], arg [r] (m if none) of the clusters at `rows` among those at `cols` and the
    inner-loop iterations []: one block if r * w <= BLOCK_SCORES, else a loop over blocks of
    BLOCK_SCORES // w rows."""
    r, w = tf.shape(rows, out_type=tf.int32)[0], tf.shape(cols, out_type=tf.int32)[0]
    size = tf.clip_by_value(BLOCK_SCORES // tf.maximum(w, 1), 1, tf.maximum(r, 1))

    def one_block():
        return (*_block(boxes, group, rows, cols, xla), tf.constant(0, tf.int32))

    def row_blocks():
        def body(i, lows, args):
            part = rows[i * size : (i + 1) * size]
            low, arg = _block(boxes, group, part, cols, xla)
            return i + 1, lows.write(i, low), args.write(i, arg)

        count = (r + size - 1) // size
        arrays = (
            tf.TensorArray(boxes.dtype, size=count, infer_shape=False),
            tf.TensorArray(tf.int32, size=count, infer_shape=False),
        )
        _, lows, args = tf.while_loop(lambda i, *_: i < count, body, (0, *arrays))
        return lows.concat(), args.concat(), count

    low, arg, inner = tf.cond(r <= size, one_block, row_blocks)
    return tf.reshape(low, [r]), tf.reshape(arg, [r]), inner


def _rescore(boxes, group, low, arg, changed, stale, xla: bool) -> tuple[tf.Tensor, ...]:
    """Best partners of all m clusters after a round, from those before it.

    low, arg [m]: each cluster's best partner before the round (positions after it; m:
    none), valid for the clusters whose box and best partner did not change; changed [m]
    bool: clusters whose box changed; stale [m] bool: clusters to score against all others
    (changed, or their best partner changed or merged away). The others keep their partner
    unless a changed cluster scores lower (or equal, at a smaller position): scores
    against the changed clusters only, [m, k] + [f, m] instead of [m, m], same results.
    Returns low [m], arg [m], inner-loop iterations []."""
    m = tf.shape(group, out_type=tf.int32)[0]
    every = tf.range(m)
    changed_at = tf.reshape(tf.where(changed), [-1])
    stale_at = tf.cast(tf.reshape(tf.where(stale), [-1]), tf.int32)
    k, f = tf.size(changed_at), tf.size(stale_at)

    def incremental():
        low_c, arg_c, inner_c = _best_partners(
            boxes, group, every, tf.cast(changed_at, tf.int32), xla
        )
        better = tf.logical_or(low_c < low, tf.logical_and(tf.equal(low_c, low), arg_c < arg))
        low_i, arg_i = tf.where(better, low_c, low), tf.where(better, arg_c, arg)
        low_f, arg_f, inner_f = _best_partners(boxes, group, stale_at, every, xla)
        at = stale_at[:, tf.newaxis]
        return (
            tf.tensor_scatter_nd_update(low_i, at, low_f),
            tf.tensor_scatter_nd_update(arg_i, at, arg_f),
            inner_c + inner_f,
        )

    return tf.cond(k + f < m, incremental, lambda: _best_partners(boxes, group, every, every, xla))


def _round(sums, key, cls, group, low, arg, threshold, xla: bool) -> tuple[tf.Tensor, ...]:
    """One round on the clusters (sorted by class, key): every mutual best pair at <=
    threshold merges into its first member. sums [m, 6]: sums of the members' y0, x0, y1,
    x1, the member count and the score sum; key, cls, group [m] int32; low [m], arg [m]:
    each cluster's best partner (`_best_partners`).

    Returns (sums, key, cls, group, low, arg) of the remaining clusters, pairs merged [],
    inner-loop iterations []."""
    m = tf.shape(key, out_type=tf.int32)[0]
    position = tf.range(m)
    partner = tf.minimum(arg, m - 1)
    mutual = tf.logical_and(low <= threshold, tf.equal(tf.gather(arg, partner), position))
    absorbs = tf.logical_and(mutual, arg > position)  # p of a pair p < q
    stays = tf.logical_not(tf.logical_and(mutual, arg < position))  # not a q
    sums = sums + tf.where(absorbs[:, tf.newaxis], tf.gather(sums, partner), tf.zeros_like(sums))
    index = tf.reshape(tf.where(stays), [-1])  # one Where: one size read back per round
    # Positions after the compaction (m: none); clusters whose best partner merged are stale.
    new_position = tf.concat([tf.cumsum(tf.cast(stays, tf.int32)) - 1, [tf.size(index)]], 0)
    partner_moved = tf.logical_and(arg < m, tf.gather(mutual, partner))
    kept = [tf.gather(x, index) for x in (sums, key, cls, group, low, arg, absorbs)]
    sums, key, cls, group, low, arg, changed = kept
    stale = tf.logical_or(changed, tf.gather(partner_moved, index))
    boxes = _means(sums)
    low, arg, inner = _rescore(boxes, group, low, tf.gather(new_position, arg), changed, stale, xla)
    merged = tf.reduce_sum(tf.cast(absorbs, tf.int32))
    return sums, key, cls, group, low, arg, merged, inner


def _means(sums: tf.Tensor) -> tf.Tensor:
    """The clusters' boxes [m, 4]: their members' mean coordinates (sums [m, 6])."""
    return tf.math.divide_no_nan(sums[:, :4], sums[:, 4:5])


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
    boxes = _means(sums)

    def padded(x: tf.Tensor) -> tf.Tensor:
        pads = [[0, max_output - num_merged]] + [[0, 0]] * (x.shape.rank - 1)
        return tf.ensure_shape(tf.pad(x, pads), [max_output, *x.shape[1:]])

    members = tf.cast(tf.gather(sums[:, 4], pick), tf.int32)
    picked = (tf.gather(boxes, pick), tf.gather(scores, top), tf.gather(cls, pick), members)
    return MergeResult(*(padded(x) for x in picked), num_merged)


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
    every = tf.range(tf.shape(key, out_type=tf.int32)[0])
    low, arg, first = _best_partners(_means(sums), group, every, every, xla)

    def body(state, merged, iterations):
        *state, merged, inner = _round(*state, threshold, xla)
        return tuple(state), merged, iterations + 1 + inner

    state, _, iterations = tf.while_loop(
        lambda state, merged, _: tf.logical_and(merged > 0, tf.shape(state[1])[0] >= 2),
        body,
        ((sums, key, cls, group, low, arg), tf.constant(1, tf.int32), first),
        shape_invariants=(
            (tf.TensorShape([None, 6]), *[tf.TensorShape([None])] * 5),
            tf.TensorShape([]),
            tf.TensorShape([]),
        ),
    )
    return _rank(*state[:3], max_output), iterations


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
    count = isinstance(max_output, int | np.integer) and not isinstance(max_output, bool)
    if not count or max_output < 1:
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
            tf.shape(x),
            message=f"merge_boxes: boxes and {what} disagree on the number of boxes.",
        )
        for x, what in ((scores, "scores"), (classes, "classes"))
    ] + [
        tf.debugging.assert_all_finite(x, f"merge_boxes: {what} must be finite.")
        for x, what in ((boxes, "boxes"), (scores, "scores"), (threshold, "threshold"))
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

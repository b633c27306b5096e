"""Greedy box merging (paper §4.3), in TF ops and as a plain NumPy reference.

The paper combines the boxes predicted by every window of every scale by repeatedly merging
the pair with the lowest `match_score` until that score exceeds a threshold `t`; a merged box
averages its members' coordinates and *adds* their class confidences, so coherent clusters of
boxes accumulate a high score while isolated false positives stay low.

match_score
-----------
For two yxyx boxes b1, b2 with centres c1, c2 and areas A1, A2 (any units):

    match_score(b1, b2) = ||c1 - c2||_2 / sqrt(max(min(A1, A2), eps))  +  (1 - IoU(b1, b2))

- the first term is the distance between centres, in units of the side of the smaller box;
- the second term is 1 - intersection-over-union (IoU = 0 when the union is empty);
- lower is better; it is 0 for identical boxes, symmetric, and invariant to scaling both
  boxes (so it works on pixels or normalized coordinates alike).
- Disjoint (or merely touching) boxes of positive area have IoU = 0 and distinct centres, so
  their score is > 1: with any threshold t <= 1 they never merge.

Why IoU rather than intersection / min(A1, A2): the latter is 0 for a small box nested inside
a large one with the same centre, so a part-sized box would merge with a whole-object box at
score 0, before two nearly identical boxes do. IoU also penalizes disagreement in size
(concentric boxes with side ratio r score 1 - 1 / r^2), which is what tells two regressor
predictions for the same object from predictions for an object and one of its parts.

Algorithm (per class: boxes of different classes never merge)
-------------------------------------------------------------
    clusters = one per input box, in input order
    repeat:
        (p, q) = argmin over pairs p < q of match_score(mean(p), mean(q))
        if that score > t (or there are < 2 clusters): stop
        p <- p ∪ q; delete q
    merged box = mean of its members' coordinates (count-weighted average of two clusters)
    merged score = sum of its members' scores

Ties: pairs with equal scores are taken in lexicographic order of (key(p), key(q)), where a
cluster's key is the smallest input index among its members; the merged cluster keeps the
smaller key. Output order: accumulated score descending, ties by key ascending (i.e. the
cluster holding the earliest input box first).

Implementation (`greedy_merge`)
-------------------------------
Core TF ops only (graph mode, SavedModel, CPU and GPU; no py_function). Boxes are grouped by
class; the classes are merged in groups of up to `_LANES` "lanes" (a `tf.while_loop` over the
groups), the lanes of a group side by side in one `tf.while_loop` whose step does one merge in
every lane, so k classes of ~n boxes take ~n steps, not k * n. Memory is O(L * n) for the state
plus one block of initial scores (O(`_BLOCK_SCORES`)): never an N x N matrix over all classes,
not even an n x n one for one class.

Each step is O(n) and vectorized (no Python loop over boxes): a lazy priority queue keeps, for
every row k, the lowest score of k against the later slots l > k and that slot. The step takes
the lowest row i and its slot j; if that entry is still fresh (slot j unchanged since it was
computed) it merges j into i, scores the new box i against every slot (O(n)), lets the rows
k < i adopt (k, i) when it beats their entry and recomputes row i; if the entry is stale (j
was merged or absorbed something since) it only recomputes row i. Stale entries are lower
bounds of their row's true minimum, so the entry at the top is always the exact next pair.

Cost: about one step per input box (merges + refreshes ~1.5 n), each ~100-150 small TF ops;
on CPU that is ~0.15 ms per step. On a GPU every op is a kernel launch: place the merge on
the CPU (`with tf.device("/CPU:0")`) when serving on GPU; it still runs on GPU if asked.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "MERGE_THRESHOLD",
    "MergeResult",
    "batched_greedy_merge",
    "greedy_merge",
    "greedy_merge_numpy",
    "match_score",
    "match_score_numpy",
]

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

# Default number of merged boxes kept per image (the TF Object Detection API's usual 100).
DEFAULT_MAX_OUTPUT = 100

# Floor on min(A1, A2) in match_score, so degenerate (zero-area) boxes give a large finite
# distance term instead of inf / nan.
_MIN_AREA = 1e-12

# Scores per block when computing the initial row minima: memory O(_BLOCK_SCORES), not
# O(n^2) (~30 temporaries per score: ~30 MB in float32).
_BLOCK_SCORES = 1 << 18

# Classes merged side by side in one loop (lanes): a loop step does one merge in each, so
# k classes of n boxes take ~n steps rather than k * n. Classes are grouped by size.
_LANES = 8


class MergeResult(NamedTuple):
    """Padded output of `greedy_merge` (one image) or `batched_greedy_merge` (leading [B]).

    Rows `[:num_merged]` are the merged boxes sorted by accumulated score, descending (ties:
    the cluster holding the earliest input box first); the rest is zero padding.

    Attributes:
        boxes: [max_output, 4] merged boxes, same order and units as the input (yxyx).
        scores: [max_output] accumulated confidences (sum over members).
        classes: [max_output] int32 class of each merged box.
        num_members: [max_output] int32 number of input boxes in each merged box.
        num_merged: [] int32 number of valid rows (<= max_output).
    """

    boxes: tf.Tensor
    scores: tf.Tensor
    classes: tf.Tensor
    num_members: tf.Tensor
    num_merged: tf.Tensor


# --- TF --------------------------------------------------------------------------------------
def _derive(y0: tf.Tensor, x0: tf.Tensor, y1: tf.Tensor, x1: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Per-box quantities of `_pair_scores`: (y0, x0, y1, x1, y0 + y1, x0 + x1, area).

    Computed the same way for every box, so that the score of a pair does not depend on
    which side of the comparison each box is on. Any (broadcastable) shapes.
    """
    return y0, x0, y1, x1, y0 + y1, x0 + x1, tf.nn.relu(y1 - y0) * tf.nn.relu(x1 - x0)


def _pair_scores(a: tuple[tf.Tensor, ...], b: tuple[tf.Tensor, ...]) -> tf.Tensor:
    """match_score of `_derive`d boxes, element-wise with broadcasting; bitwise symmetric."""
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
    return _pair_scores(
        _derive(*tf.unstack(boxes1, 4, axis=-1)), _derive(*tf.unstack(boxes2, 4, axis=-1))
    )


def _first_argmin(
    values: tf.Tensor, iota: tf.Tensor, big: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Min over the last axis and the FIRST index attaining it (`big` if the min is inf).

    tf.argmin does not promise which index it returns on ties; this does. `iota` holds the
    index of every element along the last axis and `big` the value n, both with the shape
    of `values` (materialized once, since broadcasting binary ops are slow on CPU).
    [..., n] -> [...], [...].
    """
    low = tf.reduce_min(values, axis=-1)  # [...]
    at_low = tf.equal(values, tf.broadcast_to(low[..., tf.newaxis], tf.shape(values)))
    first = tf.reduce_min(tf.where(at_low, iota, big), axis=-1)
    return low, tf.where(tf.math.is_inf(low), big[..., 0], first)


def _initial_row_minima(derived: tf.Tensor, valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per lane and row k: min over valid l > k of match_score(k, l) and the first such l.

    Args:
        derived: [7, L, n] the `_derive`d boxes. valid: [L, n] bool (padding = False).

    Returns:
        [L, n] minima (inf if none) and [L, n] int32 slots (n if none). Computed in blocks
        of rows: memory O(_BLOCK_SCORES) scores, not O(L * n^2).
    """
    lanes = tf.shape(valid, out_type=tf.int32)[0]
    n = tf.shape(valid, out_type=tf.int32)[1]
    dtype = derived.dtype
    inf = tf.constant(np.inf, dtype)
    rows_per_block = tf.maximum(_BLOCK_SCORES // tf.maximum(lanes * n, 1), 1)
    num_blocks = (n + rows_per_block - 1) // rows_per_block
    columns = derived[:, :, tf.newaxis, :]  # [7, L, 1, n]
    valid_cols = valid[:, tf.newaxis, :]  # [L, 1, n]
    mins = tf.TensorArray(dtype, size=num_blocks, infer_shape=False, element_shape=None)
    args = tf.TensorArray(tf.int32, size=num_blocks, infer_shape=False, element_shape=None)

    def body(b, mins, args):
        start = b * rows_per_block
        stop = tf.minimum(start + rows_per_block, n)
        shape = [7, lanes, stop - start, n]
        rows = tf.broadcast_to(derived[:, :, start:stop, tf.newaxis], shape)
        s = _pair_scores(tf.unstack(rows, 7), tf.unstack(tf.broadcast_to(columns, shape), 7))
        iota = tf.broadcast_to(tf.range(n), shape[1:])  # [L, c, n]
        later = tf.logical_and(valid_cols, iota > tf.range(start, stop)[:, tf.newaxis])
        low, arg = _first_argmin(tf.where(later, s, inf), iota, tf.fill(shape[1:], n))
        # Blocks are stacked on axis 0: [c, L] so that concat gives [n, L].
        return b + 1, mins.write(b, tf.transpose(low)), args.write(b, tf.transpose(arg))

    _, mins, args = tf.while_loop(
        lambda b, *_: b < num_blocks, body, (tf.constant(0, tf.int32), mins, args)
    )
    low = tf.transpose(tf.reshape(mins.concat(), [n, lanes]))
    arg = tf.transpose(tf.reshape(args.concat(), [n, lanes]))
    return tf.where(valid, low, inf), arg


def _merge_lanes(
    boxes: tf.Tensor, scores: tf.Tensor, valid: tf.Tensor, threshold: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Greedy merge of L independent box sets (one class each) in lockstep.

    Lane l holds the boxes of one class in input order (slot k = its k-th box), padded to a
    common n; every step does one merge (or one refresh) in every lane still running.

    Args:
        boxes: [L, n, 4] yxyx. scores: [L, n]. valid: [L, n] bool, False on padding.
        threshold: [] (same float dtype as the boxes).

    Returns:
        active [L, n] bool (slots holding a merged box, at its smallest member's slot),
        merged boxes [L, n, 4], accumulated scores [L, n], member counts [L, n] int32 (0 on
        inactive slots).
    """
    dtype = boxes.dtype
    lanes = tf.shape(valid, out_type=tf.int32)[0]
    n = tf.shape(valid, out_type=tf.int32)[1]
    last = tf.maximum(n - 1, 0)
    fvalid = tf.cast(valid, dtype)
    boxes = boxes * fvalid[:, :, tf.newaxis]
    lane = tf.range(lanes)  # [L]
    # Loop invariants, materialized: where() with broadcast operands is slow on CPU.
    iota = tf.broadcast_to(tf.range(n), [lanes, n])  # [L, n]
    big = tf.fill([lanes, n], n)
    inf = tf.fill([lanes, n], tf.constant(np.inf, dtype))
    zero = tf.zeros([lanes, n], dtype)
    inf_l = tf.fill([lanes], tf.constant(np.inf, dtype))
    # Scatter indices of a slot's 8 entries in D [8, L, n]: (k, lane, slot).
    d_index = tf.stack(tf.meshgrid(tf.range(8), lane, indexing="ij"), axis=-1)  # [8, L, 2]

    derived = _derive(*tf.unstack(boxes, 4, axis=2))  # [L, n] each
    rowmin, rowarg = _initial_row_minima(tf.stack(derived), valid)
    # State. S [L, n, 6]: per slot, the sum of its members' y0, x0, y1, x1, the member
    # count and the score sum; a slot is active (holds a cluster) iff its count is > 0, and
    # its box is the mean (sums / count). A slot's count only grows while it is active, so
    # it doubles as the version of the slot's box. D [8, L, n]: `_derive` of each slot's
    # box and a penalty, 0 on active slots and inf on inactive ones (added to scores).
    # Queue, per row k: (rowmin[k], rowarg[k]) is the lowest score of k against a later slot
    # and that slot, computed when that slot had count rowcnt[k]. The entry is fresh iff the
    # slot still has that count, else rowmin[k] is only a lower bound. Invariant:
    # (rowmin[k], rowarg[k]) <= (score(k, l), l) lexicographically for every active l > k,
    # so a fresh entry at the top of the queue is the exact lexicographic minimum pair, and
    # a stale one at the top gets refreshed (recomputed exactly) instead of merged.
    state = (
        tf.concat([boxes, fvalid[..., tf.newaxis], (scores * fvalid)[..., tf.newaxis]], 2),
        tf.stack([*derived, tf.where(valid, zero, inf)]),
        rowmin,
        tf.ones_like(rowmin),  # rowcnt
        rowarg,
        tf.reduce_min(rowmin, axis=1),  # lowest queue entry per lane [L]
    )

    def step(s, d, rowmin, rowcnt, rowarg, low):
        running = low <= threshold  # [L]
        at_low = tf.equal(rowmin, low[:, tf.newaxis])
        i = tf.minimum(tf.reduce_min(tf.where(at_low, iota, big), axis=1), last)  # [L]
        li = tf.stack([lane, i], axis=1)  # [L, 2]
        j = tf.minimum(tf.gather_nd(rowarg, li), last)  # [L] partner (valid if running)
        lj = tf.stack([lane, j], axis=1)
        s_i, s_j = tf.gather_nd(s, li), tf.gather_nd(s, lj)  # [L, 6]
        # Merge j into i if the entry is fresh; otherwise leave both, only refresh row i.
        fresh = tf.logical_and(running, tf.equal(s_j[:, 4], tf.gather_nd(rowcnt, li)))
        w = tf.cast(fresh, dtype)[:, tf.newaxis]
        new_i = s_i + w * s_j  # [L, 6]
        s = tf.tensor_scatter_nd_update(
            s, tf.concat([li, lj], 0), tf.concat([new_i, s_j - w * s_j], 0)
        )
        box_i = _derive(*tf.unstack(tf.math.divide_no_nan(new_i[:, :4], new_i[:, 4:5]), 4, 1))
        pen = d[7]
        pen_i = tf.gather_nd(pen, li)
        pen_j = tf.where(fresh, inf_l, tf.gather_nd(pen, lj))
        d = tf.tensor_scatter_nd_update(
            d,
            tf.concat(
                [
                    tf.concat([d_index, tf.broadcast_to(i[:, tf.newaxis], [8, lanes, 1])], 2),
                    tf.concat([d_index[7:], j[tf.newaxis, :, tf.newaxis]], 2),
                ],
                0,
            ),
            tf.concat([tf.stack([*box_i, pen_i]), pen_j[tf.newaxis]], 0),
        )
        columns = tuple(d[k] for k in range(7))
        pen = d[7]

        # Scores of (the new) box i against every active slot but itself: O(n).
        v = _pair_scores(tuple(b[:, tf.newaxis] for b in box_i), columns) + pen  # [L, n]
        i_b = tf.broadcast_to(i[:, tf.newaxis], [lanes, n])
        v = tf.where(tf.equal(iota, i_b), inf, v)
        # Rows k < i: their entry (k, i) changed; take it if it beats the row's entry.
        better = tf.logical_or(v < rowmin, tf.logical_and(tf.equal(v, rowmin), i_b < rowarg))
        before_i = tf.logical_and(iota < i_b, running[:, tf.newaxis])
        take = tf.logical_and(tf.logical_and(before_i, v < inf), better)
        rowmin = tf.where(take, v, rowmin)
        rowarg = tf.where(take, i_b, rowarg)
        rowcnt = tf.where(take, tf.broadcast_to(new_i[:, 4:5], [lanes, n]), rowcnt)
        # Row i: recomputed exactly over the later slots (inf once the lane is done); row j:
        # emptied if merged.
        row_v = tf.where(iota > i_b, v, inf)
        row_low = tf.reduce_min(row_v, axis=1)  # [L]
        row_arg = tf.reduce_min(tf.where(tf.equal(row_v, row_low[:, tf.newaxis]), iota, big), 1)
        row_low = tf.where(running, row_low, inf_l)
        row_cnt = tf.gather_nd(s[:, :, 4], tf.stack([lane, tf.minimum(row_arg, last)], 1))
        j_low = tf.where(
            tf.logical_or(fresh, tf.logical_not(running)), inf_l, tf.gather_nd(rowmin, lj)
        )
        rowmin = tf.tensor_scatter_nd_update(
            rowmin, tf.concat([li, lj], 0), tf.concat([row_low, j_low], 0)
        )
        rowcnt = tf.tensor_scatter_nd_update(rowcnt, li, row_cnt)
        rowarg = tf.tensor_scatter_nd_update(rowarg, li, row_arg)
        return s, d, rowmin, rowcnt, rowarg, tf.reduce_min(rowmin, axis=1)

    def cond(*state):
        return tf.reduce_any(state[-1] <= threshold)

    invariants = tuple(tf.TensorShape([None] * x.shape.rank) for x in state)
    s = tf.while_loop(cond, step, state, shape_invariants=invariants, parallel_iterations=1)[0]
    count = s[:, :, 4]
    means = tf.math.divide_no_nan(s[:, :, :4], s[:, :, 4:5])  # [L, n, 4]
    return count > 0, means, s[:, :, 5], tf.cast(count, tf.int32)


def _check_inputs(
    boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor, batched: bool
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, list[tf.Operation]]:
    boxes = tf.convert_to_tensor(boxes)
    if not boxes.dtype.is_floating:
        boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, boxes.dtype)
    classes = tf.convert_to_tensor(classes)
    if not classes.dtype.is_integer:
        raise ValueError(f"classes must be an integer tensor, got {classes.dtype}.")
    classes = tf.cast(classes, tf.int32)
    lead = 2 if batched else 1
    name = "[B, N, 4]" if batched else "[N, 4]"
    for t, rank, what in (
        (boxes, lead + 1, f"boxes {name}"),
        (scores, lead, "scores"),
        (classes, lead, "classes"),
    ):
        if t.shape.rank is not None and t.shape.rank != rank:
            raise ValueError(f"{what} must have rank {rank}, got shape {t.shape}.")
    if boxes.shape.rank is not None and boxes.shape[-1] not in (None, 4):
        raise ValueError(f"boxes must have a last dimension of 4, got shape {boxes.shape}.")
    checks = [
        tf.debugging.assert_equal(
            tf.shape(boxes)[:lead],
            tf.shape(scores),
            message="greedy_merge: boxes and scores disagree on the number of boxes.",
        ),
        tf.debugging.assert_equal(
            tf.shape(boxes)[:lead],
            tf.shape(classes),
            message="greedy_merge: boxes and classes disagree on the number of boxes.",
        ),
        tf.debugging.assert_all_finite(boxes, "greedy_merge: boxes must be finite."),
        tf.debugging.assert_all_finite(scores, "greedy_merge: scores must be finite."),
    ]
    return boxes, scores, classes, checks


def _check_params(threshold: float | tf.Tensor, max_output: int) -> None:
    if isinstance(threshold, int | float) and not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}.")
    if not isinstance(max_output, int | np.integer) or max_output < 1:
        raise ValueError(f"max_output must be a positive int, got {max_output!r}.")


def greedy_merge(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: float | tf.Tensor = MERGE_THRESHOLD,
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> MergeResult:
    """Greedy merge of one image's boxes (paper §4.3), in core TF ops (graph- and GPU-safe).

    See the module docstring for `match_score`, the algorithm and tie order. Works inside
    `tf.function` with an unknown number of boxes and in SavedModels (no py_function).

    Args:
        boxes: [N, 4] yxyx boxes (pixels or normalized; float32 or float64, which sets the
            computation dtype). Must be finite.
        scores: [N] confidence of each box (e.g. the class softmax of its window).
        classes: [N] integer class of each box; boxes of different classes never merge.
        threshold: merge while the lowest match_score is <= threshold.
        max_output: size of the padded output (Python int >= 1); the highest-scoring merged
            boxes are kept.

    Returns:
        `MergeResult` (padded to `max_output` rows, `num_merged` valid).
    """
    _check_params(threshold, max_output)
    boxes, scores, classes, checks = _check_inputs(boxes, scores, classes, batched=False)
    threshold = tf.cast(threshold, boxes.dtype)
    checks.append(tf.debugging.assert_all_finite(threshold, "greedy_merge: bad threshold."))
    with tf.control_dependencies(checks):
        boxes = tf.identity(boxes)
    return MergeResult(*_greedy_merge_graph(boxes, scores, classes, threshold, max_output))


@tf.function(reduce_retracing=True)
def _greedy_merge_graph(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: tf.Tensor,
    max_output: int,
) -> tuple[tf.Tensor, ...]:
    """`greedy_merge` on checked inputs, always as a graph (eager while loops are slow)."""
    dtype = boxes.dtype
    threshold = tf.cast(threshold, dtype)
    n = tf.shape(boxes, out_type=tf.int32)[0]

    # Group the boxes by class; a stable sort keeps input order within a class, so lane slot
    # order == input order and the merge's tie order is the input order.
    order = tf.argsort(classes, stable=True)  # [N]
    sorted_classes = tf.gather(classes, order)
    is_start = tf.concat(
        [tf.ones([tf.minimum(n, 1)], tf.bool), sorted_classes[1:] != sorted_classes[:-1]], 0
    )
    starts = tf.cast(tf.reshape(tf.where(is_start), [-1]), tf.int32)  # [U] class blocks
    sizes = tf.concat([starts[1:], tf.reshape(n, [1])], axis=0) - starts  # [U]
    # Classes in groups of up to _LANES lanes, largest first, so a group's padding is small.
    by_size = tf.argsort(-sizes, stable=True)
    starts, sizes = tf.gather(starts, by_size), tf.gather(sizes, by_size)
    num_classes = tf.shape(starts)[0]
    num_groups = (num_classes + _LANES - 1) // _LANES

    def spec(d, shape):
        return tf.TensorArray(d, size=num_groups, infer_shape=False, element_shape=shape)

    arrays = (
        spec(dtype, [None, 4]),
        spec(dtype, [None]),
        spec(tf.int32, [None]),
        spec(tf.int32, [None]),
        spec(tf.int32, [None]),
    )

    def body(g, out_boxes, out_scores, out_counts, out_keys, out_classes):
        first = g * _LANES
        group_starts = starts[first : first + _LANES]  # [L]
        group_sizes = sizes[first : first + _LANES]  # [L], descending
        slots = tf.range(group_sizes[0])  # [n] (n = the largest class of the group)
        valid = slots < group_sizes[:, tf.newaxis]  # [L, n]
        members = tf.gather(order, tf.minimum(group_starts[:, tf.newaxis] + slots, n - 1))
        members = tf.where(valid, members, 0)  # [L, n] input index of each slot
        active, merged, conf, counts = _merge_lanes(
            tf.gather(boxes, members), tf.gather(scores, members), valid, threshold
        )
        keep = tf.where(active)  # [K, 2] (lane, slot)
        keys = tf.gather_nd(members, keep)
        return (
            g + 1,
            out_boxes.write(g, tf.gather_nd(merged, keep)),
            out_scores.write(g, tf.gather_nd(conf, keep)),
            out_counts.write(g, tf.gather_nd(counts, keep)),
            out_keys.write(g, keys),
            out_classes.write(g, tf.gather(classes, keys)),
        )

    _, *arrays = tf.while_loop(
        lambda g, *_: g < num_groups, body, (tf.constant(0, tf.int32), *arrays)
    )
    empty = (tf.zeros([0, 4], dtype), tf.zeros([0], dtype), *[tf.zeros([0], tf.int32)] * 3)
    all_boxes, all_scores, all_counts, all_keys, all_classes = tf.cond(
        num_groups > 0, lambda: tuple(a.concat() for a in arrays), lambda: empty
    )
    # Sort by key (smallest member index), then by score descending; top_k keeps the lower
    # index first among equal scores, so ties come out by key.
    by_key = tf.argsort(all_keys, stable=True)
    all_scores = tf.gather(all_scores, by_key)
    num_merged = tf.minimum(tf.shape(all_scores)[0], max_output)
    top = tf.math.top_k(all_scores, k=num_merged, sorted=True).indices
    pick = tf.gather(by_key, top)  # [num_merged]
    pad = max_output - num_merged

    def take(x, rank2=False):
        x = tf.gather(x, pick)
        paddings = [[0, pad], [0, 0]] if rank2 else [[0, pad]]
        return tf.pad(x, paddings)

    return (
        tf.ensure_shape(take(all_boxes, rank2=True), [max_output, 4]),
        tf.ensure_shape(tf.pad(tf.gather(all_scores, top), [[0, pad]]), [max_output]),
        tf.ensure_shape(take(all_classes), [max_output]),
        tf.ensure_shape(take(all_counts), [max_output]),
        num_merged,
    )


def batched_greedy_merge(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    num_valid: tf.Tensor,
    threshold: float | tf.Tensor = MERGE_THRESHOLD,
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> MergeResult:
    """`greedy_merge` over a batch of images whose box sets are padded to a common N.

    Args:
        boxes: [B, N, 4] yxyx. scores: [B, N]. classes: [B, N] integer.
        num_valid: [B] int, number of valid boxes of each image (the first ones).
        threshold, max_output: as in `greedy_merge`.

    Returns:
        `MergeResult` with a leading [B] dim on every field (`num_merged` is [B]).
    """
    _check_params(threshold, max_output)
    boxes, scores, classes, checks = _check_inputs(boxes, scores, classes, batched=True)
    num_valid = tf.cast(num_valid, tf.int32)
    checks.append(
        tf.debugging.assert_less_equal(
            num_valid,
            tf.shape(boxes, out_type=tf.int32)[1],
            message="batched_greedy_merge: num_valid exceeds the padded number of boxes.",
        )
    )
    with tf.control_dependencies(checks):
        boxes = tf.identity(boxes)
    dtype = boxes.dtype

    def one(args):
        b, s, c, k = args
        return tuple(greedy_merge(b[:k], s[:k], c[:k], threshold, max_output))

    signature = (
        tf.TensorSpec([max_output, 4], dtype),
        tf.TensorSpec([max_output], dtype),
        tf.TensorSpec([max_output], tf.int32),
        tf.TensorSpec([max_output], tf.int32),
        tf.TensorSpec([], tf.int32),
    )
    out = tf.map_fn(one, (boxes, scores, classes, num_valid), fn_output_signature=signature)
    return MergeResult(*out)


# --- NumPy reference -------------------------------------------------------------------------
def match_score_numpy(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """NumPy `match_score` of yxyx boxes (float64), element-wise with broadcasting."""
    a = np.asarray(boxes1, np.float64)
    b = np.asarray(boxes2, np.float64)
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    inter_h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_h * inter_w
    union = area_a + area_b - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    centre_a = np.stack([a[..., 0] + a[..., 2], a[..., 1] + a[..., 3]], -1) / 2
    centre_b = np.stack([b[..., 0] + b[..., 2], b[..., 1] + b[..., 3]], -1) / 2
    distance = np.linalg.norm(centre_a - centre_b, axis=-1)
    # Same area floor as the TF version (1e-12), written out to keep the reference independent.
    return distance / np.sqrt(np.maximum(np.minimum(area_a, area_b), 1e-12)) + 1 - iou


def greedy_merge_numpy(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    threshold: float = MERGE_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Plain reference of the paper's greedy merge (float64, O(n^3) per class; for tests).

    Args:
        boxes: [N, 4] yxyx. scores: [N]. classes: [N] integer.
        threshold: merge while the lowest match_score is <= threshold.

    Returns:
        (boxes [K, 4], scores [K], classes [K], num_members [K]) of all K merged boxes, sorted
        by accumulated score descending, ties by smallest member index.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError("boxes, scores and classes must hold the same number of boxes.")
    results = []  # (score, key, box, class, count)
    for c in np.unique(classes):
        # Each cluster is the list of its members' input indices; clusters stay sorted by
        # their key (smallest member), since a merged cluster keeps the smaller key.
        clusters = [[k] for k in np.flatnonzero(classes == c)]
        while len(clusters) >= 2:
            means = np.array([boxes[m].mean(axis=0) for m in clusters])  # [m, 4]
            pair = match_score_numpy(means[:, None, :], means[None, :, :])  # [m, m]
            pair[np.tril_indices(len(clusters))] = np.inf  # keep pairs p < q
            flat = int(np.argmin(pair))  # first in row-major order = lexicographic (p, q)
            p, q = divmod(flat, len(clusters))
            if pair[p, q] > threshold:
                break
            clusters[p] = clusters[p] + clusters[q]
            del clusters[q]
        for m in clusters:
            results.append((scores[m].sum(), min(m), boxes[m].mean(axis=0), c, len(m)))
    results.sort(key=lambda r: (-r[0], r[1]))
    if not results:
        return (np.zeros((0, 4)), np.zeros(0), np.zeros(0, classes.dtype), np.zeros(0, int))
    return (
        np.array([r[2] for r in results]),
        np.array([r[0] for r in results]),
        np.array([r[3] for r in results]),
        np.array([r[4] for r in results]),
    )

"""Mutual-best-match box merging: the paper's merge rules (§4.3) in few sequential rounds.

`overfeat_tf.merge.mutual_merge` runs `mutual_merge_graph` on checked inputs. Same rules as
the sequential greedy merge (`overfeat_tf.merge_greedy`): boxes of different classes never
merge, a cluster's box is the mean of its members' boxes (the count-weighted average of two
merged clusters; yxyx, the units of the input), its score the sum of its members' scores,
and clusters are compared by `match_score` of their boxes. What differs is the order of the
merges: many at once per round instead of one per loop step.

Algorithm (per class; a cluster's key is its smallest member's input index):

    clusters = the boxes, where boxes with identical coordinates form one cluster
    repeat (a round):
        for every cluster p: best(p) = the other cluster q of p's class with the lowest
            match_score(p, q), the smallest key among equal scores (as
            `merge_score.first_argmin`); low(p) = that score (inf if p is alone)
        every pair p, q with best(p) = q, best(q) = p and low(p) <= t merges (all such
            pairs at once: they are disjoint); the merged cluster keeps the smaller key
    until a round merges nothing

- Termination: the lowest-scoring pair of a class (smallest keys on ties) is always a mutual
  pair, so a round merges at least one pair while some pair of a class scores <= t; at the
  end no pair scores <= t. The greedy merge would merge that same pair first; the other
  pairs of a round are disjoint mutual best matches, which the greedy merge also merges
  unless a merge before them makes another cluster a better match for one of them. On
  detector-like sets the two agree closely (tests/test_merge_mutual.py).
- Identical boxes start as one cluster: they score 0 (the lowest score, merged first in any
  order), and in rounds k copies would take k - 1 rounds (on ties every copy's best partner
  is the same first copy). Boxes clipped to the image border are often exact copies.
- Output order: accumulated score descending, ties by key ascending (the cluster holding the
  earliest input box first), as the greedy merge.

Rounds (dependent loop iterations): each round is one iteration of a `tf.while_loop`, the
next round needing this round's clusters; all classes run in the same rounds, so an image
takes as many rounds as its slowest class. `rounds` (returned on request) counts the rounds
that merged something; the loop runs `rounds + 1` iterations (the last one finds nothing to
merge), or `rounds` if fewer than 2 clusters are left. Worst case: n - 1 rounds for a class
of n boxes (a cluster that is the best partner of many absorbs one per round); measured on
detector-like sets (dense windows: hundreds of jittered boxes per object, false positives),
30-40 rounds for 3150-4000 boxes and 38 for 15750, ~50 for 4000 boxes of one object larger
than the image (clipped), growing ~4 rounds per doubling of n.

A round, vectorized over all clusters (core TF ops): the clusters are kept sorted by (class,
key) and packed (the merged-away ones dropped at the end of every round, so later rounds
score fewer clusters). Best partners come from blocks of rows: from position s, the whole
classes that fit in r rows, or r rows of one class; a block is scored against the window
from s to the class end of its last row, masked to (row k, column l) with k < l of the same
class. Its row minima give each row its best LATER partner, its column minima (accumulated
over the blocks in row order, the first row kept on ties) each column its best EARLIER one,
and best(p) is the better of the two (the earlier on ties: smaller key). So each pair is
scored once per round, in blocks of at most `_BLOCK_SCORES` scores (memory O(n +
_BLOCK_SCORES), never n x n), about sum over classes of m_c^2 / 2 scores a round for m_c
clusters of class c, plus r^2 / 2 per block below its diagonal.

Two ways to run a block, same arithmetic (results bitwise equal in the tests):
- plain TF (`xla=False`; SavedModels, TF Serving): exact windows, each op a kernel.
- XLA (`xla=True`): each block is one XLA-compiled kernel of static shape: `_ROWS` rows, a
  window rounded up to a power of two >= `_MIN_WIDTH` (one compile per width met, at most
  ~10, once per process and dtype; ~1.5x the scores of plain TF, fused).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from overfeat_tf.merge_lanes import _rank
from overfeat_tf.merge_score import derive, pair_scores

__all__ = ["mutual_merge_graph"]

# Scores per block of a round's best-partner search: memory O(_BLOCK_SCORES) (about 30
# temporaries per score without XLA: ~60 MB in float32), not O(n^2).
_BLOCK_SCORES = 1 << 19

# Rows per block (at most): each block also scores the r^2 / 2 pairs below its diagonal for
# nothing, and costs ~50 ops whatever its size. Under XLA a block is one fused kernel of
# static shape: _ROWS rows, a window of a power of two >= _MIN_WIDTH columns (so few shapes
# compile: one per width met, <= 10).
_ROWS = 256
_MIN_WIDTH = 64


def _score_block(
    rows: tf.Tensor, cols: tf.Tensor, row_index: tf.Tensor, col_index: tf.Tensor, row_end: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Best later / earlier partners within one block of a round.

    Args:
        rows: [7, r] `derive`d cluster boxes of the block's rows. cols: [7, w] those of the
            window's columns. row_index [r], col_index [w]: their positions (int32).
        row_end: [r] int32, one past the last position of each row's class (the row's
            position + 1 on padding rows: no partner).

    Returns:
        row_low, row_arg [r]: per row k, the lowest score against a column l > k of its
        class and the first such l; col_low, col_arg [w]: per column l, the lowest score
        against a row k < l of its class and the first such k (inf if none; the arg is
        then meaningless).
    """
    scores = pair_scores(
        tuple(x[:, tf.newaxis] for x in tf.unstack(rows, 7)),
        tuple(x[tf.newaxis, :] for x in tf.unstack(cols, 7)),
    )  # [r, w]
    # Column l is a later one of row k's class iff k < l < end(k), i.e. (as unsigned ints)
    # l - k - 1 < end(k) - k - 1: two broadcasting ops.
    offset = tf.bitcast(col_index[tf.newaxis, :] - row_index[:, tf.newaxis] - 1, tf.uint32)
    later = tf.less(offset, tf.bitcast(row_end - row_index - 1, tf.uint32)[:, tf.newaxis])
    v = tf.where(later, scores, tf.constant(np.inf, rows.dtype))
    big = tf.constant(np.iinfo(np.int32).max, tf.int32)
    row_low = tf.reduce_min(v, axis=1)
    at_row_low = tf.equal(v, row_low[:, tf.newaxis])
    row_arg = tf.reduce_min(tf.where(at_row_low, col_index[tf.newaxis, :], big), axis=1)
    col_low = tf.reduce_min(v, axis=0)
    at_col_low = tf.equal(v, col_low[tf.newaxis, :])
    col_arg = tf.reduce_min(tf.where(at_col_low, row_index[:, tf.newaxis], big), axis=0)
    return row_low, row_arg, col_low, col_arg


_xla_score_block = tf.function(
    _score_block, jit_compile=True, reduce_retracing=True, autograph=False
)


def _next_power_of_two(x: tf.Tensor) -> tf.Tensor:
    """The smallest power of two >= x (x >= 1, int32)."""
    x = x - 1
    for shift in (1, 2, 4, 8, 16):
        x = tf.bitwise.bitwise_or(x, tf.bitwise.right_shift(x, shift))
    return x + 1


def _block_shape(m: tf.Tensor, widest: tf.Tensor, xla: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """(rows r, the widest window w) of the blocks for m clusters whose largest class has
    `widest`. A block of r rows needs a window of at most r + widest - 1 columns (every
    later cluster of its rows' classes).

    Plain TF: the largest r <= _ROWS with r * (r + widest) <= _BLOCK_SCORES (at most m).
    XLA: r = _ROWS, so that a block's shape depends on its window only.
    """
    if xla:
        return tf.constant(_ROWS), _window(_ROWS + widest, xla)
    c = tf.cast(widest, tf.float64)
    r = tf.cast(tf.sqrt(_BLOCK_SCORES + c * c / 4) - c / 2, tf.int32)
    r = tf.clip_by_value(r, 1, tf.minimum(tf.maximum(m, 1), _ROWS))
    return r, r + widest


def _window(width: tf.Tensor, xla: bool) -> tf.Tensor:
    """The window scored for `width` needed columns: exact, or under XLA the next power of
    two >= max(width, _MIN_WIDTH) (static shapes, few of them)."""
    return _next_power_of_two(tf.maximum(width, _MIN_WIDTH)) if xla else width


def _best_partners(
    derived: tf.Tensor, class_end: tf.Tensor, widest: tf.Tensor, xla: bool
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Every cluster's best partner among the clusters of its class (see the module doc).

    Blocks: from position s, the whole classes that fit in r rows, or r rows of one class if
    its remaining clusters do not fit; the window runs from s to the class end of the
    block's last row (rows of a small class only score the few columns of the small
    classes after it in the block, never those of a large class).

    Args:
        derived: [7, m] `derive`d boxes of the clusters, sorted by (class, key).
        class_end: [m] int32, one past the last position of each cluster's class.
        widest: [] int32, the size of the largest class. xla: XLA-compiled blocks.

    Returns:
        low [m] (inf if alone in its class), arg [m] int32 (the first position attaining
        low; meaningless if inf) and the number of blocks scored [] int32.
    """
    dtype = derived.dtype
    m = tf.shape(class_end, out_type=tf.int32)[0]
    r, w = _block_shape(m, widest, xla)
    total = m + r + w
    derived = tf.pad(derived, [[0, 0], [0, total - m]])
    # Rows outside the block (padding included) get end = position + 1: no later column.
    class_end_p = tf.concat([class_end, tf.range(m, total) + 1], 0)
    score_block = _xla_score_block if xla else _score_block
    inf = tf.fill([total], tf.constant(np.inf, dtype))

    def body(s, blocks, row_low, row_arg, col_low, col_arg):
        # Positions whose class ends by s + r: a prefix, ending at a class end.
        fits = tf.searchsorted(class_end, tf.reshape(s + r, [1]), side="right")[0]
        e = tf.where(fits > s, fits, tf.minimum(s + r, m))  # the block's rows: [s, e)
        width = _window(class_end[e - 1] - s, xla)
        rows = s + tf.range(r)
        window = s + tf.range(width)
        row_end = tf.where(rows < e, tf.slice(class_end_p, [s], [r]), rows + 1)
        low_r, arg_r, low_c, arg_c = score_block(
            tf.slice(derived, tf.stack([0, s]), tf.stack([7, r])),
            tf.slice(derived, tf.stack([0, s]), tf.stack([7, width])),
            rows,
            window,
            row_end,
        )
        # Rows [e, s + r) are written inf here and rewritten by their own block later.
        # Earlier blocks hold smaller rows: keep their column entry on ties (first row).
        old_low, old_arg = tf.slice(col_low, [s], [width]), tf.slice(col_arg, [s], [width])
        better = low_c < old_low
        at = window[:, tf.newaxis]
        return (
            e,
            blocks + 1,
            tf.tensor_scatter_nd_update(row_low, rows[:, tf.newaxis], low_r),
            tf.tensor_scatter_nd_update(row_arg, rows[:, tf.newaxis], arg_r),
            tf.tensor_scatter_nd_update(col_low, at, tf.where(better, low_c, old_low)),
            tf.tensor_scatter_nd_update(col_arg, at, tf.where(better, arg_c, old_arg)),
        )

    zeros = tf.zeros([total], tf.int32)
    _, blocks, row_low, row_arg, col_low, col_arg = tf.while_loop(
        lambda s, *_: s < m,
        body,
        (tf.constant(0, tf.int32), tf.constant(0, tf.int32), inf, zeros, inf, zeros),
    )
    row_low, row_arg, col_low, col_arg = (x[:m] for x in (row_low, row_arg, col_low, col_arg))
    earlier = col_low <= row_low  # an earlier partner has the smaller position: first on ties
    return tf.where(earlier, col_low, row_low), tf.where(earlier, col_arg, row_arg), blocks


def _class_ranges(cls: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """class_end [m] (one past the last position of each cluster's class) and the size of
    the largest class [], for clusters sorted by class (cls [m] int32)."""
    m = tf.shape(cls, out_type=tf.int32)[0]
    is_end = tf.concat([cls[1:] != cls[:-1], tf.ones([tf.minimum(m, 1)], tf.bool)], 0)
    ends = tf.cast(tf.reshape(tf.where(is_end), [-1]), tf.int32) + 1  # [U]
    sizes = ends - tf.concat([[0], ends[:-1]], 0)
    block = tf.cumsum(tf.cast(is_end, tf.int32), exclusive=True)  # class block of each
    return tf.gather(ends, block), tf.reduce_max(tf.concat([sizes, [0]], 0))


def _round(
    sums: tf.Tensor, key: tf.Tensor, cls: tf.Tensor, threshold: tf.Tensor, xla: bool
) -> tuple[tf.Tensor, ...]:
    """One round: every mutual best pair at <= threshold merges (see the module docstring).

    Args:
        sums: [m, 6] per cluster the sums of its members' y0, x0, y1, x1, the member count
            and the score sum. key, cls: [m] int32 smallest member's input index, class;
            sorted by (class, key). threshold: []. xla: XLA-compiled blocks.

    Returns:
        (sums, key, cls) of the clusters after the round (same order), the number of pairs
        merged [] and of blocks scored [].
    """
    means = tf.math.divide_no_nan(sums[:, :4], sums[:, 4:5])
    class_end, widest = _class_ranges(cls)
    derived = tf.stack(derive(*tf.unstack(means, 4, axis=1)))
    low, arg, blocks = _best_partners(derived, class_end, widest, xla)
    m = tf.shape(key, out_type=tf.int32)[0]
    position = tf.range(m)
    partner = tf.minimum(arg, m - 1)
    mutual = tf.logical_and(low <= threshold, tf.equal(tf.gather(arg, partner), position))
    absorbs = tf.logical_and(mutual, arg > position)  # p of a pair p < q
    stays = tf.logical_not(tf.logical_and(mutual, arg < position))  # not a q
    sums = sums + tf.where(absorbs[:, tf.newaxis], tf.gather(sums, partner), tf.zeros_like(sums))
    merged = tf.reduce_sum(tf.cast(absorbs, tf.int32))
    return (
        tf.boolean_mask(sums, stays),
        tf.boolean_mask(key, stays),
        tf.boolean_mask(cls, stays),
        merged,
        blocks,
    )


def _initial_clusters(
    boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The clusters before the first round: the boxes of a class with identical coordinates
    form one cluster (they score 0, the lowest score, and any merge order gives the same
    cluster; merged in rounds, k copies would take k - 1 rounds, since on ties every copy's
    best partner is the same first one). boxes [N, 4], scores [N], classes [N] int32.

    Returns:
        sums [K, 6] (sums of the members' y0, x0, y1, x1, count, score sum), key [K] int32
        (smallest member's input index) and cls [K] int32, sorted by (class, key).
    """
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
    group = tf.cumsum(tf.cast(is_first, tf.int32)) - 1  # [N] group of each sorted box
    count = tf.math.segment_sum(tf.ones([n], boxes.dtype), group)  # [K]
    score = tf.math.segment_sum(tf.gather(scores, order), group)
    box = tf.boolean_mask(sorted_boxes, is_first)
    key = tf.boolean_mask(order, is_first)  # the first of a group has the smallest index
    cls = tf.boolean_mask(sorted_classes, is_first)
    by_key = tf.argsort(key, stable=True)
    by_class_key = tf.gather(by_key, tf.argsort(tf.gather(cls, by_key), stable=True))
    sums = tf.concat([box * count[:, None], count[:, None], score[:, None]], axis=1)
    return tf.gather(sums, by_class_key), tf.gather(key, by_class_key), tf.gather(cls, by_class_key)


@tf.function(reduce_retracing=True, autograph=False)
def mutual_merge_graph(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: tf.Tensor,
    max_output: int,
    xla: bool,
) -> tuple[tf.Tensor, ...]:
    """`overfeat_tf.merge.mutual_merge` on checked inputs, always as a graph.

    Args:
        boxes: [N, 4] yxyx (any units), finite, float (the computation dtype). scores: [N],
            same dtype. classes: [N] int32. threshold: []. max_output: Python int >= 1.
        xla: XLA-compiled blocks (see the module docstring); same results.

    Returns:
        The `MergeResult` fields (boxes [max_output, 4], scores, classes, num_members
        [max_output], num_merged []), then rounds [] int32 (rounds in which a pair merged)
        and block_steps [] int32 (blocks scored over all rounds, for benchmarks).
    """
    threshold = tf.cast(threshold, boxes.dtype)
    sums, key, cls = _initial_clusters(boxes, scores, classes)

    def cond(sums, key, cls, merged, rounds, steps):
        return tf.logical_and(merged > 0, tf.shape(key)[0] >= 2)

    def body(sums, key, cls, merged, rounds, steps):
        sums, key, cls, merged, blocks = _round(sums, key, cls, threshold, xla)
        return sums, key, cls, merged, rounds + tf.minimum(merged, 1), steps + blocks

    zero = tf.constant(0, tf.int32)
    sums, key, cls, _, rounds, steps = tf.while_loop(
        cond,
        body,
        (sums, key, cls, tf.constant(1, tf.int32), zero, zero),
        shape_invariants=(
            tf.TensorShape([None, 6]),
            tf.TensorShape([None]),
            tf.TensorShape([None]),
            *[tf.TensorShape([])] * 3,
        ),
    )
    clusters = (
        tf.math.divide_no_nan(sums[:, :4], sums[:, 4:5]),
        sums[:, 5],
        tf.cast(sums[:, 4], tf.int32),
        key,
        cls,
    )
    return (*_rank(clusters, max_output), rounds, steps)

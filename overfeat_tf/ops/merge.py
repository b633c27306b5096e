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

Cost: only pairs scoring <= t matter. A pair scoring > t never merges, and a cluster whose
best partner scores > t merges with nobody, so each round's merges are those of the best
partners among the pairs scoring <= t (the "edges"; none: no partner). Same merges, same
rounds, bitwise the same outputs as scoring every pair of a class, at a fraction of the cost:

- Layout: the clusters sit in slots, per class, in Z-order of their centres (nearby clusters
  in nearby slots), each class padded to a multiple of `TILE` = 16 slots; a tile is 16
  consecutive slots. Slots never move: a cluster merged away leaves its slot dead.
- Blocks: a block scores the 16 x 16 pairs of two tiles of one class, and is skipped when the
  tiles' centres are too far apart for any of its pairs to score <= t: a pair scoring <= t
  has |cy1 - cy2| and |cx1 - cx2| <= t sqrt(max(min(A1, A2), 1e-12)) (from the score's
  centre term; with margins for float rounding, `_reach_scale`). Before the first round
  every pair of near tiles of a class is scored once; after a round, only the merged
  clusters (in tiles of their own) against the near tiles of their class, and the edges
  between clusters that did not merge are kept.
- Best partners: the segment minimum of each cluster's edges (ties: the smallest key).

So a round costs about the pairs of near tiles involving a merged cluster plus the edges kept,
never the m^2 pairs of all classes, in a fixed number of ops (kernels on a GPU) whatever m and
the number of classes: no loop over classes or tiles. Memory: the blocks' scores (4 bytes per
pair) and the edges; blocks of more than `BLOCK_SCORES` = 2^24 scores in all are scored in
groups, an inner loop (never with the detector's 4000-box budget).

Dependent loop iterations (`return_iterations=True`): one per round, including the last one
that merges nothing, plus one per group of blocks of a multi-group scoring. 4000 clustered
detector boxes take about 30-40.

`jit_compile=True` scores the blocks with an XLA-compiled kernel on padded shapes (the number
of blocks padded to a power of two >= 128; one compile per size met, once per process and
dtype); the rest stays plain TF. Same results as `jit_compile=False`, which uses core TF ops
only and is what exports must use (TF Serving may run without the XLA JIT).
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

# Scores of the blocks scored at once (a group); more: a loop over groups of blocks.
BLOCK_SCORES = 1 << 24

_MIN_AREA = 1e-12  # floor on min(A1, A2) in match_score: finite scores for zero-area boxes
_MIN_PADDED = 128  # smallest padded size of an XLA block
_SLACK = 2.0**-10  # relative margin of `_reach_scale` over float rounding

# Slots per tile: a block scores the TILE x TILE pairs of two tiles of one class.
TILE = 16


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


def _reach_scale(threshold: tf.Tensor) -> tf.Tensor:
    """c(t) such that a pair scoring <= t has |dy| and |dx| (twice its centre offsets, as
    `_pair_scores` computes them) <= c(t) sqrt(max(min(A_a, A_b), 1e-12)).

    Why: score = sqrt(d2 / a) / 2 - IoU + 1 with a = max(min(A_a, A_b), 1e-12) and IoU <= 1,
    so score <= t gives sqrt(d2 / a) <= 2 t, and |dy|, |dx| <= sqrt(d2) <= 2 t sqrt(a). The
    factors 1 + 2^-10 and the 2^-10 added to max(t, 0) cover the float rounding of every
    step (relative 2^-24 in float32), so the bound holds for the computed scores, any t."""
    t = tf.maximum(threshold, tf.zeros_like(threshold))
    return 2.0 * (t * (1.0 + _SLACK) + _SLACK) * (1.0 + _SLACK)


def _spatial_keys(cy: tf.Tensor, cx: tf.Tensor) -> tf.Tensor:
    """int64 [k] Z-order (Morton) codes of centres quantized to 16 bits per axis over their
    extent: nearby centres get nearby codes. Only the tiles' shapes depend on them (the
    speed), not the results."""
    codes = []
    for v in (cy, cx):
        v = tf.where(tf.math.is_finite(v), v, tf.zeros_like(v))
        low = tf.reduce_min(tf.concat([v, [0]], 0))
        extent = tf.maximum(tf.reduce_max(tf.concat([v, [0]], 0)) - low, 1e-30)
        q = tf.cast(tf.clip_by_value((v - low) / extent * 65535.0, 0.0, 65535.0), tf.int64)
        for shift, mask in ((8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
            q = tf.bitwise.bitwise_or(q, tf.bitwise.left_shift(q, shift))
            q = tf.bitwise.bitwise_and(q, mask)
        codes.append(q)
    return tf.bitwise.bitwise_or(tf.bitwise.left_shift(codes[0], 1), codes[1])


def _terms(boxes: tf.Tensor) -> tf.Tensor:
    """`_derive` stacked: [..., 4] -> [..., 7] (y0, x0, y1, x1, y0 + y1, x0 + x1, area)."""
    return tf.stack(_derive(boxes), -1)


def _block_scores(rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """match_score of every row box against every column box of each block, from their
    `_terms`: rows [P, T, 7], cols [P, T, 7] -> [P, T, T]."""
    a = tf.unstack(tf.expand_dims(rows, 2), 7, axis=-1)  # 7 x [P, T, 1]
    b = tf.unstack(tf.expand_dims(cols, 1), 7, axis=-1)  # 7 x [P, 1, T]
    return _pair_scores(a, b)


_block_scores_xla = tf.function(
    _block_scores, jit_compile=True, reduce_retracing=True, autograph=False
)


def _padded(x: tf.Tensor) -> tf.Tensor:
    """`x` padded along axis 0 with zeros to the smallest power of two >= 128."""
    n = tf.shape(x, out_type=tf.int32)[0]
    size = tf.maximum(n, _MIN_PADDED) - 1
    for shift in (1, 2, 4, 8, 16):
        size = tf.bitwise.bitwise_or(size, tf.bitwise.right_shift(size, shift))
    return tf.pad(x, [[0, size + 1 - n]] + [[0, 0]] * (x.shape.rank - 1))


class _Layout(NamedTuple):
    """Where the clusters live: slot s, in tile s // TILE (`_slots`).

    Attributes:
        key: [S] int32 each slot's key (its cluster's smallest input index; padding: -1).
        cls: [S] int32 each slot's class.
        tile_group: [S / TILE] int32 the class group of each tile.
        slot_of_key: [N] int32 the slot of each key (N input boxes; -1 if not a key).
    """

    key: tf.Tensor
    cls: tf.Tensor
    tile_group: tf.Tensor
    slot_of_key: tf.Tensor


def _slots(sums, key, cls, group, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, _Layout]:
    """The initial clusters (`_initial_clusters`) laid out in slots: per class, in Z-order of
    their centres (`_spatial_keys`), the class padded to a multiple of TILE slots. Slots
    never move; a cluster merged away leaves its slot dead.

    Returns sums [S, 6] (padding: zeros), alive [S] bool, the `_Layout`."""
    k = tf.size(key)
    _, _, _, _, cy, cx, _ = _derive(_means(sums))
    order = tf.argsort(
        tf.bitwise.left_shift(tf.cast(group, tf.int64), 32) + _spatial_keys(cy, cx), stable=True
    )
    group = tf.gather(group, order)
    count = tf.math.segment_sum(tf.ones([k], tf.int32), group)  # [G] clusters per class
    padded = (count + TILE - 1) // TILE * TILE
    slot = tf.gather(tf.cumsum(padded, exclusive=True) - tf.cumsum(count, exclusive=True), group)
    slot = (slot + tf.range(k))[:, tf.newaxis]
    size = tf.reshape(tf.reduce_sum(padded), [1])
    key, cls = tf.gather(key, order), tf.gather(cls, order)
    layout = _Layout(
        key=tf.tensor_scatter_nd_update(tf.fill(size, -1), slot, key),
        cls=tf.tensor_scatter_nd_update(tf.zeros(size, tf.int32), slot, cls),
        tile_group=tf.repeat(tf.range(tf.size(count)), padded // TILE),
        slot_of_key=tf.tensor_scatter_nd_update(
            tf.fill(tf.reshape(n, [1]), -1), key[:, tf.newaxis], slot[:, 0]
        ),
    )
    sums = tf.scatter_nd(slot, tf.gather(sums, order), tf.concat([size, [6]], 0))
    alive = tf.scatter_nd(slot, tf.ones([k], tf.bool), size)
    return sums, alive, layout


def _summaries(terms: tf.Tensor, live: tf.Tensor, scale: tf.Tensor) -> tuple:
    """Of tiles of boxes (`_terms` [N, T, 7], live [N, T] bool): the extent of the live
    boxes' centres, low [N, 2] and high [N, 2] (y, x, twice the centres; inf and -inf if
    none), and their reach [N]: `_reach_scale` x the largest sqrt(max(area, 1e-12)) (0 if
    none), at least c(t) sqrt(max(A, 1e-12)) of each live box (monotone rounding)."""
    inf = tf.constant(np.inf, terms.dtype)
    centres, live_2 = terms[:, :, 4:6], live[:, :, tf.newaxis]
    low = tf.reduce_min(tf.where(live_2, centres, inf), 1)
    high = tf.reduce_max(tf.where(live_2, centres, -inf), 1)
    root = tf.sqrt(tf.maximum(terms[:, :, 6], tf.cast(_MIN_AREA, terms.dtype)))
    return low, high, scale * tf.reduce_max(tf.where(live, root, tf.zeros_like(root)), 1)


def _near(a: tuple, b: tuple) -> tf.Tensor:
    """[Na, Nb] bool: whether tiles a (`_summaries`) may hold a pair scoring <= t with tiles
    b: their centres' extents are not farther apart in y or in x than the smaller reach. A
    pair (p, q) scoring <= t has |dy|, |dx| <= c(t) sqrt(max(min(A_p, A_q), 1e-12))
    (`_reach_scale`), at most the smaller reach, and the gap between the extents is at most
    |dy| (|dx|): float subtraction is monotone."""
    (low_a, high_a, reach_a), (low_b, high_b, reach_b) = a, b
    gap = tf.maximum(low_a[:, tf.newaxis] - high_b, low_b - high_a[:, tf.newaxis])
    reach = tf.minimum(reach_a[:, tf.newaxis], reach_b)[:, :, tf.newaxis]
    return tf.reduce_all(gap <= reach, 2)


def _block_edges(
    rows: tuple[tf.Tensor, ...],
    cols: tuple[tf.Tensor, ...],
    pairs: tf.Tensor,
    threshold: tf.Tensor,
    diagonal: bool,
    xla: bool,
) -> tuple[tf.Tensor, ...]:
    """The pairs scoring <= threshold of the blocks `pairs` [P, 2] (row tile, column tile).

    rows, cols: (terms [N, T, 7] (`_terms`), slots [N, T] int32, codes [N, T] int32) of the
    row and column tiles; a pair (r, c) of a block counts if code_r < code_c (what leaves
    out padding, self pairs and pairs counted in another block). `diagonal`: rows and
    columns are the same tiles, and a block of a tile against itself counts the pairs above
    its diagonal only (row codes >= 0 become -1 in the other blocks).

    Returns rows, cols [e] int32 slots, scores [e] of each such pair (one direction), the
    inner-loop iterations [] (blocks of more than `BLOCK_SCORES` scores in all: a loop).
    """
    per_block = max(BLOCK_SCORES // (TILE * TILE), 1)

    def block(p: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        a, b = p[:, 0], p[:, 1]
        row_terms, col_terms = tf.gather(rows[0], a), tf.gather(cols[0], b)
        if xla:
            scores = _block_scores_xla(_padded(row_terms), _padded(col_terms))[: tf.size(a)]
        else:
            scores = _block_scores(row_terms, col_terms)  # [P, T, T]
        row_code = tf.gather(rows[2], a)
        if diagonal:
            off = tf.logical_and(tf.not_equal(a, b)[:, tf.newaxis], row_code >= 0)
            row_code = tf.where(off, -1, row_code)
        counts = tf.logical_and(
            scores <= threshold,
            tf.expand_dims(row_code, 2) < tf.expand_dims(tf.gather(cols[2], b), 1),
        )
        at = tf.cast(tf.reshape(tf.where(tf.reshape(counts, [-1])), [-1]), tf.int32)
        row = tf.gather(tf.reshape(tf.gather(rows[1], a), [-1]), at // TILE)
        col = tf.gather(
            tf.reshape(tf.gather(cols[1], b), [-1]), at // (TILE * TILE) * TILE + at % TILE
        )
        return row, col, tf.gather(tf.reshape(scores, [-1]), at)

    num_pairs = tf.shape(pairs)[0]

    def one_block():
        return (*block(pairs), tf.constant(0, tf.int32))

    def blocks():
        num = (num_pairs + per_block - 1) // per_block

        def body(i, *arrays):
            edge = block(pairs[i * per_block : (i + 1) * per_block])
            return (i + 1, *(a.write(i, x) for a, x in zip(arrays, edge, strict=True)))

        arrays = [
            tf.TensorArray(dtype, size=num, infer_shape=False)
            for dtype in (tf.int32, tf.int32, rows[0].dtype)
        ]
        _, *arrays = tf.while_loop(lambda i, *_: i < num, body, (0, *arrays))
        return (*(a.concat() for a in arrays), num)

    found = tf.cond(num_pairs <= per_block, one_block, blocks)
    return (*(tf.reshape(x, [-1]) for x in found[:3]), found[3])


def _first_edges(
    terms: tf.Tensor, alive: tf.Tensor, threshold: tf.Tensor, layout: _Layout, xla: bool
) -> tuple[tf.Tensor, ...]:
    """The pairs of live slots of one class scoring <= threshold (slots' `_terms` [S, 7],
    alive [S]): (rows, cols [e] int32, scores [e], each pair once, either way round), the
    inner-loop iterations []. Blocks of the layout's tiles against each other, each pair
    of tiles once (`_near` ones of a class)."""
    count = tf.size(layout.tile_group)
    tiled = tf.reshape(terms, [count, TILE, 7])
    live = tf.reshape(alive, [count, TILE])
    summary = _summaries(tiled, live, _reach_scale(threshold))
    index = tf.range(TILE)
    slots = tf.range(count)[:, tf.newaxis] * TILE + index
    once = tf.range(count)[:, tf.newaxis] <= tf.range(count)
    same = tf.equal(layout.tile_group[:, tf.newaxis], layout.tile_group)
    pairs = tf.where(tf.logical_and(tf.logical_and(_near(summary, summary), same), once))
    rows = (tiled, slots, tf.where(live, index, tf.int32.max))
    cols = (tiled, slots, tf.where(live, index, -2))
    return _block_edges(rows, cols, tf.cast(pairs, tf.int32), threshold, True, xla)


def _tiles_of(slots: tf.Tensor, layout: _Layout) -> tuple[tf.Tensor, tf.Tensor]:
    """The slots [k] (ascending) cut into tiles of their own, per class (slot order keeps
    nearby clusters together): (tile slots [N, TILE] int32, padding S; tile groups [N])."""
    s = tf.size(layout.key)
    group = tf.gather(layout.tile_group, slots // TILE)
    groups = tf.reduce_max(tf.concat([layout.tile_group, [-1]], 0)) + 1
    per_group = tf.math.unsorted_segment_sum(tf.ones_like(slots), group, groups)
    rank = tf.range(tf.size(slots)) - tf.gather(tf.cumsum(per_group, exclusive=True), group)
    tiles = (per_group + TILE - 1) // TILE
    tile = tf.gather(tf.cumsum(tiles, exclusive=True), group) + rank // TILE
    count = tf.reshape(tf.reduce_sum(tiles), [1])
    at = tf.stack([tile, rank % TILE], 1)
    tiled = tf.tensor_scatter_nd_update(tf.fill(tf.concat([count, [TILE]], 0), s), at, slots)
    return tiled, tf.tensor_scatter_nd_update(tf.zeros(count, tf.int32), tile[:, None], group)


def _new_edges(
    terms: tf.Tensor,
    alive: tf.Tensor,
    changed: tf.Tensor,
    threshold: tf.Tensor,
    layout: _Layout,
    xla: bool,
) -> tuple[tf.Tensor, ...]:
    """The pairs of live slots of one class scoring <= threshold with a changed one (slots'
    `_terms` [S, 7], alive [S], changed [S]): (rows, cols [e] int32, scores [e], each pair
    once, either way round), the inner-loop iterations [].

    The changed slots and the live ones are cut into tiles of their own (`_tiles_of`); a
    block scores a tile of changed slots against a tile of live ones (`_near` ones of its
    class); a pair of two changed slots counts in the block of the smaller slot's row.
    """
    s = tf.size(layout.key)
    padded = tf.concat([terms, tf.zeros([1, 7], terms.dtype)], 0)  # slot S: padding
    row_slots, row_group = _tiles_of(tf.cast(tf.where(changed)[:, 0], tf.int32), layout)
    col_slots, col_group = _tiles_of(tf.cast(tf.where(alive)[:, 0], tf.int32), layout)
    row_terms, col_terms = tf.gather(padded, row_slots), tf.gather(padded, col_slots)
    # A column counts against the changed rows if unchanged, else against smaller slots.
    fresh = tf.gather(tf.concat([changed, [True]], 0), col_slots)
    col_code = tf.where(col_slots < s, tf.where(fresh, col_slots, s), -1)
    scale = _reach_scale(threshold)
    near = _near(
        _summaries(row_terms, row_slots < s, scale), _summaries(col_terms, col_slots < s, scale)
    )
    same = tf.equal(row_group[:, tf.newaxis], col_group)
    pairs = tf.cast(tf.where(tf.logical_and(near, same)), tf.int32)
    rows = (row_terms, row_slots, row_slots)  # padding: code S, never below a column's
    cols = (col_terms, col_slots, col_code)
    return _block_edges(rows, cols, pairs, threshold, False, xla)


def _partners(edges: tuple[tf.Tensor, ...], layout: _Layout) -> tuple[tf.Tensor, tf.Tensor]:
    """Each slot's best partner among its edges (rows, cols, scores; each pair once, either
    way round): low [S] (the lowest score, inf if none), arg [S] int32 (the slot of the
    smallest key at that score, S if none)."""
    rows, cols = tf.concat([edges[0], edges[1]], 0), tf.concat([edges[1], edges[0]], 0)
    scores = tf.concat([edges[2], edges[2]], 0)
    s = tf.size(layout.key)
    low = tf.math.unsorted_segment_min(scores, rows, s)
    at_low = tf.equal(scores, tf.gather(low, rows))
    none = tf.int32.max  # also the segment min of nothing
    arg = tf.math.unsorted_segment_min(tf.where(at_low, tf.gather(layout.key, cols), none), rows, s)
    found = arg < none
    arg = tf.gather(layout.slot_of_key, tf.where(found, arg, 0))
    return tf.where(found, low, tf.constant(np.inf, low.dtype)), tf.where(found, arg, s)


def _round(sums, alive, edges, low, arg, threshold, layout: _Layout, xla: bool) -> tuple:
    """One round: every mutual best pair of live slots at <= threshold merges into the one
    with the smaller key. sums [S, 6]: sums of the members' y0, x0, y1, x1, the member
    count and the score sum; alive [S] bool; edges: (rows, cols, scores) of the pairs of
    live slots scoring <= threshold (`_new_edges`); low [S], arg [S]: each slot's best
    partner (`_partners`).

    Returns (sums, alive, edges, low, arg) after the round, pairs merged [], inner-loop
    iterations []."""
    s = tf.size(layout.key)
    partner = tf.minimum(arg, s - 1)
    mutual = tf.logical_and(low <= threshold, tf.equal(tf.gather(arg, partner), tf.range(s)))
    first = layout.key < tf.gather(layout.key, partner)
    absorbs = tf.logical_and(mutual, first)
    sums = sums + tf.where(absorbs[:, tf.newaxis], tf.gather(sums, partner), tf.zeros_like(sums))
    alive = tf.logical_and(alive, tf.logical_or(tf.logical_not(mutual), first))
    # Edges between slots that did not merge keep their scores; the merged ones' are new.
    rows, cols, scores = edges
    fixed = tf.logical_not(mutual)
    keep = tf.where(tf.logical_and(tf.gather(fixed, rows), tf.gather(fixed, cols)))[:, 0]
    new = _new_edges(_terms(_means(sums)), alive, absorbs, threshold, layout, xla)
    edges = tuple(
        tf.concat([tf.gather(old, keep), found], 0)
        for old, found in zip((rows, cols, scores), new[:3], strict=True)
    )
    low, arg = _partners(edges, layout)
    merged = tf.reduce_sum(tf.cast(absorbs, tf.int32))
    return sums, alive, edges, low, arg, merged, new[3]


def _means(sums: tf.Tensor) -> tf.Tensor:
    """The clusters' boxes [m, 4]: their members' mean coordinates (sums [m, 6])."""
    return tf.math.divide_no_nan(sums[:, :4], sums[:, 4:5])


def _initial_clusters(boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor) -> tuple:
    """(sums [K, 6], key, cls, group [K]) of the clusters before the first round, sorted by
    class: boxes of a class with identical coordinates form one cluster (they score 0 and
    would otherwise take one round per copy). key: the cluster's smallest input index;
    group: the class's rank (0, 1, ...)."""
    n = tf.shape(classes, out_type=tf.int32)[0]
    order = tf.range(n)
    # Sorted by (class, y0, x0, y1, x1), input order among equals: stable sorts, last key first.
    for column in (boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], classes):
        order = tf.gather(order, tf.argsort(tf.gather(column, order), stable=True))
    sorted_boxes, sorted_classes = tf.gather(boxes, order), tf.gather(classes, order)
    new_class = tf.not_equal(sorted_classes[1:], sorted_classes[:-1])
    differs = tf.logical_or(
        tf.reduce_any(tf.not_equal(sorted_boxes[1:], sorted_boxes[:-1]), axis=1), new_class
    )
    is_first = tf.concat([tf.ones([tf.minimum(n, 1)], tf.bool), differs], 0)
    same = tf.cumsum(tf.cast(is_first, tf.int32)) - 1  # [N] cluster of each sorted box
    count = tf.math.segment_sum(tf.ones([n], boxes.dtype), same)
    score = tf.math.segment_sum(tf.gather(scores, order), same)
    group = tf.cumsum(
        tf.cast(tf.concat([tf.zeros([tf.minimum(n, 1)], tf.bool), new_class], 0), tf.int32)
    )
    box = tf.boolean_mask(sorted_boxes, is_first)
    sums = tf.concat([box * count[:, None], count[:, None], score[:, None]], axis=1)
    key = tf.boolean_mask(order, is_first)  # the first of a group has the smallest index
    picked = (tf.boolean_mask(x, is_first) for x in (sorted_classes, group))
    return (sums, key, *picked)


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


def _rounds(boxes, scores, classes, threshold, xla: bool) -> tuple:
    """The merge up to the output: (sums, alive, layout, iterations [])."""
    sums, key, cls, group = _initial_clusters(boxes, scores, classes)
    sums, alive, layout = _slots(sums, key, cls, group, tf.size(classes))
    *edges, first = _first_edges(_terms(_means(sums)), alive, threshold, layout, xla)
    low, arg = _partners(edges, layout)

    def body(state, merged, iterations):
        *state, merged, inner = _round(*state, threshold, layout, xla)
        return tuple(state), merged, iterations + 1 + inner

    vector = tf.TensorShape([None])
    state, _, iterations = tf.while_loop(
        lambda state, merged, _: tf.logical_and(
            merged > 0, tf.reduce_sum(tf.cast(state[1], tf.int32)) >= 2
        ),
        body,
        ((sums, alive, tuple(edges), low, arg), tf.constant(1, tf.int32), first),
        shape_invariants=(
            (tf.TensorShape([None, 6]), vector, (vector,) * 3, vector, vector),
            tf.TensorShape([]),
            tf.TensorShape([]),
        ),
    )
    return state[0], state[1], layout, iterations


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
    sums, alive, layout, iterations = _rounds(boxes, scores, classes, threshold, xla)
    live = tf.reshape(tf.where(alive), [-1])
    picked = (tf.gather(x, live) for x in (sums, layout.key, layout.cls))
    return _rank(*picked, max_output), iterations


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

"""Box merging of the paper (OverFeat, Sermanet et al. 2014, §4.3) in rounds, in core TF ops.

Boxes of one class that match well merge instead of being suppressed: a merged box is the mean
of its members' coordinates, its score the SUM of theirs. For boxes with centres c1, c2, areas
A1, A2 (A = relu(y1 - y0) * relu(x1 - x0); IoU = 0 when the union is empty):

    match_score(b1, b2) = ||c1 - c2||_2 / sqrt(max(min(A1, A2), 1e-12))  +  (1 - IoU(b1, b2))

Lower is better. Boxes are yxyx (y0, x0, y1, x1) in PIXELS, or any units with the same scale on
both axes: the score is invariant to a uniform scale, not to a per-axis one.

Algorithm: per class, identical boxes start as one cluster; then, in rounds, every two clusters
that are each other's best match (lowest score; ties: the smaller key, a cluster's smallest
input index) at a score <= threshold merge, all at once, until a round merges nothing. Each
round makes the first merge of the paper's one-pair-per-step rule. Only blocks of TILE x TILE
pairs of nearby tiles are scored: bitwise the same as scoring every pair. Output: score
descending, ties by key. docs/merge.md: the argument, the cost, the iterations, XLA.

Example: `r = merge_boxes(boxes_yxyx_px, scores, classes)`, then `r.boxes[: r.num_merged]`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["BLOCK_SCORES", "DEFAULT_MAX_OUTPUT", "MERGE_THRESHOLD", "MergeResult"]
__all__ += ["match_score", "merge_boxes", "mutual_merge"]

# Default threshold t (match_score <= t merges): two same-size boxes shifted by a fraction d of
# their side score d + 2d / (1 + d), so 0.7 merges them for d < ~0.28 (docs/merge.md).
MERGE_THRESHOLD = 0.7
DEFAULT_MAX_OUTPUT = 100  # merged boxes kept per image
BLOCK_SCORES = 1 << 24  # scores of the blocks scored at once; more: a loop over groups of blocks
TILE = 16  # slots per tile: a block scores the TILE x TILE pairs of two tiles of one class
_MIN_AREA = 1e-12  # floor on min(A1, A2) in match_score: finite scores for zero-area boxes
_SLACK = 2.0**-10  # relative margin of the reach (`_summaries`) over float rounding


class MergeResult(NamedTuple):
    """Padded output of `merge_boxes`: rows `[:num_merged]` are the merged boxes, score
    descending (ties: the cluster holding the earliest input box first); then zeros.

    Attributes:
        boxes: [max_output, 4] merged boxes, yxyx, in the units (pixels) of the input boxes.
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


def _floating(x) -> tf.Tensor:  # x as a tensor, float32 unless floating
    x = tf.convert_to_tensor(x)
    return x if x.dtype.is_floating else tf.cast(x, tf.float32)


def _derive(boxes: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Per-box terms of the score of yxyx boxes [..., 4]: 7 x [...] (y0, x0, y1, x1, y0 + y1,
    x0 + x1, area). Computed alike for every box, so `_pair_scores` is bitwise symmetric."""
    y0, x0, y1, x1 = tf.unstack(boxes, 4, axis=-1)
    return y0, x0, y1, x1, y0 + y1, x0 + x1, tf.nn.relu(y1 - y0) * tf.nn.relu(x1 - x0)


def _terms(sums: tf.Tensor) -> tf.Tensor:
    """The clusters' `_derive` terms [m, 7] from their sums [m, 6] (`_round`): columns :4 are
    the clusters' boxes, yxyx, their members' mean coordinates."""
    return tf.stack(_derive(tf.math.divide_no_nan(sums[:, :4], sums[:, 4:5])), -1)


def _pair_scores(a: tuple[tf.Tensor, ...], b: tuple[tf.Tensor, ...]) -> tf.Tensor:
    """match_score of `_derive`d boxes, element-wise with broadcasting."""
    ay0, ax0, ay1, ax1, acy, acx, area_a = a
    by0, bx0, by1, bx1, bcy, bcx, area_b = b
    inter_y = tf.nn.relu(tf.minimum(ay1, by1) - tf.maximum(ay0, by0))
    inter = inter_y * tf.nn.relu(tf.minimum(ax1, bx1) - tf.maximum(ax0, bx0))
    iou = tf.math.divide_no_nan(inter, area_a + area_b - inter)
    dy, dx = acy - bcy, acx - bcx  # twice the centre offsets: ||c1 - c2|| = sqrt(d2) / 2
    min_area = tf.maximum(tf.minimum(area_a, area_b), tf.cast(_MIN_AREA, ay0.dtype))
    return tf.sqrt((dy * dy + dx * dx) / min_area) * 0.5 - iou + 1.0


def match_score(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """The merge score (module docstring) of yxyx boxes [..., 4] in pixels (or any units with
    the same scale on both axes), element-wise with broadcasting: [...] scores, lower = better
    match, 0 for identical boxes. `boxes2` is cast to the dtype of `boxes1` (float32 if int)."""
    boxes1 = _floating(boxes1)
    return _pair_scores(_derive(boxes1), _derive(tf.cast(boxes2, boxes1.dtype)))


def _spatial_keys(cy: tf.Tensor, cx: tf.Tensor) -> tf.Tensor:
    """int64 [k] Z-order codes of centres quantized to 16 bits per axis over their extent:
    nearby centres get nearby codes (only the speed depends on them, not the results)."""
    codes = []
    for v in (cy, cx):
        v = tf.where(tf.math.is_finite(v), v, tf.zeros_like(v))
        low = tf.reduce_min(tf.concat([v, [0]], 0))
        extent = tf.maximum(tf.reduce_max(tf.concat([v, [0]], 0)) - low, 1e-30)
        q = tf.cast(tf.clip_by_value((v - low) / extent * 65535.0, 0.0, 65535.0), tf.int64)
        for shift, mask in ((8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
            q = (q | tf.bitwise.left_shift(q, shift)) & mask
        codes.append(q)
    return tf.bitwise.left_shift(codes[0], 1) | codes[1]


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
    size = tf.maximum(n, 128) - 1
    for shift in (1, 2, 4, 8, 16):
        size = size | tf.bitwise.right_shift(size, shift)
    return tf.pad(x, [[0, size + 1 - n]] + [[0, 0]] * (x.shape.rank - 1))


class _Layout(NamedTuple):
    """Where the clusters live: slot s, in tile s // TILE (`_slots`). int32 key [S] (a slot's
    cluster's smallest input index; padding: -1), cls [S], tile_group [S / TILE] (a tile's
    class group), slot_of_key [N] (the slot of each key; N input boxes; -1 if not a key)."""

    key: tf.Tensor
    cls: tf.Tensor
    tile_group: tf.Tensor
    slot_of_key: tf.Tensor


def _slots(sums, key, cls, group, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, _Layout]:
    """The initial clusters laid out in slots: per class, in Z-order of their centres, each
    class padded to a multiple of TILE slots. Slots never move; a cluster merged away leaves
    its slot dead. Returns sums [S, 6] (padding: zeros), alive [S] bool, the `_Layout`."""
    k = tf.size(key)
    terms = _terms(sums)
    z_order = tf.bitwise.left_shift(tf.cast(group, tf.int64), 32)
    order = tf.argsort(z_order + _spatial_keys(terms[:, 4], terms[:, 5]), stable=True)
    group = tf.gather(group, order)
    count = tf.math.segment_sum(tf.ones([k], tf.int32), group)  # [G] clusters per class
    padded = (count + TILE - 1) // TILE * TILE
    slot = tf.gather(tf.cumsum(padded, exclusive=True) - tf.cumsum(count, exclusive=True), group)
    slot = (slot + tf.range(k))[:, tf.newaxis]
    size = tf.reshape(tf.reduce_sum(padded), [1])
    key, cls = tf.gather(key, order), tf.gather(cls, order)
    scatter = tf.tensor_scatter_nd_update
    layout = _Layout(
        key=scatter(tf.fill(size, -1), slot, key),
        cls=scatter(tf.zeros(size, tf.int32), slot, cls),
        tile_group=tf.repeat(tf.range(tf.size(count)), padded // TILE),
        slot_of_key=scatter(tf.fill(tf.reshape(n, [1]), -1), key[:, tf.newaxis], slot[:, 0]),
    )
    sums = tf.scatter_nd(slot, tf.gather(sums, order), tf.concat([size, [6]], 0))
    return sums, tf.scatter_nd(slot, tf.ones([k], tf.bool), size), layout


def _summaries(terms: tf.Tensor, live: tf.Tensor, threshold: tf.Tensor) -> tuple:
    """Of tiles (`_terms` [N, T, 7], live [N, T]): the extent of their live (twice) centres,
    low, high [N, 2] (inf, -inf if none), and their reach [N]: c(t) x their largest sqrt(max(A,
    1e-12)) (0 if none), c(t) bounding a pair's |dy|, |dx| (docs/merge.md, "Blocks")."""
    t = tf.maximum(threshold, tf.zeros_like(threshold))
    scale = 2.0 * (t * (1.0 + _SLACK) + _SLACK) * (1.0 + _SLACK)
    inf = tf.constant(np.inf, terms.dtype)
    centres, live_2 = terms[:, :, 4:6], live[:, :, tf.newaxis]
    low = tf.reduce_min(tf.where(live_2, centres, inf), 1)
    high = tf.reduce_max(tf.where(live_2, centres, -inf), 1)
    root = tf.sqrt(tf.maximum(terms[:, :, 6], tf.cast(_MIN_AREA, terms.dtype)))
    return low, high, scale * tf.reduce_max(tf.where(live, root, tf.zeros_like(root)), 1)


def _block_edges(rows: tuple, cols: tuple, threshold, diagonal: bool, xla: bool) -> tuple:
    """The pairs scoring <= threshold of the blocks: a row tile against a column tile of its
    class, near enough for such a pair (`_summaries`); each pair of tiles once if `diagonal`
    (rows and columns the same tiles). rows, cols: tiles as (terms [N, T, 7] (`_terms`), live
    [N, T], class groups [N], slots [N, T], codes [N, T] int32); a pair (r, c) counts if
    code_r < code_c (leaving out padding, self pairs and pairs counted in another block).
    Returns rows, cols [e] int32 slots, scores [e] of each such pair (one direction), the
    inner-loop iterations [] (blocks of more than `BLOCK_SCORES` scores in all: a loop)."""
    a_terms, a_live, a_group, a_slots, a_codes = rows
    b_terms, b_live, b_group, b_slots, b_codes = cols
    low_a, high_a, reach_a = _summaries(a_terms, a_live, threshold)
    low_b, high_b, reach_b = _summaries(b_terms, b_live, threshold)
    gap = tf.maximum(low_a[:, tf.newaxis] - high_b, low_b - high_a[:, tf.newaxis])
    reach = tf.minimum(reach_a[:, tf.newaxis], reach_b)[:, :, tf.newaxis]
    near = tf.logical_and(tf.reduce_all(gap <= reach, 2), tf.equal(a_group[:, None], b_group))
    if diagonal:
        tiles = tf.range(tf.size(a_group))
        near = tf.logical_and(near, tiles[:, tf.newaxis] <= tiles)
    pairs = tf.cast(tf.where(near), tf.int32)
    per_block = max(BLOCK_SCORES // (TILE * TILE), 1)

    def block(p: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        a, b = p[:, 0], p[:, 1]
        row_terms, col_terms = tf.gather(a_terms, a), tf.gather(b_terms, b)
        if xla:
            scores = _block_scores_xla(_padded(row_terms), _padded(col_terms))[: tf.size(a)]
        else:
            scores = _block_scores(row_terms, col_terms)  # [P, T, T]
        row_code, col_code = tf.gather(a_codes, a)[:, :, None], tf.gather(b_codes, b)[:, None]
        counts = tf.logical_and(scores <= threshold, row_code < col_code)
        at = tf.cast(tf.reshape(tf.where(tf.reshape(counts, [-1])), [-1]), tf.int32)
        row = tf.gather(tf.reshape(tf.gather(a_slots, a), [-1]), at // TILE)
        col_at = at // (TILE * TILE) * TILE + at % TILE
        col = tf.gather(tf.reshape(tf.gather(b_slots, b), [-1]), col_at)
        return row, col, tf.gather(tf.reshape(scores, [-1]), at)

    num_pairs = tf.shape(pairs)[0]

    def blocks():
        num = (num_pairs + per_block - 1) // per_block

        def body(i, *arrays):
            edge = block(pairs[i * per_block : (i + 1) * per_block])
            return (i + 1, *(a.write(i, x) for a, x in zip(arrays, edge, strict=True)))

        dtypes = (tf.int32, tf.int32, a_terms.dtype)
        arrays = [tf.TensorArray(d, size=num, infer_shape=False) for d in dtypes]
        _, *arrays = tf.while_loop(lambda i, *_: i < num, body, (0, *arrays))
        return (*(a.concat() for a in arrays), num)

    found = tf.cond(num_pairs <= per_block, lambda: (*block(pairs), tf.constant(0)), blocks)
    return (*(tf.reshape(x, [-1]) for x in found[:3]), found[3])


def _first_edges(terms, alive, threshold, layout: _Layout, xla: bool) -> tuple[tf.Tensor, ...]:
    """The pairs of live slots of one class scoring <= threshold (slots' `_terms` [S, 7],
    alive [S]), the layout's tiles against each other: (rows, cols [e] int32, scores [e], each
    pair once, either way round), the inner-loop iterations []."""
    count = tf.size(layout.tile_group)
    live = tf.reshape(alive, [count, TILE])
    slots = tf.reshape(tf.range(count * TILE), [count, TILE])
    tiles = (tf.reshape(terms, [count, TILE, 7]), live, layout.tile_group, slots)
    rows, cols = (*tiles, tf.where(live, slots, tf.int32.max)), (*tiles, tf.where(live, slots, -2))
    return _block_edges(rows, cols, threshold, True, xla)


def _tiles_of(mask: tf.Tensor, terms: tf.Tensor, layout: _Layout) -> tuple[tf.Tensor, ...]:
    """The slots where `mask` [S] holds, cut into tiles of their own per class (slot order
    keeps nearby clusters together): (terms [N, TILE, 7] from `terms` [S + 1, 7] (row S:
    padding), live [N, TILE], class groups [N], slots [N, TILE] int32 (padding: S))."""
    slots = tf.cast(tf.where(mask)[:, 0], tf.int32)
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
    groups = tf.tensor_scatter_nd_update(tf.zeros(count, tf.int32), tile[:, None], group)
    return tf.gather(terms, tiled), tiled < s, groups, tiled


def _new_edges(terms, alive, changed, threshold, layout: _Layout, xla: bool) -> tuple:
    """The pairs of live slots of one class scoring <= threshold with a changed one (slots'
    `_terms` [S, 7], alive [S], changed [S]), as `_first_edges`: tiles of changed slots
    against tiles of live ones; a pair of two changed slots counts in the smaller slot's row."""
    s = tf.size(layout.key)
    padded = tf.concat([terms, tf.zeros([1, 7], terms.dtype)], 0)  # slot S: padding
    rows, cols = _tiles_of(changed, padded, layout), _tiles_of(alive, padded, layout)
    # A column counts against the changed rows if unchanged, else against smaller slots.
    fresh = tf.gather(tf.concat([changed, [True]], 0), cols[3])
    col_code = tf.where(cols[3] < s, tf.where(fresh, cols[3], s), -1)
    rows = (*rows, rows[3])  # row codes: the slots (padding: S, never below a column's)
    return _block_edges(rows, (*cols, col_code), threshold, False, xla)


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
    with the smaller key. sums [S, 6]: sums of the members' y0, x0, y1, x1, count and score;
    alive [S] bool; edges (rows, cols, scores): the pairs of live slots scoring <= threshold;
    low, arg [S]: each slot's best partner (`_partners`). Returns (sums, alive, edges, low,
    arg) after the round, pairs merged [], inner-loop iterations []."""
    s = tf.size(layout.key)
    partner = tf.minimum(arg, s - 1)
    mutual = tf.logical_and(low <= threshold, tf.equal(tf.gather(arg, partner), tf.range(s)))
    first = layout.key < tf.gather(layout.key, partner)
    absorbs = tf.logical_and(mutual, first)
    sums = sums + tf.where(absorbs[:, tf.newaxis], tf.gather(sums, partner), tf.zeros_like(sums))
    fixed = tf.logical_not(mutual)
    alive = tf.logical_and(alive, tf.logical_or(fixed, first))
    # Edges between slots that did not merge keep their scores; the merged ones' are new.
    keep = tf.where(tf.logical_and(tf.gather(fixed, edges[0]), tf.gather(fixed, edges[1])))[:, 0]
    *new, inner = _new_edges(_terms(sums), alive, absorbs, threshold, layout, xla)
    edges = tuple(tf.concat([tf.gather(e, keep), x], 0) for e, x in zip(edges, new, strict=True))
    merged = tf.reduce_sum(tf.cast(absorbs, tf.int32))
    return sums, alive, edges, *_partners(edges, layout), merged, inner


def _initial_clusters(boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor) -> tuple:
    """(sums [K, 6], key, cls, group [K]) of the clusters before the first round, by class:
    identical boxes of a class form one (else one round per copy). key: the cluster's
    smallest input index; group: the class's rank (0, 1, ...)."""
    n = tf.shape(classes, out_type=tf.int32)[0]
    order = tf.range(n)
    # Sorted by (class, y0, x0, y1, x1), input order among equals: stable sorts, last key first.
    for column in (boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], classes):
        order = tf.gather(order, tf.argsort(tf.gather(column, order), stable=True))
    sorted_boxes, sorted_classes = tf.gather(boxes, order), tf.gather(classes, order)
    new_class = tf.not_equal(sorted_classes[1:], sorted_classes[:-1])
    differs = tf.reduce_any(tf.not_equal(sorted_boxes[1:], sorted_boxes[:-1]), axis=1)
    is_first = tf.concat([tf.ones([tf.minimum(n, 1)], tf.bool), differs | new_class], 0)
    same = tf.cumsum(tf.cast(is_first, tf.int32)) - 1  # [N] cluster of each sorted box
    count = tf.math.segment_sum(tf.ones([n], boxes.dtype), same)[:, None]
    score = tf.math.segment_sum(tf.gather(scores, order), same)[:, None]
    new_group = tf.concat([tf.zeros([tf.minimum(n, 1)], tf.bool), new_class], 0)
    group = tf.cumsum(tf.cast(new_group, tf.int32))
    sums = tf.concat([tf.boolean_mask(sorted_boxes, is_first) * count, count, score], axis=1)
    # The first box of a cluster has the smallest index: its key.
    return (sums, *(tf.boolean_mask(x, is_first) for x in (order, sorted_classes, group)))


@tf.function(reduce_retracing=True, autograph=False)
def _merge_graph(boxes, scores, classes, threshold, max_output: int, xla: bool) -> tuple:
    """`merge_boxes` on checked inputs, as a graph: (MergeResult, iterations [])."""
    sums, key, cls, group = _initial_clusters(boxes, scores, classes)
    sums, alive, layout = _slots(sums, key, cls, group, tf.size(classes))
    *edges, first = _first_edges(_terms(sums), alive, threshold, layout, xla)

    def more(state, merged, _):  # a round merged and >= 2 clusters are left
        return tf.logical_and(merged > 0, tf.reduce_sum(tf.cast(state[1], tf.int32)) >= 2)

    def body(state, merged, iterations):
        *state, merged, inner = _round(*state, threshold, layout, xla)
        return tuple(state), merged, iterations + 1 + inner

    loop = ((sums, alive, tuple(edges), *_partners(edges, layout)), tf.constant(1, tf.int32), first)
    vector, scalar = tf.TensorShape([None]), tf.TensorShape([])
    shapes = ((tf.TensorShape([None, 6]), vector, (vector,) * 3, vector, vector), scalar, scalar)
    (sums, alive, *_), _, iterations = tf.while_loop(more, body, loop, shape_invariants=shapes)
    # The `max_output` best clusters in output order (top_k: the lower index first on ties).
    live = tf.reshape(tf.where(alive), [-1])
    sums, key, cls = (tf.gather(x, live) for x in (sums, layout.key, layout.cls))
    by_key = tf.argsort(key, stable=True)
    scores = tf.gather(sums[:, 5], by_key)
    num_merged = tf.minimum(tf.shape(scores)[0], max_output)
    top = tf.math.top_k(scores, k=num_merged, sorted=True).indices
    pick = tf.gather(by_key, top)
    members = tf.cast(tf.gather(sums[:, 4], pick), tf.int32)
    picked = (tf.gather(_terms(sums)[:, :4], pick), tf.gather(scores, top), tf.gather(cls, pick))

    def padded(x: tf.Tensor) -> tf.Tensor:
        pads = [[0, max_output - num_merged]] + [[0, 0]] * (x.shape.rank - 1)
        return tf.ensure_shape(tf.pad(x, pads), [max_output, *x.shape[1:]])

    return MergeResult(*(padded(x) for x in (*picked, members)), num_merged), iterations


def merge_boxes(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: float | tf.Tensor = MERGE_THRESHOLD,
    max_output: int = DEFAULT_MAX_OUTPUT,
    jit_compile: bool = False,
    return_iterations: bool = False,
) -> MergeResult | tuple[MergeResult, tf.Tensor]:
    """Merges one image's boxes in rounds of mutual best matches (module docstring): per
    class, clusters each other's best match at a `match_score` <= `threshold` merge, round
    after round, into the mean box with the summed score. Core TF ops only: eager,
    `tf.function` (any number of boxes), `tf.data`, SavedModels.

    Args:
        boxes: [M, 4] yxyx boxes in PIXELS of the original image, or any units with the same
            scale on both axes (the score is not invariant to a per-axis scale). float32 or
            float64 (the computation dtype); finite.
        scores: [M] confidence of each box. classes: [M] integer class of each box; boxes
            of different classes never merge.
        threshold: mutual best matches merge while their match_score is <= threshold.
        max_output: rows of the padded output (Python int >= 1); the best clusters are kept.
        jit_compile: score each round's blocks with XLA-compiled kernels (padded shapes, one
            compile per size met). Same results; exports must keep False (core TF ops only).
        return_iterations: also return the dependent loop iterations ([] int32): rounds
            (including the last, which merges nothing) plus row blocks of multi-block rounds.

    Returns:
        `MergeResult`; with `return_iterations`, (MergeResult, iterations).
    """
    if jit_compile not in (True, False):
        raise ValueError(f"jit_compile must be True or False, got {jit_compile!r}.")
    if isinstance(threshold, int | float) and not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}.")
    count = isinstance(max_output, int | np.integer) and not isinstance(max_output, bool)
    if not count or max_output < 1:
        raise ValueError(f"max_output must be a positive int, got {max_output!r}.")
    boxes = _floating(boxes)
    scores, classes = tf.cast(scores, boxes.dtype), tf.convert_to_tensor(classes)
    if not classes.dtype.is_integer:
        raise ValueError(f"classes must be an integer tensor, got {classes.dtype}.")
    classes = tf.cast(classes, tf.int32)
    ranks = ((boxes, 2, "boxes [M, 4]"), (scores, 1, "scores [M]"), (classes, 1, "classes [M]"))
    for t, rank, what in ranks:
        if t.shape.rank is not None and t.shape.rank != rank:
            raise ValueError(f"{what} must have rank {rank}, got shape {t.shape}.")
    if boxes.shape.rank is not None and boxes.shape[-1] not in (None, 4):
        raise ValueError(f"boxes must have a last dimension of 4, got shape {boxes.shape}.")
    threshold = tf.cast(threshold, boxes.dtype)
    # Run-time checks: the number of boxes and finiteness.
    n, checks = tf.shape(boxes)[:1], []
    for w, x in (("scores", scores), ("classes", classes)):
        message = f"merge_boxes: boxes and {w} disagree on the number of boxes."
        checks.append(tf.debugging.assert_equal(n, tf.shape(x), message=message))
    for w, x in (("boxes", boxes), ("scores", scores), ("threshold", threshold)):
        checks.append(tf.debugging.assert_all_finite(x, f"merge_boxes: {w} must be finite."))
    with tf.control_dependencies(checks):
        args = (tf.identity(boxes), scores, classes, threshold)
    result, iterations = _merge_graph(*args, int(max_output), bool(jit_compile))
    result = MergeResult(*result)
    return (result, iterations) if return_iterations else result


# The name of the algorithm: rounds of mutual best matches.
mutual_merge = merge_boxes

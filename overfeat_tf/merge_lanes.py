"""The frame around a box-merge algorithm (paper §4.3): boxes grouped by class into lanes, and
the clusters a lane merge returns ranked into the padded output of `overfeat_tf.merge`.

Algorithm-independent: a merge algorithm (the greedy one is `overfeat_tf.merge_greedy`) only
supplies a `LaneMerge`, which merges L lanes of n slots at once:

    lane_merge(boxes [L, n, 4], scores [L, n], valid [L, n] bool, cid [L, n] int32,
               threshold []) -> (sums [L, m, 6], slot [L, m] int32)

where `sums` holds per output slot the sums of its members' y0, x0, y1, x1 (yxyx, the units
of the input), the member count (0 = no cluster) and the score sum, and `slot` the input slot
of each cluster's smallest member. Pairs of different classes (`cid`) must never merge.

Lanes: a class of >= `pack` boxes gets a lane of its own, smaller classes share lanes (whole
classes back to back, < 2 * `pack` boxes a lane). Lanes are numbered largest classes first
and merged in groups of `lanes` side by side. Within a class, slot order is input order, so
an algorithm that breaks ties by slot breaks them by input index.

Output order: accumulated score descending, ties by key ascending (a cluster's key is the
input index of its smallest member, i.e. the cluster holding the earliest input box first).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

__all__ = ["LaneMerge", "merge_in_lanes"]

LaneMerge = Callable[
    [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]
]


def _lane_layout(
    classes: tf.Tensor, n: tf.Tensor, pack: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Where each box goes: classes [N] int32, n = N.

    Returns:
        lane_order [N]: the input index of each position of the lane-major order (lanes one
        after the other, each its classes back to back, input order within a class);
        lane_starts, lane_sizes [num_lanes]: each lane's first position and number of
        boxes; num_lanes [].
    """
    # Group the boxes by class; a stable sort keeps input order within a class, so slot order
    # within a class == input order and the merge's tie order is the input order.
    order = tf.argsort(classes, stable=True)  # [N]
    sorted_classes = tf.gather(classes, order)
    is_start = tf.concat(
        [tf.ones([tf.minimum(n, 1)], tf.bool), sorted_classes[1:] != sorted_classes[:-1]], 0
    )
    starts = tf.cast(tf.reshape(tf.where(is_start), [-1]), tf.int32)  # [U] class blocks
    sizes = tf.concat([starts[1:], tf.reshape(n, [1])], axis=0) - starts  # [U]
    # Lanes: a class of >= pack boxes has one to itself; smaller ones share lanes, whole
    # classes back to back (< 2 * pack boxes a lane; pairs across classes never merge).
    by_size = tf.argsort(-sizes, stable=True)  # [U] classes in lane order
    sizes_in_order = tf.gather(sizes, by_size)
    small = sizes_in_order < pack
    num_big = tf.reduce_sum(tf.cast(tf.logical_not(small), tf.int32))
    packed_before = tf.cumsum(tf.where(small, sizes_in_order, 0), exclusive=True)
    lane_of = tf.where(
        small, num_big + packed_before // pack, tf.range(tf.size(sizes), dtype=tf.int32)
    )  # [U] lane of each class (in lane order)
    num_lanes = tf.reduce_max(tf.concat([lane_of + 1, [0]], 0))
    lane_sizes = tf.math.unsorted_segment_sum(sizes_in_order, lane_of, num_lanes)  # [lanes]
    lane_starts = tf.cumsum(lane_sizes, exclusive=True)
    lane_first = tf.math.unsorted_segment_min(packed_before, lane_of, num_lanes)
    offset = tf.where(small, packed_before - tf.gather(lane_first, lane_of), 0)  # in its lane
    # Box p of the class-sorted order (class block c) -> position in the lane-major order.
    block = tf.cumsum(tf.cast(is_start, tf.int32)) - 1  # [N] class block of each box
    rank = tf.gather(tf.math.invert_permutation(by_size), block)  # its class in lane order
    position = (
        tf.gather(lane_starts, tf.gather(lane_of, rank))
        + tf.gather(offset, rank)
        + tf.range(n)
        - tf.gather(starts, block)
    )
    lane_order = tf.scatter_nd(position[:, tf.newaxis], order, tf.reshape(n, [1]))  # [N]
    return lane_order, lane_starts, lane_sizes, num_lanes


def _merge_groups(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: tf.Tensor,
    layout: tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor],
    lane_merge: LaneMerge,
    lanes: int,
) -> tuple[tf.Tensor, ...]:
    """`lane_merge` over the lanes of `layout` (`_lane_layout`), `lanes` at a time.

    Returns:
        The clusters of every lane, in lane order: boxes [K, 4] (the member means), scores
        [K] (sums), counts [K] int32, keys [K] int32 (smallest member's input index) and
        classes [K] int32.
    """
    lane_order, lane_starts, lane_sizes, num_lanes = layout
    dtype = boxes.dtype
    n = tf.shape(boxes, out_type=tf.int32)[0]
    num_groups = (num_lanes + lanes - 1) // lanes

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
        first = g * lanes
        group_starts = lane_starts[first : first + lanes]  # [L]
        group_sizes = lane_sizes[first : first + lanes]  # [L]
        slots = tf.range(tf.reduce_max(group_sizes))  # [n] (n = the largest lane of the group)
        valid = slots < group_sizes[:, tf.newaxis]  # [L, n]
        members = tf.gather(lane_order, tf.minimum(group_starts[:, tf.newaxis] + slots, n - 1))
        members = tf.where(valid, members, 0)  # [L, n] input index of each slot
        sums, slot = lane_merge(
            tf.gather(boxes, members),
            tf.gather(scores, members),
            valid,
            tf.gather(classes, members),
            threshold,
        )
        keep = tf.where(sums[:, :, 4] > 0)  # [K, 2] (lane, array slot) of the clusters
        kept = tf.gather_nd(sums, keep)  # [K, 6]
        lane_slot = tf.stack([tf.cast(keep[:, 0], tf.int32), tf.gather_nd(slot, keep)], axis=1)
        keys = tf.gather_nd(members, lane_slot)  # input index of each cluster's first box
        return (
            g + 1,
            out_boxes.write(g, tf.math.divide_no_nan(kept[:, :4], kept[:, 4:5])),
            out_scores.write(g, kept[:, 5]),
            out_counts.write(g, tf.cast(kept[:, 4], tf.int32)),
            out_keys.write(g, keys),
            out_classes.write(g, tf.gather(classes, keys)),
        )

    _, *arrays = tf.while_loop(
        lambda g, *_: g < num_groups, body, (tf.constant(0, tf.int32), *arrays)
    )
    empty = (tf.zeros([0, 4], dtype), tf.zeros([0], dtype), *[tf.zeros([0], tf.int32)] * 3)
    return tf.cond(num_groups > 0, lambda: tuple(a.concat() for a in arrays), lambda: empty)


def _rank(clusters: tuple[tf.Tensor, ...], max_output: int) -> tuple[tf.Tensor, ...]:
    """The `max_output` best clusters (`_merge_groups`' output), in output order, padded:
    (boxes [max_output, 4], scores, classes, num_members [max_output], num_merged [])."""
    all_boxes, all_scores, all_counts, all_keys, all_classes = clusters
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


def merge_in_lanes(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: tf.Tensor,
    max_output: int,
    lane_merge: LaneMerge,
    lanes: int,
    pack: int,
) -> tuple[tf.Tensor, ...]:
    """One image's merge: boxes grouped by class into lanes, `lane_merge` on them, the
    clusters ranked (see the module docstring). Graph-safe, any number of boxes.

    Args:
        boxes: [N, 4] yxyx, finite, float (the computation dtype). scores: [N], same dtype.
        classes: [N] int32. threshold: [] same dtype as boxes.
        max_output: Python int >= 1, the number of output rows.
        lane_merge: merges `lanes` lanes at a time (the `LaneMerge` contract).
        lanes: how many lanes one `lane_merge` call gets (>= 1).
        pack: classes of fewer boxes than this share lanes.

    Returns:
        The fields of `overfeat_tf.merge.MergeResult`: boxes [max_output, 4], scores
        [max_output], classes [max_output] int32, num_members [max_output] int32 and
        num_merged [] int32; rows past num_merged are zero.
    """
    n = tf.shape(boxes, out_type=tf.int32)[0]
    layout = _lane_layout(classes, n, pack)
    clusters = _merge_groups(boxes, scores, classes, threshold, layout, lane_merge, lanes)
    return _rank(clusters, max_output)

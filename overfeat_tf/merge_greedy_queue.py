"""One phase of the greedy merge (paper §4.3): the lazy priority queue over lanes of slots.

Used by `overfeat_tf.merge_greedy`, which runs phases, packs the clusters left between them
and chooses XLA or plain TF. A lane holds the boxes (yxyx, any units) of one class, or of
several whole classes back to back, in slots; within a class, slot order is input order, i.e.
the merge's tie order. L lanes run in lockstep (one merge per lane per loop step).

The queue keeps, for every row (slot) k, the lowest score of k against the later slots l > k
and that slot. A loop step takes the top row i (lowest entry, first on ties) and its slot j;
if that entry is still fresh (slot j unchanged since it was computed) it merges j into i,
scores the new box i against every slot (O(n), vectorized), lets the rows k < i adopt (k, i)
when it beats their entry and recomputes row i; if the entry is stale (j was merged or
absorbed something since) it only recomputes row i. Stale entries are lower bounds of their
row's true minimum, so the entry at the top is always the exact next pair. About 1.5 steps
per box: 3008 merges and 1687 refreshes for the 3150 boxes of the benchmark's top-1 set.

Memory: O(L * n) for the state plus one block of initial scores (O(`_BLOCK_SCORES`)): never
an n x n matrix. Every step is written with few ops (without XLA, each op costs ~1 us
whatever its size) and its loop invariants are materialized (where() with broadcast operands
is slow on CPU).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from overfeat_tf.merge_score import derive, first_argmin, pair_scores

__all__ = ["merge_phase"]

# Scores per block when computing the initial row minima: memory O(_BLOCK_SCORES), not
# O(n^2) (~30 temporaries per score: ~30 MB in float32).
_BLOCK_SCORES = 1 << 18


def _initial_row_minima(
    derived: tf.Tensor, valid: tf.Tensor, cid: tf.Tensor, xla: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per lane and row k: min over valid l > k of the same class of match_score(k, l) and
    the first such l.

    Args:
        derived: [7, L, n] the `derive`d boxes. valid: [L, n] bool (padding = False).
        cid: [L, n] int32 class of each slot. xla: whether this runs under XLA (static
            shapes: every block scores all columns).

    Returns:
        [L, n] minima (inf if none) and [L, n] int32 slots (n if none). Computed in blocks
        of rows of a size fixed by the shapes (so that XLA sees static shapes): memory
        O(_BLOCK_SCORES) scores, not O(L * n^2). Without XLA a block only scores the
        columns from its first row on (~n^2 / 2 scores in all).
    """
    lanes = tf.shape(valid, out_type=tf.int32)[0]
    n = tf.shape(valid, out_type=tf.int32)[1]
    dtype = derived.dtype
    inf = tf.constant(np.inf, dtype)
    rows = tf.clip_by_value(_BLOCK_SCORES // tf.maximum(lanes * n, 1), 1, tf.maximum(n, 1))
    num_blocks = (n + rows - 1) // rows
    row_boxes = tf.pad(derived, [[0, 0], [0, 0], [0, num_blocks * rows - n]])
    columns = tuple(derived[k][:, tf.newaxis, :] for k in range(7))  # [L, 1, n]
    valid_cols = valid[:, tf.newaxis, :]  # [L, 1, n]
    cid_rows = tf.pad(cid, [[0, 0], [0, num_blocks * rows - n]])
    cid_cols = cid[:, tf.newaxis, :]  # [L, 1, n]
    shape = tf.stack([lanes, rows, n])
    iota = tf.broadcast_to(tf.range(n), shape)  # [L, r, n]
    big = tf.fill(shape, n)
    block_rows = tf.range(rows)[:, tf.newaxis]  # [r, 1]

    def body(b, mins, args):
        start = b * rows
        block = tf.slice(row_boxes, tf.stack([0, 0, start]), tf.stack([7, lanes, rows]))
        block = tuple(block[k][:, :, tf.newaxis] for k in range(7))
        block_cid = tf.slice(cid_rows, tf.stack([0, start]), tf.stack([lanes, rows]))[..., None]
        if xla:  # all columns (static shapes)
            s = pair_scores(block, columns)
            later = tf.logical_and(valid_cols, iota > start + block_rows)
            later = tf.logical_and(later, tf.equal(cid_cols, block_cid))
            low, arg = first_argmin(tf.where(later, s, inf), iota, big)  # [L, r]
        else:  # only the columns >= start: the upper triangle, ~half the scores
            width = n - start
            s = pair_scores(block, tuple(c[:, :, start:] for c in columns))
            local = iota[:, :, :width]
            later = tf.logical_and(valid_cols[:, :, start:], local > block_rows)
            later = tf.logical_and(later, tf.equal(cid_cols[:, :, start:], block_cid))
            low, arg = first_argmin(tf.where(later, s, inf), local, big[:, :, :width])
            arg = arg + start  # width + start = n if none
        index = tf.reshape(b, [1, 1])
        return (
            b + 1,
            tf.tensor_scatter_nd_update(mins, index, low[tf.newaxis]),
            tf.tensor_scatter_nd_update(args, index, arg[tf.newaxis]),
        )

    blocks = tf.stack([num_blocks, lanes, rows])
    _, mins, args = tf.while_loop(
        lambda b, *_: b < num_blocks,
        body,
        (tf.constant(0, tf.int32), tf.zeros(blocks, dtype), tf.zeros(blocks, tf.int32)),
        parallel_iterations=1,
    )
    # [blocks, L, r] -> [L, blocks * r] -> the first n.
    low = tf.reshape(tf.transpose(mins, [1, 0, 2]), [lanes, -1])[:, :n]
    arg = tf.reshape(tf.transpose(args, [1, 0, 2]), [lanes, -1])[:, :n]
    return tf.where(valid, low, inf), arg


def _initial_state(sums: tf.Tensor, cid: tf.Tensor, xla: bool) -> tuple[tf.Tensor, ...]:
    """(D, rowmin, rowcnt, rowarg) of `merge_phase` for one box per slot (counts 0 or 1)."""
    valid = sums[:, :, 4] > 0
    derived = derive(*tf.unstack(sums[:, :, :4], 4, axis=2))  # [L, n] each
    rowmin, rowarg = _initial_row_minima(tf.stack(derived), valid, cid, xla)
    pen = tf.where(valid, tf.zeros_like(rowmin), tf.constant(np.inf, sums.dtype))
    return tf.stack([*derived, pen]), rowmin, tf.ones_like(rowmin), rowarg


class _Loop(NamedTuple):
    """Constants of one phase's loop (L lanes of n slots), materialized once per phase."""

    threshold: tf.Tensor  # [] merge while the lowest score is <= threshold
    cid: tf.Tensor  # [L, n] int32 class of each slot
    lane: tf.Tensor  # [L] int32 0..L-1
    last: tf.Tensor  # [] int32 n - 1
    shape: tf.Tensor  # [2] int32 (L, n)
    iota: tf.Tensor  # [L, n] int32 slot index
    big: tf.Tensor  # [L, n] int32 n
    inf: tf.Tensor  # [L, n] inf
    inf_l: tf.Tensor  # [L] inf
    fours: tf.Tensor  # [L] int32 4, the count's index in sums
    d_index: tf.Tensor  # [8L, 2] (k, lane) for k < 8: scatter indices of a slot's d entries
    d_at_j: tf.Tensor  # [L, 2] (7, lane): the penalty entry of a slot in d


def _loop_constants(rowmin: tf.Tensor, cid: tf.Tensor, threshold: tf.Tensor) -> _Loop:
    """The `_Loop` of state arrays of rowmin's [L, n] shape and dtype."""
    dtype = rowmin.dtype
    lanes = tf.shape(rowmin, out_type=tf.int32)[0]
    n = tf.shape(rowmin, out_type=tf.int32)[1]
    lane = tf.range(lanes)  # [L]
    shape = tf.stack([lanes, n])
    return _Loop(
        threshold=threshold,
        cid=cid,
        lane=lane,
        last=n - 1,
        shape=shape,
        iota=tf.broadcast_to(tf.range(n), shape),
        big=tf.fill(shape, n),
        inf=tf.fill(shape, tf.constant(np.inf, dtype)),
        inf_l=tf.fill([lanes], tf.constant(np.inf, dtype)),
        fours=tf.fill([lanes], 4),
        d_index=tf.reshape(tf.stack(tf.meshgrid(tf.range(8), lane, indexing="ij"), -1), [-1, 2]),
        d_at_j=tf.stack([tf.fill([lanes], 7), lane], axis=1),
    )


def _full(c: _Loop, x: tf.Tensor) -> tf.Tensor:
    """[L] -> [L, n]: x[l] on every slot of lane l."""
    return tf.broadcast_to(tf.expand_dims(x, 1), c.shape)


def _write(
    c: _Loop, sums: tf.Tensor, d: tf.Tensor, pending: tuple[tf.Tensor, ...]
) -> tuple[tf.Tensor, tf.Tensor]:
    """The previous step's changes of slots i and j (deferred, so that every read of the old
    sums and d precedes the write: under XLA the state is then updated in place instead of
    copied every step)."""
    li, lj, i, j, new_i, new_j, d_i, pen_j = pending
    sums = tf.tensor_scatter_nd_update(sums, tf.concat([li, lj], 0), tf.concat([new_i, new_j], 0))
    at = tf.concat([tf.tile(i, [8]), j], 0)  # slots of the 8L + L entries
    d = tf.tensor_scatter_nd_update(
        d,
        tf.concat([tf.concat([c.d_index, c.d_at_j], 0), tf.expand_dims(at, 1)], 1),
        tf.concat([tf.reshape(d_i, [-1]), pen_j], 0),
    )
    return sums, d


def _scores_of_i(
    c: _Loop,
    d_i: tf.Tensor,
    columns: list[tf.Tensor],
    pen: tf.Tensor,
    i: tf.Tensor,
    j: tf.Tensor,
    li: tf.Tensor,
    fresh: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Scores [L, n] of (the new) box i against every slot, from d before this step's change:
    slot i (itself), slot j (if merged) and other classes are masked out (inf), inactive
    slots get their inf penalty. O(n). Also returns i on every slot ([L, n])."""
    v = pair_scores(tf.unstack(tf.expand_dims(d_i, 2), 8)[:7], tuple(columns))
    i_b, j_b = _full(c, i), _full(c, j)
    other_class = tf.not_equal(c.cid, _full(c, tf.gather_nd(c.cid, li)))
    gone = tf.logical_or(
        tf.logical_or(tf.equal(c.iota, i_b), other_class),
        tf.logical_and(tf.equal(c.iota, j_b), _full(c, fresh)),
    )
    return tf.where(gone, c.inf, v + pen), i_b


def _update_queue(
    c: _Loop,
    sums: tf.Tensor,
    queue: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
    v: tf.Tensor,
    i_b: tf.Tensor,
    li: tf.Tensor,
    lj: tf.Tensor,
    running: tf.Tensor,
    fresh: tf.Tensor,
    count_i: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The queue (rowmin, rowcnt, rowarg) after box i changed, given its scores `v`."""
    rowmin, rowcnt, rowarg = queue
    # Rows k < i: their entry (k, i) changed; take it if it beats the row's entry.
    better = tf.logical_or(v < rowmin, tf.logical_and(tf.equal(v, rowmin), i_b < rowarg))
    before_i = tf.logical_and(c.iota < i_b, _full(c, running))
    take = tf.logical_and(tf.logical_and(before_i, v < c.inf), better)
    rowmin = tf.where(take, v, rowmin)
    rowarg = tf.where(take, i_b, rowarg)
    rowcnt = tf.where(take, tf.broadcast_to(count_i, c.shape), rowcnt)
    # Row i: recomputed exactly over the later slots (inf once the lane is done); row j:
    # emptied if merged. The best slot is neither i nor a merged j, so its count is the
    # one in `sums` (before this step's change).
    row_low, row_arg = first_argmin(tf.where(c.iota > i_b, v, c.inf), c.iota, c.big)
    row_low = tf.where(running, row_low, c.inf_l)
    row_cnt = tf.gather_nd(sums, tf.stack([c.lane, tf.minimum(row_arg, c.last), c.fours], 1))
    # Row j is emptied if merged; otherwise that write goes to row i too (same value),
    # so that the two never conflict, even if j = i.
    rowmin = tf.tensor_scatter_nd_update(
        rowmin,
        tf.concat([li, tf.where(tf.expand_dims(fresh, 1), lj, li)], 0),
        tf.concat([row_low, tf.where(fresh, c.inf_l, row_low)], 0),
    )
    rowcnt = tf.tensor_scatter_nd_update(rowcnt, li, row_cnt)
    rowarg = tf.tensor_scatter_nd_update(rowarg, li, row_arg)
    return rowmin, rowcnt, rowarg


def _step(c: _Loop, sums, d, rowmin, rowcnt, rowarg, low, i, left, pending):
    """One loop step in every lane: merge or refresh the top row i (see the module docstring).

    Loop state: (sums, d, rowmin, rowcnt, rowarg) as in `merge_phase`; low, i [L]: the top
    row's entry and slot; left [L]: clusters left per lane; pending: the previous step's
    changes of sums and d (`_write`).
    """
    sums, d = _write(c, sums, d, pending)
    dtype = sums.dtype
    running = low <= c.threshold  # [L]
    i = tf.minimum(i, c.last)  # [L] the top row: lowest entry, first on ties
    li = tf.stack([c.lane, i], axis=1)  # [L, 2]
    j = tf.minimum(tf.gather_nd(rowarg, li), c.last)  # [L] partner (valid if running)
    lj = tf.stack([c.lane, j], axis=1)
    s_i, s_j = tf.gather_nd(sums, li), tf.gather_nd(sums, lj)  # [L, 6]
    count_j = tf.gather_nd(sums, tf.stack([c.lane, j, c.fours], axis=1))
    # Merge j into i if the entry is fresh; otherwise leave both, only refresh row i.
    # (j > i always holds for a fresh entry; after a compaction a stale entry may point
    # past the last slot, clamped to j = i.)
    fresh = tf.logical_and(
        tf.logical_and(running, j > i), tf.equal(count_j, tf.gather_nd(rowcnt, li))
    )
    w = tf.expand_dims(tf.cast(fresh, dtype), 1)
    new_i = s_i + w * s_j  # [L, 6]
    coords, count_i, _ = tf.split(new_i, [4, 1, 1], axis=1)
    *columns, pen = tf.unstack(d, 8)  # [L, n] each
    pen_i = tf.gather_nd(pen, li)
    pen_j = tf.where(fresh, c.inf_l, tf.gather_nd(pen, lj))
    d_i = tf.stack([*derive(*tf.unstack(tf.math.divide_no_nan(coords, count_i), 4, 1)), pen_i])
    v, i_b = _scores_of_i(c, d_i, columns, pen, i, j, li, fresh)
    rowmin, rowcnt, rowarg = _update_queue(
        c, sums, (rowmin, rowcnt, rowarg), v, i_b, li, lj, running, fresh, count_i
    )
    pending = (li, lj, i, j, new_i, s_j - w * s_j, d_i, pen_j)
    left = left - tf.cast(fresh, tf.int32)
    low, i = first_argmin(rowmin, c.iota, c.big)  # the next step's top row
    return sums, d, rowmin, rowcnt, rowarg, low, i, left, pending


def merge_phase(
    sums: tf.Tensor,
    d: tf.Tensor,
    rowmin: tf.Tensor,
    rowcnt: tf.Tensor,
    rowarg: tf.Tensor,
    cid: tf.Tensor,
    threshold: tf.Tensor,
    stop: tf.Tensor,
    init: bool | tf.Tensor,
    xla: bool,
) -> tuple[tf.Tensor, ...]:
    """Greedy merge of L independent slot arrays (a lane each) in lockstep, until no pair
    scores <= threshold or every lane has <= `stop` clusters left.

    A lane holds the boxes of one class, or of several whole classes back to back (pairs of
    different classes are never scored). State (L lanes of n slots; within a class, slot
    order = key order):
        sums [L, n, 6]: per slot, the sums of its members' y0, x0, y1, x1, the member count
            and the score sum; a slot holds a cluster iff its count is > 0, its box is the
            mean (sums / count). A slot's count only grows while it is active, so it doubles
            as the version of the slot's box.
        d [8, L, n]: `derive` of each slot's box and a penalty, 0 on active slots and inf
            on the others (added to scores).
        cid [L, n] int32: the class of each slot (constant).
        rowmin, rowarg, rowcnt [L, n]: the lazy queue. (rowmin[k], rowarg[k]) is the lowest
            score of row k against a later slot and that slot, computed when the slot had
            count rowcnt[k]; the entry is fresh iff the slot still has that count, else
            rowmin[k] is only a lower bound. Invariant: (rowmin[k], rowarg[k]) <=
            (score(k, l), l) lexicographically for every active l > k, so a fresh entry at
            the top of the queue is the exact lexicographic minimum pair, and a stale one at
            the top gets refreshed (recomputed exactly) instead of merged.

    Args:
        sums, d, rowmin, rowcnt, rowarg, cid: the state; if `init`, `sums` holds one box
            per slot and d, rowmin, rowcnt, rowarg are computed here (their input values
            are ignored).
        threshold: [] float. stop: [] int32. init: bool (a [] bool tensor under XLA).
        xla: whether this runs under XLA (static shapes).

    Returns:
        The state (sums, d, rowmin, rowcnt, rowarg, cid) when the loop stops.
    """
    if isinstance(init, bool):
        if init:
            d, rowmin, rowcnt, rowarg = _initial_state(sums, cid, xla)
    else:
        d, rowmin, rowcnt, rowarg = tf.cond(
            init,
            lambda: _initial_state(sums, cid, xla),
            lambda: (d, rowmin, rowcnt, rowarg),
        )
    c = _loop_constants(rowmin, cid, threshold)

    def cond(sums, d, rowmin, rowcnt, rowarg, low, i, left, pending):
        return tf.logical_and(tf.reduce_any(low <= threshold), tf.reduce_max(left) > stop)

    # A no-op pending change: slot 0 rewritten with its own values.
    zero = tf.zeros_like(c.lane)
    l0 = tf.stack([c.lane, zero], axis=1)
    s0 = tf.gather_nd(sums, l0)
    pending = (l0, l0, zero, zero, s0, s0, d[:, :, 0], d[7, :, 0])
    left = tf.reduce_sum(tf.cast(sums[:, :, 4] > 0, tf.int32), axis=1)  # [L] clusters
    state = (sums, d, rowmin, rowcnt, rowarg, *first_argmin(rowmin, c.iota, c.big), left, pending)
    invariants = tf.nest.map_structure(lambda x: tf.TensorShape([None] * x.shape.rank), state)
    sums, d, rowmin, rowcnt, rowarg, _, _, _, pending = tf.while_loop(
        cond, lambda *s: _step(c, *s), state, shape_invariants=invariants, parallel_iterations=1
    )
    sums, d = _write(c, sums, d, pending)
    return sums, d, rowmin, rowcnt, rowarg, cid

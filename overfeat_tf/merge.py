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
Core TF ops only (graph mode, SavedModel, CPU and GPU; no py_function, no Python loop over
boxes at run time). Boxes are grouped by class into "lanes" of slots: a class of >= `_PACK`
boxes gets a lane of its own, smaller classes share lanes (whole classes back to back; pairs
across classes are never scored). Within a class, slot order is input order, i.e. tie order.
Memory is O(L * n) for the state of L lanes of n slots plus one block of initial scores
(O(`_BLOCK_SCORES`)): never an N x N matrix, not even an n x n one for one class.

A lazy priority queue keeps, for every row (slot) k, the lowest score of k against the later
slots l > k and that slot. A loop step takes the top row i (lowest entry, first on ties) and
its slot j; if that entry is still fresh (slot j unchanged since it was computed) it merges j
into i, scores the new box i against every slot (O(n), vectorized), lets the rows k < i adopt
(k, i) when it beats their entry and recomputes row i; if the entry is stale (j was merged or
absorbed something since) it only recomputes row i. Stale entries are lower bounds of their
row's true minimum, so the entry at the top is always the exact next pair. About 1.5 steps per
box: 3008 merges and 1687 refreshes for the 3150 boxes of the benchmark's top-1 set.

The loop runs in phases: once a lane has only a fraction of its slots holding clusters, they
are packed (in order) into a smaller array and the loop goes on with it, so most steps scan
far fewer than n slots.

Two ways to run it, same arithmetic in the same order, so bitwise the same results:

- XLA (`jit_compile=True`; the default, except in SavedModels): each phase is one
  `tf.function(jit_compile=True)` call, called from the surrounding graph (`tf.function` or
  eager). XLA fuses a step's element-wise work into a few loops, so a step costs little more
  than its O(n) arithmetic (~17 us at 4096 slots vs ~0.15-0.5 ms as ~150 TF ops); each lane
  gets its own loop. Static shapes: slot arrays are padded to powers of two >= `_MIN_BUCKET`
  and shrink by 4x between phases (a 3150-box class runs at 4096, 1024, then 256 slots), so
  few shapes compile: ~1-3 s each on first use, once per process and dtype.
- Plain TF (`jit_compile=False`): the graph runs op by op; a step costs ~150 small ops
  whatever n, so up to `_LANES` lanes run side by side in one loop (lockstep, one merge per
  lane per step) and phases shrink the arrays often (exact sizes, nothing to compile).

Why the default is plain TF in SavedModels: TF Serving runs XLA-compiled functions only if
started with --xla_cpu_compilation_enabled (CPU; GPU builds may lack the compiler). Functions
saved by `tf.saved_model.save` (and Keras' `ExportArchive.write_out`, which calls it) are
traced again in its save context, where `jit_compile=None` means plain TF; elsewhere, wrap the
tracing in `jit_compile_default(False)`.

Speed: `benchmarks/bench_merge.py --forward --write` times both paths against the accurate
net's forward pass on the same image, in one run; the numbers are in BENCHMARKS.md ("Merge
speed"). Both paths give the same results, bitwise (tests/test_merge.py).

GPU: untested here. Under XLA the loop is one compiled program per phase; without XLA every
op is a kernel launch: place the merge on the CPU (`with tf.device("/CPU:0")`) when serving
on GPU.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import tensorflow as tf

try:  # private TF API: whether `tf.saved_model.save` is tracing (then no XLA by default)
    from tensorflow.python.saved_model.save_context import in_save_context as _in_save_context
except ImportError:  # pragma: no cover - a TF without it: export paths set the default

    def _in_save_context() -> bool:
        return False


__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "MERGE_THRESHOLD",
    "MergeResult",
    "batched_greedy_merge",
    "greedy_merge",
    "greedy_merge_numpy",
    "jit_compile_default",
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

# Without XLA, lanes run side by side in one loop: a loop step does one merge in each, so k
# classes of n boxes take ~n steps rather than k * n (a step costs ~150 TF ops, whatever n).
# Lanes are grouped by size. Under XLA a step costs little more than its O(n) arithmetic, so
# every lane gets its own loop: no padding to the largest lane of a group.
_LANES = 8

# Compaction: a merge phase stops once every lane has at most 1 / _SHRINK (XLA: a new array
# size compiles, so seldom) or _KEEP (plain TF: cheap, so often, down to _MIN_KEEP slots) of
# its slots left, and the clusters left are packed into a smaller array for the next phase.
_SHRINK = 4
_KEEP = 0.75
_MIN_KEEP = 32

# Under XLA, slot arrays are padded to a power of two >= _MIN_BUCKET, so that few shapes
# compile (each costs ~1-3 s on first use, per dtype and process).
_MIN_BUCKET = 256

# Classes of fewer boxes than this share lanes (whole classes back to back, pairs across
# classes masked out), so that many small classes do not each cost a loop of their own.
_PACK = _MIN_BUCKET // 2


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


def _initial_row_minima(
    derived: tf.Tensor, valid: tf.Tensor, cid: tf.Tensor, xla: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per lane and row k: min over valid l > k of the same class of match_score(k, l) and
    the first such l.

    Args:
        derived: [7, L, n] the `_derive`d boxes. valid: [L, n] bool (padding = False).
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
            s = _pair_scores(block, columns)
            later = tf.logical_and(valid_cols, iota > start + block_rows)
            later = tf.logical_and(later, tf.equal(cid_cols, block_cid))
            low, arg = _first_argmin(tf.where(later, s, inf), iota, big)  # [L, r]
        else:  # only the columns >= start: the upper triangle, ~half the scores
            width = n - start
            s = _pair_scores(block, tuple(c[:, :, start:] for c in columns))
            local = iota[:, :, :width]
            later = tf.logical_and(valid_cols[:, :, start:], local > block_rows)
            later = tf.logical_and(later, tf.equal(cid_cols[:, :, start:], block_cid))
            low, arg = _first_argmin(tf.where(later, s, inf), local, big[:, :, :width])
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
    """(D, rowmin, rowcnt, rowarg) of `_merge_phase` for one box per slot (counts 0 or 1)."""
    valid = sums[:, :, 4] > 0
    derived = _derive(*tf.unstack(sums[:, :, :4], 4, axis=2))  # [L, n] each
    rowmin, rowarg = _initial_row_minima(tf.stack(derived), valid, cid, xla)
    pen = tf.where(valid, tf.zeros_like(rowmin), tf.constant(np.inf, sums.dtype))
    return tf.stack([*derived, pen]), rowmin, tf.ones_like(rowmin), rowarg


def _merge_phase(
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
        d [8, L, n]: `_derive` of each slot's box and a penalty, 0 on active slots and inf
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
    dtype = sums.dtype
    if isinstance(init, bool):
        if init:
            d, rowmin, rowcnt, rowarg = _initial_state(sums, cid, xla)
    else:
        d, rowmin, rowcnt, rowarg = tf.cond(
            init,
            lambda: _initial_state(sums, cid, xla),
            lambda: (d, rowmin, rowcnt, rowarg),
        )
    lanes = tf.shape(rowmin, out_type=tf.int32)[0]
    n = tf.shape(rowmin, out_type=tf.int32)[1]
    last = n - 1
    lane = tf.range(lanes)  # [L]
    # Loop invariants, materialized (where() with broadcast operands is slow on CPU), and
    # the step written with few ops (without XLA, each op costs ~1 us whatever its size).
    shape = tf.stack([lanes, n])
    iota = tf.broadcast_to(tf.range(n), shape)
    big = tf.fill(shape, n)
    inf = tf.fill(shape, tf.constant(np.inf, dtype))
    inf_l = tf.fill([lanes], tf.constant(np.inf, dtype))
    fours = tf.fill([lanes], 4)  # the count's index in sums
    # Scatter indices of a slot's 8 entries in d: (k, lane) for k < 8 (slot appended).
    d_index = tf.reshape(tf.stack(tf.meshgrid(tf.range(8), lane, indexing="ij"), -1), [-1, 2])
    d_at_j = tf.stack([tf.fill([lanes], 7), lane], axis=1)  # [L, 2]

    def full(x):  # [L] -> [L, n]
        return tf.broadcast_to(tf.expand_dims(x, 1), shape)

    def first_argmin(values):  # [L, n] -> [L], [L]
        return _first_argmin(values, iota, big)

    def write(sums, d, pending):
        """The previous step's changes of slots i and j (deferred, so that every read of
        the old sums and d precedes the write: under XLA the state is then updated in place
        instead of copied every step)."""
        li, lj, i, j, new_i, new_j, d_i, pen_j = pending
        sums = tf.tensor_scatter_nd_update(
            sums, tf.concat([li, lj], 0), tf.concat([new_i, new_j], 0)
        )
        at = tf.concat([tf.tile(i, [8]), j], 0)  # slots of the 8L + L entries
        d = tf.tensor_scatter_nd_update(
            d,
            tf.concat([tf.concat([d_index, d_at_j], 0), tf.expand_dims(at, 1)], 1),
            tf.concat([tf.reshape(d_i, [-1]), pen_j], 0),
        )
        return sums, d

    def step(sums, d, rowmin, rowcnt, rowarg, low, i, left, pending):
        sums, d = write(sums, d, pending)
        running = low <= threshold  # [L]
        i = tf.minimum(i, last)  # [L] the top row: lowest entry, first on ties
        li = tf.stack([lane, i], axis=1)  # [L, 2]
        j = tf.minimum(tf.gather_nd(rowarg, li), last)  # [L] partner (valid if running)
        lj = tf.stack([lane, j], axis=1)
        s_i, s_j = tf.gather_nd(sums, li), tf.gather_nd(sums, lj)  # [L, 6]
        count_j = tf.gather_nd(sums, tf.stack([lane, j, fours], axis=1))
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
        pen_j = tf.where(fresh, inf_l, tf.gather_nd(pen, lj))
        d_i = tf.stack([*_derive(*tf.unstack(tf.math.divide_no_nan(coords, count_i), 4, 1)), pen_i])

        # Scores of (the new) box i against every slot, from d before this step's change:
        # slot i (itself), slot j (if merged) and other classes are then masked out. O(n).
        v = _pair_scores(tf.unstack(tf.expand_dims(d_i, 2), 8)[:7], tuple(columns))
        i_b, j_b = full(i), full(j)
        gone = tf.logical_or(
            tf.logical_or(tf.equal(iota, i_b), tf.not_equal(cid, full(tf.gather_nd(cid, li)))),
            tf.logical_and(tf.equal(iota, j_b), full(fresh)),
        )
        v = tf.where(gone, inf, v + pen)
        # Rows k < i: their entry (k, i) changed; take it if it beats the row's entry.
        better = tf.logical_or(v < rowmin, tf.logical_and(tf.equal(v, rowmin), i_b < rowarg))
        before_i = tf.logical_and(iota < i_b, full(running))
        take = tf.logical_and(tf.logical_and(before_i, v < inf), better)
        rowmin = tf.where(take, v, rowmin)
        rowarg = tf.where(take, i_b, rowarg)
        rowcnt = tf.where(take, tf.broadcast_to(count_i, shape), rowcnt)
        # Row i: recomputed exactly over the later slots (inf once the lane is done); row j:
        # emptied if merged. The best slot is neither i nor a merged j, so its count is the
        # one in `sums` (before this step's change).
        row_low, row_arg = first_argmin(tf.where(iota > i_b, v, inf))
        row_low = tf.where(running, row_low, inf_l)
        row_cnt = tf.gather_nd(sums, tf.stack([lane, tf.minimum(row_arg, last), fours], 1))
        # Row j is emptied if merged; otherwise that write goes to row i too (same value),
        # so that the two never conflict, even if j = i.
        rowmin = tf.tensor_scatter_nd_update(
            rowmin,
            tf.concat([li, tf.where(tf.expand_dims(fresh, 1), lj, li)], 0),
            tf.concat([row_low, tf.where(fresh, inf_l, row_low)], 0),
        )
        rowcnt = tf.tensor_scatter_nd_update(rowcnt, li, row_cnt)
        rowarg = tf.tensor_scatter_nd_update(rowarg, li, row_arg)
        pending = (li, lj, i, j, new_i, s_j - w * s_j, d_i, pen_j)
        left = left - tf.cast(fresh, tf.int32)
        low, i = first_argmin(rowmin)  # the next step's top row
        return sums, d, rowmin, rowcnt, rowarg, low, i, left, pending

    def cond(sums, d, rowmin, rowcnt, rowarg, low, i, left, pending):
        return tf.logical_and(tf.reduce_any(low <= threshold), tf.reduce_max(left) > stop)

    # A no-op pending change: slot 0 rewritten with its own values.
    zero = tf.zeros_like(lane)
    l0 = tf.stack([lane, zero], axis=1)
    s0 = tf.gather_nd(sums, l0)
    pending = (l0, l0, zero, zero, s0, s0, d[:, :, 0], d[7, :, 0])
    left = tf.reduce_sum(tf.cast(sums[:, :, 4] > 0, tf.int32), axis=1)  # [L] clusters
    state = (sums, d, rowmin, rowcnt, rowarg, *first_argmin(rowmin), left, pending)
    invariants = tf.nest.map_structure(lambda x: tf.TensorShape([None] * x.shape.rank), state)
    sums, d, rowmin, rowcnt, rowarg, _, _, _, pending = tf.while_loop(
        cond, step, state, shape_invariants=invariants, parallel_iterations=1
    )
    sums, d = write(sums, d, pending)
    return sums, d, rowmin, rowcnt, rowarg, cid


# The phase compiled by XLA: once per (padded size, dtype) and process, on first use.
_xla_merge_phase = tf.function(
    functools.partial(_merge_phase, xla=True), jit_compile=True, reduce_retracing=True
)


def _bucket(n: tf.Tensor) -> tf.Tensor:
    """The XLA array size for n slots: the next power of two >= max(n, _MIN_BUCKET)."""
    x = tf.maximum(n, _MIN_BUCKET) - 1
    for shift in (1, 2, 4, 8, 16):
        x = tf.bitwise.bitwise_or(x, tf.bitwise.right_shift(x, shift))
    return x + 1


def _aligned(n: tf.Tensor) -> tf.Tensor:
    """The plain-TF array size for n slots: n rounded up to a multiple of 16 (>= 16), so that
    a row of a [k, L, size] float array is 64-byte aligned and `tf.unstack` along axis 0
    returns views instead of copies."""
    return (tf.maximum(n, 1) + 15) // 16 * 16


def _compact(state: tuple[tf.Tensor, ...], slot: tf.Tensor, size: tf.Tensor):
    """Packs the active slots of every lane (in order) into the first `size` slots.

    Ties stay in input order since slot order is kept. Queue entries are remapped to the new
    slots; a stale entry (its slot merged away or grown) is marked stale for good (count
    -1), and its slot maps to the next active one, so it stays a lower bound.
    """
    sums, d, rowmin, rowcnt, rowarg, cid = state
    count = sums[:, :, 4]
    keep = count > 0  # [L, n]
    n = tf.shape(keep, out_type=tf.int32)[1]
    order = tf.argsort(tf.cast(tf.logical_not(keep), tf.int32), axis=1, stable=True)
    order = order[:, :size]  # [L, size]: the active slots first, then inactive ones
    new_slot = tf.cumsum(tf.cast(keep, tf.int32), axis=1, exclusive=True)  # [L, n]
    arg = tf.minimum(rowarg, n - 1)
    fresh = tf.equal(rowcnt, tf.gather(count, arg, batch_dims=1))
    rowcnt = tf.where(fresh, rowcnt, -tf.ones_like(rowcnt))
    rowarg = tf.gather(new_slot, arg, batch_dims=1)

    def take(x: tf.Tensor) -> tf.Tensor:
        return tf.gather(x, order, batch_dims=1)

    d = tf.transpose(take(tf.transpose(d, [1, 2, 0])), [2, 0, 1])
    return (take(sums), d, take(rowmin), take(rowcnt), take(rowarg), take(cid)), take(slot)


def _merge_lanes(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    valid: tf.Tensor,
    cid: tf.Tensor,
    threshold: tf.Tensor,
    xla: bool,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Greedy merge of L independent box sets in lockstep.

    Lane l holds the boxes of one class, or of several whole classes back to back, in input
    order within a class, padded to a common n. The merge runs in phases: a phase stops once
    every lane has at most a fraction of its slots left (1 / _SHRINK under XLA, _KEEP
    otherwise), and the remaining clusters are packed into a smaller array for the next
    phase (their order kept), so later steps scan fewer slots. Under XLA (`xla`), array
    sizes are powers of two >= _MIN_BUCKET (`_bucket`), so that only a few shapes compile;
    otherwise they are exact.

    Args:
        boxes: [L, n, 4] yxyx. scores: [L, n]. valid: [L, n] bool, False on padding.
        cid: [L, n] int32 class of each slot.
        threshold: [] (same float dtype as the boxes). xla: compile the phases with XLA.

    Returns:
        sums [L, m, 6] (per slot: the sums of its members' y0, x0, y1, x1, the member count
        and the score sum; count 0 = no cluster) and slot [L, m] int32, the input slot of
        each (the smallest member's).
    """
    dtype = boxes.dtype
    lanes = tf.shape(valid, out_type=tf.int32)[0]
    n = tf.shape(valid, out_type=tf.int32)[1]
    fvalid = tf.cast(valid, dtype)
    sums = tf.concat(
        [boxes * fvalid[:, :, tf.newaxis], fvalid[..., tf.newaxis], (scores * fvalid)[..., None]],
        axis=2,
    )  # [L, n, 6]
    size = _bucket(n) if xla else _aligned(n)
    sums = tf.pad(sums, [[0, 0], [0, size - n], [0, 0]])
    cid = tf.pad(cid, [[0, 0], [0, size - n]])
    phase = _xla_merge_phase if xla else functools.partial(_merge_phase, xla=False)

    def stop_at(size: tf.Tensor) -> tf.Tensor:
        """When a phase of arrays of `size` slots stops: once every lane has <= this many
        clusters (0: run to the end). A stop > 0 always packs into a strictly smaller array
        (`_bucket` / `_aligned` of it < size), so that every phase makes progress."""
        if xla:
            return tf.where(size // _SHRINK >= _MIN_BUCKET, size // _SHRINK, 0)
        keep = tf.cast(tf.cast(size, tf.float32) * _KEEP, tf.int32)
        return tf.where(tf.logical_and(keep >= _MIN_KEEP, _aligned(keep) < size), keep, 0)

    # Placeholders: the first phase computes the queue from `sums` (init).
    zeros = tf.zeros([lanes, size], dtype)
    state = phase(
        sums,
        tf.zeros([8, lanes, size], dtype),
        zeros,
        zeros,
        tf.zeros([lanes, size], tf.int32),
        cid,
        threshold,
        stop_at(size),
        tf.constant(True) if xla else True,
    )
    slot = tf.broadcast_to(tf.range(size), [lanes, size])

    def cond(state, slot):
        return tf.reduce_any(state[2] <= threshold)  # some lane has a pair left to merge

    def body(state, slot):
        left = tf.reduce_max(tf.reduce_sum(tf.cast(state[0][:, :, 4] > 0, tf.int32), axis=1))
        state, slot = _compact(state, slot, _bucket(left) if xla else _aligned(left))
        size = tf.shape(slot, out_type=tf.int32)[1]
        init = tf.constant(False) if xla else False
        return phase(*state, threshold, stop_at(size), init), slot

    invariants = tf.nest.map_structure(
        lambda x: tf.TensorShape([None] * x.shape.rank), (state, slot)
    )
    state, slot = tf.while_loop(cond, body, (state, slot), shape_invariants=invariants)
    return state[0], slot


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


_JIT_DEFAULT = threading.local()


@contextlib.contextmanager
def jit_compile_default(jit_compile: bool | None) -> Iterator[None]:
    """Within this context (this thread), `greedy_merge(..., jit_compile=None)` means
    `jit_compile` (None: back to the automatic choice, see `greedy_merge`).

    Use `jit_compile_default(False)` around whatever traces a function that will be saved
    for TF Serving (e.g. `ExportArchive.write_out`): a SavedModel with XLA-compiled functions
    only runs where the XLA JIT is available (TF Serving needs --xla_cpu_compilation_enabled
    on CPU).
    """
    previous = getattr(_JIT_DEFAULT, "value", None)
    _JIT_DEFAULT.value = jit_compile
    try:
        yield
    finally:
        _JIT_DEFAULT.value = previous


def _resolve_jit_compile(jit_compile: bool | None) -> bool:
    if jit_compile is not None:
        return bool(jit_compile)
    default = getattr(_JIT_DEFAULT, "value", None)
    if default is not None:
        return bool(default)
    return not _in_save_context()


def greedy_merge(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: float | tf.Tensor = MERGE_THRESHOLD,
    max_output: int = DEFAULT_MAX_OUTPUT,
    jit_compile: bool | None = None,
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
        jit_compile: run the merge loop compiled by XLA (~10x faster on CPU; each new
            padded size compiles once per process, ~1 s). None (default): XLA, except while
            `tf.saved_model.save` traces (a SavedModel must run without the XLA JIT, e.g.
            in TF Serving) or inside `jit_compile_default(False)`. Same results either way.

    Returns:
        `MergeResult` (padded to `max_output` rows, `num_merged` valid).
    """
    _check_params(threshold, max_output)
    xla = _resolve_jit_compile(jit_compile)
    boxes, scores, classes, checks = _check_inputs(boxes, scores, classes, batched=False)
    threshold = tf.cast(threshold, boxes.dtype)
    checks.append(tf.debugging.assert_all_finite(threshold, "greedy_merge: bad threshold."))
    with tf.control_dependencies(checks):
        boxes = tf.identity(boxes)
    return MergeResult(*_greedy_merge_graph(boxes, scores, classes, threshold, max_output, xla))


@tf.function(reduce_retracing=True)
def _greedy_merge_graph(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: tf.Tensor,
    max_output: int,
    xla: bool,
) -> tuple[tf.Tensor, ...]:
    """`greedy_merge` on checked inputs, always as a graph (eager while loops are slow)."""
    lanes = 1 if xla else _LANES
    dtype = boxes.dtype
    threshold = tf.cast(threshold, dtype)
    n = tf.shape(boxes, out_type=tf.int32)[0]

    # Group the boxes by class; a stable sort keeps input order within a class, so slot order
    # within a class == input order and the merge's tie order is the input order.
    order = tf.argsort(classes, stable=True)  # [N]
    sorted_classes = tf.gather(classes, order)
    is_start = tf.concat(
        [tf.ones([tf.minimum(n, 1)], tf.bool), sorted_classes[1:] != sorted_classes[:-1]], 0
    )
    starts = tf.cast(tf.reshape(tf.where(is_start), [-1]), tf.int32)  # [U] class blocks
    sizes = tf.concat([starts[1:], tf.reshape(n, [1])], axis=0) - starts  # [U]
    # Lanes: a class of >= _PACK boxes has one to itself; smaller ones share lanes, whole
    # classes back to back (< 2 * _PACK boxes a lane; pairs across classes never merge).
    # Lanes are numbered largest classes first; lanes run in groups of `lanes` side by side.
    by_size = tf.argsort(-sizes, stable=True)  # [U] classes in lane order
    sizes_in_order = tf.gather(sizes, by_size)
    small = sizes_in_order < _PACK
    num_big = tf.reduce_sum(tf.cast(tf.logical_not(small), tf.int32))
    packed_before = tf.cumsum(tf.where(small, sizes_in_order, 0), exclusive=True)
    lane_of = tf.where(
        small, num_big + packed_before // _PACK, tf.range(tf.size(sizes), dtype=tf.int32)
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
        sums, slot = _merge_lanes(
            tf.gather(boxes, members),
            tf.gather(scores, members),
            valid,
            tf.gather(classes, members),
            threshold,
            xla,
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
    jit_compile: bool | None = None,
) -> MergeResult:
    """`greedy_merge` over a batch of images whose box sets are padded to a common N.

    Args:
        boxes: [B, N, 4] yxyx. scores: [B, N]. classes: [B, N] integer.
        num_valid: [B] int, number of valid boxes of each image (the first ones).
        threshold, max_output, jit_compile: as in `greedy_merge`.

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
        return tuple(greedy_merge(b[:k], s[:k], c[:k], threshold, max_output, jit_compile))

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

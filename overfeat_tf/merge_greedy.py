"""The greedy merge of the paper (§4.3) on lanes: phases, compaction, XLA or plain TF.

`greedy_merge_graph` is what `overfeat_tf.merge.greedy_merge` runs on checked inputs: boxes
(yxyx, any units) are grouped by class into lanes (`overfeat_tf.merge_lanes`), and each
group of lanes is merged by `_merge_lanes`, which runs the lazy-queue loop of
`overfeat_tf.merge_greedy_queue` in phases: once a lane has only a fraction of its slots
holding clusters, they are packed (in order) into a smaller array and the loop goes on with
it, so most steps scan far fewer than n slots. Core TF ops only (graph mode, SavedModel, CPU
and GPU; no py_function, no Python loop over boxes at run time).

Two ways to run it, same arithmetic in the same order, so bitwise the same results:

- XLA (`xla=True`): each phase is one `tf.function(jit_compile=True)` call, called from the
  surrounding graph. XLA fuses a step's element-wise work into a few loops, so a step costs
  little more than its O(n) arithmetic (~17 us at 4096 slots vs ~0.15-0.5 ms as ~150 TF
  ops); each lane gets its own loop. Static shapes: slot arrays are padded to powers of two
  >= `_MIN_BUCKET` and shrink by `_SHRINK` = 4x between phases (a 3150-box class runs at
  4096, 1024, then 256 slots), so few shapes compile: ~1-3 s each on first use, once per
  process and dtype.
- Plain TF (`xla=False`): the graph runs op by op; a step costs ~150 small ops whatever n,
  so up to `_LANES` lanes run side by side in one loop (lockstep, one merge per lane per
  step) and phases shrink the arrays often (exact sizes, nothing to compile).
"""

from __future__ import annotations

import functools

import tensorflow as tf

from overfeat_tf.merge_greedy_queue import merge_phase
from overfeat_tf.merge_lanes import merge_in_lanes

__all__ = ["greedy_merge_graph"]

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

# The phase compiled by XLA: once per (padded size, dtype) and process, on first use.
_xla_merge_phase = tf.function(
    functools.partial(merge_phase, xla=True), jit_compile=True, reduce_retracing=True
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


def _stop_at(size: tf.Tensor, xla: bool) -> tf.Tensor:
    """When a phase of arrays of `size` slots stops: once every lane has <= this many
    clusters (0: run to the end). A stop > 0 always packs into a strictly smaller array
    (`_bucket` / `_aligned` of it < size), so that every phase makes progress."""
    if xla:
        return tf.where(size // _SHRINK >= _MIN_BUCKET, size // _SHRINK, 0)
    keep = tf.cast(tf.cast(size, tf.float32) * _KEEP, tf.int32)
    return tf.where(tf.logical_and(keep >= _MIN_KEEP, _aligned(keep) < size), keep, 0)


def _compact(
    state: tuple[tf.Tensor, ...], slot: tf.Tensor, size: tf.Tensor
) -> tuple[tuple[tf.Tensor, ...], tf.Tensor]:
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
    """Greedy merge of L independent box sets in lockstep (a `merge_lanes.LaneMerge`).

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
    phase = _xla_merge_phase if xla else functools.partial(merge_phase, xla=False)

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
        _stop_at(size, xla),
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
        return phase(*state, threshold, _stop_at(size, xla), init), slot

    invariants = tf.nest.map_structure(
        lambda x: tf.TensorShape([None] * x.shape.rank), (state, slot)
    )
    state, slot = tf.while_loop(cond, body, (state, slot), shape_invariants=invariants)
    return state[0], slot


@tf.function(reduce_retracing=True)
def greedy_merge_graph(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: tf.Tensor,
    max_output: int,
    xla: bool,
) -> tuple[tf.Tensor, ...]:
    """`overfeat_tf.merge.greedy_merge` on checked inputs, always as a graph (eager while
    loops are slow). boxes [N, 4] yxyx, scores [N] (same float dtype), classes [N] int32,
    threshold []; xla: run the phases compiled by XLA. Returns the `MergeResult` fields."""
    threshold = tf.cast(threshold, boxes.dtype)
    return merge_in_lanes(
        boxes,
        scores,
        classes,
        threshold,
        max_output,
        functools.partial(_merge_lanes, xla=xla),
        lanes=1 if xla else _LANES,
        pack=_PACK,
    )

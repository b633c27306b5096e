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

Round-based variant (`mutual_merge`, `merge_mutual.py`; the detector's default)
----------------------------------------------------------------------------------
The same rules in few dependent loop iterations. Per class: boxes with identical
coordinates start as one cluster; then in each round every cluster finds its best partner
(the lowest match_score of the cluster means in its class, smallest key on ties, as
`first_argmin`), and every pair of clusters that are each other's best partner at a score
<= t merges, all in the same round (count-weighted mean box, scores added, the smaller key
kept); it stops after a round without merges. The lowest-scoring pair of a class is always
mutual, so each round makes the merge the sequential algorithm would make first, and more;
at the end no mutual pair scores <= t. Rounds grow about 4 per doubling of the boxes (33 for
4000 detector-like boxes, under 60 for 16000; worst case n - 1), each round vectorized over
all boxes in bounded blocks (no N x N matrix). `mutual_merge_numpy` is its exact reference;
the sequential `greedy_merge` stays as the reference of the paper's wording.

Implementation (`greedy_merge`)
-------------------------------
Core TF ops only (graph mode, SavedModel, CPU and GPU; no py_function, no Python loop over
boxes at run time). Memory O(N) plus a fixed-size block of scores: never an N x N
matrix. Modules, one job each:

- `merge_score`: `match_score` and the tie-exact argmin, shared by every merge algorithm;
  `MERGE_THRESHOLD` (how it was chosen).
- `merge_lanes`: the algorithm-independent frame: boxes grouped by class into lanes of slots
  (small classes share lanes; pairs across classes are never scored), a lane-merge function
  applied to them, the clusters ranked and padded into a `MergeResult`.
- `merge_greedy`: the greedy algorithm on lanes, in phases with compaction between them, XLA
  or plain TF; `merge_greedy_queue`: one phase, a lazy priority queue of each slot's best
  later partner (about 1.5 loop steps per box, each O(n)).
- `merge_reference`: the plain NumPy reference (`greedy_merge_numpy`, for tests).
- this module: the public API (input checks, the XLA choice, batching).

Two ways to run it, same arithmetic in the same order, so bitwise the same results:

- XLA (`jit_compile=True`; the default, except in SavedModels): each merge phase is one
  XLA-compiled call (~10x faster on CPU); a few padded array sizes compile, ~1-3 s each on
  first use, once per process and dtype.
- Plain TF (`jit_compile=False`): the graph runs op by op, several classes side by side.

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
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from overfeat_tf import merge_greedy, merge_mutual
from overfeat_tf.merge_reference import greedy_merge_numpy, match_score_numpy, mutual_merge_numpy
from overfeat_tf.merge_score import MERGE_THRESHOLD, match_score

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
    "mutual_merge",
    "mutual_merge_numpy",
]

# Default number of merged boxes kept per image (the TF Object Detection API's usual 100).
DEFAULT_MAX_OUTPUT = 100


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


def _prepared(
    name: str,
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: float | tf.Tensor,
    max_output: int,
    jit_compile: bool | None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, bool]:
    """One image's merge inputs checked (shapes, finiteness, threshold) and the XLA choice
    resolved: (boxes, scores, classes, threshold in the boxes' dtype, xla)."""
    _check_params(threshold, max_output)
    xla = _resolve_jit_compile(jit_compile)
    boxes, scores, classes, checks = _check_inputs(boxes, scores, classes, batched=False)
    threshold = tf.cast(threshold, boxes.dtype)
    checks.append(tf.debugging.assert_all_finite(threshold, f"{name}: bad threshold."))
    with tf.control_dependencies(checks):
        boxes = tf.identity(boxes)
    return boxes, scores, classes, threshold, xla


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
    boxes, scores, classes, threshold, xla = _prepared(
        "greedy_merge", boxes, scores, classes, threshold, max_output, jit_compile
    )
    return MergeResult(
        *merge_greedy.greedy_merge_graph(boxes, scores, classes, threshold, max_output, xla)
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


def mutual_merge(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: float | tf.Tensor = MERGE_THRESHOLD,
    max_output: int = DEFAULT_MAX_OUTPUT,
    jit_compile: bool | None = None,
    return_rounds: bool = False,
) -> MergeResult | tuple[MergeResult, tf.Tensor]:
    """Merge of one image's boxes in rounds of mutual best matches (`overfeat_tf.merge_mutual`).

    The greedy merge's rules (per class, `match_score` <= threshold, boxes averaged over
    their members, scores added) in few dependent loop iterations instead of one per merge:
    in each round every cluster finds its best partner of its class (lowest match_score,
    first by key on ties) and all pairs of mutual best partners at <= threshold merge at
    once; it stops after a round without merges (boxes with identical coordinates start as
    one cluster). ~30-60 rounds for 4000-16000 detector boxes (`overfeat_tf.merge_mutual`
    has the algorithm and the measurements). Core TF ops only (eager, `tf.function`,
    SavedModels; no py_function, no XLA needed). Output as `greedy_merge`'s.

    Args:
        boxes: [N, 4] yxyx boxes (pixels or normalized; float32 or float64, which sets the
            computation dtype). Must be finite.
        scores: [N] confidence of each box. classes: [N] integer class of each box.
        threshold: mutual best partners merge when their match_score is <= threshold.
        max_output: size of the padded output (Python int >= 1).
        jit_compile: score the blocks of a round with XLA-compiled kernels (one compile per
            block width, once per process). None: as `greedy_merge` (XLA, except while
            `tf.saved_model.save` traces or inside `jit_compile_default(False)`). Same
            results either way.
        return_rounds: also return the number of rounds in which some pair merged ([]
            int32; the loop runs at most one more iteration).

    Returns:
        `MergeResult` (padded to `max_output` rows, `num_merged` valid; sorted by
        accumulated score descending, ties by smallest member index); with
        `return_rounds`, `(MergeResult, rounds)`.
    """
    boxes, scores, classes, threshold, xla = _prepared(
        "mutual_merge", boxes, scores, classes, threshold, max_output, jit_compile
    )
    *fields, rounds, _ = merge_mutual.mutual_merge_graph(
        boxes, scores, classes, threshold, max_output, xla
    )
    result = MergeResult(*fields)
    return (result, rounds) if return_rounds else result

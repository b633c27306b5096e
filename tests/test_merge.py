"""Tests of overfeat_tf.merge: the TF greedy merge against the plain NumPy reference, and the
properties of the paper's algorithm (§4.3)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf import merge as M
from overfeat_tf import merge_greedy as G
from overfeat_tf.merge import (
    MERGE_THRESHOLD,
    batched_greedy_merge,
    greedy_merge,
    greedy_merge_numpy,
    match_score,
    match_score_numpy,
)

MAX_OUT = 400


def _signature(dtype):
    return [
        tf.TensorSpec([None, 4], dtype),
        tf.TensorSpec([None], dtype),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([], dtype),
    ]


# Traced once each, with an unknown number of boxes.
MERGE = {
    dtype: tf.function(
        lambda b, s, c, t: greedy_merge(b, s, c, t, max_output=MAX_OUT),
        input_signature=_signature(dtype),
    )
    for dtype in (tf.float32, tf.float64)
}


def run_tf(boxes, scores, classes, threshold, dtype=tf.float64):
    """TF merge -> NumPy (boxes, scores, classes, num_members) of the valid rows."""
    np_dtype = dtype.as_numpy_dtype
    r = MERGE[dtype](
        np.asarray(boxes, np_dtype).reshape(-1, 4),
        np.asarray(scores, np_dtype),
        np.asarray(classes, np.int32),
        np.asarray(threshold, np_dtype),
    )
    k = int(r.num_merged)
    assert np.all(r.scores.numpy()[k:] == 0) and np.all(r.boxes.numpy()[k:] == 0)
    return (
        r.boxes.numpy()[:k],
        r.scores.numpy()[:k],
        r.classes.numpy()[:k],
        r.num_members.numpy()[:k],
    )


def canonical(result):
    """Order-independent form: rows sorted by class, score, then coordinates."""
    boxes, scores, classes, members = result
    order = np.lexsort((*boxes.T[::-1], -scores, classes))
    return boxes[order], scores[order], classes[order], members[order]


def assert_same(tf_result, np_result, atol):
    got, want = canonical(tf_result), canonical(np_result)
    assert len(got[1]) == len(want[1]), f"{len(got[1])} merged boxes, reference {len(want[1])}"
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_allclose(got[1], want[1], atol=atol)
    np.testing.assert_allclose(got[0], want[0], atol=atol)


# --- box sets ----------------------------------------------------------------------------------
def random_set(rng, n, num_classes):
    centre = rng.uniform(0, 100, (n, 2))
    size = rng.uniform(5, 40, (n, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    return boxes, rng.uniform(0, 1, n), rng.integers(0, num_classes, n)


def clustered_set(rng, n, num_classes, num_objects=4, noise=0.1, outliers=0.2):
    """Boxes around a few objects (regressor noise) plus scattered false positives."""
    centre = rng.uniform(20, 80, (num_objects, 2))
    side = rng.uniform(10, 40, (num_objects, 2))
    obj = rng.integers(0, num_objects, n)
    boxes = np.concatenate([centre[obj] - side[obj] / 2, centre[obj] + side[obj] / 2], 1)
    boxes += rng.normal(0, noise, (n, 4)) * np.tile(side[obj], 2)
    wild = rng.uniform(size=n) < outliers
    boxes[wild] = random_set(rng, int(wild.sum()), 1)[0]
    scores = np.where(wild, rng.uniform(0, 0.2, n), rng.uniform(0.3, 1.0, n))
    return boxes, scores, (obj + rng.integers(0, 2, n)) % num_classes


# --- match_score -------------------------------------------------------------------------------
def test_match_score_definition():
    a = np.array([0.0, 0.0, 10.0, 10.0])
    assert match_score(a, a).numpy() == 0.0
    for d in (0.1, 0.25, 0.5, 0.9):  # same-size boxes shifted by d sides: d + 2d / (1 + d)
        b = a + np.array([0, 10 * d, 0, 10 * d])
        assert match_score(a, b).numpy() == pytest.approx(d + 2 * d / (1 + d), rel=1e-6)
    nested = np.array([2.5, 2.5, 7.5, 7.5])  # concentric, side ratio 2: 1 - 1/4
    assert match_score(a, nested).numpy() == pytest.approx(0.75)
    disjoint = a + np.array([0, 10, 0, 10])  # touching: IoU 0, centres one side apart
    assert match_score(a, disjoint).numpy() == pytest.approx(2.0)
    # Scale invariance and symmetry (bitwise).
    assert match_score(a * 7, b * 7).numpy() == pytest.approx(match_score(a, b).numpy())


def test_match_score_matches_numpy_and_is_symmetric(rng):
    a, _, _ = random_set(rng, 50, 1)
    b, _, _ = random_set(rng, 40, 1)
    got = match_score(a[:, None], b[None]).numpy()
    np.testing.assert_allclose(got, match_score_numpy(a[:, None], b[None]), rtol=1e-12)
    np.testing.assert_array_equal(got, match_score(b[None], a[:, None]).numpy())
    assert np.all(match_score_numpy(a[:, None], b[None])[got == 0] == 0)


# --- TF == NumPy reference ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.5, MERGE_THRESHOLD, 1.0])
def test_tf_matches_numpy_on_random_sets(seed, threshold):
    rng = np.random.default_rng(seed)
    boxes, scores, classes = random_set(rng, 90, num_classes=3)
    want = greedy_merge_numpy(boxes, scores, classes, threshold)
    assert_same(run_tf(boxes, scores, classes, threshold), want, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_tf_matches_numpy_on_clustered_sets(seed):
    rng = np.random.default_rng(100 + seed)
    boxes, scores, classes = clustered_set(rng, 120, num_classes=3)
    want = greedy_merge_numpy(boxes, scores, classes, MERGE_THRESHOLD)
    assert len(want[1]) < 60  # the clusters did merge
    got = run_tf(boxes, scores, classes, MERGE_THRESHOLD)
    assert_same(got, want, atol=1e-9)
    # float64 follows the reference's order exactly, not just as a set.
    np.testing.assert_allclose(got[1], want[1], atol=1e-9)
    np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.parametrize("seed", range(2))
def test_tf_float32_matches_numpy(seed):
    rng = np.random.default_rng(200 + seed)
    boxes, scores, classes = clustered_set(rng, 100, num_classes=2)
    want = greedy_merge_numpy(boxes, scores, classes, MERGE_THRESHOLD)
    got = run_tf(boxes, scores, classes, MERGE_THRESHOLD, dtype=tf.float32)
    assert_same(got, want, atol=2e-4)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_many_small_classes_share_lanes(rng, jit_compile):
    # 300 boxes over ~100 classes (ids negative and sparse too): lanes hold many classes.
    boxes, scores, _ = clustered_set(rng, 300, 1, noise=0.05)
    classes = rng.integers(-50, 50, 300) * 3
    classes[:60] = 7  # and one big class
    want = greedy_merge_numpy(boxes, scores, classes, 1.0)
    got = _merge_fn(jit_compile)(boxes, scores, classes, 1.0)
    assert_same(got, want, atol=1e-9)


def test_many_classes_use_several_lane_groups(rng):
    num_classes = 2 * G._LANES + 3  # several groups, some lanes padded
    boxes, scores, _ = clustered_set(rng, 160, 1)
    classes = rng.integers(0, num_classes, 160) * 7  # sparse, unordered class ids
    classes[:40] = 35  # one big class
    want = greedy_merge_numpy(boxes, scores, classes, MERGE_THRESHOLD)
    assert_same(run_tf(boxes, scores, classes, MERGE_THRESHOLD), want, atol=1e-9)


# --- properties --------------------------------------------------------------------------------
def test_identical_boxes_merge_first():
    boxes = np.array([[0, 0, 10, 10], [0, 1, 10, 11], [0, 0, 10, 10]], float)
    # At t = 0 only the score-0 pair (the identical boxes 0 and 2) may merge.
    got = run_tf(boxes, [0.2, 0.3, 0.4], [0, 0, 0], 0.0)
    np.testing.assert_allclose(got[1], [0.6, 0.3])
    np.testing.assert_array_equal(got[3], [2, 1])
    np.testing.assert_allclose(got[0][0], [0, 0, 10, 10])


def test_far_apart_boxes_never_merge():
    grid = np.array([[y, x] for y in range(0, 100, 20) for x in range(0, 100, 20)], float)
    boxes = np.concatenate([grid, grid + 10], 1)  # 25 disjoint (touching at most) boxes
    got = run_tf(boxes, np.ones(25), np.zeros(25), 1.0)
    assert len(got[1]) == 25 and np.all(got[3] == 1)


def test_different_classes_never_merge():
    boxes = np.tile([[0.0, 0, 10, 10]], (4, 1))
    got = run_tf(boxes, [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], MERGE_THRESHOLD)
    np.testing.assert_allclose(got[1], [0.6, 0.4])
    np.testing.assert_array_equal(got[2], [1, 0])


def test_confidence_accumulates_and_boxes_average(rng):
    boxes, scores, classes = clustered_set(rng, 150, num_classes=2)
    got = run_tf(boxes, scores, classes, MERGE_THRESHOLD)
    assert got[1].sum() == pytest.approx(scores.sum())
    assert got[3].sum() == 150
    assert np.all(np.diff(got[1]) <= 0)  # sorted by accumulated score
    # Two boxes: the merge is their mean, its score their sum.
    pair = np.array([[0, 0, 10, 10], [1, 1, 11, 12]], float)
    got = run_tf(pair, [0.25, 0.5], [3, 3], 1.0)
    np.testing.assert_allclose(got[0], [[0.5, 0.5, 10.5, 11]])
    np.testing.assert_allclose(got[1], [0.75])


def test_empty_and_single_box():
    got = run_tf(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), MERGE_THRESHOLD)
    assert all(len(x) == 0 for x in got)
    got = run_tf([[1.0, 2.0, 3.0, 4.0]], [0.5], [7], MERGE_THRESHOLD)
    np.testing.assert_allclose(got[0], [[1, 2, 3, 4]])
    assert got[1].tolist() == [0.5] and got[2].tolist() == [7] and got[3].tolist() == [1]
    for want, result in zip(
        (0, 1),
        (
            greedy_merge_numpy(np.zeros((0, 4)), [], []),
            greedy_merge_numpy([[1, 2, 3, 4]], [0.5], [7]),
        ),
        strict=True,
    ):
        assert len(result[1]) == want


def test_ties_are_deterministic_and_follow_input_order():
    # Three boxes in a row, equally spaced: score(0, 1) == score(1, 2) exactly, so the
    # lexicographically first pair (0, 1) merges; the mean then no longer matches box 2.
    boxes = np.array([[0, 0, 10, 10], [0, 4, 10, 14], [0, 8, 10, 18]], float)
    s01 = match_score(boxes[0], boxes[1]).numpy()
    assert s01 == match_score(boxes[1], boxes[2]).numpy()
    threshold = float(s01)
    got = run_tf(boxes, [0.25, 0.25, 0.5], [0, 0, 0], threshold)
    want = greedy_merge_numpy(boxes, [0.25, 0.25, 0.5], [0, 0, 0], threshold)
    np.testing.assert_allclose(got[0], [[0, 2, 10, 12], [0, 8, 10, 18]])
    np.testing.assert_allclose(got[0], want[0])
    # Equal accumulated scores come out by earliest input box; repeated runs agree.
    np.testing.assert_allclose(got[1], [0.5, 0.5])
    again = run_tf(boxes, [0.25, 0.25, 0.5], [0, 0, 0], threshold)
    for a, b in zip(got, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # Many identical boxes: a fully tied problem.
    dup = np.tile([[0.0, 0, 5, 5]], (9, 1))
    got = run_tf(dup, np.full(9, 0.5), np.zeros(9), 0.0)
    assert got[3].tolist() == [9] and got[1].tolist() == [4.5]


def test_max_output_keeps_the_best_and_pads(rng):
    boxes, scores, classes = random_set(rng, 40, 2)
    full = run_tf(boxes, scores, classes, 0.3)
    r = greedy_merge(boxes.astype("f4"), scores.astype("f4"), classes, 0.3, max_output=5)
    assert r.boxes.shape == (5, 4) and int(r.num_merged) == 5
    np.testing.assert_allclose(r.scores.numpy(), full[1][:5], rtol=1e-5)
    r = greedy_merge(
        boxes[:2].astype("f4"), scores[:2].astype("f4"), classes[:2], 0.3, max_output=5
    )
    assert int(r.num_merged) == 2 and np.all(r.num_members.numpy()[2:] == 0)


def test_batched_matches_per_image(rng):
    sets = [clustered_set(rng, n, 2) for n in (30, 12, 0)]
    boxes = np.zeros((3, 30, 4), np.float32)
    scores = np.zeros((3, 30), np.float32)
    classes = np.zeros((3, 30), np.int32)
    for k, (b, s, c) in enumerate(sets):
        boxes[k, : len(b)], scores[k, : len(b)], classes[k, : len(b)] = b, s, c
    r = batched_greedy_merge(boxes, scores, classes, [30, 12, 0], MERGE_THRESHOLD, 16)
    assert r.boxes.shape == (3, 16, 4) and r.num_merged.shape == (3,)
    for k, (b, s, c) in enumerate(sets):
        one = greedy_merge(b.astype("f4"), s.astype("f4"), c, MERGE_THRESHOLD, 16)
        for x, y in zip(r, one, strict=True):
            np.testing.assert_allclose(x[k].numpy(), y.numpy(), rtol=1e-6)


def test_graph_mode_unknown_n_and_saved_model(tmp_path, rng):
    module = tf.Module()
    module.merge = MERGE[tf.float32]
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    for n in (0, 1, 25):
        boxes, scores, classes = clustered_set(rng, n, 2)
        args = (
            boxes.astype("f4"),
            scores.astype("f4"),
            classes.astype("i4"),
            np.float32(MERGE_THRESHOLD),
        )
        want = MERGE[tf.float32](*args)
        got = loaded.merge(*args)
        for x, y in zip(got, want, strict=True):
            np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_no_python_ops_in_graph():
    graph_def = MERGE[tf.float32].get_concrete_function().graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for f in graph_def.library.function:
        types |= {node.op for node in f.node_def}
    assert "While" in types or "StatelessWhile" in types
    assert not types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


def test_bad_input_raises():
    box = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="max_output"):
        greedy_merge(box, [1.0, 1.0], [0, 0], max_output=0)
    with pytest.raises(ValueError, match="integer"):
        greedy_merge(box, [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="last dimension of 4"):
        greedy_merge(np.zeros((2, 3)), [1.0, 1.0], [0, 0])
    with pytest.raises(ValueError, match="finite"):
        greedy_merge(box, [1.0, 1.0], [0, 0], threshold=float("nan"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="number of boxes"):
        MERGE[tf.float32](box, np.ones(3, np.float32), np.zeros(2, np.int32), np.float32(0.5))
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
        MERGE[tf.float32](
            box + np.inf, np.ones(2, np.float32), np.zeros(2, np.int32), np.float32(0.5)
        )
    with pytest.raises(ValueError, match="same number"):
        greedy_merge_numpy(box, [1.0], [0, 0])


# --- XLA and plain-TF paths, compaction --------------------------------------------------------
def _merge_fn(jit_compile, dtype=tf.float64):
    """A fresh trace of `greedy_merge` (so that patched module constants take effect)."""
    graph = tf.function(G.greedy_merge_graph.python_function, reduce_retracing=True)

    def run(boxes, scores, classes, threshold):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(G, "greedy_merge_graph", graph)
            np_dtype = dtype.as_numpy_dtype
            r = greedy_merge(
                np.asarray(boxes, np_dtype),
                np.asarray(scores, np_dtype),
                np.asarray(classes, np.int32),
                threshold,
                MAX_OUT,
                jit_compile=jit_compile,
            )
        k = int(r.num_merged)
        return tuple(x.numpy()[:k] for x in r[:4])

    return run


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compaction_and_shared_lanes_keep_results(monkeypatch, jit_compile):
    # Tiny arrays and frequent compaction (the clusters left are packed many times), and
    # small classes sharing lanes.
    monkeypatch.setattr(G, "_MIN_BUCKET", 32)
    monkeypatch.setattr(G, "_SHRINK", 2)
    monkeypatch.setattr(G, "_MIN_KEEP", 2)
    monkeypatch.setattr(G, "_PACK", 12)
    run = _merge_fn(jit_compile)
    seeds = range(6) if not jit_compile else range(2)
    for seed in seeds:
        rng = np.random.default_rng(300 + seed)
        boxes, scores, classes = clustered_set(rng, 110, num_classes=2, outliers=0.4)
        # Two big classes and a few small ones (some share a lane).
        classes[rng.permutation(110)[:30]] = rng.integers(2, 7, 30)
        for threshold in (MERGE_THRESHOLD, 1.0):
            want = greedy_merge_numpy(boxes, scores, classes, threshold)
            got = run(boxes, scores, classes, threshold)
            assert_same(got, want, atol=1e-9)
            np.testing.assert_array_equal(got[3], want[3])  # same order, too


def test_xla_and_plain_tf_agree_bitwise(rng):
    # The benchmark's kind of set, float32: the two paths must not differ even in the last bit.
    boxes, scores, classes = clustered_set(rng, 700, num_classes=3, noise=0.05)
    args = (boxes.astype("f4"), scores.astype("f4"), classes.astype("i4"), MERGE_THRESHOLD)
    with_xla = greedy_merge(*args, max_output=MAX_OUT, jit_compile=True)
    without = greedy_merge(*args, max_output=MAX_OUT, jit_compile=False)
    assert int(with_xla.num_merged) < 350
    for x, y in zip(with_xla, without, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def _uses_xla(concrete_function) -> bool:
    graph_def = concrete_function.graph.as_graph_def()
    functions = graph_def.library.function
    return any(f.attr["_XlaMustCompile"].b for f in functions)


def test_jit_compile_default_and_saved_model_without_xla(tmp_path, rng):
    signature = _signature(tf.float32)

    def merge(b, s, c, t):
        return greedy_merge(b, s, c, t, max_output=MAX_OUT)

    assert _uses_xla(tf.function(merge, input_signature=signature).get_concrete_function())
    with M.jit_compile_default(False):
        plain = tf.function(merge, input_signature=signature).get_concrete_function()
        # An explicit argument wins over the context.
        forced = tf.function(
            lambda b, s, c, t: greedy_merge(b, s, c, t, MAX_OUT, jit_compile=True),
            input_signature=signature,
        ).get_concrete_function()
    assert not _uses_xla(plain) and _uses_xla(forced)
    # Traced by tf.saved_model.save: no XLA in the SavedModel (TF Serving may lack the JIT).
    module = tf.Module()
    module.merge = tf.function(merge, input_signature=signature)
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    assert not _uses_xla(loaded.merge.get_concrete_function())
    boxes, scores, classes = clustered_set(rng, 60, 2)
    args = (
        boxes.astype("f4"),
        scores.astype("f4"),
        classes.astype("i4"),
        np.float32(MERGE_THRESHOLD),
    )
    for x, y in zip(loaded.merge(*args), MERGE[tf.float32](*args), strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.parametrize("n", [60, 100, 300])
def test_plain_tf_phases_always_make_progress(n):
    # Default constants: lanes of these sizes shrink through 64 -> 48 slots, where packing
    # into `_aligned(keep)` slots once gave the same array size again (a loop without end).
    rng = np.random.default_rng(n)
    boxes, scores, _ = clustered_set(rng, n, 1, num_objects=2, noise=0.02, outliers=0.05)
    classes = np.zeros(n, np.int32)
    want = greedy_merge_numpy(boxes, scores, classes, MERGE_THRESHOLD)
    got = _merge_fn(False)(boxes, scores, classes, MERGE_THRESHOLD)
    assert len(want[0]) < n // 4  # many merges, so several phases ran
    assert_same(got, want, atol=1e-9)

"""Tests of the mutual-best-match merge (overfeat_tf.merge_mutual, `merge.mutual_merge`): the TF
implementation against its NumPy reference, its invariants, the ways to run it (eager,
tf.function, XLA blocks, SavedModel), its round count and its agreement with the greedy merge."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf import merge as M
from overfeat_tf import merge_mutual as MM
from overfeat_tf.merge import (
    MERGE_THRESHOLD,
    greedy_merge,
    match_score_numpy,
    mutual_merge,
    mutual_merge_numpy,
)

MAX_OUT = 400


def _signature(dtype):
    return [
        tf.TensorSpec([None, 4], dtype),
        tf.TensorSpec([None], dtype),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([], dtype),
    ]


def _traced(jit_compile, dtype=tf.float64, max_output=MAX_OUT):
    """`mutual_merge` in a tf.function with an unknown number of boxes, returning rounds."""
    return tf.function(
        lambda b, s, c, t: mutual_merge(b, s, c, t, max_output, jit_compile, return_rounds=True),
        input_signature=_signature(dtype),
    )


MERGE = {(dtype, xla): _traced(xla, dtype) for dtype in (tf.float32, tf.float64) for xla in (0, 1)}


def run_tf(boxes, scores, classes, threshold=MERGE_THRESHOLD, dtype=tf.float64, xla=False):
    """TF merge -> (NumPy (boxes, scores, classes, num_members) of the valid rows, rounds)."""
    np_dtype = dtype.as_numpy_dtype
    r, rounds = MERGE[dtype, bool(xla)](
        np.asarray(boxes, np_dtype).reshape(-1, 4),
        np.asarray(scores, np_dtype),
        np.asarray(classes, np.int32),
        np.asarray(threshold, np_dtype),
    )
    k = int(r.num_merged)
    assert np.all(r.scores.numpy()[k:] == 0) and np.all(r.boxes.numpy()[k:] == 0)
    assert np.all(r.num_members.numpy()[k:] == 0)
    rows = (r.boxes.numpy()[:k], r.scores.numpy()[:k], r.classes.numpy()[:k])
    return (*rows, r.num_members.numpy()[:k]), int(rounds)


def assert_same(got, want, atol):
    """Same merged boxes in the same order (score descending, ties by smallest member)."""
    assert len(got[1]) == len(want[1]), f"{len(got[1])} merged boxes, reference {len(want[1])}"
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_allclose(got[1], want[1], atol=atol)
    np.testing.assert_allclose(got[0], want[0], atol=atol)


def check_against_reference(boxes, scores, classes, threshold=MERGE_THRESHOLD, xla=False):
    want, want_rounds = mutual_merge_numpy(boxes, scores, classes, threshold, return_rounds=True)
    got, rounds = run_tf(boxes, scores, classes, threshold, xla=xla)
    assert_same(got, want, atol=1e-9)
    assert rounds == want_rounds
    return want, rounds


# --- box sets ----------------------------------------------------------------------------------
def random_set(rng, n, num_classes):
    centre = rng.uniform(0, 100, (n, 2))
    size = rng.uniform(5, 40, (n, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    return boxes, rng.uniform(0, 1, n), rng.integers(0, num_classes, n)


def detector_set(seed, n, num_classes=3, num_objects=4, noise=0.1, false_positives=0.25):
    """Like a detector's dense windows: a few objects (several classes), hundreds of jittered
    boxes each (regressor noise `noise` x the object side, some predicted in another class),
    plus scattered low-confidence false positives. yxyx pixels of a 480 x 640 image."""
    rng = np.random.default_rng(seed)
    image = np.array([480.0, 640.0])
    side = rng.uniform(0.15, 0.6, (num_objects, 1)) * 480
    side = side * np.sqrt(rng.uniform(0.6, 1.6, (num_objects, 2)))
    centre = rng.uniform(side / 2, image - side / 2)
    n_fp = int(n * false_positives)
    obj = rng.integers(0, num_objects, n - n_fp)
    boxes = np.concatenate([centre[obj] - side[obj] / 2, centre[obj] + side[obj] / 2], 1)
    boxes += rng.normal(0, noise, boxes.shape) * np.tile(side[obj], 2)
    classes = rng.integers(0, num_classes, num_objects)[obj]
    other = rng.uniform(size=len(obj)) < 0.2
    classes = np.where(other, rng.integers(0, num_classes, len(obj)), classes)
    fp_centre = rng.uniform(0, image, (n_fp, 2))
    fp_side = rng.uniform(20, 160, (n_fp, 2))
    boxes = np.concatenate([boxes, np.concatenate([fp_centre - fp_side, fp_centre + fp_side], 1)])
    scores = np.concatenate([rng.uniform(0.3, 0.95, len(obj)), rng.uniform(0, 0.2, n_fp)])
    classes = np.concatenate([classes, rng.integers(0, num_classes, n_fp)])
    perm = rng.permutation(n)
    return boxes[perm], scores[perm], classes[perm].astype(np.int32)


# --- TF == NumPy reference ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("threshold", [0.5, MERGE_THRESHOLD, 1.0])
def test_tf_matches_numpy_on_random_sets(seed, threshold):
    boxes, scores, classes = random_set(np.random.default_rng(seed), 90, num_classes=3)
    check_against_reference(boxes, scores, classes, threshold)


@pytest.mark.parametrize("seed", range(3))
def test_tf_matches_numpy_on_detector_sets(seed):
    boxes, scores, classes = detector_set(seed, 300)
    want, rounds = check_against_reference(boxes, scores, classes)
    assert len(want[1]) < 150 and rounds >= 5  # clusters did merge, over several rounds


@pytest.mark.parametrize("seed", range(2))
def test_tf_float32_matches_numpy(seed):
    boxes, scores, classes = detector_set(10 + seed, 200, num_classes=2)
    want = mutual_merge_numpy(boxes, scores, classes)
    got, _ = run_tf(boxes, scores, classes, dtype=tf.float32)
    assert_same(got, want, atol=2e-3 * 480)  # pixel boxes, float32 means and sums


def test_xla_blocks_give_the_same_results(rng):
    boxes, scores, classes = detector_set(3, 250)
    got_plain = run_tf(boxes, scores, classes)
    got_xla = run_tf(boxes, scores, classes, xla=True)
    for x, y in zip(got_plain[0], got_xla[0], strict=True):
        np.testing.assert_array_equal(x, y)
    assert got_plain[1] == got_xla[1]


@pytest.mark.parametrize("xla", [False, True])
def test_many_blocks_and_classes_spanning_blocks(monkeypatch, xla):
    # Tiny blocks: every round runs many blocks, rows of a block span several classes and
    # column minima are accumulated across blocks.
    monkeypatch.setattr(MM, "_BLOCK_SCORES", 300)
    monkeypatch.setattr(MM, "_ROWS", 16)
    graph = tf.function(MM.mutual_merge_graph.python_function)
    boxes, scores, classes = detector_set(4, 250, num_classes=5)
    classes[:40] = 9  # one more class, small classes around it
    *fields, rounds, blocks = graph(boxes, scores, classes, tf.constant(0.7, tf.float64), 300, xla)
    want, want_rounds = mutual_merge_numpy(boxes, scores, classes, 0.7, return_rounds=True)
    k = int(fields[4])
    got = (fields[0][:k].numpy(), fields[1][:k].numpy(), fields[2][:k], fields[3][:k])
    assert_same(got, want, atol=1e-9)
    assert int(rounds) == want_rounds and int(blocks) > 10 * want_rounds


# --- adversarial inputs ------------------------------------------------------------------------
def test_empty_and_single_box():
    for n in (0, 1):
        boxes = np.tile([[0.0, 0.0, 10.0, 10.0]], (n, 1))
        (b, s, _, k), rounds = run_tf(boxes, np.full(n, 0.5), np.zeros(n))
        assert len(s) == n and rounds == 0
        if n:
            np.testing.assert_array_equal(b[0], [0, 0, 10, 10])
            assert s[0] == 0.5 and k[0] == 1
    r = mutual_merge(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))
    assert int(r.num_merged) == 0 and r.boxes.shape == (M.DEFAULT_MAX_OUTPUT, 4)


def test_ties_follow_input_order():
    # Box 1 lies exactly between boxes 0 and 2 (equal scores 0.2 + 0.4 / 1.2): it pairs with
    # box 0 (the smaller index), then box 2 stays alone (score 0.76 to their mean); the
    # reversed input order pairs it with the other box.
    row = np.array([[0.0, 0, 10, 10], [0, 2, 10, 12], [0, 4, 10, 14]])
    for order in ([0, 1, 2], [2, 1, 0]):
        check_against_reference(row[order], np.array([0.1, 0.2, 0.3])[order], [0, 0, 0], 0.6)
    (b, s, _, k), rounds = run_tf(row, [0.1, 0.2, 0.3], [0, 0, 0], 0.6)
    assert rounds == 1
    np.testing.assert_allclose(s, [0.3, 0.3])  # {0, 1} and {2}: equal scores, key order
    np.testing.assert_array_equal(k, [2, 1])
    np.testing.assert_allclose(b[0], [0, 1, 10, 11])
    (b, s, _, k), _ = run_tf(row[::-1], [0.3, 0.2, 0.1], [0, 0, 0], 0.6)
    np.testing.assert_allclose(s, [0.5, 0.1])
    np.testing.assert_allclose(b[0], [0, 3, 10, 13])


def test_identical_boxes_start_as_one_cluster():
    # k copies would otherwise take k - 1 rounds: on ties every copy's best partner is the
    # first one. -0.0 and 0.0 are the same coordinate.
    boxes = np.tile([[0.0, 0, 10, 10]], (5, 1))
    boxes[3, 0] = -0.0
    (b, s, _, k), rounds = run_tf(boxes, [0.1, 0.2, 0.3, 0.4, 0.5], np.zeros(5))
    assert rounds == 0 and k.tolist() == [5]
    np.testing.assert_allclose(s, [1.5])
    np.testing.assert_array_equal(b, [[0, 0, 10, 10]])
    # Boxes of an object larger than the image, clipped to it: many exact copies.
    rng = np.random.default_rng(1)
    side, centre = np.array([576.0, 768.0]), np.array([240.0, 320.0])
    boxes = np.concatenate([centre - side / 2, centre + side / 2]) + rng.normal(
        0, 0.1, (300, 4)
    ) * np.tile(side, 2)
    boxes = np.clip(boxes, 0, [480, 640, 480, 640])
    assert len(np.unique(boxes, axis=0)) < 200
    _, rounds = check_against_reference(boxes, rng.uniform(0.3, 1, 300), np.zeros(300))
    assert rounds < 40  # all one cluster in the end (31 rounds)


def test_single_class_and_many_classes(rng):
    boxes, scores, _ = detector_set(5, 300, num_classes=1)
    check_against_reference(boxes, scores, np.zeros(300, np.int32))
    classes = rng.integers(-60, 60, 300) * 3  # ~120 sparse, negative and unordered classes
    classes[:50] = 7
    check_against_reference(boxes, scores, classes, xla=True)


def test_different_classes_never_merge():
    boxes = np.tile([[0.0, 0, 10, 10]], (4, 1))
    (_, s, c, _), _ = run_tf(boxes, [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    np.testing.assert_allclose(s, [0.6, 0.4])
    np.testing.assert_array_equal(c, [1, 0])


def test_far_apart_boxes_never_merge():
    grid = np.array([[y, x] for y in range(0, 100, 20) for x in range(0, 100, 20)], float)
    boxes = np.concatenate([grid, grid + 10], 1)  # 25 disjoint (touching at most) boxes
    (_, s, _, k), rounds = run_tf(boxes, np.ones(25), np.zeros(25), 1.0)
    assert len(s) == 25 and np.all(k == 1) and rounds == 0


def test_max_output_keeps_the_best_and_pads():
    boxes, scores, classes = detector_set(6, 300)
    want = mutual_merge_numpy(boxes, scores, classes)
    assert len(want[1]) > 10
    r = mutual_merge(boxes, scores, classes, max_output=10, jit_compile=False)
    assert int(r.num_merged) == 10 and r.scores.shape == (10,)
    np.testing.assert_allclose(r.scores.numpy(), want[1][:10], rtol=1e-6)
    np.testing.assert_array_equal(r.num_members.numpy(), want[3][:10])


def test_no_mutual_pair_left_and_mass_conserved():
    boxes, scores, classes = detector_set(7, 500)
    (b, s, c, k), _ = run_tf(boxes, scores, classes)
    assert k.sum() == 500
    np.testing.assert_allclose(s.sum(), scores.sum(), rtol=1e-12)
    for cls in np.unique(c):
        means = b[c == cls]
        if len(means) < 2:
            continue
        pair = match_score_numpy(means[:, None], means[None])
        np.fill_diagonal(pair, np.inf)
        best = np.argmin(pair, 1)
        mutual = best[best] == np.arange(len(best))
        assert not np.any(mutual & (pair[np.arange(len(best)), best] <= MERGE_THRESHOLD))


# --- ways to run it ----------------------------------------------------------------------------
def test_eager_function_xla_and_saved_model_agree(tmp_path):
    module = tf.Module()
    module.merge = tf.function(
        lambda b, s, c, t: tuple(mutual_merge(b, s, c, t, 50, return_rounds=True)[0]),
        input_signature=_signature(tf.float32),
    )
    tf.saved_model.save(module, str(tmp_path))  # traced in the save context: plain TF
    loaded = tf.saved_model.load(str(tmp_path))
    functions = loaded.merge.get_concrete_function().graph.as_graph_def().library.function
    assert not any(f.attr["_XlaMustCompile"].b for f in functions)
    traced = tf.function(lambda *a: mutual_merge(*a, max_output=50, jit_compile=False))
    for n in (0, 1, 2, 37, 150):
        boxes, scores, classes = detector_set(n, n)
        args = (boxes.astype("f4"), scores.astype("f4"), classes, np.float32(MERGE_THRESHOLD))
        want = mutual_merge(*args, max_output=50, jit_compile=False)  # eager
        for got in (
            traced(*args),
            mutual_merge(*args, max_output=50, jit_compile=True),
            loaded.merge(*args),
        ):
            for x, y in zip(got, want, strict=True):
                np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_no_python_ops_in_graph():
    graph_def = MERGE[tf.float32, False].get_concrete_function().graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for f in graph_def.library.function:
        types |= {node.op for node in f.node_def}
    assert "While" in types or "StatelessWhile" in types
    assert not types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


def test_bad_input_raises():
    box = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="max_output"):
        mutual_merge(box, [1.0, 1.0], [0, 0], max_output=0)
    with pytest.raises(ValueError, match="integer"):
        mutual_merge(box, [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        mutual_merge(box, [1.0, 1.0], [0, 0], threshold=float("inf"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="number of boxes"):
        mutual_merge(box, [1.0, 1.0, 1.0], [0, 0])
    with pytest.raises(ValueError, match="same number"):
        mutual_merge_numpy(box, [1.0], [0, 0])


# --- rounds and agreement with the greedy merge ------------------------------------------------
def test_rounds_stay_few_for_4000_detector_boxes():
    boxes, scores, classes = detector_set(0, 4000, num_classes=3, num_objects=5)
    result, rounds = mutual_merge(
        boxes.astype("f4"), scores.astype("f4"), classes, jit_compile=False, return_rounds=True
    )
    assert 10 <= int(rounds) <= 63  # the loop runs rounds + 1 <= 64 iterations
    assert int(tf.reduce_sum(result.num_members)) < 4000  # the top 100 hold merged boxes


def test_close_to_the_greedy_merge_on_detector_sets():
    # The merges happen in another order, so the clusters may differ at their edges; the
    # objects' clusters (the top-scoring ones) must agree: similar boxes and score mass.
    for seed in range(2):
        boxes, scores, classes = detector_set(20 + seed, 600, num_objects=3)
        args = (boxes, scores, classes, MERGE_THRESHOLD, 20)
        mutual = mutual_merge(*args, jit_compile=False)
        greedy = greedy_merge(*args, jit_compile=False)
        assert int(mutual.num_merged) == int(greedy.num_merged) == 20
        for k in range(3):  # each of the top 3 greedy boxes has a mutual twin
            twin = (mutual.classes.numpy() == greedy.classes.numpy()[k]) & (
                match_score_numpy(mutual.boxes.numpy(), greedy.boxes.numpy()[k]) < 0.1
            )
            assert twin.any()
            ratio = mutual.scores.numpy()[twin].max() / greedy.scores.numpy()[k]
            assert 0.8 < ratio < 1.25, ratio

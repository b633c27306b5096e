"""Tests of overfeat_tf.ops.merge (the box merge of the paper, §4.3, in rounds of mutual best
matches) and of the merge decoder: the TF merge against its NumPy reference (eager,
tf.function, tf.data, XLA, SavedModel), the score's box convention, the loop iterations and
the agreement with the paper's one-pair-per-step rule."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf.models.decoders import BoxMergeDecoder, GreedyMergeDecoder
from overfeat_tf.ops import merge as M
from overfeat_tf.ops.merge import MERGE_THRESHOLD, match_score, merge_boxes, mutual_merge
from tests.merge_reference import (
    _pair_scores,
    _sequential_merge_numpy_slow,
    match_score_numpy,
    mutual_merge_numpy,
    sequential_merge_numpy,
)

MAX_OUT = 400


def _signature(dtype):
    return [
        tf.TensorSpec([None, 4], dtype),
        tf.TensorSpec([None], dtype),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([], dtype),
    ]


def _traced(jit_compile, dtype):
    """`merge_boxes` in a tf.function with an unknown number of boxes, returning iterations."""
    return tf.function(
        lambda b, s, c, t: merge_boxes(b, s, c, t, MAX_OUT, jit_compile, return_iterations=True),
        input_signature=_signature(dtype),
    )


MERGE = {(dtype, xla): _traced(xla, dtype) for dtype in (tf.float32, tf.float64) for xla in (0, 1)}


def run_tf(boxes, scores, classes, threshold=MERGE_THRESHOLD, dtype=tf.float64, xla=False):
    """TF merge -> (NumPy (boxes, scores, classes, num_members) of the valid rows, iterations)."""
    np_dtype = dtype.as_numpy_dtype
    r, iterations = MERGE[dtype, bool(xla)](
        np.asarray(boxes, np_dtype).reshape(-1, 4),
        np.asarray(scores, np_dtype),
        np.asarray(classes, np.int32),
        np.asarray(threshold, np_dtype),
    )
    k = int(r.num_merged)
    assert np.all(r.scores.numpy()[k:] == 0) and np.all(r.boxes.numpy()[k:] == 0)
    assert np.all(r.num_members.numpy()[k:] == 0)
    rows = (r.boxes.numpy()[:k], r.scores.numpy()[:k], r.classes.numpy()[:k])
    return (*rows, r.num_members.numpy()[:k]), int(iterations)


def assert_same(got, want, atol):
    """Same merged boxes in the same order (score descending, ties by smallest member)."""
    assert len(got[1]) == len(want[1]), f"{len(got[1])} merged boxes, reference {len(want[1])}"
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_allclose(got[1], want[1], atol=atol)
    np.testing.assert_allclose(got[0], want[0], atol=atol)


def expected_iterations(want, rounds):
    """Loop iterations of one-block rounds: the rounds that merged, plus the last one that
    merged nothing (run only while >= 2 clusters are left)."""
    return rounds + (len(want[1]) >= 2)


def check_against_reference(boxes, scores, classes, threshold=MERGE_THRESHOLD, xla=False):
    want, rounds = mutual_merge_numpy(boxes, scores, classes, threshold, return_rounds=True)
    got, iterations = run_tf(boxes, scores, classes, threshold, xla=xla)
    assert_same(got, want, atol=1e-9)
    assert iterations == expected_iterations(want, rounds)
    return want, rounds


# --- box sets (yxyx pixels) --------------------------------------------------------------------
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


# --- match_score and the box convention --------------------------------------------------------
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
    degenerate = np.array([5.0, 5.0, 5.0, 5.0])  # zero area: large but finite
    assert np.isfinite(match_score(a, degenerate).numpy())


def test_match_score_matches_numpy_and_is_symmetric(rng):
    a, _, _ = random_set(rng, 50, 1)
    b, _, _ = random_set(rng, 40, 1)
    got = match_score(a[:, None], b[None]).numpy()
    np.testing.assert_allclose(got, match_score_numpy(a[:, None], b[None]), rtol=1e-12)
    np.testing.assert_array_equal(got, match_score(b[None], a[:, None]).numpy())


def test_match_score_is_invariant_to_a_uniform_scale_only(rng):
    a, _, _ = random_set(rng, 30, 1)
    b, _, _ = random_set(rng, 30, 1)
    want = match_score(a, b).numpy()
    for s in (1 / 640, 7.0):
        np.testing.assert_allclose(match_score(a * s, b * s).numpy(), want, rtol=1e-9)
    per_axis = np.array([1 / 300, 1 / 900, 1 / 300, 1 / 900])
    assert np.abs(match_score(a * per_axis, b * per_axis).numpy() - want).max() > 0.05


def test_normalized_coordinates_change_the_scores():
    # A 300 x 900 (H x W) image, two 100 x 100 px boxes: the score in pixels vs in
    # coordinates normalized by H and W (same IoU, but the centre distance is measured in
    # different units per axis).
    hw = np.array([300.0, 900.0, 300.0, 900.0])
    a = np.array([100.0, 100.0, 200.0, 200.0])
    cases = {(0, 30): (0.762, 0.635), (25, 0): (0.650, 0.833)}  # (dy, dx) px: pixels, normalized
    for (dy, dx), (pixels, normalized) in cases.items():
        b = a + np.array([dy, dx, dy, dx])
        assert match_score(a, b).numpy() == pytest.approx(pixels, abs=5e-4)
        assert match_score(a / hw, b / hw).numpy() == pytest.approx(normalized, abs=5e-4)
    # So at t = 0.7 the horizontal pair merges only normalized, the vertical one only in pixels.
    for boxes, merged in (
        (np.stack([a, a + np.array([0, 30, 0, 30])]), (2, 1)),
        (np.stack([a, a + np.array([25, 0, 25, 0])]), (1, 2)),
    ):
        for units, count in zip((1.0, hw), merged, strict=True):
            r = merge_boxes(boxes / units, [0.5, 0.5], [0, 0])
            assert int(r.num_merged) == count


# --- TF == NumPy reference ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("threshold", [0.5, MERGE_THRESHOLD, 1.0])
def test_tf_matches_numpy_on_random_sets(seed, threshold):
    boxes, scores, classes = random_set(np.random.default_rng(seed), 90, num_classes=3)
    check_against_reference(boxes, scores, classes, threshold)


@pytest.mark.parametrize("seed", range(3))
def test_tf_matches_numpy_on_detector_sets(seed):
    boxes, scores, classes = detector_set(seed, 300)
    want, rounds = check_against_reference(boxes, scores, classes)
    assert len(want[1]) < 150 and rounds >= 5  # clusters did merge, over several rounds


def test_tf_float32_matches_numpy():
    boxes, scores, classes = detector_set(10, 200, num_classes=2)
    want = mutual_merge_numpy(boxes, scores, classes)
    got, _ = run_tf(boxes, scores, classes, dtype=tf.float32)
    assert_same(got, want, atol=2e-3 * 480)  # pixel boxes, float32 means and sums


def test_xla_gives_the_same_results():
    boxes, scores, classes = detector_set(3, 250)
    plain, xla = run_tf(boxes, scores, classes), run_tf(boxes, scores, classes, xla=True)
    for x, y in zip(plain[0], xla[0], strict=True):
        np.testing.assert_array_equal(x, y)
    assert plain[1] == xla[1]


@pytest.mark.parametrize("xla", [False, True])
def test_row_blocks_give_the_same_results(monkeypatch, xla):
    # A tiny score budget: the first rounds are scored in many row blocks (an inner loop).
    monkeypatch.setattr(M, "BLOCK_SCORES", 2000)
    graph = _fresh_graph()
    boxes, scores, classes = detector_set(4, 250, num_classes=5)
    threshold = tf.constant(MERGE_THRESHOLD, tf.float64)
    result, iterations = graph(boxes, scores, classes, threshold, MAX_OUT, xla)
    want, rounds = mutual_merge_numpy(boxes, scores, classes, return_rounds=True)
    k = int(result.num_merged)
    got = tuple(x[:k].numpy() for x in result[:4])
    assert_same(got, want, atol=1e-9)
    assert int(iterations) > expected_iterations(want, rounds) + 10  # the blocks count


def _fresh_graph():
    """`merge._merge_graph` traced anew (after a monkeypatch of TILE or BLOCK_SCORES)."""
    return tf.function(M._merge_graph.python_function, autograph=False)


# `match_score` in a graph, as the merge computes it: Grappler's constant folding turns
# `... - iou + 1.0` into `... - (iou - 1.0)`, which can differ from eager by an ulp.
graph_score = tf.function(match_score, autograph=False, reduce_retracing=True)


def _dense_partners(boxes, group, live, key, threshold, score=match_score):
    """Each live slot's best partner by scoring every pair of its class with `score`,
    among the partners at <= threshold: (low, arg), inf and S if none; ties: the smallest
    key."""
    s = len(group)
    pair = score(boxes[:, None], boxes[None]).numpy()
    pair[~(live[:, None] & live[None] & (group[:, None] == group[None]))] = np.inf
    np.fill_diagonal(pair, np.inf)
    pair[pair > threshold] = np.inf
    low = pair.min(axis=1)
    arg = np.full(s, s)
    for p in np.flatnonzero(np.isfinite(low)):
        at = np.flatnonzero(pair[p] == low[p])
        arg[p] = at[np.argmin(key[at])]
    return low, arg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edges_and_partners_after_every_round_equal_scoring_all_pairs(seed):
    # After every round: the edges are exactly the pairs of live slots of a class scoring
    # <= t (each pair once, with its score), and each slot's best partner is
    # what scoring every pair gives. Boxes on a 10 px grid: many equal scores (ties by key).
    boxes, scores, classes = detector_set(seed, 300, num_classes=3)
    boxes = np.round(boxes / 10) * 10
    threshold = tf.constant(MERGE_THRESHOLD, tf.float64)
    sums, key, cls, group = M._initial_clusters(*(tf.constant(x) for x in (boxes, scores, classes)))
    sums, alive, layout = M._slots(sums, key, cls, group, tf.size(classes))
    *edges, _ = M._first_edges(M._terms(sums), alive, threshold, layout, False)
    state = (sums, alive, tuple(edges), *M._partners(edges, layout))
    slot_group = np.repeat(layout.tile_group.numpy(), M.TILE)
    keys = layout.key.numpy()
    rounds = 0
    while True:
        sums, alive, edges, low, arg = (x.numpy() if tf.is_tensor(x) else x for x in state)
        means = M._terms(tf.constant(sums))[:, :4].numpy()
        want_low, want_arg = _dense_partners(means, slot_group, alive, keys, MERGE_THRESHOLD)
        np.testing.assert_array_equal(low, want_low)
        np.testing.assert_array_equal(arg, want_arg)
        rows, cols, found = (x.numpy() for x in edges)
        pair = M.match_score(means[:, None], means[None]).numpy()
        np.fill_diagonal(pair, np.inf)
        same = alive[:, None] & alive[None] & (slot_group[:, None] == slot_group[None])
        want = np.triu(same & (pair <= MERGE_THRESHOLD))
        found_pairs = {(min(r, c), max(r, c)) for r, c in zip(rows, cols, strict=True)}
        assert len(rows) == want.sum() and found_pairs == set(zip(*np.nonzero(want), strict=True))
        np.testing.assert_array_equal(found, pair[rows, cols])
        *state, merged, _ = M._round(*state, threshold, layout, False)
        rounds += 1
        if int(merged) == 0:
            break
    assert rounds > 5


def test_best_partner_ties_go_to_the_smallest_key_not_the_first_slot():
    # Box 1 lies exactly between boxes 0 and 2 (equal scores). Slots follow the centres'
    # Z-order (box 0 left of box 2, so in an earlier slot), but a tie goes to the smaller
    # key: box 1 pairs with box 2 when box 2 comes first in the input.
    row = np.array([[0.0, 0, 10, 10], [0, 2, 10, 12], [0, 4, 10, 14]])
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0], [1, 0, 2]):
        want, _ = check_against_reference(
            row[order], np.array([0.1, 0.2, 0.4])[order], [0] * 3, 0.6
        )
        first = 2 * int(order.index(2) < order.index(0))  # of boxes 0 and 2, the earlier
        assert any(np.allclose(box, (row[1] + row[first]) / 2) for box in want[0])
    edges = (
        tf.constant([0, 0, 1, 2]),
        tf.constant([1, 2, 0, 0]),
        tf.constant([0.5, 0.5, 0.5, 0.5]),
    )
    layout = M._Layout(
        key=tf.constant([4, 7, 2, -1]),
        cls=tf.zeros([4], tf.int32),
        tile_group=tf.zeros([1], tf.int32),
        slot_of_key=tf.constant([-1, -1, 2, -1, 0, -1, -1, 1]),
    )
    low, arg = M._partners(edges, layout)
    assert arg.numpy().tolist() == [2, 0, 0, 4] and low.numpy()[3] == np.inf


def dominant_set(seed, n, num_classes, share):
    """`detector_set` boxes, a `share` of them in class 0, the rest spread over the others."""
    boxes, scores, _ = detector_set(seed, n, num_classes=1, num_objects=6)
    rng = np.random.default_rng(seed)
    classes = np.where(rng.uniform(size=n) < share, 0, rng.integers(1, num_classes, n))
    return boxes, scores, classes.astype(np.int32)


@pytest.mark.parametrize(
    ("num_classes", "share"), [(2, 0.95), (8, 0.7), (60, 0.0), (300, 0.0), (40, 0.5)]
)
def test_many_classes_and_one_dominant_class(num_classes, share):
    boxes, scores, classes = dominant_set(num_classes, 380, num_classes, share)
    want, rounds = check_against_reference(boxes, scores, classes)
    assert rounds >= (1 if num_classes > 100 else 3) and len(want[1]) < 380


@pytest.mark.parametrize("tile", [1, 2, 5])
def test_any_tile_size_gives_the_same_results(monkeypatch, tile):
    # Small tiles: many tiles and blocks, most pairs of tiles skipped as too far apart;
    # with TILE = 1 the tiles' test is the per-pair bound itself.
    monkeypatch.setattr(M, "TILE", tile)
    graph = _fresh_graph()
    boxes, scores, classes = detector_set(11, 250, num_classes=4)
    for threshold in (0.3, MERGE_THRESHOLD, 1.5):
        result, iterations = graph(
            boxes, scores, classes, tf.constant(threshold, tf.float64), MAX_OUT, False
        )
        want, rounds = mutual_merge_numpy(boxes, scores, classes, threshold, return_rounds=True)
        k = int(result.num_merged)
        assert_same(tuple(x[:k].numpy() for x in result[:4]), want, atol=1e-9)
        assert int(iterations) == expected_iterations(want, rounds)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_pairs_scoring_exactly_the_threshold_merge(monkeypatch, dtype):
    # The blocks skipped must hold no pair scoring <= t, float rounding included: pairs of
    # boxes of many sizes, offsets and positions (far from the origin too), each alone in
    # its class and in a tile of its own (TILE = 1: the skip test is the per-pair bound),
    # with t = their score exactly: every pair merges; with t one float lower none does.
    monkeypatch.setattr(M, "TILE", 1)
    graph = _fresh_graph()
    rng = np.random.default_rng(5)
    n = 400
    np_dtype = dtype.as_numpy_dtype
    side = np.exp(rng.uniform(np.log(1e-3), np.log(1e4), (n, 2)))
    corner = rng.uniform(-1e4, 1e4, (n, 2)) * (rng.uniform(size=(n, 1)) < 0.5)
    shift = side * rng.uniform(-0.6, 0.6, (n, 2)) * rng.uniform(size=(n, 1))
    a = np.concatenate([corner, corner + side], 1).astype(np_dtype)
    b = np.concatenate([corner + shift, corner + shift + side * rng.uniform(0.7, 1.3, (n, 2))], 1)
    b = b.astype(np_dtype)
    score = graph_score(a, b).numpy()
    boxes = np.stack([a, b], 1).reshape(-1, 4)
    classes = np.repeat(np.arange(n), 2).astype(np.int32)
    ones = np.ones(2 * n, np_dtype)
    for t in np.unique(score)[:: max(1, n // 40)]:
        pick = np.repeat(score <= t, 2)
        args = (boxes[pick], ones[pick], classes[pick])
        merged = graph(*args, tf.constant(t, dtype), 2 * n, False)[0]
        assert int(merged.num_merged) == int(pick.sum()) - int((score <= t).sum())
        below = np.nextafter(t, -np.inf, dtype=np_dtype)
        exact = np.repeat(score == t, 2)
        merged = graph(
            boxes[exact], ones[exact], classes[exact], tf.constant(below, dtype), 2 * n, False
        )[0]
        assert int(merged.num_merged) == int(exact.sum())


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 2.5, 6.0])
def test_thresholds_outside_the_usual_range(threshold):
    # t <= 0 merges identical boxes only (they start as one cluster): nothing; a large t
    # widens the blocks' reach to whole classes.
    boxes, scores, classes = detector_set(12, 200, num_classes=2)
    want, _ = check_against_reference(boxes, scores, classes, threshold)
    assert (len(want[1]) == 200) == (threshold <= 0)


def _dense_rounds_float32(boxes, scores, classes, threshold):
    """The rounds as the merge defines them, scoring EVERY pair of a class each round with
    `match_score` (bitwise the merge's score) and accumulating in float32 as the merge does
    (sums p + q, means = sums / count): (boxes, scores, classes, members) in output order.
    For boxes without exact copies (each starts as its own cluster)."""
    sums = np.concatenate([boxes, np.ones((len(boxes), 1)), scores[:, None]], 1).astype(np.float32)
    key = np.arange(len(boxes))
    alive = np.ones(len(boxes), bool)
    while True:
        live = np.flatnonzero(alive)
        means = sums[live, :4] / sums[live, 4:5]
        low, arg = _dense_partners(
            means, classes[live], np.ones(len(live), bool), key[live], threshold, graph_score
        )
        merged = 0
        for p, q in enumerate(arg):
            if (
                q < len(live)
                and arg[q] == p
                and key[live[p]] < key[live[q]]
                and low[p] <= threshold
            ):
                sums[live[p]] = sums[live[p]] + sums[live[q]]
                alive[live[q]] = False
                merged += 1
        if merged == 0 or alive.sum() < 2:
            break
    live = np.flatnonzero(alive)
    order = sorted(live, key=lambda i: (-sums[i, 5], key[i]))
    out = sums[order]
    return out[:, :4] / out[:, 4:5], out[:, 5], classes[order], out[:, 4].astype(np.int32)


@pytest.mark.parametrize("seed", range(3))
def test_float32_outputs_bitwise_equal_scoring_every_pair(seed):
    # Bitwise, not to a tolerance: skipping the pairs that cannot merge changes nothing.
    boxes, scores, classes = detector_set(40 + seed, 500, num_classes=1 + seed * 3)
    boxes, scores = boxes.astype(np.float32), scores.astype(np.float32)
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    want = _dense_rounds_float32(boxes, scores, classes, np.float32(MERGE_THRESHOLD))
    got, _ = run_tf(boxes, scores, classes, dtype=tf.float32)
    for x, y in zip(got, want, strict=True):
        np.testing.assert_array_equal(x, y)


# --- particular inputs -------------------------------------------------------------------------
def test_empty_and_single_box():
    for n in (0, 1):
        boxes = np.tile([[0.0, 0.0, 10.0, 10.0]], (n, 1))
        (b, s, _, k), iterations = run_tf(boxes, np.full(n, 0.5), np.zeros(n))
        assert len(s) == n and iterations == 0
        if n:
            np.testing.assert_array_equal(b[0], [0, 0, 10, 10])
            assert s[0] == 0.5 and k[0] == 1
    r = merge_boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))
    assert int(r.num_merged) == 0 and r.boxes.shape == (M.DEFAULT_MAX_OUTPUT, 4)


def test_ties_follow_input_order():
    # Box 1 lies exactly between boxes 0 and 2 (equal scores): it pairs with box 0 (the
    # smaller index), then box 2 stays alone; reversed, it pairs with the other box.
    row = np.array([[0.0, 0, 10, 10], [0, 2, 10, 12], [0, 4, 10, 14]])
    for order in ([0, 1, 2], [2, 1, 0]):
        check_against_reference(row[order], np.array([0.1, 0.2, 0.3])[order], [0, 0, 0], 0.6)
    (b, s, _, k), iterations = run_tf(row, [0.1, 0.2, 0.3], [0, 0, 0], 0.6)
    assert iterations == 2  # one round merges, the next finds nothing
    np.testing.assert_allclose(s, [0.3, 0.3])  # {0, 1} and {2}: equal scores, key order
    np.testing.assert_array_equal(k, [2, 1])
    np.testing.assert_allclose(b[0], [0, 1, 10, 11])


def test_identical_boxes_start_as_one_cluster():
    boxes = np.tile([[0.0, 0, 10, 10]], (5, 1))
    boxes[3, 0] = -0.0  # -0.0 and 0.0 are the same coordinate
    (b, s, _, k), iterations = run_tf(boxes, [0.1, 0.2, 0.3, 0.4, 0.5], np.zeros(5))
    assert iterations == 0 and k.tolist() == [5]
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
    check_against_reference(boxes, rng.uniform(0.3, 1, 300), np.zeros(300))


def test_one_class_and_many_classes(rng):
    boxes, scores, _ = detector_set(5, 300, num_classes=1)
    check_against_reference(boxes, scores, np.zeros(300, np.int32))
    classes = rng.integers(-60, 60, 300) * 3  # ~120 sparse, negative and unordered classes
    classes[:50] = 7
    check_against_reference(boxes, scores, classes)
    check_against_reference(boxes, scores, classes, xla=True)


def test_different_classes_never_merge():
    boxes = np.tile([[0.0, 0, 10, 10]], (4, 1))
    (_, s, c, _), _ = run_tf(boxes, [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    np.testing.assert_allclose(s, [0.6, 0.4])
    np.testing.assert_array_equal(c, [1, 0])


def test_far_apart_boxes_never_merge():
    grid = np.array([[y, x] for y in range(0, 100, 20) for x in range(0, 100, 20)], float)
    boxes = np.concatenate([grid, grid + 10], 1)  # 25 disjoint (touching at most) boxes
    (_, s, _, k), iterations = run_tf(boxes, np.ones(25), np.zeros(25), 1.0)
    assert len(s) == 25 and np.all(k == 1) and iterations == 1


def test_max_output_keeps_the_best_and_pads():
    boxes, scores, classes = detector_set(6, 300)
    want = mutual_merge_numpy(boxes, scores, classes)
    assert len(want[1]) > 10
    r = merge_boxes(boxes, scores, classes, max_output=10)
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
def test_eager_function_data_xla_and_saved_model_agree(tmp_path):
    module = tf.Module()
    module.merge = tf.function(
        lambda b, s, c, t: tuple(merge_boxes(b, s, c, t, 50)),
        input_signature=_signature(tf.float32),
    )
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    functions = loaded.merge.get_concrete_function().graph.as_graph_def().library.function
    assert not any(f.attr["_XlaMustCompile"].b for f in functions)
    traced = tf.function(lambda *a: merge_boxes(*a, max_output=50))
    for n in (0, 1, 2, 37, 150):
        boxes, scores, classes = detector_set(n, n)
        args = (boxes.astype("f4"), scores.astype("f4"), classes, np.float32(MERGE_THRESHOLD))
        want = merge_boxes(*args, max_output=50)  # eager
        data = tf.data.Dataset.from_tensors(args).map(lambda *a: tuple(merge_boxes(*a, 50)))
        for got in (
            traced(*args),
            next(iter(data)),
            merge_boxes(*args, max_output=50, jit_compile=True),
            loaded.merge(*args),
        ):
            for x, y in zip(got, want, strict=True):
                np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_no_python_ops_in_graph():
    graph_def = MERGE[tf.float32, False].get_concrete_function().graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for f in graph_def.library.function:
        types |= {node.op for node in f.node_def}
        assert not f.attr["_XlaMustCompile"].b
    assert "While" in types or "StatelessWhile" in types
    assert not types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


def test_bad_input_raises():
    box = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="max_output"):
        merge_boxes(box, [1.0, 1.0], [0, 0], max_output=0)
    with pytest.raises(ValueError, match="integer"):
        merge_boxes(box, [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        merge_boxes(box, [1.0, 1.0], [0, 0], threshold=float("inf"))
    with pytest.raises(ValueError, match="jit_compile"):
        merge_boxes(box, [1.0, 1.0], [0, 0], jit_compile=None)
    with pytest.raises(ValueError, match="last dimension"):
        merge_boxes(np.zeros((2, 3)), [1.0, 1.0], [0, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="number of boxes"):
        merge_boxes(box, [1.0, 1.0, 1.0], [0, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
        merge_boxes(box + np.nan, [1.0, 1.0], [0, 0])
    with pytest.raises(ValueError, match="same number"):
        mutual_merge_numpy(box, [1.0], [0, 0])


# --- iterations, and agreement with the one-pair-per-step rule ---------------------------------
def test_iterations_stay_few_for_4000_clustered_boxes():
    # ~10 objects of 3 classes, hundreds of jittered boxes each, 25% scattered false positives.
    boxes, scores, classes = detector_set(0, 4000, num_classes=3, num_objects=10)
    result, iterations = mutual_merge(
        boxes.astype("f4"), scores.astype("f4"), classes, return_iterations=True
    )
    assert 10 <= int(iterations) <= 64  # inner (row block) loops included: one block a round
    assert int(tf.reduce_sum(result.num_members)) < 4000  # the top 100 hold merged boxes


def test_close_to_the_sequential_rule_on_detector_sets():
    # The merges happen in another order, so the clusters may differ at their edges; the
    # objects' clusters (the top-scoring ones) must agree: similar boxes and score mass.
    for seed in range(2):
        boxes, scores, classes = detector_set(20 + seed, 400, num_objects=3)
        rounds = merge_boxes(boxes, scores, classes, max_output=20)
        seq_boxes, seq_scores, seq_classes, _ = sequential_merge_numpy(boxes, scores, classes)
        assert int(rounds.num_merged) == 20 and len(seq_scores) >= 20
        for k in range(3):  # each of the top 3 sequential boxes has a rounds twin
            twin = (rounds.classes.numpy() == seq_classes[k]) & (
                match_score_numpy(rounds.boxes.numpy(), seq_boxes[k]) < 0.1
            )
            assert twin.any()
            ratio = rounds.scores.numpy()[twin].max() / seq_scores[k]
            assert 0.8 < ratio < 1.25, ratio


# --- the fast sequential reference == the direct one (every pair rescored every step) ------
def assert_identical(got, want):
    for x, y in zip(got, want, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_fast_pair_scores_equal_match_score_bitwise():
    rng = np.random.default_rng(3)
    for quantized in (False, True):
        a = rng.uniform(-50, 150, (2000, 4))
        a = np.round(a / 10) * 10 if quantized else a
        a[::7, 2] = a[::7, 0]  # zero height
        a[::11] = -0.0  # a point at the origin, negative zeros
        a[::13, 3] = a[::13, 1] - 5  # negative width
        a[::17, 1] = np.nan
        b = a[rng.permutation(len(a))]
        for x, y in ((a, b), (a[:40, None], b[None, :50])):
            with np.errstate(invalid="ignore"):
                want = match_score_numpy(x, y)
                got = _pair_scores(x, y)
            np.testing.assert_array_equal(got, np.where(np.isnan(want), -np.inf, want))


@pytest.mark.parametrize("seed", range(12))
def test_fast_sequential_equals_the_direct_rule_on_random_sets(seed):
    rng = np.random.default_rng(seed)
    for threshold in (0.0, 0.3, MERGE_THRESHOLD, 1.0, 2.5):
        boxes, scores, classes = random_set(rng, int(rng.integers(0, 90)), 1 + seed % 4)
        if seed % 2:  # a 5 px grid: many equal scores and identical boxes
            boxes = np.round(boxes / 5) * 5
        want = _sequential_merge_numpy_slow(boxes, scores, classes, threshold)
        assert_identical(sequential_merge_numpy(boxes, scores, classes, threshold), want)


@pytest.mark.parametrize("seed", range(4))
def test_fast_sequential_equals_the_direct_rule_on_detector_sets(seed):
    boxes, scores, classes = detector_set(30 + seed, 250, num_classes=1 + seed % 3)
    for threshold in (0.5, MERGE_THRESHOLD, 1.0):
        want = _sequential_merge_numpy_slow(boxes, scores, classes, threshold)
        assert_identical(sequential_merge_numpy(boxes, scores, classes, threshold), want)
    assert len(want[1]) < 150  # clusters did merge


def test_fast_sequential_equals_the_direct_rule_on_ties_and_copies():
    # Equidistant rows of boxes (equal scores everywhere), exact copies, sparse classes,
    # equal input scores (equal sums: the output order falls back to the keys).
    row = np.array([[0.0, 2 * k, 10, 10 + 2 * k] for k in range(12)])
    cases = [
        (row, np.full(12, 0.5), np.zeros(12, np.int32)),
        (row[::-1], np.full(12, 0.5), np.zeros(12, np.int32)),
        (np.tile(row[:3], (5, 1)), np.full(15, 0.25), np.arange(15) % 2 * 7 - 3),
        (np.tile([[0.0, -0.0, 10, 10]], (6, 1)), np.ones(6), np.zeros(6, np.int64)),
        (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int32)),
        (row[:1], np.ones(1), np.array([4])),
    ]
    grid = np.array([[y, x] for y in range(0, 40, 4) for x in range(0, 40, 4)], float)
    cases.append((np.concatenate([grid, grid + 8], 1), np.ones(100), np.arange(100) % 3))
    for boxes, scores, classes in cases:
        for threshold in (0.3, MERGE_THRESHOLD, 1.2):
            want = _sequential_merge_numpy_slow(boxes, scores, classes, threshold)
            assert_identical(sequential_merge_numpy(boxes, scores, classes, threshold), want)


def test_fast_sequential_handles_4000_clustered_boxes():
    boxes, scores, classes = detector_set(0, 4000, num_classes=3, num_objects=10)
    b, s, c, k = sequential_merge_numpy(boxes, scores, classes)
    assert k.sum() == 4000 and len(s) < 1000
    np.testing.assert_allclose(s.sum(), scores.sum(), rtol=1e-12)
    for cls in np.unique(c):  # at the end no pair of a class scores <= t
        means = b[c == cls]
        pair = match_score_numpy(means[:, None], means[None])
        np.fill_diagonal(pair, np.inf)
        assert pair.min() > MERGE_THRESHOLD


# --- the decoder -------------------------------------------------------------------------------
def test_decoder_equals_the_merge_and_round_trips():
    boxes, scores, classes = detector_set(8, 120)
    decoder = BoxMergeDecoder(0.6, 12, jit_compile=True)
    out = decoder(boxes.astype("f4"), scores.astype("f4"), classes)
    want = merge_boxes(boxes.astype("f4"), scores.astype("f4"), classes, 0.6, 12)
    np.testing.assert_array_equal(out["detection_boxes"], want.boxes)
    assert int(out["num_detections"]) == int(want.num_merged)
    config = decoder.get_config()
    assert {
        "merge_threshold": 0.6,
        "max_detections": 12,
        "jit_compile": True,
    }.items() <= config.items()
    assert "algorithm" not in config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decoder))
    assert type(restored) is BoxMergeDecoder and restored.get_config() == config


@pytest.mark.parametrize("algorithm", ["sequential", "rounds"])
def test_old_decoder_configs_still_load(algorithm):
    old = {
        "module": "overfeat_tf.models.decoders",
        "class_name": "GreedyMergeDecoder",
        "config": {
            "name": "greedy_merge_decoder",
            "trainable": True,
            "dtype": "float32",
            "merge_threshold": 0.7,
            "max_detections": 100,
            "algorithm": algorithm,
            "jit_compile": None,
        },
        "registered_name": "overfeat_tf>GreedyMergeDecoder",
    }
    decoder = keras.saving.deserialize_keras_object(old)
    assert isinstance(decoder, GreedyMergeDecoder) and isinstance(decoder, BoxMergeDecoder)
    assert decoder.jit_compile is False and decoder.max_detections == 100
    boxes, scores, classes = detector_set(9, 80)
    out = decoder(boxes.astype("f4"), scores.astype("f4"), classes)
    want = merge_boxes(boxes.astype("f4"), scores.astype("f4"), classes)  # the rounds merge
    np.testing.assert_array_equal(out["detection_scores"], want.scores)

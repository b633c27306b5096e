"""Plain NumPy references of the paper's box merge (§4.3), for tests and benchmarks; no TF ops.

Written from the definitions in the docstring of `overfeat_tf.ops.merge` (match_score, tie and
output order), independently of the TF implementation: float64, cluster means recomputed
from their members. Boxes are yxyx in pixels (or any units with one scale for both axes).

- `mutual_merge_numpy`: the rounds of mutual best matches, the algorithm of
  `overfeat_tf.ops.merge.merge_boxes` (equal to it up to float rounding).
- `sequential_merge_numpy`: the paper's wording, one pair per step: per class, merge the pair
  with the lowest match_score while it is <= t (ties: lexicographic order of the clusters'
  keys). An [n, n] score matrix per class of n boxes, updated per merge (O(n) work a step
  in the usual case); `_sequential_merge_numpy_slow` rescores every pair at every step
  (O(n^3) per class) and gives the same results bit for bit.
"""

from __future__ import annotations

import numpy as np

from overfeat_tf.ops.merge import MERGE_THRESHOLD

__all__ = ["match_score_numpy", "mutual_merge_numpy", "sequential_merge_numpy"]


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


def sequential_merge_numpy(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    threshold: float = MERGE_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The paper's one-pair-per-step merge (float64).

    Per class, while at least two clusters are left: the pair of clusters (p, q), p before q
    in key order (a key is the smallest member's input index), with the lowest match_score
    of the cluster means merges if that score is <= threshold (ties: the lexicographically
    smallest (p, q)), the merged cluster keeping p's key and its members in the order
    p's then q's; otherwise the class is done. A merged box is the mean of its members'
    coordinates, its score the sum of their scores.

    Per class of n boxes: an [n, n] score matrix of the pairs p < q (8 n^2 bytes) and each
    row's lowest score and its column; a merge rescores only the merged cluster's row and
    column and rescans only the rows whose lowest score was in a merged cluster's column,
    so a step is O(n) NumPy work in the usual case. Same results, bit for bit, as scoring
    every pair at every step (`_sequential_merge_numpy_slow`), NaN scores included (they
    rank lowest and merge, as NumPy's argmin ranks them); a pair scoring inf never merges,
    even at threshold = inf.

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
    clusters = [
        m
        for c in np.unique(classes)
        for m in _sequential_class(boxes, np.flatnonzero(classes == c), threshold)
    ]
    return _merged_output(boxes, scores, classes, clusters)


_SCORE_BLOCK = 2**16  # scores computed at once when the matrix is first filled


def _pair_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`match_score_numpy` of float64 yxyx boxes (broadcast), bit for bit, with NaN replaced
    by -inf: ranked like NumPy's argmin ranks NaN (lowest, first one on ties) and merging
    like NaN (-inf > t is false, as NaN > t). The same float operations in the same order,
    without the temporaries of `match_score_numpy` (stacked centres, norm)."""
    a0, a1, a2, a3 = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    b0, b1, b2, b3 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    area_a = np.maximum(a2 - a0, 0) * np.maximum(a3 - a1, 0)
    area_b = np.maximum(b2 - b0, 0) * np.maximum(b3 - b1, 0)
    inter_h = np.maximum(np.minimum(a2, b2) - np.maximum(a0, b0), 0)
    inter_w = np.maximum(np.minimum(a3, b3) - np.maximum(a1, b1), 0)
    inter = inter_h * inter_w
    union = area_a + area_b - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    dy = (a0 + a2) / 2 - (b0 + b2) / 2
    dx = (a1 + a3) / 2 - (b1 + b3) / 2
    distance = np.sqrt(dy * dy + dx * dx)
    s = distance / np.sqrt(np.maximum(np.minimum(area_a, area_b), 1e-12)) + 1 - iou
    s[np.isnan(s)] = -np.inf
    return s


def _sequential_class(boxes: np.ndarray, members: np.ndarray, threshold: float) -> list[np.ndarray]:
    """One class of `sequential_merge_numpy`: its clusters (arrays of member indices, in
    merge order) in key order.

    Slot i holds the cluster whose key is members[i]; `pair[i, j]` is the score of slots
    i < j (inf for j <= i and for merged-away slots); `low[i]`, `arg[i]` are row i's lowest
    score and its first column. The pair to merge is (p, arg[p]) with p the first row of
    the lowest `low`: the lexicographically smallest pair of the lowest score.
    """
    n = len(members)
    clusters = [members[i : i + 1] for i in range(n)]
    if n < 2:
        return clusters
    means = np.array([boxes[m].mean(axis=0) for m in clusters])  # [n, 4]
    pair = np.full((n, n), np.inf)  # inf: pairs p >= q
    cols = np.arange(n)
    step = max(1, _SCORE_BLOCK // n)
    for start in range(0, n - 1, step):
        rows = np.arange(start, min(start + step, n - 1))
        block = _pair_scores(means[rows, None, :], means[None, start + 1 :, :])
        block[cols[None, start + 1 :] <= rows[:, None]] = np.inf
        pair[rows, start + 1 :] = block
    arg = np.argmin(pair, axis=1)
    low = pair[cols, arg]
    alive = np.ones(n, bool)
    left = n
    while left >= 2:
        p = int(np.argmin(low))
        best = low[p]
        if best == np.inf or best > threshold:
            break
        q = int(arg[p])
        clusters[p] = np.concatenate([clusters[p], clusters[q]])
        alive[q] = False
        left -= 1
        means[p] = boxes[clusters[p]].mean(axis=0)
        pair[q, :] = np.inf
        pair[:, q] = np.inf
        low[q] = np.inf
        # Rescore the merged cluster against the live slots, in one call: column p (rows
        # i < p, scored as (i, p)) and row p (columns j > p, scored as (p, j)).
        others = np.flatnonzero(alive)
        split = int(np.searchsorted(others, p))
        above, below = others[:split], others[split + 1 :]  # others[split] is p
        mean_p = np.broadcast_to(means[p], (len(others) - 1, 4))
        first = np.concatenate([means[above], mean_p[split:]])
        second = np.concatenate([mean_p[:split], means[below]])
        rescored = _pair_scores(first, second)
        pair[above, p] = rescored[:split]
        pair[p, below] = rescored[split:]
        # Rows whose lowest score was in column p or q: rescan. Row p: rescan.
        stale_mask = alive & ((arg == p) | (arg == q))
        stale_mask[p] = True
        stale = np.flatnonzero(stale_mask)
        arg[stale] = np.argmin(pair[stale], axis=1)
        low[stale] = pair[stale, arg[stale]]
        # Other live rows i < p: only their column p changed (and column q, not their lowest).
        rows = above[~stale_mask[above]]
        v = pair[rows, p]
        better = (v < low[rows]) | ((v == low[rows]) & (p < arg[rows]))
        low[rows[better]] = v[better]
        arg[rows[better]] = p
    return [m for i, m in enumerate(clusters) if alive[i]]


def _merged_output(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, clusters: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, classes, num_members) of the clusters (arrays of member indices),
    sorted by accumulated score descending, ties by smallest member index."""
    results = [
        (scores[m].sum(), m.min(), boxes[m].mean(axis=0), classes[m[0]], len(m)) for m in clusters
    ]
    results.sort(key=lambda r: (-r[0], r[1]))
    if not results:
        return (np.zeros((0, 4)), np.zeros(0), np.zeros(0, classes.dtype), np.zeros(0, int))
    return (
        np.array([r[2] for r in results]),
        np.array([r[0] for r in results]),
        np.array([r[3] for r in results]),
        np.array([r[4] for r in results]),
    )


def _sequential_merge_numpy_slow(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    threshold: float = MERGE_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`sequential_merge_numpy` scoring every pair of clusters at every step (O(n^3) per
    class): the direct form of the rule, against which the fast one is tested."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError("boxes, scores and classes must hold the same number of boxes.")
    merged = []
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
        merged += [np.array(m) for m in clusters]
    return _merged_output(boxes, scores, classes, merged)


def mutual_merge_numpy(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    threshold: float = MERGE_THRESHOLD,
    return_rounds: bool = False,
) -> (
    tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    | tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], int]
):
    """The rounds of mutual best matches (`overfeat_tf.ops.merge.merge_boxes`; float64).

    Per class: boxes with identical coordinates start as one cluster; then, in rounds,
    every cluster's best partner is the other cluster of its class with the lowest
    match_score of the cluster means (first in key order on ties, a key being the smallest
    member's input index); every pair of clusters that are each other's best partner at a
    score <= threshold merges (all such pairs in the same round), the merged cluster
    keeping the smaller key; stop after a round without merges. O(n^2) per round.

    Args:
        boxes: [N, 4] yxyx. scores: [N]. classes: [N] integer.
        threshold: pairs merge when their match_score is <= threshold.
        return_rounds: also return the number of rounds in which some pair merged (the
            largest over the classes, which run in the same rounds).

    Returns:
        (boxes [K, 4], scores [K], classes [K], num_members [K]) of all K merged boxes,
        sorted by accumulated score descending, ties by smallest member index; with
        `return_rounds`, (that tuple, rounds).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError("boxes, scores and classes must hold the same number of boxes.")
    results = []  # (score, key, box, class, count)
    rounds = 0
    for c in np.unique(classes):
        # Clusters as lists of member indices, kept in key order (a merge keeps the smaller).
        # Boxes with identical coordinates start as one cluster (+ 0.0: -0.0 equals 0.0).
        members = np.flatnonzero(classes == c)
        _, group = np.unique(boxes[members] + 0.0, axis=0, return_inverse=True)
        groups: dict[int, list[int]] = {}
        for k, g in zip(members, group.reshape(-1), strict=True):
            groups.setdefault(int(g), []).append(int(k))
        clusters = sorted(groups.values(), key=min)
        class_rounds = 0
        while len(clusters) >= 2:
            means = np.array([boxes[m].mean(axis=0) for m in clusters])  # [m, 4]
            pair = match_score_numpy(means[:, None, :], means[None, :, :])  # [m, m]
            np.fill_diagonal(pair, np.inf)
            best = np.argmin(pair, axis=1)  # first index on ties
            low = pair[np.arange(len(clusters)), best]
            merges = [
                (p, int(q))
                for p, q in enumerate(best)
                if p < q and best[q] == p and low[p] <= threshold
            ]
            if not merges:
                break
            class_rounds += 1
            for p, q in merges:
                clusters[p] = clusters[p] + clusters[q]
            gone = {q for _, q in merges}
            clusters = [m for k, m in enumerate(clusters) if k not in gone]
        rounds = max(rounds, class_rounds)
        for m in clusters:
            results.append((scores[m].sum(), min(m), boxes[m].mean(axis=0), c, len(m)))
    results.sort(key=lambda r: (-r[0], r[1]))
    if not results:
        out = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, classes.dtype), np.zeros(0, int))
    else:
        out = (
            np.array([r[2] for r in results]),
            np.array([r[0] for r in results]),
            np.array([r[3] for r in results]),
            np.array([r[4] for r in results]),
        )
    return (out, rounds) if return_rounds else out

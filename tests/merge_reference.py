"""Plain NumPy references of the paper's box merge (§4.3), for tests and benchmarks; no TF ops.

Written from the definitions in the docstring of `overfeat_tf.ops.merge` (match_score, tie and
output order), independently of the TF implementation: float64, cluster means recomputed
from their members. Boxes are yxyx in pixels (or any units with one scale for both axes).

- `mutual_merge_numpy`: the rounds of mutual best matches, the algorithm of
  `overfeat_tf.ops.merge.merge_boxes` (equal to it up to float rounding).
- `sequential_merge_numpy`: the paper's wording, one pair per step: per class, merge the pair
  with the lowest match_score while it is <= t (ties: lexicographic order of the clusters'
  keys). O(n^3) per class.
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
    """The paper's one-pair-per-step merge (float64, O(n^3) per class).

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

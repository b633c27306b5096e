"""Detection and localization metrics, in NumPy (paper §4.4 and §5; ILSVRC and COCO rules).

Box convention of every function: `[ymin, xmin, ymax, xmax]` (yxyx, the package order), in
any units as long as detections and ground truth use the same ones: pixels, or coordinates
normalized by the image's (height, width). IoU is invariant to scaling the x and y axes
independently, so normalized and pixel boxes give the same IoU (up to rounding).
IoU = |a ∩ b| / (|a| + |b| - |a ∩ b|) on continuous coordinates (no "+1 pixel").

Detection: average precision per class (`average_precision`)
------------------------------------------------------------
The COCO definition (pycocotools `COCOeval` with `iouThrs=[iou_threshold]`, area range
"all", `maxDets` large enough to keep every detection), applied class by class:

1. Detections of the class are ranked over the whole split by score, highest first; ties
   keep the order (image index, then position in the input), as COCOeval's stable sorts do.
2. In that order, each detection is matched to the ground-truth box of its class in its
   image with the highest IoU among those not matched yet, if that IoU >= `iou_threshold`
   (ties in IoU: the later box in input order, as COCOeval). A matched detection is a true
   positive, any other detection (duplicates included) a false positive.
3. Precision `tp / (tp + fp + eps)` (eps = `np.spacing(1)`, as COCOeval) and recall
   `tp / num_gt` along the ranking; the precision is made non-increasing from the right (the
   precision envelope) and read at the 101 recall thresholds 0, 0.01, ..., 1 (the first rank
   whose recall reaches the threshold; 0 past the highest recall); AP is the mean of those
   101 values.

A class with ground truth but no detection has AP 0; a class without ground truth has no AP
(NaN), whatever its detections. `mean_average_precision` averages the classes that have
ground truth (as COCOeval's summary at a single IoU threshold; the ILSVRC and VOC
convention too).

Localization: the ILSVRC error (`localization_error`)
-----------------------------------------------------
ILSVRC's localization task has one class per image, the image's `label`; for a detection
dataset with several objects that is the dominant object's class (its `label` feature when
the dataset has one, else the label of the largest box: `data.example_label`), and the
ground-truth boxes that count are all the image's boxes of that class. An image is correct
if any of its at most 5 (class, box) guesses has that class and IoU >= 0.5 with one of
those boxes; error = 1 - fraction of correct images.
Other objects in the image neither help nor hurt.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "RECALL_THRESHOLDS",
    "DetectionAccumulator",
    "GroundTruth",
    "Guesses",
    "average_precision",
    "localization_correct",
    "localization_error",
    "match_detections",
    "mean_average_precision",
    "pairwise_iou",
]

# COCOeval's 101 recall thresholds (np.linspace, as pycocotools builds them).
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101, endpoint=True)
# COCOeval caps the threshold just below 1 so that IoU 1 still matches at threshold 1.
_MAX_THRESHOLD = 1 - 1e-10


# --- validation ------------------------------------------------------------------------------
def _boxes(name: str, boxes: Any) -> np.ndarray:
    """`[N, 4]` float64 yxyx boxes with ymin <= ymax and xmin <= xmax."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (yxyx), got {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite.")
    if (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
        raise ValueError(
            f"{name} must be [ymin, xmin, ymax, xmax] with ymin <= ymax and xmin <= xmax."
        )
    return array


def _vector(name: str, values: Any, size: int, integer: bool) -> np.ndarray:
    """A `[size]` vector (int64 when `integer`, else float64)."""
    array = np.asarray(values)
    if array.size == 0 and size == 0:
        return np.zeros(0, np.int64 if integer else np.float64)
    if array.ndim != 1 or array.shape[0] != size:
        raise ValueError(f"{name} must have shape [{size}], got {array.shape}.")
    if integer:
        if not (np.issubdtype(array.dtype, np.integer) or np.array_equal(array, np.round(array))):
            raise ValueError(f"{name} must hold integers.")
        return array.astype(np.int64)
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite.")
    return array


# --- geometry --------------------------------------------------------------------------------
def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes `[..., 4]` yxyx (broadcast), computed as pycocotools does."""
    height = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    width = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.where((height > 0) & (width > 0), height * width, 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pairwise_iou(boxes1: Any, boxes2: Any) -> np.ndarray:
    """IoU of every pair: `[N, 4]` x `[M, 4]` yxyx (any units, the same for both) -> `[N, M]`.

    Disjoint or touching boxes have IoU 0, as do pairs whose union is empty.
    """
    a, b = _boxes("boxes1", boxes1), _boxes("boxes2", boxes2)
    return _iou(a[:, np.newaxis], b[np.newaxis])


# --- detection: matching and AP --------------------------------------------------------------
def _ranking(scores: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Order of the detections: score descending, then image index, then input position."""
    return np.lexsort((np.arange(scores.size), images, -scores))


def _group_ranges(
    det_groups: np.ndarray, gt_groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair of the same group, with no Python loop.

    Returns the pairs' detection indices, ground-truth indices (ground truth of a group in
    input order) and, per detection, its number of pairs.
    """
    gt_order = np.argsort(gt_groups, kind="stable")
    sorted_groups = gt_groups[gt_order]
    starts = np.searchsorted(sorted_groups, det_groups, side="left")
    counts = np.searchsorted(sorted_groups, det_groups, side="right") - starts
    det_index = np.repeat(np.arange(det_groups.size), counts)
    offsets = np.arange(det_index.size) - np.repeat(np.cumsum(counts) - counts, counts)
    gt_index = gt_order[np.repeat(starts, counts) + offsets]
    return det_index, gt_index, counts


def _rank_in_group(groups: np.ndarray) -> np.ndarray:
    """For items listed in processing order, their position among the items of their group."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    first = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = np.empty(groups.size, np.int64)
    rank[order] = np.arange(groups.size) - first
    return rank


def match_detections(
    det_boxes: Any,
    det_scores: Any,
    det_classes: Any,
    det_images: Any,
    gt_boxes: Any,
    gt_classes: Any,
    gt_images: Any,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """COCO matching of detections to ground truth (module docstring, steps 1-2).

    Args:
        det_boxes: `[D, 4]` yxyx detections (same units as `gt_boxes`).
        det_scores: `[D]` confidences (higher = more confident).
        det_classes: `[D]` int class of each detection.
        det_images: `[D]` int index of each detection's image.
        gt_boxes: `[G, 4]` yxyx ground-truth boxes.
        gt_classes: `[G]` int classes.
        gt_images: `[G]` int image indices.
        iou_threshold: smallest IoU of a match, in (0, 1].

    Returns:
        `is_true_positive` bool `[D]` and `matched_gt` int64 `[D]` (the ground-truth index
        each detection matched, -1 for false positives), both in input order.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
    det_boxes = _boxes("det_boxes", det_boxes)
    num_det = det_boxes.shape[0]
    det_scores = _vector("det_scores", det_scores, num_det, integer=False)
    det_classes = _vector("det_classes", det_classes, num_det, integer=True)
    det_images = _vector("det_images", det_images, num_det, integer=True)
    gt_boxes = _boxes("gt_boxes", gt_boxes)
    num_gt = gt_boxes.shape[0]
    gt_classes = _vector("gt_classes", gt_classes, num_gt, integer=True)
    gt_images = _vector("gt_images", gt_images, num_gt, integer=True)

    matched_gt = np.full(num_det, -1, np.int64)
    if num_det == 0 or num_gt == 0:
        return matched_gt >= 0, matched_gt

    # One integer id per (image, class) group, shared by detections and ground truth.
    keys = np.concatenate(
        [np.stack([det_images, det_classes], 1), np.stack([gt_images, gt_classes], 1)]
    )
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    det_groups, gt_groups = group[:num_det], group[num_det:]

    # Candidate pairs: same group, IoU above the threshold (as COCOeval: IoU >= min(t, 1-1e-10)).
    order = _ranking(det_scores, det_images)  # processing order
    det_index, gt_index, _ = _group_ranges(det_groups[order], gt_groups)
    det_index = order[det_index]
    iou = _iou(det_boxes[det_index], gt_boxes[gt_index])
    keep = iou >= min(iou_threshold, _MAX_THRESHOLD)
    det_index, gt_index, iou = det_index[keep], gt_index[keep], iou[keep]
    if det_index.size == 0:
        return matched_gt >= 0, matched_gt

    # Detections that have candidates, in processing order, ranked within their group: all
    # detections of one rank belong to different groups, so a rank is matched at once.
    position = np.empty(num_det, np.int64)
    position[order] = np.arange(num_det)
    candidates = order[np.isin(order, det_index)]  # processing order
    rank = np.zeros(num_det, np.int64)
    rank[candidates] = _rank_in_group(det_groups[candidates])
    # Pairs by (rank, detection, IoU, ground-truth index): a detection's best pair is its last
    # available one (the highest IoU; ties: the later ground truth, as COCOeval).
    pair_order = np.lexsort((gt_index, iou, position[det_index], rank[det_index]))
    det_index, gt_index = det_index[pair_order], gt_index[pair_order]
    pair_rank = rank[det_index]
    bounds = np.searchsorted(pair_rank, np.arange(pair_rank[-1] + 2), side="left")
    gt_taken = np.zeros(num_gt, bool)
    for lo, hi in itertools.pairwise(bounds):
        dets, gts = det_index[lo:hi], gt_index[lo:hi]
        free = ~gt_taken[gts]
        dets, gts = dets[free], gts[free]
        if dets.size == 0:
            continue
        last = np.append(dets[1:] != dets[:-1], True)
        matched_gt[dets[last]] = gts[last]
        gt_taken[gts[last]] = True
    return matched_gt >= 0, matched_gt


def _class_ap(true_positive: np.ndarray, num_gt: int) -> float:
    """COCO 101-point AP of one class from its ranked detections' true-positive flags."""
    tp = np.cumsum(true_positive).astype(float)
    fp = np.cumsum(~true_positive).astype(float)
    if tp.size == 0:
        return 0.0
    recall = tp / num_gt
    precision = tp / (fp + tp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    values = np.where(index < tp.size, envelope[np.minimum(index, tp.size - 1)], 0.0)
    return float(np.mean(values))


def average_precision(
    det_boxes: Any,
    det_scores: Any,
    det_classes: Any,
    det_images: Any,
    gt_boxes: Any,
    gt_classes: Any,
    gt_images: Any,
    num_classes: int | None = None,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """Average precision of every class over a split (COCO definition, module docstring).

    Detections and ground truth of all images come as flat arrays, each row tagged with its
    image index (an image without ground truth simply has no ground-truth rows).

    Args:
        det_boxes: `[D, 4]` yxyx detections (same units as `gt_boxes`).
        det_scores: `[D]` confidences.
        det_classes: `[D]` int classes in `[0, num_classes)`.
        det_images: `[D]` int image indices.
        gt_boxes: `[G, 4]` yxyx ground-truth boxes.
        gt_classes: `[G]` int classes in `[0, num_classes)`.
        gt_images: `[G]` int image indices.
        num_classes: C; default: 1 + the largest class seen.
        iou_threshold: IoU of a match (0.5: "AP@0.5", the VOC / ILSVRC detection criterion).

    Returns:
        float64 `[C]`: AP of each class in [0, 1]; NaN for classes without ground truth.
    """
    tp, _ = match_detections(
        det_boxes,
        det_scores,
        det_classes,
        det_images,
        gt_boxes,
        gt_classes,
        gt_images,
        iou_threshold,
    )
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    det_classes = np.asarray(det_classes, np.int64).reshape(-1)
    det_images = np.asarray(det_images, np.int64).reshape(-1)
    gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
    seen = np.concatenate([det_classes, gt_classes])
    if seen.size and seen.min() < 0:
        raise ValueError(f"Classes must be >= 0, got {seen.min()}.")
    if num_classes is None:
        num_classes = int(seen.max()) + 1 if seen.size else 0
    elif seen.size and seen.max() >= num_classes:
        raise ValueError(f"Class {seen.max()} is outside [0, num_classes={num_classes}).")
    order = _ranking(det_scores, det_images)
    ranked_classes, ranked_tp = det_classes[order], tp[order]
    num_gt = np.bincount(gt_classes, minlength=num_classes)
    result = np.full(num_classes, np.nan)
    for c in np.flatnonzero(num_gt):
        result[c] = _class_ap(ranked_tp[ranked_classes == c], int(num_gt[c]))
    return result


def mean_average_precision(per_class_ap: Any) -> float:
    """Mean of `average_precision`'s per-class APs over the classes that have ground truth
    (the NaN entries are left out); NaN if no class has ground truth."""
    ap = np.asarray(per_class_ap, np.float64).reshape(-1)
    valid = ap[~np.isnan(ap)]
    return float(valid.mean()) if valid.size else float("nan")


class DetectionAccumulator:
    """Collects detections and ground truth image by image, then scores the split.

    Example:
        acc = DetectionAccumulator(num_classes=12)
        for each image:
            acc.add_image(boxes, scores, classes, gt_boxes, gt_classes)   # yxyx, same units
        ap = acc.average_precision()            # [C], NaN without ground truth
        mean_average_precision(ap)
    """

    def __init__(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
        self.num_classes = num_classes
        self.num_images = 0
        self._det: list[tuple[np.ndarray, ...]] = []
        self._gt: list[tuple[np.ndarray, ...]] = []

    def add_image(
        self,
        det_boxes: Any,
        det_scores: Any,
        det_classes: Any,
        gt_boxes: Any,
        gt_classes: Any,
    ) -> int:
        """Adds one image (`[n, 4]` yxyx detections with `[n]` scores and classes; `[m, 4]`
        ground truth with `[m]` classes); returns its image index."""
        det_boxes = _boxes("det_boxes", det_boxes)
        n = det_boxes.shape[0]
        scores = _vector("det_scores", det_scores, n, integer=False)
        classes = _vector("det_classes", det_classes, n, integer=True)
        gt_boxes = _boxes("gt_boxes", gt_boxes)
        gt_classes = _vector("gt_classes", gt_classes, gt_boxes.shape[0], integer=True)
        for name, values in (("det_classes", classes), ("gt_classes", gt_classes)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(f"{name} must be in [0, {self.num_classes}), got {values}.")
        index = self.num_images
        self._det.append((det_boxes, scores, classes, np.full(n, index)))
        self._gt.append((gt_boxes, gt_classes, np.full(gt_classes.size, index)))
        self.num_images += 1
        return index

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything added, as the flat arrays `average_precision` takes."""
        det = [np.concatenate(p) for p in zip(*self._det, strict=True)] if self._det else None
        gt = [np.concatenate(p) for p in zip(*self._gt, strict=True)] if self._gt else None
        empty_boxes, empty = np.zeros((0, 4)), np.zeros(0, np.int64)
        det = det or [empty_boxes, np.zeros(0), empty, empty]
        gt = gt or [empty_boxes, empty, empty]
        names = ("det_boxes", "det_scores", "det_classes", "det_images")
        names += ("gt_boxes", "gt_classes", "gt_images")
        return dict(zip(names, det + gt, strict=True))

    def average_precision(self, iou_threshold: float = 0.5) -> np.ndarray:
        """Per-class AP `[C]` of everything added (NaN for classes without ground truth)."""
        return average_precision(
            **self.arrays(), num_classes=self.num_classes, iou_threshold=iou_threshold
        )


# --- localization ----------------------------------------------------------------------------
class Guesses(NamedTuple):
    """The (class, box) guesses for one image, best first: `classes` `[k]` int, `boxes`
    `[k, 4]` yxyx (same units as the ground truth)."""

    classes: Any
    boxes: Any


class GroundTruth(NamedTuple):
    """One image's ground truth: `label` (the image's class: ILSVRC has one per image; for a
    multi-object image, the dominant object's), `boxes` `[n, 4]` yxyx and their `classes`
    `[n]`. Only the boxes of class `label` count for localization."""

    label: int
    boxes: Any
    classes: Any


def localization_correct(
    guesses: Sequence[Guesses | tuple[Any, Any]],
    ground_truths: Sequence[GroundTruth | tuple[int, Any, Any]],
    iou_threshold: float = 0.5,
    max_guesses: int = 5,
) -> np.ndarray:
    """Whether each image is localized correctly (ILSVRC rule, module docstring).

    Args:
        guesses: per image, `(classes [k], boxes [k, 4])` with k <= `max_guesses` (k = 0: no
            guess, the image is wrong).
        ground_truths: per image, `(label, boxes [n, 4], classes [n])`, boxes yxyx in the
            same units as the guesses.
        iou_threshold: smallest IoU of a correct box (ILSVRC: 0.5).
        max_guesses: guesses allowed per image (ILSVRC: 5).

    Returns:
        bool `[N]`.
    """
    if len(guesses) != len(ground_truths):
        raise ValueError(
            f"Got guesses for {len(guesses)} images but ground truth for {len(ground_truths)}."
        )
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
    correct = np.zeros(len(guesses), bool)
    for i, (guess, truth) in enumerate(zip(guesses, ground_truths, strict=True)):
        guess_boxes = _boxes(f"guesses[{i}].boxes", guess[1])
        guess_classes = _vector(
            f"guesses[{i}].classes", guess[0], guess_boxes.shape[0], integer=True
        )
        if guess_classes.size > max_guesses:
            raise ValueError(
                f"Image {i} has {guess_classes.size} guesses; at most {max_guesses} are allowed."
            )
        label, boxes = int(truth[0]), _boxes(f"ground_truths[{i}].boxes", truth[1])
        classes = _vector(f"ground_truths[{i}].classes", truth[2], boxes.shape[0], integer=True)
        right_class = guess_boxes[guess_classes == label]
        truth_boxes = boxes[classes == label]
        if right_class.size and truth_boxes.size:
            iou = _iou(right_class[:, np.newaxis], truth_boxes[np.newaxis])
            correct[i] = bool((iou >= iou_threshold).any())
    return correct


def localization_error(
    guesses: Sequence[Guesses | tuple[Any, Any]],
    ground_truths: Sequence[GroundTruth | tuple[int, Any, Any]],
    iou_threshold: float = 0.5,
    max_guesses: int = 5,
) -> float:
    """ILSVRC localization error: 1 - the fraction of images with a correct guess (a guess
    of the image's `label` with IoU >= `iou_threshold` with one of its boxes of that class;
    at most `max_guesses` guesses per image). Arguments as `localization_correct`."""
    if len(guesses) == 0:
        raise ValueError("localization_error needs at least one image.")
    return float(
        1.0 - localization_correct(guesses, ground_truths, iou_threshold, max_guesses).mean()
    )

"""Detection and localization metrics (paper §4.4 and §5; COCO and ILSVRC rules).

Box convention of every function: `[ymin, xmin, ymax, xmax]` (yxyx, the package order), in
any units as long as detections and ground truth use the same ones: pixels, or coordinates
normalized by the image's (height, width), as `detection_eval` passes them. IoU is invariant
to scaling the x and y axes independently, so normalized and pixel boxes give the same IoU
(up to rounding). IoU = |a ∩ b| / (|a| + |b| - |a ∩ b|) on continuous coordinates (no
"+1 pixel").

Detection: average precision per class (`average_precision`, `DetectionAccumulator`)
----------------------------------------------------------------------------------
Computed by pycocotools' `COCOeval` itself (iouType "bbox"), on an in-memory COCO ground
truth (no files): image i -> image id i + 1, class c -> category id c + 1, every box
converted from yxyx to COCO's `[x, y, width, height]` in the units it came in, `iscrowd` 0
everywhere. The parameters make COCOeval keep every box and detection: `iouThrs =
[iou_threshold]`, one area range "all" = [0, inf) (no box is dropped, whatever the units),
`maxDets` = the largest number of detections of one image. In COCO's definition:

1. Detections of a class are ranked over the whole split by score, highest first (ties:
   image order, then input order: COCOeval's stable sorts).
2. In that order, each detection is matched to the not-yet-matched ground-truth box of its
   class in its image with the highest IoU, if that IoU >= `iou_threshold`. A matched
   detection is a true positive; any other detection, a duplicate of a found object
   included, is a false positive.
3. Precision `tp / (tp + fp + eps)` and recall `tp / num_gt` along the ranking; the
   precision envelope (non-increasing from the right) read at the 101 recall thresholds 0,
   0.01, ..., 1 (0 past the highest recall); AP is the mean of those 101 values
   (`COCOeval.eval["precision"]`).

A class with ground truth but no detection has AP 0; a class without ground truth has no AP
(NaN), whatever its detections. `mean_average_precision` averages the classes that have
ground truth (as COCOeval's summary at a single IoU threshold; the ILSVRC and VOC
convention too). COCOeval's progress messages are silenced.

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

import contextlib
import io
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = [
    "DetectionAccumulator",
    "GroundTruth",
    "Guesses",
    "average_precision",
    "localization_correct",
    "localization_error",
    "mean_average_precision",
]


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


# --- detection: AP by COCOeval ---------------------------------------------------------------
def _xywh(boxes: np.ndarray) -> list[list[float]]:
    """yxyx `[N, 4]` -> COCO `[x, y, width, height]` rows, in the same units."""
    return np.stack(
        [boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1
    ).tolist()


def _coco_ground_truth(
    gt_boxes: np.ndarray, gt_classes: np.ndarray, gt_images: np.ndarray, num_images: int, k: int
) -> COCO:
    """An in-memory `COCO` ground truth: images 1..num_images, categories 1..k."""
    annotations = [
        {
            "id": i + 1,  # COCOeval reads id 0 as "unmatched"
            "image_id": image + 1,
            "category_id": cls + 1,
            "bbox": bbox,
            "area": bbox[2] * bbox[3],
            "iscrowd": 0,
        }
        for i, (bbox, cls, image) in enumerate(
            zip(_xywh(gt_boxes), gt_classes.tolist(), gt_images.tolist(), strict=True)
        )
    ]
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i + 1} for i in range(num_images)],
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": str(c)} for c in range(k)],
    }
    coco.createIndex()
    return coco


def _coco_detections(
    coco_gt: COCO,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_classes: np.ndarray,
    det_images: np.ndarray,
) -> COCO:
    """The detections as a COCO result set (`loadRes`; an empty one without detections,
    which `loadRes` does not accept)."""
    if det_scores.size == 0:
        empty = COCO()
        empty.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "annotations": [],
            "categories": list(coco_gt.dataset["categories"]),
        }
        empty.createIndex()
        return empty
    results = [
        {"image_id": image + 1, "category_id": cls + 1, "bbox": bbox, "score": score}
        for bbox, score, cls, image in zip(
            _xywh(det_boxes),
            det_scores.tolist(),
            det_classes.tolist(),
            det_images.tolist(),
            strict=True,
        )
    ]
    return coco_gt.loadRes(results)


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
    num_images: int | None = None,
) -> np.ndarray:
    """Average precision of every class over a split, by pycocotools' COCOeval (module
    docstring).

    Detections and ground truth of all images come as flat arrays, each row tagged with its
    image index (an image without ground truth simply has no ground-truth rows).

    Args:
        det_boxes: `[D, 4]` yxyx detections (same units as `gt_boxes`).
        det_scores: `[D]` confidences.
        det_classes: `[D]` int classes in `[0, num_classes)`.
        det_images: `[D]` int image indices in `[0, num_images)`.
        gt_boxes: `[G, 4]` yxyx ground-truth boxes.
        gt_classes: `[G]` int classes in `[0, num_classes)`.
        gt_images: `[G]` int image indices in `[0, num_images)`.
        num_classes: C; default: 1 + the largest class seen.
        iou_threshold: IoU of a match, in (0, 1] (0.5: "AP@0.5", the VOC / ILSVRC
            detection criterion).
        num_images: images of the split; default: 1 + the largest image index seen (images
            with neither detections nor ground truth change no AP).

    Returns:
        float64 `[C]`: AP of each class in [0, 1]; NaN for classes without ground truth.
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
    num_classes = _count("Class", np.concatenate([det_classes, gt_classes]), num_classes)
    num_images = _count("Image index", np.concatenate([det_images, gt_images]), num_images)
    result = np.full(num_classes, np.nan)
    if num_gt == 0 or num_classes == 0:
        return result  # no class has ground truth

    with contextlib.redirect_stdout(io.StringIO()):  # COCO's progress messages
        coco_gt = _coco_ground_truth(gt_boxes, gt_classes, gt_images, num_images, num_classes)
        coco_dt = _coco_detections(coco_gt, det_boxes, det_scores, det_classes, det_images)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        params = evaluator.params
        params.iouThrs = np.array([float(iou_threshold)])
        params.areaRng, params.areaRngLbl = [[0.0, np.inf]], ["all"]
        per_image = np.bincount(det_images, minlength=num_images) if num_det else [0]
        params.maxDets = [max(1, int(np.max(per_image)))]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, 0]  # [101 recall thresholds, C]
    has_gt = (precision > -1).all(axis=0)  # COCOeval's -1: a category without ground truth
    result[has_gt] = precision[:, has_gt].mean(axis=0)
    return result


def _count(name: str, values: np.ndarray, count: int | None) -> int:
    """`count` checked against the non-negative ints `values` (default: 1 + their max)."""
    if values.size and values.min() < 0:
        raise ValueError(f"{name} must be >= 0, got {values.min()}.")
    if count is None:
        return int(values.max()) + 1 if values.size else 0
    if values.size and values.max() >= count:
        label = "num_classes" if name == "Class" else "num_images"
        raise ValueError(f"{name} {values.max()} is outside [0, {label}={count}).")
    return count


def mean_average_precision(per_class_ap: Any) -> float:
    """Mean of `average_precision`'s per-class APs over the classes that have ground truth
    (the NaN entries are left out); NaN if no class has ground truth."""
    ap = np.asarray(per_class_ap, np.float64).reshape(-1)
    valid = ap[~np.isnan(ap)]
    return float(valid.mean()) if valid.size else float("nan")


class DetectionAccumulator:
    """Collects detections and ground truth image by image, then scores the split with
    COCOeval (`average_precision`).

    Boxes are yxyx in any units shared by an image's detections and ground truth
    (`detection_eval` passes coordinates normalized to the image).

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
        """Per-class AP `[C]` of everything added at IoU `iou_threshold` (NaN for classes
        without ground truth)."""
        return average_precision(
            **self.arrays(),
            num_classes=self.num_classes,
            iou_threshold=iou_threshold,
            num_images=self.num_images,
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

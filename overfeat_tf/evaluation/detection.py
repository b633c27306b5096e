"""Localization and detection evaluation (paper §4.4, §5) on a TFDS detection split.

For every image, one traced `tf.function` (`DetectionEvaluator`) runs the detector's own decode
path (`detector.OverFeatDetector.detect_batch`, the body of `batch_fn` that `predict` and the
export run: every window of the top-k classes of every scale and flip predicts a box) once,
and decodes the *same* dense boxes two ways:

- `merge`: the paper's merge (§4.3, `decoders.BoxMergeDecoder`), what
  `detector.predict` and the export answer;
- `nms`: per-class `tf.image.non_max_suppression` (`decoders.NMSDecoder`), the usual
  alternative the paper compares against ("more robust to false positives ... than
  traditional non-maximum suppression").

From each of the two it scores, over the split (`overfeat_tf.evaluation.metrics`):

- detection: AP@`iou_threshold` per class and their mean (mAP, over the classes with ground
  truth), COCO's definition, computed by pycocotools' COCOeval; every detection of every
  image kept (up to the detector's `max_detections` per image);
- localization: the ILSVRC error with `guesses` (5) guesses per image: the best box of each
  of the best classes of the detections (`detector.first_box_per_class`, as
  `detector.localize`, with `top_k = guesses` classes per level); correct if one guess has
  the image's class (`label`, or the largest object's class for datasets without one:
  `data.example_label`) and IoU >= 0.5 with one of its boxes of that class;

and, from the same run, the multi-scale classification top-1 / top-5 errors of
`class_scores` (mean over levels and flips of each class's spatial max).

Boxes are merged in pixels of the original image; the results (ground truth, TFDS
`objects/bbox`, and detections alike) are normalized yxyx of the original image.
Errors are percentages of the labelled images evaluated; APs are in
[0, 1].

Command (prints tables; `--format json` for one JSON object):
    python -m overfeat_tf.detection_eval --model runs/tiny/model.keras \
        --dataset overfeat_shapes/standard --split test [--max-examples N] [--scales 247,327]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from overfeat_tf.data import inputs as data
from overfeat_tf.data import tfds_io
from overfeat_tf.data.spatial import decode_detection_example
from overfeat_tf.evaluation import metrics
from overfeat_tf.models.decoders import COMBINE, make_decoder
from overfeat_tf.models.detector import (
    REQUEST_OPTIONS,
    OverFeatDetector,
    as_detector,
    class_names,
    first_box_per_class,
)
from overfeat_tf.utils.progress import progress_bar
from overfeat_tf.utils.threads import ordered_map

GUESSES = 5  # ILSVRC localization: 5 (class, box) guesses per image
COCO_IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))  # mAP@[.5:.95]
_FIELDS = ("boxes", "scores", "classes", "num")


# --- per image, in TF ops ----------------------------------------------------------------------
def default_decoders(detector: OverFeatDetector) -> dict[str, keras.layers.Layer]:
    """The two decoders every evaluation compares, at the detector's options: "merge" (the
    paper's) and "nms"."""
    options = detector.options
    fields = {name: options[name] for name in ("merge_threshold", "nms_iou", "max_detections")}
    return {combine: make_decoder(combine, **fields) for combine in COMBINE}


def detect_both(
    detector: OverFeatDetector,
    image: tf.Tensor,
    decoders: dict[str, keras.layers.Layer],
    guesses: int = GUESSES,
) -> dict[str, tf.Tensor]:
    """Detections of one image `[H, W, 3]` (RGB 0..255) by every decoder from the same dense
    boxes (TF ops, graph-safe): one pyramid + backbone run, through the detector's own
    decode path (`OverFeatDetector.detect_batch`, the body of `batch_fn`, on a batch of one
    with the detector's own options).

    A decoder configured as the detector's `prediction_decoder` answers with the detector's
    own outputs, so its detections are bitwise what `predict`, `detect_image` and the export
    give; every other decoder decodes the same dense boxes beside it.

    Returns a flat dict: `"{name}/{field}"` for each decoder name (e.g. "merge", "nms") and
    field in ("boxes" `[D, 4]` normalized yxyx, "scores" `[D]`, "classes" `[D]` int32, "num"
    `[]` valid rows), the same under `"localize/{name}/..."` when `detector.top_k != guesses`
    (localization keeps `top_k = guesses` classes per level), and `"class_scores"` `[C]`.
    """
    own = detector.prediction_decoder.get_config()
    passes: dict[str, tuple[keras.layers.Layer, int | None]] = {}
    sources: dict[str, str] = {}  # output prefix -> the detect_batch prefix holding it
    for name, decoder in decoders.items():
        if decoder.get_config() == own:
            sources[f"{name}/"] = ""
        else:
            passes[name] = (decoder, None)
            sources[f"{name}/"] = f"{name}/"
        if detector.top_k != guesses:
            passes[f"localize/{name}"] = (decoder, guesses)
            sources[f"localize/{name}/"] = f"localize/{name}/"
    images = tf.cast(image, tf.float32)[tf.newaxis]
    defaults = detector.request_options(1)
    found = detector.detect_batch(
        images, *(defaults[name] for name in REQUEST_OPTIONS), passes=passes
    )
    outputs: dict[str, tf.Tensor] = {"class_scores": found["class_scores"][0]}
    fields = {
        "boxes": "detection_boxes",
        "scores": "detection_scores",
        "classes": "detection_classes",
        "num": "num_detections",
    }
    for prefix, source in sources.items():
        for field, key in fields.items():
            outputs[f"{prefix}{field}"] = found[f"{source}{key}"][0]
    return outputs


class DetectionEvaluator:
    """One compiled per-image function for a detector (any image size).

    Args:
        model: an `OverFeatDetector` (evaluated with its own options; its `combine` is
            ignored: every decoder is computed) or an `OverFeat` network (the default
            options; with a regressor for real boxes, without one every window is its own
            box). Change options with `detector.with_options(...)` first.
        guesses: localization guesses per image (ILSVRC: 5).
        decoders: name -> decoder layer (default: `default_decoders(detector)`, the merge
            and NMS), all applied to the same dense boxes.
    """

    def __init__(
        self,
        model: keras.Model,
        guesses: int = GUESSES,
        decoders: dict[str, keras.layers.Layer] | None = None,
    ) -> None:
        if not isinstance(guesses, int) or guesses < 1:
            raise ValueError(f"guesses must be a positive int, got {guesses!r}.")
        self.detector = as_detector(model)
        self.guesses = guesses
        self.decoders = decoders or default_decoders(self.detector)
        self._detect = tf.function(
            lambda image: detect_both(self.detector, image, self.decoders, guesses),
            input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
            autograph=False,
        )

    def __call__(self, image: Any) -> dict[str, Any]:
        """One image `[H, W, 3]` (0..255) -> `{"merge": ..., "nms": ...,
        "localize": {"merge": ..., "nms": ...}, "class_scores": [C]}`; each detection set is
        `{"boxes" [n, 4] normalized yxyx, "scores" [n], "classes" [n]}`, best first."""
        out = {k: v.numpy() for k, v in self._detect(tf.cast(image, tf.float32)).items()}

        def found(prefix: str) -> dict[str, np.ndarray]:
            n = int(out[f"{prefix}num"])
            return {
                "boxes": out[f"{prefix}boxes"][:n],
                "scores": out[f"{prefix}scores"][:n],
                "classes": out[f"{prefix}classes"][:n],
            }

        names = list(self.decoders)
        result: dict[str, Any] = {c: found(f"{c}/") for c in names}
        localize = "localize/" if f"localize/{names[0]}/num" in out else ""
        result["localize"] = {
            c: first_box_per_class(found(f"{localize}{c}/"), self.guesses) for c in names
        }
        result["class_scores"] = out["class_scores"]
        return result


# --- over a split --------------------------------------------------------------------------------
def _decode(example: dict[str, Any]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    image, boxes, labels = decode_detection_example(example)
    return image, boxes, labels, data.example_label(example)


def detection_split(
    dataset: str | tf.data.Dataset,
    split: str,
    data_dir: str | None = None,
    counter: data.CorruptRecordCounter | None = None,
) -> tf.data.Dataset:
    """(image float32 `[H, W, 3]` 0..255, boxes `[n, 4]` normalized yxyx, labels `[n]` int32,
    image label int64 (-1: none)) of a detection split, in order; corrupt records dropped
    and counted."""
    examples = tfds_io.raw_split(dataset, split, data_dir)
    return examples.apply(data.skip_corrupt(_decode, counter))


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _options_dict(detector: OverFeatDetector) -> dict[str, Any]:
    values = detector.resolved_options()
    values.pop("combine")  # both are evaluated
    return values


def evaluate_detection(
    model: keras.Model,
    dataset: str | tf.data.Dataset,
    split: str = "test",
    data_dir: str | None = None,
    guesses: int = GUESSES,
    iou_threshold: float = 0.5,
    max_examples: int | None = None,
    progress: bool = False,
    decoders: dict[str, keras.layers.Layer] | None = None,
    on_image: Callable[[int, tf.Tensor, dict[str, Any]], None] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Localization error, AP / mAP (merge vs NMS) and classification errors on a split.

    Args:
        model: an `OverFeatDetector` (evaluated with its own options) or an `OverFeat`
            network (the default options) whose classes are the dataset's.
        dataset: a TFDS name with the detection schema (e.g. "overfeat_shapes/standard") or
            a `tf.data.Dataset` of example dicts (`image`, `objects/bbox` normalized yxyx,
            `objects/label`, optional `label`).
        split: the split to evaluate.
        data_dir: TFDS data directory.
        guesses: localization guesses per image (ILSVRC: 5).
        iou_threshold: IoU of a correct detection / localization (0.5).
        max_examples: evaluate only the first `max_examples` images.
        progress: show a progress bar over the images on stderr.
        decoders: name -> decoder layer, all applied to the same dense boxes (default: "merge"
            and "nms", `default_decoders`).
        on_image: called with each image's index, the image (`[H, W, 3]` float32 0..255)
            and its detections (`DetectionEvaluator.__call__`'s dict: boxes normalized
            yxyx), e.g. to draw a few without running the network again.
        workers: images in flight at once (`utils.threads.ordered_map`; None: 2, or 1 on
            one core). The same results for any number: each image's detections are its own.

    Returns:
        A JSON-able dict: `examples`, `labelled_examples`, `objects`, `corrupt_records`,
        `seconds` (all images), `first_image_seconds` (includes tracing the per-image
        function), `seconds_per_image` (after the first), `options`, `guesses`, `iou_threshold`,
        `class_names`, `classification` (`top1_error`, `top5_error`, %), and for each
        decoder ("merge" and "nms" by default): `map` (mAP@iou, None if no ground truth),
        `map_50_95` (COCO's mAP@[.5:.95], the mean over IoU 0.5, 0.55, ..., 0.95),
        `ap` (per class, None for classes without ground truth), `localization_error` (%),
        `detections_per_image`.
    """
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}.")
    evaluator = DetectionEvaluator(model, guesses, decoders)
    tally = _Tally(evaluator.detector.num_classes, list(evaluator.decoders))
    counter = data.CorruptRecordCounter()
    images = detection_split(dataset, split, data_dir, counter)
    if max_examples is not None:
        images = images.take(max_examples)
    bar = progress_bar(images, max_examples, "images") if progress else None
    start = time.monotonic()
    first_image_seconds = 0.0

    def detect(example: tuple[tf.Tensor, ...]) -> dict[str, Any]:
        image, _, gt_labels, label = example
        tally.check_labels(gt_labels.numpy(), int(label))
        return evaluator(image)

    examples = ordered_map(detect, images.prefetch(data.AUTOTUNE), workers)
    for (image, gt_boxes, gt_labels, label), out in examples:
        if tally.count == 0:
            first_image_seconds = time.monotonic() - start
        tally.add(out, gt_boxes.numpy(), gt_labels.numpy(), int(label))
        if on_image is not None:
            on_image(tally.count - 1, image, out)
        if bar is not None:
            bar.update(tally.count)
    seconds = time.monotonic() - start
    if tally.count == 0:
        raise ValueError(f"No examples were evaluated in split {split!r}.")
    count = tally.count
    result: dict[str, Any] = {
        "examples": count,
        "labelled_examples": len(tally.loc_truth),
        "objects": tally.objects,
        "corrupt_records": counter.value(),
        "seconds": seconds,
        "first_image_seconds": first_image_seconds,
        "seconds_per_image": (
            (seconds - first_image_seconds) / (count - 1) if count > 1 else seconds
        ),
        "options": _options_dict(evaluator.detector),
        "guesses": guesses,
        "iou_threshold": iou_threshold,
        "class_names": class_names(evaluator.detector),
    }
    return {**result, **tally.scores(iou_threshold, guesses)}


class _Tally:
    """What `evaluate_detection` accumulates over the images (detections, localization
    guesses, classification hits) and the scores it gives at the end."""

    def __init__(self, num_classes: int, names: list[str]) -> None:
        self.num_classes = num_classes
        self.names = names
        self.accumulators = {c: metrics.DetectionAccumulator(num_classes) for c in names}
        self.loc_guesses: dict[str, list[metrics.Guesses]] = {c: [] for c in names}
        self.loc_truth: list[metrics.GroundTruth] = []
        self.num_detections = dict.fromkeys(names, 0)
        self.top1 = self.top5 = self.count = self.objects = 0

    def check_labels(self, gt_labels: np.ndarray, label: int) -> None:
        largest = max(label, *gt_labels.tolist(), 0)
        if largest >= self.num_classes:
            raise ValueError(
                f"Label {largest} is outside the model's {self.num_classes} classes: evaluate "
                "on the dataset the model was trained on."
            )

    def add(self, out: dict, gt_boxes: np.ndarray, gt_labels: np.ndarray, label: int) -> None:
        for c in self.names:
            det = out[c]
            self.accumulators[c].add_image(
                det["boxes"], det["scores"], det["classes"], gt_boxes, gt_labels
            )
            self.num_detections[c] += len(det["scores"])
        if label >= 0:
            for c in self.names:
                loc = out["localize"][c]
                self.loc_guesses[c].append(metrics.Guesses(loc["classes"], loc["boxes"]))
            self.loc_truth.append(metrics.GroundTruth(label, gt_boxes, gt_labels))
            order = np.argsort(-out["class_scores"], kind="stable")
            self.top1 += int(order[0] == label)
            self.top5 += int(label in order[:5])
        self.count += 1
        self.objects += len(gt_labels)

    def scores(self, iou_threshold: float, guesses: int) -> dict[str, Any]:
        labelled = len(self.loc_truth)
        result: dict[str, Any] = {
            "classification": {
                "top1_error": 100.0 * (1 - self.top1 / labelled) if labelled else None,
                "top5_error": 100.0 * (1 - self.top5 / labelled) if labelled else None,
            }
        }
        for c in self.names:
            ap = self.accumulators[c].average_precision(iou_threshold)
            error = (
                metrics.localization_error(
                    self.loc_guesses[c], self.loc_truth, iou_threshold, guesses
                )
                if labelled
                else float("nan")
            )
            coco = [self.accumulators[c].average_precision(t) for t in COCO_IOU_THRESHOLDS]
            result[c] = {
                "map": _json_float(metrics.mean_average_precision(ap)),
                "map_50_95": _json_float(
                    np.mean([metrics.mean_average_precision(a) for a in coco])
                ),
                "ap": [_json_float(v) for v in ap],
                "localization_error": _json_float(100.0 * error),
                "detections_per_image": self.num_detections[c] / self.count,
            }
        return result


# --- report ----------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_report(result: dict[str, Any]) -> str:
    """Markdown tables: merge vs NMS side by side (summary, then AP per class)."""
    merge, nms = result["merge"], result["nms"]
    cls = result["classification"]
    lines = [
        f"| {result['examples']} images | greedy merge (paper §4.3) | NMS "
        f"(IoU {result['options']['nms_iou']}) |",
        "|---|---|---|",
        f"| mAP@{result['iou_threshold']} | {_fmt(merge['map'])} | {_fmt(nms['map'])} |",
        f"| localization error, {result['guesses']} guesses (%) | "
        f"{_fmt(merge['localization_error'], 2)} | {_fmt(nms['localization_error'], 2)} |",
        f"| detections per image | {merge['detections_per_image']:.1f} | "
        f"{nms['detections_per_image']:.1f} |",
        "",
        f"Classification from the same runs: top-1 error {_fmt(cls['top1_error'], 2)} %, "
        f"top-5 error {_fmt(cls['top5_error'], 2)} %.",
        "",
        f"| class | AP@{result['iou_threshold']} merge | AP@{result['iou_threshold']} NMS |",
        "|---|---|---|",
    ]
    for name, a, b in zip(result["class_names"], merge["ap"], nms["ap"], strict=True):
        lines.append(f"| {name} | {_fmt(a)} | {_fmt(b)} |")
    return "\n".join(lines)

"""Localization and detection evaluation (paper §4.4, §5) on a TFDS detection split.

For every image, one traced `tf.function` (`DetectionEvaluator`) runs the model over the
pyramid once (`detection.dense_boxes`: every window of the top-k classes of every scale and
flip predicts a box) and combines the *same* dense boxes two ways:

- `merge`: the paper's greedy merge (§4.3, `merge.greedy_merge`), as `detection.detect`;
- `nms`: per-class `tf.image.non_max_suppression` (`detection.class_nms`), the usual
  alternative the paper compares against ("more robust to false positives ... than
  traditional non-maximum suppression").

From each of the two it scores, over the split (`overfeat_tf.metrics`):

- detection: AP@`iou_threshold` per class and their mean (mAP, over the classes with ground
  truth), COCO's definition, every detection of every image kept (up to
  `options.max_detections` per image);
- localization: the ILSVRC error with `guesses` (5) guesses per image: the best box of each
  of the best classes of the detections (`detection.first_box_per_class`, as
  `detection.localize`, with `top_k = guesses` classes per level); correct if one guess has
  the image's class (`label`, or the largest object's class for datasets without one:
  `data.example_label`) and IoU >= 0.5 with one of its boxes of that class;

and, from the same run, the multi-scale classification top-1 / top-5 errors of
`class_scores` (mean over levels and flips of each class's spatial max).

All boxes are normalized yxyx of the original image, ground truth (TFDS `objects/bbox`) and
detections alike. Errors are percentages of the labelled images evaluated; APs are in
[0, 1].

Command (prints the result as JSON; `--markdown` for tables):
    python -m overfeat_tf.detection_eval --model runs/detect/model.keras \
        --dataset overfeat_shapes/standard --split test [--limit N] [--scales 247,327,439]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from overfeat_tf import data, metrics
from overfeat_tf.detection import (
    COMBINE,
    DetectionOptions,
    add_detection_arguments,
    combine_boxes,
    dense_boxes,
    detection_arguments,
    first_box_per_class,
    kept_boxes,
)
from overfeat_tf.pyramid import default_scales, parse_scales
from overfeat_tf.spatial_training import decode_detection_example

GUESSES = 5  # ILSVRC localization: 5 (class, box) guesses per image
_FIELDS = ("boxes", "scores", "classes", "num")


# --- per image, in TF ops ----------------------------------------------------------------------
def detect_both(
    model: keras.Model, image: tf.Tensor, options: DetectionOptions, guesses: int = GUESSES
) -> dict[str, tf.Tensor]:
    """Detections of one image `[H, W, 3]` (RGB 0..255) merged and NMS-ed from the same
    dense boxes (TF ops, graph-safe).

    Returns a flat dict: `"{combine}/{field}"` for combine in ("merge", "nms") and field in
    ("boxes" `[D, 4]` normalized yxyx, "scores" `[D]`, "classes" `[D]` int32, "num" `[]`
    valid rows), the same under `"localize/{combine}/..."` when `options.top_k != guesses`
    (localization then needs its own `top_k = guesses` pass), and `"class_scores"` `[C]`.
    """
    outputs: dict[str, tf.Tensor] = {}
    boxes, scores, classes, class_scores = dense_boxes(model, image, options)
    passes = [("", (boxes, scores, classes))]
    if options.top_k != guesses:
        loc_boxes, loc_scores, loc_classes, _ = dense_boxes(
            model, image, options.replace(top_k=guesses)
        )
        passes.append(("localize/", (loc_boxes, loc_scores, loc_classes)))
    for prefix, dense in passes:
        kept = kept_boxes(*dense, options)
        for combine in COMBINE:
            result = combine_boxes(*kept, options, combine)
            values = (result.boxes, result.scores, result.classes, result.num_merged)
            for field, value in zip(_FIELDS, values, strict=True):
                outputs[f"{prefix}{combine}/{field}"] = value
    outputs["class_scores"] = class_scores
    return outputs


class DetectionEvaluator:
    """One compiled per-image function for a model and options (any image size).

    Args:
        model: an `OverFeat` model (with a regressor for real boxes; without one, every
            window is its own box).
        options: `DetectionOptions` (its `combine` is ignored: both are computed).
        guesses: localization guesses per image (ILSVRC: 5).
    """

    def __init__(
        self,
        model: keras.Model,
        options: DetectionOptions | None = None,
        guesses: int = GUESSES,
    ) -> None:
        if not isinstance(guesses, int) or guesses < 1:
            raise ValueError(f"guesses must be a positive int, got {guesses!r}.")
        self.model = model
        self.options = options or DetectionOptions()
        self.guesses = guesses
        self._detect = tf.function(
            lambda image: detect_both(model, image, self.options, guesses),
            input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
            reduce_retracing=True,
        )

    def __call__(self, image: Any) -> dict[str, Any]:
        """One image `[H, W, 3]` (0..255) -> `{"merge": ..., "nms": ...,
        "localize": {"merge": ..., "nms": ...}, "class_scores": [C]}`; each detection set is
        `{"boxes" [n, 4] normalized yxyx, "scores" [n], "class_ids" [n]}`, best first."""
        out = {k: v.numpy() for k, v in self._detect(tf.cast(image, tf.float32)).items()}

        def found(prefix: str) -> dict[str, np.ndarray]:
            n = int(out[f"{prefix}num"])
            return {
                "boxes": out[f"{prefix}boxes"][:n],
                "scores": out[f"{prefix}scores"][:n],
                "class_ids": out[f"{prefix}classes"][:n],
            }

        result: dict[str, Any] = {c: found(f"{c}/") for c in COMBINE}
        localize = "localize/" if f"localize/{COMBINE[0]}/num" in out else ""
        result["localize"] = {
            c: first_box_per_class(found(f"{localize}{c}/"), self.guesses) for c in COMBINE
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
    examples = data.raw_split(dataset, split, data_dir)
    return examples.apply(data.skip_corrupt(_decode, counter))


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _options_dict(options: DetectionOptions, model: keras.Model) -> dict[str, Any]:
    scales = options.scales if options.scales is not None else default_scales(model.config)
    return {
        "scales": [list(s) if isinstance(s, tuple) else s for s in scales],
        "flips": options.flips,
        "stride": options.stride,
        "top_k": options.top_k,
        "score_threshold": options.score_threshold,
        "max_boxes": options.max_boxes,
        "merge_threshold": options.merge_threshold,
        "max_detections": options.max_detections,
        "nms_iou": options.nms_iou,
    }


def evaluate_detection(
    model: keras.Model,
    dataset: str | tf.data.Dataset,
    split: str = "test",
    data_dir: str | None = None,
    options: DetectionOptions | None = None,
    guesses: int = GUESSES,
    iou_threshold: float = 0.5,
    limit: int | None = None,
    log_every: int = 0,
) -> dict[str, Any]:
    """Localization error, AP / mAP (merge vs NMS) and classification errors on a split.

    Args:
        model: an `OverFeat` model whose classes are the dataset's.
        dataset: a TFDS name with the detection schema (e.g. "overfeat_shapes/standard") or
            a `tf.data.Dataset` of example dicts (`image`, `objects/bbox` normalized yxyx,
            `objects/label`, optional `label`).
        split: the split to evaluate.
        data_dir: TFDS data directory.
        options: `DetectionOptions` (scales, flips, stride, top_k, thresholds ...).
        guesses: localization guesses per image (ILSVRC: 5).
        iou_threshold: IoU of a correct detection / localization (0.5).
        limit: evaluate only the first `limit` images.
        log_every: print progress to stderr every that many images (0: never).

    Returns:
        A JSON-able dict: `examples`, `labelled_examples`, `objects`, `corrupt_records`,
        `seconds` (all images), `first_image_seconds` (includes tracing the per-image
        function), `seconds_per_image` (after the first), `options`, `guesses`, `iou_threshold`,
        `class_names`, `classification` (`top1_error`, `top5_error`, %), and for "merge"
        and "nms": `map` (mAP@iou, None if no ground truth), `ap` (per class, None for
        classes without ground truth), `localization_error` (%), `detections_per_image`.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}.")
    evaluator = DetectionEvaluator(model, options, guesses)
    num_classes = model.num_classes
    accumulators = {c: metrics.DetectionAccumulator(num_classes) for c in COMBINE}
    loc_guesses: dict[str, list[metrics.Guesses]] = {c: [] for c in COMBINE}
    loc_truth: list[metrics.GroundTruth] = []
    num_detections = dict.fromkeys(COMBINE, 0)
    top1 = top5 = count = objects = 0
    first_image_seconds = 0.0
    counter = data.CorruptRecordCounter()
    images = detection_split(dataset, split, data_dir, counter)
    if limit is not None:
        images = images.take(limit)
    start = time.monotonic()
    for image, gt_boxes, gt_labels, label in images.prefetch(data.AUTOTUNE):
        gt_boxes, gt_labels, label = gt_boxes.numpy(), gt_labels.numpy(), int(label)
        if max(label, *gt_labels.tolist(), 0) >= num_classes:
            raise ValueError(
                f"Label {max(label, *gt_labels.tolist())} is outside the model's {num_classes} "
                "classes: evaluate on the dataset the model was trained on."
            )
        out = evaluator(image)
        if count == 0:
            first_image_seconds = time.monotonic() - start
        for c in COMBINE:
            det = out[c]
            accumulators[c].add_image(
                det["boxes"], det["scores"], det["class_ids"], gt_boxes, gt_labels
            )
            num_detections[c] += len(det["scores"])
        if label >= 0:
            for c in COMBINE:
                loc = out["localize"][c]
                loc_guesses[c].append(metrics.Guesses(loc["class_ids"], loc["boxes"]))
            loc_truth.append(metrics.GroundTruth(label, gt_boxes, gt_labels))
            order = np.argsort(-out["class_scores"], kind="stable")
            top1 += int(order[0] == label)
            top5 += int(label in order[:5])
        count += 1
        objects += len(gt_labels)
        if log_every and count % log_every == 0:
            rate = count / (time.monotonic() - start)
            print(f"{count} images, {rate:.2f} images/s", file=sys.stderr, flush=True)
    seconds = time.monotonic() - start
    if count == 0:
        raise ValueError(f"No examples were evaluated in split {split!r}.")
    labelled = len(loc_truth)
    result: dict[str, Any] = {
        "examples": count,
        "labelled_examples": labelled,
        "objects": objects,
        "corrupt_records": counter.value(),
        "seconds": seconds,
        "first_image_seconds": first_image_seconds,
        "seconds_per_image": (
            (seconds - first_image_seconds) / (count - 1) if count > 1 else seconds
        ),
        "options": _options_dict(evaluator.options, model),
        "guesses": guesses,
        "iou_threshold": iou_threshold,
        "class_names": list(model.class_names or [str(i) for i in range(num_classes)]),
        "classification": {
            "top1_error": 100.0 * (1 - top1 / labelled) if labelled else None,
            "top5_error": 100.0 * (1 - top5 / labelled) if labelled else None,
        },
    }
    for c in COMBINE:
        ap = accumulators[c].average_precision(iou_threshold)
        error = (
            metrics.localization_error(loc_guesses[c], loc_truth, iou_threshold, guesses)
            if labelled
            else float("nan")
        )
        result[c] = {
            "map": _json_float(metrics.mean_average_precision(ap)),
            "ap": [_json_float(v) for v in ap],
            "localization_error": _json_float(100.0 * error),
            "detections_per_image": num_detections[c] / count,
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


# --- command line ----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = DetectionOptions()
    p = argparse.ArgumentParser(
        description="Localization error and detection mAP (merge vs NMS) on a TFDS split."
    )
    p.add_argument("--model", required=True, help="a .keras model (with a regressor)")
    p.add_argument("--dataset", required=True, help="TFDS name, e.g. overfeat_shapes/standard")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--scales", type=parse_scales, default=None, help='e.g. "247,327,439"')
    add_detection_arguments(p)
    p.add_argument("--nms-iou", type=float, default=defaults.nms_iou)
    p.add_argument("--guesses", type=int, default=GUESSES, help="localization guesses")
    p.add_argument("--iou-threshold", type=float, default=0.5)
    p.add_argument("--markdown", action="store_true", help="print tables instead of JSON")
    p.add_argument("--log-every", type=int, default=0, help="progress on stderr every N images")
    return p.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> DetectionOptions:
    return DetectionOptions(scales=args.scales, nms_iou=args.nms_iou, **detection_arguments(args))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import overfeat_tf  # noqa: F401  (registers the custom layers for load_model)

    model = keras.models.load_model(args.model)
    result = evaluate_detection(
        model,
        args.dataset,
        args.split,
        args.data_dir,
        options_from_args(args),
        guesses=args.guesses,
        iou_threshold=args.iou_threshold,
        limit=args.limit,
        log_every=args.log_every,
    )
    result = {"model": args.model, "dataset": args.dataset, "split": args.split, **result}
    print(format_report(result) if args.markdown else json.dumps(result))
    return result


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")

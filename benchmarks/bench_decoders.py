"""Benchmark: the prediction decoders on the same dense boxes — the paper's merge against the
best NMS (its IoU threshold and per-class vs class-agnostic chosen on the validation split),
and the round-based merge (the package's) against the paper's one-pair-per-step rule (the
NumPy reference `tests/merge_reference.sequential_merge_numpy`, run on the same boxes).

For a trained detector (e.g. `benchmarks/bench_detection.py`'s localize model) every image of
a split runs the pyramid + network once (`detection_eval.detect_both`) and every decoder decodes
the same dense boxes, so the rows differ only by the decoder:

1. validation split: the merge (rounds) at t = 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 (and the detector's
   own t), the sequential merge at the detector's t, and NMS at IoU 0.3, 0.4, 0.5, 0.6, 0.7, per
   class and class-agnostic; the t and the NMS setting with the best mAP@0.5 (ties: the lower
   localization error; for t, then the detector's own t) are chosen there;
2. test split: the merge (rounds and sequential) at the detector's t (and the rounds at the
   chosen t when it differs), the chosen NMS and the usual default NMS (IoU 0.5, per class),
   mAP@0.5 and ILSVRC localization error (5 guesses);
3. decoder cost: on the first test images, the dense boxes once, then each test decoder alone
   on them (each in its own tf.function, traced before timing): seconds per image.

    python benchmarks/bench_decoders.py --model runs/det/localize/model.keras \\
        --scales 247,327,439,583,775,1031 [--val-examples 300] [--test-examples N] \\
        [--timing-examples 20] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import machine, write_section
from overfeat_tf import cli
from overfeat_tf.evaluation import detection as detection_eval
from overfeat_tf.models import decoders as dec
from overfeat_tf.models.backbone import load_model
from overfeat_tf.models.detector import as_detector
from overfeat_tf.ops.merge import MERGE_THRESHOLD
from overfeat_tf.ops.pyramid import parse_scales
from tests.merge_reference import sequential_merge_numpy

NMS_IOUS = (0.3, 0.4, 0.5, 0.6, 0.7)
MERGE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SECTION = "Decoders: merge vs the best NMS, round-based vs sequential merge"


class SequentialMergeDecoder(keras.layers.Layer):
    """The paper's one-pair-per-step merge (NumPy reference, through `tf.numpy_function`;
    benchmark only) with `BoxMergeDecoder`'s inputs and outputs."""

    def __init__(self, merge_threshold: float, max_detections: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.merge_threshold, self.max_detections = merge_threshold, max_detections

    def _merge(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> tuple:
        b, s, c, k = sequential_merge_numpy(boxes, scores, classes, self.merge_threshold)
        d = self.max_detections
        n = min(d, len(s))

        def pad(x: np.ndarray, dtype: Any) -> np.ndarray:
            out = np.zeros((d, *x.shape[1:]), dtype)
            out[:n] = x[:n]
            return out

        return (
            pad(b.reshape(-1, 4), np.float32),
            pad(s, np.float32),
            pad(c, np.int32),
            pad(k, np.int32),
            np.int32(n),
        )

    def call(self, boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor) -> dict:
        d = self.max_detections
        out = tf.numpy_function(
            self._merge,
            [boxes, scores, tf.cast(classes, tf.int32)],
            [tf.float32, tf.float32, tf.int32, tf.int32, tf.int32],
            stateful=False,
        )
        shapes = ([d, 4], [d], [d], [d], [])
        result = dec.MergeResult(*(tf.ensure_shape(x, s) for x, s in zip(out, shapes, strict=True)))
        return dec.detections_dict(result)


def sweep_name(t: float) -> str:
    """The validation row of the merge (rounds) at threshold t."""
    return f"merge (rounds) t={t:g}"


def sweep_thresholds(options: dict[str, Any]) -> list[float]:
    """`MERGE_THRESHOLDS` and the detector's own t, ascending."""
    return sorted({*MERGE_THRESHOLDS, float(options["merge_threshold"])})


def sweep_decoders(options: dict[str, Any]) -> dict[str, keras.layers.Layer]:
    """The merge (rounds) at every t of `sweep_thresholds`: validation rows."""
    d = options["max_detections"]
    return {sweep_name(t): dec.BoxMergeDecoder(t, d) for t in sweep_thresholds(options)}


def best_threshold(rows: list[dict[str, Any]], default: float) -> float:
    """The t of the sweep rows (`sweep_name`) with the best mAP@0.5; ties: the lower
    localization error, then `default` (the detector's own t)."""
    by_t = {t: r for r in rows for t in [float(r["decoder"].rsplit("=", 1)[1])]}

    def key(t: float) -> tuple[float, float, bool]:
        r = by_t[t]
        return (r["map"] or 0.0, -(r["localization_error"] or 100.0), t == default)

    return max(by_t, key=key)


def merge_decoders(options: dict[str, Any]) -> dict[str, keras.layers.Layer]:
    """The merge rows at the detector's t: the package's rounds and the sequential rule."""
    d, t = options["max_detections"], options["merge_threshold"]
    return {
        "merge (rounds)": dec.BoxMergeDecoder(t, d),
        "merge (sequential)": SequentialMergeDecoder(t, d),
    }


def nms_decoders(options: dict[str, Any]) -> dict[str, keras.layers.Layer]:
    """NMS at every IoU of `NMS_IOUS`, per class and class-agnostic: validation rows."""
    d = options["max_detections"]
    return {
        f"NMS IoU {iou} {'per class' if per_class else 'class-agnostic'}": dec.NMSDecoder(
            iou, d, per_class=per_class
        )
        for iou in NMS_IOUS
        for per_class in (True, False)
    }


def _rows(result: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "decoder": name,
            "map": result[name]["map"],
            "localization_error": result[name]["localization_error"],
            "detections_per_image": result[name]["detections_per_image"],
        }
        for name in names
    ]


def time_decoders(
    detector: Any,
    decoders: dict[str, keras.layers.Layer],
    images: tf.data.Dataset,
) -> dict[str, Any]:
    """Seconds per image of the dense boxes and of each decoder alone on them.

    For each image: the pyramid + network + dense boxes once (pixels of the image), then each
    decoder on those boxes; every step is its own tf.function, traced on the first image
    before any timing, and its outputs fetched to the host inside the timing.

    Returns: `examples`, `dense_boxes_per_image` (mean boxes into the decoders),
    `dense_seconds_per_image`, `decoder_seconds_per_image` (name -> mean seconds).
    """
    image_spec = tf.TensorSpec([None, None, 3], tf.float32)
    dense = tf.function(
        lambda image: detector.dense_boxes(detector.levels(image))[:3],
        input_signature=[image_spec],
        autograph=False,
    )
    box_specs = [
        tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None], tf.float32),
        tf.TensorSpec([None], tf.int32),
    ]
    fns = {
        name: tf.function(
            lambda b, s, c, d=decoder: d(b, s, tf.cast(c, tf.int32)),
            input_signature=box_specs,
            autograph=False,
        )
        for name, decoder in decoders.items()
    }

    def timed(fn: Any, *args: Any) -> tuple[Any, float]:
        start = time.perf_counter()
        out = tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
        return out, time.perf_counter() - start

    totals = dict.fromkeys(fns, 0.0)
    dense_total, boxes_total, count = 0.0, 0, 0
    for k, image in enumerate(images):
        image = tf.cast(image, tf.float32)
        if k == 0:  # trace every function once
            boxes = dense(image)
            for fn in fns.values():
                fn(*boxes)
        boxes, seconds = timed(dense, image)
        dense_total += seconds
        boxes_total += len(boxes[1])
        for name, fn in fns.items():
            totals[name] += timed(fn, *boxes)[1]
        count += 1
    n = max(count, 1)
    return {
        "examples": count,
        "dense_boxes_per_image": boxes_total / n,
        "dense_seconds_per_image": dense_total / n,
        "decoder_seconds_per_image": {name: t / n for name, t in totals.items()},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validation rows (the t sweep, the sequential merge, every NMS), the choices made on
    them, test rows and the decoders' cost per image: the JSON-able report."""
    changes = {"scales": args.scales, "max_boxes": args.max_boxes}
    detector = as_detector(
        load_model(args.model), **{k: v for k, v in changes.items() if v is not None}
    )
    options = detector.options  # the model's own, unless a flag changes one
    default_t = float(options["merge_threshold"])
    start = time.monotonic()
    sequential = {k: v for k, v in merge_decoders(options).items() if k != "merge (rounds)"}
    val_decoders = {**sweep_decoders(options), **sequential, **nms_decoders(options)}
    print("--- validation: every decoder ---", file=sys.stderr, flush=True)
    val = detection_eval.evaluate_detection(
        detector,
        args.dataset,
        args.val_split,
        args.data_dir,
        max_examples=args.val_examples,
        progress=True,
        decoders=val_decoders,
    )
    sweep_rows = _rows(val, list(sweep_decoders(options)))
    best_t = best_threshold(sweep_rows, default_t)
    nms_rows = _rows(val, list(nms_decoders(options)))
    best = max(nms_rows, key=lambda r: (r["map"] or 0.0, -(r["localization_error"] or 100.0)))
    test_decoders = merge_decoders(options)
    if best_t != default_t:
        test_decoders[f"merge (rounds) t={best_t:g} (best on validation)"] = val_decoders[
            sweep_name(best_t)
        ]
    test_decoders[f"best NMS ({best['decoder']})"] = val_decoders[best["decoder"]]
    default_nms = dec.NMSDecoder(0.5, options["max_detections"])
    test_decoders["default NMS (IoU 0.5 per class)"] = default_nms
    print("--- test: merges, best NMS, default NMS ---", file=sys.stderr, flush=True)
    test = detection_eval.evaluate_detection(
        detector,
        args.dataset,
        args.test_split,
        args.data_dir,
        max_examples=args.test_examples,
        progress=True,
        decoders=test_decoders,
    )
    print("--- decoder cost per image ---", file=sys.stderr, flush=True)
    images = detection_eval.detection_split(args.dataset, args.test_split, args.data_dir)
    timing = time_decoders(
        detector, test_decoders, images.take(args.timing_examples).map(lambda i, *_: i)
    )
    return {
        "model": args.model,
        "dataset": args.dataset,
        "options": test["options"],
        "validation": {
            "split": args.val_split,
            "examples": val["examples"],
            "rows": _rows(val, list(val_decoders)),
            "merge_thresholds": [sweep_name(t) for t in sweep_thresholds(options)],
            "default_threshold": default_t,
            "package_threshold": MERGE_THRESHOLD,
            "best_threshold": best_t,
            "best_nms": best["decoder"],
        },
        "test": {
            "split": args.test_split,
            "examples": test["examples"],
            "objects": test["objects"],
            "rows": _rows(test, list(test_decoders)),
            "seconds_per_image": test["seconds_per_image"],
        },
        "timing": {"split": args.test_split, **timing},
        "seconds": time.monotonic() - start,
        "machine": machine(),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    def fmt(v: float | None, d: int) -> str:
        return "n/a" if v is None else f"{v:.{d}f}"

    lines = [
        "| decoder | mAP@0.5 | localization error % | detections / image |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['decoder']} | {fmt(r['map'], 3)} | {fmt(r['localization_error'], 2)} | "
            f"{r['detections_per_image']:.1f} |"
        )
    return "\n".join(lines)


def threshold_verdict(validation: dict[str, Any]) -> str:
    """One sentence: the detector's t is kept, or the t the validation sweep prefers."""
    best, default = validation["best_threshold"], validation["default_threshold"]
    rows = {r["decoder"]: r for r in validation["rows"]}
    won, own = rows[f"merge (rounds) t={best:g}"], rows[f"merge (rounds) t={default:g}"]

    def score(r: dict[str, Any]) -> str:
        m, e = r["map"], r["localization_error"]
        return f"mAP@0.5 {'n/a' if m is None else f'{m:.3f}'}, localization error " + (
            "n/a" if e is None else f"{e:.2f}%"
        )

    if best == default:
        return f"The detector's t = {default:g} is best on validation ({score(own)}): **kept**."
    return (
        f"t = {best:g} is best on validation ({score(won)}; the detector's t = {default:g}: "
        f"{score(own)}): **the default t should change to {best:g}** if the test rows below "
        "confirm it (the package default is not changed by this benchmark)."
    )


def _timing_table(timing: dict[str, Any]) -> str:
    lines = ["| step | ms / image |", "|---|---|"]
    dense_ms = 1e3 * timing["dense_seconds_per_image"]
    lines.append(f"| dense boxes (pyramid + network) | {dense_ms:.1f} |")
    for name, seconds in timing["decoder_seconds_per_image"].items():
        lines.append(f"| {name} | {1e3 * seconds:.1f} |")
    return "\n".join(lines)


def section(report: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of a `run` report."""
    val, test, timing = report["validation"], report["test"], report["timing"]
    sweep = set(val["merge_thresholds"])
    sweep_rows = [r for r in val["rows"] if r["decoder"] in sweep]
    other_rows = [r for r in val["rows"] if r["decoder"] not in sweep]
    return f"""Machine: {report["machine"]}.
Command: `python benchmarks/bench_decoders.py --model {report["model"]} --scales
{",".join(map(str, report["options"]["scales"]))} --write` ({report["seconds"]:.0f} s).

Every decoder decodes the same dense boxes of each image (one pyramid + network run,
`detection_eval.detect_both`; boxes in pixels of the original image), so the rows differ only
by how the boxes of all windows, scales and flips become detections. Options:
{json.dumps(report["options"])}.

Validation split ({val["examples"]} images of `{val["split"]}`).

Merge threshold t of the merge (rounds), chosen by mAP@0.5 (ties: localization error, then the
detector's t = {val["default_threshold"]:g}; package default `MERGE_THRESHOLD` =
{val["package_threshold"]:g}). Chosen: **t = {val["best_threshold"]:g}**.
{threshold_verdict(val)}

{_table(sweep_rows)}

The sequential merge (detector's t) and NMS; NMS's IoU threshold and per-class vs
class-agnostic chosen here, by mAP@0.5 (ties: localization error). Chosen:
**{val["best_nms"]}**.

{_table(other_rows)}

Test split ({test["examples"]} images, {test["objects"]} objects of `{test["split"]}`):

{_table(test["rows"])}

Cost per image ({timing["examples"]} images of `{timing["split"]}`,
{timing["dense_boxes_per_image"]:.0f} dense boxes per image on average): the dense boxes once,
then each decoder alone on them.

{_timing_table(timing)}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--model", required=True, help="a trained detector (.keras)")
    p.add_argument(
        "--dataset", default="overfeat_shapes/standard", metavar="NAME|PATH", help=cli.DATASET_HELP
    )
    cli.add_data_dir_arguments(p)
    p.add_argument("--val-split", default="validation")
    p.add_argument("--test-split", default="test")
    p.add_argument("--val-examples", type=int, default=300)
    p.add_argument("--test-examples", type=int, default=None, help="default: the whole split")
    p.add_argument(
        "--timing-examples",
        type=int,
        default=20,
        help="test images on which each decoder is timed alone",
    )
    p.add_argument("--scales", type=parse_scales, default=None)
    p.add_argument(
        "--max-boxes", type=int, default=None, help="boxes into the decoder (default: the model's)"
    )
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    print(json.dumps(report))
    print(section(report), file=sys.stderr)
    if args.write:
        write_section(SECTION, section(report))
    return report


if __name__ == "__main__":
    main()

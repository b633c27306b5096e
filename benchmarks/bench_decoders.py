"""Benchmark: the prediction decoders on the same dense boxes — the paper's merge against the
best NMS (its IoU threshold and per-class vs class-agnostic chosen on the validation split),
and the round-based merge (the package's) against the paper's one-pair-per-step rule (the
NumPy reference `tests/merge_reference.sequential_merge_numpy`, run on the same boxes).

For a trained detector (e.g. `benchmarks/bench_detection.py`'s localize model) every image of
a split runs the pyramid + network once (`detection_eval.detect_both`) and every decoder decodes
the same dense boxes, so the rows differ only by the decoder:

1. validation split: the merge (rounds and sequential) and NMS at IoU 0.3, 0.4, 0.5, 0.6, 0.7, per
   class and class-agnostic; the NMS setting with the best mAP@0.5 (ties: the lower
   localization error) is the fair baseline;
2. test split: the merge (rounds and sequential), the chosen NMS and the usual default NMS (IoU 0.5,
   per class), mAP@0.5 and ILSVRC localization error (5 guesses).

    python benchmarks/bench_decoders.py --model runs/det/localize/model.keras \\
        --scales 247,327,439,583,775,1031 [--val-examples 300] [--test-examples N] [--write]
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
from overfeat_tf.evaluation import detection as detection_eval
from overfeat_tf.models import decoders as dec
from overfeat_tf.models.backbone import load_model
from overfeat_tf.models.detector import as_detector
from overfeat_tf.ops.pyramid import parse_scales
from tests.merge_reference import sequential_merge_numpy

NMS_IOUS = (0.3, 0.4, 0.5, 0.6, 0.7)
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


def merge_decoders(options: dict[str, Any]) -> dict[str, keras.layers.Layer]:
    """The merge rows at the detector's t: the package's rounds and the sequential rule."""
    d, t = options["max_detections"], options["merge_threshold"]
    return {
        "merge (rounds)": dec.BoxMergeDecoder(t, d),
        "merge (sequential)": SequentialMergeDecoder(t, d),
    }


def nms_decoders(options: dict[str, Any]) -> dict[str, keras.layers.Layer]:
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    changes = {"scales": args.scales, "max_boxes": args.max_boxes}
    detector = as_detector(
        load_model(args.model), **{k: v for k, v in changes.items() if v is not None}
    )
    options = detector.options  # the model's own, unless a flag changes one
    start = time.monotonic()
    val_decoders = {**merge_decoders(options), **nms_decoders(options)}
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
    nms_rows = _rows(val, list(nms_decoders(options)))
    best = max(nms_rows, key=lambda r: (r["map"] or 0.0, -(r["localization_error"] or 100.0)))
    test_decoders = {
        **merge_decoders(options),
        f"best NMS ({best['decoder']})": val_decoders[best["decoder"]],
        "default NMS (IoU 0.5 per class)": dec.NMSDecoder(0.5, options["max_detections"]),
    }
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
    return {
        "model": args.model,
        "dataset": args.dataset,
        "options": test["options"],
        "validation": {
            "split": args.val_split,
            "examples": val["examples"],
            "rows": _rows(val, list(val_decoders)),
            "best_nms": best["decoder"],
        },
        "test": {
            "split": args.test_split,
            "examples": test["examples"],
            "objects": test["objects"],
            "rows": _rows(test, list(test_decoders)),
            "seconds_per_image": test["seconds_per_image"],
        },
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


def section(report: dict[str, Any]) -> str:
    val, test = report["validation"], report["test"]
    return f"""Machine: {report["machine"]}.
Command: `python benchmarks/bench_decoders.py --model {report["model"]} --scales
{",".join(map(str, report["options"]["scales"]))} --write` ({report["seconds"]:.0f} s).

Every decoder decodes the same dense boxes of each image (one pyramid + network run,
`detection_eval.detect_both`), so the rows differ only by how the boxes of all windows,
scales and flips become detections. Options: {json.dumps(report["options"])}.

Validation split ({val["examples"]} images of `{val["split"]}`): NMS's IoU threshold and per-class
vs class-agnostic chosen here, by mAP@0.5 (ties: localization error). Chosen: **{val["best_nms"]}**.

{_table(val["rows"])}

Test split ({test["examples"]} images, {test["objects"]} objects of `{test["split"]}`):

{_table(test["rows"])}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a trained detector (.keras)")
    p.add_argument("--dataset", default="overfeat_shapes/standard")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--val-split", default="validation")
    p.add_argument("--test-split", default="test")
    p.add_argument("--val-examples", type=int, default=300)
    p.add_argument("--test-examples", type=int, default=None, help="default: the whole split")
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

"""The localization and detection evaluation command (paper §4.4, §5):

    python -m overfeat_tf.detection_eval --model runs/tiny/model.keras \\
        --dataset overfeat_shapes/standard --split test [--max-examples N] [--scales 247,327]
    python -m overfeat_tf.detection_eval --model runs/det/model.keras \\
        --dataset labels.json --images photos/ --split train[90%:]

prints mAP (merge vs NMS), the localization error and the classification errors of
`evaluation.detection.evaluate_detection` (`--format json`: one JSON object). A detector is
evaluated with its own options unless flags change them. --dataset is a TFDS name or a path
(a COCO .json or a Pascal VOC folder; `overfeat_tf.data.files`: crowd and difficult objects
are left out of the ground truth, so detections of them count as false positives).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from overfeat_tf import cli
from overfeat_tf.evaluation.detection import GUESSES, evaluate_detection, format_report
from overfeat_tf.models.backbone import load_model
from overfeat_tf.models.detector import as_detector


# --- command line ----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = cli.command_parser(
        "python -m overfeat_tf.detection_eval",
        "Localization error and detection mAP (merge vs NMS) on a split of a TFDS dataset or "
        "of one read from files (COCO .json, VOC folder). A detector "
        "model is evaluated with its own options unless flags change them.",
    )
    cli.add_dataset_arguments(p)
    cli.add_detection_flags(p.add_argument_group("detection options"))
    p.add_argument("--guesses", type=int, default=GUESSES, help="localization guesses")
    p.add_argument("--iou-threshold", type=float, default=0.5)
    cli.add_format_argument(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    notes = cli.report_file_dataset(args.dataset, args.data_dir)  # checked before the model
    model = as_detector(load_model(args.model), **cli.given(args, cli.detection_flags()))
    result = evaluate_detection(
        model,
        args.dataset,
        args.split,
        args.data_dir,
        guesses=args.guesses,
        iou_threshold=args.iou_threshold,
        max_examples=args.max_examples,
        progress=args.format == "text",
    )
    result = {"model": args.model, "dataset": args.dataset, "split": args.split, **result}
    if notes is not None:
        result.update(notes)
    cli.print_result(result, args.format, format_report)
    return result


if __name__ == "__main__":
    cli.run(main)

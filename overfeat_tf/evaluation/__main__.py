"""The multi-scale classification evaluation command (paper Table 2):

    python -m overfeat_tf.evaluation --model X.keras --dataset NAME|PATH --split test \
        [--scales 245,281x317]

prints the table of `evaluation.classification.evaluate` (`--format json`: one JSON object).
--dataset is a TFDS name or a path (a COCO .json, a Pascal VOC folder, a folder of class
folders; `overfeat_tf.data.files`), whose images folder --images gives.
"""

from __future__ import annotations

import argparse
from typing import Any

from overfeat_tf import cli
from overfeat_tf.evaluation.classification import evaluate, format_report
from overfeat_tf.models.backbone import load_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.command_parser(
        "python -m overfeat_tf.evaluation",
        "Multi-scale classification evaluation (paper Table 2) of any overfeat_tf model "
        "(classify, detect or localize).",
    )
    cli.add_dataset_arguments(p)
    cli.add_detection_flags(p, names=["scales"])
    cli.add_format_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    notes = cli.report_file_dataset(args.dataset, args.data_dir)  # checked before the model
    model = load_model(args.model)
    result = evaluate(
        model,
        args.dataset,
        args.split,
        args.data_dir,
        cli.given(args, cli.detection_flags()).get("scales"),
        max_examples=args.max_examples,
        progress=args.format == "text",
    )
    if notes is not None:
        result = {**result, **notes}
    cli.print_result(result, args.format, format_report)
    return result


if __name__ == "__main__":
    cli.run(main)

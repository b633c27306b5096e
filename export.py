"""Export an OverFeat `.keras` model as a TF Serving SavedModel (see `overfeat_tf.export.serving`).

    python export.py --model runs/tiny/localize/model.keras --export-dir serving/overfeat
    python export.py --model model.keras --export-dir serving/overfeat --version 3 \\
        --scales 231,263,300x400 --top-k 3 --merge-threshold 0.7 --max-detections 50 \\
        --max-pixels 16000000 --feature-layer fc7_linear

Writes `<export-dir>/<version>/` (default version: 1 + the largest existing one) through a
temporary directory and an atomic rename, and prints its path. A detector model
(`train.py --task detect|localize`) is exported with its own options unless flags change
them. Signatures: `serving_default` (encoded images -> detections + top-5), `detect_images`
(uint8 tensor), `classify`, `features`, `metadata`. Inspect with
`saved_model_cli show --dir <export-dir>/<version> --all`. Errors print one line and exit with
status 1, leaving nothing behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    from overfeat_tf import cli
    from overfeat_tf.export.serving import ExportOptions

    parser = cli.command_parser(
        "python export.py",
        "Export an OverFeat .keras model for TF Serving (multi-scale detection, "
        "classification and features, box merging in the graph). A detector is exported "
        "with its own options unless flags change them.",
    )
    parser.add_argument(
        "--export-dir", required=True, help="model base directory (TF Serving model_base_path)"
    )
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: next free one)"
    )
    cli.add_detection_flags(parser.add_argument_group("detection options"))
    group = parser.add_argument_group("export options")
    cli.add_flags(group, cli.export_flags(), ExportOptions().to_dict())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    import tensorflow as tf

    from overfeat_tf import cli
    from overfeat_tf.export import serving
    from overfeat_tf.models.backbone import load_model
    from overfeat_tf.models.detector import as_detector

    try:
        if args.version is not None and args.version < 1:
            raise ValueError(f"--version must be a positive int, got {args.version}.")
        detector = as_detector(load_model(args.model), **cli.given(args, cli.detection_flags()))
        options = serving.ExportOptions(**cli.given(args, cli.export_flags()))
        path = serving.export_model(detector, args.export_dir, args.version, options)
    except (OSError, ValueError, tf.errors.OpError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

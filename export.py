"""Export an OverFeat `.keras` model as a TF Serving SavedModel (see `overfeat_tf.serving`).

    python export.py --model runs/quickstart/model.keras --export-dir serving/overfeat
    python export.py --model model.keras --export-dir serving/overfeat --version 3 \\
        --scales 231 263 300x400 --top-k 3 --merge-threshold 0.7 --max-detections 50 \\
        --max-pixels 16000000 --feature-layer fc7

Writes `<export-dir>/<version>/` (default version: 1 + the largest existing one) through a
temporary directory and an atomic rename, and prints its path. Signatures: `serving_default`
(encoded images -> detections + top-5), `detect_images` (uint8 tensor), `classify`,
`features`, `metadata`. Inspect with `saved_model_cli show --dir <export-dir>/<version> --all`.
Errors print one line and exit with status 1, leaving nothing behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parser() -> argparse.ArgumentParser:
    from overfeat_tf.detection import add_detection_arguments
    from overfeat_tf.image_io import DEFAULT_MAX_PIXELS

    parser = argparse.ArgumentParser(
        prog="python export.py",
        description="Export an OverFeat .keras model for TF Serving (multi-scale detection, "
        "classification and features, box merging in the graph).",
    )
    parser.add_argument("--model", required=True, help="an OverFeat .keras model file")
    parser.add_argument(
        "--export-dir", required=True, help="model base directory (TF Serving model_base_path)"
    )
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: next free one)"
    )
    parser.add_argument(
        "--scales",
        nargs="+",
        default=None,
        metavar="SCALE",
        help="pyramid scales: short sides (231) and/or HxW sizes (281x317); default: the "
        "net's six default scales",
    )
    add_detection_arguments(parser)
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="reject images of more pixels (height x width), checked before decoding",
    )
    parser.add_argument(
        "--feature-layer",
        default="fc7",
        help="layer of the features signature: a name (fc7, pool5, conv5, ...) or OverFeat's "
        "layer number",
    )
    parser.add_argument(
        "--feature-size",
        type=int,
        default=None,
        help="short side (px) images are resized to for features (default: the net's crop "
        "size; 0: original size)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    import tensorflow as tf

    from overfeat_tf import serving
    from overfeat_tf.detection import detection_arguments
    from overfeat_tf.pyramid import parse_scales

    try:
        layer = args.feature_layer
        options = serving.ExportOptions(
            scales=None if args.scales is None else parse_scales(args.scales),
            max_pixels=args.max_pixels,
            feature_layer=int(layer) if layer.strip().isdigit() else layer,
            feature_size=args.feature_size,
            **detection_arguments(args),
        )
        if args.version is not None and args.version < 1:
            raise ValueError(f"--version must be a positive int, got {args.version}.")
        model = serving.load_keras_model(args.model)
        path = serving.export_model(model, args.export_dir, args.version, options)
    except (OSError, ValueError, tf.errors.OpError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The feature extraction command (OverFeat's `-L n` / `-f`):

    python -m overfeat_tf.features --model X.keras [--layer fc7_linear] --images DIR \
        --output DIR [--pooled]

writes one `.npy` per image of the layer's features (`release.features`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from overfeat_tf.architecture.config import STRIDES
from overfeat_tf.data.image_io import load_image, short_message
from overfeat_tf.models.backbone import backbone_of, load_model
from overfeat_tf.ops.resizing import resize_short_side
from overfeat_tf.release.features import (
    FEATURE_LAYER,
    IMAGE_EXTENSIONS,
    check_size,
    feature_model,
    resolve_layer,
)
from overfeat_tf.utils.atomic import save_npy


def _list_images(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Image directory {directory} not found.")
    files = sorted(
        name
        for name in os.listdir(directory)
        if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, name))
    )
    if not files:
        raise ValueError(
            f"No images in {directory}: expected files ending in {', '.join(IMAGE_EXTENSIONS)}."
        )
    return files


def _load_model(path: str) -> keras.Model:
    """The `OverFeat` network of a `.keras` network or detector."""
    return backbone_of(load_model(path))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m overfeat_tf.features",
        description="Write the features of every image in a folder to one .npy per image.",
    )
    parser.add_argument("--model", required=True, help="an OverFeat .keras model")
    parser.add_argument(
        "--layer",
        default=FEATURE_LAYER,
        help="layer name (normalize, conv5, pool5, fc7_linear, fc7, fc8, ...) or the "
        "release's layer number as in `overfeat -L n` (0 = normalized input; 19 fast / 22 "
        "accurate = fc7 before its ReLU; see `pydoc overfeat_tf.features`); default "
        f"{FEATURE_LAYER}, what `overfeat -f` prints",
    )
    parser.add_argument("--images", required=True, help="folder of JPEG/PNG/GIF/BMP images")
    parser.add_argument("--output", required=True, help="folder for the .npy files")
    parser.add_argument(
        "--pooled", action="store_true", help="spatial max: one [C] vector per image"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize the short side to this many pixels (default: the net's crop size; 0: "
        "keep the original size)",
    )
    parser.add_argument(
        "--stride",
        choices=STRIDES,
        default="coarse",
        help="last pool and fc6..fc8: coarse (offset 0, like OverFeat -f; default) or fine "
        "(every offset, paper §3.3)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1 if any image failed)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.size is not None and args.size < 0:
        parser.error(f"--size must be >= 0 (pixels; 0 keeps the original size), got {args.size}.")
    try:
        model = _load_model(args.model)
        config = model.config
        target = resolve_layer(config, args.layer)
        files = _list_images(args.images)
        os.makedirs(args.output, exist_ok=True)
        extractor = feature_model(model, target, args.stride)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    size = config.crop_size if args.size is None else args.size
    failed = 0
    for name in files:
        try:
            image = resize_short_side(load_image(os.path.join(args.images, name)), size)
            check_size(config, target, args.stride, image.shape)
            features = keras.ops.convert_to_numpy(extractor(image[None], training=False))[0]
            features = features.max(axis=(0, 1)) if args.pooled else features
            save_npy(os.path.join(args.output, name + ".npy"), features.astype(np.float32))
        except (tf.errors.InvalidArgumentError, ValueError, OSError) as error:
            message = short_message(error)
            print(f"error: {message if name in message else f'{name}: {message}'}", file=sys.stderr)
            failed += 1
    form = "[C] pooled" if args.pooled else "[H', W', C] dense"
    print(
        f"Wrote {len(files) - failed} of {len(files)} feature files ({target}, {form}) to "
        f"{args.output}" + (f"; {failed} failed." if failed else ".")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

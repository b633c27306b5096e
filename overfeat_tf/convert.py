"""The released-weights conversion command:

    python -m overfeat_tf.convert --model fast --weights net_weight_0 \\
        --class-names net_init.hpp --output fast-imagenet.keras

writes a `.keras` OverFeat network from the release's raw weights (`release.convert`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from overfeat_tf.release.convert import WEIGHT_FILES, convert, weight_count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m overfeat_tf.convert",
        description="Convert OverFeat's released weights (your own download) to a .keras model.",
        epilog="Example: python -m overfeat_tf.convert --model fast --weights net_weight_0 "
        "--class-names net_init.hpp --output fast-imagenet.keras",
    )
    parser.add_argument(
        "--model",
        required=True,
        choices=sorted(WEIGHT_FILES),
        help="fast (net_weight_0) or accurate (net_weight_1)",
    )
    parser.add_argument("--weights", required=True, help="path to net_weight_0 / net_weight_1")
    parser.add_argument(
        "--class-names", help="path to OverFeat's net_init.hpp (its 1000 class names)"
    )
    parser.add_argument("--output", required=True, help="the .keras file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the process exit status (errors print no traceback)."""
    args = _parser().parse_args(argv)
    try:
        model = convert(args.model, args.weights, args.class_names, args.output)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    names = (
        f"{len(model.class_names)} class names"
        if model.class_names
        else "no class names (pass --class-names net_init.hpp to keep OverFeat's)"
    )
    print(
        f"Wrote {args.output}: OverFeat {args.model}, {weight_count(model.config):,} weights, "
        f"{names}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Classify and detect objects in image files with a trained model or an export.

    python -m overfeat_tf.predict IMAGE_OR_DIR... --model PATH [--output DIR] [--top N]
    python -m overfeat_tf.predict --write-samples DIR [--count N]

`--model` is a `.keras` model written by train.py (a network or a detector; detection flags
such as `--scales` change its options) or a SavedModel export (a version directory, or the
base directory, whose largest numeric version is used; its options are fixed at export).
For every image it prints the multi-scale top-5 classes and the best detections, boxes
`[ymin, xmin, ymax, xmax]` in PIXELS of the image, and writes the image with its boxes
drawn to `--output` (default `predictions/`). `--format json` prints one JSON object
instead. A missing or unreadable image prints one `error:` line and the others go on; the
exit status is then 1.

`--write-samples DIR` writes the first images of the `overfeat_shapes` test split (what
`python train.py --model tiny` evaluates on, never trained on) as PNG files plus their
true boxes in `truth.json`, to try a model on.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from overfeat_tf import cli, quiet
from overfeat_tf.data import image_io
from overfeat_tf.utils import atomic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
DEFAULT_OUTPUT = "predictions"
SAMPLE_SEED = (0, 2)  # overfeat_shapes' (seed, split id) of the test split of every config
RunFn = Callable[[tf.Tensor], dict[str, Any]]  # one image -> the detector's outputs


# --- models -----------------------------------------------------------------------------------


def find_export(path: str | Path) -> Path | None:
    """The SavedModel version directory of `path`: itself if it holds `saved_model.pb`, else
    its largest numeric subdirectory that does; None if neither."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    if not path.is_dir():
        return None
    versions = [p for p in path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    return max(versions, key=lambda p: int(p.name), default=None)


class Predictor:
    """One image -> the detector's outputs for it (normalized yxyx boxes, see `detector`),
    from a `.keras` model or a SavedModel export.

    Attributes:
        class_names: the model's classes (names of the top-5 ids).
        description: what was loaded (the path, or the export's version directory).
        options: the detection options in use (`OverFeatDetector.options`; an export's as
            stored in its metadata, scales resolved).
    """

    def __init__(
        self, run: RunFn, class_names: list[str], description: str, options: dict[str, Any]
    ) -> None:
        self.run = run
        self.class_names = class_names
        self.description = description
        self.options = options

    def __call__(self, image: tf.Tensor) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.run(image).items()}

    @classmethod
    def from_keras(cls, path: str, options: dict[str, Any]) -> Predictor:
        """A `.keras` network or detector; `options` (detector options) override a
        detector's own (a network gets the defaults)."""
        from overfeat_tf.models.backbone import load_model
        from overfeat_tf.models.detector import as_detector, class_names

        detector = as_detector(load_model(path), **options)
        return cls(
            lambda image: detector.detect_fn(tf.cast(image, tf.float32)),
            class_names(detector),
            path,
            detector.options,
        )

    @classmethod
    def from_export(cls, version_dir: Path) -> Predictor:
        """An export's `detect_images` signature (uint8 images; options fixed at export)."""
        from overfeat_tf.export.serving import read_metadata

        try:
            metadata = read_metadata(version_dir)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{version_dir} is a SavedModel but not an overfeat_tf export (no readable "
                "assets.extra/overfeat_export.json); export it with export.py."
            ) from error
        signature = tf.saved_model.load(str(version_dir)).signatures["detect_images"]

        def run(image: tf.Tensor) -> dict[str, tf.Tensor]:
            out = signature(images=tf.cast(image, tf.uint8)[tf.newaxis])
            return {k: v[0] for k, v in out.items()}

        return cls(run, list(metadata["class_names"]), str(version_dir), metadata["options"])


def load_predictor(path: str, options: dict[str, Any]) -> Predictor:
    """`Predictor.from_keras` for a file, `from_export` for an export directory.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: a directory without a SavedModel, or detection options for an export.
    """
    target = Path(path)
    if target.is_file():
        return Predictor.from_keras(path, options)
    if not target.exists():
        raise FileNotFoundError(f"Model {path} not found: give a .keras file or an export.")
    version_dir = find_export(target)
    if version_dir is None:
        raise ValueError(
            f"{path} is a directory without a SavedModel: give a .keras file, an export "
            "version directory (with saved_model.pb) or its base directory."
        )
    if options:
        flags = ", ".join(cli.flag_name(name) for name in sorted(options))
        raise ValueError(
            f"{flags}: an export's detection options are fixed when it is exported; leave "
            "them out, or use the .keras model (or export it again with them)."
        )
    return Predictor.from_export(version_dir)


# --- images and results -----------------------------------------------------------------------


def image_paths(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files to predict: each input file, and each directory's image files (by suffix,
    sorted, not recursive). Returns the paths and an error line per missing input or
    directory without images."""
    paths: list[Path] = []
    errors: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)}) in directory.")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            errors.append(f"Image file {item} not found.")
    return paths, errors


def image_result(
    path: Path, out: dict[str, np.ndarray], names: list[str], size: Sequence[int]
) -> dict[str, Any]:
    """JSON-ready result of one image: size (h, w), the top-5 and every detection (pixel
    yxyx boxes, best first)."""
    h, w = (int(v) for v in size)
    top = [
        {"class": int(c), "name": names[int(c)], "score": float(s)}
        for c, s in zip(out["classes"], out["scores"], strict=True)
        if int(c) >= 0
    ]
    n = int(out["num_detections"])
    scale = np.array([h, w, h, w], np.float64)
    detections = [
        {
            "class": int(out["detection_classes"][i]),
            "name": out["detection_class_names"][i].decode(),
            "score": float(out["detection_scores"][i]),
            "box": [round(float(v), 1) for v in out["detection_boxes"][i] * scale],
        }
        for i in range(n)
    ]
    return {"image": str(path), "height": h, "width": w, "top5": top, "detections": detections}


def format_image(result: dict[str, Any], top: int) -> str:
    """The readable report of one image (at most `top` detections)."""
    lines = [f"{result['image']}  ({result['width']}x{result['height']} px)"]
    classes = "  ".join(f"{t['name']} {t['score']:.3f}" for t in result["top5"])
    lines.append(f"  top-5:  {classes}")
    found = result["detections"]
    if not found:
        lines.append("  detections: none")
    else:
        lines.append(
            f"  detections: best {min(top, len(found))} of {len(found)} (score: summed "
            "window confidences; box in px)"
        )
        width = max(5, *(len(d["name"]) for d in found[:top]))
        lines.append(
            f"    {'#':>3}  {'class':<{width}}  {'score':>7}  "
            f"{'ymin':>6} {'xmin':>6} {'ymax':>6} {'xmax':>6}"
        )
        for i, d in enumerate(found[:top], start=1):
            box = " ".join(f"{v:6.0f}" for v in d["box"])
            lines.append(f"    {i:>3}  {d['name']:<{width}}  {d['score']:7.3f}  {box}")
    if result.get("picture"):
        lines.append(f"  picture: {result['picture']}")
    return "\n".join(lines)


def _picture_path(output: Path, path: Path, taken: set[str]) -> Path:
    name, k = f"{path.stem}.png", 1
    while name in taken:
        name, k = f"{path.stem}_{k}.png", k + 1
    taken.add(name)
    return output / name


def predict_images(
    predictor: Predictor,
    paths: Sequence[Path],
    output: Path | None,
    top: int,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Predict each image, write its picture to `output` (None: no pictures), call `report`
    with each result as it is done. Returns the results and an error line per failure."""
    from overfeat_tf import plots

    results, errors, taken = [], [], set()
    for path in paths:
        try:
            image = image_io.load_image(path)
            # the first call traces the model: its C++ notes are start-up noise (`quiet`)
            first = not results and not quiet.verbose()
            with quiet.filtered_stderr() if first else contextlib.nullcontext():
                out = predictor(image)
        except (ValueError, tf.errors.InvalidArgumentError) as error:
            errors.append(image_io.short_message(error))
            print(f"error: {errors[-1]}", file=sys.stderr, flush=True)
            continue
        result = image_result(path, out, predictor.class_names, image.shape[:2])
        if output is not None:
            picture = _picture_path(output, path, taken)
            plots.plot_detections(image, out, max_boxes=top, title=path.name, save=picture)
            result["picture"] = str(picture)
        results.append(result)
        if report is not None:
            report(result)
    return results, errors


# --- sample images ----------------------------------------------------------------------------


def write_samples(directory: str | Path, count: int = 4) -> list[Path]:
    """Write the first `count` images of the `overfeat_shapes` test split to `directory` as
    `shapes_<i>.png`, and `truth.json` (per file: class names and boxes, yxyx pixels)."""
    from overfeat_tf.data.shapes import SHAPE_CLASSES, render_example

    if count < 1:
        raise ValueError(f"--count must be a positive int, got {count}.")
    directory = Path(directory)
    written, truth = [], {}
    for i in range(count):
        example = render_example([*SAMPLE_SEED, i])
        path = directory / f"shapes_{i}.png"
        with atomic.atomic_path(path) as tmp:
            tmp.write_bytes(tf.io.encode_png(example["image"]).numpy())
        h, w = example["image"].shape[:2]
        truth[path.name] = [
            {"name": SHAPE_CLASSES[int(c)], "box": [round(float(v), 1) for v in box]}
            for c, box in zip(example["labels"], example["bboxes"] * [h, w, h, w], strict=True)
        ]
        written.append(path)
    atomic.write_json(directory / "truth.json", truth)
    return written


# --- command line -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The command's flags (shared ones from `overfeat_tf.cli`)."""
    p = argparse.ArgumentParser(
        prog="python -m overfeat_tf.predict",
        description=(
            "Classify and detect objects in images: print each image's top-5 classes and\n"
            "detections (boxes in px: ymin xmin ymax xmax) and write it with its boxes drawn\n"
            "to --output. No images at hand? --write-samples DIR writes some overfeat_shapes\n"
            "test images (and their true boxes, truth.json) to try a model on."
        ),
        epilog=(
            "examples:\n"
            "  python -m overfeat_tf.predict --write-samples samples\n"
            "  python -m overfeat_tf.predict samples --model runs/tiny/model.keras\n"
            "  python -m overfeat_tf.predict photo.jpg --model runs/tiny/export --format json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument(
        "--model",
        metavar="PATH",
        help=f"{cli.MODEL_HELP}, or a SavedModel export (a version directory or its base "
        "directory: the largest version is used)",
    )
    p.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help=f"where the annotated PNGs go (default: {DEFAULT_OUTPUT}/)",
    )
    p.add_argument("--no-pictures", action="store_true", help="write no annotated PNGs")
    p.add_argument(
        "--top", type=int, default=10, metavar="N", help="detections shown per image (default 10)"
    )
    cli.add_format_argument(p)
    p.add_argument(
        "--write-samples",
        metavar="DIR",
        help="write sample images (overfeat_shapes test split) and truth.json to DIR",
    )
    p.add_argument("--count", type=int, default=4, help="how many samples (default 4)")
    group = p.add_argument_group(
        "detection options",
        "for a .keras model only (an export's are fixed); a detector keeps its own options "
        "except those given",
    )
    cli.add_detection_flags(group)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1 if any image failed)."""
    quiet.quiet_start()
    p = parser()
    args = p.parse_args(argv)
    if args.write_samples:
        written = write_samples(args.write_samples, args.count)
        print(f"Wrote {len(written)} sample images and truth.json to {args.write_samples}/.")
        if not args.images:
            return 0
    if not args.images or not args.model:
        p.error("give IMAGE_OR_DIR... and --model PATH (or --write-samples DIR)")
    if args.top < 1:
        raise ValueError(f"--top must be a positive int, got {args.top}.")
    predictor = load_predictor(args.model, cli.given(args, cli.detection_flags()))
    paths, errors = image_paths(args.images)
    for line in errors:
        print(f"error: {line}", file=sys.stderr, flush=True)
    output = None if args.no_pictures else Path(args.output)
    text = args.format == "text"
    if paths:
        print(
            f"Predicting {len(paths)} image(s) with {predictor.description}; the first one "
            "traces and compiles the model (several seconds).",
            file=sys.stderr,
            flush=True,
        )

    def report(result: dict[str, Any]) -> None:
        print(format_image(result, args.top) + "\n", flush=True)

    results, failed = predict_images(predictor, paths, output, args.top, report if text else None)
    errors += failed
    where = f"; pictures in {output}/" if output is not None and results else ""
    summary = {"model": args.model, "images": results, "errors": errors}
    done = f"{len(results)} image(s) done, {len(errors)} failed{where}."
    cli.print_result(summary, args.format, lambda _: done)
    return 1 if errors else 0


if __name__ == "__main__":
    cli.run(lambda: sys.exit(main()))

"""The package's one command-line layer: the flags of the detector's options and of the
export's, and the flags every command shares, spelled the same way everywhere.

`detection_flags` spells `OverFeatDetector.options` on the command line, `export_flags`
`serving.ExportOptions`: `add_flags` adds `--option-name` for each (type from the default or
`parse`, booleans as `--x/--no-x`, `choices`), and `given` returns the options a command line
sets, so a command applies exactly those to the model's own (`detector.with_options`).
Nothing below the commands imports this module. Shared flags:

- `--model PATH`: a `.keras` model written by train.py / convert (an export directory where
  a command also takes one);
- `--dataset NAME|PATH`, `--split`, `--data-dir` / `--images`: a TFDS dataset
  (`overfeat_shapes/standard`) or one read from files (a COCO .json, a Pascal VOC folder, a
  folder of class folders: `overfeat_tf.data.files`), whose images folder `--images` gives
  (it travels as `data_dir`);
- `--max-examples N`: use only the first N examples of the split;
- `--scales 245,281x317`: pyramid scales, short sides or `HxW`, comma-separated;
- `--format text|json`: a readable report (default) or one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

FORMATS = ("text", "json")

# the dataset flags' -h texts (train.py and the benchmarks use them too); argparse formats
# help with %, hence "%%"
DATASET_HELP = (
    "a TFDS name (overfeat_shapes/standard, voc/2007) or a path: a COCO .json, a Pascal VOC "
    "folder (with Annotations/), or a folder of class folders (<class>/<image> or "
    "<split>/<class>/<image>)"
)
SPLIT_HELP = "a split, or a TFDS slice of one (train[:90%%], train[90%%:], train[:100])"
DATA_DIR_HELP = (
    "TFDS data directory (default ~/tensorflow_datasets); for a path --dataset, its images "
    "folder (as --images)"
)
IMAGES_HELP = (
    "for a path --dataset: the folder of the images of a COCO .json (default: beside it, or "
    "its images/ folder) or of a VOC folder (default JPEGImages/); passed on as data_dir"
)


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one option is spelled on the command line: its `-h` text, a `parse` function
    (None: the type of its default), `choices` and a `metavar`."""

    help: str
    parse: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    metavar: str | None = None


def _layer(text: str) -> str | int:
    """`--feature-layer`: a layer name, or OverFeat's layer number."""
    return int(text) if text.strip().isdigit() else text


def detection_flags() -> dict[str, Flag]:
    """The flags of `OverFeatDetector.options`, every detection command's."""
    from overfeat_tf.architecture.config import STRIDES
    from overfeat_tf.models.decoders import COMBINE
    from overfeat_tf.ops.pyramid import parse_scales

    return {
        "scales": Flag(
            "pyramid scales: short sides and/or HxW sizes, comma-separated, e.g. 245,281x317",
            parse=parse_scales,
            metavar="S,S,...",
        ),
        "flips": Flag("also run each scale's left-right flip"),
        "stride": Flag("output stride: all pooling offsets or offset 0", choices=STRIDES),
        "top_k": Flag("classes per scale that predict boxes"),
        "score_threshold": Flag("windows below this class probability predict no box"),
        "max_boxes": Flag("boxes into the merge, at most (the most confident)"),
        "max_aspect_ratio": Flag(
            "pyramid levels are at most this elongated (long side / short side); a longer "
            "image is squeezed to it, which bounds what any image costs"
        ),
        "combine": Flag("merge (the paper's box merge) or nms (for comparison)", choices=COMBINE),
        "merge_threshold": Flag("merge threshold t (lower = fewer merges)"),
        "nms_iou": Flag("IoU threshold of --combine nms"),
        "max_detections": Flag("detections per image (outputs are padded to this)"),
    }


def export_flags() -> dict[str, Flag]:
    """The flags of `serving.ExportOptions` (what only an export has)."""
    return {
        "max_pixels": Flag(
            "reject images of more pixels (height x width), checked before decoding"
        ),
        "max_images": Flag("reject requests of more images (each signature's batch)"),
        "max_batch": Flag(
            "images of one size in a request run through the network together, this many "
            "at a time (1: one by one)"
        ),
        "feature_layer": Flag(
            "layer of the features signature: a name (fc7_linear, fc7, pool5, ...) or "
            "OverFeat's number (19 fast / 22 accurate = fc7 before its ReLU, as `overfeat -f`)",
            parse=_layer,
        ),
        "feature_size": Flag(
            "short side (px) images are resized to for features (0: original size; default: "
            "the net's crop size)",
            parse=int,
        ),
    }


def flag_name(name: str) -> str:
    """`max_detections` -> `--max-detections`."""
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(
            "x".join(map(str, v)) if isinstance(v, tuple | list) else str(v) for v in value
        )
    return "the model's" if value is None else str(value)


def add_flags(
    parser: argparse.ArgumentParser | Any,
    flags: dict[str, Flag],
    defaults: dict[str, Any],
    names: Sequence[str] | None = None,
) -> None:
    """Add `--name` for each of `flags` (or only `names`), `-h` showing `defaults`. A flag
    not given parses to None, so `given` returns only what the command line changes."""
    for name, flag in flags.items():
        if names is not None and name not in names:
            continue
        default = defaults[name]
        kwargs: dict[str, Any] = {
            "default": None,
            "dest": name,
            "help": f"{flag.help} (default: {_shown(default)})",
        }
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            # `parse` runs in `given`: its ValueError becomes the command's own one-line
            # error rather than argparse's usage message
            kwargs["type"] = str if flag.parse else type(default)
            if flag.choices is not None:
                kwargs["choices"] = flag.choices
            if flag.metavar is not None:
                kwargs["metavar"] = flag.metavar
        parser.add_argument(flag_name(name), **kwargs)


def add_detection_flags(
    parser: argparse.ArgumentParser | Any, names: Sequence[str] | None = None
) -> None:
    """`add_flags` of `detection_flags`, defaults from `OverFeatDetector.default_options`."""
    from overfeat_tf.models.detector import OverFeatDetector

    add_flags(parser, detection_flags(), OverFeatDetector.default_options(), names)


def given(args: argparse.Namespace, flags: dict[str, Flag]) -> dict[str, Any]:
    """The options of `flags` given on the command line, parsed (the others left out)."""
    values = {}
    for name, flag in flags.items():
        value = getattr(args, name, None)
        if value is not None:
            values[name] = flag.parse(value) if flag.parse and isinstance(value, str) else value
    return values


MODEL_HELP = "an overfeat_tf .keras model: a network (classify) or a detector (detect, localize)"


def command_parser(prog: str, description: str, model_help: str = MODEL_HELP) -> Any:
    """An `argparse` parser with the shared `--model PATH` flag."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--model", required=True, metavar="PATH", help=model_help)
    return parser


def add_data_dir_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """`--data-dir DIR` or `--images DIR` (one of them; both set `data_dir`): TFDS' data
    directory for a TFDS name, the images folder for a path dataset."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--data-dir", dest="data_dir", default=None, help=DATA_DIR_HELP)
    group.add_argument("--images", dest="data_dir", metavar="DIR", default=None, help=IMAGES_HELP)


def add_dataset_arguments(
    parser: argparse.ArgumentParser, split: str = "test", required: bool = True
) -> None:
    """`--dataset` (a TFDS name or a path), `--split`, `--data-dir` / `--images` and
    `--max-examples`."""
    parser.add_argument("--dataset", required=required, metavar="NAME|PATH", help=DATASET_HELP)
    parser.add_argument("--split", default=split, help=f"{SPLIT_HELP} (default: {split})")
    add_data_dir_arguments(parser)
    parser.add_argument(
        "--max-examples",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N examples of the split (default: all)",
    )


def report_file_dataset(dataset: Any, data_dir: str | None = None) -> dict[str, Any] | None:
    """For a dataset read from files (`tfds_io.is_file_dataset`): open it (its annotations are
    checked: a `ValueError` names what is wrong), print what it left out or clipped in one
    line on stderr, and return `{"skipped": {what: count}, "clipped_boxes": n}` for the
    command's result. None for a TFDS name (nothing is opened)."""
    from overfeat_tf.data import files, tfds_io

    if not tfds_io.is_file_dataset(dataset):
        return None
    opened = tfds_io.load_builder(dataset, data_dir)
    line = files.skipped_line(opened)
    if line:
        print(line, file=sys.stderr, flush=True)
    return {"skipped": dict(opened.skipped), "clipped_boxes": opened.clipped_boxes}


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    """`--format text|json` (text, a readable report, is the default)."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text: a readable report (default); json: one JSON object on stdout",
    )


def print_result(result: Any, fmt: str, text: Callable[[Any], str]) -> None:
    """Print `result` as JSON (`fmt == "json"`) or as `text(result)`."""
    print(json.dumps(result, default=str) if fmt == "json" else text(result))


def run(main: Callable[[], Any]) -> None:
    """Run a command's `main`, turning its `ValueError` / `FileNotFoundError` into one
    `error: ...` line on stderr and exit status 1 instead of a traceback."""
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")

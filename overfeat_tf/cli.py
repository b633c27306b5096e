"""The package's one command-line layer: flags generated from options dataclasses, and the
flags every command shares, spelled the same way everywhere.

An options dataclass declares each field with `option(default, help, ...)`; then
`add_option_arguments(parser, Options)` adds `--field-name` for each (type from the default
or `parse=`, booleans as `--x/--no-x`, `choices=`), with `-h` texts from the same field, and
`options_from_args(args, Options)` builds the dataclass back. Shared flags:

- `--model PATH`: a `.keras` model written by train.py / convert (an export directory where
  a command also takes one);
- `--dataset NAME`, `--split`, `--data-dir`: a TFDS dataset (`overfeat_shapes/standard`);
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


def option(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with what its command-line flag needs (`help`, and optionally a
    `parse` function, `choices`, a `metavar`; `cli=False` keeps it off the command line)."""
    metadata = {"help": help, "parse": parse, "choices": choices, "metavar": metavar, "cli": cli}
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    """`max_detections` -> `--max-detections`."""
    return "--" + field_name.replace("_", "-")


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join("x".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in value)
    return "the model's" if value is None else str(value)


def add_option_arguments(
    parser: argparse.ArgumentParser | Any,
    options_class: type,
    fields: Sequence[str] | None = None,
    defaults: Any = None,
) -> None:
    """Add one flag per field of `options_class` (declared with `option`).

    Args:
        parser: an `argparse` parser or argument group.
        options_class: the dataclass.
        fields: only these fields (default: every field with `cli=True`).
        defaults: an instance whose values are shown as the defaults (default: the class's).
    """
    defaults = defaults if defaults is not None else options_class()
    for field in dataclasses.fields(options_class):
        meta = field.metadata
        if not meta.get("cli", False) or (fields is not None and field.name not in fields):
            continue
        default = getattr(defaults, field.name)
        text = f"{meta['help']} (default: {_shown(default)})"
        kwargs: dict[str, Any] = {"default": None, "dest": field.name, "help": text}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            # `parse` runs in `options_from_args`: its ValueError becomes the command's own
            # one-line error rather than argparse's usage message
            kwargs["type"] = str if meta["parse"] else type(default)
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"] is not None:
                kwargs["metavar"] = meta["metavar"]
        parser.add_argument(flag_name(field.name), **kwargs)


def options_from_args(args: argparse.Namespace, options_class: type, base: Any = None) -> Any:
    """The dataclass from parsed flags: fields given on the command line override `base`
    (default: the class's defaults); fields absent from `args` keep `base`'s values."""
    base = base if base is not None else options_class()
    changes = {}
    for field in dataclasses.fields(options_class):
        value = getattr(args, field.name, None)
        if value is not None:
            parse = field.metadata.get("parse")
            changes[field.name] = parse(value) if parse and isinstance(value, str) else value
    return dataclasses.replace(base, **changes)


MODEL_HELP = "an overfeat_tf .keras model: a network (classify) or a detector (detect, localize)"


def command_parser(prog: str, description: str, model_help: str = MODEL_HELP) -> Any:
    """An `argparse` parser with the shared `--model PATH` flag."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--model", required=True, metavar="PATH", help=model_help)
    return parser


def add_dataset_arguments(
    parser: argparse.ArgumentParser, split: str = "test", required: bool = True
) -> None:
    """`--dataset`, `--split`, `--data-dir` and `--max-examples`."""
    parser.add_argument(
        "--dataset",
        required=required,
        help="TFDS name, e.g. overfeat_shapes/standard or voc/2007",
    )
    parser.add_argument("--split", default=split, help=f"split to use (default: {split})")
    parser.add_argument(
        "--data-dir", default=None, help="TFDS data directory (default: ~/tensorflow_datasets)"
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N examples of the split (default: all)",
    )


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


def progress_bar(dataset: Any, max_examples: int | None, unit: str) -> Any:
    """A `keras.utils.Progbar` over a loop of `dataset` (target: `max_examples`, or the
    dataset's cardinality when known), after a line saying the first step compiles."""
    import keras
    import tensorflow as tf

    target = max_examples
    cardinality = int(dataset.cardinality()) if isinstance(dataset, tf.data.Dataset) else -1
    if cardinality >= 0:
        target = cardinality if target is None else min(target, cardinality)
    print(
        f"Evaluating {target or 'all'} {unit}; the first one traces and compiles the graph "
        "(several seconds).",
        file=sys.stderr,
        flush=True,
    )
    return keras.utils.Progbar(target, unit_name=unit.rstrip("s"))


def run(main: Callable[[], Any]) -> None:
    """Run a command's `main`, turning its `ValueError` / `FileNotFoundError` into one
    `error: ...` line on stderr and exit status 1 instead of a traceback."""
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")

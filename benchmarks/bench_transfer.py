"""Transfer vs training from scratch on held-out classes, same step budget (issue 13).

Oquab et al. 2014's "pre-training helps" comparison, in small, on the generated dataset:
the classes of `overfeat_shapes/standard` are split in two halves (default: 0-5 source,
6-11 target; `class_subset` keeps an image when its `label`, the dominant object, is in a
half). Then

1. the tiny net is pre-trained on the source half for `--source-steps` steps;
2. on the target half, for each budget of `--budgets` (optimizer steps), the same recipe,
   seed and number of steps trains
   - "transfer": from the source model (`TrainConfig.init_model`; the label set differs,
     so `recipe.transfer_model` copies conv1 .. fc7 and fc8 is new),
   - "scratch": from a new random init,
   - "frozen": as transfer, with `freeze_up_to="fc7"` (only fc8 trains; Oquab's frozen
     trunk, without their adaptation layer);
3. each model is evaluated on the target half of the test split
   (`overfeat_tf.evaluation.classification`: the central crop row and the 6-scale
   fine-stride row with flips).

The recipe is bench_classification's (He init, SGD lr 0.01 momentum 0.9, batch 32,
Torch-style weight decay 1e-5, no dropout, 231 px short side, images cached in memory,
`--mixed-precision auto`), with its schedule (lr x 0.3 after 30, 40 and 45 of 48 epochs)
scaled to every run: a run of N steps is `--phases` (16) Keras epochs of N / 16 steps with
the lr dropped after phases 10, 13 and 15. Budgets are steps, so the transfer runs do not
count the source pre-training; the wall seconds of every run are recorded too.

Usage:
    nice -n 5 python benchmarks/bench_transfer.py --write
    python benchmarks/bench_transfer.py --quick      # a smoke run (minutes, numbers noisy)

Prints one JSON object (also written to `--report PATH`); `--write` replaces the
"Transfer: pre-trained vs from scratch" section of BENCHMARKS.md, and `--render PATH`
rewrites that section from a saved report without training.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import keras
import tensorflow as tf

from benchmarks.common import add_tiny_recipe_arguments, machine, tiny_recipe_fields, write_section
from overfeat_tf import cli
from overfeat_tf.data import inputs as data
from overfeat_tf.data import tfds_io
from overfeat_tf.evaluation import classification as evaluation
from overfeat_tf.models.backbone import load_model
from overfeat_tf.ops.pyramid import parse_scales
from overfeat_tf.training import precision
from overfeat_tf.training import run as training
from overfeat_tf.utils import atomic

SECTION = "Transfer: pre-trained vs from scratch"
ARMS = ("transfer", "scratch", "frozen")
ARM_LABELS = {
    "transfer": "transfer (conv1-fc7 copied, all layers train)",
    "scratch": "from scratch",
    "frozen": "transfer, frozen up to fc7 (fc8 trains)",
}
ROWS = (evaluation.TABLE2_ROWS[0], evaluation.TABLE2_ROWS[-1])  # center crop; 6 scales fine
ROW_LABELS = ("center crop", "6 scales fine")
QUICK = {
    "source_steps": 160,
    "budgets": "32,96",
    "phases": 8,
    "lr_decay_phases": "5,7",
    "max_eval": 60,
}


# --- the held-out classes ------------------------------------------------------------------


def parse_classes(text: str) -> tuple[int, ...]:
    """ "0-5" or "6,7,8" (or "0-2,9") -> the class ids, in that order."""
    ids: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                low, high = (int(v) for v in part.split("-"))
                ids.extend(range(low, high + 1))
            else:
                ids.append(int(part))
        except ValueError:
            raise ValueError(f"Bad class list {text!r}: expected e.g. '0-5' or '6,7,8'.") from None
    return tuple(ids)


def _check_class_ids(class_ids: Sequence[int]) -> tuple[int, ...]:
    ids = tuple(class_ids)
    if not ids:
        raise ValueError("class_ids must not be empty.")
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError(f"class_ids must be non-negative ints, got {list(ids)}.")
    if len(set(ids)) != len(ids):
        raise ValueError(f"class_ids must not repeat a class, got {list(ids)}.")
    return ids


def class_subset(dataset: tf.data.Dataset, class_ids: Sequence[int]) -> tf.data.Dataset:
    """The examples of `dataset` whose class is in `class_ids`, relabelled 0..k-1.

    The class of an example is `data.example_label`: its `label` (overfeat_shapes: the
    dominant object), else its largest box. Kept examples get `label` = the class' index
    in `class_ids` (class_ids[i] -> i; added when the example had none). Their objects
    (`objects` dict with `bbox` normalized yxyx `[N, 4]` and `label` `[N]`, or the flat
    `objects/bbox` / `objects/label` keys) keep only the boxes of `class_ids`' classes,
    relabelled the same way, in their order; boxes of the other classes are dropped (in a
    detection run, those objects become unlabelled background). Other features pass
    through. Only tf.data ops (`filter`, `map`): works on any dataset of example dicts,
    e.g. a `tfds_io.raw_split` (encoded images) or a TFDS split.

    Args:
        dataset: example dicts (`image`, and `label` and/or objects).
        class_ids: the kept classes' ids in `dataset`, distinct and >= 0; their order
            gives the new labels.

    Returns:
        The filtered, relabelled example dicts; labels int64 (objects' labels keep
        their dtype).

    Raises:
        ValueError: empty, negative or repeated `class_ids`.
    """
    ids = tf.constant(_check_class_ids(class_ids), tf.int64)

    def kept(example: dict[str, Any]) -> tf.Tensor:
        return tf.reduce_any(tf.equal(data.example_label(example), ids))

    def remap(labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(in the subset `[N]` bool, new labels of those `[M]` int64)."""
        matches = tf.equal(tf.cast(labels, tf.int64)[..., None], ids)  # [N, k]
        inside = tf.reduce_any(matches, axis=-1)
        picked = tf.cast(tf.boolean_mask(matches, inside), tf.int32)
        return inside, tf.argmax(picked, axis=-1, output_type=tf.int64)

    def relabel(example: dict[str, Any]) -> dict[str, Any]:
        example = dict(example)
        matches = tf.equal(data.example_label(example), ids)
        objects = tfds_io.example_objects(example)
        example["label"] = tf.argmax(tf.cast(matches, tf.int32), output_type=tf.int64)
        if objects is not None:
            bbox, labels = objects
            inside, new = remap(labels)
            bbox, new = tf.boolean_mask(bbox, inside), tf.cast(new, labels.dtype)
            if isinstance(example.get("objects"), dict):
                example["objects"] = {**example["objects"], "bbox": bbox, "label": new}
            else:
                example["objects/bbox"], example["objects/label"] = bbox, new
        return example

    return dataset.filter(kept).map(relabel, num_parallel_calls=data.AUTOTUNE)


def load_splits(
    name: str, data_dir: str | None, splits: Sequence[str] = ("train", "test")
) -> tuple[dict[str, tf.data.Dataset], list[str]]:
    """The raw splits (`tfds_io.raw_split`: images left encoded) and class names of a TFDS
    dataset (prepared on the spot if needed)."""
    builder = tfds_io.load_builder(name, data_dir, splits=tuple(splits))
    raw = {split: tfds_io.raw_split(name, split, data_dir) for split in splits}
    return raw, tfds_io.class_names(builder)


# --- the benchmark -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--dataset", default="overfeat_shapes/standard", metavar="NAME|PATH", help=cli.DATASET_HELP
    )
    cli.add_data_dir_arguments(p)
    p.add_argument("--output", default=None, help="run directory (default: a temporary one)")
    p.add_argument("--source-classes", default="0-5")
    p.add_argument("--target-classes", default="6-11")
    p.add_argument("--source-steps", type=int, default=3200, help="pre-training steps")
    p.add_argument("--budgets", default="160,480,1440", help="target steps per run")
    p.add_argument("--arms", default=",".join(ARMS), help=f"a subset of {ARMS}")
    p.add_argument("--phases", type=int, default=16, help="Keras epochs per run")
    p.add_argument("--lr-decay-phases", default="10,13,15")
    add_tiny_recipe_arguments(p)
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    p.add_argument("--report", default=None, help="also write the JSON report here")
    p.add_argument("--render", default=None, help="rewrite the section from this report")
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated ints, got {text!r}.") from None


def _check_args(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed lists of `args`; ValueError on inconsistent settings."""
    source = parse_classes(args.source_classes)
    target = parse_classes(args.target_classes)
    budgets = _int_list(args.budgets, "budgets")
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    decay = _int_list(args.lr_decay_phases, "lr-decay-phases")
    scales = parse_scales(args.scales)
    problems = [
        (bool(set(source) & set(target)), "--source-classes and --target-classes overlap."),
        (not budgets or min(budgets) < 1, "--budgets must be positive step counts."),
        (
            any(b % args.phases for b in (*budgets, args.source_steps)),
            f"--budgets and --source-steps must be multiples of --phases ({args.phases}).",
        ),
        (args.source_steps < 1, "--source-steps must be >= 1."),
        (not arms or any(a not in ARMS for a in arms), f"--arms must be a subset of {ARMS}."),
        (any(not 1 <= d < args.phases for d in decay), "--lr-decay-phases: 1 .. phases-1."),
        (len(scales) != 6, "--scales: exactly 6 scales (the 6-scale row)."),
    ]
    for bad, message in problems:
        if bad:
            raise ValueError(message)
    return {
        "source": source,
        "target": target,
        "budgets": budgets,
        "arms": arms,
        "decay": decay,
        "scales": scales,
    }


def _config(args: argparse.Namespace, output: Path, steps: int, decay, **kwargs) -> Any:
    return training.TrainConfig(
        model="tiny",
        output=str(output),
        epochs=args.phases,
        steps_per_epoch=steps // args.phases,
        lr_decay_epochs=decay,
        verbose=0,
        **tiny_recipe_fields(args),
        **kwargs,
    )


def _train_and_evaluate(
    config: training.TrainConfig,
    train_data: tf.data.Dataset,
    test_data: tf.data.Dataset,
    names: list[str],
    args: argparse.Namespace,
    scales: tuple,
) -> dict[str, Any]:
    result = training.train(config, dataset=train_data, class_names=names)
    model = load_model(result["model_path"])
    evaluated = evaluation.evaluate(
        model, test_data, scales=scales, rows=ROWS, max_examples=args.max_eval
    )
    keras.backend.clear_session()
    print(
        f"{config.output}: {result['final_step']} steps, {result['wall_seconds']:.0f} s; "
        + ", ".join(f"{r['name']} {r['top1_error']:.1f}%" for r in evaluated["rows"]),
        flush=True,
    )
    return {
        "model_path": result["model_path"],
        "steps": result["final_step"],
        "train_seconds": round(result["wall_seconds"], 1),
        "eval_seconds": round(evaluated["seconds"], 1),
        "train_logs": result["logs"],
        "test_examples": evaluated["examples"],
        "rows": evaluated["rows"],
    }


def run(
    args: argparse.Namespace,
    splits: dict[str, tf.data.Dataset] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Pre-train on the source classes, then train every arm for every budget on the target
    classes and evaluate it; returns the report (JSON-able).

    Args:
        args: `parse_args`'s flags.
        splits: raw "train" and "test" example dicts to use instead of `args.dataset`
            (with `class_names`, their classes' names by label).
        class_names: the names of `splits`' classes.
    """
    lists = _check_args(args)
    start = time.monotonic()
    start_load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if splits is None:
        splits, class_names = load_splits(args.dataset, args.data_dir)
    names = list(class_names or [])
    if max((*lists["source"], *lists["target"])) >= len(names):
        raise ValueError(f"Class ids must be < {len(names)} (the dataset's classes).")
    output = Path(args.output or tempfile.mkdtemp(prefix="bench_transfer_"))
    halves = {}
    for half in ("source", "target"):
        ids = lists[half]
        halves[half] = {
            "ids": list(ids),
            "names": [names[i] for i in ids],
            "train": class_subset(splits["train"], ids),
            "test": class_subset(splits["test"], ids),
        }
    decay, scales = lists["decay"], lists["scales"]
    src = halves["source"]
    print(f"Pre-training on {src['names']} for {args.source_steps} steps", flush=True)
    source = _train_and_evaluate(
        _config(args, output / "source", args.source_steps, decay),
        src["train"],
        src["test"],
        src["names"],
        args,
        scales,
    )
    tgt = halves["target"]
    runs = []
    for budget in lists["budgets"]:
        for arm in lists["arms"]:
            extra: dict[str, Any] = {}
            if arm != "scratch":
                extra["init_model"] = source["model_path"]
            if arm == "frozen":
                extra["freeze_up_to"] = "fc7"
            config = _config(args, output / f"{arm}_{budget}", budget, decay, **extra)
            measured = _train_and_evaluate(
                config, tgt["train"], tgt["test"], tgt["names"], args, scales
            )
            runs.append({"budget": budget, "arm": arm, **measured})
    recipe = {
        k: v
        for k, v in vars(args).items()
        if k not in ("write", "output", "report", "render", "quick")
    }
    return {
        "machine": machine(),
        "policy": precision.resolve_precision(args.mixed_precision),
        "date": datetime.date.today().isoformat(),
        "nproc": os.cpu_count(),
        "load_average_start": start_load,
        "load_average_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "dataset": args.dataset,
        "quick": bool(args.quick),
        "recipe": recipe,
        "scales": [list(s) if isinstance(s, tuple) else s for s in scales],
        "source": {"classes": src["ids"], "names": src["names"], **source},
        "target": {"classes": tgt["ids"], "names": tgt["names"]},
        "runs": runs,
        "total_seconds": round(time.monotonic() - start, 1),
    }


# --- the section ---------------------------------------------------------------------------


def _errors(entry: dict[str, Any]) -> list[float]:
    """[crop top-1, crop top-5, 6-scale top-1, 6-scale top-5] of a run."""
    rows = {r["name"]: r for r in entry["rows"]}
    return [rows[row.name][k] for row in ROWS for k in ("top1_error", "top5_error")]


def table(report: dict[str, Any]) -> str:
    """Budget x arm rows: top-1 / top-5 error % (center crop, 6 scales fine), wall seconds."""
    lines = [
        "| budget (steps) | model | center crop top-1 % | top-5 % | 6 scales fine top-1 % | "
        "top-5 % | training s |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in report["runs"]:
        cells = " | ".join(f"{e:.2f}" for e in _errors(entry))
        lines.append(
            f"| {entry['budget']} | {ARM_LABELS[entry['arm']]} | {cells} | "
            f"{entry['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def reading(report: dict[str, Any]) -> str:
    """What the numbers say, computed from them (6-scale fine top-1 error)."""
    by = {(r["budget"], r["arm"]): _errors(r)[2] for r in report["runs"]}
    budgets = sorted({r["budget"] for r in report["runs"]})
    sentences = []
    for other in ("transfer", "frozen"):
        pairs = [(b, by[b, "scratch"] - by[b, other]) for b in budgets if (b, other) in by]
        pairs = [(b, d) for b, d in pairs if (b, "scratch") in by]
        if not pairs:
            continue
        gains = ", ".join(f"{d:+.1f} at {b}" for b, d in pairs)
        wins = sum(d > 0 for _, d in pairs)
        verdict = (
            "beats scratch at every budget"
            if wins == len(pairs)
            else "never beats scratch"
            if wins == 0
            else f"beats scratch at {wins} of {len(pairs)} budgets"
        )
        sentences.append(
            f"{ARM_LABELS[other].capitalize()} {verdict} (6-scale top-1 error points "
            f"saved vs scratch, per budget in steps: {gains})."
        )
    low, high = budgets[0], budgets[-1]
    if low < high and (low, "transfer") in by and (high, "scratch") in by:
        sentences.append(
            f"Transfer after {low} steps: {by[low, 'transfer']:.1f} % top-1 error; scratch "
            f"after {high} steps: {by[high, 'scratch']:.1f} %."
        )
    if (high, "transfer") in by and (high, "frozen") in by:
        sentences.append(
            f"At {high} steps fine-tuning every layer gives {by[high, 'transfer']:.1f} %, "
            f"training fc8 alone on the frozen trunk {by[high, 'frozen']:.1f} %."
        )
    return " ".join(sentences)


def _short_budgets(report: dict[str, Any]) -> str:
    """The last epoch's training accuracy of the longest runs, as a sentence."""
    high = max((r["budget"] for r in report["runs"]), default=None)
    accuracy = {
        r["arm"]: 100 * r["train_logs"]["accuracy"]
        for r in report["runs"]
        if r["budget"] == high and "accuracy" in r["train_logs"]
    }
    if not accuracy:
        return ""
    listed = ", ".join(f"{arm} {value:.0f} %" for arm, value in accuracy.items())
    return f"Training accuracy (last epoch) of the {high}-step runs: {listed}. "


def section(report: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section of a report."""
    r = report["recipe"]
    src = report["source"]
    tgt = report["target"]
    first = report["runs"][0] if report["runs"] else src
    src_errors = _errors(src)
    quick = " (a `--quick` smoke run: small budgets, numbers noisy)" if report["quick"] else ""
    return f"""Oquab et al. 2014's "pre-training helps" comparison in small{quick}.

Machine: {report["machine"]} (nproc {report["nproc"]}).
Compute policy {report["policy"]}; load average {report["load_average_start"]} at the start,
{report["load_average_end"]} at the end (the 2 cores shared with another job).
Command: `{command}`; whole run {report["total_seconds"]:.0f} s of wall time.

Data: `{report["dataset"]}` split by class (`benchmarks/bench_transfer.py:class_subset`,
an image's class is its `label`, the dominant object): source classes {src["classes"]}
({", ".join(src["names"])}), target classes {tgt["classes"]} ({", ".join(tgt["names"])}),
each relabelled 0..k-1 in that order; training on the train split's images of a half, errors on the
test split's ({first["test_examples"]} target images, {src["test_examples"]} source images).

Recipe (every run): the tiny net, bench_classification's recipe: `--init {r["init"]}`
(fc8 N(0, 0.01)), SGD lr {r["lr"]} momentum {r["momentum"]}, batch {r["batch_size"]},
weight decay {r["weight_decay"]}, dropout {r["dropout"]}, short side {r["short_side"]},
images cached, `--mixed-precision {r["mixed_precision"]}`, seed {r["seed"]}; a run of N steps
is {r["phases"]} epochs of N/{r["phases"]} steps, lr x {r["lr_decay_factor"]} after epochs
{r["lr_decay_phases"]} (bench_classification's 30/40/45 of 48, scaled). Source model:
{src["steps"]} steps ({src["train_seconds"]:.0f} s) on the source classes; its source test
error: center crop {src_errors[0]:.2f} % top-1, 6 scales fine {src_errors[2]:.2f} % top-1.
Then on the target classes, for each budget, the same recipe, seed and step count from:
the source model (transfer: `--init-model`, conv1-fc7 copied, fc8 new since the label set
differs), a new random init (scratch), and the source model with `--freeze-up-to fc7`
(frozen: only fc8 trains; Oquab et al. also train an adaptation layer, not here). Budget =
optimizer steps on the target classes; the source pre-training is not counted in it.
Evaluation: `overfeat_tf.evaluation.classification`, its center crop row (256 px short side,
one view) and 6 scales {report["scales"]} fine stride with flips; "training s" is each run's
wall time (building, decoding the images once into the cache, the steps, saving).

{table(report)}

Reading: {reading(report)} Chance is {100 - 100 / len(tgt["classes"]):.1f} % top-1 with
{len(tgt["classes"])} classes; top-5 of so few classes is a weak test. Noise: with
{first["test_examples"]} test images a cell's binomial standard error is at most
{50 / first["test_examples"] ** 0.5:.1f} points (the arms are scored on the same images).
{_short_budgets(report)}The table measures the head start pre-training gives at equal,
short budgets, not how far scratch gets with a longer one.
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
    else:
        report = run(args)
        report["command"] = shlex.join(["python", "benchmarks/bench_transfer.py", *argv])
        if args.report:
            atomic.write_json(Path(args.report), report)
    print(json.dumps(report, indent=2))
    if args.write:
        write_section(SECTION, section(report, report["command"]))
    return report


if __name__ == "__main__":
    main()

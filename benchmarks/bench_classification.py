"""Learning check: the tiny net trained on the generated dataset, paper Table 2 style errors.

Usage:
    python benchmarks/bench_classification.py [--write] [--epochs N] [--lr X] ...

Prepares `overfeat_shapes/standard` (generated on the spot the first time; timed apart),
trains the tiny net on its train split with `overfeat_tf.training.run` for at most
`--train-minutes` (15) of wall time, then evaluates the test split with
`overfeat_tf.evaluation.classification` (single scale coarse / fine, 4 and 6 scales, with flips; the
central crop and 10-view rows for reference). Prints one JSON object; `--write` also
updates the "Classification: tiny on overfeat_shapes" section of BENCHMARKS.md: one row of
its runs table and one "### <policy> run" subsection per compute policy, replacing those of
this run's policy and keeping the others (so a float32 and a bf16 run sit side by side,
each with the CPU it ran on).

The recipe is the paper's except where the flags below change it (all `train.py` flags,
chosen on the validation split): a 0.5M-parameter net from N(0, 0.01) barely moves in 15
CPU minutes, so the benchmark uses He init, lr 0.01 with momentum 0.9, batch 32, no
dropout and a schedule sized to the time budget; the compute dtype follows the hardware
(`--mixed-precision auto`: mixed bfloat16 where the CPU has bf16 matrix units, float32
elsewhere; `overfeat_tf.training.precision`), and `--mixed-precision float32` on any machine is the
stand-in for a CPU without bf16 units; crops are taken from
images rescaled to a 231 px short side (the full short side), because the paper's 256
px rescale lets a 231 crop of a wide image miss the labelled object (label noise that
halved the accuracy reached in the budget). Evaluation scales: `--scales` (chosen on the
validation split around the training scale) and, for reference, the net's default
pyramid (`pyramid.default_scales`, paper Table 5 ratios, up to 2x the crop).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import keras

from benchmarks.common import (
    BENCHMARKS_MD,
    add_tiny_recipe_arguments,
    machine,
    tiny_recipe_fields,
    write_section,
)
from overfeat_tf import cli
from overfeat_tf.data import tfds_io
from overfeat_tf.evaluation import classification as evaluation
from overfeat_tf.ops.pyramid import parse_scales
from overfeat_tf.training import precision
from overfeat_tf.training import run as training

SECTION = "Classification: tiny on overfeat_shapes"
TARGET = 10.0  # % multi-scale top-1 error
POLICIES = tuple(precision.POLICIES.values())
RUNS_HEADER = (
    "| compute policy | `--mixed-precision` | CPU (model name; flags) | date | epochs run "
    "/ steps | training s (limit) | 6-scale fine top-1 error % | <= 10 % target |\n"
    "|---|---|---|---|---|---|---|---|"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--dataset", default="overfeat_shapes/standard", metavar="NAME|PATH", help=cli.DATASET_HELP
    )
    cli.add_data_dir_arguments(p)
    p.add_argument("--output", default=None, help="run directory (default: a temporary one)")
    p.add_argument("--train-minutes", type=float, default=15.0)
    p.add_argument("--epochs", type=int, default=48)
    p.add_argument("--lr-decay-epochs", default="30,40,45")
    add_tiny_recipe_arguments(p)
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    return p.parse_args(argv)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run(args: argparse.Namespace) -> dict:
    start_load = _load()
    t0 = time.monotonic()
    tfds_io.load_builder(args.dataset, args.data_dir, splits=("train", "test"))
    prepare_seconds = time.monotonic() - t0
    output = args.output or tempfile.mkdtemp(prefix="bench_classification_")
    config = training.TrainConfig(
        model="tiny",
        dataset=args.dataset,
        data_dir=args.data_dir,
        output=output,
        epochs=args.epochs,
        lr_decay_epochs=tuple(int(e) for e in args.lr_decay_epochs.split(",") if e),
        time_limit=args.train_minutes * 60,
        verbose=2,
        **tiny_recipe_fields(args),
    )
    result = training.train(config)
    model = keras.models.load_model(result["model_path"])
    evaluated = evaluation.evaluate(
        model,
        args.dataset,
        "test",
        args.data_dir,
        scales=parse_scales(args.scales),
        max_examples=args.max_eval,
    )
    default_pyramid = evaluation.evaluate(
        model, args.dataset, "test", args.data_dir, max_examples=args.max_eval
    )
    return {
        "machine": machine(),
        "cpu": precision.describe_cpu(),
        "cpu_has_bf16_units": precision.has_native_bf16(),
        "policy": precision.resolve_precision(args.mixed_precision),
        "date": datetime.date.today().isoformat(),
        "nproc": os.cpu_count(),
        "load_average_start": start_load,
        "load_average_end": _load(),
        "dataset": args.dataset,
        "prepare_seconds": round(prepare_seconds, 1),
        "train_seconds": round(result["wall_seconds"], 1),
        "eval_seconds": round(evaluated["seconds"] + default_pyramid["seconds"], 1),
        "epochs_run": result["epochs_run"],
        "steps": result["final_step"],
        "stopped_by_time_limit": result["stopped_by_time_limit"],
        "train_logs": result["logs"],
        "recipe": {k: v for k, v in vars(args).items() if k not in ("write", "output")},
        "test_examples": evaluated["examples"],
        "scales": evaluated["scales"],
        "rows": evaluated["rows"],
        "default_scales": default_pyramid["scales"],
        "default_scale_rows": default_pyramid["rows"],
    }


def _verdict_row(rows: list[dict]) -> dict:
    return next(r for r in rows if r["name"].startswith("6 scales (1-6), fine"))


def _verdict(error: float) -> str:
    if error <= TARGET:
        return "meets"
    return f"does NOT meet (by {error - TARGET:.2f} points)"


def run_row(report: dict) -> str:
    """The runs-table row of one run (first cell: its Keras policy)."""
    recipe = report["recipe"]
    best = _verdict_row(report["rows"])["top1_error"]
    stopped = ", stopped by it" if report["stopped_by_time_limit"] else ""
    return (
        f"| {report['policy']} | `{recipe['mixed_precision']}` | {report['cpu']} | "
        f"{report['date']} | {report['epochs_run']}/{recipe['epochs']} / {report['steps']} | "
        f"{report['train_seconds']} ({recipe['train_minutes']:g} min{stopped}) | {best:.2f} | "
        f"{_verdict(best)} |"
    )


def run_details(report: dict) -> str:
    """The `### <policy> run` subsection of one run: times, last epoch, error tables."""
    recipe = report["recipe"]
    rows = evaluation.format_table(report)
    default_rows = evaluation.format_table({"rows": report["default_scale_rows"]})
    best = _verdict_row(report["rows"])["top1_error"]
    logs = ", ".join(f"{k} {v:.4g}" for k, v in sorted(report["train_logs"].items()))
    stopped = ", stopped by it" if report["stopped_by_time_limit"] else ""
    stand_in = ""
    if report["policy"] == "float32" and report["cpu_has_bf16_units"]:
        stand_in = (
            "\n\nThis CPU has bf16 matrix units, so `--mixed-precision float32` was forced:\n"
            "the run is the stand-in for a CPU without bf16 units (where `auto` picks\n"
            "float32), as issue 14 asks."
        )
    return f"""### {report["policy"]} run, {report["date"]}

Machine: {report["machine"]} (nproc {report["nproc"]}).
CPU: {report["cpu"]}.
Command: `python benchmarks/bench_classification.py --write --mixed-precision
{recipe["mixed_precision"]}` -> compute policy {report["policy"]}. Shared: load average
{report["load_average_start"]} at the start, {report["load_average_end"]} at the end (other
jobs ran).{stand_in}

{report["epochs_run"]} of {recipe["epochs"]} epochs, {report["steps"]} steps. Wall time:
training {report["train_seconds"]} s (limit {recipe["train_minutes"]} min{stopped}),
evaluation {report["eval_seconds"]} s (both tables), dataset generation
{report["prepare_seconds"]} s (once, before training; 0 when already prepared). Last
training epoch: {logs}.

Test errors, scales {report["scales"]} (chosen on the validation split, around the
training scale; "scale i" is the i-th), all rows with the image and its flip except the
crop rows:

{rows}

For reference, the net's default pyramid {report["default_scales"]} (paper Table 5's ratios
to the crop, up to 2x; mostly larger than the training scale here):

{default_rows}

Multi-scale (6 scales, fine stride, flips) top-1 test error {best:.2f}%: {_verdict(best)} the
<= {TARGET:g}% target.
"""


def intro(report: dict) -> str:
    """The part of the section every run shares: what is trained and how."""
    recipe = report["recipe"]
    return f"""The tiny net (0.5M parameters, 231 px crops) trained on `{report["dataset"]}`
(8000 train images, 12 classes) with `overfeat_tf.training.run` and evaluated on its test split
({report["test_examples"]} images) with `overfeat_tf.evaluation.classification`. Command:
`python benchmarks/bench_classification.py --write [--mixed-precision P]`. Recipe: the
paper's pipeline and SGD with Torch-style weight decay {recipe["weight_decay"]}, except (flags,
chosen on the validation split): `--init {recipe["init"]}` (He; fc8 keeps N(0, 0.01)), batch
{recipe["batch_size"]}, lr {recipe["lr"]}, momentum {recipe["momentum"]}, lr x
{recipe["lr_decay_factor"]} after epochs {recipe["lr_decay_epochs"]}, {recipe["epochs"]} epochs
at most, dropout {recipe["dropout"]}, `--short-side {recipe["short_side"]}` (the paper's 256
lets a 231 crop of a wide image miss the labelled object), decoded images cached in memory,
training stopped after {recipe["train_minutes"]:g} min of wall time. Compute dtype:
`--mixed-precision auto` (default) picks mixed bfloat16 only on a CPU with bf16 matrix units
(flags `avx512_bf16` / `amx_bf16`) and float32 elsewhere (`overfeat_tf.training.precision`);
`--mixed-precision float32` on any machine stands in for a CPU without bf16 units.

One row per compute policy, each measured by its own run (`--write` replaces its policy's row
and subsection and keeps the others); CPU flags: AVX2 / AVX-512 (`avx512f`) / AVX-512 BF16
(`avx512_bf16`) / AMX (`amx_tile`, `amx_bf16`):
"""


def previous_runs(text: str | None = None) -> tuple[dict[str, str], dict[str, str], str]:
    """The runs rows, `### <policy> run` subsections and notes of the section as written.

    Args:
        text: BENCHMARKS.md's text (None: read it).

    Returns:
        `(rows, details, notes)`: rows and subsections keyed by policy, in their order;
        `notes` is the text between the runs table and the first subsection.
    """
    if text is None:
        text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    match = re.search(rf"^## {re.escape(SECTION)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    body = match.group(1) if match else ""
    head, *subsections = re.split(r"^(?=### )", body, flags=re.M)
    rows = {}
    table_end = 0
    for line in head.splitlines(keepends=True):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in POLICIES:
            rows[cells[0]] = line.rstrip("\n")
            table_end = head.index(line) + len(line)
    notes = head[table_end:].strip() if rows else ""
    details = {}
    for sub in subsections:
        policy = sub.split()[1]
        if policy in POLICIES:
            details[policy] = sub.strip()
    return rows, details, notes


def section(report: dict, text: str | None = None) -> str:
    """The whole section: the shared intro, the runs table (this run's row replacing its
    policy's, the other policies' rows kept) and one subsection per policy."""
    rows, details, notes = previous_runs(text)
    rows[report["policy"]] = run_row(report)
    details[report["policy"]] = run_details(report).strip()
    order = list(dict.fromkeys([*rows, *details]))
    table = "\n".join([RUNS_HEADER, *(rows[p] for p in order if p in rows)])
    parts = [intro(report).strip(), table]
    if notes:
        parts.append(notes)
    parts.extend(details[p] for p in order if p in details)
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = run(args)
    print(json.dumps(report, indent=2))
    if args.write:
        write_section(SECTION, section(report))
    return report


if __name__ == "__main__":
    main()

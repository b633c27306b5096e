"""Localization and detection: the tiny net trained in three stages, scored on the test split.

Usage:
    python benchmarks/bench_detection.py [--write] [--stage-minutes 15] [--max-examples N] ...
    python benchmarks/bench_detection.py --skip-training --model runs/x/model.keras [--write]
    # smoke run (minutes, not a measurement):
    python benchmarks/bench_detection.py --dataset overfeat_shapes/small --stage-minutes 0.5 \
        --steps-per-epoch 2 --classify-epochs 1 --detect-epochs 1 --localize-epochs 1 \
        --max-examples 10

Prepares `overfeat_shapes/standard` (generated on the spot the first time; timed apart), then
trains the tiny net with `overfeat_tf.training.run.train` in the order that keeps every head
consistent with the trunk it reads (`overfeat_tf.data.spatial`), each stage stopped by
its own wall-time limit (`--stage-minutes`, 15):

1. classify: the paper's classification recipe on random crops (He init, schedule sized to
   the budget, as `bench_classification.py`);
2. detect: from the classifier, spatial training with a background class and negatives
   mined on the fly (paper §5);
3. localize: from the detector, the box regressor on the frozen trunk (paper §4.2).

Then `overfeat_tf.evaluation.detection` scores the final model on the test split, from one dense
run per image: the ILSVRC localization error with 5 guesses, AP@0.5 per class and mAP with
the paper's greedy merge and, from the same dense boxes, with `tf.image.non_max_suppression`
(per class), side by side; plus classification errors from the same runs. Prints one JSON
object; `--write` also replaces the "Localization and detection" section of BENCHMARKS.md.
Targets (issue 4): localization error <= 15 % and mAP@0.5 >= 0.6 (greedy merge, the paper's
method).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, write_section
from overfeat_tf import cli
from overfeat_tf.data import tfds_io
from overfeat_tf.evaluation import detection as detection_eval
from overfeat_tf.models.backbone import load_model
from overfeat_tf.models.detector import OverFeatDetector, as_detector
from overfeat_tf.ops.pyramid import parse_scales
from overfeat_tf.training import precision
from overfeat_tf.training import run as training

SECTION = "Localization and detection"
STAGES = ("classify", "detect", "localize")
TRAINS = {
    "classify": "the whole net on random crops (classes only)",
    "detect": "trunk and classifier on whole maps, + background class, mined negatives",
    "localize": "the class-specific box regressor only (trunk and classifier frozen)",
}
LOCALIZATION_TARGET = 15.0  # % error, 5 guesses
MAP_TARGET = 0.6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--dataset", default="overfeat_shapes/standard", metavar="NAME|PATH", help=cli.DATASET_HELP
    )
    cli.add_data_dir_arguments(p)
    p.add_argument("--output", default=None, help="run directory (default: a temporary one)")
    p.add_argument("--skip-training", action="store_true", help="evaluate --model only")
    p.add_argument(
        "--classifier", default=None, help="a trained tiny classifier (.keras): skip that stage"
    )
    p.add_argument("--model", default=None, help="a .keras model to evaluate (--skip-training)")
    p.add_argument("--stage-minutes", type=float, default=15.0, help="wall-time limit per stage")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: examples // batch")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument(
        "--lr-decay-factor",
        type=float,
        default=0.2,
        help="lr multiplier after 50%%, 75%% and 90%% of each stage's epochs",
    )
    p.add_argument("--init", default="he_normal", choices=sorted(training.INITS))
    p.add_argument(
        "--mixed-precision",
        default="auto",
        choices=(*precision.PRECISIONS, "none"),
        help="training compute dtype; auto: bf16 only where the CPU has bf16 units; none = float32",
    )
    p.add_argument("--seed", type=int, default=0)
    for stage, epochs, batch, lr in (
        ("classify", 30, 64, 0.02),
        ("detect", 20, 32, 0.01),
        ("localize", 20, 32, 0.01),
    ):
        p.add_argument(f"--{stage}-epochs", type=int, default=epochs)
        p.add_argument(f"--{stage}-batch-size", type=int, default=batch)
        p.add_argument(f"--{stage}-lr", type=float, default=lr)
    # evaluation
    p.add_argument("--split", default="test")
    p.add_argument(
        "--max-examples", type=int, default=None, help="evaluate the first N images only"
    )
    p.add_argument(
        "--scales", type=parse_scales, default=None, help="e.g. 247,327,439 (default: the net's)"
    )
    p.add_argument("--max-boxes", type=int, default=OverFeatDetector.default_options()["max_boxes"])
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.skip_training and not args.model:
        p.error("--skip-training needs --model PATH")
    if args.model and not args.skip_training:
        p.error("--model is only used with --skip-training")
    return args


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def decay_epochs(epochs: int) -> tuple[int, ...]:
    """The learning rate drops after 50 %, 75 % and 90 % of a stage's epochs."""
    return tuple(sorted({e for e in (epochs // 2, 3 * epochs // 4, 9 * epochs // 10) if e > 0}))


def stage_config(
    args: argparse.Namespace, stage: str, output: Path, init_model: str | None
) -> training.TrainConfig:
    """The `TrainConfig` of one stage (`task` and `init_model` select the spatial stages)."""
    epochs = getattr(args, f"{stage}_epochs")
    return training.TrainConfig(
        model="tiny",
        task=stage,
        init_model=init_model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        output=str(output / stage),
        epochs=epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=getattr(args, f"{stage}_batch_size"),
        learning_rate=getattr(args, f"{stage}_lr"),
        momentum=args.momentum,
        lr_decay_epochs=decay_epochs(epochs),
        lr_decay_factor=args.lr_decay_factor,
        weight_decay=args.weight_decay,
        init=args.init,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        cache=True,
        time_limit=args.stage_minutes * 60,
        verbose=2,
    )


def train_stages(args: argparse.Namespace, output: Path) -> tuple[list[dict[str, Any]], str]:
    """Runs classify -> detect -> localize; returns the stage summaries and the last model."""
    stages: list[dict[str, Any]] = []
    model_path: str | None = args.classifier
    for stage in STAGES:
        if stage == "classify" and args.classifier:
            continue  # start from an already trained classifier
        config = stage_config(args, stage, output, model_path)
        print(f"--- stage {stage} ---", file=sys.stderr, flush=True)
        result = training.train(config)
        model_path = result["model_path"]
        stages.append(
            {
                "stage": stage,
                "train_seconds": round(result["wall_seconds"], 1),
                "epochs_run": result["epochs_run"],
                "steps": result["final_step"],
                "stopped_by_time_limit": result["stopped_by_time_limit"],
                "logs": result["logs"],
                "model_path": model_path,
                "recipe": {
                    "epochs": config.epochs,
                    "batch_size": config.batch_size,
                    "lr": config.learning_rate,
                    "lr_decay_epochs": list(config.lr_decay_epochs),
                },
            }
        )
    return stages, model_path


def run(args: argparse.Namespace) -> dict[str, Any]:
    start_load = _load()
    t0 = time.monotonic()
    tfds_io.load_builder(args.dataset, args.data_dir, splits=("train", args.split))
    prepare_seconds = time.monotonic() - t0
    if args.skip_training:
        stages, model_path = [], args.model
    else:
        output = Path(args.output or tempfile.mkdtemp(prefix="bench_detection_"))
        stages, model_path = train_stages(args, output)
    model = load_model(model_path)
    detector = as_detector(model, scales=args.scales, max_boxes=args.max_boxes)
    evaluated = detection_eval.evaluate_detection(
        detector,
        args.dataset,
        args.split,
        args.data_dir,
        max_examples=args.max_examples,
        progress=True,
    )
    recipe = {
        k: v
        for k, v in vars(args).items()
        if k not in ("write", "output", "skip_training", "model")
    }
    return {
        "machine": machine(),
        "cpu": precision.describe_cpu(),
        "policy": precision.resolve_precision(args.mixed_precision),
        "nproc": os.cpu_count(),
        "load_average_start": start_load,
        "load_average_end": _load(),
        "dataset": args.dataset,
        "split": args.split,
        "model_path": model_path,
        "skip_training": args.skip_training,
        "prepare_seconds": round(prepare_seconds, 1),
        "stages": stages,
        "recipe": recipe,
        "evaluation": evaluated,
    }


EVAL_KEYS = ("dataset", "data_dir", "split", "max_examples", "scales", "max_boxes")


def _command(report: dict[str, Any]) -> str:
    """The command line that reproduces the report (training flags only when it trained)."""
    parts = ["python benchmarks/bench_detection.py --write"]
    if report["skip_training"]:
        parts.append(f"--skip-training --model {report['model_path']}")
    for key, value in report["recipe"].items():
        if value is None or (report["skip_training"] and key not in EVAL_KEYS):
            continue
        if key.startswith("classify_") and report["recipe"]["classifier"]:
            continue  # that stage did not run
        if key == "scales":
            value = ",".join(str(s) if isinstance(s, int) else f"{s[0]}x{s[1]}" for s in value)
        parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts)


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdict(ok: bool) -> str:
    return "meets" if ok else "does NOT meet"


def _stage_table(report: dict[str, Any]) -> str:
    minutes = report["recipe"]["stage_minutes"]
    lines = [
        f"| stage | trains | epochs run x batch, lr | steps | wall time (s) | stopped by the "
        f"{minutes:g} min limit | last epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in report["stages"]:
        r = s["recipe"]
        logs = ", ".join(f"{k} {v:.4g}" for k, v in sorted(s["logs"].items()))
        factor = report["recipe"]["lr_decay_factor"]
        decay = (
            f" (x{factor:g} after epochs {r['lr_decay_epochs']})" if r["lr_decay_epochs"] else ""
        )
        lines.append(
            f"| {s['stage']} | {TRAINS[s['stage']]} | {s['epochs_run']}/{r['epochs']} x "
            f"{r['batch_size']}, {r['lr']:g}{decay} | {s['steps']} | {s['train_seconds']} | "
            f"{'yes' if s['stopped_by_time_limit'] else 'no'} | {logs} |"
        )
    return "\n".join(lines)


def merge_vs_nms(evaluated: dict[str, Any], tolerance: float = 0.005) -> str:
    """Which combination of the same dense boxes scores better here, and by how much."""
    merge, nms = evaluated["merge"], evaluated["nms"]
    if merge["map"] is None or nms["map"] is None:
        return "No ground truth: merge and NMS cannot be compared."
    diff = merge["map"] - nms["map"]
    if diff > tolerance:
        claim = f"holds here: merging scores {diff:.3f} mAP higher than NMS"
    elif diff < -tolerance:
        claim = f"does not hold here: merging scores {-diff:.3f} mAP lower than NMS"
    else:
        claim = f"is not visible here: the two mAPs are within {tolerance} of each other"
    text = f"Merge vs NMS on the same dense boxes: mAP@0.5 {merge['map']:.3f} vs {nms['map']:.3f}"
    if merge["localization_error"] is not None and nms["localization_error"] is not None:
        text += (
            f", localization error {merge['localization_error']:.2f} % vs "
            f"{nms['localization_error']:.2f} %"
        )
    return f"{text}. The paper's claim that merging is more robust to false positives {claim}."


def section(report: dict[str, Any]) -> str:
    """The BENCHMARKS.md section (Markdown)."""
    evaluated, options = report["evaluation"], report["evaluation"]["options"]
    merge = evaluated["merge"]
    loc_ok = merge["localization_error"] is not None and (
        merge["localization_error"] <= LOCALIZATION_TARGET
    )
    map_ok = merge["map"] is not None and merge["map"] >= MAP_TARGET
    limit = report["recipe"]["max_examples"]
    images = f"the first {limit} images" if limit else "all images"
    if report["stages"]:
        training_text = (
            f"Training: the tiny net on `{report['dataset']}` (train split), "
            f"{len(report['stages'])} stages of "
            f"`overfeat_tf.training.run.train`, each starting from the previous stage's model and "
            f"limited to {report['recipe']['stage_minutes']:g} min of wall time; dataset "
            f"generation {report['prepare_seconds']} s (once, before).\n\n" + _stage_table(report)
        )
        classifier = report["recipe"]["classifier"]
        if classifier:
            training_text += (
                f"\n\nThe classify stage was not run here: the detect stage started from "
                f"`{classifier}`, trained by `python benchmarks/bench_classification.py` (its "
                f'recipe, time and errors are in the section "Classification: tiny on '
                f'overfeat_shapes").'
            )
        training_text += (
            f"\n\nCompute policy of the training stages: {report['policy']} "
            f"(`--mixed-precision {report['recipe']['mixed_precision']}`; auto: mixed bfloat16 "
            "only on a CPU with bf16 matrix units, float32 elsewhere)."
        )
    else:
        training_text = f"Training skipped: evaluated `{report['model_path']}`."
    return f"""Machine: {report["machine"]} (nproc {report["nproc"]}; shared machine: load
average {report["load_average_start"]} at the start, {report["load_average_end"]} at the end).
CPU: {report["cpu"]}.

Command: `{_command(report)}`

{training_text}

Evaluation (`overfeat_tf.evaluation.detection`, {images} of the {report["split"]} split):
- one dense run per image: scales {options["scales"]}, flips, {options["stride"]} stride,
  top-{options["top_k"]} classes per level; boxes with probability >=
  {options["score_threshold"]} (at most {options["max_boxes"]}) combined by the greedy merge
  (t = {options["merge_threshold"]}) and, from the same boxes, by per-class NMS (IoU
  {options["nms_iou"]}); at most {options["max_detections"]} detections per image;
- AP: COCO's 101-point AP at IoU 0.5 per class, computed by pycocotools' COCOeval, mAP its
  mean over the classes present in the split;
- localization error: ILSVRC's, 5 guesses (the best box of each of the 5 best classes),
  correct if one has the image's class (its dominant object's) and IoU >= 0.5 with one of
  its boxes of that class;
- {evaluated["examples"]} images, {evaluated["objects"]} objects; {evaluated["seconds"]:.0f} s
  ({evaluated["seconds_per_image"]:.2f} s per image after the first, merge and NMS together;
  the first image, with tracing, {evaluated["first_image_seconds"]:.1f} s).

{detection_eval.format_report(evaluated)}

Targets (greedy merge, the paper's method): localization error
{_number(merge["localization_error"], 2)} % {_verdict(loc_ok)} the <= {LOCALIZATION_TARGET:g} %
target; mAP@0.5 {_number(merge["map"], 3)} {_verdict(map_ok)} the >= {MAP_TARGET} target.

{merge_vs_nms(evaluated)}
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    print(json.dumps(report, indent=2))
    if args.write:
        write_section(SECTION, section(report))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")

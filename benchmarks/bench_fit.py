"""`OverFeatDetector.fit` in a notebook vs `train.py`'s detect + localize stages, same budget.

From one classifier (the main job's classify stage, `runs/tiny/classify/model.keras` by
default) both routes train detect then localize on `overfeat_shapes/standard` with the main
job's recipe (`main_job.TINY_RECIPE`: steps, batch, SGD, learning rate and its drops,
clipping) and are evaluated alike (the main job's pyramid and box budget, mAP@0.5 of the
merge and the localization error on the first `--max-examples` test images):

- "train.py": `training.train` with the main job's stage configs (`main_job.stage_config`:
  checkpoints, backup, logs), what `python train.py --model tiny --task detect|localize`
  runs;
- "detector.fit": the README's notebook cell: `training.tasks.task_model`, an
  `OverFeatDetector` compiled for the task with a Keras SGD of the same schedule, and
  `detector.fit` on `data.spatial.spatial_dataset` with a `DetectionMAP` callback on the
  validation split after the last epoch (its figure is printed, not compared: another
  split).

Usage:
    python benchmarks/bench_fit.py [--init-model runs/tiny/classify/model.keras] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras

from benchmarks.common import machine, write_section
from overfeat_tf import main_job
from overfeat_tf.architecture.config import TINY
from overfeat_tf.data import spatial
from overfeat_tf.evaluation.detection import evaluate_detection
from overfeat_tf.models.backbone import load_model
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.training import precision, recipe, tasks
from overfeat_tf.training import run as training
from overfeat_tf.training.callbacks import DetectionMAP

SECTION = "Detector fit vs train.py"
DATASET = "overfeat_shapes/standard"
TOLERANCE = 0.02  # mAP@0.5


def _evaluate(detector: OverFeatDetector, max_examples: int) -> dict[str, Any]:
    detector = detector.with_options(
        scales=main_job.SHAPES_SCALES, max_boxes=main_job.SHAPES_MAX_BOXES
    )
    merge = {"merge": detector.prediction_decoder}
    found = evaluate_detection(
        detector, DATASET, "test", max_examples=max_examples, decoders=merge
    )["merge"]
    return {"map": found["map"], "localization_error": found["localization_error"]}


def train_py(init_model: str, output: Path) -> tuple[OverFeatDetector, float]:
    """detect then localize through `training.train` (train.py's stages)."""
    start = time.monotonic()
    job = main_job.MainJob(output=str(output), verbose=0)
    model = init_model
    for stage in ("detect", "localize"):
        model = training.train(main_job.stage_config(job, stage, model))["model_path"]
    return load_model(model), time.monotonic() - start


def notebook(init_model: str, output: Path) -> tuple[OverFeatDetector, float, list]:
    """detect then localize with `detector.fit`, as the README's notebook cell does."""
    start = time.monotonic()
    job = main_job.MainJob(verbose=0)
    keras.mixed_precision.set_global_policy(precision.resolve_precision("auto"))
    net = load_model(init_model)
    maps: list = []
    for stage in ("detect", "localize"):
        config = main_job.stage_config(job, stage, init_model)
        keras.utils.set_random_seed(config.seed)
        net = tasks.task_model(stage, net)  # the global policy's dtype
        recipe.add_weight_decay(net, config.weight_decay)
        detector = OverFeatDetector(net)
        steps = 8000 // config.batch_size
        boundaries = [e * steps - 1 for e in config.lr_decay_epochs]
        rates = [config.learning_rate * config.lr_decay_factor**i for i in range(3)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, rates)
        optimizer = keras.optimizers.SGD(
            schedule, momentum=config.momentum, global_clipnorm=config.clipnorm
        )
        detector.compile(optimizer=optimizer, task=stage)
        batches = spatial.spatial_dataset(DATASET, "train", TINY, config.batch_size)
        callback = DetectionMAP(DATASET, "validation", every=config.epochs, max_examples=200)
        detector.fit(batches, epochs=config.epochs, steps_per_epoch=steps, callbacks=[callback])
        maps.append({"stage": stage, **callback.history[-1]})
        net = detector.backbone
    detector.save(output / "notebook.keras")
    return OverFeatDetector(net), time.monotonic() - start, maps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init-model", default="runs/tiny/classify/model.keras")
    p.add_argument(
        "--train-py-model",
        default=None,
        help="the detector train.py's detect + localize stages made from --init-model with the "
        "same recipe (e.g. the main job's runs/tiny/localize/model.keras): not trained again",
    )
    p.add_argument("--output", default="runs/bench_fit")
    p.add_argument("--max-examples", type=int, default=500)
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = p.parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows = {}
    detector, seconds, maps = notebook(args.init_model, output)
    rows["detector.fit"] = {**_evaluate(detector, args.max_examples), "seconds": seconds}
    if args.train_py_model:
        detector, seconds = load_model(args.train_py_model), None
    else:
        detector, seconds = train_py(args.init_model, output / "train_py")
    rows["train.py"] = {**_evaluate(detector, args.max_examples), "seconds": seconds}
    report = {"rows": rows, "callback": maps, "max_examples": args.max_examples}
    report["machine"], report["date"] = machine(), datetime.date.today().isoformat()
    print(json.dumps(report, indent=1, default=str))
    if args.write:
        write_section(SECTION, render(report))
    return report


def render(report: dict[str, Any]) -> str:
    rows = report["rows"]
    gap = abs(rows["detector.fit"]["map"] - rows["train.py"]["map"])
    verdict = "meets" if gap <= TOLERANCE else "does NOT meet"
    table = "\n".join(
        f"| {name} | {r['map']:.3f} | {r['localization_error']:.1f} | "
        f"{'the main job' if r['seconds'] is None else round(r['seconds'])} |"
        for name, r in rows.items()
    )
    callback = ", ".join(
        f"{m['stage']} {m['val_map50']:.3f} / {m['val_map']:.3f}" for m in report["callback"]
    )
    job = main_job.MainJob()
    recipe_line = dataclasses.asdict(main_job.stage_config(job, "detect", "classify.keras"))
    return f"""Machine: {report["machine"]}. Command:
`python benchmarks/bench_fit.py --init-model runs/tiny/classify/model.keras
[--train-py-model runs/tiny/localize/model.keras] --write`. Both routes
train detect then localize (8 epochs, 2000 steps each) with the main job's
recipe (batch {recipe_line["batch_size"]}, SGD momentum {recipe_line["momentum"]}, lr
{recipe_line["learning_rate"]} with x{recipe_line["lr_decay_factor"]} drops, clipping per
task); evaluated on the first {report["max_examples"]} test images with the main job's
pyramid {list(main_job.SHAPES_SCALES)} (merge).

| route | mAP@0.5 | localization error % | wall s (training) |
|---|---|---|---|
{table}

`detector.fit` vs `train.py`: {gap:.3f} mAP apart (target <= {TOLERANCE}: {verdict}). The
`DetectionMAP` callback of the notebook route after each stage's last epoch (first 200
validation images, mAP@0.5 / mAP@[.5:.95]): {callback}.
"""


if __name__ == "__main__":
    main()

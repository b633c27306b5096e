"""Where a main-job stage's train step goes: its input pipeline against its compute (issue 21).

    python benchmarks/profile_stages.py --run runs/tiny [--stages classify detect localize]

For each stage of the tiny main job (`main_job.TINY_RECIPE`, overfeat_shapes, this machine's
precision), in one process:
- the input pipeline alone (`training.run._train_input`, the stage's own), drawn as fast as it
  goes after its cache is full: wall and CPU (`time.process_time`) per batch;
- the compiled train step (`training.run._build_trainer`, as the stage builds it) on one of
  those batches repeated (`Dataset.from_tensors(batch).repeat()`): the compute alone;
- the stage as the job runs it (`training.train`, 2 epochs, callbacks and all): Keras' ms
  per step of the second epoch (the first fills the cache), and the first epoch's seconds.

detect and localize start from the run's `classify/model.keras` and `detect/model.keras`
(a finished main job: `--run`). The step in the pipeline minus the step on one batch is what
the pipeline costs the step on these cores. Takes about 4 minutes on 2 cores; prints a
Markdown table (BENCHMARKS.md, "Main job: where the time went").
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import tensorflow as tf

from benchmarks.common import machine
from overfeat_tf import main_job
from overfeat_tf.data import inputs as data
from overfeat_tf.main_job import STAGES, MainJob
from overfeat_tf.training import precision
from overfeat_tf.training import run as training

INIT = {"classify": None, "detect": "classify", "localize": "detect"}  # the stage it starts from


def stage_config(stage: str, run: Path, output: Path, epochs: int) -> training.TrainConfig:
    """The job's own config of `stage` (`main_job.stage_config`), run for `epochs` into
    `output`, starting from the model `run`'s previous stage saved."""
    init = INIT[stage]
    job = MainJob(model="tiny", output=str(output), verbose=0)
    config = main_job.stage_config(job, stage, str(run / init / "model.keras") if init else None)
    return dataclasses.replace(config, epochs=epochs)


def pipeline_alone(config: training.TrainConfig, steps: int, batches: int) -> tuple[dict, tuple]:
    """Wall and CPU ms per batch of the stage's pipeline after one epoch (its cache full)."""
    context = tf.distribute.InputContext()
    dataset = training._train_input(
        config, config.dataset_name, 0, data.CorruptRecordCounter(), context
    )
    batch_iter = iter(dataset)
    first = next(batch_iter)
    for _ in range(steps):  # one epoch: the cache is full after it
        next(batch_iter)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(batch_iter)
    per = 1000 / batches
    timing = {
        "wall": (time.perf_counter() - wall) * per,
        "cpu": (time.process_time() - cpu) * per,
    }
    return timing, first


def step_on_one_batch(
    config: training.TrainConfig, names: list[str], batch: tuple, steps: int
) -> float:
    """ms per step of the stage's compiled model on one batch repeated."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision.resolve_precision(config.mixed_precision))
    try:
        _, trained = training._build_trainer(config, tf.distribute.get_strategy(), names, steps)
        repeated = tf.data.Dataset.from_tensors(batch).repeat()
        trained.fit(repeated, steps_per_epoch=10, epochs=1, verbose=0)  # trace, warm up
        start = time.perf_counter()
        trained.fit(repeated, steps_per_epoch=steps, epochs=1, verbose=0)
        return (time.perf_counter() - start) / steps * 1000
    finally:
        keras.mixed_precision.set_global_policy(previous)


class _EpochTimes(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def stage_as_the_job_runs_it(config: training.TrainConfig) -> list[float]:
    """Seconds of each epoch of `training.train` (the job's pipeline and callbacks, and an
    epoch timer after them)."""
    timer = _EpochTimes()
    fit_callbacks = training.callbacks.fit_callbacks

    def with_timer(*args: object, **kwargs: object) -> tuple[list, object]:
        callback_list, limit = fit_callbacks(*args, **kwargs)
        return [*callback_list, timer], limit

    training.callbacks.fit_callbacks = with_timer
    try:
        training.train(config)
    finally:
        training.callbacks.fit_callbacks = fit_callbacks
    return timer.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished tiny main job (runs/tiny)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--batches", type=int, default=100, help="pipeline batches timed")
    parser.add_argument("--steps", type=int, default=60, help="steps timed on one batch")
    args = parser.parse_args(argv)
    run = Path(args.run)
    for stage in args.stages:
        init = INIT[stage]
        if init and not (run / init / "model.keras").is_file():
            parser.error(f"--run {run}: no {init}/model.keras (stage {stage} starts from it).")
    policy = precision.resolve_precision("auto")
    print(f"{machine()}; policy {policy}.\n")
    print(
        "| stage | pipeline alone: wall / CPU ms per batch | step on one batch ms "
        "| step in the job's pipeline ms | first epoch s (fills the cache) |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            config = stage_config(stage, run, Path(tmp), epochs=2)
            names, examples, _ = training._training_source(config, None, None)
            steps = training._steps_per_epoch(config, examples)
            alone, batch = pipeline_alone(config, steps, args.batches)
            compute = step_on_one_batch(config, names, batch, args.steps)
            epochs = stage_as_the_job_runs_it(config)
            print(
                f"| {stage} | {alone['wall']:.1f} / {alone['cpu']:.1f} | {compute:.1f} "
                f"| {epochs[1] / steps * 1000:.1f} | {epochs[0]:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training runs (paper §3.1, and the detect / localize stages of §4-5) with Keras `fit`:
`train` prepares, builds, fits and saves the run a `training.config.TrainConfig` describes.

What a run trains and how (model, init, SGD, schedule, Torch-style weight decay) is
`training.recipe`; the detect / localize models and losses are `training.tasks`; how a run
is distributed (strategies, the chief) is `training.distribute`. Inputs: random 231x231
(fast, tiny) / 221x221 (accurate) crops of images rescaled to a 256 px short side, random
flips (`data.inputs`), or the spatial tasks' images and targets (`data.spatial`).

Fault tolerance: `keras.callbacks.BackupAndRestore` saves weights, optimizer state (step,
momenta) and the epoch at the end of every epoch in `<output>/backup`; rerunning the same
command after a crash restores them, so only the current epoch is lost. The data order
of a resumed run is reseeded from the epoch, so it does not replay epoch 0's order.
`ModelCheckpoint` keeps every epoch's weights in `<output>/checkpoints/`, TensorBoard logs
go to `<output>/logs` (these callbacks: `training.callbacks`), and the final spatial
`OverFeat` model (an `OverFeatDetector` for detect / localize) to `<output>/model.keras`
(written to a temporary file, then renamed). Under `multi_worker` only the chief writes
`<output>`; other workers write under `<output>/workers/<index>/`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from overfeat_tf.architecture.config import model_config
from overfeat_tf.data import inputs as data
from overfeat_tf.data import spatial, tfds_io
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.training import callbacks, precision
from overfeat_tf.training.config import (
    DEFAULT_DATASETS,
    INITS,
    MODELS,
    TASK_DEFAULTS,
    TASKS,
    TrainConfig,
)
from overfeat_tf.training.distribute import STRATEGIES, is_chief, make_strategy
from overfeat_tf.training.recipe import (
    build_task_model,
    compile_crop_model,
    compile_task_model,
    initial_model,
)
from overfeat_tf.utils import atomic, progress
from overfeat_tf.utils.atomic import atomic_path

__all__ = [  # the run, and what train.py, the benchmarks and tests use as `training.X`
    "DEFAULT_DATASETS",
    "INITS",
    "MODELS",
    "STRATEGIES",
    "TASKS",
    "TASK_DEFAULTS",
    "TrainConfig",
    "initial_model",
    "save_model",
    "summary_line",
    "train",
]

# --- saving --------------------------------------------------------------------------------


def save_model(model: keras.Model, path: str | os.PathLike, detector: bool = False) -> Path:
    """Save the trained product atomically (`atomic.atomic_path`): `model`, or with
    `detector=True` an `OverFeatDetector` of it (what a detect / localize run saves, so that
    `load_model(path).predict(images)` gives detections).

    A compiled model is saved as an uncompiled copy with the same weights: the `.keras` file
    is the trained product (inference, export, the next stage's `--init-model`), not a resume
    point (checkpoints are). Its optimizer state would not fit the optimizer that loading
    recompiles anyway when layers were frozen (the trainable flags are not in the config).

    Raises:
        ValueError: a weight is NaN or infinite (nothing is written: a diverged model never
            replaces a good one; the run's checkpoints keep the last good epochs).
    """
    path = Path(path)
    weights = model.get_weights()
    bad = [w.name for w, v in zip(model.weights, weights, strict=True) if not np.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"Not saving {path}: {len(bad)} weights are NaN or infinite (first: {bad[0]}); the "
            "training diverged. Lower --lr, or resume from the last good checkpoint."
        )
    if getattr(model, "optimizer", None) is not None:
        copy = model.__class__.from_config(model.get_config())
        copy.set_weights(weights)
        model = copy
    if detector:
        model = OverFeatDetector(model)
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path


# --- the run -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    """Where this process of a run writes, and the epoch it resumes from."""

    strategy: tf.distribute.Strategy
    chief: bool
    output: Path  # the run's directory, or `<output>/workers/<index>` on a non-chief worker
    initial_epoch: int  # 0, or the epoch `BackupAndRestore` restores


def _prepare_run(config: TrainConfig) -> _Run:
    """Make the strategy, create this process' output directory, and find the epoch the run
    resumes from (`callbacks.resume_epoch`: the backup's; after a missing or damaged backup,
    which is moved aside and named in one printed line, the newest checkpoint that loads; 0
    when there is none)."""
    strategy = make_strategy(config.strategy, config.tpu)
    chief = is_chief(strategy)
    output = config.output_dir
    if not chief:
        output = output / "workers" / str(strategy.cluster_resolver.task_id)
    output.mkdir(parents=True, exist_ok=True)
    initial_epoch = callbacks.resume_epoch(output, chief)
    return _Run(strategy, chief, output, initial_epoch)


def _training_source(
    config: TrainConfig, dataset: tf.data.Dataset | None, class_names: list[str] | None
) -> tuple[list[str], int | None, str | tf.data.Dataset]:
    """The class names, the split's size (None: unknown) and what the input pipeline reads
    (the TFDS name `config.dataset_name`, or `dataset`)."""
    if dataset is None:
        builder = tfds_io.load_builder(config.dataset_name, config.data_dir, splits=(config.split,))
        names = tfds_io.class_names(builder)
        return names, tfds_io.num_examples(builder, config.split), config.dataset_name
    if class_names is None:
        raise ValueError("Pass class_names with a tf.data dataset.")
    return list(class_names), None, dataset


def _steps_per_epoch(config: TrainConfig, examples: int | None) -> int:
    if config.steps_per_epoch:
        return config.steps_per_epoch
    if not examples:
        raise ValueError("steps_per_epoch is required when the split's size is unknown.")
    return max(examples // config.batch_size, 1)


def _build_trainer(
    config: TrainConfig, strategy: tf.distribute.Strategy, class_names: list[str], steps: int
) -> tuple[OverFeat, keras.Model]:
    """Seed, then build and compile under the strategy's scope: the `OverFeat` model the run
    saves, and the compiled model `fit` trains (its crop model for "classify", an
    `OverFeatDetector` of it for "detect" / "localize")."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        if config.task == "classify":
            model = initial_model(config, class_names)
            return model, compile_crop_model(model, config, steps)
        model = build_task_model(config, class_names)
        return model, compile_task_model(model, config, steps)


def _train_input(
    config: TrainConfig,
    source: str | tf.data.Dataset,
    initial_epoch: int,
    counter: data.CorruptRecordCounter,
    context: tf.distribute.InputContext,
) -> tf.data.Dataset:
    """One input pipeline's training batches: crops and labels ("classify"), or images and
    their boxes and labels (detect / localize: the detector's train step makes the
    targets)."""
    seed = config.seed + 7919 * initial_epoch  # a resumed run does not replay epoch 0
    if config.task != "classify":
        return spatial.spatial_dataset(
            source,
            config.split,
            model_config(config.model),
            config.batch_size,
            train_size=config.train_size,
            data_dir=config.data_dir,
            seed=seed,
            cache=config.cache,
            counter=counter,
            input_context=context,
        )
    return data.training_dataset(
        source,
        config.split,
        model_config(config.model).crop_size,
        config.batch_size,
        seed=seed,
        shuffle_buffer=config.shuffle_buffer,
        cache=config.cache,
        counter=counter,
        input_context=context,
        data_dir=config.data_dir,
        short_side=config.short_side,
    )


def _val_input(
    config: TrainConfig, source: str | tf.data.Dataset, context: tf.distribute.InputContext
) -> tf.data.Dataset:
    """One input pipeline's validation batches: central crops of `config.val_split`, once."""
    return data.training_dataset(
        source,
        config.val_split,
        model_config(config.model).crop_size,
        config.batch_size,
        repeat=False,
        drop_remainder=False,
        training=False,
        input_context=context,
        data_dir=config.data_dir,
        short_side=config.short_side,
    )


def _distributed_inputs(
    config: TrainConfig,
    run: _Run,
    source: str | tf.data.Dataset,
    counter: data.CorruptRecordCounter,
) -> tuple[Any, Any]:
    """The distributed training and validation datasets (None without `val_split`, or for
    detect / localize, whose validation is `callbacks.DetectionMAP`)."""
    # Each worker builds its own shard of the pipeline (no auto-sharding of TFDS files).
    train_fn = functools.partial(_train_input, config, source, run.initial_epoch, counter)
    train_data = run.strategy.distribute_datasets_from_function(train_fn)
    if not config.val_split or config.task != "classify":
        return train_data, None
    val_fn = functools.partial(_val_input, config, source)
    return train_data, run.strategy.distribute_datasets_from_function(val_fn)


def _fit(
    config: TrainConfig,
    run: _Run,
    trained: keras.Model,
    inputs: tuple[Any, Any],
    steps: int,
    counter: data.CorruptRecordCounter,
    source: str | tf.data.Dataset,
) -> tuple[keras.callbacks.History, callbacks.TimeLimit | None]:
    """Write `train_config.json` (chief only) and run `fit` with the run's callbacks: for
    detect / localize with a `val_split`, first `callbacks.DetectionMAP` on it every epoch
    (the best detector kept in `<output>/best.keras`)."""
    callback_list, timer = callbacks.fit_callbacks(
        run.output, run.initial_epoch, counter, config.time_limit
    )
    if config.val_split and config.task != "classify" and run.chief:
        best = run.output / "best.keras"
        mean_ap = callbacks.DetectionMAP(source, config.val_split, config.data_dir, best_path=best)
        callback_list.insert(2, mean_ap)  # after the divergence check, before any save
    if run.chief:
        atomic.write_json(run.output / "train_config.json", dataclasses.asdict(config))
    train_data, val_data = inputs
    with warnings.catch_warnings():
        if val_data is not None:
            # The validation split is read once per epoch without a known length (corrupt
            # records are dropped), and Keras warns "Your input ran out of data" whenever it
            # discovers a length that way (fixed upstream by keras-team/keras#23360). The
            # training input repeats forever, so the warning can only be that false alarm.
            warnings.filterwarnings("ignore", "Your input ran out of data", UserWarning)
        history = trained.fit(
            train_data,
            epochs=config.epochs,
            steps_per_epoch=steps,
            validation_data=val_data,
            callbacks=callback_list,
            verbose=fit_verbosity(config.verbose),
            shuffle=False,  # the tf.data pipeline shuffles
        )
    return history, timer


def fit_verbosity(verbose: str | int) -> int:
    """Keras' `fit` verbosity for `TrainConfig.verbose`: "auto" is a progress bar (1) in a
    terminal or a notebook (`utils.progress.interactive`) and one line per epoch (2)
    otherwise, so a log file gets no progress-bar redraws (Keras' own "auto" draws them into
    files too)."""
    if verbose != "auto":
        return int(verbose)
    return 1 if progress.interactive() else 2


def _summary(
    run: _Run,
    history: keras.callbacks.History,
    trained: keras.Model,
    timer: callbacks.TimeLimit | None,
    model_path: Path | None,
    **fields: Any,
) -> dict[str, Any]:
    """The result of `train` (see there); `fields` are added as they are."""
    return {
        "model_path": str(model_path) if model_path else None,
        "output": str(run.output),
        "initial_epoch": run.initial_epoch,
        "epochs_run": len(next(iter(history.history.values()), [])),
        "final_step": int(keras.ops.convert_to_numpy(trained.optimizer.iterations)),
        "logs": {k: float(v[-1]) for k, v in history.history.items() if v},
        "stopped_by_time_limit": bool(timer and timer.stopped),
        "chief": run.chief,
        "replicas": int(run.strategy.num_replicas_in_sync),
        **fields,
    }


def train(
    config: TrainConfig,
    dataset: tf.data.Dataset | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """Train a model; returns a summary (paths, epochs, final logs, wall time).

    Args:
        config: the run.
        dataset: optional `tf.data.Dataset` of example dicts to train on instead of the TFDS
            dataset `config.dataset` (tests; needs `class_names` and `steps_per_epoch`).
        class_names: the class names when `dataset` is given.

    Returns:
        `model_path` (None on non-chief workers), `output`, `initial_epoch` (0 unless
        resumed), `epochs_run`, `steps_per_epoch`, `final_step` (optimizer steps),
        `logs` (the last epoch's), `corrupt_records`, `stopped_by_time_limit`,
        `num_classes`, `wall_seconds`, `chief`, `replicas`.
    """
    start = time.monotonic()
    run = _prepare_run(config)
    names, examples, source = _training_source(config, dataset, class_names)
    steps = _steps_per_epoch(config, examples)
    counter = data.CorruptRecordCounter()
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision.resolve_precision(config.mixed_precision))
    try:
        model, trained = _build_trainer(config, run.strategy, names, steps)
        inputs = _distributed_inputs(config, run, source, counter)
        history, timer = _fit(config, run, trained, inputs, steps, counter, source)
        # Only the chief writes the model (workers hold the same weights).
        spatial = config.task != "classify"  # detect / localize save an OverFeatDetector
        model_path = save_model(model, run.output / "model.keras", spatial) if run.chief else None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return _summary(
        run,
        history,
        trained,
        timer,
        model_path,
        steps_per_epoch=steps,
        corrupt_records=counter.value(),
        num_classes=len(names),
        wall_seconds=time.monotonic() - start,
    )


def summary_line(result: dict[str, Any]) -> str:
    """One line for the console."""
    logs = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result["logs"].items()))
    return (
        f"Trained {result['epochs_run']} epochs ({result['final_step']} steps, "
        f"{math.ceil(result['wall_seconds'])} s): {logs}. Model: {result['model_path']}"
    )

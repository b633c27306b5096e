"""Training runs (paper §3.1, and the detect / localize stages of §4-5) with Keras `fit`:
`TrainConfig` (a run's settings) and `train` (prepare, build, fit, save).

What a run trains and how (model, init, SGD, schedule, Torch-style weight decay) is
`overfeat_tf.recipe`; how it is distributed (strategies, the chief) is
`overfeat_tf.distribute`. Inputs: random 231x231 (fast, tiny) / 221x221 (accurate) crops of
images rescaled to a 256 px short side, random flips (`overfeat_tf.data`), or the spatial
tasks' images and targets (`overfeat_tf.spatial_training`).

Fault tolerance: `keras.callbacks.BackupAndRestore` saves weights, optimizer state (step,
momenta) and the epoch at the end of every epoch in `<output>/backup`; rerunning the same
command after a crash restores them, so only the current epoch is lost. The data order
of a resumed run is reseeded from the epoch, so it does not replay epoch 0's order.
`ModelCheckpoint` keeps every epoch's weights in `<output>/checkpoints/`, TensorBoard logs
go to `<output>/logs` (these callbacks: `overfeat_tf.callbacks`), and the final spatial
`OverFeat` model (an `OverFeatDetector` for detect / localize) to `<output>/model.keras`
(written to a temporary file, then renamed). Under `multi_worker` only the chief writes
`<output>`; other workers write under `<output>/workers/<index>/`.

`INITS`, `STRATEGIES` and `initial_model` stay importable from here (`train.py`, the
benchmarks).
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

from overfeat_tf import atomic, callbacks, data, precision, spatial_training, tfds_io
from overfeat_tf.atomic import atomic_path
from overfeat_tf.config import model_config
from overfeat_tf.detector import OverFeatDetector
from overfeat_tf.distribute import STRATEGIES, is_chief, make_strategy
from overfeat_tf.models import OverFeat
from overfeat_tf.recipe import (
    INITS,
    TASK_DEFAULTS,
    build_task_model,
    check_transfer_settings,
    compile_crop_model,
    compile_task_model,
    initial_model,
)

# STRATEGIES, INITS, TASK_DEFAULTS and initial_model are also re-exported: train.py, the
# benchmarks and tests/test_precision.py use them as `training.X`.
MODELS = ("fast", "accurate", "tiny")
TASKS = ("classify", *spatial_training.TASKS)  # classify -> detect -> localize
# `python train.py --model fast` is the paper's ImageNet run; tiny trains on generated data.
DEFAULT_DATASETS = {"fast": "imagenet2012", "accurate": "imagenet2012", "tiny": "overfeat_shapes"}


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; defaults are the paper's recipe (§3.1).

    Attributes:
        model: "fast", "accurate" or "tiny".
        task: "classify" (crops -> labels, paper §3), "detect" (spatial, with a background
            class and mined negatives, §5) or "localize" (the box regressor on a frozen
            trunk, §4.2); see `overfeat_tf.spatial_training`.
        init_model: the `.keras` model (an `OverFeat` or `OverFeatDetector`: a `convert`ed
            release net, or any model a run saved) the run starts from; required for
            "detect" / "localize" (the classifier, or the detector before "localize"),
            optional for "classify" (fine-tuning). It may have any label set: with the
            dataset's classes (same names, same order) and no transfer flags every layer is
            copied, fc8 included; otherwise layers up to `transfer_up_to` are copied and
            fc8 (+ background for detect) is new (`recipe.transfer_model`).
        transfer_up_to: the last layer copied from `init_model` (`recipe.layer_order`:
            "conv1" .. "conv5"/"conv6", "fc6", "fc7", "adapt1".., "fc8"). None: "fc7"
            when the label set or the adaptation layers change, every layer otherwise.
        adaptation_layers: new fc layers (1x1 convs, ReLU, dropout) between fc7 and fc8
            (Oquab et al. 2014: 1 = their FCa before FCb = fc8). None: those of
            `init_model` (none without one); 0 removes them.
        adaptation_width: units of each adaptation layer (Oquab: 2048).
        freeze_up_to: the layers up to this one (same names as `transfer_up_to`) are not
            trained ("classify" / "detect"; Oquab: "fc7", training only the adaptation
            layers and fc8). None: every layer trains.
        regressor: "class_specific" or "class_agnostic" (the head "localize" adds).
        box_loss: "localize" loss on the window-unit box edges: "smooth_l1" (default,
            bounded gradients) or "l2" (the paper's); see `losses.WindowBoxLoss`.
        train_size: side of the spatial tasks' training images (None: crop + 4 fine
            strides, a 5x5 output map).
        dataset: TFDS name (e.g. "imagenet2012", "overfeat_shapes/standard"); None: the
            model's default (`DEFAULT_DATASETS`).
        split: training split.
        val_split: optional split evaluated (central crop) after every epoch.
        data_dir: TFDS data directory (None: TFDS' default, ~/tensorflow_datasets).
        output: run directory (checkpoints, backup, logs, model.keras).
        epochs: number of epochs (the schedule's last halving is after epoch 80).
        steps_per_epoch: batches per epoch; None: examples in the split // batch size.
        batch_size: global batch size (split over replicas).
        learning_rate: initial learning rate. None: the task's default
            (`TASK_DEFAULTS`: 5e-2 classify and detect, 1e-2 localize).
        clipnorm: SGD's gradients (all trainable variables together) are scaled down to
            this global norm when longer. None: the task's default (`TASK_DEFAULTS`: none
            for classify, 10 detect, 1 localize); 0: no clipping.
        lr_decay_epochs: epochs after which the learning rate is multiplied by
            `lr_decay_factor`.
        lr_decay_factor: the multiplier (paper: 0.5).
        momentum: SGD momentum.
        weight_decay: Torch-style L2 weight decay (see `overfeat_tf.recipe`).
        init: "paper" (N(0, 1e-2)) or "he_normal".
        dropout: override the model's dropout rate after fc6 and fc7 (paper: 0.5).
        mixed_precision: "auto" (mixed bfloat16 where the hardware has bf16 matrix units,
            else float32; see `overfeat_tf.precision`), "float32", "bfloat16" or "float16"
            (Keras mixed policies; an explicit choice wins). "none" / None: float32.
        strategy: "default", "mirrored", "multi_worker" or "tpu" (`overfeat_tf.distribute`).
        tpu: TPU name or address for `strategy="tpu"` ("" or None: the local TPU).
        seed: seeds the initialization, the data order and the augmentation.
        short_side: images are rescaled to this short side before cropping (px).
        shuffle_buffer: shuffle buffer size (examples).
        cache: cache the decoded, rescaled images in memory (small datasets only).
        time_limit: stop training after this many seconds (at the end of a step); None:
            no limit.
        verbose: Keras verbosity ("auto": a progress bar in a terminal, else one line
            per epoch).
    """

    model: str = "fast"
    task: str = "classify"
    init_model: str | None = None
    transfer_up_to: str | None = None
    adaptation_layers: int | None = None
    adaptation_width: int = 2048
    freeze_up_to: str | None = None
    regressor: str = "class_specific"
    box_loss: str = "smooth_l1"
    train_size: int | None = None
    dataset: str | None = None
    split: str = "train"
    val_split: str | None = None
    data_dir: str | None = None
    output: str | None = None
    epochs: int = 90
    steps_per_epoch: int | None = None
    batch_size: int = 128
    learning_rate: float | None = None
    clipnorm: float | None = None
    lr_decay_epochs: tuple[int, ...] = (30, 50, 60, 70, 80)
    lr_decay_factor: float = 0.5
    momentum: float = 0.6
    weight_decay: float = 1e-5
    init: str = "paper"
    dropout: float | None = None
    mixed_precision: str | None = "auto"
    strategy: str = "default"
    tpu: str | None = None
    seed: int = 0
    short_side: int = data.SHORT_SIDE
    shuffle_buffer: int = 10_000
    cache: bool = False
    time_limit: float | None = None
    verbose: str | int = "auto"

    def __post_init__(self) -> None:
        defaults = TASK_DEFAULTS.get(self.task, {})
        if self.learning_rate is None:
            self.learning_rate = defaults.get("learning_rate", 5e-2)
        if self.clipnorm is None:
            self.clipnorm = defaults.get("clipnorm", 0.0)
        self.lr_decay_epochs = tuple(int(e) for e in self.lr_decay_epochs)
        # ValueError naming the valid choices; "none" / None -> "float32".
        self.mixed_precision = precision.normalize_precision(self.mixed_precision)
        checks = [
            (self.model in MODELS, f"model must be one of {MODELS}, got {self.model!r}."),
            (self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}."),
            (
                self.task == "classify" or bool(self.init_model),
                f"--task {self.task} starts from a trained model: pass --init-model PATH.keras "
                "(the classifier for detect, the detector or classifier for localize).",
            ),
            (
                self.strategy in STRATEGIES,
                f"strategy must be one of {STRATEGIES}, got {self.strategy!r}.",
            ),
            (self.init in INITS, f"init must be one of {sorted(INITS)}, got {self.init!r}."),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}."),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}."),
            (
                self.steps_per_epoch is None or self.steps_per_epoch >= 1,
                f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}.",
            ),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}."),
            *check_transfer_settings(self),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}."),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}."),
            (
                self.dropout is None or 0 <= self.dropout < 1,
                f"dropout must be in [0, 1), got {self.dropout}.",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def dataset_name(self) -> str:
        return self.dataset or DEFAULT_DATASETS[self.model]

    @property
    def output_dir(self) -> Path:
        return Path(self.output or f"runs/{self.model}").expanduser()


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
    """Make the strategy, create this process' output directory, read the backed-up epoch."""
    strategy = make_strategy(config.strategy, config.tpu)
    chief = is_chief(strategy)
    output = config.output_dir
    if not chief:
        output = output / "workers" / str(strategy.cluster_resolver.task_id)
    output.mkdir(parents=True, exist_ok=True)
    initial_epoch = callbacks.backed_up_epoch(output / callbacks.BACKUP_DIR)
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
    saves, and the compiled model `fit` trains (its crop model for "classify", the model
    itself for "detect" / "localize")."""
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
    num_classes: int,
    initial_epoch: int,
    counter: data.CorruptRecordCounter,
    model: keras.Model,
    context: tf.distribute.InputContext,
) -> tf.data.Dataset:
    """One input pipeline's training batches: crops and labels ("classify"), or images and
    the targets of `model`'s outputs (detect / localize)."""
    seed = config.seed + 7919 * initial_epoch  # a resumed run does not replay epoch 0
    if config.task != "classify":
        return spatial_training.spatial_dataset(
            source,
            config.split,
            model_config(config.model),
            num_classes,
            config.batch_size,
            train_size=config.train_size,
            data_dir=config.data_dir,
            seed=seed,
            counter=counter,
            input_context=context,
        ).map(lambda image, targets: (image, {k: targets[k] for k in model.output_names}))
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
    num_classes: int,
    counter: data.CorruptRecordCounter,
    model: keras.Model,
) -> tuple[Any, Any]:
    """The distributed training and validation (None without `val_split`) datasets."""
    # Each worker builds its own shard of the pipeline (no auto-sharding of TFDS files).
    train_fn = functools.partial(
        _train_input, config, source, num_classes, run.initial_epoch, counter, model
    )
    train_data = run.strategy.distribute_datasets_from_function(train_fn)
    if not config.val_split:
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
) -> tuple[keras.callbacks.History, callbacks.TimeLimit | None]:
    """Write `train_config.json` (chief only) and run `fit` with the run's callbacks."""
    callback_list, timer = callbacks.fit_callbacks(
        run.output, run.initial_epoch, counter, config.time_limit
    )
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
            verbose=config.verbose,
            shuffle=False,  # the tf.data pipeline shuffles
        )
    return history, timer


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
    if config.task != "classify" and config.val_split:
        raise ValueError(
            f"--val-split evaluates crops: it is for --task classify, not {config.task}."
        )
    counter = data.CorruptRecordCounter()
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision.resolve_precision(config.mixed_precision))
    try:
        model, trained = _build_trainer(config, run.strategy, names, steps)
        inputs = _distributed_inputs(config, run, source, len(names), counter, model)
        history, timer = _fit(config, run, trained, inputs, steps, counter)
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

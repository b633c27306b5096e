"""Classification training (paper §3.1) with Keras `fit` on the model's crop model.

The recipe (every number overridable through `TrainConfig` / `train.py` flags):
- SGD, momentum 0.6, batch 128, learning rate 5e-2 halved after epochs 30, 50, 60, 70
  and 80 (a `PiecewiseConstantDecay` on the optimizer step, so it resumes exactly);
- weights from N(0, 1e-2) (`--init paper`; `--init he_normal` for small nets that must
  learn fast); dropout 0.5 on fc6 and fc7 (in the model);
- L2 weight decay 1e-5 as Torch's `weightDecay` did it: `grad += wd * w` for every
  parameter (weights and biases), before momentum. That is an L2 loss `wd / 2 * ||w||^2`
  added to the loss (here: a `keras.regularizers.L2(wd / 2)` on every trainable variable,
  summed into the loss by Keras and scaled correctly under `tf.distribute`). Keras'
  `SGD(weight_decay=...)` is *decoupled* decay (`w -= lr * wd * w`, outside momentum),
  which is not what the paper's Torch code did, so it is not used. (Torch7's `optim.sgd`
  also damps momentum by default, `v = m v + (1 - m) g`; that detail is not emulated.)
- random 231x231 (fast, tiny) / 221x221 (accurate) crops of images rescaled to a 256 px
  short side, random flips (`overfeat_tf.data`).

Fault tolerance: `keras.callbacks.BackupAndRestore` saves weights, optimizer state (step,
momenta) and the epoch at the end of every epoch in `<output>/backup`; rerunning the same
command after a crash restores them, so only the current epoch is lost. The data order
of a resumed run is reseeded from the epoch, so it does not replay epoch 0's order.
`ModelCheckpoint` keeps every epoch's weights in `<output>/checkpoints/`, TensorBoard logs
go to `<output>/logs`, and the final spatial `OverFeat` model to `<output>/model.keras`
(written to a temporary file, then renamed).

Distribution goes through `tf.distribute`: `default` (one device), `mirrored` (all GPUs,
else all logical CPU devices), `multi_worker` (`MultiWorkerMirroredStrategy`, configured by
`TF_CONFIG`; only the chief writes `<output>`, other workers write under
`<output>/workers/<index>/`) and `tpu` (`TPUStrategy`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from overfeat_tf import data, spatial_training
from overfeat_tf.config import get_config
from overfeat_tf.models import PAPER_INITIALIZER, OverFeat

MODELS = ("fast", "accurate", "tiny")
TASKS = ("classify", *spatial_training.TASKS)  # classify -> detect -> localize
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION = (None, "bfloat16", "float16")
INITS = {"paper": PAPER_INITIALIZER, "he_normal": "he_normal"}
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
        init_model: the `.keras` model a "detect" / "localize" run starts from (the
            classifier, or the detector before "localize"); its classes must be the
            dataset's.
        regressor: "class_specific" or "class_agnostic" (the head "localize" adds).
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
        learning_rate: initial learning rate.
        lr_decay_epochs: epochs after which the learning rate is multiplied by
            `lr_decay_factor`.
        lr_decay_factor: the multiplier (paper: 0.5).
        momentum: SGD momentum.
        weight_decay: Torch-style L2 weight decay (see the module docstring).
        init: "paper" (N(0, 1e-2)) or "he_normal".
        dropout: override the model's dropout rate after fc6 and fc7 (paper: 0.5).
        mixed_precision: None, "bfloat16" or "float16" (Keras mixed policies).
        strategy: "default", "mirrored", "multi_worker" or "tpu".
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
    regressor: str = "class_specific"
    train_size: int | None = None
    dataset: str | None = None
    split: str = "train"
    val_split: str | None = None
    data_dir: str | None = None
    output: str | None = None
    epochs: int = 90
    steps_per_epoch: int | None = None
    batch_size: int = 128
    learning_rate: float = 5e-2
    lr_decay_epochs: tuple[int, ...] = (30, 50, 60, 70, 80)
    lr_decay_factor: float = 0.5
    momentum: float = 0.6
    weight_decay: float = 1e-5
    init: str = "paper"
    dropout: float | None = None
    mixed_precision: str | None = None
    strategy: str = "default"
    tpu: str | None = None
    seed: int = 0
    short_side: int = data.SHORT_SIDE
    shuffle_buffer: int = 10_000
    cache: bool = False
    time_limit: float | None = None
    verbose: str | int = "auto"

    def __post_init__(self) -> None:
        self.lr_decay_epochs = tuple(int(e) for e in self.lr_decay_epochs)
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
            (
                self.mixed_precision in MIXED_PRECISION,
                f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}.",
            ),
            (self.init in INITS, f"init must be one of {sorted(INITS)}, got {self.init!r}."),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}."),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}."),
            (
                self.steps_per_epoch is None or self.steps_per_epoch >= 1,
                f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}.",
            ),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}."),
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


# --- pieces --------------------------------------------------------------------------------


def make_strategy(name: str = "default", tpu: str | None = None) -> tf.distribute.Strategy:
    """A `tf.distribute` strategy by name (see the module docstring)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            raise ValueError(
                f"No TPU found ({error}). Run on a TPU VM or pass --tpu NAME_OR_GRPC_ADDRESS."
            ) from error
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (always, except non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def learning_rate_schedule(
    learning_rate: float, steps_per_epoch: int, decay_epochs: tuple[int, ...], factor: float
) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """Piecewise-constant learning rate by epoch, as a function of the optimizer step:
    `learning_rate * factor**i` after the i-th epoch of `decay_epochs`."""
    if not decay_epochs:
        return learning_rate
    if list(decay_epochs) != sorted(set(decay_epochs)) or decay_epochs[0] < 1:
        raise ValueError(f"lr_decay_epochs must be increasing and >= 1, got {decay_epochs}.")
    # The optimizer reads the schedule at its step count before the update, and
    # PiecewiseConstantDecay switches after `step > boundary`: the first step of epoch e
    # (0-based step e * steps_per_epoch) gets the new rate.
    boundaries = [e * steps_per_epoch - 1 for e in decay_epochs]
    values = [learning_rate * factor**i for i in range(len(decay_epochs) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def add_weight_decay(model: keras.Model, weight_decay: float) -> None:
    """Torch-style weight decay: an L2 regularizer `weight_decay / 2 * sum(w**2)` on every
    trainable variable of `model` (so the gradient gains `weight_decay * w`)."""
    if weight_decay <= 0:
        return
    regularizer = keras.regularizers.L2(weight_decay / 2)
    for variable in model.trainable_variables:
        variable.regularizer = regularizer


def weights_fingerprint(model: keras.Model) -> str:
    """SHA-256 of the model's trainable weights (values, in order): equal iff equal weights."""
    digest = hashlib.sha256()
    for weight in model.trainable_weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


def backed_up_epoch(backup_dir: Path) -> int:
    """The epoch `BackupAndRestore` will resume from (0 when there is no backup)."""
    path = Path(backup_dir) / "training_metadata.json"
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """`model.save` to a temporary file in the same directory, then `os.replace` (atomic).

    A compiled model is saved as an uncompiled copy with the same weights: the `.keras` file
    is the trained product (inference, export, the next stage's `--init-model`), not a resume
    point (checkpoints are). Its optimizer state would not fit the optimizer that loading
    recompiles anyway when layers were frozen (the trainable flags are not in the config).
    """
    path = Path(path)
    if getattr(model, "optimizer", None) is not None:
        copy = model.__class__.from_config(model.get_config())
        copy.set_weights(model.get_weights())
        model = copy
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=path.parent)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# --- callbacks -----------------------------------------------------------------------------


class RunState(keras.callbacks.Callback):
    """Records the run's progress in `<dir>/state.json` after every epoch, and what a resumed
    run restored in `<dir>/resume.json` (epoch, optimizer step, weights fingerprint).

    Put it after `BackupAndRestore` (it reads the restored state) and `ModelCheckpoint`
    (state.json then names a complete checkpoint) in the callback list.
    """

    def __init__(self, directory: Path, initial_epoch: int, checkpoint_pattern: str) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.initial_epoch = initial_epoch
        self.checkpoint_pattern = checkpoint_pattern

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.initial_epoch > 0:
            state = {
                "epoch": self.initial_epoch,
                "step": self._step(),
                "fingerprint": weights_fingerprint(self.model),
                "checkpoint": self.checkpoint_pattern.format(epoch=self.initial_epoch),
            }
            _write_json(self.directory / "resume.json", state)
            print(f"Resumed from epoch {state['epoch']} (step {state['step']}).", flush=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        state = {
            "epoch": epoch + 1,
            "step": self._step(),
            "fingerprint": weights_fingerprint(self.model),
            "checkpoint": self.checkpoint_pattern.format(epoch=epoch + 1),
            "logs": {k: float(v) for k, v in (logs or {}).items()},
        }
        _write_json(self.directory / "state.json", state)


class CorruptRecordLogger(keras.callbacks.Callback):
    """Adds `corrupt_records` (skipped so far) to the epoch logs (progress bar, TensorBoard)."""

    def __init__(self, counter: data.CorruptRecordCounter) -> None:
        super().__init__()
        self.counter = counter

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["corrupt_records"] = float(self.counter.value())


class EpochScalars(keras.callbacks.Callback):
    """TensorBoard scalars per epoch, written with core TF ops only.

    The same event files and tags as `keras.callbacks.TensorBoard` (`<dir>/train` and
    `<dir>/validation`, tags `epoch_loss`, `epoch_accuracy`, ..., `epoch_learning_rate`),
    for installs without the `tensorboard` package, which `keras.callbacks.TensorBoard`
    needs (`tf.summary.scalar` lives there; `tf.summary.write` is core TF).
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}

    def _writer(self, name: str) -> Any:
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        logs = dict(logs or {})
        optimizer = self.model.optimizer
        if optimizer is not None and "learning_rate" not in logs:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        for key, value in logs.items():
            run, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(run).as_default():
                tf.summary.write(
                    f"epoch_{tag}", tf.constant(float(value)), step=epoch, metadata=metadata
                )
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def tensorboard_callback(log_dir: str | os.PathLike) -> keras.callbacks.Callback:
    """`keras.callbacks.TensorBoard` if the `tensorboard` package is installed, else
    `EpochScalars` (the same per-epoch scalars, core TF only)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return EpochScalars(log_dir)
    return keras.callbacks.TensorBoard(str(log_dir))


class TimeLimit(keras.callbacks.Callback):
    """Stops training at the end of the first step after `seconds` of training."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.start = 0.0
        self.stopped = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.start = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if time.monotonic() - self.start > self.seconds:
            self.model.stop_training = True
            self.stopped = True


# --- the run -------------------------------------------------------------------------------


def _policy_name(mixed_precision: str | None) -> str:
    return f"mixed_{mixed_precision}" if mixed_precision else "float32"


def build_model(config: TrainConfig, class_names: list[str]) -> OverFeat:
    """The `OverFeat` model of a run (call inside the strategy's scope).

    `init="he_normal"`: He-normal kernels everywhere except fc8, which keeps the paper's
    N(0, 1e-2): He init alone gives logits of several units on real images (an initial
    loss of 5-8 instead of ln C), whose first gradients derail a net without
    normalization layers.
    """
    architecture = get_config(config.model)
    if config.dropout is not None:
        architecture = architecture.replace(dropout=config.dropout)
    model = OverFeat(
        architecture,
        class_names=class_names,
        kernel_initializer=INITS[config.init],
        dtype=_policy_name(config.mixed_precision) if config.mixed_precision else None,
    )
    if config.init == "he_normal":
        fc8 = model.get_layer("fc8").kernel
        fc8.assign(keras.random.normal(fc8.shape, stddev=0.01, seed=config.seed))
    return model


class CropTrainer(keras.Model):
    """The crop model (same layers and weights) with fixes for multi-worker training.

    Two Keras 3.15 code paths fail under `MultiWorkerMirroredStrategy`:
    - `fit` builds the model from its first batch reduced across replicas with
      `strategy.reduce`, which cannot take the `(images, labels)` structure
      (keras-team/keras#20329). Only shapes matter there, so this model builds from the
      first local replica's batch instead.
    - the per-step logs (scalars) are reduced across workers with
      `strategy.reduce("MEAN", v, axis=0)`, which needs an axis 0; this model returns
      them as `[1]` vectors under that strategy, so the reduce gives their mean.
    """

    def _multi_worker(self) -> bool:
        return isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def _vectors(self, logs: dict[str, Any]) -> dict[str, Any]:
        if not self._multi_worker():
            return logs
        return tf.nest.map_structure(lambda v: tf.reshape(v, [1]), logs)

    def train_step(self, data: Any) -> dict[str, Any]:
        return self._vectors(super().train_step(data))

    def test_step(self, data: Any) -> dict[str, Any]:
        return self._vectors(super().test_step(data))

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = self.distribute_strategy
        if iterator is not None and self._multi_worker():
            for _, _, batches in iterator:
                batch = next(batches)
                break
            data_batch = tf.nest.map_structure(
                lambda v: (
                    strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                batch,
            )
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def compile_crop_model(model: OverFeat, config: TrainConfig, steps_per_epoch: int) -> keras.Model:
    """The compiled training model: crops `[B, S, S, 3]` -> logits, SGD + weight decay."""
    base = model.crop_model()
    crop = CropTrainer(inputs=base.inputs, outputs=base.outputs, name=base.name)
    add_weight_decay(crop, config.weight_decay)
    schedule = learning_rate_schedule(
        config.learning_rate, steps_per_epoch, config.lr_decay_epochs, config.lr_decay_factor
    )
    metrics: list[Any] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if model.num_classes > 5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5_accuracy"))
    crop.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
    )
    return crop


def build_task_model(config: TrainConfig, class_names: list[str]) -> OverFeat:
    """The model of a "detect" / "localize" run, from `config.init_model` (call inside the
    strategy's scope): `spatial_training.task_model` of the loaded model."""
    path = Path(config.init_model).expanduser()
    if not path.is_file():
        raise ValueError(
            f"--init-model {path} does not exist: pass the .keras model to start from."
        )
    base = keras.models.load_model(path)
    if not isinstance(base, OverFeat) or base.config.name != config.model:
        raise ValueError(
            f"--init-model {path} is not an OverFeat {config.model!r} model "
            f"(got {getattr(base, 'config', type(base))!r})."
        )
    if base.num_classes != len(class_names):
        raise ValueError(
            f"--init-model {path} has {base.num_classes} classes but the dataset has "
            f"{len(class_names)}; train it on the same dataset first."
        )
    policy = _policy_name(config.mixed_precision) if config.mixed_precision else None
    return spatial_training.task_model(config.task, base, config.regressor, dtype=policy)


def compile_task_model(model: OverFeat, config: TrainConfig, steps_per_epoch: int) -> OverFeat:
    """Compile a spatial task's model: SGD + weight decay on its trainable layers, the
    task's losses (`spatial_training.task_losses`)."""
    add_weight_decay(model, config.weight_decay)
    schedule = learning_rate_schedule(
        config.learning_rate, steps_per_epoch, config.lr_decay_epochs, config.lr_decay_factor
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum),
        loss=spatial_training.task_losses(config.task, model),
    )
    return model


def _steps_per_epoch(config: TrainConfig, examples: int | None) -> int:
    if config.steps_per_epoch:
        return config.steps_per_epoch
    if not examples:
        raise ValueError("steps_per_epoch is required when the split's size is unknown.")
    return max(examples // config.batch_size, 1)


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
    """
    start = time.monotonic()
    strategy = make_strategy(config.strategy, config.tpu)
    chief = is_chief(strategy)
    output = config.output_dir
    if not chief:
        output = output / "workers" / str(strategy.cluster_resolver.task_id)
    output.mkdir(parents=True, exist_ok=True)
    backup_dir = output / "backup"
    initial_epoch = backed_up_epoch(backup_dir)

    if dataset is None:
        builder = data.load_builder(config.dataset_name, config.data_dir, splits=(config.split,))
        names = data.class_names(builder)
        examples: int | None = data.num_examples(builder, config.split)
        source: str | tf.data.Dataset = config.dataset_name
    else:
        if class_names is None:
            raise ValueError("Pass class_names with a tf.data dataset.")
        names, examples, source = list(class_names), None, dataset
    steps = _steps_per_epoch(config, examples)

    counter = data.CorruptRecordCounter()
    crop_size = get_config(config.model).crop_size
    common = {"data_dir": config.data_dir, "short_side": config.short_side}

    if config.task != "classify" and config.val_split:
        raise ValueError(
            f"--val-split evaluates crops: it is for --task classify, not {config.task}."
        )

    def train_input(context: tf.distribute.InputContext) -> tf.data.Dataset:
        if config.task != "classify":
            return spatial_training.spatial_dataset(
                source,
                config.split,
                get_config(config.model),
                len(names),
                config.batch_size,
                train_size=config.train_size,
                data_dir=config.data_dir,
                seed=config.seed + 7919 * initial_epoch,
                counter=counter,
                input_context=context,
            ).map(lambda image, targets: (image, {k: targets[k] for k in model.output_names}))
        return data.training_dataset(
            source,
            config.split,
            crop_size,
            config.batch_size,
            seed=config.seed + 7919 * initial_epoch,  # a resumed run does not replay epoch 0
            shuffle_buffer=config.shuffle_buffer,
            cache=config.cache,
            counter=counter,
            input_context=context,
            **common,
        )

    def val_input(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return data.training_dataset(
            source,
            config.val_split,
            crop_size,
            config.batch_size,
            repeat=False,
            drop_remainder=False,
            training=False,
            input_context=context,
            **common,
        )

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(_policy_name(config.mixed_precision))
    try:
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            if config.task == "classify":
                model = build_model(config, names)
                trained = compile_crop_model(model, config, steps)
            else:
                model = build_task_model(config, names)
                trained = compile_task_model(model, config, steps)
        # Each worker builds its own shard of the pipeline (no auto-sharding of TFDS files).
        train_data = strategy.distribute_datasets_from_function(train_input)
        val_data = (
            strategy.distribute_datasets_from_function(val_input) if config.val_split else None
        )
        checkpoint_pattern = str(output / "checkpoints" / "epoch_{epoch:03d}.weights.h5")
        (output / "checkpoints").mkdir(exist_ok=True)
        timer = TimeLimit(config.time_limit) if config.time_limit else None
        # Order matters: the counter enters the logs before they are saved; the backup is
        # restored before RunState reads it; state.json is written after the checkpoint.
        callbacks: list[keras.callbacks.Callback] = [
            CorruptRecordLogger(counter),
            keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True),
            keras.callbacks.ModelCheckpoint(checkpoint_pattern, save_weights_only=True),
            tensorboard_callback(output / "logs"),
            RunState(output, initial_epoch, checkpoint_pattern),
        ]
        if timer:
            callbacks.append(timer)
        if chief:
            _write_json(output / "train_config.json", dataclasses.asdict(config))
        history = trained.fit(
            train_data,
            epochs=config.epochs,
            steps_per_epoch=steps,
            validation_data=val_data,
            callbacks=callbacks,
            verbose=config.verbose,
            shuffle=False,  # the tf.data pipeline shuffles
        )
        # Only the chief writes the model (workers hold the same weights).
        model_path = save_model(model, output / "model.keras") if chief else None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    final_logs = {k: float(v[-1]) for k, v in history.history.items() if v}
    return {
        "model_path": str(model_path) if model_path else None,
        "output": str(output),
        "initial_epoch": initial_epoch,
        "epochs_run": len(next(iter(history.history.values()), [])),
        "steps_per_epoch": steps,
        "final_step": int(keras.ops.convert_to_numpy(trained.optimizer.iterations)),
        "logs": final_logs,
        "corrupt_records": counter.value(),
        "stopped_by_time_limit": bool(timer and timer.stopped),
        "num_classes": len(names),
        "wall_seconds": time.monotonic() - start,
        "chief": chief,
        "replicas": int(strategy.num_replicas_in_sync),
    }


def summary_line(result: dict[str, Any]) -> str:
    """One line for the console."""
    logs = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result["logs"].items()))
    return (
        f"Trained {result['epochs_run']} epochs ({result['final_step']} steps, "
        f"{math.ceil(result['wall_seconds'])} s): {logs}. Model: {result['model_path']}"
    )

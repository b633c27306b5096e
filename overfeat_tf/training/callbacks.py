"""What runs during a training run's `fit`: the Keras callbacks of `overfeat_tf.training.run`.

`fit_callbacks` assembles them in the order a run needs (see its docstring):
- `CorruptRecordLogger`: the count of skipped corrupt records in the epoch logs;
- `StopOnNonFinite` (Keras' `TerminateOnNaN`, raising): a NaN / infinite loss, or
  non-finite weights at the end of an epoch, stop the run with `TrainingDiverged` before
  any later callback writes that epoch (so no checkpoint, backup or state of it exists);
- `keras.callbacks.BackupAndRestore` in `<output>/backup`: weights, optimizer state and
  epoch after every epoch, restored when the same command is rerun after a crash
  (`backed_up_epoch` reads the epoch it will resume from), then `KeepLearningRate` (a
  resumed run trains at the command's constant learning rate, not the backup's);
- `keras.callbacks.ModelCheckpoint`: every epoch's weights in `<output>/checkpoints/`;
- `tensorboard_callback`: per-epoch scalars in `<output>/logs` (`keras.callbacks.TensorBoard`,
  or `EpochScalars` without the `tensorboard` package);
- `RunState`: `<output>/state.json` after every epoch and `<output>/resume.json` on resume;
- `TimeLimit` (optional): stops training after a wall-clock budget;
- `DetectionMAP` (detect / localize with a validation split): COCO mAP of the detector on
  the validation images every N epochs, into the logs (so the checkpoint, TensorBoard and
  state see it), the best detector kept. Also for `OverFeatDetector.fit` in a notebook.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from overfeat_tf.data import inputs as data
from overfeat_tf.evaluation.detection import evaluate_detection
from overfeat_tf.utils import atomic

BACKUP_DIR = "backup"  # under the run's output directory
CHECKPOINT_PATTERN = "checkpoints/epoch_{epoch:03d}.weights.h5"  # likewise; epoch 1-based


def weights_fingerprint(model: keras.Model) -> str:
    """SHA-256 of the model's trainable weights (values, in order): equal iff equal weights."""
    digest = hashlib.sha256()
    for weight in model.trainable_weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def backed_up_epoch(backup_dir: str | os.PathLike) -> int:
    """The epoch `BackupAndRestore` will resume from (0 when there is no backup)."""
    path = Path(backup_dir) / "training_metadata.json"
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


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
            atomic.write_json(self.directory / "resume.json", state)
            print(f"Resumed from epoch {state['epoch']} (step {state['step']}).", flush=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        state = {
            "epoch": epoch + 1,
            "step": self._step(),
            "fingerprint": weights_fingerprint(self.model),
            "checkpoint": self.checkpoint_pattern.format(epoch=epoch + 1),
            "logs": {k: float(v) for k, v in (logs or {}).items()},
        }
        atomic.write_json(self.directory / "state.json", state)


class TrainingDiverged(ValueError):
    """A run stopped on a NaN / infinite loss or weights; the message names the last good
    checkpoint (`StopOnNonFinite`)."""


class StopOnNonFinite(keras.callbacks.TerminateOnNaN):
    """Keras' `TerminateOnNaN`, raising `TrainingDiverged` instead of stopping gracefully.

    A graceful stop (`model.stop_training`) still ends the epoch: `on_epoch_end` of
    `ModelCheckpoint` and `BackupAndRestore` would then save the diverged weights (the
    backup becoming the resume point), and `on_train_end` would delete the backup. Raising
    skips both, so the checkpoints and the backup (the resume point) stay at the last good
    epoch. Checked: the loss after every step (`logs["loss"]`, the epoch's running mean,
    non-finite from the first bad step on) and, at the end of every epoch, every weight
    (the last step's update can make them NaN with a finite loss). Put it before the
    callbacks that write (`fit_callbacks` does). Writes `<directory>/diverged.json`
    (epoch, step, loss, last good checkpoint) when it stops a run.
    """

    def __init__(self, directory: Path, initial_epoch: int, checkpoint_pattern: str) -> None:
        super().__init__(raise_error=True)
        self.directory = Path(directory)
        self.last_good_epoch = initial_epoch
        self.checkpoint_pattern = checkpoint_pattern
        self.epoch = initial_epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(np.asarray(loss))):
            self._stop(f"the loss is {float(np.asarray(loss))} after step {batch + 1}", batch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        bad = [
            w.path
            for w in self.model.weights
            if not np.isfinite(keras.ops.convert_to_numpy(w)).all()
        ]
        if bad:
            self._stop(f"{len(bad)} weights are NaN or infinite (first: {bad[0]})", None)
        self.last_good_epoch = epoch + 1

    def last_good_checkpoint(self) -> str | None:
        """The checkpoint of the last finished, finite epoch (None before the first)."""
        if self.last_good_epoch < 1:
            return None
        return self.checkpoint_pattern.format(epoch=self.last_good_epoch)

    def _stop(self, what: str, batch: int | None) -> None:
        good = self.last_good_checkpoint()
        record = {
            "epoch": self.epoch + 1,
            "step": None if batch is None else batch + 1,
            "problem": what,
            "last_good_epoch": self.last_good_epoch,
            "last_good_checkpoint": good,
        }
        atomic.write_json(self.directory / "diverged.json", record)
        kept = (
            f"the last good checkpoint is {good} (epoch {self.last_good_epoch}); rerunning "
            "the command resumes from it"
            if good
            else "no epoch finished, so there is no good checkpoint"
        )
        raise TrainingDiverged(
            f"Training diverged in epoch {self.epoch + 1}: {what}. Nothing of that epoch was "
            f"saved (no checkpoint, backup or model.keras); {kept}. Lower --lr, or "
            "clip the gradient with --clipnorm (see train.py -h)."
        )


class KeepLearningRate(keras.callbacks.Callback):
    """A resumed run trains at the command's learning rate, not the backup's.

    `BackupAndRestore` restores every optimizer variable, and a constant learning rate is
    one: rerunning a diverged run with a lower `--lr` would silently resume at the old
    rate. This reads the rate when `fit` starts (`set_model`, before the restore) and puts
    it back after the restore (put it after `BackupAndRestore`). A schedule (the default
    `lr_decay_epochs`) is not a variable: nothing to do.
    """

    def __init__(self) -> None:
        super().__init__()
        self.learning_rate: float | None = None

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        optimizer = getattr(model, "optimizer", None)
        schedule = isinstance(
            getattr(optimizer, "_learning_rate", None),
            keras.optimizers.schedules.LearningRateSchedule,
        )
        if optimizer is not None and not schedule:
            self.learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.learning_rate is not None:
            self.model.optimizer.learning_rate = self.learning_rate


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


class DetectionMAP(keras.callbacks.Callback):
    """Detection mAP while a detector trains (paper §5's metric, COCO's definition).

    Every `every` epochs the detector being fit (`OverFeatDetector.fit`), with its own
    options, runs on the images of `split` through `evaluation.detection.evaluate_detection`
    (the function `python -m overfeat_tf.detection_eval` reports; its merge decoder only),
    and pycocotools' COCOeval gives mAP@0.5 and mAP@[.5:.95]: they enter the epoch's logs as
    `val_map50` and `val_map` (History, `ModelCheckpoint`, TensorBoard and CSV callbacks
    placed after this one record them), and a per-class AP@0.5 table is printed. With
    `best_path`, the detector of the best `val_map50` so far is saved there (atomically,
    compiled: a resume point).

    Args:
        dataset: a TFDS name or path with the detection schema, or a `tf.data.Dataset` of
            example dicts (`image`, `objects/bbox` normalized yxyx, `objects/label`).
        split: the split evaluated. data_dir: TFDS data directory (or a path dataset's
            images folder).
        every: evaluate after every `every`-th epoch (and never in between).
        max_examples: only the first images of the split (None: all).
        best_path: where to keep the best detector (a `.keras` path), or None.
        verbose: 1 prints one line and the AP table per evaluation; 0 nothing.

    Example:
        >>> callback = DetectionMAP("overfeat_shapes/standard", "validation", every=2)
        >>> detector.fit(train_batches, epochs=4, callbacks=[callback])
        >>> callback.history[-1]["val_map50"]
    """

    def __init__(
        self,
        dataset: Any,
        split: str = "validation",
        data_dir: str | None = None,
        every: int = 1,
        max_examples: int | None = None,
        best_path: str | os.PathLike | None = None,
        verbose: int = 1,
    ) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        self.dataset = dataset
        self.split = split
        self.data_dir = data_dir
        self.every = every
        self.max_examples = max_examples
        self.best_path = Path(best_path) if best_path else None
        self.verbose = verbose
        self.best = -np.inf
        self.history: list[dict[str, Any]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every:
            return
        detector = self.model
        result = evaluate_detection(
            detector,
            self.dataset,
            self.split,
            self.data_dir,
            max_examples=self.max_examples,
            decoders={"merge": detector.prediction_decoder},
        )
        merge = result["merge"]
        found = {"epoch": epoch + 1, "val_map50": merge["map"], "val_map": merge["map_50_95"]}
        found["ap"] = dict(zip(result["class_names"], merge["ap"], strict=True))
        self.history.append(found)
        if logs is not None:
            logs["val_map50"] = np.nan if merge["map"] is None else merge["map"]
            logs["val_map"] = np.nan if merge["map_50_95"] is None else merge["map_50_95"]
        improved = merge["map"] is not None and merge["map"] > self.best
        if improved:
            self.best = merge["map"]
            if self.best_path is not None:
                with atomic.atomic_path(self.best_path) as tmp:
                    detector.save(tmp)
        if self.verbose:
            self._print(found, result["examples"], improved)

    def _print(self, found: dict[str, Any], images: int, improved: bool) -> None:
        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        kept = f", best so far: saved {self.best_path}" if improved and self.best_path else ""
        lines = [
            f"Epoch {found['epoch']}: {self.split} ({images} images) mAP@0.5 "
            f"{fmt(found['val_map50'])}, mAP@[.5:.95] {fmt(found['val_map'])}{kept}",
            "| class | AP@0.5 |",
            "|---|---|",
        ]
        lines += [f"| {name} | {fmt(ap)} |" for name, ap in found["ap"].items()]
        print("\n".join(lines), flush=True)


def fit_callbacks(
    output: Path,
    initial_epoch: int,
    counter: data.CorruptRecordCounter,
    time_limit: float | None = None,
) -> tuple[list[keras.callbacks.Callback], TimeLimit | None]:
    """The callbacks of a run writing under `output` (creates `<output>/checkpoints`).

    Order matters: the corrupt-record count enters the logs before they are saved;
    `StopOnNonFinite` raises before anything writes a diverged epoch; the backup
    (`<output>/backup`) is restored before `RunState` reads it; state.json is written
    after the epoch's checkpoint.

    Args:
        output: the run's (or this worker's) output directory.
        initial_epoch: the epoch the backup resumes from (`backed_up_epoch`).
        counter: the input pipeline's corrupt-record counter.
        time_limit: seconds of training before stopping; None or 0: no limit.

    Returns:
        The callbacks for `fit`, and the `TimeLimit` among them (None without a limit).
    """
    checkpoint_pattern = str(output / CHECKPOINT_PATTERN)
    Path(checkpoint_pattern).parent.mkdir(exist_ok=True)
    timer = TimeLimit(time_limit) if time_limit else None
    callbacks: list[keras.callbacks.Callback] = [
        CorruptRecordLogger(counter),
        StopOnNonFinite(output, initial_epoch, checkpoint_pattern),
        keras.callbacks.BackupAndRestore(str(output / BACKUP_DIR), double_checkpoint=True),
        KeepLearningRate(),
        keras.callbacks.ModelCheckpoint(checkpoint_pattern, save_weights_only=True),
        tensorboard_callback(output / "logs"),
        RunState(output, initial_epoch, checkpoint_pattern),
    ]
    if timer:
        callbacks.append(timer)
    return callbacks, timer

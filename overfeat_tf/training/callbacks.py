"""What runs during a training run's `fit`: the Keras callbacks of `overfeat_tf.training.run`.

`fit_callbacks` assembles them in the order a run needs (see its docstring):
- `CorruptRecordLogger`: the count of skipped corrupt records in the epoch logs;
- `StopOnNonFinite` (Keras' `TerminateOnNaN`, raising): a NaN / infinite loss, or
  non-finite weights at the end of an epoch, stop the run with `TrainingDiverged` before
  any later callback writes that epoch (so no checkpoint, backup or state of it exists);
- `keras.callbacks.BackupAndRestore` in `<output>/backup`: weights, optimizer state and
  epoch after every epoch, restored when the same command is rerun after a crash
  (`resume_epoch` checks the backup before `fit` and reads the epoch it will resume from; a
  missing or damaged backup is replaced by the newest checkpoint that loads), then
  `KeepLearningRate` (a resumed run trains at the command's constant learning rate, not the
  backup's);
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
import re
import shutil
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


# --- a damaged or missing backup -------------------------------------------------------------

BACKUP_WEIGHTS = "latest.weights.h5"  # BackupAndRestore's files in BACKUP_DIR; with
BACKUP_METADATA = "training_metadata.json"  # double_checkpoint, each also has a `.bkp` copy
CORRUPT_BACKUP_PREFIX = "backup-corrupt-"  # `<output>/backup-corrupt-<time>`: one moved aside
_BACKUP_FILES = (
    BACKUP_WEIGHTS,
    f"{BACKUP_WEIGHTS}.bkp",
    BACKUP_METADATA,
    f"{BACKUP_METADATA}.bkp",
)
_CHECKPOINT_NAME = re.compile(r"epoch_(\d+)\.weights\.h5")


def _h5_reason(error: BaseException) -> str:
    """A few words from an h5py error: "Unable to ... (truncated file: eof = 100, ...)" ->
    "truncated file"."""
    text = " ".join(str(error).split())
    if "(" in text:
        text = text.split("(", 1)[1].rsplit(")", 1)[0].split(":")[0]
    return (text or type(error).__name__)[:80]


def _read_weights(path: Path) -> list[str]:
    """Read every array of a `.weights.h5` file (raises what h5py raises on damage); returns
    the arrays' names."""
    import h5py  # Keras' own dependency for `.weights.h5`

    names: list[str] = []
    with h5py.File(path, "r") as file:

        def read(name: str, item: Any) -> None:
            if isinstance(item, h5py.Dataset):
                item[()]  # reads the array back: raises on a truncated or damaged file
                names.append(name)

        file.visititems(read)
    return names


def weights_file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a Keras `.weights.h5` file (a checkpoint, the backup), in a few words
    ("missing", "truncated file", "file signature not found", "no weights in it"), or None
    when it loads: it is opened with h5py and every array in it is read back, so a truncated
    or overwritten file is found whatever its size."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        names = _read_weights(path)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        return _h5_reason(error)
    return None if names else "no weights in it"


def _has_optimizer_state(path: Path) -> bool:
    """Whether a readable `.weights.h5` file holds optimizer variables (Keras 3's
    `model.save_weights` of a compiled model does: step, momenta, a constant rate)."""
    return any(name.startswith("optimizer/") for name in _read_weights(path))


def _metadata_epoch(path: Path) -> int | None:
    """The epoch in a `training_metadata.json` / `state.json`, None when unreadable."""
    try:
        epoch = json.loads(path.read_text())["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return epoch if isinstance(epoch, int) and epoch >= 0 else None


def _backup_problems(backup: Path) -> list[str]:
    """What is wrong with each backup file (`name: problem`), or [] when the latest weights
    and their metadata load (whatever the `.bkp` copies are: Keras reads them only when the
    latest fail); a `.bkp` copy is named only when it is there and damaged."""
    problems = []
    for name in _BACKUP_FILES:
        path = backup / name
        if name.endswith(".bkp") and not path.exists():
            continue
        if name.startswith(BACKUP_WEIGHTS):
            problem = weights_file_problem(path)
        elif not path.is_file():
            problem = "missing"
        else:
            problem = None if _metadata_epoch(path) is not None else "unreadable"
        if problem:
            problems.append(f"{name}: {problem}")
    latest = (f"{BACKUP_WEIGHTS}:", f"{BACKUP_METADATA}:")
    return problems if any(p.startswith(latest) for p in problems) else []


def _move_aside(backup: Path, output: Path) -> Path:
    """Rename the backup directory to `<output>/backup-corrupt-<time>` (outside `backup/`,
    which `BackupAndRestore` deletes when a run finishes)."""
    stem = output / f"{CORRUPT_BACKUP_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    aside, suffix = stem, 1
    while aside.exists():
        aside, suffix = Path(f"{stem}-{suffix}"), suffix + 1
    os.replace(backup, aside)
    return aside


def checkpoint_dir(output: str | os.PathLike) -> Path:
    """`<output>/checkpoints`, where `ModelCheckpoint` writes every epoch's weights."""
    return (Path(output) / CHECKPOINT_PATTERN).parent


def _newest_checkpoint(output: Path, last_epoch: int | None) -> tuple[int, Path | None, str]:
    """The newest `<output>/checkpoints/epoch_NNN.weights.h5` that loads, of an epoch up to
    `last_epoch` (None: any; later ones are an earlier run's): its epoch and path (0, None
    when none loads), and what was skipped, in words ("" when nothing)."""
    found = []
    for path in checkpoint_dir(output).glob("epoch_*.weights.h5"):
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match and (last_epoch is None or int(match.group(1)) <= last_epoch):
            found.append((int(match.group(1)), path))
    damaged: list[str] = []
    for epoch, path in sorted(found, reverse=True):
        problem = weights_file_problem(path)
        if problem is None:
            return epoch, path, _skipped(damaged)
        damaged.append(f"{path.name}: {problem}")
    return 0, None, _skipped(damaged)


def _skipped(damaged: list[str]) -> str:
    """The damaged checkpoints passed over, in words: the newest and how many older."""
    if not damaged:
        return ""
    more = f", and {len(damaged) - 1} older" if len(damaged) > 1 else ""
    return f"skipped damaged {damaged[0]}{more}"


def _restore_backup_from(backup: Path, checkpoint: Path, epoch: int) -> None:
    """Write `backup` as `BackupAndRestore` would have after `epoch`: its weights file is a
    copy of the checkpoint (the same `model.save_weights` format), then the metadata."""
    backup.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(backup / BACKUP_WEIGHTS) as tmp:
        shutil.copyfile(checkpoint, tmp)  # a copy: Keras overwrites the file in place
    atomic.write_json(backup / BACKUP_METADATA, {"epoch": epoch, "batch": 0})


def resume_epoch(output: str | os.PathLike, chief: bool = True) -> int:
    """The epoch a run writing under `output` resumes from (0: from the start), after making
    sure `BackupAndRestore` (`<output>/backup`) can restore it. Called before `fit`.

    - No backup: 0 (a new run, or one that finished: its backup is deleted), unless, on the
      chief, `<output>/state.json` records a finished epoch and there is no `model.keras`
      (the run was interrupted and its backup is missing): then as a damaged backup.
    - A backup whose latest weights and metadata load (every array is read back): its epoch,
      as before (`backed_up_epoch`).
    - A damaged backup (a file missing, truncated or unreadable): the backup directory is
      moved to `<output>/backup-corrupt-<time>/` (kept, never deleted), and the newest
      checkpoint in `<output>/checkpoints/` that loads (of an epoch up to the one state.json
      or the backup's metadata record, when readable) becomes the backup: its epoch is
      returned and `BackupAndRestore` restores it. Keras' weights-only checkpoints hold the
      optimizer state too (step, momenta), so the run continues as from the backup; for a
      checkpoint without it, `RunState` sets the optimizer step to epoch x steps per epoch
      (the learning-rate schedule continues at that epoch) and the optimizer restarts. When
      no checkpoint loads, 0: the run starts over.

    Each of the last two cases prints one line (stdout, like the run's other events) naming
    the backup, what is wrong, where it was moved and what the run resumes from.
    """
    output = Path(output)
    backup = output / BACKUP_DIR
    present = backup.is_dir() and any((backup / name).exists() for name in _BACKUP_FILES)
    recorded = _metadata_epoch(output / "state.json")
    if present:
        problems = _backup_problems(backup)
        if not problems:
            return backed_up_epoch(backup)
        epochs = [_metadata_epoch(backup / name) for name in _BACKUP_FILES[2:]]
        aside = _move_aside(backup, output)
        what = f"is damaged ({'; '.join(problems)}), moved to {aside}"
    elif chief and recorded and not (output / "model.keras").exists():
        epochs = []
        what = f"is missing (state.json records epoch {recorded}, and there is no model.keras)"
    else:
        return 0
    known = [e for e in (recorded, *epochs) if e is not None]
    epoch, checkpoint, skipped = _newest_checkpoint(output, max(known) if known else None)
    if checkpoint is None:
        line = (
            f"Backup {backup} {what}; no checkpoint in {checkpoint_dir(output)} loads"
            f"{f' ({skipped})' if skipped else ''}: training starts over from epoch 1."
        )
    else:
        restored = (
            "its weights and optimizer state"
            if _has_optimizer_state(checkpoint)
            else "weights only: the optimizer state restarts, at step epoch x steps per epoch"
        )
        line = (
            f"Backup {backup} {what}; resuming from epoch {epoch} with {checkpoint} "
            f"({'; '.join(filter(None, (restored, skipped)))})."
        )
        _restore_backup_from(backup, checkpoint, epoch)
    print(line, flush=True)
    return epoch


class RunState(keras.callbacks.Callback):
    """Records the run's progress in `<dir>/state.json` after every epoch, and what a resumed
    run restored in `<dir>/resume.json` (epoch, optimizer step, weights fingerprint).

    Put it after `BackupAndRestore` (it reads the restored state) and `ModelCheckpoint`
    (state.json then names a complete checkpoint) in the callback list. A resumed run whose
    optimizer step is still 0 after the restore (`resume_epoch` restored a checkpoint without
    optimizer state) gets the step `initial_epoch` x steps per epoch, so that the
    learning-rate schedule continues at that epoch.
    """

    def __init__(self, directory: Path, initial_epoch: int, checkpoint_pattern: str) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.initial_epoch = initial_epoch
        self.checkpoint_pattern = checkpoint_pattern

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs: dict | None = None) -> None:
        steps = (self.params or {}).get("steps")
        if self.initial_epoch > 0 and self._step() == 0 and steps:
            self.model.optimizer.iterations.assign(self.initial_epoch * int(steps))
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
        initial_epoch: the epoch the backup resumes from (`resume_epoch`).
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

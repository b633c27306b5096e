"""Resuming after a crash whose backup is damaged or missing, and corrupt `.keras` files.

A run killed after an epoch resumes from `<output>/backup`; when that backup is truncated
(a damaged disk, an interrupted copy) it resumes from the newest epoch checkpoint that
loads, or starts over when none does, saying so in one line; a truncated `.keras` is named
"corrupt or truncated" by `load_model` and the commands that load models.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf import cli, predict
from overfeat_tf.models.backbone import OverFeat, load_model
from overfeat_tf.training import callbacks, recipe
from overfeat_tf.training import run as training

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("red", "green", "blue")
STEPS = 2


def _examples(count: int = 8) -> tf.data.Dataset:
    """`{"image": PNG bytes, "label"}` examples: small images whose class is their dominant
    colour channel."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(count):
        label = i % len(CLASSES)
        image = rng.integers(0, 90, size=(48 + 4 * i, 64, 3))
        image[..., label] += 160
        images.append(tf.io.encode_png(image.astype(np.uint8)).numpy())
        labels.append(label)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


def _config(tmp_path: Path, epochs: int) -> training.TrainConfig:
    return training.TrainConfig(
        model="tiny",
        output=str(tmp_path / "run"),
        epochs=epochs,
        steps_per_epoch=STEPS,
        batch_size=4,
        init="he_normal",
        learning_rate=0.01,
        lr_decay_epochs=(3,),  # the rate halves at the start of the 4th epoch
        shuffle_buffer=8,
        mixed_precision="float32",
        verbose=0,
    )


class _Killed(Exception):
    """Stands for a SIGKILL after an epoch was fully written."""


class _Recorder(keras.callbacks.Callback):
    """Last in the list: the state after the restore, the epochs run and their rates; with
    `kill_after`, raises at the end of that (1-based) epoch, after every callback wrote it."""

    def __init__(self, kill_after: int | None = None) -> None:
        super().__init__()
        self.kill_after = kill_after
        self.epochs: list[int] = []
        self.rates: list[float] = []
        self.start: dict[str, object] = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        optimizer = self.model.optimizer
        self.start = {
            "fingerprint": callbacks.weights_fingerprint(self.model),
            "optimizer": [keras.ops.convert_to_numpy(v) for v in optimizer.variables],
        }

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs.append(epoch)
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.kill_after:
            raise _Killed(f"killed after epoch {epoch + 1}")


def _recorded(monkeypatch: pytest.MonkeyPatch, recorder: _Recorder) -> _Recorder:
    original = callbacks.fit_callbacks

    def with_recorder(*args, **kwargs):
        callback_list, timer = original(*args, **kwargs)
        return [*callback_list, recorder], timer

    monkeypatch.setattr(callbacks, "fit_callbacks", with_recorder)
    return recorder


def _truncate(path: Path, size: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _checkpoint_state_weights(path: Path) -> str:
    """The fingerprint of a checkpoint's weights."""
    crop = OverFeat("tiny", num_classes=len(CLASSES)).crop_model()
    crop.load_weights(str(path))
    return callbacks.weights_fingerprint(crop)


def _checkpoint_state(path: Path) -> tuple[str, list[np.ndarray]]:
    """The fingerprint of a checkpoint's weights and its optimizer arrays, in order."""
    with h5py.File(path, "r") as file:
        group = file["optimizer/vars"]
        arrays = [group[str(i)][()] for i in range(len(group))]
    return _checkpoint_state_weights(path), arrays


def _backup_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("Backup ")]


def _export_cli():
    spec = importlib.util.spec_from_file_location("export_cli", ROOT / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_truncated_backup_resumes_from_the_newest_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    config = _config(tmp_path, epochs=4)
    first = _recorded(monkeypatch, _Recorder(kill_after=2))
    with pytest.raises(_Killed):
        training.train(config, _examples(), list(CLASSES))
    assert first.epochs == [0, 1]
    backup = run / callbacks.BACKUP_DIR
    damaged = {}
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        _truncate(backup / name)
        damaged[name] = (backup / name).read_bytes()
    capsys.readouterr()

    monkeypatch.undo()
    second = _recorded(monkeypatch, _Recorder())
    result = training.train(config, _examples(), list(CLASSES))
    out = capsys.readouterr().out
    # one line names the backup, what is wrong, where it went and what the run resumes from
    (line,) = _backup_lines(out)
    (aside,) = run.glob(f"{callbacks.CORRUPT_BACKUP_PREFIX}*")
    checkpoint = run / "checkpoints" / "epoch_002.weights.h5"
    assert line == (
        f"Backup {backup} is damaged (latest.weights.h5: truncated file; "
        f"latest.weights.h5.bkp: truncated file), moved to {aside}; resuming from epoch 2 "
        f"with {checkpoint} (its weights and optimizer state)."
    )
    # the damaged files are kept, not deleted
    assert {name: (aside / name).read_bytes() for name in damaged} == damaged
    assert (aside / "training_metadata.json").exists()
    # epochs 3 and 4 run once each, from epoch 2's weights and optimizer state
    assert second.epochs == [2, 3]
    assert result["initial_epoch"] == 2 and result["epochs_run"] == 2
    assert result["final_step"] == 4 * STEPS
    fingerprint, optimizer = _checkpoint_state(checkpoint)
    assert second.start["fingerprint"] == fingerprint
    assert len(second.start["optimizer"]) == len(optimizer)
    for restored, saved in zip(second.start["optimizer"], optimizer, strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert int(optimizer[0]) == 2 * STEPS  # the step: the schedule continues at epoch 3
    assert second.rates == [pytest.approx(0.01), pytest.approx(0.005)]
    resumed = json.loads((run / "resume.json").read_text())
    assert (resumed["epoch"], resumed["step"], resumed["fingerprint"]) == (2, 4, fingerprint)
    state = json.loads((run / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (4, 4 * STEPS)
    assert state["fingerprint"] == _checkpoint_state(run / "checkpoints/epoch_004.weights.h5")[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        f"epoch_{e:03d}.weights.h5" for e in (1, 2, 3, 4)
    ]
    assert "Resumed from epoch 2 (step 4)." in out
    assert not backup.exists()  # the run finished: BackupAndRestore removed its backup

    # its model.keras truncated: "corrupt or truncated"; deleted, rerunning the command
    # writes it again from the last checkpoint (the backup is missing: nothing to train)
    model_path = Path(result["model_path"])
    _truncate(model_path, 1000)
    with pytest.raises(ValueError, match="corrupt or truncated") as raised:
        load_model(model_path)
    assert str(model_path) in str(raised.value) and "copy it again" in str(raised.value)
    model_path.unlink()
    again = training.train(config, _examples(), list(CLASSES))
    (line,) = _backup_lines(capsys.readouterr().out)
    assert line == (
        f"Backup {backup} is missing (state.json records epoch 4, and there is no "
        f"model.keras); resuming from epoch 4 with {run / 'checkpoints/epoch_004.weights.h5'} "
        "(its weights and optimizer state)."
    )
    assert again["initial_epoch"] == 4 and again["epochs_run"] == 0
    assert again["final_step"] == 4 * STEPS
    saved = load_model(model_path).crop_model()
    assert callbacks.weights_fingerprint(saved) == state["fingerprint"]


def test_backup_and_every_checkpoint_truncated_start_over(tmp_path, capsys):
    run = tmp_path / "run"
    weights = tmp_path / "real.weights.h5"
    OverFeat("tiny", num_classes=len(CLASSES)).crop_model().save_weights(str(weights))
    head = weights.read_bytes()[:100]
    for name in ("backup/latest.weights.h5", "backup/latest.weights.h5.bkp"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(head)
    (run / "backup/training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 0}))
    (run / "checkpoints").mkdir()
    for epoch in (1, 2):
        (run / f"checkpoints/epoch_{epoch:03d}.weights.h5").write_bytes(head)
    (run / "checkpoints/epoch_003.weights.h5").write_bytes(b"")  # a stale, later one
    (run / "state.json").write_text(json.dumps({"epoch": 2}))

    result = training.train(_config(tmp_path, epochs=1), _examples(), list(CLASSES))
    (line,) = _backup_lines(capsys.readouterr().out)
    (aside,) = run.glob(f"{callbacks.CORRUPT_BACKUP_PREFIX}*")
    assert line == (
        f"Backup {run / 'backup'} is damaged (latest.weights.h5: truncated file; "
        f"latest.weights.h5.bkp: truncated file), moved to {aside}; no checkpoint in "
        f"{run / 'checkpoints'} loads (skipped damaged epoch_002.weights.h5: truncated file, "
        "and 1 older): training starts over from epoch 1."
    )
    assert sorted(p.name for p in aside.iterdir()) == [
        "latest.weights.h5",
        "latest.weights.h5.bkp",
        "training_metadata.json",
    ]
    assert result["initial_epoch"] == 0 and result["epochs_run"] == 1
    assert result["final_step"] == STEPS and not (run / "resume.json").exists()
    assert callbacks.weights_file_problem(run / "checkpoints/epoch_001.weights.h5") is None


def test_a_checkpoint_without_optimizer_state_continues_the_schedule(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = run / "checkpoints/epoch_002.weights.h5"
    keras.utils.set_random_seed(1)
    OverFeat("tiny", num_classes=len(CLASSES)).crop_model().save_weights(str(checkpoint))
    (run / "backup").mkdir()
    (run / "backup/training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 0}))
    (run / "state.json").write_text(json.dumps({"epoch": 2}))
    recorder = _recorded(monkeypatch, _Recorder())
    with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
        result = training.train(_config(tmp_path, epochs=4), _examples(), list(CLASSES))
    (line,) = _backup_lines(capsys.readouterr().out)
    assert line.startswith(f"Backup {run / 'backup'} is damaged (latest.weights.h5: missing)")
    assert line.endswith(
        f"resuming from epoch 2 with {checkpoint} (weights only: the optimizer state "
        "restarts, at step epoch x steps per epoch)."
    )
    assert recorder.epochs == [2, 3] and result["final_step"] == 4 * STEPS
    assert recorder.start["fingerprint"] == _checkpoint_state_weights(checkpoint)
    assert recorder.rates == [pytest.approx(0.01), pytest.approx(0.005)]
    assert json.loads((run / "resume.json").read_text())["step"] == 2 * STEPS


def test_resume_epoch_reads_an_intact_backup_and_leaves_new_runs_alone(tmp_path, capsys):
    output = tmp_path / "run"
    output.mkdir()
    assert callbacks.resume_epoch(output) == 0  # a new run
    (output / "state.json").write_text(json.dumps({"epoch": 3}))
    (output / "model.keras").write_bytes(b"")
    assert callbacks.resume_epoch(output) == 0  # a finished run: its backup was deleted
    (output / "model.keras").unlink()
    assert callbacks.resume_epoch(output, chief=False) == 0  # workers write no model.keras
    backup = output / callbacks.BACKUP_DIR
    backup.mkdir()
    OverFeat("tiny", num_classes=3).crop_model().save_weights(str(backup / "latest.weights.h5"))
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 3, "batch": 0}))
    (backup / "latest.weights.h5.bkp").write_bytes(b"x")  # Keras' fallback, not needed
    assert callbacks.resume_epoch(output) == 3
    assert capsys.readouterr().out == "" and backup.is_dir()
    assert callbacks.weights_file_problem(backup / "latest.weights.h5.bkp") == (
        "file signature not found"
    )
    assert callbacks.weights_file_problem(backup / "nothing.weights.h5") == "missing"


def test_a_truncated_keras_file_is_named_corrupt_by_every_loader(tmp_path, capsys):
    good = tmp_path / "good.keras"
    OverFeat("tiny", num_classes=3).save(good)
    data = good.read_bytes()
    truncated = tmp_path / "model.keras"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated") as raised:
        load_model(truncated)
    message = str(raised.value)
    assert str(truncated) in message and "copy it again" in message and "\n" not in message
    assert "File not found" not in message
    flipped = bytearray(data)
    flipped[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    damaged = tmp_path / "damaged.keras"
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"corrupt or truncated \(Bad CRC-32"):
        load_model(damaged)
    # --init-model
    config = training.TrainConfig(model="tiny", task="detect", init_model=str(truncated))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        recipe.load_init_model(config)
    # python -m overfeat_tf.predict: one `error:` line
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda: predict.main([str(tmp_path / "a.jpg"), "--model", str(truncated)]))
    assert str(exit_info.value.code).startswith(f"error: Model file {truncated} is corrupt")
    # export.py: one `error:` line, exit status 1
    capsys.readouterr()
    args = ["--model", str(truncated), "--export-dir", str(tmp_path / "serving")]
    assert _export_cli().main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: Model file {truncated} is corrupt or truncated")
    assert "\n" not in err and not (tmp_path / "serving").exists()

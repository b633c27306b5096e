"""Training: the recipe's pieces, a run's outputs, tf.distribute strategies, crash resume."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf.data import inputs as data
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.training import callbacks, distribute, recipe
from overfeat_tf.training import run as training
from tests.test_data import TOY_CLASSES, TOY_NAME, encoded_examples, toy_data_dir  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
# A small, stable recipe for the toy data: He init, small lr, small batches.
TOY_FLAGS = [
    "--model",
    "tiny",
    "--task",
    "classify",
    "--format",
    "json",
    "--dataset",
    TOY_NAME,
    "--batch-size",
    "8",
    "--init",
    "he_normal",
    "--lr",
    "0.01",
    "--shuffle-buffer",
    "32",
    "--verbose",
    "2",
]
SUBPROCESS_TIMEOUT = 240


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _result(stdout: str) -> dict:
    """The JSON summary train.py prints last (`--format json`)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout
    return json.loads(lines[-1])


def _fingerprint_of_checkpoint(path: str | Path) -> str:
    crop = OverFeat("tiny", num_classes=len(TOY_CLASSES)).crop_model()
    crop.load_weights(str(path))
    return callbacks.weights_fingerprint(crop)


# --- the recipe's pieces --------------------------------------------------------------------


def test_learning_rate_halves_after_the_paper_epochs():
    schedule = recipe.learning_rate_schedule(0.05, 10, (30, 50, 60, 70, 80), 0.5)
    lr = {step: float(schedule(step)) for step in (0, 299, 300, 499, 500, 650, 799, 800, 5000)}
    assert lr[0] == lr[299] == pytest.approx(0.05)
    assert lr[300] == lr[499] == pytest.approx(0.025)
    assert lr[500] == pytest.approx(0.0125) and lr[650] == pytest.approx(0.00625)
    assert lr[799] == pytest.approx(0.003125) and lr[800] == lr[5000] == pytest.approx(0.0015625)
    assert recipe.learning_rate_schedule(0.1, 10, (), 0.5) == 0.1
    with pytest.raises(ValueError, match="increasing"):
        recipe.learning_rate_schedule(0.1, 10, (5, 3), 0.5)


def test_weight_decay_is_torch_style_l2_on_every_parameter():
    model = OverFeat("tiny", num_classes=3, kernel_initializer="he_normal")
    crop = model.crop_model()
    recipe.add_weight_decay(crop, 1e-5)
    variables = crop.trainable_variables
    expected = sum(float(tf.reduce_sum(tf.square(v))) for v in variables) * 1e-5 / 2
    assert float(sum(crop.losses)) == pytest.approx(expected, rel=1e-5)
    # gradient of the decay term alone: weight_decay * w, biases included
    with tf.GradientTape() as tape:
        decay = tf.add_n(crop.losses)
    grads = tape.gradient(decay, variables)
    for v, g in zip(variables, grads, strict=True):
        np.testing.assert_allclose(g.numpy(), 1e-5 * v.numpy(), rtol=1e-5, atol=1e-12)
    assert any("bias" in v.path for v in variables)


def test_config_defaults_are_the_papers_and_bad_values_fail():
    config = training.TrainConfig()
    assert (config.batch_size, config.learning_rate, config.momentum) == (128, 5e-2, 0.6)
    assert config.clipnorm == 0 and config.box_loss == "smooth_l1"
    assert config.adaptation_layers is None and config.transfer_up_to is None
    # the spatial tasks: clipped; localize at a lower rate; explicit values win
    detect = training.TrainConfig(task="detect", init_model="m.keras")
    localize = training.TrainConfig(task="localize", init_model="m.keras")
    assert (detect.learning_rate, detect.clipnorm) == (5e-2, 10.0)
    assert (localize.learning_rate, localize.clipnorm) == (1e-2, 1.0)
    mine = training.TrainConfig(task="localize", init_model="m", learning_rate=0.1, clipnorm=0)
    assert (mine.learning_rate, mine.clipnorm) == (0.1, 0)
    assert (config.weight_decay, config.lr_decay_epochs, config.lr_decay_factor) == (
        1e-5,
        (30, 50, 60, 70, 80),
        0.5,
    )
    assert config.init == "paper" and config.dataset_name == "imagenet2012"
    assert training.TrainConfig(model="tiny").dataset_name == "overfeat_shapes"
    for bad in (
        {"model": "huge"},
        {"strategy": "horovod"},
        {"momentum": 1.0},
        {"mixed_precision": "int8"},
        {"init": "zeros"},
        {"epochs": 0},
        {"clipnorm": -1.0},
    ):
        with pytest.raises(ValueError):
            training.TrainConfig(**bad)


def test_he_init_keeps_fc8_small():
    model = recipe.initial_model(training.TrainConfig(model="tiny", init="he_normal"), ["a", "b"])
    fc8 = model.get_layer("fc8").kernel.numpy()
    conv1 = model.get_layer("conv1").kernel.numpy()
    assert fc8.std() == pytest.approx(0.01, rel=0.2)
    assert conv1.std() == pytest.approx((2 / (11 * 11 * 3)) ** 0.5, rel=0.1)
    paper = recipe.initial_model(training.TrainConfig(model="tiny"), ["a", "b"])
    assert paper.get_layer("conv1").kernel.numpy().std() == pytest.approx(0.01, rel=0.1)


def test_strategy_by_name_and_the_chief():
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()
    assert distribute.is_chief(distribute.make_strategy("default"))
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.make_strategy("horovod")


def test_training_re_exports_what_train_py_and_the_benchmarks_use():
    assert training.INITS is recipe.INITS and training.STRATEGIES is distribute.STRATEGIES
    assert training.initial_model is recipe.initial_model
    assert set(training.STRATEGIES) == {"default", "mirrored", "multi_worker", "tpu"}


def test_imagenet_without_its_tars_fails_clearly(tmp_path):
    config = training.TrainConfig(
        model="fast", data_dir=str(tmp_path), output=str(tmp_path / "run")
    )
    with pytest.raises(ValueError, match="downloads/manual"):
        training.train(config)


def test_fit_callbacks_are_in_resume_safe_order_and_read_the_backup(tmp_path):
    counter = data.CorruptRecordCounter()
    plain, timer = callbacks.fit_callbacks(tmp_path, 0, counter)
    assert timer is None and (tmp_path / "checkpoints").is_dir()
    kinds = [type(c) for c in plain]
    # the count enters the logs before they are saved; a diverged epoch raises before
    # anything writes it; the backup is restored before RunState reads it; state.json is
    # written after the epoch's checkpoint
    assert kinds[:5] == [
        callbacks.CorruptRecordLogger,
        callbacks.StopOnNonFinite,
        keras.callbacks.BackupAndRestore,
        callbacks.KeepLearningRate,  # after the restore
        keras.callbacks.ModelCheckpoint,
    ]
    assert isinstance(plain[1], keras.callbacks.TerminateOnNaN)
    assert kinds[-1] is callbacks.RunState
    limited, timer = callbacks.fit_callbacks(tmp_path, 3, counter, time_limit=5.0)
    assert limited[-1] is timer and timer.seconds == 5.0 and limited[-2].initial_epoch == 3
    backup = tmp_path / callbacks.BACKUP_DIR
    assert callbacks.backed_up_epoch(backup) == 0  # no backup yet
    backup.mkdir()
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 3, "batch": -1}))
    assert callbacks.backed_up_epoch(backup) == 3
    (backup / "training_metadata.json").write_text("{not json")
    assert callbacks.backed_up_epoch(backup) == 0


def test_time_limit_stops_at_the_end_of_a_step():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((8, 2), "float32")
    y = np.zeros((8, 1), "float32")
    timer = callbacks.TimeLimit(0.0)
    history = model.fit(x, y, batch_size=2, epochs=3, callbacks=[timer], verbose=0)
    assert timer.stopped and int(model.optimizer.iterations) == 1
    assert len(history.history["loss"]) == 1
    patient = callbacks.TimeLimit(3600.0)
    model.fit(x, y, batch_size=2, epochs=2, callbacks=[patient], verbose=0)
    assert not patient.stopped and int(model.optimizer.iterations) == 1 + 8


# --- a run ----------------------------------------------------------------------------------


def test_auto_verbosity_is_a_progress_bar_only_in_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert training.fit_verbosity("auto") == 1
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a log file, a pipe
    assert training.fit_verbosity("auto") == 2
    # ipykernel imported (by another test, a library) is not a notebook: still a log file
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert training.fit_verbosity("auto") == 2
    assert training.fit_verbosity(0) == 0 and training.fit_verbosity(1) == 1


def test_train_writes_model_checkpoints_logs_and_counts_corrupt_records(tmp_path, capsys):
    config = training.TrainConfig(
        model="tiny",
        output=str(tmp_path / "run"),
        epochs=2,
        steps_per_epoch=2,
        batch_size=4,
        init="he_normal",
        learning_rate=0.01,
        shuffle_buffer=16,
        val_split="validation",  # a tf.data source: the same examples, central crops
    )  # verbose "auto", stdout captured (not a terminal): a line per epoch, no progress bar
    result = training.train(config, encoded_examples(10, corrupt=(3,)), list(TOY_CLASSES))
    printed = capsys.readouterr().out
    assert "Epoch 2/2" in printed and "val_loss" in printed
    assert "\x1b[" not in printed and "\u2501" not in printed  # no ANSI redraws, no bar
    run = tmp_path / "run"
    assert result["epochs_run"] == 2 and result["final_step"] == 4
    assert np.isfinite(result["logs"]["val_loss"]) and not result["stopped_by_time_limit"]
    assert result["corrupt_records"] >= 1 and result["logs"]["corrupt_records"] >= 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_001.weights.h5",
        "epoch_002.weights.h5",
    ]
    assert not (run / "backup").exists()  # BackupAndRestore removes it after success
    events = list((run / "logs").rglob("events.out.tfevents.*"))
    assert events
    tags = {
        value.tag
        for path in events
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= tags
    assert list((run / "logs" / "validation").rglob("events.out.tfevents.*"))
    assert json.loads((run / "train_config.json").read_text())["val_split"] == "validation"
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 4
    assert state["fingerprint"] == _fingerprint_of_checkpoint(
        run / "checkpoints/epoch_002.weights.h5"
    )
    model = keras.models.load_model(result["model_path"])
    assert isinstance(model, OverFeat) and model.class_names == list(TOY_CLASSES)
    assert model(np.zeros((1, 247, 247, 3)))["class_logits"].shape == (1, 2, 2, 3)


def test_mixed_precision_time_limited_run_keeps_float32_outputs_and_restores_the_policy(
    tmp_path,
):
    config = training.TrainConfig(
        model="tiny",
        output=str(tmp_path / "run"),
        epochs=2,
        steps_per_epoch=2,
        batch_size=4,
        init="he_normal",
        learning_rate=0.01,
        mixed_precision="bfloat16",
        time_limit=1e-6,  # stops after the first step
        verbose=0,
    )
    result = training.train(config, encoded_examples(8), list(TOY_CLASSES))
    assert keras.mixed_precision.global_policy().name == "float32"
    assert result["stopped_by_time_limit"] and result["final_step"] == 1
    assert result["epochs_run"] == 1
    model = keras.models.load_model(result["model_path"])
    assert model.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"
    assert model(np.zeros((1, 231, 231, 3)))["class_logits"].dtype == "float32"


# --- strategies (subprocesses: devices and TF_CONFIG are fixed when TF starts) --------------

MIRRORED_DRIVER = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import runpy
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_mirrored_strategy_on_two_logical_cpus(toy_data_dir, tmp_path):  # noqa: F811
    flags = [
        *TOY_FLAGS,
        "--data-dir",
        str(toy_data_dir),
        "--output",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "3",
        "--strategy",
        "mirrored",
    ]
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_DRIVER, *flags],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = _result(done.stdout)
    assert result["replicas"] == 2 and result["final_step"] == 3
    assert np.isfinite(result["logs"]["loss"])
    assert Path(result["model_path"]).exists()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_mirrored_strategy_with_two_local_workers(toy_data_dir, tmp_path):  # noqa: F811
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    output = tmp_path / "run"
    flags = [
        *TOY_FLAGS,
        "--data-dir",
        str(toy_data_dir),
        "--output",
        str(output),
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
        "--strategy",
        "multi_worker",
    ]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                [sys.executable, "train.py", *flags],
                cwd=ROOT,
                env=_env(TF_CONFIG=json.dumps(tf_config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(_result(stdout))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    chief, worker = outputs
    assert chief["chief"] and not worker["chief"]
    assert chief["replicas"] == worker["replicas"] == 2
    assert chief["final_step"] == worker["final_step"] == 4
    assert Path(chief["model_path"]) == output / "model.keras" and worker["model_path"] is None
    # synchronous training: both workers end with the same weights
    states = [json.loads((output / sub / "state.json").read_text()) for sub in ("", "workers/1")]
    assert states[0]["fingerprint"] == states[1]["fingerprint"]


# --- crash and resume -----------------------------------------------------------------------


def test_resume_after_sigkill_restores_epoch_step_and_weights(toy_data_dir, tmp_path):  # noqa: F811
    output = tmp_path / "run"
    epochs, steps = 4, 5
    command = [
        sys.executable,
        "train.py",
        *TOY_FLAGS,
        "--data-dir",
        str(toy_data_dir),
        "--output",
        str(output),
        "--epochs",
        str(epochs),
        "--steps-per-epoch",
        str(steps),
    ]
    first = subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    state_path = output / "state.json"
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    try:
        while not state_path.exists():  # written after the first epoch's checkpoint
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    killed_at = json.loads(state_path.read_text())["epoch"]
    assert 1 <= killed_at < epochs, "the run finished before it could be killed"

    second = subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = json.loads((output / "resume.json").read_text())
    # it resumes from the last finished epoch (the one killed mid-way is lost)
    assert resumed["epoch"] >= killed_at
    assert resumed["step"] == resumed["epoch"] * steps
    checkpoint = output / "checkpoints" / f"epoch_{resumed['epoch']:03d}.weights.h5"
    assert resumed["fingerprint"] == _fingerprint_of_checkpoint(checkpoint)
    result = _result(second.stdout)
    assert result["initial_epoch"] == resumed["epoch"]
    assert result["epochs_run"] == epochs - resumed["epoch"]
    assert result["final_step"] == epochs * steps
    assert f"Resumed from epoch {resumed['epoch']}" in second.stdout

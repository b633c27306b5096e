"""Real data (issue 13): transfer to another label set (R-CNN's new fc8, Oquab et al.'s
adaptation layers, frozen layers) -- the copied weights, the new layers, the flags' errors,
runs of every task from a tiny net and from a converted (synthetic) release fast net -- and
runs that diverge: stopped on the first non-finite loss, the last good checkpoint kept.
(Localize on real photos: tests/test_spatial_training.py.)"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf.data.shapes import SHAPE_CLASSES, render_example
from overfeat_tf.models.backbone import OverFeat, backbone_of, load_model
from overfeat_tf.release import convert as cv
from overfeat_tf.training import callbacks, recipe
from overfeat_tf.training import run as training
from tests import test_convert as tc
from tests.test_data import TOY_CLASSES, encoded_examples, toy_data_dir  # noqa: F401
from tests.test_training import (
    ROOT,
    SUBPROCESS_TIMEOUT,
    TOY_FLAGS,
    _env,
    _fingerprint_of_checkpoint,
)

TRUNK = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
NEW_NAMES = ["cat", "person", "cup"]  # another label set than the 12 shapes


def _save_base(path, **kwargs) -> OverFeat:
    """A 12-class tiny "trained" net (random He weights, non-zero biases), saved at `path`."""
    keras.utils.set_random_seed(1)
    model = OverFeat(
        "tiny", class_names=list(SHAPE_CLASSES), kernel_initializer="he_normal", **kwargs
    )
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(np.random.default_rng(2).normal(0, 0.1, layer.bias.shape))
    model.save(path)
    return model


def _config(tmp_path, init_model, **kwargs) -> training.TrainConfig:
    common = {
        "model": "tiny",
        "init_model": str(init_model),
        "output": str(tmp_path / "run"),
        "epochs": 1,
        "steps_per_epoch": 2,
        "batch_size": 2,
        "mixed_precision": "float32",
        "verbose": 0,
    }
    return training.TrainConfig(**{**common, **kwargs})


def _weights(model, name):
    return [w.numpy() for w in model.get_layer(name).weights]


def _assert_same(a, b, names):
    for name in names:
        for x, y in zip(_weights(a, name), _weights(b, name), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=name)


def _assert_differ(a, b, name):
    assert not np.array_equal(_weights(a, name)[0], _weights(b, name)[0]), name


def _detection_examples(n, names, side=260, seed=0) -> tf.data.Dataset:
    """Generated shapes (one object each), relabelled into `names`."""
    examples = [
        render_example([seed, i], min_side=side, max_side=side, max_objects=1) for i in range(n)
    ]
    images = [tf.io.encode_png(e["image"]).numpy() for e in examples]
    boxes = np.stack([e["bboxes"] for e in examples]).astype("float32")
    labels = np.stack([e["labels"] for e in examples]) % len(names)
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "objects": {"bbox": boxes, "label": labels}}
    )


# --- what is copied ------------------------------------------------------------------------


def test_another_label_set_copies_up_to_fc7_and_renews_fc8(tmp_path, capsys):
    base = _save_base(tmp_path / "det.keras", regressor="class_specific", background=True)
    config = _config(tmp_path, tmp_path / "det.keras", task="detect")
    assert recipe.needs_transfer(base, NEW_NAMES, config)
    new = recipe.transfer_model(base, NEW_NAMES, config, keep_heads=True)
    _assert_same(new, base, TRUNK)
    fc8 = new.get_layer("fc8").kernel.numpy()
    assert fc8.shape == (1, 1, 128, 3) and fc8.std() == pytest.approx(0.01, rel=0.3)
    assert not new.get_layer("fc8").bias.numpy().any()
    # class-specific regressor and background belong to the old classes: not kept
    assert new.regressor is None and not new.background and new.class_names == NEW_NAMES
    assert "copied conv1, conv2, conv3, conv4, conv5, fc6, fc7; new fc8" in capsys.readouterr().out
    # a class-agnostic regressor does not depend on the classes: kept with the trunk
    agnostic = _save_base(tmp_path / "agn.keras", regressor="class_agnostic")
    kept = recipe.transfer_model(agnostic, NEW_NAMES, config, keep_heads=True)
    assert kept.regressor == "class_agnostic"
    _assert_same(kept, agnostic, ["reg_fc1", "reg_fc2", "reg_out"])
    # a lower --transfer-up-to: the layers above are new, the regressor goes with the trunk
    low = _config(tmp_path, tmp_path / "agn.keras", task="detect", transfer_up_to="conv3")
    partial = recipe.transfer_model(agnostic, NEW_NAMES, low, keep_heads=True)
    _assert_same(partial, agnostic, ["conv1", "conv2", "conv3"])
    for name in ("conv4", "fc6", "fc7"):
        _assert_differ(partial, agnostic, name)
    assert partial.regressor is None


def test_the_same_label_set_copies_everything_fc8_included(tmp_path):
    base = _save_base(tmp_path / "det.keras", regressor="class_specific", background=True)
    names = list(SHAPE_CLASSES)
    config = _config(tmp_path, tmp_path / "det.keras", task="localize")
    assert not recipe.needs_transfer(base, names, config)
    model = recipe.build_task_model(config, names)  # the path before transfer existed
    _assert_same(model, base, [*TRUNK, "fc8", "reg_fc1", "reg_fc2", "reg_out"])
    # classify from the detector: the same classes, its background column dropped
    classify = _config(tmp_path, tmp_path / "det.keras")
    crop = recipe.initial_model(classify, names)
    _assert_same(crop, base, TRUNK)
    np.testing.assert_array_equal(
        crop.get_layer("fc8").kernel.numpy(), base.get_layer("fc8").kernel.numpy()[..., :12]
    )
    assert not crop.background and crop.regressor is None
    # the same classes in another order are another label set
    assert recipe.needs_transfer(base, names[::-1], config)
    # an explicit --transfer-up-to fc7 renews fc8 even for the same classes
    plain = _save_base(tmp_path / "cls.keras")
    renew = recipe.initial_model(
        _config(tmp_path, tmp_path / "cls.keras", transfer_up_to="fc7"), names
    )
    assert renew.get_layer("fc8").kernel.shape == plain.get_layer("fc8").kernel.shape
    _assert_same(renew, plain, TRUNK)
    _assert_differ(renew, plain, "fc8")


def test_adaptation_layers_are_dense_serializable_and_copied_with_their_width(tmp_path):
    keras.utils.set_random_seed(0)
    model = OverFeat("tiny", num_classes=3, adaptation=(32, 16), kernel_initializer="he_normal")
    assert model.adaptation == (32, 16) and model.get_config()["adaptation"] == [32, 16]
    assert model.get_layer("adapt1").kernel.shape == (1, 1, 128, 32)
    assert model.get_layer("adapt2").kernel.shape == (1, 1, 32, 16)
    assert model.get_layer("fc8").kernel.shape == (1, 1, 16, 3)
    assert recipe.layer_order(model)[-4:] == ["fc7", "adapt1", "adapt2", "fc8"]
    image = np.random.default_rng(0).uniform(0, 255, (1, 231, 231, 3)).astype("float32")
    # the crop model and the dense model at the crop size see the same window
    coarse = model.spatial_model("coarse")(image)["class_logits"].numpy().reshape(1, 3)
    np.testing.assert_allclose(model.crop_model()(image).numpy(), coarse, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "adapted.keras")
    loaded = load_model(tmp_path / "adapted.keras")
    assert loaded.adaptation == (32, 16)
    np.testing.assert_allclose(
        loaded(image)["class_logits"].numpy(), model(image)["class_logits"].numpy(), rtol=1e-6
    )
    with pytest.raises(ValueError, match="widths must be >= 1"):
        OverFeat("tiny", adaptation=(0,))
    # copying adapt1 needs the same width; the default (fc7) leaves it new
    names = ["a", "b"]
    wide = _config(tmp_path, tmp_path / "adapted.keras", adaptation_layers=1, adaptation_width=8)
    new = recipe.transfer_model(loaded, names, wide, keep_heads=False)
    assert new.adaptation == (8,)
    _assert_same(new, loaded, TRUNK)
    too_far = _config(
        tmp_path,
        tmp_path / "adapted.keras",
        adaptation_layers=1,
        adaptation_width=8,
        transfer_up_to="adapt1",
    )
    with pytest.raises(ValueError, match=r"Cannot copy adapt1.*--adaptation-width"):
        recipe.transfer_model(loaded, names, too_far, keep_heads=False)
    # by default a run keeps the init model's adaptation layers
    inherit = _config(tmp_path, tmp_path / "adapted.keras", transfer_up_to="adapt2")
    same_width = recipe.transfer_model(loaded, names, inherit, keep_heads=False)
    _assert_same(same_width, loaded, [*TRUNK, "adapt1", "adapt2"])


def test_transfer_and_freeze_errors_say_what_to_pass(tmp_path):
    base = _save_base(tmp_path / "cls.keras")
    path = tmp_path / "cls.keras"
    with pytest.raises(ValueError, match=r"not a layer of.*conv1"):
        recipe.transfer_model(base, NEW_NAMES, _config(tmp_path, path, transfer_up_to="fc9"), False)
    with pytest.raises(ValueError, match=r"another label set.*fc7"):
        recipe.transfer_model(base, NEW_NAMES, _config(tmp_path, path, transfer_up_to="fc8"), False)
    with pytest.raises(ValueError, match="nothing would train"):
        recipe.initial_model(_config(tmp_path, path, freeze_up_to="fc8"), NEW_NAMES)
    with pytest.raises(ValueError, match="--freeze-up-to 'pool5'"):
        recipe.initial_model(_config(tmp_path, path, freeze_up_to="pool5"), NEW_NAMES)
    with pytest.raises(ValueError, match="pass --model tiny"):
        recipe.initial_model(_config(tmp_path, path, model="fast"), NEW_NAMES)
    with pytest.raises(ValueError, match=r"--transfer-up-to.*--init-model"):
        training.TrainConfig(model="tiny", transfer_up_to="fc7")
    with pytest.raises(ValueError, match="localize already trains only"):
        _config(tmp_path, path, task="localize", freeze_up_to="fc7")
    for bad in ({"adaptation_layers": -1}, {"adaptation_width": 0}, {"box_loss": "l1"}):
        with pytest.raises(ValueError):
            _config(tmp_path, path, **bad)


# --- runs ----------------------------------------------------------------------------------


def test_classify_from_a_12_class_net_to_3_classes_oquab_style(tmp_path):
    """Oquab et al.: layers 1-7 copied and frozen, a new adaptation layer and fc8 train."""
    base = _save_base(tmp_path / "cls.keras")
    config = _config(
        tmp_path,
        tmp_path / "cls.keras",
        adaptation_layers=1,
        adaptation_width=32,
        freeze_up_to="fc7",
        init="he_normal",
        learning_rate=0.01,
    )
    keras.utils.set_random_seed(config.seed)
    initial = recipe.initial_model(config, list(TOY_CLASSES))  # what the run starts from
    result = training.train(config, encoded_examples(8), list(TOY_CLASSES))
    assert result["final_step"] == 2 and np.isfinite(result["logs"]["loss"])
    trained = load_model(result["model_path"])
    assert trained.class_names == list(TOY_CLASSES) and trained.adaptation == (32,)
    _assert_same(trained, base, TRUNK)  # copied, and frozen
    _assert_same(trained, initial, TRUNK)
    for name in ("adapt1", "fc8"):
        _assert_differ(trained, initial, name)
    assert trained(np.zeros((1, 231, 231, 3)))["class_logits"].shape == (1, 1, 1, 3)


def test_detect_and_localize_from_a_12_class_net_on_another_label_set(tmp_path):
    """The issue's refused run: detect from a 12-class model on a 3-class dataset (fc8 new,
    + background), then localize from that detector; localize straight from the 12-class
    net warns that the new fc8 stays untrained."""
    base = _save_base(tmp_path / "cls.keras")
    data = _detection_examples(6, NEW_NAMES)
    detect = _config(tmp_path, tmp_path / "cls.keras", task="detect", freeze_up_to="conv5")
    detected = training.train(detect, data, NEW_NAMES)
    detector = backbone_of(load_model(detected["model_path"]))
    assert detector.class_names == NEW_NAMES and detector.background
    assert detector.get_layer("fc8").kernel.shape == (1, 1, 128, 4)
    _assert_same(detector, base, TRUNK[:5])  # frozen
    _assert_differ(detector, base, "fc6")  # copied, then trained
    localize = _config(
        tmp_path, detected["model_path"], task="localize", output=str(tmp_path / "loc")
    )
    located = training.train(localize, data, NEW_NAMES)
    assert np.isfinite(located["logs"]["loss"])
    localizer = backbone_of(load_model(located["model_path"]))
    _assert_same(localizer, detector, [*TRUNK, "fc8"])
    assert localizer.regressor == "class_specific"
    straight = _config(
        tmp_path, tmp_path / "cls.keras", task="localize", output=str(tmp_path / "loc2")
    )
    with pytest.warns(UserWarning, match=r"fc8 .* stays untrained"):
        recipe.build_task_model(straight, NEW_NAMES)


def test_converted_release_net_to_classify_and_localize(tmp_path):
    """`convert` output (tiny layout, encoded synthetic weights) transfers for classify and
    localize (the converter's zero initializer is not what new layers get)."""
    weights = tmp_path / "tiny_weights"
    tc._write(weights, "tiny", tc._encoded_chunks)
    names = [f"imagenet {i}" for i in range(10)]
    converted = cv.convert("tiny", weights, class_names=names, output=tmp_path / "tiny.keras")
    classify = _config(tmp_path, tmp_path / "tiny.keras", learning_rate=1e-4, init="he_normal")
    model = recipe.initial_model(classify, list(TOY_CLASSES))
    _assert_same(model, converted, TRUNK)
    localize = _config(tmp_path, tmp_path / "tiny.keras", task="localize")
    with pytest.warns(UserWarning, match="untrained"):
        localizer = recipe.build_task_model(localize, NEW_NAMES)
    _assert_same(localizer, converted, TRUNK)
    reg = localizer.get_layer("reg_fc1").kernel.numpy()
    assert reg.std() == pytest.approx(0.01, rel=0.1)  # --init paper, not the converter's zeros
    bias = localizer.get_layer("reg_out").bias.numpy().reshape(3, 4)
    np.testing.assert_array_equal(bias, np.tile([0, 0, 1, 1], (3, 1)))


def test_fine_tune_a_converted_fast_release_net_on_12_class_detection(tmp_path):
    """R-CNN's recipe on the real layout: synthetic He-scaled weights in the released fast
    file (145,920,872 floats) -> `convert` -> detect on generated 12-class 231 px images,
    one step at batch 1 (fc8: 12 classes + background, new)."""
    start = time.monotonic()
    weights = tmp_path / "net_weight_0"
    tc._write(weights, "fast", tc._random_chunks(seed=3))
    names = tc._class_names()
    cv.convert("fast", weights, class_names=names, output=tmp_path / "fast.keras")
    weights.unlink()
    config = _config(
        tmp_path,
        tmp_path / "fast.keras",
        model="fast",
        task="detect",
        train_size=231,
        batch_size=1,
        steps_per_epoch=1,
        learning_rate=1e-3,
    )
    result = training.train(
        config, _detection_examples(3, SHAPE_CLASSES, side=231), list(SHAPE_CLASSES)
    )
    assert result["final_step"] == 1 and np.isfinite(result["logs"]["loss"])
    net = backbone_of(load_model(result["model_path"]))
    assert net.class_names == list(SHAPE_CLASSES) and net.background
    assert net.get_layer("fc8").kernel.shape == (1, 1, 4096, 13)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"fast transfer: {time.monotonic() - start:.0f} s, peak RSS {peak_gb:.1f} GB")


# --- divergence -----------------------------------------------------------------------------


class _Poison(keras.callbacks.Callback):
    """Makes conv1's kernel NaN once: before step `step` of `epoch` (0-based), so that step's
    loss is NaN, or with `after=True` after it (the loss was finite, the weights are not)."""

    def __init__(self, epoch: int, step: int, after: bool = False) -> None:
        super().__init__()
        self.epoch, self.step, self.after, self.current = epoch, step, after, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def _poison(self, batch):
        if (self.current, batch) == (self.epoch, self.step):
            kernel = self.model.get_layer("conv1").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    def on_train_batch_begin(self, batch, logs=None):
        if not self.after:
            self._poison(batch)

    def on_train_batch_end(self, batch, logs=None):
        if self.after:
            self._poison(batch)


class _LearningRates(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(float(self.model.optimizer.learning_rate.numpy()))


def _poisoned(monkeypatch, first: keras.callbacks.Callback, last=None) -> None:
    """Put `first` first in the run's callbacks (before the non-finite check), `last` last."""
    original = callbacks.fit_callbacks

    def with_poison(*args, **kwargs):
        callback_list, timer = original(*args, **kwargs)
        return [first, *callback_list, *([last] if last else [])], timer

    monkeypatch.setattr(callbacks, "fit_callbacks", with_poison)


def _small_run(tmp_path, **kwargs) -> training.TrainConfig:
    common = {
        "model": "tiny",
        "output": str(tmp_path / "run"),
        "epochs": 3,
        "steps_per_epoch": 2,
        "batch_size": 4,
        "init": "he_normal",
        "learning_rate": 0.01,
        "mixed_precision": "float32",
        "verbose": 0,
    }
    return training.TrainConfig(**{**common, **kwargs})


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = _small_run(tmp_path, lr_decay_epochs=())  # a constant rate: an optimizer variable
    run = tmp_path / "run"
    _poisoned(monkeypatch, _Poison(epoch=1, step=0))
    good = run / "checkpoints" / "epoch_001.weights.h5"
    with pytest.raises(callbacks.TrainingDiverged) as raised:
        training.train(config, encoded_examples(8), list(TOY_CLASSES))
    message = str(raised.value)
    assert "epoch 2: the loss is nan after step 1" in message and str(good) in message
    assert "\n" not in message  # train.py prints it as one line
    # nothing of epoch 2: no checkpoint, no model; the resume point is epoch 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [good.name]
    assert not (run / "model.keras").exists()
    assert callbacks.backed_up_epoch(run / callbacks.BACKUP_DIR) == 1
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 1 and state["fingerprint"] == _fingerprint_of_checkpoint(good)
    crop = OverFeat("tiny", num_classes=len(TOY_CLASSES)).crop_model()
    crop.load_weights(str(good))
    assert all(np.isfinite(w).all() for w in crop.get_weights())
    diverged = json.loads((run / "diverged.json").read_text())
    assert diverged["epoch"] == 2 and diverged["step"] == 1
    assert diverged["last_good_checkpoint"] == str(good)
    # rerunning the command with a lower --lr (no poison now) resumes from the last good
    # epoch, at the new rate (the backup's optimizer state holds the old one)
    monkeypatch.undo()
    rates = _LearningRates()
    _poisoned(monkeypatch, keras.callbacks.Callback(), rates)
    lower = dataclasses.replace(config, learning_rate=1e-3)
    result = training.train(lower, encoded_examples(8), list(TOY_CLASSES))
    assert result["initial_epoch"] == 1 and result["final_step"] == 6
    assert np.isfinite(result["logs"]["loss"]) and Path(result["model_path"]).exists()
    assert rates.seen == [pytest.approx(1e-3)] * 2


def test_nan_weights_with_a_finite_loss_stop_at_the_epoch_end(tmp_path, monkeypatch):
    """The last step's update makes the weights NaN (its loss was finite): the epoch-end
    check stops the run before its checkpoint; no epoch finished, so none is named."""
    _poisoned(monkeypatch, _Poison(epoch=0, step=1, after=True))
    with pytest.raises(callbacks.TrainingDiverged, match="no good checkpoint") as raised:
        training.train(_small_run(tmp_path), encoded_examples(8), list(TOY_CLASSES))
    assert "weights are NaN or infinite (first: conv1/kernel)" in str(raised.value)
    run = tmp_path / "run"
    assert not list((run / "checkpoints").iterdir()) and not (run / "model.keras").exists()
    assert not (run / callbacks.BACKUP_DIR).exists() and not (run / "state.json").exists()


def test_train_py_exits_with_one_line_when_the_loss_diverges(toy_data_dir, tmp_path):  # noqa: F811
    flags = [*TOY_FLAGS, "--data-dir", str(toy_data_dir), "--output", str(tmp_path / "run")]
    flags += ["--epochs", "2", "--steps-per-epoch", "3", "--lr", "1e30", "--momentum", "0"]
    done = subprocess.run(
        [sys.executable, "train.py", *flags],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Training diverged in epoch 1: the loss is ")
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "model.keras").exists()

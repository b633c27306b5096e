"""`OverFeatDetector.compile` / `fit` / `evaluate` with Keras' own loop (paper §4.2, §5
targets built in the train step from normalized boxes) and the mAP callback
(`training.callbacks.DetectionMAP`) against the detection evaluation command."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf import detection_eval
from overfeat_tf.architecture.config import TINY
from overfeat_tf.data import spatial
from overfeat_tf.data.shapes import SHAPE_CLASSES
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.training.callbacks import DetectionMAP

SIZE = 263
MAP = (TINY.output_size(SIZE), TINY.output_size(SIZE))  # its fine output map (h, w)


def _batch(rng, n=4):
    images = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")
    boxes = np.zeros((n, 3, 4), "float32")
    boxes[:, 0] = [0.1, 0.15, 0.8, 0.7]
    boxes[:, 1] = [0.3, 0.05, 0.6, 0.5]
    labels = np.tile(np.array([[1, 2, -1]], "int32"), (n, 1))  # the third row is padding
    return images, {"boxes": boxes, "labels": labels}


def test_targets_in_the_train_step_are_the_spatial_targets(tiny_net, rng):
    detector = OverFeatDetector(tiny_net())
    detector.compile(optimizer="sgd", task="detect")
    _, y = _batch(rng, 2)
    got = detector.training_targets(y, (SIZE, SIZE), MAP)
    pixels = y["boxes"][0, :2] * SIZE
    want = spatial.spatial_targets(pixels, y["labels"][0, :2], TINY, SIZE, 3)
    np.testing.assert_array_equal(got["class_logits"][0].numpy(), want[0].numpy())
    np.testing.assert_allclose(got["box_deltas"][0].numpy(), want[1].numpy(), atol=1e-5)
    assert (got["class_logits"].numpy() >= 0).any()  # some positives and background cells
    # Ragged boxes and labels give the same targets as the padded ones.
    ragged = {
        "boxes": tf.RaggedTensor.from_tensor(y["boxes"][:, :2]),
        "labels": tf.RaggedTensor.from_tensor(y["labels"][:, :2]),
    }
    again = detector.training_targets(ragged, (SIZE, SIZE), MAP)
    np.testing.assert_array_equal(again["class_logits"], got["class_logits"])


def test_fit_trains_the_task_layers_only(tiny_net, rng):
    detector = OverFeatDetector(tiny_net())
    images, y = _batch(rng)
    data = tf.data.Dataset.from_tensors((images, y)).repeat(3)
    net = detector.backbone
    before = {w.path: w.numpy().copy() for w in net.weights}
    detector.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), task="detect")
    history = detector.fit(data, epochs=2, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0]
    changed = {w.path for w in net.weights if not np.array_equal(w.numpy(), before[w.path])}
    assert "conv1/kernel" in changed and "fc8/kernel" in changed
    assert not any(path.startswith("reg_") for path in changed)
    before = {w.path: w.numpy().copy() for w in net.weights}
    detector.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), task="localize")
    detector.fit(data, epochs=1, verbose=0)
    changed = {w.path for w in net.weights if not np.array_equal(w.numpy(), before[w.path])}
    assert changed and all(path.startswith("reg_") for path in changed)
    loss = detector.evaluate(images, y, batch_size=4, verbose=0)
    assert np.isfinite(loss)
    out = detector.predict(images[:1], verbose=0)  # predict still gives detections
    assert out["detection_boxes"].shape == (1, detector.max_detections, 4)


def test_compiled_detector_round_trips_through_keras_files(tiny_net, rng, tmp_path):
    detector = OverFeatDetector(tiny_net())
    detector.compile(optimizer=keras.optimizers.SGD(1e-3), task="localize", box_loss="l2")
    images, y = _batch(rng, 2)
    detector.fit(images, y, epochs=1, verbose=0)
    detector.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert loaded.compiled and loaded.training_settings == detector.training_settings
    assert [w.path for w in loaded.trainable_weights] == [
        w.path for w in detector.trainable_weights
    ]
    assert np.isfinite(loaded.fit(images, y, epochs=1, verbose=0).history["loss"]).all()


def test_bad_targets_and_tasks_are_refused(tiny_net, rng):
    detector = OverFeatDetector(tiny_net())
    with pytest.raises(ValueError, match="task must be one of"):
        detector.compile(task="segment")
    with pytest.raises(ValueError, match="box_loss"):
        detector.compile(task="localize", box_loss="l1")
    detector.compile(optimizer="sgd", task="detect")
    images, _ = _batch(rng, 2)
    with pytest.raises(ValueError, match='"boxes"'):
        detector.fit(images, np.zeros(2), epochs=1, verbose=0)


def test_map_callback_equals_the_detection_evaluation(tiny_net, shapes_small_dir, tmp_path):
    detector = OverFeatDetector(tiny_net(1, SHAPE_CLASSES), scales=(231, 263), max_boxes=500)
    detector.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), task="detect")
    batches = spatial.spatial_dataset(
        "overfeat_shapes/small", "train", TINY, 4, data_dir=str(shapes_small_dir)
    )
    callback = DetectionMAP(
        "overfeat_shapes/small",
        "validation",
        str(shapes_small_dir),
        every=2,
        best_path=tmp_path / "best.keras",
        verbose=0,
    )
    history = detector.fit(batches, epochs=2, steps_per_epoch=2, callbacks=[callback], verbose=0)
    assert [h["epoch"] for h in callback.history] == [2]  # every second epoch only
    assert history.history["val_map50"][-1] == callback.history[-1]["val_map50"]
    found = callback.history[-1]
    assert 0 <= found["val_map"] <= found["val_map50"] <= 1
    command = detection_eval.main(
        [
            "--model",
            str(tmp_path / "best.keras"),
            "--dataset",
            "overfeat_shapes/small",
            "--data-dir",
            str(shapes_small_dir),
            "--split",
            "validation",
            "--format",
            "json",
        ]
    )
    assert command["merge"]["map"] == pytest.approx(found["val_map50"], abs=1e-12)
    assert command["merge"]["map_50_95"] == pytest.approx(found["val_map"], abs=1e-12)
    assert json.loads(json.dumps(found["ap"]))  # the per-class table is JSON-ready

"""`overfeat_tf.plots`: every figure rendered to PNG (real, non-blank, `figsize * dpi` px) and
drawing what it should (boxes where the detections are, the level maps' values, the dense
boxes' outlines, normalized filters, the logged curves), against NumPy references."""

from __future__ import annotations

import keras
import matplotlib.pyplot as plt
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.collections import LineCollection
from matplotlib.patches import Rectangle
from PIL import Image

from overfeat_tf import plots
from overfeat_tf.data.shapes import render_example
from overfeat_tf.models.decoders import NMSDecoder
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.models.inference import level_probabilities
from overfeat_tf.training import callbacks

NAMES = ["disk", "ring", "star"]


@pytest.fixture(scope="module")
def detector(tiny_net) -> OverFeatDetector:
    net = tiny_net(1, tuple(NAMES))
    # NMS rather than the greedy merge: the plots do not depend on the decoder, and NMS needs
    # no XLA compile (the merge's first one costs 10-20 s on 2 cores)
    decoder = NMSDecoder(max_detections=20)
    return OverFeatDetector(net, decoder, scales=(231, 263), flips=False, max_boxes=300)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return render_example(5, min_side=180, max_side=240)["image"]


def _png(path, figsize, dpi) -> np.ndarray:
    """The PNG as an array, checked: the expected size in px and not one flat colour."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (round(figsize[0] * dpi), round(figsize[1] * dpi))
        pixels = np.asarray(im.convert("RGB")).astype(np.float64)
    assert pixels.std() > 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # more than a few flat areas
    return pixels


def test_detections_are_drawn_where_the_boxes_are(tmp_path):
    grey = np.full((200, 300, 3), 128, np.uint8)
    found = {
        "boxes": np.array([[60.0, 30.0, 180.0, 270.0]]),  # yxyx px
        "scores": np.array([3.5]),
        "classes": np.array([1]),
        "class_names": ["ring"],
    }
    figure = plots.plot_detections(grey, found, figsize=(6, 4), dpi=100, save=tmp_path / "d.png")
    pixels = _png(tmp_path / "d.png", (6, 4), 100)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.texts] == ["ring 3.50"]
    (x0, y0), (x1, y1) = ax.transData.transform([[30.0, 60.0], [270.0, 180.0]])
    height = pixels.shape[0]
    colour = np.array(plots._colour(1)[:3]) * 255
    ys, xs = np.nonzero(np.abs(pixels - colour).max(axis=-1) < 30)
    # the box outline (and its label above its top-left corner) in the class's colour
    assert abs(xs.min() - x0) <= 3 and abs(xs.max() - x1) <= 3
    assert abs(ys.max() - (height - y1)) <= 3
    assert ys.min() < height - y0  # the label sits above the box
    assert plt.get_fignums() == []  # nothing registered with pyplot


def test_detector_outputs_are_drawn_in_pixels_of_the_image():
    normalized = {
        "detection_boxes": np.array([[[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0]]]),
        "detection_scores": np.array([[2.0, 1.0, 0.0]]),
        "detection_classes": np.array([[2, 0, 0]], np.int32),
        "detection_class_names": np.array([[b"star", b"disk", b""]]),
        "num_detections": np.array([2], np.int32),
    }
    found = plots.pixel_detections(normalized, (200, 300))
    np.testing.assert_allclose(
        found["boxes"], normalized["detection_boxes"][0, :2] * [200, 300, 200, 300], rtol=1e-6
    )
    assert found["class_names"] == ["star", "disk"]
    np.testing.assert_array_equal(found["classes"], [2, 0])
    figure = plots.plot_detections(np.zeros((200, 300, 3), np.uint8), normalized, max_boxes=1)
    assert len([p for p in figure.axes[0].patches if isinstance(p, Rectangle)]) == 1
    with pytest.raises(ValueError, match="detection_boxes"):
        plots.pixel_detections({"scores": []}, (2, 2))


def test_score_maps_show_each_levels_probabilities(detector, image, tmp_path):
    figure = plots.plot_score_maps(detector, image, top=2, dpi=80, save=tmp_path / "m.png")
    _png(tmp_path / "m.png", figure.get_size_inches(), 80)
    levels = detector.levels(tf.constant(image, tf.float32))
    maps = [level_probabilities(level, 3).numpy() for level in levels]
    scores = np.mean([m.max(axis=(1, 2)).mean(axis=0) for m in maps], axis=0)
    best = np.argsort(-scores)[:2]
    cols = len(levels) + 1
    for r, c in enumerate(best):
        assert figure.axes[r * cols].get_title().startswith(NAMES[c])
        for j, m in enumerate(maps, start=1):
            np.testing.assert_allclose(
                figure.axes[r * cols + j].images[0].get_array(), m[0, ..., c], atol=1e-6
            )
    chosen = plots.plot_score_maps(detector, image, classes=["star"], levels=levels)
    np.testing.assert_allclose(chosen.axes[1].images[0].get_array(), maps[0][0, ..., 2], atol=1e-6)
    with pytest.raises(ValueError, match="Unknown class"):
        plots.plot_score_maps(detector, image, classes=["cat"], levels=levels)


def test_box_cloud_draws_every_dense_box_and_the_merged_ones(detector, image, tmp_path):
    figure = plots.plot_box_cloud(
        detector, image, max_merged=3, figsize=(8, 4), dpi=60, save=tmp_path / "c.png"
    )
    _png(tmp_path / "c.png", (8, 4), 60)
    boxes, _, _, _ = detector.dense_boxes(detector.levels(tf.constant(image, tf.float32)))
    y0, x0, y1, x1 = boxes.numpy().T  # pixels of the image
    want = np.stack(
        [np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1)], axis=1
    )
    left, right = figure.axes
    (cloud,) = [c for c in left.collections if isinstance(c, LineCollection)]
    segments = np.array(cloud.get_segments())
    assert len(segments) == len(want) > 0
    np.testing.assert_allclose(segments[:, :3], want, rtol=1e-5, atol=1e-3)
    merged = [p for p in right.patches if isinstance(p, Rectangle)]
    assert len(merged) == 3  # max_merged (the random detector finds more)


def test_conv1_filters_are_normalized_each_on_its_own(detector, tmp_path):
    kernel = detector.backbone.get_layer("conv1").kernel.numpy()  # [11, 11, 3, 16]
    figure = plots.plot_conv1_filters(detector, figsize=(4, 4), dpi=100, save=tmp_path / "f.png")
    _png(tmp_path / "f.png", (4, 4), 100)
    shown = [ax.images[0].get_array() for ax in figure.axes if ax.images]
    assert len(shown) == kernel.shape[-1]
    for i, image in enumerate(shown):
        k = kernel[..., i]
        np.testing.assert_allclose(image, (k - k.min()) / (k.max() - k.min()), atol=1e-6)
    flat = plots.filter_grid(np.ones((3, 3, 3, 2), np.float32))
    np.testing.assert_array_equal(flat, 0.5)
    with pytest.raises(ValueError, match="RGB conv kernels"):
        plots.filter_grid(np.ones((3, 3, 16, 2)))


def _write_run(directory, epochs: list[dict[str, float]]) -> None:
    """Per-epoch logs as train.py writes them (`callbacks.EpochScalars` event files)."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse")
    writer = callbacks.EpochScalars(directory / "logs")
    writer.set_model(model)
    for epoch, logs in enumerate(epochs):
        writer.on_epoch_end(epoch, dict(logs))
    writer.on_train_end()


def test_training_curves_come_from_the_runs_logs(tmp_path):
    epochs = [
        {"loss": 2.0, "accuracy": 0.3, "val_loss": 2.2, "val_accuracy": 0.25, "corrupt_records": 0},
        {"loss": 1.2, "accuracy": 0.6, "val_loss": 1.5, "val_accuracy": 0.5, "corrupt_records": 0},
        {"loss": 0.7, "accuracy": 0.8, "val_loss": 1.1, "val_accuracy": 0.7, "corrupt_records": 0},
    ]
    _write_run(tmp_path / "classify", epochs)
    _write_run(tmp_path / "detect", [{"loss": 0.9}, {"loss": 0.5}])
    logs = plots.read_training_logs(tmp_path / "classify")
    e, loss = logs["train"]["loss"]
    np.testing.assert_array_equal(e, [1, 2, 3])
    np.testing.assert_allclose(loss, [2.0, 1.2, 0.7], rtol=1e-6)
    np.testing.assert_allclose(logs["validation"]["accuracy"][1], [0.25, 0.5, 0.7], rtol=1e-6)
    np.testing.assert_allclose(logs["train"]["learning_rate"][1], [0.05] * 3, rtol=1e-6)

    figure = plots.plot_training_curves(
        [tmp_path / "classify", tmp_path / "detect"], dpi=70, save=tmp_path / "t.png"
    )
    _png(tmp_path / "t.png", figure.get_size_inches(), 70)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[:3] == ["classify: loss", "classify: accuracy", "classify: learning rate"]
    assert titles[3:5] == ["detect: loss", "detect: learning rate"]
    train, validation = figure.axes[0].get_lines()
    np.testing.assert_allclose(train.get_ydata(), [2.0, 1.2, 0.7], rtol=1e-6)
    np.testing.assert_allclose(validation.get_ydata(), [2.2, 1.5, 1.1], rtol=1e-6)
    with pytest.raises(ValueError, match="No training logs"):
        plots.read_training_logs(tmp_path / "empty")

"""Detection inference: geometry of predicted boxes, the dense box set, the merged output."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf import detection
from overfeat_tf.config import TINY
from overfeat_tf.inference import LevelOutput
from overfeat_tf.models import OverFeat
from overfeat_tf.pyramid import build_pyramid


def _deltas_for(box, level_hw, original_hw, flipped, out_hw, stride, window, num_classes):
    """NumPy: the regressor output that makes every cell predict `box` (original px)."""
    (hs, ws), (h0, w0) = level_hw, original_hw
    y0, x0, y1, x1 = box[0] * hs / h0, box[1] * ws / w0, box[2] * hs / h0, box[3] * ws / w0
    if flipped:
        x0, x1 = ws - x1, ws - x0
    out = np.zeros((*out_hw, num_classes, 4), "float32")
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            oy, ox = i * stride, j * stride
            out[i, j] = np.array([y0 - oy, x0 - ox, y1 - oy, x1 - ox]) / window
    return out.reshape(*out_hw, num_classes * 4)


@pytest.mark.parametrize("stride", ["fine", "coarse"])
def test_every_cell_maps_its_box_back_to_the_original_image(stride):
    original = (300, 410)
    box = np.array([40.0, 75.5, 260.0, 390.0])  # yxyx px of the original image
    image = tf.zeros((*original, 3))
    step = TINY.fine_stride if stride == "fine" else TINY.coarse_stride
    for level in build_pyramid(image, TINY, scales=(231, 290, (300, 420)), flips=True):
        hs, ws = level.size.numpy()
        out_hw = (TINY.output_size(hs, stride), TINY.output_size(ws, stride))
        deltas = np.stack(
            [
                _deltas_for(box, (hs, ws), original, f, out_hw, step, TINY.crop_size, 3)
                for f in level.flipped.numpy()
            ]
        )
        logits = np.random.default_rng(0).normal(size=(*deltas.shape[:3], 3)).astype("float32")
        output = LevelOutput(level, {"class_logits": logits, "box_deltas": deltas}, step, 231)
        boxes, *_ = detection.level_boxes(output, num_classes=3, top_k=2)
        want = box / np.array([*original, *original])
        assert boxes.shape == (2 * out_hw[0] * out_hw[1] * 2, 4)
        np.testing.assert_allclose(boxes.numpy(), np.broadcast_to(want, boxes.shape), atol=1e-5)


def test_level_scores_and_classes_are_the_top_k_probabilities():
    level = build_pyramid(tf.zeros((231, 231, 3)), TINY, scales=(263,), flips=False)[0]
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 3, 3, 5)).astype("float32")  # 4 classes + background
    output = LevelOutput(level, {"class_logits": logits}, 16, 231)
    boxes, scores, classes, class_scores = detection.level_boxes(output, num_classes=4, top_k=2)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    top = np.argsort(-probs[0, ..., :4].max(axis=(0, 1)))[:2]
    np.testing.assert_allclose(
        class_scores.numpy()[0], probs[0, ..., :4].max(axis=(0, 1)), rtol=1e-6
    )
    np.testing.assert_array_equal(np.unique(classes.numpy()), np.sort(top))
    np.testing.assert_allclose(
        np.sort(scores.numpy()), np.sort(probs[0][..., top].reshape(-1)), rtol=1e-6
    )
    # without a regressor each window is its own box: cell (0, 0) sees level px
    # [0, 0, 231, 231] of the 263x263 level, i.e. 231/263 of the original image's side
    np.testing.assert_allclose(boxes.numpy()[0], [0, 0, 231 / 263, 231 / 263], atol=1e-6)


@pytest.fixture(scope="module")
def detector():
    keras.utils.set_random_seed(3)
    names = [f"shape{i}" for i in range(TINY.num_classes)]
    return OverFeat(
        "tiny",
        regressor="class_specific",
        background=True,
        class_names=names,
        kernel_initializer="he_normal",
    )


def test_detect_tensor_in_graph_and_notebook_api_agree(detector):
    image = np.random.default_rng(2).uniform(0, 255, size=(260, 330, 3)).astype("float32")
    options = detection.DetectionOptions(scales=(231, 280), top_k=2, max_detections=20)
    fn = tf.function(
        lambda x: detection.detect_tensor(detector, x, options),
        input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
    )
    out = fn(image)
    n = int(out["num_detections"])
    assert out["detection_boxes"].shape == (20, 4) and 0 < n <= 20
    assert out["class_scores"].shape == (TINY.num_classes,)
    scores = out["detection_scores"].numpy()
    assert np.all(np.diff(scores[:n]) <= 0) and not scores[n:].any()
    found = detection.detect(detector, image, options)
    np.testing.assert_allclose(
        found["boxes"] / [260, 330, 260, 330], out["detection_boxes"][:n], atol=1e-5
    )
    assert found["class_names"][0] == f"shape{found['class_ids'][0]}"
    # the merge conserves confidence: accumulated scores add up to the merged boxes' scores
    options = options.replace(max_detections=4000)
    scores = detection.detect_tensor(detector, image, options)["detection_scores"].numpy()
    _, dense_scores, _, _ = detection.dense_boxes(detector, image, options)
    kept = np.sort(dense_scores.numpy())[::-1][: options.max_boxes]
    assert np.isclose(scores.sum(), kept[kept >= options.score_threshold].sum(), rtol=1e-4)


def test_localize_gives_one_box_per_class(detector):
    image = np.random.default_rng(4).uniform(0, 255, size=(240, 300, 3)).astype("uint8")
    found = detection.localize(detector, image, guesses=3, scales=(231,))
    assert len(found["class_ids"]) == len(set(found["class_ids"].tolist())) <= 3
    assert found["boxes"].shape[1] == 4


def test_options_are_checked():
    with pytest.raises(ValueError, match="top_k"):
        detection.DetectionOptions(top_k=0)
    with pytest.raises(ValueError, match="score_threshold"):
        detection.DetectionOptions(score_threshold=1.5)
    with pytest.raises(ValueError, match="scale"):
        detection.DetectionOptions(scales=(-3,))


def test_nms_keeps_the_best_box_of_each_overlapping_group_per_class():
    boxes = tf.constant(
        [[0, 0, 10, 10], [0, 1, 10, 11], [0, 0, 10, 10], [20, 20, 30, 30]], tf.float32
    )
    scores = tf.constant([0.9, 0.8, 0.7, 0.6])
    classes = tf.constant([1, 1, 2, 1])
    out = detection.class_nms(boxes, scores, classes, iou=0.5, max_output=6)
    assert int(out.num_merged) == 3
    np.testing.assert_allclose(out.scores.numpy()[:3], [0.9, 0.7, 0.6])
    np.testing.assert_array_equal(out.classes.numpy()[:3], [1, 2, 1])
    assert out.boxes.shape == (6, 4) and not out.scores.numpy()[3:].any()


def test_detect_with_nms_option(detector):
    image = np.random.default_rng(5).uniform(0, 255, size=(240, 260, 3)).astype("float32")
    options = detection.DetectionOptions(scales=(231,), top_k=1, combine="nms", max_detections=10)
    out = detection.detect_tensor(detector, image, options)
    n = int(out["num_detections"])
    assert 0 < n <= 10 and np.all(out["detection_members"].numpy()[:n] == 1)

"""The box stage: geometry of predicted boxes, top-k scores, detection options."""

import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf.architecture.config import TINY
from overfeat_tf.models import detection
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.models.inference import LevelOutput
from overfeat_tf.ops.pyramid import build_pyramid


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
        want = box  # pixels of the original image
        assert boxes.shape == (2 * out_hw[0] * out_hw[1] * 2, 4)
        np.testing.assert_allclose(boxes.numpy(), np.broadcast_to(want, boxes.shape), atol=2e-3)


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
    # [0, 0, 231, 231] of the 263x263 level, i.e. 231/263 of the original image's side (px)
    side = 231 / 263 * 231
    np.testing.assert_allclose(boxes.numpy()[0], [0, 0, side, side], atol=1e-3)


def test_options_are_checked(tiny_net):
    net = tiny_net()
    for bad, message in [
        ({"top_k": 0}, "top_k"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"scales": (-3,)}, "scale"),
        ({"max_boxes": True}, "max_boxes"),
        ({"stride": "medium"}, "stride"),
        ({"max_aspect_ratio": 0.5}, "max_aspect_ratio"),
        ({"flips": 1}, "flips"),
    ]:
        with pytest.raises(ValueError, match=message):
            OverFeatDetector(net, **bad)
    with pytest.raises(ValueError, match="Unknown detector options"):
        OverFeatDetector(net).with_options(top_j=3)

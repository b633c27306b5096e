"""The detector merges boxes in pixels of the original image, so the canvas around the same
objects does not change what merges.

`match_score` (centre distance over the smaller box's side, plus 1 - IoU) is invariant to one
scale on both axes but not to a different scale per axis: on normalized coordinates of a 300 x
900 image, two 100 x 100 px boxes 30 px apart horizontally would merge at t = 0.7 (0.635) and
two boxes 25 px apart vertically would not (0.833); in pixels they score 0.762 and 0.650. Here
the boxes go through the detector's whole box stage (`level_boxes` -> `kept_boxes` ->
`decode`) from crafted network outputs.
"""

import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.models.inference import LevelOutput
from overfeat_tf.ops.pyramid import Level
from tests.merge_reference import mutual_merge_numpy

HORIZONTAL = [[100.0, 100.0, 200.0, 200.0], [100.0, 130.0, 200.0, 230.0]]  # 30 px apart in x
VERTICAL = [[100.0, 100.0, 200.0, 200.0], [125.0, 100.0, 225.0, 200.0]]  # 25 px apart in y
LEVEL = (231, 247)  # tiny at the fine stride (16 px): a 1 x 2 output map


def _level_output(boxes, original):
    """A level whose two output cells predict `boxes` (yxyx px of an `original` (H, W) image)
    for class 0 at probability ~0.9; the pyramid level is LEVEL px, unflipped."""
    (hs, ws), (h0, w0) = LEVEL, original
    deltas = np.zeros((1, 1, 2, 3 * 4), np.float32)  # 3 classes, class-specific
    for j, (y0, x0, y1, x1) in enumerate(boxes):
        level_box = np.array([y0 * hs / h0, x0 * ws / w0, y1 * hs / h0, x1 * ws / w0])
        deltas[0, 0, j, :4] = (level_box - [0, 16 * j, 0, 16 * j]) / 231  # window units
    logits = np.tile(np.array([4.0, 0.0, 0.0, 1.5], np.float32), (1, 1, 2, 1))  # + background
    level = Level(
        image=tf.zeros([1, hs, ws, 3]),
        size=tf.constant(LEVEL, tf.int32),
        original_size=tf.constant(original, tf.int32),
        factors=tf.constant([hs / h0, ws / w0], tf.float32),
        flipped=tf.constant([False]),
        scale=LEVEL,
    )
    return LevelOutput(level, {"class_logits": logits, "box_deltas": deltas}, 16, 231)


def _merged(detector, boxes, original):
    dense = detector.dense_boxes([_level_output(boxes, original)])
    out = detector.decode(*dense, tf.constant(original))
    n = int(out["num_detections"])
    size = np.array(original * 2, np.float32)
    return out["detection_boxes"].numpy()[:n] * size, out["detection_scores"].numpy()[:n], dense


@pytest.fixture(scope="module")
def detector(tiny_net):
    return OverFeatDetector(tiny_net(0), top_k=1, score_threshold=0.5).with_options(
        merge_threshold=0.7
    )


@pytest.mark.parametrize(("pair", "merges"), [(HORIZONTAL, False), (VERTICAL, True)])
def test_the_same_boxes_merge_alike_on_any_canvas(detector, pair, merges):
    square, _, _ = _merged(detector, pair, (300, 300))
    wide, _, dense = _merged(detector, pair, (300, 900))
    assert len(square) == len(wide) == (1 if merges else 2)
    np.testing.assert_allclose(wide, square, atol=1e-3)
    # exactly what the NumPy reference of the merge gives on the pixel boxes
    boxes, scores, classes = (np.asarray(t) for t in dense[:3])
    np.testing.assert_allclose(boxes, pair, atol=1e-3)  # the box stage's output: pixels
    want_boxes, want_scores, _, _ = mutual_merge_numpy(boxes, scores, classes, 0.7)
    got, got_scores, _ = _merged(detector, pair, (300, 900))
    np.testing.assert_allclose(got, want_boxes[: len(got)], atol=1e-3)
    np.testing.assert_allclose(got_scores, want_scores[: len(got)], rtol=1e-5)

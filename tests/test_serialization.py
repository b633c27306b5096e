"""Every layer, decoder, loss and model of the package through the one harness (tests/harness.py):
config round trips, eager == tf.function == tf.data, `.keras` round trips and SavedModels
reloaded and called with new image sizes and batch sizes."""

import numpy as np
import pytest

from overfeat_tf.models import decoders, losses
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.models.layers import DenseOffsetPooling, MatmulConv2D, OffsetInterleave
from tests.harness import check_config_round_trip, run_layer_test, run_model_test


def _x(rng, *shape):
    return rng.normal(size=shape).astype("float32")


@pytest.mark.parametrize("stride", ["fine", "coarse"])
def test_dense_offset_pooling(stride, rng):
    # [B, H, W, C] -> [k*k*B, h, w, C] (fine: every offset; coarse: offset 0), k = 2
    out = run_layer_test(
        DenseOffsetPooling,
        {"pool_size": 2, "stride": stride, "window": 3},
        [_x(rng, 2, 11, 12, 4)],
        expected_output_shape=(8, 5, 6, 4) if stride == "fine" else (2, 5, 6, 4),
    )
    assert out.dtype == "float32"


def test_offset_interleave(rng):
    # k*k*B maps of [h, w] -> B maps of [k*h, k*w] (cut to what the input allows)
    pooled, image = _x(rng, 8, 3, 4, 5), _x(rng, 2, 11, 13, 5)
    run_layer_test(
        OffsetInterleave,
        {"pool_size": 2, "stride": "fine"},
        [(pooled, image)],
        expected_output_shape=(2, 6, 8, 5),
    )


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_matmul_conv(padding, rng):
    run_layer_test(
        MatmulConv2D,
        {"filters": 6, "kernel_size": 3, "padding": padding, "kernel_initializer": "he_normal"},
        [_x(rng, 2, 7, 9, 4)],
        expected_output_shape=(2, 5, 7, 6) if padding == "valid" else (2, 7, 9, 6),
    )


def test_decoders(rng):
    boxes = np.array([[10, 10, 60, 60], [12, 11, 61, 60], [100, 100, 150, 170]], "float32")
    scores, classes = np.array([0.9, 0.8, 0.7], "float32"), np.array([1, 1, 2], "int32")
    for layer, kwargs in [
        (decoders.GreedyMergeDecoder, {"merge_threshold": 0.5, "max_detections": 4}),
        (decoders.NMSDecoder, {"iou_threshold": 0.5, "max_detections": 4}),
    ]:
        out = run_layer_test(layer, kwargs, [boxes, scores, classes])
        assert out["detection_boxes"].shape == (4, 4) and int(out["num_detections"]) == 2


def test_losses():
    for loss in (losses.MinedDetectionLoss(negative_ratio=2.0), losses.WindowBoxLoss()):
        check_config_round_trip(loss)


def test_overfeat_backbone(tiny_net, rng, tmp_path):
    images = rng.uniform(0, 255, (2, 247, 263, 3)).astype("float32")
    others = [
        rng.uniform(0, 255, size).astype("float32") for size in [(1, 231, 231, 3), (3, 279, 247, 3)]
    ]
    out = run_model_test(tiny_net(1), images, tmp_path, others)
    assert out["class_logits"].shape == (2, 2, 3, 4) and out["box_deltas"].shape == (2, 2, 3, 12)


def test_overfeat_detector(tiny_net, rng, tmp_path):
    detector = OverFeatDetector(tiny_net(2), scales=(231, 247), top_k=2).with_options(
        max_detections=7
    )
    images = rng.integers(0, 256, (2, 240, 250, 3)).astype("uint8")
    others = [
        rng.integers(0, 256, size).astype("uint8") for size in [(1, 231, 300, 3), (3, 260, 240, 3)]
    ]
    out = run_model_test(detector, images, tmp_path, others)
    assert out["detection_boxes"].shape == (2, 7, 4) and out["classes"].shape == (2, 5)

"""`.keras` files saved by earlier releases still load: the registered class names and every
option kept, the same weights (the same network outputs), and a detector that runs.

tests/data/detector_saved_by_0.1.0.keras was written by overfeat_tf 0.1.0 (tiny, 3 classes +
background, a class-specific regressor, `GreedyMergeDecoder(0.6, 20, "sequential")`, scales
(231, (247, 300)), top_k 3, max_boxes 500); the .npz beside it holds an image and that
release's backbone outputs on it.
"""

from pathlib import Path

import keras
import numpy as np

import overfeat_tf  # noqa: F401 (registers the package's classes)
from overfeat_tf.models.decoders import GreedyMergeDecoder
from overfeat_tf.models.detector import OverFeatDetector

DATA = Path(__file__).parent / "data"


def test_a_detector_saved_by_0_1_0_loads_with_its_options_and_weights():
    detector = keras.models.load_model(DATA / "detector_saved_by_0.1.0.keras")  # safe_mode on
    assert isinstance(detector, OverFeatDetector)
    assert isinstance(detector.prediction_decoder, GreedyMergeDecoder)
    options = detector.options
    assert options["scales"] == [231, [247, 300]] and options["top_k"] == 3
    assert options["max_boxes"] == 500 and options["merge_threshold"] == 0.6
    assert options["max_detections"] == 20 and options["combine"] == "merge"
    assert detector.class_names == ["disk", "ring", "star"]
    saved = np.load(DATA / "detector_saved_by_0.1.0.npz")
    out = detector.backbone(saved["image"].astype("float32"))
    for name in ("class_logits", "box_deltas"):
        np.testing.assert_allclose(np.asarray(out[name]), saved[name], rtol=1e-5, atol=1e-5)
    found = detector.predict(saved["image"], verbose=0)
    assert found["detection_boxes"].shape == (1, 20, 4)
    assert 0 < int(found["num_detections"][0]) <= 20

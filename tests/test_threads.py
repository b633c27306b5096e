"""`utils.threads.ordered_map` and the evaluations that run images two at a time."""

import threading
import time

import numpy as np
import pytest

from overfeat_tf.evaluation import detection as detection_eval
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.utils.threads import ordered_map


def test_ordered_map_keeps_the_input_order_and_overlaps_calls():
    running, most = [0], [0]
    lock = threading.Lock()

    def slow(x: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02 * (5 - x % 5))  # later items finish first
        with lock:
            running[0] -= 1
        return x * x

    got = list(ordered_map(slow, range(10), workers=3))
    assert got == [(x, x * x) for x in range(10)]
    assert most[0] == 3  # three calls were in flight at once
    assert list(ordered_map(slow, range(4), workers=1)) == [(x, x * x) for x in range(4)]


def test_ordered_map_reads_lazily_and_raises_at_the_failing_item():
    read = []

    def items():
        for x in range(100):
            read.append(x)
            yield x

    def fail_on_3(x: int) -> int:
        if x == 3:
            raise ValueError("bad item 3")
        return x

    results = ordered_map(fail_on_3, items(), workers=2)
    assert [next(results) for _ in range(3)] == [(0, 0), (1, 1), (2, 2)]
    assert len(read) <= 5  # at most `workers` ahead of what was yielded
    with pytest.raises(ValueError, match="bad item 3"):
        next(results)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be a positive int"):
            list(ordered_map(abs, [1], workers=bad))


def test_detection_evaluation_is_the_same_with_one_or_two_images_in_flight(tiny_net):
    """Two images at once (the default) gives what one at a time gives, bit for bit."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    examples = [
        {
            "image": rng.integers(0, 256, (160 + 20 * i, 200 + 10 * i, 3), dtype=np.uint8),
            "objects": {
                "bbox": np.array([[0.1, 0.2, 0.7, 0.6]], np.float32),
                "label": np.array([i % 3], np.int64),
            },
            "label": np.int64(i % 3),
        }
        for i in range(5)
    ]
    spec = {
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "objects": {
            "bbox": tf.TensorSpec([None, 4], tf.float32),
            "label": tf.TensorSpec([None], tf.int64),
        },
        "label": tf.TensorSpec([], tf.int64),
    }

    def split() -> tf.data.Dataset:
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)

    detector = OverFeatDetector(tiny_net(4), scales=(231, 263), score_threshold=0.0)
    one, two = (detection_eval.evaluate_detection(detector, split(), workers=w) for w in (1, 2))
    for result in (one, two):
        for key in ("seconds", "first_image_seconds", "seconds_per_image"):
            result.pop(key)
    assert one == two and one["examples"] == 5
    assert one["merge"]["detections_per_image"] > 0

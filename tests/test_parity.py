"""One decode path: the same image gets the same detections from `predict`, `model(images)`,
the notebook `detect`, the evaluation, the predict command and a reloaded export
(`serving_default`, `detect_images`), because they all run `OverFeatDetector.detect_batch`.

The detector is under-trained on purpose (a random trunk, a regressor that predicts about its
own window, as a new regressor starts): its boxes are many near-ties, where two differently
compiled merges would part ways. The images are real photos of different sizes.
"""

import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from overfeat_tf.evaluation import detection as detection_eval
from overfeat_tf.export import serving
from overfeat_tf.models.detector import OverFeatDetector, detect
from overfeat_tf.ops.resizing import resize
from overfeat_tf.training.tasks import init_window_regressor

PHOTOS = {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee()}  # 300x451, 400x600


@pytest.fixture(scope="module")
def detector(tiny_net):
    net = tiny_net(5)
    init_window_regressor(net, seed=5)
    return OverFeatDetector(
        net, scales=(231, 295), top_k=3, max_boxes=1500, score_threshold=0.0
    ).with_options(merge_threshold=0.3)


@pytest.fixture(scope="module")
def loaded(detector, tmp_path_factory):
    version = serving.export_model(detector, tmp_path_factory.mktemp("parity") / "serving")
    return tf.saved_model.load(str(version))


def _same(got, want, name, exact=True):
    """Bitwise for one image (the same function on the same batch); across batch sizes to
    float rounding (oneDNN may block a batch of 2 differently)."""
    n = int(want["num_detections"])
    assert int(got["num_detections"]) == n > 10, name
    for key, tolerance in (
        ("detection_boxes", {"atol": 1e-5}),
        ("detection_scores", {"rtol": 1e-5}),
    ):
        if exact:
            np.testing.assert_array_equal(got[key][:n], want[key][:n], err_msg=name)
        else:
            np.testing.assert_allclose(got[key][:n], want[key][:n], err_msg=name, **tolerance)
    np.testing.assert_array_equal(got["detection_classes"][:n], want["detection_classes"][:n])


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_every_entry_point_gives_the_same_detections(detector, loaded, name):
    image = PHOTOS[name]
    want = {k: np.asarray(v) for k, v in detector.detect_fn(tf.constant(image, tf.float32)).items()}
    batch = image[np.newaxis]
    paths = {
        "predict": detector.predict(batch, verbose=0),
        "model(images)": detector(batch),
        "serving_default": loaded.signatures["serving_default"](
            images=tf.constant([tf.io.encode_png(image).numpy()])
        ),
        "detect_images": loaded.signatures["detect_images"](images=tf.constant(batch)),
    }
    for path, out in paths.items():
        _same({k: np.asarray(v)[0] for k, v in out.items()}, want, f"{name}: {path}")
    found = detect(detector, image)  # pixels of the image
    n = int(want["num_detections"])
    assert len(found["scores"]) == n
    size = np.array(image.shape[:2] * 2, np.float32)
    np.testing.assert_allclose(found["boxes"] / size, want["detection_boxes"][:n], atol=1e-5)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_the_evaluation_scores_bitwise_what_predict_answers(detector, name):
    image = tf.constant(PHOTOS[name], tf.float32)
    want = {k: np.asarray(v) for k, v in detector.detect_fn(image).items()}
    predicted = {k: v[0] for k, v in detector.predict(PHOTOS[name][None], verbose=0).items()}
    evaluated = detection_eval.DetectionEvaluator(detector)(image)["merge"]
    n = int(want["num_detections"])
    assert len(evaluated["scores"]) == n > 10
    for field in ("boxes", "scores", "classes"):
        np.testing.assert_array_equal(evaluated[field], want[f"detection_{field}"][:n])
        np.testing.assert_array_equal(predicted[f"detection_{field}"], want[f"detection_{field}"])


def test_a_batch_of_photos_resized_to_one_size(detector, loaded):
    batch = np.stack([np.asarray(resize(p, (300, 400)), np.uint8) for p in PHOTOS.values()])
    predicted = detector.predict(batch, verbose=0)
    exported = loaded.signatures["detect_images"](images=tf.constant(batch))
    for b in range(len(batch)):
        want = {
            k: np.asarray(v)
            for k, v in detector.detect_fn(tf.constant(batch[b], tf.float32)).items()
        }
        _same({k: v[b] for k, v in predicted.items()}, want, f"predict {b}", exact=False)
        _same({k: np.asarray(v)[b] for k, v in exported.items()}, want, f"export {b}", exact=False)

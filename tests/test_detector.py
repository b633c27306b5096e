"""`OverFeatDetector` (backbone + box stage + prediction decoder, keras-hub shaped): decoders
against NumPy references, config round trips, `predict` equal to the serving signatures for
every model kind the package trains, a fresh-process `load_model`, evaluation on each kind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import overfeat_tf
from overfeat_tf.evaluation import classification as evaluation
from overfeat_tf.evaluation import detection as detection_eval
from overfeat_tf.export import serving
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.models.decoders import BoxMergeDecoder, NMSDecoder
from overfeat_tf.models.detector import OverFeatDetector, as_detector, detect, localize
from tests.merge_reference import mutual_merge_numpy

NAMES = ["circle", "square", "triangle"]
SCALES = (231, 247)
KINDS = {  # what train.py saves for each task: (background, regressor)
    "classify": (False, None),
    "detect": (True, None),
    "localize": (True, "class_specific"),
}


def _net(kind: str, seed: int = 0) -> OverFeat:
    keras.utils.set_random_seed(seed)
    background, regressor = KINDS[kind]
    return OverFeat(
        "tiny",
        class_names=NAMES,
        background=background,
        regressor=regressor,
        kernel_initializer="he_normal",
    )


def _detector(kind: str) -> OverFeatDetector:
    return OverFeatDetector(
        _net(kind), BoxMergeDecoder(max_detections=20), scales=SCALES, max_boxes=600
    )


def _images(n: int = 2, h: int = 150, w: int = 190, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3)).astype(np.uint8)


# --- decoders against NumPy references ----------------------------------------------------------


def _random_boxes(rng: np.random.Generator, n: int, classes: int):
    yx = rng.uniform(0, 0.7, (n, 2))
    hw = rng.uniform(0.05, 0.3, (n, 2))
    boxes = np.concatenate([yx, yx + hw], axis=1).astype(np.float32)
    return boxes, rng.uniform(0.01, 1, n).astype(np.float32), rng.integers(0, classes, n)


def test_merge_decoder_equals_the_numpy_merge(rng):
    boxes, scores, classes = _random_boxes(rng, 60, 3)
    decoder = BoxMergeDecoder(0.7, 100)
    out = decoder(boxes, scores, classes)
    want_boxes, want_scores, want_classes, members = mutual_merge_numpy(boxes, scores, classes)
    n = int(out["num_detections"])
    assert n == len(want_scores)
    np.testing.assert_allclose(out["detection_boxes"][:n], want_boxes, atol=1e-5)
    np.testing.assert_allclose(out["detection_scores"][:n], want_scores, rtol=1e-5)
    np.testing.assert_array_equal(out["detection_classes"][:n], want_classes)
    np.testing.assert_array_equal(out["detection_members"][:n], members)
    np.testing.assert_array_equal(out["detection_boxes"][n:], 0)


def _nms_numpy(boxes, scores, classes, iou):
    """Per-class greedy NMS: best first, drop boxes of the class with IoU > iou."""
    order = np.argsort(-scores, kind="stable")
    kept = []
    for i in order:
        ok = True
        for j in kept:
            if classes[j] != classes[i]:
                continue
            inter_hw = np.clip(
                np.minimum(boxes[i, 2:], boxes[j, 2:]) - np.maximum(boxes[i, :2], boxes[j, :2]),
                0,
                None,
            )
            inter = inter_hw.prod()
            union = np.prod(boxes[i, 2:] - boxes[i, :2]) + np.prod(boxes[j, 2:] - boxes[j, :2])
            if inter / (union - inter) > iou:
                ok = False
                break
        if ok:
            kept.append(i)
    return np.array(kept, np.int64)


def test_nms_decoder_equals_a_numpy_nms(rng):
    boxes, scores, classes = _random_boxes(rng, 80, 3)
    out = NMSDecoder(iou_threshold=0.4, max_detections=100)(boxes, scores, classes)
    kept = _nms_numpy(boxes, scores, classes, 0.4)
    n = int(out["num_detections"])
    assert n == len(kept)
    np.testing.assert_allclose(out["detection_boxes"][:n], boxes[kept])
    np.testing.assert_allclose(out["detection_scores"][:n], scores[kept])
    np.testing.assert_array_equal(out["detection_classes"][:n], classes[kept])
    np.testing.assert_array_equal(out["detection_members"][:n], 1)


def test_class_agnostic_nms_decoder_equals_a_numpy_nms(rng):
    boxes, scores, classes = _random_boxes(rng, 80, 3)
    out = NMSDecoder(0.4, 100, per_class=False)(boxes, scores, classes)
    kept = _nms_numpy(boxes, scores, np.zeros_like(classes), 0.4)
    n = int(out["num_detections"])
    assert n == len(kept) < len(_nms_numpy(boxes, scores, classes, 0.4))
    np.testing.assert_allclose(out["detection_boxes"][:n], boxes[kept])
    np.testing.assert_array_equal(out["detection_classes"][:n], classes[kept])


def test_decoders_inside_tf_data_equal_eager(rng):
    boxes, scores, classes = _random_boxes(rng, 40, 2)
    decoder = BoxMergeDecoder(max_detections=30)
    eager = decoder(boxes, scores, classes)
    ds = tf.data.Dataset.from_tensors((boxes, scores, classes)).map(
        lambda b, s, c: decoder(b, s, c)
    )
    in_data = next(iter(ds))
    for key, value in eager.items():
        np.testing.assert_allclose(in_data[key], value, err_msg=key)


@pytest.mark.parametrize(
    "decoder",
    [
        BoxMergeDecoder(0.5, 7, jit_compile=True),
        NMSDecoder(0.3, 9, per_class=False),
    ],
    ids=["merge", "nms"],
)
def test_decoder_config_round_trips(decoder):
    config = decoder.get_config()
    again = type(decoder).from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decoder))
    assert type(restored) is type(decoder) and restored.get_config() == config


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="merge_threshold"):
        BoxMergeDecoder(merge_threshold=0)
    with pytest.raises(ValueError, match="iou_threshold"):
        NMSDecoder(iou_threshold=1.5)
    with pytest.raises(ValueError, match="max_detections"):
        NMSDecoder(max_detections=0)
    with pytest.raises(ValueError, match="prediction_decoder"):
        OverFeatDetector(_net("classify"), prediction_decoder=keras.layers.Dense(2))
    with pytest.raises(ValueError, match="top_k"):
        OverFeatDetector(_net("classify"), top_k=0)
    with pytest.raises(ValueError, match="OverFeat"):
        OverFeatDetector(keras.Sequential([keras.layers.Dense(2)]))


# --- the detector -------------------------------------------------------------------------------


def test_detector_config_round_trips_with_its_options():
    options = dict(scales=[231, [247, 300]], flips=False, top_k=2, combine="nms", nms_iou=0.4)
    detector = as_detector(_net("localize"), **options, max_detections=9)
    again = OverFeatDetector.from_config(detector.get_config())
    want = {**OverFeatDetector.default_options(), **options, "max_detections": 9}
    assert again.options == detector.options == want
    assert isinstance(again.prediction_decoder, NMSDecoder)
    assert again.backbone.regressor == "class_specific" and again.class_names == NAMES
    assert detector.with_options(top_k=1).backbone is detector.backbone


def test_predict_call_and_notebook_detect_agree():
    detector = _detector("localize")
    images = _images()
    predicted = detector.predict(images, batch_size=1, verbose=0)
    called = detector(images)
    assert predicted["detection_boxes"].shape == (2, 20, 4)
    assert predicted["detection_class_names"].dtype == object
    for key, value in called.items():
        if value.dtype == tf.string:
            np.testing.assert_array_equal(predicted[key], value.numpy(), err_msg=key)
        else:
            np.testing.assert_allclose(predicted[key], value.numpy(), atol=1e-5, err_msg=key)
    found = detect(detector, images[1])
    n = int(predicted["num_detections"][1])
    assert 0 < n == len(found["scores"])
    np.testing.assert_allclose(found["boxes"] / [150, 190, 150, 190],
                               predicted["detection_boxes"][1, :n], atol=1e-5)  # fmt: skip
    np.testing.assert_array_equal(found["classes"], predicted["detection_classes"][1, :n])
    assert found["class_names"] == [NAMES[c] for c in found["classes"]]
    scores = predicted["detection_scores"][1]
    assert np.all(np.diff(scores[:n]) <= 0) and not scores[n:].any()
    guesses = localize(detector, images[1], guesses=2)
    assert len(guesses["classes"]) == len(set(guesses["classes"].tolist())) <= 2


def test_merge_conserves_confidence():
    detector = _detector("localize").with_options(max_detections=600)
    levels = detector.levels(tf.constant(_images(1)[0], tf.float32))
    boxes, scores, classes, _ = detector.dense_boxes(levels)
    out = detector.decode(boxes, scores, classes, tf.zeros([3]), tf.constant([150, 190]))
    assert np.isclose(out["detection_scores"].numpy().sum(), scores.numpy().sum(), rtol=1e-4)


def test_a_batch_of_one_image_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="images\\[None\\]"):
        _detector("classify")(_images(1)[0])


_FRESH = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    import overfeat_tf  # registers the classes; safe_mode stays on
    images = np.load(sys.argv[1])
    out = {}
    for path in sys.argv[3:]:
        model = keras.models.load_model(path)
        kind = path.rsplit("/", 1)[-1].split(".")[0]
        assert type(model).__name__ == "OverFeatDetector", type(model)
        out[kind + "_options"] = np.array(repr(model.options))
        for key, value in model.predict(images, verbose=0).items():
            out[f"{kind}/{key}"] = value.astype(str) if value.dtype == object else value
    np.savez(sys.argv[2], **out)
    """
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> (detector, its .keras path, its export's loaded SavedModel)."""
    tmp = tmp_path_factory.mktemp("detectors")
    out = {}
    for kind in KINDS:
        detector = _detector(kind)
        path = tmp / f"{kind}.keras"
        detector.save(path)
        version = serving.export_model(detector, tmp / f"serving_{kind}")
        out[kind] = (detector, path, tf.saved_model.load(str(version)))
    return out


def test_load_model_in_a_fresh_process_predicts_what_the_export_serves(saved, tmp_path):
    images = _images(2, 160, 200, seed=3)
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    paths = [str(saved[k][1]) for k in KINDS]
    command = [sys.executable, str(script), str(tmp_path / "images.npy"), str(tmp_path / "o.npz")]
    result = subprocess.run(
        [*command, *paths],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(tmp_path / "o.npz")
    encoded = tf.constant([tf.io.encode_png(image).numpy() for image in images])
    for kind, (detector, _, loaded) in saved.items():
        assert str(got[kind + "_options"]) == repr(detector.options), kind
        from_pixels = loaded.signatures["detect_images"](images=tf.constant(images))
        from_bytes = loaded.signatures["serving_default"](images=encoded)
        assert int(np.sum(got[f"{kind}/num_detections"])) > 0, kind
        for key, served in from_bytes.items():
            want = served.numpy()
            mine = got[f"{kind}/{key}"]
            if want.dtype == object:
                np.testing.assert_array_equal(mine, want.astype(str), err_msg=f"{kind} {key}")
            else:
                np.testing.assert_allclose(mine, want, atol=1e-5, err_msg=f"{kind} {key}")
            np.testing.assert_array_equal(from_pixels[key].numpy(), want, err_msg=key)


def _detection_examples(n: int = 3) -> tf.data.Dataset:
    """A tiny detection split: images with 1-2 boxes (normalized yxyx) and labels."""
    rng = np.random.default_rng(7)

    def gen():
        for i in range(n):
            image = rng.integers(0, 256, (150 + 10 * i, 190, 3)).astype(np.uint8)
            boxes = np.array([[0.1, 0.1, 0.6, 0.5], [0.3, 0.4, 0.9, 0.95]], np.float32)[: 1 + i % 2]
            labels = np.arange(len(boxes), dtype=np.int64) + i % 2
            yield {"image": image, "objects": {"bbox": boxes, "label": labels}, "label": i % 3}

    spec = {
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "objects": {
            "bbox": tf.TensorSpec([None, 4], tf.float32),
            "label": tf.TensorSpec([None], tf.int64),
        },
        "label": tf.TensorSpec([], tf.int64),
    }
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


@pytest.mark.parametrize("kind", list(KINDS))
def test_evaluation_runs_on_every_kind_of_model(saved, kind):
    detector = saved[kind][0]
    result = evaluation.evaluate(detector, _detection_examples(), scales=SCALES)
    assert result["examples"] == 3
    assert all(0 <= row["top1_error"] <= 100 for row in result["rows"])
    found = detection_eval.evaluate_detection(detector, _detection_examples(), "test")
    assert found["examples"] == 3 and found["objects"] == 4
    assert found["options"]["scales"] == list(SCALES)
    for combine in ("merge", "nms"):
        assert 0 <= found[combine]["localization_error"] <= 100
        assert found[combine]["detections_per_image"] > 0
        assert found[combine]["map"] is None or 0 <= found[combine]["map"] <= 1


def test_readme_notebook_section_runs_as_written(tmp_path, monkeypatch):
    """The README's "Using a model in a notebook" code block, on a real photo."""
    from skimage import data as skimage_data  # real photos, from the test extra

    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    text = open(readme, encoding="utf-8").read()
    section = text.split("## Using a model in a notebook", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    os.makedirs("runs/tiny")
    _detector("localize").save("runs/tiny/model.keras")
    keras.utils.save_img("image.jpg", skimage_data.chelsea())
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "model" in namespace and isinstance(namespace["model"], overfeat_tf.OverFeatDetector)

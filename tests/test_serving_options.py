"""Per-request options (SPEC §5, `detect_with_options`): score threshold, max detections, merge
threshold and top-k given per image, in the export (reloaded in a process that cannot import
overfeat_tf) and per call in Python (`OverFeatDetector.detect_images` / `model(images, ...)`).

One export of a tiny random-weight detector; one clean client process sends every request
(TF Serving's row format, converted to columns as the server does) and records each answer or
error, and the tests read its record.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf.data.image_io import decode_image
from overfeat_tf.export import serving
from overfeat_tf.models.detector import REQUEST_OPTIONS, OverFeatDetector
from overfeat_tf.models.inference import level_probabilities, spatial_max

MAX_DETECTIONS = 20
NUM_CLASSES = 3


def _jpeg(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((16, 16, 1), np.uint8))[:h, :w]
    return tf.io.encode_jpeg(pixels, quality=95).numpy()


IMAGES = [_jpeg(240, 320, 0), _jpeg(250, 250, 1)]


@pytest.fixture(scope="module")
def detector(tiny_net):
    return OverFeatDetector(tiny_net(3), scales=(231, 263), max_boxes=500).with_options(
        max_detections=MAX_DETECTIONS
    )


def _request(images, **options):
    """A REST body in TF Serving's row format: one instance per image, its options in it."""
    instances = []
    for b, image in enumerate(images):
        row = {"images": {"b64": base64.b64encode(IMAGES[image]).decode()}}
        row.update({name: values[b] for name, values in options.items()})
        instances.append(row)
    return {"signature_name": "detect_with_options", "instances": instances}


def _own(detector, count):
    return {name: [value] * count for name, value in detector.request_defaults().items()}


def _requests(detector):
    """name -> (REST body, what it should do). Image 0 is 240x320, image 1 250x250."""
    own = detector.request_defaults()
    per_image = {  # the same image three times, then the other: a row's options are its own
        "score_threshold": [own["score_threshold"], 0.3, own["score_threshold"], 0.2],
        "max_detections": [MAX_DETECTIONS, MAX_DETECTIONS, 5, 3],
        "merge_threshold": [own["merge_threshold"], 0.7, 0.7, 0.3],
        "top_k": [NUM_CLASSES, NUM_CLASSES, NUM_CLASSES, 1],
    }
    requests = {  # the same images, so the same batches through the network
        "own": _request([0, 0, 0, 1], **_own(detector, 4)),
        "per_image": _request([0, 0, 0, 1], **per_image),
    }
    bad = {
        "score_threshold": [1.5, float("nan"), -0.1],
        "max_detections": [0, MAX_DETECTIONS + 1],
        "merge_threshold": [0.0, float("inf")],
        "top_k": [0, NUM_CLASSES + 1],
    }
    for name, values in bad.items():
        for value in values:
            options = _own(detector, 2)
            options[name] = [options[name][0], value]
            requests[f"bad {name} {value}"] = _request([0, 1], **options)
    # TF Serving's columnar format lets inputs differ in length: the graph must check
    columns = {"images": [{"b64": base64.b64encode(IMAGES[i]).decode()} for i in (0, 1)]}
    columns.update(
        {
            name: values[:1] if name == "top_k" else values
            for name, values in _own(detector, 2).items()
        }
    )
    requests["one top_k for two images"] = {
        "signature_name": "detect_with_options",
        "inputs": columns,
    }
    return requests


_CLIENT = textwrap.dedent(
    """
    import base64, json, sys
    sys.modules["overfeat_tf"] = None  # any import of the package now fails
    import tensorflow as tf

    version_dir, requests_path, output = sys.argv[1:]
    model = tf.saved_model.load(version_dir)
    requests = json.load(open(requests_path))

    def columns(body):  # TF Serving's row / columnar format -> one tensor per input
        signature = model.signatures[body["signature_name"]]
        specs = signature.structured_input_signature[1]
        got = {}
        for name, spec in specs.items():
            if "inputs" in body:
                values = body["inputs"][name]
            else:
                values = [row[name] for row in body["instances"]]
            if spec.dtype == tf.string:
                values = [base64.b64decode(v["b64"]) for v in values]
            got[name] = tf.constant(values, spec.dtype)
        return signature, got

    def listed(value):  # JSON-ready: nested lists, bytes decoded
        if isinstance(value, list):
            return [listed(v) for v in value]
        return value.decode() if isinstance(value, bytes) else value

    def answer(body):
        signature, inputs = columns(body)
        return {k: listed(v.numpy().tolist()) for k, v in signature(**inputs).items()}

    normal = dict(requests["own"])
    normal["signature_name"] = "serving_default"
    record = {}
    for name, body in requests.items():
        try:
            record[name] = {"answer": answer(body)}
        except tf.errors.InvalidArgumentError as error:
            record[name] = {"error": error.message}
            record[name]["next"] = answer(requests["per_image"])["num_detections"]
    images = [base64.b64decode(r["images"]["b64"]) for r in requests["own"]["instances"]]
    out = model.signatures["serving_default"](images=tf.constant(images))
    record["serving_default"] = {"answer": {k: listed(v.numpy().tolist()) for k, v in out.items()}}
    imported = [m for m, v in sys.modules.items() if m.startswith("overfeat") and v is not None]
    record["imported"] = imported
    json.dump(record, open(output, "w"))
    """
)


@pytest.fixture(scope="module")
def served(detector, tmp_path_factory):
    """(the export's version dir, the clean client's record of every request)."""
    tmp = tmp_path_factory.mktemp("options")
    version = serving.export_model(detector, tmp / "serving")
    requests = _requests(detector)
    (tmp / "requests.json").write_text(json.dumps(requests))
    (tmp / "client.py").write_text(_CLIENT)
    output = tmp / "record.json"
    result = subprocess.run(
        [sys.executable, *map(str, (tmp / "client.py", version, tmp / "requests.json", output))],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(output.read_text())
    assert record.pop("imported") == []
    return version, record


def _rows(answer, b):
    """Row b of an answer, cut to its detections."""
    n = answer["num_detections"][b]
    return {
        "boxes": np.array(answer["detection_boxes"][b], np.float32),
        "scores": np.array(answer["detection_scores"][b], np.float32),
        "classes": np.array(answer["detection_classes"][b]),
        "names": answer["detection_class_names"][b],
        "n": n,
    }


def test_the_signature_and_its_options_are_in_the_metadata(detector, served):
    version, _ = served
    metadata = serving.read_metadata(version)
    assert "detect_with_options" in metadata["signatures"]
    options = metadata["request_options"]
    assert sorted(options) == sorted(REQUEST_OPTIONS)
    assert {name: o["default"] for name, o in options.items()} == detector.request_defaults()
    assert options["max_detections"]["max"] == MAX_DETECTIONS
    want = {"dtype": "int32", "default": 3, "min": 1, "max": 3, "min_excluded": False}
    assert options["top_k"] == want
    # the detector's top_k (5) is more than its classes: it runs (and advertises) 3
    assert detector.top_k == 5 and metadata["options"]["top_k"] == 5


def test_the_export_own_values_answer_bitwise_what_serving_default_does(served):
    _, record = served
    assert record["own"]["answer"] == record["serving_default"]["answer"]
    assert min(record["own"]["answer"]["num_detections"]) > 5


def test_each_image_gets_its_own_options_in_one_batch(detector, served):
    _, record = served
    answer = record["per_image"]["answer"]
    plain, strict, short, other = (_rows(answer, b) for b in range(4))
    own = _rows(record["own"]["answer"], 0)  # image 0 with the export's options
    for key in ("boxes", "scores", "classes"):
        np.testing.assert_array_equal(plain[key], own[key])
    # a higher score threshold: fewer windows, so other merged boxes
    assert strict["n"] < plain["n"]
    # max_detections: the best 5 rows of the same answer, bitwise, the rest padding
    assert short["n"] == 5
    for key in ("boxes", "scores", "classes"):
        np.testing.assert_array_equal(short[key][:5], plain[key][:5])
        np.testing.assert_array_equal(short[key][5:], 0)
    assert short["names"][:5] == plain["names"][:5] and set(short["names"][5:]) == {""}
    # every answer is the in-package per-call answer with the same options
    image = decode_image(IMAGES[0])
    # (image 0 alone, not in a batch of 3: equal up to the convolutions' rounding)
    want = detector.detect_image(image, score_threshold=0.3, merge_threshold=0.7)
    _close(strict, want)
    image = decode_image(IMAGES[1])
    want = detector.detect_image(
        image, score_threshold=0.2, max_detections=3, top_k=1, merge_threshold=0.3
    )
    _close(other, want)


def _close(row, want):
    assert row["n"] == int(want["num_detections"])
    np.testing.assert_allclose(row["scores"], want["detection_scores"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(row["boxes"], want["detection_boxes"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(row["classes"], want["detection_classes"].numpy())


def test_every_limit_is_honoured(detector, served):
    _, record = served
    answer = record["per_image"]["answer"]
    rows = [_rows(answer, b) for b in range(4)]
    for row, limit, threshold in zip(rows, [20, 20, 5, 3], [0.01, 0.3, 0.01, 0.2], strict=True):
        assert 0 < row["n"] <= limit
        # a merged box's score is the sum of its windows' probabilities, each >= the threshold
        assert (row["scores"][: row["n"]] >= threshold).all()
        assert (row["scores"][row["n"] :] == 0).all()
    # top_k = 1: each level's (and flip's) best class only
    image = tf.cast(decode_image(IMAGES[1]), tf.float32)
    best = set()
    for level in detector.levels(image):
        scores = spatial_max(level_probabilities(level, detector.num_classes))
        best |= set(np.argmax(scores.numpy(), axis=-1).tolist())
    assert len(best) < NUM_CLASSES  # the test can fail a wrong top_k
    assert set(rows[3]["classes"][: rows[3]["n"]].tolist()) <= best


def test_each_bad_value_is_rejected_by_name_and_range_and_the_next_request_works(served):
    _, record = served
    ranges = {
        "score_threshold": "must be in [0, 1]",
        "max_detections": f"must be in [1, {MAX_DETECTIONS}]",
        "merge_threshold": "must be finite and > 0",
        "top_k": f"must be in [1, {NUM_CLASSES}]",
    }
    bad = [name for name in record if name.startswith("bad ")]
    assert len(bad) == 9
    for name in bad:
        option = name.split()[1]
        got = record[name]
        assert "answer" not in got, name
        assert f"Bad {option}: {ranges[option]}" in got["error"], (name, got["error"])
        assert got["next"] == record["per_image"]["answer"]["num_detections"]
    got = record["one top_k for two images"]
    assert "Bad top_k: give one value per image" in got["error"], got["error"]
    assert "[2] [1]" in got["error"] and got["next"]


def test_model_call_takes_the_options_per_image(detector):
    images = np.stack([decode_image(IMAGES[0]).numpy()] * 2)
    out = detector(images, score_threshold=[0.01, 0.3], max_detections=tf.constant([20, 4]))
    for b, options in enumerate([{}, {"score_threshold": 0.3, "max_detections": 4}]):
        want = detector.detect_image(images[b], **options)
        assert int(out["num_detections"][b]) == int(want["num_detections"])
        np.testing.assert_allclose(out["detection_scores"][b], want["detection_scores"], rtol=1e-6)
    plain = detector.predict(images, verbose=0)  # the detector's own options
    np.testing.assert_array_equal(plain["num_detections"], detector(images)["num_detections"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": 4}, r"Bad top_k: must be in \[1, 3\] \(at most the number of classes\), got 4"),
        ({"score_threshold": 1.2}, r"Bad score_threshold: must be in \[0, 1\]"),
        ({"max_detections": 21}, r"Bad max_detections: must be in \[1, 20\]"),
        ({"max_detections": 2.0}, "max_detections must be an int"),
        ({"merge_threshold": -1.0}, "Bad merge_threshold: must be finite and > 0"),
        ({"score": 0.5}, "Unknown call options"),
    ],
)
def test_bad_python_options_are_value_errors(detector, options, message):
    with pytest.raises(ValueError, match=message):
        detector.detect_image(np.zeros((240, 240, 3), np.uint8), **options)


def test_bad_tensor_options_are_invalid_argument_errors(detector):
    images = np.zeros((2, 240, 240, 3), np.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Bad top_k: must be in"):
        detector.detect_images(images, top_k=tf.constant([1, 9]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="give one value per image"):
        detector.detect_images(images, score_threshold=tf.constant([0.1, 0.2, 0.3]))

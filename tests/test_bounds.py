"""What one request may cost: every pyramid level bounded whatever the image's shape, a bound
on the images of a request, error messages without raw input bytes.

The attack: tiny PNG strips (5000 x 2 px in 139 bytes) that a short-side pyramid would turn
into levels millions of pixels long. They go to a reloaded export in a process that cannot
import overfeat_tf (its peak memory measured), through `predict`, the notebook `detect` and the
predict CLI, with the main job's pyramid (short sides up to 1031).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf import predict
from overfeat_tf.data.image_io import decode_image
from overfeat_tf.export import serving
from overfeat_tf.models.detector import OverFeatDetector, detect
from overfeat_tf.ops import pyramid
from overfeat_tf.ops.resizing import DEFAULT_MAX_ASPECT_RATIO

SCALES = (247, 327, 439, 583, 775, 1031)  # the main job's pyramid (main_job.SHAPES_SCALES)
MAX_IMAGES = 4
STRIPS = {"5000x2": (5000, 2), "2x5000": (2, 5000), "1x20000": (1, 20000), "30000x1": (30000, 1)}
# Peak resident memory of the serving process for the worst request, measured in the test:
# tiny with this pyramid peaks near 1.3 GB (BENCHMARKS.md "Request bounds"); a level of the
# unbounded pyramid alone (1031 x 2.6 M px, float32) would be 32 GB.
PEAK_BOUND_GB = 3.0
RANDOM_BYTES = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()


def _strip_png(h, w):
    pixels = (np.arange(h * w, dtype=np.uint32).reshape(h, w, 1) * 37 % 251).astype(np.uint8)
    return tf.io.encode_png(np.repeat(pixels, 3, axis=2)).numpy()


PNGS = {name: _strip_png(*hw) for name, hw in STRIPS.items()}


@pytest.fixture(scope="module")
def exported(tiny_net, tmp_path_factory):
    """(detector, its .keras path, the export's version dir)."""
    tmp = tmp_path_factory.mktemp("bounds")
    detector = OverFeatDetector(tiny_net(3), scales=SCALES, max_boxes=1000)
    path = tmp / "tiny.keras"
    detector.save(path)
    options = serving.ExportOptions(max_images=MAX_IMAGES)
    exported = detector.with_options(max_detections=20)
    version = serving.export_model(exported, tmp / "serving", options=options)
    return detector, path, version


def test_every_level_is_bounded_by_the_scales_alone():
    for hw in [*STRIPS.values(), (300, 400), (400, 300), (1031, 1031)]:
        for config in ("tiny", "fast"):
            levels = pyramid.build_pyramid(tf.zeros([1, *hw, 3], tf.uint8), config, SCALES)
            for scale, level in zip(SCALES, levels, strict=True):
                short, long = pyramid.max_level_size(scale, config)
                size = sorted(level.size.numpy().tolist())
                assert size[0] <= short and size[1] <= long, (hw, scale, size)
                assert long <= scale * DEFAULT_MAX_ASPECT_RATIO
                assert (level.size[0] >= level.size[1]).numpy() == (hw[0] >= hw[1])
    # an image within the bound keeps its aspect ratio (up to the snap to the stride)
    (level,) = pyramid.build_pyramid(tf.zeros([300, 900, 3]), "tiny", [247])
    assert level.size.numpy().tolist() == [247, pyramid.snap_side(3 * 247, 231, 16)]
    # pairs are exact sizes: no bound needed
    (level,) = pyramid.build_pyramid(tf.zeros([5000, 2, 3]), "accurate", [(461, 569)])
    assert level.size.numpy().tolist() == [569, 461]


def test_metadata_states_the_bounds(exported):
    bounds = serving.read_metadata(exported[2])["bounds"]
    assert bounds["max_images"] == MAX_IMAGES
    assert bounds["max_aspect_ratio"] == DEFAULT_MAX_ASPECT_RATIO
    assert bounds["max_level_sizes"][-1] == [1031, 4119]  # 1031 x 4 snapped to 231 + 16 n
    want = 2 * sum(a * b for a, b in bounds["max_level_sizes"])
    assert bounds["max_pyramid_pixels"] == want


_CLIENT = textwrap.dedent(
    """
    import json, resource, sys
    sys.modules["overfeat_tf"] = None  # any import of the package now fails
    import tensorflow as tf

    version_dir, *paths = sys.argv[1:]
    model = tf.saved_model.load(version_dir)
    serve = model.signatures["serving_default"]
    normal = tf.constant([open(paths[0], "rb").read()])
    results = {}
    for path in paths[1:]:
        try:
            out = serve(images=tf.constant([open(path, "rb").read()]))
            boxes = out["detection_boxes"].numpy()
            result = {"answer": int(out["num_detections"][0]),
                      "in_unit_box": bool(((boxes >= 0) & (boxes <= 1)).all())}
        except tf.errors.InvalidArgumentError as error:
            result = {"error": error.message}  # str: UnicodeDecodeError if not valid UTF-8
        result["next"] = int(serve(images=normal)["num_detections"][0])  # the next request
        results[path] = result
    try:
        serve(images=tf.concat([normal] * 5, 0))
        results["count"] = "answered"
    except tf.errors.InvalidArgumentError as error:
        results["count"] = error.message
    results["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(results))
    """
)


def _files(tmp_path):
    paths = {"normal": tmp_path / "normal.png"}
    paths["normal"].write_bytes(tf.io.encode_png(np.full((300, 400, 3), 90, np.uint8)).numpy())
    for name, data in PNGS.items():
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(data)
    paths["random"] = tmp_path / "random.png"
    paths["random"].write_bytes(RANDOM_BYTES)
    return paths


def test_reloaded_export_in_a_clean_process_answers_within_bounds(exported, tmp_path):
    paths = _files(tmp_path)
    script = tmp_path / "client.py"
    script.write_text(_CLIENT)
    result = subprocess.run(
        [sys.executable, str(script), str(exported[2]), *map(str, paths.values())],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for name in STRIPS:
        answer = got[str(paths[name])]
        assert answer["in_unit_box"] and 0 <= answer["answer"] <= 20, (name, answer)
        assert answer["next"] > 0
    random = got[str(paths["random"])]
    assert "Undecodable image" in random["error"] and random["next"] > 0
    first = " ".join(f"{b:02x}" for b in RANDOM_BYTES[:8])
    assert f"in hex: {first})" in random["error"]
    assert random["error"].isascii() and "\x00" not in random["error"]
    assert "Too many images" in got["count"] and "[5]" in got["count"]
    assert "bound of 4 images per request" in got["count"]
    assert got["peak_gb"] < PEAK_BOUND_GB, got["peak_gb"]


def test_predict_detect_and_the_cli_answer_the_same_strips(exported, tmp_path, capsys):
    detector, keras_path, version = exported
    loaded = keras.models.load_model(keras_path)
    for name, data in PNGS.items():
        image = decode_image(data)
        out = loaded.predict(image[None], verbose=0)
        found = detect(loaded, data)
        n = int(out["num_detections"][0])
        assert n == len(found["scores"]) <= detector.max_detections, name
        np.testing.assert_allclose(out["detection_scores"][0, :n], found["scores"], rtol=1e-4)
    paths = _files(tmp_path)
    files = [str(paths[name]) for name in (*STRIPS, "random")]
    for model in (str(keras_path), str(version)):
        args = [*files, "--model", model, "--output", str(tmp_path / "out"), "--format", "json"]
        assert predict.main(args) == 1  # one image failed: the random bytes
        captured = capsys.readouterr()
        (line,) = [x for x in captured.err.splitlines() if x.startswith("error:")]
        assert "Undecodable image" in line and "in hex:" in line, line
        report = json.loads(captured.out)
        answered = [r["image"] for r in report["images"]]
        assert answered == files[:-1], report


def test_notebook_detect_of_random_bytes_is_a_clean_value_error(exported):
    with pytest.raises(ValueError, match=r"Undecodable image.*in hex: [0-9a-f ]+\)"):
        detect(exported[0], RANDOM_BYTES)

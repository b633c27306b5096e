"""`python -m overfeat_tf.predict` on a `.keras` detector and on its SavedModel export (the same
top-5 and detections, printed as JSON and as a table, pictures written), bad inputs (one line
each, the others go on, exit status 1), sample images; and `overfeat_tf.quiet`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from overfeat_tf import cli, predict, quiet
from overfeat_tf.data.shapes import SHAPE_CLASSES, render_example
from overfeat_tf.export import serving
from overfeat_tf.models.decoders import GreedyMergeDecoder
from overfeat_tf.models.detector import OverFeatDetector

NAMES = ["disk", "ring", "star"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_net) -> dict:
    """A tiny random-weight detector as .keras and as an export, 2 sample images, 1 bad one."""
    root = tmp_path_factory.mktemp("predict")
    net = tiny_net(2, tuple(NAMES))
    detector = OverFeatDetector(
        net, GreedyMergeDecoder(max_detections=20), scales=(231,), flips=False, max_boxes=300
    )
    detector.save(root / "model.keras")
    serving.export_model(detector, root / "export")
    samples = predict.write_samples(root / "samples", count=2)
    (root / "bad").mkdir()
    (root / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but no image data")
    return {"root": root, "samples": samples}


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = predict.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def keras_run(files) -> tuple[int, str, str]:
    root = files["root"]
    inputs = [root / "samples", root / "missing.jpg", root / "bad" / "broken.png"]
    model = ["--model", root / "model.keras", "--output", root / "keras_pictures"]
    return _main([*inputs, *model, "--format", "json"])


@pytest.fixture(scope="module")
def export_run(files) -> tuple[int, str, str]:
    root = files["root"]
    model = ["--model", root / "export", "--output", root / "export_pictures", "--top", "5"]
    return _main([root / "samples", *model])


def test_samples_are_the_shapes_test_images_with_their_boxes(files):
    truth = json.loads((files["root"] / "samples" / "truth.json").read_text())
    assert [p.name for p in files["samples"]] == ["shapes_0.png", "shapes_1.png"]
    for i, path in enumerate(files["samples"]):
        example = render_example([0, 2, i])  # overfeat_shapes' test split, example i
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(im), example["image"])
        h, w = example["image"].shape[:2]
        boxes = np.array([t["box"] for t in truth[path.name]])
        np.testing.assert_allclose(boxes, example["bboxes"] * [h, w, h, w], atol=0.05)
        assert [t["name"] for t in truth[path.name]] == [
            SHAPE_CLASSES[c] for c in example["labels"]
        ]


def test_keras_model_json_pictures_and_one_line_per_bad_image(files, keras_run):
    status, out, err = keras_run
    assert status == 1  # two inputs failed, the samples went through
    result = json.loads(out)
    assert [r["image"] for r in result["images"]] == [str(p) for p in files["samples"]]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 == len(result["errors"])
    assert "missing.jpg not found" in errors[0]
    assert "broken.png" in errors[1] and "not a readable image" in errors[1]
    for item in result["images"]:
        assert sorted(t["name"] for t in item["top5"]) == sorted(NAMES)  # 3 classes < 5
        scores = [t["score"] for t in item["top5"]]
        assert scores == sorted(scores, reverse=True)
        assert 0 < len(item["detections"]) <= 20
        for d in item["detections"]:
            ymin, xmin, ymax, xmax = d["box"]
            assert 0 <= ymin <= ymax <= item["height"] and 0 <= xmin <= xmax <= item["width"]
            assert d["name"] == NAMES[d["class"]]
        with Image.open(item["picture"]) as im:  # default figure: 6.4 x 4.8 in at 100 dpi
            assert im.size == (640, 480)
            assert np.asarray(im.convert("RGB")).std() > 0


def _parse_table(text: str) -> dict[str, dict]:
    """The text report -> per image: top-5 [(name, score)] and detection rows."""
    images, current = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and "px)" in line:
            current = images.setdefault(line.split("  ")[0], {"top5": [], "rows": []})
        elif line.strip().startswith("top-5:"):
            pairs = re.findall(r"(\w+) ([\d.]+)", line.split(":", 1)[1])
            current["top5"] = [(n, float(s)) for n, s in pairs]
        elif re.match(r"^\s+\d+\s+\w+\s+[\d.]+(\s+-?\d+){4}$", line):
            _, name, score, *box = line.split()
            current["rows"].append((name, float(score), [float(v) for v in box]))
    return images


def test_export_prints_what_the_keras_model_finds(files, keras_run, export_run):
    status, out, err = export_run
    assert status == 0
    assert "error" not in err
    assert out.strip().endswith(
        "2 image(s) done, 0 failed; pictures in " + str(files["root"] / "export_pictures") + "/."
    )
    table = _parse_table(out)
    want = {r["image"]: r for r in json.loads(keras_run[1])["images"]}
    assert sorted(table) == sorted(want)
    for image, got in table.items():
        top5 = [(t["name"], t["score"]) for t in want[image]["top5"]]
        assert [n for n, _ in got["top5"]] == [n for n, _ in top5]
        np.testing.assert_allclose([s for _, s in got["top5"]], [s for _, s in top5], atol=2e-3)
        rows = want[image]["detections"][:5]
        assert len(got["rows"]) == len(rows)
        for (name, score, box), d in zip(got["rows"], rows, strict=True):
            assert name == d["name"]
            assert score == pytest.approx(d["score"], abs=2e-3)
            np.testing.assert_allclose(box, d["box"], atol=1.01)  # the table rounds to px
        assert (files["root"] / "export_pictures" / os.path.basename(image)).is_file()


def test_image_result_boxes_are_pixels_best_first():
    out = {
        "classes": np.array([2, 0, -1, -1, -1]),
        "scores": np.array([0.7, 0.2, 0, 0, 0], np.float32),
        "num_detections": np.array(1),
        "detection_boxes": np.array([[0.1, 0.25, 0.5, 1.0], [0, 0, 0, 0]], np.float32),
        "detection_scores": np.array([4.5, 0], np.float32),
        "detection_classes": np.array([2, 0]),
        "detection_class_names": np.array([b"star", b""]),
    }
    result = predict.image_result("x.png", out, NAMES, (200, 300))
    assert result["top5"] == [
        {"class": 2, "name": "star", "score": pytest.approx(0.7)},
        {"class": 0, "name": "disk", "score": pytest.approx(0.2)},
    ]
    assert result["detections"] == [
        {"class": 2, "name": "star", "score": 4.5, "box": [20.0, 75.0, 100.0, 300.0]}
    ]
    text = predict.format_image(result, top=10)
    assert "top-5:  star 0.700  disk 0.200" in text
    assert re.search(r"1\s+star\s+4\.500\s+20\s+75\s+100\s+300", text)


def test_model_options_and_export_versions(files, tmp_path):
    root = files["root"]
    chosen = predict.load_predictor(str(root / "model.keras"), {"scales": (263,), "top_k": 2})
    assert chosen.options["scales"] == [263] and chosen.options["top_k"] == 2
    assert chosen.options["max_boxes"] == 300  # the detector's own, not the default
    assert chosen.class_names == NAMES
    with pytest.raises(ValueError, match="fixed when it is exported"):
        predict.load_predictor(str(root / "export"), {"top_k": 2})
    for version in ("2", "10", "9x"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "saved_model.pb").write_bytes(b"")
    assert predict.find_export(tmp_path) == tmp_path / "10"
    assert predict.find_export(tmp_path / "2") == tmp_path / "2"
    assert predict.find_export(root / "samples") is None
    with pytest.raises(ValueError, match="without a SavedModel"):
        predict.load_predictor(str(root / "samples"), {})


def test_missing_model_is_one_error_line(files):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda: predict.main([str(files["samples"][0]), "--model", "nowhere.keras"]))
    message = str(exit_info.value.code)
    assert message == "error: Model nowhere.keras not found: give a .keras file or an export."


def test_help_names_the_sample_command_and_detection_flags():
    text = predict.parser().format_help()
    for flag in ("--write-samples", "--model", "--output", "--format", "--scales", "--top-k"):
        assert flag in text


# --- quiet start-up ---------------------------------------------------------------------------

STARTUP = [  # what TF 2.21 prints on a CPU-only machine
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796162314.735664   10038 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1796162314.736092   10038 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1796162314.880975   10038 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1796162325.291746   10038 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1796163333.526777   20990 util.cc:131] oneDNN supports DT_INT32 only on "
    "platforms with AVX-512. Falling back to the default Eigen-based implementation.",
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could "
    "not find cuda drivers on your machine, GPU will not be used.",
]
KEPT = [
    "E0000 00:00:1796162325.291746   10038 op_kernel.cc:1830] OP_REQUIRES failed: bad input",
    "/x.py:8: UserWarning: something a user should see",
    "Traceback (most recent call last):",
]


def test_startup_lines_are_noise_and_others_are_kept():
    assert all(quiet.is_noise(line) for line in STARTUP)
    assert not any(quiet.is_noise(line) for line in KEPT)


def test_filtered_stderr_drops_the_noise_and_replays_the_rest(capfd, monkeypatch):
    with quiet.filtered_stderr():
        os.write(2, ("\n".join(STARTUP + KEPT) + "\n").encode())
    assert capfd.readouterr().err.splitlines() == KEPT
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    assert quiet.verbose() and quiet.quiet_start() is False
    monkeypatch.setenv(quiet.VERBOSE_ENV, "0")
    assert not quiet.verbose()

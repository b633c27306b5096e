"""The TF Serving export (SPEC §5): signatures, a fresh process that cannot import overfeat_tf,
saved_model_cli, no Python ops, bad inputs, the atomic write and versions, the command line."""

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from overfeat_tf.data.image_io import decode_image
from overfeat_tf.export import serving
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.models.detector import OverFeatDetector, detect
from overfeat_tf.ops import pyramid
from overfeat_tf.ops.resizing import resize_short_side
from overfeat_tf.release.features import extract_features

ROOT = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["circle", "square", "triangle"]
MAX_PIXELS = 500_000
PY_OPS = {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
SAVED_MODEL_CLI = "tensorflow.python.tools.saved_model_cli"
CLI_OPTIONS = [
    "--scales", "231,263",
    "--max-pixels", str(MAX_PIXELS),
    "--max-batch", "2",
    "--max-detections", "20",
    "--feature-layer", "pool5",
]  # fmt: skip


def _load_export_cli():
    spec = importlib.util.spec_from_file_location("export_cli", ROOT / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_cli = _load_export_cli()


# --- images ----------------------------------------------------------------------------------


def _pixels(h, w, channels, seed):
    """A blocky image (16 px blocks; compresses like a photo, not like noise)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, channels), dtype=np.uint8)
    return np.kron(blocks, np.ones((16, 16, 1), np.uint8))[:h, :w]


def _bmp(pixels):
    """A 24-bit bottom-up BMP of an RGB uint8 array (TF decodes BMP but cannot encode it)."""
    h, w, _ = pixels.shape
    row = (w * 3 + 3) // 4 * 4
    body = b"".join(pixels[y, :, ::-1].tobytes().ljust(row, b"\0") for y in range(h - 1, -1, -1))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(body), 0, 0, 54)
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    return header + dib + body


def _png_header(height, width):
    """The first bytes of a PNG (signature + IHDR) claiming a size, no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    crc = struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + crc


IMAGES = {  # name -> encoded bytes; different sizes, formats and channel counts
    "rgb.jpg": tf.io.encode_jpeg(_pixels(240, 320, 3, 0), quality=95).numpy(),
    "rgb.png": tf.io.encode_png(_pixels(300, 260, 3, 1)).numpy(),
    "gray.png": tf.io.encode_png(_pixels(250, 250, 1, 2)).numpy(),
    "rgba.png": tf.io.encode_png(_pixels(231, 280, 4, 3)).numpy(),
    "rgb.bmp": _bmp(_pixels(235, 300, 3, 4)),
}


# --- the export, once per module ---------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(detector as loaded from .keras, version dir, export options) via `export.py`."""
    tmp = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(0)
    model = OverFeat(
        "tiny",
        regressor="class_specific",
        background=True,
        class_names=CLASS_NAMES,
        kernel_initializer="he_normal",
    )
    OverFeatDetector(model).save(tmp / "tiny.keras")  # what train.py --task detect saves
    base = tmp / "serving"
    args = ["--model", str(tmp / "tiny.keras"), "--export-dir", str(base), *CLI_OPTIONS]
    assert export_cli.main(args) == 0
    options = serving.ExportOptions(max_pixels=MAX_PIXELS, max_batch=2, feature_layer="pool5")
    keras_model = keras.models.load_model(tmp / "tiny.keras")
    detector = keras_model.with_options(scales=(231, 263), max_detections=20)
    return detector, base / "1", options


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported[1]))


def _strings(*names):
    return tf.constant([IMAGES[n] for n in names])


# --- what was written ------------------------------------------------------------------------


def test_export_writes_one_version_with_its_options_and_class_names(exported, loaded):
    model, version_dir, _ = exported
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1"]  # no temp dir left
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables").is_dir()
    from_file = serving.read_metadata(version_dir)
    from_graph = loaded.signatures["metadata"](request=tf.constant(["", "x"]))["metadata"]
    assert from_graph.shape == (2,) and from_graph[0] == from_graph[1]
    from_graph = json.loads(from_graph[0].numpy())
    assert from_file == from_graph
    assert from_file["class_names"] == CLASS_NAMES
    assert from_file["options"]["scales"] == [231, 263]
    assert from_file["options"]["max_pixels"] == MAX_PIXELS
    assert from_file["options"]["max_batch"] == 2
    assert from_file["options"]["feature_layer"] == "pool5"
    assert from_file["options"]["feature_size"] == model.backbone.config.crop_size
    assert from_file["model"]["architecture"] == "tiny"
    assert from_file["model"]["background"] is True
    assert set(loaded.signatures) == set(serving.SIGNATURES)


def test_signature_shapes(loaded):
    sigs = loaded.signatures
    string_in = sigs["serving_default"].structured_input_signature[1]["images"]
    assert (string_in.dtype, string_in.shape.as_list()) == (tf.string, [None])
    uint8_in = sigs["detect_images"].structured_input_signature[1]["images"]
    assert (uint8_in.dtype, uint8_in.shape.as_list()) == (tf.uint8, [None, None, None, 3])
    with_options = sigs["detect_with_options"].structured_input_signature[1]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in with_options.items()} == {
        "images": (tf.string, [None]),
        "score_threshold": (tf.float32, [None]),
        "max_detections": (tf.int32, [None]),
        "merge_threshold": (tf.float32, [None]),
        "top_k": (tf.int32, [None]),
    }
    out = sigs["serving_default"](images=_strings("rgb.jpg", "rgb.png"))
    assert out["detection_boxes"].shape == (2, 20, 4)
    assert out["detection_boxes"].dtype == tf.float32
    assert out["detection_scores"].shape == (2, 20)
    assert out["detection_classes"].dtype == tf.int32
    assert out["detection_class_names"].dtype == tf.string
    assert out["num_detections"].shape == (2,)
    assert out["classes"].shape == (2, 5) and out["scores"].shape == (2, 5)
    n = out["num_detections"].numpy()
    names = out["detection_class_names"].numpy()
    classes = out["detection_classes"].numpy()
    for b in range(2):
        want = [CLASS_NAMES[c] for c in classes[b, : n[b]]]
        assert [x.decode() for x in names[b, : n[b]]] == want
        assert set(names[b, n[b] :]) <= {b""}
    # 3 classes: top-5 is padded with class -1, score 0
    np.testing.assert_array_equal(out["classes"].numpy()[:, 3:], -1)
    np.testing.assert_array_equal(out["scores"].numpy()[:, 3:], 0)


# --- a fresh process that cannot import overfeat_tf ---------------------------------------------

_FRESH = textwrap.dedent(
    """
    import sys
    sys.modules["overfeat_tf"] = None  # any import of the package now fails
    try:
        import overfeat_tf  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True
    import numpy as np
    import tensorflow as tf

    version_dir, output, *paths = sys.argv[1:]
    model = tf.saved_model.load(version_dir)
    images = tf.constant([open(p, "rb").read() for p in paths])
    out = model.signatures["serving_default"](images=images)
    arrays = {k: v.numpy().astype("S" if v.dtype == tf.string else v.dtype.as_numpy_dtype)
              for k, v in out.items()}
    arrays["blocked"] = np.array(blocked)
    imported = [m for m, v in sys.modules.items() if m.startswith("overfeat") and v is not None]
    arrays["imported"] = np.array(sorted(imported), dtype=str)
    np.savez(output, **arrays)
    """
)


def test_fresh_process_without_overfeat_tf_equals_in_package_detect(exported, tmp_path):
    model, version_dir, _ = exported
    names = list(IMAGES)
    paths = []
    for name in names:
        paths.append(tmp_path / name)
        paths[-1].write_bytes(IMAGES[name])
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    output = tmp_path / "out.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, str(script), str(version_dir), str(output), *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(output)
    assert bool(got["blocked"]) and got["imported"].size == 0

    detector = model
    for b, name in enumerate(names):
        image = decode_image(IMAGES[name])
        size = np.array(list(image.shape[:2]) * 2, np.float32)
        want = detect(detector, IMAGES[name])  # pixels of the original image
        n = int(got["num_detections"][b])
        assert n == len(want["scores"]) > 0, name
        np.testing.assert_allclose(got["detection_boxes"][b, :n] * size, want["boxes"], atol=1e-2)
        np.testing.assert_allclose(got["detection_scores"][b, :n], want["scores"], rtol=1e-4)
        np.testing.assert_array_equal(got["detection_classes"][b, :n], want["classes"])
        assert [x.decode() for x in got["detection_class_names"][b, :n]] == want["class_names"]
        np.testing.assert_array_equal(got["detection_boxes"][b, n:], 0)
        scores = detector.dense_boxes(detector.levels(tf.cast(image, tf.float32)))[3].numpy()
        top = np.argsort(-scores, kind="stable")[:3]
        np.testing.assert_array_equal(got["classes"][b, :3], top)
        np.testing.assert_allclose(got["scores"][b, :3], scores[top], rtol=1e-5)


# --- the other signatures ----------------------------------------------------------------------


def test_detect_images_equals_serving_default_on_lossless_images(loaded):
    pixels = np.stack([_pixels(250, 330, 3, 10), _pixels(250, 330, 3, 11)])
    from_tensor = loaded.signatures["detect_images"](images=tf.constant(pixels))
    encoded = tf.constant([tf.io.encode_png(p).numpy() for p in pixels])
    from_bytes = loaded.signatures["serving_default"](images=encoded)
    for key, value in from_bytes.items():
        np.testing.assert_array_equal(from_tensor[key].numpy(), value.numpy(), err_msg=key)


def test_batch_plan_groups_images_by_size_in_chunks():
    sizes = tf.constant([[240, 320], [250, 250], [240, 320], [240, 320], [250, 250]], tf.int64)
    order, starts = serving.batch_plan(sizes, max_batch=2, max_pixels=10**9)
    assert order.numpy().tolist() == [0, 2, 3, 1, 4]  # groups in order of their first image
    assert starts.numpy().tolist() == [0, 2, 3, 5]  # chunks [0, 2], [3], [1, 4]
    # at most max_pixels decoded pixels per chunk (but always one image)
    order, starts = serving.batch_plan(sizes, max_batch=8, max_pixels=2 * 240 * 320)
    assert starts.numpy().tolist() == [0, 2, 3, 5]
    _, starts = serving.batch_plan(sizes, max_batch=8, max_pixels=1000)
    assert starts.numpy().tolist() == [0, 1, 2, 3, 4, 5]
    order, starts = serving.batch_plan(tf.zeros([0, 2], tf.int64), 8, 1000)
    assert order.numpy().tolist() == [] and starts.numpy().tolist() == [0]


def test_a_mixed_request_answers_what_each_image_alone_does(loaded):
    """Images of one size run through the network together (here 3 + 2 of two sizes, mixed):
    each image's answer is what it gets alone, up to the convolutions' rounding (oneDNN may
    block a batch differently: a last-bit difference in a box at most)."""
    sizes = [(240, 320), (250, 250), (240, 320), (240, 320), (250, 250)]
    encoded = [tf.io.encode_png(_pixels(h, w, 3, 20 + i)).numpy() for i, (h, w) in enumerate(sizes)]
    serve = loaded.signatures["serving_default"]
    together = serve(images=tf.constant(encoded))
    for b, contents in enumerate(encoded):
        alone = serve(images=tf.constant([contents]))
        n = int(alone["num_detections"][0])
        assert int(together["num_detections"][b]) == n > 0, b
        for key in ("detection_classes", "detection_class_names", "classes"):
            np.testing.assert_array_equal(together[key][b], alone[key][0], err_msg=key)
        got, want = together["detection_scores"][b], alone["detection_scores"][0]
        np.testing.assert_allclose(got, want, rtol=1e-6)
        got, want = together["detection_boxes"][b], alone["detection_boxes"][0]
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(together["scores"][b], alone["scores"][0], rtol=1e-6)
    # and an empty request is an empty answer
    empty = serve(images=tf.zeros([0], tf.string))
    assert empty["detection_boxes"].shape == (0, 20, 4) and empty["num_detections"].shape == (0,)
    empty = loaded.signatures["detect_images"](images=tf.zeros([0, 0, 0, 3], tf.uint8))
    assert empty["detection_scores"].shape == (0, 20)


def test_classify_equals_the_multi_scale_class_scores(exported, loaded):
    model = exported[0]
    out = loaded.signatures["classify"](images=_strings("rgb.jpg", "gray.png"))
    for b, name in enumerate(["rgb.jpg", "gray.png"]):
        image = tf.cast(decode_image(IMAGES[name]), tf.float32)
        detector = model
        scores = detector.dense_boxes(detector.levels(image))[3].numpy()
        top = np.argsort(-scores, kind="stable")
        np.testing.assert_array_equal(out["classes"].numpy()[b, :3], top)
        np.testing.assert_allclose(out["scores"].numpy()[b, :3], scores[top], rtol=1e-5)
        assert [x.decode() for x in out["class_names"].numpy()[b]] == [
            *(CLASS_NAMES[i] for i in top),
            "",
            "",
        ]


def test_features_equal_extract_features_and_maps_are_padded(exported, loaded):
    model, _, _ = exported
    names = ["rgb.jpg", "gray.png"]  # 240x320 and 250x250: maps of different widths
    out = loaded.signatures["features"](images=_strings(*names))
    sizes = out["feature_map_sizes"].numpy()
    maps = out["feature_maps"].numpy()
    assert maps.shape[1:3] == tuple(sizes.max(axis=0))
    for b, name in enumerate(names):
        image = resize_short_side(decode_image(IMAGES[name]), model.backbone.config.crop_size)
        dense = extract_features(model.backbone, image.numpy(), "pool5")
        h, w = sizes[b]
        assert dense.shape[:2] == (h, w)
        np.testing.assert_allclose(maps[b, :h, :w], dense, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(maps[b, h:], 0)
        np.testing.assert_array_equal(maps[b, :, w:], 0)
        np.testing.assert_allclose(out["features"].numpy()[b], dense.max(axis=(0, 1)), rtol=1e-4)


# --- saved_model_cli and the graph ---------------------------------------------------------------


def _saved_model_cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # the `saved_model_cli` command TensorFlow installs (its module if it is not on PATH)
    found = shutil.which("saved_model_cli")
    command = [found] if found else [sys.executable, "-m", SAVED_MODEL_CLI]
    command += list(args)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_saved_model_cli_show_and_run(exported, loaded, tmp_path):
    version_dir = str(exported[1])
    shown = _saved_model_cli("show", "--dir", version_dir, "--all")
    for name in serving.SIGNATURES:
        assert f"signature_def['{name}']" in shown
    assert "outputs['detection_boxes']" in shown and "DT_STRING" in shown

    inputs = tmp_path / "images.npy"
    np.save(inputs, np.array([IMAGES["rgb.jpg"], IMAGES["rgba.png"]], dtype=object))
    ran = _saved_model_cli(
        "run", "--dir", version_dir, "--tag_set", "serve", "--signature_def", "classify",
        "--inputs", f"images={inputs}", "--outdir", str(tmp_path), "--overwrite",
    )  # fmt: skip
    assert "classes" in ran
    want = loaded.signatures["classify"](images=_strings("rgb.jpg", "rgba.png"))
    np.testing.assert_array_equal(np.load(tmp_path / "classes.npy"), want["classes"].numpy())
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), want["scores"].numpy(), rtol=1e-5)


def _op_types(graph_def):
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def test_no_python_ops_in_any_function(exported, loaded):
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((exported[1] / "saved_model.pb").read_bytes())
    ops = set()
    for meta_graph in proto.meta_graphs:  # every function of the file, nested ones included
        ops |= _op_types(meta_graph.graph_def)
    for function in loaded.signatures.values():  # and the loaded concrete functions' graphs
        ops |= _op_types(function.graph.as_graph_def())
    assert {"Conv2D", "While", "DecodeImage", "TopKV2"} <= ops  # the walk reached the bodies
    assert not ops & PY_OPS
    # Nothing must need the XLA JIT (TF Serving may run without it): the merge's XLA path is
    # for in-package use only.
    xla = [
        f.signature.name
        for meta_graph in proto.meta_graphs
        for f in meta_graph.graph_def.library.function
        if f.attr["_XlaMustCompile"].b
    ]
    assert not xla


# --- bad input -------------------------------------------------------------------------------

BAD = {
    "empty": (b"", "Empty image string"),
    "not_an_image": (b"this is not an image at all", "Undecodable image"),
    "zero_sized": (_png_header(0, 40), "Zero-sized image"),
    "over_bound": (tf.io.encode_png(np.zeros((800, 800, 3), np.uint8)).numpy(), "Image too large"),
    "header_bomb": (_png_header(100_000, 100_000) + b"\0" * 64, "Image too large"),
    "corrupt_png": (_png_header(64, 64) + b"garbage" * 20, None),  # the decoder's message
    "truncated_jpeg": (IMAGES["rgb.jpg"][:300], None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_image_is_invalid_argument_and_the_next_call_works(loaded, case):
    contents, message = BAD[case]
    for signature in ("serving_default", "classify", "features"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            loaded.signatures[signature](images=tf.constant([IMAGES["rgb.png"], contents]))
    out = loaded.signatures["serving_default"](images=_strings("rgb.png"))
    assert int(out["num_detections"][0]) > 0


@pytest.mark.parametrize(
    ("shape", "message"), [((1, 0, 300, 3), "Zero-sized"), ((1, 800, 700, 3), "too large")]
)
def test_bad_uint8_image_is_invalid_argument_and_the_next_call_works(loaded, shape, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["detect_images"](images=tf.zeros(shape, tf.uint8))
    out = loaded.signatures["detect_images"](images=tf.constant(_pixels(240, 240, 3, 5)[None]))
    assert int(out["num_detections"][0]) > 0


# --- the atomic write and versions ---------------------------------------------------------------


class _FakeArchive:
    """Stands in for the traced archive: writes a file (or fails half-way)."""

    def __init__(self, fail=False):
        self.fail = fail

    def write_out(self, path, verbose=False):
        Path(path, "saved_model.pb").write_bytes(b"half a model")
        if self.fail:
            raise RuntimeError("disk full")


@pytest.mark.parametrize("where", ["write_out", "metadata", "rename"])
@pytest.mark.parametrize("existed", [True, False])
def test_failed_export_leaves_nothing_behind(exported, tmp_path, monkeypatch, where, existed):
    model, _, options = exported
    base = tmp_path / "serving"
    if existed:
        (base / "1").mkdir(parents=True)
    monkeypatch.setattr(serving, "build_export", lambda m, o: _FakeArchive(where == "write_out"))
    if where == "metadata":
        monkeypatch.setattr(serving, "_write_metadata", _raise)
    if where == "rename":
        monkeypatch.setattr(serving.os, "replace", _raise)
    with pytest.raises(RuntimeError):
        serving.export_model(model, base, options=options)
    if existed:
        assert sorted(p.name for p in base.iterdir()) == ["1"]
    else:
        assert not base.exists()


def _raise(*args, **kwargs):
    raise RuntimeError("failed on purpose")


def test_versions_auto_increment_and_are_never_overwritten(exported, tmp_path, monkeypatch):
    model, _, options = exported
    monkeypatch.setattr(serving, "build_export", lambda m, o: _FakeArchive())
    base = tmp_path / "serving"
    assert serving.export_model(model, base, options=options) == base / "1"
    assert serving.export_model(model, base, options=options) == base / "2"
    (base / "7").mkdir()
    (base / "notes").mkdir()
    (base / "9").write_text("a file, not a version")
    assert serving.next_version(base) == 8
    assert serving.export_model(model, base, options=options).name == "8"
    assert serving.export_model(model, base, version=5, options=options).name == "5"
    assert serving.read_metadata(base / "5")["class_names"] == CLASS_NAMES
    with pytest.raises(ValueError, match="already exists"):
        serving.export_model(model, base, version=2, options=options)
    with pytest.raises(ValueError, match="positive int"):
        serving.export_model(model, base, version=0, options=options)
    assert sorted(p.name for p in base.iterdir()) == ["1", "2", "5", "7", "8", "9", "notes"]


# --- options and the command line ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"max_pixels": 0},
        {"max_images": 0},
        {"max_images": True},
        {"feature_size": -1},
        {"feature_layer": 1.5},
    ],
)
def test_bad_options_raise_value_error(bad):
    with pytest.raises(ValueError):
        serving.ExportOptions(**bad)


@pytest.mark.parametrize(
    "bad",
    [
        {"top_k": 0},
        {"stride": "medium"},
        {"score_threshold": 1.5},
        {"merge_threshold": 0},
        {"max_detections": 0},
        {"scales": ()},
        {"flips": "yes"},
        {"combine": "vote"},
    ],
)
def test_bad_detector_options_raise_value_error(exported, bad):
    with pytest.raises(ValueError):
        exported[0].with_options(**bad)


def test_options_round_trip_and_scales_parse(exported):
    # the default feature layer is the release's `-f`: fc7 before its ReLU (19 on fast/tiny)
    assert serving.feature_target(exported[0], serving.ExportOptions())[0] == "fc7_linear"
    assert serving.feature_target(exported[0], serving.ExportOptions(feature_layer=19))[0] == (
        "fc7_linear"
    )
    options = serving.ExportOptions(max_images=3, feature_layer=19)
    assert serving.ExportOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    assert pyramid.parse_scales(["231", "281x317"]) == (231, (281, 317))
    assert pyramid.parse_scales("231,281x317") == (231, (281, 317))
    with pytest.raises(ValueError, match="Bad scale"):
        pyramid.parse_scales(["big"])


def test_bad_feature_layer_fails_before_anything_is_written(exported, tmp_path):
    model, _, options = exported
    with pytest.raises(ValueError, match="Unknown layer"):
        serving.export_model(model, tmp_path / "s", options=options.replace(feature_layer="fc9"))
    with pytest.raises(ValueError, match="too small"):
        small = options.replace(feature_layer="fc7", feature_size=100)
        serving.export_model(model, tmp_path / "s", options=small)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "missing.keras"], "missing.keras not found"),
        (["--top-k", "0"], "top_k must be a positive int"),
        (["--scales", "2x3x4"], "Bad scale"),
        (["--feature-layer", "fc9"], "Unknown layer"),
    ],
)
def test_cli_errors_are_one_line_and_leave_nothing(exported, tmp_path, capsys, extra, message):
    model_file = exported[1].parents[1] / "tiny.keras"
    args = ["--model", str(model_file), "--export-dir", str(tmp_path / "s"), *extra]
    if extra[0] == "--model":
        args = ["--export-dir", str(tmp_path / "s"), "--model", str(tmp_path / extra[1])]
    assert export_cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "s").exists()

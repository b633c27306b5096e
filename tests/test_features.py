"""Feature extraction at any layer: names and OverFeat numbers, values, sizes, the CLI."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf import features as features_command
from overfeat_tf.architecture import topology
from overfeat_tf.architecture.config import ACCURATE, FAST, PIXEL_MEAN, PIXEL_STD, TINY
from overfeat_tf.data import image_io
from overfeat_tf.models.backbone import OverFeat, keras_layer_name
from overfeat_tf.ops import resizing
from overfeat_tf.release import features as ft
from tests import reference as ref


@pytest.fixture(scope="module")
def model() -> OverFeat:
    """The tiny net with O(1) activations (the paper's N(0, 0.01) gives ~1e-8 features)."""
    keras.utils.set_random_seed(3)
    return OverFeat(TINY, kernel_initializer="he_normal")


def _image(rng, h: int, w: int) -> np.ndarray:
    return rng.uniform(0, 255, size=(h, w, 3)).astype(np.float32)


def _probe(model, name: str, x: np.ndarray) -> np.ndarray:
    """A feature layer's output in the model's own graph (the Keras layer of its module)."""
    module = topology.modules(model.config)[ft.layer_number(model.config, name)]
    layer = model.get_layer(keras_layer_name(module))
    return keras.Model(model.input, layer.output)(x).numpy()


# The release's module order, written out by hand from the spec (§6): module 0 is the input
# normalization; conv1, conv2: conv, ReLU, pool; each padded 3x3 conv: pad, conv, ReLU; the
# last pool; fc6, fc7: conv, ReLU (no dropout at test time); fc8.
FAST_TABLE = {
    0: "normalize",
    1: "conv1_linear",
    2: "conv1",
    3: "pool1",
    4: "conv2_linear",
    5: "conv2",
    6: "pool2",
    7: "pad3",
    8: "conv3_linear",
    9: "conv3",
    10: "pad4",
    11: "conv4_linear",
    12: "conv4",
    13: "pad5",
    14: "conv5_linear",
    15: "conv5",
    16: "pool5",
    17: "fc6_linear",
    18: "fc6",
    19: "fc7_linear",
    20: "fc7",
    21: "fc8",
}
ACCURATE_TABLE = {
    0: "normalize",
    1: "conv1_linear",
    2: "conv1",
    3: "pool1",
    4: "conv2_linear",
    5: "conv2",
    6: "pool2",
    7: "pad3",
    8: "conv3_linear",
    9: "conv3",
    10: "pad4",
    11: "conv4_linear",
    12: "conv4",
    13: "pad5",
    14: "conv5_linear",
    15: "conv5",
    16: "pad6",
    17: "conv6_linear",
    18: "conv6",
    19: "pool6",
    20: "fc6_linear",
    21: "fc6",
    22: "fc7_linear",
    23: "fc7",
    24: "fc8",
}


@pytest.mark.parametrize(
    ("config", "table"), [(FAST, FAST_TABLE), (TINY, FAST_TABLE), (ACCURATE, ACCURATE_TABLE)]
)
def test_layer_numbers_are_the_release_modules(config, table):
    names = ft.layer_names(config)
    assert dict(enumerate(names)) == table
    for number, name in table.items():
        assert ft.resolve_layer(config, number) == ft.resolve_layer(config, str(number)) == name
        assert ft.resolve_layer(config, name) == name
        assert ft.layer_number(config, name) == ft.layer_number(config, number) == number
    with pytest.raises(ValueError, match=rf"out of range.*0\.\.{len(table) - 1}"):
        ft.resolve_layer(config, len(table))


def test_issue_anchors_and_the_f_layer():
    """-L 0 input, -L 1 conv1 before ReLU; -f = 19 fast / 22 accurate = fc7 before ReLU."""
    for config in (FAST, ACCURATE, TINY):
        assert ft.resolve_layer(config, 0) == "normalize"
        assert ft.resolve_layer(config, 1) == "conv1_linear"
    assert ft.resolve_layer(FAST, 19) == ft.FEATURE_LAYER == "fc7_linear"
    assert ft.resolve_layer(FAST, 21) == "fc8"
    assert ft.resolve_layer(ACCURATE, 22) == ft.FEATURE_LAYER
    assert ft.resolve_layer(ACCURATE, 24) == "fc8"
    assert ft.layer_number(FAST, ft.FEATURE_LAYER) == ft.layer_number(TINY, ft.FEATURE_LAYER) == 19
    assert ft.layer_number(ACCURATE, ft.FEATURE_LAYER) == 22
    assert ft.layer_number(ACCURATE, "pool6") == 19  # accurate's 19 is its last pool
    # The numbers' maps at the crop size (no weights needed): pool5 6x6, pool6 5x5, fc 1x1.
    assert ft.feature_size(FAST, 0, 231) == 231 and ft.feature_size(FAST, 7, 231) == 14
    assert ft.feature_size(FAST, 16, 231) == 6 and ft.feature_size(FAST, 19, 231) == 1
    assert ft.feature_size(ACCURATE, 19, 221) == 5 and ft.feature_size(ACCURATE, 22, 221) == 1
    assert ft.min_input_size(FAST, 0) == 1 and ft.min_input_size(ACCURATE, 24) == 221


def test_module_docstring_table_is_layer_names():
    """The table in `pydoc overfeat_tf.release.features` is what the code numbers."""
    lines = ft.__doc__.splitlines()
    header = next(line for line in lines if "fast / tiny" in line)
    fast_col, fast_end, acc_col = (
        header.index("fast / tiny"),
        header.index("module"),
        header.index("accurate"),
    )
    fast, accurate = {}, {}
    for line in lines:
        number = line[:fast_col].strip()
        if line.startswith("    ") and number.isdigit():
            if line[fast_col:fast_end].strip():
                fast[int(number)] = line[fast_col:fast_end].strip()
            accurate[int(number)] = line[acc_col:].split()[0]
    assert fast == FAST_TABLE and accurate == ACCURATE_TABLE


def _weights(model, name: str) -> tuple[np.ndarray, np.ndarray]:
    kernel, bias = (v.numpy() for v in model.get_layer(name).weights)
    return kernel, bias


def test_every_number_against_numpy(model, rng):
    """Each `-L n` of the tiny (= fast topology) net, by number, against a NumPy reference."""
    x = _image(rng, 231, 231)[None]
    got = {n: ft.extract_features(model, x, n)[0] for n in FAST_TABLE}
    for name in ("pool5", "fc6", "fc7_linear", "fc8"):  # by name: the very same tensor
        np.testing.assert_array_equal(
            ft.extract_features(model, x, name)[0], got[ft.layer_number(TINY, name)]
        )
    want = {0: (x[0] - PIXEL_MEAN) / PIXEL_STD}
    for i, first in ((1, 1), (2, 4)):  # conv1, conv2: conv (linear), ReLU, pool
        want[first] = ref.conv2d(
            want[first - 1], *_weights(model, f"conv{i}"), TINY.convs[i - 1].stride
        )
        want[first + 1] = ref.relu(want[first])
        want[first + 2] = ref.max_pool(want[first + 1], 2)
    for i, pad in ((3, 7), (4, 10), (5, 13)):  # padded 3x3 convs: pad, conv, ReLU
        want[pad] = np.pad(want[pad - 1], ((1, 1), (1, 1), (0, 0)))
        want[pad + 1] = ref.conv2d(want[pad], *_weights(model, f"conv{i}"))
        want[pad + 2] = ref.relu(want[pad + 1])
    want[16] = ref.max_pool(want[15], 2)
    want[17] = ref.dense(want[16], *_weights(model, "fc6"))
    want[18] = ref.relu(want[17])
    kernel, bias = _weights(model, "fc7")
    want[19] = want[18] @ kernel.reshape(want[18].size, -1) + bias
    want[20] = ref.relu(want[19])
    kernel, bias = _weights(model, "fc8")
    want[21] = want[20] @ kernel.reshape(want[20].size, -1) + bias
    assert sorted(want) == sorted(got)
    for n in FAST_TABLE:
        scale = max(np.abs(want[n]).max(), 1.0)
        np.testing.assert_allclose(
            got[n].reshape(want[n].shape), want[n], atol=1e-4 * scale, err_msg=f"-L {n}"
        )
    np.testing.assert_allclose(
        got[21][0, 0], model.crop_model()(x).numpy()[0], rtol=1e-5, atol=1e-5
    )


def test_layer_0_is_the_normalized_input(model, rng):
    x = _image(rng, 37, 50)
    got = ft.extract_features(model, x, 0)
    assert got.shape == (37, 50, 3)
    np.testing.assert_allclose(got, (x - 118.380948) / 61.896913, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ft.extract_features(model, x, "normalize"), got)


@pytest.fixture(scope="module")
def accurate_model() -> OverFeat:
    """The accurate topology (6 convs, pools after 1, 2 and 6), narrow enough for a CPU test."""
    keras.utils.set_random_seed(4)
    convs = tuple(
        dataclasses.replace(c, filters=f)
        for c, f in zip(ACCURATE.convs, (8, 12, 16, 16, 16, 16), strict=True)
    )
    config = ACCURATE.replace(
        name="accurate_narrow",
        convs=convs,
        fc6_filters=24,
        fc7_filters=24,
        num_classes=5,
        regressor_filters=(8, 8),
    )
    assert ft.layer_names(config) == list(ACCURATE_TABLE.values())
    return OverFeat(config, kernel_initializer="he_normal")


def test_accurate_numbers_on_a_net(accurate_model, rng):
    """Accurate -L 19 = pool6, 22 = fc7 before ReLU (-f), 24 = fc8 = the coarse class map."""
    x = _image(rng, 257, 221)[None]  # coarse fc map 2x1
    by_number = {n: ft.extract_features(accurate_model, x, n) for n in (18, 19, 21, 22, 23, 24)}
    np.testing.assert_array_equal(by_number[19][0], ref.max_pool(by_number[18][0], 3))
    assert by_number[19].shape[1:3] == (6, 5)
    kernel, bias = _weights(accurate_model, "fc7")
    fc7_linear = by_number[21] @ kernel.reshape(by_number[21].shape[-1], -1) + bias
    np.testing.assert_allclose(by_number[22], fc7_linear, rtol=1e-5, atol=1e-5)
    assert by_number[22].min() < 0 <= by_number[23].min()
    np.testing.assert_allclose(by_number[23], np.maximum(by_number[22], 0), rtol=1e-5, atol=1e-6)
    coarse = accurate_model.spatial_model("coarse")(x)["class_logits"].numpy()
    assert coarse.shape[1:3] == (2, 1)
    np.testing.assert_allclose(by_number[24], coarse, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        ft.extract_features(accurate_model, x, "fc7_linear"), by_number[22]
    )


@pytest.mark.parametrize("layer", ["conv9", "fc9", 22, -1, "pool3", True, "input"])
def test_unknown_layers_are_clear_errors(layer, model):
    with pytest.raises(ValueError, match=r"(?i)layer"):
        ft.feature_model(model, layer)


def test_trunk_features_are_the_model_layers(model, rng):
    x = _image(rng, 263, 241)[None]
    for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5"):
        got = ft.extract_features(model, x, name)
        np.testing.assert_allclose(got, _probe(model, name, x), rtol=1e-6, atol=1e-6)
    number = ft.layer_names(TINY).index("conv4")
    np.testing.assert_array_equal(
        ft.extract_features(model, x, number), ft.extract_features(model, x, "conv4")
    )


def test_linear_and_padding_layers(model, rng):
    x = _image(rng, 300, 290)[None]
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        linear = ft.extract_features(model, x, f"{name}_linear")
        after = ft.extract_features(model, x, name)
        assert linear.min() < 0 <= after.min(), name  # before / after the ReLU
        assert after.max() > 0, name
        np.testing.assert_allclose(np.maximum(linear, 0), after, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ft.extract_features(model, x, "conv3"), _probe(model, "conv3", x))
    for name in ("conv1", "conv3", "conv5"):  # before the ReLU: the weighted layer's own output
        got = ft.extract_features(model, x, f"{name}_linear")
        want = keras.Model(model.input, model.get_layer(name).output)(x).numpy()
        np.testing.assert_array_equal(got, want)
    pad3 = ft.extract_features(model, x, "pad3")
    pool2 = _probe(model, "pool2", x)
    np.testing.assert_array_equal(pad3, np.pad(pool2, ((0, 0), (1, 1), (1, 1), (0, 0))))


def test_classifier_features_against_numpy(model, rng):
    """At the crop size: pool5 = valid max-pool of conv5; fc6, fc7 = ReLU(matmul)."""
    x = _image(rng, 231, 231)[None]
    conv5 = _probe(model, "conv5", x)[0]
    pool5 = ft.extract_features(model, x, "pool5")[0]
    np.testing.assert_array_equal(pool5, ref.max_pool(conv5, 2))
    weights = {n: [v.numpy() for v in model.get_layer(n).weights] for n in ("fc6", "fc7", "fc8")}
    fc6 = ref.relu(ref.dense(pool5, *weights["fc6"]))
    fc7 = ref.relu(fc6 @ weights["fc7"][0].reshape(fc6.size, -1) + weights["fc7"][1])
    np.testing.assert_allclose(
        ft.extract_features(model, x, "fc6")[0, 0, 0], fc6, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        ft.extract_features(model, x, "fc7")[0, 0, 0], fc7, rtol=1e-4, atol=1e-5
    )
    fc8 = ft.extract_features(model, x, "fc8")[0, 0, 0]
    np.testing.assert_allclose(fc8, ref.classifier(pool5, weights), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fc8, model.crop_model()(x).numpy()[0], rtol=1e-5, atol=1e-5)


def test_fc8_is_the_class_map_at_both_strides(model, rng):
    x = _image(rng, 300, 280)[None]
    fine = ft.extract_features(model, x, "fc8", stride="fine")
    np.testing.assert_allclose(fine, model(x)["class_logits"].numpy(), rtol=1e-5, atol=1e-5)
    coarse = ft.extract_features(model, x, 21, stride="coarse")  # -L 21: fc8
    want = model.spatial_model("coarse")(x)["class_logits"].numpy()
    assert coarse.shape == want.shape == (1, 3, 2, TINY.num_classes)
    np.testing.assert_allclose(coarse, want, rtol=1e-5, atol=1e-5)
    pool5 = ft.extract_features(model, x, "pool5", stride="fine")[0]  # stride-1 max-pool
    conv5 = _probe(model, "conv5", x)[0]
    h, w = conv5.shape[0] - 1, conv5.shape[1] - 1
    want = np.max([conv5[dy : dy + h, dx : dx + w] for dy in (0, 1) for dx in (0, 1)], axis=0)
    np.testing.assert_array_equal(pool5, want)


@pytest.mark.parametrize("stride", ["coarse", "fine"])
def test_feature_size_predicts_every_shape(model, stride, rng):
    for h, w in [(231, 231), (262, 300)]:
        x = _image(rng, h, w)[None]
        for name in ft.layer_names(TINY):
            got = ft.extract_features(model, x, name, stride=stride)
            want = (ft.feature_size(TINY, name, h, stride), ft.feature_size(TINY, name, w, stride))
            assert got.shape[1:3] == want, (name, h, w)
    assert ft.min_input_size(TINY, "fc7", stride) == 231
    assert ft.feature_size(TINY, "fc7", 230, stride) == 0


def test_pooled_is_the_spatial_max_and_lists_of_any_size(model, rng):
    images = [_image(rng, 231, 231), _image(rng, 280, 250), _image(rng, 240, 330)]
    dense = ft.extract_features(model, images, "fc7")
    pooled = ft.extract_features(model, images, "fc7", pooled=True)
    assert [d.shape for d in dense] == [(1, 1, 128), (2, 1, 128), (1, 4, 128)]
    for d, p in zip(dense, pooled, strict=True):
        assert p.shape == (128,)
        np.testing.assert_array_equal(p, d.max(axis=(0, 1)))
    single = ft.extract_features(model, images[1], "conv5", pooled=True)
    assert single.shape == (64,)
    batch = ft.extract_features(model, np.stack([images[0]] * 3), "fc7", batch_size=2)
    assert batch.shape == (3, 1, 1, 128)
    np.testing.assert_allclose(batch[2], dense[0], rtol=1e-5, atol=1e-6)


def test_too_small_images_and_bad_inputs(model, rng):
    with pytest.raises(ValueError, match=r"200x240 pixels is too small for layer fc7.*231"):
        ft.extract_features(model, _image(rng, 200, 240), "fc7")
    with pytest.raises(ValueError, match="RGB"):
        ft.extract_features(model, np.zeros((231, 231, 4), np.float32), "conv1")
    with pytest.raises(ValueError, match="OverFeat model"):
        ft.feature_model(keras.Sequential([keras.layers.Dense(2)]), "conv1")
    with pytest.raises(ValueError, match="stride"):
        ft.feature_model(model, "fc7", stride="medium")


def test_resize_short_side():
    image = tf.zeros((300, 450, 3), tf.uint8)
    assert resizing.resize_short_side(image, 231).shape == (231, 346, 3)
    assert resizing.resize_short_side(tf.zeros((500, 200, 3)), 100).shape == (250, 100, 3)
    same = resizing.resize_short_side(image, 0)
    assert same.shape == (300, 450, 3) and same.dtype == tf.float32


# --- command line -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """A folder of images of several sizes and formats, plus files that are no images."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)

    def pixels(h, w, c=3):
        return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)

    (folder / "wide.png").write_bytes(tf.io.encode_png(pixels(240, 320)).numpy())
    (folder / "tall.JPG").write_bytes(tf.io.encode_jpeg(pixels(400, 260)).numpy())
    (folder / "gray.png").write_bytes(tf.io.encode_png(pixels(231, 231, 1)).numpy())
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def _cli(model_file, image_dir, output, *extra):
    argv = ["--model", str(model_file), "--images", str(image_dir), "--output", str(output)]
    return features_command.main([*argv, *extra])


def test_cli_writes_one_npy_per_image(model, model_file, image_dir, tmp_path, capsys):
    out = tmp_path / "features"
    assert _cli(model_file, image_dir, out, "--layer", "conv5") == 0
    assert "Wrote 3 of 3 feature files" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["gray.png.npy", "tall.JPG.npy", "wide.png.npy"]
    for name, (h, w) in {"wide.png": (231, 308), "tall.JPG": (355, 231)}.items():
        image = resizing.resize_short_side(image_io.load_image(image_dir / name), 231)
        assert image.shape[:2] == (h, w)
        got = np.load(out / f"{name}.npy")
        assert got.dtype == np.float32
        assert got.shape == (
            ft.feature_size(TINY, "conv5", h),
            ft.feature_size(TINY, "conv5", w),
            64,
        )
        np.testing.assert_allclose(
            got, ft.extract_features(model, image.numpy(), "conv5"), rtol=1e-5, atol=1e-5
        )


def test_cli_pooled_numbered_layer_and_original_size(model, model_file, image_dir, tmp_path):
    out = tmp_path / "pooled"
    assert _cli(model_file, image_dir, out, "--layer", "20", "--pooled", "--size", "0") == 0
    gray = np.load(out / "gray.png.npy")
    assert gray.shape == (128,)
    pixels = image_io.load_image(image_dir / "gray.png").numpy().astype(np.float32)
    assert pixels.shape == (231, 231, 3)
    want = ft.extract_features(model, pixels, "fc7", pooled=True)  # -L 20: fc7 after ReLU
    np.testing.assert_allclose(gray, want, rtol=1e-5, atol=1e-5)
    tall = np.load(out / "tall.JPG.npy")
    assert tall.shape == (128,)


def test_cli_default_layer_is_overfeats_f(model, model_file, image_dir, tmp_path, capsys):
    """No --layer: what `overfeat -f` prints, -L 19 on this (fast-topology) net: fc7 pre-ReLU."""
    default, numbered = tmp_path / "default", tmp_path / "numbered"
    assert _cli(model_file, image_dir, default, "--size", "0") == 0
    assert "(fc7_linear, [H', W', C] dense)" in capsys.readouterr().out
    assert _cli(model_file, image_dir, numbered, "--layer", "19", "--size", "0") == 0
    pixels = image_io.load_image(image_dir / "gray.png").numpy().astype(np.float32)
    want = ft.extract_features(model, pixels, "fc7_linear")
    for folder in (default, numbered):
        got = np.load(folder / "gray.png.npy")
        assert got.shape == (1, 1, 128) and got.min() < 0
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cli_reports_bad_images_and_keeps_going(model_file, image_dir, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes((image_dir / "wide.png").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "small.png").write_bytes(tf.io.encode_png(tf.zeros((50, 60, 3), tf.uint8)).numpy())
    out = tmp_path / "out"
    assert _cli(model_file, folder, out, "--layer", "fc7", "--size", "0") == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "small.png" in err and "too small" in err
    assert "Traceback" not in err
    assert sorted(os.listdir(out)) == ["good.png.npy"]


def test_cli_setup_errors(model_file, image_dir, tmp_path, capsys):
    assert _cli(tmp_path / "none.keras", image_dir, tmp_path / "o", "--layer", "fc7") == 1
    assert "none.keras not found" in capsys.readouterr().err
    assert _cli(model_file, image_dir, tmp_path / "o", "--layer", "fc9") == 1
    assert "Unknown layer 'fc9'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(model_file, empty, tmp_path / "o", "--layer", "fc7") == 1
    assert "No images in" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_fc8_of_a_model_with_adaptation_layers_is_its_class_logits():
    model = OverFeat("tiny", num_classes=3, adaptation=(16,), kernel_initializer="he_normal")
    image = np.random.default_rng(5).uniform(0, 255, (1, 263, 263, 3)).astype(np.float32)
    fc8 = ft.feature_model(model, "fc8", "coarse")(image)
    logits = model.spatial_model("coarse")(image)["class_logits"]
    np.testing.assert_allclose(fc8, logits, rtol=1e-4, atol=1e-4)

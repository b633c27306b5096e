"""Feature extraction at any layer: names and OverFeat numbers, values, sizes, the CLI."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf import features as ft
from overfeat_tf import image_io
from overfeat_tf.config import ACCURATE, FAST, TINY
from overfeat_tf.models import OverFeat
from tests import reference as ref


@pytest.fixture(scope="module")
def model() -> OverFeat:
    """The tiny net with O(1) activations (the paper's N(0, 0.01) gives ~1e-8 features)."""
    keras.utils.set_random_seed(3)
    return OverFeat(TINY, kernel_initializer="he_normal")


def _image(rng, h: int, w: int) -> np.ndarray:
    return rng.uniform(0, 255, size=(h, w, 3)).astype(np.float32)


def _probe(model, name: str, x: np.ndarray) -> np.ndarray:
    """A layer's output in the model's own graph."""
    return keras.Model(model.input, model.get_layer(name).output)(x).numpy()


def test_layer_numbers_follow_overfeat_modules():
    """pad / conv / ReLU / pool each count, from 0; `overfeat -f` printed 19 (fast), 22."""
    fast = ft.layer_names(FAST)
    assert len(fast) == 21 and fast == ft.layer_names(TINY)
    assert fast[:7] == ["conv1_linear", "conv1", "pool1", "conv2_linear", "conv2", "pool2", "pad3"]
    assert fast[15:] == ["pool5", "fc6_linear", "fc6", "fc7_linear", "fc7", "fc8"]
    accurate = ft.layer_names(ACCURATE)
    assert len(accurate) == 24
    assert accurate[15:19] == ["pad6", "conv6_linear", "conv6", "pool6"]
    assert (fast[19], accurate[22]) == ("fc7", "fc7")
    assert ft.resolve_layer(FAST, 19) == ft.resolve_layer(FAST, "19") == "fc7"
    assert ft.resolve_layer(ACCURATE, "conv6") == "conv6"


@pytest.mark.parametrize("layer", ["conv9", "fc9", 21, -1, "pool3", True])
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
    x = _image(rng, 240, 250)[None]
    for i in (1, 3, 5):
        linear = ft.extract_features(model, x, f"conv{i}_linear")
        assert linear.min() < 0  # before the ReLU
        np.testing.assert_allclose(
            np.maximum(linear, 0), _probe(model, f"conv{i}", x), rtol=1e-5, atol=1e-5
        )
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
    coarse = ft.extract_features(model, x, "fc8", stride="coarse")
    want = model.spatial_model("coarse")(x)["class_logits"].numpy()
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
    assert ft.resize_short_side(image, 231).shape == (231, 346, 3)
    assert ft.resize_short_side(tf.zeros((500, 200, 3)), 100).shape == (250, 100, 3)
    same = ft.resize_short_side(image, 0)
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
    return ft.main([*argv, *extra])


def test_cli_writes_one_npy_per_image(model, model_file, image_dir, tmp_path, capsys):
    out = tmp_path / "features"
    assert _cli(model_file, image_dir, out, "--layer", "conv5") == 0
    assert "Wrote 3 of 3 feature files" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["gray.png.npy", "tall.JPG.npy", "wide.png.npy"]
    for name, (h, w) in {"wide.png": (231, 308), "tall.JPG": (355, 231)}.items():
        image = ft.resize_short_side(image_io.load_image(image_dir / name), 231)
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
    assert _cli(model_file, image_dir, out, "--layer", "19", "--pooled", "--size", "0") == 0
    gray = np.load(out / "gray.png.npy")
    assert gray.shape == (128,)
    pixels = image_io.load_image(image_dir / "gray.png").numpy().astype(np.float32)
    assert pixels.shape == (231, 231, 3)
    want = ft.extract_features(model, pixels, "fc7", pooled=True)
    np.testing.assert_allclose(gray, want, rtol=1e-5, atol=1e-5)
    tall = np.load(out / "tall.JPG.npy")
    assert tall.shape == (128,)


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

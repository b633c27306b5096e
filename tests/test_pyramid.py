"""The image pyramid (scales, snapping, flips, geometry) and multi-scale classification."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf.architecture.config import ACCURATE, ACCURATE_SCALES, FAST, TINY
from overfeat_tf.models import inference
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.ops import boxes, pyramid, resizing

# Paper Table 5 (and SPEC §1): the accurate net's fine output map at each of the six sizes.
TABLE5_FINE_MAPS = ((3, 3), (6, 9), (9, 15), (15, 21), (18, 24), (21, 30))


@pytest.fixture(scope="module")
def model() -> OverFeat:
    keras.utils.set_random_seed(0)
    return OverFeat(
        "tiny", num_classes=4, class_names=["a", "b", "c", "d"], kernel_initializer="he_normal"
    )


def test_default_scales():
    assert pyramid.default_scales("accurate") == ACCURATE_SCALES
    assert pyramid.default_scales("fast") == (247, 279, 327, 407, 439, 471)
    assert pyramid.default_scales(TINY) == pyramid.default_scales(FAST)


@pytest.mark.parametrize("config", [FAST, ACCURATE, TINY], ids=lambda c: c.name)
def test_snapped_sides_fit_the_fine_stride_exactly(config):
    crop, stride = config.crop_size, config.fine_stride
    for n in range(8):
        side = crop + stride * n
        assert pyramid.snap_side(side, crop, stride) == side
        assert pyramid.snap_side(side + stride - 1, crop, stride) == side
        assert config.output_size(side, "fine") == n + 1
        # one pixel less loses a whole output cell: the grid is exactly where maps fit
        assert config.output_size(side + stride - 1, "fine") == n + 1
    assert pyramid.snap_side(crop - 50, crop, stride) == crop


def test_accurate_landscape_image_runs_at_exactly_table5():
    for (h, w), fine in zip(ACCURATE_SCALES, TABLE5_FINE_MAPS, strict=True):
        size = pyramid.level_size(tf.constant([375, 500]), (h, w), ACCURATE).numpy()
        assert tuple(size) == (h, w)
        assert (ACCURATE.output_size(h), ACCURATE.output_size(w)) == fine
    # portrait images get the transposed sizes; square sizes stay
    assert tuple(pyramid.level_size([500, 375], (281, 317), ACCURATE).numpy()) == (317, 281)
    assert tuple(pyramid.level_size([500, 375], (245, 245), ACCURATE).numpy()) == (245, 245)


def test_int_scale_keeps_the_aspect_within_one_stride():
    for image_size in ([300, 450], [450, 300], [333, 1000], [231, 231]):
        for scale in (247, 327, 471):
            h, w = pyramid.level_size(image_size, scale, FAST).numpy()
            short, long = sorted(image_size)
            assert min(h, w) == scale  # default scales are on the grid already
            assert long * scale / short - 16 < max(h, w) <= long * scale / short + 0.5
            assert (h - 231) % 16 == 0 and (w - 231) % 16 == 0
    with pytest.raises(ValueError, match="positive int"):
        pyramid.level_size([10, 10], 0, FAST)
    with pytest.raises(ValueError, match="positive int"):
        pyramid.check_scales([(1, 2, 3)])


def test_build_pyramid_eager_matches_graph_with_unknown_size():
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3)).astype(np.uint8)
    scales = (247, (300, 250))
    eager = pyramid.build_pyramid(image, TINY, scales, flips=True)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def graph(x):
        return [
            (lv.image, lv.size, lv.factors, lv.flipped)
            for lv in pyramid.build_pyramid(x, TINY, scales)
        ]

    for level, (g_image, g_size, g_factors, g_flipped) in zip(eager, graph(image), strict=True):
        np.testing.assert_allclose(level.image.numpy(), g_image.numpy(), atol=1e-3)
        np.testing.assert_array_equal(level.size.numpy(), g_size.numpy())
        np.testing.assert_allclose(level.factors.numpy(), g_factors.numpy())
        np.testing.assert_array_equal(level.flipped.numpy(), g_flipped.numpy())
    first, second = eager
    assert tuple(first.size.numpy()) == (247, 407)  # 247 x 411.7 snapped down to 231 + 16 n
    assert tuple(second.size.numpy()) == (247, 295)  # pair, transposed for a landscape image
    assert first.image.shape == (2, 247, 407, 3)
    np.testing.assert_array_equal(first.flipped.numpy(), [False, True])
    np.testing.assert_array_equal(first.image[1].numpy(), first.image[0].numpy()[:, ::-1])
    np.testing.assert_allclose(first.factors.numpy(), [247 / 120, 407 / 200])
    np.testing.assert_array_equal(first.original_size.numpy(), [120, 200])


def test_build_pyramid_batches_and_no_flips():
    batch = np.zeros((3, 50, 60, 3), np.float32)
    (level,) = pyramid.build_pyramid(batch, TINY, [231], flips=False)
    assert level.image.shape == (3, 231, 263, 3)  # 277.2 snapped down
    (level,) = pyramid.build_pyramid(batch, TINY, [231], flips=True)
    np.testing.assert_array_equal(level.flipped.numpy(), [False] * 3 + [True] * 3)
    with pytest.raises(ValueError, match="RGB image"):
        pyramid.build_pyramid(np.zeros((5, 5)), TINY)


def test_level_geometry_maps_windows_back_to_the_original_image():
    image = np.zeros((120, 200, 3), np.uint8)
    (level,) = pyramid.build_pyramid(image, TINY, [247])
    w = level.size.numpy()[1]
    # the window of the last fine cell of the flipped entry touches the left border
    window = tf.constant([0.0, w - 231.0, 231.0, float(w)])
    back = boxes.level_to_original(window, level.original_size, level.size, flipped=True)
    np.testing.assert_allclose(
        back.numpy(), [0, 0, 231 / level.factors[0], 231 / level.factors[1]], rtol=1e-5, atol=1e-4
    )


# --- multi-scale classification -------------------------------------------------------------


def _manual_scores(model, image, sizes, stride):
    """The paper's recipe written out: resize, run, softmax, spatial max, mean."""
    net = model if stride == "fine" else model.spatial_model("coarse")
    vectors = []
    for size in sizes:
        resized = tf.image.resize(image[None].astype(np.float32), size, antialias=True)
        for view in (resized, resized[:, :, ::-1]):
            probs = tf.nn.softmax(net(view)["class_logits"])
            vectors.append(tf.reduce_max(probs, axis=[1, 2])[0].numpy())
    return np.mean(vectors, axis=0)


@pytest.mark.parametrize("stride", ["fine", "coarse"])
def test_classify_tensor_is_the_paper_recipe(model, stride):
    image = np.random.default_rng(1).integers(0, 256, (100, 140, 3)).astype(np.uint8)
    scales = (231, 263)
    scores = inference.classify_tensor(model, image, scales, flips=True, stride=stride).numpy()
    sizes = [tuple(pyramid.level_size([100, 140], s, TINY).numpy()) for s in scales]
    np.testing.assert_allclose(
        scores, _manual_scores(model, image, sizes, stride), rtol=1e-4, atol=1e-6
    )
    assert scores.shape == (4,)


def test_classify_tensor_in_tf_function_and_batched(model):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 90, 120, 3)).astype(np.float32)
    graph = tf.function(
        lambda x: inference.classify_tensor(model, x, (231, 247)),
        input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
    )
    batched = inference.classify_tensor(model, images, (231, 247)).numpy()
    for i in range(2):
        single = inference.classify_tensor(model, images[i], (231, 247)).numpy()
        np.testing.assert_allclose(graph(images[i]).numpy(), single, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(batched[i], single, rtol=1e-5, atol=1e-7)


def test_run_levels_geometry(model):
    outputs = inference.run_levels(model, np.zeros((100, 100, 3)), (247, 279), stride="fine")
    assert [o.stride for o in outputs] == [16, 16] and outputs[0].window == 231
    assert outputs[0].outputs["class_logits"].shape == (2, 2, 2, 4)  # 247 px: 2x2 fine cells
    assert outputs[1].outputs["class_logits"].shape == (2, 4, 4, 4)
    coarse = inference.run_levels(model, np.zeros((100, 100, 3)), (279,), stride="coarse")
    assert coarse[0].stride == 32 and coarse[0].outputs["class_logits"].shape == (2, 2, 2, 4)


def test_classify_notebook_api(model, tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (80, 120, 3)).astype(np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(tf.io.encode_png(image).numpy())
    result = inference.classify(model, str(path), scales=(231,), top_k=3)
    assert len(result["classes"]) == 3 and result["scores"] == sorted(
        result["scores"], reverse=True
    )
    assert result["class_names"] == [["a", "b", "c", "d"][i] for i in result["classes"]]
    same = inference.classify(model, image, scales=(231,), top_k=3)
    np.testing.assert_allclose(same["scores"], result["scores"], rtol=1e-6)
    assert len(inference.classify(model, image, scales=(231,), top_k=10)["classes"]) == 4
    with pytest.raises(ValueError, match="top_k"):
        inference.classify(model, image, top_k=0)


@pytest.mark.parametrize("shape", [(120, 200, 3), (600, 800, 3)], ids=["grows", "shrinks"])
def test_levels_are_the_shared_short_side_size_and_resize(shape):
    image = np.random.default_rng(4).integers(0, 256, shape).astype(np.uint8)
    scales = (231, 263, (300, 250))
    for level, scale in zip(pyramid.build_pyramid(image, TINY, scales, False), scales, strict=True):
        if isinstance(scale, int):
            target = resizing.short_side_size(shape[:2], scale).numpy()
            snapped = [pyramid.snap_side(int(s), 231, 16) for s in target]
            np.testing.assert_array_equal(level.size.numpy(), snapped)
        want = resizing.resize(image[None], level.size)
        np.testing.assert_array_equal(level.image.numpy(), want.numpy())

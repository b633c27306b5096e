"""DenseOffsetPooling, OffsetInterleave and MatmulConv2D against NumPy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf.models.layers import DenseOffsetPooling, MatmulConv2D, OffsetInterleave
from tests import reference as ref
from tests.harness import check_config_round_trip


def _offset_classifier(k: int, window: int, channels: int, filters: int, stride: str = "fine"):
    """pool at offsets -> one KxK conv -> interleave, as a functional model."""
    x = keras.Input((None, None, channels))
    pooled = DenseOffsetPooling(k, stride, window=window)(x)
    conv = MatmulConv2D(
        filters, window, kernel_initializer="he_normal", bias_initializer="he_normal"
    )
    y = OffsetInterleave(k, stride)([conv(pooled), x])
    return keras.Model(x, y), conv


def _numpy_fine(
    x: np.ndarray, k: int, window: int, kernel: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """fine[b, y, x] = classifier(max_pool(x[b, y : y + k*K, x : x + k*K])) (SPEC §2 fact 1)."""
    span = k * window
    b, h, w, _ = x.shape
    out = np.empty((b, h - span + 1, w - span + 1, kernel.shape[-1]))
    for n in range(b):
        for i in range(h - span + 1):
            for j in range(w - span + 1):
                win = ref.max_pool(x[n, i : i + span, j : j + span], k)
                out[n, i, j] = ref.dense(win, kernel, bias)
    return out


@pytest.mark.parametrize("k,window", [(2, 3), (3, 2)])
@pytest.mark.parametrize("hw", [(9, 9), (10, 13), (14, 11)])
def test_fine_map_is_classifier_at_every_offset(k, window, hw, rng):
    x = rng.normal(size=(2, *hw, 4)).astype("float32")
    model, conv = _offset_classifier(k, window, 4, 5)
    got = model(x).numpy()
    want = _numpy_fine(x, k, window, *[v.numpy() for v in (conv.kernel, conv.bias)])
    assert got.shape == want.shape == (2, hw[0] - k * window + 1, hw[1] - k * window + 1, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,window", [(2, 3), (3, 2)])
def test_coarse_map_is_fine_subgrid(k, window, rng):
    x = rng.normal(size=(3, 17, 20, 4)).astype("float32")
    fine, conv = _offset_classifier(k, window, 4, 6, "fine")
    coarse_in = keras.Input((None, None, 4))
    coarse = keras.Model(
        coarse_in,
        OffsetInterleave(k, "coarse")(
            [conv(DenseOffsetPooling(k, "coarse")(coarse_in)), coarse_in]
        ),
    )
    f, c = fine(x).numpy(), coarse(x).numpy()
    assert c.shape[1:3] == (17 // k - window + 1, 20 // k - window + 1)
    np.testing.assert_allclose(
        c, f[:, ::k, ::k][:, : c.shape[1], : c.shape[2]], rtol=1e-6, atol=1e-6
    )
    assert f[:, ::k, ::k].shape == c.shape


def test_pooling_layout_matches_space_to_batch_convention(rng):
    k = 3
    x = rng.normal(size=(2, 8, 7, 1)).astype("float32")
    out = DenseOffsetPooling(k)(x).numpy()  # [k*k*B, Hp, Wp, 1]
    assert out.shape == (18, 2, 2, 1)
    for dy in range(k):
        for dx in range(k):
            for b in range(2):
                want = ref.max_pool(x[b, dy:, dx:], k)
                got = out[(dy * k + dx) * 2 + b]
                np.testing.assert_array_equal(got[: want.shape[0], : want.shape[1]], want)


def test_static_output_shapes(rng):
    k = 3
    x = keras.Input((20, 23, 4), batch_size=2)
    pooled = DenseOffsetPooling(k)(x)
    assert tuple(pooled.shape) == (18, 6, 7, 4)
    maps = MatmulConv2D(5, 5)(pooled)
    assert tuple(OffsetInterleave(k)([maps, x]).shape) == (2, 6, 9, 5)  # paper Fig. 3: 20 -> 6
    assert tuple(DenseOffsetPooling(k, "coarse")(x).shape) == (2, 6, 7, 4)


@pytest.mark.parametrize("batch", [1, 3])
def test_works_in_tf_function_with_unknown_sizes(batch, rng):
    model, _ = _offset_classifier(2, 2, 3, 4)
    fn = tf.function(model, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    for hw in [(8, 8), (11, 9)]:
        x = rng.normal(size=(batch, *hw, 3)).astype("float32")
        np.testing.assert_allclose(fn(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


def test_works_inside_tf_data(rng):
    model, _ = _offset_classifier(3, 2, 3, 4)
    images = rng.normal(size=(4, 12, 14, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(images).batch(2).map(model)
    got = np.concatenate([b.numpy() for b in ds])
    np.testing.assert_allclose(got, model(images).numpy(), rtol=1e-5, atol=1e-5)


def test_too_small_input_is_a_clear_error(rng):
    layer = DenseOffsetPooling(2, window=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="too small"):
        layer(rng.normal(size=(1, 5, 9, 2)).astype("float32"))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="stride"):
        DenseOffsetPooling(2, stride="medium")
    with pytest.raises(ValueError, match="pool_size"):
        OffsetInterleave(0)


@pytest.mark.parametrize("kernel,padding", [(3, "valid"), (1, "valid"), (3, "same")])
def test_matmul_conv_matches_numpy_and_conv2d(kernel, padding, rng):
    x = rng.normal(size=(2, 7, 9, 5)).astype("float32")
    layer = MatmulConv2D(6, kernel, padding=padding, bias_initializer="he_normal")
    plain = keras.layers.Conv2D(6, kernel, padding=padding)
    got = layer(x).numpy()
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(got, plain(x).numpy(), rtol=1e-5, atol=1e-5)
    if padding == "valid":
        w, b = (v.numpy() for v in (layer.kernel, layer.bias))
        want = np.stack([ref.conv2d(xi, w, b) for xi in x])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_matmul_conv_gradients_match_conv2d(rng):
    x = tf.constant(rng.normal(size=(2, 6, 6, 3)).astype("float32"))
    layer, plain = MatmulConv2D(4, 3), keras.layers.Conv2D(4, 3)
    layer.build(x.shape)
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    grads = []
    for conv in (layer, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(conv(x) ** 2)
        grads.append(tape.gradient(loss, [x, conv.kernel]))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "layer,args",
    [
        (DenseOffsetPooling, {"pool_size": 3, "stride": "coarse", "window": 5}),
        (OffsetInterleave, {"pool_size": 2, "stride": "fine"}),
    ],
)
def test_get_config_round_trip(layer, args):
    original = layer(**args)
    config = original.get_config()
    for key, value in args.items():
        assert config[key] == value
    check_config_round_trip(original)


def test_bfloat16_policy_computes_in_bfloat16(rng):
    x = rng.normal(size=(1, 10, 10, 4)).astype("float32")
    model, conv = _offset_classifier(2, 2, 4, 3)
    inp = keras.Input((None, None, 4))
    pooled = DenseOffsetPooling(2, dtype="mixed_bfloat16")(inp)
    conv16 = MatmulConv2D(3, 2, dtype="mixed_bfloat16")
    out = OffsetInterleave(2, dtype="mixed_bfloat16")([conv16(pooled), inp])
    model16 = keras.Model(inp, out)
    conv16.set_weights(conv.get_weights())
    y16 = model16(x)
    assert y16.dtype == tf.bfloat16
    np.testing.assert_allclose(y16.numpy().astype("float32"), model(x).numpy(), rtol=0.05, atol=0.1)

"""The OverFeat networks: paper sizes, offset-pooling facts on whole nets, serialization."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import overfeat_tf
from overfeat_tf.architecture.config import ACCURATE, ACCURATE_SCALES, TINY, ConvSpec, ModelConfig
from overfeat_tf.models.backbone import OverFeat
from tests import reference as ref
from tests.harness import check_config_round_trip

# Narrow nets of both topologies, with and without the 3x3 layers' zero padding.
TINY3 = ModelConfig(  # the accurate topology (k = 3), narrow
    name="tiny3",
    crop_size=221,
    convs=(
        ConvSpec(8, 7, stride=2, pool=3),
        ConvSpec(12, 7, pool=2),
        ConvSpec(16, 3, padding=1),
        ConvSpec(16, 3, padding=1, pool=3),
    ),
    fc6_filters=24,
    fc7_filters=20,
    num_classes=7,
    regressor_filters=(8, 8),
)


def _unpadded(config: ModelConfig) -> ModelConfig:
    """The same net without zero padding, at the smallest crop whose fine map is 1x1."""
    convs = tuple(ConvSpec(c.filters, c.kernel, c.stride, 0, c.pool) for c in config.convs)
    k = config.convs[-1].pool
    for crop in range(64, 400):
        probe = ModelConfig("probe", 400, convs, 4, 4)  # valid placeholder to use the geometry
        pooled = probe.unpooled_size(crop) // k
        if pooled >= 2 and probe.unpooled_size(crop) == k * pooled:
            return config.replace(name=config.name + "_unpadded", convs=convs, crop_size=crop)
    raise AssertionError("no crop size found")


def _numbers(model: OverFeat, x: np.ndarray) -> np.ndarray:
    return model(x)["class_logits"].numpy()


def _he(config, **kwargs) -> OverFeat:
    """A net with O(1) activations (the paper's N(0, 0.01) init gives ~1e-8 logits)."""
    keras.utils.set_random_seed(1)
    return OverFeat(config, kernel_initializer="he_normal", **kwargs)


def test_parameter_counts_match_the_paper():
    assert OverFeat("fast").count_params() == 145_920_872
    assert OverFeat("accurate").count_params() == 144_656_488


def test_layers_are_named_after_the_paper():
    names = {layer.name for layer in OverFeat("accurate").layers}
    assert {f"conv{i}" for i in range(1, 7)} | {"fc6", "fc7", "fc8"} <= names
    fast = OverFeat("fast")
    assert fast.get_layer("fc6").kernel.shape == (6, 6, 1024, 3072)
    assert fast.get_layer("conv1").kernel.shape == (11, 11, 3, 96)
    assert OverFeat("accurate").get_layer("fc6").kernel.shape == (5, 5, 1024, 4096)


def test_accurate_table5_sizes():
    """Paper Table 5: layer-5 unpooled sizes and fine-stride output maps at six scales."""
    layer5 = [(17, 17), (20, 23), (23, 29), (29, 35), (32, 38), (35, 44)]
    fine = [(3, 3), (6, 9), (9, 15), (15, 21), (18, 24), (21, 30)]
    per_offset = [(1, 1), (2, 3), (3, 5), (5, 7), (6, 8), (7, 10)]
    model = OverFeat("accurate")
    probe = keras.Model(
        model.input, [model.get_layer("conv6").output, model.output["class_logits"]]
    )
    for (h, w), l5, f, c in zip(ACCURATE_SCALES, layer5, fine, per_offset, strict=True):
        unpooled, logits = probe(np.zeros((1, h, w, 3), "float32"))
        assert unpooled.shape[1:3] == l5, (h, w)
        assert logits.shape == (1, *f, 1000), (h, w)
        assert (ACCURATE.output_size(h), ACCURATE.output_size(w)) == f
        assert (ACCURATE.output_size(h, "coarse"), ACCURATE.output_size(w, "coarse")) == c


@pytest.mark.parametrize("config", [TINY, TINY3], ids=["k2", "k3"])
def test_fine_output_is_classifier_on_unpooled_windows(config, rng):
    """SPEC §2 fact 1 on a whole net: NumPy max-pool + matmul classifier over windows."""
    model = _he(config)
    k, window = config.pool_size, config.fc6_window
    x = rng.uniform(0, 255, size=(2, config.crop_size + 40, config.crop_size + 27, 3)).astype(
        "float32"
    )
    last = f"conv{len(config.convs)}_relu"  # the unpooled last map, after its ReLU
    unpooled = keras.Model(model.input, model.get_layer(last).output)(x).numpy()
    weights = {
        n: tuple(v.numpy() for v in model.get_layer(n).weights) for n in ("fc6", "fc7", "fc8")
    }
    got = _numbers(model, x)
    span = k * window
    assert got.shape[1:3] == (unpooled.shape[1] - span + 1, unpooled.shape[2] - span + 1)
    for b in range(2):
        for i in range(got.shape[1]):
            for j in range(got.shape[2]):
                win = ref.max_pool(unpooled[b, i : i + span, j : j + span], k)
                np.testing.assert_allclose(
                    got[b, i, j], ref.classifier(win, weights), rtol=2e-4, atol=2e-4
                )


@pytest.mark.parametrize("config", [TINY, TINY3], ids=["k2", "k3"])
def test_coarse_is_fine_subgrid_and_crop_model_agrees(config, rng):
    """SPEC §2 facts 2 and 3."""
    model = _he(config)
    k = config.pool_size
    x = rng.uniform(0, 255, size=(2, config.crop_size + 50, config.crop_size + 31, 3)).astype(
        "float32"
    )
    fine, coarse = _numbers(model, x), _numbers(model.spatial_model("coarse"), x)
    np.testing.assert_allclose(
        coarse, fine[:, ::k, ::k][:, : coarse.shape[1], : coarse.shape[2]], rtol=1e-5, atol=1e-4
    )
    assert coarse.shape[1] == (fine.shape[1] + k - 1) // k
    crop = x[:, : config.crop_size, : config.crop_size]
    spatial = _numbers(model, crop)
    assert spatial.shape == (2, 1, 1, config.num_classes)
    np.testing.assert_allclose(
        spatial[:, 0, 0], model.crop_model()(crop).numpy(), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("config", [TINY, TINY3], ids=["k2", "k3"])
def test_each_cell_is_the_net_on_its_input_crop(config, rng):
    """SPEC §2 fact 4, for a net without zero padding."""
    config = _unpadded(config)
    model = _he(config)
    crop_model = model.crop_model()
    s, size = config.fine_stride, config.crop_size
    x = rng.uniform(0, 255, size=(1, size + 3 * s + 5, size + 2 * s, 3)).astype("float32")
    fine = _numbers(model, x)
    assert fine.shape[1:3] == (4, 3)
    for i in range(4):
        for j in range(3):
            want = crop_model(x[:, i * s : i * s + size, j * s : j * s + size]).numpy()
            np.testing.assert_allclose(fine[:, i, j], want, rtol=1e-4, atol=1e-4)


def test_padded_net_cells_match_crops_only_away_from_border(rng):
    """The 3x3 layers' zero padding makes the fact hold only for interior cells."""
    model = _he(TINY)
    s, size = TINY.fine_stride, TINY.crop_size
    x = rng.uniform(0, 255, size=(1, size + 6 * s, size + 6 * s, 3)).astype("float32")
    fine = _numbers(model, x)
    crop = model.crop_model()(x[:, 3 * s : 3 * s + size, 3 * s : 3 * s + size]).numpy()
    assert not np.allclose(fine[:, 3, 3], crop, rtol=1e-4, atol=1e-4)  # border of the crop differs
    whole = _numbers(model, x[:, :size, :size])
    np.testing.assert_allclose(
        whole[:, 0, 0], model.crop_model()(x[:, :size, :size]).numpy(), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("batch", [1, 3])
def test_spatial_model_any_size_and_batch(batch, rng):
    model = _he(TINY, regressor="class_specific")
    for h, w in [(231, 231), (260, 301)]:
        out = model(rng.uniform(0, 255, size=(batch, h, w, 3)).astype("float32"))
        shape = (batch, TINY.output_size(h), TINY.output_size(w))
        assert out["class_logits"].shape == (*shape, TINY.num_classes)
        assert out["box_deltas"].shape == (*shape, 4 * TINY.num_classes)


def test_background_class_comes_last(rng):
    model = _he(TINY, background=True)
    x = rng.uniform(0, 255, size=(1, 231, 231, 3)).astype("float32")
    assert model(x)["class_logits"].shape == (1, 1, 1, TINY.num_classes + 1)
    assert model.crop_model()(x).shape == (1, TINY.num_classes + 1)
    assert model.num_classes == TINY.num_classes


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown model"):
        OverFeat("huge")
    with pytest.raises(ValueError, match="class_names"):
        OverFeat("tiny", num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="regressor"):
        OverFeat("tiny", regressor="yes")
    with pytest.raises(ValueError, match="crop_size"):
        OverFeat("tiny").crop_model(200)


def test_get_config_round_trip():
    args = {
        "architecture": TINY3.to_dict(),
        "num_classes": 3,
        "class_names": ["cat", "dog", "kit fox"],
        "stride": "coarse",
        "regressor": "class_agnostic",
        "background": True,
        "kernel_initializer": "he_normal",
        "dtype": "mixed_bfloat16",
        "name": "my_overfeat",
    }
    model = OverFeat(**args)
    config = model.get_config()
    for key, value in args.items():
        want = dict(value, num_classes=3) if key == "architecture" else value
        assert config[key] == want, key
    again = check_config_round_trip(model)
    assert again.count_params() == model.count_params()


def test_keras_file_loads_in_fresh_process(tmp_path, rng):
    model = _he(TINY, class_names=[f"shape{i}" for i in range(10)], regressor="class_agnostic")
    x = rng.uniform(0, 255, size=(2, 250, 280, 3)).astype("float32")
    path = tmp_path / "tiny.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    script = f"""
import json, keras, numpy as np, overfeat_tf
m = keras.models.load_model({str(path)!r})
out = m(np.load({str(tmp_path / "x.npy")!r}))
np.save({str(tmp_path / "logits.npy")!r}, out["class_logits"].numpy())
np.save({str(tmp_path / "deltas.npy")!r}, out["box_deltas"].numpy())
print(json.dumps({{"type": type(m).__name__, "names": m.class_names, "stride": m.stride}}))
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert info == {"type": "OverFeat", "names": model.class_names, "stride": "fine"}
    out = model(x)
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), out["class_logits"].numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "deltas.npy"), out["box_deltas"].numpy())


def test_bfloat16_inference(rng):
    model = _he(TINY)
    model16 = OverFeat(TINY, dtype="mixed_bfloat16")
    model16.set_weights(model.get_weights())
    assert model16.get_layer("fc6").compute_dtype == "bfloat16"
    assert model16.get_layer("conv1").kernel.dtype == "float32"
    x = rng.uniform(0, 255, size=(2, 260, 250, 3)).astype("float32")
    y, y16 = _numbers(model, x), model16(x)["class_logits"]
    assert y16.dtype == "float32"
    scale = np.abs(y).max()
    np.testing.assert_allclose(y16.numpy(), y, atol=0.05 * scale)


def test_global_mixed_precision_policy(rng):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = OverFeat("tiny")
        assert model.get_layer("fc7").compute_dtype == "bfloat16"
        assert model(np.zeros((1, 231, 231, 3), "float32"))["class_logits"].dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_package_exports():
    assert overfeat_tf.OverFeat is OverFeat
    assert overfeat_tf.model_config("tiny") is TINY

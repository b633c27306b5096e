"""Shared test helpers: quiet TF logs, small references in NumPy."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_net():
    """A factory of tiny random-weight detection nets (3 classes + background, class-specific
    regressor, He init): `tiny_net(seed)`, as train.py's localize stage leaves them."""
    import keras

    from overfeat_tf.models.backbone import OverFeat

    def make(seed: int = 0, names: tuple[str, ...] = ("disk", "ring", "star")) -> OverFeat:
        keras.utils.set_random_seed(seed)
        return OverFeat(
            "tiny",
            class_names=list(names),
            background=True,
            regressor="class_specific",
            kernel_initializer="he_normal",
        )

    return make


@pytest.fixture(scope="session")
def shapes_small_dir(tmp_path_factory):
    """A TFDS data directory holding the generated `overfeat_shapes/small` (48 / 16 / 16)."""
    import tensorflow_datasets as tfds

    import overfeat_tf.data.shapes  # noqa: F401 (registers overfeat_shapes)

    data_dir = tmp_path_factory.mktemp("tfds_small")
    tfds.builder("overfeat_shapes/small", data_dir=str(data_dir)).download_and_prepare()
    return data_dir

"""The tf.data pipeline: every op eagerly and inside `Dataset.map`, corrupt records, TFDS.

`OverfeatToy` (a throwaway TFDS builder: solid-ish colour images, class = dominant channel)
and `make_toy_dataset` are shared with the training and evaluation tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from overfeat_tf.data import image_io, tfds_io
from overfeat_tf.data import inputs as data

TOY_NAME = "overfeat_toy"
TOY_CLASSES = ("red", "green", "blue")
TOY_SPLITS = {"train": 24, "test": 9}


def toy_image(index: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A small image whose class is its dominant colour channel (learnable, varied sizes)."""
    label = index % len(TOY_CLASSES)
    height, width = (int(v) for v in rng.integers(40, 100, size=2))
    image = rng.integers(0, 90, size=(height, width, 3))
    image[..., label] += 160
    return image.astype(np.uint8), label


class OverfeatToy(tfds.core.GeneratorBasedBuilder):
    """A tiny classification dataset for tests (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS looks for a checksums file next to the builder's code through
    # `importlib_resources`, which this environment lacks; a test builder has none.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(TOY_CLASSES)),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(name, n) for name, n in TOY_SPLITS.items()}

    def _generate_examples(self, split: str, count: int):
        rng = np.random.default_rng(list(TOY_SPLITS).index(split))
        for i in range(count):
            image, label = toy_image(i, rng)
            yield i, {"image": image, "label": label}


def make_toy_dataset(data_dir: str | os.PathLike) -> str:
    """Prepare `overfeat_toy` in `data_dir` (once); returns its TFDS name.

    Another process finds it by name with the same `data_dir` (TFDS reads prepared
    datasets without their builder class).
    """
    OverfeatToy(data_dir=str(data_dir)).download_and_prepare()
    return TOY_NAME


def encoded_examples(count: int, corrupt: tuple[int, ...] = (), seed: int = 0) -> tf.data.Dataset:
    """A tf.data dataset of `{"image": PNG bytes, "label"}`; `corrupt` indices get bad bytes."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        image, label = toy_image(i, rng)
        encoded = tf.io.encode_png(image).numpy()
        if i in corrupt:
            encoded = encoded[: len(encoded) // 2] if i % 2 else b"not an image"
        images.append(encoded)
        labels.append(label)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tfds")
    make_toy_dataset(directory)
    return directory


def _in_dataset(fn, *inputs, unknown_shape: bool = True):
    """Run `fn` inside `Dataset.map` on `inputs`, with their shapes unknown (as from TFDS)."""
    inputs = tuple(tf.convert_to_tensor(x) for x in inputs)
    signature = tuple(
        tf.TensorSpec([None] * x.shape.rank if unknown_shape else x.shape, x.dtype) for x in inputs
    )
    dataset = tf.data.Dataset.from_generator(lambda: iter([inputs]), output_signature=signature)
    return next(iter(dataset.map(fn, num_parallel_calls=2)))


def _image(height: int = 60, width: int = 90, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


# --- decode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_decode_image_eager_and_in_dataset(channels):
    image = _image(channels=channels)
    expected = np.repeat(image[..., :1], 3, -1) if channels < 3 else image[..., :3]
    encoded = tf.io.encode_png(image)
    for source in (encoded, image):
        eager = image_io.to_rgb(source)
        mapped = _in_dataset(image_io.to_rgb, source)
        assert eager.dtype == tf.float32 and mapped.shape == (60, 90, 3)
        np.testing.assert_array_equal(eager.numpy(), expected)
        np.testing.assert_array_equal(mapped.numpy(), expected)


def test_decode_image_rejects_bad_bytes_eagerly_and_in_dataset():
    for bad in (b"", b"not an image", tf.io.encode_png(_image()).numpy()[:50]):
        with pytest.raises(tf.errors.InvalidArgumentError):
            image_io.to_rgb(tf.constant(bad))
        with pytest.raises(tf.errors.InvalidArgumentError):
            _in_dataset(image_io.to_rgb, tf.constant(bad))


# --- rescale, crops, flips ------------------------------------------------------------------


@pytest.mark.parametrize(("size", "expected"), [((60, 90), (256, 384)), ((500, 300), (427, 256))])
def test_rescale_short_side_eager_matches_dataset(size, expected):
    image = _image(*size)
    eager = data.rescale_short_side(image, 256)
    mapped = _in_dataset(lambda x: data.rescale_short_side(x, 256), image)
    assert tuple(eager.shape) == (*expected, 3) == tuple(mapped.shape)
    np.testing.assert_allclose(eager.numpy(), mapped.numpy(), atol=1e-3)
    assert 0 <= eager.numpy().min() and eager.numpy().max() <= 255
    # Static shapes are lost inside tf.data; the op must not depend on them.
    assert _in_dataset(lambda x: tf.shape(data.rescale_short_side(x, 32)), image).numpy()[0] > 0


def test_rescale_antialiases_only_when_shrinking():
    stripes = np.zeros((512, 512, 3), np.uint8)
    stripes[::2] = 255  # one-pixel stripes: plain bilinear at 1/2 would alias to ~0 or ~255
    shrunk = data.rescale_short_side(stripes, 256).numpy()
    assert abs(shrunk.mean() - 127.5) < 2 and shrunk.std() < 5


def _find(window: np.ndarray, image: np.ndarray) -> tuple[int, int]:
    """Where `window` sits in `image` (exact match)."""
    h, w = window.shape[:2]
    for top in range(image.shape[0] - h + 1):
        for left in range(image.shape[1] - w + 1):
            if np.array_equal(image[top : top + h, left : left + w], window):
                return top, left
    raise AssertionError("crop not found in the image")


def test_random_crop_is_a_window_and_seeded_the_same_eagerly_and_in_dataset():
    image = _image(40, 50).astype(np.float32)
    seed = tf.constant([3, 4], tf.int64)
    eager = data.random_crop(image, 31, seed).numpy()
    mapped = _in_dataset(lambda x, s: data.random_crop(x, 31, s), image, seed).numpy()
    np.testing.assert_array_equal(eager, mapped)
    assert eager.shape == (31, 31, 3)
    _find(eager, image)
    offsets = {_find(data.random_crop(image, 31, [i, 0]).numpy(), image) for i in range(12)}
    assert len(offsets) > 4  # different seeds, different windows
    unseeded = _in_dataset(lambda x: data.random_crop(x, 31), image).numpy()
    _find(unseeded, image)


def test_random_crop_too_large_fails():
    with pytest.raises(tf.errors.InvalidArgumentError):
        data.random_crop(_image(20, 50), 31, tf.constant([1, 2]))
    with pytest.raises(ValueError, match="positive int"):
        data.random_crop(_image(), 0)


def test_center_crop_eager_and_in_dataset():
    image = _image(41, 60)
    eager = data.center_crop(image, 31).numpy()
    np.testing.assert_array_equal(eager, image[5:36, 14:45])
    np.testing.assert_array_equal(_in_dataset(lambda x: data.center_crop(x, 31), image), eager)


def test_random_flip_seeded_eager_matches_dataset_and_flips_half():
    image = _image(10, 12)
    seeds = np.stack([np.arange(40), np.full(40, 7)], axis=1)
    dataset = tf.data.Dataset.from_generator(
        lambda: ((image, seed) for seed in seeds),
        output_signature=(
            tf.TensorSpec([None, None, None], tf.uint8),
            tf.TensorSpec([2], tf.int64),
        ),
    )
    mapped = list(dataset.map(data.random_flip, num_parallel_calls=2))
    flipped = 0
    for seed, in_dataset in zip(seeds, mapped, strict=True):
        eager = data.random_flip(image, tf.constant(seed)).numpy()
        np.testing.assert_array_equal(eager, in_dataset.numpy())
        if np.array_equal(eager, image[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(eager, image)
    assert 10 <= flipped <= 30
    assert _in_dataset(data.random_flip, image).shape == image.shape


def test_train_crop_eager_matches_dataset():
    image = _image(70, 120)
    seed = tf.constant([1, 2], tf.int64)
    eager = data.train_crop(image, 231, seed)
    mapped = _in_dataset(lambda x, s: data.train_crop(x, 231, s), image, seed)
    assert eager.shape == (231, 231, 3) and eager.dtype == tf.float32
    np.testing.assert_allclose(eager.numpy(), mapped.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="short_side"):
        data.train_crop(image, 231, seed, short_side=200)


# --- labels ---------------------------------------------------------------------------------


def test_example_label_classification_and_detection_schemas():
    assert int(data.example_label({"label": tf.constant(4)})) == 4
    boxes = tf.constant([[0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.9, 0.8], [0.5, 0.5, 0.6, 0.9]])
    detection = {"objects": {"bbox": boxes, "label": tf.constant([2, 7, 5], tf.int64)}}
    assert int(data.example_label(detection)) == 7  # the largest box
    flat = {"objects/bbox": boxes, "objects/label": tf.constant([2, 7, 5], tf.int64)}
    assert int(data.example_label(flat)) == 7
    empty = {"objects": {"bbox": tf.zeros([0, 4]), "label": tf.zeros([0], tf.int64)}}
    assert int(data.example_label(empty)) == -1
    with pytest.raises(ValueError, match="neither a `label`"):
        data.example_label({"image": tf.constant(b"")})


def test_example_label_in_dataset_with_ragged_objects():
    def examples():
        yield {"bbox": np.array([[0, 0, 0.1, 0.1], [0, 0, 0.5, 0.5]], np.float32), "label": [3, 1]}
        yield {"bbox": np.zeros([0, 4], np.float32), "label": np.zeros([0], np.int64)}

    spec = {"bbox": tf.TensorSpec([None, 4], tf.float32), "label": tf.TensorSpec([None], tf.int64)}
    dataset = tf.data.Dataset.from_generator(examples, output_signature=spec)
    labels = [int(x) for x in dataset.map(lambda o: data.example_label({"objects": o}))]
    assert labels == [1, -1]


# --- corrupt records ------------------------------------------------------------------------


def test_skip_corrupt_drops_and_counts_exactly():
    counter = data.CorruptRecordCounter()
    source = encoded_examples(12, corrupt=(2, 5, 6, 11))
    decoded = source.apply(data.skip_corrupt(data.decode_example, counter))
    labels = [int(label) for _, label in decoded]
    expected = [int(x["label"]) for i, x in enumerate(source) if i not in (2, 5, 6, 11)]
    assert labels == expected  # order kept, good records untouched
    assert counter.value() == 4


def test_training_dataset_skips_corrupt_records_and_keeps_going():
    counter = data.CorruptRecordCounter()
    dataset = data.training_dataset(
        encoded_examples(10, corrupt=(1, 4)), "train", 64, 4, short_side=72, counter=counter
    )
    batches = list(dataset.take(6))  # several passes over the 8 good records
    images, labels = batches[0]
    assert images.shape == (4, 64, 64, 3) and images.dtype == tf.float32
    assert labels.shape == (4,) and labels.dtype == tf.int32
    assert 2 <= counter.value()  # counted on every pass over the corrupt records
    one_pass = data.CorruptRecordCounter()
    dataset = data.training_dataset(
        encoded_examples(10, corrupt=(1, 4)),
        "train",
        64,
        3,
        short_side=72,
        counter=one_pass,
        repeat=False,
        drop_remainder=False,
    )
    assert sum(int(labels.shape[0]) for _, labels in dataset) == 8
    assert one_pass.value() == 2


def test_training_dataset_is_reproducible_from_its_seed():
    def first_batch(seed: int) -> np.ndarray:
        dataset = data.training_dataset(
            encoded_examples(8), "train", 64, 4, short_side=72, seed=seed
        )
        return next(iter(dataset))[0].numpy()

    np.testing.assert_array_equal(first_batch(1), first_batch(1))
    assert not np.array_equal(first_batch(1), first_batch(2))


def test_training_dataset_cache_and_eval_modes():
    cached = data.training_dataset(encoded_examples(6), "train", 64, 3, short_side=72, cache=True)
    for images, labels in cached.take(4):
        assert images.shape == (3, 64, 64, 3) and labels.shape == (3,)
    evaluation = data.training_dataset(
        encoded_examples(5),
        "test",
        64,
        2,
        short_side=72,
        training=False,
        repeat=False,
        drop_remainder=False,
    )
    sizes = [int(labels.shape[0]) for _, labels in evaluation]
    assert sizes == [2, 2, 1]
    first = next(iter(evaluation))[0][0].numpy()
    image = image_io.to_rgb(next(iter(encoded_examples(1)))["image"])
    np.testing.assert_allclose(first, data.eval_crop(image, 64, 72).numpy(), atol=1e-3)


def test_cached_training_crops_are_float_windows_of_the_rescaled_image():
    # The cached pipeline cuts and flips the uint8 image and casts each batch at once: every
    # crop is float32 and equals a window of the rescaled image, mirrored or not.
    example = next(iter(encoded_examples(1)))
    rescaled = data.rescale_short_side(image_io.to_rgb(example["image"]), 72)
    rescaled = tf.cast(tf.round(rescaled), tf.uint8).numpy().astype(np.float32)
    one = tf.data.Dataset.from_tensors(example)
    cached = data.training_dataset(one, "train", 64, 4, short_side=72, cache=True)
    height, width = rescaled.shape[:2]
    windows = [
        rescaled[y : y + 64, x : x + 64] for y in range(height - 63) for x in range(width - 63)
    ]
    flips = 0
    for images, _ in cached.take(3):
        assert images.dtype == tf.float32
        for crop in images.numpy():
            plain = any(np.array_equal(crop, w) for w in windows)
            mirrored = any(np.array_equal(crop[:, ::-1], w) for w in windows)
            assert plain or mirrored
            flips += int(mirrored and not plain)
    assert 0 < flips < 12


def test_training_dataset_on_detection_schema():
    rng = np.random.default_rng(0)
    images = [tf.io.encode_png(toy_image(i, rng)[0]).numpy() for i in range(4)]
    boxes = tf.ragged.constant(
        [[[0, 0, 0.9, 0.9]], [[0, 0, 0.1, 0.1], [0, 0, 0.8, 0.8]], [], [[0.2, 0.2, 0.5, 0.5]]],
        ragged_rank=1,
    )
    labels = tf.ragged.constant([[0], [1, 2], [], [1]])
    source = tf.data.Dataset.from_tensor_slices(
        {"image": images, "objects": {"bbox": boxes, "label": labels}}
    ).map(lambda e: {"image": e["image"], "objects": {k: v for k, v in e["objects"].items()}})
    dataset = data.training_dataset(
        source, "train", 64, 3, short_side=72, repeat=False, training=False
    )
    ((crops, got),) = list(dataset)
    assert crops.shape == (3, 64, 64, 3)
    assert got.numpy().tolist() == [0, 2, 1]  # largest box's label; the empty image dropped


# --- TFDS -----------------------------------------------------------------------------------


def test_tfds_dataset_by_name(toy_data_dir):
    builder = tfds_io.load_builder(TOY_NAME, toy_data_dir)
    assert tfds_io.class_names(builder) == list(TOY_CLASSES)
    assert tfds_io.num_examples(builder, "train") == TOY_SPLITS["train"]
    dataset = data.training_dataset(TOY_NAME, "train", 231, 8, data_dir=toy_data_dir)
    images, labels = next(iter(dataset))
    assert images.shape == (8, 231, 231, 3) and set(labels.numpy()) <= {0, 1, 2}
    decoded = list(data.decoded_split(TOY_NAME, "test", toy_data_dir))
    assert len(decoded) == TOY_SPLITS["test"]
    assert all(image.shape[0] >= 40 and image.shape[-1] == 3 for image, _ in decoded)


def test_imagenet_without_manual_files_says_where_the_tars_go(tmp_path):
    with pytest.raises(ValueError) as error:
        tfds_io.load_builder("imagenet2012", data_dir=tmp_path)
    message = str(error.value)
    assert "~/tensorflow_datasets/downloads/manual/" in message
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert str(tmp_path / "downloads" / "manual") in message
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in tfds_io.IMAGENET_TARS.values():
        (manual / name).touch()
    tfds_io.check_imagenet_manual_files(manual, ("train", "validation"))  # no error
    (manual / tfds_io.IMAGENET_TARS["train"]).unlink()
    with pytest.raises(ValueError, match=r"ILSVRC2012_img_train\.tar not found"):
        tfds_io.check_imagenet_manual_files(manual, ("train",))
    tfds_io.check_imagenet_manual_files(manual, ("validation",))  # only that split's tar needed

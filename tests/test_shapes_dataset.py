"""The generated `overfeat_shapes` TFDS dataset: building, features, determinism, boxes."""

import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from overfeat_tf.data import tfds_io
from overfeat_tf.data.shapes import SHAPE_CLASSES, SPLIT_IDS, OverfeatShapesConfig, render_example

SMALL_SIZES = {"train": 48, "validation": 16, "test": 16}


def _build(data_dir, name="overfeat_shapes/small", **kwargs):
    builder = tfds.builder(name, data_dir=str(data_dir), **kwargs)
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def small_dir(shapes_small_dir):
    return shapes_small_dir


@pytest.fixture(scope="module")
def small(small_dir):
    return _build(small_dir)


@pytest.fixture(scope="module")
def rendered():
    return [render_example(seed, return_masks=True) for seed in range(200)]


def test_small_splits_and_features(small):
    assert {name: split.num_examples for name, split in small.info.splits.items()} == SMALL_SIZES
    assert small.info.features["label"].names == list(SHAPE_CLASSES)
    for split, size in SMALL_SIZES.items():
        examples = list(tfds.as_numpy(small.as_dataset(split=split)))
        assert len(examples) == size
        for example in examples:
            image, boxes = example["image"], example["objects"]["bbox"]
            labels = example["objects"]["label"]
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert 160 <= image.shape[0] <= 512 and 160 <= image.shape[1] <= 512
            assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
            assert 1 <= len(labels) <= 4
            assert np.all((boxes >= 0) & (boxes <= 1))
            assert np.all(boxes[:, :2] < boxes[:, 2:])
            assert np.all((labels >= 0) & (labels < len(SHAPE_CLASSES)))
            assert example["label"] == labels[0]


def test_tfds_examples_are_the_rendered_ones(small):
    rendered = [render_example([0, SPLIT_IDS["train"], index]) for index in range(48)]
    by_boxes = {ex["bboxes"].tobytes(): ex for ex in rendered}
    for example in tfds.as_numpy(small.as_dataset(split="train")):
        expected = by_boxes.pop(example["objects"]["bbox"].tobytes())
        np.testing.assert_array_equal(example["objects"]["label"], expected["labels"])
        stored = tf.io.decode_jpeg(tf.io.encode_jpeg(expected["image"]))  # as TFDS stores it
        np.testing.assert_array_equal(example["image"], stored)
    assert not by_boxes


def test_builds_are_byte_identical(small, tmp_path):
    again = _build(tmp_path)
    for split in SMALL_SIZES:
        (first,) = small.data_path.glob(f"*-{split}.tfrecord-*")
        (second,) = again.data_path.glob(f"*-{split}.tfrecord-*")
        assert first.read_bytes() == second.read_bytes()


def test_custom_config(tmp_path):
    config = OverfeatShapesConfig(
        name="tiny_seed1", num_train=3, num_validation=1, num_test=0, seed=1
    )
    builder = _build(tmp_path, "overfeat_shapes", config=config)
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["validation"].num_examples == 1
    assert "test" not in builder.info.splits  # empty splits are left out


def test_render_is_deterministic_by_seed():
    first, second, other = render_example(7), render_example(7), render_example(8)
    for key in ("image", "bboxes", "labels"):
        np.testing.assert_array_equal(first[key], second[key])
    assert first["image"].shape != other["image"].shape or np.any(first["image"] != other["image"])
    same_rng = render_example(np.random.default_rng([0, 1, 2]))
    np.testing.assert_array_equal(same_rng["image"], render_example([0, 1, 2])["image"])


def test_dominant_object_is_clearly_the_largest(rendered):
    for example in rendered:
        boxes, masks = example["bboxes"], example["masks"]
        box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert example["label"] == example["labels"][np.argmax(box_areas)]
        pixel_areas = masks.sum(axis=(1, 2))
        assert np.all(box_areas[1:] <= 0.5 * box_areas[0] + 1e-6)
        assert np.all(pixel_areas[1:] <= 0.5 * pixel_areas[0])
        height, width = example["image"].shape[:2]
        extent = max((boxes[0, 2] - boxes[0, 0]) * height, (boxes[0, 3] - boxes[0, 1]) * width)
        assert extent >= 0.29 * min(height, width)


def test_all_classes_occur(rendered):
    assert len(SHAPE_CLASSES) >= 10
    assert set(np.concatenate([ex["labels"] for ex in rendered])) == set(range(len(SHAPE_CLASSES)))
    assert {ex["label"] for ex in rendered} == set(range(len(SHAPE_CLASSES)))
    counts = np.bincount([len(ex["labels"]) for ex in rendered], minlength=5)
    assert np.all(counts[1:] > 0)  # 1, 2, 3 and 4 objects all occur


def test_boxes_tightly_contain_their_masks(rendered):
    for example in rendered:
        height, width = example["image"].shape[:2]
        for box, mask in zip(example["bboxes"], example["masks"], strict=True):
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            tight = [rows[0] / height, cols[0] / width, (rows[-1] + 1) / height]
            tight.append((cols[-1] + 1) / width)
            np.testing.assert_allclose(box, tight, atol=1e-6)


def _outer_ring(mask: np.ndarray, width: int = 2) -> np.ndarray:
    padded = np.pad(mask, width)
    grown = np.zeros_like(padded)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            grown |= np.roll(padded, (dy, dx), axis=(0, 1))
    return grown[width:-width, width:-width] & ~mask


@pytest.mark.parametrize("seed", range(10))
def test_object_is_drawn_on_its_mask(seed):
    # One object, so nothing occludes it: its pixels must contrast with those just outside.
    example = render_example(seed, max_objects=1, return_masks=True)
    (mask,) = example["masks"]
    image = example["image"].astype(float)
    inside, outside = image[mask].mean(axis=0), image[_outer_ring(mask)].mean(axis=0)
    assert np.linalg.norm(inside - outside) > 50.0


def test_tf_data_pipeline(small, small_dir):
    dataset = tfds.load(
        "overfeat_shapes/small", split="validation", data_dir=str(small_dir), as_supervised=False
    )
    dataset = dataset.map(
        lambda ex: (
            tf.image.resize(ex["image"], (64, 64)),
            ex["label"],
            tf.shape(ex["objects"]["bbox"])[0],
        )
    ).batch(8)
    images, labels, counts = next(iter(dataset))
    assert images.shape == (8, 64, 64, 3)
    assert labels.dtype == tf.int64 and counts.shape == (8,)
    assert bool(tf.reduce_all(counts >= 1))


@pytest.mark.parametrize(
    "kwargs",
    [{"min_side": 10}, {"min_side": 300, "max_side": 200}, {"max_objects": 0}],
)
def test_render_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        render_example(0, **kwargs)


@pytest.mark.parametrize("field", ["num_train", "num_validation", "num_test", "seed"])
def test_config_rejects_negative_values(field):
    with pytest.raises(ValueError, match=field):
        OverfeatShapesConfig(name="bad", **{field: -1})


def test_first_build_logs_no_missing_dataset_info_note(tmp_path, caplog):
    absl_logger = logging.getLogger("absl")
    filters = list(absl_logger.filters)
    with caplog.at_level(logging.INFO):
        builder = tfds_io.load_builder("overfeat_shapes/small", tmp_path)
    assert builder.info.splits["train"].num_examples == SMALL_SIZES["train"]
    assert not [r for r in caplog.records if "dataset_info.json" in r.getMessage()]
    assert absl_logger.filters == filters  # the note is dropped only while preparing
    with caplog.at_level(logging.WARNING):
        absl_logger.warning("Variant folder x has no dataset_info.json")
    assert "has no dataset_info.json" in caplog.records[-1].getMessage()

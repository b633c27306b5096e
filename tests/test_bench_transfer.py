"""benchmarks/bench_transfer.py: the held-out-classes subset (labels remapped, other classes
and their objects dropped, inside tf.data pipelines) and a smoke run of the transfer vs
scratch benchmark end to end on small in-memory data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import bench_transfer as bt
from benchmarks import common
from overfeat_tf.data import inputs as data
from overfeat_tf.data.shapes import SHAPE_CLASSES, render_example
from overfeat_tf.models.backbone import load_model

# (label, objects' labels) of hand-made examples; boxes are distinct per object.
EXAMPLES = [(3, [3, 0, 5]), (0, [0]), (5, [5, 3, 3]), (1, [1, 5]), (3, [3])]


def _bbox(i: int, n: int) -> np.ndarray:
    return np.array([[0.1 * i, 0.01 * j, 0.5, 0.9] for j in range(n)], np.float32)


def _examples(flat: bool = False, with_label: bool = True) -> tf.data.Dataset:
    def gen():
        for i, (label, labels) in enumerate(EXAMPLES):
            example = {"image": np.full((4, 6, 3), i, np.uint8)}
            if with_label:
                example["label"] = np.int64(label)
            bbox, object_labels = _bbox(i, len(labels)), np.array(labels, np.int64)
            if flat:
                example["objects/bbox"], example["objects/label"] = bbox, object_labels
            else:
                example["objects"] = {"bbox": bbox, "label": object_labels}
            yield example

    objects = {
        "bbox": tf.TensorSpec([None, 4], tf.float32),
        "label": tf.TensorSpec([None], tf.int64),
    }
    spec: dict = {"image": tf.TensorSpec([None, None, 3], tf.uint8)}
    if with_label:
        spec["label"] = tf.TensorSpec([], tf.int64)
    if flat:
        spec.update({f"objects/{k}": v for k, v in objects.items()})
    else:
        spec["objects"] = objects
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


def _objects(example):
    if "objects" in example:
        return example["objects"]["bbox"].numpy(), example["objects"]["label"].numpy()
    return example["objects/bbox"].numpy(), example["objects/label"].numpy()


@pytest.mark.parametrize("flat", [False, True])
def test_class_subset_keeps_remaps_and_drops(flat):
    kept = list(bt.class_subset(_examples(flat), [5, 3]))  # 5 -> 0, 3 -> 1
    # Examples 0 (label 3), 2 (label 5) and 4 (label 3), in order; 1 and 3 dropped.
    assert [int(e["label"]) for e in kept] == [1, 0, 1]
    assert [int(e["image"][0, 0, 0]) for e in kept] == [0, 2, 4]
    expected = [  # (index, objects' new labels, kept object positions)
        (0, [1, 0], [0, 2]),  # [3, 0, 5]: the class-0 object is dropped
        (2, [0, 1, 1], [0, 1, 2]),
        (4, [1], [0]),
    ]
    for example, (index, labels, positions) in zip(kept, expected, strict=True):
        bbox, object_labels = _objects(example)
        np.testing.assert_array_equal(object_labels, labels)
        assert object_labels.dtype == np.int64
        np.testing.assert_allclose(bbox, _bbox(index, len(EXAMPLES[index][1]))[positions])
        assert example["label"].dtype == tf.int64


def test_class_subset_without_label_uses_the_largest_box():
    # No `label` feature: the class is the largest box's (here the first, box 0 is the
    # largest since the others start further right); the output gains a `label`.
    kept = list(bt.class_subset(_examples(with_label=False), [0, 1]))
    assert [int(e["label"]) for e in kept] == [0, 1]  # examples 1 (class 0) and 3 (class 1)
    np.testing.assert_array_equal(_objects(kept[1])[1], [1])  # the class-5 object dropped


def test_class_subset_inside_the_package_pipelines():
    # The subset feeds data.training_dataset (graph-mode maps, shuffles, cache) and
    # data.decoded_split (evaluation) as any dataset of example dicts does.
    def encoded(i):
        example = render_example(i, min_side=64, max_side=80)
        return {
            "image": tf.io.encode_jpeg(example["image"]).numpy(),
            "label": np.int64(example["label"]),
            "objects": {"bbox": example["bboxes"], "label": example["labels"]},
        }

    examples = [encoded(i) for i in range(24)]
    ids = sorted({int(e["label"]) for e in examples})[:3]
    spec = {
        "image": tf.TensorSpec([], tf.string),
        "label": tf.TensorSpec([], tf.int64),
        "objects": {
            "bbox": tf.TensorSpec([None, 4], tf.float32),
            "label": tf.TensorSpec([None], tf.int64),
        },
    }
    dataset = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)
    subset = bt.class_subset(dataset, ids)
    wanted = [ids.index(int(e["label"])) for e in examples if int(e["label"]) in ids]
    evaluated = [int(label) for _, label in data.decoded_split(subset, "test")]
    assert evaluated == wanted
    batches = data.training_dataset(subset, "train", 231, 2, cache=True, short_side=231)
    for crops, labels in batches.take(4):
        assert crops.shape == (2, 231, 231, 3)
        assert set(labels.numpy()) <= set(range(len(ids)))


def test_class_ids_and_flags_are_checked():
    with pytest.raises(ValueError, match="empty"):
        bt.class_subset(_examples(), [])
    with pytest.raises(ValueError, match="repeat"):
        bt.class_subset(_examples(), [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        bt.class_subset(_examples(), [-1])
    assert bt.parse_classes("0-2,9") == (0, 1, 2, 9)
    with pytest.raises(ValueError, match="Bad class list"):
        bt.parse_classes("a-b")
    with pytest.raises(ValueError, match="overlap"):
        bt._check_args(bt.parse_args(["--source-classes", "0-5", "--target-classes", "5-8"]))
    with pytest.raises(ValueError, match="multiples"):
        bt._check_args(bt.parse_args(["--budgets", "100"]))


def _shapes_splits() -> dict[str, tf.data.Dataset]:
    """Small in-memory overfeat_shapes-like splits (encoded JPEGs, objects)."""
    spec = {
        "image": tf.TensorSpec([], tf.string),
        "label": tf.TensorSpec([], tf.int64),
        "objects": {
            "bbox": tf.TensorSpec([None, 4], tf.float32),
            "label": tf.TensorSpec([None], tf.int64),
        },
    }
    splits = {}
    for split, (first, count) in {"train": (0, 40), "test": (1000, 24)}.items():
        examples = []
        for i in range(first, first + count):
            example = render_example(i, min_side=64, max_side=96, max_objects=2)
            examples.append(
                {
                    "image": tf.io.encode_jpeg(example["image"]).numpy(),
                    "label": np.int64(example["label"]),
                    "objects": {"bbox": example["bboxes"], "label": example["labels"]},
                }
            )
        splits[split] = tf.data.Dataset.from_generator(
            lambda examples=examples: iter(examples), output_signature=spec
        )
    return splits


def test_benchmark_smoke_run(tmp_path, monkeypatch):
    flags = [
        "--output", str(tmp_path / "runs"),
        "--source-steps", "2", "--budgets", "1", "--phases", "1", "--lr-decay-phases", "",
        "--batch-size", "4", "--max-eval", "2", "--mixed-precision", "float32",
        "--scales", "231,233,235,237,239,241",
    ]  # fmt: skip
    args = bt.parse_args(flags)
    report = bt.run(args, _shapes_splits(), SHAPE_CLASSES)
    assert report["source"]["names"] == list(SHAPE_CLASSES[:6])
    assert report["target"]["names"] == list(SHAPE_CLASSES[6:])
    assert report["source"]["steps"] == 2
    assert [(r["budget"], r["arm"], r["steps"]) for r in report["runs"]] == [
        (1, "transfer", 1),
        (1, "scratch", 1),
        (1, "frozen", 1),
    ]
    for entry in report["runs"]:
        assert entry["test_examples"] == 2
        assert [r["name"] for r in entry["rows"]] == [row.name for row in bt.ROWS]
        assert all(0 <= e <= 100 for e in bt._errors(entry))
    # Transfer really starts from the source model: frozen keeps conv1..fc7 as they were
    # pre-trained, with a new 6-class fc8; scratch shares nothing with the source.
    source = load_model(report["source"]["model_path"])
    models = {r["arm"]: load_model(r["model_path"]) for r in report["runs"]}
    for name in ["conv1", "conv5", "fc6", "fc7"]:
        for a, b in zip(
            source.get_layer(name).get_weights(),
            models["frozen"].get_layer(name).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b, err_msg=name)
        scratch = models["scratch"].get_layer(name).get_weights()[0]
        assert not np.allclose(source.get_layer(name).get_weights()[0], scratch)
    assert models["transfer"].class_names == list(SHAPE_CLASSES[6:])
    assert models["frozen"].get_layer("fc8").get_weights()[0].shape[-1] == 6

    # --render --write: the section is rebuilt from the saved report into BENCHMARKS.md.
    report["command"] = "python benchmarks/bench_transfer.py (test)"
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report))
    benchmarks_md = tmp_path / "BENCHMARKS.md"
    benchmarks_md.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    monkeypatch.setattr(common, "BENCHMARKS_MD", benchmarks_md)
    bt.main(["--render", str(saved), "--write"])
    text = benchmarks_md.read_text()
    assert "## Other\n\nkept" in text
    assert f"## {bt.SECTION}\n" in text
    assert "`python benchmarks/bench_transfer.py (test)`" in text
    for arm in bt.ARMS:
        assert f"| 1 | {bt.ARM_LABELS[arm]} |" in text
    assert "Reading: Transfer" in text

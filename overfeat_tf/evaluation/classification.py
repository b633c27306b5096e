"""Multi-scale classification evaluation (paper §3.3-3.4, Table 2) on a TFDS split.

For every image the network runs once per scale and flip at the fine stride; all the
configurations of paper Table 2 are read off those runs (plus one crop pass):

| row | views |
|---|---|
| center crop | the training view: short side 256, central crop, 1 view |
| 10 views | 4 corner + central crops of the 256 px image and their flips |
| scale 1, coarse stride | scale 1 and its flip, classifier at offset (0, 0) only |
| scale 1, fine stride | scale 1 and its flip, all k x k pooling offsets |
| 4 scales (1,2,4,6), fine stride | as the paper's Table 2 |
| 6 scales (1-6), coarse stride | |
| 6 scales (1-6), fine stride | the paper's full method |

Dense rows score an image as in `inference.classify_tensor`: softmax, spatial max per class
per scale and flip, mean over scales and flips. Their coarse maps are the fine maps'
sub-grids at offset (0, 0) (an identity of dense offset pooling, tested in
`tests/test_models.py`), so coarse rows cost nothing extra. Scales are the net's
`pyramid.default_scales` (paper Table 5 for accurate) unless given; "scale i" is the
i-th of them. Errors are percentages of the images evaluated (top-1, top-5).

Command:
    python -m overfeat_tf.evaluation --model runs/classify/model.keras \
        --dataset overfeat_shapes/standard --split test
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from overfeat_tf.data import inputs as data
from overfeat_tf.models.backbone import backbone_of
from overfeat_tf.models.inference import (
    level_probabilities,
    object_probabilities,
    run_levels,
    spatial_max,
    spatial_model,
)
from overfeat_tf.ops.pyramid import Scale, check_scales, default_scales
from overfeat_tf.utils.progress import progress_bar
from overfeat_tf.utils.threads import ordered_map


@dataclasses.dataclass(frozen=True)
class Row:
    """One evaluation configuration.

    Attributes:
        name: the row's label (paper Table 2 style).
        views: "crop" (central crop), "10crop" (corners + centre + flips) or "dense".
        scales: 1-based indices into the scale list (dense rows).
        stride: "fine" or "coarse" (dense rows).
        flips: also use the flipped image (dense rows).
    """

    name: str
    views: str
    scales: tuple[int, ...] = ()
    stride: str = "fine"
    flips: bool = True


TABLE2_ROWS: tuple[Row, ...] = (
    Row("center crop, 1 view", "crop"),
    Row("4 corners + center + flips, 10 views", "10crop"),
    Row("scale 1, coarse stride, flips", "dense", (1,), "coarse"),
    Row("scale 1, fine stride, flips", "dense", (1,), "fine"),
    Row("4 scales (1,2,4,6), fine stride, flips", "dense", (1, 2, 4, 6), "fine"),
    Row("6 scales (1-6), coarse stride, flips", "dense", (1, 2, 3, 4, 5, 6), "coarse"),
    Row("6 scales (1-6), fine stride, flips", "dense", (1, 2, 3, 4, 5, 6), "fine"),
)


def rows_for(num_scales: int, rows: Sequence[Row] = TABLE2_ROWS) -> tuple[Row, ...]:
    """The rows whose scale indices exist for `num_scales` scales."""
    return tuple(r for r in rows if all(1 <= i <= num_scales for i in r.scales))


def ten_crops(image: tf.Tensor, crop_size: int, short_side: int = data.SHORT_SIDE) -> tf.Tensor:
    """`[H, W, 3]` -> `[10, S, S, 3]`: centre, 4 corners of the short-side-rescaled image,
    then the same 5 flipped (index 0 is the single central view)."""
    image = data.rescale_short_side(image, short_side)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    s = crop_size
    tops = tf.stack([(h - s) // 2, 0, 0, h - s, h - s])
    lefts = tf.stack([(w - s) // 2, 0, w - s, 0, w - s])
    crops = tf.stack([image[tops[i] : tops[i] + s, lefts[i] : lefts[i] + s] for i in range(5)])
    return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)


class Evaluator:
    """Scores images for every row at once (one dense run per scale and flip).

    Args:
        model: an `OverFeat` network or an `OverFeatDetector` (its backbone is scored; a
            background class, if any, is left out of the class scores).
        scales: the scale list ("scale i" of the rows); the net's defaults if None.
        rows: the configurations to score.
    """

    def __init__(
        self,
        model: keras.Model,
        scales: Sequence[Scale] | None = None,
        rows: Sequence[Row] = TABLE2_ROWS,
    ) -> None:
        model = backbone_of(model)
        self.model = model
        self.scales = check_scales(default_scales(model.config) if scales is None else scales)
        self.rows = rows_for(len(self.scales), rows)
        self.crop_net = spatial_model(model, "coarse")
        self._score = tf.function(
            self._score_image,
            input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
            reduce_retracing=True,
        )

    def _dense_vectors(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Spatial-max class probabilities per scale and flip, fine and coarse: 2x `[L, 2, C]`."""
        k = self.model.config.pool_size
        num_classes = self.model.num_classes
        fine, coarse = [], []
        for output in run_levels(self.model, image, self.scales, flips=True, stride="fine"):
            probs = level_probabilities(output, num_classes)  # [2, h', w', C]
            fine.append(spatial_max(probs))
            coarse.append(spatial_max(probs[:, ::k, ::k, :]))
        return tf.stack(fine), tf.stack(coarse)

    def _score_image(self, image: tf.Tensor) -> tf.Tensor:
        """`[H, W, 3]` -> class scores `[R, C]`, one row per configuration."""
        fine, coarse = self._dense_vectors(image)
        crops = ten_crops(image, self.model.config.crop_size)
        crop_logits = self.crop_net(crops, training=False)["class_logits"][:, 0, 0]
        crop_probs = object_probabilities(crop_logits, self.model.num_classes)  # [10, C]
        scores = []
        for row in self.rows:
            if row.views == "crop":
                scores.append(crop_probs[0])
            elif row.views == "10crop":
                scores.append(tf.reduce_mean(crop_probs, axis=0))
            else:
                maps = fine if row.stride == "fine" else coarse
                picked = tf.gather(maps, [i - 1 for i in row.scales])  # [l, 2, C]
                picked = picked if row.flips else picked[:, :1]
                scores.append(tf.reduce_mean(picked, axis=[0, 1]))
        return tf.stack(scores)

    def score(self, image: tf.Tensor) -> np.ndarray:
        """Class scores `[R, C]` of one image `[H, W, 3]` (0..255) for every row."""
        return self._score(tf.cast(image, tf.float32)).numpy()


def evaluate(
    model: keras.Model,
    dataset: str | tf.data.Dataset,
    split: str = "test",
    data_dir: str | None = None,
    scales: Sequence[Scale] | None = None,
    rows: Sequence[Row] = TABLE2_ROWS,
    max_examples: int | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 error (%) of `model` on a split for every row.

    Args:
        model: an `OverFeat` network or `OverFeatDetector` (its classes must be the
            dataset's).
        dataset: TFDS name or a `tf.data.Dataset` of example dicts.
        split: the split to evaluate.
        data_dir: TFDS data directory.
        scales: the scale list (default: the net's).
        rows: the configurations.
        max_examples: evaluate only the first N examples.
        progress: show a progress bar over the images.
        workers: images scored at once (`utils.threads.ordered_map`; None: 2, or 1 on one
            core); the same results for any number.

    Returns:
        `{"examples", "corrupt_records", "scales", "seconds", "rows": [{"name",
        "top1_error", "top5_error"}]}`.
    """
    evaluator = Evaluator(model, scales, rows)
    model = evaluator.model
    counter = data.CorruptRecordCounter()
    images = data.decoded_split(dataset, split, data_dir, counter)
    if max_examples is not None:
        images = images.take(max_examples)
    bar = progress_bar(images, max_examples, "images") if progress else None
    start = time.monotonic()
    num_rows = len(evaluator.rows)
    top1 = np.zeros(num_rows, np.int64)
    top5 = np.zeros(num_rows, np.int64)
    count = 0
    scored = ordered_map(
        lambda example: evaluator.score(example[0]), images.prefetch(data.AUTOTUNE), workers
    )
    for (_, label), scores in scored:  # scores [R, C]
        label = int(label)
        if label >= model.num_classes:
            raise ValueError(
                f"Label {label} is outside the model's {model.num_classes} classes: evaluate "
                "on the dataset the model was trained on."
            )
        order = np.argsort(-scores, axis=-1, kind="stable")
        top1 += order[:, 0] == label
        top5 += (order[:, :5] == label).any(axis=-1)
        count += 1
        if bar is not None:
            bar.update(count)
    if count == 0:
        raise ValueError(f"No examples were evaluated in split {split!r}.")
    return {
        "examples": count,
        "corrupt_records": counter.value(),
        "scales": [list(s) if isinstance(s, tuple) else s for s in evaluator.scales],
        "seconds": time.monotonic() - start,
        "rows": [
            {
                "name": row.name,
                "top1_error": 100.0 * (1 - top1[i] / count),
                "top5_error": 100.0 * (1 - top5[i] / count),
            }
            for i, row in enumerate(evaluator.rows)
        ],
    }


def format_table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table (paper Table 2 shape)."""
    lines = ["| approach | top-1 error % | top-5 error % |", "|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['name']} | {row['top1_error']:.2f} | {row['top5_error']:.2f} |")
    return "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
    """A heading line and the table."""
    return (
        f"{result['examples']} images, scales {result['scales']}, {result['seconds']:.0f} s\n"
        + format_table(result)
    )

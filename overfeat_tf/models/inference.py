"""Multi-scale inference: run the network over an image pyramid (and flips) and classify.

Paper: Sermanet et al., OverFeat, ICLR 2014, §3.3: "(i) taking the spatial max for each
class, at each scale and flip; (ii) averaging the resulting C-dimensional vectors from
different scales and flips and (iii) taking the top-1 or top-5 elements".

    image -> pyramid levels (scales x flips)        `pyramid.build_pyramid`
          -> model at the fine or coarse stride     `run_levels` (one `LevelOutput` each;
                                                     images of one size run as one batch,
                                                     `image_output` takes one image's part)
          -> softmax, spatial max per class         `level_probabilities`, `spatial_max`
          -> mean over levels                       `classify_tensor`  [C]
          -> top-k ids, names and scores            `classify` (notebooks)

Everything up to `classify_tensor` is TF ops (graph-safe, usable in a `tf.function` or a
SavedModel signature with images of unknown size). `run_levels` is the reusable part for
localization and detection: each level's raw model outputs with the geometry that maps
output cells back to boxes in the original image (`boxes.window_boxes`,
`boxes.level_to_original`).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from overfeat_tf.architecture.config import check_stride
from overfeat_tf.data.image_io import load_image
from overfeat_tf.models.backbone import backbone_of
from overfeat_tf.ops.pyramid import Level, Scale, build_pyramid
from overfeat_tf.ops.resizing import DEFAULT_MAX_ASPECT_RATIO

_SPATIAL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def spatial_model(model: keras.Model, stride: str) -> keras.Model:
    """`model` at the "fine" or "coarse" stride (built once per model and stride, cached)."""
    check_stride(stride)
    model = backbone_of(model)
    if model.stride == stride:
        return model
    per_model = _SPATIAL_CACHE.setdefault(model, {})
    if stride not in per_model:
        per_model[stride] = model.spatial_model(stride)
    return per_model[stride]


@dataclasses.dataclass(frozen=True)
class LevelOutput:
    """The model's outputs on one pyramid level, with its geometry.

    Attributes:
        level: the `pyramid.Level` (image `[N, h, w, 3]`, size, original size, factors,
            flipped `[N]`).
        outputs: the model's output dict at this level, e.g. `class_logits`
            `[N, h', w', C]` (and `box_deltas` with a regressor), float32.
        stride: px between neighbouring output cells in the level's image (the model's
            `fine_stride` or `coarse_stride`).
        window: side (px) of the square window each output cell sees (the crop size);
            cell (i, j) sees `[i*stride, j*stride, i*stride + window, j*stride + window]`
            (yxyx, level px).
    """

    level: Level
    outputs: dict[str, tf.Tensor]
    stride: int
    window: int


def run_levels(
    model: keras.Model,
    image: tf.Tensor,
    scales: Sequence[Scale] | None = None,
    flips: bool = True,
    stride: str = "fine",
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> list[LevelOutput]:
    """Run an `OverFeat` model over the pyramid of `image`, one call per scale.

    Args:
        model: an `OverFeat` model (any stride; the requested stride shares its weights).
        image: `[H, W, 3]` or `[B, H, W, 3]` RGB 0..255 (any real dtype, any size).
        scales: ints (short sides) / `(h, w)` pairs; `pyramid.default_scales` if None.
        flips: also run each level's left-right flip.
        stride: "fine" (all pooling offsets) or "coarse" (offset 0).
        max_aspect_ratio: bound on each level's long side / short side (`pyramid`).

    Returns:
        One `LevelOutput` per scale, in the order of `scales`.
    """
    net = spatial_model(model, stride)
    config = backbone_of(model).config
    levels = build_pyramid(image, config, scales, flips, max_aspect_ratio)
    step = config.fine_stride if stride == "fine" else config.coarse_stride
    results = []
    for level in levels:
        outputs = net(level.image, training=False)
        outputs = {k: tf.cast(v, tf.float32) for k, v in outputs.items()}
        results.append(LevelOutput(level, outputs, step, config.crop_size))
    return results


def image_output(
    output: LevelOutput, index: tf.Tensor | int, count: tf.Tensor | int
) -> LevelOutput:
    """The entries of ONE image of a batch's `LevelOutput` (what `detection.level_boxes`
    takes): with `count` images of one size run together, image `index`'s entries are
    `index` and, with flips, `count + index` (`pyramid.build_pyramid`'s order), so the result
    is the `LevelOutput` `run_levels` gives for that image alone (N = 1 or 2 entries).

    Args:
        output: a `LevelOutput` of `run_levels` on `[count, H, W, 3]` images.
        index: which image (int32 scalar, 0 <= index < count).
        count: the images of the batch (int32 scalar).
    """
    level = output.level
    copies = tf.shape(level.flipped)[0] // count  # 2 with flips, else 1
    entries = index + count * tf.range(copies)
    outputs = {name: tf.gather(value, entries) for name, value in output.outputs.items()}
    level = dataclasses.replace(
        level,
        image=tf.gather(level.image, entries),
        flipped=tf.gather(level.flipped, entries),
    )
    return LevelOutput(level, outputs, output.stride, output.window)


def object_probabilities(logits: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Softmax over all outputs (objects and, if present, background), objects kept.

    `logits` `[..., C]` or `[..., C + 1]` (a detection model's background last) ->
    `[..., C]` probabilities, float32.
    """
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)[..., :num_classes]


def level_probabilities(level_output: LevelOutput, num_classes: int) -> tf.Tensor:
    """Object-class probabilities of every output cell of a level: `[N, h', w', C]` (a
    background class, if the model has one, is left out after the softmax)."""
    return object_probabilities(level_output.outputs["class_logits"], num_classes)


def spatial_max(probabilities: tf.Tensor) -> tf.Tensor:
    """Paper §3.3 (i): the spatial max of each class, `[N, h', w', C]` -> `[N, C]`."""
    return tf.reduce_max(probabilities, axis=[1, 2])


def classify_tensor(
    model: keras.Model,
    image: tf.Tensor,
    scales: Sequence[Scale] | None = None,
    flips: bool = True,
    stride: str = "fine",
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> tf.Tensor:
    """Multi-scale class scores (paper §3.3), in TF ops.

    For every scale and flip, the spatial max of each class's softmax probability; then
    the mean of those vectors over all scales and flips.

    Args:
        model: an `OverFeat` model.
        image: `[H, W, 3]` (-> `[C]`) or `[B, H, W, 3]` (-> `[B, C]`), RGB 0..255.
        scales, flips, stride, max_aspect_ratio: as in `run_levels`.

    Returns:
        float32 `[C]` or `[B, C]`: mean (over levels) of the max (over positions) class
        probability. Not a distribution: rows need not sum to 1.
    """
    image = tf.convert_to_tensor(image)
    single = image.shape.rank == 3
    per_level = []
    for output in run_levels(model, image, scales, flips, stride, max_aspect_ratio):
        # [F*B, C], flips stacked along the batch
        scores = spatial_max(level_probabilities(output, model.num_classes))
        copies = 2 if flips else 1
        per_level.append(tf.reshape(scores, [copies, -1, tf.shape(scores)[-1]]))
    scores = tf.reduce_mean(tf.concat(per_level, axis=0), axis=0)  # [B, C]
    return scores[0] if single else scores


def classify(
    model: keras.Model,
    image_or_path: Any,
    scales: Sequence[Scale] | None = None,
    flips: bool = True,
    stride: str = "fine",
    top_k: int = 5,
) -> dict[str, list]:
    """Classify one image (notebook API): the top-k classes of `classify_tensor`.

    Args:
        model: an `OverFeat` model (e.g. from `keras.models.load_model("x.keras")`).
        image_or_path: a file path, encoded bytes or an RGB array `[H, W, 3]` (0..255).
        scales, flips, stride: as in `classify_tensor` (default scales of the net).
        top_k: how many classes to return.

    Returns:
        `{"classes": [int], "class_names": [str], "scores": [float]}`, best first; names
        come from the model's class names (`class_<i>` when it has none).
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
    model = backbone_of(model)
    image = load_image(image_or_path)
    scores = classify_tensor(model, image, scales, flips, stride)
    values, ids = tf.math.top_k(scores, k=min(top_k, int(scores.shape[-1])))
    names = model.class_names
    classes = [int(i) for i in ids.numpy()]
    return {
        "classes": classes,
        "class_names": [names[i] if names else f"class_{i}" for i in classes],
        "scores": [float(v) for v in values.numpy()],
    }

"""`OverFeatDetector`: the whole detection pipeline as one Keras model (paper §4-5).

    images [B, H, W, 3] (RGB 0..255)
      -> pyramid: scales x flips                        (`scales`, `flips`)       pyramid.py
      -> backbone: `OverFeat` trunk -> dense offset pooling -> heads            models.py
      -> boxes: top-k classes per level, every window's box in PIXELS of the original
         image, score filter                   (`top_k`, `score_threshold`, `max_boxes`)
                                                                                detection.py
      -> prediction decoder: the merge (or NMS), on pixel boxes (`prediction_decoder`)
                                                                                decoders.py
      -> detections (boxes normalized to the image) + the multi-scale top-5

Shaped like keras-hub's `ImageObjectDetector` / RetinaNet: a backbone, its heads, and the
post-processing as a serializable `prediction_decoder` layer, so `detector(images)` and
`detector.predict(images)` give detections and `keras.models.load_model` restores the
detector with every option. `batch_fn`, one compiled function of a batch of images of one
size and the per-image `REQUEST_OPTIONS` (score threshold, max detections, merge threshold,
top-k), is the decode path of every entry point: `call` / `predict` (the batch),
`detect_image` / `detect_fn` and the notebook helpers (`detect`, `localize`: a batch of one),
the predict command and the SavedModel export (`serving`: images grouped by size), so an image
gets the same detections from each. The images of a batch share the pyramid and network calls
(one per level); their boxes are decoded and merged image by image, each with its options.

Per-call options (keras-hub users call `detector(images, ...)`): `detector(images,
score_threshold=0.3, max_detections=10)`, `detector.detect_image(image, top_k=1)`, a number
for every image or a `[B]` vector, one per image; None keeps the detector's own
(`request_defaults`), and the defaults answer exactly what the detector answers without
options. The ranges are `request_ranges`: ValueError for a number out of range,
`InvalidArgumentError` for a tensor.

Training with Keras' own loop: `compile(task="detect" | "localize")` and `fit` / `evaluate` on
`(images, {"boxes", "labels"})` batches; the train step builds every output cell's targets
from the boxes (`data.spatial.map_targets`) and runs the backbone at the fine stride.

Outputs (the serving signature's names and conventions; D = `max_detections`):
`detection_boxes` `[B, D, 4]` float32 `[ymin, xmin, ymax, xmax]` normalized to the original
image; `detection_scores` `[B, D]` (accumulated confidences with the merge); `detection_classes`
`[B, D]` int32; `detection_class_names` `[B, D]` string (`class_<i>` when the model has no
names); `num_detections` `[B]` int32 (rows past it are padding: zeros, name ""); top-5
classification `classes` `[B, 5]` int32 (-1 past the number of classes) and `scores`
`[B, 5]`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.losses.loss import unscale_loss_for_distribution

from overfeat_tf.architecture.config import check_stride
from overfeat_tf.data.image_io import load_image
from overfeat_tf.data.spatial import map_targets
from overfeat_tf.models.backbone import OverFeat, backbone_of
from overfeat_tf.models.decoders import (
    DECODER_OPTIONS,
    BoxMergeDecoder,
    NMSDecoder,
    class_nms,
    decoder_options,
    detections_dict,
    make_decoder,
)
from overfeat_tf.models.detection import kept_boxes, level_boxes
from overfeat_tf.models.inference import LevelOutput, image_output, run_levels
from overfeat_tf.models.losses import BOX_LOSSES, MinedDetectionLoss, WindowBoxLoss
from overfeat_tf.ops import boxes as box_ops
from overfeat_tf.ops.merge import merge_boxes
from overfeat_tf.ops.pyramid import check_scales, default_scales
from overfeat_tf.ops.resizing import DEFAULT_MAX_ASPECT_RATIO, check_aspect_ratio

TOP_CLASSES = 5
TASKS = ("detect", "localize")  # what `compile(task=...)` trains
# The detector's own options (its constructor's arguments after the decoder), in order.
BOX_OPTIONS = (
    "scales",
    "flips",
    "stride",
    "top_k",
    "score_threshold",
    "max_boxes",
    "max_aspect_ratio",
)
OPTIONS = BOX_OPTIONS + DECODER_OPTIONS  # every option of a detector, the decoder's included
# The options a call (and a `detect_with_options` request) may change, per image, and their
# dtypes: the post-processing after the network (`OverFeatDetector.request_ranges`).
REQUEST_OPTIONS = ("score_threshold", "max_detections", "merge_threshold", "top_k")
REQUEST_DTYPES = {
    "score_threshold": tf.float32,
    "max_detections": tf.int32,
    "merge_threshold": tf.float32,
    "top_k": tf.int32,
}


@dataclasses.dataclass(frozen=True)
class OptionRange:
    """The values a request option may take: `low` <= value (< if `low_open`) <= `high`
    (None: no upper bound), finite; `what` says where the bound comes from.

    Example: `OptionRange(1, 20, what="the model's max_detections")` -> "in [1, 20]".
    """

    low: float
    high: float | None
    low_open: bool = False
    what: str = ""

    @property
    def text(self) -> str:
        """The range in words: "in [0, 1]", "finite and > 0", "in (0, 1]"."""
        if self.high is None:
            return f"finite and {'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def contains(self, value: float) -> bool:
        """Whether a Python number is in the range."""
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and (self.high is None or value <= self.high)

    def holds(self, values: tf.Tensor) -> tf.Tensor:
        """bool `[n]`: which of `values` `[n]` are in the range (NaN and inf are not)."""
        low = tf.cast(self.low, values.dtype)
        above = values > low if self.low_open else values >= low
        ok = above if self.high is None else above & (values <= tf.cast(self.high, values.dtype))
        if values.dtype.is_floating:
            ok &= tf.math.is_finite(values)
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.low, "max": self.high, "min_excluded": self.low_open}


def _range_message(name: str, allowed: OptionRange, value: Any = None) -> str:
    """The error message of a value out of its range, e.g. `Bad top_k: must be in [1, 3]
    (at most the number of classes), got 7.` (the value left out: an assert adds it)."""
    message = f"Bad {name}: must be {allowed.text} ({allowed.what}), got"
    return message if value is None else f"{message} {value!r}."


def _decode_with_threshold(
    decoder: keras.layers.Layer,
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    threshold: float | tf.Tensor,
) -> dict[str, tf.Tensor]:
    """`decoder(boxes, scores, classes)` with its threshold replaced by `threshold` (a
    scalar tensor: a request's): the same op (`merge.merge_boxes` or `decoders.class_nms`)
    with the decoder's other settings, so the decoder's own threshold answers bitwise what
    the decoder does."""
    if isinstance(decoder, BoxMergeDecoder):
        result = merge_boxes(
            boxes,
            scores,
            classes,
            threshold,
            decoder.max_detections,
            jit_compile=decoder.jit_compile,
        )
    elif isinstance(decoder, NMSDecoder):
        result = class_nms(
            boxes, scores, classes, threshold, decoder.max_detections, decoder.per_class
        )
    else:
        raise ValueError(f"Cannot change the threshold of a {type(decoder).__name__}.")
    return detections_dict(result)


def class_names(model: Any) -> list[str]:
    """The classes' names of an OverFeat model or detector; `class_<i>` where it has none."""
    net = backbone_of(model)
    if net.class_names:
        return [str(n) for n in net.class_names]
    return [f"class_{i}" for i in range(net.num_classes)]


def top_classes(
    scores: tf.Tensor, names: tf.Tensor, k: int = TOP_CLASSES
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Top-k of class scores `[C]` -> ids `[k]` int32, scores `[k]`, names `[k]` string.

    With C < k the last entries are id -1, score 0, name "".
    """
    found = min(k, int(scores.shape[-1]))
    values, ids = tf.math.top_k(scores, k=found)
    pad = k - found
    ids = tf.pad(tf.cast(ids, tf.int32), [[0, pad]], constant_values=-1)
    values = tf.pad(values, [[0, pad]])
    return ids, values, tf.where(ids >= 0, tf.gather(names, tf.maximum(ids, 0)), "")


def output_spec(max_detections: int) -> dict[str, tf.TensorSpec]:
    """The spec of `detect_image`'s outputs (one image)."""
    d = max_detections
    return {
        "detection_boxes": tf.TensorSpec([d, 4], tf.float32),
        "detection_scores": tf.TensorSpec([d], tf.float32),
        "detection_classes": tf.TensorSpec([d], tf.int32),
        "detection_class_names": tf.TensorSpec([d], tf.string),
        "num_detections": tf.TensorSpec([], tf.int32),
        "classes": tf.TensorSpec([TOP_CLASSES], tf.int32),
        "scores": tf.TensorSpec([TOP_CLASSES], tf.float32),
    }


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="overfeat_tf")
class OverFeatDetector(keras.Model):
    """OverFeat detection and localization (Sermanet et al., ICLR 2014, §4-5) as one model.

    Input: `images` `[B, H, W, 3]` RGB 0..255 (uint8 or float; any size, one size per batch).
    Output: the dict of the module docstring (`[B, D, 4]` normalized yxyx boxes, ...).

    The constructor's arguments are the detector's options: `options` lists them (with the
    decoder's), `with_options` changes them, `get_config` saves them, and the export, the
    evaluation commands and `predict` read them from the model.

    Args:
        backbone: an `OverFeat` network (with a regressor for real boxes; without one every
            window is its own box; with a background class, it is left out of the scores).
        prediction_decoder: a `decoders.BoxMergeDecoder` (default) or `NMSDecoder`; it
            receives every window's box in PIXELS of the original image.
        scales: pyramid scales (ints = short sides, `(h, w)` pairs); None = the net's.
        flips: also run each scale's left-right flip.
        stride: "fine" (every pooling offset) or "coarse".
        top_k: classes per level whose windows predict boxes.
        score_threshold: windows below this class probability predict no box.
        max_boxes: at most this many boxes (the most confident) go into the decoder.
        max_aspect_ratio: no pyramid level is more elongated than this (long / short side;
            a longer image is squeezed to it): with int scales S, a level has at most
            `S * floor(S * max_aspect_ratio)` pixels whatever the image
            (`pyramid.max_level_size`).

    Example:
        >>> net = overfeat_tf.OverFeat("tiny", num_classes=3, regressor="class_specific")
        >>> detector = OverFeatDetector(net, scales=(231, 263))
        >>> out = detector.predict(np.zeros([2, 150, 200, 3], np.uint8))
        >>> out["detection_boxes"].shape
        (2, 100, 4)
        >>> detector.with_options(top_k=3, merge_threshold=0.5).options["top_k"]
        3
    """

    def __init__(
        self,
        backbone: OverFeat,
        prediction_decoder: keras.layers.Layer | None = None,
        scales: Any = None,
        flips: bool = True,
        stride: str = "fine",
        top_k: int = 5,
        score_threshold: float = 0.01,
        max_boxes: int = 4000,
        max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "overfeat_detector")
        super().__init__(**kwargs)
        self.backbone = backbone_of(backbone)
        decoder = prediction_decoder if prediction_decoder is not None else BoxMergeDecoder()
        if not isinstance(decoder, BoxMergeDecoder | NMSDecoder):
            raise ValueError(
                "prediction_decoder must be a BoxMergeDecoder or an NMSDecoder, got "
                f"{type(decoder).__name__}."
            )
        if not isinstance(flips, bool):
            raise ValueError(f"flips must be True or False, got {flips!r}.")
        if not 0 <= score_threshold < 1:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}.")
        self.prediction_decoder = decoder
        self.scales = None if scales is None else check_scales(scales)
        self.flips = flips
        self.stride = check_stride(stride)
        self.top_k = _positive_int("top_k", top_k)
        self.score_threshold = float(score_threshold)
        self.max_boxes = _positive_int("max_boxes", max_boxes)
        self.max_aspect_ratio = check_aspect_ratio(max_aspect_ratio)
        self.jit_compile = False  # the pyramid's sizes are dynamic: no XLA for the whole step
        self._detect_fn = None
        self._batch_fn = None
        self.built = True

    # --- options -------------------------------------------------------------------------

    @property
    def options(self) -> dict[str, Any]:
        """Every option, JSON-ready: the constructor's (`BOX_OPTIONS`; scales None = the
        net's defaults) and the decoder's (`DECODER_OPTIONS`)."""
        values = {name: getattr(self, name) for name in BOX_OPTIONS}
        if self.scales is not None:
            values["scales"] = [list(s) if isinstance(s, tuple) else s for s in self.scales]
        return {**values, **decoder_options(self.prediction_decoder)}

    @property
    def resolved_scales(self) -> tuple[Any, ...]:
        """The pyramid's scales: `scales`, or the net's defaults when None."""
        return self.scales or default_scales(self.backbone.config)

    def resolved_options(self) -> dict[str, Any]:
        """`options` with the scales resolved (what the detector runs; JSON-ready)."""
        scales = [list(s) if isinstance(s, tuple) else s for s in self.resolved_scales]
        return {**self.options, "scales": scales}

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        """The options of a detector built with no arguments but its backbone."""
        parameters = inspect.signature(cls.__init__).parameters
        return {
            **{name: parameters[name].default for name in BOX_OPTIONS},
            **decoder_options(BoxMergeDecoder()),
        }

    def with_options(self, **changes: Any) -> OverFeatDetector:
        """A detector sharing this backbone (and its weights), with `changes` (any of
        `options`' names) applied; this one if nothing changes."""
        unknown = sorted(set(changes) - set(OPTIONS))
        if unknown:
            raise ValueError(f"Unknown detector options {unknown}; expected some of {OPTIONS}.")
        if not changes:
            return self
        values = {**self.options, **changes}
        decoder = make_decoder(**{name: values[name] for name in DECODER_OPTIONS})
        boxes = {name: values[name] for name in BOX_OPTIONS}
        return OverFeatDetector(self.backbone, decoder, **boxes)

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def class_names(self) -> list[str] | None:
        return self.backbone.class_names

    @property
    def max_detections(self) -> int:
        return self.prediction_decoder.max_detections

    @property
    def decoder_threshold(self) -> float:
        """The decoder's threshold: the merge's `merge_threshold`, or NMS's IoU threshold
        (what a call's `merge_threshold` replaces)."""
        decoder = self.prediction_decoder
        if isinstance(decoder, BoxMergeDecoder):
            return decoder.merge_threshold
        return decoder.iou_threshold

    def request_defaults(self) -> dict[str, float | int]:
        """The `REQUEST_OPTIONS` a call runs with when it gives none: the detector's own
        (`top_k` at most the number of classes, as the detector uses it)."""
        return {
            "score_threshold": self.score_threshold,
            "max_detections": self.max_detections,
            "merge_threshold": self.decoder_threshold,
            "top_k": min(self.top_k, self.num_classes),
        }

    def request_ranges(self) -> dict[str, OptionRange]:
        """The values each of `REQUEST_OPTIONS` may take in a call or a request:
        `score_threshold` in [0, 1] (a window's class probability); `max_detections` in
        [1, D] (D = this detector's `max_detections`, the padded rows); `merge_threshold`
        finite and > 0 (the merge's t; with an NMS decoder the IoU threshold, in (0, 1]);
        `top_k` in [1, C] (C = the number of classes)."""
        merge = isinstance(self.prediction_decoder, BoxMergeDecoder)
        return {
            "score_threshold": OptionRange(0.0, 1.0, what="a class probability"),
            "max_detections": OptionRange(
                1, self.max_detections, what="at most the max_detections the model was built with"
            ),
            "merge_threshold": (
                OptionRange(0.0, None, low_open=True, what="the merge threshold t")
                if merge
                else OptionRange(0.0, 1.0, low_open=True, what="the NMS IoU threshold")
            ),
            "top_k": OptionRange(1, self.num_classes, what="at most the number of classes"),
        }

    def request_options(self, count: tf.Tensor | int, **options: Any) -> dict[str, tf.Tensor]:
        """`REQUEST_OPTIONS` as per-image vectors `[count]` (float32 / int32,
        `REQUEST_DTYPES`), for `count` images.

        Each option is None (the detector's own, `request_defaults`), a number (every image;
        checked here: ValueError naming the option and its range), or a scalar / `[count]`
        tensor or array (one value per image; checked when the detection runs:
        `InvalidArgumentError`).
        """
        unknown = sorted(set(options) - set(REQUEST_OPTIONS))
        if unknown:
            raise ValueError(
                f"Unknown call options {unknown}; expected some of {list(REQUEST_OPTIONS)}."
            )
        defaults, ranges = self.request_defaults(), self.request_ranges()
        vectors = {}
        for name in REQUEST_OPTIONS:
            value = options.get(name)
            dtype = REQUEST_DTYPES[name]
            value = defaults[name] if value is None else value
            if isinstance(value, bool | np.bool_):
                raise ValueError(f"{name} must be a number, got {value!r}.")
            if isinstance(value, int | float | np.integer | np.floating):
                if dtype.is_integer and not isinstance(value, int | np.integer):
                    raise ValueError(f"{name} must be an int, got {value!r}.")
                if not ranges[name].contains(float(value)):
                    raise ValueError(_range_message(name, ranges[name], value))
                vectors[name] = tf.fill(tf.reshape(count, [1]), tf.constant(value, dtype))
                continue
            tensor = tf.convert_to_tensor(value)
            if dtype.is_integer and not tensor.dtype.is_integer:
                raise ValueError(f"{name} must be integers, got dtype {tensor.dtype.name}.")
            if tensor.shape.rank not in (None, 0, 1):
                raise ValueError(
                    f"{name} must be one number or one per image [B], got shape {tensor.shape}."
                )
            tensor = tf.cast(tensor, dtype)
            if tensor.shape.rank == 0:
                tensor = tf.fill(tf.reshape(count, [1]), tensor)
            vectors[name] = tensor
        return vectors

    def checked_request_options(
        self, options: dict[str, tf.Tensor], count: tf.Tensor
    ) -> tuple[dict[str, tf.Tensor], list[Any]]:
        """`options` (`[B]` vectors of `REQUEST_OPTIONS`) for `count` images, and the assert
        ops that gate them: each has one value per image and every value is in its
        `request_ranges` range, else `InvalidArgumentError` naming the option, its range and
        the bad values."""
        checks = []
        ranges = self.request_ranges()
        for name in REQUEST_OPTIONS:
            values = options[name]
            checks.append(
                tf.debugging.Assert(
                    tf.equal(tf.size(values), count),
                    [
                        f"Bad {name}: give one value per image (a [B] vector); images, "
                        "values given:",
                        count,
                        tf.size(values),
                    ],
                )
            )
            ok = ranges[name].holds(values)
            checks.append(
                tf.debugging.Assert(
                    tf.reduce_all(ok),
                    [_range_message(name, ranges[name]), tf.boolean_mask(values, ~ok)],
                    summarize=8,
                )
            )
        with tf.control_dependencies(checks):
            checked = {name: tf.identity(options[name]) for name in REQUEST_OPTIONS}
        return checked, checks

    # --- the pipeline, one image ---------------------------------------------------------

    def levels(self, image: tf.Tensor) -> list[LevelOutput]:
        """Pyramid + backbone of one image `[H, W, 3]` (0..255): one `LevelOutput` per scale
        (each holding the image and, with flips, its mirror)."""
        image = tf.convert_to_tensor(image)
        if image.shape.rank != 3:
            raise ValueError(f"Expected one image [H, W, 3], got shape {image.shape}.")
        return run_levels(
            self.backbone, image, self.scales, self.flips, self.stride, self.max_aspect_ratio
        )

    def dense_boxes(
        self,
        levels: list[LevelOutput],
        top_k: int | tf.Tensor | None = None,
        score_threshold: float | tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Every window's box of the levels' top-k classes, score-filtered, before decoding.

        `levels`: one image's (`levels`, or `inference.image_output` of a batch's);
        `top_k` / `score_threshold`: None = the detector's, else a Python number or a scalar
        tensor (a request's).

        Returns boxes `[m, 4]` yxyx in PIXELS of the original image, scores `[m]`, classes
        `[m]` int32 (at most `max_boxes`, the most confident), and the multi-scale class
        scores `[C]` (the mean over levels and flips of each class's spatial max, §3.3).
        """
        k = self.top_k if top_k is None else top_k
        threshold = self.score_threshold if score_threshold is None else score_threshold
        parts = [level_boxes(level, self.num_classes, k) for level in levels]
        boxes, scores, classes, class_scores = (tf.concat(p, 0) for p in zip(*parts, strict=True))
        kept = kept_boxes(boxes, scores, classes, threshold, self.max_boxes)
        return (*kept, tf.reduce_mean(class_scores, axis=0))

    def decode(
        self,
        boxes: tf.Tensor,
        scores: tf.Tensor,
        classes: tf.Tensor,
        class_scores: tf.Tensor,
        image_size: tf.Tensor,
        decoder: keras.layers.Layer | None = None,
        merge_threshold: float | tf.Tensor | None = None,
        max_detections: int | tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        """Dense boxes (yxyx pixels of an `image_size` (H, W) image) -> the output dict of
        one image, boxes normalized (`prediction_decoder` unless another `decoder` is given,
        e.g. NMS beside the merge in evaluation).

        `merge_threshold` replaces the decoder's threshold (the merge's t, or NMS's IoU) and
        `max_detections` keeps only the best rows (at most the decoder's D; the rest is
        padding, as past `num_detections`): None = the decoder's, else a number or scalar
        tensor (a request's; not checked here, see `checked_request_options`). The output
        keeps D rows either way.
        """
        decoder = decoder or self.prediction_decoder
        if merge_threshold is None:
            out = decoder(boxes, scores, classes)
        else:
            out = _decode_with_threshold(decoder, boxes, scores, classes, merge_threshold)
        rows = tf.range(tf.shape(out["detection_classes"])[0])
        count = out["num_detections"]
        if max_detections is not None:  # the best rows come first: keep a prefix
            count = tf.minimum(count, tf.cast(max_detections, count.dtype))
        valid = rows < count
        names = tf.constant(class_names(self), tf.string)
        top, top_scores, _ = top_classes(class_scores, names)
        found = {
            "detection_boxes": out["detection_boxes"],
            "detection_scores": out["detection_scores"],
            "detection_classes": out["detection_classes"],
        }
        if max_detections is not None:
            found = {
                key: tf.where(tf.reshape(valid, [-1] + [1] * (v.shape.rank - 1)), v, 0)
                for key, v in found.items()
            }
        return {
            "detection_boxes": box_ops.normalize_boxes(found["detection_boxes"], image_size),
            "detection_scores": found["detection_scores"],
            "detection_classes": found["detection_classes"],
            "detection_class_names": tf.where(
                valid, tf.gather(names, found["detection_classes"]), ""
            ),
            "num_detections": count,
            "classes": top,
            "scores": top_scores,
        }

    def detect_images(
        self,
        images: tf.Tensor,
        score_threshold: float | tf.Tensor | None = None,
        max_detections: int | tf.Tensor | None = None,
        merge_threshold: float | tf.Tensor | None = None,
        top_k: int | tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        """Detections of a batch of images of ONE size, run through the network together.

        Args:
            images: `[B, H, W, 3]` RGB 0..255 (any real / uint dtype).
            score_threshold: windows below this class probability predict no box; in
                [0, 1].
            max_detections: at most this many detections per image; in [1, D] (D = the
                detector's `max_detections`: the outputs keep D rows, padded).
            merge_threshold: the merge's threshold t (> 0; with an NMS decoder the IoU
                threshold, in (0, 1]).
            top_k: classes per level whose windows predict boxes; in [1, C].
            Each option: None = the detector's own (`request_defaults`), a number (every
            image), or a `[B]` tensor / array (one per image). Out of range: ValueError for
            a number, `InvalidArgumentError` for a tensor (`request_ranges`).

        Returns:
            The output dict of the module docstring, `[B, D, ...]`: what `detect_image` gives
            for each image alone, with the same options.
        """
        images = tf.cast(tf.convert_to_tensor(images), tf.float32)
        count = tf.shape(images)[0]
        options = self.request_options(
            count,
            score_threshold=score_threshold,
            max_detections=max_detections,
            merge_threshold=merge_threshold,
            top_k=top_k,
        )
        return self.batch_fn(images, *(options[name] for name in REQUEST_OPTIONS))

    def detect_image(self, image: tf.Tensor, **options: Any) -> dict[str, tf.Tensor]:
        """Detections of one image `[H, W, 3]` (RGB 0..255, any size and real/uint dtype),
        with `options` (any of `REQUEST_OPTIONS`, as in `detect_images`; none: the
        detector's own): `detect_images` on a batch of one, unbatched."""
        unknown = sorted(set(options) - set(REQUEST_OPTIONS))
        if unknown:
            raise ValueError(
                f"Unknown call options {unknown}; expected some of {list(REQUEST_OPTIONS)}."
            )
        image = tf.convert_to_tensor(image)
        if image.shape.rank != 3:
            raise ValueError(f"Expected one image [H, W, 3], got shape {image.shape}.")
        out = self.detect_images(image[tf.newaxis], **options)
        return {key: value[0] for key, value in out.items()}

    def detect_batch(
        self,
        images: tf.Tensor,
        score_threshold: tf.Tensor,
        max_detections: tf.Tensor,
        merge_threshold: tf.Tensor,
        top_k: tf.Tensor,
        passes: dict[str, tuple[keras.layers.Layer, int | None]] | None = None,
    ) -> dict[str, tf.Tensor]:
        """`batch_fn`'s body: options checked, the pyramid and network on the whole batch,
        then boxes, decoder and top-5 image by image.

        `passes` (the evaluation's, `evaluation.detection.detect_both`): more decodings of
        each image's windows beside the detector's own, `name -> (decoder, top_k)` (top_k
        None: the request's), each with the decoder's own threshold and rows; their outputs
        come as `"{name}/{key}"`, with `"class_scores"` `[B, C]`. The detector's own outputs
        are computed by the same ops either way (`passes={}`: only `"class_scores"` more)."""
        extras = passes is not None
        passes = passes or {}
        count = tf.shape(images)[0]
        given = {
            "score_threshold": score_threshold,
            "max_detections": max_detections,
            "merge_threshold": merge_threshold,
            "top_k": top_k,
        }
        options, checks = self.checked_request_options(given, count)
        with tf.control_dependencies(checks):  # nothing runs on a bad option
            images = tf.identity(images)
        levels = run_levels(
            self.backbone, images, self.scales, self.flips, self.stride, self.max_aspect_ratio
        )
        size = tf.shape(images)[1:3]

        def one(index: tf.Tensor) -> dict[str, tf.Tensor]:
            own = [image_output(level, index, count) for level in levels]
            threshold = options["score_threshold"][index]
            dense = self.dense_boxes(own, top_k=options["top_k"][index], score_threshold=threshold)
            out = self.decode(
                *dense,
                size,
                merge_threshold=options["merge_threshold"][index],
                max_detections=options["max_detections"][index],
            )
            by_k = {None: dense}  # the windows of each top_k, computed once
            for name, (decoder, k) in passes.items():
                if k not in by_k:
                    by_k[k] = self.dense_boxes(own, k, threshold)
                found = self.decode(*by_k[k], size, decoder=decoder)
                out.update({f"{name}/{key}": value for key, value in found.items()})
            if extras:
                out["class_scores"] = dense[3]
            return out

        spec = output_spec(self.max_detections)
        for name, (decoder, _) in passes.items():
            rows = output_spec(decoder.max_detections)
            spec.update({f"{name}/{key}": value for key, value in rows.items()})
        if extras:
            spec["class_scores"] = tf.TensorSpec([self.num_classes], tf.float32)
        return tf.map_fn(one, tf.range(count), fn_output_signature=spec, parallel_iterations=1)

    @property
    def batch_fn(self) -> Any:
        """The detector's one compiled decode path: a `tf.function` taking float32 images of
        one size `[B, H, W, 3]` (0..255) and the `REQUEST_OPTIONS` as `[B]` vectors
        (`score_threshold` float32, `max_detections` int32, `merge_threshold` float32,
        `top_k` int32) -> the output dict `[B, D, ...]`.

        The B images go through the pyramid and the network as one batch per level (flips
        included: 2B entries), then each image's boxes are decoded and merged with its own
        options. `call` / `predict`, `detect_fn` and the notebook helpers (a batch of one),
        the predict command and every detection signature of the export run it, and the
        evaluation runs its body (`detect_batch`, `evaluation.detection.detect_both`), so an
        image gets the same detections from each (bitwise for the same batch; across batch sizes
        up to the convolution kernels' rounding, see `export.serving`). Traced without
        AutoGraph (TF ops over Python lists: nothing to convert).
        """
        if self._batch_fn is None:
            vector = [tf.TensorSpec([None], REQUEST_DTYPES[name]) for name in REQUEST_OPTIONS]
            self._batch_fn = tf.function(
                self.detect_batch,
                input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32), *vector],
                autograph=False,
            )
        return self._batch_fn

    @property
    def detect_fn(self) -> Any:
        """`detect_image` with the detector's own options, compiled: a `tf.function` of one
        float32 `[H, W, 3]` image of any size (`batch_fn` on a batch of one)."""
        if self._detect_fn is None:
            self._detect_fn = tf.function(
                lambda image: self.detect_image(image),
                input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
                autograph=False,
            )
        return self._detect_fn

    def call(
        self,
        images: Any,
        training: bool = False,
        score_threshold: float | tf.Tensor | None = None,
        max_detections: int | tf.Tensor | None = None,
        merge_threshold: float | tf.Tensor | None = None,
        top_k: int | tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        """Detections of `images` `[B, H, W, 3]` (one size), run as one batch
        (`detect_images`); the options as there (None: the detector's own), e.g.
        `detector(images, score_threshold=0.3, max_detections=10)`."""
        images = tf.convert_to_tensor(images)
        if images.shape.rank == 3:
            raise ValueError(
                f"Expected a batch [B, H, W, 3], got one image of shape {images.shape}; use "
                "images[None] (or `overfeat_tf.detect(detector, image)`)."
            )
        if images.shape.rank != 4 or images.shape[-1] not in (None, 3):
            raise ValueError(f"Expected RGB images [B, H, W, 3], got shape {images.shape}.")
        return self.detect_images(
            images,
            score_threshold=score_threshold,
            max_detections=max_detections,
            merge_threshold=merge_threshold,
            top_k=top_k,
        )

    # --- training with Keras' own loop ----------------------------------------------------

    def compile(
        self,
        optimizer: Any = "sgd",
        task: str = "detect",
        box_loss: str = "smooth_l1",
        min_fill: float = 0.1,
        negative_ratio: float = 3.0,
        min_negatives: int = 8,
        hard_fraction: float = 0.5,
        **kwargs: Any,
    ) -> None:
        """Prepare `fit` / `evaluate` on `(images, {"boxes", "labels"})` batches.

        The paper's spatial training (§4.2, §5): every cell of the fine-stride output map of
        a training image gets its targets from the image's boxes (`data.spatial.map_targets`:
        the window coverage rule, background where no box is near, box edges in window
        units), built in the train step; detect's loss mines negatives per image.

        Args:
            optimizer: a Keras optimizer (or its name).
            task: "detect" trains trunk + classifier (the backbone needs `background=True`;
                the regressor is frozen); "localize" trains only the regressor (the
                backbone needs a `regressor`; trunk and classifier frozen). Sets the
                backbone layers' `trainable` flags.
            box_loss: localize's `WindowBoxLoss` kind ("smooth_l1" or the paper's "l2").
            min_fill: smallest fraction of a window a positive object must fill.
            negative_ratio, min_negatives, hard_fraction: detect's negative mining
                (`MinedDetectionLoss`).
            **kwargs: other `keras.Model.compile` arguments (metrics, ...); `jit_compile`
                defaults to False (the targets have dynamic shapes).
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}.")
        if not 0 < min_fill <= 1:
            raise ValueError(f"min_fill must be in (0, 1], got {min_fill}.")
        net = self.backbone
        if task == "detect" and not net.background:
            raise ValueError(
                "task='detect' needs a backbone with a background class: build it with "
                "OverFeat(..., background=True) or `overfeat_tf.training.tasks.task_model`."
            )
        if task == "localize" and not net.regressor:
            raise ValueError(
                "task='localize' needs a backbone with a box regressor: build it with "
                "OverFeat(..., regressor='class_specific') or `training.tasks.task_model`."
            )
        for layer in net.layers:
            regression = layer.name.startswith("reg_")
            layer.trainable = regression if task == "localize" else not regression
        mining = {
            "negative_ratio": negative_ratio,
            "min_negatives": min_negatives,
            "hard_fraction": hard_fraction,
        }
        self.training_settings = {"task": task, "box_loss": box_loss, "min_fill": min_fill}
        self.training_settings.update(mining)
        losses = {
            "class_logits": MinedDetectionLoss(**mining) if task == "detect" else None,
            "box_deltas": WindowBoxLoss(box_loss) if task == "localize" else None,
        }
        kwargs.setdefault("jit_compile", False)
        super().compile(
            optimizer=optimizer,
            loss={name: losses[name] for name in net.output_names},
            **kwargs,
        )

    def fit(self, x: Any = None, y: Any = None, **kwargs: Any) -> keras.callbacks.History:
        """`keras.Model.fit`; a `tf.data.Dataset` is taken as it comes (shuffle it in the
        pipeline: Keras ignores `shuffle` for datasets and warns when it is left True)."""
        if isinstance(x, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, **kwargs)

    def get_compile_config(self) -> dict[str, Any]:
        if not self.compiled:
            return {}
        optimizer = keras.saving.serialize_keras_object(self.optimizer)
        return {"optimizer": optimizer, **self.training_settings}

    def compile_from_config(self, config: dict[str, Any]) -> None:
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(config.pop("optimizer"))
        self.compile(optimizer=optimizer, **config)
        self.optimizer.build(self.trainable_variables)

    def training_targets(
        self, y: dict[str, Any], image_size: tf.Tensor, map_size: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """The cells' targets of a batch (`data.spatial.map_targets` per image).

        Args:
            y: {"boxes": `[B, N, 4]` yxyx NORMALIZED to the image, "labels": `[B, N]` int};
                rows with label < 0 are padding; ragged `[B, None, ...]` tensors accepted.
            image_size: (H, W) of the batch's images. map_size: (h, w) of the output map.

        Returns:
            {"class_logits": int32 `[B, h, w]`, "box_deltas": float32 `[B, h, w, 5]`}, the
            targets of the backbone's outputs.
        """
        if not isinstance(y, dict) or not {"boxes", "labels"} <= set(y):
            raise ValueError(
                'fit/evaluate need (images, {"boxes": [B, N, 4] yxyx normalized, "labels": '
                f"[B, N] int, -1 = padding}}) batches; got targets {type(y).__name__}"
                f"{sorted(y) if isinstance(y, dict) else ''}."
            )
        boxes, labels = y["boxes"], y["labels"]
        if isinstance(boxes, tf.RaggedTensor):
            boxes = boxes.to_tensor(0.0)
        if isinstance(labels, tf.RaggedTensor):
            labels = labels.to_tensor(-1)
        size = tf.cast(image_size, tf.float32)
        pixels = tf.cast(boxes, tf.float32) * tf.concat([size, size], 0)
        labels = tf.cast(labels, tf.int32)
        net, min_fill = self.backbone, self.training_settings["min_fill"]

        def one_image(args: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
            image_boxes, image_labels = args
            keep = image_labels >= 0
            return map_targets(
                tf.boolean_mask(image_boxes, keep),
                tf.boolean_mask(image_labels, keep),
                net.config,
                (map_size[0], map_size[1]),
                net.num_classes,
                min_fill,
            )

        classes, boxes = tf.map_fn(
            one_image, (pixels, labels), fn_output_signature=(tf.int32, tf.float32)
        )
        targets = {"class_logits": classes, "box_deltas": boxes}
        return {name: targets[name] for name in net.output_names}

    def _training_pass(self, data: Any, training: bool) -> tuple:
        """(images, targets, outputs, loss) of a batch: the backbone at the fine stride."""
        images, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        images = tf.cast(images, tf.float32)
        outputs = self.backbone.spatial_model("fine")(images, training=training)
        map_size = tf.shape(outputs["class_logits"])[1:3]
        targets = self.training_targets(y, tf.shape(images)[1:3], map_size)
        loss = self.compute_loss(images, targets, outputs, sample_weight, training=training)
        # As Keras' own train step: the tracker sees the loss before the per-replica scaling.
        tracked = unscale_loss_for_distribution(loss)
        self._loss_tracker.update_state(tracked, sample_weight=tf.shape(images)[0])
        return images, targets, outputs, loss, sample_weight

    def train_step(self, data: Any) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            images, targets, outputs, loss, weight = self._training_pass(data, training=True)
            loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return self.compute_metrics(images, targets, outputs, sample_weight=weight)

    def test_step(self, data: Any) -> dict[str, Any]:
        images, targets, outputs, _, weight = self._training_pass(data, training=False)
        return self.compute_metrics(images, targets, outputs, sample_weight=weight)

    def get_config(self) -> dict[str, Any]:
        options = self.options
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "prediction_decoder": keras.saving.serialize_keras_object(self.prediction_decoder),
            **{name: options[name] for name in BOX_OPTIONS},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OverFeatDetector:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["prediction_decoder"] = keras.saving.deserialize_keras_object(
            config["prediction_decoder"]
        )
        return cls(**config)


# --- notebook helpers -------------------------------------------------------------------------


def as_detector(model: Any, **options: Any) -> OverFeatDetector:
    """`model` if it is a detector and no option changes, else a detector of its backbone
    with its options (a detector's, or the defaults) changed by `options`."""
    if isinstance(model, OverFeatDetector):
        return model.with_options(**options)
    return OverFeatDetector(backbone_of(model)).with_options(**options)


def detect(model: Any, image_or_path: Any, **overrides: Any) -> dict[str, Any]:
    """Detect objects in one image (notebook API).

    Args:
        model: an `OverFeatDetector` (what `train.py --task detect|localize` saves) or an
            `OverFeat` network (detected with the default options).
        image_or_path: a file path, encoded bytes, a PIL image or an RGB array (0..255).
        **overrides: detector options (`OverFeatDetector.options`: scales=, top_k=,
            merge_threshold=, ...).
            Each call with overrides builds (and traces) a new detector: for many images,
            build it once with `detector.with_options(...)`.

    Returns:
        `{"boxes": float32 [n, 4] yxyx in PIXELS of the original image, "scores": [n],
        "classes": [n] int, "class_names": [n] str}`, best first.
    """
    detector = as_detector(model, **overrides)
    image = tf.cast(load_image(image_or_path), tf.float32)
    out = detector.detect_fn(image)
    n = int(out["num_detections"])
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    return {
        "boxes": box_ops.denormalize_boxes(out["detection_boxes"][:n], size).numpy(),
        "scores": out["detection_scores"][:n].numpy(),
        "classes": out["detection_classes"][:n].numpy(),
        "class_names": [v.decode() for v in out["detection_class_names"][:n].numpy()],
    }


def first_box_per_class(found: dict[str, Any], guesses: int) -> dict[str, Any]:
    """The best-scoring detection of each class, at most `guesses`, best first (any dict of
    per-detection arrays / lists keyed like `detect`'s, with "classes")."""
    seen: list[int] = []
    order = []
    for i, c in enumerate(list(found["classes"])):
        if int(c) not in seen and len(seen) < guesses:
            seen.append(int(c))
            order.append(i)
    return {
        key: (value[order] if hasattr(value, "shape") else [value[i] for i in order])
        for key, value in found.items()
    }


def localize(model: Any, image_or_path: Any, guesses: int = 5, **overrides: Any) -> dict:
    """ILSVRC-style localization (paper §4): `guesses` (class, box) pairs for one image.

    Detects with the top `guesses` classes per level, then keeps the best merged box of each
    class, best classes first. Same keys as `detect`; boxes in PIXELS, yxyx.
    """
    if not isinstance(guesses, int) or guesses < 1:
        raise ValueError(f"guesses must be a positive int, got {guesses!r}.")
    overrides.setdefault("top_k", guesses)
    return first_box_per_class(detect(model, image_or_path, **overrides), guesses)

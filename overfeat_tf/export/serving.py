"""Export an OverFeat model as a TF Serving SavedModel, everything in TF ops.

    encoded images tf.string [B]  (JPEG / PNG / GIF / BMP, any sizes, mixed in one batch)
      + per-image options [B] (`detect_with_options`; `serving_default`: the export's own)
      -> options checked; every image's header checked (empty, unknown format, zero size,
         over `max_pixels`) and its size read, before any pixel is decoded
      -> images grouped by size (`batch_plan`), each group cut into chunks of at most
         `max_batch` images (and `max_pixels` decoded pixels); a while loop over chunks:
           decode the chunk's images -> `OverFeatDetector.batch_fn` on the stacked
           `[n, H, W, 3]`: pyramid (scales x flips) -> OverFeat at the fine/coarse stride,
           ONE batch per level -> per image, with its options: top-k classes per level,
           every window's box in pixels of the original image, score filter -> the merge
           (paper §4.3), the best `max_detections` merged boxes, normalized yxyx -> top-5 of
           the multi-scale classification
      -> outputs written back in request order, padded to fixed sizes: [B, N, 4], [B, N], ...

Signatures (all inputs are raw images, RGB 0..255 after decoding; no Python op anywhere):

- `serving_default`: `images` tf.string `[B]` (encoded) -> detection + top-5 (below).
- `detect_with_options`: `images` tf.string `[B]` and, one value per image, `score_threshold`
  float32 `[B]` (in [0, 1]), `max_detections` int32 `[B]` (in [1, N]), `merge_threshold`
  float32 `[B]` (finite, > 0; with an NMS decoder its IoU threshold, in (0, 1]) and `top_k`
  int32 `[B]` (in [1, C], C = the number of classes) -> the same outputs as
  `serving_default` (still N rows; past an image's `max_detections` they are padding). With
  the export's own values (`request_options` in the metadata) it answers bitwise what
  `serving_default` does: both run the same function, `serving_default` with those values.
- `detect_images`: `images` uint8 `[B, H, W, 3]` -> the same outputs as `serving_default`.
- `classify`: `images` tf.string `[B]` -> `classes` `[B, 5]` int32, `scores` `[B, 5]` float32,
  `class_names` `[B, 5]` string.
- `features`: `images` tf.string `[B]` -> `features` `[B, C]`, `feature_maps`
  `[B, h, w, C]`, `feature_map_sizes` `[B, 2]` int32 (below).
- `metadata`: `request` tf.string `[B]` (ignored: TF Serving cannot call a signature
  without inputs) -> `metadata` tf.string `[B]`, each the JSON of the options (scales
  resolved), class names, net and versions (`export_metadata`).

Detection outputs (TF Object Detection API names), N = `max_detections`:
`detection_boxes` `[B, N, 4]` float32 `[ymin, xmin, ymax, xmax]` normalized to the original
image (0..1); `detection_scores` `[B, N]` float32, the merged boxes' accumulated confidences
(sums of window probabilities: not probabilities, see `detection`); `detection_classes`
`[B, N]` int32; `detection_class_names` `[B, N]` string; `num_detections` `[B]` int32. Rows
past `num_detections` are padding (zeros, class 0, name ""). Top-5 classification: `classes`
`[B, 5]` int32 and `scores` `[B, 5]` float32, the mean over scales and flips of each class's
spatial max probability (paper §3.3), best first; with fewer than 5 classes the extra
entries are class -1, score 0, name "".

Features: the layer `feature_layer` (a name or OverFeat's layer number, see `features`),
coarse stride (OverFeat's own extractor), each image resized so its short side is
`feature_size` px (default: the net's crop size; 0 keeps the original size). `features` is
the spatial max of the map, one vector per image. Images of different sizes give maps of
different sizes, so `feature_maps` holds each map zero-padded at the bottom/right to the
largest map of the batch, and `feature_map_sizes` the valid `(h, w)` of each.

A bad image (empty string, bytes of no supported format, corrupt data, a zero-sized image,
more than `max_pixels` pixels, which is checked from the header before any pixel is decoded),
a request of more than `max_images` images, or a bad option (out of its range, not finite,
not one value per image) fails the request with `InvalidArgumentError` and a message naming
the problem (the option and its allowed range; input bytes only in hex); the model stays
loaded and the next request works.

Batches. Images of one size run through the network together, one chunk at a time (chunks
run one after another): a chunk holds at most `max_batch` images and at most `max_pixels`
decoded pixels (or one image, if it alone is that large), so a request holds at most one
chunk's decoded images and their pyramids in memory, and every pyramid level is bounded by
its scale and `max_aspect_ratio` (`pyramid`), whatever the image's shape: what a request can
cost is `request_bounds`, stored in the metadata. An image's detections do not depend on
which images share its request beyond the rounding of the convolutions: CPU (oneDNN) kernels
may block a batch of n images differently from a batch of one, so a box can differ in its
last float32 bit (about 1e-7 of the image; classes, scores and counts were equal in the
tests), bitwise equal for the same chunk.

The options (the detector's and the export's) and class names are stored twice: as the
`metadata` signature and as the file `<version>/assets.extra/overfeat_export.json` (TF
Serving's directory for extra files, which it does not load), so a client can read what it
is talking to without running a graph.

The detection signatures run the detector's own decode path, `OverFeatDetector.batch_fn`, as
`predict`, `model(images)` and the notebook `detect` do, so an export answers what the
`.keras` detector does. Placement for GPU serving: decoding, the header checks and the batch
plan are pinned to the CPU; the network, box decoding and the merge carry no device, so TF
Serving places them on the GPU when it has one (nothing in the graph needs XLA or a Python
op).

Writing: `export_model` writes into a hidden temporary directory inside `export_dir` and
renames it to `export_dir/<version>` (`atomic.atomic_path`; TF Serving only picks up numeric
directories), so a server never sees half a model; on failure nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from overfeat_tf.data import image_io
from overfeat_tf.models.backbone import backbone_of
from overfeat_tf.models.decoders import BoxMergeDecoder
from overfeat_tf.models.detector import (
    BOX_OPTIONS,
    REQUEST_DTYPES,
    REQUEST_OPTIONS,
    TOP_CLASSES,
    OverFeatDetector,
    as_detector,
    class_names,
    output_spec,
    top_classes,
)
from overfeat_tf.models.inference import classify_tensor
from overfeat_tf.ops import pyramid, resizing
from overfeat_tf.release.features import FEATURE_LAYER, feature_model, min_input_size, resolve_layer
from overfeat_tf.utils.atomic import atomic_path
from overfeat_tf.utils.version import __version__

SIGNATURES = (
    "serving_default",
    "detect_with_options",
    "detect_images",
    "classify",
    "features",
    "metadata",
)
METADATA_DIR = "assets.extra"
METADATA_FILE = "overfeat_export.json"
FORMAT = "overfeat_tf.export.serving/1"
DEFAULT_MAX_IMAGES = 32
DEFAULT_MAX_BATCH = 8


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What only an export has, fixed at export time (the detection signatures run the
    detector with its own options, `OverFeatDetector.options`).

    Attributes:
        max_pixels: bound on `height * width` of an input image (checked before decoding).
        max_images: bound on the images of one request (every signature): a request of
            more fails with `InvalidArgument` before any image is decoded.
        max_batch: images of one size run through the network together in chunks of at
            most this many (and at most `max_pixels` decoded pixels); 1 runs every image
            alone.
        feature_layer: the `features` signature's layer: a name ("fc7_linear", "fc7",
            "pool5", ...) or OverFeat's layer number (`features.layer_names`); default the
            release's `-f` layer, fc7 before its ReLU.
        feature_size: short side (px) images are resized to for `features`; None = the
            net's crop size; 0 = keep the original size.
    """

    max_pixels: int = image_io.DEFAULT_MAX_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES
    max_batch: int = DEFAULT_MAX_BATCH
    feature_layer: str | int = FEATURE_LAYER
    feature_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_images", "max_batch"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}.")
        if self.feature_size is not None and not (
            _positive_int(self.feature_size) or self.feature_size == 0
        ):
            raise ValueError(
                f"feature_size must be None, 0 or a positive int, got {self.feature_size!r}."
            )
        if not isinstance(self.feature_layer, str | int) or isinstance(self.feature_layer, bool):
            raise ValueError(
                f"feature_layer must be a layer name or number, got {self.feature_layer!r}."
            )

    def replace(self, **changes: Any) -> ExportOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExportOptions:
        """Inverse of `to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown export options {unknown}; expected some of {sorted(names)}.")
        return cls(**values)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# --- model facts ---------------------------------------------------------------------------


def feature_target(model: keras.Model, options: ExportOptions) -> tuple[str, int]:
    """(layer name, short side in px) of the `features` signature; ValueError if unusable."""
    config = backbone_of(model).config
    layer = resolve_layer(config, options.feature_layer)
    size = config.crop_size if options.feature_size is None else options.feature_size
    need = min_input_size(config, layer, "coarse")
    if 0 < size < need:
        raise ValueError(
            f"feature_size {size} is too small for layer {layer} of the {config.name!r} net: "
            f"use at least {need} px."
        )
    return layer, size


def export_metadata(model: keras.Model, options: ExportOptions) -> dict[str, Any]:
    """What a client needs to know about an export of `model` (a network: the default
    detector options): its options (the detector's and the export's, scales and feature
    layer resolved), classes, net and what a request can cost."""
    detector = as_detector(model)
    config = detector.backbone.config
    net = detector.backbone
    layer, size = feature_target(model, options)
    resolved = options.replace(feature_layer=layer, feature_size=size)
    detection = detector.resolved_options()
    return {
        "format": FORMAT,
        "overfeat_tf_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "model": {
            "name": net.name,
            "architecture": config.name,
            "num_classes": net.num_classes,
            "background": net.background,
            "regressor": net.regressor,
            "crop_size": config.crop_size,
            "fine_stride": config.fine_stride,
            "coarse_stride": config.coarse_stride,
        },
        "class_names": class_names(model),
        "options": {**detection, **resolved.to_dict()},
        "request_options": request_options(detector),
        "signatures": list(SIGNATURES),
        "box_format": "[ymin, xmin, ymax, xmax] normalized to the original image",
        "input": "RGB; images of more than max_pixels pixels are rejected",
        "bounds": request_bounds(detector, resolved),
    }


def request_options(detector: OverFeatDetector) -> dict[str, Any]:
    """`detect_with_options`' inputs besides `images`: for each, its dtype, the export's
    own value (what `serving_default` runs with) and its range (JSON-ready)."""
    defaults, ranges = detector.request_defaults(), detector.request_ranges()
    return {
        name: {
            "dtype": REQUEST_DTYPES[name].name,
            "default": defaults[name],
            **ranges[name].to_dict(),
        }
        for name in REQUEST_OPTIONS
    }


def request_bounds(detector: OverFeatDetector, options: ExportOptions) -> dict[str, Any]:
    """What one request of an export of `detector` can cost at most, in pixels, whatever its
    images (`options` with the feature size resolved).

    A request holds at most `max_images` images, each of at most `max_pixels` pixels; they
    run in chunks of images of one size, one chunk at a time, each of at most `max_batch`
    images and `max_pixels` decoded pixels (or one larger image). Each image's pyramid level
    at scale S is at most `pyramid.max_level_size` (long side <= S * max_aspect_ratio), times
    2 with flips: `max_pyramid_pixels` per image, `max_batch` times that per chunk.
    """
    ratio = detector.max_aspect_ratio
    config = detector.backbone.config
    levels = [pyramid.max_level_size(s, config, ratio) for s in detector.resolved_scales]
    copies = 2 if detector.flips else 1
    side = options.feature_size
    feature = side * int(side * ratio) if side else options.max_pixels
    pyramid_pixels = copies * sum(a * b for a, b in levels)
    return {
        "max_images": options.max_images,
        "max_pixels": options.max_pixels,
        "max_batch": options.max_batch,
        "max_aspect_ratio": ratio,
        "max_level_sizes": [list(level) for level in levels],
        "max_pyramid_pixels": pyramid_pixels,
        "max_batch_pyramid_pixels": options.max_batch * pyramid_pixels,
        "max_feature_pixels": feature,
    }


# --- batches ---------------------------------------------------------------------------------


def checked_count(images: tf.Tensor, max_images: int) -> tf.Tensor:
    """`images` (a request's batch), passed on only if it holds at most `max_images`."""
    count = tf.shape(images, out_type=tf.int64)[0]
    message = (
        f"is over this model's bound of {max_images} images per request; split the request "
        "(the bound is set at export: export.py --max-images)."
    )
    check = tf.debugging.Assert(count <= max_images, ["Too many images:", count, message])
    return image_io.after(images, check)


def batch_plan(sizes: tf.Tensor, max_batch: int, max_pixels: int) -> tuple[tf.Tensor, tf.Tensor]:
    """How a request's images run: grouped by size, each group cut into chunks.

    Args:
        sizes: int64 `[B, 2]`, (height, width) of each image (> 0, checked).
        max_batch: at most this many images per chunk.
        max_pixels: at most this many pixels per chunk (height * width * images), except
            that a chunk always holds at least one image.

    Returns:
        `order` int32 `[B]`: the images' indices, grouped by size (groups in the order of
        their first image, request order within a group); `starts` int32 `[K + 1]`: chunk k
        is `order[starts[k]:starts[k + 1]]` (K chunks; `starts[K]` = B).
    """
    count = tf.shape(sizes)[0]
    key = sizes[:, 0] * (1 << 32) + sizes[:, 1]  # sides < 2^31: one int64 per size
    _, group = tf.unique(key, out_idx=tf.int32)
    order = tf.argsort(group, stable=True)
    sorted_group = tf.gather(group, order)
    position = tf.range(count)
    first = tf.math.unsorted_segment_min(position, sorted_group, count)  # <= count groups
    rank = position - tf.gather(first, sorted_group)  # index within its group
    pixels = tf.gather(sizes[:, 0] * sizes[:, 1], order)
    per_chunk = tf.clip_by_value(max_pixels // tf.maximum(pixels, 1), 1, max_batch)
    starts = tf.where(tf.equal(tf.cast(rank, tf.int64) % per_chunk, 0))[:, 0]
    return order, tf.concat([tf.cast(starts, tf.int32), [count]], 0)


def _run_chunks(
    count: tf.Tensor,
    order: tf.Tensor,
    starts: tf.Tensor,
    load: Callable[[tf.Tensor], tf.Tensor],
    detect: Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]],
    spec: dict[str, tf.TensorSpec],
) -> dict[str, tf.Tensor]:
    """`detect(load(chunk), chunk)` on each chunk of the plan, one after another, the
    outputs written back in request order: `[count, ...]` per key of `spec`."""
    arrays = {
        key: tf.TensorArray(s.dtype, size=count, element_shape=s.shape) for key, s in spec.items()
    }

    def body(k: tf.Tensor, arrays: dict[str, tf.TensorArray]) -> tuple:
        chunk = order[starts[k] : starts[k + 1]]
        out = detect(load(chunk), chunk)
        return k + 1, {key: arrays[key].scatter(chunk, out[key]) for key in spec}

    chunks = tf.size(starts) - 1
    _, arrays = tf.while_loop(
        lambda k, _: k < chunks, body, (tf.constant(0), arrays), parallel_iterations=1
    )
    return {key: array.stack() for key, array in arrays.items()}


def _header_sizes(contents: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """int64 `[B, 2]`: each encoded image's (height, width) from its header, once every
    header check has passed (empty, unknown format, zero size, over `max_pixels`)."""

    def one(c: tf.Tensor) -> tf.Tensor:
        size = image_io.header_size(c)
        return image_io.after(size, *image_io.size_checks(size[0], size[1], max_pixels))

    with tf.device("/CPU:0"):
        return tf.map_fn(
            one,
            contents,
            fn_output_signature=tf.TensorSpec([2], tf.int64),
            parallel_iterations=1,
        )


def _map_images(fn: Callable[[tf.Tensor], Any], images: tf.Tensor, spec: Any) -> Any:
    """`fn` on each image of the batch, one at a time, outputs stacked (fixed shapes)."""
    return tf.map_fn(fn, images, fn_output_signature=spec, parallel_iterations=1)


def _feature_batch(
    extract: Callable[[tf.Tensor], tf.Tensor], images: tf.Tensor, channels: int
) -> dict[str, tf.Tensor]:
    """Features of images of different sizes: pooled `[B, C]`, maps zero-padded to the
    largest `[B, h, w, C]`, sizes `[B, 2]` (a while loop: maps differ in size)."""
    n = tf.shape(images)[0]
    maps = tf.TensorArray(
        tf.float32, size=n, infer_shape=False, element_shape=[None, None, channels]
    )
    sizes = tf.TensorArray(tf.int32, size=n, element_shape=[2])

    def collect(i, maps, sizes):
        fmap = extract(images[i])
        return i + 1, maps.write(i, fmap), sizes.write(i, tf.shape(fmap)[:2])

    _, maps, sizes = tf.while_loop(
        lambda i, *_: i < n, collect, (tf.constant(0), maps, sizes), parallel_iterations=1
    )
    sizes = sizes.stack()  # [B, 2]
    largest = tf.reduce_max(tf.concat([tf.zeros([1, 2], tf.int32), sizes], 0), axis=0)
    padded = tf.TensorArray(tf.float32, size=n, element_shape=[None, None, channels])
    pooled = tf.TensorArray(tf.float32, size=n, element_shape=[channels])

    def pad(i, padded, pooled):
        fmap = maps.read(i)
        extra = largest - tf.shape(fmap)[:2]
        return (
            i + 1,
            padded.write(i, tf.pad(fmap, [[0, extra[0]], [0, extra[1]], [0, 0]])),
            pooled.write(i, tf.reduce_max(fmap, axis=[0, 1])),
        )

    _, padded, pooled = tf.while_loop(
        lambda i, *_: i < n, pad, (tf.constant(0), padded, pooled), parallel_iterations=1
    )
    empty = n == 0
    return {
        "features": tf.cond(empty, lambda: tf.zeros([0, channels]), pooled.stack),
        "feature_maps": tf.cond(empty, lambda: tf.zeros([0, 0, 0, channels]), padded.stack),
        "feature_map_sizes": tf.reshape(sizes, [-1, 2]),
    }


def _decoded(contents: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """Header checks + decode of one encoded image, on the CPU (TF has no GPU decoders for
    every format, and the checks are cheap scalar work)."""
    with tf.device("/CPU:0"):
        return image_io.decode_image(contents, max_pixels)


def _feature_extractor(
    extractor: keras.Model, layer: str, side: int, need: int, max_pixels: int, ratio: float
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Encoded image -> its feature map `[h, w, C]` (short side resized to `side`; an error
    naming the layer when it is under `need` px)."""

    def extract(contents: tf.Tensor) -> tf.Tensor:
        image = resizing.resize_short_side(_decoded(contents, max_pixels), side, ratio)
        short = tf.reduce_min(tf.shape(image)[:2])
        message = (
            f"Image too small for feature layer {layer}: its short side must be at least "
            f"{need} px, got"
        )
        image = image_io.after(image, tf.debugging.Assert(short >= need, [message, short]))
        return tf.cast(extractor(image[tf.newaxis], training=False)[0], tf.float32)

    return extract


def _without_xla(detector: OverFeatDetector) -> OverFeatDetector:
    """`detector`, its merge in plain TF ops (TF Serving may lack the XLA JIT): a decoder
    asking for XLA is replaced by the same merge without it."""
    decoder = detector.prediction_decoder
    if not getattr(decoder, "jit_compile", False):
        return detector
    plain = BoxMergeDecoder(decoder.merge_threshold, decoder.max_detections)
    boxes = {name: detector.options[name] for name in BOX_OPTIONS}
    return OverFeatDetector(detector.backbone, plain, **boxes)


def build_export(
    model: keras.Model, options: ExportOptions | None = None
) -> keras.export.ExportArchive:
    """A Keras `ExportArchive` with the signatures of the module docstring (not written yet).

    Args:
        model: an `OverFeatDetector` (exported with its own options) or an `OverFeat`
            network (the default detector options; a regressor gives real boxes, without one
            every window is its own box).
        options: `ExportOptions` (default: `ExportOptions()`).

    Raises:
        ValueError: not an OverFeat model, or a feature layer / size the net cannot give.
    """
    options = options or ExportOptions()
    detector = _without_xla(as_detector(model))
    net = detector.backbone
    config = net.config
    layer, feature_side = feature_target(model, options)
    metadata = json.dumps(export_metadata(model, options), sort_keys=True)
    max_pixels = options.max_pixels
    names = class_names(net)
    extractor = feature_model(net, layer, "coarse")
    channels = int(extractor.output.shape[-1])
    need = min_input_size(config, layer, "coarse")
    single = output_spec(detector.max_detections)
    max_batch = options.max_batch

    def detect(
        images: tf.Tensor, chunk: tf.Tensor, request: dict[str, tf.Tensor]
    ) -> dict[str, tf.Tensor]:  # the detector's own decode path, the chunk's options
        values = [tf.gather(request[name], chunk) for name in REQUEST_OPTIONS]
        return detector.batch_fn(tf.cast(images, tf.float32), *values)

    def detect_encoded(images: tf.Tensor, request: dict[str, tf.Tensor]) -> dict:
        """The one detection of encoded images: `serving_default` (the export's options)
        and `detect_with_options` (the request's) both run it."""
        images = checked_count(images, options.max_images)
        count = tf.shape(images)[0]
        request, checks = detector.checked_request_options(request, count)
        images = image_io.after(images, *checks)  # a bad option: nothing is decoded
        sizes = _header_sizes(images, max_pixels)
        with tf.device("/CPU:0"):
            order, starts = batch_plan(sizes, max_batch, max_pixels)

        def load(chunk: tf.Tensor) -> tf.Tensor:  # [n, H, W, 3] uint8, one size
            def one(index: tf.Tensor) -> tf.Tensor:
                image = _decoded(images[index], max_pixels)
                same = tf.reduce_all(tf.equal(tf.shape(image, tf.int64)[:2], sizes[index]))
                check = tf.debugging.Assert(
                    same,
                    [
                        "Corrupt image: its decoded size differs from its header's (height, "
                        "width):",
                        tf.shape(image)[:2],
                        sizes[index],
                    ],
                )
                return image_io.after(image, check)

            with tf.device("/CPU:0"):
                return tf.map_fn(
                    one,
                    chunk,
                    fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
                    parallel_iterations=1,
                )

        return _run_chunks(count, order, starts, load, lambda x, c: detect(x, c, request), single)

    def serving_default(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return detect_encoded(images, detector.request_options(tf.shape(images)[0]))

    def detect_with_options(
        images: tf.Tensor,
        score_threshold: tf.Tensor,
        max_detections: tf.Tensor,
        merge_threshold: tf.Tensor,
        top_k: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        request = {
            "score_threshold": score_threshold,
            "max_detections": max_detections,
            "merge_threshold": merge_threshold,
            "top_k": top_k,
        }
        return detect_encoded(images, request)

    def detect_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        images = checked_count(images, options.max_images)
        shape = tf.shape(images, out_type=tf.int64)
        # every image has the batch's size (an empty batch has none to check)
        height, width = (tf.where(shape[0] > 0, shape[i], 1) for i in (1, 2))
        images = image_io.after(images, *image_io.size_checks(height, width, max_pixels))
        count = tf.shape(images)[0]
        request = detector.request_options(count)
        with tf.device("/CPU:0"):
            sizes = tf.tile(shape[tf.newaxis, 1:3], [count, 1])
            order, starts = batch_plan(sizes, max_batch, max_pixels)
        return _run_chunks(
            count,
            order,
            starts,
            lambda chunk: tf.gather(images, chunk),
            lambda x, c: detect(x, c, request),
            single,
        )

    def classify(images: tf.Tensor) -> dict[str, tf.Tensor]:
        table = tf.constant(names, tf.string)

        def one(contents: tf.Tensor) -> tuple[tf.Tensor, ...]:
            image = _decoded(contents, max_pixels)
            scores = classify_tensor(
                net,
                image,
                detector.scales,
                detector.flips,
                detector.stride,
                detector.max_aspect_ratio,
            )
            return top_classes(scores, table)

        classes, scores, top_names = _map_images(
            one,
            checked_count(images, options.max_images),
            (
                tf.TensorSpec([TOP_CLASSES], tf.int32),
                tf.TensorSpec([TOP_CLASSES], tf.float32),
                tf.TensorSpec([TOP_CLASSES], tf.string),
            ),
        )
        return {"classes": classes, "scores": scores, "class_names": top_names}

    def features(images: tf.Tensor) -> dict[str, tf.Tensor]:
        extract = _feature_extractor(
            extractor, layer, feature_side, need, max_pixels, detector.max_aspect_ratio
        )
        return _feature_batch(extract, checked_count(images, options.max_images), channels)

    def metadata_fn(request: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"metadata": tf.fill(tf.shape(request), tf.constant(metadata))}

    strings = [tf.TensorSpec([None], tf.string, name="images")]
    archive = keras.export.ExportArchive()
    archive.track(net)
    archive.add_endpoint("serving_default", serving_default, strings)
    archive.add_endpoint(
        "detect_with_options",
        detect_with_options,
        [
            *strings,
            *(tf.TensorSpec([None], REQUEST_DTYPES[name], name=name) for name in REQUEST_OPTIONS),
        ],
    )
    archive.add_endpoint(
        "detect_images",
        detect_images,
        [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
    )
    archive.add_endpoint("classify", classify, strings)
    archive.add_endpoint("features", features, strings)
    # One (ignored) input: TF Serving's Predict API and `saved_model_cli run` cannot call a
    # signature without inputs (tensorflow/serving#1676).
    archive.add_endpoint(
        "metadata", metadata_fn, [tf.TensorSpec([None], tf.string, name="request")]
    )
    return archive


# --- writing ---------------------------------------------------------------------------------


def next_version(export_dir: str | os.PathLike) -> int:
    """1 + the largest numeric subdirectory of `export_dir` (1 if none)."""
    path = Path(export_dir)
    versions = (
        [int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
        if path.is_dir()
        else []
    )
    return max(versions, default=0) + 1


def _write_metadata(directory: Path, metadata: dict[str, Any]) -> None:
    """`assets.extra/overfeat_export.json` inside a (still temporary) version directory."""
    extra = directory / METADATA_DIR
    extra.mkdir(exist_ok=True)
    (extra / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def export_model(
    model: keras.Model,
    export_dir: str | os.PathLike,
    version: int | None = None,
    options: ExportOptions | None = None,
) -> Path:
    """Write the SavedModel to `export_dir/<version>/` for TF Serving; returns that path.

    The model is written to a hidden temporary directory inside `export_dir` and renamed
    (`atomic.atomic_path`), so TF Serving never sees a partial version. On any failure the
    temporary directory (and `export_dir`, if this call created it and it is empty) is
    removed.

    Args:
        model: an `OverFeatDetector` or an `OverFeat` network.
        export_dir: the model's base directory (TF Serving's `--model_base_path`).
        version: a positive int; None = 1 + the largest existing numeric version.
        options: `ExportOptions` (default: `ExportOptions()`).

    Raises:
        ValueError: bad version (or already there), options or model.
    """
    options = options or ExportOptions()
    if version is not None and not _positive_int(version):
        raise ValueError(f"version must be a positive int, got {version!r}.")
    export_dir = Path(export_dir)
    if export_dir.exists() and not export_dir.is_dir():
        raise ValueError(f"Export directory {export_dir} exists and is not a directory.")
    version = next_version(export_dir) if version is None else version
    target = export_dir / str(version)
    if target.exists():
        raise ValueError(
            f"Version {version} already exists in {export_dir}; pick another --version or "
            "leave it out to use the next one."
        )
    metadata = export_metadata(model, options)  # validates before anything is written
    created = not export_dir.exists()
    try:
        with atomic_path(target, directory=True) as temporary:
            build_export(model, options).write_out(str(temporary), verbose=False)
            _write_metadata(temporary, metadata)
    except BaseException:
        if created:
            try:
                export_dir.rmdir()
            except OSError:
                pass
        raise
    return target


def read_metadata(version_dir: str | os.PathLike) -> dict[str, Any]:
    """The `assets.extra/overfeat_export.json` of an exported version directory."""
    return json.loads((Path(version_dir) / METADATA_DIR / METADATA_FILE).read_text())

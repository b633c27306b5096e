"""Export an OverFeat model as a TF Serving SavedModel (SPEC §5), everything in TF ops.

    encoded images tf.string [B]  (JPEG / PNG / GIF / BMP, any sizes, mixed in one batch)
      -> tf.map_fn over the batch, one image at a time:
           header checks (empty, unknown format, zero size, over `max_pixels`), then decode
           -> pyramid (scales x flips) -> OverFeat at the fine/coarse stride
           -> top-k classes per level, every window's box decoded, mapped to the original
              image, normalized yxyx                                 `detection.detect_tensor`
           -> greedy merge (paper §4.3), the best `max_detections` merged boxes
           -> top-5 of the multi-scale classification
      -> outputs padded to fixed sizes and stacked: [B, N, 4], [B, N], [B, 5], ...

Signatures (all inputs are raw images, RGB 0..255 after decoding; no Python op anywhere):

- `serving_default`: `images` tf.string `[B]` (encoded) -> detection + top-5 (below).
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
more than `max_pixels` pixels, which is checked from the header before any pixel is decoded)
fails the request with `InvalidArgumentError` and a message naming the problem; the model
stays loaded and the next request works. Images run one after another (`parallel_iterations=1`)
so one request holds at most one decoded image and its pyramid in memory.

The export options and class names are stored twice: as the `metadata` signature and as the
file `<version>/assets.extra/overfeat_export.json` (TF Serving's directory for extra files,
which it does not load), so a client can read what it is talking to without running a graph.

Writing: `export_model` writes into a hidden temporary directory inside `export_dir` and
renames it to `export_dir/<version>` (TF Serving only picks up numeric directories, and the
rename is atomic), so a server never sees half a model; on failure nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

import overfeat_tf
from overfeat_tf import image_io
from overfeat_tf.config import ModelConfig
from overfeat_tf.detection import DetectionOptions, detect_tensor
from overfeat_tf.features import feature_model, min_input_size, resize_short_side, resolve_layer
from overfeat_tf.inference import classify_tensor
from overfeat_tf.merge import jit_compile_default
from overfeat_tf.pyramid import default_scales

SIGNATURES = ("serving_default", "detect_images", "classify", "features", "metadata")
TOP_CLASSES = 5
METADATA_DIR = "assets.extra"
METADATA_FILE = "overfeat_export.json"
FORMAT = "overfeat_tf.serving/1"
_TEMP_PREFIX = ".tmp-overfeat-export-"


@dataclasses.dataclass(frozen=True)
class ExportOptions(DetectionOptions):
    """What the exported signatures do, fixed at export time: the `DetectionOptions` of the
    detection signatures (scales None = the net's defaults, stored resolved in the metadata;
    `combine` "merge", the paper's greedy merge, unless set), and:

    Attributes:
        max_pixels: bound on `height * width` of an input image (checked before decoding).
        feature_layer: the `features` signature's layer: a name ("fc7", "pool5", ...) or
            OverFeat's layer number (`features.layer_names`).
        feature_size: short side (px) images are resized to for `features`; None = the
            net's crop size; 0 = keep the original size.
    """

    max_pixels: int = image_io.DEFAULT_MAX_PIXELS
    feature_layer: str | int = "fc7"
    feature_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _positive_int(self.max_pixels):
            raise ValueError(f"max_pixels must be a positive int, got {self.max_pixels!r}.")
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

    def detection_options(self) -> DetectionOptions:
        """The `DetectionOptions` of the detection signatures."""
        return DetectionOptions(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(DetectionOptions)}
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (scales as lists; None kept)."""
        out = dataclasses.asdict(self)
        if self.scales is not None:
            out["scales"] = [list(s) if isinstance(s, tuple) else s for s in self.scales]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExportOptions:
        """Inverse of `to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown export options {unknown}; expected some of {sorted(names)}.")
        values = dict(values)
        if values.get("scales") is not None:
            values["scales"] = tuple(
                tuple(s) if isinstance(s, list) else s for s in values["scales"]
            )
        return cls(**values)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# --- model facts ---------------------------------------------------------------------------


def _check_model(model: Any) -> ModelConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig) or not hasattr(model, "spatial_model"):
        raise ValueError(
            f"Expected an overfeat_tf OverFeat model, got {type(model).__name__}; load it with "
            "`import overfeat_tf; keras.models.load_model(path)`."
        )
    return config


def class_names(model: keras.Model) -> list[str]:
    """The model's class names, or "class_0", "class_1", ... when it has none."""
    names = getattr(model, "class_names", None)
    if names:
        return [str(n) for n in names]
    return [f"class_{i}" for i in range(model.num_classes)]


def feature_target(model: keras.Model, options: ExportOptions) -> tuple[str, int]:
    """(layer name, short side in px) of the `features` signature; ValueError if unusable."""
    config = _check_model(model)
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
    """What a client needs to know about an export: options (scales resolved), classes, net."""
    config = _check_model(model)
    layer, size = feature_target(model, options)
    resolved = options.replace(
        scales=options.scales or default_scales(config), feature_layer=layer, feature_size=size
    )
    return {
        "format": FORMAT,
        "overfeat_tf_version": overfeat_tf.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "model": {
            "name": model.name,
            "architecture": config.name,
            "num_classes": model.num_classes,
            "background": bool(getattr(model, "background", False)),
            "regressor": getattr(model, "regressor", None),
            "crop_size": config.crop_size,
            "fine_stride": config.fine_stride,
            "coarse_stride": config.coarse_stride,
        },
        "class_names": class_names(model),
        "options": resolved.to_dict(),
        "signatures": list(SIGNATURES),
        "box_format": "[ymin, xmin, ymax, xmax] normalized to the original image",
        "input": "RGB; images of more than max_pixels pixels are rejected",
    }


# --- one image, in TF ops -------------------------------------------------------------------


def top_classes(
    scores: tf.Tensor, names: tf.Tensor, k: int = TOP_CLASSES
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Top-k of class scores `[C]` -> ids `[k]` int32, scores `[k]`, names `[k]`.

    With C < k the last entries are id -1, score 0, name "".
    """
    num_classes = int(scores.shape[-1])
    found = min(k, num_classes)
    values, ids = tf.math.top_k(scores, k=found)
    pad = k - found
    ids = tf.pad(tf.cast(ids, tf.int32), [[0, pad]], constant_values=-1)
    values = tf.pad(values, [[0, pad]])
    top_names = tf.where(ids >= 0, tf.gather(names, tf.maximum(ids, 0)), "")
    return ids, values, top_names


def detect_one(
    model: keras.Model, image: tf.Tensor, options: DetectionOptions, names: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Detection + top-5 of one image `[H, W, 3]` (any dtype, 0..255) as padded tensors."""
    out = detect_tensor(model, tf.cast(image, tf.float32), options)
    n = options.max_detections
    valid = tf.range(n) < out["num_detections"]
    classes, scores, _ = top_classes(out["class_scores"], names)
    return {
        "detection_boxes": out["detection_boxes"],
        "detection_scores": out["detection_scores"],
        "detection_classes": out["detection_classes"],
        "detection_class_names": tf.where(valid, tf.gather(names, out["detection_classes"]), ""),
        "num_detections": out["num_detections"],
        "classes": classes,
        "scores": scores,
    }


def detection_spec(max_detections: int) -> dict[str, tf.TensorSpec]:
    """`fn_output_signature` of `detect_one` (one image)."""
    n = max_detections
    return {
        "detection_boxes": tf.TensorSpec([n, 4], tf.float32),
        "detection_scores": tf.TensorSpec([n], tf.float32),
        "detection_classes": tf.TensorSpec([n], tf.int32),
        "detection_class_names": tf.TensorSpec([n], tf.string),
        "num_detections": tf.TensorSpec([], tf.int32),
        "classes": tf.TensorSpec([TOP_CLASSES], tf.int32),
        "scores": tf.TensorSpec([TOP_CLASSES], tf.float32),
    }


# --- batches ---------------------------------------------------------------------------------


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


def build_export(
    model: keras.Model, options: ExportOptions | None = None
) -> keras.export.ExportArchive:
    """A Keras `ExportArchive` with the signatures of the module docstring (not written yet).

    Args:
        model: an `OverFeat` model (a regressor gives real boxes; without one every window
            is its own box).
        options: `ExportOptions` (defaults if None).

    Raises:
        ValueError: not an OverFeat model, or a feature layer / size the net cannot give.
    """
    options = options or ExportOptions()
    config = _check_model(model)
    layer, feature_side = feature_target(model, options)
    metadata = json.dumps(export_metadata(model, options), sort_keys=True)
    detection = options.detection_options()
    max_pixels = options.max_pixels
    names = class_names(model)
    extractor = feature_model(model, layer, "coarse")
    channels = int(extractor.output.shape[-1])
    need = min_input_size(config, layer, "coarse")
    spec = detection_spec(options.max_detections)

    def names_tensor() -> tf.Tensor:
        return tf.constant(names, tf.string)

    def serving_default(images: tf.Tensor) -> dict[str, tf.Tensor]:
        table = names_tensor()
        return _map_images(
            lambda c: detect_one(model, image_io.decode_image(c, max_pixels), detection, table),
            images,
            spec,
        )

    def detect_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        table = names_tensor()
        return _map_images(
            lambda im: detect_one(model, image_io.check_pixels(im, max_pixels), detection, table),
            images,
            spec,
        )

    def classify(images: tf.Tensor) -> dict[str, tf.Tensor]:
        table = names_tensor()

        def one(contents: tf.Tensor) -> tuple[tf.Tensor, ...]:
            image = image_io.decode_image(contents, max_pixels)
            return top_classes(
                classify_tensor(model, image, detection.scales, detection.flips, detection.stride),
                table,
            )

        classes, scores, top_names = _map_images(
            one,
            images,
            (
                tf.TensorSpec([TOP_CLASSES], tf.int32),
                tf.TensorSpec([TOP_CLASSES], tf.float32),
                tf.TensorSpec([TOP_CLASSES], tf.string),
            ),
        )
        return {"classes": classes, "scores": scores, "class_names": top_names}

    def extract(contents: tf.Tensor) -> tf.Tensor:
        image = resize_short_side(image_io.decode_image(contents, max_pixels), feature_side)
        side = tf.reduce_min(tf.shape(image)[:2])
        image = image_io.after(
            image,
            tf.debugging.Assert(
                side >= need,
                [
                    f"Image too small for feature layer {layer}: its short side must be at "
                    f"least {need} px, got",
                    side,
                ],
            ),
        )
        return tf.cast(extractor(image[tf.newaxis], training=False)[0], tf.float32)

    def features(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return _feature_batch(extract, images, channels)

    def metadata_fn(request: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"metadata": tf.fill(tf.shape(request), tf.constant(metadata))}

    strings = [tf.TensorSpec([None], tf.string, name="images")]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_default, strings)
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
    (atomic), so TF Serving never sees a partial version. On any failure the temporary
    directory (and `export_dir`, if this call created it and it is empty) is removed.

    Args:
        model: an `OverFeat` model.
        export_dir: the model's base directory (TF Serving's `--model_base_path`).
        version: a positive int; None = 1 + the largest existing numeric version.
        options: `ExportOptions` (defaults if None).

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
    export_dir.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=export_dir))
    try:
        # Every function traced without XLA: TF Serving may lack the XLA JIT.
        with jit_compile_default(False):
            archive = build_export(model, options)
            archive.write_out(str(temporary), verbose=False)
        _write_metadata(temporary, metadata)
        os.chmod(temporary, 0o755)  # mkdtemp makes it 0700; a server may run as another user
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
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


def load_keras_model(path: str | os.PathLike) -> keras.Model:
    """`keras.models.load_model` of an OverFeat `.keras` file, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file {path} not found.")
    try:
        model = keras.models.load_model(path)
    except Exception as error:  # a bad zip, a non-Keras file, an unknown class, ...
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"Could not load {path} as a Keras model: {first}") from error
    _check_model(model)
    return model

"""The OverFeat network as a Keras functional model: trunk -> dense offset pooling -> heads.

    image [B, H, W, 3] raw RGB 0..255
      -> normalize ((x - 118.380948) / 61.896913, inside the model)
      -> trunk conv1..conv5 (fast, tiny) / conv1..conv6 (accurate), pools between them
      -> unpooled last map [B, Hu, Wu, 1024]
      -> DenseOffsetPooling (k*k offsets into the batch: fine; offset 0: coarse)
      -> classifier fc6 (KxK conv) -> fc7 (1x1) -> fc8 (1x1)     (dropout 0.5 after fc6, fc7)
         [with `adaptation=(w1, ..., wn)`: fc7 -> adapt1 .. adaptn (1x1, ReLU, dropout) -> fc8]
      -> [regressor reg_fc1 (KxK) -> reg_fc2 (1x1) -> reg_out (1x1)]   (paper §4.2)
      -> OffsetInterleave -> class_logits [B, H', W', C] (and box_deltas [B, H', W', 4|4C])

`OverFeat` is the spatial model (any image size). `OverFeat.crop_model()` is the training
model (a fixed crop -> logits `[B, C]`); both call the same layer objects, so they share
weights. Both are built from `topology.modules(config)`, the release's module sequence:
the layers holding weights are named after the paper (`conv1`..`conv6`, `fc6`..`fc8`) and
compute the convolution without activation; each is followed by its own ReLU layer
(`conv1_relu`, ..., `fc7_relu`), so the outputs before and after the ReLU (the modules
`convN_linear` / `convN` of `features`) are both tensors of the model's graph.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from overfeat_tf.architecture import topology
from overfeat_tf.architecture.config import (
    PIXEL_MEAN,
    PIXEL_STD,
    ModelConfig,
    check_stride,
    model_config,
)
from overfeat_tf.architecture.topology import WEIGHTED, Module
from overfeat_tf.models.layers import DenseOffsetPooling, MatmulConv2D, OffsetInterleave

REGRESSORS = (None, "class_agnostic", "class_specific")
REGRESSOR_LAYERS = ("reg_fc1", "reg_fc2", "reg_out")  # the box regressor head, in order
ADAPTATION_PREFIX = "adapt"  # adaptation layers adapt1, adapt2, ... between fc7 and fc8
# Paper §3.1: weights initialised from N(0, 1e-2).
PAPER_INITIALIZER = {"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.01}}


def _same_padding(pad: Module, conv: Module) -> bool:
    """Whether a pad module and the conv after it are Keras' "same" (3x3 pad 1 stride 1)."""
    return conv.stride == 1 and 2 * pad.padding == conv.kernel - 1


def adaptation_names(count: int) -> list[str]:
    """The names of `count` adaptation layers, in order: `adapt1`, `adapt2`, ..."""
    return [f"{ADAPTATION_PREFIX}{i}" for i in range(1, count + 1)]


def keras_layer_name(module: Module) -> str:
    """The Keras layer that computes a module (`topology.modules`): conv / fc modules are the
    paper-named layers holding the weights (`conv3`, `fc6`), applied without activation;
    their ReLU modules are `conv3_relu`, `fc6_relu`; the others are named as the module."""
    if module.kind in WEIGHTED:
        return module.layer
    if module.kind == "relu":
        return f"{module.layer}_relu"
    return module.name


def _trunk_layers(config: ModelConfig) -> list[str]:
    """The Keras layers the trunk applies, in order: image -> unpooled last conv map (a zero
    padding that a "same" convolution does itself has no layer)."""
    trunk, _, _ = topology.split(config)
    return [
        keras_layer_name(m)
        for m, after in zip(trunk, [*trunk[1:], None], strict=True)
        if not (m.kind == "pad" and after is not None and _same_padding(m, after))
    ]


def _classifier_layers(config: ModelConfig, adaptation: int = 0) -> list[str]:
    """The Keras layers of the classifier, in order: pooled map -> class logits (dropout
    after every ReLU; the adaptation layers just before the last fc layer)."""
    _, _, head = topology.split(config)
    names: list[str] = []
    for m in head:
        if m is head[-1]:
            for name in adaptation_names(adaptation):
                names += [name, f"{name}_relu", f"{name}_dropout"]
        names.append(keras_layer_name(m))
        if m.kind == "relu":
            names.append(f"{m.layer}_dropout")
    return names


def _make_layers(
    config: ModelConfig,
    regressor: str | None,
    background: bool,
    initializer: str | dict,
    dtype: Any,
    adaptation: tuple[int, ...] = (),
) -> dict[str, keras.layers.Layer]:
    """Create every layer of the trunk and the heads once, keyed by its Keras name (the
    pools at the last conv map excepted: `_spatial_outputs` and `crop_model` make those).

    Every convolution (adaptation and regressor layers included) computes without
    activation and is followed by its own ReLU layer `<name>_relu`. Keras orders a
    functional model's layers by their depth in the graph, and a `.keras` file stores
    weights in that order per layer class; one uniform rule keeps the order of the
    `MatmulConv2D` layers (fc6, fc7, adaptN, reg_*, fc8) that of files saved by models
    whose layers applied the ReLU themselves, so those files still load."""
    common = {"kernel_initializer": initializer, "dtype": dtype}
    seq = topology.modules(config)
    last_fc = [m for m in seq if m.kind in WEIGHTED][-1]  # fc8: + the background class
    layers: dict[str, keras.layers.Layer] = {}
    for n, m in enumerate(seq):
        name = keras_layer_name(m)
        if m.kind == "normalize":
            layers[name] = keras.layers.Rescaling(
                1.0 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, name=name, dtype=dtype
            )
        elif m.kind == "pad" and not _same_padding(m, seq[n + 1]):
            layers[name] = keras.layers.ZeroPadding2D(m.padding, name=name)
        elif m.kind in WEIGHTED:
            same = seq[n - 1].kind == "pad" and _same_padding(seq[n - 1], m)
            filters = m.filters + int(background) if m is last_fc else m.filters
            conv = MatmulConv2D if m.kind == "fc" else keras.layers.Conv2D
            layers[name] = conv(
                filters,
                m.kernel,
                strides=m.stride,
                padding="same" if same else "valid",
                name=name,
                **common,
            )
        elif m.kind == "relu":
            layers[name] = keras.layers.ReLU(name=name, dtype=dtype)
            if m.layer.startswith("fc"):
                drop = f"{m.layer}_dropout"
                layers[drop] = keras.layers.Dropout(config.dropout, name=drop)
        elif m.kind == "pool" and not m.dense:
            layers[name] = keras.layers.MaxPooling2D(m.pool, name=name, dtype=dtype)
    for name, width in zip(adaptation_names(len(adaptation)), adaptation, strict=True):
        layers[name] = MatmulConv2D(width, 1, name=name, **common)
        layers[f"{name}_relu"] = keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)
        layers[f"{name}_dropout"] = keras.layers.Dropout(config.dropout, name=f"{name}_dropout")
    if regressor is not None:
        r1, r2 = config.regressor_filters
        outputs = 4 * config.num_classes if regressor == "class_specific" else 4
        window = config.fc6_window
        for name, width, kernel in (("reg_fc1", r1, window), ("reg_fc2", r2, 1)):
            layers[name] = MatmulConv2D(width, kernel, name=name, **common)
            layers[f"{name}_relu"] = keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)
        layers["reg_out"] = MatmulConv2D(outputs, 1, name="reg_out", **common)
    return layers


def _chain(get: Callable[[str], keras.layers.Layer], names: list[str], x: Any) -> Any:
    for name in names:
        x = get(name)(x)
    return x


def apply_trunk(get: Callable[[str], keras.layers.Layer], image: Any, config: ModelConfig) -> Any:
    """image [B, H, W, 3] raw pixels -> unpooled last conv map [B, Hu, Wu, C5]."""
    return _chain(get, _trunk_layers(config), image)


def _classifier(
    get: Callable[[str], keras.layers.Layer], pooled: Any, config: ModelConfig, adaptation: int
) -> Any:
    return _chain(get, _classifier_layers(config, adaptation), pooled)


def _regressor(get: Callable[[str], keras.layers.Layer], pooled: Any) -> Any:
    return _chain(get, ["reg_fc1", "reg_fc1_relu", "reg_fc2", "reg_fc2_relu", "reg_out"], pooled)


def _spatial_outputs(
    get: Callable[[str], keras.layers.Layer],
    image: Any,
    config: ModelConfig,
    stride: str,
    regressor: str | None,
    adaptation: int = 0,
) -> dict[str, Any]:
    """The spatial graph: image -> {"class_logits": [B,H',W',C], "box_deltas": [...]}."""
    unpooled = apply_trunk(get, image, config)
    k = config.pool_size
    pooled = DenseOffsetPooling(k, stride, window=config.fc6_window, name=f"offset_pool_{stride}")(
        unpooled
    )
    interleave = OffsetInterleave(k, stride, name=f"interleave_{stride}")
    logits = interleave([_classifier(get, pooled, config, adaptation), unpooled])
    outputs = {
        "class_logits": keras.layers.Activation("linear", dtype="float32", name="class_logits")(
            logits
        )
    }
    if regressor is not None:
        deltas = OffsetInterleave(k, stride, name=f"box_interleave_{stride}")(
            [_regressor(get, pooled), unpooled]
        )
        outputs["box_deltas"] = keras.layers.Activation(
            "linear", dtype="float32", name="box_deltas"
        )(deltas)
    return outputs


@keras.saving.register_keras_serializable(package="overfeat_tf")
class OverFeat(keras.Model):
    """The OverFeat network, applied densely to images of any size.

    Paper: Sermanet et al., "OverFeat: Integrated Recognition, Localization and Detection
    using Convolutional Networks", ICLR 2014 (Tables 1 and 3; §3.3 offset pooling; §4.2
    regressor).

    Input: `image` `[B, H, W, 3]`, RGB 0..255 (normalization happens inside the model).
    Output: a dict with `class_logits` `[B, H', W', C]` (`C + 1` with `background=True`, the
    background logit last) and, with a regressor, `box_deltas`
    `[B, H', W', 4]` (class-agnostic) or `[B, H', W', 4*C]` (class-specific, class c's box
    at `[..., 4c:4c+4]`), each box in the frame of its cell's window (see `boxes.py`).
    With Hu the side of the unpooled last conv map, k the last pool and K the fc6 window:
    fine: `H' = Hu - k*K + 1` (stride `config.fine_stride` px); coarse: `H' = Hu//k - K + 1`
    (stride `config.coarse_stride` px). At the training crop size both are 1.

    Args:
        architecture: "fast", "accurate", "tiny", a `ModelConfig` or its dict form.
        num_classes: fc8 width; defaults to `len(class_names)` or the architecture's.
        class_names: optional names of the classes, saved with the model.
        stride: "fine" (all k*k pooling offsets) or "coarse" (offset 0).
        regressor: None, "class_agnostic" or "class_specific" box regressor head.
        background: add a background class to fc8 (the detection model, paper §5): its
            logit comes last, after the `num_classes` object classes.
        kernel_initializer: Keras initializer for every conv; the paper's N(0, 1e-2) by
            default.
        dtype: Keras dtype policy for every layer, e.g. "mixed_bfloat16" (outputs stay
            float32).
        adaptation: widths of extra classifier layers between fc7 and fc8 (1x1 convs with
            ReLU and the model's dropout, named `adapt1`, `adapt2`, ...): Oquab et al.'s
            adaptation layers for transfer (CVPR 2014: fc7 -> FCa (2048) -> FCb = fc8 is
            `adaptation=(2048,)`). Empty (the default): the paper's classifier.
    """

    def __init__(
        self,
        architecture: str | ModelConfig | dict = "fast",
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        stride: str = "fine",
        regressor: str | None = None,
        background: bool = False,
        kernel_initializer: str | dict = PAPER_INITIALIZER,
        dtype: Any = None,
        adaptation: tuple[int, ...] | list[int] = (),
        **kwargs: Any,
    ) -> None:
        config = model_config(architecture)
        adaptation = tuple(int(w) for w in adaptation)
        if any(w < 1 for w in adaptation):
            raise ValueError(f"adaptation layer widths must be >= 1, got {list(adaptation)}.")
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if num_classes is not None and num_classes != len(class_names):
                raise ValueError(
                    f"num_classes={num_classes} but {len(class_names)} class_names were given; "
                    "pass one name per class."
                )
            num_classes = len(class_names)
        if num_classes is not None:
            config = config.replace(num_classes=int(num_classes))
        check_stride(stride)
        if regressor not in REGRESSORS:
            raise ValueError(f"regressor must be one of {REGRESSORS}, got {regressor!r}.")
        layers = _make_layers(
            config, regressor, bool(background), kernel_initializer, dtype, adaptation
        )
        image = keras.Input(shape=(None, None, 3), name="image")
        outputs = _spatial_outputs(
            layers.__getitem__, image, config, stride, regressor, len(adaptation)
        )
        kwargs.setdefault("name", f"overfeat_{config.name}")
        super().__init__(inputs=image, outputs=outputs, **kwargs)
        self.config = config
        self.class_names = class_names
        self.stride = stride
        self.regressor = regressor
        self.background = bool(background)
        self.kernel_initializer = kernel_initializer
        self.layer_dtype = dtype
        self.adaptation = adaptation

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "architecture": self.config.to_dict(),
            "num_classes": self.config.num_classes,
            "class_names": self.class_names,
            "stride": self.stride,
            "regressor": self.regressor,
            "background": self.background,
            "kernel_initializer": self.kernel_initializer,
            "dtype": self.layer_dtype,
            "adaptation": list(self.adaptation),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OverFeat:
        return cls(**config)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def spatial_model(self, stride: str | None = None) -> keras.Model:
        """This network at another stride ("fine"/"coarse"), sharing every weight."""
        stride = stride or self.stride
        check_stride(stride)
        if stride == self.stride:
            return self
        image = keras.Input(shape=(None, None, 3), name="image")
        outputs = _spatial_outputs(
            self.get_layer, image, self.config, stride, self.regressor, len(self.adaptation)
        )
        return keras.Model(image, outputs, name=f"{self.name}_{stride}")

    def crop_model(self, crop_size: int | None = None) -> keras.Model:
        """The training model: `[B, S, S, 3]` crops -> class logits `[B, C]`.

        S defaults to the architecture's training crop (231 fast, 221 accurate). Shares
        every weight with this model; the last pool is the plain (offset 0) pool.
        """
        size = crop_size or self.config.crop_size
        if self.config.output_size(size, "coarse") != 1:
            raise ValueError(
                f"crop_size {size} does not give a 1x1 output for {self.config.name!r}; "
                f"use {self.config.crop_size}."
            )
        image = keras.Input(shape=(size, size, 3), name="image")
        unpooled = apply_trunk(self.get_layer, image, self.config)
        k = self.config.pool_size
        last_pool = topology.split(self.config)[1].name
        pooled = keras.layers.MaxPooling2D(k, name=last_pool)(unpooled)
        width = self.num_classes + int(self.background)
        classifier = _classifier(self.get_layer, pooled, self.config, len(self.adaptation))
        logits = keras.layers.Reshape((width,))(classifier)
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
        return keras.Model(image, logits, name=f"{self.name}_crop")


def backbone_of(model: Any) -> OverFeat:
    """The `OverFeat` network of a model: itself, or a detector's `backbone`.

    Raises:
        ValueError: neither (e.g. a plain Keras model), with what to load instead.
    """
    net = getattr(model, "backbone", model)
    if not isinstance(net, OverFeat):
        raise ValueError(
            f"Expected an overfeat_tf OverFeat model or OverFeatDetector, got "
            f"{type(model).__name__}; load one with `keras.models.load_model(path)` after "
            "`import overfeat_tf`."
        )
    return net


def load_model(path: str | os.PathLike) -> keras.Model:
    """`keras.models.load_model` of an overfeat_tf `.keras` file (an `OverFeat` network or an
    `OverFeatDetector`; safe_mode on), with errors that say what is wrong.

    A `.keras` file is a zip archive: one that is empty, not a zip, or starts like a zip but
    has no end (its table of contents is at the end: a truncated copy), or whose contents
    fail their checksums, is reported as "corrupt or truncated" (not as Keras' misleading
    "File not found").

    Raises:
        FileNotFoundError: no such file.
        ValueError: a corrupt or truncated file, not a Keras model file, or a Keras model
            that is not overfeat_tf's.
    """
    import zipfile
    import zlib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file {path} not found.")

    def corrupt(what: str) -> ValueError:
        return ValueError(
            f"Model file {path} is corrupt or truncated ({what}): copy it again; if it is a "
            "training run's model.keras, delete it and rerun the training command, which "
            "resumes from the run's last checkpoint and saves the model again."
        )

    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(4)
    if size == 0:
        raise corrupt("the file is empty")
    if (head == b"PK\x03\x04" or path.suffix == ".keras") and not zipfile.is_zipfile(path):
        zip_start = head == b"PK\x03\x04"
        raise corrupt(f"{size} bytes, {'a zip without its end' if zip_start else 'not a zip'}")
    try:
        model = keras.models.load_model(path)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # damaged contents
        raise corrupt(" ".join(str(error).split()) or type(error).__name__) from error
    except Exception as error:  # a non-Keras file, an unknown class, ...
        text = str(error).strip()
        first = text.splitlines()[0] if text else type(error).__name__
        raise ValueError(f"Could not load {path} as a Keras model: {first}") from error
    backbone_of(model)
    return model

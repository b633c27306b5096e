"""Feature extraction at any layer of an OverFeat model (like OverFeat's `-L n` and `-f`).

Layers are named after the paper, or numbered like the modules of the released OverFeat
(`overfeat -L n`, `overfeat.get_output(n)`). The release's network is one Torch-style
sequence: module 0 is the input normalization, then every zero padding, convolution, ReLU
(`nn.Threshold`) and max-pool is a module of its own, and fc6..fc8 are convolutions too
(6x6 / 5x5, then 1x1). There are no dropout modules at test time. A convolution's number is
its output *before* the ReLU (`convN_linear`, `fcN_linear`: the outputs of the model's
Keras layers `convN`, `fcN`); the next number is the ReLU's output (`convN`, `fcN`: the
layers `convN_relu`, `fcN_relu`). The sequence is `topology.modules`. `tiny` has the fast
net's topology, so it has the fast net's numbers:

    n   fast / tiny   module           accurate      module
    0   normalize     normalization    normalize     normalization
    1   conv1_linear  conv 11x11/4     conv1_linear  conv 7x7/2
    2   conv1         ReLU             conv1         ReLU
    3   pool1         max-pool 2x2/2   pool1         max-pool 3x3/3
    4   conv2_linear  conv 5x5         conv2_linear  conv 7x7
    5   conv2         ReLU             conv2         ReLU
    6   pool2         max-pool 2x2/2   pool2         max-pool 2x2/2
    7   pad3          zero pad 1       pad3          zero pad 1
    8   conv3_linear  conv 3x3         conv3_linear  conv 3x3
    9   conv3         ReLU             conv3         ReLU
    10  pad4          zero pad 1       pad4          zero pad 1
    11  conv4_linear  conv 3x3         conv4_linear  conv 3x3
    12  conv4         ReLU             conv4         ReLU
    13  pad5          zero pad 1       pad5          zero pad 1
    14  conv5_linear  conv 3x3         conv5_linear  conv 3x3
    15  conv5         ReLU             conv5         ReLU
    16  pool5         max-pool 2x2/2   pad6          zero pad 1
    17  fc6_linear    conv 6x6 (fc6)   conv6_linear  conv 3x3
    18  fc6           ReLU             conv6         ReLU
    19  fc7_linear    conv 1x1 (fc7)   pool6         max-pool 3x3/3
    20  fc7           ReLU             fc6_linear    conv 5x5 (fc6)
    21  fc8           conv 1x1 (fc8)   fc6           ReLU
    22                                 fc7_linear    conv 1x1 (fc7)
    23                                 fc7           ReLU
    24                                 fc8           conv 1x1 (fc8)

`normalize` is `(x - 118.380948) / 61.896913` of the raw RGB pixels, `fc8` the class scores
(logits, before the softmax). `layer_names(config)` gives this list for any configuration
(`layer_names(c)[n]` is `-L n`), `layer_number` the inverse. OverFeat's `overfeat -f`
prints layer 19 (fast) / 22 (accurate): `fc7_linear`, fc7 before its ReLU, 4096 features
per window; `FEATURE_LAYER` is that name and the command line's default layer.

Dense features are the spatial map `[H', W', C]` of the layer. For the last pool and the
classifier layers (fc6..fc8) `stride="coarse"` pools at offset 0 only, as OverFeat's own
feature extractor does (one fc window every 32 px fast / 36 px accurate), and
`stride="fine"` pools at every offset (paper §3.3: every 16 / 12 px, the detection map).
Pooled features are the spatial max of the dense map: one vector `[C]` per image, the same
reduction the paper uses for classification (§3.3, spatial max per class).

Command line (one `.npy` per image, named after the image file: `cat.jpg` -> `cat.jpg.npy`):

    python -m overfeat_tf.features --model fast-imagenet.keras [--layer fc7_linear] \\
        --images photos/ --output features/ [--pooled] [--size 231] [--stride coarse]

`--layer` takes a name or a number (`--layer 19` on the fast net is `fc7_linear`); the
default is `FEATURE_LAYER`, the layer `overfeat -f` prints.

Images (JPEG, PNG, GIF, BMP; any size, grey, palette, alpha, CMYK, 16-bit) are read as RGB by
`image_io.load_image` and resized so that their short side is `--size` pixels, keeping the
aspect ratio (`resizing.resize_short_side`: bilinear, antialiased when shrinking); the
default is the net's crop size (231 fast, 221 accurate), so the classifier layers see at
least one window. `--size 0` keeps the original size (OverFeat's `-f`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from overfeat_tf.architecture import topology
from overfeat_tf.architecture.config import ModelConfig, check_stride, model_config
from overfeat_tf.models.backbone import adaptation_names, keras_layer_name
from overfeat_tf.models.layers import DenseOffsetPooling, OffsetInterleave

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
INPUT_LAYER = "normalize"
"""Layer 0: the normalized input `(x - 118.380948) / 61.896913` (the model's first layer)."""
FEATURE_LAYER = "fc7_linear"
"""The layer OverFeat's `overfeat -f` prints: fc7 before its ReLU (19 fast / tiny, 22 accurate)."""


def layer_names(config: str | ModelConfig) -> list[str]:
    """The feature layers in the release's module order: `layer_names(c)[n]` is `-L n`.

    Module 0 is the input normalization; then per conv layer its zero padding (3x3 layers),
    the convolution (`convN_linear`, before the ReLU), the ReLU (`convN`) and its max-pool if
    it pools (`poolN`); then fc6, fc7 (each before / after its ReLU) and fc8
    (`topology.modules`).
    """
    return topology.module_names(config)


def resolve_layer(config: str | ModelConfig, layer: str | int) -> str:
    """A layer's name from its name or its OverFeat number (`-L n`, see the module doc)."""
    names = layer_names(config)
    if isinstance(layer, str) and layer.strip().isdigit():
        layer = int(layer)
    if isinstance(layer, int | np.integer) and not isinstance(layer, bool):
        if 0 <= layer < len(names):
            return names[layer]
        raise ValueError(
            f"Layer number {layer} is out of range: the {model_config(config).name!r} net has "
            f"layers 0..{len(names) - 1} ({', '.join(f'{i}={n}' for i, n in enumerate(names))})."
        )
    if layer in names:
        return layer
    raise ValueError(
        f"Unknown layer {layer!r}: expected one of {names} or a number 0..{len(names) - 1}."
    )


def layer_number(config: str | ModelConfig, layer: str | int) -> int:
    """OverFeat's number (`-L n`) of a layer given by name or number; ValueError if unknown."""
    return layer_names(config).index(resolve_layer(config, layer))


def feature_size(
    config: str | ModelConfig, layer: str | int, side: int, stride: str = "coarse"
) -> int:
    """Side of a layer's feature map for an input side in pixels (0 if the input is too small)."""
    config = model_config(config)
    target = resolve_layer(config, layer)
    check_stride(stride)
    side = max(side, 0)
    fine = False  # after the dense pool at the fine stride: sides count fine-map cells
    for m in topology.modules(config):
        if m.kind == "pad":
            side += 2 * m.padding
        elif m.kind == "conv":
            side = (side - m.kernel) // m.stride + 1 if side >= m.kernel else 0
        elif m.kind == "pool":
            fine = m.dense and stride == "fine"
            side = side - m.pool + 1 if fine else side // m.pool
        elif m.kind == "fc":
            side -= (config.pool_size if fine else 1) * (m.kernel - 1)
        if side < 1:
            return 0
        if m.name == target:
            return side
    raise ValueError(f"Layer {target!r} not found.")  # unreachable: resolve_layer checked it


def min_input_size(config: str | ModelConfig, layer: str | int, stride: str = "coarse") -> int:
    """The smallest input side (pixels) that gives a layer a non-empty feature map."""
    side = 1
    while feature_size(config, layer, side, stride) < 1:
        side += 1
    return side


def _model_config(model: Any) -> ModelConfig:
    """The `ModelConfig` of an `OverFeat` model; ValueError for anything else."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError(
            f"Expected an OverFeat model (overfeat_tf.OverFeat), got {type(model).__name__}."
        )
    return config


def feature_model(model: keras.Model, layer: str | int, stride: str = "coarse") -> keras.Model:
    """A Keras model: raw RGB images `[B, H, W, 3]` (0..255) -> the layer's map `[B, H', W', C]`.

    Args:
        model: an `OverFeat` model (e.g. converted from the released weights); the feature
            model shares its weights.
        layer: a name from `layer_names(model.config)` ("normalize", "conv5", "pool5",
            "fc7_linear", "fc7", ...) or OverFeat's layer number (`-L n`, counted from the
            input normalization = 0; see the module docstring).
        stride: for the last pool and fc6..fc8: "coarse" (offset 0, OverFeat's own
            extractor) or "fine" (every offset, interleaved: paper §3.3). Earlier layers do
            not depend on it.

    `H', W'` for an input side are given by `feature_size`. Dropout is not applied.
    """
    config = _model_config(model)
    target = resolve_layer(config, layer)
    check_stride(stride)
    existing = {sub.name for sub in model.layers}
    adapted = adaptation_names(len(getattr(model, "adaptation", ())))
    last_fc = topology.weighted(config)[-1].name
    image = keras.Input(shape=(None, None, 3), name="image")
    x, unpooled = image, None
    for m in topology.modules(config):
        name = keras_layer_name(m)
        if m.kind == "pad" and name not in existing:  # a "same" conv pads by itself
            if m.name == target:
                x = keras.layers.ZeroPadding2D(m.padding, name=name)(x)
                break
            continue
        if m.dense:
            unpooled = x
            if stride == "coarse":
                x = keras.layers.MaxPooling2D(m.pool, name=m.name)(x)
            else:
                window = None if m.name == target else config.fc6_window
                x = DenseOffsetPooling(m.pool, "fine", window=window, name=f"{m.name}_offsets")(x)
        else:
            if m.name == last_fc:  # adaptation layers (not numbered) feed fc8
                for adapt in adapted:
                    x = model.get_layer(f"{adapt}_relu")(model.get_layer(adapt)(x))
            x = model.get_layer(name)(x)
        if m.name == target:
            break
    if unpooled is not None and stride == "fine":
        x = OffsetInterleave(config.pool_size, "fine", name=f"{target}_interleave")([x, unpooled])
    return keras.Model(image, x, name=f"{model.name}_{target}_{stride}")


def _as_images(images: Any) -> tuple[list[np.ndarray] | np.ndarray, str]:
    """Images as a 4-D batch ("batch"), one 3-D image ("single") or a list ("list")."""
    if isinstance(images, list | tuple):
        return [np.asarray(im, dtype=np.float32) for im in images], "list"
    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 3:
        return array[None], "single"
    if array.ndim == 4:
        return array, "batch"
    raise ValueError(
        f"images must be [B, H, W, 3], [H, W, 3] or a list of [H, W, 3]; got shape {array.shape}."
    )


def check_size(config: ModelConfig, target: str, stride: str, shape: Sequence[int]) -> None:
    h, w = int(shape[-3]), int(shape[-2])
    if int(shape[-1]) != 3:
        raise ValueError(f"Images must be RGB [..., H, W, 3]; got shape {tuple(shape)}.")
    need = min_input_size(config, target, stride)
    if min(h, w) < need:
        raise ValueError(
            f"Image of {h}x{w} pixels is too small for layer {target} of the "
            f"{config.name!r} net (stride {stride}): its sides must be at least {need} pixels."
        )


def extract_features(
    model: keras.Model,
    images: Any,
    layer: str | int,
    pooled: bool = False,
    stride: str = "coarse",
    batch_size: int = 16,
) -> np.ndarray | list[np.ndarray]:
    """Features of images at one layer, as NumPy float32.

    Args:
        model: an `OverFeat` model.
        images: raw RGB pixels 0..255: a batch `[B, H, W, 3]`, one image `[H, W, 3]`, or a
            list of images of any sizes.
        layer: a layer name or OverFeat number (see `layer_names`).
        pooled: False: the dense spatial map `[H', W', C]` per image; True: its spatial max
            `[C]` (one vector per image, whatever the image size).
        stride: "coarse" or "fine" for the last pool and fc6..fc8 (see `feature_model`).
        batch_size: images per forward pass for a 4-D batch.

    Returns:
        `[B, H', W', C]` / `[B, C]` for a batch, `[H', W', C]` / `[C]` for one image, and a
        list of those for a list.
    """
    config = _model_config(model)
    target = resolve_layer(config, layer)
    batch, kind = _as_images(images)
    for image in batch:
        check_size(config, target, stride, image.shape)
    extractor = feature_model(model, target, stride)

    def run(x: np.ndarray) -> np.ndarray:
        out = extractor(tf.convert_to_tensor(x), training=False)
        out = keras.ops.convert_to_numpy(out).astype(np.float32)
        return out.max(axis=(1, 2)) if pooled else out

    if kind == "list":
        return [run(image[None])[0] for image in batch]
    out = np.concatenate([run(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)])
    return out[0] if kind == "single" else out

"""FLOP counts of an OverFeat network from its own layer shapes (paper Tables 1, 3 and 4).

What is counted: the multiply-adds of every convolution (conv1..convN) and of the
classifier / regressor layers applied densely (fc6 a KxK convolution over the pooled last
map, fc7, fc8, reg_fc1, reg_fc2, reg_out 1x1 convolutions), times 2 for FLOPs. Biases,
ReLUs, max-pools, dropout, the input normalization and the offset interleave are not
counted (together < 0.1 % of the total). A layer's count is

    output positions x kernel_h x kernel_w x in_channels x out_channels   multiply-adds

with the spatial sizes of the "valid" / "same" layers (`ModelConfig.unpooled_size` rules:
every conv and pool floors). The classifier layers run once per output cell:

- coarse stride: the offset-0 map, `pooled - K + 1` cells per side;
- fine stride (dense offset pooling, paper §3.3): every one of the k x k pooling offsets
  has its own classifier map, and together they hold exactly the cells of the fine map,
  `Hu - k*K + 1` per side (Hu: the unpooled last conv map, K: the fc6 window). With
  `padded=True` the count is instead what `layers.DenseOffsetPooling` executes: every
  offset's map padded to the longest one (`ceil((Hu - k + 1) / k) - K + 1` cells per side
  and offset), which adds cells whenever `(Hu - k + 1) % k != 0` (never at the pyramid's
  snapped sizes of the accurate net; at every other snapped size of fast / tiny).

At the training crop the nets count (tests/test_flops.py writes the arithmetic out):
fast 231x231 = 2.801 G multiply-adds = 5.60 GFLOP, accurate 221x221 = 5.355 G = 10.71 GFLOP;
the paper's Table 4 gives 2810 M / 5369 M "connections" (0.3 % more; the paper does not say
what else it counted).

Geometry (kernels, strides, paddings, pools) comes from the network's module sequence
(`topology.modules` of its `ModelConfig`); channel widths from the Keras model's own
kernels when a model is given (so a background class, a regressor head or another
`num_classes` are counted), else from the config (classifier only).

Example:
    >>> from overfeat_tf.models import flops
    >>> flops.model_flops("fast", (231, 231))
    5602807808
    >>> flops.pyramid_flops(net, (480, 640), scales=(245, 281), flips=True)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from overfeat_tf.architecture import topology
from overfeat_tf.architecture.config import ModelConfig, check_stride, model_config
from overfeat_tf.models.backbone import REGRESSOR_LAYERS
from overfeat_tf.ops.pyramid import Scale, check_scales, default_scales, level_size


@dataclasses.dataclass(frozen=True)
class LayerCount:
    """The multiply-adds of one layer at one input size.

    Attributes:
        name: the layer's name in the model (`conv1`, ..., `fc6`, `fc7`, `fc8`, `reg_fc1`...).
        kernel: (kernel_h, kernel_w).
        in_channels, out_channels: widths of its input and output.
        output_hw: (h, w) output positions; for the classifier / regressor layers at the
            fine stride, the fine map (all k x k offsets together).
    """

    name: str
    kernel: tuple[int, int]
    in_channels: int
    out_channels: int
    output_hw: tuple[int, int]

    @property
    def positions(self) -> int:
        """Number of output positions (h * w)."""
        return self.output_hw[0] * self.output_hw[1]

    @property
    def multiply_adds(self) -> int:
        """positions x kernel_h x kernel_w x in_channels x out_channels."""
        kh, kw = self.kernel
        return self.positions * kh * kw * self.in_channels * self.out_channels

    @property
    def flops(self) -> int:
        """2 x `multiply_adds`."""
        return 2 * self.multiply_adds


def _widths(model_or_config: Any) -> tuple[ModelConfig, dict[str, tuple[int, ...]]]:
    """(config, {layer name: kernel shape [kh, kw, in, out]}) of a model, detector or config.

    From a Keras model the kernel shapes are its layers' own (regressor included); from a
    config (or a name or dict) they are the config's (`topology.weighted`), classifier only.
    """
    net = getattr(model_or_config, "backbone", model_or_config)
    if isinstance(net, str | dict | ModelConfig):
        config = model_config(net)
        return config, {m.layer: m.weight_shape for m in topology.weighted(config)}
    config = getattr(net, "config", None)
    if not isinstance(config, ModelConfig) or not hasattr(net, "get_layer"):
        raise ValueError(
            f"Expected an OverFeat model, an OverFeatDetector, a ModelConfig or an "
            f"architecture name, got {type(model_or_config).__name__}."
        )
    names = [m.layer for m in topology.weighted(config)] + list(REGRESSOR_LAYERS)
    layer_names = {layer.name for layer in net.layers}
    shapes = {
        name: tuple(int(d) for d in net.get_layer(name).kernel.shape)
        for name in names
        if name in layer_names
    }
    return config, shapes


def _check_hw(image_hw: Sequence[int]) -> tuple[int, int]:
    hw = tuple(int(v) for v in image_hw)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image_hw must be a (height, width) pair of positive ints, got {hw}.")
    return hw  # type: ignore[return-value]


def _conv_counts(
    config: ModelConfig, shapes: dict[str, tuple[int, ...]], hw: tuple[int, int]
) -> tuple[list[LayerCount], tuple[int, int]]:
    """The conv layers' counts and the unpooled last map's (h, w), walking the trunk's
    modules (`topology.split`): zero paddings, convolutions and the pools between them."""
    counts = []
    size = list(hw)
    trunk, _, _ = topology.split(config)
    for m in trunk:
        if m.kind == "pad":
            size = [s + 2 * m.padding for s in size]
        elif m.kind == "pool":
            size = [s // m.pool for s in size]
        elif m.kind == "conv":
            kh, kw, cin, cout = shapes[m.layer]
            size = [(s - k) // m.stride + 1 for s, k in zip(size, (kh, kw), strict=True)]
            if min(size) < 1:
                raise ValueError(
                    f"Image {hw[0]}x{hw[1]} is too small for the {config.name!r} net: "
                    f"{m.layer} would have no output; use at least {config.crop_size} px per "
                    "side."
                )
            counts.append(LayerCount(m.layer, (kh, kw), cin, cout, (size[0], size[1])))
    return counts, (size[0], size[1])


def _head_side(unpooled: int, k: int, window: int, stride: str, padded: bool) -> int:
    """Classifier positions along one side (all offsets together at the fine stride)."""
    if stride == "coarse":
        return unpooled // k - window + 1
    if not padded:
        return unpooled - k * window + 1
    return k * (-(-(unpooled - k + 1) // k) - window + 1)


def layer_counts(
    model_or_config: Any,
    image_hw: Sequence[int],
    stride: str = "fine",
    padded: bool = False,
) -> list[LayerCount]:
    """Per-layer multiply-adds of the network on one `image_hw` (height, width) px image.

    Args:
        model_or_config: an `OverFeat` model or `OverFeatDetector` (its own kernel shapes,
            heads included), or a `ModelConfig` / architecture name (classifier only).
        image_hw: the input's (height, width) in px (one image, one level).
        stride: "fine" (every pooling offset) or "coarse" (offset 0).
        padded: at the fine stride, count the padded per-offset maps that
            `DenseOffsetPooling` executes instead of the fine map's cells.

    Returns:
        One `LayerCount` per conv and head layer, in network order (conv1.., fc6, fc7,
        fc8, then reg_fc1, reg_fc2, reg_out when the model has a regressor).

    Raises:
        ValueError: bad stride or size, an image too small for one output cell, or not a
            model / config.
    """
    check_stride(stride)
    config, shapes = _widths(model_or_config)
    hw = _check_hw(image_hw)
    counts, unpooled = _conv_counts(config, shapes, hw)
    k, window = config.pool_size, config.fc6_window
    out = tuple(_head_side(u, k, window, stride, padded) for u in unpooled)
    if min(out) < 1:
        raise ValueError(
            f"Image {hw[0]}x{hw[1]} is too small for the {config.name!r} net: no output "
            f"cell; use at least {config.crop_size} px per side."
        )
    _, _, head = topology.split(config)
    for name in [m.layer for m in head if m.kind == "fc"] + list(REGRESSOR_LAYERS):
        if name in shapes:
            kh, kw, cin, cout = shapes[name]
            counts.append(LayerCount(name, (kh, kw), cin, cout, (out[0], out[1])))
    return counts


def model_flops(
    model_or_config: Any,
    image_hw: Sequence[int] | None = None,
    stride: str = "fine",
    padded: bool = False,
) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass over one `image_hw` image (one level).

    `image_hw` None: the net's training crop (both strides give one output cell there).
    See `layer_counts` for the arguments and the module docstring for what is counted.
    """
    config, _ = _widths(model_or_config)
    hw = (config.crop_size, config.crop_size) if image_hw is None else image_hw
    return sum(c.flops for c in layer_counts(model_or_config, hw, stride, padded))


def multiply_adds(
    model_or_config: Any, image_hw: Sequence[int] | None = None, stride: str = "fine"
) -> int:
    """Multiply-adds of one forward pass (`model_flops` / 2; the paper's "connections")."""
    return model_flops(model_or_config, image_hw, stride) // 2


def pyramid_levels(
    model_or_config: Any, image_hw: Sequence[int], scales: Sequence[Scale] | None = None
) -> list[tuple[int, int]]:
    """The (h, w) px of each pyramid level of an `image_hw` image (`pyramid.level_size`:
    scales snapped to the net's fine grid); `scales` None: the net's defaults."""
    config, _ = _widths(model_or_config)
    hw = _check_hw(image_hw)
    scales = check_scales(default_scales(config) if scales is None else scales)
    sizes = []
    for scale in scales:
        size = tf.get_static_value(level_size(tf.constant(hw, tf.int32), scale, config))
        if size is None:
            raise ValueError("pyramid_levels needs eager execution (call it outside tf.function).")
        sizes.append((int(size[0]), int(size[1])))
    return sizes


def pyramid_flops(
    detector_or_net: Any,
    image_hw: Sequence[int],
    scales: Sequence[Scale] | None = None,
    flips: bool | None = None,
    stride: str | None = None,
    padded: bool = False,
) -> int:
    """FLOPs of the multi-scale forward pass over one `image_hw` image (paper §3.3, Table 5).

    Sum over the pyramid levels (`pyramid_levels`) of `model_flops`, twice with flips.

    Args:
        detector_or_net: an `OverFeatDetector` (its scales, flips and stride are the
            defaults), an `OverFeat` model, or a config / architecture name.
        image_hw: the original image's (height, width) px.
        scales: pyramid scales; None: the detector's, else the net's defaults.
        flips: also count each level's mirror; None: the detector's, else True.
        stride: "fine" / "coarse"; None: the detector's, else "fine".
        padded: as in `layer_counts`.
    """
    scales = scales if scales is not None else getattr(detector_or_net, "scales", None)
    flips = flips if flips is not None else getattr(detector_or_net, "flips", True)
    stride = stride or getattr(detector_or_net, "stride", None) or "fine"
    copies = 2 if flips else 1
    levels = pyramid_levels(detector_or_net, image_hw, scales)
    return copies * sum(model_flops(detector_or_net, hw, stride, padded) for hw in levels)


def training_step_flops(model_or_config: Any, batch_size: int) -> int:
    """FLOPs of one training step of the crop model: 3 x forward (forward, then the
    gradients of the inputs and of the weights, each about one forward) x batch."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    return 3 * batch_size * model_flops(model_or_config)

"""The network's module sequence, derived once from a `ModelConfig`.

The released OverFeat nets are one Torch-style sequence of modules (`overfeat -L n`,
`get_output(n)` count them from 0): module 0 normalizes the input, then every zero padding,
convolution, ReLU and max-pool is a module of its own, and fc6..fc8 are convolutions too
(a KxK window over the pooled last map, then 1x1). A convolution is numbered before its
ReLU. `modules(config)[n]` is module n; the model builder, the feature extractor, the FLOP
counter and the weight converter all read this one list.

For the fast net (22 modules; `tiny` numbers the same way):

    0 normalize, 1 conv1_linear, 2 conv1, 3 pool1, 4 conv2_linear, 5 conv2, 6 pool2,
    7 pad3, 8 conv3_linear, 9 conv3, 10 pad4, 11 conv4_linear, 12 conv4, 13 pad5,
    14 conv5_linear, 15 conv5, 16 pool5, 17 fc6_linear, 18 fc6, 19 fc7_linear, 20 fc7, 21 fc8

and for the accurate net (25 modules) the same up to conv5, then 16 pad6, 17 conv6_linear,
18 conv6, 19 pool6, 20 fc6_linear, 21 fc6, 22 fc7_linear, 23 fc7, 24 fc8.

Reference: Sermanet et al., "OverFeat: Integrated Recognition, Localization and Detection
using Convolutional Networks", ICLR 2014, Table 1 (fast) and Table 3 (accurate).
"""

from __future__ import annotations

import dataclasses

from overfeat_tf.architecture.config import ModelConfig, model_config

KINDS = ("normalize", "pad", "conv", "relu", "pool", "fc")
WEIGHTED = ("conv", "fc")


@dataclasses.dataclass(frozen=True)
class Module:
    """One module of the release's sequence; its number is its index in `modules(config)`.

    Attributes:
        name: the module's feature name: "normalize", "padN", "convN_linear" (the conv
            before its ReLU), "convN" (after), "poolN", "fcN_linear", "fcN", "fc8".
        kind: "normalize", "pad", "conv", "relu", "pool" or "fc".
        layer: the paper layer it belongs to, which is also the Keras layer holding its
            weights for "conv" / "fc" modules: "conv3" for pad3, conv3_linear and conv3;
            "fc6" for fc6_linear and fc6; the module's own name otherwise.
        filters: output channels of a conv / fc module (0 for the others).
        in_channels: input channels of a conv / fc module (0 for the others).
        kernel: square kernel side of a conv / fc module (fc6: the window K).
        stride: convolution stride of a conv module (1 otherwise).
        padding: zero padding on each side of a pad module (0 otherwise).
        pool: max-pool size == stride of a pool module (0 otherwise).
        dense: True for the last pool: the one made dense by offset pooling (paper §3.3).
    """

    name: str
    kind: str
    layer: str
    filters: int = 0
    in_channels: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    pool: int = 0
    dense: bool = False

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """Keras kernel shape `[kH, kW, in, out]` of a conv / fc module."""
        if self.kind not in WEIGHTED:
            raise ValueError(f"Module {self.name!r} ({self.kind}) has no weights.")
        return (self.kernel, self.kernel, self.in_channels, self.filters)


def modules(config: str | ModelConfig | dict) -> tuple[Module, ...]:
    """The release's module sequence of a net: `modules(config)[n]` is `overfeat -L n`."""
    config = model_config(config)
    out = [Module("normalize", "normalize", "normalize")]
    channels = 3
    for i, spec in enumerate(config.convs, start=1):
        conv = f"conv{i}"
        if spec.padding:
            out.append(Module(f"pad{i}", "pad", conv, padding=spec.padding))
        out.append(
            Module(f"{conv}_linear", "conv", conv, spec.filters, channels, spec.kernel, spec.stride)
        )
        out.append(Module(conv, "relu", conv))
        channels = spec.filters
        if spec.pool:
            last = i == len(config.convs)
            out.append(Module(f"pool{i}", "pool", f"pool{i}", pool=spec.pool, dense=last))
    widths = (
        ("fc6", config.fc6_filters, config.fc6_window),
        ("fc7", config.fc7_filters, 1),
        ("fc8", config.num_classes, 1),
    )
    for fc, filters, kernel in widths:
        linear = fc if fc == "fc8" else f"{fc}_linear"
        out.append(Module(linear, "fc", fc, filters, channels, kernel))
        if fc != "fc8":
            out.append(Module(fc, "relu", fc))
        channels = filters
    return tuple(out)


def module_names(config: str | ModelConfig | dict) -> list[str]:
    """The modules' names in order: `module_names(config)[n]` is `overfeat -L n`."""
    return [m.name for m in modules(config)]


def weighted(config: str | ModelConfig | dict) -> list[Module]:
    """The conv and fc modules in order (conv1 .. convN, fc6, fc7, fc8): the release's
    weight file holds each one's kernel then its bias, in this order."""
    return [m for m in modules(config) if m.kind in WEIGHTED]


def split(config: str | ModelConfig | dict) -> tuple[list[Module], Module, list[Module]]:
    """(trunk, last pool, classifier): the modules before the dense last pool, that pool
    (paper §3.3: applied at every offset), and the fc modules after it."""
    seq = modules(config)
    at = next(i for i, m in enumerate(seq) if m.dense)
    return list(seq[:at]), seq[at], list(seq[at + 1 :])


def parameter_count(config: str | ModelConfig | dict) -> int:
    """Weights and biases of the release's net (145,920,872 fast, 144,656,488 accurate)."""
    return sum(
        m.kernel * m.kernel * m.in_channels * m.filters + m.filters for m in weighted(config)
    )

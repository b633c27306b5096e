"""Network architectures as data: the paper's Table 1 / Table 3 (fast, accurate) and `tiny`.

Every number that defines a network lives here, so the model builders, the box geometry and
the weight converter read one source of truth.

Reference: Sermanet et al., "OverFeat: Integrated Recognition, Localization and Detection
using Convolutional Networks", ICLR 2014, Table 1 (fast) and Table 3 (accurate).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# The released OverFeat nets normalize inside the network: (x - mean) / std on RGB 0..255.
PIXEL_MEAN = 118.380948
PIXEL_STD = 61.896913


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One feature-extraction layer: conv (+ ReLU) and an optional max-pool.

    Attributes:
        filters: output channels.
        kernel: square kernel side.
        stride: convolution stride.
        padding: zero padding on each side (0 = "valid", 1 = the paper's 3x3 layers).
        pool: max-pool size == stride (0 = no pool). "Valid" pooling: floor.
    """

    filters: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A whole OverFeat network.

    Attributes:
        name: "fast", "accurate", "tiny" or a user name.
        crop_size: training input side in pixels (the window one 1x1 output cell sees).
        convs: the feature layers conv1..convN; the pool of the last one is the pool made
            dense by offset pooling (paper §3.3).
        fc6_filters, fc7_filters: widths of the classifier's hidden layers.
        num_classes: width of fc8.
        dropout: dropout rate after fc6 and fc7 (paper §3.1: 0.5).
        regressor_filters: widths of the box regressor's hidden layers (paper §4.2:
            4096 over an fc6-sized window, then 1024).
    """

    name: str
    crop_size: int
    convs: tuple[ConvSpec, ...]
    fc6_filters: int
    fc7_filters: int
    num_classes: int = 1000
    dropout: float = 0.5
    regressor_filters: tuple[int, int] = (4096, 1024)

    def __post_init__(self) -> None:
        if not self.convs:
            raise ValueError("ModelConfig.convs must hold at least one layer.")
        if self.convs[-1].pool < 1:
            raise ValueError(
                f"The last conv layer of {self.name!r} must have a pool (the one made dense "
                "by offset pooling); got pool=0."
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
        if self.fc6_window < 1:
            raise ValueError(
                f"crop_size {self.crop_size} is too small for {self.name!r}: the pooled "
                "layer-5 map would be empty."
            )

    # --- derived geometry -------------------------------------------------------------
    @property
    def pool_size(self) -> int:
        """k: size == stride of the last max-pool (2 fast, 3 accurate)."""
        return self.convs[-1].pool

    @property
    def feature_stride(self) -> int:
        """Input pixels per cell of the unpooled last conv map (16 fast, 12 accurate)."""
        s = 1
        for c in self.convs[:-1]:
            s *= c.stride * max(c.pool, 1)
        return s * self.convs[-1].stride

    @property
    def fine_stride(self) -> int:
        """Input pixels between neighbouring cells of the fine (all offsets) output map."""
        return self.feature_stride

    @property
    def coarse_stride(self) -> int:
        """Input pixels between neighbouring cells of the coarse (offset 0) output map."""
        return self.feature_stride * self.pool_size

    @property
    def fc6_window(self) -> int:
        """fc6 kernel side = the pooled layer-5 map at the crop size (6 fast, 5 accurate)."""
        return self.pooled_size(self.crop_size)

    def unpooled_size(self, side: int) -> int:
        """Side of the last conv map (before the dense pool) for an input side in pixels."""
        for i, c in enumerate(self.convs):
            side = (side + 2 * c.padding - c.kernel) // c.stride + 1
            if i < len(self.convs) - 1 and c.pool:
                side //= c.pool
            if side < 1:
                return 0
        return side

    def pooled_size(self, side: int) -> int:
        """Side of the pooled last map at offset 0 (coarse) for an input side in pixels."""
        return self.unpooled_size(side) // self.pool_size

    def output_size(self, side: int, stride: str = "fine") -> int:
        """Side of the classifier's output map for an input side (0 if too small).

        fine: unpooled - k * K + 1 (every offset, interleaved); coarse: pooled - K + 1.
        """
        if stride == "fine":
            return max(self.unpooled_size(side) - self.pool_size * self.fc6_window + 1, 0)
        if stride == "coarse":
            return max(self.pooled_size(side) - self.fc6_window + 1, 0)
        raise ValueError(f"stride must be one of {STRIDES}, got {stride!r}.")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (e.g. `num_classes`)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for `get_config`)."""
        d = dataclasses.asdict(self)
        d["convs"] = [dataclasses.asdict(c) for c in self.convs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["convs"] = tuple(ConvSpec(**c) for c in d["convs"])
        d["regressor_filters"] = tuple(d.get("regressor_filters", (4096, 1024)))
        return cls(**d)


# Paper Table 1 ("fast"): 231x231 crops, coarse stride 32, fine stride 16.
FAST = ModelConfig(
    name="fast",
    crop_size=231,
    convs=(
        ConvSpec(96, 11, stride=4, pool=2),
        ConvSpec(256, 5, pool=2),
        ConvSpec(512, 3, padding=1),
        ConvSpec(1024, 3, padding=1),
        ConvSpec(1024, 3, padding=1, pool=2),
    ),
    fc6_filters=3072,
    fc7_filters=4096,
)

# Paper Table 3 ("accurate"): 221x221 crops, coarse stride 36, fine stride 12.
ACCURATE = ModelConfig(
    name="accurate",
    crop_size=221,
    convs=(
        ConvSpec(96, 7, stride=2, pool=3),
        ConvSpec(256, 7, pool=2),
        ConvSpec(512, 3, padding=1),
        ConvSpec(512, 3, padding=1),
        ConvSpec(1024, 3, padding=1),
        ConvSpec(1024, 3, padding=1, pool=3),
    ),
    fc6_filters=4096,
    fc7_filters=4096,
)

# The fast topology, narrow: for tests and CPU demos (about 0.5M parameters).
TINY = ModelConfig(
    name="tiny",
    crop_size=231,
    convs=(
        ConvSpec(16, 11, stride=4, pool=2),
        ConvSpec(32, 5, pool=2),
        ConvSpec(64, 3, padding=1),
        ConvSpec(64, 3, padding=1),
        ConvSpec(64, 3, padding=1, pool=2),
    ),
    fc6_filters=128,
    fc7_filters=128,
    num_classes=10,
    regressor_filters=(128, 64),
)

CONFIGS: dict[str, ModelConfig] = {c.name: c for c in (FAST, ACCURATE, TINY)}

# Paper Table 5: the six inference scales of the accurate model (height, width).
ACCURATE_SCALES: tuple[tuple[int, int], ...] = (
    (245, 245),
    (281, 317),
    (317, 389),
    (389, 461),
    (425, 497),
    (461, 569),
)


def model_config(model: str | ModelConfig | dict, **overrides: Any) -> ModelConfig:
    """Resolve a model name ("fast", "accurate", "tiny"), dict or config, with overrides."""
    if isinstance(model, ModelConfig):
        config = model
    elif isinstance(model, dict):
        config = ModelConfig.from_dict(model)
    elif isinstance(model, str) and model in CONFIGS:
        config = CONFIGS[model]
    else:
        raise ValueError(
            f"Unknown model {model!r}: expected one of {sorted(CONFIGS)} or a ModelConfig."
        )
    return config.replace(**overrides) if overrides else config


STRIDES = ("fine", "coarse")  # every pooling offset of the last pool, or offset (0, 0) only


def check_stride(stride: str) -> str:
    """`stride` if it is one of `STRIDES`, else ValueError."""
    if stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES}, got {stride!r}.")
    return stride

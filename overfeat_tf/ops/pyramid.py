"""The image pyramid for inference, in TF ops (graph-safe: `tf.function`, SavedModels).

Paper: Sermanet et al., OverFeat, ICLR 2014, §3.3 and Table 5: the network runs densely
over several scales of each image and its horizontal flip.

Scales. A scale is either
- an int `S`: the image is resized keeping its aspect ratio so its short side is `S`, then
  each side is *snapped down* to the grid `crop + fine_stride * n` (n >= 0; at least
  `crop`), so the net's maps fit its stride exactly: with the fine stride every output
  cell's window ends on the image border, no rows or columns are dropped by the "valid"
  layers and the output is `n + 1` cells per side. Snapping changes the aspect ratio by
  less than one stride (16 px fast, 12 px accurate) per side;
- a pair `(h, w)`: that exact level size (snapped the same way), oriented like the image:
  for a portrait image (H > W) a landscape pair is transposed to `(w, h)`. The aspect
  ratio is not kept.

Defaults (`default_scales`): the accurate net uses paper Table 5's six sizes as pairs,
245x245, 281x317, 317x389, 389x461, 425x497, 461x569 (all on its 221 + 12 n grid), so a
landscape image runs at exactly those sizes, as in the paper (whose sizes do not share one
aspect ratio). Every other net uses short sides at the same ratios to its crop
(`round(crop * s / 221)` for Table 5's short sides s, then snapped): 247, 279, 327, 391,
439, 471 for fast and tiny. Pass ints to keep the aspect ratio with any net.

Bounded cost. With an int scale S a level's long side is at most `S * max_aspect_ratio`
(default 4): an image more elongated than that (a 5000 x 2 px strip) is squeezed along its
long side instead of giving a level millions of pixels long, so what a level costs is a
function of the scales and that bound alone (`max_level_size`), never of the image.

Levels are resized with `resizing.resize` (bilinear, antialiased when shrinking, 0..255).
Each level records what maps boxes back to the original image: its size, the original
size, the resize factors and which batch entries are flipped (see `boxes.level_to_original`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tensorflow as tf

from overfeat_tf.architecture.config import ACCURATE_SCALES, ModelConfig, model_config
from overfeat_tf.ops import resizing

Scale = int | tuple[int, int]

# Paper Table 5's short sides, relative to the accurate net's 221 px crop.
_TABLE5_SHORT_SIDES = tuple(min(s) for s in ACCURATE_SCALES)
_ACCURATE_CROP = 221


def snap_side(side: int, crop_size: int, stride: int) -> int:
    """`crop + stride * floor((side - crop) / stride)`, at least `crop` (Python ints, px)."""
    return crop_size + stride * max((side - crop_size) // stride, 0)


def _snap(side: tf.Tensor, crop_size: int, stride: int) -> tf.Tensor:
    """`snap_side` in TF ops (int32 tensors of any shape)."""
    return crop_size + stride * tf.maximum((side - crop_size) // stride, 0)


def default_scales(config: str | ModelConfig) -> tuple[Scale, ...]:
    """The default inference scales of a net (see the module docstring).

    accurate: Table 5's six `(h, w)` pairs. Others: six snapped short sides at Table 5's
    ratios to the crop (247, 279, 327, 391, 439, 471 for fast and tiny).
    """
    config = model_config(config)
    if config.name == "accurate":
        return ACCURATE_SCALES
    return tuple(
        snap_side(
            round(config.crop_size * s / _ACCURATE_CROP), config.crop_size, config.fine_stride
        )
        for s in _TABLE5_SHORT_SIDES
    )


def check_scales(scales: Sequence[Scale] | int) -> tuple[Scale, ...]:
    """Validate scales: a non-empty sequence of positive ints and/or `(h, w)` pairs (a single
    int is one scale)."""
    if isinstance(scales, int):
        scales = (scales,)
    scales = tuple(scales)
    if not scales:
        raise ValueError("scales must not be empty.")
    checked: list[Scale] = []
    for s in scales:
        if isinstance(s, int) and not isinstance(s, bool) and s > 0:
            checked.append(int(s))
        elif (
            isinstance(s, list | tuple)
            and len(s) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in s)
        ):
            checked.append((int(s[0]), int(s[1])))
        else:
            raise ValueError(
                f"Each scale must be a positive int (short side, px) or a (height, width) "
                f"pair of positive ints; got {s!r}."
            )
    return tuple(checked)


def parse_scales(text: str | Sequence[str]) -> tuple[Scale, ...]:
    """Command-line scales -> checked scales: "231" (a short side, px) or "281x317" (height x
    width), as one comma-separated string ("247,281x317") or a list of such strings."""
    values = [text] if isinstance(text, str) else list(text)
    scales: list[Scale] = []
    for value in (v.strip().lower() for item in values for v in item.split(",")):
        if not value:
            continue
        try:
            numbers = [int(p) for p in value.split("x")]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2):
            raise ValueError(
                f"Bad scale {value!r}: use a short side like 231 or a size like 281x317."
            )
        scales.append(numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1]))
    return check_scales(scales)


def level_size(
    image_size: tf.Tensor,
    scale: Scale,
    config: str | ModelConfig,
    max_aspect_ratio: float = resizing.DEFAULT_MAX_ASPECT_RATIO,
) -> tf.Tensor:
    """Size (h, w) int32 `[2]` of the level of an `image_size` (H, W) image at `scale`.

    int scale: short side -> scale keeping the aspect ratio up to `max_aspect_ratio`
    (`resizing.short_side_size`: rounded; the long side at most `scale * max_aspect_ratio`),
    each side snapped down to `crop + fine_stride * n`. Pair: that size, transposed for a
    portrait image if the pair is landscape (and vice versa), then snapped. Either way the
    level's size depends on the image's only through its orientation and (up to the bound)
    aspect ratio: `max_level_pixels` bounds it for every image.
    """
    config = model_config(config)
    (scale,) = check_scales([scale])
    size = tf.cast(image_size, tf.int32)
    if isinstance(scale, int):
        target = resizing.short_side_size(size, scale, max_aspect_ratio)
    else:
        h, w = scale
        pair = tf.constant([h, w], tf.int32)
        image_portrait = size[0] > size[1]
        pair_portrait = h > w
        target = tf.where(tf.not_equal(image_portrait, pair_portrait) & (h != w), pair[::-1], pair)
    return _snap(target, config.crop_size, config.fine_stride)


def max_level_size(
    scale: Scale,
    config: str | ModelConfig,
    max_aspect_ratio: float = resizing.DEFAULT_MAX_ASPECT_RATIO,
) -> tuple[int, int]:
    """The largest (short, long) side, in px, any image's level at `scale` can have: what a
    level costs at most (Python ints; `level_size`'s bound)."""
    config = model_config(config)
    (scale,) = check_scales([scale])
    max_aspect_ratio = resizing.check_aspect_ratio(max_aspect_ratio)
    short, long = (scale, int(scale * max_aspect_ratio)) if isinstance(scale, int) else scale
    sides = sorted(snap_side(s, config.crop_size, config.fine_stride) for s in (short, long))
    return sides[0], sides[1]


@dataclasses.dataclass(frozen=True)
class Level:
    """One pyramid level.

    Attributes:
        image: float32 `[N, h, w, 3]`, 0..255. With B input images and flips,
            N = 2B: entries `0..B-1` are the resized images, `B..2B-1` their left-right
            flips; without flips N = B.
        size: int32 `[2]`, (h, w) of this level in px.
        original_size: int32 `[2]`, (H, W) of the input image in px.
        factors: float32 `[2]`, (h / H, w / W): level px per original px.
        flipped: bool `[N]`, which entries of `image` are flipped.
        scale: the scale this level was made from.
    """

    image: tf.Tensor
    size: tf.Tensor
    original_size: tf.Tensor
    factors: tf.Tensor
    flipped: tf.Tensor
    scale: Scale


def _as_batch(image: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 3:
        image = image[tf.newaxis]
    if image.shape.rank != 4 or (image.shape[-1] is not None and image.shape[-1] != 3):
        raise ValueError(f"Expected an RGB image [H, W, 3] or [B, H, W, 3], got {image.shape}.")
    return tf.cast(image, tf.float32)


def build_pyramid(
    image: tf.Tensor,
    config: str | ModelConfig,
    scales: Sequence[Scale] | None = None,
    flips: bool = True,
    max_aspect_ratio: float = resizing.DEFAULT_MAX_ASPECT_RATIO,
) -> list[Level]:
    """The levels of an image pyramid, one per scale (a Python list: the number of scales is
    static, sizes may be dynamic).

    Args:
        image: `[H, W, 3]` or `[B, H, W, 3]` (images of one size), RGB 0..255, any real
            dtype; H and W may be unknown (graph mode).
        config: the network ("fast", "accurate", "tiny" or a `ModelConfig`): its crop and
            fine stride define the grid the level sizes are snapped to.
        scales: ints (short sides) and/or `(h, w)` pairs; `default_scales(config)` if None.
        flips: also add each level's left-right flip (as extra batch entries).
        max_aspect_ratio: no level's long side is more than this times its short side (a
            more elongated image is squeezed to it): each level has at most
            `max_level_size` pixels, whatever the image.

    Returns:
        One `Level` per scale, in the order of `scales`.
    """
    config = model_config(config)
    scales = check_scales(default_scales(config) if scales is None else scales)
    batch = _as_batch(image)
    original = tf.shape(batch)[1:3]
    levels = []
    for scale in scales:
        size = level_size(original, scale, config, max_aspect_ratio)
        resized = resizing.resize(batch, size)
        flipped = tf.zeros(tf.shape(batch)[:1], tf.bool)
        if flips:
            resized = tf.concat([resized, tf.reverse(resized, axis=[2])], axis=0)
            flipped = tf.concat([flipped, tf.logical_not(flipped)], axis=0)
        levels.append(
            Level(
                image=resized,
                size=size,
                original_size=original,
                factors=tf.cast(size, tf.float32) / tf.cast(original, tf.float32),
                flipped=flipped,
                scale=scale,
            )
        )
    return levels

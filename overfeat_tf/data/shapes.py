"""`overfeat_shapes`: a generated TFDS detection dataset that needs no network.

Every image holds 1-4 objects of `SHAPE_CLASSES` (they differ in shape, not only in colour)
with random size, aspect ratio, rotation and colour, possibly overlapping, on a textured and
cluttered background. Everything is drawn with NumPy from a seed, so a config gives the same
dataset, byte for byte, at every build. `render_example` draws one example without TFDS;
`OverfeatShapes` is the TFDS builder around it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

MIN_SIDE = 160
MAX_SIDE = 512
MAX_OBJECTS = 4
MAX_AREA_RATIO = 0.5  # every other object: box area and pixel area <= this x the dominant's
DOMINANT_EXTENT = (0.3, 0.8)  # dominant object's extent, as a fraction of the short side
MIN_EXTENT = 0.1  # smallest object extent, as a fraction of the short side
MAX_ASPECT = 1.5  # objects are stretched by up to this factor along one of their axes
MIN_VISIBLE = (0.85, 0.5)  # visible fraction of its pixels: dominant object, other objects
PLACEMENT_TRIES = 20
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
RENDER_CHUNK = 64  # images rendered at once by the generator's threads (bounds the memory held)


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorized over the points (u, v)."""
    inside = np.zeros(u.shape, dtype=bool)
    for (ua, va), (ub, vb) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        if va == vb:
            continue  # a horizontal edge is never crossed by a horizontal ray
        crosses = (va > v) != (vb > v)
        inside ^= crosses & (u < ua + (v - va) * (ub - ua) / (vb - va))
    return inside


def _polygon(*vertices: tuple[float, float]) -> ShapeFn:
    points = np.array(vertices, dtype=np.float32)
    return lambda u, v: _inside_polygon(u, v, points)


def _star_vertices(points: int, inner: float) -> list[tuple[float, float]]:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return list(zip(radii * np.cos(angles), radii * np.sin(angles), strict=True))


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    lobes = np.minimum((u - 0.48) ** 2, (u + 0.48) ** 2) + (v + 0.48) ** 2 <= 0.52**2
    return lobes | _inside_polygon(u, v, np.array([(-0.95, -0.3), (0.95, -0.3), (0.0, 1.0)]))


def _box(u: np.ndarray, v: np.ndarray, half: float) -> np.ndarray:
    return (np.abs(u) <= half) & (np.abs(v) <= half)


# Shapes in canonical coordinates (u right, v down), inside the square [-1, 1]^2. They stay
# distinguishable under any rotation and under stretching by up to MAX_ASPECT.
_SHAPES: dict[str, ShapeFn] = {
    "disk": lambda u, v: u**2 + v**2 <= 1.0,
    "ring": lambda u, v: (u**2 + v**2 <= 1.0) & (u**2 + v**2 >= 0.6**2),
    "crescent": lambda u, v: (u**2 + v**2 <= 1.0) & ((u - 0.5) ** 2 + v**2 > 0.85**2),
    "semicircle": lambda u, v: (u**2 + v**2 <= 1.0) & (v <= 0.0),
    "triangle": _polygon((0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)),
    "square": lambda u, v: _box(u, v, 1.0),
    "frame": lambda u, v: _box(u, v, 1.0) & ~_box(u, v, 0.55),
    "star": _polygon(*_star_vertices(5, 0.42)),
    "cross": lambda u, v: _box(u, v, 1.0) & ((np.abs(u) <= 0.33) | (np.abs(v) <= 0.33)),
    "arrow": _polygon(
        (-1.0, -0.3), (0.1, -0.3), (0.1, -0.8), (1.0, 0.0), (0.1, 0.8), (0.1, 0.3), (-1.0, 0.3)
    ),
    "heart": _heart,
    "l_shape": lambda u, v: _box(u, v, 1.0) & ((u <= -0.2) | (v >= 0.2)),
}

SHAPE_CLASSES: tuple[str, ...] = tuple(_SHAPES)


def _canonical_points(label: int) -> np.ndarray:
    """Points of the canonical shape on a 65x65 grid, [n, 2] as (u, v)."""
    u, v = np.meshgrid(np.linspace(-1.0, 1.0, 65), np.linspace(-1.0, 1.0, 65))
    inside = _SHAPES[SHAPE_CLASSES[label]](u, v)
    return np.stack([u[inside], v[inside]], axis=-1)


def _shape_mask(label: int, extent: float, aspect: float, angle: float) -> np.ndarray:
    """Rasterizes a shape whose larger side is about `extent` px; returns the tight bool mask.

    The canonical shape is stretched by (sqrt(aspect), 1 / sqrt(aspect)) along (u, v), then
    rotated by `angle` and scaled so that the larger side of its axis-aligned extent is `extent`.
    """
    stretch = np.array([math.sqrt(aspect), 1.0 / math.sqrt(aspect)])
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])  # acts on column vectors (x, y)
    corners = _canonical_points(label) * stretch @ rotation.T
    scale = extent / np.ptp(corners, axis=0).max()
    lo = np.floor(corners.min(axis=0) * scale) - 1
    hi = np.ceil(corners.max(axis=0) * scale) + 1
    x, y = np.meshgrid(np.arange(lo[0], hi[0]) + 0.5, np.arange(lo[1], hi[1]) + 0.5)
    # Inverse transform of every pixel centre back to canonical coordinates.
    u = (cos * x + sin * y) / (scale * stretch[0])
    v = (-sin * x + cos * y) / (scale * stretch[1])
    mask = _SHAPES[SHAPE_CLASSES[label]](u, v)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


@dataclasses.dataclass(frozen=True)
class _Object:
    label: int
    mask: np.ndarray  # tight bool mask of the full (unoccluded) drawn shape
    top: int = 0
    left: int = 0

    @property
    def window(self) -> tuple[slice, slice]:
        height, width = self.mask.shape
        return slice(self.top, self.top + height), slice(self.left, self.left + width)

    def bbox(self, image_shape: tuple[int, int]) -> tuple[float, float, float, float]:
        """Normalized [ymin, xmin, ymax, xmax] of the mask's pixel edges."""
        (height, width), (rows, cols) = image_shape, self.window
        return rows.start / height, cols.start / width, rows.stop / height, cols.stop / width


def _sample_shapes(rng: np.random.Generator, short_side: int, max_objects: int) -> list[_Object]:
    """Samples the objects' classes and masks, the dominant one first; all others are clearly
    smaller (box area and pixel area at most MAX_AREA_RATIO of the dominant one's)."""
    count = int(rng.integers(1, max_objects + 1))
    dominant_extent = rng.uniform(*DOMINANT_EXTENT) * short_side
    objects: list[_Object] = []
    for k in range(count):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        aspect = math.exp(rng.uniform(-1.0, 1.0) * math.log(MAX_ASPECT))
        angle = rng.uniform(0.0, 2 * math.pi)
        if k == 0:
            extent = dominant_extent
        else:
            high = max(MIN_EXTENT * short_side, 0.6 * dominant_extent)
            extent = rng.uniform(MIN_EXTENT * short_side, high)
        mask = _shape_mask(label, extent, aspect, angle)
        while k > 0 and (ratio := _size_ratio(mask, objects[0].mask)) > MAX_AREA_RATIO:
            extent *= math.sqrt(0.9 * MAX_AREA_RATIO / ratio)
            mask = _shape_mask(label, extent, aspect, angle)
        objects.append(_Object(label, mask))
    return objects


def _size_ratio(mask: np.ndarray, dominant: np.ndarray) -> float:
    return max(mask.size / dominant.size, np.count_nonzero(mask) / np.count_nonzero(dominant))


def _visible_enough(objects: list[_Object], shape: tuple[int, int]) -> bool:
    """Whether, drawn back to front, each object keeps its MIN_VISIBLE share of pixels."""
    owner = np.full(shape, -1, dtype=np.int8)
    for index, obj in enumerate(objects):
        owner[obj.window][obj.mask] = index
    areas = np.array([np.count_nonzero(obj.mask) for obj in objects])
    required = np.where(areas == areas.max(), *MIN_VISIBLE)
    for index, obj in enumerate(objects):
        if np.count_nonzero(owner[obj.window][obj.mask] == index) < required[index] * areas[index]:
            return False
    return True


def _place(
    rng: np.random.Generator, shapes: list[_Object], shape: tuple[int, int]
) -> list[_Object]:
    """Places the objects inside the image at random depths; returns them back to front.

    An object that cannot be placed without hiding too much of itself or of the others
    (MIN_VISIBLE) within PLACEMENT_TRIES tries is left out; the dominant one always fits.
    """
    placed: list[_Object] = []
    for obj in shapes:
        height, width = obj.mask.shape
        for _ in range(PLACEMENT_TRIES):
            top = int(rng.integers(0, shape[0] - height + 1))
            left = int(rng.integers(0, shape[1] - width + 1))
            depth = int(rng.integers(len(placed) + 1))
            candidate = placed.copy()
            candidate.insert(depth, dataclasses.replace(obj, top=top, left=left))
            if _visible_enough(candidate, shape):
                placed = candidate
                break
    return placed


def _interpolation_matrix(size: int, cells: int) -> np.ndarray:
    """[size, cells + 1] weights that linearly interpolate cells + 1 knots at size points."""
    position = np.linspace(0.0, cells, size, dtype=np.float32)
    return np.maximum(1.0 - np.abs(position[:, None] - np.arange(cells + 1, dtype=np.float32)), 0.0)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], cells: int, channels: int
) -> np.ndarray:
    """Uniform noise on a (cells + 1)^2 grid, bilinearly upsampled to [*shape, channels]."""
    grid = rng.random((cells + 1, cells + 1, channels), dtype=np.float32)
    rows, cols = (_interpolation_matrix(size, cells) for size in shape)
    return cols @ np.tensordot(rows, grid, axes=1)  # [x, j] @ [y, j, c] -> [y, x, c]


def _direction_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates projected on a random direction, in px."""
    angle = rng.uniform(0.0, 2 * math.pi)
    y, x = np.indices(shape, dtype=np.float32)
    return x * math.cos(angle) + y * math.sin(angle)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=3).astype(np.float32)


def _draw_lines(rng: np.random.Generator, canvas: np.ndarray, count: int) -> None:
    """Thin straight segments: clutter that is none of the classes."""
    height, width = canvas.shape[:2]
    for _ in range(count):
        (y0, x0), (y1, x1) = rng.uniform(0, 1, (2, 2)) * [height, width]
        half = rng.uniform(0.5, 2.0)
        top, bottom = int(max(min(y0, y1) - half, 0)), int(min(max(y0, y1) + half + 1, height))
        left, right = int(max(min(x0, x1) - half, 0)), int(min(max(x0, x1) + half + 1, width))
        y, x = np.mgrid[top:bottom, left:right] + 0.5
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((y - y0) * dy + (x - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0.0, 1.0)
        on_line = np.hypot(y - y0 - t * dy, x - x0 - t * dx) <= half
        canvas[top:bottom, left:right][on_line] = _random_colour(rng)


def _draw_blobs(rng: np.random.Generator, canvas: np.ndarray, count: int) -> None:
    """Amorphous blobs (thresholded smooth noise): clutter that is none of the classes."""
    height, width = canvas.shape[:2]
    for _ in range(count):
        size = int(rng.uniform(0.05, 0.2) * min(height, width))
        v, u = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
        noise = _smooth_noise(rng, (size, size), cells=5, channels=1)[..., 0]
        blob = (1.0 - np.hypot(u, v)) + (noise - 0.5) > 0.35
        top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
        canvas[top : top + size, left : left + size][blob] = _random_colour(rng)


def _background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A float32 [H, W, 3] background: gradient + smooth colour noise, maybe stripes, clutter."""
    ramp = _direction_field(rng, shape)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1.0)
    first, second = _random_colour(rng), _random_colour(rng)
    canvas = first + ramp[..., None] * (second - first)
    cells = int(rng.integers(2, 12))
    canvas += rng.uniform(0.0, 120.0) * (_smooth_noise(rng, shape, cells, channels=3) - 0.5)
    if rng.random() < 0.5:
        period = rng.uniform(6.0, 40.0)
        stripes = np.sin(2 * math.pi * _direction_field(rng, shape) / period) > 0
        strength = rng.uniform(0.2, 0.6) * stripes[..., None]
        canvas += strength * (_random_colour(rng) - canvas)
    _draw_blobs(rng, canvas, int(rng.integers(0, 5)))
    _draw_lines(rng, canvas, int(rng.integers(0, 7)))
    return canvas


def _paint(rng: np.random.Generator, canvas: np.ndarray, obj: _Object) -> None:
    """Fills the object with a shaded colour that contrasts with what lies beneath it."""
    under = canvas[obj.window][obj.mask].mean(axis=0)
    candidates = rng.uniform(0.0, 255.0, size=(8, 3)).astype(np.float32)
    colour = candidates[np.argmax(np.linalg.norm(candidates - under, axis=1))]
    shade = _direction_field(rng, obj.mask.shape) / max(obj.mask.shape)
    fill = colour + rng.uniform(-40.0, 40.0) * (shade - shade.mean())[..., None]
    canvas[obj.window][obj.mask] = fill[obj.mask]


def render_example(
    rng: np.random.Generator | int | Sequence[int],
    *,
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
    max_objects: int = MAX_OBJECTS,
    return_masks: bool = False,
) -> dict[str, Any]:
    """Draws one example: 1..`max_objects` shapes on a cluttered background.

    Args:
        rng: a NumPy Generator, or a seed for `np.random.default_rng` (an int or a sequence of
            non-negative ints). The same seed always gives the same example.
        min_side, max_side: range of the image height and width in px (aspect ratio <= 2).
        max_objects: at most this many objects (at least one).
        return_masks: also return `masks`, for checks and debugging.

    Returns:
        A dict with `image` (uint8 [H, W, 3] RGB); `label` (int, the dominant object's class);
        `bboxes` (float32 [n, 4], normalized [ymin, xmin, ymax, xmax]: the tight box of the
        object's full drawn pixels, before any occlusion); `labels` (int64 [n]); and, with
        `return_masks`, `masks` (bool [n, H, W], each object's full drawn pixels). Objects are
        listed largest first: object 0 is the dominant one, every other object has at most
        `MAX_AREA_RATIO` of its box area and of its pixel area.

    Raises:
        ValueError: if `min_side` < 64, `max_side` < `min_side` or `max_objects` < 1.
    """
    if min_side < 64 or max_side < min_side:
        raise ValueError(f"need 64 <= min_side <= max_side, got {min_side=} and {max_side=}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    height = int(rng.integers(min_side, max_side + 1))
    width = int(rng.integers(max(min_side, (height + 1) // 2), min(max_side, 2 * height) + 1))
    shape = (height, width)
    canvas = _background(rng, shape)
    placed = _place(rng, _sample_shapes(rng, min(shape), max_objects), shape)
    for obj in placed:
        _paint(rng, canvas, obj)
    canvas += rng.uniform(0.0, 8.0) * rng.standard_normal(canvas.shape, dtype=np.float32)
    objects = sorted(placed, key=lambda obj: obj.mask.size, reverse=True)
    example = {
        "image": np.rint(np.clip(canvas, 0, 255)).astype(np.uint8),
        "label": objects[0].label,
        "bboxes": np.array([obj.bbox(shape) for obj in objects], dtype=np.float32),
        "labels": np.array([obj.label for obj in objects], dtype=np.int64),
    }
    if return_masks:
        masks = np.zeros((len(objects), *shape), dtype=bool)
        for mask, obj in zip(masks, objects, strict=True):
            mask[obj.window] = obj.mask
        example["masks"] = masks
    return example


@dataclasses.dataclass
class OverfeatShapesConfig(tfds.core.BuilderConfig):
    """Sizes and seed of an `overfeat_shapes` build.

    Attributes:
        num_train, num_validation, num_test: number of images in each split (a split of
            size 0 is left out).
        seed: base seed; example `i` of a split is drawn from
            `np.random.default_rng([seed, SPLIT_IDS[split], i])`.
    """

    num_train: int = 8000
    num_validation: int = 500
    num_test: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for split, size in self.split_sizes.items():
            if size < 0:
                raise ValueError(f"num_{split} must be >= 0, got {size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}


class OverfeatShapes(tfds.core.GeneratorBasedBuilder):
    """Generated detection dataset: 12 shape classes on cluttered backgrounds, no download.

    Each image (RGB, sides 160..512 px, aspect ratio <= 2) holds 1-4 objects with random
    size (10%-80% of the short side), aspect ratio, rotation and colour, which may overlap, on a
    background of gradients, smooth colour noise, stripes, blobs and lines, plus pixel noise.
    One object dominates: it is 30%-80% of the short side and every other object has at most
    half its box area and half its pixel area.

    Features (TFDS detection convention):
        image: `tfds.features.Image`, uint8 (None, None, 3), stored as JPEG (quality 95).
        label: `ClassLabel`, the dominant object's class (`supervised_keys`: image, label).
        objects: `Sequence` of
            bbox: `BBoxFeature`, float32 [ymin, xmin, ymax, xmax] normalized to [0, 1]: the
                tight box of the object's full drawn pixels, before occlusion by others.
            label: `ClassLabel`.
        Objects are listed largest first, so `objects[0]` is the dominant one.

    Classes (`SHAPE_CLASSES`): disk, ring, crescent, semicircle, triangle, square (any
    rectangle), frame, star, cross, arrow, heart, l_shape.

    Configs (train / validation / test images):
        standard (default): 8000 / 500 / 1000.
        small: 48 / 16 / 16, builds in seconds, for unit tests.

    Build and load (importing `overfeat_tf.data.shapes` registers the builder)::

        import overfeat_tf.data.shapes  # noqa: F401
        ds = tfds.load("overfeat_shapes/small", split="train", data_dir=data_dir)

        # A custom size: give it its own name, since the name is the directory on disk.
        config = OverfeatShapesConfig(name="big", num_train=50_000, seed=1)
        builder = tfds.builder("overfeat_shapes", config=config, data_dir=data_dir)
        builder.download_and_prepare()
        ds = builder.as_dataset(split="train")

    Every example is drawn by `render_example` from its own seed (config seed, split,
    index), so a config always gives the same images and boxes.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}  # noqa: RUF012 (TFDS class attribute)
    BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS class attribute)
        OverfeatShapesConfig(name="standard", description="8000 / 500 / 1000 images."),
        OverfeatShapesConfig(
            name="small", num_train=48, num_validation=16, num_test=16, description="Unit tests."
        ),
    ]
    DEFAULT_CONFIG_NAME = "standard"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS' default needs `importlib_resources`, which tensorflow-datasets 4.9 only declares
        # for Python < 3.9 (tensorflow/datasets#11212); TFDS reads it to find checksums.tsv.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Shapes of 12 classes with boxes on cluttered backgrounds, generated.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=SHAPE_CLASSES),
                    "objects": tfds.features.Sequence(
                        {
                            "bbox": tfds.features.BBoxFeature(),
                            "label": tfds.features.ClassLabel(names=SHAPE_CLASSES),
                        }
                    ),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # everything is generated
        sizes = self.builder_config.split_sizes
        return {split: self._generate_examples(split) for split, size in sizes.items() if size}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        """Examples in index order, rendered on every core: each is drawn from its own seed
        (the build is the same on any core count) and NumPy releases the GIL while it draws,
        so threads render `RENDER_CHUNK` images at a time in parallel (about 1.4-1.7x on 2
        cores)."""
        config = self.builder_config
        seeds = [[config.seed, SPLIT_IDS[split], i] for i in range(config.split_sizes[split])]
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for start in range(0, len(seeds), RENDER_CHUNK):
                chunk = pool.map(render_example, seeds[start : start + RENDER_CHUNK])
                for index, example in enumerate(chunk, start):
                    objects = {"bbox": example["bboxes"], "label": example["labels"]}
                    image, label = example["image"], example["label"]
                    yield index, {"image": image, "label": label, "objects": objects}

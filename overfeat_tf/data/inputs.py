"""The `tf.data` input pipeline: any TFDS dataset by name -> random crops for training.

    TFDS records (image bytes left encoded)                `tfds_io.raw_split`
      -> decode to RGB (skip and count corrupt records)    `decode_example`, `skip_corrupt`
      -> label: `label` (classification) or the largest box's `objects/label` (detection)
      -> rescale so the short side is 256 px               `rescale_short_side`
      -> random crop of the model's size (231 fast, 221 accurate)   `random_crop`
      -> random horizontal flip                            `random_flip`
      -> batch, prefetch (parallel map, AUTOTUNE)          `training_dataset`

Paper: Sermanet et al., OverFeat, ICLR 2014, §3.1 ("each image is downsampled so that the
smallest dimension is 256 pixels. We then extract 5 random crops (and their horizontal
flips) of size 221x221 pixels").

Every per-example op is a plain TF function of tensors: it runs eagerly on one image and
inside `Dataset.map` (where shapes are unknown and Python control flow on values is not
allowed). Random ops take an optional stateless `seed` (int `[2]`); the pipeline draws
one per example from `tf.data.Dataset.random(seed)`, so a run is reproducible from its
seed even with parallel maps.

Corrupt records: an example whose image cannot be decoded (truncated or corrupt JPEG/PNG,
empty bytes, a zero-sized image) is dropped and counted in a `CorruptRecordCounter`
(a `tf.Variable` on the host) instead of stopping training. Each example is decoded in a
one-element inner dataset with `ignore_errors()`, followed by a placeholder flagged invalid
(`skip_corrupt`), so the count is exact, per record, and needs no second pass. Errors of
the storage layer itself (an unreadable TFRecord file) are not records and still raise.

Decoding and resizing are `overfeat_tf.data.image_io`'s (`to_rgb`, `resize_short_side`), the
same as at inference and serving; TFDS builders and raw splits are `overfeat_tf.data.tfds_io`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from overfeat_tf.data import image_io

# `as` names: re-exported for callers that import them from here (training.py); their home
# is `overfeat_tf.data.tfds_io`.
from overfeat_tf.data.tfds_io import example_objects, raw_split
from overfeat_tf.ops import resizing

AUTOTUNE = tf.data.AUTOTUNE
SHORT_SIDE = 256  # paper §3.1: images rescaled so their smallest dimension is 256 px

Seed = tf.Tensor | None


# --- per-example ops -----------------------------------------------------------------------


def _check_side(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (pixels), got {value!r}.")


def rescale_short_side(image: tf.Tensor, short_side: int = SHORT_SIDE) -> tf.Tensor:
    """Resize `[H, W, 3]` (any real dtype) keeping its aspect so min(H, W) == short_side.

    `resizing.resize_short_side` (bilinear, antialiased when shrinking; the long side
    rounded to the nearest pixel). Output float32 `[H', W', 3]`, values 0..255.
    """
    _check_side("short_side", short_side)
    return resizing.resize_short_side(image, short_side)


def random_crop(image: tf.Tensor, size: int, seed: Seed = None) -> tf.Tensor:
    """A uniformly placed `size` x `size` crop of `[H, W, 3]` (H, W >= size).

    With `seed` (int `[2]`) the crop is a function of the seed (`stateless_random_crop`);
    without, it draws from the global random state. Raises `InvalidArgumentError` if the
    image is smaller than the crop.
    """
    _check_side("size", size)
    image = tf.convert_to_tensor(image)
    shape = tf.stack([size, size, tf.shape(image)[-1]])
    if seed is None:
        return tf.image.random_crop(image, shape)
    return tf.image.stateless_random_crop(image, shape, seed)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The central `size` x `size` crop of `[H, W, 3]` (H, W >= size)."""
    _check_side("size", size)
    image = tf.convert_to_tensor(image)
    hw = tf.shape(image)[:2]
    tf.debugging.assert_greater_equal(
        tf.reduce_min(hw), size, message=f"Image smaller than the {size}x{size} crop."
    )
    top, left = (hw[0] - size) // 2, (hw[1] - size) // 2
    return image[top : top + size, left : left + size, :]


def random_flip(image: tf.Tensor, seed: Seed = None) -> tf.Tensor:
    """Flip `[H, W, C]` left-right with probability 1/2 (stateless when `seed` is given)."""
    if seed is None:
        return tf.image.random_flip_left_right(image)
    return tf.image.stateless_random_flip_left_right(image, seed)


def example_label(example: dict[str, Any]) -> tf.Tensor:
    """The class of an example, int64 scalar; -1 when it has none.

    Classification schema (`label`): that label. Detection schema (`objects/bbox` normalized
    yxyx, `objects/label`): the label of the largest box (by normalized area; the first
    one on ties), -1 for an image without objects.
    """
    if "label" in example:
        return tf.cast(example["label"], tf.int64)
    objects = example_objects(example)
    if objects is None:
        raise ValueError(
            "The dataset has neither a `label` feature (classification) nor "
            f"`objects/bbox` + `objects/label` (detection); its features are {sorted(example)}."
        )
    bbox, label = objects
    bbox = tf.cast(bbox, tf.float32)
    area = (bbox[:, 2] - bbox[:, 0]) * (bbox[:, 3] - bbox[:, 1])  # [N]
    return tf.cond(  # argmax inside the branch: it fails on no boxes, eagerly
        tf.size(label) > 0,
        lambda: tf.cast(tf.gather(label, tf.argmax(area, output_type=tf.int32)), tf.int64),
        lambda: tf.constant(-1, tf.int64),
    )


def decode_example(example: dict[str, Any]) -> tuple[tf.Tensor, tf.Tensor]:
    """A dataset example -> (image float32 `[H, W, 3]` 0..255, label int64 or -1).

    The image is encoded bytes or a decoded tensor (`image_io.to_rgb`: grey, alpha,
    palette, 16-bit and CMYK handled; undecodable bytes raise `InvalidArgumentError`).
    """
    if "image" not in example:
        raise ValueError(f"The dataset has no `image` feature; its features are {sorted(example)}.")
    return image_io.to_rgb(example["image"]), example_label(example)


def crop_and_flip(image: tf.Tensor, crop_size: int, seed: Seed = None) -> tf.Tensor:
    """Random `crop_size` crop, then random left-right flip, of `[H, W, 3]` (H, W >= crop).

    With `seed` (int `[2]`) the crop and the flip use two seeds split from it.
    """
    crop_seed = flip_seed = None
    if seed is not None:
        seeds = tf.random.experimental.stateless_split(seed, num=2)  # [2, 2]
        crop_seed, flip_seed = seeds[0], seeds[1]
    return random_flip(random_crop(image, crop_size, crop_seed), flip_seed)


def train_crop(
    image: tf.Tensor, crop_size: int, seed: Seed = None, short_side: int = SHORT_SIDE
) -> tf.Tensor:
    """Training augmentation: rescale (short side) -> random crop -> random flip.

    Args:
        image: `[H, W, 3]` 0..255, any real dtype.
        crop_size: the model's training crop (231 fast and tiny, 221 accurate).
        seed: optional int `[2]`; the crop and the flip use two seeds derived from it.
        short_side: the rescaled short side (paper: 256); must be >= crop_size.

    Returns float32 `[crop_size, crop_size, 3]`.
    """
    if short_side < crop_size:
        raise ValueError(f"short_side ({short_side}) must be >= crop_size ({crop_size}).")
    return crop_and_flip(rescale_short_side(image, short_side), crop_size, seed)


def eval_crop(image: tf.Tensor, crop_size: int, short_side: int = SHORT_SIDE) -> tf.Tensor:
    """Single-view evaluation: rescale (short side) -> central crop. float32 `[S, S, 3]`."""
    if short_side < crop_size:
        raise ValueError(f"short_side ({short_side}) must be >= crop_size ({crop_size}).")
    return center_crop(rescale_short_side(image, short_side), crop_size)


# --- corrupt records -----------------------------------------------------------------------


class CorruptRecordCounter:
    """Counts records dropped by `skip_corrupt` (a host `tf.Variable`, int64).

    Create it outside any `tf.distribute` scope; read it with `int(counter)` or
    `counter.value()`.
    """

    def __init__(self, name: str = "corrupt_records") -> None:
        with tf.device("/cpu:0"):
            self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name=name)

    def value(self) -> int:
        return int(self.variable.numpy())

    def __int__(self) -> int:
        return self.value()

    def add(self, flags: tf.Tensor) -> tf.Operation:
        """Count the `False` entries of a bool tensor (the records that failed)."""
        return self.variable.assign_add(tf.reduce_sum(tf.cast(tf.logical_not(flags), tf.int64)))


def _placeholder(spec: Any) -> Any:
    """Zeros matching a (nested) element spec, unknown dims as 0."""

    def zeros(s: tf.TensorSpec) -> tf.Tensor:
        if s.shape.rank is None:
            return tf.zeros([], s.dtype)
        return tf.zeros([d if d is not None else 0 for d in s.shape.as_list()], s.dtype)

    return tf.nest.map_structure(zeros, spec)


def _is_valid(value: Any, ok: tf.Tensor) -> tf.Tensor:
    return ok


def _value(value: Any, ok: tf.Tensor) -> Any:
    return value


def _has_label(image: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    return label >= 0


def skip_corrupt(
    fn: Callable[..., Any],
    counter: CorruptRecordCounter | None = None,
    num_parallel_calls: int | None = AUTOTUNE,
    deterministic: bool | None = None,
) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """A `Dataset.apply` transformation: `map(fn)` that drops (and counts) failing records.

    Each element is mapped in its own one-element dataset with `ignore_errors()`, then a
    placeholder flagged invalid is appended and the first element taken: a failing record
    yields the placeholder, which is counted in `counter` and filtered out. Other
    records come out as `fn` made them. Parallel like `Dataset.map` (`interleave` with
    `num_parallel_calls`).

    Args:
        fn: the map function that may fail at run time (e.g. `decode_example`); it gets the
            element as `Dataset.map` would pass it.
        counter: where to count dropped records (optional).
        num_parallel_calls, deterministic: as in `Dataset.interleave`.
    """

    def transform(dataset: tf.data.Dataset) -> tf.data.Dataset:
        fallback = _placeholder(dataset.map(fn).element_spec)

        def attempt(*element: Any) -> tf.data.Dataset:
            one = tf.data.Dataset.from_tensors(element if len(element) > 1 else element[0])
            good = one.map(fn).map(lambda *out: (out if len(out) > 1 else out[0], True))
            bad = tf.data.Dataset.from_tensors((fallback, False))
            return good.ignore_errors().concatenate(bad).take(1)

        dataset = dataset.interleave(
            attempt,
            cycle_length=1 if num_parallel_calls is None else None,
            block_length=1,
            num_parallel_calls=num_parallel_calls,
            deterministic=deterministic,
        )
        if counter is not None:

            def count(value: Any, ok: tf.Tensor) -> tuple[Any, tf.Tensor]:
                with tf.control_dependencies([counter.add(ok)]):
                    return value, tf.identity(ok)

            dataset = dataset.map(count)
        return dataset.filter(_is_valid).map(_value)

    return transform


# --- datasets ------------------------------------------------------------------------------


def decoded_split(
    name_or_dataset: str | tf.data.Dataset,
    split: str,
    data_dir: str | os.PathLike | None = None,
    counter: CorruptRecordCounter | None = None,
) -> tf.data.Dataset:
    """(image float32 `[H, W, 3]` 0..255, label int64) of a split in order, corrupt and
    unlabelled records dropped (corrupt ones counted). For evaluation."""
    dataset = raw_split(name_or_dataset, split, data_dir)
    dataset = dataset.apply(skip_corrupt(decode_example, counter))
    return dataset.filter(_has_label)


def _rescaled_uint8(short_side: int) -> Callable[[tf.Tensor, tf.Tensor], tuple]:
    def rescale(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        resized = rescale_short_side(image, short_side)
        return tf.cast(tf.round(resized), tf.uint8), label

    return rescale


def _crops(
    dataset: tf.data.Dataset,
    crop_size: int,
    short_side: int,
    training: bool,
    cache: bool,
    seed: int,
) -> tf.data.Dataset:
    """(image, label) -> (crop `[S, S, 3]`, label int32): random crop and flip, one seed per
    example (`training`), else the central crop. `cache`: images already rescaled, uint8, and
    the training crops stay uint8 (the batch is cast to float32 at once, `_float_images`)."""
    if not training:

        def central(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return eval_crop(image, crop_size, short_side), tf.cast(label, tf.int32)

        return dataset.map(central, num_parallel_calls=AUTOTUNE)
    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)

    def augment(example: tuple[tf.Tensor, tf.Tensor], seed_: tf.Tensor) -> tuple:
        image, label = example
        if cache:  # already rescaled (uint8): cut and flip the uint8 crop, cast per batch
            image = crop_and_flip(image, crop_size, seed_)
        else:
            image = train_crop(image, crop_size, seed_, short_side)
        return image, tf.cast(label, tf.int32)

    return tf.data.Dataset.zip((dataset, seeds)).map(augment, num_parallel_calls=AUTOTUNE)


def _float_images(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32), labels


def training_dataset(
    name_or_dataset: str | tf.data.Dataset,
    split: str,
    crop_size: int,
    batch_size: int,
    *,
    data_dir: str | os.PathLike | None = None,
    short_side: int = SHORT_SIDE,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    cache: bool = False,
    repeat: bool = True,
    drop_remainder: bool = True,
    training: bool = True,
    counter: CorruptRecordCounter | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches of (crops float32 `[B, S, S, 3]` 0..255, labels int32 `[B]`) for `fit`.

    Pipeline: records (files shuffled) -> shuffle -> repeat -> decode, corrupt records
    skipped and counted -> drop unlabelled -> rescale the short side to `short_side` ->
    random crop `crop_size` -> random flip -> batch -> prefetch, maps in parallel
    (AUTOTUNE). With `cache=True` the decoded, rescaled images are kept in memory (as
    uint8) after the first pass and shuffled there, so later epochs only crop and flip
    (for small datasets: about `examples * short_side**2 * aspect * 3` bytes). With
    `training=False`: no shuffle, central crop, no flip.

    Args:
        name_or_dataset: a TFDS name ("imagenet2012", "overfeat_shapes/standard", ...) or
            a `tf.data.Dataset` of example dicts (`image`, `label` or `objects`).
        split: TFDS split ("train", "validation", ...).
        crop_size: the model's training crop side (px).
        batch_size: global batch size (a `tf.distribute` strategy splits it).
        short_side: rescaled short side before cropping (px, paper: 256).
        seed: seeds the shuffles and every random crop / flip.
        shuffle_buffer: examples in the shuffle buffer.
        cache: keep the decoded, rescaled images in memory.
        repeat: repeat forever (use `steps_per_epoch`); else one pass.
        drop_remainder: drop the last partial batch (static batch shape, for TPUs).
        training: random crops and flips and shuffling; else central crops in order.
        counter: counts the corrupt records that were skipped.
        input_context: from `strategy.distribute_datasets_from_function`: this input
            pipeline's shard of the data (see `raw_split`) and the per-replica batch size
            (`batch_size` is then the global batch).
    """
    _check_side("batch_size", batch_size)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if short_side < crop_size:
        raise ValueError(f"short_side ({short_side}) must be >= crop_size ({crop_size}).")
    dataset = raw_split(
        name_or_dataset,
        split,
        data_dir,
        shuffle_files=training,
        seed=seed,
        input_context=input_context,
    )
    if training and not cache:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
    dataset = dataset.apply(skip_corrupt(decode_example, counter))
    dataset = dataset.filter(_has_label)
    if cache:
        dataset = dataset.map(_rescaled_uint8(short_side), num_parallel_calls=AUTOTUNE).cache()
        if training:
            dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat and (cache or not training):
        dataset = dataset.repeat()
    dataset = _crops(dataset, crop_size, short_side, training, cache, seed)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if training and cache:  # one cast per batch: half the input's CPU time (BENCHMARKS.md)
        dataset = dataset.map(_float_images, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)

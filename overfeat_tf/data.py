"""The `tf.data` input pipeline: any TFDS dataset by name -> random crops for training.

    TFDS records (image bytes left encoded)
      -> decode (skip and count corrupt records)          `decode_example`, `skip_corrupt`
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

ImageNet: TFDS' `imagenet2012` needs the ILSVRC2012 tars downloaded by hand; without them
`load_builder` raises a `ValueError` that says where they go (checked before calling TFDS).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

AUTOTUNE = tf.data.AUTOTUNE
SHORT_SIDE = 256  # paper §3.1: images rescaled so their smallest dimension is 256 px
IMAGENET = "imagenet2012"
IMAGENET_TARS = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}
GENERATED_DATASET = "overfeat_shapes"  # overfeat_tf.datasets: made by code, no download

Seed = tf.Tensor | None


# --- per-example ops -----------------------------------------------------------------------


def decode_image(image: tf.Tensor) -> tf.Tensor:
    """An image as stored -> float32 RGB `[H, W, 3]`, values 0..255.

    Accepts encoded bytes (scalar string: JPEG, PNG, GIF first frame, BMP) or a decoded
    `[H, W, C]` tensor of any real dtype with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or
    4 (RGBA). Alpha is dropped, grey is repeated. Integer images are taken as 0..255.

    Raises `InvalidArgumentError` (at run time) for undecodable bytes or an empty image.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    elif image.shape.rank not in (None, 3):
        raise ValueError(f"Expected an image [H, W, C], got shape {image.shape}.")
    channels = tf.shape(image)[-1]
    # grey (1) and grey + alpha (2) -> [0, 0, 0]; RGB / RGBA -> [0, 1, 2]
    index = tf.where(channels < 3, tf.zeros([3], tf.int32), tf.range(3))
    image = tf.gather(image, index, axis=-1)
    image = tf.ensure_shape(tf.cast(image, tf.float32), [None, None, 3])
    tf.debugging.assert_positive(
        tf.size(image), message="Empty image: the decoded image has no pixels."
    )
    return image


def _check_side(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (pixels), got {value!r}.")


def rescale_short_side(image: tf.Tensor, short_side: int = SHORT_SIDE) -> tf.Tensor:
    """Resize `[H, W, 3]` (any real dtype) keeping its aspect so min(H, W) == short_side.

    Bilinear (`tf.image.resize`), antialiased when shrinking; the long side is rounded to
    the nearest pixel. Output float32 `[H', W', 3]`, values 0..255.
    """
    _check_side("short_side", short_side)
    image = tf.cast(image, tf.float32)
    size = tf.cast(tf.shape(image)[:2], tf.float32)  # [2] (H, W)
    scale = short_side / tf.reduce_min(size)
    new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), short_side)
    resized = tf.cond(
        scale < 1.0,  # antialias only when shrinking (it is a no-op, but slower, otherwise)
        lambda: tf.image.resize(image, new_size, method="bilinear", antialias=True),
        lambda: tf.image.resize(image, new_size, method="bilinear"),
    )
    return tf.clip_by_value(resized, 0.0, 255.0)


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


def _objects(example: dict[str, Any]) -> tuple[tf.Tensor, tf.Tensor] | None:
    """(bbox [N, 4], label [N]) of a detection example (nested or flat keys), or None."""
    objects = example.get("objects")
    if isinstance(objects, dict) and "bbox" in objects and "label" in objects:
        return objects["bbox"], objects["label"]
    if "objects/bbox" in example and "objects/label" in example:
        return example["objects/bbox"], example["objects/label"]
    return None


def example_label(example: dict[str, Any]) -> tf.Tensor:
    """The class of an example, int64 scalar; -1 when it has none.

    Classification schema (`label`): that label. Detection schema (`objects/bbox` normalized
    yxyx, `objects/label`): the label of the largest box (by normalized area; the first
    one on ties), -1 for an image without objects.
    """
    if "label" in example:
        return tf.cast(example["label"], tf.int64)
    objects = _objects(example)
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
    """A dataset example -> (image float32 `[H, W, 3]` 0..255, label int64 or -1)."""
    if "image" not in example:
        raise ValueError(f"The dataset has no `image` feature; its features are {sorted(example)}.")
    return decode_image(example["image"]), example_label(example)


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


# --- TFDS ----------------------------------------------------------------------------------


def _register_generated_datasets() -> None:
    """Import `overfeat_tf.datasets` so `overfeat_shapes` is known to TFDS by name."""
    try:
        import overfeat_tf.datasets  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name != "overfeat_tf.datasets":
            raise


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """TFDS' data directory: `data_dir`, else `$TFDS_DATA_DIR`, else ~/tensorflow_datasets."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def check_imagenet_manual_files(manual_dir: str | os.PathLike, splits: tuple[str, ...]) -> None:
    """Raise a `ValueError` saying where the ILSVRC2012 tars go if one of `splits` lacks its tar.

    `imagenet2012` cannot be downloaded by TFDS: the tars come from image-net.org after
    registration and go into TFDS' manual directory.
    """
    manual_dir = Path(manual_dir).expanduser()
    missing = [
        IMAGENET_TARS[s]
        for s in splits
        if s in IMAGENET_TARS and not (manual_dir / IMAGENET_TARS[s]).is_file()
    ]
    if missing:
        raise ValueError(
            f"imagenet2012 needs a manual download: {', '.join(missing)} not found in "
            f"{manual_dir}. Register at https://image-net.org/download-images, download "
            f"{IMAGENET_TARS['train']} and {IMAGENET_TARS['validation']}, and put them in "
            "~/tensorflow_datasets/downloads/manual/ (that is <data_dir>/downloads/manual/; "
            "pass --data-dir or set TFDS_DATA_DIR for another data directory). TFDS then "
            "prepares the dataset on first use (about 150 GB)."
        )


def _base_name(name: str) -> str:
    return name.split("/")[0].split(":")[0]


def load_builder(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    manual_dir: str | os.PathLike | None = None,
    splits: tuple[str, ...] = ("train", "validation"),
) -> tfds.core.DatasetBuilder:
    """A prepared TFDS builder for `name` (e.g. "overfeat_shapes/small", "imagenet2012").

    Prepares the dataset if needed (`download`): generated datasets are made on the spot;
    `imagenet2012` needs its manual tars in `manual_dir` (default
    `<data_dir>/downloads/manual`), checked first with a clear `ValueError`.
    """
    _register_generated_datasets()
    data_dir = str(default_data_dir(data_dir))
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if not download:
        raise ValueError(
            f"Dataset {name!r} is not prepared in {data_dir} and download=False; prepare it "
            f"with `tfds build {name} --data_dir {data_dir}` or allow the download."
        )
    manual = Path(manual_dir) if manual_dir else Path(data_dir) / "downloads" / "manual"
    if _base_name(name) == IMAGENET:
        check_imagenet_manual_files(manual, splits)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    return builder


def class_names(builder: tfds.core.DatasetBuilder) -> list[str]:
    """The class names of a TFDS dataset (classification `label` or detection
    `objects/label`, both `ClassLabel` features)."""
    features = builder.info.features
    if "label" in features:
        feature = features["label"]
    elif "objects" in features and "label" in features["objects"]:
        feature = features["objects"]["label"]
    else:
        raise ValueError(
            f"Dataset {builder.name!r} has no `label` or `objects/label` ClassLabel feature."
        )
    if not isinstance(feature, tfds.features.ClassLabel):
        raise ValueError(f"The label of {builder.name!r} is not a ClassLabel: {feature!r}.")
    return list(feature.names)


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Number of examples in a split (as TFDS counts them, corrupt ones included)."""
    return int(builder.info.splits[split].num_examples)


def _keep_features(example: dict[str, Any]) -> dict[str, Any]:
    """Only the features the pipeline reads (image, label / objects' bbox and label)."""
    kept = {"image": example["image"]}
    if "label" in example:
        kept["label"] = example["label"]
    objects = _objects(example)
    if objects is not None:
        kept["objects"] = {"bbox": objects[0], "label": objects[1]}
    return kept


def _shard_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Turn off `tf.distribute`'s auto-sharding (the pipeline is sharded already)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def raw_split(
    name_or_dataset: str | tf.data.Dataset,
    split: str,
    data_dir: str | os.PathLike | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Examples of a split with the image left encoded: dicts with `image` (string) and
    `label` and/or `objects`. A `tf.data.Dataset` of such dicts passes through.

    With an `input_context` of several input pipelines (multi-worker training), this
    pipeline's share: whole TFRecord files when the split has at least one file per
    pipeline (TFDS `ReadConfig(input_context=...)`), else every n-th record (records are
    read by every pipeline but decoded by one). Auto-sharding is then turned off.
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    if isinstance(name_or_dataset, tf.data.Dataset):
        dataset = name_or_dataset
        if pipelines > 1:
            dataset = _shard_options(dataset.shard(pipelines, input_context.input_pipeline_id))
        return dataset.map(_keep_features)
    builder = load_builder(name_or_dataset, data_dir, splits=(split,))
    by_file = pipelines > 1 and builder.info.splits[split].num_shards >= pipelines
    read_config = tfds.ReadConfig(
        shuffle_seed=seed, try_autocache=False, input_context=input_context if by_file else None
    )
    dataset = builder.as_dataset(
        split=split,
        shuffle_files=shuffle_files,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=read_config,
    )
    if pipelines > 1 and not by_file:
        dataset = dataset.shard(pipelines, input_context.input_pipeline_id)
    if pipelines > 1:
        dataset = _shard_options(dataset)
    return dataset.map(_keep_features)


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
    if training:
        seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
        dataset = tf.data.Dataset.zip((dataset, seeds))

        def augment(example: tuple[tf.Tensor, tf.Tensor], seed_: tf.Tensor) -> tuple:
            image, label = example
            if cache:  # already rescaled (uint8)
                image = crop_and_flip(tf.cast(image, tf.float32), crop_size, seed_)
            else:
                image = train_crop(image, crop_size, seed_, short_side)
            return image, tf.cast(label, tf.int32)

        dataset = dataset.map(augment, num_parallel_calls=AUTOTUNE)
    else:

        def central(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return eval_crop(image, crop_size, short_side), tf.cast(label, tf.int32)

        dataset = dataset.map(central, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(AUTOTUNE)

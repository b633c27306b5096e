"""TFDS as the data source: builders by name, ImageNet's manual files, sharded raw splits;
datasets from files (`overfeat_tf.data.files`) wherever a TFDS name is taken.

    name ("overfeat_shapes/small", "imagenet2012", ...) or path ("labels.json", "VOC2007/")
      -> `load_builder`: prepared TFDS builder (generated datasets made on the spot;
         imagenet2012's manual tars checked first, with a `ValueError` saying where they go),
         or for a path (`is_file_dataset`) a `files.FileDataset` with the same interface
      -> `raw_split`: examples with the image left ENCODED (`image` string, `label` and/or
         `objects` {bbox yxyx normalized, label}), this input pipeline's shard
      -> `overfeat_tf.data.inputs` decodes, crops and batches them.

ImageNet: TFDS' `imagenet2012` needs the ILSVRC2012 tars downloaded by hand; without them
`load_builder` raises a `ValueError` that says where they go (checked before calling TFDS).

Paths: a COCO `.json`, a Pascal VOC folder or a folder of class folders
(`overfeat_tf.data.files`); their records are the same as a TFDS dataset's, and `data_dir`
means their images folder (COCO, VOC), not TFDS' data directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from overfeat_tf.data import files

IMAGENET = "imagenet2012"
IMAGENET_TARS = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}
GENERATED_DATASET = "overfeat_shapes"  # overfeat_tf.data.shapes: made by code, no download


def example_objects(example: dict[str, Any]) -> tuple[tf.Tensor, tf.Tensor] | None:
    """(bbox `[N, 4]` yxyx normalized, label `[N]`) of a detection example (nested
    `objects/...` or flat `"objects/bbox"` keys), or None for other examples."""
    objects = example.get("objects")
    if isinstance(objects, dict) and "bbox" in objects and "label" in objects:
        return objects["bbox"], objects["label"]
    if "objects/bbox" in example and "objects/label" in example:
        return example["objects/bbox"], example["objects/label"]
    return None


def _register_generated_datasets() -> None:
    """Import `overfeat_tf.data.shapes` so `overfeat_shapes` is known to TFDS by name."""
    try:
        import overfeat_tf.data.shapes  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name != "overfeat_tf.data.shapes":
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


def is_registered(name: str) -> bool:
    """Whether TFDS knows the dataset of `name` ("voc/2007:5.0.0" -> "voc"), the generated
    `overfeat_shapes` included."""
    _register_generated_datasets()
    try:
        tfds.builder_cls(_base_name(name))
    except (tfds.core.registered.DatasetNotFoundError, ValueError):
        return False
    return True


def is_file_dataset(name: Any) -> bool:
    """Whether a dataset argument is a path to files (`overfeat_tf.data.files`) rather than a
    TFDS name: the one place that decides.

    A path: an `os.PathLike`; a string ending in ".json"; a string that exists on disk (a
    folder "mnist" in the working directory is that folder; a TFDS data directory is not
    meant to be the working directory); one starting with "/", "./", "../" or "~"; one
    containing a path separator whose first part TFDS does not know ("photos/cats" is a
    path, "voc/2007" a TFDS name). Anything else (a `tf.data.Dataset`, "imagenet2012") is not.
    """
    if isinstance(name, os.PathLike):
        return True
    if not isinstance(name, str) or not name:
        return False
    if name.lower().endswith(".json") or name.startswith(("/", "./", "../", "~")):
        return True
    if os.path.exists(name):
        return True
    separators = [s for s in (os.sep, os.altsep) if s]
    return any(s in name for s in separators) and not is_registered(name)


def load_builder(
    name: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    manual_dir: str | os.PathLike | None = None,
    splits: tuple[str, ...] = ("train", "validation"),
) -> tfds.core.DatasetBuilder | files.FileDataset:
    """A prepared TFDS builder for `name` (e.g. "overfeat_shapes/small", "imagenet2012"),
    or for a path (`is_file_dataset`) a `files.FileDataset` (the same interface:
    `.name`, `.info.features`, `.info.splits`, `.as_dataset`), whose images folder is
    `data_dir` (COCO, VOC; `files.open_dataset`).

    Prepares the dataset if needed (`download`): generated datasets are made on the spot;
    `imagenet2012` needs its manual tars in `manual_dir` (default
    `<data_dir>/downloads/manual`), checked first with a clear `ValueError`.
    """
    if is_file_dataset(name):
        try:
            return files.open_dataset(name, data_dir)
        except ValueError as error:
            if isinstance(name, str) and os.path.exists(name) and is_registered(name):
                raise ValueError(
                    f"{error} ({name!r} is also a TFDS name; it was read as the path that "
                    "exists here: run from another folder to mean the TFDS dataset.)"
                ) from None
            raise
    _register_generated_datasets()
    data_dir = str(default_data_dir(data_dir))
    with _without_tfds_message(_PREPARING_NOTE):
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    if prepared:
        return builder
    if not download:
        raise ValueError(
            f"Dataset {name!r} is not prepared in {data_dir} and download=False; prepare it "
            f"with `tfds build {name} --data_dir {data_dir}` or allow the download."
        )
    manual = Path(manual_dir) if manual_dir else Path(data_dir) / "downloads" / "manual"
    if _base_name(name) == IMAGENET:
        check_imagenet_manual_files(manual, splits)
    with _without_tfds_message(_PREPARING_NOTE):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )
    return builder


# What TFDS logs (absl, WARNING) on every first build: the folder it is about to fill has no
# dataset_info.json yet. It reads like a fault to a new user and is none.
_PREPARING_NOTE = "has no dataset_info.json"


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _without_tfds_message(text: str) -> Iterator[None]:
    """Drop TFDS' (absl's) log records containing `text` while the block runs; every other
    record, and everything after the block, passes as before."""
    logger, drop = logging.getLogger("absl"), _DropMessage(text)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def class_names(builder: tfds.core.DatasetBuilder | files.FileDataset) -> list[str]:
    """The class names of a TFDS (or file) dataset (classification `label` or detection
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


def num_examples(builder: tfds.core.DatasetBuilder | files.FileDataset, split: str) -> int:
    """Number of examples in a split or split spec ("train[:90%]"), as TFDS counts them
    (corrupt ones included)."""
    return int(builder.info.splits[split].num_examples)


def _keep_features(example: dict[str, Any]) -> dict[str, Any]:
    """Only the features the pipeline reads (image, label / objects' bbox and label)."""
    kept = {"image": example["image"]}
    if "label" in example:
        kept["label"] = example["label"]
    objects = example_objects(example)
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
    `label` and/or `objects` (`bbox` float32 `[N, 4]` yxyx normalized, `label` int64 `[N]`).
    `name_or_dataset`: a TFDS name, a path (`is_file_dataset`: `data_dir` is then its images
    folder) or a `tf.data.Dataset` of such dicts, which passes through. `split`: a split or
    a TFDS split spec ("train[:90%]").

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

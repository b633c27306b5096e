"""Datasets read from files on disk: a COCO `.json`, a Pascal VOC folder, a class-per-folder
tree. They give the records a TFDS dataset gives, so every reader of TFDS datasets reads them.

    path ("labels.json", "VOCdevkit/VOC2007", "photos/")
      -> `open_dataset`: the annotation files are read and checked once (the images are not
         decoded), giving a `FileDataset`: a small TFDS-builder-like object with `.name`,
         `.info.features` (a `tfds.features.FeaturesDict` with a `ClassLabel`),
         `.info.splits[split].num_examples` / `.num_shards`, `.as_dataset(split)`, and what
         was left out (`.skipped`, `.clipped_boxes`)
      -> `tfds_io.load_builder` returns it for a path (`tfds_io.is_file_dataset` decides),
         so `tfds_io.raw_split`, `class_names`, `num_examples` and every command take a path
         wherever they take a TFDS name.

Records (`FileDataset.as_dataset`), as TFDS' with the image left encoded: detection
`{"image": bytes, "objects": {"bbox": [N, 4] float32 yxyx normalized to the image, "label":
[N] int64}}`, classification `{"image": bytes, "label": int64}`.

Formats (`detect_format`):

- a `.json` file: COCO annotations (read with pycocotools). One split, "train". Images are
  looked up by `file_name` beside the JSON, then in `<json folder>/images/`, or only in the
  `images` folder given (the commands' `--images DIR`, i.e. `data_dir`). Category ids map to
  labels 0..C-1 in sorted id order; names from `categories[].name`. Boxes `[x, y, w, h]` in
  pixels -> `[y/H, x/W, (y+h)/H, (x+w)/W]` with the image's `width` / `height` from the JSON
  (as TFDS' coco builder). Crowd annotations (`iscrowd: 1`) are left out of the objects and
  counted (COCO's evaluation ignores them); images without annotations are kept, without
  objects (for classification they have no label and are skipped by the input pipeline).
- a folder with `Annotations/`: Pascal VOC. `Annotations/*.xml`, images in `JPEGImages/`
  (or the `images` folder given), found by the XML's `<filename>`, else by the XML's name
  with an image extension. Splits from `ImageSets/Main/<split>.txt` (one image id a line;
  `val.txt` is the split "validation", as in TFDS' voc); without them, one split "train" of
  every XML. Boxes are converted as TFDS' voc builder does: `[ymin/H, xmin/W, ymax/H,
  xmax/W]` of the XML's pixel values and `<size>`. Objects marked `<difficult>1` are left
  out and counted (VOC's evaluation ignores them; TFDS' voc keeps them with an
  `is_difficult` flag, which this project's pipeline would drop, so they would count as
  ordinary objects there). Class names: the sorted names of every object of every split.
- any other folder: classification, `root/<class>/<image>` (one split "train") or
  `root/<split>/<class>/<image>` (TFDS' `ImageFolder` layout). Class names: the sorted class
  folder names (of all splits). Image files: `IMAGE_EXTENSIONS`; folders whose name starts
  with "." are ignored.

Order and slicing: a split's images are in a fixed order: detection datasets sorted by image
file name; class folders in TFDS `ImageFolder`'s order (each class's files sorted, classes
in name order, then shuffled with the split's name as the seed, so that a slice holds every
class). Every TFDS split spec works on that order: "train[:90%]", "train[90%:]",
"train[:100]", "train+validation", so "train[:90%]" and "train[90%:]" partition a split.

Checks when opened (annotation files only; `ValueError` naming the file, what is wrong and
the fix, up to `MAX_LISTED` problems listed): a listed image missing on disk, an annotation
file that does not parse, a missing image size, a category id not in `categories`, an
annotation of an unknown image, a VOC object without a name or box, a box with max < min or
more than `BOX_TOLERANCE` px outside its image, duplicate category names, an empty dataset
or split. Lenient, and counted (`FileDataset.skipped`, `.clipped_boxes`, printed by the
commands in one line): a box at most `BOX_TOLERANCE` px outside is clipped to the image; a
box of zero width or height (after clipping) is left out. When a record is read, the image's
size in its header is checked against the annotation's (an error naming the file: the
normalized boxes would be wrong); an image that does not decode is dropped and counted by
the input pipeline's corrupt-record counter (`inputs.skip_corrupt`), as a corrupt TFDS
record is.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import math
import os
import random
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from overfeat_tf.data import image_io

# what `image_io.decode_image` decodes (TFDS' ImageFolder: .jpg, .jpeg, .png)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
BOX_TOLERANCE = 1.0  # px a box may reach outside its image; it is clipped to the image
MAX_LISTED = 5  # problems listed in one error
FORMATS = ("coco", "voc", "folders")
VOC_SPLIT_NAMES = {"val": "validation"}  # ImageSets/Main/val.txt is TFDS' "validation"
_CACHE_SIZE = 4

SKIPPED_CROWD = "crowd boxes"
SKIPPED_DIFFICULT = "difficult objects"
SKIPPED_ZERO_SIZE = "zero-size boxes"


# --- examples, splits and the builder-like dataset ------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileExample:
    """One image of a file dataset.

    Attributes:
        path: the image file.
        key: its name relative to the images folder (the sort key of detection splits).
        source: the annotation file that describes it (named in error messages).
        label: the class (classification); -1 for detection examples.
        bbox: detection: the objects' boxes, float32 `[N, 4]` yxyx normalized to the
            image (0..1); None for classification.
        labels: detection: the objects' classes, int64 `[N]`; None for classification.
        size: (height, width) in px as the annotation says (checked when the image is
            read); None when the format gives none (class folders).
    """

    path: str
    key: str
    source: str
    label: int = -1
    bbox: np.ndarray | None = None
    labels: np.ndarray | None = None
    size: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class FileSplitInfo:
    """`num_examples` and `num_shards` of a split (spec) of a file dataset; like TFDS'
    `SplitInfo`, every image file counts as a shard."""

    name: str
    num_examples: int

    @property
    def num_shards(self) -> int:
        return self.num_examples


class UnknownSplitError(ValueError, KeyError):
    """A split spec names no split of the dataset (a `ValueError`, and a `KeyError` so that
    `in` and `.get` of `FileSplits` behave like a mapping's)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FileSplits(Mapping[str, FileSplitInfo]):
    """The splits of a file dataset: iterates over the named splits; indexing also takes
    TFDS split specs ("train[:90%]", "train[-100:]", "train+validation")."""

    def __init__(self, dataset_name: str, sizes: dict[str, int]) -> None:
        self._name = dataset_name
        self._sizes = dict(sizes)
        self._tfds = tfds.core.SplitDict(
            [tfds.core.SplitInfo(name=n, shard_lengths=[c], num_bytes=0) for n, c in sizes.items()]
        )

    def ranges(self, spec: str) -> list[tuple[str, int, int]]:
        """(split, start, stop) of each part of a split spec, as TFDS resolves it.

        Raises `UnknownSplitError` (a `ValueError`) naming the available splits for an
        unknown split or a spec TFDS does not parse.
        """
        try:
            instructions = tfds.core.ReadInstruction.from_spec(str(spec)).to_absolute(self._tfds)
        except (ValueError, AssertionError) as error:
            raise UnknownSplitError(
                f"{self._name}: split {spec!r}: {error} Its splits: {', '.join(self._sizes)}; "
                "slices as in TFDS, e.g. 'train[:90%]', 'train[90%:]', 'train[:100]'."
            ) from None
        ranges = []
        for part in instructions:
            count = self._sizes[part.splitname]
            start, stop, _ = slice(part.from_, part.to).indices(count)
            ranges.append((part.splitname, start, max(start, stop)))
        return ranges

    def __getitem__(self, spec: str) -> FileSplitInfo:
        count = sum(stop - start for _, start, stop in self.ranges(spec))
        return FileSplitInfo(str(spec), count)

    def __contains__(self, spec: object) -> bool:
        try:
            self.ranges(str(spec))
        except UnknownSplitError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._sizes)

    def __len__(self) -> int:
        return len(self._sizes)


@dataclasses.dataclass(frozen=True)
class FileDatasetInfo:
    """What TFDS' `DatasetInfo` says that the package reads: `features`, `splits`."""

    features: tfds.features.FeaturesDict
    splits: FileSplits


class FileDataset:
    """A dataset read from files, with the interface of a prepared TFDS builder that the
    package uses (`tfds_io.load_builder` returns it for a path).

    Attributes:
        name: the path as given (e.g. "labels.json").
        format: "coco", "voc" or "folders".
        task: "detection" (COCO, VOC) or "classification" (class folders).
        info: `features` (a `tfds.features.FeaturesDict`: `image`, and `objects` {`bbox`,
            `label`} or `label`, a `ClassLabel` of the class names) and `splits`
            (`FileSplits`: `splits[spec].num_examples`, `.num_shards`).
        skipped: what was left out, counted: {"crowd boxes": n, "difficult objects": n,
            "zero-size boxes": n} (zero counts omitted).
        clipped_boxes: boxes that reached at most `BOX_TOLERANCE` px outside their image
            and were clipped to it.
    """

    def __init__(
        self,
        name: str,
        format: str,
        class_names: Sequence[str],
        splits: dict[str, list[FileExample]],
        skipped: dict[str, int] | None = None,
        clipped_boxes: int = 0,
    ) -> None:
        self.name = name
        self.format = format
        self.task = "classification" if format == "folders" else "detection"
        self.skipped = {k: int(v) for k, v in (skipped or {}).items() if v}
        self.clipped_boxes = int(clipped_boxes)
        self._splits = splits
        self.info = FileDatasetInfo(
            _features(self.task, list(class_names)),
            FileSplits(name, {k: len(v) for k, v in splits.items()}),
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}: {v.num_examples}" for k, v in self.info.splits.items())
        return f"FileDataset({self.name!r}, {self.format}, {sizes})"

    @property
    def class_names(self) -> list[str]:
        """The class names, label i is `class_names[i]`."""
        if self.task == "classification":
            return list(self.info.features["label"].names)
        return list(self.info.features["objects"]["label"].names)

    def is_prepared(self) -> bool:
        """Always True: the files are read as they are."""
        return True

    def download_and_prepare(self, **kwargs: Any) -> None:
        """Nothing to prepare (for callers of the TFDS builder interface)."""

    def examples(self, split: str) -> list[FileExample]:
        """The examples of a split spec ("train", "train[:90%]", ...), in the split's order.

        Raises `ValueError` for an unknown split or a spec that selects no image.
        """
        chosen = [
            example
            for name, start, stop in self.info.splits.ranges(split)
            for example in self._splits[name][start:stop]
        ]
        if not chosen:
            sizes = ", ".join(f"{k}: {len(v)}" for k, v in self._splits.items())
            raise ValueError(
                f"{self.name}: the split {split!r} selects no images (the splits have {sizes} "
                "images); choose a larger slice."
            )
        return chosen

    def as_dataset(
        self,
        split: str,
        shuffle_files: bool = False,
        decoders: Any = None,
        read_config: tfds.ReadConfig | None = None,
    ) -> tf.data.Dataset:
        """The records of a split spec, the image left ENCODED (as TFDS' with
        `decoders={"image": tfds.decode.SkipDecoding()}`; other `decoders` are ignored).

        Detection: `{"image": string, "objects": {"bbox": float32 [N, 4] yxyx normalized,
        "label": int64 [N]}}`; classification: `{"image": string, "label": int64}`.

        `shuffle_files`: the images in a random order (seeded by `read_config.shuffle_seed`),
        reshuffled every pass. `read_config.input_context`: this input pipeline's share of
        the image files (every image file is a shard). When read, an image whose header
        size differs from its annotation's fails with an `InvalidArgumentError` naming the
        file; the image itself is not decoded here.
        """
        examples = self.examples(split)
        columns: dict[str, Any] = {
            "path": [e.path for e in examples],
            "source": [e.source for e in examples],
            "size": np.array([e.size or (-1, -1) for e in examples], np.int64).reshape(-1, 2),
        }
        if self.task == "classification":
            columns["label"] = np.array([e.label for e in examples], np.int64)
        else:
            lengths = [len(e.labels) for e in examples]
            columns["bbox"] = tf.RaggedTensor.from_row_lengths(
                np.concatenate([e.bbox for e in examples]).astype(np.float32), lengths
            )
            columns["labels"] = tf.RaggedTensor.from_row_lengths(
                np.concatenate([e.labels for e in examples]).astype(np.int64), lengths
            )
        dataset = tf.data.Dataset.from_tensor_slices(columns)
        context = getattr(read_config, "input_context", None)
        if context is not None and context.num_input_pipelines > 1:
            dataset = dataset.shard(context.num_input_pipelines, context.input_pipeline_id)
        if shuffle_files:
            seed = getattr(read_config, "shuffle_seed", None)
            dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
        return dataset.map(_load_record, num_parallel_calls=tf.data.AUTOTUNE)


def _features(task: str, class_names: list[str]) -> tfds.features.FeaturesDict:
    label = tfds.features.ClassLabel(names=class_names)
    if task == "classification":
        return tfds.features.FeaturesDict({"image": tfds.features.Image(), "label": label})
    objects = tfds.features.Sequence({"bbox": tfds.features.BBoxFeature(), "label": label})
    return tfds.features.FeaturesDict({"image": tfds.features.Image(), "objects": objects})


def _header_size_or_unknown(contents: tf.Tensor) -> tf.Tensor:
    """(height, width) int64 `[2]` from an encoded image's header; (-1, -1) when the header
    does not read (the decoder then fails on it and the input pipeline counts it)."""
    sizes = tf.data.Dataset.from_tensors(contents).map(image_io.header_size).ignore_errors()
    unknown = tf.data.Dataset.from_tensors(tf.constant([-1, -1], tf.int64))
    return sizes.concatenate(unknown).take(1).get_single_element()


def _load_record(row: dict[str, tf.Tensor]) -> dict[str, Any]:
    """Read one image file; its record (image left encoded), after the size check."""
    contents = tf.io.read_file(row["path"])
    expected = row["size"]
    actual = _header_size_or_unknown(contents)
    matches = tf.logical_or(
        tf.reduce_any(expected < 0),
        tf.logical_or(tf.reduce_any(actual < 0), tf.reduce_all(tf.equal(actual, expected))),
    )
    message = tf.strings.join(
        [
            row["path"],
            ": the image is ",
            tf.strings.as_string(actual[1]),
            "x",
            tf.strings.as_string(actual[0]),
            " px (width x height) but ",
            row["source"],
            " says ",
            tf.strings.as_string(expected[1]),
            "x",
            tf.strings.as_string(expected[0]),
            "; its boxes are normalized by the annotation's size, so they would be wrong. Fix "
            "the size in the annotations, or use the image that was labelled (a photo rotated "
            "by its EXIF orientation has width and height swapped).",
        ]
    )
    with tf.control_dependencies([tf.debugging.Assert(matches, [message])]):
        contents = tf.identity(contents)
    if "label" in row:
        return {"image": contents, "label": row["label"]}
    bbox = tf.reshape(tf.convert_to_tensor(row["bbox"]), [-1, 4])
    labels = tf.reshape(tf.convert_to_tensor(row["labels"]), [-1])
    return {"image": contents, "objects": {"bbox": bbox, "label": labels}}


# --- opening -------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """The format of a file dataset: "coco" (a `.json` file), "voc" (a folder with
    `Annotations/`) or "folders" (another folder). Raises `ValueError` when `path` does not
    exist or is another kind of file."""
    where = Path(path).expanduser()
    if where.is_file():
        if where.suffix.lower() == ".json":
            return "coco"
        raise ValueError(
            f"{path}: a dataset file must be COCO annotations (.json); for Pascal VOC give "
            "the folder holding Annotations/, for classification the folder of class folders."
        )
    if where.is_dir():
        return "voc" if (where / "Annotations").is_dir() else "folders"
    raise ValueError(
        f"{path}: no such file or folder. --dataset takes a TFDS name or a path: a COCO "
        ".json, a Pascal VOC folder (with Annotations/), or a folder of class folders."
    )


_cache: collections.OrderedDict[tuple, FileDataset] = collections.OrderedDict()


def open_dataset(path: str | os.PathLike, images: str | os.PathLike | None = None) -> FileDataset:
    """Read and check the annotations of a file dataset (the images are not decoded).

    Args:
        path: a COCO `.json`, a Pascal VOC folder (with `Annotations/`) or a folder of class
            folders (`detect_format`).
        images: the folder of the images of a COCO JSON (default: beside the JSON, or in
            `<json folder>/images/`) or of a VOC folder (default `JPEGImages/`); the commands'
            `--images` / `--data-dir`. Not for class folders.

    Returns:
        A `FileDataset`. COCO and VOC datasets are kept per process (up to `_CACHE_SIZE`),
        reread when an annotation file changes.

    Raises:
        ValueError: the path, the annotations or an image listed in them is not right; the
            message names the file and the fix.
    """
    kind = detect_format(path)
    root = Path(path).expanduser()
    folder = Path(images).expanduser() if images is not None else None
    if folder is not None and kind == "folders":
        raise ValueError(
            f"{path}: a folder of class folders holds its images; --images / --data-dir is "
            "for a COCO .json or a VOC folder whose images are elsewhere. Leave it out."
        )
    if folder is not None and not folder.is_dir():
        raise ValueError(f"{images}: the images folder given for {path} is not a folder.")
    if kind == "folders":
        return _read_folders(str(path), root)
    key = (kind, str(root.resolve()), str(folder.resolve()) if folder else None, _stamp(root))
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    reader = _read_coco if kind == "coco" else _read_voc
    dataset = reader(str(path), root, folder)
    _cache[key] = dataset
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return dataset


def _stamp(root: Path) -> tuple:
    """Changes when an annotation file changes: (size, mtime) of the JSON, or of every file
    under a VOC folder's Annotations/ and ImageSets/Main/."""
    if root.is_file():
        stat = root.stat()
        return (stat.st_size, stat.st_mtime_ns)
    stamps = []
    for sub in ("Annotations", "ImageSets/Main"):
        folder = root / sub
        if folder.is_dir():
            with os.scandir(folder) as entries:
                for entry in entries:
                    stat = entry.stat()
                    stamps.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(stamps))


def skipped_line(dataset: FileDataset) -> str | None:
    """One line saying what a file dataset left out or clipped; None when nothing was."""
    parts = [f"{count} {what}" for what, count in dataset.skipped.items()]
    text = f"left out {', '.join(parts)}" if parts else ""
    if dataset.clipped_boxes:
        count = dataset.clipped_boxes
        clipped = f"clipped {count} boxes to their image" if count > 1 else "clipped 1 box"
        text = f"{text}; {clipped}" if text else clipped
    return f"{dataset.name}: {text} (see overfeat_tf/data/files.py)." if text else None


# --- checks shared by the formats ----------------------------------------------------------


class _Problems:
    """The problems found in a dataset's annotations, raised together as one ValueError."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def raise_if_any(self, fix: str = "") -> None:
        if not self.items:
            return
        listed = self.items[:MAX_LISTED]
        more = len(self.items) - len(listed)
        text = "\n  ".join(listed) + (f"\n  ... and {more} more" if more else "")
        count = len(self.items)
        header = f"{self.where}: {count} problem{'s' if count > 1 else ''} in the annotations"
        raise ValueError(f"{header}:\n  {text}" + (f"\n{fix}" if fix else ""))


class _Boxes:
    """Pixel boxes -> normalized yxyx, checked against the image; counts what it changes."""

    def __init__(self, problems: _Problems) -> None:
        self.problems = problems
        self.skipped: collections.Counter[str] = collections.Counter()
        self.clipped = 0

    def normalized(
        self,
        xmin: float,
        ymin: float,
        xmax: float,
        ymax: float,
        width: float,
        height: float,
        what: str,
    ) -> list[float] | None:
        """The box (pixels, x right and y down, from 0 at the image's top-left corner to
        `width`, `height`) as `[ymin, xmin, ymax, xmax]` normalized to the image (0..1).

        None when it is not kept: max < min or more than `BOX_TOLERANCE` px outside the
        image (a problem, `what` names it), or zero width or height after clipping to the
        image (counted in `skipped`). A box at most `BOX_TOLERANCE` px outside is clipped
        (counted in `clipped`).
        """
        values = (xmin, ymin, xmax, ymax)
        shown = "[" + ", ".join(f"{v:g}" for v in values) + "]"
        if not all(math.isfinite(v) for v in values):
            self.problems.add(f"{what}: box {shown} has a non-finite coordinate.")
            return None
        if xmax < xmin or ymax < ymin:
            self.problems.add(f"{what}: box {shown} has max < min (xmin, ymin, xmax, ymax).")
            return None
        tol = BOX_TOLERANCE
        if xmin < -tol or ymin < -tol or xmax > width + tol or ymax > height + tol:
            self.problems.add(
                f"{what}: box {shown} (xmin, ymin, xmax, ymax px) is more than {tol:g} px "
                f"outside its {width:g}x{height:g} image."
            )
            return None
        clipped = (
            min(max(xmin, 0.0), width),
            min(max(ymin, 0.0), height),
            min(max(xmax, 0.0), width),
            min(max(ymax, 0.0), height),
        )
        if clipped != values:
            self.clipped += 1
        x0, y0, x1, y1 = clipped
        if x1 <= x0 or y1 <= y0:
            self.skipped[SKIPPED_ZERO_SIZE] += 1
            return None
        return [y0 / height, x0 / width, y1 / height, x1 / width]


def _detection_example(
    path: Path, key: str, source: str, boxes: list[list[float]], labels: list[int], size: tuple
) -> FileExample:
    return FileExample(
        path=str(path),
        key=key,
        source=source,
        bbox=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64).reshape(-1),
        size=(int(size[0]), int(size[1])),
    )


def _number(value: Any) -> float | None:
    """A JSON / XML number as a float; None when it is not one."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _check_nonempty(name: str, splits: dict[str, list[FileExample]], where: str) -> None:
    if not splits or not any(splits.values()):
        raise ValueError(f"{name}: no images in {where}; the dataset is empty.")
    empty = [split for split, examples in splits.items() if not examples]
    if empty:
        raise ValueError(
            f"{name}: the split{'s' if len(empty) > 1 else ''} {', '.join(empty)} list no "
            f"images ({where}); remove the empty split or add its images."
        )


# --- COCO ----------------------------------------------------------------------------------


def _load_json(path: Path, name: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{name}: not a readable JSON file ({error}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(
            f"{name}: not COCO annotations: expected an object with `images`, `annotations` "
            "and `categories` lists."
        )
    return data


def _coco_categories(data: dict[str, Any], name: str) -> tuple[dict[Any, int], list[str]]:
    """category id -> label (sorted ids), and the names."""
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise ValueError(
            f"{name}: no `categories`; COCO annotations list their classes as "
            '"categories": [{"id": 1, "name": "cat"}, ...].'
        )
    problems = _Problems(name)
    by_id: dict[Any, str] = {}
    for i, category in enumerate(categories):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            problems.add(f"categories[{i}] has no `id` and `name`.")
        elif category["id"] in by_id:
            problems.add(f"category id {category['id']!r} is listed twice.")
        else:
            by_id[category["id"]] = str(category["name"])
    problems.raise_if_any()
    try:
        ids = sorted(by_id)
    except TypeError:
        raise ValueError(f"{name}: category ids must all be integers.") from None
    names = [by_id[i] for i in ids]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"{name}: several categories are named {', '.join(map(repr, repeated))}; class "
            "names must be unique. Merge those categories or rename them."
        )
    return {c: i for i, c in enumerate(ids)}, names


def _coco_index(data: dict[str, Any]) -> Any:
    """pycocotools' index of the checked annotations (its progress lines silenced)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def _check_coco_records(data: dict[str, Any], name: str, label_of: dict[Any, int]) -> None:
    """Every image has id, file_name, width, height; every annotation id, image_id (a
    listed image), category_id (a listed category) and a bbox of 4 numbers."""
    problems = _Problems(name)
    image_ids = set()
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            problems.add(f"images[{i}] has no `id` and `file_name`.")
            continue
        if image["id"] in image_ids:
            problems.add(f"image id {image['id']!r} is listed twice.")
        image_ids.add(image["id"])
        sizes = [_number(image.get(k)) for k in ("width", "height")]
        if any(s is None or not s > 0 for s in sizes):
            problems.add(
                f"image {image['file_name']!r}: `width` and `height` (px) are needed to "
                f"normalize its boxes, got {image.get('width')!r} x {image.get('height')!r}."
            )
    annotations = data.setdefault("annotations", [])
    if not isinstance(annotations, list):
        problems.add("`annotations` is not a list.")
        annotations = data["annotations"] = []
    for i, ann in enumerate(annotations):
        what = f"annotation {ann.get('id', f'#{i}')!r}" if isinstance(ann, dict) else f"#{i}"
        if not isinstance(ann, dict) or any(k not in ann for k in ("id", "image_id")):
            problems.add(f"{what}: needs `id`, `image_id`, `category_id` and `bbox`.")
            continue
        if ann["image_id"] not in image_ids:
            problems.add(f"{what}: image_id {ann['image_id']!r} is not in `images`.")
        if ann.get("category_id") not in label_of:
            problems.add(
                f"{what}: category_id {ann.get('category_id')!r} is not in `categories` "
                f"(ids {', '.join(map(str, sorted(label_of)))})."
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or any(_number(v) is None for v in bbox):
            problems.add(f"{what}: `bbox` must be [x, y, width, height] in px, got {bbox!r}.")
    problems.raise_if_any(
        f"Fix {name}: every annotation's image_id and category_id must be listed in `images` "
        "and `categories`."
    )


def _listed(names: list[str]) -> str:
    """The first `MAX_LISTED` names, and how many more."""
    more = len(names) - MAX_LISTED
    return ", ".join(names[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def _find_image(file_name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    return None


def _read_coco(name: str, path: Path, images: Path | None) -> FileDataset:
    """A COCO JSON: one split "train" (see the module docstring)."""
    data = _load_json(path, name)
    label_of, names = _coco_categories(data, name)
    _check_coco_records(data, name, label_of)
    coco = _coco_index(data)
    folders = [images] if images is not None else [path.parent, path.parent / "images"]
    problems = _Problems(name)
    boxes = _Boxes(problems)
    missing: list[str] = []
    examples = []
    for image_id, image in coco.imgs.items():
        file_name = str(image["file_name"])
        found = _find_image(file_name, folders)
        if found is None:
            missing.append(file_name)
            continue
        width, height = float(image["width"]), float(image["height"])
        kept, labels = [], []
        for ann in coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                boxes.skipped[SKIPPED_CROWD] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            what = f"image {file_name!r}, annotation {ann['id']!r}"
            box = boxes.normalized(x, y, x + w, y + h, width, height, what)
            if box is not None:
                kept.append(box)
                labels.append(label_of[ann["category_id"]])
        size = (round(height), round(width))
        examples.append(_detection_example(found, file_name, name, kept, labels, size))
    if missing:
        looked = " and ".join(str(f) for f in folders)
        shown = _listed(missing)
        raise ValueError(
            f"{name}: {len(missing)} of its {len(coco.imgs)} images are not in {looked}: "
            f"{shown}. Put the images there, or give their folder with --images DIR "
            "(data_dir in Python)."
        )
    problems.raise_if_any(
        f"Fix these boxes in {name} (COCO boxes are [x, y, width, height] in px of the image "
        "whose `width` and `height` the image entry gives)."
    )
    splits = {"train": sorted(examples, key=lambda e: e.key)}
    _check_nonempty(name, splits, "its `images`")
    return FileDataset(name, "coco", names, splits, boxes.skipped, boxes.clipped)


# --- Pascal VOC ----------------------------------------------------------------------------


@dataclasses.dataclass
class _VocAnnotation:
    xml: Path
    filename: str | None
    width: float
    height: float
    # (name, xmin, ymin, xmax, ymax, difficult): the XML's values, px
    objects: list[tuple[str, float, float, float, float, bool]]


def _parse_voc_xml(xml: Path, problems: _Problems) -> _VocAnnotation | None:
    try:
        root = ElementTree.parse(xml).getroot()
    except (ElementTree.ParseError, OSError) as error:
        problems.add(f"{xml}: not readable XML ({error}).")
        return None
    width = _number(root.findtext("size/width"))
    height = _number(root.findtext("size/height"))
    if width is None or height is None or width <= 0 or height <= 0:
        problems.add(
            f"{xml}: <size> needs a positive <width> and <height> (px) to normalize its "
            f"boxes, got {root.findtext('size/width')!r} x {root.findtext('size/height')!r}."
        )
        return None
    objects = []
    for i, obj in enumerate(root.findall("object")):
        label = (obj.findtext("name") or "").strip()
        if not label:
            problems.add(f"{xml}: <object> #{i + 1} has no <name> (its class).")
            continue
        coords = [_number(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        if any(c is None for c in coords):
            problems.add(
                f"{xml}: <object> #{i + 1} ({label}) needs a <bndbox> with numbers <xmin>, "
                "<ymin>, <xmax>, <ymax>."
            )
            continue
        difficult = (obj.findtext("difficult") or "0").strip().lower() in ("1", "true")
        objects.append((label, *coords, difficult))
    filename = (root.findtext("filename") or "").strip() or None
    return _VocAnnotation(xml, filename, width, height, objects)


def _voc_split_files(root: Path) -> dict[str, Path]:
    """split name -> `ImageSets/Main/<split>.txt` (files of one id a line; the per-class
    `<class>_<split>.txt` lists, two columns, are not splits)."""
    main = root / "ImageSets" / "Main"
    if not main.is_dir():
        return {}
    splits = {}
    for txt in sorted(main.glob("*.txt")):
        lines = [line.split() for line in txt.read_text().splitlines() if line.strip()]
        if all(len(tokens) == 1 for tokens in lines):
            splits[VOC_SPLIT_NAMES.get(txt.stem, txt.stem)] = txt
    return splits


def _voc_image(annotation: _VocAnnotation, folder: Path) -> Path | None:
    """The image of a VOC annotation: its <filename>, else the XML's name with an image
    extension, in `folder`."""
    stem = annotation.xml.stem
    names = [annotation.filename] if annotation.filename else []
    names += [stem + ext for ext in IMAGE_EXTENSIONS]
    names += [stem + ext.upper() for ext in IMAGE_EXTENSIONS]
    return next((found for n in names if (found := _find_image(n, [folder]))), None)


def _read_voc(name: str, root: Path, images: Path | None) -> FileDataset:
    """A Pascal VOC folder (see the module docstring)."""
    annotations_dir = root / "Annotations"
    folder = images if images is not None else root / "JPEGImages"
    split_files = _voc_split_files(root)
    problems = _Problems(name)
    if split_files:
        ids = {}
        for split, txt in split_files.items():
            listed = [line.split()[0] for line in txt.read_text().splitlines() if line.strip()]
            ids[split] = list(dict.fromkeys(listed))
            for image_id in ids[split]:
                if not (annotations_dir / f"{image_id}.xml").is_file():
                    problems.add(f"{txt}: {image_id} has no Annotations/{image_id}.xml.")
        where = f"{root / 'ImageSets' / 'Main'}"
    else:
        ids = {"train": sorted(p.stem for p in annotations_dir.glob("*.xml"))}
        where = f"{annotations_dir} (no ImageSets/Main/<split>.txt: one split, train)"
    problems.raise_if_any("Add the missing annotation files, or remove those ids from the lists.")
    if not folder.is_dir():
        raise ValueError(
            f"{name}: no images folder {folder}; VOC images go in JPEGImages/, or give their "
            "folder with --images DIR (data_dir in Python)."
        )
    parsed: dict[str, _VocAnnotation | None] = {}
    for image_id in sorted({i for split_ids in ids.values() for i in split_ids}):
        parsed[image_id] = _parse_voc_xml(annotations_dir / f"{image_id}.xml", problems)
    problems.raise_if_any("Fix these annotation files (Pascal VOC XML).")
    found = {i: _voc_image(a, folder) for i, a in parsed.items() if a is not None}
    missing = [f"{a.filename or i} (for {a.xml.name})" for i, a in parsed.items() if not found[i]]
    if missing:
        shown = _listed(missing)
        raise ValueError(
            f"{name}: {len(missing)} images are not in {folder}: {shown}. Put them there, or "
            "give their folder with --images DIR (data_dir in Python)."
        )
    names = sorted({obj[0] for a in parsed.values() if a for obj in a.objects})
    if not names:
        raise ValueError(f"{name}: no <object> in any annotation; the dataset has no classes.")
    label_of = {n: i for i, n in enumerate(names)}
    boxes = _Boxes(problems)
    examples = {}
    for image_id, a in parsed.items():
        if a is None:
            continue
        kept, labels = [], []
        for label, xmin, ymin, xmax, ymax, difficult in a.objects:
            if difficult:
                boxes.skipped[SKIPPED_DIFFICULT] += 1
                continue
            box = boxes.normalized(xmin, ymin, xmax, ymax, a.width, a.height, f"{a.xml}: {label}")
            if box is not None:
                kept.append(box)
                labels.append(label_of[label])
        image = found[image_id]
        key = image.relative_to(folder).as_posix()
        size = (round(a.height), round(a.width))
        examples[image_id] = _detection_example(image, key, str(a.xml), kept, labels, size)
    problems.raise_if_any(
        "Fix these boxes (VOC boxes are <xmin> <ymin> <xmax> <ymax> in px of the image "
        "whose <size> the file gives)."
    )
    splits = {
        s: sorted((examples[i] for i in s_ids), key=lambda e: e.key) for s, s_ids in ids.items()
    }
    _check_nonempty(name, splits, where)
    return FileDataset(name, "voc", names, splits, boxes.skipped, boxes.clipped)


# --- class folders -------------------------------------------------------------------------


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _read_folders(name: str, root: Path) -> FileDataset:
    """Class folders, `root/<class>/` or `root/<split>/<class>/` (module docstring)."""
    subfolders = _subfolders(root)
    if not subfolders:
        raise ValueError(
            f"{name}: no class folders. A classification dataset is a folder of class "
            "folders (<class>/<image>, or <split>/<class>/<image>); a detection dataset is a "
            "COCO .json or a Pascal VOC folder (with Annotations/)."
        )
    stray = _image_files(root)
    if stray:
        raise ValueError(
            f"{name}: {len(stray)} images (e.g. {stray[0].name}) are not in a class folder; "
            "move them into the folder of their class."
        )
    if any(_image_files(sub) for sub in subfolders):
        layout = {"train": root}  # root/<class>/<image>
        empty = [sub.name for sub in subfolders if not _image_files(sub)]
        if empty:
            raise ValueError(
                f"{name}: the class folders {', '.join(empty)} hold no images (directly; "
                f"images: {', '.join(IMAGE_EXTENSIONS)}); remove them or add their images."
            )
    else:
        layout = {sub.name: sub for sub in subfolders}  # root/<split>/<class>/<image>
    class_folders = {split: _subfolders(folder) for split, folder in layout.items()}
    names = sorted({c.name for folders in class_folders.values() for c in folders})
    label_of = {n: i for i, n in enumerate(names)}
    splits: dict[str, list[FileExample]] = {}
    for split, folders in class_folders.items():
        examples = [
            FileExample(str(image), image.relative_to(root).as_posix(), str(c), label_of[c.name])
            for c in folders
            for image in _image_files(c)
        ]
        random.Random(split).shuffle(examples)  # TFDS ImageFolder's order
        splits[split] = examples
    where = f"{root} (images: {', '.join(IMAGE_EXTENSIONS)})"
    _check_nonempty(name, splits, where)
    return FileDataset(name, "folders", names, splits)

"""Real TFDS builders with the declared dependencies: `voc/2007` and `coco/2017` prepared by
TFDS's own builders from files in their release formats (real photos) written here, read
back, and one training step on each.

The builders fetch their archives with `dl_manager.download_and_extract({key: url})`: VOC two
tars (`VOCtrainval_06-Nov-2007.tar`, `VOCtest_06-Nov-2007.tar`, members
`VOCdevkit/VOC2007/{ImageSets/Main/<set>.txt, JPEGImages/<id>.jpg, Annotations/<id>.xml}`),
COCO five zips (`train2017.zip`, `val2017.zip`, `test2017.zip` with `<split>2017/<file>.jpg`,
`annotations_trainval2017.zip` with `annotations/instances_<split>2017.json`,
`image_info_test2017.zip`). The tests write those archives and point the download step at
them: `DownloadManager.download_and_extract` becomes TFDS's own `extract` of the local archive
named like each URL's last component. Only the network fetch and the checksum check against
the real archives (hundreds of MB) are skipped; the rest is TFDS's code.

Boxes: VOC `bndbox` pixels (xmin, ymin, xmax, ymax), COCO `bbox` pixels (x, y, width,
height); TFDS stores both as `BBox` normalized yxyx (ymin / H, xmin / W, ymax / H, xmax / W).
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from skimage import data as skdata

from overfeat_tf.data import tfds_io
from overfeat_tf.training import run as training
from overfeat_tf.utils import atomic

# --- real photos ---------------------------------------------------------------------------


def _photo(name: str, height: int, width: int) -> np.ndarray:
    """A `skimage.data` photo (chelsea 300x451, astronaut 512x512, coffee 400x600, rocket
    427x640) center-cropped to the aspect `width / height`, then resized to
    `[height, width, 3]` uint8 (PIL bicubic)."""
    image = getattr(skdata, name)()
    h, w = image.shape[:2]
    if w * height > h * width:  # too wide: crop the width
        crop = round(h * width / height)
        image = image[:, (w - crop) // 2 : (w - crop) // 2 + crop]
    else:
        crop = round(w * height / width)
        image = image[(h - crop) // 2 : (h - crop) // 2 + crop]
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def _write_jpeg(path: Path, photo: str, height: int, width: int) -> None:
    with atomic.atomic_path(path) as tmp:
        Image.fromarray(_photo(photo, height, width)).save(tmp, "JPEG", quality=92)


def _pixels(fractions: tuple[float, ...], height: int, width: int) -> tuple[int, ...]:
    """(xmin, ymin, xmax, ymax) integer pixels of a box given as fractions of the image."""
    x0, y0, x1, y1 = fractions
    return (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))


def _local_download_and_extract(archives: dict[str, Path]) -> Callable[..., Any]:
    """A `DownloadManager.download_and_extract` that extracts, with TFDS's extractor, the local
    archive named like each URL's last component instead of fetching the URL."""

    def download_and_extract(self: tfds.download.DownloadManager, url_or_urls: Any) -> Any:
        def local(url: str) -> Path:
            name = url.rsplit("/", 1)[-1]
            if name not in archives:
                raise ValueError(f"The test has no local file for {url}; write {name}.")
            return archives[name]

        return self.extract(tf.nest.map_structure(local, url_or_urls))

    return download_and_extract


def _prepare(name: str, archives: dict[str, Path], data_dir: Path) -> tfds.core.DatasetBuilder:
    """`download_and_prepare` TFDS's builder `name` in `data_dir` from local `archives`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            tfds.download.DownloadManager,
            "download_and_extract",
            _local_download_and_extract(archives),
        )
        builder = tfds.builder(name, data_dir=str(data_dir))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return builder


# --- VOC2007 -------------------------------------------------------------------------------

VOC = "voc/2007"
VOC_TARS = {"trainval": "VOCtrainval_06-Nov-2007.tar", "test": "VOCtest_06-Nov-2007.tar"}
VOC_SETS = {"trainval": ("train", "val", "trainval"), "test": ("test",)}
VOC_SPLITS = {"train": "train", "validation": "val", "test": "test"}  # TFDS split: VOC set
# (image id, photo, (height, width) px, VOC set, objects: (class, box as fractions
# (xmin, ymin, xmax, ymax) of the width / height, difficult)). Boxes cover most of the image.
VOC_PHOTOS = (
    ("000005", "chelsea", (375, 500), "train", [("cat", (0.12, 0.06, 0.94, 1.0), False)]),
    (
        "000007",
        "astronaut",
        (500, 375),
        "train",
        [("person", (0.04, 0.08, 0.98, 1.0), False), ("bottle", (0.7, 0.1, 0.8, 0.3), True)],
    ),
    ("000009", "coffee", (333, 500), "val", [("diningtable", (0.02, 0.05, 0.97, 0.96), False)]),
    ("000012", "rocket", (375, 500), "test", [("person", (0.3, 0.1, 0.7, 0.9), False)]),
)


def _voc_annotation(image_id: str, height: int, width: int, objects: list) -> str:
    """A VOC2007 `Annotations/<id>.xml` (pixel boxes, 1-based: xmin, ymin >= 1)."""
    parts = [
        "<annotation>",
        "  <folder>VOC2007</folder>",
        f"  <filename>{image_id}.jpg</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for label, fractions, difficult in objects:
        xmin, ymin, xmax, ymax = _pixels(fractions, height, width)
        parts += [
            "  <object>",
            f"    <name>{label}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{int(difficult)}</difficult>",
            f"    <bndbox><xmin>{max(xmin, 1)}</xmin><ymin>{max(ymin, 1)}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
            "  </object>",
        ]
    return "\n".join([*parts, "</annotation>", ""])


def write_voc_tars(root: Path) -> dict[str, Path]:
    """Write VOC2007's trainval and test trees under `root` and pack them as the tars TFDS's
    builder downloads. Returns {tar name: path}."""
    tars = {}
    for archive, set_names in VOC_SETS.items():
        devkit = root / archive / "VOCdevkit" / "VOC2007"
        ids: dict[str, list[str]] = {name: [] for name in set_names}
        for image_id, photo, (height, width), set_name, objects in VOC_PHOTOS:
            if set_name not in set_names:
                continue
            ids[set_name].append(image_id)
            if "trainval" in ids:
                ids["trainval"].append(image_id)
            _write_jpeg(devkit / "JPEGImages" / f"{image_id}.jpg", photo, height, width)
            xml = _voc_annotation(image_id, height, width, objects)
            atomic.write_text(devkit / "Annotations" / f"{image_id}.xml", xml)
        for set_name, names in ids.items():
            lines = "".join(f"{i}\n" for i in names)
            atomic.write_text(devkit / "ImageSets" / "Main" / f"{set_name}.txt", lines)
        path = root / VOC_TARS[archive]
        with atomic.atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
            tar.add(root / archive / "VOCdevkit", arcname="VOCdevkit")
        tars[path.name] = path
    return tars


def _voc_expected(set_name: str) -> dict[str, tuple]:
    """{file name: (image shape, boxes `[N, 4]` normalized yxyx, class names, difficult)}."""
    out = {}
    for image_id, _, (height, width), name, objects in VOC_PHOTOS:
        if name == set_name:
            boxes = []
            for _, fractions, _ in objects:
                xmin, ymin, xmax, ymax = _pixels(fractions, height, width)
                xmin, ymin = max(xmin, 1), max(ymin, 1)
                boxes.append([ymin / height, xmin / width, ymax / height, xmax / width])
            labels = [o[0] for o in objects]
            difficult = [o[2] for o in objects]
            out[f"{image_id}.jpg"] = ((height, width, 3), np.array(boxes), labels, difficult)
    return out


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """(TFDS data dir with `voc/2007` prepared by TFDS's builder, {tar name: tar path})."""
    root = tmp_path_factory.mktemp("voc")
    tars = write_voc_tars(root / "files")
    _prepare(VOC, tars, root / "tfds")
    return root / "tfds", tars


def test_voc2007_prepared_by_tfds_from_voc_files(voc: tuple[Path, dict[str, Path]]):
    data_dir, tars = voc
    builder = tfds.builder(VOC, data_dir=str(data_dir))
    assert builder.is_prepared()
    names = tfds_io.class_names(builder)
    assert len(names) == 20 and names[7] == "cat" and names[14] == "person"
    with (
        tarfile.open(tars[VOC_TARS["trainval"]]) as trainval,
        tarfile.open(tars[VOC_TARS["test"]]) as test,
    ):
        for split, set_name in VOC_SPLITS.items():
            expected = _voc_expected(set_name)
            assert builder.info.splits[split].num_examples == len(expected)
            seen = []
            for example in tfds.as_numpy(builder.as_dataset(split=split)):
                filename = example["image/filename"].decode()
                shape, boxes, labels, difficult = expected[filename]
                seen.append(filename)
                assert example["image"].shape == shape
                # The stored image is the JPEG written: decoded pixels equal.
                tar = test if set_name == "test" else trainval
                jpeg = tar.extractfile(f"VOCdevkit/VOC2007/JPEGImages/{filename}").read()
                np.testing.assert_array_equal(example["image"], tf.io.decode_jpeg(jpeg).numpy())
                np.testing.assert_allclose(example["objects"]["bbox"], boxes, atol=1e-6)
                assert [names[i] for i in example["objects"]["label"]] == labels
                np.testing.assert_array_equal(example["objects"]["is_difficult"], difficult)
            assert sorted(seen) == sorted(expected)


# --- COCO 2017 -----------------------------------------------------------------------------

COCO = "coco/2017"
# COCO's category names by id 1..90 ("-": an id the 80 categories skip), as in the files.
_COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light "
    "fire_hydrant - stop_sign parking_meter bench bird cat dog horse sheep cow elephant "
    "bear zebra giraffe - backpack umbrella - - handbag tie suitcase frisbee skis "
    "snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle - wine_glass cup fork knife spoon bowl banana apple sandwich "
    "orange broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed - "
    "dining_table - - toilet - tv laptop mouse remote keyboard cell_phone microwave "
    "oven toaster sink refrigerator - book clock vase scissors teddy_bear hair_drier "
    "toothbrush"
).split()
COCO_CATEGORIES = tuple(
    (i, name.replace("_", " ")) for i, name in enumerate(_COCO_NAMES, start=1) if name != "-"
)
COCO_IDS = {name: i for i, name in COCO_CATEGORIES}
# (image id, photo, (height, width) px, split, objects: (category, box as fractions
# (xmin, ymin, xmax, ymax))). The test split has no annotations (image_info only).
COCO_PHOTOS = (
    (139, "chelsea", (480, 640), "train", [("cat", (0.1, 0.05, 0.95, 1.0))]),
    (285, "astronaut", (640, 480), "train", [("person", (0.05, 0.1, 0.97, 1.0))]),
    (632, "coffee", (427, 640), "val", [("cup", (0.08, 0.04, 0.93, 0.97))]),
    (1000, "rocket", (480, 640), "test", []),
)
COCO_SPLITS = ("train", "val", "test")


def _coco_json(split: str) -> dict[str, Any]:
    """instances_<split>2017.json (image_info_test2017.json for test): COCO boxes are pixel
    (x, y, width, height)."""
    images, annotations = [], []
    for image_id, _, (height, width), name, objects in COCO_PHOTOS:
        if name != split:
            continue
        file_name = f"{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for label, fractions in objects:
            xmin, ymin, xmax, ymax = _pixels(fractions, height, width)
            w, h = xmax - xmin, ymax - ymin
            annotations.append(
                {
                    "id": 10 * image_id + len(annotations),
                    "image_id": image_id,
                    "category_id": COCO_IDS[label],
                    "bbox": [float(xmin), float(ymin), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                    "segmentation": [[xmin, ymin, xmax, ymin, xmax, ymax, xmin, ymax]],
                }
            )
    categories = [{"id": i, "name": n, "supercategory": "-"} for i, n in COCO_CATEGORIES]
    out = {"info": {"year": 2017}, "images": images, "categories": categories}
    if split != "test":
        out["annotations"] = annotations
    return out


def write_coco_zips(root: Path) -> dict[str, Path]:
    """Write the COCO 2017 image and annotation zips TFDS's builder downloads; {name: path}."""
    zips = {}

    def write_zip(name: str, members: dict[str, Path | str]) -> None:
        with atomic.atomic_path(root / name) as tmp, zipfile.ZipFile(tmp, "w") as archive:
            for arcname, content in members.items():
                if isinstance(content, Path):
                    archive.write(content, arcname)
                else:
                    archive.writestr(arcname, content)
        zips[name] = root / name

    for split in COCO_SPLITS:
        members: dict[str, Path | str] = {}
        for image_id, photo, (height, width), name, _ in COCO_PHOTOS:
            if name == split:
                path = root / "images" / f"{split}2017" / f"{image_id:012d}.jpg"
                _write_jpeg(path, photo, height, width)
                members[f"{split}2017/{path.name}"] = path
        write_zip(f"{split}2017.zip", members)
    trainval = {
        f"annotations/instances_{s}2017.json": json.dumps(_coco_json(s)) for s in ("train", "val")
    }
    write_zip("annotations_trainval2017.zip", trainval)
    test_info = {"annotations/image_info_test2017.json": json.dumps(_coco_json("test"))}
    write_zip("image_info_test2017.zip", test_info)
    return zips


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TFDS data dir with `coco/2017` prepared by TFDS's builder from `write_coco_zips`."""
    root = tmp_path_factory.mktemp("coco")
    _prepare(COCO, write_coco_zips(root / "files"), root / "tfds")
    return root / "tfds"


def test_coco2017_prepared_by_tfds_from_coco_files(coco: Path):
    builder = tfds.builder(COCO, data_dir=str(coco))
    names = tfds_io.class_names(builder)
    assert names == [n for _, n in COCO_CATEGORIES]
    for split, coco_split in (("train", "train"), ("validation", "val"), ("test", "test")):
        expected = {
            f"{i:012d}.jpg": (shape, objects)
            for i, _, shape, name, objects in COCO_PHOTOS
            if name == coco_split
        }
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert sorted(e["image/filename"].decode() for e in examples) == sorted(expected)
        for example in examples:
            (height, width), objects = expected[example["image/filename"].decode()]
            assert example["image"].shape == (height, width, 3)
            boxes = [_pixels(f, height, width) for _, f in objects]
            yxyx = [[y0 / height, x0 / width, y1 / height, x1 / width] for x0, y0, x1, y1 in boxes]
            np.testing.assert_allclose(
                example["objects"]["bbox"], np.reshape(yxyx, (-1, 4)), atol=1e-6
            )
            assert [names[i] for i in example["objects"]["label"]] == [o[0] for o in objects]


# --- training on them ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "fixture", "num_classes"), [(VOC, "voc", 20), (COCO, "coco", 80)]
)
def test_one_training_step(
    dataset: str, fixture: str, num_classes: int, request: pytest.FixtureRequest, tmp_path: Path
):
    """`train` on the prepared builder (classify: each image's largest box's class)."""
    prepared = request.getfixturevalue(fixture)
    data_dir = prepared[0] if isinstance(prepared, tuple) else prepared
    config = training.TrainConfig(
        model="tiny",
        task="classify",
        dataset=dataset,
        data_dir=str(data_dir),
        output=str(tmp_path / "run"),
        epochs=1,
        steps_per_epoch=1,
        batch_size=2,
        init="he_normal",
        learning_rate=0.01,
        shuffle_buffer=4,
        mixed_precision="float32",
        verbose=0,
    )
    result = training.train(config)
    assert result["final_step"] == 1 and result["epochs_run"] == 1
    assert result["num_classes"] == num_classes and result["corrupt_records"] == 0
    assert np.isfinite(result["logs"]["loss"]) and result["logs"]["loss"] > 0
    assert Path(result["model_path"]).is_file()

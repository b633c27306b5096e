"""Datasets read from files (`overfeat_tf.data.files`): COCO JSON, Pascal VOC folders and
class folders built here from scikit-image's photos give the records a TFDS dataset gives;
bad annotations are rejected with the file named; train.py trains from each format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import train
from overfeat_tf.architecture.config import TINY
from overfeat_tf.data import files, spatial, tfds_io
from overfeat_tf.data import inputs as data
from overfeat_tf.evaluation import detection as detection_eval
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.training.callbacks import DetectionMAP
from overfeat_tf.training.config import TrainConfig, holdout_splits

# file name -> (photo, hand-drawn objects: (class, x, y, width, height) in px). camera is a
# grayscale PNG, logo an RGBA PNG without objects.
PHOTOS: dict[str, tuple[str, list[tuple[str, float, float, float, float]]]] = {
    "astronaut.jpg": ("astronaut", [("person", 120, 15, 270, 497), ("flag", 0, 0, 150, 240)]),
    "camera.png": ("camera", [("person", 180, 40, 200, 400)]),
    "chelsea.png": ("chelsea", [("cat", 80, 20, 300, 280)]),
    "coffee.jpg": ("coffee", [("cup", 130, 40, 370, 300)]),
    "logo.png": ("logo", []),
    "rocket.jpg": ("rocket", [("rocket", 280, 20, 90, 390)]),
}
# COCO category ids, not in the names' order: labels follow the sorted ids
CATEGORY_IDS = {"person": 1, "rocket": 5, "cat": 17, "cup": 47, "flag": 60}
COCO_NAMES = ["person", "rocket", "cat", "cup", "flag"]


def _photo(name: str) -> np.ndarray:
    return getattr(skimage.data, name)()


def _write_photos(folder: Path, names: list[str] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for file_name in names or PHOTOS:
        Image.fromarray(_photo(PHOTOS[file_name][0])).save(folder / file_name, quality=90)


def _size(file_name: str) -> tuple[int, int]:
    """(height, width) of a photo."""
    return _photo(PHOTOS[file_name][0]).shape[:2]


def _coco(with_crowd: bool = True, clipped: bool = True) -> dict[str, Any]:
    """COCO annotations of `PHOTOS`; a crowd box on the astronaut, the rocket's box 0.5 px
    beyond the image's right edge (clipped)."""
    images, annotations = [], []
    for image_id, (file_name, (_, objects)) in enumerate(sorted(PHOTOS.items()), start=1):
        height, width = _size(file_name)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for name, x, y, w, h in objects:
            if clipped and name == "rocket":
                x, w = width - 60, 60.5
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[name],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    if with_crowd:
        annotations.append(
            {"id": 99, "image_id": 1, "category_id": 1, "bbox": [0, 300, 100, 100], "iscrowd": 1}
        )
    categories = [{"id": i, "name": n} for n, i in CATEGORY_IDS.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def _expected_coco(annotations: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """file name -> (boxes yxyx normalized, labels), from the JSON, in NumPy."""
    ids = sorted(c["id"] for c in annotations["categories"])
    expected = {}
    for image in annotations["images"]:
        width, height = image["width"], image["height"]
        boxes, labels = [], []
        for ann in annotations["annotations"]:
            if ann["image_id"] != image["id"] or ann["iscrowd"]:
                continue
            x, y, w, h = np.asarray(ann["bbox"], np.float64)
            x0, x1 = np.clip([x, x + w], 0, width) / width
            y0, y1 = np.clip([y, y + h], 0, height) / height
            boxes.append([y0, x0, y1, x1])
            labels.append(ids.index(ann["category_id"]))
        expected[image["file_name"]] = (np.reshape(boxes, (-1, 4)), np.asarray(labels))
    return expected


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photos, written once: JPEG, PNG (one grayscale, one RGBA)."""
    folder = tmp_path_factory.mktemp("photos")
    _write_photos(folder)
    return folder


@pytest.fixture
def coco_json(tmp_path: Path, photos: Path) -> Path:
    """`<tmp>/coco/labels.json`, the images in `<tmp>/coco/images/`."""
    shutil.copytree(photos, tmp_path / "coco" / "images")
    path = tmp_path / "coco" / "labels.json"
    path.write_text(json.dumps(_coco()))
    return path


def _voc_xml(file_name: str, objects: list[tuple], size: tuple[int, int] | None) -> str:
    parts = [f"<annotation><folder>JPEGImages</folder><filename>{file_name}</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[1]}</width><height>{size[0]}</height></size>")
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _voc_objects(file_name: str) -> list[tuple]:
    """The photo's objects as VOC pixel boxes (1-based, inclusive); the rocket photo gets a
    difficult person."""
    objects = [(n, x + 1, y + 1, x + w, y + h, 0) for n, x, y, w, h in PHOTOS[file_name][1]]
    if file_name == "rocket.jpg":
        objects.append(("person", 10, 300, 40, 400, 1))
    return objects


def _make_voc(root: Path, photos: Path, image_sets: dict[str, list[str]] | None) -> Path:
    shutil.copytree(photos, root / "JPEGImages")
    (root / "Annotations").mkdir()
    for file_name in PHOTOS:
        xml = _voc_xml(file_name, _voc_objects(file_name), _size(file_name))
        (root / "Annotations" / f"{Path(file_name).stem}.xml").write_text(xml)
    if image_sets is not None:
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True)
        for split, ids in image_sets.items():
            (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        (main / "cat_train.txt").write_text("astronaut -1\nchelsea  1\n")  # a per-class list
    return root


VOC_SETS = {"train": ["astronaut", "chelsea", "coffee"], "val": ["camera", "rocket", "logo"]}


@pytest.fixture
def voc_dir(tmp_path: Path, photos: Path) -> Path:
    return _make_voc(tmp_path / "voc", photos, VOC_SETS)


def _records(name: str | Path, split: str = "train", **kwargs: Any) -> list[dict[str, Any]]:
    dataset = tfds_io.raw_split(str(name), split, **kwargs)
    return list(tfds.as_numpy(dataset))


def _by_image(records: list[dict[str, Any]], folder: Path) -> dict[str, dict[str, Any]]:
    """Records keyed by the photo whose bytes they hold."""
    contents = {p.read_bytes(): p.name for p in folder.iterdir() if p.is_file()}
    return {contents[r["image"]]: r for r in records}


def _assert_objects(record: dict[str, Any], boxes: np.ndarray, labels: np.ndarray) -> None:
    assert record["objects"]["bbox"].dtype == np.float32
    assert record["objects"]["label"].dtype == np.int64
    np.testing.assert_allclose(record["objects"]["bbox"], boxes, atol=1e-6)
    np.testing.assert_array_equal(record["objects"]["label"], labels)


# --- COCO ------------------------------------------------------------------------------------


def test_coco_records_are_tfds_records_of_the_json(coco_json: Path):
    builder = tfds_io.load_builder(str(coco_json))
    assert tfds_io.class_names(builder) == COCO_NAMES  # labels in sorted category id order
    assert tfds_io.num_examples(builder, "train") == len(PHOTOS)
    records = _records(coco_json)
    # sorted by file name; every image kept, the logo without objects
    images = coco_json.parent / "images"
    assert [r["image"] for r in records] == [(images / n).read_bytes() for n in sorted(PHOTOS)]
    expected = _expected_coco(json.loads(coco_json.read_text()))
    for record, file_name in zip(records, sorted(PHOTOS), strict=True):
        _assert_objects(record, *expected[file_name])
    assert len(records[sorted(PHOTOS).index("astronaut.jpg")]["objects"]["label"]) == 2  # crowd
    assert records[sorted(PHOTOS).index("logo.png")]["objects"]["bbox"].shape == (0, 4)
    assert builder.skipped == {"crowd boxes": 1} and builder.clipped_boxes == 1
    assert files.skipped_line(builder) == (
        f"{coco_json}: left out 1 crowd boxes; clipped 1 box (see overfeat_tf/data/files.py)."
    )


def test_coco_images_folder_given_and_zero_size_boxes_counted(tmp_path: Path, photos: Path):
    annotations = _coco(with_crowd=False, clipped=False)
    annotations["annotations"][0]["bbox"][2] = 0  # zero width: left out, counted
    path = tmp_path / "annotations" / "labels.json"
    path.parent.mkdir()
    path.write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match=r"6 of its 6 images are not in .*--images DIR"):
        tfds_io.load_builder(str(path))
    builder = tfds_io.load_builder(str(path), data_dir=str(photos))
    assert builder.skipped == {"zero-size boxes": 1} and builder.clipped_boxes == 0
    records = _by_image(_records(path, data_dir=str(photos)), photos)
    expected = _expected_coco(annotations)
    astronaut = expected["astronaut.jpg"]
    _assert_objects(records["astronaut.jpg"], astronaut[0][1:], astronaut[1][1:])
    _assert_objects(records["coffee.jpg"], *expected["coffee.jpg"])


def test_a_photo_of_another_size_than_its_annotation_fails_naming_it(coco_json: Path):
    annotations = json.loads(coco_json.read_text())
    annotations["images"][2]["width"] += 10  # chelsea.png
    path = coco_json.with_name("wrong_size.json")
    path.write_text(json.dumps(annotations))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"chelsea.png: the image is 451x300"):
        _records(path)


def test_an_undecodable_image_is_counted_by_the_pipeline(coco_json: Path):
    (coco_json.parent / "images" / "coffee.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    counter = data.CorruptRecordCounter()
    decoded = list(detection_eval.detection_split(str(coco_json), "train", counter=counter))
    assert counter.value() == 1 and len(decoded) == len(PHOTOS) - 1
    # the grayscale and RGBA PNGs decode to RGB like the others
    assert sorted(tuple(image.shape) for image, *_ in decoded) == sorted(
        (*_size(n), 3) for n in PHOTOS if n != "coffee.jpg"
    )


BAD_COCO = {
    "missing image": (
        lambda a: a["images"][0].update(file_name="nowhere.jpg"),
        r"labels.json: 1 of its 6 images are not in .*nowhere.jpg",
    ),
    "unknown category": (
        lambda a: a["annotations"][0].update(category_id=99),
        r"(?s)labels.json: 1 problem.*annotation 1: category_id 99 is not in `categories`",
    ),
    "unknown image": (
        lambda a: a["annotations"][0].update(image_id=77),
        r"annotation 1: image_id 77 is not in `images`",
    ),
    "box outside": (
        lambda a: a["annotations"][1].update(bbox=[400, 0, 200, 50]),
        r"'astronaut.jpg', annotation 2: box \[400, 0, 600, 50\] .* more than 1 px outside "
        r"its 512x512 image",
    ),
    "negative width": (
        lambda a: a["annotations"][1].update(bbox=[40, 10, -20, 50]),
        r"annotation 2: box \[40, 10, 20, 60\] has max < min",
    ),
    "no size": (lambda a: a["images"][1].pop("width"), r"'camera.png': `width` and `height`"),
    "duplicate names": (
        lambda a: a["categories"][1].update(name="person"),
        r"several categories are named 'person'",
    ),
    "no images": (lambda a: a.update(images=[], annotations=[]), r"no images .*empty"),
    "not COCO": (lambda a: a.pop("images"), r"not COCO annotations"),
}


@pytest.mark.parametrize("kind", list(BAD_COCO))
def test_bad_coco_annotations_are_rejected_naming_the_file(kind: str, coco_json: Path):
    change, message = BAD_COCO[kind]
    annotations = json.loads(coco_json.read_text())
    change(annotations)
    coco_json.write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match=message):
        tfds_io.load_builder(str(coco_json))


# --- Pascal VOC ------------------------------------------------------------------------------


def _expected_voc(file_name: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """TFDS voc's conversion ([ymin / H, xmin / W, ymax / H, xmax / W] of the XML's pixel
    values), difficult objects left out."""
    height, width = _size(file_name)
    kept = [o for o in _voc_objects(file_name) if not o[5]]
    boxes = [
        [ymin / height, xmin / width, ymax / height, xmax / width]
        for _, xmin, ymin, xmax, ymax, _ in kept
    ]
    return np.reshape(boxes, (-1, 4)), np.asarray([names.index(o[0]) for o in kept])


def test_voc_records_splits_and_difficult_objects(voc_dir: Path):
    builder = tfds_io.load_builder(str(voc_dir))
    names = ["cat", "cup", "flag", "person", "rocket"]  # of every split, sorted
    assert tfds_io.class_names(builder) == names
    assert dict(builder.info.splits.items()).keys() == {"train", "validation"}  # val.txt
    assert [tfds_io.num_examples(builder, s) for s in ("train", "validation")] == [3, 3]
    assert builder.skipped == {"difficult objects": 1}
    images = voc_dir / "JPEGImages"
    for split, ids in VOC_SETS.items():
        records = _records(voc_dir, "validation" if split == "val" else split)
        file_names = sorted(n for n in PHOTOS if Path(n).stem in ids)
        assert [r["image"] for r in records] == [(images / n).read_bytes() for n in file_names]
        for record, file_name in zip(records, file_names, strict=True):
            _assert_objects(record, *_expected_voc(file_name, names))


def test_voc_without_image_sets_is_one_train_split(tmp_path: Path, photos: Path):
    root = _make_voc(tmp_path / "voc", photos, None)
    builder = tfds_io.load_builder(str(root))
    assert list(builder.info.splits) == ["train"] and builder.info.splits["train"].num_examples == 6
    with pytest.raises(ValueError, match=r"split 'test': Unknown split .* Its splits: train"):
        _records(root, "test")


BAD_VOC = {
    "no name": (
        "chelsea",
        lambda xml: xml.replace("<name>cat</name>", ""),
        r"chelsea.xml: <object> #1 has no <name>",
    ),
    "no size": (
        "coffee",
        lambda xml: xml.replace("<width>600</width>", ""),
        r"coffee.xml: <size> needs a positive <width> and <height>",
    ),
    "broken xml": ("astronaut", lambda xml: xml[:-5], r"astronaut.xml: not readable XML"),
    "box outside": (
        "chelsea",
        lambda xml: xml.replace("<xmax>380</xmax>", "<xmax>460</xmax>"),
        r"chelsea.xml: cat: box \[81, 21, 460, 300\] .* outside its 451x300 image",
    ),
    "inverted box": (
        "chelsea",
        lambda xml: xml.replace("<xmax>380</xmax>", "<xmax>50</xmax>"),
        r"chelsea.xml: cat: box .* has max < min",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_VOC))
def test_bad_voc_annotations_are_rejected_naming_the_file(kind: str, voc_dir: Path):
    stem, change, message = BAD_VOC[kind]
    xml = voc_dir / "Annotations" / f"{stem}.xml"
    xml.write_text(change(xml.read_text()))
    with pytest.raises(ValueError, match=message):
        tfds_io.load_builder(str(voc_dir))


def test_voc_lists_and_images_are_checked(voc_dir: Path):
    main = voc_dir / "ImageSets" / "Main"
    (main / "test.txt").write_text("astronaut\nmoon\n")
    with pytest.raises(ValueError, match=r"test.txt: moon has no Annotations/moon.xml"):
        tfds_io.load_builder(str(voc_dir))
    (main / "test.txt").write_text("")
    with pytest.raises(ValueError, match=r"the split test list no images"):
        tfds_io.load_builder(str(voc_dir))
    (main / "test.txt").unlink()
    (voc_dir / "JPEGImages" / "coffee.jpg").unlink()
    with pytest.raises(ValueError, match=r"1 images are not in .*JPEGImages: coffee.jpg"):
        tfds_io.load_builder(str(voc_dir))


# --- class folders ---------------------------------------------------------------------------

CLASSES = {
    "cat": ["chelsea.png"],
    "person": ["astronaut.jpg", "camera.png"],
    "thing": ["coffee.jpg", "logo.png", "rocket.jpg"],
}


def _class_tree(root: Path, photos: Path) -> Path:
    for name, file_names in CLASSES.items():
        (root / name).mkdir(parents=True)
        for file_name in file_names:
            shutil.copy(photos / file_name, root / name / file_name)
    return root


def test_class_folders_are_tfds_image_folder_records(tmp_path: Path, photos: Path):
    # root/<split>/<class>/: the records of TFDS' own ImageFolder, in its order
    for split in ("train", "test"):
        _class_tree(tmp_path / "tree" / split, photos)
    root = tmp_path / "tree"
    builder = tfds_io.load_builder(str(root))
    assert tfds_io.class_names(builder) == sorted(CLASSES)
    reference = tfds.folder_dataset.ImageFolder(str(root))
    for split in ("train", "test"):
        ours = _records(root, split)
        theirs = tfds.as_numpy(
            reference.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        )
        pairs = list(zip(ours, theirs, strict=True))
        assert len(pairs) == 6 and all(sorted(a) == ["image", "label"] for a, _ in pairs)
        assert all(a["image"] == b["image"] and a["label"] == b["label"] for a, b in pairs)
    # root/<class>/: one split, train
    flat = _class_tree(tmp_path / "flat", photos)
    records = _by_image(_records(flat), photos)
    assert {n: int(r["label"]) for n, r in records.items()} == {
        f: sorted(CLASSES).index(c) for c, fs in CLASSES.items() for f in fs
    }


def test_bad_class_folders_are_rejected(tmp_path: Path, photos: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no class folders"):
        tfds_io.load_builder(str(tmp_path / "empty"))
    root = _class_tree(tmp_path / "tree", photos)
    shutil.copy(photos / "coffee.jpg", root)
    with pytest.raises(ValueError, match=r"1 images \(e.g. coffee.jpg\) are not in a class"):
        tfds_io.load_builder(str(root))
    (root / "coffee.jpg").unlink()
    with pytest.raises(ValueError, match=r"holds its images; .* Leave it out"):
        tfds_io.load_builder(str(root), data_dir=str(photos))


# --- splits, slices, names -------------------------------------------------------------------


def test_slices_partition_a_split_in_a_fixed_order(coco_json: Path):
    everything = [r["image"] for r in _records(coco_json)]
    first, second = (
        [r["image"] for r in _records(coco_json, s)] for s in ("train[:50%]", "train[50%:]")
    )
    assert first + second == everything and len(first) == 3
    assert [r["image"] for r in _records(coco_json, "train[:50%]")] == first  # deterministic
    assert [r["image"] for r in _records(coco_json, "train[-2:]")] == everything[-2:]
    builder = tfds_io.load_builder(str(coco_json))
    assert tfds_io.num_examples(builder, "train[:90%]") == 5
    assert builder.info.splits["train[90%:]"].num_shards == 1
    with pytest.raises(ValueError, match=r"selects no images"):
        builder.as_dataset("train[50%:40%]")
    with pytest.raises(ValueError, match=r"split 'validation'.* Its splits: train"):
        tfds_io.num_examples(builder, "validation")
    assert "train[:3]" in builder.info.splits and "validation" not in builder.info.splits
    # shuffled reading: the same images, in another order
    shuffled = builder.as_dataset(
        "train", shuffle_files=True, read_config=tfds.ReadConfig(shuffle_seed=3)
    )
    assert sorted(r["image"] for r in tfds.as_numpy(shuffled)) == sorted(everything)


def test_val_split_fraction_holds_out_the_end_of_the_split():
    assert holdout_splits("train", "0.1") == ("train[:90%]", "train[90%:]")
    assert holdout_splits("train", 0.125) == ("train[:87.5%]", "train[87.5%:]")
    assert holdout_splits("train", "validation") == ("train", "validation")
    assert holdout_splits("train", "train[95%:]") == ("train", "train[95%:]")
    config = TrainConfig(model="tiny", val_split="0.2")
    assert (config.split, config.val_split) == ("train[:80%]", "train[80%:]")
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        holdout_splits("train", "1.5")
    with pytest.raises(ValueError, match=r"must then be a split name"):
        holdout_splits("train[:50%]", "0.1")


def test_paths_and_tfds_names_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    for name in ("labels.json", "photos", "./x", "/data/x", "~/x", "my/own", tmp_path):
        assert tfds_io.is_file_dataset(name), name
    for name in ("voc/2007", "overfeat_shapes/small", "imagenet2012", "mnist:3.0.1", None):
        assert not tfds_io.is_file_dataset(name), name
    with pytest.raises(ValueError, match=r"my/own: no such file or folder"):
        tfds_io.load_builder("my/own")
    (tmp_path / "labels.txt").write_text("cat\n")
    with pytest.raises(ValueError, match=r"labels.txt: a dataset file must be COCO"):
        tfds_io.load_builder("./labels.txt")


# --- train.py from each format ---------------------------------------------------------------

TRAIN_FLAGS = [
    "--model", "tiny", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
    "--short-side", "231", "--shuffle-buffer", "8", "--init", "he_normal", "--lr", "0.001",
    "--mixed-precision", "float32", "--verbose", "0", "--format", "json",
]  # fmt: skip


def _train(capsys: pytest.CaptureFixture, *flags: str) -> dict[str, Any]:
    result = train.main(train.parse_args([*TRAIN_FLAGS, *flags]))
    out = capsys.readouterr()
    assert json.loads(out.out.splitlines()[-1])["model_path"] == result["model_path"]
    assert Path(result["model_path"]).is_file() and result["final_step"] == 1
    return {**result, "stderr": out.err}


def test_train_py_classifies_and_detects_from_each_format(
    tmp_path: Path, photos: Path, coco_json: Path, capsys: pytest.CaptureFixture
):
    voc = _make_voc(tmp_path / "voc", photos, VOC_SETS)
    folders = _class_tree(tmp_path / "classes", photos)
    runs = tmp_path / "runs"
    # classify: COCO with the images folder given and 1/3 held out for validation
    coco = _train(
        capsys, "--task", "classify", "--dataset", str(coco_json), "--images",
        str(coco_json.parent / "images"), "--val-split", "0.34", "--output", str(runs / "coco"),
    )  # fmt: skip
    assert coco["skipped"] == {"crowd boxes": 1} and coco["clipped_boxes"] == 1
    assert "left out 1 crowd boxes" in coco["stderr"] and "val_loss" in coco["logs"]
    config = json.loads((runs / "coco" / "train_config.json").read_text())
    assert (config["split"], config["val_split"]) == ("train[:66%]", "train[66%:]")
    _train(capsys, "--task", "classify", "--dataset", str(voc), "--output", str(runs / "voc"))
    folder_run = _train(
        capsys, "--task", "classify", "--dataset", str(folders), "--output", str(runs / "folders")
    )
    assert folder_run["skipped"] == {} and folder_run["num_classes"] == 3
    for name, dataset in (("coco", coco_json), ("voc", voc)):
        _train(
            capsys, "--task", "detect", "--dataset", str(dataset), "--train-size", "231",
            "--init-model", str(runs / name / "model.keras"), "--output", str(runs / f"{name}-det"),
        )  # fmt: skip


def test_detector_fit_trains_from_coco_and_voc_files(tmp_path: Path, photos: Path, coco_json):
    """The notebook route: `spatial_dataset` of a path -> `detector.fit`, with the mAP
    callback on a held-out slice of the same files."""
    voc = _make_voc(tmp_path / "voc", photos, VOC_SETS)
    for dataset in (coco_json, voc):
        names = tfds_io.class_names(tfds_io.load_builder(str(dataset)))
        net = OverFeat("tiny", class_names=names, background=True, regressor="class_specific")
        detector = OverFeatDetector(net, scales=(231,), max_boxes=200)
        detector.compile(optimizer=keras.optimizers.SGD(1e-3), task="detect")
        batches = spatial.spatial_dataset(str(dataset), "train[:60%]", TINY, 2, train_size=231)
        callback = DetectionMAP(str(dataset), "train[60%:]", verbose=0)
        history = detector.fit(batches, epochs=1, steps_per_epoch=1, callbacks=[callback])
        assert np.isfinite(history.history["loss"]).all()
        assert 0 <= callback.history[0]["val_map50"] <= 1
        assert set(callback.history[0]["ap"]) == set(names)

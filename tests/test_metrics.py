"""Detection AP (cross-checked against pycocotools), localization error, `detection_eval`."""

from __future__ import annotations

import contextlib
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from overfeat_tf import detection_eval, metrics
from overfeat_tf.datasets.shapes import SHAPE_CLASSES, render_example
from overfeat_tf.detection import DetectionOptions, detect_tensor
from overfeat_tf.models import OverFeat

# --- pycocotools reference ---------------------------------------------------------------------


def _coco_ap(det, gt, num_images, num_classes, iou=0.5):
    """Per-class AP `[C]` (NaN without ground truth) by pycocotools' COCOeval, on the same
    boxes: yxyx in pixels -> COCO xywh; image i -> id i + 1, class c -> id c + 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box):
        y0, x0, y1, x1 = (float(v) for v in box)
        return [x0, y0, x1 - x0, y1 - y0]

    annotations = []
    for k, (box, cls, img) in enumerate(zip(*gt, strict=True)):
        bbox = xywh(box)
        annotations.append(
            {
                "id": k + 1,  # COCOeval needs ids > 0
                "image_id": int(img) + 1,
                "category_id": int(cls) + 1,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": 0,
            }
        )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i + 1, "height": 100, "width": 100} for i in range(num_images)],
            "annotations": annotations,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        }
        coco_gt.createIndex()
        results = [
            {
                "image_id": int(img) + 1,
                "category_id": int(cls) + 1,
                "bbox": xywh(box),
                "score": float(score),
            }
            for box, score, cls, img in zip(*det, strict=True)
        ]
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.iouThrs = np.array([iou])
        evaluator.params.maxDets = [len(results) + 1]
        evaluator.params.areaRng = [[0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # [R, K]
    return np.array(
        [
            precision[:, k].mean() if (precision[:, k] > -1).all() else np.nan
            for k in range(num_classes)
        ]
    )


def _random_split(seed, num_images=12, num_classes=5):
    """Random ground truth and detections on integer pixel boxes, with every case COCOeval
    distinguishes: images without ground truth, classes without detections or without
    ground truth, duplicate detections, tied scores, near-misses."""
    rng = np.random.default_rng(seed)
    gt_boxes, gt_classes, gt_images = [], [], []
    for img in range(num_images):
        if img % 4 == 3:
            continue  # no ground truth in this image
        for _ in range(rng.integers(1, 5)):
            y0, x0 = rng.integers(0, 60, 2)
            h, w = rng.integers(5, 40, 2)
            gt_boxes.append([y0, x0, y0 + h, x0 + w])
            gt_classes.append(rng.integers(0, num_classes - 1))  # the last class: no gt
            gt_images.append(img)
    gt_boxes = np.array(gt_boxes, np.float64)
    det_boxes, det_classes, det_images = [], [], []
    for box, cls, img in zip(gt_boxes, gt_classes, gt_images, strict=True):
        if cls == 0:
            continue  # class 0: never detected
        for _ in range(rng.integers(0, 4)):  # 0-3 jittered copies: misses, hits, duplicates
            det_boxes.append(box + rng.integers(-6, 7, 4) * [1, 1, 1, 1])
            det_classes.append(cls if rng.random() < 0.85 else rng.integers(1, num_classes))
            det_images.append(img)
    for _ in range(3 * num_images):  # false positives anywhere
        y0, x0 = rng.integers(0, 60, 2)
        h, w = rng.integers(5, 40, 2)
        det_boxes.append([y0, x0, y0 + h, x0 + w])
        det_classes.append(rng.integers(1, num_classes))
        det_images.append(rng.integers(0, num_images))
    det_boxes = np.array(det_boxes, np.float64)
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
    # Scores on a coarse grid: many ties, within and across images.
    scores = rng.integers(1, 8, len(det_boxes)) / 8
    det = (det_boxes, scores, np.array(det_classes), np.array(det_images))
    gt = (gt_boxes, np.array(gt_classes), np.array(gt_images))
    return det, gt


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_equals_cocoeval(seed):
    num_images, num_classes = 12, 5
    det, gt = _random_split(seed, num_images, num_classes)
    ours = metrics.average_precision(*det, *gt, num_classes=num_classes)
    want = _coco_ap(det, gt, num_images, num_classes)
    np.testing.assert_allclose(ours, want, atol=1e-6, equal_nan=True)
    assert np.isnan(ours[-1]) and ours[0] == 0.0  # no ground truth; never detected
    assert metrics.mean_average_precision(ours) == pytest.approx(np.nanmean(want), abs=1e-6)


@pytest.mark.parametrize("iou", [0.3, 0.75])
def test_average_precision_equals_cocoeval_at_other_thresholds(iou):
    det, gt = _random_split(10, 20, 4)
    ours = metrics.average_precision(*det, *gt, num_classes=4, iou_threshold=iou)
    np.testing.assert_allclose(ours, _coco_ap(det, gt, 20, 4, iou), atol=1e-6, equal_nan=True)


def test_average_precision_equals_cocoeval_on_a_larger_split():
    det, gt = _random_split(99, num_images=200, num_classes=8)
    ours = metrics.average_precision(*det, *gt, num_classes=8)
    np.testing.assert_allclose(ours, _coco_ap(det, gt, 200, 8), atol=1e-6, equal_nan=True)


def test_ties_in_iou_match_the_later_ground_truth_as_cocoeval():
    # Two identical ground-truth boxes and two detections: the first detection overlaps both
    # equally; which one it takes decides whether the second detection can match.
    gt = (np.array([[0, 0, 10, 10], [0, 0, 10, 10.0], [0, 20, 10, 30]]), [0, 0, 0], [0, 0, 0])
    det = (
        np.array([[0, 0, 10, 10], [0, 0, 10, 9.0], [0, 20, 10, 30]]),
        [0.9, 0.8, 0.7],
        [0] * 3,
        [0] * 3,
    )
    tp, matched = metrics.match_detections(*det, *gt)
    assert matched.tolist() == [1, 0, 2] and tp.all()
    np.testing.assert_allclose(
        metrics.average_precision(*det, *gt), _coco_ap(det, gt, 1, 1), atol=1e-6
    )


# --- hand-made cases ---------------------------------------------------------------------------


def test_perfect_detections_have_ap_one():
    gt_boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.8], [0, 0, 1, 1]])
    ap = metrics.average_precision(
        gt_boxes, [0.9, 0.8, 0.7], [0, 1, 1], [0, 0, 1], gt_boxes, [0, 1, 1], [0, 0, 1]
    )
    np.testing.assert_allclose(ap, [1.0, 1.0], atol=1e-12)  # precision tp / (tp + fp + eps)
    assert metrics.mean_average_precision(ap) == pytest.approx(1.0)


def test_false_detections_have_ap_zero():
    gt_boxes = np.array([[0.1, 0.1, 0.5, 0.5]])
    wrong_place = np.array([[0.6, 0.6, 0.9, 0.9]])
    ap = metrics.average_precision(wrong_place, [0.9], [0], [0], gt_boxes, [0], [0], num_classes=3)
    assert ap[0] == 0.0 and np.isnan(ap[1:]).all()
    # the right box with the wrong class, or in another image
    assert metrics.average_precision(gt_boxes, [0.9], [1], [0], gt_boxes, [0], [0])[0] == 0.0
    assert metrics.average_precision(gt_boxes, [0.9], [0], [1], gt_boxes, [0], [0])[0] == 0.0


def test_known_ap_with_a_false_positive_ranked_first():
    # ranking: FP, TP, TP over 2 ground-truth boxes -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1;
    # envelope 2/3 everywhere -> AP = 2/3.
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]])
    det = np.array([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30.0]])
    ap = metrics.average_precision(det, [0.9, 0.8, 0.7], [0, 0, 0], [0, 0, 0], gt, [0, 0], [0, 0])
    assert ap[0] == pytest.approx(2 / 3)
    # half the objects found, perfectly ranked: precision 1 up to recall 0.5 -> 51 / 101.
    ap = metrics.average_precision(det[1:2], [0.9], [0], [0], gt, [0, 0], [0, 0])
    assert ap[0] == pytest.approx(51 / 101)


def test_duplicates_are_false_positives_and_empty_inputs_work():
    gt = np.array([[0, 0, 10, 10.0]])
    det = np.array([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    tp, matched = metrics.match_detections(det, [0.5, 0.9], [0, 0], [0, 0], gt, [0], [0])
    assert tp.tolist() == [False, True] and matched.tolist() == [-1, 0]
    ap = metrics.average_precision(np.zeros((0, 4)), [], [], [], gt, [0], [0])
    assert ap.tolist() == [0.0]
    ap = metrics.average_precision(det, [0.5, 0.9], [0, 0], [0, 0], np.zeros((0, 4)), [], [])
    assert np.isnan(ap).all() and np.isnan(metrics.mean_average_precision(ap))


def test_accumulator_gives_the_flat_arrays_result():
    det, gt = _random_split(3, 6, 4)
    acc = metrics.DetectionAccumulator(num_classes=4)
    for img in range(6):
        d, g = det[3] == img, gt[2] == img
        acc.add_image(det[0][d], det[1][d], det[2][d], gt[0][g], gt[1][g])
    np.testing.assert_array_equal(
        acc.average_precision(), metrics.average_precision(*det, *gt, num_classes=4)
    )


def test_bad_inputs_raise_clear_errors():
    box = np.array([[0, 0, 1, 1.0]])
    with pytest.raises(ValueError, match="ymin <= ymax"):
        metrics.average_precision(np.array([[1, 0, 0, 1.0]]), [1], [0], [0], box, [0], [0])
    with pytest.raises(ValueError, match="shape"):
        metrics.average_precision(box, [1, 2], [0], [0], box, [0], [0])
    with pytest.raises(ValueError, match="num_classes"):
        metrics.average_precision(box, [1], [3], [0], box, [0], [0], num_classes=2)
    with pytest.raises(ValueError, match="iou_threshold"):
        metrics.match_detections(box, [1], [0], [0], box, [0], [0], iou_threshold=0)
    with pytest.raises(ValueError, match="at most 5"):
        metrics.localization_error([(np.zeros(6), np.tile(box, (6, 1)))], [(0, box, [0])])


def test_localization_error_on_hand_cases():
    truth = [
        metrics.GroundTruth(2, [[0, 0, 10, 10], [20, 20, 30, 30]], [2, 1]),  # label 2: box 0
        metrics.GroundTruth(1, [[0, 0, 10, 10], [20, 20, 30, 30]], [2, 1]),  # label 1: box 1
        metrics.GroundTruth(0, [[0, 0, 10, 10]], [0]),
        metrics.GroundTruth(0, [[0, 0, 10, 10]], [0]),
    ]
    guesses = [
        # 5th guess right (class 2, IoU 1) -> correct
        metrics.Guesses([0, 1, 3, 4, 2], [[50, 50, 60, 60]] * 4 + [[0, 0, 10, 10]]),
        # right class, but placed on the other object (class 2's box) -> wrong
        metrics.Guesses([1], [[0, 0, 10, 10]]),
        # right class, IoU exactly 0.5 -> correct
        metrics.Guesses([0], [[0, 0, 10, 5]]),
        # no guesses -> wrong
        metrics.Guesses(np.zeros(0, int), np.zeros((0, 4))),
    ]
    correct = metrics.localization_correct(guesses, truth)
    assert correct.tolist() == [True, False, True, False]
    assert metrics.localization_error(guesses, truth) == pytest.approx(0.5)
    assert metrics.localization_error(guesses[:1], truth[:1], max_guesses=5) == 0.0
    # IoU 0.5 is not enough at a stricter threshold
    assert metrics.localization_error(guesses[2:3], truth[2:3], iou_threshold=0.6) == 1.0


# --- detection_eval end to end ---------------------------------------------------------------

TOY_DETECTION = "overfeat_detection_toy"
TOY_SPLITS = {"test": 3}


class OverfeatDetectionToy(tfds.core.GeneratorBasedBuilder):
    """A throwaway detection-schema dataset: small `overfeat_shapes` images, plus one image
    without objects (no `label` feature: the image's class is its largest object's)."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums file next to a test builder (see tests/test_data.py)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "objects": tfds.features.Sequence(
                        {
                            "bbox": tfds.features.BBoxFeature(),
                            "label": tfds.features.ClassLabel(names=list(SHAPE_CLASSES)),
                        }
                    ),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(n) for name, n in TOY_SPLITS.items()}

    def _generate_examples(self, count: int):
        for i in range(count):
            example = render_example(i, min_side=160, max_side=200)
            if i == count - 1:  # no objects
                example["bboxes"], example["labels"] = np.zeros((0, 4), np.float32), []
            objects = {"bbox": example["bboxes"], "label": np.asarray(example["labels"])}
            yield i, {"image": example["image"], "objects": objects}


@pytest.fixture(scope="module")
def tiny_detector() -> OverFeat:
    keras.utils.set_random_seed(0)
    return OverFeat(
        "tiny",
        class_names=list(SHAPE_CLASSES),
        regressor="class_specific",
        background=True,
        kernel_initializer="he_normal",
    )


def test_detection_eval_command_end_to_end(tiny_detector, tmp_path, capsys):
    OverfeatDetectionToy(data_dir=str(tmp_path)).download_and_prepare()
    path = tmp_path / "tiny.keras"
    tiny_detector.save(path)
    argv = ["--model", str(path), "--dataset", TOY_DETECTION, "--data-dir", str(tmp_path)]
    argv += ["--split", "test", "--scales", "231,263", "--max-boxes", "300", "--limit", "3"]
    capsys.readouterr()  # TFDS' messages
    result = detection_eval.main(argv)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["merge"] == result["merge"] and printed["nms"] == result["nms"]
    assert result["examples"] == 3 and result["labelled_examples"] == 2
    assert result["options"]["scales"] == [231, 263] and result["guesses"] == 5
    assert len(result["class_names"]) == len(SHAPE_CLASSES)
    for combine in ("merge", "nms"):
        scores = result[combine]
        assert len(scores["ap"]) == len(SHAPE_CLASSES)
        assert all(ap is None or 0 <= ap <= 1 for ap in scores["ap"])
        assert scores["map"] is not None and 0 <= scores["map"] <= 1
        assert 0 <= scores["localization_error"] <= 100
        assert 0 < scores["detections_per_image"] <= 100
    for error in result["classification"].values():
        assert 0 <= error <= 100
    assert "| mAP@0.5 |" in detection_eval.format_report(result)


def test_evaluator_gives_detect_tensor_results_for_merge_and_nms(tiny_detector):
    image = tf.constant(render_example(7, min_side=160, max_side=200)["image"], tf.float32)
    options = DetectionOptions(scales=(231,), max_boxes=200, max_detections=20)
    out = detection_eval.DetectionEvaluator(tiny_detector, options)(image)
    for combine in ("merge", "nms"):
        want = detect_tensor(tiny_detector, image, options.replace(combine=combine))
        n = int(want["num_detections"])
        assert n == len(out[combine]["scores"]) > 0
        np.testing.assert_allclose(out[combine]["boxes"], want["detection_boxes"][:n], atol=1e-6)
        np.testing.assert_allclose(out[combine]["scores"], want["detection_scores"][:n], rtol=1e-6)
        np.testing.assert_array_equal(out[combine]["class_ids"], want["detection_classes"][:n])
        guesses = out["localize"][combine]
        assert len(guesses["class_ids"]) == len(set(guesses["class_ids"].tolist())) <= 5
    np.testing.assert_allclose(out["class_scores"], want["class_scores"], rtol=1e-6)


def test_localization_gets_its_own_pass_when_top_k_is_not_the_guesses(tiny_detector):
    image = tf.constant(render_example(8, min_side=160, max_side=200)["image"], tf.float32)
    options = DetectionOptions(scales=(231,), flips=False, top_k=2, max_boxes=100)
    out = detection_eval.detect_both(tiny_detector, image, options, guesses=5)
    assert {"merge/boxes", "nms/num", "localize/merge/classes", "localize/nms/num"} <= set(out)
    assert len(set(out["merge/classes"][: int(out["merge/num"])].numpy().tolist())) <= 2
    assert "localize/merge/num" not in detection_eval.detect_both(
        tiny_detector, image, options.replace(top_k=5), guesses=5
    )

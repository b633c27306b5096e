"""Detection AP (COCOeval, checked on hand-computed cases and against a NumPy reference),
localization error, `detection_eval`."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from overfeat_tf import detection_eval as detection_eval_command
from overfeat_tf.data.shapes import SHAPE_CLASSES, render_example
from overfeat_tf.evaluation import detection as detection_eval
from overfeat_tf.evaluation import metrics
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.models.detector import as_detector

# --- NumPy reference of COCO's 101-point AP ----------------------------------------------------


def _iou_yxyx(a, b):
    """IoU of two yxyx boxes, continuous coordinates."""
    h = min(a[2], b[2]) - max(a[0], b[0])
    w = min(a[3], b[3]) - max(a[1], b[1])
    inter = h * w if h > 0 and w > 0 else 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_ap(det, gt, num_classes, iou=0.5):
    """Per-class COCO AP `[C]` written out plainly: rank by score (ties: image, then input
    order), greedy matching to the best free ground truth of the image, 101-point
    interpolated precision envelope."""
    det_boxes, det_scores, det_classes, det_images = (np.asarray(a) for a in det)
    gt_boxes, gt_classes, gt_images = (np.asarray(a) for a in gt)
    result = np.full(num_classes, np.nan)
    for c in range(num_classes):
        gts = np.flatnonzero(gt_classes == c)
        if gts.size == 0:
            continue
        dets = np.flatnonzero(det_classes == c)
        dets = dets[np.lexsort((dets, det_images[dets], -det_scores[dets]))]
        taken, tp = set(), []
        for d in dets:
            best, best_iou = None, iou
            for g in gts:
                if g in taken or gt_images[g] != det_images[d]:
                    continue
                overlap = _iou_yxyx(det_boxes[d], gt_boxes[g])
                if overlap >= best_iou:
                    best, best_iou = g, overlap
            tp.append(best is not None)
            if best is not None:
                taken.add(best)
        tp = np.array(tp, bool)
        tps, fps = np.cumsum(tp), np.cumsum(~tp)
        recall = tps / gts.size
        precision = tps / np.maximum(tps + fps, 1)
        envelope = [precision[i:].max() for i in range(tp.size)]
        values = []
        for r in np.linspace(0, 1, 101):
            reached = np.flatnonzero(recall >= r)
            values.append(envelope[reached[0]] if reached.size else 0.0)
        result[c] = np.mean(values)
    return result


def _random_split(seed, num_images=12, num_classes=5):
    """Random normalized ground truth and detections with every case COCO distinguishes:
    images without ground truth or without detections, a class never detected (0) and one
    without ground truth (the last), duplicates, tied scores, near-misses."""
    rng = np.random.default_rng(seed)
    gt_boxes, gt_classes, gt_images = [], [], []
    for img in range(num_images):
        if img % 4 == 3:
            continue  # no ground truth in this image
        for _ in range(rng.integers(1, 5)):
            y0, x0 = rng.uniform(0, 0.6, 2)
            h, w = rng.uniform(0.05, 0.4, 2)
            gt_boxes.append([y0, x0, y0 + h, x0 + w])
            gt_classes.append(rng.integers(0, num_classes - 1))
            gt_images.append(img)
    gt_boxes = np.array(gt_boxes)
    det_boxes, det_classes, det_images = [], [], []
    for box, cls, img in zip(gt_boxes, gt_classes, gt_images, strict=True):
        if cls == 0 or img % 5 == 4:
            continue  # class 0 never detected; images 4, 9, ...: no detection of their objects
        for _ in range(rng.integers(0, 4)):  # 0-3 jittered copies: misses, hits, duplicates
            det_boxes.append(box + rng.uniform(-0.06, 0.06, 4))
            det_classes.append(cls if rng.random() < 0.85 else rng.integers(1, num_classes))
            det_images.append(img)
    for _ in range(3 * num_images):  # false positives anywhere
        y0, x0 = rng.uniform(0, 0.6, 2)
        h, w = rng.uniform(0.05, 0.4, 2)
        det_boxes.append([y0, x0, y0 + h, x0 + w])
        det_classes.append(rng.integers(1, num_classes))
        det_images.append(rng.choice([i for i in range(num_images) if i % 5 != 4]))
    det_boxes = np.array(det_boxes)
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 0.01)
    scores = rng.integers(1, 8, len(det_boxes)) / 8  # a coarse grid: ties within and across images
    det = (det_boxes, scores, np.array(det_classes), np.array(det_images))
    gt = (gt_boxes, np.array(gt_classes), np.array(gt_images))
    return det, gt


@pytest.mark.parametrize(("seed", "iou"), [(0, 0.5), (1, 0.5), (2, 0.5), (3, 0.3), (4, 0.75)])
def test_average_precision_equals_the_numpy_reference(seed, iou):
    num_images, num_classes = 20, 5
    det, gt = _random_split(seed, num_images, num_classes)
    ours = metrics.average_precision(*det, *gt, num_classes=num_classes, iou_threshold=iou)
    want = _reference_ap(det, gt, num_classes, iou)
    np.testing.assert_allclose(ours, want, atol=1e-9, equal_nan=True)
    assert np.isnan(ours[-1]) and ours[0] == 0.0  # no ground truth; never detected
    assert 0 < np.nanmean(ours[1:]) < 1
    assert metrics.mean_average_precision(ours) == pytest.approx(np.nanmean(want), abs=1e-9)


def test_accumulator_gives_the_flat_arrays_result():
    det, gt = _random_split(3, 6, 4)
    acc = metrics.DetectionAccumulator(num_classes=4)
    for img in range(6):
        d, g = det[3] == img, gt[2] == img
        acc.add_image(det[0][d], det[1][d], det[2][d], gt[0][g], gt[1][g])
    np.testing.assert_array_equal(
        acc.average_precision(), metrics.average_precision(*det, *gt, num_classes=4)
    )
    np.testing.assert_allclose(acc.average_precision(), _reference_ap(det, gt, 4), atol=1e-9)


# --- hand-computed cases -----------------------------------------------------------------------

EPS = 1e-12  # COCO's precision is tp / (tp + fp + np.spacing(1))
A, B, FAR = [0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3], [0.5, 0.5, 0.6, 0.6]


def _ap(det_boxes, scores, gt_boxes, num_classes=1, **kwargs):
    """AP of one image whose detections and ground truth are all class 0."""
    n, m = len(scores), len(gt_boxes)
    return metrics.average_precision(
        np.reshape(det_boxes, (n, 4)), scores, [0] * n, [0] * n,
        np.reshape(gt_boxes, (m, 4)), [0] * m, [0] * m, num_classes, **kwargs,
    )  # fmt: skip


def test_perfect_detections_have_ap_one():
    gt_boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.8], [0, 0, 1, 1]])
    ap = metrics.average_precision(
        gt_boxes, [0.9, 0.8, 0.7], [0, 1, 1], [0, 0, 1], gt_boxes, [0, 1, 1], [0, 0, 1]
    )
    np.testing.assert_allclose(ap, [1.0, 1.0], atol=EPS)
    assert metrics.mean_average_precision(ap) == pytest.approx(1.0)


def test_a_false_positive_ranked_above_the_true_positives():
    # FP, TP over 1 object: precision 1/2 at recall 1 -> AP 1/2.
    assert _ap([FAR, A], [0.9, 0.8], [A])[0] == pytest.approx(0.5)
    # FP, TP, TP over 2 objects: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> envelope 2/3.
    assert _ap([FAR, A, B], [0.9, 0.8, 0.7], [A, B])[0] == pytest.approx(2 / 3)
    # the same false positive ranked last changes nothing
    assert _ap([A, B, FAR], [0.9, 0.8, 0.7], [A, B])[0] == pytest.approx(1.0)


def test_a_missed_object():
    # half the objects found, perfectly ranked: precision 1 up to recall 0.5 -> 51 / 101.
    assert _ap([A], [0.9], [A, B])[0] == pytest.approx(51 / 101)
    # no detection at all: AP 0 (and no result set for COCO to load)
    assert _ap(np.zeros((0, 4)), [], [A]).tolist() == [0.0]


def test_a_duplicate_detection_is_a_false_positive():
    # A, A again, B over objects A and B: TP, FP, TP -> precision 1, 1/2, 2/3 at recall
    # 1/2, 1/2, 1 -> 1 for the 51 thresholds up to 0.5, 2/3 for the 50 above.
    ap = _ap([A, A, B], [0.9, 0.8, 0.7], [A, B])[0]
    assert ap == pytest.approx((51 + 50 * 2 / 3) / 101)
    # the higher score takes the object, even with the lower IoU: the better box is the FP
    shifted = [0.0, 0.03, 0.1, 0.13]  # IoU 0.54 with A
    assert _ap([shifted, A], [0.9, 0.8], [A, B])[0] == pytest.approx(51 / 101)
    assert _ap([A, shifted, B], [0.9, 0.8, 0.7], [A, B])[0] == pytest.approx(ap)


def test_iou_threshold_is_inclusive():
    half = [0.0, 0.0, 0.1, 0.05]  # IoU exactly 0.5 with A
    assert _ap([half], [0.9], [A], iou_threshold=0.5)[0] == pytest.approx(1.0)
    assert _ap([half], [0.9], [A], iou_threshold=0.6)[0] == 0.0
    assert _ap([A], [0.9], [A], iou_threshold=1.0)[0] == pytest.approx(1.0)


def test_classes_without_ground_truth_are_nan_and_left_out_of_the_mean():
    ap = metrics.average_precision([A, B], [0.9, 0.8], [0, 2], [0, 0], [A], [0], [0], 4)
    assert ap[0] == pytest.approx(1.0) and np.isnan(ap[1:]).all()  # class 2's FP: no AP
    assert metrics.mean_average_precision(ap) == pytest.approx(1.0)
    ap = _ap([A, B], [0.5, 0.9], np.zeros((0, 4)))
    assert np.isnan(ap).all() and np.isnan(metrics.mean_average_precision(ap))


def test_false_detections_have_ap_zero():
    ap = metrics.average_precision([FAR], [0.9], [0], [0], [A], [0], [0], num_classes=3)
    assert ap[0] == 0.0 and np.isnan(ap[1:]).all()
    # the right box with the wrong class, or in another image
    assert metrics.average_precision([A], [0.9], [1], [0], [A], [0], [0])[0] == 0.0
    assert metrics.average_precision([A], [0.9], [0], [1], [A], [0], [0])[0] == 0.0


def test_empty_images_in_the_accumulator():
    acc = metrics.DetectionAccumulator(num_classes=2)
    assert np.isnan(acc.average_precision()).all()  # nothing added yet
    empty, none = np.zeros((0, 4)), np.zeros(0)
    acc.add_image([A], [0.8], [0], [A], [0])  # found
    acc.add_image(empty, none, none, empty, none)  # nothing at all: changes nothing
    np.testing.assert_allclose(acc.average_precision(), [1.0, np.nan], atol=EPS)
    acc.add_image([B], [0.9], [0], empty, none)  # an FP in an image without objects
    np.testing.assert_allclose(acc.average_precision(), [0.5, np.nan])
    acc.add_image(empty, none, none, [B], [0])  # a missed object in an image without detections
    # FP, TP over 2 objects: precision 1/2 up to recall 1/2, then nothing -> 51 / 202
    np.testing.assert_allclose(acc.average_precision(), [51 / 202, np.nan])
    assert acc.num_images == 4


def test_no_box_is_dropped_by_area_or_detection_count():
    # pixel boxes of a huge image (area above COCO's default "all" cap of 1e10) and tiny ones
    for scale in (1e7, 1e-3):
        ap = _ap(np.array([FAR, A, B]) * scale, [0.9, 0.8, 0.7], np.array([A, B]) * scale)
        assert ap[0] == pytest.approx(2 / 3)
    # 150 detections in one image (COCO's default keeps 100): the only TP is ranked last
    fps = np.tile(FAR, (150, 1))
    ap = _ap(np.concatenate([fps, [A]]), np.r_[np.full(150, 0.9), 0.1], [A])
    assert ap[0] == pytest.approx(1 / 151)


def test_average_precision_prints_nothing(capsys):
    det, gt = _random_split(5, 4, 3)
    metrics.average_precision(*det, *gt)
    _ap(np.zeros((0, 4)), [], [A])
    assert capsys.readouterr().out == ""


def test_bad_inputs_raise_clear_errors():
    box = np.array([[0, 0, 1, 1.0]])
    with pytest.raises(ValueError, match="ymin <= ymax"):
        metrics.average_precision(np.array([[1, 0, 0, 1.0]]), [1], [0], [0], box, [0], [0])
    with pytest.raises(ValueError, match="shape"):
        metrics.average_precision(box, [1, 2], [0], [0], box, [0], [0])
    with pytest.raises(ValueError, match="num_classes"):
        metrics.average_precision(box, [1], [3], [0], box, [0], [0], num_classes=2)
    with pytest.raises(ValueError, match="Image index"):
        metrics.average_precision(box, [1], [0], [-1], box, [0], [0])
    with pytest.raises(ValueError, match="iou_threshold"):
        metrics.average_precision(box, [1], [0], [0], box, [0], [0], iou_threshold=0)
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        metrics.DetectionAccumulator(2).add_image(box, [1], [2], box, [0])
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
    argv += ["--split", "test", "--scales", "231,263", "--max-boxes", "300", "--max-examples", "3"]
    argv += ["--format", "json"]
    capsys.readouterr()  # TFDS' messages
    result = detection_eval_command.main(argv)
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


def test_evaluator_gives_the_detectors_results_for_merge_and_nms(tiny_detector):
    image = tf.constant(render_example(7, min_side=160, max_side=200)["image"], tf.float32)
    options = dict(scales=(231,), max_boxes=200, max_detections=20)
    out = detection_eval.DetectionEvaluator(as_detector(tiny_detector, **options))(image)
    for combine in ("merge", "nms"):
        detector = as_detector(tiny_detector, **options, combine=combine)
        want = detector.detect_image(image)
        n = int(want["num_detections"])
        assert n == len(out[combine]["scores"]) > 0
        # the detector's own decode path: bitwise what detect_image (and predict) answers
        np.testing.assert_array_equal(out[combine]["boxes"], want["detection_boxes"][:n])
        np.testing.assert_array_equal(out[combine]["scores"], want["detection_scores"][:n])
        np.testing.assert_array_equal(out[combine]["classes"], want["detection_classes"][:n])
        guesses = out["localize"][combine]
        assert len(guesses["classes"]) == len(set(guesses["classes"].tolist())) <= 5
        top = np.argsort(-out["class_scores"], kind="stable")[:3]
        np.testing.assert_array_equal(want["classes"][:3], top)


def test_localization_gets_its_own_pass_when_top_k_is_not_the_guesses(tiny_detector):
    image = tf.constant(render_example(8, min_side=160, max_side=200)["image"], tf.float32)
    detector = as_detector(tiny_detector, scales=(231,), flips=False, top_k=2, max_boxes=100)
    decoders = detection_eval.default_decoders(detector)
    out = detection_eval.detect_both(detector, image, decoders, guesses=5)
    assert {"merge/boxes", "nms/num", "localize/merge/classes", "localize/nms/num"} <= set(out)
    assert len(set(out["merge/classes"][: int(out["merge/num"])].numpy().tolist())) <= 2
    assert "localize/merge/num" not in detection_eval.detect_both(
        detector.with_options(top_k=5), image, decoders, guesses=5
    )


def test_the_detectors_own_decoder_alone_needs_no_extra_pass(tiny_detector):
    image = tf.constant(render_example(9, min_side=160, max_side=200)["image"], tf.float32)
    detector = as_detector(tiny_detector, scales=(231,), top_k=5, max_boxes=100)
    out = detection_eval.detect_both(detector, image, {"merge": detector.prediction_decoder})
    assert set(out) == {"class_scores", "merge/boxes", "merge/scores", "merge/classes", "merge/num"}
    want = detector.detect_fn(image)
    n = int(want["num_detections"])
    assert int(out["merge/num"]) == n
    np.testing.assert_array_equal(out["merge/boxes"][:n], want["detection_boxes"][:n])
    assert out["class_scores"].shape == (detector.num_classes,)

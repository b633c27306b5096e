"""Multi-scale classification evaluation (paper Table 2 rows) and its command."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf.data import inputs as data
from overfeat_tf.evaluation import __main__ as evaluation_command
from overfeat_tf.evaluation import classification as evaluation
from overfeat_tf.models import inference
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.ops import pyramid
from overfeat_tf.utils import progress
from tests.test_data import TOY_CLASSES, TOY_NAME, TOY_SPLITS, toy_data_dir  # noqa: F401

SCALES = (231, 247, 263, 279, 295, 311)  # six small scales: quick, same row logic


@pytest.fixture(scope="module")
def model() -> OverFeat:
    keras.utils.set_random_seed(0)
    return OverFeat("tiny", class_names=list(TOY_CLASSES), kernel_initializer="he_normal")


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (90, 130, 3)).astype(np.float32)


def test_ten_crops_are_centre_corners_and_flips():
    image = _image()
    crops = evaluation.ten_crops(image, 231).numpy()
    rescaled = data.rescale_short_side(image, 256).numpy()  # 256 x 370
    assert crops.shape == (10, 231, 231, 3)
    np.testing.assert_allclose(crops[0], data.eval_crop(image, 231).numpy())
    np.testing.assert_allclose(crops[1], rescaled[:231, :231])
    np.testing.assert_allclose(crops[4], rescaled[-231:, -231:])
    np.testing.assert_allclose(crops[5:], crops[:5, :, ::-1])


def test_rows_match_classify_tensor_and_the_crop_model(model):
    evaluator = evaluation.Evaluator(model, SCALES)
    image = _image(1)
    scores = dict(zip([r.name for r in evaluator.rows], evaluator.score(image), strict=True))
    assert len(scores) == 7

    def dense(indices, stride):
        scales = [SCALES[i - 1] for i in indices]
        return inference.classify_tensor(model, image, scales, flips=True, stride=stride).numpy()

    close = {"rtol": 1e-4, "atol": 1e-6}
    np.testing.assert_allclose(scores["scale 1, fine stride, flips"], dense([1], "fine"), **close)
    # coarse rows come from the fine maps' offset-(0, 0) sub-grid: same as the coarse net
    np.testing.assert_allclose(
        scores["scale 1, coarse stride, flips"], dense([1], "coarse"), **close
    )
    np.testing.assert_allclose(
        scores["6 scales (1-6), coarse stride, flips"], dense(range(1, 7), "coarse"), **close
    )
    np.testing.assert_allclose(
        scores["4 scales (1,2,4,6), fine stride, flips"], dense([1, 2, 4, 6], "fine"), **close
    )
    np.testing.assert_allclose(
        scores["6 scales (1-6), fine stride, flips"], dense(range(1, 7), "fine"), **close
    )
    crop_probs = tf.nn.softmax(model.crop_model()(evaluation.ten_crops(image, 231))).numpy()
    np.testing.assert_allclose(scores["center crop, 1 view"], crop_probs[0], **close)
    np.testing.assert_allclose(
        scores["4 corners + center + flips, 10 views"], crop_probs.mean(0), **close
    )


def test_rows_need_their_scales():
    assert [r.name for r in evaluation.rows_for(1)] == [
        "center crop, 1 view",
        "4 corners + center + flips, 10 views",
        "scale 1, coarse stride, flips",
        "scale 1, fine stride, flips",
    ]
    assert len(evaluation.rows_for(6)) == len(evaluation.TABLE2_ROWS)


def test_evaluate_counts_top1_and_top5_errors(model, toy_data_dir):  # noqa: F811
    result = evaluation.evaluate(model, TOY_NAME, "test", str(toy_data_dir), scales=SCALES[:2])
    assert result["examples"] == TOY_SPLITS["test"] and result["corrupt_records"] == 0
    evaluator = evaluation.Evaluator(model, SCALES[:2])
    wrong = np.zeros(len(evaluator.rows))
    for image, label in data.decoded_split(TOY_NAME, "test", str(toy_data_dir)):
        wrong += evaluator.score(image).argmax(-1) != int(label)
    expected = 100 * wrong / TOY_SPLITS["test"]
    np.testing.assert_allclose([r["top1_error"] for r in result["rows"]], expected)
    assert all(r["top5_error"] == 0 for r in result["rows"])  # 3 classes: always in the top 5
    table = evaluation.format_table(result)
    assert (
        table.count("\n") == 1 + len(result["rows"]) and "| scale 1, fine stride, flips |" in table
    )


def test_progress_outside_a_terminal_is_a_few_plain_lines(model, toy_data_dir, capsys):  # noqa: F811
    # stdout captured (not a terminal): no Keras bar redraws, a line per tenth of the images.
    total = TOY_SPLITS["test"]
    evaluation.evaluate(
        model,
        TOY_NAME,
        "test",
        str(toy_data_dir),
        scales=SCALES[:1],
        progress=True,
        max_examples=total,
    )
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.endswith(("images", "ms/image"))]
    assert lines[-1].startswith(f"  {total}/{total} images, ") and lines[-1].endswith(" ms/image")
    assert len(lines) <= min(total, progress.LINES)
    assert "\r" not in captured.out and "\x1b" not in captured.out and "━" not in captured.out
    assert "the first one traces and compiles" in captured.err

    lines_of = progress.LineProgress(500, "images", io.StringIO())
    for count in range(1, 501):
        lines_of.update(count)
    printed = lines_of.stream.getvalue().splitlines()
    assert [line.split()[0] for line in printed] == [f"{n}/500" for n in range(50, 501, 50)]
    unknown = progress.LineProgress(None, "images", io.StringIO())
    for count in range(1, 1001):
        unknown.update(count)
    assert [line.split()[0] for line in unknown.stream.getvalue().splitlines()] == [
        "1",
        "10",
        "100",
        "1000",
    ]


def test_evaluate_skips_corrupt_records_and_rejects_foreign_labels(model):
    images = [tf.io.encode_png(_image(i).astype(np.uint8)).numpy() for i in range(3)]
    images[1] = b"broken"
    source = tf.data.Dataset.from_tensor_slices({"image": images, "label": [0, 1, 2]})
    result = evaluation.evaluate(model, source, scales=(231,))
    assert result["examples"] == 2 and result["corrupt_records"] == 1
    foreign = tf.data.Dataset.from_tensor_slices({"image": images[:1], "label": [7]})
    with pytest.raises(ValueError, match="outside the model's 3 classes"):
        evaluation.evaluate(model, foreign, scales=(231,))


def test_command_on_a_saved_model(model, toy_data_dir, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "toy.keras"
    model.save(path)
    result = evaluation_command.main(
        [
            "--model",
            str(path),
            "--dataset",
            TOY_NAME,
            "--split",
            "test",
            "--data-dir",
            str(toy_data_dir),
            "--scales",
            "231,247",
            "--max-examples",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert result["examples"] == 4 and result["scales"] == [231, 247]
    assert "| approach | top-1 error % | top-5 error % |" in out
    assert pyramid.parse_scales("245x245,281x317") == ((245, 245), (281, 317))
    assert pyramid.check_scales(pyramid.parse_scales("231")) == (231,)

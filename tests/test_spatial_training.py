"""Localization / detection targets, losses and task models against NumPy references."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from overfeat_tf.architecture.config import TINY
from overfeat_tf.data import spatial
from overfeat_tf.models import losses
from overfeat_tf.models.backbone import OverFeat, backbone_of
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.ops import resizing
from overfeat_tf.training import tasks

SIZE = spatial.default_train_size(TINY)  # 295 -> a 5x5 fine map
C = TINY.num_classes


def _numpy_targets(boxes, labels, min_fill=0.1):
    """Direct transcription of the module docstring's rules, one cell at a time."""
    out = TINY.output_size(SIZE)
    cls = np.full((out, out), C)
    box = np.zeros((out, out, 5))
    box[..., 4] = -1
    for i in range(out):
        for j in range(out):
            w = np.array([i * 16, j * 16, i * 16 + 231, j * 16 + 231], float)
            best_pos = best_box = None
            near = False
            for b, lab in zip(boxes, labels, strict=True):
                ih = max(0, min(w[2], b[2]) - max(w[0], b[0]))
                iw = max(0, min(w[3], b[3]) - max(w[1], b[1]))
                inter = ih * iw
                area = (b[2] - b[0]) * (b[3] - b[1])
                cov, fill = inter / area, inter / 231**2
                iou = inter / (area + 231**2 - inter)
                if cov >= 0.5 and fill >= min_fill and (best_pos is None or iou > best_pos[0]):
                    best_pos = (iou, lab)
                if cov >= 0.25 and fill >= min_fill / 2:
                    near = True
                if cov >= 0.5 and (best_box is None or iou > best_box[0]):
                    best_box = (iou, b, lab)
            cls[i, j] = best_pos[1] if best_pos else (-1 if near else C)
            if best_box:
                _, b, lab = best_box
                box[i, j, :4] = (b - [w[0], w[1], w[0], w[1]]) / 231
                box[i, j, 4] = lab
    return cls, box


@pytest.mark.parametrize("seed", range(4))
def test_targets_match_numpy(seed):
    rng = np.random.default_rng(seed)
    n = seed % 4
    y0x0 = rng.uniform(-30, 250, size=(n, 2))
    hw = rng.uniform(20, 260, size=(n, 2))
    boxes = np.concatenate([y0x0, y0x0 + hw], axis=1).astype("float32")
    labels = rng.integers(0, C, size=n)
    cls, box = spatial.spatial_targets(boxes, labels, TINY, SIZE, C)
    want_cls, want_box = _numpy_targets(boxes, labels)
    np.testing.assert_array_equal(cls.numpy(), want_cls)
    np.testing.assert_allclose(box.numpy(), want_box, rtol=1e-5, atol=1e-5)


def test_targets_in_tf_data_equal_eager():
    boxes = np.array([[10, 20, 200, 220], [100, 90, 290, 280]], "float32")
    labels = np.array([3, 7])
    eager = spatial.spatial_targets(boxes, labels, TINY, SIZE, C)
    ds = tf.data.Dataset.from_tensors((boxes, labels)).map(
        lambda b, lab: spatial.spatial_targets(b, lab, TINY, SIZE, C)
    )
    (cls, box), *_ = list(ds)
    np.testing.assert_array_equal(cls.numpy(), eager[0].numpy())
    np.testing.assert_array_equal(box.numpy(), eager[1].numpy())
    assert (eager[0].numpy() == 3).any() and (eager[0].numpy() == 7).any()


def test_random_spatial_crop_moves_boxes_with_pixels():
    """A white box drawn in the image stays under its transformed box after crop/flip."""
    image = np.zeros((400, 500, 3), "float32")
    image[100:220, 150:330] = 255
    boxes = np.array([[100 / 400, 150 / 500, 220 / 400, 330 / 500]], "float32")
    for s in range(6):
        crop, out = spatial.random_spatial_crop(image, boxes, 295, (295, 413), tf.constant([s, 1]))
        y0, x0, y1, x1 = np.round(out.numpy()[0]).astype(int)
        mask = crop.numpy()[..., 0] > 128
        ys, xs = np.nonzero(mask)
        assert abs(ys.min() - max(y0, 0)) <= 2 and abs(ys.max() + 1 - min(y1, 295)) <= 2
        assert abs(xs.min() - max(x0, 0)) <= 2 and abs(xs.max() + 1 - min(x1, 295)) <= 2


def test_a_scale_smaller_than_the_crop_is_padded_with_the_mean_and_boxes_follow():
    """Short side 231 < crop 295: the 231 x 289 image sits at a random offset in a 295 x 295
    canvas of PIXEL_MEAN (0 after normalization); the box moves with its pixels."""
    image = np.zeros((400, 500, 3), "float32")
    image[100:220, 150:330] = 255
    boxes = np.array([[100 / 400, 150 / 500, 220 / 400, 330 / 500]], "float32")
    offsets = set()
    for s in range(8):
        crop, out = spatial.random_spatial_crop(image, boxes, 295, (231,), tf.constant([s, 4]))
        crop = crop.numpy()
        inside = np.nonzero((crop != spatial.FILL).any(axis=(1, 2)))[0]  # image rows
        assert len(inside) == 231
        top = inside[0]
        np.testing.assert_array_equal(crop[:top], spatial.FILL)
        ys, xs = np.nonzero(crop[..., 0] > 200)
        y0, x0, y1, x1 = out.numpy()[0]
        assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5
        assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5
        assert (y1 - y0) == pytest.approx(120 * 231 / 400, abs=0.01)
        offsets.add(int(top))
    assert len(offsets) > 1  # a random vertical offset within the 64 px of padding
    assert spatial.default_short_sides(295, 231) == (231, 295, 413, 590)
    assert spatial.default_short_sides(231, 231) == (231, 323, 462)


def test_random_spatial_crop_is_a_window_of_the_shared_resize():
    """The crop (maybe flipped) is a window of `resizing.resize_short_side` of the image (an
    enlarging scale: the windows are not antialiased), edges included."""
    image = np.random.default_rng(3).integers(0, 256, (90, 120, 3)).astype("float32")
    resized = resizing.resize_short_side(image, 100).numpy()  # 100 x 133
    flips = set()
    for s in range(6):
        crop, _ = spatial.random_spatial_crop(
            image, np.zeros((0, 4), "float32"), 64, (100,), [s, 2]
        )
        crop = crop.numpy()
        found = [
            (top, left, flipped)
            for top in range(100 - 64 + 1)
            for left in range(133 - 64 + 1)
            for flipped, view in ((False, crop), (True, crop[:, ::-1]))
            if np.abs(view - resized[top : top + 64, left : left + 64]).max() < 0.02
        ]
        assert len(found) == 1
        flips.add(found[0][2])
    assert flips == {False, True}


def test_resize_windows_matches_resize_then_crop():
    """Reference: `resize_windows` of a window equals `resize` of the whole
    image cropped, for enlarging scales, mirrored windows, and a batch of different images
    padded to one size."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 50, 70, 3)).astype("float32")
    images[1, 40:] = 118  # the second image is 40 x 70, padded with the fill
    cases = [(0, (100, 140), (13, 27)), (1, (91, 159), (20, 41))]
    windows, refs = [], []
    for b, new, (y, x) in cases:
        hw = (50, 70) if b == 0 else (40, 70)
        full = resizing.resize(images[b, : hw[0]], new).numpy()
        refs.append(full[y : y + 32, x : x + 32])
        sy, sx = hw[0] / new[0], hw[1] / new[1]
        windows.append([y * sy, x * sx, (y + 32) * sy, (x + 32) * sx])
    out = resizing.resize_windows(images, np.array(windows, "float32"), 32, 118).numpy()
    for got, ref in zip(out, refs, strict=True):
        np.testing.assert_allclose(got, ref, atol=0.02)
    y0, x0, y1, x1 = windows[0]
    mirrored = resizing.resize_windows(images[:1], np.array([[y0, x1, y1, x0]], "float32"), 32)
    np.testing.assert_allclose(mirrored.numpy()[0, :, ::-1], refs[0], atol=0.02)


def _numpy_mined(labels, logits, ratio, min_neg, hard_fraction, chance):
    out = []
    for lab, lg, ch in zip(labels, logits, chance, strict=True):
        lab, lg = lab.reshape(-1), lg.reshape(len(lab.reshape(-1)), -1)
        p = np.exp(lg - lg.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ce = -np.log(p[np.arange(len(lab)), np.maximum(lab, 0)])
        pos = (lab >= 0) & (lab < lg.shape[-1] - 1)
        neg = np.flatnonzero(lab == lg.shape[-1] - 1)
        n_neg = max(ratio * pos.sum(), min_neg)
        n_hard = int(np.round(hard_fraction * n_neg))
        by_offence = neg[np.argsort(-(1 - p[neg, -1]), kind="stable")]
        hard = by_offence[:n_hard]
        rest = np.setdiff1d(neg, hard)
        easy = rest[np.argsort(-ch.reshape(-1)[rest], kind="stable")][: int(n_neg - n_hard)]
        sel = np.flatnonzero(pos).tolist() + hard.tolist() + easy.tolist()
        out.append(ce[sel].mean())
    return np.array(out)


def test_mined_loss_matches_numpy(monkeypatch):
    rng = np.random.default_rng(0)
    labels = rng.choice([-1, 0, 1, 2, 3, 3, 3, 3, 3], size=(3, 4, 5))
    labels[2] = 3  # an image with no positives: min_negatives still apply
    logits = rng.normal(size=(3, 4, 5, 4)).astype("float32")
    chance = rng.uniform(size=(3, 20)).astype("float32")
    monkeypatch.setattr(tf.random, "uniform", lambda shape, *a, **k: tf.constant(chance))
    loss = losses.MinedDetectionLoss(negative_ratio=2.0, min_negatives=3, hard_fraction=0.5)
    got = loss.call(tf.constant(labels), tf.constant(logits)).numpy()
    np.testing.assert_allclose(got, _numpy_mined(labels, logits, 2.0, 3, 0.5, chance), rtol=1e-5)
    config = loss.get_config()
    assert losses.MinedDetectionLoss.from_config(config).get_config() == config


def _numpy_edge_loss(e, kind, beta):
    e = np.abs(e)
    if kind == "l2":
        return e**2
    return np.where(e < beta, 0.5 * e**2 / beta, e - 0.5 * beta)


@pytest.mark.parametrize("kind", ["smooth_l1", "l2"])
@pytest.mark.parametrize("per_class", [1, 3])
def test_box_loss_matches_numpy(per_class, kind):
    rng = np.random.default_rng(per_class)
    target = rng.normal(size=(2, 3, 3, 5)).astype("float32")
    target[..., 4] = rng.integers(-1, 3, size=(2, 3, 3))
    pred = rng.normal(scale=0.3, size=(2, 3, 3, 4 * per_class)).astype("float32")
    pred[0, 0, 0] = np.nan  # a cell without a box may hold anything
    target[0, 0, 0, 4] = -1
    loss = losses.WindowBoxLoss(kind)
    got = loss.call(tf.constant(target), tf.constant(pred)).numpy()
    want = []
    for t, p in zip(target.reshape(2, 9, 5), pred.reshape(2, 9, per_class, 4), strict=True):
        errors = [
            _numpy_edge_loss(p[k, int(c) if per_class > 1 else 0] - t[k, :4], kind, 0.1).sum()
            for k, c in enumerate(t[:, 4])
            if c >= 0
        ]
        want.append(np.mean(errors) if errors else 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    config = loss.get_config()
    assert config["kind"] == kind and losses.WindowBoxLoss.from_config(config).beta == 0.1
    with pytest.raises(ValueError, match="box loss kind"):
        losses.WindowBoxLoss("l1")


def test_smooth_l1_gradient_is_bounded_and_l2_is_not():
    """A prediction 50 windows off: smooth L1's gradient per edge is 1, L2's is 2 * 50."""
    target = tf.constant([[[[0.1, 0.2, 0.8, 0.9, 0.0]]]])
    pred = tf.Variable([[[[50.1, 0.2, 0.8, 0.9]]]])
    grads = {}
    for kind in ("smooth_l1", "l2"):
        with tf.GradientTape() as tape:
            value = losses.WindowBoxLoss(kind).call(target, pred)
        grads[kind] = tape.gradient(value, pred).numpy().reshape(4)
    np.testing.assert_allclose(grads["smooth_l1"], [1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(grads["l2"], [100, 0, 0, 0], rtol=1e-5)


def test_box_targets_stay_in_window_units_bounds_for_huge_boxes():
    """Boxes up to 10 windows wide, anywhere: every regressed edge is in TARGET_RANGE
    (ymin, xmin in [-1, 1), ymax, xmax in (0, 2]); a box much larger than the window gets no
    target; the same geometry at twice the pixels gives the same targets."""
    rng = np.random.default_rng(5)
    hw = np.exp(rng.uniform(np.log(5), np.log(2300), size=(300, 2)))  # 0.02 .. 10 windows
    centre = rng.uniform(-231, SIZE + 231, size=(300, 2))
    boxes = np.concatenate([centre - hw / 2, centre + hw / 2], axis=1).astype("float32")
    targets = tf.function(lambda b: spatial.spatial_targets(b[None], [1], TINY, SIZE, C)[1])
    seen = 0
    for box in boxes:
        target = targets(tf.constant(box)).numpy().reshape(-1, 5)
        edges = target[target[:, 4] >= 0, :4]
        seen += len(edges)
        assert (edges >= -1 - 1e-6).all() and (edges <= 2 + 1e-6).all()
        assert (edges[:, :2] < 1).all() and (edges[:, 2:] > 0).all()
    assert seen > 100  # many boxes did get targets
    huge = np.array([[-500, -500, 1000, 1000]], "float32")  # 6.5 windows square
    assert (spatial.spatial_targets(huge, [1], TINY, SIZE, C)[1].numpy()[..., 4] == -1).all()
    box = np.array([[20, 30, 260, 200]], "float32")
    small = spatial.spatial_targets(box, [1], TINY, SIZE, C)[1].numpy()[0, 0, :4]
    np.testing.assert_allclose(small, [20 / 231, 30 / 231, 260 / 231, 200 / 231], rtol=1e-6)
    window_x2 = tf.constant([[0.0, 0.0, 462.0, 462.0]])  # the same geometry in 2x pixels
    big = spatial.box_ops.encode_boxes(2 * box, window_x2).numpy()[0]
    np.testing.assert_allclose(small, big, rtol=1e-6)


def test_task_models_copy_weights_and_freeze():
    keras.utils.set_random_seed(0)
    base = OverFeat("tiny", kernel_initializer="he_normal", class_names=[str(i) for i in range(C)])
    detector = tasks.task_model("detect", base)
    assert detector.background and detector.regressor is None
    np.testing.assert_array_equal(
        detector.get_layer("conv3").kernel.numpy(), base.get_layer("conv3").kernel.numpy()
    )
    kernel = detector.get_layer("fc8").kernel.numpy()
    np.testing.assert_array_equal(kernel[..., :C], base.get_layer("fc8").kernel.numpy())
    assert not kernel[..., C].any()
    localizer = tasks.task_model("localize", detector)
    assert localizer.regressor == "class_specific" and localizer.background
    trainer = OverFeatDetector(localizer)
    trainer.compile(optimizer="sgd", task="localize")
    trainable = {w.path.split("/")[0] for w in localizer.trainable_weights}
    assert trainable == {"reg_fc1", "reg_fc2", "reg_out"}
    assert set(trainer.loss) == {"class_logits", "box_deltas"}
    trainer.compile(optimizer="sgd", task="detect")
    assert not any(w.path.startswith("reg_") for w in localizer.trainable_weights)
    assert {"conv1", "fc8"} <= {w.path.split("/")[0] for w in localizer.trainable_weights}
    with pytest.raises(ValueError, match="background"):
        OverFeatDetector(base).compile(task="detect")
    with pytest.raises(ValueError, match="regressor"):
        OverFeatDetector(detector).compile(task="localize")
    with pytest.raises(ValueError, match="task"):
        tasks.task_model("segment", base)


def test_localize_training_reduces_box_loss():
    """A few steps of `detector.fit` on one repeated batch: the regressor's loss goes down."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(2, SIZE, SIZE, 3)).astype("float32")
    boxes = np.array([[[40, 50, 200, 230]]] * 2, "float32") / SIZE  # normalized yxyx
    model = tasks.task_model("localize", OverFeat("tiny", kernel_initializer="he_normal"))
    detector = OverFeatDetector(model)
    detector.compile(optimizer=keras.optimizers.Adam(1e-3), task="localize")
    y = {"boxes": boxes, "labels": np.array([[2], [2]])}
    history = detector.fit(images, y, epochs=15, batch_size=2, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0]


def _detection_examples(n: int = 6) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    images = [
        tf.io.encode_png(rng.integers(0, 255, (300, 340, 3), dtype=np.uint8)).numpy()
        for _ in range(n)
    ]
    boxes = np.array([[[0.1, 0.1, 0.7, 0.6]]] * n, "float32")
    labels = np.arange(n, dtype="int64")[:, None] % C
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "objects": {"bbox": boxes, "label": labels}}
    )


def test_train_py_stages_detect_then_localize(tmp_path):
    """`training.train(task=...)`: detect adds the background class and trains the net,
    localize trains only the regressor (trunk and classifier stay as they were)."""
    from overfeat_tf.training import run as training

    keras.utils.set_random_seed(0)
    names = [f"c{i}" for i in range(C)]
    OverFeat("tiny", class_names=names, kernel_initializer="he_normal").save(tmp_path / "cls.keras")
    common = {
        "model": "tiny",
        "epochs": 1,
        "steps_per_epoch": 2,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "verbose": 0,
    }
    results = {}
    start = tmp_path / "cls.keras"
    for task in ("detect", "localize"):
        config = training.TrainConfig(
            task=task, init_model=str(start), output=str(tmp_path / task), **common
        )
        results[task] = training.train(config, dataset=_detection_examples(), class_names=names)
        start = results[task]["model_path"]
        assert results[task]["final_step"] == 2
    cls, det, loc = (
        backbone_of(keras.models.load_model(p))  # detect / localize save an OverFeatDetector
        for p in (
            tmp_path / "cls.keras",
            results["detect"]["model_path"],
            results["localize"]["model_path"],
        )
    )
    assert det.background and not det.regressor and loc.regressor == "class_specific"
    assert not np.array_equal(
        det.get_layer("conv2").kernel.numpy(), cls.get_layer("conv2").kernel.numpy()
    )
    for name in ("conv2", "fc7", "fc8"):
        np.testing.assert_array_equal(
            loc.get_layer(name).kernel.numpy(), det.get_layer(name).kernel.numpy()
        )


def test_spatial_task_needs_an_initial_model():
    from overfeat_tf.training import run as training

    with pytest.raises(ValueError, match="--init-model"):
        training.TrainConfig(model="tiny", task="detect")


def _photos(n: int = 6) -> tf.data.Dataset:
    """Real photos (skimage's chelsea, astronaut, coffee) at 500x375 with a box over most of
    each image (85-95% of its sides), as a detection-schema dataset."""
    import skimage.data
    import skimage.transform

    rng = np.random.default_rng(0)
    photos = [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee()]
    photos = [
        skimage.transform.resize(p, (375, 500), preserve_range=True).astype(np.uint8)
        for p in photos
    ]
    images = [tf.io.encode_jpeg(photos[i % 3]).numpy() for i in range(n)]
    corners = rng.uniform(0.0, 0.08, size=(n, 2))
    boxes = np.concatenate([corners, 1 - rng.uniform(0.0, 0.08, size=(n, 2))], axis=1)
    return tf.data.Dataset.from_tensor_slices(
        {
            "image": images,
            "objects": {
                "bbox": boxes[:, None].astype("float32"),
                "label": np.arange(n)[:, None] % 3,
            },
        }
    )


def test_localize_on_real_photos_trains_with_a_finite_decreasing_loss(tmp_path):
    """The recipe of `train.py --task localize` (its defaults: smooth L1, lr 1e-2, global
    norm clipped to 1, a regressor that starts at its window) on real 500x375 photos: on a
    fixed batch of their training crops every step's loss is finite and it falls; a short
    run through `training.train` ends finite and saves a finite model."""
    from overfeat_tf.training import recipe
    from overfeat_tf.training import run as training

    names = [f"c{i}" for i in range(C)]
    keras.utils.set_random_seed(1)
    OverFeat("tiny", class_names=names, kernel_initializer="he_normal").save(tmp_path / "c.keras")
    config = training.TrainConfig(
        model="tiny",
        task="localize",
        init_model=str(tmp_path / "c.keras"),
        init="he_normal",
        batch_size=4,
        mixed_precision="float32",
        output=str(tmp_path / "run"),
        epochs=2,
        steps_per_epoch=3,
        verbose=0,
    )
    keras.utils.set_random_seed(config.seed)
    model = recipe.compile_task_model(recipe.build_task_model(config, names), config, 10)
    assert model.optimizer.global_clipnorm == 1.0 and model.optimizer.learning_rate == 1e-2
    images, y = next(iter(spatial.spatial_dataset(_photos(), "train", TINY, 4, seed=3)))
    targets = model.training_targets(y, tf.shape(images)[1:3], (5, 5))
    assert (targets["box_deltas"][..., 4] >= 0).numpy().sum() >= 4  # cells with a box
    losses = model.fit(images, y, epochs=12, batch_size=4, verbose=0).history["loss"]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses
    # the same batch with the paper's L2 at the classification rate, unclipped: diverges
    paper = dataclasses.replace(config, box_loss="l2", clipnorm=0.0, learning_rate=5e-2)
    keras.utils.set_random_seed(config.seed)
    unclipped = recipe.compile_task_model(recipe.build_task_model(paper, names), paper, 10)
    history = unclipped.fit(images, y, epochs=12, batch_size=4, verbose=0).history["loss"]
    assert not np.isfinite(history).all() or max(history) > 1e3, history
    result = training.train(config, dataset=_photos(), class_names=names)
    assert result["final_step"] == 6 and np.isfinite(result["logs"]["loss"])
    trained = backbone_of(keras.models.load_model(result["model_path"]))
    assert all(np.isfinite(w).all() for w in trained.get_weights())

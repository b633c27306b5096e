"""Tests of overfeat_tf.ops.boxes: each TF op against a NumPy reference written here (IoU against
pycocotools), eagerly, in a tf.function with unknown shapes and in a tf.data map; and the
window / pyramid geometry against pixels."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from overfeat_tf.architecture.config import ACCURATE, ACCURATE_SCALES, FAST
from overfeat_tf.ops import boxes as B


# --- NumPy references (independent of the package) -------------------------------------------
def np_area(b):
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def np_intersection(a, b):
    h = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    w = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return np.clip(h, 0, None) * np.clip(w, 0, None)


def random_boxes(rng, shape, scale=100.0):
    """Random valid yxyx boxes, float32."""
    y0 = rng.uniform(0, scale, shape)
    x0 = rng.uniform(0, scale, shape)
    h = rng.uniform(1, scale / 2, shape)
    w = rng.uniform(1, scale / 2, shape)
    return np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)


# (name, TF function, NumPy reference, argument makers); each maker takes (rng, leading dims).
def _sizes(rng, lead):
    return rng.uniform(50, 300, (*lead, 2)).astype(np.float32)


CASES = [
    ("yxyx_to_xyxy", B.yxyx_to_xyxy, lambda b: b[..., [1, 0, 3, 2]], [random_boxes]),
    ("xyxy_to_yxyx", B.xyxy_to_yxyx, lambda b: b[..., [1, 0, 3, 2]], [random_boxes]),
    (
        "corners_to_center_size",
        B.corners_to_center_size,
        lambda b: np.stack(
            [
                (b[..., 0] + b[..., 2]) / 2,
                (b[..., 1] + b[..., 3]) / 2,
                b[..., 2] - b[..., 0],
                b[..., 3] - b[..., 1],
            ],
            -1,
        ),
        [random_boxes],
    ),
    (
        "center_size_to_corners",
        B.center_size_to_corners,
        lambda c: np.stack(
            [
                c[..., 0] - c[..., 2] / 2,
                c[..., 1] - c[..., 3] / 2,
                c[..., 0] + c[..., 2] / 2,
                c[..., 1] + c[..., 3] / 2,
            ],
            -1,
        ),
        [random_boxes],
    ),
    (
        "normalize_boxes",
        B.normalize_boxes,
        lambda b, s: b / np.concatenate([s, s], -1)[..., None, :],
        [random_boxes, _sizes],
    ),
    (
        "denormalize_boxes",
        B.denormalize_boxes,
        lambda b, s: b * np.concatenate([s, s], -1)[..., None, :],
        [random_boxes, _sizes],
    ),
    (
        "clip_boxes",
        B.clip_boxes,
        lambda b, s: np.clip(b, 0, np.concatenate([s, s], -1)[..., None, :]),
        [lambda rng, lead: random_boxes(rng, lead, 300) - 50, _sizes],
    ),
    ("box_area", B.box_area, np_area, [random_boxes]),
    ("intersection", B.intersection, np_intersection, [random_boxes, random_boxes]),
    (
        "coverage",
        B.coverage,
        lambda b, w: np_intersection(b, w) / np_area(b),
        [random_boxes, random_boxes],
    ),
    (
        "pairwise_intersection",
        B.pairwise_intersection,
        lambda a, b: np_intersection(a[..., :, None, :], b[..., None, :, :]),
        [random_boxes, lambda rng, lead: random_boxes(rng, (*lead[:-1], 5))],
    ),
    (
        "flip_left_right",
        lambda b, w: B.flip_left_right(b, w[..., :1]),
        lambda b, w: np.stack(
            [b[..., 0], w[..., :1] - b[..., 3], b[..., 2], w[..., :1] - b[..., 1]], -1
        ),
        [random_boxes, lambda rng, lead: rng.uniform(100, 200, (*lead[:-1], 1)).astype("f4")],
    ),
]


def _make_args(makers, rng, lead):
    # Box makers get the full leading dims [..., N]; size makers the batch dims [...].
    args = []
    for m in makers:
        if m is _sizes:
            args.append(m(rng, lead[:-1]))
        else:
            args.append(m(rng, lead))
    # Sizes broadcast against boxes[..., :2] as [..., 1, 2].
    return [a[..., None, :] if m is _sizes else a for a, m in zip(args, makers, strict=True)]


def _np_args(args, makers):
    return [a[..., 0, :] if m is _sizes else a for a, m in zip(args, makers, strict=True)]


@pytest.mark.parametrize("name,fn,ref,makers", CASES, ids=[c[0] for c in CASES])
def test_op_matches_numpy_eager_graph_and_data(name, fn, ref, makers, rng):
    lead = (3, 7)  # a batch of 3 sets of 7 boxes
    args = _make_args(makers, rng, lead)
    expected = ref(*_np_args(args, makers))

    np.testing.assert_allclose(fn(*args).numpy(), expected, rtol=1e-5, atol=1e-4)

    # Graph mode with every dim unknown.
    specs = [tf.TensorSpec([None] * a.ndim, tf.float32) for a in args]
    graph_fn = tf.function(fn, input_signature=specs)
    np.testing.assert_allclose(graph_fn(*args).numpy(), expected, rtol=1e-5, atol=1e-4)

    # Inside a tf.data map, one batch element at a time.
    ds = tf.data.Dataset.from_tensor_slices(tuple(args)).map(fn)
    got = np.stack([x.numpy() for x in ds])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_pairwise_iou_matches_pycocotools(rng):
    a = random_boxes(rng, (9,)).astype(np.float64)
    b = random_boxes(rng, (6,)).astype(np.float64)
    a[3] = b[2]  # one identical pair
    xywh = lambda x: np.stack([x[:, 1], x[:, 0], x[:, 3] - x[:, 1], x[:, 2] - x[:, 0]], 1)  # noqa: E731
    expected = mask_utils.iou(xywh(a), xywh(b), np.zeros(len(b), np.uint8))
    got = B.pairwise_iou(a, b).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert got[3, 2] == pytest.approx(1.0)

    graph_fn = tf.function(B.pairwise_iou, input_signature=[tf.TensorSpec([None, None])] * 2)
    np.testing.assert_allclose(graph_fn(a.astype("f4"), b.astype("f4")), expected, atol=1e-5)
    # Batched: [2, N, 4] x [2, M, 4] -> [2, N, M].
    batched = B.pairwise_iou(np.stack([a, a]), np.stack([b, b])).numpy()
    np.testing.assert_allclose(batched[1], expected, atol=1e-9)


def test_iou_of_empty_boxes_is_zero():
    empty = np.array([[5.0, 5.0, 5.0, 9.0]])
    assert B.pairwise_iou(empty, empty).numpy()[0, 0] == 0.0
    assert B.coverage(empty, [[0.0, 0, 10, 10]]).numpy()[0] == 0.0


def test_conversions_round_trip(rng):
    b = random_boxes(rng, (4, 5))
    np.testing.assert_array_equal(B.xyxy_to_yxyx(B.yxyx_to_xyxy(b)), b)
    np.testing.assert_allclose(B.center_size_to_corners(B.corners_to_center_size(b)), b, atol=1e-4)
    size = np.array([123.0, 456.0], np.float32)
    np.testing.assert_allclose(B.denormalize_boxes(B.normalize_boxes(b, size), size), b, rtol=1e-6)
    np.testing.assert_allclose(B.flip_left_right(B.flip_left_right(b, 77.0), 77.0), b, atol=1e-4)


def test_bad_boxes_raise():
    with pytest.raises(ValueError, match="last dimension of 4"):
        B.box_area(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="last dimension of 2"):
        B.normalize_boxes(np.zeros((3, 4)), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="stride"):
        B.window_boxes(2, 2, 0, 221)


# --- window geometry ---------------------------------------------------------------------------
@pytest.mark.parametrize("stride", ["fine", "coarse"])
@pytest.mark.parametrize("scale", ACCURATE_SCALES)
def test_windows_tile_the_level_exactly(scale, stride):
    config = ACCURATE
    step = config.fine_stride if stride == "fine" else config.coarse_stride
    out_h, out_w = config.output_size(scale[0], stride), config.output_size(scale[1], stride)
    win = B.window_boxes(out_h, out_w, step, config.crop_size).numpy()
    assert win.shape == (out_h, out_w, 4)
    i, j = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
    np.testing.assert_array_equal(win[..., 0], i * step)
    np.testing.assert_array_equal(win[..., 1], j * step)
    np.testing.assert_array_equal(win[..., 2] - win[..., 0], config.crop_size)
    np.testing.assert_array_equal(win[..., 3] - win[..., 1], config.crop_size)
    # Table 5 scales fit the fine stride exactly: the last window ends at the image edge.
    assert win[..., 2].max() <= scale[0] and win[..., 3].max() <= scale[1]
    if stride == "fine":
        assert win[-1, -1, 2] == scale[0] and win[-1, -1, 3] == scale[1]


def test_window_of_a_fine_cell_holds_the_expected_pixels():
    config = ACCURATE
    h, w = ACCURATE_SCALES[1]  # 281 x 317: a 6 x 9 fine map
    image = np.arange(h * w, dtype=np.int64).reshape(h, w)  # pixel value = its index
    out_h, out_w = config.output_size(h), config.output_size(w)
    assert (out_h, out_w) == (6, 9)
    win = B.window_boxes(out_h, out_w, config.fine_stride, config.crop_size).numpy()
    for i, j in [(0, 0), (2, 5), (5, 8)]:
        y0, x0, y1, x1 = win[i, j].astype(int)
        crop = image[y0:y1, x0:x1]
        assert crop.shape == (config.crop_size, config.crop_size)
        assert crop[0, 0] == (12 * i) * w + 12 * j  # top-left pixel (12 i, 12 j)
        assert crop[-1, -1] == (12 * i + 220) * w + 12 * j + 220


def test_window_boxes_graph_mode_unknown_sizes():
    fn = tf.function(
        lambda h, w: B.window_boxes(h, w, FAST.fine_stride, FAST.crop_size),
        input_signature=[tf.TensorSpec([], tf.int32)] * 2,
    )
    win = fn(tf.constant(3), tf.constant(4)).numpy()
    assert win.shape == (3, 4, 4)
    np.testing.assert_array_equal(win[2, 3], [32, 48, 32 + 231, 48 + 231])


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize("scale", ACCURATE_SCALES[::2] + ACCURATE_SCALES[-1:])
def test_level_mapping_round_trip_and_known_values(scale, flipped):
    original = (480.0, 640.0)
    box = np.array([[100.0, 50.0, 200.0, 300.0], [0.0, 0.0, 480.0, 640.0]], np.float32)
    level = B.original_to_level(box, original, scale, flipped).numpy()
    sy, sx = scale[0] / original[0], scale[1] / original[1]
    expected = box * [sy, sx, sy, sx]
    if flipped:
        expected = np.stack(
            [expected[:, 0], scale[1] - expected[:, 3], expected[:, 2], scale[1] - expected[:, 1]],
            1,
        )
    np.testing.assert_allclose(level, expected, rtol=1e-6, atol=1e-4)
    back = B.level_to_original(level, original, scale, flipped).numpy()
    np.testing.assert_allclose(back, box, rtol=1e-6, atol=1e-4)
    # The whole image maps to the whole level, flipped or not.
    np.testing.assert_allclose(level[1], [0, 0, scale[0], scale[1]], atol=1e-4)


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize("scale", [ACCURATE_SCALES[0], ACCURATE_SCALES[3]])
def test_level_mapping_matches_resized_pixels(scale, flipped):
    """A rectangle drawn in the original image lands where original_to_level says, after
    tf.image.resize (nearest) and tf.image.flip_left_right, the way the pyramid is built."""
    h0, w0 = 300, 420
    box = np.array([60.0, 90.0, 210.0, 250.0])  # whole pixels
    image = np.zeros((h0, w0, 1), np.float32)
    image[60:210, 90:250] = 1.0
    level = tf.image.resize(image, scale, method="nearest")
    if flipped:
        level = tf.image.flip_left_right(level)
    mask = level.numpy()[..., 0] > 0.5
    y0, x0, y1, x1 = B.original_to_level(box, (h0, w0), scale, flipped).numpy()
    # Nearest resizing keeps exactly the pixels whose centres fall inside the mapped box
    # (half-open [x0, x1); mirrored, the open end is the left one: (x0, x1]).
    cy = np.arange(scale[0])[:, None] + 0.5
    cx = np.arange(scale[1])[None, :] + 0.5
    in_x = (cx > x0) & (cx <= x1) if flipped else (cx >= x0) & (cx < x1)
    inside = (cy >= y0) & (cy < y1) & in_x
    np.testing.assert_array_equal(mask, inside)


@pytest.mark.parametrize("stride", ["fine", "coarse"])
@pytest.mark.parametrize("flipped", [False, True])
def test_box_through_window_frame_and_back(stride, flipped, rng):
    """Original box -> level -> regression target of the window of cell (i, j) -> decoded ->
    original: exact, for several scales, both flips and both strides."""
    config = ACCURATE
    step = config.fine_stride if stride == "fine" else config.coarse_stride
    original = (375.0, 500.0)
    box = np.array([80.0, 120.0, 260.0, 330.0], np.float32)
    for scale in ACCURATE_SCALES[1:4]:
        out_h, out_w = config.output_size(scale[0], stride), config.output_size(scale[1], stride)
        windows = B.window_boxes(out_h, out_w, step, config.crop_size)  # [h, w, 4]
        level = B.original_to_level(box, original, scale, flipped)  # [4]
        deltas = B.encode_boxes(level, windows)  # [h, w, 4]
        decoded = B.decode_boxes(deltas, windows)
        back = B.level_to_original(decoded, original, scale, flipped).numpy()
        np.testing.assert_allclose(back, np.broadcast_to(box, back.shape), atol=1e-3)
        # The target of a window is the box in window units.
        i, j = out_h // 2, out_w // 2
        wy, wx = i * step, j * step
        expected = (level.numpy() - [wy, wx, wy, wx]) / config.crop_size
        np.testing.assert_allclose(deltas.numpy()[i, j], expected, atol=1e-5)


def test_encode_decode_known_values_and_round_trip(rng):
    window = np.array([12.0, 24.0, 233.0, 245.0], np.float32)
    np.testing.assert_allclose(B.encode_boxes(window, window), [0, 0, 1, 1])
    half = np.array([12.0 + 110.5, 24.0, 233.0, 245.0 - 110.5], np.float32)
    np.testing.assert_allclose(B.encode_boxes(half, window), [0.5, 0, 1, 0.5])
    boxes = random_boxes(rng, (6, 10))
    windows = random_boxes(rng, (6, 10))
    np.testing.assert_allclose(
        B.decode_boxes(B.encode_boxes(boxes, windows), windows), boxes, rtol=1e-5, atol=1e-3
    )
    fn = tf.function(
        lambda b, w: B.decode_boxes(B.encode_boxes(b, w), w),
        input_signature=[tf.TensorSpec([None, None, 4])] * 2,
    )
    np.testing.assert_allclose(fn(boxes, windows), boxes, rtol=1e-5, atol=1e-3)


def test_coverage_skips_windows_holding_under_half_the_box():
    window = np.array([0.0, 0.0, 221.0, 221.0])
    inside = np.array([10.0, 10.0, 100.0, 100.0])
    half_out = np.array([0.0, 171.0, 100.0, 271.0])  # exactly half the box in the window
    mostly_out = np.array([0.0, 200.0, 100.0, 300.0])
    got = B.coverage(np.stack([inside, half_out, mostly_out]), window).numpy()
    np.testing.assert_allclose(got, [1.0, 0.5, 0.21])


def test_level_mapping_in_graph_and_data(rng):
    """Batched over levels, every shape unknown, and per element in a tf.data map."""
    boxes = random_boxes(rng, (4, 6), 200.0)  # 4 levels x 6 boxes
    original = np.array([[300.0, 400.0]] * 4, np.float32)[:, None, :]  # [4, 1, 2]
    levels = np.array(ACCURATE_SCALES[:4], np.float32)[:, None, :]
    flipped = np.array([[False], [True], [False], [True]])  # [4, 1]
    want = np.stack(
        [
            B.original_to_level(boxes[k], original[k, 0], levels[k, 0], bool(flipped[k, 0]))
            for k in range(4)
        ]
    )
    specs = [
        tf.TensorSpec([None, None, 4]),  # boxes
        tf.TensorSpec([None, None, 2]),  # original size
        tf.TensorSpec([None, None, 2]),  # level size
        tf.TensorSpec([None, None], tf.bool),  # flipped
    ]
    forward = tf.function(B.original_to_level, input_signature=specs)
    backward = tf.function(B.level_to_original, input_signature=specs)
    level = forward(boxes, original, levels, flipped).numpy()
    np.testing.assert_allclose(level, want, atol=1e-4)
    np.testing.assert_allclose(backward(level, original, levels, flipped), boxes, atol=1e-3)
    ds = tf.data.Dataset.from_tensor_slices((boxes, original, levels, flipped))
    got = np.stack([x.numpy() for x in ds.map(B.original_to_level)])
    np.testing.assert_allclose(got, want, atol=1e-4)

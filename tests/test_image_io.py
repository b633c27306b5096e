"""The one image-input module: decoding real photos in every format and mode against PIL,
eagerly, in a graph and in `tf.data`; `load_image`'s inputs and errors; the one resize.

Photos are scikit-image's sample files (`skimage.data`: chelsea, astronaut, coffee, camera
(grey), rocket.jpg, logo.png (RGBA), no_time_for_that_tiny.gif (animated)); the other
formats are converted from them by PIL into `tmp_path`. The reference is PIL's own
`Image.convert("RGB")`, equal to the pixel for every format: JPEG too, since
`decode_image` uses libjpeg's accurate IDCT, as PIL does (TF's default fast IDCT differs
from PIL by up to 18 levels, 1.3 on average, on these photos). The exception is 16-bit
PNG, where PIL's conversion clips every sample over 255 to white: there the reference is
the high byte of the 16-bit samples (`v >> 8`).
"""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from overfeat_tf.data.image_io import (
    ImageNotFoundError,
    decode_image,
    header_size,
    load_image,
    to_rgb,
)
from overfeat_tf.ops import resizing
from overfeat_tf.ops.resizing import resize, resize_short_side, short_side_size

SAMPLES = Path(skimage.data.data_dir)
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 255, size=(37, 53, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (grey [H, W] or RGB [H, W, 3] uint16), written by hand: PIL writes no
    16-bit RGB."""
    height, width = samples.shape[:2]
    color = 2 if samples.ndim == 3 else 0
    rows = samples.astype(">u2").reshape(height, -1).view(np.uint8)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _bitfields_bmp(rgba_bmp: bytes, masks=(0x00FF0000, 0x0000FF00, 0x000000FF)) -> bytes:
    """A 32-bit BMP re-written with BI_BITFIELDS (as GIMP and Windows write them)."""
    offset = struct.unpack("<I", rgba_bmp[10:14])[0]
    header = bytearray(rgba_bmp[:54])
    header[30:34] = struct.pack("<I", 3)
    header[10:14] = struct.pack("<I", offset + 12)
    body = bytes(header) + struct.pack("<3I", *masks) + rgba_bmp[offset:]
    return body[:2] + struct.pack("<I", len(body)) + body[6:]


def _photo(name: str) -> Image.Image:
    return Image.open(SAMPLES / name)


def _cases() -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (file bytes, the expected RGB uint8 pixels)."""
    chelsea = _photo("chelsea.png").convert("RGB")  # 300 x 451, a real photo
    grey16 = np.asarray(_photo("camera.png")).astype(np.uint16) * 257 + 100
    rgb16 = np.asarray(_photo("coffee.png").convert("RGB")).astype(np.uint16) * 256 + 255
    files = {
        "chelsea.png": (SAMPLES / "chelsea.png").read_bytes(),
        "astronaut.png": (SAMPLES / "astronaut.png").read_bytes(),
        "coffee.png": (SAMPLES / "coffee.png").read_bytes(),
        "camera.png (grey)": (SAMPLES / "camera.png").read_bytes(),
        "logo.png (RGBA)": (SAMPLES / "logo.png").read_bytes(),
        "rocket.jpg": (SAMPLES / "rocket.jpg").read_bytes(),
        "animated.gif": (SAMPLES / "no_time_for_that_tiny.gif").read_bytes(),
        "rgb.jpg": _encode(chelsea, "JPEG", quality=90),
        "grey.jpg": _encode(chelsea.convert("L"), "JPEG"),
        "cmyk.jpg": _encode(chelsea.convert("CMYK"), "JPEG"),
        "progressive.jpg": _encode(chelsea, "JPEG", progressive=True),
        "rgba.png": _encode(chelsea.convert("RGBA"), "PNG"),
        "la.png": _encode(chelsea.convert("LA"), "PNG"),
        "palette.png": _encode(chelsea.convert("P"), "PNG", transparency=0),
        "palette.gif": _encode(chelsea.convert("P"), "GIF"),
        "rgb.bmp": _encode(chelsea, "BMP"),
        "grey.bmp": _encode(chelsea.convert("L"), "BMP"),
        "palette.bmp": _encode(chelsea.convert("P"), "BMP"),
        "rgba.bmp": _encode(chelsea.convert("RGBA"), "BMP"),
        "bitfields.bmp": _bitfields_bmp(_encode(chelsea.convert("RGBA"), "BMP")),
    }
    cases = {
        name: (data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        for name, data in files.items()
    }
    # 16-bit: the high byte of each sample (PIL's convert would clip them to 255)
    cases["grey16.png"] = (_png16(grey16), np.repeat((grey16 >> 8)[..., None], 3, -1))
    cases["rgb16.png"] = (_png16(rgb16), (rgb16 >> 8).astype(np.uint8))
    return cases


CASES = _cases()
graph_decode = tf.function(
    lambda s: decode_image(s, max_pixels=10_000_000), input_signature=[tf.TensorSpec([], tf.string)]
)


def test_cases_are_what_they_say():
    """The converted files really are in the modes the tests are about."""
    modes = {name: Image.open(io.BytesIO(data)).mode for name, (data, _) in CASES.items()}
    assert modes["grey.jpg"] == "L" and modes["cmyk.jpg"] == "CMYK"
    assert modes["la.png"] == "LA" and modes["palette.png"] == "P"
    assert modes["logo.png (RGBA)"] == "RGBA" and modes["camera.png (grey)"] == "L"
    assert modes["grey16.png"] == "I;16" and modes["palette.bmp"] == "P"
    assert Image.open(io.BytesIO(CASES["animated.gif"][0])).n_frames > 1
    assert struct.unpack("<H", CASES["palette.bmp"][0][28:30]) == (8,)
    # PIL's own conversion of 16-bit grey clips: why the reference is `v >> 8` there
    pil16 = np.asarray(Image.open(io.BytesIO(CASES["grey16.png"][0])).convert("RGB"))
    assert (pil16 == 255).mean() > 0.5 > (CASES["grey16.png"][1] == 255).mean()


@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_matches_pil_eager_graph_and_dataset(name, tmp_path):
    contents, want = CASES[name]
    assert tuple(header_size(tf.constant(contents)).numpy()) == want.shape[:2]
    eager = decode_image(tf.constant(contents))
    assert eager.dtype == tf.uint8 and eager.shape == want.shape
    np.testing.assert_array_equal(eager.numpy(), want)
    np.testing.assert_array_equal(graph_decode(contents).numpy(), want)
    path = tmp_path / "image"
    path.write_bytes(contents)
    files = tf.data.Dataset.from_tensor_slices([str(path)])
    (mapped,) = files.map(lambda p: decode_image(tf.io.read_file(p)), num_parallel_calls=2)
    np.testing.assert_array_equal(mapped.numpy(), want)
    for source in (path, str(path), contents, tf.constant(contents)):
        np.testing.assert_array_equal(load_image(source).numpy(), want)
    np.testing.assert_array_equal(to_rgb(tf.constant(contents)).numpy(), want.astype(np.float32))


def test_animated_gif_gives_its_first_frame():
    contents, want = CASES["animated.gif"]
    gif = Image.open(io.BytesIO(contents))
    gif.seek(1)
    second = np.asarray(gif.convert("RGB"))
    assert (second != want).any()  # the frames differ, so the first one was chosen
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB)]
    made = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = np.asarray(Image.open(io.BytesIO(made)).convert("RGB"))
    np.testing.assert_array_equal(decode_image(made).numpy(), first)


def test_top_down_bmp_has_positive_height():
    header = bytearray(_encode(Image.fromarray(RGB), "BMP"))
    height = struct.unpack("<i", header[22:26])[0]
    header[22:26] = struct.pack("<i", -height)
    assert tuple(header_size(tf.constant(bytes(header))).numpy()) == (37, 53)


def _png_header(height: int, width: int) -> bytes:
    """A PNG signature and IHDR chunk (no image data): enough for the header check."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def _rle_bmp() -> bytes:
    header = bytearray(_encode(Image.fromarray(RGB).convert("P"), "BMP"))
    header[30:34] = struct.pack("<I", 1)  # BI_RLE8: TF would return wrong pixels
    return bytes(header)


@pytest.mark.parametrize(
    "contents,message",
    [
        (b"", "Empty image string"),
        (b"hello, world", "Undecodable image"),
        (_png_header(100_000, 100_000), "Image too large"),
        (_png_header(0, 10), "Zero-sized image"),
        (_encode(Image.fromarray(RGB).convert("1"), "BMP"), "Unsupported BMP"),
        (_rle_bmp(), "Unsupported BMP"),
        (_bitfields_bmp(_encode(Image.fromarray(RGB).convert("RGBA"), "BMP"), (1, 2, 3)), "BMP"),
    ],
)
def test_bad_input_is_a_clear_invalid_argument(contents, message):
    for decode in (graph_decode, lambda s: decode_image(tf.constant(s), max_pixels=10_000)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            decode(contents)
    assert graph_decode(CASES["rgb.bmp"][0]).shape == (300, 451, 3)  # the next call works


def test_truncated_data_fails_in_the_decoder_not_the_process():
    with pytest.raises(tf.errors.InvalidArgumentError):
        graph_decode(CASES["chelsea.png"][0][:600])
    assert graph_decode(CASES["rocket.jpg"][0]).shape == (427, 640, 3)


def test_decode_inside_tf_data_of_mixed_formats():
    names = ["chelsea.png", "animated.gif", "rocket.jpg", "palette.bmp", "grey16.png"]
    ds = tf.data.Dataset.from_tensor_slices([CASES[n][0] for n in names])
    for image, name in zip(ds.map(decode_image), names, strict=True):
        np.testing.assert_array_equal(image.numpy(), CASES[name][1])


# --- to_rgb: decoded tensors ----------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_to_rgb_of_decoded_tensors(channels, dtype):
    image = RNG.integers(0, 256 if dtype != np.uint16 else 65536, (9, 7, channels)).astype(dtype)
    rgb = np.repeat(image[..., :1], 3, -1) if channels < 3 else image[..., :3]
    want = rgb.astype(np.float32) / (257 if dtype == np.uint16 else 1)
    eager = to_rgb(image)
    assert eager.dtype == tf.float32 and eager.shape == (9, 7, 3)
    np.testing.assert_allclose(eager.numpy(), want, rtol=1e-6)
    spec = tf.TensorSpec([None, None, None], tf.as_dtype(dtype))
    ds = tf.data.Dataset.from_generator(lambda: iter([image]), output_signature=spec)
    (mapped,) = ds.map(to_rgb)
    np.testing.assert_allclose(mapped.numpy(), want, rtol=1e-6)


def test_to_rgb_errors():
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        to_rgb(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="real numbers"):
        to_rgb(np.zeros((4, 4, 3), bool))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"C in 1\.\.4"):
        to_rgb(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-empty"):
        to_rgb(np.zeros((0, 4, 3), np.uint8))


# --- load_image: eager, any input -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"])
def test_load_pil_image_of_any_mode(mode):
    image = _photo("chelsea.png").convert(mode)
    got = load_image(image)
    assert got.dtype == tf.uint8 and got.shape == (300, 451, 3)
    np.testing.assert_array_equal(got.numpy(), np.asarray(image.convert("RGB")))


def test_load_pil_16_bit_and_float_modes():
    contents, want = CASES["grey16.png"]
    opened = Image.open(io.BytesIO(contents))
    assert opened.mode == "I;16"
    np.testing.assert_array_equal(load_image(opened).numpy(), want)  # = the file's pixels
    grey = np.asarray(_photo("camera.png"))
    for mode in ("I", "F"):
        np.testing.assert_array_equal(
            load_image(_photo("camera.png").convert(mode)).numpy(),
            np.repeat(grey[..., None], 3, -1),
        )


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 1), (20, 30, 2), (20, 30, 3), (20, 30, 4)])
def test_load_arrays_and_tensors(shape):
    pixels = RNG.integers(0, 256, shape).astype(np.uint8)
    grey_or_rgb = pixels.reshape(20, 30, -1)
    want = np.repeat(grey_or_rgb[..., :1], 3, -1) if grey_or_rgb.shape[-1] < 3 else pixels[..., :3]
    for source in (pixels, tf.constant(pixels), pixels.astype(np.float64), pixels.astype(int)):
        got = load_image(source)
        assert got.dtype == tf.uint8
        np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(load_image(pixels.astype(np.uint16) * 257).numpy(), want)
    off_by_rounding = pixels + np.where(pixels < 255, 0.4, -0.4)  # e.g. resized pixels
    np.testing.assert_array_equal(load_image(off_by_rounding).numpy(), want)
    np.testing.assert_array_equal(load_image(np.clip(pixels - 0.3, -0.3, None)).numpy(), want)


def test_load_image_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageNotFoundError, match=f"{missing} not found"):
        load_image(missing)
    with pytest.raises(FileNotFoundError):  # it is both
        load_image(str(missing))
    with pytest.raises(ValueError, match="is a directory"):
        load_image(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(ValueError, match=f"{notes} is not a readable image: Undecodable image"):
        load_image(notes)
    broken = tmp_path / "broken.png"
    broken.write_bytes(CASES["chelsea.png"][0][:600])
    with pytest.raises(ValueError, match=f"{broken} is not a readable image"):
        load_image(broken)
    with pytest.raises(ValueError, match="image bytes is not a readable image: Empty"):
        load_image(b"")
    with pytest.raises(ValueError, match="Image too large"):
        load_image(CASES["chelsea.png"][0], max_pixels=1000)


@pytest.mark.parametrize(
    "array,message",
    [
        (np.zeros(5, np.uint8), "shape"),
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 3), bool), "real numbers"),
        (np.full((4, 4, 3), 255.5), r"0\.\.255"),
        (np.full((4, 4, 3), -1), r"0\.\.255"),
        (np.full((4, 4, 3), np.nan), r"0\.\.255"),
        (np.full((4, 4, 3), 0.5, np.float32), r"0\.\.1"),
    ],
)
def test_load_image_rejects_bad_arrays(array, message):
    with pytest.raises(ValueError, match=message):
        load_image(array)


# --- resize -----------------------------------------------------------------------------------


def _numpy_short_side_size(hw, side, ratio=4.0):
    hw = np.asarray(hw, np.float32)
    scale = np.float32(side) / hw.min()
    size = np.maximum(np.round(hw * scale).astype(np.int32), side)
    return np.minimum(size, int(np.floor(np.float32(side) * np.float32(ratio))))


SIZES = [(300, 451), (451, 300), (231, 231), (1, 1000), (37, 53), (1000, 999), (640, 427)]
EXTREME = [(5000, 2), (2, 5000), (1, 20000), (30000, 1), (100, 401), (399, 100)]


def test_short_side_size_matches_numpy():
    signature = [tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.int32)]
    graph = tf.function(short_side_size, input_signature=signature)
    for hw in SIZES + EXTREME:
        for side in (1, 64, 221, 231, 256, 471, 590):
            want = _numpy_short_side_size(hw, side)
            got = short_side_size(hw, side).numpy()
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(graph(tf.constant(hw), tf.constant(side)).numpy(), want)
            assert min(got) == side and got.dtype == np.int32
            assert max(got) <= 4 * side  # the default bound: at most 4 : 1
    with pytest.raises(ValueError, match=">= 1"):
        short_side_size((10, 10), 0)


@pytest.mark.parametrize("ratio", [1, 1.5, 2.0, 8])
def test_short_side_size_bounds_the_long_side(ratio):
    for hw in SIZES + EXTREME:
        got = short_side_size(hw, 231, ratio).numpy()
        np.testing.assert_array_equal(got, _numpy_short_side_size(hw, 231, ratio))
        assert min(got) == 231 and max(got) <= 231 * ratio
        if max(hw) / min(hw) <= ratio - 0.01:  # within the bound: the aspect ratio is kept
            assert abs(max(got) / min(got) - max(hw) / min(hw)) < 0.01
        else:  # beyond it: squeezed to the bound, the orientation kept
            assert max(got) == int(231 * ratio)
            assert (got[0] > got[1]) == (hw[0] > hw[1]) or got[0] == got[1]


@pytest.mark.parametrize("bad", [0.5, 0, -2, True, "4", float("nan")])
def test_bad_max_aspect_ratio_is_a_value_error(bad):
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        short_side_size((10, 20), 5, bad)


@pytest.mark.parametrize(
    "size", [(150, 225), (600, 902), (231, 231), (300, 451), (290, 600), (400, 200)]
)
def test_resize_is_tf_image_resize_antialiased_when_shrinking(size):
    image = np.asarray(_photo("chelsea.png"))  # uint8 [300, 451, 3]
    shrinks = size[0] < 300 or size[1] < 451
    want = tf.image.resize(image.astype(np.float32), size, antialias=shrinks).numpy()
    got = resize(image, size)
    assert got.dtype == tf.float32 and tuple(got.shape) == (*size, 3)
    np.testing.assert_array_equal(got.numpy(), np.clip(want, 0, 255))
    batch = resize(np.stack([image, image[::-1]]), size).numpy()
    np.testing.assert_array_equal(batch[0], got.numpy())
    np.testing.assert_array_equal(batch[1], resize(image[::-1], size).numpy())


def test_resize_short_side_shapes_dataset_and_zero():
    image = np.asarray(_photo("chelsea.png"))
    got = resize_short_side(image, 231)
    assert tuple(got.shape) == (231, 347, 3)  # 451 * 231 / 300 = 347.3
    np.testing.assert_array_equal(got.numpy(), resize(image, (231, 347)).numpy())
    assert tuple(resize_short_side(image[None], 600).shape) == (1, 600, 902, 3)
    same = resize_short_side(image, 0)
    assert same.dtype == tf.float32
    np.testing.assert_array_equal(same.numpy(), image)
    spec = tf.TensorSpec([None, None, 3], tf.uint8)
    ds = tf.data.Dataset.from_generator(lambda: iter([image]), output_signature=spec)
    (mapped,) = ds.map(lambda x: resize_short_side(x, 231))
    np.testing.assert_array_equal(mapped.numpy(), got.numpy())
    with pytest.raises(ValueError, match=">= 0"):
        resize_short_side(image, -1)


def test_every_caller_shares_the_resize():
    from overfeat_tf import features
    from overfeat_tf.data import inputs as data

    image = np.asarray(_photo("coffee.png"))
    assert features.resize_short_side is resizing.resize_short_side
    np.testing.assert_array_equal(
        data.rescale_short_side(image, 256).numpy(), resize_short_side(image, 256).numpy()
    )

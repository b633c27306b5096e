"""The released-weights converter, on synthetic files in the exact released layout.

The synthetic files are built here from the paper's numbers (Tables 1 and 3), independently
of `convert.weight_layout`: raw little-endian float32, every layer's Torch kernel
`[out, in, kH, kW]` then its bias, fc layers as convolutions. A NumPy forward pass reads the
raw file in Torch layout and must match the converted Keras model.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from overfeat_tf import convert as convert_command
from overfeat_tf.architecture.config import TINY
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.release import convert as cv

# (layer, out, in, kernel, stride, padding, pool) in file order: paper Table 1 (fast) and
# Table 3 (accurate); fc6..fc8 are stored as convolutions.
PAPER = {
    "fast": [
        ("conv1", 96, 3, 11, 4, 0, 2),
        ("conv2", 256, 96, 5, 1, 0, 2),
        ("conv3", 512, 256, 3, 1, 1, 0),
        ("conv4", 1024, 512, 3, 1, 1, 0),
        ("conv5", 1024, 1024, 3, 1, 1, 2),
        ("fc6", 3072, 1024, 6, 1, 0, 0),
        ("fc7", 4096, 3072, 1, 1, 0, 0),
        ("fc8", 1000, 4096, 1, 1, 0, 0),
    ],
    "accurate": [
        ("conv1", 96, 3, 7, 2, 0, 3),
        ("conv2", 256, 96, 7, 1, 0, 2),
        ("conv3", 512, 256, 3, 1, 1, 0),
        ("conv4", 512, 512, 3, 1, 1, 0),
        ("conv5", 1024, 512, 3, 1, 1, 0),
        ("conv6", 1024, 1024, 3, 1, 1, 3),
        ("fc6", 4096, 1024, 5, 1, 0, 0),
        ("fc7", 4096, 4096, 1, 1, 0, 0),
        ("fc8", 1000, 4096, 1, 1, 0, 0),
    ],
    "tiny": [  # overfeat_tf's narrow test net (config.TINY), same layout rules
        ("conv1", 16, 3, 11, 4, 0, 2),
        ("conv2", 32, 16, 5, 1, 0, 2),
        ("conv3", 64, 32, 3, 1, 1, 0),
        ("conv4", 64, 64, 3, 1, 1, 0),
        ("conv5", 64, 64, 3, 1, 1, 2),
        ("fc6", 128, 64, 6, 1, 0, 0),
        ("fc7", 128, 128, 1, 1, 0, 0),
        ("fc8", 10, 128, 1, 1, 0, 0),
    ],
}
PAPER_SIZES = {"fast": 145_920_872, "accurate": 144_656_488}  # floats in each released file
CROP = {"fast": 231, "accurate": 221}
MEAN, STD = 118.380948, 61.896913  # the released nets' input normalization
FRACTION_BITS = 19  # encoded value = code + (index mod 2**19) / 2**19: exact in float32
CHUNK = 1 << 22


def _tensors(net):
    """(layer number, layer, kind, Torch shape) of every tensor, in file order."""
    for n, (layer, out, cin, k, *_) in enumerate(PAPER[net]):
        yield n, layer, "kernel", (out, cin, k, k)
        yield n, layer, "bias", (out,)


def _code(n: int, kind: str) -> int:
    """Integer part of the encoded values: the layer number and kernel/bias (1..18)."""
    return 2 * n + (kind == "bias") + 1


def _encoded(code: int, flat_index: np.ndarray) -> np.ndarray:
    fraction = (flat_index % (1 << FRACTION_BITS)) / float(1 << FRACTION_BITS)
    return (code + fraction).astype(np.float32)


def _write(path, net, chunks) -> None:
    """Write every tensor of `net` in file order; `chunks(n, layer, kind, shape)` yields data."""
    with open(path, "wb") as f:
        for tensor in _tensors(net):
            for chunk in chunks(*tensor):
                chunk.astype("<f4").tofile(f)


def _encoded_chunks(n, layer, kind, shape):
    size = int(np.prod(shape))
    for start in range(0, size, CHUNK):
        yield _encoded(_code(n, kind), np.arange(start, min(start + CHUNK, size)))


def _random_chunks(seed):
    """He-scaled random weights (activations stay O(1)); small random biases."""
    rng = np.random.default_rng(seed)

    def chunks(n, layer, kind, shape):
        size = int(np.prod(shape))
        scale = np.sqrt(2.0 / np.prod(shape[1:])) if kind == "kernel" else 0.05
        for start in range(0, size, CHUNK):
            yield rng.standard_normal(min(CHUNK, size - start), dtype=np.float32) * scale

    return chunks


def _class_names() -> list[str]:
    """1000 names in OverFeat's style: starts with kit fox, 'crane' twice, odd characters."""
    names = [f"synthetic class {i}, Genus species" for i in range(1000)]
    names[:4] = ["kit fox, Vulpes macrotis", "English setter", "Siberian husky", "crane"]
    names[134] = "crane"
    names[517] = 'yellow lady\'s slipper, "yellow" lady-slipper'
    names[600] = "caf\u00e9 \\ back\tslash"
    return names


def _c_literal(name: str) -> str:
    """A C string literal for a name (the file is UTF-8, as C sources may be)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t") + '"'


def _write_header(path, names) -> None:
    """A net_init.hpp-like header: the class_names array among other C declarations."""
    lines = [
        "// Generated network description (synthetic test file)",
        "#include <string>",
        f"const int nClasses = {len(names)};",
        "/* the class names, in the network's output order */",
        "const char* class_names[] = {",
    ]
    for i, name in enumerate(names):
        literal = _c_literal(name)
        if i == 1:  # C concatenates adjacent literals
            literal = f'"{name[:3]}" /* split */ "{name[3:]}"'
        lines.append(f"  {literal},{'  // first' if i == 0 else ''}")
    lines += ["};", "std::string get_name(int i) { return class_names[i]; }", ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


@pytest.fixture(scope="module", params=["fast", "accurate"])
def released(request, tmp_path_factory):
    """Per net: an encoded and a random weight file in the released layout (built once)."""
    net = request.param
    folder = tmp_path_factory.mktemp(net)
    files = {"net": net, "encoded": folder / "encoded", "random": folder / "random"}
    _write(files["encoded"], net, _encoded_chunks)
    _write(files["random"], net, _random_chunks(seed=len(net)))
    yield files
    for key in ("encoded", "random"):
        files[key].unlink()


@pytest.fixture(scope="module")
def header(tmp_path_factory):
    path = tmp_path_factory.mktemp("hpp") / "net_init.hpp"
    _write_header(path, _class_names())
    return path


def _sparse(path, floats: int):
    """A file of the given size in float32 values, without writing the data (sparse)."""
    with open(path, "wb") as f:
        f.truncate(4 * floats)
    return path


def _expected_kernel(code: int, shape_keras, o_start: int, o_stop: int) -> np.ndarray:
    """Encoded values at Keras positions [y, x, i, o] from their Torch flat index."""
    kh, kw, cin, _ = shape_keras
    y = np.arange(kh)[:, None, None, None]
    x = np.arange(kw)[None, :, None, None]
    i = np.arange(cin)[None, None, :, None]
    o = np.arange(o_start, o_stop)[None, None, None, :]
    return _encoded(code, ((o * cin + i) * kh + y) * kw + x)


def _check_every_weight(model, net) -> None:
    checked = set()
    for n, layer, kind, shape in _tensors(net):
        variable = getattr(model.get_layer(layer), kind)
        got = variable.numpy()
        code = _code(n, kind)
        if kind == "bias":
            np.testing.assert_array_equal(got, _encoded(code, np.arange(shape[0])), layer)
        else:
            out, cin, kh, kw = shape
            assert got.shape == (kh, kw, cin, out), layer
            step = max(1, CHUNK // (kh * kw * cin))
            for start in range(0, out, step):
                stop = min(out, start + step)
                want = _expected_kernel(code, got.shape, start, stop)
                np.testing.assert_array_equal(got[..., start:stop], want, f"{layer} {start}")
        checked.add(variable.path)
    assert checked == {v.path for v in model.weights}  # every Keras weight was checked


def _numpy_forward(path, net, image: np.ndarray) -> np.ndarray:
    """The network in NumPy on the raw file, Torch layout [C, H, W]: returns fc8's output.

    Cross-correlation as im2col + matmul, ReLU, "valid" (floor) max-pooling, zero padding 1
    on the 3x3 layers, input normalized by (x - 118.380948) / 61.896913.
    """
    data = np.memmap(path, dtype="<f4", mode="r")
    x = (image.astype(np.float32).transpose(2, 0, 1) - MEAN) / STD
    offset = 0
    layers = PAPER[net]
    for n, (_, out, cin, k, stride, pad, pool) in enumerate(layers):
        weight = data[offset : offset + out * cin * k * k].reshape(out, cin, k, k)
        offset += weight.size
        bias = data[offset : offset + out]
        offset += out
        if pad:
            x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
        windows = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
        c, ho, wo = windows.shape[:3]
        columns = windows.transpose(1, 2, 0, 3, 4).reshape(ho * wo, c * k * k)
        x = (columns @ weight.reshape(out, -1).T + bias).T.reshape(out, ho, wo)
        if n < len(layers) - 1:
            x = np.maximum(x, 0)
        if pool:
            h, w = x.shape[1] // pool, x.shape[2] // pool
            x = x[:, : h * pool, : w * pool].reshape(out, h, pool, w, pool).max(axis=(2, 4))
    assert offset == data.size
    return x


# --- layout -------------------------------------------------------------------------------


def test_paper_tables_give_the_released_sizes():
    for net, size in PAPER_SIZES.items():
        assert sum(int(np.prod(s)) for *_, s in _tensors(net)) == size
    assert cv.released_sizes() == PAPER_SIZES


@pytest.mark.parametrize("net", ["fast", "accurate", "tiny"])
def test_layout_is_the_paper_layout(net):
    got = [(e.layer, e.kind, e.shape) for e in cv.weight_layout(net)]
    assert got == [(layer, kind, shape) for _, layer, kind, shape in _tensors(net)]
    offsets = [e.offset for e in cv.weight_layout(net)]
    sizes = [e.size for e in cv.weight_layout(net)]
    assert offsets == list(np.cumsum([0, *sizes[:-1]]))


def test_known_offsets_of_the_released_files():
    """Float offsets of fc6's kernel in net_weight_0 / net_weight_1 (the public layout)."""
    fc6 = {net: [e.offset for e in cv.weight_layout(net) if e.layer == "fc6"] for net in CROP}
    assert fc6["fast"] == [15_987_584, 129_233_792]
    assert fc6["accurate"] == [18_916_480, 123_774_080]


# --- the two released nets (synthetic files) ---------------------------------------------


def test_cli_converts_every_weight_into_a_loadable_keras_file(released, header, tmp_path, capsys):
    net = released["net"]
    output = tmp_path / f"{net}-imagenet.keras"
    argv = ["--model", net, "--weights", str(released["encoded"]), "--output", str(output)]
    assert convert_command.main([*argv, "--class-names", str(header)]) == 0
    assert f"Wrote {output}" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == [output.name]  # no temporary file left
    model = keras.models.load_model(output)
    assert isinstance(model, OverFeat) and model.config.name == net
    assert model.class_names == _class_names()
    assert model.class_names.count("crane") == 2
    assert model.stride == "fine"
    _check_every_weight(model, net)


def test_numpy_forward_on_the_raw_file_matches_the_converted_model(released, rng):
    net = released["net"]
    model = cv.convert(net, released["random"])
    size = CROP[net]
    image = rng.uniform(0, 255, size=(size, size, 3)).astype(np.float32)
    want = _numpy_forward(released["random"], net, image)
    assert want.shape == (1000, 1, 1)
    want = want[:, 0, 0]
    assert 0.1 < np.abs(want).max() < 1e3  # O(1) activations: a meaningful comparison
    got = model(image[None])["class_logits"].numpy()
    assert got.shape == (1, 1, 1, 1000)
    tolerance = 2e-4 * np.abs(want).max()
    np.testing.assert_allclose(got[0, 0, 0], want, rtol=1e-3, atol=tolerance)
    crop = model.crop_model()(image[None]).numpy()[0]
    np.testing.assert_allclose(crop, want, rtol=1e-3, atol=tolerance)


@pytest.mark.parametrize("net,other", [("fast", "accurate"), ("accurate", "fast")])
def test_wrong_model_for_the_file(net, other, tmp_path):
    weights = _sparse(tmp_path / cv.WEIGHT_FILES[other], PAPER_SIZES[other])
    output = tmp_path / "out.keras"
    with pytest.raises(ValueError) as error:
        cv.convert(net, weights, output=output)
    message = str(error.value)
    assert str(weights) in message
    assert f"holds {PAPER_SIZES[other]:,} floats" in message
    assert f"the {other} net's file ({cv.WEIGHT_FILES[other]})" in message
    assert f"model {net!r}" in message and f"expects {PAPER_SIZES[net]:,}" in message
    assert sorted(os.listdir(tmp_path)) == [weights.name]  # nothing written


@pytest.mark.parametrize(
    "floats,words",
    [(PAPER_SIZES["fast"] - 1, "truncated"), (PAPER_SIZES["fast"] + 1000, "longer")],
)
def test_wrong_size_is_refused_before_reading(floats, words, tmp_path):
    weights = _sparse(tmp_path / "net_weight_0", floats)
    output = tmp_path / "out.keras"
    with pytest.raises(ValueError, match=words) as error:
        cv.convert("fast", weights, output=output)
    message = str(error.value)
    assert f"{weights} holds {floats:,} floats" in message
    assert "145,920,872" in message and "net_weight_0" in message
    assert not output.exists()


def test_not_whole_floats_and_missing_file(tmp_path):
    odd = tmp_path / "net_weight_1"
    odd.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"10 bytes long, not a whole number of float32"):
        cv.convert("accurate", odd)
    with pytest.raises(FileNotFoundError, match=r"nope.*not found.*'accurate'.*net_weight_1"):
        cv.convert("accurate", tmp_path / "nope", output=tmp_path / "out.keras")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        cv.convert("fast", tmp_path)
    assert sorted(os.listdir(tmp_path)) == [odd.name]


def test_cli_prints_errors_without_traceback(tmp_path):
    weights = _sparse(tmp_path / "net_weight_1", PAPER_SIZES["accurate"])
    output = tmp_path / "fast.keras"
    argv = ["--model", "fast", "--weights", str(weights), "--output", str(output)]
    run = subprocess.run(
        [sys.executable, "-m", "overfeat_tf.convert", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert "that is the accurate net's file (net_weight_1)" in run.stderr
    assert not output.exists()


# --- class names --------------------------------------------------------------------------


def test_parse_class_names(header):
    names = cv.parse_class_names(header)
    assert names == _class_names()
    assert names[0] == "kit fox, Vulpes macrotis" and names.count("crane") == 2


@pytest.mark.parametrize(
    "text,match",
    [
        ("const int nClasses = 2;\n", "no `class_names"),
        ('const char* class_names[] = {"a", "b",\n', "not closed"),
        ('const char* class_names[] = {"a", b};', "unexpected 'b' at line 1"),
        ('const char* class_names[] = {"a", , "b"};', "empty entry"),
        ("const char* class_names[] = {};", "empty"),
        ('const char* class_names[] = {"a, "b"};', "unexpected"),
    ],
)
def test_unreadable_header_is_a_clear_error(text, match, tmp_path):
    path = tmp_path / "net_init.hpp"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as error:
        cv.parse_class_names(path)
    assert str(path) in str(error.value)


def test_header_errors_leave_nothing_written(tmp_path):
    weights = _sparse(tmp_path / "net_weight_0", PAPER_SIZES["fast"])
    bad = tmp_path / "net_init.hpp"
    bad.write_text("int main() { return 0; }\n")
    short = tmp_path / "short.hpp"
    _write_header(short, _class_names()[:999])
    output = tmp_path / "fast.keras"
    with pytest.raises(ValueError, match="no `class_names"):
        cv.convert("fast", weights, class_names=bad, output=output)
    with pytest.raises(ValueError, match=r"gives 999 class names but model 'fast'.* 1000 classes"):
        cv.convert("fast", weights, class_names=short, output=output)
    with pytest.raises(FileNotFoundError, match=r"missing\.hpp not found"):
        cv.convert("fast", weights, class_names=tmp_path / "missing.hpp", output=output)
    assert sorted(os.listdir(tmp_path)) == sorted([weights.name, bad.name, short.name])


# --- the same machinery on the tiny net (fast to save and reload) -------------------------


@pytest.fixture
def tiny_weights(tmp_path):
    path = tmp_path / "tiny_weights"
    _write(path, "tiny", _encoded_chunks)
    return path


def test_convert_into_an_existing_model_and_save(tiny_weights, tmp_path):
    model = OverFeat(TINY, regressor="class_agnostic")
    names = [f"shape {i}" for i in range(10)]
    out = cv.convert(model, tiny_weights, class_names=names, output=tmp_path / "tiny.keras")
    assert out is model and model.class_names == names
    _check_every_weight_but_regressor(model)
    again = keras.models.load_model(tmp_path / "tiny.keras")
    assert again.class_names == names
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _check_every_weight_but_regressor(model) -> None:
    for n, layer, kind, _ in _tensors("tiny"):
        got = getattr(model.get_layer(layer), kind).numpy()
        flat = np.transpose(got, (3, 2, 0, 1)).reshape(-1) if kind == "kernel" else got
        np.testing.assert_array_equal(flat, _encoded(_code(n, kind), np.arange(flat.size)))


def test_failed_save_leaves_nothing(tiny_weights, tmp_path, monkeypatch):
    def broken_save(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(OverFeat, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cv.convert("tiny", tiny_weights, output=tmp_path / "tiny.keras")
    assert sorted(os.listdir(tmp_path)) == [tiny_weights.name]


def test_model_with_other_shapes_is_refused(tiny_weights):
    with pytest.raises(ValueError, match="fc8 kernel has Torch shape"):
        cv.convert(OverFeat(TINY, background=True), tiny_weights)


def test_bad_output_path(tiny_weights, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.keras"):
        cv.convert("tiny", tiny_weights, output=tmp_path / "tiny.h5")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cv.convert("tiny", tiny_weights, output=tmp_path / "no" / "tiny.keras")

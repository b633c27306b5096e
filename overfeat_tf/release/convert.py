"""Convert the released OverFeat weights to a Keras `.keras` model.

The OverFeat release (Sermanet et al., ICLR 2014; research-only licence, so this package
never downloads or ships it: point the converter at your own copy) holds two weight files:

    net_weight_0   the fast net       145,920,872 float32 values
    net_weight_1   the accurate net   144,656,488 float32 values

Each is raw little-endian float32 with no header: every layer in order (conv1 .. conv5 /
conv6, fc6, fc7, fc8), its weight then its bias. Weights are Torch convolution kernels
`[out, in, kH, kW]` applied as cross-correlation; the fully connected layers are stored in
their convolutional form (fc6 a 6x6 / 5x5 kernel, fc7 and fc8 1x1). They become Keras
`Conv2D` kernels `[kH, kW, in, out]` by a transpose, without flipping. The 1000 class names
are the `class_names` array of `net_init.hpp` from the same download, in OverFeat's own order
(it starts with "kit fox", and "crane" appears twice: the names are kept as they are).

Usage:

    python -m overfeat_tf.convert --model fast --weights path/to/net_weight_0 \\
        --class-names path/to/net_init.hpp --output fast-imagenet.keras

The `.keras` file loads with `import overfeat_tf; keras.models.load_model(path)` and is an
ordinary `OverFeat` model (fine stride, raw RGB 0..255 input, names in `model.class_names`).

From Python:

    from overfeat_tf.release.convert import convert
    model = convert("accurate", "net_weight_1", class_names="net_init.hpp")
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from overfeat_tf.architecture import topology
from overfeat_tf.architecture.config import CONFIGS, ModelConfig, model_config
from overfeat_tf.models.backbone import PAPER_INITIALIZER, OverFeat
from overfeat_tf.utils.atomic import atomic_path

# The file OverFeat's release ships for each net (`-l` selects net_weight_1).
WEIGHT_FILES = {"fast": "net_weight_0", "accurate": "net_weight_1"}
_DTYPE = np.dtype("<f4")


class TensorEntry(NamedTuple):
    """One tensor of a weight file: which layer, kernel or bias, Torch shape, position.

    Attributes:
        layer: the Keras layer name (`conv1` .. `conv6`, `fc6`, `fc7`, `fc8`).
        kind: "kernel" or "bias".
        shape: the Torch shape: `[out, in, kH, kW]` for kernels, `[out]` for biases.
        offset: where the tensor starts in the file, in float32 values.
    """

    layer: str
    kind: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def weight_layout(config: str | ModelConfig) -> list[TensorEntry]:
    """Every tensor of an OverFeat weight file, in file order: the conv and fc modules of
    `topology.weighted(config)`, each one's kernel then its bias.

    For the fast net: conv1 kernel `[96, 3, 11, 11]`, conv1 bias `[96]`, conv2 kernel
    `[256, 96, 5, 5]`, ..., fc6 kernel `[3072, 1024, 6, 6]`, ..., fc8 bias `[1000]`.
    """
    shapes = [
        (m.layer, (m.filters, m.in_channels, m.kernel, m.kernel)) for m in topology.weighted(config)
    ]
    entries = []
    offset = 0
    for layer, shape in shapes:
        for kind, tensor_shape in (("kernel", shape), ("bias", shape[:1])):
            entry = TensorEntry(layer, kind, tensor_shape, offset)
            entries.append(entry)
            offset += entry.size
    return entries


def weight_count(config: str | ModelConfig) -> int:
    """Number of float32 values in the weight file of a net (145,920,872 for fast)."""
    return sum(entry.size for entry in weight_layout(config))


def released_sizes() -> dict[str, int]:
    """{"fast": 145,920,872, "accurate": 144,656,488}: floats in each released file."""
    return {name: weight_count(CONFIGS[name]) for name in WEIGHT_FILES}


def _describe(config: ModelConfig) -> str:
    file = WEIGHT_FILES.get(config.name)
    return f"model {config.name!r}" + (f" (OverFeat's {file})" if file else "")


def check_weight_file(path: str | os.PathLike, config: str | ModelConfig) -> int:
    """Check that `path` is the weight file of `config` by its exact size, before reading it.

    Returns the number of float32 values. Raises `FileNotFoundError` if the file is missing
    and `ValueError` if its size is not the expected one, saying which net's file it is if
    its size matches the other released net, or that it is truncated / too long otherwise.
    """
    config = model_config(config)
    name = os.fspath(path)
    expected = weight_count(config)
    if not os.path.isfile(name):
        what = "is a directory, not a file" if os.path.isdir(name) else "not found"
        raise FileNotFoundError(
            f"OverFeat weight file {name} {what}: {_describe(config)} expects a raw float32 "
            f"file of {expected:,} values ({4 * expected:,} bytes) from your own OverFeat "
            "download (this package never ships or downloads it)."
        )
    n_bytes = os.path.getsize(name)
    if n_bytes % _DTYPE.itemsize:
        raise ValueError(
            f"{name} is {n_bytes:,} bytes long, not a whole number of float32 values: it is "
            f"not an OverFeat weight file; {_describe(config)} expects {expected:,} floats "
            f"({4 * expected:,} bytes)."
        )
    count = n_bytes // _DTYPE.itemsize
    if count == expected:
        return count
    message = f"{name} holds {count:,} floats"
    others = [n for n, size in released_sizes().items() if size == count and n != config.name]
    if others:
        other = others[0]
        raise ValueError(
            f"{message}: that is the {other} net's file ({WEIGHT_FILES[other]}), but "
            f"{_describe(config)} expects {expected:,}. Pass --model {other} (model={other!r}) "
            f"or the {config.name} net's file."
        )
    problem = "truncated" if count < expected else "longer than expected"
    raise ValueError(
        f"{message}, but {_describe(config)} expects {expected:,}: the file is {problem} "
        "or not an OverFeat weight file (released sizes: "
        + ", ".join(f"{n} {s:,}" for n, s in released_sizes().items())
        + ")."
    )


def read_weight_file(path: str | os.PathLike, config: str | ModelConfig) -> np.ndarray:
    """The checked weight file as a read-only float32 memory map `[count]` (nothing loaded)."""
    count = check_weight_file(path, config)
    return np.memmap(os.fspath(path), dtype=_DTYPE, mode="r", shape=(count,))


def torch_to_keras_kernel(kernel: np.ndarray) -> np.ndarray:
    """Torch `[out, in, kH, kW]` -> Keras `[kH, kW, in, out]` (both cross-correlation)."""
    return np.ascontiguousarray(np.transpose(kernel, (2, 3, 1, 0)), dtype=np.float32)


def load_released_weights(model: OverFeat, weights: str | os.PathLike) -> OverFeat:
    """Copy every tensor of an OverFeat weight file into `model` (in place) and return it.

    The layout comes from `model.config`; the file's size is checked first. Layers the
    release does not have (a box regressor) keep their initial weights.
    """
    data = read_weight_file(weights, model.config)
    targets = []
    for entry in weight_layout(model.config):
        variable = getattr(model.get_layer(entry.layer), entry.kind)
        keras_shape = (
            entry.shape[2:] + entry.shape[1::-1] if entry.kind == "kernel" else entry.shape
        )
        if tuple(variable.shape) != keras_shape:
            raise ValueError(
                f"{os.fspath(weights)}: {entry.layer} {entry.kind} has Torch shape "
                f"{list(entry.shape)} (Keras {list(keras_shape)}) but the model's layer has "
                f"{list(variable.shape)}; build the model as OverFeat({model.config.name!r}) "
                "without a background class."
            )
        targets.append((entry, variable))
    for entry, variable in targets:  # every shape checked: now assign
        values = np.asarray(data[entry.offset : entry.offset + entry.size]).reshape(entry.shape)
        if entry.kind == "kernel":
            values = torch_to_keras_kernel(values)
        variable.assign(values.astype(np.float32, copy=False))
    return model


# --- class names from net_init.hpp --------------------------------------------------------

_TOKENS = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<name>[A-Za-z_]\w*)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = re.compile(r"\\(x[0-9A-Fa-f]+|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unescape(literal: str) -> str:
    """The value of a C string literal's body (escapes resolved)."""

    def one(match: re.Match) -> str:
        code = match.group(1)
        if code[0] == "x":
            return chr(int(code[1:], 16))
        if code[0] in "01234567":
            return chr(int(code, 8))
        return _SIMPLE_ESCAPES.get(code, code)

    return _ESCAPES.sub(one, literal)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) of every C token that is not whitespace or a comment."""
    out = []
    for match in _TOKENS.finditer(text):
        kind = match.lastgroup
        if kind not in ("space", "comment"):
            out.append((kind, match.group(), text.count("\n", 0, match.start()) + 1))
    return out


def _array_start(tokens: list[tuple[str, str, int]]) -> int | None:
    """Index of the `{` that opens `class_names[...] = {`, or None."""
    for i, (kind, value, _) in enumerate(tokens):
        if kind != "name" or value != "class_names":
            continue
        j = i + 1
        while j < len(tokens) and tokens[j][1] == "[":
            while j < len(tokens) and tokens[j][1] != "]":
                j += 1
            j += 1
        if j + 1 < len(tokens) and tokens[j][1] == "=" and tokens[j + 1][1] == "{":
            return j + 1
    return None


def parse_class_names(path: str | os.PathLike) -> list[str]:
    """The class names of OverFeat's `net_init.hpp`, in the file's order (no deduplication).

    Reads the C array `class_names[...] = { "kit fox, Vulpes macrotis", ... };`: string
    literals separated by commas (adjacent literals are concatenated, C escapes resolved,
    comments ignored). Raises `FileNotFoundError` if the file is missing and `ValueError` if
    it holds no such array or the array is malformed or unterminated.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(
            f"Class-name header {name} not found: pass OverFeat's net_init.hpp from the same "
            "download as the weight file."
        )
    raw = pathlib.Path(name).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    tokens = _tokens(text)
    start = _array_start(tokens)
    if start is None:
        raise ValueError(
            f'Cannot read class names from {name}: it has no `class_names[] = {{ "...", ... }}` '
            "array of C strings (is it OverFeat's net_init.hpp?)."
        )
    names: list[str] = []
    current: str | None = None
    for kind, value, line in tokens[start + 1 :]:
        if kind == "string":
            current = (current or "") + _unescape(value[1:-1])
        elif value == ",":
            if current is None:
                raise ValueError(
                    f"Cannot read class names from {name}: empty entry in the class_names "
                    f"array at line {line}."
                )
            names.append(current)
            current = None
        elif value == "}":
            if current is not None:
                names.append(current)
            if not names:
                raise ValueError(f"The class_names array in {name} is empty.")
            return names
        else:
            raise ValueError(
                f"Cannot read class names from {name}: unexpected {value!r} at line {line} "
                "inside the class_names array (expected C string literals separated by commas)."
            )
    raise ValueError(
        f"Cannot read class names from {name}: the class_names array is not closed by '}}' "
        "(is the file truncated?)."
    )


# --- conversion ---------------------------------------------------------------------------


def _resolve_names(class_names: str | os.PathLike | Sequence[str] | None) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, str | os.PathLike):
        return parse_class_names(class_names)
    return [str(n) for n in class_names]


def _check_output(output: str | os.PathLike) -> str:
    name = os.fspath(output)
    if not name.endswith(".keras"):
        raise ValueError(f"Output {name} must end in .keras (the Keras 3 model format).")
    directory = os.path.dirname(os.path.abspath(name))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Output directory {directory} does not exist (for {name}).")
    return name


def save_atomic(model: OverFeat, output: str | os.PathLike) -> None:
    """`model.save(output)` through `atomic.atomic_path` (a temporary file beside it, then
    `os.replace`).

    A failure leaves nothing behind: neither a partial `output` nor the temporary file.
    """
    with atomic_path(_check_output(output)) as tmp:
        model.save(tmp)


def convert(
    model: str | ModelConfig | OverFeat,
    weights: str | os.PathLike,
    class_names: str | os.PathLike | Sequence[str] | None = None,
    output: str | os.PathLike | None = None,
) -> OverFeat:
    """Build (or fill) an `OverFeat` model from an OverFeat weight file.

    Args:
        model: "fast" (file net_weight_0) or "accurate" (net_weight_1), a `ModelConfig`,
            or an `OverFeat` model to fill in place.
        weights: path to the raw weight file; its exact size is checked before anything
            else is read.
        class_names: path to OverFeat's `net_init.hpp` (its `class_names` array is parsed),
            or the names themselves; their number must equal the net's classes.
        output: if given, a `.keras` path the model is saved to (atomically: a failure
            leaves no file behind).

    Returns:
        The model with every released weight loaded (and `class_names` set).

    Raises:
        FileNotFoundError: a missing weight file, class-name header or output directory.
        ValueError: a weight file of the wrong size (naming the net it would fit), an
            unreadable header, or a wrong number of class names.
    """
    config = model.config if isinstance(model, OverFeat) else model_config(model)
    if output is not None:
        _check_output(output)
    check_weight_file(weights, config)
    names = _resolve_names(class_names)
    if names is not None and len(names) != config.num_classes:
        source = os.fspath(class_names) if isinstance(class_names, str | os.PathLike) else "list"
        raise ValueError(
            f"{source} gives {len(names)} class names but {_describe(config)} has "
            f"{config.num_classes} classes (fc8 outputs)."
        )
    if isinstance(model, OverFeat):
        net = model
        if names is not None:
            net.class_names = names
    else:
        # Zeros skip drawing ~145M random numbers that the file overwrites anyway; the saved
        # config keeps the paper's initializer (used only if the model is rebuilt to train).
        net = OverFeat(config, class_names=names, kernel_initializer="zeros")
        net.kernel_initializer = PAPER_INITIALIZER
    load_released_weights(net, weights)
    if output is not None:
        save_atomic(net, output)
    return net

"""The test harness every layer and model test uses, in the manner of keras-hub's
`run_layer_test` / `run_serialization_test`:

- `run_layer_test`: config round trip, serialization through the registered name, and the
  same outputs eagerly, inside `tf.function` and inside `tf.data`;
- `run_model_test`: the same for a model, plus a `.keras` round trip (reloaded with
  `safe_mode` on) and a SavedModel reloaded with plain `tf.saved_model.load` and called on
  images of other sizes and batch sizes than the ones it was traced with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def assert_all_close(got: Any, want: Any, atol: float = 1e-5, what: str = "") -> None:
    """Nested structures of tensors / arrays are equal (strings exactly, numbers to `atol`)."""
    got_flat, want_flat = tf.nest.flatten(got), tf.nest.flatten(want)
    assert len(got_flat) == len(want_flat), what
    for i, (a, b) in enumerate(zip(got_flat, want_flat, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind in "OSU":
            np.testing.assert_array_equal(a, b, err_msg=f"{what} [{i}]")
        else:
            np.testing.assert_allclose(a, b, atol=atol, rtol=atol, err_msg=f"{what} [{i}]")


def check_config_round_trip(obj: Any) -> Any:
    """`from_config(get_config())` gives the same config, and so does serialization through
    the registered name; returns the deserialized copy."""
    config = obj.get_config()
    again = type(obj).from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(restored) is type(obj)
    assert restored.get_config() == config
    return restored


def _same_in_graph_and_data(fn: Any, inputs: Sequence[Any], want: Any, atol: float) -> None:
    tensors = tuple(tf.nest.map_structure(tf.convert_to_tensor, x) for x in inputs)
    assert_all_close(tf.function(fn)(*tensors), want, atol, "tf.function")
    mapped = tf.data.Dataset.from_tensors(tensors).map(fn)
    assert_all_close(next(iter(mapped)), want, atol, "tf.data")


def run_layer_test(
    layer_class: type,
    init_kwargs: dict[str, Any],
    inputs: Sequence[Any],
    expected_output_shape: Any = None,
    atol: float = 1e-5,
) -> Any:
    """Build `layer_class(**init_kwargs)`, check its config round trip, and that it gives the
    same outputs on `inputs` eagerly, in `tf.function` and in `tf.data` (and the expected
    shape, a tuple or a nest of tuples). Returns the eager outputs."""
    layer = layer_class(**init_kwargs)
    eager = layer(*inputs)
    check_config_round_trip(layer)
    if expected_output_shape is not None:
        shapes = tf.nest.map_structure(lambda t: tuple(t.shape), eager)
        assert shapes == expected_output_shape, (shapes, expected_output_shape)
    _same_in_graph_and_data(lambda *x: layer(*x), inputs, eager, atol)
    return eager


def run_model_test(
    model: keras.Model,
    inputs: Any,
    tmp_path: Path,
    saved_model_inputs: Sequence[Any] = (),
    atol: float = 1e-5,
) -> Any:
    """A model's config round trip; the same outputs on `inputs` (a batch of images) eagerly,
    in `tf.function`, in `tf.data`, after a `.keras` round trip (safe_mode on), and from a
    reloaded SavedModel, also on each of `saved_model_inputs` (other image and batch sizes
    than `inputs`). Returns the eager outputs on `inputs`."""
    eager = model(inputs)
    copy = check_config_round_trip(model)
    assert isinstance(copy, type(model))
    _same_in_graph_and_data(lambda x: model(x), [inputs], eager, atol)

    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)  # safe_mode stays on
    assert_all_close(reloaded(inputs), eager, atol, ".keras")

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda x: model(x),
        [tf.TensorSpec([None, None, None, inputs.shape[-1]], tf.as_dtype(inputs.dtype))],
    )
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    for x in [inputs, *saved_model_inputs]:
        assert_all_close(served.serve(tf.convert_to_tensor(x)), model(x), atol, "SavedModel")
    return eager

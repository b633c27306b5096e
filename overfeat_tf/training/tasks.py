"""The spatial training tasks' models (paper §4.2, §5): what `train.py --task
detect|localize` trains, from a classifier or detector.

- `task_model`: the trainable model of a task: detect fine-tunes trunk and classifier with a
  background class; localize freezes the trunk and classifier and trains the regressor.
- `init_window_regressor`: a new regressor starts by predicting its window, so the first
  steps on real photos stay small.
- the task's losses and trainable layers: `OverFeatDetector.compile(task=...)`.

Task order that keeps every head consistent with the trunk it reads:
classify -> detect (fine-tunes trunk and classifier with the background class) -> localize
(trunk and classifier frozen, trains the regressor on that trunk).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.models.detector import TASKS

__all__ = ["REG_OUT_STDDEV", "TASKS", "init_window_regressor", "task_model"]
REG_OUT_STDDEV = 1e-3  # a fresh regressor's last layer: N(0, 1e-3) kernel, window bias


def task_model(
    task: str,
    model: OverFeat,
    regressor: str = "class_specific",
    dtype: Any = None,
    kernel_initializer: str | dict | None = None,
) -> OverFeat:
    """The model a spatial task trains, from a trained one (weights copied by layer name).

    detect: adds the background class (fc8 gets one more output: the object classes'
    weights are kept, background starts at zero) and keeps any regressor. localize: adds a
    regressor (`regressor` kind) if the model has none, initialized by `kernel_initializer`
    (default: the model's) with its last layer predicting the window
    (`init_window_regressor`). Which layers train is the task's `OverFeatDetector.compile`
    (detect: all but the regressor; localize: only the regressor).
    The model's adaptation layers (`OverFeat(adaptation=...)`) are kept.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    background = model.background or task == "detect"
    kind = model.regressor or (regressor if task == "localize" else None)
    new = OverFeat(
        model.config,
        class_names=model.class_names,
        stride="fine",
        regressor=kind,
        background=background,
        kernel_initializer=kernel_initializer or model.kernel_initializer,
        dtype=dtype,
        adaptation=model.adaptation,
    )
    for layer in model.layers:
        if not layer.weights:
            continue
        target = new.get_layer(layer.name)
        values = layer.get_weights()
        if layer.name == "fc8" and background and not model.background:
            kernel, bias = values
            values = [
                np.concatenate([kernel, np.zeros_like(kernel[..., :1])], axis=-1),
                np.concatenate([bias, np.zeros_like(bias[:1])]),
            ]
        target.set_weights(values)
    if kind and not model.regressor:
        init_window_regressor(new)
    return new


def init_window_regressor(model: OverFeat, seed: int | None = None) -> None:
    """Make `model`'s regressor predict (about) its own window for every class: `reg_out`
    kernel N(0, `REG_OUT_STDDEV`), bias `[0, 0, 1, 1]` (yxyx window units) per box."""
    layer = model.get_layer("reg_out")
    kernel = layer.kernel
    kernel.assign(keras.random.normal(kernel.shape, stddev=REG_OUT_STDDEV, seed=seed))
    boxes = layer.bias.shape[0] // 4
    layer.bias.assign(np.tile(np.array([0.0, 0.0, 1.0, 1.0], "float32"), boxes))

"""The model and optimizer recipe of a training run (paper §3.1): the model a run trains,
its initialization, loss, learning rate schedule, weight decay and optimizer.

The recipe (every number overridable through `training.TrainConfig` / `train.py` flags):
- SGD, momentum 0.6, batch 128, learning rate 5e-2 halved after epochs 30, 50, 60, 70
  and 80 (a `PiecewiseConstantDecay` on the optimizer step, so it resumes exactly);
- weights from N(0, 1e-2) (`--init paper`; `--init he_normal` for small nets that must
  learn fast); dropout 0.5 on fc6 and fc7 (in the model);
- L2 weight decay 1e-5 as Torch's `weightDecay` did it: `grad += wd * w` for every
  parameter (weights and biases), before momentum. That is an L2 loss `wd / 2 * ||w||^2`
  added to the loss (here: a `keras.regularizers.L2(wd / 2)` on every trainable variable,
  summed into the loss by Keras and scaled correctly under `tf.distribute`). Keras'
  `SGD(weight_decay=...)` is *decoupled* decay (`w -= lr * wd * w`, outside momentum),
  which is not what the paper's Torch code did, so it is not used. (Torch7's `optim.sgd`
  also damps momentum by default, `v = m v + (1 - m) g`; that detail is not emulated.)

"classify" trains the crop model (crops -> logits, `compile_crop_model`); "detect" and
"localize" train the spatial model that `spatial_training.task_model` makes of a trained
one (`build_task_model`, `compile_task_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras

from overfeat_tf import precision, spatial_training
from overfeat_tf.config import get_config
from overfeat_tf.distribute import CropTrainer
from overfeat_tf.models import PAPER_INITIALIZER, OverFeat, backbone_of, load_model

if TYPE_CHECKING:
    from overfeat_tf.training import TrainConfig

INITS = {"paper": PAPER_INITIALIZER, "he_normal": "he_normal"}


def learning_rate_schedule(
    learning_rate: float, steps_per_epoch: int, decay_epochs: tuple[int, ...], factor: float
) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """Piecewise-constant learning rate by epoch, as a function of the optimizer step:
    `learning_rate * factor**i` after the i-th epoch of `decay_epochs`."""
    if not decay_epochs:
        return learning_rate
    if list(decay_epochs) != sorted(set(decay_epochs)) or decay_epochs[0] < 1:
        raise ValueError(f"lr_decay_epochs must be increasing and >= 1, got {decay_epochs}.")
    # The optimizer reads the schedule at its step count before the update, and
    # PiecewiseConstantDecay switches after `step > boundary`: the first step of epoch e
    # (0-based step e * steps_per_epoch) gets the new rate.
    boundaries = [e * steps_per_epoch - 1 for e in decay_epochs]
    values = [learning_rate * factor**i for i in range(len(decay_epochs) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def add_weight_decay(model: keras.Model, weight_decay: float) -> None:
    """Torch-style weight decay: an L2 regularizer `weight_decay / 2 * sum(w**2)` on every
    trainable variable of `model` (so the gradient gains `weight_decay * w`)."""
    if weight_decay <= 0:
        return
    regularizer = keras.regularizers.L2(weight_decay / 2)
    for variable in model.trainable_variables:
        variable.regularizer = regularizer


def build_model(config: TrainConfig, class_names: list[str]) -> OverFeat:
    """The `OverFeat` model of a run (call inside the strategy's scope).

    `init="he_normal"`: He-normal kernels everywhere except fc8, which keeps the paper's
    N(0, 1e-2): He init alone gives logits of several units on real images (an initial
    loss of 5-8 instead of ln C), whose first gradients derail a net without
    normalization layers.
    """
    architecture = get_config(config.model)
    if config.dropout is not None:
        architecture = architecture.replace(dropout=config.dropout)
    policy = precision.resolve_precision(config.mixed_precision)
    model = OverFeat(
        architecture,
        class_names=class_names,
        kernel_initializer=INITS[config.init],
        dtype=None if policy == "float32" else policy,
    )
    if config.init == "he_normal":
        fc8 = model.get_layer("fc8").kernel
        fc8.assign(keras.random.normal(fc8.shape, stddev=0.01, seed=config.seed))
    return model


def compile_crop_model(model: OverFeat, config: TrainConfig, steps_per_epoch: int) -> keras.Model:
    """The compiled training model: crops `[B, S, S, 3]` -> logits, SGD + weight decay."""
    base = model.crop_model()
    crop = CropTrainer(inputs=base.inputs, outputs=base.outputs, name=base.name)
    add_weight_decay(crop, config.weight_decay)
    schedule = learning_rate_schedule(
        config.learning_rate, steps_per_epoch, config.lr_decay_epochs, config.lr_decay_factor
    )
    metrics: list[Any] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if model.num_classes > 5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5_accuracy"))
    crop.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
    )
    return crop


def build_task_model(config: TrainConfig, class_names: list[str]) -> OverFeat:
    """The model of a "detect" / "localize" run, from `config.init_model` (call inside the
    strategy's scope): `spatial_training.task_model` of the loaded model."""
    path = Path(config.init_model).expanduser()
    if not path.is_file():
        raise ValueError(
            f"--init-model {path} does not exist: pass the .keras model to start from."
        )
    base = backbone_of(load_model(path))
    if base.config.name != config.model:
        raise ValueError(
            f"--init-model {path} is not an OverFeat {config.model!r} model "
            f"(got {getattr(base, 'config', type(base))!r})."
        )
    if base.num_classes != len(class_names):
        raise ValueError(
            f"--init-model {path} has {base.num_classes} classes but the dataset has "
            f"{len(class_names)}; train it on the same dataset first."
        )
    policy = precision.resolve_precision(config.mixed_precision)
    dtype = None if policy == "float32" else policy
    return spatial_training.task_model(config.task, base, config.regressor, dtype=dtype)


def compile_task_model(model: OverFeat, config: TrainConfig, steps_per_epoch: int) -> OverFeat:
    """Compile a spatial task's model: SGD + weight decay on its trainable layers, the
    task's losses (`spatial_training.task_losses`)."""
    add_weight_decay(model, config.weight_decay)
    schedule = learning_rate_schedule(
        config.learning_rate, steps_per_epoch, config.lr_decay_epochs, config.lr_decay_factor
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum),
        loss=spatial_training.task_losses(config.task, model),
    )
    return model

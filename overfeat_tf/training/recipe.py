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
"localize" train the spatial model that `tasks.task_model` makes of a trained
one (`build_task_model`, `compile_task_model`). The spatial tasks clip the gradient's
global norm and localize uses a lower rate (`TASK_DEFAULTS`): on real photos, SGD at
lr 5e-2 without clipping diverges to NaN in detect and localize within ~20 steps.

Transfer (`transfer_model`; R-CNN: "throw away the final layer, reinitialize"; Oquab et
al., CVPR 2014: copy layers 1-7, add adaptation layers): a run's `init_model` may have any
label set. The layers of `layer_order` up to `transfer_up_to` (default fc7) are copied by
name, fc8 is new for the dataset's classes (+ background for detect), `adaptation_layers`
new layers `adapt1..` of `adaptation_width` units (ReLU, dropout) go between fc7 and fc8,
and `freeze_up_to` stops the layers up to it from training (Oquab: `--adaptation-layers 1
--freeze-up-to fc7`). With the dataset's label set (same names, same order), the init
model's adaptation layers and no `transfer_up_to`, every layer is copied, fc8 included.
New layers follow `init`; fc8 always starts from N(0, 1e-2).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import keras

from overfeat_tf.architecture.config import model_config
from overfeat_tf.models.backbone import OverFeat, adaptation_names, backbone_of, load_model
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.training import precision, tasks
from overfeat_tf.training.config import INITS, TrainConfig
from overfeat_tf.training.distribute import CropTrainer


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


# --- transfer (R-CNN's "reinitialize the final layer", Oquab et al.'s adaptation layers) ---


def layer_order(model: OverFeat) -> list[str]:
    """The layers `transfer_up_to` / `freeze_up_to` name, in the network's order:
    `conv1` .. `convN`, `fc6`, `fc7`, the adaptation layers `adapt1` .. `adaptK`, `fc8`."""
    convs = [f"conv{i}" for i in range(1, len(model.config.convs) + 1)]
    return [*convs, "fc6", "fc7", *adaptation_names(len(model.adaptation)), "fc8"]


def adaptation_widths(config: TrainConfig, base: OverFeat | None = None) -> tuple[int, ...]:
    """The adaptation layers of the run's model: `config.adaptation_layers` layers of
    `config.adaptation_width` units; None: those of `base` (the init model), else none."""
    if config.adaptation_layers is None:
        return tuple(base.adaptation) if base is not None else ()
    return (config.adaptation_width,) * config.adaptation_layers


def load_init_model(config: TrainConfig) -> OverFeat:
    """The `OverFeat` network of `config.init_model` (a model or detector `.keras` file)."""
    path = Path(config.init_model or "").expanduser()
    if not config.init_model or not path.is_file():
        raise ValueError(
            f"--init-model {path} does not exist: pass the .keras model to start from."
        )
    base = backbone_of(load_model(path))
    if base.config.name != config.model:
        raise ValueError(
            f"--init-model {path} is not an OverFeat {config.model!r} model "
            f"(got {getattr(base, 'config', type(base))!r}); pass --model {base.config.name}."
        )
    return base


def same_label_set(base: OverFeat, class_names: list[str]) -> bool:
    """Whether `base` classifies `class_names`, in that order (by count when unnamed)."""
    if base.class_names is None:
        return base.num_classes == len(class_names)
    return list(base.class_names) == [str(n) for n in class_names]


def needs_transfer(base: OverFeat, class_names: list[str], config: TrainConfig) -> bool:
    """False when a run continues `base` as it is: the same label set, the same adaptation
    layers and no `transfer_up_to`; every layer is then copied, fc8 included."""
    return not (
        same_label_set(base, class_names)
        and config.transfer_up_to is None
        and adaptation_widths(config, base) == tuple(base.adaptation)
    )


def _copied_layers(base: OverFeat, class_names: list[str], config: TrainConfig) -> list[str]:
    """The layers of `base` a transfer copies: `layer_order(base)` up to the chosen one."""
    order = layer_order(base)
    if not needs_transfer(base, class_names, config):
        return order
    up_to = config.transfer_up_to or "fc7"
    if up_to not in order:
        raise ValueError(
            f"--transfer-up-to {up_to!r} is not a layer of {config.init_model}: expected "
            f"one of {order} (the last layer copied)."
        )
    copied = order[: order.index(up_to) + 1]
    if "fc8" in copied and not same_label_set(base, class_names):
        raise ValueError(
            f"--transfer-up-to fc8 copies {config.init_model}'s {base.num_classes}-class "
            f"output layer, but the dataset has another label set ({len(class_names)} "
            "classes): transfer up to fc7 (the default) or a lower layer."
        )
    return copied


def transfer_model(
    base: OverFeat, class_names: list[str], config: TrainConfig, keep_heads: bool
) -> OverFeat:
    """A new `OverFeat` for `class_names` with `base`'s weights in the layers up to
    `config.transfer_up_to` (default fc7; every layer when `needs_transfer` is False).

    Every other layer is new, initialized by `config.init` (fc8 from N(0, 1e-2)): fc8 for
    the dataset's classes, the layers above the copied one, the adaptation layers
    (`adaptation_widths`; a copied adaptation layer must have the same width). With
    `keep_heads` (detect / localize), `base`'s background class is kept when fc8 is
    copied, and its regressor when the whole trunk is copied and the regressor does not
    depend on the label set (the same classes, or class-agnostic); otherwise a localize run
    adds a new regressor (`tasks.task_model`). Prints one line saying what was
    copied and what is new.

    Raises:
        ValueError: an unknown layer, fc8 copied to another label set, or shapes that
            differ (say which layer and how).
    """
    copied = _copied_layers(base, class_names, config)
    architecture = base.config.replace(num_classes=len(class_names))
    if config.dropout is not None:
        architecture = architecture.replace(dropout=config.dropout)
    same = same_label_set(base, class_names)
    trunk = all(f"conv{i}" in copied for i in range(1, len(base.config.convs) + 1))
    regressor = base.regressor if keep_heads and trunk else None
    if regressor == "class_specific" and not same:
        regressor = None
    background = keep_heads and base.background and "fc8" in copied
    model = OverFeat(
        architecture,
        class_names=class_names,
        regressor=regressor,
        background=background,
        kernel_initializer=_initializer(config),
        dtype=_dtype(config),
        adaptation=adaptation_widths(config, base),
    )
    if "fc8" not in copied:
        _small_fc8(model, config.seed)
    names = copied + (["reg_fc1", "reg_fc2", "reg_out"] if regressor else [])
    existing = {layer.name for layer in model.layers}
    for name in names:
        values = base.get_layer(name).get_weights()
        if name == "fc8" and base.background and not background:  # drop the background
            values = [values[0][..., :-1], values[1][:-1]]
        shapes = [tuple(v.shape) for v in values]
        wanted = [tuple(w.shape) for w in model.get_layer(name).weights] if name in existing else []
        if shapes != wanted:
            raise ValueError(
                f"Cannot copy {name} of {config.init_model} (shapes {shapes}) into the new "
                f"model ({wanted or 'no such layer'}): pass --adaptation-layers / "
                "--adaptation-width equal to the init model's, or a lower --transfer-up-to."
            )
        model.get_layer(name).set_weights(values)
    new = [n for n in layer_order(model) if n not in copied]
    print(
        f"Transfer from {config.init_model}: copied {', '.join(names)}; new "
        f"{', '.join(new) or 'nothing'} ({len(class_names)} classes).",
        flush=True,
    )
    return model


def freeze(model: OverFeat, up_to: str | None) -> None:
    """Make the layers of `layer_order(model)` up to `up_to` (included) not trainable."""
    if up_to is None:
        return
    order = layer_order(model)
    if up_to not in order:
        raise ValueError(f"--freeze-up-to {up_to!r}: expected one of {order}.")
    if up_to == order[-1]:
        raise ValueError(
            f"--freeze-up-to {up_to} freezes every classifier layer: nothing would train. "
            f"Freeze up to {order[-2]} at most."
        )
    for name in order[: order.index(up_to) + 1]:
        model.get_layer(name).trainable = False


def _initializer(config: TrainConfig) -> str | dict:
    return INITS[config.init]


def _dtype(config: TrainConfig) -> Any:
    policy = precision.resolve_precision(config.mixed_precision)
    return None if policy == "float32" else policy


def _small_fc8(model: OverFeat, seed: int) -> None:
    """fc8 kernel from the paper's N(0, 1e-2), whatever the other layers' init (see
    `initial_model`)."""
    fc8 = model.get_layer("fc8").kernel
    fc8.assign(keras.random.normal(fc8.shape, stddev=0.01, seed=seed))


def initial_model(config: TrainConfig, class_names: list[str]) -> OverFeat:
    """The `OverFeat` model of a "classify" run (call inside the strategy's scope): new,
    or transferred from `config.init_model` (`transfer_model`).

    `init="he_normal"`: He-normal kernels everywhere except fc8, which keeps the paper's
    N(0, 1e-2): He init alone gives logits of several units on real images (an initial
    loss of 5-8 instead of ln C), whose first gradients derail a net without
    normalization layers.
    """
    if config.init_model:
        base = load_init_model(config)
        model = transfer_model(base, class_names, config, keep_heads=False)
    else:
        architecture = model_config(config.model)
        if config.dropout is not None:
            architecture = architecture.replace(dropout=config.dropout)
        model = OverFeat(
            architecture,
            class_names=class_names,
            kernel_initializer=_initializer(config),
            dtype=_dtype(config),
            adaptation=adaptation_widths(config),
        )
        if config.init == "he_normal":
            _small_fc8(model, config.seed)
    freeze(model, config.freeze_up_to)
    return model


def _optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with the run's schedule and momentum; `global_clipnorm` when `config.clipnorm`
    is set (> 0): the gradient of all trainable variables together is scaled down to that
    norm when it is longer. (Under a `tf.distribute` strategy Keras clips each replica's
    gradient before summing them: the bound on the sum is replicas x clipnorm.)"""
    schedule = learning_rate_schedule(
        config.learning_rate, steps_per_epoch, config.lr_decay_epochs, config.lr_decay_factor
    )
    return keras.optimizers.SGD(
        learning_rate=schedule,
        momentum=config.momentum,
        global_clipnorm=config.clipnorm or None,
    )


def compile_crop_model(model: OverFeat, config: TrainConfig, steps_per_epoch: int) -> keras.Model:
    """The compiled training model: crops `[B, S, S, 3]` -> logits, SGD + weight decay."""
    base = model.crop_model()
    crop = CropTrainer(inputs=base.inputs, outputs=base.outputs, name=base.name)
    add_weight_decay(crop, config.weight_decay)
    metrics: list[Any] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if model.num_classes > 5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5_accuracy"))
    crop.compile(
        optimizer=_optimizer(config, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
    )
    return crop


def build_task_model(config: TrainConfig, class_names: list[str]) -> OverFeat:
    """The model of a "detect" / "localize" run, from `config.init_model` (call inside the
    strategy's scope): `tasks.task_model` of the loaded model, after
    `transfer_model` when the label set or the classifier layers change."""
    base = load_init_model(config)
    if needs_transfer(base, class_names, config):
        copied = _copied_layers(base, class_names, config)
        base = transfer_model(base, class_names, config, keep_heads=True)
        if config.task == "localize" and "fc8" not in copied:
            warnings.warn(
                f"--task localize trains only the regressor: the new fc8 for the dataset's "
                f"{len(class_names)} classes stays untrained, so the saved detector's class "
                "scores are random. Train the classifier first (--task classify or detect "
                "on this dataset) and localize from that model.",
                stacklevel=2,
            )
    model = tasks.task_model(
        config.task,
        base,
        config.regressor,
        dtype=_dtype(config),
        kernel_initializer=_initializer(config),
    )
    freeze(model, config.freeze_up_to)
    return model


def compile_task_model(
    model: OverFeat, config: TrainConfig, steps_per_epoch: int
) -> OverFeatDetector:
    """The compiled trainer of a spatial task: an `OverFeatDetector` of `model`, compiled for
    `config.task` (`OverFeatDetector.compile`: the task's trainable layers and losses,
    `config.box_loss` for "localize") with SGD (+ global norm clipping, `config.clipnorm`)
    and weight decay on its trainable layers; `config.freeze_up_to` applied after."""
    add_weight_decay(model, config.weight_decay)
    detector = OverFeatDetector(model)
    detector.compile(
        optimizer=_optimizer(config, steps_per_epoch),
        task=config.task,
        box_loss=config.box_loss,
    )
    freeze(model, config.freeze_up_to)
    return detector

"""A training run's settings: `TrainConfig` (defaults: the paper's recipe, §3.1), the
per-task defaults and the checks that reject a bad combination before anything runs."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from overfeat_tf.data import inputs as data
from overfeat_tf.models.backbone import PAPER_INITIALIZER
from overfeat_tf.models.losses import BOX_LOSSES
from overfeat_tf.training import precision
from overfeat_tf.training.distribute import STRATEGIES
from overfeat_tf.training.tasks import TASKS as SPATIAL_TASKS

INITS = {"paper": PAPER_INITIALIZER, "he_normal": "he_normal"}

# Per-task defaults of the settings left None. classify: the paper's recipe (§3.1). The
# spatial tasks clip the global gradient norm; localize's L2-like regression on frozen,
# unnormalized features diverges at the classification rate (README, "Box targets and stable
# spatial training").
TASK_DEFAULTS: dict[str, dict[str, float]] = {
    "classify": {"learning_rate": 5e-2, "clipnorm": 0.0},
    "detect": {"learning_rate": 5e-2, "clipnorm": 10.0},
    "localize": {"learning_rate": 1e-2, "clipnorm": 1.0},
}


def check_transfer_settings(config: TrainConfig) -> list[tuple[bool, str]]:
    """(ok, message) checks of the clipping, box-loss and transfer settings of a
    `TrainConfig` (its `__post_init__` raises the first failed one as a ValueError)."""
    return [
        (config.clipnorm >= 0, f"clipnorm must be >= 0 (0: off), got {config.clipnorm}."),
        (
            config.box_loss in BOX_LOSSES,
            f"box_loss must be one of {BOX_LOSSES}, got {config.box_loss!r}.",
        ),
        (
            config.adaptation_layers is None or config.adaptation_layers >= 0,
            f"adaptation_layers must be >= 0, got {config.adaptation_layers}.",
        ),
        (
            config.adaptation_width >= 1,
            f"adaptation_width must be >= 1, got {config.adaptation_width}.",
        ),
        (
            config.transfer_up_to is None or bool(config.init_model),
            "--transfer-up-to chooses what is copied from --init-model: pass one.",
        ),
        (
            config.freeze_up_to is None or config.task != "localize",
            "--freeze-up-to is for classify and detect: localize already trains only "
            "the regressor.",
        ),
    ]


_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def holdout_splits(split: str, val_split: str | float | None) -> tuple[str, str | None]:
    """The (training, validation) splits of a run: `val_split` as it is, or a number in
    (0, 1) holds out that fraction at the end of `split` (`("train", 0.1)` ->
    `("train[:90%]", "train[90%:]")`, TFDS slices: TFDS and file datasets alike).

    Raises `ValueError` for a number outside (0, 1), or a fraction of a `split` that is
    already a slice or a union ("train[:50%]", "train+validation").
    """
    if val_split is None or isinstance(val_split, bool):
        return split, val_split
    if isinstance(val_split, str) and not _NUMBER.match(val_split):
        return split, val_split  # a split name or spec
    fraction = float(val_split)
    if not (math.isfinite(fraction) and 0 < fraction < 1):
        raise ValueError(
            f"--val-split {val_split}: a number is the fraction of --split held out for "
            "validation, in (0, 1) (e.g. 0.1); or give a split name or slice."
        )
    if any(c in split for c in "[]+"):
        raise ValueError(
            f"--val-split {val_split} holds out a fraction of --split, which must then be "
            f"a split name, not {split!r}; or give --val-split a slice, e.g. "
            "--split train[:80%] --val-split train[80%:90%]."
        )
    kept = f"{round(100 * (1 - fraction), 6):g}%"
    return f"{split}[:{kept}]", f"{split}[{kept}:]"


# STRATEGIES, INITS, TASK_DEFAULTS and initial_model are also re-exported: train.py, the
# benchmarks and tests/test_precision.py use them as `training.X`.
MODELS = ("fast", "accurate", "tiny")
TASKS = ("classify", *SPATIAL_TASKS)  # classify -> detect -> localize
# `python train.py --model fast` is the paper's ImageNet run; tiny trains on generated data.
DEFAULT_DATASETS = {"fast": "imagenet2012", "accurate": "imagenet2012", "tiny": "overfeat_shapes"}


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; defaults are the paper's recipe (§3.1).

    Attributes:
        model: "fast", "accurate" or "tiny".
        task: "classify" (crops -> labels, paper §3), "detect" (spatial, with a background
            class and mined negatives, §5) or "localize" (the box regressor on a frozen
            trunk, §4.2); see `overfeat_tf.spatial_training`.
        init_model: the `.keras` model (an `OverFeat` or `OverFeatDetector`: a `convert`ed
            release net, or any model a run saved) the run starts from; required for
            "detect" / "localize" (the classifier, or the detector before "localize"),
            optional for "classify" (fine-tuning). It may have any label set: with the
            dataset's classes (same names, same order) and no transfer flags every layer is
            copied, fc8 included; otherwise layers up to `transfer_up_to` are copied and
            fc8 (+ background for detect) is new (`recipe.transfer_model`).
        transfer_up_to: the last layer copied from `init_model` (`recipe.layer_order`:
            "conv1" .. "conv5"/"conv6", "fc6", "fc7", "adapt1".., "fc8"). None: "fc7"
            when the label set or the adaptation layers change, every layer otherwise.
        adaptation_layers: new fc layers (1x1 convs, ReLU, dropout) between fc7 and fc8
            (Oquab et al. 2014: 1 = their FCa before FCb = fc8). None: those of
            `init_model` (none without one); 0 removes them.
        adaptation_width: units of each adaptation layer (Oquab: 2048).
        freeze_up_to: the layers up to this one (same names as `transfer_up_to`) are not
            trained ("classify" / "detect"; Oquab: "fc7", training only the adaptation
            layers and fc8). None: every layer trains.
        regressor: "class_specific" or "class_agnostic" (the head "localize" adds).
        box_loss: "localize" loss on the window-unit box edges: "smooth_l1" (default,
            bounded gradients) or "l2" (the paper's); see `losses.WindowBoxLoss`.
        train_size: side of the spatial tasks' training images (None: crop + 4 fine
            strides, a 5x5 output map).
        dataset: TFDS name (e.g. "imagenet2012", "overfeat_shapes/standard") or a path (a
            COCO .json, a Pascal VOC folder, a folder of class folders:
            `overfeat_tf.data.files`); None: the model's default (`DEFAULT_DATASETS`).
        split: training split, or a TFDS slice of one ("train[:90%]").
        val_split: optional split (or slice) evaluated (central crop) after every epoch; a
            number in (0, 1) (or its string, "0.1") holds out that fraction at the end of
            `split`: `split` becomes "<split>[:90%]" and `val_split` "<split>[90%:]"
            (`holdout_splits`, in `__post_init__`).
        data_dir: TFDS data directory (None: TFDS' default, ~/tensorflow_datasets); for a
            path `dataset`, its images folder (`files.open_dataset`'s `images`).
        output: run directory (checkpoints, backup, logs, model.keras).
        epochs: number of epochs (the schedule's last halving is after epoch 80).
        steps_per_epoch: batches per epoch; None: examples in the split // batch size.
        batch_size: global batch size (split over replicas).
        learning_rate: initial learning rate. None: the task's default
            (`TASK_DEFAULTS`: 5e-2 classify and detect, 1e-2 localize).
        clipnorm: SGD's gradients (all trainable variables together) are scaled down to
            this global norm when longer. None: the task's default (`TASK_DEFAULTS`: none
            for classify, 10 detect, 1 localize); 0: no clipping.
        lr_decay_epochs: epochs after which the learning rate is multiplied by
            `lr_decay_factor`.
        lr_decay_factor: the multiplier (paper: 0.5).
        momentum: SGD momentum.
        weight_decay: Torch-style L2 weight decay (see `overfeat_tf.recipe`).
        init: "paper" (N(0, 1e-2)) or "he_normal".
        dropout: override the model's dropout rate after fc6 and fc7 (paper: 0.5).
        mixed_precision: "auto" (mixed bfloat16 where the hardware has bf16 matrix units,
            else float32; see `overfeat_tf.precision`), "float32", "bfloat16" or "float16"
            (Keras mixed policies; an explicit choice wins). "none" / None: float32.
        strategy: "default", "mirrored", "multi_worker" or "tpu" (`overfeat_tf.distribute`).
        tpu: TPU name or address for `strategy="tpu"` ("" or None: the local TPU).
        seed: seeds the initialization, the data order and the augmentation.
        short_side: images are rescaled to this short side before cropping (px).
        shuffle_buffer: shuffle buffer size (examples).
        cache: keep the decoded images in memory (small datasets only): rescaled for
            "classify", as decoded for "detect" / "localize".
        time_limit: stop training after this many seconds (at the end of a step); None:
            no limit.
        verbose: Keras verbosity ("auto": a progress bar in a terminal, else one line
            per epoch).
    """

    model: str = "fast"
    task: str = "classify"
    init_model: str | None = None
    transfer_up_to: str | None = None
    adaptation_layers: int | None = None
    adaptation_width: int = 2048
    freeze_up_to: str | None = None
    regressor: str = "class_specific"
    box_loss: str = "smooth_l1"
    train_size: int | None = None
    dataset: str | None = None
    split: str = "train"
    val_split: str | float | None = None
    data_dir: str | None = None
    output: str | None = None
    epochs: int = 90
    steps_per_epoch: int | None = None
    batch_size: int = 128
    learning_rate: float | None = None
    clipnorm: float | None = None
    lr_decay_epochs: tuple[int, ...] = (30, 50, 60, 70, 80)
    lr_decay_factor: float = 0.5
    momentum: float = 0.6
    weight_decay: float = 1e-5
    init: str = "paper"
    dropout: float | None = None
    mixed_precision: str | None = "auto"
    strategy: str = "default"
    tpu: str | None = None
    seed: int = 0
    short_side: int = data.SHORT_SIDE
    shuffle_buffer: int = 10_000
    cache: bool = False
    time_limit: float | None = None
    verbose: str | int = "auto"

    def __post_init__(self) -> None:
        self.split, self.val_split = holdout_splits(self.split, self.val_split)
        defaults = TASK_DEFAULTS.get(self.task, {})
        if self.learning_rate is None:
            self.learning_rate = defaults.get("learning_rate", 5e-2)
        if self.clipnorm is None:
            self.clipnorm = defaults.get("clipnorm", 0.0)
        self.lr_decay_epochs = tuple(int(e) for e in self.lr_decay_epochs)
        # ValueError naming the valid choices; "none" / None -> "float32".
        self.mixed_precision = precision.normalize_precision(self.mixed_precision)
        checks = [
            (self.model in MODELS, f"model must be one of {MODELS}, got {self.model!r}."),
            (self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}."),
            (
                self.task == "classify" or bool(self.init_model),
                f"--task {self.task} starts from a trained model: pass --init-model PATH.keras "
                "(the classifier for detect, the detector or classifier for localize).",
            ),
            (
                self.strategy in STRATEGIES,
                f"strategy must be one of {STRATEGIES}, got {self.strategy!r}.",
            ),
            (self.init in INITS, f"init must be one of {sorted(INITS)}, got {self.init!r}."),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}."),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}."),
            (
                self.steps_per_epoch is None or self.steps_per_epoch >= 1,
                f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}.",
            ),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}."),
            *check_transfer_settings(self),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}."),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}."),
            (
                self.dropout is None or 0 <= self.dropout < 1,
                f"dropout must be in [0, 1), got {self.dropout}.",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def dataset_name(self) -> str:
        return self.dataset or DEFAULT_DATASETS[self.model]

    @property
    def output_dir(self) -> Path:
        return Path(self.output or f"runs/{self.model}").expanduser()

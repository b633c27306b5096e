"""Train OverFeat on any TFDS dataset or your own files: classification (paper §3.1), then
detection (§5) and localization (§4.2).

Usage:
    python train.py --model tiny                   # the main job (--task all, below)
    python train.py --model fast                   # the paper's run on imagenet2012
    python train.py --model tiny --dataset overfeat_shapes/small --epochs 2 --batch-size 16
    python train.py --model accurate --strategy mirrored --mixed-precision auto
    # spatial stages, each from the previous stage's model (detection-schema datasets):
    python train.py --model tiny --task detect --init-model runs/tiny/model.keras --output runs/det
    python train.py --model tiny --task localize --init-model runs/det/model.keras --output runs/loc
    # transfer to another label set (R-CNN: fc8 new, + background; Oquab: adaptation layers):
    python train.py --model fast --task detect --init-model fast-imagenet.keras --dataset voc/2007
    python train.py --model fast --init-model fast-imagenet.keras --dataset my_photos \
        --adaptation-layers 1 --freeze-up-to fc7        # Oquab et al.: train FCa + fc8 only
    # your own files: a COCO .json (--images DIR: its images' folder when not beside it), a
    # Pascal VOC folder (Annotations/, JPEGImages/) or a folder of class folders; --val-split
    # 0.1 holds out the last 10% of --split (train[:90%] / train[90%:])
    python train.py --model tiny --task classify --dataset labels.json --images photos/ \
        --val-split 0.1 --output runs/mine
    python train.py --model tiny --task detect --dataset labels.json --images photos/ \
        --init-model runs/mine/model.keras --val-split 0.1 --output runs/mine-det

The main job (--task all; the default for tiny): classify -> detect -> localize on the
generated overfeat_shapes/standard with tiny's recipe (overfeat_tf.main_job.TINY_RECIPE),
then it evaluates the detector on 500 test images, exports it for TF Serving, draws
pictures and prints a short report (--format json: one JSON object). Outputs in --output
(default runs/tiny): <stage>/ runs, model.keras, export/, pictures/, report.json. Rerun the
same command after a crash: finished stages are skipped, the interrupted one resumes. Its
flags: --model, --dataset, --data-dir, --output, --max-examples, --pictures,
--mixed-precision, --seed, --verbose, --format; recipe flags belong to single stages.

Datasets from files (overfeat_tf/data/files.py): COCO boxes of crowds and VOC objects marked
difficult are left out, boxes at most 1 px outside their image clipped and boxes of zero
size left out; what was left out is printed in one line (and is "skipped" in --format json).
Bad annotations (a missing image, an unknown category, a box outside its image, ...) stop
the run before training with a message naming the file.

Transfer: --init-model may have any label set. With the dataset's classes (same names, same
order) and no transfer flags, every layer is copied (fc8 too); otherwise the layers up to
--transfer-up-to (default fc7) are copied and fc8 is new for the dataset's classes
(+ background for detect), after --adaptation-layers new fc layers; a class-specific
regressor is dropped (localize adds a new one). The copied and new layers are printed.

Defaults are the paper's recipe: SGD momentum 0.6, weight decay 1e-5, batch 128, learning
rate 5e-2 (localize: 1e-2, with the gradient's global norm clipped to 1; detect: clipped to
10) halved after epochs 30/50/60/70/80, N(0, 1e-2) init, random crops (231 fast,
221 accurate) of images rescaled to a 256 px short side, random flips, 90 epochs. The
default dataset is imagenet2012 for fast and accurate (its ILSVRC2012 tars must be in
~/tensorflow_datasets/downloads/manual/) and the generated overfeat_shapes for tiny.

Outputs in --output (default runs/<model>): model.keras (the spatial OverFeat model),
checkpoints/epoch_NNN.weights.h5, logs/ (TensorBoard), backup/ (rerun the same command
after a crash to resume from the last finished epoch), state.json, train_config.json.
A NaN or infinite loss stops the run (exit status 1, one line naming the last good
checkpoint, diverged.json): nothing of that epoch is written, model.keras included.
"""

from __future__ import annotations

import argparse
import sys

from overfeat_tf import cli, main_job
from overfeat_tf.models.losses import BOX_LOSSES
from overfeat_tf.training import precision
from overfeat_tf.training import run as training


def _verbosity(text: str) -> str | int:
    return text if text == "auto" else int(text)


def _epochs_list(text: str) -> tuple[int, ...]:
    return tuple(int(e) for e in text.split(",") if e.strip())


# the flags the main job takes; every other flag configures one stage
MAIN_JOB_FLAGS = (
    "model", "task", "dataset", "data_dir", "output", "max_examples", "pictures",
    "mixed_precision", "seed", "verbose", "format",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = training.TrainConfig()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _task_arguments(p, defaults)
    _data_arguments(p, defaults)
    _recipe_arguments(p, defaults)
    _run_arguments(p, defaults)
    args = p.parse_args(argv)
    if args.task is None:
        args.task = "all" if args.model == "tiny" else "classify"
    if args.task == "all":
        stage_flags = sorted(
            k for k, v in vars(args).items() if k not in MAIN_JOB_FLAGS and v != p.get_default(k)
        )
        if stage_flags:
            flags = ", ".join("--" + k.replace("_", "-") for k in stage_flags)
            p.error(
                f"{flags}: recipe flags configure one stage, not the main job; run a stage "
                "with --task classify|detect|localize, or leave them out"
            )
    return args


def _task_arguments(p: argparse.ArgumentParser, defaults: training.TrainConfig) -> None:
    """The model, the task and where it starts from (transfer)."""
    p.add_argument("--model", choices=training.MODELS, default=defaults.model)
    p.add_argument(
        "--task",
        choices=(*training.TASKS, "all"),
        default=None,
        help="classify (crops), detect (spatial, background class) or localize (box "
        "regressor on the frozen trunk), run in that order; all: the main job (the three, "
        "then evaluate, export, pictures, report). Default: all for tiny, classify for fast "
        "and accurate",
    )
    p.add_argument(
        "--init-model",
        default=None,
        help="the .keras model to start from (required for detect / localize; fine-tunes for "
        "classify): any label set, e.g. a converted release net",
    )
    p.add_argument(
        "--transfer-up-to",
        default=None,
        metavar="LAYER",
        help="last layer copied from --init-model (conv1.., fc6, fc7, adapt1.., fc8); default: "
        "fc7 when the label set or adaptation layers change, else every layer",
    )
    p.add_argument(
        "--adaptation-layers",
        type=int,
        default=None,
        metavar="N",
        help="new fc layers between fc7 and fc8 (Oquab et al.'s FCa: 1); default: the init "
        "model's (0 without one)",
    )
    p.add_argument(
        "--adaptation-width",
        type=int,
        default=defaults.adaptation_width,
        help="units of each adaptation layer",
    )
    p.add_argument(
        "--freeze-up-to",
        default=None,
        metavar="LAYER",
        help="do not train the layers up to LAYER (classify, detect); e.g. fc7",
    )
    p.add_argument(
        "--regressor",
        choices=("class_specific", "class_agnostic"),
        default=defaults.regressor,
        help="the box regressor --task localize trains",
    )
    p.add_argument(
        "--box-loss",
        choices=BOX_LOSSES,
        default=defaults.box_loss,
        help="localize loss on the box edges in window units (smooth_l1: bounded gradients; "
        "l2: the paper's)",
    )
    p.add_argument("--train-size", type=int, default=None, help="detect/localize image side (px)")


def _data_arguments(p: argparse.ArgumentParser, defaults: training.TrainConfig) -> None:
    """The dataset and the run directory."""
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME|PATH",
        help=f"{cli.DATASET_HELP} (default: {training.DEFAULT_DATASETS})",
    )
    p.add_argument(
        "--split",
        default=defaults.split,
        help="the training split, or a TFDS slice of one (train[:90%%], train[:100])",
    )
    p.add_argument(
        "--val-split",
        default=None,
        help="split (or slice) evaluated after every epoch: crop accuracy (classify), COCO "
        "mAP with the best detector kept in <output>/best.keras (detect, localize); a number "
        "in (0, 1) holds out that fraction of --split: 0.1 trains on <split>[:90%%] and "
        "validates on <split>[90%%:]",
    )
    cli.add_data_dir_arguments(p)
    p.add_argument("--output", default=None, help="run directory (default runs/<model>)")


def _recipe_arguments(p: argparse.ArgumentParser, defaults: training.TrainConfig) -> None:
    """The optimization recipe: schedule, SGD, initialization, dropout."""
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: examples // batch")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="initial learning rate; default: "
        + ", ".join(f"{t} {d['learning_rate']:g}" for t, d in training.TASK_DEFAULTS.items()),
    )
    p.add_argument(
        "--clipnorm",
        type=float,
        default=None,
        help="clip the gradient's global norm (0: off); default: "
        + ", ".join(f"{t} {d['clipnorm']:g}" for t, d in training.TASK_DEFAULTS.items()),
    )
    p.add_argument(
        "--lr-decay-epochs",
        type=_epochs_list,
        default=defaults.lr_decay_epochs,
        help="comma-separated epochs after which the lr is multiplied by --lr-decay-factor",
    )
    p.add_argument("--lr-decay-factor", type=float, default=defaults.lr_decay_factor)
    p.add_argument("--momentum", type=float, default=defaults.momentum)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument(
        "--init",
        choices=sorted(training.INITS),
        default=defaults.init,
        help="paper: N(0, 0.01); he_normal: He for every layer but fc8 (small nets learn faster)",
    )
    p.add_argument("--dropout", type=float, default=None, help="default: the model's (0.5)")


def _run_arguments(p: argparse.ArgumentParser, defaults: training.TrainConfig) -> None:
    """How the run executes: dtype, distribution, seeds, input pipeline, limits, logging."""
    p.add_argument(
        "--mixed-precision",
        choices=precision.PRECISIONS,
        default=defaults.mixed_precision,
        help="compute dtype. auto (default): mixed bfloat16 where the CPU / accelerator has "
        "bf16 matrix units (CPU flags avx512_bf16, amx_bf16; GPUs of compute capability 8.0+; "
        "TPUs), float32 elsewhere; an explicit choice wins (bfloat16 without bf16 units is "
        "~5x slower: one warning); float16: GPUs with tensor cores",
    )
    p.add_argument("--strategy", choices=training.STRATEGIES, default=defaults.strategy)
    p.add_argument("--tpu", default=None, help="TPU name or address (--strategy tpu)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--short-side", type=int, default=defaults.short_side)
    p.add_argument("--shuffle-buffer", type=int, default=defaults.shuffle_buffer)
    p.add_argument(
        "--cache", action="store_true", help="keep the decoded images in memory (small datasets)"
    )
    p.add_argument("--time-limit", type=float, default=None, help="stop after N seconds")
    p.add_argument(
        "--verbose",
        type=_verbosity,
        default="auto",
        help="Keras verbosity: auto, 0, 1 (progress bar), 2",
    )
    cli.add_format_argument(p)
    job = p.add_argument_group("main job (--task all)")
    job.add_argument(
        "--max-examples",
        type=int,
        default=main_job.MainJob.max_examples,
        metavar="N",
        help="test images evaluated (default: %(default)s)",
    )
    job.add_argument(
        "--pictures",
        type=int,
        default=main_job.MainJob.pictures,
        metavar="N",
        help="test images drawn with their detections (default: %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> training.TrainConfig:
    return training.TrainConfig(
        model=args.model,
        task=args.task,
        init_model=args.init_model,
        transfer_up_to=args.transfer_up_to,
        adaptation_layers=args.adaptation_layers,
        adaptation_width=args.adaptation_width,
        freeze_up_to=args.freeze_up_to,
        regressor=args.regressor,
        box_loss=args.box_loss,
        train_size=args.train_size,
        dataset=args.dataset,
        split=args.split,
        val_split=args.val_split,
        data_dir=args.data_dir,
        output=args.output,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        clipnorm=args.clipnorm,
        lr_decay_epochs=args.lr_decay_epochs,
        lr_decay_factor=args.lr_decay_factor,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        init=args.init,
        dropout=args.dropout,
        mixed_precision=args.mixed_precision,
        strategy=args.strategy,
        tpu=args.tpu,
        seed=args.seed,
        short_side=args.short_side,
        shuffle_buffer=args.shuffle_buffer,
        cache=args.cache,
        time_limit=args.time_limit,
        verbose=args.verbose,
    )


def job_from_args(args: argparse.Namespace) -> main_job.MainJob:
    return main_job.MainJob(
        model=args.model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        output=args.output,
        max_examples=args.max_examples,
        pictures=args.pictures,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        verbose=args.verbose,
        progress=args.format == "text",  # JSON alone on stdout
    )


def main(args: argparse.Namespace) -> dict:
    if args.task == "all":
        job = job_from_args(args)
        notes = cli.report_file_dataset(job.dataset_name, job.data_dir)
        result = {**main_job.run(job), **(notes or {})}
        cli.print_result(result, args.format, main_job.format_report)
        return result
    config = config_from_args(args)
    # a path dataset: its annotations checked, what it leaves out said, before training
    notes = cli.report_file_dataset(config.dataset_name, config.data_dir)
    result = {**training.train(config), **(notes or {})}
    cli.print_result(result, args.format, training.summary_line)
    return result


if __name__ == "__main__":
    try:
        main(parse_args())
    # bad flags, missing ImageNet tars, a diverged run (callbacks.TrainingDiverged), ...:
    # one line, no trace, exit status 1
    except ValueError as error:
        sys.exit(f"error: {error}")

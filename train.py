"""Train OverFeat on any TFDS dataset: classification (paper §3.1), then detection (§5)
and localization (§4.2).

Usage:
    python train.py --model fast                   # the paper's run on imagenet2012
    python train.py --model tiny --dataset overfeat_shapes/small --epochs 2 --batch-size 16
    python train.py --model accurate --strategy mirrored --mixed-precision auto
    # spatial stages, each from the previous stage's model (detection-schema datasets):
    python train.py --model tiny --task detect --init-model runs/tiny/model.keras --output runs/det
    python train.py --model tiny --task localize --init-model runs/det/model.keras --output runs/loc

Defaults are the paper's recipe: SGD momentum 0.6, weight decay 1e-5, batch 128, learning
rate 5e-2 halved after epochs 30/50/60/70/80, N(0, 1e-2) init, random crops (231 fast,
221 accurate) of images rescaled to a 256 px short side, random flips, 90 epochs. The
default dataset is imagenet2012 for fast and accurate (its ILSVRC2012 tars must be in
~/tensorflow_datasets/downloads/manual/) and the generated overfeat_shapes for tiny.

Outputs in --output (default runs/<model>): model.keras (the spatial OverFeat model),
checkpoints/epoch_NNN.weights.h5, logs/ (TensorBoard), backup/ (rerun the same command
after a crash to resume from the last finished epoch), state.json, train_config.json.
"""

from __future__ import annotations

import argparse
import json
import sys

from overfeat_tf import training


def _epochs_list(text: str) -> tuple[int, ...]:
    return tuple(int(e) for e in text.split(",") if e.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = training.TrainConfig()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", choices=training.MODELS, default=defaults.model)
    p.add_argument(
        "--task",
        choices=training.TASKS,
        default=defaults.task,
        help="classify (crops), detect (spatial, background class) or localize (box "
        "regressor on the frozen trunk); run them in that order",
    )
    p.add_argument(
        "--init-model", default=None, help="the .keras model detect / localize start from"
    )
    p.add_argument(
        "--regressor",
        choices=("class_specific", "class_agnostic"),
        default=defaults.regressor,
        help="the box regressor --task localize trains",
    )
    p.add_argument("--train-size", type=int, default=None, help="detect/localize image side (px)")
    p.add_argument(
        "--dataset",
        default=None,
        help="TFDS name, e.g. imagenet2012, overfeat_shapes/standard "
        f"(default: {training.DEFAULT_DATASETS})",
    )
    p.add_argument("--split", default=defaults.split)
    p.add_argument("--val-split", default=None, help="split to evaluate after every epoch")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default ~/tensorflow_datasets)")
    p.add_argument("--output", default=None, help="run directory (default runs/<model>)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: examples // batch")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch")
    p.add_argument("--lr", type=float, default=defaults.learning_rate)
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
    p.add_argument(
        "--mixed-precision",
        choices=training.MIXED_PRECISION,
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
    p.add_argument("--cache", action="store_true", help="keep decoded, rescaled images in memory")
    p.add_argument("--time-limit", type=float, default=None, help="stop after N seconds")
    p.add_argument(
        "--verbose", default="auto", help="Keras verbosity: auto, 0, 1 (progress bar), 2"
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> training.TrainConfig:
    verbose = args.verbose if args.verbose == "auto" else int(args.verbose)
    return training.TrainConfig(
        model=args.model,
        task=args.task,
        init_model=args.init_model,
        regressor=args.regressor,
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
        verbose=verbose,
    )


def main(args: argparse.Namespace) -> dict:
    result = training.train(config_from_args(args))
    print(training.summary_line(result), flush=True)
    print(json.dumps(result, default=str), flush=True)
    return result


if __name__ == "__main__":
    try:
        main(parse_args())
    except ValueError as error:  # bad flags, missing ImageNet tars, ...: a message, no trace
        sys.exit(f"error: {error}")

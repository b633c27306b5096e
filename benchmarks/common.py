"""Shared benchmark helpers: timing, the same-run matmul peak, the machine, BENCHMARKS.md."""

from __future__ import annotations

import argparse
import datetime
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from overfeat_tf.training import precision  # first: importing it quiets TF's C++ start-up
from overfeat_tf.utils import atomic

# isort: split
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Seconds of the fastest of `repeats` calls (after `warmup` calls); forces results."""

    def run() -> None:
        out = fn()
        for t in tf.nest.flatten(out):
            if hasattr(t, "numpy"):
                t.numpy()

    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(dtype: tf.DType = tf.float32, n: int = 2048) -> float:
    """FLOP/s of one [n, 2n] x [2n, 2n] matmul in this process, now (the same-run peak)."""
    a = tf.cast(tf.random.normal([n, 2 * n]), dtype)
    b = tf.cast(tf.random.normal([2 * n, 2 * n]), dtype)
    fn = tf.function(lambda: tf.matmul(a, b))
    return 2 * n * (2 * n) * (2 * n) / best_time(fn, repeats=5)


def machine() -> str:
    """One line naming the machine: CPU model and the flags that decide the compute dtype
    (AVX2 / AVX-512 / AVX-512 BF16 / AMX, `precision.describe_cpu`), cores, TF version, date."""
    today = datetime.date.today().isoformat()
    cpu = precision.describe_cpu()
    return f"{cpu}, {os.cpu_count()} cores, TensorFlow {tf.__version__}, {today}"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the `## title` section of BENCHMARKS.md, keeping the others."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(section + "\n", text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section
    )
    atomic.write_text(BENCHMARKS_MD, text)


def add_tiny_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The tiny classification recipe's flags shared by the classification benchmarks
    (`--batch-size` .. `--max-eval`; their schedule flags are their own)."""
    from overfeat_tf.training import precision
    from overfeat_tf.training import run as training

    p = parser
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--lr-decay-factor", type=float, default=0.3)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--init", default="he_normal", choices=sorted(training.INITS))
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--short-side", type=int, default=231)
    p.add_argument(
        "--mixed-precision",
        default="auto",
        choices=(*precision.PRECISIONS, "none"),
        help="auto: bf16 only where the CPU has bf16 units; none = float32",
    )
    p.add_argument("--scales", default="231,247,263,279,295,311", help="6 evaluation scales")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-eval", type=int, default=None, help="evaluate N test images only")


def tiny_recipe_fields(args: argparse.Namespace) -> dict:
    """The `TrainConfig` fields of `add_tiny_recipe_arguments`' flags (images cached)."""
    return {
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "momentum": args.momentum,
        "lr_decay_factor": args.lr_decay_factor,
        "weight_decay": args.weight_decay,
        "init": args.init,
        "dropout": args.dropout,
        "short_side": args.short_side,
        "mixed_precision": args.mixed_precision,
        "seed": args.seed,
        "cache": True,
    }

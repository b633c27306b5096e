"""Shared benchmark helpers: timing, the same-run matmul peak, the machine, BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from overfeat_tf import atomic, precision

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

"""A progress bar over an evaluation loop (what the evaluation commands show on stderr)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(dataset: Any, max_examples: int | None, unit: str) -> Any:
    """A `keras.utils.Progbar` over a loop of `dataset` (target: `max_examples`, or the
    dataset's cardinality when known), after a line saying the first step compiles."""
    import keras
    import tensorflow as tf

    target = max_examples
    cardinality = int(dataset.cardinality()) if isinstance(dataset, tf.data.Dataset) else -1
    if cardinality >= 0:
        target = cardinality if target is None else min(target, cardinality)
    print(
        f"Evaluating {target or 'all'} {unit}; the first one traces and compiles the graph "
        "(several seconds).",
        file=sys.stderr,
        flush=True,
    )
    return keras.utils.Progbar(target, unit_name=unit.rstrip("s"))

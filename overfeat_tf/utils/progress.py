"""Progress over an evaluation loop (what the evaluation commands and the main job show).

In a terminal: Keras' progress bar (`keras.utils.Progbar`, redrawn in place on stdout).
Anywhere else (a log file, a pipe): a plain line at every tenth of the images, so a log gets
a few lines instead of the bar's redraws (Keras' Progbar redraws into files too: it treats
every POSIX process as a terminal).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

LINES = 10  # lines a non-terminal run prints over a loop of known length (the last at its end)


class LineProgress:
    """`update(count)` prints `  {count}/{target} {unit}, {ms} ms/{unit}` each time the
    count passes another `1/LINES` of `target` and at the target itself (with no target: at
    1, 10, 100, ...). The rate is measured from the first update on, so the first step's
    tracing and compiling is left out of it.

    Args:
        target: the number of steps (None or 0: unknown).
        unit: what a step is, plural ("images").
        stream: where the lines go (default: stdout, like Keras' bar).
    """

    def __init__(self, target: int | None, unit: str, stream: TextIO | None = None) -> None:
        self.target = target or None
        self.unit = unit
        self.stream = stream
        self._every = max(1, -(-self.target // LINES)) if self.target else None
        self._next = self._every or 1
        self._first: tuple[int, float] | None = None

    def update(self, count: int) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (count, now)
        last = self.target is not None and count >= self.target
        if count < self._next and not last:
            return
        if self._every:
            self._next = (count // self._every + 1) * self._every
        else:
            self._next = count * 10
        done, since = self._first
        rate = (now - since) / (count - done) * 1000 if count > done else None
        total = f"/{self.target}" if self.target else ""
        speed = f", {rate:.0f} ms/{self.unit.rstrip('s')}" if rate is not None else ""
        print(f"  {count}{total} {self.unit}{speed}", file=self.stream or sys.stdout, flush=True)


def interactive() -> bool:
    """Whether stdout can show a redrawn progress bar: a terminal, or a notebook (Keras'
    bars render there); not a log file or a pipe. Training's `fit` verbosity ("auto") and the
    evaluations' progress both ask this. A notebook is a running IPython kernel, not an
    imported `ipykernel` module (a test run or a library may import it)."""
    if sys.stdout.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def progress_bar(dataset: Any, max_examples: int | None, unit: str) -> Any:
    """Progress over a loop of `dataset` (target: `max_examples`, or the dataset's
    cardinality when known), after a line on stderr saying the first step compiles: a
    `keras.utils.Progbar` in a terminal or a notebook, else a `LineProgress`. Both take
    `update(count)`."""
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
    if interactive():
        return keras.utils.Progbar(target, unit_name=unit.rstrip("s"))
    return LineProgress(target, unit)

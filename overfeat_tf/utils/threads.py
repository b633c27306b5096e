"""Running a function over a stream of items on a few threads, answers in input order.

The evaluations call a compiled per-image function (`tf.function`) image after image. One
image's work is partly latency-bound (the merge's rounds of small ops keep about one core
busy), so two images in flight keep both cores of a small machine working; TF releases the
GIL while it runs a function, and a traced function may be called from several threads.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["default_workers", "ordered_map"]


def default_workers() -> int:
    """Items in flight by default: 2 (more only queue for the same cores on small machines,
    and each holds an image's activations)."""
    return min(2, os.cpu_count() or 1)


def ordered_map(
    fn: Callable[[Any], T], items: Iterable[Any], workers: int | None = None
) -> Iterator[tuple[Any, T]]:
    """Yields `(item, fn(item))` in the order of `items`, with up to `workers` calls of `fn`
    running at once (`workers=1`: in this thread, one after another). `items` is read
    lazily, at most `workers` ahead of what was yielded; an exception of `fn` is raised
    when its item's turn comes."""
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}.")
    if workers == 1:
        for item in items:
            yield item, fn(item)
        return
    pending: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()

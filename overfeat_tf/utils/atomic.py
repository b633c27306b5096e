"""Atomic writes: a file or directory appears whole under its final name, or not at all.

Every writer of the package (models, checkpoints' JSON, features, exports, converted weights)
goes through `atomic_path`: the content is written under a hidden temporary name in the same
directory (same filesystem, so the final `os.replace` is atomic), and any failure removes the
temporary file or directory and re-raises. A reader, or TF Serving watching a directory, never
sees half a file.

    with atomic_path("out/model.keras") as tmp:   # tmp: out/.model.keras.<random>.keras
        model.save(tmp)                           # renamed to out/model.keras on success

    with atomic_path("serving/overfeat/3", directory=True) as tmp:
        archive.write_out(tmp)                    # a directory, renamed as a whole
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, directory: bool = False, mode: int | None = None
) -> Iterator[Path]:
    """A temporary path beside `path` that becomes `path` when the block ends without error.

    Args:
        path: the final file (or, with `directory=True`, directory) name. Its parent is
            created if missing.
        directory: yield a fresh empty temporary directory instead of a file name.
        mode: permission bits set on the result before the rename (default: 0o644 for a file,
            0o755 for a directory, so a server running as another user can read it).

    Yields:
        The temporary `Path`: a name that does not exist yet (file) or an empty directory.
        The suffix of `path` is kept (`x.keras` -> `.x.keras.<random>.keras`), since some
        writers (Keras, NumPy) choose the format by suffix.

    On any exception (KeyboardInterrupt included) the temporary file or directory is removed
    and the exception re-raised; an existing `path` is then left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}."
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{final.suffix}", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.unlink()  # writers such as `model.save` refuse or append to an existing file
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"Nothing was written to the temporary path {tmp}.")
        os.chmod(tmp, mode if mode is not None else (0o755 if directory else 0o644))
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `Path(path)`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, value: Any, **dumps: Any) -> Path:
    """Write `json.dumps(value, indent=2, ...)` plus a newline to `path` atomically."""
    dumps.setdefault("indent", 2)
    return write_text(path, json.dumps(value, **dumps) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """`np.save` to `path` (which should end in `.npy`) atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return Path(path)

"""Quiet TensorFlow start-up: no C++ log lines when the package's commands start.

TensorFlow 2.21 logs through Abseil before anything calls `absl::InitializeLog()`, and such
messages go to stderr whatever `TF_CPP_MIN_LOG_LEVEL` says (abseil/abseil-cpp#1718). On a
CPU-only machine, `import tensorflow` and the first device initialization print:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... port.cc:153] oneDNN custom operations are on. ...
    I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
    E0000 00:00:... cuda_platform.cc:52] failed call to cuInit: ...

(the first three twice: two of TF's shared libraries log on load). Measured on TF 2.21:
`TF_CPP_MIN_LOG_LEVEL=3` hides only the cuInit line (and every later C++ error with it);
`TF_ENABLE_ONEDNN_OPTS=0` hides the oneDNN line by turning oneDNN off; `GLOG_minloglevel`
and `ABSL_MIN_LOG_LEVEL` change nothing (the latter is a compile-time macro).

So `quiet_start` points file descriptor 2 at a temporary file while it imports TensorFlow
and lists its devices (the only steps that print these lines), restores it, and writes back
to stderr every captured line that is not start-up noise (`is_noise`): a Python warning or a
real error during the import is still shown. It also sets `TF_CPP_MIN_LOG_LEVEL=2` (unless
set), which hides TF's later C++ INFO and WARNING lines (CPU features, XLA compiles).
A command can also wrap its first model call in `filtered_stderr()`: running a SavedModel
the first time logs "E... util.cc:131] oneDNN supports DT_INT32 only on platforms with
AVX-512. Falling back ..." (an error-level line that no level setting hides).

Only the package's own commands are quieted (`started_as_command`: `python -m
overfeat_tf.<command>`, the repository's `train.py` / `export.py` and `benchmarks/` scripts):
importing overfeat_tf in any other process (a notebook, a test run, a server) changes
neither its environment nor its file descriptors. `OVERFEAT_TF_VERBOSE=1` turns all of this
off: every line is shown, nothing is set. This module imports only the standard library
(TensorFlow only inside `quiet_start`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

VERBOSE_ENV = "OVERFEAT_TF_VERBOSE"

_ABSL_WARNING = "All log messages before absl::InitializeLog() is called are written to STDERR"
# Abseil / glog prefix "I0000 00:00:1796162314.735664   10038 port.cc:153] ..." and TF's
# older "2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ..."
_LOG_LINE = re.compile(
    r"^(?:(?P<sev>[IWEF])\d{4} [\d:.]+\s+\d+ |\d{4}-\d\d-\d\d [\d:.]+: (?P<old>[IWEF]) )"
    r"(?P<file>[\w./-]+)\.cc:\d+\]"
)
# error lines that are start-up noise: a machine without a (usable) GPU, and oneDNN's note
# on the first graph it runs ("oneDNN supports DT_INT32 only on platforms with AVX-512")
_GPU_PROBES = ("cuda", "cudart", "cudnn", "cublas", "cufft", "dso_loader", "gpu_", "rocm")
_ERROR_NOTES = ("oneDNN supports ",)
_CONTINUATIONS = (
    "To enable the following instructions:",  # second line of cpu_feature_guard's message
    "TF-TRT Warning: Could not find TensorRT",
)

_started = False


def verbose() -> bool:
    """Whether the user asked to see TensorFlow's start-up lines (`OVERFEAT_TF_VERBOSE=1`)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def is_noise(line: str) -> bool:
    """Whether a stderr line is TensorFlow start-up noise: Abseil's InitializeLog warning,
    any C++ INFO / WARNING log line, a C++ error of the GPU probing (cuInit, cuDNN, ...) or
    oneDNN's fallback note."""
    text = line.strip()
    if not text:
        return True
    if _ABSL_WARNING in text or text.startswith(_CONTINUATIONS):
        return True
    match = _LOG_LINE.match(text)
    if match is None:
        return False
    severity = match.group("sev") or match.group("old")
    name = match.group("file").rsplit("/", 1)[-1].lower()
    message = text[match.end() :]
    return (
        severity in "IW"
        or any(probe in name for probe in _GPU_PROBES)
        or any(note in message for note in _ERROR_NOTES)
    )


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (C++ and Python writes alike) during the block; afterwards
    write every captured line that is not `is_noise` to `sys.stderr`. Without a usable fd 2
    (an embedded interpreter), the block runs uncaptured."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        _flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            _flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not is_noise(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                _flush()


def _flush() -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def started_as_command(argv: list[str] | None = None) -> bool:
    """Whether this process is one of the package's commands: `python -m overfeat_tf...`
    (`argv` defaults to `sys.orig_argv`), or a script of this repository: `train.py`,
    `export.py` or one in `benchmarks/`."""
    argv = list(getattr(sys, "orig_argv", []) if argv is None else argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m":
            return argv[i + 1].split(".")[0] == "overfeat_tf"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script in (os.path.join(root, "train.py"), os.path.join(root, "export.py")) or (
        os.path.dirname(script) == os.path.join(root, "benchmarks")
    )


def quiet_command_start() -> bool:
    """`quiet_start` in the package's own commands (`started_as_command`), nothing in any
    other process. Returns whether it quieted."""
    return started_as_command() and quiet_start()


def quiet_start() -> bool:
    """Import TensorFlow and initialize its devices without the C++ start-up lines.

    Call it before anything imports TensorFlow (once is enough; later calls do nothing).
    If TensorFlow was already imported, its import lines are out already; the device
    initialization (the cuInit line) is still quietened.

    Returns:
        False when `OVERFEAT_TF_VERBOSE=1` (nothing done, every line shown), else True.
    """
    global _started
    if verbose():
        return False
    if _started:
        return True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
    _started = True
    return True

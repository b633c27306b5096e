"""The compute dtype, chosen from the hardware (the one place the package decides it).

Mixed bfloat16 pays only where the device multiplies bf16 matrices natively: CPUs with
`avx512_bf16` (AVX-512 BF16) or `amx_bf16` (AMX) in `/proc/cpuinfo`, NVIDIA GPUs of
compute capability 8.0+ (Ampere and later) and TPUs. Elsewhere bf16 is emulated and much
slower: on a 2-core AVX2-only AMD EPYC, one tiny-net training step at batch 32 took 0.20 s
in float32 and 1.01 s in mixed_bfloat16 (5x). Mixed float16 pays on GPUs with tensor cores
(compute capability 7.0+) and is only used when asked for.

`resolve_precision("auto")` therefore gives "mixed_bfloat16" where bf16 units exist and
"float32" otherwise; an explicit "float32" / "bfloat16" / "float16" is honoured, with one
warning line when the hardware has no units for it.

Example:

```python
from overfeat_tf.training import precision

policy = precision.resolve_precision("auto")  # "float32" or "mixed_bfloat16"
keras.mixed_precision.set_global_policy(policy)
print(precision.describe_cpu())  # "AMD EPYC (AVX2 yes, AVX-512 no, AVX-512 BF16 no, AMX no)"
```
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path

import tensorflow as tf

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
ALIASES = {"none": "float32"}  # the benchmarks' old spelling of "no mixed precision"
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_GPU_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores
FP16_GPU_CAPABILITY = (7, 0)  # Volta: fp16 tensor cores
BF16_SLOWDOWN = (
    "about 5x for training (tiny net, batch 32: 0.20 s float32 vs 1.01 s mixed_bfloat16 "
    "per step on an AVX2-only AMD EPYC)"
)
CPUINFO = "/proc/cpuinfo"

_logger = logging.getLogger(__name__)
_warned: set[str] = set()  # each warning is logged once per process

GpuCapabilities = Sequence[tuple[int, int] | None]


def normalize_precision(requested: str | None) -> str:
    """The canonical choice for a requested precision, without looking at the hardware.

    Args:
        requested: "auto", "float32", "bfloat16" or "float16" (any case); "none" and
            `None` are accepted as "float32" (the old spelling of "no mixed precision").

    Returns:
        One of `PRECISIONS`.

    Raises:
        ValueError: for any other value; the message names the valid choices.
    """
    if requested is None:
        return "float32"
    name = str(requested).strip().lower()
    name = ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise ValueError(
            f"mixed_precision must be one of {', '.join(PRECISIONS)} (or 'none' for float32), "
            f"got {requested!r}."
        )
    return name


def _cpuinfo_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def cpu_flags(path: str | Path = CPUINFO) -> set[str]:
    """The CPU feature flags the kernel reports (`flags` lines of `/proc/cpuinfo`).

    Args:
        path: the cpuinfo file to read.

    Returns:
        The flags, lower case (e.g. {"avx2", "fma", "avx512f", "avx512_bf16"}); an empty
        set when the file is missing (non-Linux systems).
    """
    flags: set[str] = set()
    for line in _cpuinfo_text(path).splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):  # "Features" on ARM
            flags.update(value.lower().split())
    return flags


def cpu_model_name(path: str | Path = CPUINFO) -> str:
    """The CPU's model name (`model name` in `/proc/cpuinfo`, else `platform.processor()`)."""
    for line in _cpuinfo_text(path).splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or "unknown CPU"


def has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU has bf16 matrix units (`avx512_bf16` or `amx_bf16`).

    Args:
        flags: CPU flags; None reads them with `cpu_flags()`.
    """
    flags = cpu_flags() if flags is None else {f.lower() for f in flags}
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def gpu_capabilities() -> list[tuple[int, int] | None]:
    """The compute capability `(major, minor)` of each visible GPU (None when TF does not
    report one, e.g. non-NVIDIA GPUs); an empty list without GPUs."""
    capabilities: list[tuple[int, int] | None] = []
    for device in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(device).get("compute_capability")
        capabilities.append(tuple(capability) if capability else None)
    return capabilities


def has_tpu() -> bool:
    """Whether TPU devices are visible (after `tf.tpu.experimental.initialize_tpu_system`)."""
    return bool(tf.config.list_logical_devices("TPU"))


def _all_at_least(gpus: GpuCapabilities, minimum: tuple[int, int]) -> bool:
    return all(c is not None and tuple(c) >= minimum for c in gpus)


def _capabilities(gpus: GpuCapabilities) -> str:
    return ", ".join("unknown" if c is None else f"{c[0]}.{c[1]}" for c in gpus)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        _logger.warning(message)


def resolve_precision(
    requested: str | None = "auto",
    flags: Iterable[str] | None = None,
    gpus: GpuCapabilities | None = None,
    tpu: bool | None = None,
) -> str:
    """The Keras dtype policy name for a requested precision on this hardware.

    "auto" gives "mixed_bfloat16" where the compute device has bf16 matrix units (a TPU;
    GPUs all of compute capability 8.0+; without GPUs, a CPU with `avx512_bf16` or
    `amx_bf16`) and "float32" otherwise; it never picks float16. An explicit choice always
    wins; "bfloat16" on hardware without bf16 units and "float16" without tensor-core GPUs
    log one warning line (once per process) saying it will be slower there.

    Args:
        requested: "auto", "float32", "bfloat16" or "float16"; "none" / None mean float32.
        flags: CPU flags (None: read `/proc/cpuinfo`).
        gpus: compute capabilities `(major, minor)` of the GPUs (None entries: unknown);
            None: detect them with TensorFlow; `[]`: no GPU.
        tpu: whether training runs on TPUs (None: detect them with TensorFlow).

    Returns:
        "float32", "mixed_bfloat16" or "mixed_float16" (for `keras.mixed_precision` /
        a layer's `dtype`).

    Raises:
        ValueError: when `requested` is not a valid choice.
    """
    choice = normalize_precision(requested)
    if choice == "float32":
        return POLICIES["float32"]
    tpu = has_tpu() if tpu is None else tpu
    gpus = gpu_capabilities() if gpus is None and not tpu else list(gpus or [])
    if tpu:
        native_bf16, tensor_cores, device = True, False, "the TPU, which has"
    elif gpus:
        native_bf16 = _all_at_least(gpus, BF16_GPU_CAPABILITY)
        tensor_cores = _all_at_least(gpus, FP16_GPU_CAPABILITY)
        device = f"GPUs of compute capability {_capabilities(gpus)}, which have"
    else:
        native_bf16, tensor_cores = has_native_bf16(flags), False
        device = f"this CPU, {describe_cpu(flags=flags)}, which has"
    if choice == "auto":
        return POLICIES["bfloat16" if native_bf16 else "float32"]
    if choice == "bfloat16" and not native_bf16:
        _warn_once(
            f"mixed_precision bfloat16 on {device} no bf16 matrix units (CPU flags "
            f"avx512_bf16 / amx_bf16, GPUs of compute capability 8.0+, TPUs): it will be much "
            f"slower there, {BF16_SLOWDOWN}; use auto or float32."
        )
    if choice == "float16" and not tensor_cores:
        _warn_once(
            f"mixed_precision float16 on {device} no float16 tensor cores (GPUs of compute "
            "capability 7.0+): it will not be faster than float32 there and may be much "
            "slower; use auto or float32."
        )
    return POLICIES[choice]


def describe_cpu(path: str | Path = CPUINFO, flags: Iterable[str] | None = None) -> str:
    """One line naming the CPU and its matrix-relevant features, for BENCHMARKS.md.

    Args:
        path: the cpuinfo file (model name, and the flags when `flags` is None).
        flags: CPU flags to describe instead of the file's.

    Returns:
        E.g. "AMD EPYC (AVX2 yes, AVX-512 yes, AVX-512 BF16 yes, AMX no)"; AVX-512 is
        `avx512f`, AMX is `amx_tile` / `amx_bf16`.
    """
    flags = cpu_flags(path) if flags is None else {f.lower() for f in flags}
    features = (
        ("AVX2", "avx2" in flags),
        ("AVX-512", "avx512f" in flags),
        ("AVX-512 BF16", "avx512_bf16" in flags),
        ("AMX", bool({"amx_tile", "amx_bf16"} & flags)),
    )
    present = ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in features)
    return f"{cpu_model_name(path)} ({present})"

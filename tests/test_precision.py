"""The compute dtype follows the (mocked) hardware; an explicit choice wins."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

import train
from overfeat_tf.training import precision
from overfeat_tf.training import run as training
from tests.test_data import TOY_CLASSES, encoded_examples

AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}  # the AMD EPYC of issue 14
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}  # e.g. AMD Zen 4
AMX = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}  # e.g. Sapphire Rapids
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16
bogomips\t: 5200.00

processor\t: 1
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 avx512_vnni
"""


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test starts with no warning logged yet (they are logged once per process)."""
    monkeypatch.setattr(precision, "_warned", set())


@pytest.fixture
def cpu(monkeypatch):
    """Mock this machine's CPU flags (no GPU, no TPU): `cpu(AVX2_ONLY)`."""

    def mock(flags: set[str]) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda path=precision.CPUINFO: set(flags))
        monkeypatch.setattr(precision, "gpu_capabilities", lambda: [])
        monkeypatch.setattr(precision, "has_tpu", lambda: False)

    return mock


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == precision.__name__]


def test_cpu_flags_model_name_and_description_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    flags = precision.cpu_flags(path)
    assert flags == {"fpu", "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"}
    assert precision.cpu_model_name(path) == "AMD EPYC 9B14"
    assert precision.has_native_bf16(flags)
    assert precision.describe_cpu(path) == (
        "AMD EPYC 9B14 (AVX2 yes, AVX-512 yes, AVX-512 BF16 yes, AMX no)"
    )
    assert precision.describe_cpu(path, flags=AMX) == (
        "AMD EPYC 9B14 (AVX2 yes, AVX-512 yes, AVX-512 BF16 no, AMX yes)"
    )
    assert precision.cpu_flags(tmp_path / "missing") == set()  # no /proc: no flags


@pytest.mark.parametrize(
    "flags, expected",
    [
        (AVX2_ONLY, "float32"),
        (AVX512_BF16, "mixed_bfloat16"),
        (AMX, "mixed_bfloat16"),
        (set(), "float32"),
    ],
)
def test_auto_follows_the_mocked_cpu_flags(cpu, caplog, flags, expected):
    cpu(flags)
    assert precision.has_native_bf16() == (expected == "mixed_bfloat16")
    assert precision.resolve_precision() == expected  # default: auto
    assert precision.resolve_precision("auto", flags=flags, gpus=[], tpu=False) == expected
    assert _warnings(caplog) == []  # auto never warns


@pytest.mark.parametrize(
    "requested, flags, expected",
    [
        ("float32", AVX512_BF16, "float32"),
        ("none", AMX, "float32"),  # the benchmarks' old alias
        (None, AMX, "float32"),  # the old TrainConfig default
        ("bfloat16", AVX2_ONLY, "mixed_bfloat16"),  # honoured, with a warning
        ("BFloat16", AVX512_BF16, "mixed_bfloat16"),
        ("float16", AVX512_BF16, "mixed_float16"),
    ],
)
def test_an_explicit_choice_overrides_the_hardware(cpu, requested, flags, expected):
    cpu(flags)
    assert precision.resolve_precision(requested) == expected


def test_bf16_without_units_warns_exactly_once(cpu, caplog):
    cpu(AVX2_ONLY)
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        for _ in range(3):
            assert precision.resolve_precision("bfloat16") == "mixed_bfloat16"
    (message,) = _warnings(caplog)
    assert "\n" not in message  # one line
    assert "no bf16 matrix units" in message and "5x" in message
    assert "AVX-512 BF16 no" in message  # names what this CPU lacks


def test_bf16_with_units_does_not_warn(cpu, caplog):
    cpu(AMX)
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        assert precision.resolve_precision("bfloat16") == "mixed_bfloat16"
    assert _warnings(caplog) == []


def test_accelerators_decide_before_the_cpu(caplog):
    no_bf16 = AVX2_ONLY
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        assert precision.resolve_precision("auto", no_bf16, gpus=[(8, 0)], tpu=False) == (
            "mixed_bfloat16"
        )
        # a GPU without bf16 units computes: the CPU's bf16 units do not matter
        assert precision.resolve_precision("auto", AMX, gpus=[(7, 5)], tpu=False) == "float32"
        assert precision.resolve_precision("auto", AMX, gpus=[(8, 6), (7, 0)], tpu=False) == (
            "float32"
        )
        assert precision.resolve_precision("auto", no_bf16, gpus=[None], tpu=False) == "float32"
        assert precision.resolve_precision("auto", no_bf16, gpus=[], tpu=True) == ("mixed_bfloat16")
        # float16 only when asked, silent on tensor cores
        assert precision.resolve_precision("float16", no_bf16, gpus=[(7, 0)], tpu=False) == (
            "mixed_float16"
        )
        assert _warnings(caplog) == []
        assert precision.resolve_precision("bfloat16", no_bf16, gpus=[(7, 5)], tpu=False) == (
            "mixed_bfloat16"
        )
        assert precision.resolve_precision("float16", no_bf16, gpus=[], tpu=False) == (
            "mixed_float16"
        )
    bf16, fp16 = _warnings(caplog)
    assert "compute capability 7.5" in bf16 and "no bf16 matrix units" in bf16
    assert "no float16 tensor cores" in fp16


@pytest.mark.parametrize("bad", ["int8", "mixed_bfloat16", "fp32", ""])
def test_bad_values_name_the_valid_choices(bad):
    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
        precision.resolve_precision(bad, flags=AMX, gpus=[], tpu=False)
    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
        training.TrainConfig(mixed_precision=bad)


def test_train_config_and_parser_default_to_auto():
    assert training.TrainConfig().mixed_precision == "auto"
    assert training.TrainConfig(mixed_precision=None).mixed_precision == "float32"
    assert training.TrainConfig(mixed_precision="none").mixed_precision == "float32"
    args = train.parse_args([])
    assert args.mixed_precision == "auto"
    assert train.config_from_args(args).mixed_precision == "auto"
    explicit = train.parse_args(["--mixed-precision", "float32"])
    assert train.config_from_args(explicit).mixed_precision == "float32"
    with pytest.raises(SystemExit):
        train.parse_args(["--mixed-precision", "int8"])


@pytest.mark.parametrize(
    "flags, requested, expected",
    [
        (AVX2_ONLY, "auto", "float32"),
        (AVX512_BF16, "auto", "mixed_bfloat16"),
        (AVX512_BF16, "float32", "float32"),
    ],
)
def test_build_model_resolves_through_precision(cpu, flags, requested, expected):
    cpu(flags)
    config = training.TrainConfig(model="tiny", mixed_precision=requested)
    model = training.initial_model(config, ["a", "b"])
    assert model.get_layer("conv1").dtype_policy.name == expected
    logits = model.crop_model()(np.zeros((1, 231, 231, 3), "float32"))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"  # outputs stay float32


@pytest.mark.parametrize("flags, expected", [(AVX2_ONLY, "float32"), (AMX, "mixed_bfloat16")])
def test_train_uses_the_policy_of_the_mocked_hardware(cpu, monkeypatch, tmp_path, flags, expected):
    cpu(flags)
    policies = []
    original = keras.mixed_precision.set_global_policy

    def set_global_policy(policy):
        policies.append(getattr(policy, "name", policy))
        original(policy)

    monkeypatch.setattr(keras.mixed_precision, "set_global_policy", set_global_policy)
    config = training.TrainConfig(
        model="tiny",
        output=str(tmp_path / "run"),
        epochs=1,
        steps_per_epoch=1,
        batch_size=2,
        init="he_normal",
        learning_rate=0.01,
        verbose=0,
    )
    result = training.train(config, encoded_examples(4), list(TOY_CLASSES))
    assert policies == [expected, "float32"]  # set for the run, then restored
    assert keras.mixed_precision.global_policy().name == "float32"
    model = keras.models.load_model(result["model_path"])
    assert model.get_layer("conv1").dtype_policy.name == expected


def _bench_report(policy: str, requested: str, error: float, date: str) -> dict:
    from benchmarks import bench_classification

    args = bench_classification.parse_args(["--mixed-precision", requested])
    rows = [{"name": "6 scales (1-6), fine stride, flips", "top1_error": error, "top5_error": 0.5}]
    return {
        "machine": "AMD EPYC, 2 cores",
        "cpu": precision.describe_cpu(flags=AVX512_BF16),
        "cpu_has_bf16_units": True,
        "policy": policy,
        "date": date,
        "nproc": 2,
        "load_average_start": "2.0 2.0 2.0",
        "load_average_end": "2.0 2.0 2.0",
        "dataset": "overfeat_shapes/standard",
        "prepare_seconds": 0.0,
        "train_seconds": 900.5,
        "eval_seconds": 200.0,
        "epochs_run": 20,
        "steps": 5000,
        "stopped_by_time_limit": True,
        "train_logs": {"loss": 0.5},
        "recipe": {k: v for k, v in vars(args).items() if k not in ("write", "output")},
        "test_examples": 1000,
        "scales": [231],
        "rows": rows,
        "default_scales": [247],
        "default_scale_rows": rows,
    }


def test_classification_benchmark_keeps_the_other_policys_row():
    from benchmarks import bench_classification as bench

    first = (
        "# Benchmarks\n\n## "
        + bench.SECTION
        + "\n\n"
        + bench.section(_bench_report("mixed_bfloat16", "bfloat16", 8.1, "2026-11-23"), text="")
    )
    second = bench.section(_bench_report("float32", "float32", 11.25, "2026-12-01"), text=first)
    rows, details, _ = bench.previous_runs("## " + bench.SECTION + "\n\n" + second)
    assert list(rows) == ["mixed_bfloat16", "float32"] and list(details) == list(rows)
    assert "| 8.10 | meets |" in rows["mixed_bfloat16"]
    assert "| 11.25 | does NOT meet (by 1.25 points) |" in rows["float32"]
    assert "AVX-512 BF16 yes" in rows["float32"] and "2026-12-01" in rows["float32"]
    assert "stand-in for a CPU without bf16 units" in details["float32"]
    assert "stand-in" not in details["mixed_bfloat16"]
    # a new float32 run replaces its own row only
    third = bench.section(
        _bench_report("float32", "float32", 9.5, "2026-12-02"),
        text="## " + bench.SECTION + "\n\n" + second,
    )
    rows, details, _ = bench.previous_runs("## " + bench.SECTION + "\n\n" + third)
    assert list(rows) == ["mixed_bfloat16", "float32"]
    assert "2026-12-02" in rows["float32"] and "| 9.50 | meets |" in rows["float32"]
    assert "| 8.10 | meets |" in rows["mixed_bfloat16"]

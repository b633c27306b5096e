"""The efficiency benchmarks of the paper's claims (issue 12), in one command.

    python benchmarks/bench_suite.py                  # every part, markdown on stdout
    python benchmarks/bench_suite.py --write          # ... and BENCHMARKS.md sections
    python benchmarks/bench_suite.py --parts dense serving --repeats 5
    python benchmarks/bench_suite.py --quick          # smoke run: small sizes

Each part is one BENCHMARKS.md section "Suite: ..." (machine, load, date, min / median / max
over `--repeats` calls after a warm-up, every target met or missed by how much). FLOPs come
from `overfeat_tf.models.flops` (the model's own layer shapes); weights are random (their values do
not change the work); ratios to the matmul peak are paired: each timed call follows its own
peak measurement, so a change of load on the shared machine hits both.
1. inference: fast and accurate, 6 default scales x 2 flips, fine stride, float32 and mixed
   bfloat16, FLOP/s over the matmul peak of the same dtype.
2. dense: the same windows R-CNN-style (each cropped from its level and run through
   `net.crop_model()` on its own) on a subsample, extrapolated; speedup (>= 50x), agreement.
3. training: `train_on_batch` of `recipe.compile_crop_model` (the package's training step),
   3 x forward FLOPs over the float32 peak (>= 60 % for fast).
4. pipeline: `data.training_dataset` alone, images/s against the training step's (>= 2x).
5. serving (`suite_serving.py`): the detector's decoder served (SavedModel, plain TF) as % of
   the forward pass (<= 10 % fast / accurate, <= 100 % tiny), tiny's served latency (<= 2x
   forward), the decoder's dependent loop iterations for 4000 boxes (<= 64), first calls in
   a fresh process (<= 5 s), 4 concurrent clients (throughput >= one client's, same answers,
   no crash). Where tiny's served time goes: `profile_serving.py`.
Everything goes through the public API (`OverFeatDetector`, `serving.export_model`, the
detector's `prediction_decoder`), so it measures whatever decoder the detector uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
import tensorflow as tf

from benchmarks.bench_serving import test_jpeg
from benchmarks.common import machine, matmul_peak, write_section
from overfeat_tf.architecture.config import TINY, ConvSpec
from overfeat_tf.data import inputs as data
from overfeat_tf.data import tfds_io
from overfeat_tf.models import flops
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.ops.pyramid import default_scales
from overfeat_tf.training import precision, recipe
from overfeat_tf.training import run as training
from overfeat_tf.utils import atomic

PARTS = ("inference", "dense", "training", "pipeline", "serving")
IMAGE_HW = (480, 640)


@dataclasses.dataclass
class Settings:
    repeats: int = 3
    quick: bool = False
    command: str = "python benchmarks/bench_suite.py"

    def scales(self, arch: Any) -> tuple:
        """The net's default scales (quick: its two smallest)."""
        return default_scales(arch)[:2] if self.quick else default_scales(arch)

    @property
    def peak_n(self) -> int:
        return 1024 if self.quick else 2048


@dataclasses.dataclass
class Section:
    title: str
    intro: str
    header: list[str]
    rows: list[list[Any]] = dataclasses.field(default_factory=list)
    targets: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def body(self, s: Settings, loads: tuple[float, float], seconds: float) -> str:
        table = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        table += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        quick = ", --quick sizes" if s.quick else ""
        parts = [
            f"Machine: {machine()}; load average {loads[0]:.1f} at the start, {loads[1]:.1f} "
            f"at the end (shared machine).\nCommand: `{s.command}` (repeats {s.repeats}"
            f"{quick}); part wall time {seconds:.0f} s.",
            self.intro.strip(),
            "\n".join(table),
        ]
        if self.targets:
            parts.append("Targets:\n" + "\n".join(f"- {t}" for t in self.targets))
        return "\n\n".join(parts + [n.strip() for n in self.notes]) + "\n"


# --- timing and verdicts ------------------------------------------------------------------------


def _force(out: Any) -> Any:
    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()
    return out


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    _force(fn())
    return time.perf_counter() - start


def timings(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of `repeats` calls of `fn` (results fetched), after `warmup` calls."""
    for _ in range(warmup):
        _force(fn())
    return [_timed(fn) for _ in range(repeats)]


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """`timings` of several functions called in turn (a load change hits them alike)."""
    for fn in fns.values():
        _force(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return times


def paired(fn: Callable[[], Any], work: int, s: Settings, dtype: Any, warmup: int = 1) -> dict:
    """Each repeat: the matmul peak of `dtype` (`common.matmul_peak`), then one timed call of
    `fn`; `fractions` = (work / seconds) / peak, per repeat."""
    for _ in range(warmup):
        _force(fn())
    peaks, times = [], []
    for _ in range(s.repeats):
        peaks.append(matmul_peak(dtype, s.peak_n))
        times.append(_timed(fn))
    fractions = [work / t / p for t, p in zip(times, peaks, strict=True)]
    return {"flops": work, "seconds": times, "peaks": peaks, "fractions": fractions}


def mmm(values: list[float], scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
    """ "min / median / max" of `values` x `scale`."""
    stats = (min(values), statistics.median(values), max(values))
    return " / ".join(f"{v * scale:.{digits}g}{unit}" for v in stats)


def verdict(what: str, value: float, limit: float, higher: bool, fmt: Callable) -> str:
    """A target line: met, or missed by how much."""
    met = value >= limit if higher else value <= limit
    gap = "met" if met else f"MISSED by {fmt(abs(value - limit))}"
    return f"{what}: {fmt(value)} (target {'>=' if higher else '<='} {fmt(limit)}): {gap}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _x(x: float) -> str:
    return f"{x:.2f}x"


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _net(arch: Any, dtype: str = "float32", **kwargs: Any) -> OverFeat:
    keras.utils.set_random_seed(0)
    policy = None if dtype == "float32" else dtype
    return OverFeat(arch, kernel_initializer="he_normal", dtype=policy, **kwargs)


def _forward(detector: OverFeatDetector) -> Callable[[tf.Tensor], Any]:
    """The network over the detector's pyramid (the levels' raw outputs), compiled."""
    return tf.function(lambda im: [lvl.outputs for lvl in detector.levels(im)])


def _image() -> tf.Tensor:
    return tf.random.uniform([*IMAGE_HW, 3], 0, 255, seed=1)


def _peak_row(r: dict) -> list[str]:
    """s, best GFLOP/s, peak GFLOP/s, % of peak cells of a `paired` result."""
    best = r["flops"] / min(r["seconds"]) / 1e9
    return [
        mmm(r["seconds"]),
        f"{best:.1f}",
        mmm(r["peaks"], 1e-9),
        mmm(r["fractions"], 100, unit=" %"),
    ]


# --- 1. multi-scale inference -------------------------------------------------------------------


def part_inference(s: Settings, results: dict) -> Section:
    bf16 = "yes" if precision.has_native_bf16() else "NO: bf16 is emulated (measured anyway)"
    section = Section(
        "Suite: multi-scale inference",
        f"""The network alone (`OverFeatDetector.levels` in one `tf.function`, 1000 classes)
over one {IMAGE_HW[0]}x{IMAGE_HW[1]} image at the net's default pyramid (accurate: paper
Table 5's six sizes; fast: six short sides at the same ratios) x 2 flips, fine stride. FLOPs:
`flops.pyramid_flops`. Peak: a {s.peak_n}x{2 * s.peak_n} by {2 * s.peak_n}x{2 * s.peak_n}
matmul of the row's dtype before each timed call; % of peak per call. bf16 matrix units
(avx512_bf16 / amx_bf16) on this CPU: {bf16}.""",
        ["model", "dtype", "levels", "TFLOP", "s", "GFLOP/s (best)", "peak GFLOP/s",
         "% of peak"],
    )  # fmt: skip
    image = _image()
    for arch in ("tiny", "fast") if s.quick else ("fast", "accurate"):
        for dtype, peak_dtype in (("float32", tf.float32), ("mixed_bfloat16", tf.bfloat16)):
            detector = OverFeatDetector(_net(arch, dtype), scales=s.scales(arch))
            fwd = _forward(detector)
            work = flops.pyramid_flops(detector, IMAGE_HW)
            r = paired(lambda fwd=fwd: fwd(image), work, s, peak_dtype)
            section.data[f"{arch}/{dtype}"] = r
            levels = f"{len(detector.scales)} x 2"
            section.rows.append([arch, dtype, levels, f"{work / 1e12:.3f}", *_peak_row(r)])
    return section


# --- 2. dense vs per-window ---------------------------------------------------------------------


def _windows(levels: list, crop: int, sample: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(all windows, crops [n, S, S, 3], their dense logits [n, C]) of a random subsample."""
    index = []
    for li, out in enumerate(levels):
        n, h, w = out.outputs["class_logits"].shape[:3]
        index += [(li, b, i, j) for b in range(n) for i in range(h) for j in range(w)]
    picks = np.random.default_rng(0).choice(len(index), min(sample, len(index)), replace=False)
    crops, dense = [], []
    for li, b, i, j in (index[k] for k in picks):
        out = levels[li]
        y, x = i * out.stride, j * out.stride
        crops.append(out.level.image[b, y : y + crop, x : x + crop].numpy())
        dense.append(out.outputs["class_logits"][b, i, j].numpy())
    return len(index), np.stack(crops), np.stack(dense)


def _dense_case(arch: Any, s: Settings, batch: int, time_it: bool = True) -> dict[str, Any]:
    net = _net(arch)
    detector = OverFeatDetector(net, scales=s.scales(net.config))
    image = _image()
    fwd = _forward(detector)
    dense_s = timings(lambda: fwd(image), s.repeats) if time_it else []
    levels = detector.levels(image)
    total, crops, dense = _windows(levels, net.config.crop_size, 8 if s.quick else 48)
    crop_model = net.crop_model()
    run = tf.function(lambda x: crop_model(x, training=False))

    def batched(size: int) -> list:
        return [run(crops[k : k + size]) for k in range(0, len(crops), size)]

    logits = np.concatenate([o.numpy() for o in batched(batch)])
    r = {"model": net.config.name, "windows": total, "sampled": len(crops), "dense_s": dense_s,
         "max_abs_diff": float(np.max(np.abs(logits - dense))),
         "max_abs_logit": float(np.max(np.abs(dense))),
         "top1_agree": float(np.mean(logits.argmax(-1) == dense.argmax(-1)))}  # fmt: skip
    if time_it:
        work = flops.pyramid_flops(detector, IMAGE_HW)
        r["flop_ratio"] = total * flops.model_flops(net) / work
        r["per_window_s"] = {
            size: [t / len(crops) for t in timings(lambda size=size: batched(size), s.repeats)]
            for size in (1, batch)
        }
    return r


def part_dense(s: Settings, results: dict) -> Section:
    batch = 4 if s.quick else 16
    section = Section(
        "Suite: dense vs per-window",
        f"""Paper §3.5: applied convolutionally, the net shares the work of overlapping
windows. Dense: the network over the pyramid of one {IMAGE_HW[0]}x{IMAGE_HW[1]} image (as in
"multi-scale inference", float32). Per-window, R-CNN style: the same windows (every fine-map
cell's crop-size window, cut from its level image) through `net.crop_model()` on their own,
one per call or {batch} independent windows per call (batching: the stronger baseline); a
random subsample timed and extrapolated to all windows. FLOP ratio = windows x crop FLOPs /
dense FLOPs, the speedup at equal efficiency. Agreement: each sampled window's crop logits
against its dense cell's.""",
        ["model", "windows (sampled)", "dense s", "per-window ms, batch 1", f"batch {batch}",
         f"speedup, batch 1 / {batch}", "FLOP ratio", "max abs logit diff (max abs logit)",
         "top-1 agree"],
    )  # fmt: skip
    for arch in ("tiny",) if s.quick else ("fast", "accurate"):
        r = _dense_case(arch, s, batch)
        section.data[arch] = r
        speed = [r["windows"] * _med(v) / _med(r["dense_s"]) for v in r["per_window_s"].values()]
        section.rows.append([
            arch, f"{r['windows']} ({r['sampled']})", mmm(r["dense_s"]),
            *(mmm(v, 1e3) for v in r["per_window_s"].values()),
            f"{speed[0]:.1f}x / {speed[1]:.1f}x", f"{r['flop_ratio']:.1f}x",
            f"{r['max_abs_diff']:.3g} ({r['max_abs_logit']:.3g})", _pct(r["top1_agree"]),
        ])  # fmt: skip
        what = f"{arch} speedup over batched per-window (medians)"
        section.targets.append(verdict(what, speed[1], 50.0, True, _x))
    # the windows' indexing, checked on a net without zero padding (3x3 layers made 1x1)
    flat = (*TINY.convs[:2], ConvSpec(64, 1), ConvSpec(64, 1), ConvSpec(64, 1, pool=2))
    control = _dense_case(TINY.replace(name="tiny_unpadded", convs=flat), s, batch, False)
    section.data["control"] = control
    section.notes.append(
        f"The logits differ because a dense cell sees context a crop does not: the 3x3 "
        f"layers' zero padding lies at the crop's border for a crop, real neighbouring "
        f"features in the dense pass. Control: the tiny net with its 3x3 layers made 1x1 (no "
        f"padding), {control['sampled']} windows: max abs diff {control['max_abs_diff']:.2g} "
        f"(max abs logit {control['max_abs_logit']:.3g}), so the windows are the dense cells'."
    )
    return section


# --- 3. training step ---------------------------------------------------------------------------


def _train_case(arch: str, batch: int, s: Settings) -> dict[str, Any]:
    config = training.TrainConfig(
        model=arch, batch_size=batch, mixed_precision="float32", init="he_normal", seed=0
    )
    classes = 10 if arch == "tiny" else 1000
    net = recipe.initial_model(config, [f"class_{i}" for i in range(classes)])
    crop = recipe.compile_crop_model(net, config, steps_per_epoch=100)
    rng = np.random.default_rng(0)
    side = net.config.crop_size
    x = rng.uniform(0, 255, (batch, side, side, 3)).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    work = flops.training_step_flops(net, batch)
    r = paired(lambda: crop.train_on_batch(x, y), work, s, tf.float32, warmup=2)
    return {**r, "batch": batch, "images_per_s": batch / _med(r["seconds"])}


def part_training(s: Settings, results: dict) -> Section:
    fast_batch = 2 if s.quick else 32
    section = Section(
        "Suite: training step",
        f"""One SGD step of the package's training model (`recipe.compile_crop_model`: crop
model, momentum SGD, weight decay, accuracy metrics) by `train_on_batch` on random crops at
the crop size, float32, he_normal init; batch {fast_batch} fast (its 145M parameters and
batch fit in memory here), 32 tiny. FLOPs = 3 x forward x batch
(`flops.training_step_flops`: forward, input gradients, weight gradients). Peak: the float32
matmul before each timed step.""",
        ["model", "batch", "GFLOP / step", "s / step", "GFLOP/s (best)", "peak GFLOP/s",
         "% of peak", "images/s (median)"],
    )  # fmt: skip
    for arch, batch in (("fast", fast_batch), ("tiny", 32)):
        r = section.data[arch] = _train_case(arch, batch, s)
        gflop = f"{r['flops'] / 1e9:.1f}"
        section.rows.append([arch, batch, gflop, *_peak_row(r), f"{r['images_per_s']:.1f}"])
    fraction = _med(section.data["fast"]["fractions"])
    section.targets.append(verdict("fast float32, median % of peak", fraction, 0.6, True, _pct))
    results["training"] = section.data
    return section


# --- 4. input pipeline --------------------------------------------------------------------------


def _synthetic_jpegs(count: int = 64, size: tuple[int, int] = (375, 500)) -> tf.data.Dataset:
    """ImageNet-sized JPEGs (ILSVRC's typical 500x375) as example dicts."""
    images = [test_jpeg(size, seed=i) for i in range(count)]
    labels = np.arange(count, dtype=np.int64) % 10
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


def _pipeline_rates(dataset: tf.data.Dataset, batches: int, repeats: int) -> list[float]:
    """Images/s over `batches` batches (after 3 warm-up batches), `repeats` times."""
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        images = sum(int(next(iterator)[0].shape[0]) for _ in range(batches))
        rates.append(images / (time.perf_counter() - start))
    return rates


def part_pipeline(s: Settings, results: dict) -> Section:
    batch, batches = 32, (4 if s.quick else 30)
    start = time.perf_counter()
    tfds_io.load_builder("overfeat_shapes/small", splits=("train",))
    prepare = time.perf_counter() - start
    if "training" not in results:  # the consumption to compare with
        part_training(dataclasses.replace(s, repeats=min(s.repeats, 2)), results)
    need = {arch: results["training"][arch]["images_per_s"] for arch in ("fast", "tiny")}
    section = Section(
        "Suite: input pipeline",
        f"""`data.training_dataset` alone (records -> decode -> rescale the short side to 256
-> random 231 crop -> random flip -> batch {batch} -> prefetch; parallel maps, AUTOTUNE, no
cache; both cores), {batches} batches per repeat after 3 warm-up batches, against the images/s
of the "training step" part's median step (fast {need["fast"]:.1f}, tiny
{need["tiny"]:.1f}). The `cache=True` row keeps the decoded, rescaled images in memory
after the first pass (what `bench_classification.py` trains tiny with): only crop, flip and
batch remain per image. TFDS preparation of overfeat_shapes/small (first use only):
{prepare:.1f} s.""",
        ["source", "images/s", "median vs fast step", "median vs tiny step"],
    )
    sources = {
        "overfeat_shapes/small train (48 images, 160-512 px)": ("overfeat_shapes/small", False),
        "64 synthetic 375x500 JPEGs": (_synthetic_jpegs(), False),
        "overfeat_shapes/small, `cache=True` (crop, flip, batch)": ("overfeat_shapes/small", True),
    }
    for label, (source, cache) in sources.items():
        ds = data.training_dataset(source, "train", 231, batch, seed=0, cache=cache)
        rates = section.data[label] = _pipeline_rates(ds, batches, s.repeats)
        ratios = {arch: _med(rates) / need[arch] for arch in need}
        section.rows.append([label, mmm(rates, digits=4), *(_x(v) for v in ratios.values())])
        for arch, ratio in ratios.items():
            section.targets.append(verdict(f"{label} vs the {arch} step", ratio, 2.0, True, _x))
    return section


# --- 5. merge and serving (benchmarks/suite_serving.py) ------------------------------------------


def part_serving(s: Settings, results: dict) -> Section:
    """Part 5, `suite_serving.part_serving` (imported here: it imports this module)."""
    from benchmarks.suite_serving import part_serving as run

    return run(s, results)


# --- main ---------------------------------------------------------------------------------------

RUNNERS = {"inference": part_inference, "dense": part_dense, "training": part_training,
           "pipeline": part_pipeline, "serving": part_serving}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md sections")
    parser.add_argument("--json", default=None, help="also write the raw figures to this file")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    tf.get_logger().setLevel("ERROR")  # retracing notes of the per-model tf.functions
    flags = sys.argv[1:] if argv is None else argv
    s = Settings(repeats, args.quick, " ".join(["python benchmarks/bench_suite.py", *flags]))
    results: dict[str, Any] = {}
    raw = {}
    for name in args.parts:
        start, load = time.perf_counter(), os.getloadavg()[0]
        section = RUNNERS[name](s, results)
        loads = (load, os.getloadavg()[0])
        body = section.body(s, loads, time.perf_counter() - start)
        print(f"## {section.title}\n\n{body}", flush=True)
        raw[name] = section.data
        if args.write:
            write_section(section.title, body)
    if args.json:
        atomic.write_json(args.json, json.loads(json.dumps(raw, default=str)))
    return 0


if __name__ == "__main__":
    # Run as `benchmarks.bench_suite`, the module `suite_serving` imports (one copy of it).
    from benchmarks import bench_suite

    sys.exit(bench_suite.main())

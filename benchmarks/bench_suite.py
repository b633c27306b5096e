"""The efficiency benchmarks of the paper's claims (issue 12), in one command.

    python benchmarks/bench_suite.py                  # every part, markdown on stdout
    python benchmarks/bench_suite.py --write          # ... and BENCHMARKS.md sections
    python benchmarks/bench_suite.py --parts dense serving --repeats 5
    python benchmarks/bench_suite.py --quick          # smoke run (~2 min): small sizes

Parts (each its own BENCHMARKS.md section "Suite: ..."; times are min / median / max over
`--repeats` calls after a warm-up; FLOPs from `overfeat_tf.flops`, the model's own layer
shapes; random weights, whose values do not change the work):
1. inference: fast and accurate, 6 default scales x 2 flips, fine stride, 480x640 image,
   FLOP/s over the same-run matmul peak, float32 and mixed bfloat16.
2. dense: the same windows computed R-CNN-style (each window cropped from its level and run
   through `net.crop_model()` on its own) on a subsample, extrapolated to every window;
   speedup (target >= 50x) and agreement of the class logits.
3. training: `train_on_batch` of the compiled crop model (`recipe.compile_crop_model`, the
   package's training step), FLOP/s (3 x forward) over the peak; target >= 60 % fast fp32.
4. pipeline: `data.training_dataset` alone (decode, rescale, crop, flip, batch) in images/s
   against what the training step consumes (target >= 2x).
5. serving: the detector's decoder served from a SavedModel (plain TF) as % of the forward
   pass (<= 10 % fast / accurate, <= 100 % tiny), tiny's served latency (<= 2x forward), the
   merge's dependent loop iterations for 4000 boxes (<= 64), the first call in a fresh
   process (<= 5 s), and 4 concurrent clients against one.
Everything goes through the public API (`OverFeatDetector`, `serving.export_model`, the
detector's `prediction_decoder`), so it measures whatever decoder the detector uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
import tensorflow as tf

from benchmarks.bench_merge import make_box_set
from benchmarks.bench_serving import test_jpeg
from benchmarks.common import machine, matmul_peak, write_section
from overfeat_tf import atomic, data, flops, merge, precision, recipe, serving, tfds_io, training
from overfeat_tf.detection import DetectionOptions
from overfeat_tf.detector import OverFeatDetector
from overfeat_tf.models import OverFeat
from overfeat_tf.pyramid import default_scales

PARTS = ("inference", "dense", "training", "pipeline", "serving")
IMAGE_HW = (480, 640)
SERVE_CLASSES = 20


@dataclasses.dataclass
class Settings:
    repeats: int = 3
    quick: bool = False
    command: str = "python benchmarks/bench_suite.py"

    def scales(self, arch: str) -> tuple:
        """The net's default scales (quick: its two smallest)."""
        scales = default_scales(arch)
        return scales[:2] if self.quick else scales


@dataclasses.dataclass
class Section:
    title: str
    intro: str
    header: list[str]
    rows: list[list[Any]] = dataclasses.field(default_factory=list)
    targets: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def body(self, settings: Settings) -> str:
        table = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        table += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        parts = [
            f"Machine: {machine()}.\nCommand: `{settings.command}` (repeats {settings.repeats}"
            f"{', quick' if settings.quick else ''}).",
            self.intro.strip(),
            "\n".join(table),
        ]
        if self.targets:
            parts.append("Targets:\n" + "\n".join(f"- {t}" for t in self.targets))
        parts += [n.strip() for n in self.notes]
        return "\n\n".join(parts) + "\n"


# --- timing and verdicts ------------------------------------------------------------------------


def _force(out: Any) -> Any:
    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()
    return out


def timings(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of `repeats` calls of `fn` (results fetched), after `warmup` calls."""
    for _ in range(warmup):
        _force(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _force(fn())
        times.append(time.perf_counter() - start)
    return times


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """`timings` of several functions called in turn (a load change hits them alike)."""
    for fn in fns.values():
        _force(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            _force(fn())
            times[name].append(time.perf_counter() - start)
    return times


def mmm(times: list[float], scale: float = 1.0, digits: int = 3) -> str:
    """ "min / median / max" of `times` x `scale`."""
    values = (min(times), statistics.median(times), max(times))
    return " / ".join(f"{v * scale:.{digits}g}" for v in values)


def verdict(
    what: str, value: float, limit: float, higher: bool, fmt: Callable[[float], str]
) -> str:
    """A target line: met, or missed by how much."""
    met = value >= limit if higher else value <= limit
    sign = ">=" if higher else "<="
    gap = "met" if met else f"MISSED by {fmt(abs(value - limit))}"
    return f"{what}: {fmt(value)} (target {sign} {fmt(limit)}): {gap}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _times_x(x: float) -> str:
    return f"{x:.2f}x"


def _peaks() -> dict[str, float]:
    return {"float32": matmul_peak(tf.float32), "mixed_bfloat16": matmul_peak(tf.bfloat16)}


def _net(arch: str, dtype: str = "float32", **kwargs: Any) -> OverFeat:
    keras.utils.set_random_seed(0)
    policy = None if dtype == "float32" else dtype
    return OverFeat(arch, kernel_initializer="he_normal", dtype=policy, **kwargs)


def _forward(detector: OverFeatDetector) -> Callable[[tf.Tensor], Any]:
    """The network over the detector's pyramid (levels' raw outputs), compiled."""
    return tf.function(lambda im: [lvl.outputs for lvl in detector.levels(im)])


def _image() -> tf.Tensor:
    return tf.random.uniform([*IMAGE_HW, 3], 0, 255, seed=1)


# --- 1. multi-scale inference -------------------------------------------------------------------


def part_inference(s: Settings, results: dict) -> Section:
    models = ("tiny", "fast") if s.quick else ("fast", "accurate")
    before = _peaks()
    image = _image()
    section = Section(
        "Suite: multi-scale inference",
        f"""The network alone over one {IMAGE_HW[0]}x{IMAGE_HW[1]} image: the net's default
pyramid (accurate: paper Table 5's six sizes; fast: six short sides at the same ratios)
x 2 flips, fine stride (`OverFeatDetector.levels` in one `tf.function`), 1000 classes, random
weights. FLOPs: `flops.pyramid_flops` (convs + dense fc layers, 2 x multiply-adds). Peak: a
2048x4096 by 4096x4096 matmul in the same process, before and after the part (the higher
one is used). CPU: {precision.describe_cpu()}; bf16 matrix units (avx512_bf16 / amx_bf16):
{"yes" if precision.has_native_bf16() else "NO (bf16 is emulated; measured anyway)"}.""",
        [
            "model",
            "dtype",
            "levels",
            "TFLOP",
            "s (min / median / max)",
            "GFLOP/s (best)",
            "peak GFLOP/s",
            "% of peak (best / median)",
        ],
    )
    for arch in models:
        for dtype in ("float32", "mixed_bfloat16"):
            detector = OverFeatDetector(_net(arch, dtype), scales=s.scales(arch))
            fwd = _forward(detector)
            times = timings(lambda fwd=fwd: fwd(image), s.repeats)
            total = flops.pyramid_flops(detector, IMAGE_HW)
            section.data[f"{arch}/{dtype}"] = {"flops": total, "seconds": times}
            section.rows.append(
                [
                    arch,
                    dtype,
                    f"{len(detector.scales)} x 2",
                    f"{total / 1e12:.3f}",
                    mmm(times),
                    f"{total / min(times) / 1e9:.1f}",
                    "?",
                    "?",
                ]
            )
    after = _peaks()
    peaks = {k: max(before[k], after[k]) for k in before}
    for row in section.rows:
        times = section.data[f"{row[0]}/{row[1]}"]["seconds"]
        total = section.data[f"{row[0]}/{row[1]}"]["flops"]
        peak = peaks[row[1]]
        row[6] = f"{peak / 1e9:.0f}"
        row[7] = (
            f"{_pct(total / min(times) / peak)} / {_pct(total / statistics.median(times) / peak)}"
        )
    section.data["peaks"] = {"before": before, "after": after}
    section.notes.append(
        f"Matmul peaks (GFLOP/s) before / after: float32 {before['float32'] / 1e9:.0f} / "
        f"{after['float32'] / 1e9:.0f}, bfloat16 {before['mixed_bfloat16'] / 1e9:.0f} / "
        f"{after['mixed_bfloat16'] / 1e9:.0f}."
    )
    return section


# --- 2. dense vs per-window ---------------------------------------------------------------------


def _windows(levels: list, crop: int, rng: np.random.Generator, sample: int) -> tuple:
    """(total windows, crops [n, S, S, 3], their dense logits [n, C]) of a random subsample."""
    index = []
    for li, out in enumerate(levels):
        n, h, w = out.outputs["class_logits"].shape[:3]
        index += [(li, b, i, j) for b in range(n) for i in range(h) for j in range(w)]
    picked = [index[k] for k in rng.choice(len(index), size=min(sample, len(index)), replace=False)]
    crops, dense = [], []
    for li, b, i, j in picked:
        out = levels[li]
        y, x = i * out.stride, j * out.stride
        crops.append(out.level.image[b, y : y + crop, x : x + crop].numpy())
        dense.append(out.outputs["class_logits"][b, i, j].numpy())
    return len(index), np.stack(crops), np.stack(dense)


def _dense_case(arch: str, s: Settings, batch: int) -> dict[str, Any]:
    net = _net(arch)
    detector = OverFeatDetector(net, scales=s.scales(arch))
    image = _image()
    fwd = _forward(detector)
    dense_times = timings(lambda: fwd(image), s.repeats)
    levels = detector.levels(image)
    total, crops, dense = _windows(
        levels, net.config.crop_size, np.random.default_rng(0), 8 if s.quick else 48
    )
    crop_model = net.crop_model()
    run = tf.function(lambda x: crop_model(x, training=False))

    def one_by_one() -> list:
        return [run(crops[k : k + 1]) for k in range(len(crops))]

    def batched() -> list:
        return [run(crops[k : k + batch]) for k in range(0, len(crops), batch)]

    per_window = {
        "batch 1": [t / len(crops) for t in timings(one_by_one, s.repeats)],
        f"batch {batch}": [t / len(crops) for t in timings(batched, s.repeats)],
    }
    logits = np.concatenate([o.numpy() for o in batched()])
    control = net(crops[:batch], training=False)["class_logits"][:, 0, 0].numpy()
    crop_flops = flops.model_flops(net)
    return {
        "model": arch,
        "windows": total,
        "sampled": len(crops),
        "dense_s": dense_times,
        "per_window_s": per_window,
        "flop_ratio": total * crop_flops / flops.pyramid_flops(detector, IMAGE_HW),
        "max_abs_diff": float(np.max(np.abs(logits - dense))),
        "max_abs_logit": float(np.max(np.abs(dense))),
        "top1_agree": float(np.mean(logits.argmax(-1) == dense.argmax(-1))),
        "control_diff": float(np.max(np.abs(control - logits[: len(control)]))),
    }


def part_dense(s: Settings, results: dict) -> Section:
    batch = 4 if s.quick else 16
    section = Section(
        "Suite: dense vs per-window",
        f"""Paper §3.5: applying the net convolutionally shares the work of overlapping
windows. Dense: the network over the pyramid of one {IMAGE_HW[0]}x{IMAGE_HW[1]} image (as in
"multi-scale inference", float32, fine stride, 6 scales x 2 flips). Per-window (R-CNN style):
the same windows (every fine-map cell's crop-size window, cut from its level image) run
through `net.crop_model()` on their own, one per call ("batch 1") or {batch} independent
windows per call (R-CNN's batching, the stronger baseline); a random subsample timed and
extrapolated to every window. FLOP ratio = windows x crop FLOPs / dense FLOPs: the speedup
at equal efficiency. Agreement: class logits of each sampled window's crop against its dense
cell.""",
        [
            "model",
            "windows (sampled)",
            "dense s",
            "per-window ms, batch 1",
            f"batch {batch}",
            f"speedup (batch 1 / batch {batch})",
            "FLOP ratio",
            "max abs logit diff (max |logit|)",
            "top-1 agree",
        ],
    )
    for arch in ("tiny",) if s.quick else ("fast", "accurate"):
        r = _dense_case(arch, s, batch)
        section.data[arch] = r
        dense = statistics.median(r["dense_s"])
        b1, bn = (statistics.median(v) for v in r["per_window_s"].values())
        speed = [r["windows"] * v / dense for v in (b1, bn)]
        section.rows.append(
            [
                arch,
                f"{r['windows']} ({r['sampled']})",
                mmm(r["dense_s"]),
                *(mmm(v, 1e3) for v in r["per_window_s"].values()),
                f"{speed[0]:.1f}x / {speed[1]:.1f}x",
                f"{r['flop_ratio']:.1f}x",
                f"{r['max_abs_diff']:.3g} ({r['max_abs_logit']:.3g})",
                _pct(r["top1_agree"]),
            ]
        )
        section.targets.append(
            verdict(
                f"{arch} speedup over batched per-window (medians)", speed[1], 50.0, True, _times_x
            )
        )
        section.notes.append(
            f"{arch}: control, the dense net on the crops themselves (one output cell) vs the "
            f"crop model: max abs diff {r['control_diff']:.2g}; the window diffs come from "
            "the context a dense cell sees: the 3x3 layers' zero padding is at the crop's "
            "border for a crop, real neighbouring features in the dense pass."
        )
    return section


# --- 3. training step ---------------------------------------------------------------------------


def _train_case(arch: str, batch: int, s: Settings, peak: float) -> dict[str, Any]:
    config = training.TrainConfig(
        model=arch, batch_size=batch, mixed_precision="float32", init="he_normal", seed=0
    )
    classes = {"tiny": 10}.get(arch, 1000)
    net = recipe.build_model(config, [f"class_{i}" for i in range(classes)])
    crop = recipe.compile_crop_model(net, config, steps_per_epoch=100)
    size = net.config.crop_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    times = timings(lambda: crop.train_on_batch(x, y), s.repeats, warmup=2)
    step = flops.training_step_flops(net, batch)
    return {
        "model": arch,
        "batch": batch,
        "seconds": times,
        "flops": step,
        "images_per_s": batch / statistics.median(times),
        "fraction": step / min(times) / peak,
        "fraction_median": step / statistics.median(times) / peak,
    }


def part_training(s: Settings, results: dict) -> Section:
    peak = matmul_peak(tf.float32)
    fast_batch = 4 if s.quick else 32
    section = Section(
        "Suite: training step",
        """One SGD step of the package's training model (`recipe.compile_crop_model`: the
crop model, momentum SGD, weight decay, accuracy metrics) with `train_on_batch` on random
crops at the crop size, float32, he_normal init. FLOPs = 3 x forward (forward, input
gradients, weight gradients) x batch, from `flops.training_step_flops`; peak: the same-run
float32 matmul peak.""",
        [
            "model",
            "batch",
            "GFLOP / step",
            "s / step (min / median / max)",
            "images/s (median)",
            "% of peak (best / median)",
        ],
    )
    for arch, batch in (("fast", fast_batch), ("tiny", 32)):
        r = _train_case(arch, batch, s, peak)
        section.data[arch] = r
        section.rows.append(
            [
                arch,
                batch,
                f"{r['flops'] / 1e9:.1f}",
                mmm(r["seconds"]),
                f"{r['images_per_s']:.1f}",
                f"{_pct(r['fraction'])} / {_pct(r['fraction_median'])}",
            ]
        )
    section.targets.append(
        verdict(
            "fast float32, fraction of the matmul peak (best step)",
            section.data["fast"]["fraction"],
            0.60,
            True,
            _pct,
        )
    )
    section.notes.append(
        f"Peak: {peak / 1e9:.0f} GFLOP/s float32. Batch 32 for both nets "
        "(fast's 145M parameters and batch 32 fit in memory here)."
        if not s.quick
        else f"Peak: {peak / 1e9:.0f} GFLOP/s (quick: fast at batch {fast_batch})."
    )
    results["training"] = section.data
    return section


# --- 4. input pipeline --------------------------------------------------------------------------


def _synthetic_jpegs(count: int = 64, size: tuple[int, int] = (375, 500)) -> tf.data.Dataset:
    """ImageNet-sized JPEGs (the mean ILSVRC image is about 400x350) as example dicts."""
    images = [test_jpeg(size, seed=i) for i in range(count)]
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.arange(count, dtype=np.int64) % 10}
    )


def _pipeline_rate(dataset: tf.data.Dataset, batches: int, repeats: int) -> list[float]:
    """Images/s of `batches` batches of an iterator (after 3 warm-up batches), repeated."""
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    rates = []
    for _ in range(repeats):
        start, images = time.perf_counter(), 0
        for _ in range(batches):
            images += int(next(iterator)[0].shape[0])
        rates.append(images / (time.perf_counter() - start))
    return rates


def part_pipeline(s: Settings, results: dict) -> Section:
    batch, batches = 32, (4 if s.quick else 30)
    start = time.perf_counter()
    tfds_io.load_builder("overfeat_shapes/small", splits=("train",))
    prepare = time.perf_counter() - start
    sources = {
        "overfeat_shapes/small train (48 images, 160-512 px)": "overfeat_shapes/small",
        "synthetic 375x500 JPEGs (64)": _synthetic_jpegs(),
    }
    section = Section(
        "Suite: input pipeline",
        f"""`data.training_dataset` alone (records -> decode -> rescale the short side to 256 ->
random 231 crop -> random flip -> batch {batch} -> prefetch; parallel maps, AUTOTUNE; no
cache), {batches} batches per repeat after 3 warm-up batches, against the images/s the
training step of "training step" consumes (its median step). Dataset preparation (TFDS,
first use only): {prepare:.1f} s.""",
        ["source", "images/s (min / median / max)", "vs fast step", "vs tiny step"],
    )
    if "training" not in results:
        part_training(dataclasses.replace(s, repeats=min(s.repeats, 2)), results)
    need = {arch: results["training"][arch]["images_per_s"] for arch in ("fast", "tiny")}
    for label, source in sources.items():
        ds = data.training_dataset(source, "train", 231, batch, seed=0)
        rates = _pipeline_rate(ds, batches, s.repeats)
        med = statistics.median(rates)
        section.data[label] = rates
        section.rows.append(
            [label, mmm(rates, digits=4), *(_times_x(med / need[a]) for a in ("fast", "tiny"))]
        )
        for arch in ("fast", "tiny"):
            section.targets.append(
                verdict(
                    f"{label} vs the {arch} step ({need[arch]:.1f} images/s)",
                    med / need[arch],
                    2.0,
                    True,
                    _times_x,
                )
            )
    return section


# --- 5. merge and serving -----------------------------------------------------------------------


class _Decoder(tf.Module):
    """The detector's prediction decoder alone, for a SavedModel (plain TF when saved)."""

    def __init__(self, decoder: keras.layers.Layer) -> None:
        super().__init__()
        self.decoder = decoder
        self.decode = tf.function(
            lambda b, s, c: decoder(b, s, c),
            input_signature=[
                tf.TensorSpec([None, 4], tf.float32),
                tf.TensorSpec([None]),
                tf.TensorSpec([None], tf.int32),
            ],
        )


def _clustered_boxes(budget: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`budget` most confident boxes of `bench_merge.make_box_set` (accurate net, 6 scales x
    2 flips, top-5 classes: clusters on 3 objects + scattered windows), normalized yxyx."""
    box_set = make_box_set(seed=0, top_k=5)
    keep = np.argsort(-box_set["scores"], kind="stable")[:budget]
    scale = np.array([*IMAGE_HW, *IMAGE_HW], np.float32)
    return (
        tf.constant(box_set["boxes"][keep] / scale),
        tf.constant(box_set["scores"][keep]),
        tf.constant(box_set["classes"][keep]),
    )


def _serve_case(arch: str, s: Settings, tmp: Path, clustered: tuple) -> dict[str, Any]:
    net = _net(arch, num_classes=SERVE_CLASSES, regressor="class_specific", background=True)
    detector = OverFeatDetector(net, scales=s.scales(arch))
    jpeg = test_jpeg()
    image = tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)
    export = serving.export_model(detector, tmp / arch)
    served = tf.saved_model.load(str(export)).signatures["serving_default"]
    with merge.jit_compile_default(False):
        tf.saved_model.save(_Decoder(detector.prediction_decoder), str(tmp / f"{arch}_decoder"))
    decoder = tf.saved_model.load(str(tmp / f"{arch}_decoder"))
    forward = tf.function(lambda im: detector.dense_boxes(detector.levels(im)))
    own = forward(image)[:3]
    times = interleaved(
        {
            "served": lambda: served(images=tf.constant([jpeg])),
            "forward": lambda: forward(image),
            "merge own boxes": lambda: decoder.decode(*own),
            "merge clustered": lambda: decoder.decode(*clustered),
        },
        s.repeats,
    )
    return {
        "model": arch,
        "export": export,
        "detector": detector,
        "own_boxes": int(own[1].shape[0]),
        "seconds": times,
    }


def _loop_iterations(detector: OverFeatDetector, boxes: tuple) -> tuple[str, int | None, int]:
    """(what was counted, the decoder's dependent loop iterations or None, the sequential
    greedy merge's merges) for one box set."""
    decoder = detector.prediction_decoder
    out = decoder(*boxes)
    keys = [k for k in out if "round" in k or "iteration" in k]
    counted, value = f"{type(decoder).__name__}: exposes no loop count", None
    if keys:
        counted, value = f"{type(decoder).__name__} output `{keys[0]}`", int(out[keys[0]])
    elif hasattr(merge, "mutual_merge"):
        threshold = getattr(decoder, "merge_threshold", merge.MERGE_THRESHOLD)
        _, rounds = merge.mutual_merge(*boxes, threshold, return_rounds=True)
        counted = (
            f"{type(decoder).__name__} exposes none; `merge.mutual_merge` rounds with "
            "merges (+1 final round without)"
        )
        value = int(rounds) + 1
    n = int(boxes[1].shape[0])
    greedy = merge.greedy_merge(
        *boxes, getattr(decoder, "merge_threshold", merge.MERGE_THRESHOLD), max_output=n
    )
    return counted, value, n - int(greedy.num_merged)


_FRESH = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np, tensorflow as tf, overfeat_tf
t = {"import_s": time.perf_counter() - start}
mode, path, *images = sys.argv[1:]
def timed(key, fn):
    s = time.perf_counter(); out = fn(); t[key] = time.perf_counter() - s; return out
if mode == "detect":
    model = timed("load_s", lambda: overfeat_tf.load_model(path))
    timed("first_call_s", lambda: overfeat_tf.detect(model, images[0]))
    timed("second_size_s", lambda: overfeat_tf.detect(model, images[1]))
else:
    fn = timed("load_s", lambda: tf.saved_model.load(path).signatures["serving_default"])
    for key, image in zip(("first_call_s", "second_size_s"), images):
        data = open(image, "rb").read()
        timed(key, lambda: fn(images=tf.constant([data]))["num_detections"].numpy())
print(json.dumps(t))
"""


def _fresh_process(mode: str, path: Path, images: list[Path]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _FRESH, mode, str(path), *map(str, images)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"fresh-process {mode} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _requests(count: int) -> list[list[bytes]]:
    """Mixed-size JPEG batches of 1-3 images; every 4th request holds one bad image."""
    sizes = [(240, 320), (320, 400), (300, 300), (400, 300), (256, 512)]
    bad = [b"", b"not an image", test_jpeg((200, 200))[:300]]
    out = []
    for r in range(count):
        batch = [test_jpeg(sizes[(r + i) % len(sizes)], seed=r * 3 + i) for i in range(1 + r % 3)]
        if r % 4 == 2:
            batch[-1] = bad[(r // 4) % len(bad)]
        out.append(batch)
    return out


def _answer(fn: Any, batch: list[bytes]) -> Any:
    try:
        return {k: v.numpy() for k, v in fn(images=tf.constant(batch)).items()}
    except tf.errors.InvalidArgumentError as error:
        return "error: " + error.message.strip().splitlines()[0]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return all(np.array_equal(a[k], b[k]) for k in a)


def _concurrency(fn: Any, requests: list[list[bytes]], clients: int = 4) -> dict[str, Any]:
    """Throughput (images/s) of one client and of `clients` threads over the same requests,
    answers compared, the model checked to answer after."""
    images = sum(len(r) for r in requests)
    [_answer(fn, r) for r in requests]  # warm-up
    start = time.perf_counter()
    sequential = [_answer(fn, r) for r in requests]
    one = images / (time.perf_counter() - start)
    work: queue.Queue = queue.Queue()
    for i in range(len(requests)):
        work.put(i)
    answers: dict[int, Any] = {}
    crashes: list[str] = []

    def client() -> None:
        while True:
            try:
                i = work.get_nowait()
            except queue.Empty:
                return
            try:
                answers[i] = _answer(fn, requests[i])
            except Exception as error:  # anything but a clean InvalidArgumentError
                crashes.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    many = images / (time.perf_counter() - start)
    equal = sum(_same(sequential[i], answers.get(i)) for i in range(len(requests)))
    alive = not isinstance(_answer(fn, requests[0]), str)
    return {
        "images": images,
        "requests": len(requests),
        "one_client": one,
        "clients": many,
        "equal": equal,
        "errors": sum(isinstance(a, str) for a in sequential),
        "crashes": crashes,
        "alive_after": alive,
    }


def part_serving(s: Settings, results: dict) -> Section:
    models = ("tiny",) if s.quick else ("tiny", "fast", "accurate")
    clustered = _clustered_boxes(DetectionOptions().max_boxes)
    section = Section(
        "Suite: merge and serving",
        f"""Per model (random he_normal weights, {SERVE_CLASSES} classes + background,
class-specific regressor, default scales x 2 flips, fine stride, the detector's default
decoder and box budget): "served" is the exported `serving_default` (`serving.export_model`,
loaded with `tf.saved_model.load`) on one 320x400 JPEG; "forward" the in-package pyramid +
network + box decoding (`dense_boxes(levels(image))`, a `tf.function`); "merge" the
detector's `prediction_decoder` alone, saved as a SavedModel (plain TF, as served) and loaded,
on the forward pass's own boxes (random weights: unclustered) and on a clustered box set of
the same budget (`bench_merge.make_box_set`, top-5 classes of the accurate net's 6 scales x 2
flips: 3 objects + scattered windows, the {int(clustered[1].shape[0])} most confident).
Times interleaved, seconds min / median / max.""",
        [
            "model",
            "boxes (own)",
            "served s",
            "forward s",
            "merge s, own boxes",
            "merge s, clustered",
            "merge / forward (own / clustered)",
            "served / forward",
        ],
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for arch in models:
            r = _serve_case(arch, s, tmp, clustered)
            t = {k: statistics.median(v) for k, v in r["seconds"].items()}
            own, clus = t["merge own boxes"] / t["forward"], t["merge clustered"] / t["forward"]
            section.data[arch] = {"boxes": r["own_boxes"], "seconds": r["seconds"]}
            section.rows.append(
                [
                    arch,
                    r["own_boxes"],
                    *(
                        mmm(r["seconds"][k])
                        for k in ("served", "forward", "merge own boxes", "merge clustered")
                    ),
                    f"{_pct(own)} / {_pct(clus)}",
                    _times_x(t["served"] / t["forward"]),
                ]
            )
            limit = 1.0 if arch == "tiny" else 0.10
            for label, value in (("own boxes", own), ("clustered", clus)):
                section.targets.append(
                    verdict(f"{arch} served merge / forward, {label}", value, limit, False, _pct)
                )
            if arch == "tiny":
                section.targets.append(
                    verdict(
                        "tiny served latency / forward",
                        t["served"] / t["forward"],
                        2.0,
                        False,
                        _times_x,
                    )
                )
                _serving_extras(s, section, r, tmp, clustered)
    return section


def _serving_extras(s: Settings, section: Section, tiny: dict, tmp: Path, boxes: tuple) -> None:
    """Loop iterations, fresh-process first calls and concurrency (tiny's export)."""
    counted, value, greedy = _loop_iterations(tiny["detector"], boxes)
    n = int(boxes[1].shape[0])
    section.notes.append(
        f"Dependent loop iterations for the {n} clustered boxes: {counted}: "
        f"{value}; the sequential greedy merge makes {greedy} merges there "
        "(one dependent step each, at least)."
    )
    if value is not None:
        section.targets.append(
            verdict(f"dependent loop iterations, {n} boxes", value, 64, False, lambda v: f"{v:.0f}")
        )
    images = [tmp / "a.jpg", tmp / "b.jpg"]
    for path, size in zip(images, ((320, 400), (300, 500)), strict=True):
        path.write_bytes(test_jpeg(size))
    keras_path = tmp / "tiny_detector.keras"
    tiny["detector"].save(keras_path)
    fresh = {
        "notebook detect (.keras)": _fresh_process("detect", keras_path, images),
        "export's first request": _fresh_process("serve", tiny["export"], images),
    }
    for label, t in fresh.items():
        section.notes.append(
            f"Fresh process, tiny, {label}: import {t['import_s']:.1f} s, load "
            f"{t['load_s']:.1f} s, first call (320x400) {t['first_call_s']:.2f} s, then a "
            f"300x500 image {t['second_size_s']:.2f} s."
        )
        section.targets.append(
            verdict(
                f"first call in a fresh process, {label}",
                t["first_call_s"],
                5.0,
                False,
                lambda v: f"{v:.2f} s",
            )
        )
    served = tf.saved_model.load(str(tiny["export"])).signatures["serving_default"]
    c = _concurrency(served, _requests(4 if s.quick else 12))
    section.data["concurrency"] = c
    section.notes.append(
        f"4 concurrent clients (threads, one loaded SavedModel) over {c['requests']} requests "
        f"of 1-3 mixed-size JPEGs ({c['images']} images, {c['errors']} requests with a bad "
        f"image, answered with InvalidArgumentError): {c['clients']:.2f} images/s vs one "
        f"client {c['one_client']:.2f}; answers equal to the sequential ones (bitwise, errors "
        f"by message): {c['equal']}/{c['requests']}; crashes: {len(c['crashes'])}; model "
        f"answers after: {c['alive_after']}."
    )
    section.targets.append(
        verdict(
            "4 clients' throughput / one client's",
            c["clients"] / c["one_client"],
            1.0,
            True,
            _times_x,
        )
    )
    ok = c["equal"] == c["requests"] and not c["crashes"] and c["alive_after"]
    section.targets.append(f"concurrent answers equal, no crash: {'met' if ok else 'MISSED'}")


# --- main ---------------------------------------------------------------------------------------

RUNNERS = {
    "inference": part_inference,
    "dense": part_dense,
    "training": part_training,
    "pipeline": part_pipeline,
    "serving": part_serving,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md sections")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    command = " ".join(
        ["python benchmarks/bench_suite.py", *(argv if argv is not None else sys.argv[1:])]
    )
    settings = Settings(repeats=repeats, quick=args.quick, command=command)
    results: dict[str, Any] = {}
    raw = {}
    for name in args.parts:
        start = time.perf_counter()
        section = RUNNERS[name](settings, results)
        body = section.body(settings) + f"\nPart wall time: {time.perf_counter() - start:.0f} s.\n"
        print(f"## {section.title}\n\n{body}", flush=True)
        raw[name] = section.data
        if args.write:
            write_section(section.title, body)
    if args.json:
        atomic.write_json(args.json, json.loads(json.dumps(raw, default=str)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

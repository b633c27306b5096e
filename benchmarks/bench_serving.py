"""Benchmark: the exported `serving_default` signature vs the in-package pipeline (SPEC §5).

For one encoded JPEG of a typical size (320x400), in the same process and run:
- serving: `tf.saved_model.load(export)`'s `serving_default` on the JPEG bytes, end to end
  (header checks, decode, `tf.map_fn` over the batch, pyramid, forward, boxes, merge, top-5,
  class names, padding);
- forward: in-package `tf.function` of `OverFeatDetector.levels` + `dense_boxes` on the
  decoded image (pyramid, model at every scale and flip, box decoding, score filter);
- merge: in-package `tf.function` of the detector's `decode` (its `BoxMergeDecoder`) on
  those boxes;
- detect: in-package `tf.function` of `OverFeatDetector.detect_image` (forward + merge in one
  graph: what `predict` runs per image).
Overhead = serving / (forward + merge) - 1. Each is timed after a warm-up, `--repeats`
times interleaved (the machine is shared), median reported.

`--batched`: requests of 1, 4 and 8 same-size JPEGs (320x400, different images) to
`serving_default`, which runs images of one size through the network together
(`ExportOptions.max_batch`), against the same images sent one request each, one after
another; and one mixed-size request (8 images, 4 sizes) against its images one by one.
Wall and CPU time (all threads of the process), interleaved, medians and the median of the
paired ratios batched / one-by-one.

    python benchmarks/bench_serving.py                       # tiny and fast, JSON on stdout
    python benchmarks/bench_serving.py --models tiny --write # update BENCHMARKS.md
    python benchmarks/bench_serving.py --batched --repeats 3 --write  # "Batched requests"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import tensorflow as tf

from benchmarks.common import machine, write_section
from overfeat_tf.data import image_io
from overfeat_tf.export import serving
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.ops.pyramid import parse_scales

IMAGE_SIZE = (320, 400)
NUM_CLASSES = 20


def test_jpeg(size: tuple[int, int] = IMAGE_SIZE, seed: int = 0) -> bytes:
    """A JPEG with photo-like structure (smooth gradients and blocks, not noise)."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    blocks = rng.integers(0, 256, (h // 40 + 1, w // 40 + 1, 3))
    blocks = np.kron(blocks, np.ones((40, 40, 1)))[:h, :w]
    image = 0.5 * blocks + 60 * np.stack([y, x, 1 - x], -1) + rng.normal(0, 8, (h, w, 3))
    return tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy()


def _median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 2)


def _force(out: Any) -> None:
    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()


def _interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds (all threads of this process) of each call, the functions timed in
    turn `repeats` times after one warm-up each, so that the i-th times of all functions are
    neighbours in time (the machine is shared and drifts)."""
    for fn in fns.values():
        _force(fn())
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            _force(fn())
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def random_detector(architecture: str, scales: tuple | None) -> OverFeatDetector:
    """The served net of these benchmarks: random he_normal weights, 20 classes +
    background, a class-specific regressor, the detector's default options but `scales`."""
    model = OverFeat(
        architecture,
        num_classes=NUM_CLASSES,
        regressor="class_specific",
        background=True,
        kernel_initializer="he_normal",
    )
    return OverFeatDetector(model, scales=scales)


def bench_model(architecture: str, scales: tuple | None, repeats: int) -> dict[str, Any]:
    """Times of one architecture (random he_normal weights, 20 classes + background)."""
    detector = random_detector(architecture, scales)
    options = serving.ExportOptions()
    jpeg = test_jpeg()
    image = tf.cast(image_io.decode_image(jpeg), tf.float32)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = serving.export_model(detector, tmp, options=options)
        export_s = time.perf_counter() - start
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        batch = tf.constant([jpeg])

        forward = tf.function(
            lambda im: detector.dense_boxes(detector.levels(im)), reduce_retracing=True
        )
        boxes, scores, classes, class_scores = forward(image)
        num_boxes = int(tf.shape(scores)[0])
        # the served path: the plain-TF merge (what the export traced), in the same graph shape
        size = tf.shape(image)[:2]
        merge = tf.function(lambda b, s, c, cs: detector.decode(b, s, c, cs, size))
        whole = detector.detect_fn
        merge(boxes, scores, classes, class_scores)
        whole(image)
        decode = tf.function(lambda c: image_io.decode_image(c, options.max_pixels))
        times, cpu_times = _interleaved(
            {
                "serving": lambda: signature(images=batch),
                "forward": lambda: forward(image),
                "merge": lambda: merge(boxes, scores, classes, class_scores),
                "detect_tensor": lambda: whole(image),
                "decode": lambda: decode(tf.constant(jpeg)),
            },
            repeats,
        )
        served = signature(images=batch)
        direct = whole(image)
        same = bool(
            np.allclose(served["detection_scores"][0], direct["detection_scores"], rtol=1e-4)
        )

    ms = {name: _median_ms(t) for name, t in times.items()}
    cpu_ms = {name: _median_ms(t) for name, t in cpu_times.items()}
    best = {name: round(1000 * min(t), 2) for name, t in times.items()}
    # overhead of each repeat against its neighbours in time, then the median
    serve, fwd, mrg, whole_t = (times[k] for k in ("serving", "forward", "merge", "detect_tensor"))
    paired = [s / (f + m) - 1 for s, f, m in zip(serve, fwd, mrg, strict=True)]
    paired_whole = [s / d - 1 for s, d in zip(serve, whole_t, strict=True)]
    in_package = ms["forward"] + ms["merge"]
    return {
        "model": architecture,
        "image": f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG",
        "scales": list(detector.resolved_scales),
        "flips": detector.flips,
        "stride": detector.stride,
        "boxes_into_merge": num_boxes,
        "export_s": round(export_s, 1),
        "ms": ms,
        "forward_plus_merge_ms": round(in_package, 2),
        "min_ms": best,
        "cpu_ms": cpu_ms,
        "cpu_overhead_vs_forward_plus_merge": round(
            cpu_ms["serving"] / (cpu_ms["forward"] + cpu_ms["merge"]) - 1, 4
        ),
        "cpu_overhead_vs_detect_tensor": round(cpu_ms["serving"] / cpu_ms["detect_tensor"] - 1, 4),
        "overhead_vs_forward_plus_merge": round(statistics.median(paired), 4),
        "overhead_of_medians": round(ms["serving"] / in_package - 1, 4),
        "overhead_of_minima": round(best["serving"] / (best["forward"] + best["merge"]) - 1, 4),
        "overhead_vs_detect_tensor": round(statistics.median(paired_whole), 4),
        "same_detections": same,
        "repeats": repeats,
    }


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| model | scales x flips | boxes merged | | serving | forward | merge | "
        "forward + merge | detect_tensor | decode | serving overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for kind, ms, overhead in (
            ("CPU ms", r["cpu_ms"], r["cpu_overhead_vs_forward_plus_merge"]),
            ("wall ms", r["ms"], r["overhead_vs_forward_plus_merge"]),
        ):
            rows.append(
                f"| {r['model']} | {len(r['scales'])} x {2 if r['flips'] else 1} | "
                f"{r['boxes_into_merge']} | {kind} | {ms['serving']} | {ms['forward']} | "
                f"{ms['merge']} | {round(ms['forward'] + ms['merge'], 2)} | "
                f"{ms['detect_tensor']} | {ms['decode']} | {_pct(overhead)} |"
            )
    return "\n".join(rows)


def _body(results: list[dict[str, Any]], command: str) -> str:
    worst = max(r["cpu_overhead_vs_forward_plus_merge"] for r in results)
    worst_wall = max(r["overhead_vs_forward_plus_merge"] for r in results)
    verdict = "within" if worst <= 0.10 else "OVER"
    repeats = ", ".join(f"{r['model']} {r['repeats']}" for r in results)
    same = all(r["same_detections"] for r in results)
    finding = (
        "within the noise of this machine, no measurable overhead"
        if abs(worst) <= 0.05
        else f"a CPU-time overhead of up to {_pct(worst)}"
    )
    return f"""Machine: {machine()}.
Command: `{command}`.

End-to-end latency of the exported `serving_default` signature (loaded with
`tf.saved_model.load`) on one {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG, against the sum of the
in-package forward pass (`detection.dense_boxes`: pyramid, network at every scale and flip,
box decoding) and merge (score filter + `merge.merge_boxes`) on the same decoded image, each a
`tf.function`, in the same run: one warm-up each, then the five calls in turn, repeated
({repeats} times), medians. Random `he_normal` weights, {NUM_CLASSES} classes + background,
class-specific regressor, the net's default scales, flips, fine stride, top-k 5 (so the merge
gets its full `max_boxes` = 4000 boxes). "decode" is the signature's header checks + JPEG decode
alone; "detect_tensor" is forward + merge in one in-package `tf.function`.

Serving overhead = serving / (forward + merge) - 1, in CPU time of the process (all threads)
and in wall time (the median over repeats of each repeat against its neighbours in time):
worst CPU-time overhead {_pct(worst)} ({verdict} the 10% budget), worst wall-time overhead
{_pct(worst_wall)}.

{_table(results)}

Reading it: the machine is shared (other test runs kept its load average at 3-6 on 2 cores),
so wall times of the same call vary by 2x between repeats and runs; CPU time is stable to a
few percent and is the number to trust here. (The wall rows' medians are not paired, so their
ratio can differ much from the paired overhead in the last column.) The serving graph does the
same work as the in-package pipeline plus the checked decode (column "decode", about 0.1% of
the image's time), the `tf.map_fn` loop over the batch and the top-5 / class-name gathers:
{finding}.
Where the time goes is the pipeline itself: for tiny the greedy merge of 4000 boxes (a
`tf.while_loop` of small steps), for fast the forward pass over 6 scales x 2 flips. The
signature's detections equal `detect_tensor`'s in the run: {same}.
"""


# --- batched requests -----------------------------------------------------------------------

BATCH_SIZES = (1, 4, 8)
# the mixed request: 8 images of 4 sizes (a portrait one among them), in a shuffled order
MIXED_SIZES = ((320, 400), (400, 320), (300, 500), (320, 400), (240, 320), (300, 500))
MIXED_SIZES += ((400, 320), (320, 400))


def bench_batched(architecture: str, scales: tuple | None, repeats: int) -> dict[str, Any]:
    """Batched vs one-by-one requests of one architecture (random he_normal weights)."""
    detector = random_detector(architecture, scales)
    options = serving.ExportOptions()
    same_size = [test_jpeg(IMAGE_SIZE, seed) for seed in range(max(BATCH_SIZES))]
    mixed = [test_jpeg(size, 100 + i) for i, size in enumerate(MIXED_SIZES)]
    with tempfile.TemporaryDirectory() as tmp:
        path = serving.export_model(detector, tmp, options=options)
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]

        def together(images: list[bytes]) -> Callable[[], Any]:
            return lambda: signature(images=tf.constant(images))

        def one_by_one(images: list[bytes]) -> Callable[[], Any]:
            return lambda: [signature(images=tf.constant([image])) for image in images]

        requests = {f"{n} images": same_size[:n] for n in BATCH_SIZES}
        requests["mixed"] = mixed
        fns: dict[str, Callable[[], Any]] = {}
        for name, images in requests.items():
            fns[f"{name} batched"] = together(images)
            fns[f"{name} one-by-one"] = one_by_one(images)
        wall, cpu = _interleaved(fns, repeats)
        # the same detections either way (counts and classes; boxes to float32 rounding)
        same = True
        for images in requests.values():
            batch = signature(images=tf.constant(images))
            for b, image in enumerate(images):
                alone = signature(images=tf.constant([image]))
                n = int(alone["num_detections"][0])
                same &= int(batch["num_detections"][b]) == n
                same &= bool(
                    np.array_equal(
                        batch["detection_classes"][b, :n], alone["detection_classes"][0, :n]
                    )
                )
                same &= bool(
                    np.allclose(
                        batch["detection_boxes"][b, :n], alone["detection_boxes"][0, :n], atol=1e-5
                    )
                )
    rows = []
    for name, images in requests.items():
        bw, ow = wall[f"{name} batched"], wall[f"{name} one-by-one"]
        bc, oc = cpu[f"{name} batched"], cpu[f"{name} one-by-one"]
        sizes = sorted({tuple(tf.image.decode_jpeg(i).shape[:2]) for i in images})
        rows.append(
            {
                "request": name,
                "images": len(images),
                "sizes": [f"{h}x{w}" for h, w in sizes],
                "batched_ms": _median_ms(bw),
                "one_by_one_ms": _median_ms(ow),
                "wall_ratio": round(
                    statistics.median(b / o for b, o in zip(bw, ow, strict=True)), 3
                ),
                "batched_cpu_ms": _median_ms(bc),
                "one_by_one_cpu_ms": _median_ms(oc),
                "cpu_ratio": round(
                    statistics.median(b / o for b, o in zip(bc, oc, strict=True)), 3
                ),
            }
        )
    return {
        "model": architecture,
        "scales": list(detector.resolved_scales),
        "flips": detector.flips,
        "max_batch": options.max_batch,
        "repeats": repeats,
        "same_detections": same,
        "requests": rows,
    }


def _batched_table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| model | request | batched wall ms | one-by-one wall ms | wall ratio | "
        "batched CPU ms | one-by-one CPU ms | CPU ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for q in r["requests"]:
            what = (
                f"{q['images']} x {q['sizes'][0]}"
                if len(q["sizes"]) == 1
                else f"{q['images']} mixed ({', '.join(q['sizes'])})"
            )
            rows.append(
                f"| {r['model']} | {what} | {q['batched_ms']:.0f} | {q['one_by_one_ms']:.0f} | "
                f"{q['wall_ratio']:.2f} | {q['batched_cpu_ms']:.0f} | "
                f"{q['one_by_one_cpu_ms']:.0f} | {q['cpu_ratio']:.2f} |"
            )
    return "\n".join(rows)


def _batched_body(results: list[dict[str, Any]], command: str) -> str:
    same = all(r["same_detections"] for r in results)
    repeats = ", ".join(f"{r['model']} {r['repeats']}" for r in results)
    return f"""Machine: {machine()}.
Command: `{command}`.

Requests to the exported `serving_default` (reloaded with `tf.saved_model.load`, export
defaults: `max_batch` {results[0]["max_batch"]}): n different {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}
JPEGs in one request, which runs them through the pyramid and the network as one batch per
level, against the same n images sent one request each, one after another; and one request of
8 images of 4 sizes (grouped by size inside the graph) against its images one by one. Random
`he_normal` weights, {NUM_CLASSES} classes + background, class-specific regressor, the net's
default scales (6) x 2 flips, fine stride, top-k 5. One warm-up each, then every request in
turn ({repeats} repeats), medians; the ratios are the medians of each repeat's batched /
one-by-one pair (neighbours in time). Detections equal between the two ways (counts, classes,
boxes to 1e-5): {same}.

{_batched_table(results)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "fast"])
    parser.add_argument("--scales", nargs="+", default=None, help="e.g. 231 263 (default: net's)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batched", action="store_true", help="batched vs one-by-one requests")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    scales = None if args.scales is None else parse_scales(args.scales)
    command = "python benchmarks/bench_serving.py " + " ".join(argv or sys.argv[1:])
    if args.batched:
        results = [bench_batched(name, scales, args.repeats) for name in args.models]
        print(json.dumps(results, indent=2))
        if args.write:
            write_section("Batched requests", _batched_body(results, command.strip()))
        return 0
    results = [bench_model(name, scales, args.repeats) for name in args.models]
    print(json.dumps(results, indent=2))
    if args.write:
        write_section("Serving overhead", _body(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the box merge (`merge.merge_boxes`) on a realistic box set of the accurate net.

One image of the accurate model at the 6 scales of the paper's Table 5 x 2 flips, fine stride:
every output cell predicts one box per class in the top-k of its scale, so
n = top_k * 2 * sum over scales of out_h * out_w boxes (3150 for top-k = 1). Boxes are
clustered around a few objects (the windows that see >= 50% of an object predict its box with
regressor noise, confidence high) and scattered elsewhere (the other windows predict a random
box inside their field of view with a low confidence).

    python benchmarks/bench_merge.py                # timing, JSON on stdout
    python benchmarks/bench_merge.py --top-k 5      # 5 classes per scale (5x the boxes)
    python benchmarks/bench_merge.py --jit on       # XLA-compiled blocks (notebooks)
    python benchmarks/bench_merge.py --clustered    # 4000 clustered boxes (the detector's
                                                    # max_boxes): plain TF vs XLA, iterations
    python benchmarks/bench_merge.py --sweep        # how MERGE_THRESHOLD was chosen
    python benchmarks/bench_merge.py --forward --write   # merge (plain TF and XLA) vs the
                                                    # accurate net's 6-scale 2-flip forward
                                                    # pass, same run, interleaved
    python benchmarks/bench_merge.py --compare OLD.py --write   # A/B: another version of
                                                    # ops/merge.py (a copy kept out of the
                                                    # tree) vs this one on the same box sets,
                                                    # bitwise outputs, interleaved

`time_merge(...)` can be imported to put the merge time next to the forward-pass time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tensorflow as tf

from overfeat_tf.architecture.config import ACCURATE, ACCURATE_SCALES, ModelConfig
from overfeat_tf.data import image_io
from overfeat_tf.ops import boxes as box_ops
from overfeat_tf.ops.merge import DEFAULT_MAX_OUTPUT, MERGE_THRESHOLD, merge_boxes


def make_box_set(
    seed: int = 0,
    config: ModelConfig = ACCURATE,
    scales: tuple[tuple[int, int], ...] = ACCURATE_SCALES,
    image_size: tuple[int, int] = (480, 640),
    num_objects: int = 3,
    top_k: int = 1,
    noise: float = 0.08,
    adjacent: bool = False,
) -> dict[str, np.ndarray]:
    """A synthetic multi-scale, 2-flip, fine-stride box set for one image.

    Returns a dict with `boxes` [n, 4] yxyx pixels of the original image, `scores` [n],
    `classes` [n] int32 and the ground truth `gt_boxes` [num_objects, 4], `gt_classes`.
    Class 0 is the objects' class; with top_k > 1 the extra classes 1..top_k-1 get the same
    windows' boxes (their regressors also look at the object) with lower confidences.
    `noise` is the regressor's error (std, fraction of the object side); `adjacent` places
    the objects in a row, each overlapping the previous one (IoU ~0.1-0.3), the hard case
    for merging.
    """
    rng = np.random.default_rng(seed)
    h0, w0 = image_size
    side = rng.uniform(0.15, 0.6, size=num_objects) * min(h0, w0)  # object sides
    aspect = rng.uniform(0.7, 1.4, size=num_objects)
    hs, ws = side * np.sqrt(aspect), side / np.sqrt(aspect)
    cy = rng.uniform(hs / 2, h0 - hs / 2)
    cx = rng.uniform(ws / 2, w0 - ws / 2)
    if adjacent:
        hs = ws = np.full(num_objects, rng.uniform(0.25, 0.4) * min(h0, w0))
        cy = np.full(num_objects, h0 / 2) + rng.normal(0, 0.05, num_objects) * hs
        cx = (
            w0 / 2
            + (np.arange(num_objects) - (num_objects - 1) / 2)
            * rng.uniform(0.5, 0.8, num_objects)
            * ws
        )
    gt = np.stack([cy - hs / 2, cx - ws / 2, cy + hs / 2, cx + ws / 2], axis=1)  # [O, 4]

    all_boxes, all_scores, all_classes = [], [], []
    for level in scales:
        out_h = config.output_size(level[0], "fine")
        out_w = config.output_size(level[1], "fine")
        win = box_ops.window_boxes(out_h, out_w, config.fine_stride, config.crop_size)
        win = tf.reshape(win, [-1, 4])
        for flipped in (False, True):
            # Windows in original-image pixels.
            w = box_ops.level_to_original(win, image_size, level, flipped).numpy()  # [c, 4]
            cover = box_ops.coverage(gt[None, :, :], w[:, None, :]).numpy()  # [c, O]
            best = cover.argmax(axis=1)
            sees = cover[np.arange(len(w)), best] >= 0.5
            gt_sides = np.tile(gt[best, 2:] - gt[best, :2], 2)  # [c, 4]
            pred_obj = gt[best] + rng.normal(0, noise, size=(len(w), 4)) * gt_sides
            # False positives: a random box inside the window.
            wside = w[:, 2:3] - w[:, 0:1]
            corner = rng.uniform(0, 0.5, size=(len(w), 2)) * wside
            size = rng.uniform(0.3, 0.5, size=(len(w), 2)) * wside
            pred_fp = np.concatenate([w[:, :2] + corner, w[:, :2] + corner + size], axis=1)
            pred = np.where(sees[:, None], pred_obj, pred_fp)
            conf = np.where(sees, rng.uniform(0.3, 0.9, len(w)), rng.uniform(0.0, 0.15, len(w)))
            for k in range(top_k):
                all_boxes.append(pred + rng.normal(0, 0.01, size=pred.shape) * wside * (k > 0))
                all_scores.append(conf / (1 + 3 * k))
                all_classes.append(np.full(len(w), k, np.int32))
    return {
        "boxes": np.concatenate(all_boxes).astype(np.float32),
        "scores": np.concatenate(all_scores).astype(np.float32),
        "classes": np.concatenate(all_classes),
        "gt_boxes": gt.astype(np.float32),
        "gt_classes": np.zeros(num_objects, np.int32),
    }


def compiled_merge(max_output: int = DEFAULT_MAX_OUTPUT, jit_compile: bool = False) -> Any:
    """`merge_boxes` as a `tf.function` with an unknown number of boxes (traced once),
    returning (MergeResult, iterations).

    `jit_compile`: as in `merge_boxes` (False: the plain-TF path that SavedModels / TF
    Serving run; True: XLA-compiled blocks).
    """
    return tf.function(
        lambda b, s, c, t: merge_boxes(
            b, s, c, t, max_output, jit_compile=jit_compile, return_iterations=True
        ),
        input_signature=(
            tf.TensorSpec([None, 4], tf.float32),
            tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([], tf.float32),
        ),
    )


def _path(jit_compile: bool) -> str:
    return "XLA" if jit_compile else "plain TF"


def _timed(fn: Callable[[], Any]) -> float:
    """Milliseconds of one call of `fn` (its outputs fetched)."""
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), fn())
    return (time.perf_counter() - start) * 1e3


def merge_case(
    top_k: int = 1,
    num_objects: int = 3,
    threshold: float = MERGE_THRESHOLD,
    max_output: int = DEFAULT_MAX_OUTPUT,
    seed: int = 0,
    jit_compile: bool = False,
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """(a no-argument call of the compiled merge on one `make_box_set` image, its facts).

    The facts include `first_call_ms`: the first call (tracing, XLA compilation of every
    array size it meets, if not compiled yet in this process, and one run).
    """
    data = make_box_set(seed=seed, num_objects=num_objects, top_k=top_k)
    merge = compiled_merge(max_output, jit_compile)
    args = (
        tf.constant(data["boxes"]),
        tf.constant(data["scores"]),
        tf.constant(data["classes"]),
        tf.constant(threshold, tf.float32),
    )

    def call() -> Any:
        return merge(*args)

    first = _timed(call)
    result, iterations = call()
    return call, {
        "model": "accurate",
        "scales": len(ACCURATE_SCALES),
        "flips": 2,
        "stride": "fine",
        "top_k": top_k,
        "num_objects": num_objects,
        "num_boxes": len(data["boxes"]),
        "num_merged": int(result.num_merged),
        "top_scores": [round(float(s), 3) for s in result.scores[: num_objects + 2]],
        "threshold": threshold,
        "merge_path": _path(jit_compile),
        "iterations": int(iterations),
        "first_call_ms": round(first, 1),
        "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU",
        "cpu_threads": os.cpu_count(),
    }


def time_merge(
    top_k: int = 1,
    num_objects: int = 3,
    runs: int = 5,
    threshold: float = MERGE_THRESHOLD,
    max_output: int = DEFAULT_MAX_OUTPUT,
    seed: int = 0,
    jit_compile: bool = False,
) -> dict[str, Any]:
    """Times the compiled `merge_boxes` on one `make_box_set` image (after a warm-up).

    Returns a JSON-able dict: number of boxes, merged boxes, median / min / all run times
    in ms, and the first call's time (tracing and compilation included).
    """
    call, info = merge_case(top_k, num_objects, threshold, max_output, seed, jit_compile)
    times = [_timed(call) for _ in range(runs)]
    return {
        **info,
        "merge_ms_median": round(statistics.median(times), 2),
        "merge_ms_min": round(min(times), 2),
        "merge_ms_runs": [round(t, 2) for t in times],
    }


def clustered_boxes(budget: int = 4000, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The `budget` most confident boxes of `make_box_set(top_k=5)` (6 scales x 2 flips, 5
    classes per scale: clusters on 3 objects + scattered windows), yxyx pixels."""
    box_set = make_box_set(seed=seed, top_k=5)
    keep = np.argsort(-box_set["scores"], kind="stable")[:budget]
    return (
        tf.constant(box_set["boxes"][keep]),
        tf.constant(box_set["scores"][keep]),
        tf.constant(box_set["classes"][keep]),
    )


def time_clustered(budget: int = 4000, runs: int = 5) -> dict[str, Any]:
    """Merge time of `clustered_boxes(budget)`, plain TF and XLA, interleaved (min of
    `runs` after a warm-up), and the dependent loop iterations (rounds + row blocks)."""
    boxes, scores, classes = clustered_boxes(budget)
    threshold = tf.constant(MERGE_THRESHOLD, tf.float32)
    merges = {jit: compiled_merge(jit_compile=jit) for jit in (False, True)}
    first = {
        jit: _timed(lambda m=m: m(boxes, scores, classes, threshold)) for jit, m in merges.items()
    }
    times: dict[bool, list[float]] = {jit: [] for jit in merges}
    for _ in range(runs):
        for jit, merge in merges.items():
            times[jit].append(_timed(lambda m=merge: m(boxes, scores, classes, threshold)))
    rows = []
    for jit, merge in merges.items():
        result, iterations = merge(boxes, scores, classes, threshold)
        rows.append(
            {
                "merge_path": _path(jit),
                "num_boxes": int(boxes.shape[0]),
                "num_merged": int(result.num_merged),
                "iterations": int(iterations),
                "merge_ms_min": round(min(times[jit]), 1),
                "merge_ms_median": round(statistics.median(times[jit]), 1),
                "first_call_ms": round(first[jit], 1),
            }
        )
    return {
        "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU",
        "cpu_threads": os.cpu_count(),
        "rows": rows,
    }


def sweep_thresholds(
    thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    seeds: int = 6,
    num_objects: int = 3,
    noise: float = 0.08,
    adjacent: bool = False,
) -> list[dict[str, Any]]:
    """For each threshold, how often the top `num_objects` merged boxes are exactly the objects.

    Over `seeds` images: `objects_found` = objects matched (IoU >= 0.5) by one of the top
    `num_objects` merged boxes (a split or wrongly merged object is not); `objects_split` =
    objects matched by 2+ of them; `mean_iou` of the matches.
    """
    merge = compiled_merge()
    rows = []
    for t in thresholds:
        hits = splits = 0
        ious = []
        for seed in range(seeds):
            data = make_box_set(
                seed=1000 + seed, num_objects=num_objects, noise=noise, adjacent=adjacent
            )
            r, _ = merge(
                tf.constant(data["boxes"]),
                tf.constant(data["scores"]),
                tf.constant(data["classes"]),
                tf.constant(t, tf.float32),
            )
            top = r.boxes[:num_objects]
            iou = box_ops.pairwise_iou(top, data["gt_boxes"]).numpy()  # [top, O]
            matched = iou >= 0.5
            hits += int(np.sum(matched.any(axis=0)))
            splits += int(np.sum(matched.sum(axis=0) >= 2))
            ious.extend(iou.max(axis=0)[matched.any(axis=0)].tolist())
        rows.append(
            {
                "noise": noise,
                "adjacent": adjacent,
                "threshold": t,
                "objects_found": f"{hits}/{seeds * num_objects}",
                "objects_split": splits,
                "mean_iou": round(float(np.mean(ious)) if ious else 0.0, 3),
            }
        )
    return rows


def forward_case(image_size: tuple[int, int] = (480, 640)) -> Callable[[], Any]:
    """A no-argument call of the accurate net's forward pass (class-specific regressor
    included) over one image at the 6 Table 5 scales x 2 flips, fine stride, compiled and
    warmed up."""
    import keras

    from overfeat_tf.models.backbone import OverFeat
    from overfeat_tf.models.inference import run_levels

    keras.utils.set_random_seed(0)
    model = OverFeat("accurate", regressor="class_specific", kernel_initializer="he_normal")
    image = tf.random.uniform([*image_size, 3], 0, 255, seed=0)
    forward = tf.function(
        lambda x: [
            out.outputs for out in run_levels(model, x, ACCURATE_SCALES, flips=True, stride="fine")
        ]
    )

    def call() -> Any:
        return forward(image)

    _timed(call)
    return call


def time_forward(image_size: tuple[int, int] = (480, 640), runs: int = 3) -> dict[str, Any]:
    """The forward pass of `forward_case`: min of `runs` after a warm-up."""
    call = forward_case(image_size)
    times = [_timed(call) for _ in range(runs)]
    return {"image": list(image_size), "forward_ms_min": round(min(times), 1)}


def merge_vs_forward(runs: int = 3, paths: tuple[bool, ...] = (False, True)) -> dict[str, Any]:
    """Merge time of the 6-scale 2-flip box sets (top-1 and top-5 classes per scale) as a
    fraction of the forward pass that makes them, measured in the same run: every round
    times the forward pass and then each merge once (interleaved, so that a change of load
    hits them alike); the min over `runs` rounds is kept.

    `paths`: `jit_compile` values of the merges timed (False: the plain-TF path of
    SavedModels / TF Serving; True: XLA-compiled blocks).
    """
    image_size = (480, 640)
    forward = forward_case(image_size)
    cases = [
        merge_case(top_k=top_k, jit_compile=jit) for jit in paths for top_k in (1, 5)
    ]  # warmed up (compiled) here
    forward_times: list[float] = []
    merge_times: list[list[float]] = [[] for _ in cases]
    for _ in range(runs):
        forward_times.append(_timed(forward))
        for times, (call, _) in zip(merge_times, cases, strict=True):
            times.append(_timed(call))
    forward_ms = min(forward_times)
    rows = []
    for times, (_, info) in zip(merge_times, cases, strict=True):
        merge_ms = min(times)
        rows.append(
            {
                **info,
                "merge_ms_min": round(merge_ms, 2),
                "merge_ms_runs": [round(t, 2) for t in times],
                "image": list(image_size),
                "forward_ms_min": round(forward_ms, 1),
                "merge_over_forward": round(merge_ms / forward_ms, 4),
            }
        )
    return {"forward_ms_runs": [round(t, 1) for t in forward_times], "rows": rows}


def write_merge_section(result: dict[str, Any]) -> None:
    from benchmarks.common import machine, write_section

    lines = [
        "| classes per scale | merge path | boxes in | merged | merge ms | forward ms "
        "| merge / forward | first call ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['top_k']} | {r['merge_path']} | {r['num_boxes']} | {r['num_merged']} | "
            f"{r['merge_ms_min']} | {r['forward_ms_min']} | {r['merge_over_forward']:.1%} | "
            f"{r['first_call_ms']} |"
        )
    body = (
        f"Machine: {machine()}.\n"
        "Command: `python benchmarks/bench_merge.py --forward --write`.\n\n"
        "Box merge (`merge.merge_boxes`, rounds of mutual best matches, compiled, CPU) of "
        "every box of one image of the "
        "accurate net at the 6 Table 5 scales x 2 flips, fine stride (synthetic box sets of "
        "the real size, clustered on 3 objects with scattered false positives, no score "
        "threshold: the worst case), against the forward pass of the accurate net with its "
        "class-specific regressor over the same 12 levels of a 480x640 image (float32), both "
        "measured in the same run, interleaved (best of 3). Target: merge <= 10% of the "
        "forward pass. Merge path plain TF (`jit_compile=False`, the default) is what "
        "SavedModels run (TF Serving); XLA (`jit_compile=True`) compiles each round's score "
        "block on padded sizes. First call: tracing plus XLA compilation of the padded sizes "
        "met (once per process), not in merge ms.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + verdicts(result["rows"])
    )
    write_section("Merge speed", body)


def load_merge_module(path: str) -> Any:
    """A version of `overfeat_tf/ops/merge.py` loaded from a file, under its own name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("merge_compared", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"not a Python file: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def comparison_sets(trained: str | None = None) -> dict[str, tuple[tf.Tensor, ...]]:
    """The 4000-box sets of the A/B (boxes, scores, classes; yxyx pixels): `clustered_boxes`,
    the random-weight tiny and fast detectors' own boxes on the serving suite's 320x400 JPEG
    (its nets: 20 classes + background, class-specific regressor, the detector's defaults)
    and, if `trained` names a `.keras` detector, its boxes on scikit-image's chelsea."""
    from benchmarks.bench_serving import test_jpeg
    from benchmarks.bench_suite import _net
    from benchmarks.suite_serving import SERVE_CLASSES, _photo_jpeg
    from overfeat_tf.models.backbone import load_model
    from overfeat_tf.models.detector import OverFeatDetector, as_detector
    from overfeat_tf.ops.pyramid import default_scales

    sets = {"clustered (`clustered_boxes`)": clustered_boxes()}
    image = tf.cast(image_io.decode_image(test_jpeg()), tf.float32)
    kind = {"regressor": "class_specific", "background": True}
    for arch in ("tiny", "fast"):
        net = _net(arch, num_classes=SERVE_CLASSES, **kind)
        detector = OverFeatDetector(net, scales=default_scales(arch))
        sets[f"{arch}, random weights, own boxes"] = detector.dense_boxes(detector.levels(image))[
            :3
        ]
    if trained and os.path.exists(trained):
        detector = as_detector(load_model(trained))
        photo = tf.cast(image_io.decode_image(_photo_jpeg()[0]), tf.float32)
        sets["tiny, trained, chelsea"] = detector.dense_boxes(detector.levels(photo))[:3]
    return sets


def compare(
    old_path: str, runs: int = 5, trained: str | None = None, old_name: str = "another version"
) -> dict[str, Any]:
    """This `merge_boxes` against the one in `old_path`, plain TF (as served), on
    `comparison_sets`: bitwise equal outputs and iterations, and each one's median wall and
    CPU (process) seconds over `runs` calls, old and new in turn (after a warm-up)."""
    from overfeat_tf.ops import merge as new

    modules = {"old": load_merge_module(old_path), "new": new}
    spec = (
        tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None], tf.float32),
        tf.TensorSpec([None], tf.int32),
    )
    merges = {
        name: tf.function(
            lambda b, s, c, m=module: m.merge_boxes(b, s, c, return_iterations=True),
            input_signature=spec,
        )
        for name, module in modules.items()
    }
    rows = []
    for label, boxes in comparison_sets(trained).items():
        out = {name: merge(*boxes) for name, merge in merges.items()}  # traced, warmed up
        same = all(
            np.array_equal(x.numpy(), y.numpy())
            for x, y in zip(out["old"][0], out["new"][0], strict=True)
        )
        wall: dict[str, list[float]] = {name: [] for name in merges}
        cpu: dict[str, list[float]] = {name: [] for name in merges}
        for _ in range(runs):
            for name, merge in merges.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                tf.nest.map_structure(lambda t: t.numpy(), merge(*boxes))
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        row = {
            "boxes": label,
            "num_boxes": int(boxes[1].shape[0]),
            "classes": int(tf.size(tf.unique(boxes[2])[0])),
            "iterations": [int(out[name][1]) for name in merges],
            "same": same and int(out["old"][1]) == int(out["new"][1]),
        }
        for name in merges:
            row[f"{name}_wall_s"] = statistics.median(wall[name])
            row[f"{name}_cpu_s"] = statistics.median(cpu[name])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"old": old_path, "old_name": old_name, "runs": runs, "rows": rows}


def write_compare_section(result: dict[str, Any], command: str) -> None:
    from benchmarks.common import machine, write_section

    lines = [
        "| boxes | boxes in | classes | iterations old / new | same output (bitwise) "
        "| old s | new s | speed-up | old CPU s | new CPU s | CPU speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        old, new, old_cpu, new_cpu = (
            r[k] for k in ("old_wall_s", "new_wall_s", "old_cpu_s", "new_cpu_s")
        )
        lines.append(
            f"| {r['boxes']} | {r['num_boxes']} | {r['classes']} | "
            f"{r['iterations'][0]} / {r['iterations'][1]} | {'yes' if r['same'] else 'NO'} | "
            f"{old:.3f} | {new:.3f} | {old / new:.1f}x | {old_cpu:.3f} | {new_cpu:.3f} | "
            f"{old_cpu / new_cpu:.1f}x |"
        )
    body = (
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end (shared "
        f"machine: compare within a row).\nCommand: `{command}`.\n\n"
        "`merge.merge_boxes` (plain TF, as served; float32) against the version in "
        f"`{result['old']}` ({result['old_name']}, kept out of the tree), "
        "both loaded in one process, called in turn on the same box sets (median of "
        f"{result['runs']} calls each; wall and process CPU seconds; TF uses both cores, so "
        "CPU can exceed wall). Same output: every field of the padded `MergeResult` equal "
        "bitwise, and the same dependent loop iterations.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + COMPARE_NOTE
    )
    write_section(COMPARE_SECTION, body)


COMPARE_SECTION = "Merge: only the pairs that can merge, in tiles"
COMPARE_NOTE = """What changed (`ops/merge.py`; `docs/merge.md` has the argument): a round's
merges depend only on the pairs scoring <= t, so the merge keeps those pairs (edges) and
never scores a pair of two classes, nor a pair whose centres are too far apart to score <= t
(|dcy|, |dcx| <= t sqrt(min area), with margins for rounding). The clusters sit in slots,
per class, in Z-order of their centres; 16 slots make a tile, and a block scores the 16 x 16
pairs of two near tiles of one class. Before the first round every pair of near tiles is
scored once; after a round only the merged clusters (in tiles of their own) against the live
ones, the other edges kept. Best partners: segment minima over the edges. Fixed ops per
round, no loop over classes or tiles; `BLOCK_SCORES` bounds the scores of one group of
blocks (a loop beyond, never at 4000 boxes). The old version scored an [m, m] block over all
classes in the first round and [m, k] + [f, m] blocks after it. The clustered set gains
least: a quarter of its same-class pairs score <= t, so most near tiles hold edges."""
TARGET = 0.10  # merge <= 10% of the forward pass (issue 4)


def verdicts(rows: list[dict[str, Any]]) -> str:
    """One line per merge path: its worst ratio against the target."""
    worst: dict[str, float] = {}
    for r in rows:
        worst[r["merge_path"]] = max(worst.get(r["merge_path"], 0.0), r["merge_over_forward"])
    return "\n".join(
        f"- {path}: at most {ratio:.1%} of the forward pass, "
        f"{'meets' if ratio <= TARGET else 'does NOT meet'} the <= {TARGET:.0%} target."
        for path, ratio in worst.items()
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=MERGE_THRESHOLD)
    parser.add_argument("--sweep", action="store_true", help="threshold sweep instead")
    parser.add_argument("--forward", action="store_true", help="merge vs forward pass")
    parser.add_argument(
        "--write", action="store_true", help="with --forward or --compare: BENCHMARKS.md"
    )
    parser.add_argument(
        "--clustered", action="store_true", help="4000 clustered boxes: plain TF vs XLA"
    )
    parser.add_argument(
        "--compare", metavar="OLD.py", help="A/B against another ops/merge.py (with --write)"
    )
    parser.add_argument(
        "--old-name", default="another version", help="with --compare: what OLD.py is"
    )
    parser.add_argument(
        "--trained",
        default=os.environ.get("OVERFEAT_TRAINED_TINY", "runs/tiny/model.keras"),
        help="with --compare: a trained tiny detector (.keras) for the photo's box set",
    )
    parser.add_argument(
        "--jit",
        choices=("both", "on", "off"),
        default="off",
        help="merge_boxes' jit_compile (off: plain TF, the default); with --forward, both "
        "(the default there) times plain TF and XLA",
    )
    args = parser.parse_args(argv)
    jit_compile = args.jit == "on"
    if args.clustered:
        print(json.dumps(time_clustered(runs=args.runs), indent=2))
        return
    if args.compare:
        result = compare(args.compare, args.runs, args.trained, args.old_name)
        if args.write:
            flags = sys.argv[1:] if argv is None else argv
            write_compare_section(result, shlex.join(["python benchmarks/bench_merge.py", *flags]))
        return
    if args.forward:
        paths = (False, True) if args.jit in ("both", "off") else (True,)
        result = merge_vs_forward(args.runs if args.runs != 5 else 3, paths)
        print(json.dumps(result, indent=2))
        if args.write:
            write_merge_section(result)
        return
    if args.sweep:
        rows = []
        for noise in (0.08, 0.15):
            for adjacent in (False, True):
                rows += sweep_thresholds(num_objects=args.objects, noise=noise, adjacent=adjacent)
        print(json.dumps(rows, indent=1))
        return
    result = time_merge(
        args.top_k, args.objects, args.runs, args.threshold, jit_compile=jit_compile
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

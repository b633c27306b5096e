"""Part 5 of the benchmark suite (`bench_suite.py`): merge and serving (issue 12).

    python benchmarks/bench_suite.py --parts serving [--write]     # how it is run

The detector's decoder served (SavedModel, plain TF) as % of the forward pass (<= 10 % fast /
accurate, <= 100 % tiny), tiny's served latency (<= 2x forward), served detection against the
export's own `classify` signature on the same JPEG (issue 21: <= 1.5x tiny, <= 1.05x fast;
random weights, and a trained tiny detector on a photo when one is found: `TRAINED_TINY`), the
decoder's dependent loop iterations for 4000 boxes (<= 64), first calls in a fresh process
(<= 5 s), 4 concurrent clients (throughput >= one client's, same answers, no crash). Section
"Suite: merge and serving"; the timing helpers, `Section` and `Settings` are `bench_suite`'s.
Where the served time goes: `profile_serving.py`.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from benchmarks.bench_merge import make_box_set
from benchmarks.bench_serving import test_jpeg
from benchmarks.bench_suite import (
    Section,
    Settings,
    _med,
    _net,
    _pct,
    _x,
    interleaved,
    mmm,
    verdict,
)
from overfeat_tf.data import image_io
from overfeat_tf.export import serving
from overfeat_tf.models.backbone import load_model
from overfeat_tf.models.detector import OverFeatDetector, as_detector
from overfeat_tf.ops import merge
from tests.merge_reference import sequential_merge_numpy

BOX_BUDGET = OverFeatDetector.default_options()["max_boxes"]
SERVE_CLASSES = 20
# A trained tiny detector (`.keras`) for the served / classify ratio on a photo: the
# environment variable OVERFEAT_TRAINED_TINY, else the main job's model (README), if present.
TRAINED_TINY = os.environ.get("OVERFEAT_TRAINED_TINY", "runs/tiny/model.keras")
# Issue 21: served detection / the export's `classify` signature, same image.
CLASSIFY_LIMITS = {"tiny": 1.5, "fast": 1.05}


class _Decoder(tf.Module):
    """The detector's prediction decoder alone, to save as a SavedModel."""

    def __init__(self, decoder: keras.layers.Layer) -> None:
        super().__init__()
        self.decoder = decoder
        specs = [tf.TensorSpec([None, 4]), tf.TensorSpec([None]), tf.TensorSpec([None], tf.int32)]
        self.decode = tf.function(lambda b, s, c: decoder(b, s, c), input_signature=specs)


def _clustered_boxes(budget: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The `budget` most confident boxes of `bench_merge.make_box_set` (the accurate net's 6
    scales x 2 flips, top-5 classes: clusters on 3 objects + scattered windows), pixels."""
    box_set = make_box_set(seed=0, top_k=5)
    keep = np.argsort(-box_set["scores"], kind="stable")[:budget]
    boxes, scores = box_set["boxes"][keep], box_set["scores"][keep]
    return tf.constant(boxes), tf.constant(scores), tf.constant(box_set["classes"][keep])


def _photo_jpeg() -> tuple[bytes, str]:
    """A real photo as a JPEG (scikit-image's chelsea, 451x300), else the suite's test JPEG."""
    try:
        from skimage import data as skimage_data
    except ImportError:
        return test_jpeg(), "the 320x400 test JPEG (no scikit-image)"
    image = skimage_data.chelsea()
    jpeg = tf.io.encode_jpeg(image, quality=90).numpy()
    return jpeg, f"scikit-image's chelsea photo ({image.shape[1]}x{image.shape[0]} JPEG)"


def random_detector(arch: str, s: Settings) -> OverFeatDetector:
    """The suite's served net: random he_normal weights (seeded), `SERVE_CLASSES` classes +
    background, a class-specific regressor, the net's default scales (`Settings.scales`)."""
    net = _net(arch, num_classes=SERVE_CLASSES, regressor="class_specific", background=True)
    return OverFeatDetector(net, scales=s.scales(arch))


def _serve_case(
    detector: OverFeatDetector, jpeg: bytes, s: Settings, tmp: Path, clustered: tuple
) -> dict[str, Any]:
    """Interleaved timings of one detector on one JPEG: its export's `serving_default`
    ("served") and `classify` signatures, the forward pass, its decoder alone (a SavedModel)
    on the forward pass's boxes and on `clustered`."""
    name = f"case{len(list(tmp.iterdir()))}"
    image = tf.cast(image_io.decode_image(jpeg), tf.float32)
    export = serving.export_model(detector, tmp / name)
    loaded = tf.saved_model.load(str(export))
    served, classify = loaded.signatures["serving_default"], loaded.signatures["classify"]
    tf.saved_model.save(_Decoder(detector.prediction_decoder), str(tmp / f"{name}_decoder"))
    decoder = tf.saved_model.load(str(tmp / f"{name}_decoder"))
    forward = tf.function(lambda im: detector.dense_boxes(detector.levels(im)))
    classes_only = tf.function(
        lambda im: [level.outputs["class_logits"] for level in detector.levels(im)]
    )  # the network without its regressor head (not computed: its outputs are unused)
    own = forward(image)[:3]
    fns = {
        "served": lambda: served(images=tf.constant([jpeg])),
        "classify": lambda: classify(images=tf.constant([jpeg])),
        "forward": lambda: forward(image),
        "network, classes only": lambda: classes_only(image),
        "merge, own boxes": lambda: decoder.decode(*own),
        "merge, clustered": lambda: decoder.decode(*clustered),
    }
    times = interleaved(fns, s.repeats)
    return {"export": export, "detector": detector, "boxes": int(own[1].shape[0]), "s": times}


def _loop_iterations(decoder: keras.layers.Layer, boxes: tuple) -> tuple[list[str], int | None]:
    """The decoder's dependent loop iterations on `boxes`, if it exposes them: an output
    whose name holds "round" or "iteration", or a `loop_iterations(boxes, scores, classes)`
    method. For reference, those of the merges (the paper's one-pair-per-step rule, NumPy
    reference: one iteration per merge; `merge.merge_boxes`: its rounds + row blocks) and
    whether the decoder's detections equal theirs."""
    out = decoder(*boxes)
    keys = [k for k in out if "round" in k or "iteration" in k]
    value = int(out[keys[0]]) if keys else None
    if value is None and callable(getattr(decoder, "loop_iterations", None)):
        keys, value = ["loop_iterations()"], int(decoder.loop_iterations(*boxes))
    name = type(decoder).__name__
    lines = [f"`{name}` reports `{keys[0]}` = {value}" if keys else f"`{name}` exposes none"]
    n, d = int(boxes[1].shape[0]), int(out["num_detections"])
    threshold = getattr(decoder, "merge_threshold", merge.MERGE_THRESHOLD)
    seq = sequential_merge_numpy(*(np.asarray(x) for x in boxes), threshold)
    seq = merge.MergeResult(seq[0], seq[1], seq[2], seq[3], len(seq[1]))
    rounds, iterations = merge.merge_boxes(*boxes, threshold, max_output=n, return_iterations=True)
    found = {
        "sequential rule (`tests/merge_reference.py`), merges": (seq, n - len(seq.scores)),
        "`merge.merge_boxes`, iterations": (rounds, int(iterations)),
    }
    for label, (result, count) in found.items():
        same = d == min(int(result.num_merged), decoder.max_detections) and np.allclose(
            out["detection_scores"][:d], result.scores[:d], rtol=1e-5
        )
        lines.append(f"{label}: {count} (the decoder's detections {'equal' if same else 'differ'})")
    return lines, value


_FRESH = r"""
import json, sys, time
start = time.perf_counter()
import tensorflow as tf, overfeat_tf
t = {"import_s": time.perf_counter() - start}
mode, path, *images = sys.argv[1:]
def timed(key, fn):
    s = time.perf_counter(); out = fn(); t[key] = time.perf_counter() - s; return out
if mode == "detect":
    model = timed("load_s", lambda: overfeat_tf.load_model(path))
    for key, image in zip(("first_call_s", "other_size_s"), images):
        timed(key, lambda: overfeat_tf.detect(model, image))
else:
    fn = timed("load_s", lambda: tf.saved_model.load(path).signatures["serving_default"])
    for key, image in zip(("first_call_s", "other_size_s"), images):
        data = open(image, "rb").read()
        timed(key, lambda: fn(images=tf.constant([data]))["num_detections"].numpy())
print(json.dumps(t))
"""


def _fresh_process(mode: str, path: Path, images: list[Path]) -> dict[str, float]:
    args = [sys.executable, "-c", _FRESH, mode, str(path), *map(str, images)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fresh-process {mode} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _requests(count: int) -> list[list[bytes]]:
    """Batches of 1-3 mixed-size JPEGs; every 4th request holds one bad image."""
    sizes = [(240, 320), (320, 400), (300, 300), (400, 300), (256, 512)]
    bad = [b"", b"not an image", test_jpeg((200, 200))[:300]]  # empty, unknown, truncated
    out = []
    for r in range(count):
        batch = [test_jpeg(sizes[(r + i) % 5], seed=3 * r + i) for i in range(1 + r % 3)]
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
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    return all(np.array_equal(a[k], b[k]) for k in a)


def _concurrency(fn: Any, requests: list[list[bytes]], clients: int = 4) -> dict[str, Any]:
    """Images/s of one client and of `clients` threads sharing the same requests, the
    threads' answers compared with the sequential ones, the model checked after."""
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
    return {"images": images, "requests": len(requests), "one_client": one, "clients": many,
            "equal": equal, "bad": sum(isinstance(a, str) for a in sequential),
            "crashes": crashes, "alive": not isinstance(_answer(fn, requests[0]), str)}  # fmt: skip


def part_serving(s: Settings, results: dict) -> Section:
    clustered = _clustered_boxes(
        1000 if s.quick else OverFeatDetector.default_options()["max_boxes"]
    )
    trained = Path(TRAINED_TINY)
    photo, photo_name = _photo_jpeg()
    section = Section(
        "Suite: merge and serving",
        f"""Per model (random he_normal weights, {SERVE_CLASSES} classes + background,
class-specific regressor; the detector's defaults: scales x 2 flips, fine stride, top-5,
{BOX_BUDGET}-box budget, its `prediction_decoder`), on one 320x400 JPEG:
"served" = the exported `serving_default` (`serving.export_model`, `tf.saved_model.load`);
"classify" = the same export's `classify` signature (same pyramid and network, no boxes), on
the same JPEG; "forward" = pyramid + network + box decoding (`dense_boxes(levels(image))`, a
`tf.function`); "merge" = the decoder alone, saved as a SavedModel (plain TF, as served) and
loaded, on the forward pass's own boxes (random weights: hardly clustered) and on a clustered
set of {int(clustered[1].shape[0])} boxes (`bench_merge.make_box_set`: the accurate net's 6
scales x 2 flips, top-5 classes, 3 objects + scattered windows, the most confident). Row
"tiny, trained": the trained tiny detector `{TRAINED_TINY}` (its own options) on
{photo_name}, if the file exists (`OVERFEAT_TRAINED_TINY`). Interleaved; min / median / max.""",
        ["model", "own boxes", "served s", "classify s", "forward s", "merge s, own boxes",
         "merge s, clustered", "merge / forward, own / clustered", "served / forward",
         "served / classify"],
    )  # fmt: skip
    splits: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = [(arch, None) for arch in (("tiny",) if s.quick else ("tiny", "fast", "accurate"))]
        if trained.exists():
            cases.insert(1, ("tiny, trained", trained))
        for label, path in cases:
            if path is None:
                detector, jpeg = random_detector(label, s), test_jpeg()
            else:
                detector, jpeg = as_detector(load_model(path)), photo
            r = _serve_case(detector, jpeg, s, tmp, clustered)
            section.data[label] = {"boxes": r["boxes"], "seconds": r["s"]}
            t = {k: _med(v) for k, v in r["s"].items()}
            own, clus = t["merge, own boxes"] / t["forward"], t["merge, clustered"] / t["forward"]
            cells = [mmm(v) for k, v in r["s"].items() if k != "network, classes only"]
            splits.append(_split_note(label, t))
            to_classify = t["served"] / t["classify"]
            ratios = [
                f"{_pct(own)} / {_pct(clus)}",
                _x(t["served"] / t["forward"]),
                _x(to_classify),
            ]
            section.rows.append([label, r["boxes"], *cells, *ratios])
            arch = label.split(",")[0]
            if arch in CLASSIFY_LIMITS:
                what = f"{label} served / classify"
                section.targets.append(verdict(what, to_classify, CLASSIFY_LIMITS[arch], False, _x))
            if path is not None:
                continue
            limit = 1.0 if label == "tiny" else 0.10
            for what, value in (("own boxes", own), ("clustered", clus)):
                what = f"{label} served merge / forward, {what}"
                section.targets.append(verdict(what, value, limit, False, _pct))
            if label == "tiny":
                served = t["served"] / t["forward"]
                section.targets.append(verdict("tiny served / forward", served, 2.0, False, _x))
                _serving_extras(s, section, r, tmp, clustered)
    section.notes.append(
        "Where served - classify goes (medians):\n" + "\n".join(f"- {x}" for x in splits)
    )
    return section


def _split_note(label: str, t: dict[str, float]) -> str:
    """Where served - classify goes (medians): the regressor head and box decoding (forward
    - the network without its regressor), the merge, the rest."""
    gap = t["served"] - t["classify"]
    boxes = t["forward"] - t["network, classes only"]
    merge_s = t["merge, own boxes"]
    return (
        f"{label}: served - classify = {gap:.3f} s ({gap / t['classify']:.0%} of classify): "
        f"regressor head + box decoding {boxes:.3f} s (forward {t['forward']:.3f} s - the "
        f"network without its regressor {t['network, classes only']:.3f} s), merge "
        f"{merge_s:.3f} s, the rest {gap - boxes - merge_s:.3f} s (JPEG decode, the export's "
        "per-image loop, timing noise)."
    )


def _serving_extras(s: Settings, section: Section, tiny: dict, tmp: Path, boxes: tuple) -> None:
    """Loop iterations, first calls in fresh processes and concurrency, on tiny."""
    decoder = tiny["detector"].prediction_decoder
    lines, value = _loop_iterations(decoder, boxes)
    n = int(boxes[1].shape[0])
    section.notes.append(f"Dependent loop iterations, {n} clustered boxes: " + "; ".join(lines))
    what = f"`{type(decoder).__name__}` dependent loop iterations, {n} boxes"
    if value is None:
        section.targets.append(f"{what}: NOT MEASURED (the decoder does not expose them)")
    else:
        section.targets.append(verdict(what, value, 64, False, lambda v: f"{v:.0f}"))
    images = [tmp / "a.jpg", tmp / "b.jpg"]
    for path, size in zip(images, ((320, 400), (300, 500)), strict=True):
        path.write_bytes(test_jpeg(size))
    tiny["detector"].save(tmp / "tiny.keras")
    fresh = {
        "notebook `overfeat_tf.detect` of a .keras detector": ("detect", tmp / "tiny.keras"),
        "the export's first request": ("serve", tiny["export"]),
    }
    for label, (mode, path) in fresh.items():
        t = section.data[mode] = _fresh_process(mode, path, images)
        section.notes.append(
            f"Fresh process, tiny, {label}: import {t['import_s']:.1f} s, load "
            f"{t['load_s']:.1f} s, first call (320x400) {t['first_call_s']:.2f} s, then a "
            f"300x500 image {t['other_size_s']:.2f} s."
        )
        what = f"first call in a fresh process, {label}"
        section.targets.append(verdict(what, t["first_call_s"], 5.0, False, lambda v: f"{v:.2f} s"))
    served = tf.saved_model.load(str(tiny["export"])).signatures["serving_default"]
    c = section.data["concurrency"] = _concurrency(served, _requests(4 if s.quick else 12))
    section.notes.append(
        f"4 concurrent clients (threads sharing one loaded SavedModel) over {c['requests']} "
        f"requests of 1-3 mixed-size JPEGs ({c['images']} images; {c['bad']} of the requests "
        f"hold a bad image and get an InvalidArgumentError): {c['clients']:.2f} images/s vs "
        f"{c['one_client']:.2f} for one client; answers equal to the sequential ones (bitwise; "
        f"errors by message) {c['equal']}/{c['requests']}; crashes {len(c['crashes'])}; the "
        f"model answers afterwards: {c['alive']}."
    )
    ratio = c["clients"] / c["one_client"]
    section.targets.append(verdict("4 clients' throughput / one client's", ratio, 1.0, True, _x))
    ok = c["equal"] == c["requests"] and not c["crashes"] and c["alive"]
    section.targets.append(f"4 clients: same answers, no crash: {'met' if ok else 'MISSED'}")

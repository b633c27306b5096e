"""What one served request costs at most: peak memory and time of the worst image per net.

    python benchmarks/bench_bounds.py [--nets tiny,fast,accurate] [--write]

For each shipped net (random weights: the cost does not depend on them) with its pyramid —
tiny with the main job's (short sides 247..1031), fast and accurate with their defaults — the
detector is exported with `export.py`'s defaults, then each request runs in a fresh process
that cannot import overfeat_tf (plain `tf.saved_model.load`, as TF Serving), one process per
request so its peak resident memory is that request's:
- a 480 x 640 JPEG (a photo-sized image), and
- the worst image the bounds allow: a 5000 x 2 PNG of a few hundred bytes, whose every level
  is as long as `max_aspect_ratio` lets it be (`pyramid.max_level_size`).
Each is timed on its second call (the first traces). A request holds at most `max_images`
images run one after another, so its memory is one image's and its time at most
`max_images` times the worst image's. `--write` updates BENCHMARKS.md "Request bounds".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, write_section  # first: quiets TF's C++ start-up

# isort: split
import keras
import numpy as np
import tensorflow as tf

from overfeat_tf.export import serving
from overfeat_tf.main_job import SHAPES_SCALES
from overfeat_tf.models.backbone import OverFeat
from overfeat_tf.models.detector import OverFeatDetector

_CLIENT = textwrap.dedent(
    """
    import json, resource, sys, time
    sys.modules["overfeat_tf"] = None
    import tensorflow as tf

    version_dir, path = sys.argv[1:]
    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    images = tf.constant([open(path, "rb").read()])
    times = []
    for _ in range(2):
        start = time.perf_counter()
        int(serve(images=images)["num_detections"][0])
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": times[1], "peak_gb": peak}))
    """
)


def _images(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    photo = np.kron(rng.integers(0, 256, (31, 41, 3), np.uint8), np.ones((16, 16, 1), np.uint8))
    paths = {"480x640 JPEG": folder / "photo.jpg", "5000x2 PNG (worst)": folder / "strip.png"}
    paths["480x640 JPEG"].write_bytes(tf.io.encode_jpeg(photo[:480, :640]).numpy())
    strip = (np.arange(10000).reshape(5000, 2, 1) * 37 % 251).astype(np.uint8)
    paths["5000x2 PNG (worst)"].write_bytes(tf.io.encode_png(np.repeat(strip, 3, 2)).numpy())
    return paths


def _request(version: Path, image: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    script = version.parent / "client.py"
    script.write_text(_CLIENT)
    out = subprocess.run(
        [sys.executable, str(script), str(version), str(image)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(net_name: str, folder: Path) -> list[dict]:
    keras.utils.set_random_seed(0)
    scales = SHAPES_SCALES if net_name == "tiny" else None
    net = OverFeat(net_name, num_classes=20, background=True, regressor="class_specific")
    detector = OverFeatDetector(net, scales=scales)
    version = serving.export_model(detector, folder / net_name)
    bounds = serving.read_metadata(version)["bounds"]
    rows = []
    for what, path in _images(folder).items():
        result = _request(version, path)
        rows.append({"net": net_name, "image": what, "bounds": bounds, **result})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "bounds"}), flush=True)
    return rows


def report(rows: list[dict]) -> str:
    lines = [
        f"Machine: {machine()}. Command: `python benchmarks/bench_bounds.py --write`. "
        "Random weights (the cost does not depend on them), `export.py` defaults "
        "(`max_aspect_ratio` 4, `max_images` 32, `max_pixels` 64 Mi); each request in a fresh "
        "process without overfeat_tf, timed on its second call; peak = the process's peak "
        "resident memory (model and TF included).",
        "",
        "| net | pyramid (short sides) | largest level allowed | pyramid px allowed "
        "(x flips) | image | time | worst / photo | peak memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    photo = {r["net"]: r["seconds"] for r in rows if "JPEG" in r["image"]}
    for r in rows:
        b = r["bounds"]
        sides = ", ".join(str(min(s)) for s in b["max_level_sizes"])
        largest = "x".join(map(str, b["max_level_sizes"][-1]))
        lines.append(
            f"| {r['net']} | {sides} | {largest} | {b['max_pyramid_pixels'] / 1e6:.1f} M | "
            f"{r['image']} | {r['seconds']:.2f} s | {r['seconds'] / photo[r['net']]:.1f}x | "
            f"{r['peak_gb']:.2f} GB |"
        )
    lines += [
        "",
        "A request of `max_images` images costs at most that many times the worst image's time "
        "(they run one after another) and one image's memory. Before the bound, the 5000x2 PNG "
        "made tiny's 1031 level 1031 x 2.6 M px and the process was killed for memory at 24 GB.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="tiny,fast,accurate", help="comma-separated nets")
    p.add_argument("--write", action="store_true", help='update BENCHMARKS.md "Request bounds"')
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets.split(","):
            rows += measure(name, Path(tmp))
    text = report(rows)
    print(text)
    if args.write:
        write_section("Request bounds", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Served detection / the export's `classify` signature (issue 21), for one trained tiny
detector with its own options and for the suite's random-weight tiny, in one run.

    python benchmarks/bench_served_ratio.py --model runs/tiny/model.keras [--repeats 7]

The same measurement as the "tiny" and "tiny, trained" rows of the suite's "merge and
serving" part (`suite_serving._serve_case`: export, `serving_default` vs `classify` on the same
JPEG, the forward pass, the decoder alone; interleaved, medians) without the fast and accurate
nets, so it runs in a few minutes. The trained detector runs on scikit-image's chelsea photo,
the random-weight one on the suite's 320x400 test JPEG. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import suite_serving
from benchmarks.bench_serving import test_jpeg
from benchmarks.bench_suite import Settings, _med
from benchmarks.common import machine
from overfeat_tf.models.backbone import load_model
from overfeat_tf.models.detector import OverFeatDetector, as_detector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained tiny detector (.keras)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats (default 7)")
    args = parser.parse_args(argv)
    s = Settings(repeats=args.repeats)
    clustered = suite_serving._clustered_boxes(OverFeatDetector.default_options()["max_boxes"])
    photo, photo_name = suite_serving._photo_jpeg()
    cases = {
        f"trained ({args.model}), {photo_name}": (as_detector(load_model(args.model)), photo),
        "random weights, the 320x400 test JPEG": (
            suite_serving.random_detector("tiny", s),
            test_jpeg(),
        ),
    }
    print(f"{machine()}; repeats {args.repeats}, medians.\n")
    print("| tiny detector | boxes | served s | classify s | merge s | served / classify |")
    print("|---|---|---|---|---|---|")
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, (detector, jpeg) in cases.items():
            r = suite_serving._serve_case(detector, jpeg, s, Path(tmp), clustered)
            t = {k: _med(v) for k, v in r["s"].items()}
            ratio = t["served"] / t["classify"]
            print(
                f"| {label} | {r['boxes']} | {t['served']:.4f} | {t['classify']:.4f} | "
                f"{t['merge, own boxes']:.4f} | {ratio:.2f}x |",
                flush=True,
            )
            notes.append(suite_serving._split_note(label, t))
    print("\n" + "\n".join(f"- {note}" for note in notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

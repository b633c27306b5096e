"""Record a run of the README's main job in BENCHMARKS.md ("Main job").

Usage (after `pip install -e . && python train.py --model tiny` in a fresh clone + venv):
    python benchmarks/record_main_job.py --report runs/tiny/report.json \
        --how "fresh clone, fresh venv" [--write]

Reads the job's `report.json` (`overfeat_tf.main_job.run`) and prints (`--write`: replaces)
the section of its compute policy ("Main job" for mixed bfloat16, "Main job, float32"): the
machine and its load, wall time per stage (dataset generation included) with the cost per
step / image, and the three numbers against the bar the README's numbers set (mAP@0.5 >= 0.69,
localization error <= 13 %, multi-scale top-1 error <= 13 %), the job against 10 minutes in
mixed bfloat16 and 12 minutes in float32 (issue 21).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, write_section
from overfeat_tf import main_job

SECTIONS = {"mixed_bfloat16": "Main job", "float32": "Main job, float32"}
TARGETS = {  # name: (what, target, lower is better, digits)
    "map": ("detection mAP@0.5 (merge)", 0.69, False, 3),
    "localization_error": ("localization error % (5 guesses)", 13.0, True, 1),
    "top1_error": ("multi-scale top-1 error %", 13.0, True, 1),
}
MINUTES_TARGETS = {"mixed_bfloat16": 10.0, "float32": 12.0}


def _meets(value: float | None, target: float, lower: bool) -> str:
    if value is None:
        return "n/a"
    ok = value <= target if lower else value >= target
    return "meets" if ok else "does NOT meet"


def section(report: dict[str, Any], wall_seconds: float | None, how: str, load: str) -> str:
    """The BENCHMARKS.md section (Markdown) of one main-job report."""
    wall = wall_seconds if wall_seconds is not None else report["wall_seconds"]
    evaluated = report["evaluation"]
    detection, classified = evaluated["detection"], evaluated["classification"]
    images = detection["examples"]
    steps = [("dataset generation", report["dataset_prepare"]["seconds"], "")]
    steps += [
        (s["stage"], s["wall_seconds"], f"{1000 * s['wall_seconds'] / s['final_step']:.0f} ms")
        for s in report["stages"]
    ]
    steps += [
        (
            "evaluate: detection + localization",
            detection["seconds"],
            f"{1000 * detection['seconds'] / images:.0f} ms",
        ),
        (
            "evaluate: classification",
            classified["seconds"],
            f"{1000 * classified['seconds'] / classified['examples']:.0f} ms",
        ),
        (
            "evaluate: pictures, reports",
            evaluated["seconds"] - detection["seconds"] - classified["seconds"],
            "",
        ),
        ("export", report["export"]["seconds"], ""),
    ]
    rows = "\n".join(f"| {name} | {seconds:.0f} | {each} |" for name, seconds, each in steps)
    numbers = main_job.summary(report)
    results = "\n".join(
        f"| {what} | {numbers[key]:.{digits}f} | {'<=' if lower else '>='} {target:g} | "
        f"{_meets(numbers[key], target, lower)} |"
        for key, (what, target, lower, digits) in TARGETS.items()
    )
    epochs = ", ".join(
        f"{s['stage']} {s['epochs_run']} epochs / {s['final_step']} steps" for s in report["stages"]
    )
    target = MINUTES_TARGETS.get(report["compute_policy"], 12.0)
    verdict = _meets(wall / 60, target, True)
    whole = f"**{wall:.0f}** ({wall / 60:.1f} min; target <= {target:g} min: {verdict})"
    flag = "" if report["compute_policy"] == "mixed_bfloat16" else " --mixed-precision float32"
    return f"""Machine: {machine()}. Compute policy: {report["compute_policy"]}. {load}
`python train.py --model tiny{flag}`: {how}.

Stages: {epochs} (`overfeat_tf.main_job.TINY_RECIPE`). Evaluation:
the first {images} images of the {evaluated["split"]} split ({detection["objects"]}
objects), detection pyramid {detection["options"]["scales"]}, {detection["options"]["max_boxes"]}
boxes merged per image, classification scales {classified["scales"]}.

| step | wall time (s) | per step / image |
|---|---|---|
{rows}
| **the whole job** (process start to the report; pip not included) | {whole} | |

| result | value | target | |
|---|---|---|---|
{results}

Command: `python benchmarks/record_main_job.py --report <run>/report.json --load "..." --write`.
"""


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--report", default="runs/tiny/report.json", help="the job's report.json")
    p.add_argument("--wall-seconds", type=float, default=None, help="measured by `time`")
    p.add_argument("--how", default="fresh clone, fresh venv", help="how the job was run")
    p.add_argument("--load", default="", help="the machine's load during the run, in words")
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = p.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    text = section(report, args.wall_seconds, args.how, args.load)
    print(text)
    if args.write:
        write_section(SECTIONS.get(report["compute_policy"], "Main job, float32"), text)
    return text


if __name__ == "__main__":
    main()

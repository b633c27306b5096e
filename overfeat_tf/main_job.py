"""The main job: one command from nothing to a working detector, evaluated, exported, shown.

    python train.py --model tiny          # = --task all on overfeat_shapes/standard

    dataset (generated the first time)
      -> classify (crops, paper §3.1) -> detect (whole maps + background, §5)
      -> localize (box regressor on the frozen trunk, §4.2)        each: `training.train`
      -> the final detector, with the evaluation's pyramid as its options    model.keras
      -> evaluate: detection mAP@0.5 (merge), localization error (5 guesses), multi-scale
         top-1 error, on the first `max_examples` test images    `detection_eval`, `evaluation`
      -> export for TF Serving                                               `serving`
      -> pictures: detections on a few test images, the training curves      `plots`
      -> a short report (text; JSON with `--format json`)

Every stage is a normal `training.train` run in `<output>/<stage>/` (checkpoints, logs,
backup): rerun the same command after a crash and finished stages are skipped
(`<stage>/stage.json` records a finished stage with its config), the interrupted one
resumes from its last epoch.

Recipes: for `tiny` the stages use `TINY_RECIPE` (He init, SGD momentum 0.9, batch 32,
lr 0.01 with x0.2 drops, a 231 px short side, decoded images cached; 36 / 8 / 8 epochs),
about 16 minutes on a quiet 2-core CPU with bf16 units (BENCHMARKS.md, "Main job: where the
time went"); for `fast` and
`accurate` every stage keeps the paper's recipe (`TrainConfig`'s defaults).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from overfeat_tf.data import tfds_io
from overfeat_tf.evaluation import classification as evaluation
from overfeat_tf.evaluation import detection as detection_eval
from overfeat_tf.models.backbone import load_model
from overfeat_tf.models.detector import OverFeatDetector, class_names
from overfeat_tf.ops.pyramid import default_scales
from overfeat_tf.training import precision
from overfeat_tf.training import run as training
from overfeat_tf.utils import atomic

STAGES = ("classify", "detect", "localize")
WHAT_STAGES_TRAIN = {
    "classify": "the whole net on random crops",
    "detect": "trunk + classifier on whole images, + background class",
    "localize": "the box regressor (trunk and classifier frozen)",
}

# tiny's main-job recipe per stage: TrainConfig fields (the paper's recipe is for ImageNet
# nets). classify: 24 epochs left the net at 19-21 % top-1 error in float32 (and with AMX
# bf16), 36 epochs reach 10.8 % in float32; detect and localize: 8 epochs each instead of 4
# took mAP@0.5 from 0.680 to 0.733 and the localization error from 14.5 to 13.0 % on 200 test
# images (BENCHMARKS.md, "Main job").
_TINY_COMMON: dict[str, Any] = {
    "init": "he_normal",
    "momentum": 0.9,
    "weight_decay": 1e-5,
    "batch_size": 32,
    "learning_rate": 0.01,
    "lr_decay_factor": 0.2,
    "short_side": 231,
    "cache": True,
    "dropout": 0.0,
}
TINY_RECIPE: dict[str, dict[str, Any]] = {
    "classify": {**_TINY_COMMON, "epochs": 36, "lr_decay_epochs": (28, 33, 35)},
    "detect": {**_TINY_COMMON, "epochs": 8, "lr_decay_epochs": (5, 7)},
    "localize": {**_TINY_COMMON, "epochs": 8, "lr_decay_epochs": (5, 7)},
}
# The evaluation's (and the saved detector's) pyramid for the shapes: objects span 0.1-0.8
# of the short side, so larger scales than tiny's default find the small ones
# (BENCHMARKS.md, "Localization and detection").
SHAPES_SCALES = (247, 327, 439, 583, 775, 1031)
# The saved detector's box budget (the most confident dense boxes merged per image), chosen on
# the validation split: 1000 boxes localize better than 2000 or 4000 (fewer low-confidence
# boxes pulled into the merged boxes) at the same mAP, and merge 2-3x faster; 500 lose
# recall (BENCHMARKS.md, "Main job": the box budget).
SHAPES_MAX_BOXES = 1000
# Multi-scale classification of the shapes: six scales around the training scale (chosen
# on the validation split, BENCHMARKS.md "Classification: tiny on overfeat_shapes").
SHAPES_CLASSIFY_SCALES = (231, 247, 263, 279, 295, 311)


@dataclasses.dataclass(frozen=True)
class MainJob:
    """The settings of a main job (`train.py --task all`).

    Attributes:
        model: "tiny", "fast" or "accurate".
        dataset: a TFDS name with the detection schema; None: the model's default
            (`training.DEFAULT_DATASETS`: the generated `overfeat_shapes/standard` for tiny).
        data_dir: TFDS data directory (None: ~/tensorflow_datasets).
        output: the job's directory (None: `runs/<model>`).
        eval_split: the split evaluated ("test"; "validation" where there is no test split).
        max_examples: images of `eval_split` evaluated (None: all).
        pictures: test images drawn with their detections.
        mixed_precision: training compute dtype ("auto": from the hardware).
        seed: seeds every stage.
        verbose: Keras verbosity of the stages ("auto", 0, 1, 2).
        progress: progress bars over the evaluated images (stdout).
        stage_overrides: `TrainConfig` fields to change per stage, e.g.
            `{"classify": {"epochs": 30}}` (Python API; the command line has none).
        scales: the detection pyramid the final detector keeps and is evaluated with
            (None: `SHAPES_SCALES` on overfeat_shapes, else the net's default).
        classify_scales: the multi-scale classification's scales (None:
            `SHAPES_CLASSIFY_SCALES` on overfeat_shapes, else the net's default).
    """

    model: str = "tiny"
    dataset: str | None = None
    data_dir: str | None = None
    output: str | None = None
    eval_split: str = "test"
    max_examples: int | None = 500
    pictures: int = 4
    mixed_precision: str = "auto"
    seed: int = 0
    verbose: str | int = "auto"
    progress: bool = True
    stage_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    scales: tuple[int, ...] | None = None
    classify_scales: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.model not in training.MODELS:
            raise ValueError(f"model must be one of {training.MODELS}, got {self.model!r}.")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"--max-examples must be >= 1, got {self.max_examples}.")
        if self.pictures < 0:
            raise ValueError(f"--pictures must be >= 0, got {self.pictures}.")
        unknown = sorted(set(self.stage_overrides) - set(STAGES))
        if unknown:
            raise ValueError(f"stage_overrides: unknown stages {unknown}; stages are {STAGES}.")

    @property
    def dataset_name(self) -> str:
        """The TFDS name, with its config (the report names what was generated)."""
        if self.dataset:
            return self.dataset
        default = training.DEFAULT_DATASETS[self.model]
        return f"{default}/standard" if default == tfds_io.GENERATED_DATASET else default

    @property
    def output_dir(self) -> Path:
        return Path(self.output or f"runs/{self.model}")

    @property
    def is_shapes(self) -> bool:
        return self.dataset_name.split("/")[0] == tfds_io.GENERATED_DATASET


def stage_config(job: MainJob, stage: str, init_model: str | None) -> training.TrainConfig:
    """The `TrainConfig` of one stage: tiny's `TINY_RECIPE`, else the paper's defaults."""
    recipe = {**(TINY_RECIPE[stage] if job.model == "tiny" else {})}
    recipe.update(job.stage_overrides.get(stage, {}))
    return training.TrainConfig(
        model=job.model,
        task=stage,
        init_model=init_model,
        dataset=job.dataset_name,
        data_dir=job.data_dir,
        output=str(job.output_dir / stage),
        mixed_precision=job.mixed_precision,
        seed=job.seed,
        verbose=job.verbose,
        **recipe,
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare_dataset(job: MainJob) -> dict[str, Any]:
    """Load (generating or preparing it the first time) the dataset; its sizes and time."""
    start = time.monotonic()
    where = tfds_io.default_data_dir(job.data_dir)
    if job.is_shapes and not (where / tfds_io.GENERATED_DATASET).exists():
        _say(f"Generating {job.dataset_name} in {where} (the first time only, a few minutes).")
    builder = tfds_io.load_builder(job.dataset_name, job.data_dir)
    splits = {name: int(info.num_examples) for name, info in builder.info.splits.items()}
    return {"splits": splits, "seconds": time.monotonic() - start}


def _finished_stage(path: Path, config: training.TrainConfig) -> dict[str, Any] | None:
    """The recorded result of a stage run earlier with the same config, else None."""
    record = path / "stage.json"
    if not record.exists() or not (path / "model.keras").exists():
        return None
    done = json.loads(record.read_text())
    same = done.get("config") == json.loads(json.dumps(dataclasses.asdict(config)))
    return done if same else None


def train_stages(job: MainJob) -> list[dict[str, Any]]:
    """classify -> detect -> localize, each from the previous stage's model."""
    results: list[dict[str, Any]] = []
    init_model = None
    for stage in STAGES:
        config = stage_config(job, stage, init_model)
        done = _finished_stage(config.output_dir, config)
        if done is not None:
            _say(f"--- {stage}: already trained ({config.output_dir}/model.keras), skipped")
            result = {**done["result"], "skipped": True}
        else:
            _say(
                f"--- {stage} ({STAGES.index(stage) + 1}/{len(STAGES)}): "
                f"{WHAT_STAGES_TRAIN[stage]}, {config.epochs} epochs"
            )
            result = training.train(config)
            _say(training.summary_line(result))
            atomic.write_json(
                config.output_dir / "stage.json",
                {"config": dataclasses.asdict(config), "result": result},
                default=str,
            )
        results.append({"stage": stage, **result})
        init_model = result["model_path"]
    return results


def final_detector(job: MainJob, model_path: str) -> tuple[OverFeatDetector, Path]:
    """The localize stage's detector with the evaluation's pyramid, saved as
    `<output>/model.keras` (what predict, the export and the notebook load)."""
    detector = load_model(model_path)
    if job.scales is not None:
        detector = detector.with_options(scales=job.scales)
    elif job.is_shapes:
        detector = detector.with_options(scales=SHAPES_SCALES, max_boxes=SHAPES_MAX_BOXES)
    path = job.output_dir / "model.keras"
    return detector, training.save_model(detector, path)


def _eval_split(job: MainJob, splits: dict[str, int]) -> str:
    if job.eval_split in splits:
        return job.eval_split
    if "validation" in splits:
        return "validation"
    raise ValueError(
        f"{job.dataset_name} has no {job.eval_split!r} or 'validation' split to evaluate on "
        f"(it has {sorted(splits)}). Run the stages one by one instead (--task classify, "
        "detect, localize, e.g. with --split train[:90%]) and evaluate with "
        "python -m overfeat_tf.detection_eval (e.g. --split train[90%:])."
    )


class _PictureDrawer:
    """Draws the merge's detections of the first `count` evaluated images (boxes
    normalized yxyx in, `plots.pixel_detections` to pixels) into `folder` (an `on_image`
    hook)."""

    def __init__(self, folder: Path, count: int, names: list[str], split: str) -> None:
        self.folder, self.count, self.names, self.split = folder, count, names, split
        self.paths: list[str] = []
        self.seconds = 0.0

    def __call__(self, index: int, image: Any, out: dict[str, Any]) -> None:
        if index >= self.count:
            return
        from overfeat_tf import plots

        start = time.monotonic()
        pixels = np.asarray(image)
        merged = out["merge"]
        found = {  # the detector's output names
            "detection_boxes": merged["boxes"],
            "detection_scores": merged["scores"],
            "detection_classes": merged["classes"],
            "detection_class_names": [self.names[int(c)] for c in merged["classes"]],
        }
        path = self.folder / f"detections_{index}.png"
        title = f"{self.split} image {index}: the 5 best merged boxes"
        plots.plot_detections(pixels, found, max_boxes=5, title=title, save=path)
        self.paths.append(str(path))
        self.seconds += time.monotonic() - start


def evaluate(job: MainJob, detector: OverFeatDetector, split: str) -> dict[str, Any]:
    """Detection and localization (merge; one dense run per image; the first images drawn
    with their detections), and the multi-scale classification error of the same images."""
    _say(f"--- evaluate: detection and localization on {split}")
    start = time.monotonic()
    drawer = _PictureDrawer(job.output_dir / "pictures", job.pictures, class_names(detector), split)
    found = detection_eval.evaluate_detection(
        detector,
        job.dataset_name,
        split,
        job.data_dir,
        max_examples=job.max_examples,
        progress=job.progress,
        on_image=drawer,
    )
    _say(f"--- evaluate: multi-scale classification on {split}")
    scales = job.classify_scales or (SHAPES_CLASSIFY_SCALES if job.is_shapes else None)
    scales = scales or default_scales(detector.backbone.config)
    every_scale = tuple(range(1, len(scales) + 1))
    classified = evaluation.evaluate(
        detector.backbone,
        job.dataset_name,
        split,
        job.data_dir,
        scales=scales,
        rows=[evaluation.Row(f"{len(scales)} scales, fine stride, flips", "dense", every_scale)],
        max_examples=job.max_examples,
        progress=job.progress,
    )
    return {
        "split": split,
        "detection": found,
        "classification": classified,
        "pictures": drawer.paths,
        "pictures_seconds": drawer.seconds,
        "seconds": time.monotonic() - start,
    }


def export(job: MainJob, detector: OverFeatDetector) -> dict[str, Any]:
    """The TF Serving export of the final detector in `<output>/export/<version>`."""
    from overfeat_tf.export import serving

    _say("--- export for TF Serving")
    start = time.monotonic()
    path = serving.export_model(detector, job.output_dir / "export")
    return {"path": str(path), "seconds": time.monotonic() - start}


def training_curves(job: MainJob) -> str:
    """The stages' training curves in `<output>/pictures/training_curves.png`."""
    from overfeat_tf import plots

    path = job.output_dir / "pictures" / "training_curves.png"
    plots.plot_training_curves([job.output_dir / s for s in STAGES], labels=STAGES, save=path)
    return str(path)


def run(job: MainJob) -> dict[str, Any]:
    """Run the whole job; returns the report (JSON-able), also in `<output>/report.json`."""
    start = time.monotonic()
    policy = precision.resolve_precision(job.mixed_precision)
    _say(
        f"Main job: {job.model} on {job.dataset_name} -> {job.output_dir}/ "
        f"(compute: {policy}; {precision.describe_cpu()})"
    )
    prepared = prepare_dataset(job)
    split = _eval_split(job, prepared["splits"])  # before training: a missing split fails fast
    stages = train_stages(job)
    detector, model_path = final_detector(job, stages[-1]["model_path"])
    evaluated = evaluate(job, detector, split)
    exported = export(job, detector)
    curves = training_curves(job)
    report = {
        "job": dataclasses.asdict(job),
        "dataset": job.dataset_name,
        "compute_policy": policy,
        "dataset_prepare": prepared,
        "stages": stages,
        "model_path": str(model_path),
        "evaluation": evaluated,
        "export": exported,
        "pictures": [*evaluated["pictures"], curves],
        "wall_seconds": time.monotonic() - start,
    }
    atomic.write_json(job.output_dir / "report.json", report, default=str, indent=1)
    return report


def _minutes(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def summary(report: dict[str, Any]) -> dict[str, float | None]:
    """The three numbers of the job: mAP@0.5 (merge), localization error (%, 5 guesses),
    multi-scale top-1 error (%)."""
    detection = report["evaluation"]["detection"]
    rows = report["evaluation"]["classification"]["rows"]
    return {
        "map": detection["merge"]["map"],
        "localization_error": detection["merge"]["localization_error"],
        "top1_error": rows[-1]["top1_error"],
    }


def format_report(report: dict[str, Any]) -> str:
    """The report a person reads: what ran and how long, the three numbers, where things are."""
    evaluated = report["evaluation"]
    detection = evaluated["detection"]
    lines = ["", f"Main job done in {_minutes(report['wall_seconds'])}.", ""]
    lines += ["| step | what | time |", "|---|---|---|"]
    splits = ", ".join(f"{n} {k}" for k, n in report["dataset_prepare"]["splits"].items())
    lines.append(
        f"| dataset | {report['dataset']} ({splits}) | "
        f"{_minutes(report['dataset_prepare']['seconds'])} |"
    )
    for s in report["stages"]:
        took = "done before, skipped" if s.get("skipped") else _minutes(s["wall_seconds"])
        lines.append(
            f"| {s['stage']} | {WHAT_STAGES_TRAIN[s['stage']]}: {s['epochs_run']} epochs, "
            f"{s['final_step']} steps | {took} |"
        )
    lines.append(
        f"| evaluate | {detection['examples']} {evaluated['split']} images (and "
        f"{len(evaluated['pictures'])} drawn) | {_minutes(evaluated['seconds'])} |"
    )
    lines.append(f"| export | TF Serving SavedModel | {_minutes(report['export']['seconds'])} |")
    numbers = summary(report)

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f} %"

    lines += [
        "",
        f"On {detection['examples']} {evaluated['split']} images ({detection['objects']} objects):",
        "",
        "| result | value |",
        "|---|---|",
        "| detection mAP@0.5 (boxes merged, paper §4.3) | "
        + ("n/a" if numbers["map"] is None else f"{numbers['map']:.3f}")
        + " |",
        f"| localization error (5 guesses, IoU >= 0.5) | {pct(numbers['localization_error'])} |",
        f"| classification top-1 error (all scales, fine stride) | {pct(numbers['top1_error'])} |",
        "",
        f"Model:    {report['model_path']}  (keras.models.load_model; "
        f"python -m overfeat_tf.predict IMAGE --model {report['model_path']})",
        f"Export:   {report['export']['path']}  (TF Serving --model_base_path="
        f"{Path(report['export']['path']).parent.resolve()})",
        f"Pictures: {Path(report['pictures'][-1]).parent}/ "
        f"({', '.join(Path(p).name for p in report['pictures'])})",
        f"Report:   {Path(report['model_path']).parent / 'report.json'}",
    ]
    return "\n".join(lines)

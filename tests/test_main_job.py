"""The main job (`python train.py --model tiny`): classify -> detect -> localize -> evaluate
-> export -> pictures -> report, on the generated small shapes set with a few steps."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

import train
from overfeat_tf import main_job
from overfeat_tf.models.detector import OverFeatDetector

FEW_STEPS = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "lr_decay_epochs": ()}


def test_tiny_defaults_to_the_main_job_and_the_others_to_classify():
    assert train.parse_args(["--model", "tiny"]).task == "all"
    assert train.parse_args([]).task == "classify"  # fast: the paper's ImageNet run
    assert train.parse_args(["--model", "tiny", "--task", "detect"]).task == "detect"
    job = train.job_from_args(train.parse_args(["--model", "tiny", "--max-examples", "9"]))
    assert job.dataset_name == "overfeat_shapes/standard" and job.max_examples == 9
    assert str(job.output_dir) == "runs/tiny"


def test_recipe_flags_are_refused_by_the_main_job(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "tiny", "--lr", "0.1", "--epochs", "3"])
    err = capsys.readouterr().err
    assert "--epochs, --lr: recipe flags configure one stage" in err


def test_stage_configs_follow_tiny_recipe_and_overrides():
    job = main_job.MainJob(output="out", stage_overrides={"detect": {"epochs": 7}})
    configs = {s: main_job.stage_config(job, s, "init.keras") for s in main_job.STAGES}
    assert configs["classify"].epochs == main_job.TINY_RECIPE["classify"]["epochs"]
    assert configs["detect"].epochs == 7 and configs["detect"].task == "detect"
    assert configs["localize"].output == "out/localize"
    assert all(c.init == "he_normal" and c.cache for c in configs.values())
    paper = main_job.stage_config(main_job.MainJob(model="fast"), "classify", None)
    assert paper.learning_rate == 0.05 and paper.epochs == 90  # the paper's recipe
    with pytest.raises(ValueError, match="unknown stages"):
        main_job.MainJob(stage_overrides={"finetune": {}})


def test_main_job_end_to_end(shapes_small_dir, tmp_path):
    job = main_job.MainJob(
        dataset="overfeat_shapes/small",
        data_dir=str(shapes_small_dir),
        output=str(tmp_path / "job"),
        max_examples=2,
        pictures=1,
        verbose=0,
        stage_overrides={s: FEW_STEPS for s in main_job.STAGES},
        scales=(247, 279),
        classify_scales=(231, 247),
    )
    report = main_job.run(job)

    # every stage ran from the one before, each a training run of its own
    assert [s["stage"] for s in report["stages"]] == list(main_job.STAGES)
    assert all(s["final_step"] == 2 for s in report["stages"])
    # the final detector: loadable, with the evaluation's pyramid as its options
    model = keras.models.load_model(report["model_path"])
    assert isinstance(model, OverFeatDetector) and model.options["scales"] == [247, 279]
    assert model.backbone.regressor == "class_specific" and model.backbone.background
    # the numbers, from the evaluation of 2 test images
    numbers = main_job.summary(report)
    assert 0.0 <= numbers["map"] <= 1.0
    assert 0.0 <= numbers["localization_error"] <= 100.0
    assert numbers["top1_error"] in (0.0, 50.0, 100.0)  # 2 images
    assert report["evaluation"]["detection"]["examples"] == 2
    # the export, the pictures, the report on disk
    assert (tmp_path / "job/export/1/saved_model.pb").exists()
    for path in report["pictures"]:
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        assert pixels.shape[0] > 200 and pixels.std() > 10, path  # drawn, not blank
    assert [p.rsplit("/", 1)[-1] for p in report["pictures"]] == [
        "detections_0.png",
        "training_curves.png",
    ]
    assert json.loads((tmp_path / "job/report.json").read_text())["model_path"]

    text = main_job.format_report(report)
    for expected in (
        "detection mAP@0.5",
        "localization error (5 guesses",
        "classification top-1 error",
        report["model_path"],
        report["export"]["path"],
        "detections_0.png",
        "training_curves.png",
    ):
        assert expected in text, expected
    assert "{" not in text  # a table, not a JSON dump

    # rerunning the job skips the finished stages (same config), a changed one retrains
    again = main_job.train_stages(job)
    assert all(s["skipped"] for s in again)
    changed = main_job.MainJob(
        **{
            **job.__dict__,
            "stage_overrides": {
                **job.stage_overrides,
                "localize": {**FEW_STEPS, "steps_per_epoch": 1},
            },
        }
    )
    stages = main_job.train_stages(changed)
    assert [s.get("skipped", False) for s in stages] == [True, True, False]
    assert stages[-1]["final_step"] == 1

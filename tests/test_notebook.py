"""`examples/quickstart.ipynb` runs top to bottom (nbclient, a python3 ipykernel) on a tiny
random-weight detector saved with training logs beside it, and shows every figure."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import keras
import nbformat
import numpy as np
from nbclient import NotebookClient
from PIL import Image

from overfeat_tf.models.decoders import NMSDecoder
from overfeat_tf.models.detector import OverFeatDetector
from overfeat_tf.training import callbacks

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
NAMES = ["disk", "ring", "star"]
FIGURE_CELLS = 5  # detections, score maps, box cloud, conv1 filters, curves


def _tiny_run(directory: Path, tiny_net) -> Path:
    """A run directory as train.py leaves it: model.keras and per-epoch logs."""
    net = tiny_net(3, tuple(NAMES))
    # NMS rather than the greedy merge: the notebook does not depend on the decoder, and NMS
    # needs no XLA compile in the kernel (the merge's first one costs 10-20 s on 2 cores)
    detector = OverFeatDetector(
        net, NMSDecoder(max_detections=20), scales=(231,), flips=False, max_boxes=300
    )
    directory.mkdir(parents=True)
    detector.save(directory / "model.keras")
    logger = callbacks.EpochScalars(directory / "logs")
    probe = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    probe.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse")
    logger.set_model(probe)
    for epoch, loss in enumerate([1.5, 0.9, 0.6]):
        logger.on_epoch_end(epoch, {"loss": loss, "val_loss": loss + 0.2})
    logger.on_train_end()
    return directory / "model.keras"


def test_quickstart_runs_top_to_bottom_and_shows_every_figure(tmp_path, monkeypatch, tiny_net):
    model_path = _tiny_run(tmp_path / "run", tiny_net)
    monkeypatch.setenv("OVERFEAT_QUICKSTART_MODEL", str(model_path))  # the parameter cell's
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and "OVERFEAT_QUICKSTART_MODEL" in parameters[0].source

    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "OverFeatDetector with 3 classes: disk, ring, star" in text
    (classify,) = [c for c in notebook.cells if "overfeat_tf.classify(" in c.source]
    lines = "".join(o.get("text", "") for o in classify.outputs).split("\n")
    printed = [line.split() for line in lines if line.strip()]
    assert sorted(name for name, _ in printed) == sorted(NAMES)  # 3 classes: all in the top-5
    scores = [float(score) for _, score in printed]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert "No training logs" not in text

    pictures = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == FIGURE_CELLS
    for picture in pictures:
        with Image.open(io.BytesIO(base64.b64decode(picture))) as im:
            pixels = np.asarray(im.convert("RGB")).astype(np.float64)
        assert min(pixels.shape[:2]) > 100 and pixels.std() > 0

"""Pictures of what the model does (matplotlib, headless): the paper's figures for one image.

    plot_detections       detections drawn on the image, class names and scores
    plot_score_maps       each pyramid level's probability map of the top classes (Fig. 5)
    plot_box_cloud        every window's box before merging beside the merged result (Fig. 7)
    plot_conv1_filters    the first convolution's kernels, each normalized (Fig. 2)
    plot_training_curves  loss / accuracy / ... per epoch from training runs' logs

Every function returns a `matplotlib.figure.Figure` built without pyplot (so nothing is
registered in pyplot's global figure list, no window opens, and the user's backend is left
as it is) on an Agg canvas, which renders anywhere without a display. `save=PATH` also
writes it (PNG, or the format of PATH's suffix) at the figure's `dpi`, atomically, so the
file is exactly `figsize * dpi` pixels. In a notebook the returned figure shows inline.

Boxes are `[ymin, xmin, ymax, xmax]` (yxyx): in PIXELS of the original image in the dicts
of `overfeat_tf.detect` / `localize`, normalized to 0..1 in the detector's output dict (both
are accepted by `plot_detections`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from overfeat_tf.data.image_io import load_image
from overfeat_tf.models.backbone import backbone_of
from overfeat_tf.models.detector import as_detector, class_names
from overfeat_tf.models.inference import LevelOutput, level_probabilities, spatial_max
from overfeat_tf.ops import boxes as box_ops
from overfeat_tf.utils.atomic import atomic_path

PathLike = str | os.PathLike
_CLASS_COLOURS = colormaps["tab10"]
_SKIPPED_TAGS = ("corrupt_records",)  # per-epoch logs that are not learning curves


def new_figure(figsize: tuple[float, float], dpi: float = 100) -> Figure:
    """A Figure on an Agg canvas (no pyplot, no display needed), constrained layout."""
    figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: PathLike) -> Path:
    """Write `figure` to `path` atomically (format from the suffix, PNG without one) at the
    figure's dpi: the image is `figsize * dpi` pixels. Returns `Path(path)`."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=fmt, dpi=figure.dpi)
    return path


def _finish(figure: Figure, save: PathLike | None) -> Figure:
    if save is not None:
        save_figure(figure, save)
    return figure


def _colour(class_id: int) -> Any:
    return _CLASS_COLOURS(int(class_id) % _CLASS_COLOURS.N)


def _image_array(image: Any) -> np.ndarray:
    """Any image `load_image` takes -> uint8 RGB `[H, W, 3]` NumPy."""
    return np.asarray(load_image(image))


# --- detections -------------------------------------------------------------------------------


def pixel_detections(detections: dict[str, Any], image_size: Sequence[int]) -> dict[str, Any]:
    """Detections of one image as `{"boxes": [n, 4] yxyx PIXELS, "scores", "classes",
    "class_names"}` from either `overfeat_tf.detect` / `localize`'s dict (returned as is) or
    the detector's / export's output dict (`detection_boxes` normalized yxyx, one image or a
    batch of one; rows past `num_detections` dropped)."""
    if "boxes" in detections:
        return detections
    if "detection_boxes" not in detections:
        raise ValueError(
            "Expected the dict of overfeat_tf.detect (boxes, scores, class_names) or of a "
            f"detector's predict (detection_boxes, ...), got keys {sorted(detections)}."
        )
    values = {k: np.asarray(v) for k, v in detections.items()}
    if values["detection_boxes"].ndim == 3:
        if values["detection_boxes"].shape[0] != 1:
            raise ValueError("Plot one image at a time: pass out[key][i] for image i.")
        values = {k: v[0] for k, v in values.items()}
    n = int(values.get("num_detections", len(values["detection_boxes"])))
    size = tf.constant([float(image_size[0]), float(image_size[1])])
    boxes = box_ops.denormalize_boxes(tf.constant(values["detection_boxes"][:n]), size)
    names = values.get("detection_class_names", values["detection_classes"])[:n]
    return {
        "boxes": boxes.numpy(),
        "scores": values["detection_scores"][:n],
        "classes": values["detection_classes"][:n],
        "class_names": [v.decode() if isinstance(v, bytes) else str(v) for v in names],
    }


def _draw_detections(ax: Any, image: np.ndarray, found: dict[str, Any], max_boxes: int) -> int:
    """Draw the image and its best `max_boxes` detections (pixel boxes) on `ax`."""
    ax.imshow(image)
    ax.set_axis_off()
    count = min(max_boxes, len(found["scores"]))
    classes = found.get("classes", [0] * count)
    for i in reversed(range(count)):  # the best drawn last, on top
        ymin, xmin, ymax, xmax = (float(v) for v in found["boxes"][i])
        colour = _colour(classes[i])
        ax.add_patch(Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False, lw=2, ec=colour))
        ax.text(
            xmin,
            ymin,
            f"{found['class_names'][i]} {float(found['scores'][i]):.2f}",
            fontsize=8,
            color="white",
            va="bottom",
            bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "edgecolor": "none"},
            clip_on=True,
        )
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    return count


def plot_detections(
    image: Any,
    detections: dict[str, Any],
    *,
    max_boxes: int = 10,
    title: str | None = None,
    figsize: tuple[float, float] = (6.4, 4.8),
    dpi: float = 100,
    save: PathLike | None = None,
) -> Figure:
    """The image with its detections: one box per detection (yxyx), labelled "name score".

    Args:
        image: anything `load_image` reads (path, bytes, PIL image, RGB array 0..255).
        detections: `overfeat_tf.detect(model, image)` (pixel boxes) or the detector's output
            for this image (normalized boxes), see `pixel_detections`.
        max_boxes: draw at most this many, the best first. Scores are the merge's summed
            confidences (not probabilities).
        title: the axes' title (default: how many boxes are drawn).
        figsize, dpi: the figure's size in inches and its dots per inch.
        save: also write the figure to this path (`save_figure`).
    """
    pixels = _image_array(image)
    found = pixel_detections(detections, pixels.shape[:2])
    figure = new_figure(figsize, dpi)
    ax = figure.add_subplot()
    count = _draw_detections(ax, pixels, found, max_boxes)
    ax.set_title(title if title is not None else f"{count} of {len(found['scores'])} detections")
    return _finish(figure, save)


# --- score maps (Fig. 5) ----------------------------------------------------------------------


def _pick_classes(
    classes: Sequence[int | str] | None, top: int, scores: np.ndarray, names: list[str]
) -> list[int]:
    if classes is None:
        return [int(c) for c in np.argsort(-scores, kind="stable")[:top]]
    picked = []
    for c in classes:
        if isinstance(c, str):
            if c not in names:
                raise ValueError(f"Unknown class {c!r}; the model's classes are {names}.")
            picked.append(names.index(c))
        elif not 0 <= int(c) < len(names):
            raise ValueError(f"Class id {c} out of range 0..{len(names) - 1}.")
        else:
            picked.append(int(c))
    return picked


def plot_score_maps(
    model: Any,
    image: Any,
    *,
    classes: Sequence[int | str] | None = None,
    top: int = 2,
    levels: list[LevelOutput] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
    save: PathLike | None = None,
    **overrides: Any,
) -> Figure:
    """Paper Fig. 5: for one image, each pyramid level's map of class probabilities.

    One row per class (the `top` best of the multi-scale classification, or `classes`), one
    column per scale after the image itself: the softmax probability (0..1) of that class
    at every output cell of the level (the unflipped image), cell (0, 0) top left.

    Args:
        model: an `OverFeatDetector` or `OverFeat` network.
        image: anything `load_image` reads.
        classes: class ids or names to show (default: the `top` best).
        levels: `detector.levels(image)` if already computed (else computed here).
        figsize: default 2.6 x 2.4 inches per panel.
        **overrides: detector options (scales=, flips=, stride=).
    """
    detector = as_detector(model, **overrides)
    pixels = _image_array(image)
    if levels is None:
        levels = detector.levels(tf.constant(pixels, tf.float32))
    num = detector.num_classes
    maps = [level_probabilities(level, num).numpy() for level in levels]  # [N, h, w, C] each
    scores = np.mean([spatial_max(tf.constant(m)).numpy().mean(axis=0) for m in maps], axis=0)
    names = class_names(detector)
    picked = _pick_classes(classes, top, scores, names)
    rows, cols = len(picked), len(levels) + 1
    figure = new_figure(figsize or (2.6 * cols, 2.4 * rows + 0.4), dpi)
    axes = figure.subplots(rows, cols, squeeze=False)
    shown = None
    for r, c in enumerate(picked):
        axes[r, 0].imshow(pixels)
        axes[r, 0].set_title(f"{names[c]} ({scores[c]:.2f})", fontsize=9)
        axes[r, 0].set_axis_off()
        for j, (level, prob) in enumerate(zip(levels, maps, strict=True), start=1):
            shown = axes[r, j].imshow(prob[0, ..., c], vmin=0.0, vmax=1.0, cmap="viridis")
            h, w = (int(v) for v in level.level.size.numpy())
            axes[r, j].set_title(f"{h}x{w} px: {prob.shape[1]}x{prob.shape[2]}", fontsize=9)
            axes[r, j].set_xticks([])
            axes[r, j].set_yticks([])
    figure.colorbar(shown, ax=axes[:, 1:], shrink=0.8, label="class probability")
    figure.suptitle("Class probability at every window, per scale (Fig. 5)", fontsize=10)
    return _finish(figure, save)


# --- boxes before and after merging (Fig. 7) --------------------------------------------------


def _box_outlines(boxes: np.ndarray) -> np.ndarray:
    """`[n, 4]` yxyx pixel boxes -> `[n, 5, 2]` closed (x, y) outlines for a LineCollection."""
    y0, x0, y1, x1 = boxes.T
    return np.stack(
        [np.stack(p, axis=-1) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))], 1
    )


def plot_box_cloud(
    model: Any,
    image: Any,
    *,
    max_merged: int = 10,
    figsize: tuple[float, float] = (12.0, 5.0),
    dpi: float = 100,
    save: PathLike | None = None,
    **overrides: Any,
) -> Figure:
    """Paper Fig. 7: every window's box (before merging, `detector.dense_boxes`) beside the
    merged detections (`detector.decode`), both yxyx in pixels of the image.

    Left: each box in its class's colour, more opaque the higher its confidence. Right: the
    best `max_merged` merged boxes with class names and summed scores.

    Args:
        model: an `OverFeatDetector` or `OverFeat` network.
        image: anything `load_image` reads.
        **overrides: detector options (scales=, top_k=, score_threshold=, ...).
    """
    detector = as_detector(model, **overrides)
    pixels = _image_array(image)
    levels = detector.levels(tf.constant(pixels, tf.float32))
    boxes, scores, classes, class_scores = detector.dense_boxes(levels)
    size = tf.constant(pixels.shape[:2], tf.int32)
    decoded = detector.decode(boxes, scores, classes, class_scores, size)
    merged = pixel_detections({k: v.numpy() for k, v in decoded.items()}, pixels.shape[:2])
    dense = boxes.numpy()  # already pixels
    scores, classes = scores.numpy(), classes.numpy()
    figure = new_figure(figsize, dpi)
    left, right = figure.subplots(1, 2)
    left.imshow(pixels)
    left.set_axis_off()
    if len(dense):
        alpha = 0.15 + 0.85 * scores / max(float(scores.max()), 1e-9)
        colours = [(*_colour(c)[:3], a) for c, a in zip(classes, alpha, strict=True)]
        left.add_collection(LineCollection(_box_outlines(dense), colors=colours, linewidths=0.7))
    left.set_xlim(0, pixels.shape[1])
    left.set_ylim(pixels.shape[0], 0)
    left.set_title(f"{len(dense)} boxes before merging ({len(levels)} scales)")
    count = _draw_detections(right, pixels, merged, max_merged)
    right.set_title(f"after merging: best {count} of {len(merged['scores'])}")
    return _finish(figure, save)


# --- conv1 filters (Fig. 2) -------------------------------------------------------------------


def filter_grid(kernel: np.ndarray) -> np.ndarray:
    """`[k, k, 3, F]` kernels -> `[F, k, k, 3]` images, each filter min-max scaled to 0..1
    on its own (a constant filter becomes mid grey)."""
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise ValueError(f"Expected RGB conv kernels [k, k, 3, F], got shape {kernel.shape}.")
    filters = np.moveaxis(kernel, -1, 0)
    low = filters.min(axis=(1, 2, 3), keepdims=True)
    span = filters.max(axis=(1, 2, 3), keepdims=True) - low
    return np.where(span > 0, (filters - low) / np.where(span > 0, span, 1), 0.5)


def plot_conv1_filters(
    model: Any,
    *,
    layer: str = "conv1",
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
    save: PathLike | None = None,
) -> Figure:
    """Paper Fig. 2: the first convolution's kernels as RGB images, each normalized to its
    own range (`filter_grid`), in a near-square grid.

    Args:
        model: an `OverFeatDetector` or `OverFeat` network.
        layer: the convolution to show (its kernel must see 3 channels).
        figsize: default about 0.6 inch per filter (at least 4 x 4 inches).
    """
    net = backbone_of(model)
    images = filter_grid(net.get_layer(layer).kernel.numpy())
    count = len(images)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    side = max(4.0, 0.6 * cols)
    figure = new_figure(figsize or (side, side * rows / cols + 0.4), dpi)
    axes = figure.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < count:
            ax.imshow(images[i], interpolation="nearest")
    k = images.shape[1]
    figure.suptitle(f"{net.name}: {count} {layer} filters, {k}x{k}", fontsize=10)
    return _finish(figure, save)


# --- training curves --------------------------------------------------------------------------


def _event_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("events.out.tfevents.*"))


def read_training_logs(run_dir: PathLike) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The per-epoch scalars of a training run (train.py's `<output>/logs`, TensorBoard event
    files of `keras.callbacks.TensorBoard` or `callbacks.EpochScalars`).

    Args:
        run_dir: the run's output directory, or its `logs` directory.

    Returns:
        `{"train": {name: (epochs, values)}, "validation": {...}}` with the `epoch_` prefix
        dropped (`loss`, `accuracy`, `learning_rate`, ...), epochs 1-based, sorted; a value
        written twice for an epoch (a resumed run) keeps the last one.

    Raises:
        ValueError: no event files under `run_dir`.
    """
    from tensorflow.core.util import event_pb2

    root = Path(run_dir)
    logs = root / "logs" if (root / "logs").is_dir() else root
    result: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for split in ("train", "validation"):
        points: dict[str, dict[int, float]] = {}
        files = _event_files(logs / split)
        for record in tf.data.TFRecordDataset([str(f) for f in files]) if files else []:
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                if not value.tag.startswith("epoch_"):
                    continue
                number = (
                    float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor")
                    else float(value.simple_value)
                )
                points.setdefault(value.tag[len("epoch_") :], {})[int(event.step) + 1] = number
        result[split] = {
            name: (np.array(sorted(p)), np.array([p[e] for e in sorted(p)]))
            for name, p in points.items()
        }
    if not any(result.values()):
        raise ValueError(
            f"No training logs under {root}: expected TensorBoard event files in "
            f"{logs}/train (train.py writes them to <output>/logs)."
        )
    return result


def _metric_names(logs: dict[str, dict[str, Any]]) -> list[str]:
    names = {n for split in logs.values() for n in split if n not in _SKIPPED_TAGS}
    ordered = [n for n in ("loss", "accuracy") if n in names]
    rest = sorted(n for n in names if n not in ordered and n != "learning_rate")
    return ordered + rest + (["learning_rate"] if "learning_rate" in names else [])


def plot_training_curves(
    run_dirs: PathLike | Sequence[PathLike],
    *,
    labels: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
    save: PathLike | None = None,
) -> Figure:
    """Per-epoch curves of one or more training runs (e.g. the classify, detect and localize
    stages): one row per run, one panel per logged metric (loss, accuracy, ..., learning
    rate last, log scale), training solid, validation dashed.

    Args:
        run_dirs: a run's output directory (or its `logs`), or a list of them.
        labels: a name per run (default: each directory's name).
        figsize: default 3.2 x 2.6 inches per panel.
    """
    dirs = [run_dirs] if isinstance(run_dirs, str | os.PathLike) else list(run_dirs)
    if not dirs:
        raise ValueError("Give at least one run directory.")
    labels = list(labels) if labels is not None else [Path(d).name for d in dirs]
    if len(labels) != len(dirs):
        raise ValueError(f"Got {len(labels)} labels for {len(dirs)} run directories.")
    runs = [read_training_logs(d) for d in dirs]
    metrics = [_metric_names(logs) for logs in runs]
    cols = max(len(m) for m in metrics)
    figure = new_figure(figsize or (3.2 * cols, 2.6 * len(runs) + 0.3), dpi)
    axes = figure.subplots(len(runs), cols, squeeze=False)
    for row, (label, logs, names) in enumerate(zip(labels, runs, metrics, strict=True)):
        for col, ax in enumerate(axes[row]):
            if col >= len(names):
                ax.set_axis_off()
                continue
            name = names[col]
            for split, style in (("train", "-"), ("validation", "--")):
                if name in logs[split]:
                    epochs, values = logs[split][name]
                    ax.plot(epochs, values, style, marker="o", markersize=3, label=split)
            if name == "learning_rate":
                ax.set_yscale("log")
            ax.set_title(f"{label}: {name.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _finish(figure, save)

"""Datasets that need no network. Importing this package registers `overfeat_shapes` with TFDS."""

from overfeat_tf.datasets.shapes import (
    SHAPE_CLASSES,
    OverfeatShapes,
    OverfeatShapesConfig,
    render_example,
)

__all__ = ["SHAPE_CLASSES", "OverfeatShapes", "OverfeatShapesConfig", "render_example"]

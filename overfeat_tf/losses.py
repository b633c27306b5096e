"""Losses of the spatial tasks (paper §4.2 localization, §5 detection), registered so a
compiled model saved by `train.py` loads with `import overfeat_tf`.

Targets are those of `overfeat_tf.spatial_training.spatial_targets`: class targets
`[B, h, w]` (class, C = background, -1 = ignored) and box targets `[B, h, w, 5]` (4 edges
in the frame of the cell's window, then the box's class as a float, -1 = no box).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="overfeat_tf")
class MinedDetectionLoss(keras.losses.Loss):
    """Cross-entropy over positives and negatives mined on the fly (paper §5).

    y_true: int `[B, h, w]` (class, C = background, -1 = ignored); y_pred: logits
    `[B, h, w, C + 1]`. Per image: every positive cell, plus n = max(`negative_ratio` *
    positives, `min_negatives`) background cells (as many as there are): the
    `hard_fraction` * n with the highest non-background probability, the rest at random.
    Loss per image = mean cross-entropy over the selected cells.
    """

    def __init__(
        self,
        negative_ratio: float = 3.0,
        min_negatives: int = 8,
        hard_fraction: float = 0.5,
        name: str = "mined_detection_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.negative_ratio = negative_ratio
        self.min_negatives = min_negatives
        self.hard_fraction = hard_fraction

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        logits = tf.cast(y_pred, tf.float32)
        background = tf.shape(logits)[-1] - 1
        batch = tf.shape(logits)[0]
        labels = tf.reshape(tf.cast(y_true, tf.int32), [batch, -1])  # [B, P]
        logits = tf.reshape(logits, [batch, -1, tf.shape(logits)[-1]])  # [B, P, C+1]
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(labels, 0), logits)
        positive = (labels >= 0) & (labels < background)
        negative = tf.equal(labels, background)
        n_pos = tf.reduce_sum(tf.cast(positive, tf.float32), axis=1)  # [B]
        n_neg = tf.maximum(self.negative_ratio * n_pos, float(self.min_negatives))
        n_hard = tf.round(self.hard_fraction * n_neg)
        offending = tf.stop_gradient(1.0 - tf.nn.softmax(logits)[..., -1])  # [B, P]
        hard = negative & (_rank(tf.where(negative, offending, -1.0)) < n_hard[:, None])
        rest = negative & ~hard
        chance = tf.random.uniform(tf.shape(offending))
        easy = rest & (_rank(tf.where(rest, chance, -1.0)) < (n_neg - n_hard)[:, None])
        selected = tf.cast(positive | hard | easy, tf.float32)
        return tf.reduce_sum(ce * selected, axis=1) / tf.maximum(
            tf.reduce_sum(selected, axis=1), 1.0
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "negative_ratio": self.negative_ratio,
                "min_negatives": self.min_negatives,
                "hard_fraction": self.hard_fraction,
            }
        )
        return config


def _rank(values: tf.Tensor) -> tf.Tensor:
    """Rank of each entry within its row, 0 = largest (float32 `[B, P]`)."""
    order = tf.argsort(values, axis=1, direction="DESCENDING", stable=True)
    return tf.cast(tf.argsort(order, axis=1, stable=True), tf.float32)


@keras.saving.register_keras_serializable(package="overfeat_tf")
class WindowBoxLoss(keras.losses.Loss):
    """L2 loss on box edges in the frame of the window that predicts them (paper §4.2).

    y_true: `[B, h, w, 5]` (4 deltas, class as float, -1 = no box); y_pred: `[B, h, w, 4]`
    (class-agnostic) or `[B, h, w, 4C]` (class-specific: the target class's 4 numbers).
    Loss per image = mean over cells with a box of the summed squared error of 4 edges.
    """

    def __init__(self, name: str = "window_box_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        y_pred = tf.cast(y_pred, tf.float32)
        batch = tf.shape(y_pred)[0]
        target = tf.reshape(tf.cast(y_true, tf.float32), [batch, -1, 5])  # [B, P, 5]
        cls = tf.cast(target[..., 4], tf.int32)  # [B, P]
        pred = tf.reshape(y_pred, [batch, tf.shape(target)[1], -1, 4])  # [B, P, 1|C, 4]
        index = tf.where(tf.shape(pred)[2] > 1, tf.maximum(cls, 0), tf.zeros_like(cls))
        pred = tf.gather(pred, index[..., tf.newaxis], axis=2, batch_dims=2)[:, :, 0]
        valid = tf.cast(cls >= 0, tf.float32)
        error = tf.reduce_sum(tf.square(pred - target[..., :4]), axis=-1) * valid
        return tf.reduce_sum(error, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)

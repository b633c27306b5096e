"""Losses of the spatial tasks (paper §4.2 localization, §5 detection), registered so a
compiled model saved by `train.py` loads with `import overfeat_tf`.

Targets are those of `overfeat_tf.data.spatial.spatial_targets`: class targets
`[B, h, w]` (class, C = background, -1 = ignored) and box targets `[B, h, w, 5]` (4 edges
yxyx in the frame of the cell's window, in window units, then the box's class as a float,
-1 = no box).
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


BOX_LOSSES = ("smooth_l1", "l2")
SMOOTH_L1_BETA = 0.1  # window units: ~23 px of the fast / tiny net's 231 px window


@keras.saving.register_keras_serializable(package="overfeat_tf")
class WindowBoxLoss(keras.losses.Loss):
    """Box regression loss on box edges in the frame of the window that predicts them
    (paper §4.2; targets `boxes.encode_boxes`: window units, top-left 0, bottom-right 1).

    y_true: `[B, h, w, 5]` (4 edges, class as float, -1 = no box); y_pred: `[B, h, w, 4]`
    (class-agnostic) or `[B, h, w, 4C]` (class-specific: the target class's 4 numbers).
    Loss per image = mean over cells with a box of the sum over the 4 edges of

    - `kind="smooth_l1"` (default): `0.5 e**2 / beta` for `|e| < beta`, else `|e| - beta / 2`
      (Fast R-CNN's smooth L1 / Huber, e = predicted - true edge in window units). Its
      gradient is bounded by 1 per edge, so a badly wrong prediction on a real photo cannot
      blow up the step; `beta` 0.1 window units is roughly Fast R-CNN's 1 on deltas
      normalized by their ~0.1 standard deviation.
    - `kind="l2"`: `e**2`, the paper's L2 loss (unbounded gradient: diverges on real photos
      at the classification learning rates, see `spatial_training`).
    """

    def __init__(
        self,
        kind: str = "smooth_l1",
        beta: float = SMOOTH_L1_BETA,
        name: str = "window_box_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if kind not in BOX_LOSSES:
            raise ValueError(f"box loss kind must be one of {BOX_LOSSES}, got {kind!r}.")
        if kind == "smooth_l1" and not beta > 0:
            raise ValueError(f"smooth_l1 needs beta > 0 (window units), got {beta}.")
        self.kind = kind
        self.beta = float(beta)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        y_pred = tf.cast(y_pred, tf.float32)
        batch = tf.shape(y_pred)[0]
        target = tf.reshape(tf.cast(y_true, tf.float32), [batch, -1, 5])  # [B, P, 5]
        cls = tf.cast(target[..., 4], tf.int32)  # [B, P]
        pred = tf.reshape(y_pred, [batch, tf.shape(target)[1], -1, 4])  # [B, P, 1|C, 4]
        index = tf.where(tf.shape(pred)[2] > 1, tf.maximum(cls, 0), tf.zeros_like(cls))
        pred = tf.gather(pred, index[..., tf.newaxis], axis=2, batch_dims=2)[:, :, 0]
        valid = cls >= 0
        # Cells without a box may hold anything: zero their error before the loss.
        diff = tf.where(valid[..., tf.newaxis], pred - target[..., :4], 0.0)
        if self.kind == "l2":
            per_edge = tf.square(diff)
        else:
            abs_diff = tf.abs(diff)
            per_edge = tf.where(
                abs_diff < self.beta,
                0.5 * tf.square(abs_diff) / self.beta,
                abs_diff - 0.5 * self.beta,
            )
        valid = tf.cast(valid, tf.float32)
        error = tf.reduce_sum(per_edge, axis=-1) * valid
        return tf.reduce_sum(error, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"kind": self.kind, "beta": self.beta})
        return config

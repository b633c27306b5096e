"""Custom Keras layers: dense offset pooling, the matching interleave, and a matmul conv.

Dense offset pooling (paper §3.3, Fig. 3) applies the last max-pool (size = stride = k) at
every offset (dy, dx) in {0..k-1}^2, runs the classifier on each pooled map, and interleaves
the k*k output maps into one map whose stride is 1/k of the coarse one.

Formulation (chosen by measurement, see BENCHMARKS.md "Dense offset pooling"): a stride-1
max-pool gives every offset's pooled values at once, `tf.space_to_batch` splits the k*k
offsets into the batch dimension, the classifier runs as ordinary VALID convolutions on
that batch (fc6 as one `extract_patches` + matmul: `MatmulConv2D`), and
`tf.batch_to_space` interleaves the results. On this machine that ran the accurate net's
fc6 at 0.96 of the same-run matmul peak (float32), against 0.61 for the alternative
formulation (stride-1 pool + a conv dilated by k) and 0.71 for space_to_batch + conv2d.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from overfeat_tf.architecture.config import check_stride


def _check_pool_size(pool_size: int) -> None:
    if not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size must be a positive int, got {pool_size!r}.")


@keras.saving.register_keras_serializable(package="overfeat_tf")
class DenseOffsetPooling(keras.layers.Layer):
    """Max-pool (size = stride = k) at every offset, stacking the offsets into the batch.

    Paper: Sermanet et al., OverFeat, ICLR 2014, §3.3 and Fig. 3 ("offset max-pooling").

    With `stride="fine"`, pooled map number `(dy * k + dx) * B + b` of the output holds
    `max(x[b, k*i + dy : k*i + dy + k, k*j + dx : k*j + dx + k, c])` at `[i, j, c]`
    (the same layout as `tf.space_to_batch` with block `[k, k]`). Offsets whose pooled map
    is one shorter than the longest are padded at the end (with values that only reach
    outputs `OffsetInterleave` crops away). With `stride="coarse"` only offset (0, 0) is
    pooled: a plain "valid" max-pool.

    Output shape, for an input `[B, H, W, C]`:
        fine:   `[k*k*B, ceil((H - k + 1) / k), ceil((W - k + 1) / k), C]`
        coarse: `[B, floor(H / k), floor(W / k), C]`

    Args:
        pool_size: k, the size and stride of the pool.
        stride: "fine" (all k*k offsets) or "coarse" (offset 0 only).
        window: if set, the classifier's window in pooled cells; inputs whose pooled map is
            smaller fail with a clear `InvalidArgumentError` instead of an empty output.
    """

    def __init__(
        self, pool_size: int, stride: str = "fine", window: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        _check_pool_size(pool_size)
        check_stride(stride)
        self.pool_size = pool_size
        self.stride = stride
        self.window = window

    def call(self, x: tf.Tensor) -> tf.Tensor:
        k = self.pool_size
        if self.window is not None:
            pooled = tf.shape(x)[1:3] // k  # [2]
            tf.debugging.assert_greater_equal(
                tf.reduce_min(pooled),
                self.window,
                message=(
                    f"Input image too small: the pooled last feature map must be at least "
                    f"{self.window}x{self.window} cells (the classifier window); use a larger "
                    "image or a smaller scale."
                ),
            )
        if self.stride == "coarse":
            return tf.nn.max_pool2d(x, k, k, "VALID")
        every = tf.nn.max_pool2d(x, k, 1, "VALID")  # [B, H-k+1, W-k+1, C]: all offsets
        hw = tf.shape(every)[1:3]
        pad = (-hw) % k  # [2]: to a multiple of k
        paddings = tf.stack([tf.zeros_like(pad), pad], axis=1)  # [2, 2]
        return tf.space_to_batch(every, [k, k], paddings)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, c = input_shape
        k = self.pool_size
        if self.stride == "coarse":
            return (b, None if h is None else h // k, None if w is None else w // k, c)

        def side(n: int | None) -> int | None:
            return None if n is None else -(-(n - k + 1) // k)

        return (None if b is None else b * k * k, side(h), side(w), c)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "stride": self.stride, "window": self.window})
        return config


@keras.saving.register_keras_serializable(package="overfeat_tf")
class OffsetInterleave(keras.layers.Layer):
    """Interleave the k*k per-offset output maps into one map of k-times finer stride.

    Paper: Sermanet et al., OverFeat, ICLR 2014, §3.3, Fig. 3 (e).

    Inputs: `[maps, unpooled]` where `maps` is `[k*k*B, Ho, Wo, F]` in the layout of
    `DenseOffsetPooling(stride="fine")` and `unpooled` is the `[B, H, W, C]` map that layer
    pooled (only its shape is read). Output `[b, k*i + dy, k*j + dx, :] =
    maps[(dy*k + dx)*B + b, i, j, :]`, cropped to the cells whose window lies inside the
    unpooled map. With `stride="coarse"` the maps pass through unchanged.

    Output shape: fine: `[B, k*Ho - (H - k + 1) % k, k*Wo - (W - k + 1) % k, F]`, which equals
    `[B, H - k*K + 1, W - k*K + 1, F]` for a classifier window of K pooled cells;
    coarse: `[B, Ho, Wo, F]`.

    Args:
        pool_size: k, the pool size of the matching `DenseOffsetPooling`.
        stride: "fine" or "coarse", as in the matching `DenseOffsetPooling`.
    """

    def __init__(self, pool_size: int, stride: str = "fine", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_pool_size(pool_size)
        check_stride(stride)
        self.pool_size = pool_size
        self.stride = stride

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        maps, unpooled = inputs
        if self.stride == "coarse":
            return maps
        k = self.pool_size
        crop = (-(tf.shape(unpooled)[1:3] - k + 1)) % k  # [2]: the padding pooling added
        crops = tf.stack([tf.zeros_like(crop), crop], axis=1)  # [2, 2]
        return tf.batch_to_space(maps, [k, k], crops)

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (_, ho, wo, f), (b, h, w, _) = input_shapes
        if self.stride == "coarse":
            return (b, ho, wo, f)
        k = self.pool_size

        def side(n_out: int | None, n_in: int | None) -> int | None:
            if n_out is None or n_in is None:
                return None
            return k * n_out - (-(n_in - k + 1)) % k

        return (b, side(ho, h), side(wo, w), f)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "stride": self.stride})
        return config


@keras.saving.register_keras_serializable(package="overfeat_tf")
class MatmulConv2D(keras.layers.Conv2D):
    """A `keras.layers.Conv2D` whose VALID, stride-1 convolution runs as patches + matmul.

    The classifier's fc6 (a 6x6 / 5x5 kernel over 1024 channels) is most of the FLOPs at
    inference. `tf.image.extract_patches` followed by one matmul runs it at nearly the
    matrix-multiply peak on CPUs with AMX/AVX-512, where `tf.nn.conv2d` reaches about 0.7 of
    it (BENCHMARKS.md). Weights, names, config and outputs are exactly those of `Conv2D`
    (kernel `[kH, kW, in, out]`, cross-correlation), so released weights map one to one.
    Other paddings, strides or dilations fall back to `Conv2D`'s own convolution.

    Output shape: `[B, H - kH + 1, W - kW + 1, filters]` (VALID, stride 1).
    """

    def _uses_matmul(self) -> bool:
        return (
            self.padding == "valid"
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.groups == 1
            and self.data_format == "channels_last"
        )

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        if not self._uses_matmul():
            return super().convolution_op(inputs, kernel)
        kh, kw, cin, cout = kernel.shape
        if (kh, kw) == (1, 1):
            patches = inputs  # [B, H, W, C]
        else:
            patches = tf.image.extract_patches(
                inputs, [1, kh, kw, 1], [1, 1, 1, 1], [1, 1, 1, 1], "VALID"
            )  # [B, Ho, Wo, kh*kw*C], ordered (row, col, channel) like the kernel
        out_shape = tf.concat([tf.shape(patches)[:3], [cout]], axis=0)
        flat = tf.reshape(patches, [-1, kh * kw * cin])
        out = tf.matmul(flat, tf.reshape(kernel, [kh * kw * cin, cout]))
        return tf.reshape(out, out_shape)

"""Independent NumPy references for the network's ops (no TensorFlow in here)."""

from __future__ import annotations

import numpy as np


def max_pool(x: np.ndarray, k: int) -> np.ndarray:
    """Valid (floor) max-pool, size = stride = k, of one map [H, W, C]."""
    h, w = x.shape[0] // k, x.shape[1] // k
    x = x[: h * k, : w * k]
    return x.reshape(h, k, w, k, -1).max(axis=(1, 3))


def dense(window: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A conv applied once to a window of its own size: window [K, K, C] -> [F]."""
    return window.reshape(-1) @ kernel.reshape(-1, kernel.shape[-1]) + bias


def conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int = 1) -> np.ndarray:
    """Valid cross-correlation of one map [H, W, C] with kernel [kH, kW, C, F]."""
    kh, kw = kernel.shape[:2]
    ho = (x.shape[0] - kh) // stride + 1
    wo = (x.shape[1] - kw) // stride + 1
    out = np.empty((ho, wo, kernel.shape[-1]), np.float64)
    for i in range(ho):
        for j in range(wo):
            out[i, j] = dense(
                x[i * stride : i * stride + kh, j * stride : j * stride + kw], kernel, bias
            )
    return out


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def classifier(
    pooled_window: np.ndarray, weights: dict[str, tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """fc6 (relu) -> fc7 (relu) -> fc8 on one pooled window [K, K, C] -> logits [classes]."""
    x = relu(dense(pooled_window, *weights["fc6"]))
    x = relu(x @ weights["fc7"][0].reshape(x.shape[0], -1) + weights["fc7"][1])
    return x @ weights["fc8"][0].reshape(x.shape[0], -1) + weights["fc8"][1]

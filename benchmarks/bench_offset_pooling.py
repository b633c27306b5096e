"""Dense offset pooling + classifier: which formulation runs fc6 fastest.

Usage:
    python benchmarks/bench_offset_pooling.py [--write]

Times the accurate net's classifier fc6 (5x5x1024 -> 4096) over every pooling offset at
the largest Table 5 scale (461x569: unpooled layer 5 is 35x44x1024, fine output 21x30), in
four formulations that give the same numbers (checked here), as a fraction of the same-run
matrix-multiply peak, in float32 and bfloat16:

- s2b + MatmulConv2D (kept): stride-1 max-pool, `space_to_batch` of the k*k offsets,
  fc6 as `extract_patches` + one matmul, `batch_to_space` interleave (overfeat_tf.models.layers).
- s2b + conv2d: the same with `tf.nn.conv2d` for fc6.
- dilated conv2d: stride-1 max-pool, fc6 as a conv dilated by k (no interleave needed).
- dilated patches + matmul: stride-1 max-pool, `extract_patches(rates=k)` + one matmul.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import best_time, machine, matmul_peak, write_section
from overfeat_tf.models.layers import DenseOffsetPooling, MatmulConv2D, OffsetInterleave

K, C, F = 5, 1024, 4096  # accurate fc6 window, channels, filters
HU, WU = 35, 44  # accurate layer 5 at 461x569
k = 3


def formulations(kernel: tf.Tensor) -> dict:
    dtype = kernel.dtype.name
    pool, interleave = DenseOffsetPooling(k, dtype=dtype), OffsetInterleave(k, dtype=dtype)
    conv = MatmulConv2D(F, K, dtype=dtype)
    conv.build((None, None, None, C))
    conv.kernel.assign(kernel)
    conv.bias.assign(tf.zeros([F], kernel.dtype))
    flat = tf.reshape(kernel, [K * K * C, F])

    def every(x):
        return tf.nn.max_pool2d(x, k, 1, "VALID")

    return {
        "s2b + MatmulConv2D (kept)": lambda x: interleave([conv(pool(x)), x]),
        "s2b + conv2d": lambda x: interleave([tf.nn.conv2d(pool(x), kernel, 1, "VALID"), x]),
        "dilated conv2d": lambda x: tf.nn.conv2d(every(x), kernel, 1, "VALID", dilations=k),
        "dilated patches + matmul": lambda x: tf.reshape(
            tf.reshape(
                tf.image.extract_patches(
                    every(x), [1, K, K, 1], [1, 1, 1, 1], [1, k, k, 1], "VALID"
                ),
                [-1, K * K * C],
            )
            @ flat,
            [1, HU - k * K + 1, WU - k * K + 1, F],
        ),
    }


def run(dtype: tf.DType) -> dict:
    rng = np.random.default_rng(0)
    x = tf.cast(rng.normal(size=(1, HU, WU, C)), dtype)
    kernel = tf.cast(rng.normal(size=(K, K, C, F)) * 0.02, dtype)
    peak = matmul_peak(dtype)
    flops = 2 * (HU - k * K + 1) * (WU - k * K + 1) * K * K * C * F
    results, reference = {}, None
    for name, fn in formulations(kernel).items():
        fn = tf.function(fn)
        out = tf.cast(fn(x), tf.float32).numpy()
        reference = out if reference is None else reference
        tol = 1e-3 if dtype == tf.float32 else 0.15
        np.testing.assert_allclose(out, reference, rtol=tol, atol=tol * np.abs(reference).max())
        seconds = best_time(lambda fn=fn: fn(x))
        results[name] = {
            "ms": round(1000 * seconds, 1),
            "of_peak": round(flops / seconds / peak, 2),
        }
    return {"dtype": dtype.name, "peak_gflops": round(peak / 1e9, 1), "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    runs = [run(tf.float32), run(tf.bfloat16)]
    print(json.dumps(runs, indent=2))
    if args.write:
        rows = [
            "| formulation | float32 ms | float32 / peak | bfloat16 ms | bfloat16 / peak |",
            "|---|---|---|---|---|",
        ]
        for name in runs[0]["results"]:
            a, b = runs[0]["results"][name], runs[1]["results"][name]
            rows.append(f"| {name} | {a['ms']} | {a['of_peak']} | {b['ms']} | {b['of_peak']} |")
        body = (
            f"Machine: {machine()}.\n"
            "Command: `python benchmarks/bench_offset_pooling.py --write`.\n\n"
            "The accurate net's fc6 (5x5x1024 -> 4096) at every pooling offset of the largest "
            "Table 5 scale (layer 5 35x44, fine map 21x30), as a fraction of the same-run "
            f"matmul peak ({runs[0]['peak_gflops']} GFLOP/s float32, {runs[1]['peak_gflops']} "
            "bfloat16). All four give the same outputs (checked in the run).\n\n" + "\n".join(rows)
        )
        write_section("Dense offset pooling", body)


if __name__ == "__main__":
    main()

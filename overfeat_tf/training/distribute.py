"""How a training run is distributed: its `tf.distribute` strategy, by name, and which process
writes the run's outputs, plus the crop model that trains under every strategy.

Strategies: `default` (one device), `mirrored` (all GPUs, else all logical CPU devices),
`multi_worker` (`MultiWorkerMirroredStrategy`, configured by `TF_CONFIG`; only the chief
writes `<output>`, other workers write under `<output>/workers/<index>/`) and `tpu`
(`TPUStrategy`).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str = "default", tpu: str | None = None) -> tf.distribute.Strategy:
    """A `tf.distribute` strategy by name (see the module docstring)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            raise ValueError(
                f"No TPU found ({error}). Run on a TPU VM or pass --tpu NAME_OR_GRPC_ADDRESS."
            ) from error
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (always, except non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


class CropTrainer(keras.Model):
    """The crop model (same layers and weights) with fixes for multi-worker training.

    Two Keras 3.15 code paths fail under `MultiWorkerMirroredStrategy`:
    - `fit` builds the model from its first batch reduced across replicas with
      `strategy.reduce`, which cannot take the `(images, labels)` structure
      (keras-team/keras#20329). Only shapes matter there, so this model builds from the
      first local replica's batch instead.
    - the per-step logs (scalars) are reduced across workers with
      `strategy.reduce("MEAN", v, axis=0)`, which needs an axis 0; this model returns
      them as `[1]` vectors under that strategy, so the reduce gives their mean.
    """

    def _multi_worker(self) -> bool:
        return isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def _vectors(self, logs: dict[str, Any]) -> dict[str, Any]:
        if not self._multi_worker():
            return logs
        return tf.nest.map_structure(lambda v: tf.reshape(v, [1]), logs)

    def train_step(self, data: Any) -> dict[str, Any]:
        return self._vectors(super().train_step(data))

    def test_step(self, data: Any) -> dict[str, Any]:
        return self._vectors(super().test_step(data))

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = self.distribute_strategy
        if iterator is not None and self._multi_worker():
            for _, _, batches in iterator:
                batch = next(batches)
                break
            data_batch = tf.nest.map_structure(
                lambda v: (
                    strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                batch,
            )
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

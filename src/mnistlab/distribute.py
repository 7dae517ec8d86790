"""Several devices and machines, through TensorFlow's own engine (``tf.distribute``), and mixed precision.

``--strategy mirrored`` copies the model onto every local GPU (or, without GPUs, onto
``--cpu-replicas`` logical CPU devices: the way to test it on a laptop); ``--strategy
multiworker`` trains on several machines, each one process, described by the standard
``TF_CONFIG`` variable. Either way the compiled chunk runs each step with ``strategy.run``: every
replica takes its share of the global batch, the losses are averaged over the *global* batch
(``tf.nn.compute_average_loss``), and the optimizer all-reduces the gradients. Checkpoints hold
one value per variable, so they restore under any number of replicas.

Keras' ``Model.fit`` under MultiWorkerMirroredStrategy has been broken since TF 2.16
(keras-team/keras#20585); mnistlab's custom loop does not use ``fit``.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

from mnistlab.errors import MnistlabError

STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
TF_CONFIG_ENV = "TF_CONFIG"


def make_strategy(name: str, cpu_replicas: int = 2) -> Any:
    """The ``tf.distribute`` strategy called ``name``; must run before TensorFlow's runtime starts
    (logical CPU devices and multi-worker collectives can only be set up then)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multiworker":
        if not os.environ.get(TF_CONFIG_ENV):
            raise MnistlabError(f"--strategy multiworker: ${TF_CONFIG_ENV} is not set; expected the cluster "
                                f"and this worker's task, e.g. {example_tf_config()}")
        try:
            json.loads(os.environ[TF_CONFIG_ENV])
        except json.JSONDecodeError as exc:
            raise MnistlabError(f"${TF_CONFIG_ENV}: not JSON ({exc}); expected e.g. {example_tf_config()}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name != "mirrored":
        raise MnistlabError(f"--strategy {name}: expected one of {', '.join(STRATEGIES)}")
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
    except RuntimeError:  # the runtime is already up: only an identical configuration is fine
        if len(tf.config.list_logical_devices("CPU")) != cpu_replicas:
            raise MnistlabError(f"--strategy mirrored: TensorFlow already started with "
                                f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s); the "
                                f"{cpu_replicas} --cpu-replicas must be set before it starts "
                                f"(run training in a new process)") from None
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def example_tf_config() -> str:
    return ('\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\'')


def is_chief(strategy: Any) -> bool:
    """True for the process that writes the run folder: the only one, or worker 0 / the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Build models under Keras' ``precision`` policy (``mixed_*``: compute in 16 bits, variables in
    float32; the logits layer stays float32), restoring the global policy afterwards."""
    import keras

    if precision not in PRECISIONS:
        raise MnistlabError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)

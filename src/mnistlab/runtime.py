"""The one place that configures TensorFlow: environment before it loads, threads, seeds, determinism.

``prepare_environment`` must run before ``import tensorflow`` (``import mnistlab`` and the CLI call
it first): TensorFlow reads these variables once, when it loads.

- ``TF_ENABLE_ONEDNN_OPTS=1`` unless the user set it. TensorFlow turns its oneDNN kernels on by
  itself only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX; elsewhere (AVX2-only
  laptops and servers) it runs its Eigen kernels, which were measured 1.3x slower per ``fast``
  epoch there (pooling gradients and one-input-channel convolutions most of all). With op
  determinism on, oneDNN gives the same numbers run to run (tested).
- ``TF_CPP_MIN_LOG_LEVEL=2`` unless set: TensorFlow's C++ start-up chatter is noise to a user.
"""

from __future__ import annotations

import os
import sys

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"


def prepare_environment() -> None:
    """Set TensorFlow's start-up variables the user did not set (no effect once TF is loaded)."""
    os.environ.setdefault(ONEDNN_ENV, "1")
    os.environ.setdefault(LOG_LEVEL_ENV, "2")


def onednn_setting() -> str:
    """What decides oneDNN in this process: ``on`` / ``off`` from the variable, or ``TensorFlow's
    choice`` when it is unset (only before ``prepare_environment``)."""
    value = os.environ.get(ONEDNN_ENV)
    if value is None:
        return "TensorFlow's choice"
    return "on" if value.strip().lower() in ("1", "true", "yes", "on") else "off"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


ISA_LIMIT_ENVS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN's cap on the instructions it uses
ISA_LIMITS_WITH_BFLOAT16 = ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT")  # caps that keep bfloat16


def onednn_isa_limit() -> str | None:
    """The instruction-set cap the user gave oneDNN (``ONEDNN_MAX_CPU_ISA=AVX2``), if any."""
    for name in ISA_LIMIT_ENVS:
        value = os.environ.get(name, "").strip().upper()
        if value:
            return value
    return None


def native_bfloat16() -> bool:
    """True on CPUs that compute bfloat16 in hardware (AVX512_BF16 or AMX-BF16), unless oneDNN is
    capped below them (``ONEDNN_MAX_CPU_ISA=AVX2``, ``AVX512_CORE``...): only there does
    mixed_bfloat16 pay (emulated, it has been many times slower than float32)."""
    limit = onednn_isa_limit()
    if limit is not None and not any(key in limit for key in ISA_LIMITS_WITH_BFLOAT16):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``mixed_bfloat16`` where the CPU has native bfloat16 and oneDNN (which computes it)
    is not turned off, else ``float32``; others as given. With ``TF_ENABLE_ONEDNN_OPTS=0`` TensorFlow's
    Eigen kernels emulate bfloat16: ``fast`` took 112 s an epoch against 3.2 s (AMX Xeon)."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if native_bfloat16() and onednn_setting() != "off" else "float32"


def cpu_count() -> int:
    """CPUs this process may run on (``sched_getaffinity`` where the OS has it: Linux)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and probe devices with fd 2 muted: its C++ start-up logs come before
    absl logging is set up, so no environment variable silences them. Python errors still raise."""
    if "tensorflow" in sys.modules:
        return
    prepare_environment()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def configure_tensorflow(seed: int, threads: int | None = None, deterministic: bool = True, inter_op: int = 2) -> None:
    """Seed every RNG, make ops deterministic, and size the thread pools for small machines: ``threads``
    per op (default: every core), ``inter_op`` ops side by side (``--towers`` runs one tower on each).

    XLA has no deterministic max-pool gradient, so ``--jit-compile`` runs skip op determinism
    (seeded, but not bit-reproducible)."""
    prepare_environment()
    import keras
    import tensorflow as tf

    threads = threads or cpu_count()
    try:  # only possible before TensorFlow's runtime starts; later calls keep the first setting
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        pass
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:  # TensorFlow has no public switch back; its config module has one
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()

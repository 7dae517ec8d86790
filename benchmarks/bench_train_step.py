"""Seconds per epoch of the training step, by model, step variant and precision; and accuracy by precision.

``loop`` is ``mnistlab.train``'s own compiled chunk (``train.compile_chunk``: a ``tf.range`` loop of
mini-batches gathered from in-memory tensors); ``loop-xla`` is the same with ``--jit-compile`` (XLA
compiles each step for its batch shape); ``fit`` is Keras' ``Model.fit`` on the same tensors,
``fit-xla`` with ``jit_compile=True``. Each is warmed up (the first pass, tracing included, is
reported apart), then timed over ``--images`` random images, repeated; the median is scaled to one
55,000-image epoch (op determinism off: XLA has no deterministic max-pool gradient). ``--precisions`` builds the model under each Keras policy (``mixed_bfloat16``
pays only with AVX512_BF16 / AMX; ``mixed_float16`` is for GPUs). ``--accuracy`` also trains each
model on real MNIST in each precision (``mnistlab.train``, ``--accuracy-epochs`` epochs; ``fast``
its whole one-epoch recipe) and reports test accuracy beside the seconds.

    python benchmarks/bench_train_step.py                                   # fast: every variant
    python benchmarks/bench_train_step.py --models all --variants loop      # s/epoch of every model
    python benchmarks/bench_train_step.py --models fast,cnn,best --variants loop \\
        --precisions float32,mixed_bfloat16 --accuracy --data-dir /work/shared/datasets
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import describe, load_mnist, machine, table

EPOCH_IMAGES = 55_000  # the course's training split
VARIANTS = ("loop", "loop-xla", "fit", "fit-xla")


def make_runner(name: str, variant: str, precision: str, x, y, batch: int):
    """A zero-argument callable that trains one pass over ``x`` with ``variant``."""
    import keras
    import tensorflow as tf

    from mnistlab import distribute, models, train

    keras.utils.set_random_seed(0)
    n = int(x.shape[0])
    recipe = dataclasses.replace(models.recipe(name), batch_size=batch, epochs=1, steps=0, augment="none",
                                 precision=precision)
    plan = train.Plan(n, batch, n // batch)
    with distribute.dtype_policy(precision):
        model = models.build(name, **models.precision_options(name, precision))
        optimizer = train.make_optimizer(recipe, plan, precision)
    jit = variant.endswith("-xla")
    if variant.startswith("fit"):
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
        return lambda: model.fit(x, y, batch_size=batch, epochs=1, shuffle=True, verbose=0)
    optimizer.build(model.trainable_variables)
    state = train.TrainingState(model, optimizer)
    chunk = train.compile_chunk(state, recipe, seed=0, jit_compile=jit)
    rng = np.random.default_rng(0)

    def one_pass():
        order = tf.constant(rng.permutation(n).astype(np.int32))
        for c in train.plan_chunks(n, batch, 0, n // batch):
            chunk(x, y, order, tf.constant(c.first * batch), tf.constant(c.steps), tf.constant(c.batch), False)
        state.start_epoch()

    return one_pass


def accuracy_runs(names: list[str], precisions: list[str], data_dir: str | None, epochs: int) -> list[list[str]]:
    """Real training in each precision: train seconds per epoch and test accuracy."""
    from mnistlab import runs, train

    ds = load_mnist(data_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        for name in names:
            length = {} if name == "fast" else {"epochs": epochs}  # fast: its own one-epoch recipe
            for precision in precisions:
                out = Path(tmp) / f"{name}-{precision}"
                result = train.train(name, ds, out, train.TrainConfig(progress=False, tensorboard=False, tflite=False),
                                     {**length, "precision": precision}, log=lambda line: None)
                seconds = runs.RunFolder(out).read_timing()["epoch_seconds"]
                rows.append([name, precision, f"{len(seconds)}", f"{statistics.median(seconds):.1f}",
                             f"{result.metrics['test_accuracy']:.2%}"])
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default="fast", help="comma-separated registry models, or 'all'")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--precisions", default="float32", help="comma-separated Keras policies")
    parser.add_argument("--images", type=int, default=5000, help="images per timed pass (random data)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per variant; the median is kept")
    parser.add_argument("--accuracy", action="store_true", help="also train on real MNIST in each precision")
    parser.add_argument("--accuracy-epochs", type=int, default=2, help="epochs of those runs (fast: its recipe)")
    parser.add_argument("--data-dir", default=None, help="folder with MNIST, for --accuracy")
    args = parser.parse_args()

    import tensorflow as tf

    from mnistlab import models
    from mnistlab.runtime import configure_tensorflow

    # Thread pools sized to the cores as training does; op determinism off, as --jit-compile runs have it
    # (XLA has no deterministic max-pool gradient; determinism itself costs nothing measurable here).
    configure_tensorflow(0, deterministic=False)
    names = list(models.MODELS) if args.models == "all" else args.models.split(",")
    precisions = args.precisions.split(",")
    x = tf.random.uniform((args.images, 28, 28, 1))
    y = tf.random.uniform((args.images,), 0, 10, tf.int32)
    info = machine()
    rows = []
    for name in names:
        for precision in precisions:
            for variant in args.variants.split(","):
                run = make_runner(name, variant, precision, x, y, args.batch_size)
                t0 = time.perf_counter()
                run()  # trace + compile + one pass
                first = time.perf_counter() - t0
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
                per_epoch = statistics.median(times) * EPOCH_IMAGES / args.images
                rows.append([name, variant, precision, f"{per_epoch:.1f}",
                             f"{max(first - statistics.median(times), 0):.1f}",
                             " ".join(f"{t * EPOCH_IMAGES / args.images:.1f}" for t in times)])
                print(rows[-1], flush=True)
    print(f"\n{describe(info)}  (batch {args.batch_size}, {args.images} random images per pass)")
    print(table(["model", "variant", "precision", "s per 55k epoch (median)", "first-pass extra s", "all passes"],
                rows))
    if args.accuracy:
        accuracy = accuracy_runs(names, precisions, args.data_dir, args.accuracy_epochs)
        print(f"\n{describe(machine())}  (real MNIST; fast: its one-epoch recipe, others {args.accuracy_epochs} "
              f"epochs of their recipe)")
        print(table(["model", "precision", "epochs", "train s per epoch (median)", "test accuracy"], accuracy))


if __name__ == "__main__":
    main()

"""Seconds per epoch of the training step: the compiled chunk loop vs ``Model.fit``, each with and without XLA.

``loop`` is the shape of ``mnistlab.train``'s step: one ``tf.function`` running a ``tf.range``
loop of mini-batches gathered from in-memory tensors by a permutation. ``fit`` is Keras'
``Model.fit`` on the same tensors. ``-xla`` adds ``jit_compile=True``. Each variant is warmed up
(compile time reported apart), then timed over ``--images`` images, repeated; the median is
scaled to one 55,000-image epoch. Op determinism is left off here: with it on, XLA refuses
MaxPool's gradient ("no deterministic XLA implementation").

    python benchmarks/bench_train_step.py                       # fast: loop, fit, loop-xla, fit-xla
    python benchmarks/bench_train_step.py --models all --variants loop   # s/epoch of every model
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import machine, table

EPOCH_IMAGES = 55_000  # the course's training split
VARIANTS = ("loop", "fit", "loop-xla", "fit-xla")


def make_runner(name: str, variant: str, x, y, batch: int):
    """A zero-argument callable that trains one pass over ``x`` with ``variant``."""
    import keras
    import tensorflow as tf

    from mnistlab import models

    keras.utils.set_random_seed(0)
    model = models.build(name)
    optimizer = keras.optimizers.Adam(1e-3)
    jit = variant.endswith("-xla")
    n = int(x.shape[0])
    if variant.startswith("fit"):
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
        return lambda: model.fit(x, y, batch_size=batch, epochs=1, shuffle=True, verbose=0)
    optimizer.build(model.trainable_variables)
    params = model.trainable_variables

    @tf.function(jit_compile=jit)
    def chunk(order, steps):
        for i in tf.range(steps):
            idx = order[i * batch:(i + 1) * batch]
            xb, yb = tf.gather(x, idx), tf.gather(y, idx)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, model(xb, training=True)))
            optimizer.apply_gradients(zip(tape.gradient(loss, params), params))

    rng = np.random.default_rng(0)
    return lambda: chunk(tf.constant(rng.permutation(n).astype(np.int32)), tf.constant(n // batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default="fast", help="comma-separated registry models, or 'all'")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--images", type=int, default=5000, help="images per timed pass (random data)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per variant; the median is kept")
    args = parser.parse_args()

    import tensorflow as tf

    from mnistlab import models
    from mnistlab.runtime import configure_tensorflow

    configure_tensorflow(0, deterministic=False)  # thread pools sized to the cores, as training does
    names = list(models.MODELS) if args.models == "all" else args.models.split(",")
    x = tf.random.uniform((args.images, 28, 28, 1))
    y = tf.random.uniform((args.images,), 0, 10, tf.int32)
    info = machine()
    rows = []
    for name in names:
        for variant in args.variants.split(","):
            run = make_runner(name, variant, x, y, args.batch_size)
            t0 = time.perf_counter()
            run()  # trace + compile + one pass
            first = time.perf_counter() - t0
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            per_epoch = statistics.median(times) * EPOCH_IMAGES / args.images
            rows.append([name, variant, f"{per_epoch:.1f}", f"{max(first - statistics.median(times), 0):.1f}",
                         " ".join(f"{t * EPOCH_IMAGES / args.images:.1f}" for t in times)])
            print(rows[-1], flush=True)
    print(f"\n{info['date']}  {info['cpu']}  {info['cores']} cores  load {info['load_average']}  TF {info['tensorflow']}"
          f"  (batch {args.batch_size}, {args.images} images per pass)")
    print(table(["model", "variant", "s per 55k epoch (median)", "compile s", "all passes"], rows))


if __name__ == "__main__":
    main()

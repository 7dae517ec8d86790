"""Inference speed and training memory: images/s at batch 1000, one-image latency p50/p99, peak RSS.

Inference is timed in process on a trained run's ``model.keras`` (or, without ``--run``, an
untrained model of the same architecture: same arithmetic, same speed), called the way
``mnistlab.evaluate``/``predict``/``serve`` call it: one compiled graph (``predict.compile_inference``). Peak memory is the maximum
resident set size (``ru_maxrss``) of a child process that loads MNIST and trains ``--train-model``
for ``--train-epochs``, so this process' own memory does not count.

    python benchmarks/bench_inference.py --data-dir /work/shared/datasets
    python benchmarks/bench_inference.py --run runs/fast --models fast --skip-memory
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import machine, table

BATCH = 1000  # images per call for throughput
SINGLE_CALLS = 300  # one-image calls timed for the latency percentiles

MEMORY_CHILD = """
import sys
from mnistlab import data, train
ds = data.load(data.DataConfig(data_dir=sys.argv[1] or None))
train.train(sys.argv[2], ds, sys.argv[3], train.TrainConfig(progress=False, tensorboard=False),
            {"epochs": int(sys.argv[4])}, log=lambda s: None)
"""


def inference(model, images: np.ndarray) -> dict[str, float]:
    """Throughput at ``BATCH`` and single-image latency percentiles (milliseconds), through the
    compiled call that ``mnistlab predict``/``serve``/``evaluate`` use (``predict.compile_inference``)."""
    from mnistlab.inference import compile_inference

    call = compile_inference(model)
    batch = images[:BATCH]
    call(batch)  # warm-up: traces the graph
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - t0)
    one = [images[i:i + 1] for i in range(SINGLE_CALLS)]
    call(one[0])
    latencies = []
    for x in one:
        t0 = time.perf_counter()
        call(x)
        latencies.append((time.perf_counter() - t0) * 1000)
    return {"images_per_s": BATCH / statistics.median(times), "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def peak_training_rss_mb(data_dir: str | None, model: str, epochs: int) -> float:
    """Peak RSS (MiB) of a child process that loads MNIST and trains ``model``."""
    with tempfile.TemporaryDirectory(prefix="bench_mem_") as tmp:
        subprocess.run([sys.executable, "-c", MEMORY_CHILD, data_dir or "", model, f"{tmp}/run", str(epochs)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder with MNIST (else $MNISTLAB_DATA_DIR / cache)")
    parser.add_argument("--models", default="fast,cnn,best", help="comma-separated registry models to time")
    parser.add_argument("--run", default=None, help="time this run's model.keras instead (one model)")
    parser.add_argument("--train-model", default="fast", help="model whose training run's peak memory is measured")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs of that training run")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure training memory")
    args = parser.parse_args()

    from _common import load_mnist

    from mnistlab import models
    from mnistlab.runs import load_model
    from mnistlab.runtime import configure_tensorflow

    configure_tensorflow(0)
    images = load_mnist(args.data_dir).test.images
    info = machine()
    targets = [(args.run, load_model(args.run))] if args.run else [(n, models.build(n)) for n in args.models.split(",")]
    rows = []
    for name, model in targets:
        r = inference(model, images)
        rows.append([name, f"{model.count_params():,}", f"{r['images_per_s']:,.0f}", f"{r['p50_ms']:.2f}",
                     f"{r['p99_ms']:.2f}"])
        print(rows[-1], flush=True)
    print(f"\n{info['date']}  {info['cpu']}  {info['cores']} cores  load {info['load_average']}  TF {info['tensorflow']}")
    print(table(["model", "params", f"images/s (batch {BATCH})", "1-image p50 ms", "1-image p99 ms"], rows))
    if not args.skip_memory:
        mb = peak_training_rss_mb(args.data_dir, args.train_model, args.train_epochs)
        print(f"peak RSS of `mnistlab train {args.train_model} --epochs {args.train_epochs}` (data load + training): "
              f"{mb:,.0f} MiB")


if __name__ == "__main__":
    main()

"""Time ``mnistlab.data.load`` of all 70,000 MNIST images from the four .gz files.

    python benchmarks/bench_load.py --data-dir ../shared/datasets/mnist

Prints each run, then the median against the target (0.5 s); exits 1 when the median misses it.
The first run is reported but is as much a measure of the disk cache as of the loader.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from _common import cpu_model_and_flags
from mnistlab import data

TARGET_S = 0.5  # median wall time of one load, seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options; every help text states its default."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get(data.DATA_DIR_ENV),
                   help=f"folder with the four MNIST .gz files, or a root with mnist/ "
                        f"(default: ${data.DATA_DIR_ENV}, now {os.environ.get(data.DATA_DIR_ENV)})")
    p.add_argument("--dataset", default="mnist", choices=tuple(data.DATASETS), help="data set (default: mnist)")
    p.add_argument("--runs", type=int, default=7, help="timed loads (default: 7)")
    p.add_argument("--flatten", action="store_true", help="load (N, 784) instead of (N, 28, 28, 1) (default: False)")
    return p.parse_args(argv)


def time_load(config: data.DataConfig, flatten: bool) -> tuple[float, float, int]:
    """Wall seconds and CPU seconds (all threads) of one ``data.load(config)``, and the number
    of images it returned. CPU time shows how much of a slow wall time was other processes."""
    start, start_cpu = time.perf_counter(), time.process_time()
    ds = data.load(config, flatten=flatten)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return seconds, cpu, len(ds.train) + len(ds.validation) + len(ds.test)


def load_average() -> str:
    """The 1-minute load average, or '?' where the OS has none."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 when the median meets the target, else 1."""
    args = parse_args(argv)
    if not args.data_dir:
        print(f"error: give --data-dir or set ${data.DATA_DIR_ENV}", file=sys.stderr)
        return 2
    config = data.DataConfig(dataset=args.dataset, data_dir=args.data_dir, download=False)
    cpu, simd = cpu_model_and_flags()  # no TensorFlow here: loading the data does not need it
    print(f"{cpu} ({' '.join(simd) or 'no AVX2'}), {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load of {args.dataset} from {args.data_dir}, machine load average {load_average()}")
    times, cpus = [], []
    for run in range(1, args.runs + 1):
        seconds, cpu, n = time_load(config, args.flatten)
        times.append(seconds)
        cpus.append(cpu)
        print(f"run {run}: {seconds:.3f} s wall, {cpu:.3f} s CPU ({n} images)")
    median = statistics.median(times)
    verdict = "ok" if median <= TARGET_S else "MISSED"
    print(f"median {median:.3f} s over {args.runs} runs (min {min(times):.3f}, max {max(times):.3f}; "
          f"median CPU {statistics.median(cpus):.3f} s); target <= {TARGET_S} s: {verdict}; "
          f"load average now {load_average()}")
    return 0 if median <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())

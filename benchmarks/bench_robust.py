"""Accuracy on test sets unlike MNIST's, for one or more runs: the shift benchmark's table.

Every set of ``mnistlab.shifts`` (stroke width, resolution and blur, rotation, slant, aspect,
framing, the skeleton redrawn with a round pen, photos through ``preprocess``, and the held-out
fonts and other writers) is built from ``--seed`` (or read from ``<cache>/shifts``), then each run
is scored on it. The first build takes a few minutes on two cores (the photos and re-framing go
through ``preprocess`` one picture at a time); later runs only predict.

    python benchmarks/bench_robust.py runs/own/cnn runs/own/best runs/own/fast --data-dir /work/shared/datasets
    python benchmarks/bench_robust.py /tmp/robust-fast --n 500 --levels moderate      # a quick look
    python benchmarks/bench_robust.py RUN --no-held-out                               # what tuning may see

Prints the machine, the seconds spent building and predicting, and the Markdown table (held-out
sets last, marked); ``--json FILE`` keeps every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from _common import describe, machine

from mnistlab import fileio, robustness, runs, shifts
from mnistlab.data import DataConfig


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or model files")
    p.add_argument("--n", type=int, default=robustness.RobustConfig.n, help="images per set")
    p.add_argument("--seed", type=int, default=0, help="seed of every set")
    p.add_argument("--levels", default="", help="comma-separated levels to keep (moderate, severe, external); all if empty")
    p.add_argument("--sets", default="", help="comma-separated set names; all if empty")
    p.add_argument("--no-held-out", action="store_true", help="leave out fonts-* and other-writers")
    p.add_argument("--no-cache", action="store_true", help="build every set afresh, keep nothing")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST (else $MNISTLAB_DATA_DIR, the cache, a download)")
    p.add_argument("--json", default=None, help="write the rows and the machine here")
    return p.parse_args()


def main() -> None:
    args = parse()
    config = robustness.RobustConfig(
        n=args.n, seed=args.seed, held_out=not args.no_held_out, cache=not args.no_cache,
        sets=tuple(s for s in args.sets.split(",") if s), levels=tuple(s for s in args.levels.split(",") if s))
    data_config = DataConfig(data_dir=args.data_dir)
    info = machine()
    predictors = {path: runs.load_predictor(path) for path in args.runs}
    specs = shifts.select(config.sets, config.levels, config.held_out)
    start = time.perf_counter()
    sets = robustness.load_sets(specs, config, data_config)
    built = time.perf_counter() - start
    results, seconds = {}, {}
    for path, predictor in predictors.items():
        start = time.perf_counter()
        results[path] = robustness.evaluate_robustness(predictor, sets)
        seconds[path] = time.perf_counter() - start
    print(describe(info))
    images = sum(len(s.labels) for _, s in sets if not isinstance(s, shifts.Unavailable))
    print(f"{len(sets)} sets, {images:,} images, seed {config.seed}: built or read in {built:.1f} s; "
          + ", ".join(f"{p} scored in {s:.1f} s" for p, s in seconds.items()))
    print(f"MNIST-made sets use {config.n:,} of the 10,000 test digits (the same ones for every set)\n")
    print(robustness.table(results))
    if args.json:
        fileio.write_json(args.json, {"machine": info, "config": dataclasses.asdict(config), "build_seconds": built,
                                      "score_seconds": seconds,
                                      "results": {p: [dataclasses.asdict(r) for r in rows] for p, rows in results.items()}})


if __name__ == "__main__":
    main()

"""Reproduce the course and check the bars: `python benchmarks/bench_zoo.py [--max-epochs N]`.

Trains every course model at the course's settings (`mnistlab zoo`), then the models whose
mnistlab defaults have targets (`mnistlab zoo --own`), prints both Markdown tables and checks:
course settings reach the course's figure within 0.3 points; own defaults reach
softmax >= 92.5 %, mlp >= 98.0 %, cnn >= 99.2 %. Exits 1 if any bar is missed. Runs already in
--out are reused (delete the folder to re-measure). cnn-deep's course run (30,000 steps, about 55
epochs) takes about an hour on 2 cores: `--cap cnn-deep=10` cuts it (the table marks it capped).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnistlab import data, zoo

OWN_TARGETS = {"softmax": 0.925, "mlp": 0.980, "cnn": 0.992}
COURSE_TOLERANCE = 0.003  # "within 0.3 points" of the course's figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-zoo", help="folder for the runs (default: runs/bench-zoo)")
    parser.add_argument("--cap", action="append", default=[], metavar="MODEL=EPOCHS",
                        help="cap one model's course run, e.g. cnn-deep=10 (default: no caps)")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: the usual search order)")
    args = parser.parse_args()
    caps = {m: int(e) for m, e in (c.split("=") for c in args.cap)}
    config = data.DataConfig(data_dir=args.data_dir, download=args.data_dir is None)
    dataset = data.load(config)
    course_dir, own_dir = Path(args.out) / "course", Path(args.out) / "own"
    for name in zoo.COURSE_MODELS:
        if not (course_dir / name / "zoo.json").exists():
            zoo.run_zoo(dataset, course_dir, (name,), caps.get(name), data_config=config)
    for name in OWN_TARGETS:
        if not (own_dir / name / "zoo.json").exists():
            zoo.run_zoo(dataset, own_dir, (name,), data_config=config, course=False)
    failures = []
    course_rows, own_rows = zoo.collect_rows(course_dir), zoo.collect_rows(own_dir)
    for row in course_rows:
        if row["course_accuracy"] and row["test_accuracy"] < row["course_accuracy"] - COURSE_TOLERANCE:
            failures.append(f"{row['model']} (course settings): {row['test_accuracy']:.2%} < {row['course_accuracy']:.1%} - 0.3")
    for row in own_rows:
        if row["test_accuracy"] < OWN_TARGETS[row["model"]]:
            failures.append(f"{row['model']} (mnistlab defaults): {row['test_accuracy']:.2%} < {OWN_TARGETS[row['model']]:.1%}")
    print("Course settings:\n" + zoo.results_markdown(course_rows))
    print("mnistlab's own defaults:\n" + zoo.results_markdown(own_rows))
    print("\n".join(f"FAIL {f}" for f in failures) or "all bars met")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

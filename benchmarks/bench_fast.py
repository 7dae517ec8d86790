"""Time to 99.0% test accuracy: mnistlab's ``fast`` recipe against two well-known recipes.

All three are trained by mnistlab's own pipeline (``mnistlab.train.train``) in one process, so
the ratio is measured on one machine at one time. Time-to-99% is the training seconds (as
``history.csv`` records them: the compiled steps only) summed up to the first epoch end where
*test* accuracy reaches 99.0%; the test split is evaluated at each epoch end, untimed, by
passing it as the validation split. The baselines stop there; ``fast`` runs its whole recipe.

    python benchmarks/bench_fast.py --data-dir /work/shared/datasets            # everything
    python benchmarks/bench_fast.py --seeds 0 --skip-baselines                   # fast only
    python benchmarks/bench_fast.py --ablations --skip-baselines --seeds 0       # what each choice buys

``--ablations`` also trains ``fast`` with one design choice changed at a time (seed 0), so each
choice's effect on seconds and accuracy is measured, not assumed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import load_mnist, machine, table

TARGET = 0.99  # test accuracy


def keras_io_convnet():
    """keras-io examples/vision/mnist_convnet.py, with a linear last layer (loss from logits)."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dropout(0.5), layers.Dense(10),
    ])


def pytorch_examples_net():
    """pytorch/examples mnist/main.py ``Net``: conv32 -> conv64 -> pool -> fc128 -> fc10, dropout."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, activation="relu"), layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(2), layers.Dropout(0.25), layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dropout(0.5), layers.Dense(10),
    ])


def register_baselines() -> None:
    """Add the two recipes to this process's registry (not to mnistlab's)."""
    from mnistlab import models

    keras_io = models.Recipe("adam", 1e-3, 128, epochs=15)  # Adam defaults, batch 128, 15 epochs
    pytorch = models.Recipe("adadelta", 1.0, 64, epochs=14, schedule="step", gamma=0.7)  # StepLR(1, 0.7)
    models.MODELS["keras-io"] = models.ModelSpec(keras_io_convnet, {}, keras_io, keras_io, None, "keras-io")
    models.MODELS["pytorch-examples"] = models.ModelSpec(pytorch_examples_net, {}, pytorch, pytorch, None,
                                                         "pytorch/examples")


# One change to `fast` at a time: (label, architecture overrides, recipe overrides).
ABLATIONS = (
    ("peak learning rate 3e-3 instead of 0.03", {}, {"learning_rate": 3e-3}),
    ("peak learning rate 0.01", {}, {"learning_rate": 1e-2}),
    ("constant learning rate 1e-3, no one-cycle", {}, {"schedule": "constant", "learning_rate": 1e-3}),
    ("no label smoothing", {}, {"label_smoothing": 0.0}),
    ("batch 256", {}, {"batch_size": 256}),
    ("batch 64", {}, {"batch_size": 64}),
    ("filters 24/48/96", {"filters": (24, 48, 96)}, {}),
    ("filters 12/24/48", {"filters": (12, 24, 48)}, {}),
    ("batch norm after each conv", {"batchnorm": True}, {}),
    ("stride-2 convs instead of pooling", {"pooling": "stride"}, {}),
    ("2 epochs", {}, {"epochs": 2}),
)


class ReachedTarget(Exception):
    """Raised from the per-epoch log hook to stop a baseline once it reaches the target."""


def time_to_target(name: str, ds, seed: int, out: Path, stop_at_target: bool, max_epochs: int | None,
                   arch: dict | None = None, recipe: dict | None = None, label: str | None = None) -> dict:
    """Train ``name`` (with ``arch`` / ``recipe`` overrides); return per-epoch seconds and test
    accuracy, and the time to ``TARGET``."""
    from mnistlab import runs, train

    folder = runs.RunFolder(out)

    def hook(line: str) -> None:
        if stop_at_target and line.startswith("Train Epoch:"):
            rows = folder.read_history()
            if rows and rows[-1]["val_accuracy"] >= TARGET:
                raise ReachedTarget

    recipe = {**({"epochs": max_epochs} if max_epochs else {}), **(recipe or {})}
    config = train.TrainConfig(seed=seed, tensorboard=False, progress=False)
    try:
        train.train(name, ds, out, config, recipe, arch, log=hook)
    except ReachedTarget:
        pass
    rows = folder.read_history()
    seconds = folder.read_timing()["epoch_seconds"]
    elapsed, reached = 0.0, None
    for row, s in zip(rows, seconds):
        elapsed += s
        if reached is None and row["val_accuracy"] >= TARGET:
            reached = {"epoch": row["epoch"], "seconds": round(elapsed, 2)}
    return {"model": label or name, "seed": seed, "epoch_seconds": [round(s, 2) for s in seconds],
            "test_accuracy": [round(r["val_accuracy"], 4) for r in rows], "reached": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder with MNIST (else $MNISTLAB_DATA_DIR / cache)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds for `fast`")
    parser.add_argument("--skip-baselines", action="store_true", help="time only `fast`")
    parser.add_argument("--baseline-max-epochs", type=int, default=None,
                        help="cap each baseline at this many epochs (default: its recipe's length)")
    parser.add_argument("--ablations", action="store_true",
                        help="also train `fast` with one design choice changed at a time (first seed)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    ds = load_mnist(args.data_dir)
    ds = dataclasses.replace(ds, validation=ds.test)  # per-epoch "validation" = test, untimed
    info = machine()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_fast_") as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            runs.append(time_to_target("fast", ds, seed, Path(tmp) / f"fast-{seed}", False, None))
            print(json.dumps(runs[-1]), flush=True)
        if args.ablations:
            seed = int(args.seeds.split(",")[0])
            for i, (label, arch, recipe) in enumerate(ABLATIONS):
                runs.append(time_to_target("fast", ds, seed, Path(tmp) / f"ablation-{i}", False, None,
                                           arch, recipe, f"fast, {label}"))
                print(json.dumps(runs[-1]), flush=True)
        if not args.skip_baselines:
            register_baselines()
            for name in ("keras-io", "pytorch-examples"):
                runs.append(time_to_target(name, ds, 0, Path(tmp) / name, True, args.baseline_max_epochs))
                print(json.dumps(runs[-1]), flush=True)
    info["load_average_end"] = [round(x, 2) for x in __import__("os").getloadavg()]

    rows = [[r["model"], r["seed"], " ".join(f"{a:.2%}" for a in r["test_accuracy"]),
             " ".join(f"{s:.1f}" for s in r["epoch_seconds"]),
             f"{r['reached']['seconds']:.1f} s (epoch {r['reached']['epoch']})" if r["reached"] else "not reached"]
            for r in runs]
    print(f"\n{info['date']}  {info['cpu']}  {info['cores']} cores  load {info['load_average']} -> "
          f"{info['load_average_end']}  TF {info['tensorflow']}")
    print(table(["recipe", "seed", "test accuracy per epoch", "train s per epoch", "time to 99.0%"], rows))
    fast = [r["reached"]["seconds"] for r in runs if r["model"] == "fast" and r["reached"]]
    finals = [f"{r['test_accuracy'][-1]:.2%}" for r in runs if r["model"] == "fast"]
    if fast:
        print(f"fast: median time to 99.0% {statistics.median(fast):.1f} s over {len(fast)} of "
              f"{len(finals)} seeds; final test accuracy {', '.join(finals)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"(benchmark wall time {time.perf_counter() - start:.0f} s)")

"""Training: a compiled custom loop with per-epoch validation, checkpoints, TensorBoard and resume.

The step is a ``tf.function`` that runs a whole chunk of mini-batches in one graph call
(``tf.range`` loop over a per-epoch permutation, images gathered from tensors held in memory),
so there is no per-step Python overhead; ``benchmarks/bench_train_step.py`` compares it with
``Model.fit`` and XLA. A run folder holds everything needed to inspect, evaluate or resume it.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnistlab import fileio, models
from mnistlab.config import from_json, option
from mnistlab.data import DataConfig, Dataset
from mnistlab.errors import MnistlabError
from mnistlab.models import Recipe

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop", "adadelta")
SCHEDULES = ("constant", "cosine", "onecycle", "step")
HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "learning_rate")
CHUNK_STEPS = 50  # mini-batches per compiled call: amortises Python overhead, keeps Ctrl-C responsive


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how; recipe fields left at None come from the model's registry entry."""

    course: bool = option(False, "use the course's training settings instead of mnistlab's")
    seed: int = option(0, "random seed: same seed, same weights and numbers on the same machine")
    optimizer: str | None = option(None, "optimizer", choices=OPTIMIZERS)
    learning_rate: float | None = option(None, "peak learning rate")
    batch_size: int | None = option(None, "images per step")
    epochs: int | None = option(None, "passes over the training split")
    steps: int | None = option(None, "optimizer steps (the course's iterations); overrides --epochs")
    schedule: str | None = option(None, "learning-rate schedule", choices=SCHEDULES)
    gamma: float | None = option(None, "step schedule: learning-rate factor per epoch (StepLR)")
    weight_decay: float | None = option(None, "decoupled weight decay (adamw)")
    label_smoothing: float | None = option(None, "label smoothing in [0, 1)")
    augment: bool | None = option(None, "random shifts/rotations/scaling/elastic distortion on the fly")
    clean_epochs: int | None = option(None, "with --augment: train the last N epochs on unaugmented images")
    jit_compile: bool = option(False, "compile the step with XLA (slower on CPU; not bit-reproducible)")
    tensorboard: bool = option(True, "write TensorBoard logs (scalars, weight histograms, graph)")
    progress: bool = option(True, "show a progress bar per epoch (only on a terminal)")
    keep_checkpoints: int = option(2, "per-epoch checkpoints to keep (the best one is kept apart)")


@dataclass(frozen=True)
class ArchConfig:
    """Architecture overrides (the course's exercises); None keeps the model's own value."""

    hidden: tuple[int, ...] | None = option(None, "MLP hidden layer widths, e.g. 625,625 ('' = none)")
    filters: tuple[int, ...] | None = option(None, "conv filters per layer, e.g. 16,36 (more = extra conv layers)")
    convs: tuple[int, ...] | None = option(None, "convolutions per stage (one filters entry), e.g. 2 or 1,2,2")
    kernel_size: int | None = option(None, "conv kernel size")
    fc_units: tuple[int, ...] | None = option(None, "CNN fully-connected widths, e.g. 128 or 1024,256")
    activation: str | None = option(None, "activation", choices=models.ACTIVATIONS)
    pooling: str | None = option(None, "downsampling: max, avg, stride (stride-2 conv) or none",
                                 choices=models.POOLINGS)
    act_after_pool: bool | None = option(None, "apply the activation after pooling (S4's order)")
    dropout: float | None = option(None, "dropout rate after hidden/fc layers (1 - keep_prob)")
    input_dropout: float | None = option(None, "MLP dropout rate on the input")
    conv_dropout: float | None = option(None, "dropout rate after each conv block")
    batchnorm: bool | None = option(None, "batch normalisation after each convolution")
    init: str | None = option(None, "weight initialisation (random_normal = TF1's N(0,1), shows why it hurts)",
                              choices=models.INITS)

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    metrics: dict[str, Any]


class TrainingDiverged(MnistlabError):
    """The loss became NaN or infinite."""


def resolve_recipe(model: str, config: TrainConfig) -> Recipe:
    """The model's course or own recipe with the user's overrides applied and checked."""
    base = models.recipe(model, course=config.course)
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(Recipe)
             if getattr(config, f.name, None) is not None}
    if given.get("epochs") and "steps" not in given:
        given["steps"] = 0  # an explicit --epochs replaces the recipe's step count
    recipe = dataclasses.replace(base, **given)
    checks = [
        (recipe.learning_rate > 0, f"--learning-rate {recipe.learning_rate}: expected a positive number"),
        (recipe.batch_size >= 1, f"--batch-size {recipe.batch_size}: expected a positive integer"),
        (recipe.epochs >= 1 or recipe.steps >= 1, "--epochs/--steps: expected a positive number of epochs or steps"),
        (recipe.steps >= 0 and recipe.epochs >= 0, "--epochs/--steps: expected non-negative values"),
        (0 <= recipe.label_smoothing < 1, f"--label-smoothing {recipe.label_smoothing}: expected 0 <= value < 1"),
        (recipe.weight_decay >= 0, f"--weight-decay {recipe.weight_decay}: expected >= 0"),
        (recipe.clean_epochs >= 0, f"--clean-epochs {recipe.clean_epochs}: expected >= 0"),
        (recipe.optimizer in OPTIMIZERS, f"--optimizer {recipe.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}"),
        (recipe.schedule in SCHEDULES, f"--schedule {recipe.schedule!r}: expected one of {', '.join(SCHEDULES)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise MnistlabError(message)
    return recipe


def learning_rate_at(step: Any, recipe: Recipe, total_steps: int, steps_per_epoch: int) -> Any:
    """Learning rate at optimizer step ``step`` (a number or a scalar tensor): a pure function.

    cosine: peak -> 0 over the run; onecycle: linear warm-up from peak/25 over the first 20%,
    then linear down to 0; step: peak * gamma**epoch; constant: peak.
    """
    import tensorflow as tf

    step = tf.cast(step, tf.float32)
    peak = recipe.learning_rate
    t = tf.minimum(step / max(total_steps, 1), 1.0)
    if recipe.schedule == "cosine":
        return peak * 0.5 * (1.0 + tf.cos(math.pi * t))
    if recipe.schedule == "onecycle":
        warm = 0.2
        up = peak / 25 + (peak - peak / 25) * t / warm
        down = peak * (1.0 - t) / (1.0 - warm)
        return tf.where(t < warm, up, down)
    if recipe.schedule == "step":
        return peak * tf.pow(recipe.gamma, tf.floor(step / steps_per_epoch))
    return peak * tf.ones_like(t)


def make_optimizer(recipe: Recipe, total_steps: int, steps_per_epoch: int):
    """Keras optimizer for ``recipe`` with its schedule attached."""
    import keras

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return learning_rate_at(step, recipe, total_steps, steps_per_epoch)

        def get_config(self):
            return {}

    lr = Schedule() if recipe.schedule != "constant" else recipe.learning_rate
    name = recipe.optimizer
    if name == "sgd":
        return keras.optimizers.SGD(lr)
    if name == "momentum":
        return keras.optimizers.SGD(lr, momentum=recipe.rho, nesterov=True)
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=recipe.weight_decay)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr, rho=recipe.rho)
    return keras.optimizers.Adadelta(lr, rho=0.9, epsilon=1e-6)  # pytorch/examples' Adadelta


def configure_tensorflow(seed: int, threads: int | None = None, deterministic: bool = True) -> None:
    """Seed every RNG, make ops deterministic, and size the thread pools for small machines.

    XLA has no deterministic max-pool gradient, so ``--jit-compile`` runs skip op determinism
    (seeded, but not bit-reproducible)."""
    import keras
    import tensorflow as tf

    threads = threads or len(os.sched_getaffinity(0))
    try:  # only possible before TensorFlow's runtime starts; later calls keep the first setting
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    except RuntimeError:
        pass
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    lines = [",".join(HISTORY_FIELDS)]
    lines += [",".join(f"{row[k]:.6g}" if k != "epoch" else str(int(row[k])) for k in HISTORY_FIELDS) for row in rows]
    fileio.write_text(path, "\n".join(lines) + "\n")


def read_history(path: Path) -> list[dict[str, float]]:
    """Rows of ``history.csv`` as dicts of floats (``epoch`` as int)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    from mnistlab import __version__
    return {"mnistlab": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def run_config(model: str, arch: dict[str, Any], recipe: Recipe, config: TrainConfig,
               data_config: DataConfig) -> dict[str, Any]:
    """The resolved configuration saved as ``config.json`` in the run folder."""
    return {"model": model, "arch": {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()},
            "recipe": dataclasses.asdict(recipe), "train": dataclasses.asdict(config),
            "data": dataclasses.asdict(data_config), "versions": _versions()}


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), transient=True,
                    disable=not (enabled and sys.stderr.isatty()))


def train(model_name: str, data: Dataset, out: str | os.PathLike, config: TrainConfig = TrainConfig(),
          arch: ArchConfig = ArchConfig(), data_config: DataConfig = DataConfig(), resume: bool = False,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train ``model_name`` on ``data.train``, validating each epoch on ``data.validation``.

    Writes into ``out``: config.json, history.csv, checkpoints/ (last ``keep_checkpoints`` epochs
    plus ``best``), tensorboard/, model.keras (the final model) and metrics.json (test metrics).
    Ctrl-C saves a checkpoint first; ``resume=True`` continues from the latest one.
    """
    import tensorflow as tf

    from mnistlab.evaluate import evaluate_split
    from mnistlab.predict import compile_inference

    run_dir = Path(out)
    if resume:
        saved = load_run_config(run_dir)
        if saved["model"] != model_name:
            raise MnistlabError(f"--resume: {run_dir} holds a {saved['model']!r} run, not {model_name!r}")
        config = TrainConfig(**saved["train"])
        arch = from_json(ArchConfig, saved["arch"])
    elif (run_dir / "config.json").exists():
        raise MnistlabError(f"--out {run_dir}: already holds a run; pass --resume to continue it or choose a new folder")
    recipe = resolve_recipe(model_name, config)
    configure_tensorflow(config.seed, deterministic=not config.jit_compile)
    model = models.build(model_name, **arch.overrides())
    full_arch = {**models.arch_options(model_name), **arch.overrides()}

    n_train = len(data.train)
    if n_train == 0:
        raise MnistlabError("training split is empty; expected at least one image")
    steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    total_steps = recipe.steps or recipe.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = make_optimizer(recipe, total_steps, steps_per_epoch)
    optimizer.build(model.trainable_variables)

    run_dir.mkdir(parents=True, exist_ok=True)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, run_dir / "checkpoints", max_to_keep=config.keep_checkpoints)
    history: list[dict[str, float]] = []
    if resume:
        if not manager.latest_checkpoint:
            raise MnistlabError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
        checkpoint.restore(manager.latest_checkpoint).expect_partial()
        history = read_history(run_dir / "history.csv")[: int(epoch_var.numpy())]
        log(f"resumed from {manager.latest_checkpoint} after epoch {int(epoch_var.numpy())}")
    else:
        fileio.write_json(run_dir / "config.json", run_config(model_name, full_arch, recipe, config, data_config))

    x_train = tf.constant(data.train.images)
    y_train = tf.constant(data.train.labels.astype(np.int32))
    augment = None
    if recipe.augment:
        from mnistlab.augment import augment_batch
        augment = augment_batch
    smoothing = recipe.label_smoothing
    loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    correct = tf.Variable(0, dtype=tf.int64, trainable=False)
    seen = tf.Variable(0, dtype=tf.int64, trainable=False)
    finite = tf.Variable(True, trainable=False)
    params = model.trainable_variables
    infer = compile_inference(model)  # one traced inference graph for every validation pass

    @tf.function(jit_compile=config.jit_compile, reduce_retracing=True)
    def train_chunk(x_all, y_all, order, start, n_steps, batch_size, augmenting):
        for i in tf.range(n_steps):
            begin = start + i * batch_size
            idx = order[begin:begin + batch_size]
            x = tf.gather(x_all, idx)
            y = tf.gather(y_all, idx)
            if augmenting:  # a Python bool: one graph with augmentation, one without
                x = augment(x)
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                targets = tf.one_hot(y, models.NUM_CLASSES) * (1.0 - smoothing) + smoothing / models.NUM_CLASSES
                loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
                total = loss + tf.add_n(model.losses) if model.losses else loss
            grads = tape.gradient(total, params)
            optimizer.apply_gradients(zip(grads, params))
            n = tf.shape(y, out_type=tf.int64)[0]
            loss_sum.assign_add(tf.cast(loss, tf.float64) * tf.cast(n, tf.float64))
            correct.assign_add(tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y), tf.int64)))
            seen.assign_add(n)
            finite.assign(tf.logical_and(finite, tf.math.is_finite(loss)))

    writers = None
    if config.tensorboard:
        writers = {name: tf.summary.create_file_writer(str(run_dir / "tensorboard" / name))
                   for name in ("train", "validation")}
    best_acc = max((row["val_accuracy"] for row in history), default=-1.0)
    start_time = time.perf_counter()
    train_seconds = sum(row["seconds"] for row in history)
    first_epoch = int(epoch_var.numpy())
    with _progress_bar(config.progress) as bar:
        try:
            for epoch in range(first_epoch, epochs):
                t0 = time.perf_counter()
                for v in (loss_sum, correct, seen):
                    v.assign(tf.zeros_like(v))
                order = tf.constant(np.random.default_rng([config.seed, epoch]).permutation(n_train).astype(np.int32))
                augmenting = augment is not None and epoch < epochs - recipe.clean_epochs
                epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
                task = bar.add_task(f"epoch {epoch + 1}/{epochs}", total=epoch_steps, loss=float("nan"))
                done = 0
                while done < epoch_steps:
                    full = min(CHUNK_STEPS, epoch_steps - done, (n_train - done * recipe.batch_size) // recipe.batch_size)
                    size = recipe.batch_size if full > 0 else n_train - done * recipe.batch_size
                    count = max(full, 1)
                    chunk_args = (x_train, y_train, order, tf.constant(done * recipe.batch_size),
                                  tf.constant(count), tf.constant(size), augmenting)
                    train_chunk(*chunk_args)
                    if writers is not None and epoch == first_epoch and done == 0:  # the model graph, once
                        with writers["train"].as_default():
                            tf.summary.graph(train_chunk.get_concrete_function(*chunk_args).graph)
                    done += count
                    if not bool(finite.numpy()):
                        last = manager.latest_checkpoint or "none (diverged in the first epoch)"
                        raise TrainingDiverged(
                            f"loss became NaN/inf in epoch {epoch + 1} (step {done} of {epoch_steps}); "
                            f"stopped. Last good checkpoint: {last}. Try a lower --learning-rate")
                    bar.update(task, completed=done, loss=float(loss_sum.numpy() / max(int(seen.numpy()), 1)))
                bar.remove_task(task)
                seconds = time.perf_counter() - t0
                train_seconds += seconds
                val = evaluate_split(model, data.validation, infer) if len(data.validation) else None
                row = {
                    "epoch": epoch + 1,
                    "train_loss": float(loss_sum.numpy() / int(seen.numpy())),
                    "train_accuracy": float(correct.numpy() / int(seen.numpy())),
                    "val_loss": val.loss if val else float("nan"),
                    "val_accuracy": val.accuracy if val else float("nan"),
                    "seconds": seconds,
                    "learning_rate": float(learning_rate_at(optimizer.iterations, recipe, total_steps, steps_per_epoch)),
                }
                history.append(row)
                epoch_var.assign(epoch + 1)
                manager.save(checkpoint_number=epoch + 1)
                if val and val.accuracy > best_acc:
                    best_acc = val.accuracy
                    checkpoint.write(str(run_dir / "checkpoints" / "best"))
                _write_history(run_dir / "history.csv", history)
                if writers:
                    _write_summaries(writers, row, model, epoch + 1)
                log(f"Train Epoch: {epoch + 1:02d}  train_loss={row['train_loss']:.6f}  "
                    f"val_loss={row['val_loss']:.6f}  val_accuracy={row['val_accuracy']:.4f}  "
                    f"time={seconds:.1f}s")
        except KeyboardInterrupt:
            epoch_var.assign(len(history))
            path = manager.save(checkpoint_number=len(history))
            log(f"interrupted: checkpoint saved to {path} (after epoch {len(history)}); "
                f"continue with `mnistlab train {model_name} --resume --out {run_dir}`")
            raise
        finally:
            if writers:
                for w in writers.values():
                    w.flush()
    log(f"Train Finished takes: {train_seconds:.2f} s")

    with fileio.atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    test = evaluate_split(model, data.test, infer)
    best = max(history, key=lambda r: r["val_accuracy"]) if history and len(data.validation) else None
    metrics = {
        "model": model_name,
        "params": int(model.count_params()),
        "epochs": len(history),
        "steps": int(optimizer.iterations.numpy()),
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - start_time, 3),
        "test_loss": test.loss,
        "test_accuracy": test.accuracy,
        "val_accuracy": history[-1]["val_accuracy"] if history else float("nan"),
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "best_epoch": best["epoch"] if best else None,
    }
    fileio.write_json(run_dir / "metrics.json", metrics)
    log(f"Test Accuracy: {test.accuracy:.4f}  Test Loss: {test.loss:.6f}")
    return TrainResult(run_dir, history, metrics)


def _write_summaries(writers: dict, row: dict[str, float], model: Any, step: int) -> None:
    """Per-epoch TensorBoard summaries: loss/accuracy for both splits, a histogram per weight."""
    import tensorflow as tf

    with writers["train"].as_default():
        tf.summary.scalar("epoch_loss", row["train_loss"], step=step)
        tf.summary.scalar("epoch_accuracy", row["train_accuracy"], step=step)
        tf.summary.scalar("learning_rate", row["learning_rate"], step=step)
        for w in model.weights:
            tf.summary.histogram(w.path, w.value, step=step)
    with writers["validation"].as_default():
        tf.summary.scalar("epoch_loss", row["val_loss"], step=step)
        tf.summary.scalar("epoch_accuracy", row["val_accuracy"], step=step)


def load_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a run folder, or a clear error."""
    from mnistlab.runs import CONFIG_FILE

    return fileio.read_json(Path(run_dir) / CONFIG_FILE, required=True)

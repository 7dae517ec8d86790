"""Training: a compiled custom loop with per-epoch validation, checkpoints, TensorBoard and exact resume.

The pieces, in the order ``train`` uses them:

- ``resolve_settings`` / ``settings_to_resume``: what to train (model, architecture, recipe,
  data), checked before any work; a resumed run refuses settings it would otherwise ignore;
- ``plan_chunks``: a pure function cutting an epoch's steps into compiled calls;
- ``TrainingState``: every variable that continues a run (model, optimizer, position in the
  epoch, the epoch's running sums) -- a checkpoint of it is the complete state of training.
  Randomness is not state: the augmentation and dropout seeds of each step are derived from
  ``(seed, optimizer step)`` with stateless ops, so an interrupted and resumed run takes exactly
  the steps of a straight one;
- ``compile_chunk``: the ``tf.function`` that runs a chunk of mini-batches in one graph call
  (``tf.range`` loop over the epoch's permutation, images gathered from tensors in memory), so
  there is no per-step Python overhead (``benchmarks/bench_train_step.py``);
- ``run_epoch``: one epoch's chunks, stopping early at a chunk boundary on Ctrl-C;
- ``Summaries``: TensorBoard scalars, weight histograms and the graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mnistlab import calibrate, distribute, models, runtime
from mnistlab.config import SEED, from_json, option, show, validate
from mnistlab.data import DataConfig, Dataset, Split, one_hot
from mnistlab.errors import MnistlabError
from mnistlab.models import OPTIMIZERS, SCHEDULES, Recipe
from mnistlab.inference import compile_inference, tower_logits
from mnistlab.runs import Checkpoints, RunFolder

CHUNK_STEPS = 50  # mini-batches per compiled call: amortises Python overhead, keeps Ctrl-C responsive
AUGMENT_STREAM, DROPOUT_STREAM = 1, 100  # fold_in salts: one random stream per use, per step
# TrainConfig fields a resumed run may change: display, bookkeeping, and the devices it runs on
RESUMABLE = ("progress", "tensorboard", "keep_checkpoints", "strategy", "cpu_replicas", "threads", "tflite")
__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train", "resolve_recipe", "plan_chunks",
           "learning_rate_at", "OPTIMIZERS", "SCHEDULES"]


@dataclass(frozen=True)
class TrainConfig:
    """How to run a training; *what* to train is the model's ``Recipe`` with the user's overrides."""

    course: bool = option(False, "start from the course's recipe instead of mnistlab's")
    seed: int = option(0, "random seed: same seed, same weights and numbers on the same machine", check=SEED)
    jit_compile: bool = option(False, "compile the training step with XLA (slower than oneDNN on the CPUs "
                                      "measured, see README; not bit-reproducible)")
    tensorboard: bool = option(True, "write TensorBoard logs (scalars, weight histograms, graph)")
    progress: bool = option(True, "show a progress bar per epoch (only on a terminal)")
    keep_checkpoints: int = option(2, "per-epoch checkpoints to keep (the best one is kept apart)",
                                   check=(lambda v: 1 <= v <= 1000, "an integer 1 .. 1000"))
    strategy: str = option("default", "devices: default (one), mirrored (all local GPUs, else --cpu-replicas "
                                      "logical CPUs), multiworker (machines listed in $TF_CONFIG)",
                           choices=distribute.STRATEGIES)
    cpu_replicas: int = option(2, "--strategy mirrored without GPUs: logical CPU devices to split the batch over",
                               check=(lambda v: 1 <= v <= 64, "an integer 1 .. 64"))
    tflite: bool = option(True, "also write model.tflite (checked against model.keras on the test images): "
                                "predict and serve then answer without loading TensorFlow")
    threads: int = option(0, "CPU threads for TensorFlow's operations (0 = every core this process may use)",
                          check=(lambda v: 0 <= v <= 1024, "an integer 0 .. 1024"))


@dataclass(frozen=True)
class Settings:
    """Everything that decides a run's trajectory, as ``config.json`` records it."""

    model: str
    arch: dict[str, Any]  # the builder's full keyword arguments
    recipe: Recipe
    train: TrainConfig
    data: DataConfig

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "arch": {k: list(v) if isinstance(v, tuple) else v for k, v in self.arch.items()},
                "recipe": dataclasses.asdict(self.recipe), "train": dataclasses.asdict(self.train),
                "data": dataclasses.asdict(self.data), "versions": _versions()}

    @classmethod
    def from_json(cls, saved: dict[str, Any], where: Path) -> "Settings":
        try:
            return cls(str(saved["model"]), {k: tuple(v) if isinstance(v, list) else v for k, v in saved["arch"].items()},
                       from_json(Recipe, saved["recipe"]), from_json(TrainConfig, saved["train"]),
                       from_json(DataConfig, saved["data"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise MnistlabError(f"{where}: not a config.json written by this mnistlab ({exc}); "
                                f"expected model, arch, recipe, train and data") from None


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    metrics: dict[str, Any]  # same seed => same values
    timing: dict[str, Any]  # seconds: machine-dependent
    chief: bool = True  # False on the other workers of a multi-worker run: the chief wrote the folder


class TrainingDiverged(MnistlabError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------- settings
def resolve_recipe(model: str, course: bool = False, overrides: dict[str, Any] | None = None) -> Recipe:
    """The model's course or own recipe with the user's ``overrides`` (Recipe fields) applied and checked,
    and the registry's changes for the precision it resolves to on this CPU (``fast``: more steps in float32)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Recipe)})
    if unknown:
        raise MnistlabError(f"unknown recipe setting {', '.join(unknown)}")
    if overrides.get("epochs") and "steps" not in overrides:
        overrides["steps"] = 0  # an explicit --epochs replaces the recipe's step count
    recipe = validate(dataclasses.replace(models.recipe(model, course=course), **overrides))
    # the registry's changes for the precision this CPU resolves to, under the user's own settings
    for_precision = {k: v for k, v in models.precision_recipe(model, runtime.resolve_precision(recipe.precision)).items()
                     if k not in overrides}
    if for_precision:
        recipe = validate(dataclasses.replace(recipe, **for_precision))
    if recipe.epochs < 1 and recipe.steps < 1:
        raise MnistlabError(f"--epochs {recipe.epochs} / --steps {recipe.steps}: expected at least one epoch or step")
    return recipe


def resolve_settings(model: str, config: TrainConfig = TrainConfig(), recipe: dict[str, Any] | None = None,
                     arch: dict[str, Any] | None = None, data: DataConfig = DataConfig()) -> Settings:
    """The settings of a new run, every value checked (before any data is loaded)."""
    models.spec(model)
    if config.jit_compile and config.strategy != "default":
        raise MnistlabError(f"--jit-compile with --strategy {config.strategy}: not supported; use one of them")
    chosen = resolve_recipe(model, config.course, recipe)
    # widths the registry sets for this precision, under the user's own overrides; config.json keeps
    # the resolved widths, so a resumed run builds the same model on any CPU
    widths = models.precision_options(model, runtime.resolve_precision(chosen.precision))
    options = models.check_options(model, {**widths, **dict(arch or {})})
    models.check_towers(model, options, chosen.towers, chosen.batch_size)
    return Settings(model, options, chosen, validate(config), validate(data))


def settings_to_resume(folder: RunFolder, model: str | None = None, config: dict[str, Any] | None = None,
                       recipe: dict[str, Any] | None = None, arch: dict[str, Any] | None = None,
                       data: dict[str, Any] | None = None) -> Settings:
    """The saved settings of the run in ``folder``, with the changes the caller asks for (dicts of
    ``TrainConfig``, ``Recipe``, builder and ``DataConfig`` fields). Only ``RESUMABLE`` fields and
    where the data lives may change, so a resumed run is the run that was started: no flag is
    silently ignored, no other data set is used."""
    saved = Settings.from_json(folder.read_config(), folder.config_file)
    problems = []
    if model is not None and model != saved.model:
        problems.append(f"it holds a {saved.model!r} run, not {model!r}")
    problems += [f"--{k.replace('_', '-')} {show(v)} (the run's recipe has {show(getattr(saved.recipe, k, None))})"
                 for k, v in (recipe or {}).items() if v != getattr(saved.recipe, k, None)]
    problems += [f"--{k.replace('_', '-')} {show(v)} (the run's model has {show(saved.arch.get(k))})"
                 for k, v in (arch or {}).items() if v != saved.arch.get(k)]
    config, data = dict(config or {}), dict(data or {})
    problems += [f"--{k.replace('_', '-')} {v} (the run has {getattr(saved.train, k)})" for k, v in config.items()
                 if k not in RESUMABLE and v != getattr(saved.train, k)]
    problems += [f"--{k.replace('_', '-')} {v} (the run used {getattr(saved.data, k)})" for k, v in data.items()
                 if k in ("dataset", "validation_size") and v != getattr(saved.data, k)]
    if problems:
        raise MnistlabError(f"--resume {folder.path}: refused, " + "; ".join(problems)
                            + ". Resume without them, or start a new run with another --out")
    train_config = dataclasses.replace(saved.train, **{k: v for k, v in config.items() if k in RESUMABLE})
    data_config = dataclasses.replace(saved.data, **{k: v for k, v in data.items() if k not in ("dataset", "validation_size")})
    return dataclasses.replace(saved, train=validate(train_config), data=validate(data_config))


def changes(value: Any, default: Any) -> dict[str, Any]:
    """The fields of dataclass ``value`` that differ from ``default``."""
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
            if getattr(value, f.name) != getattr(default, f.name)}


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    from mnistlab import __version__
    return {"mnistlab": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------- schedule and plan
@dataclass(frozen=True)
class Plan:
    """How many steps: per epoch, in all, and the epochs they make."""

    n_train: int
    batch_size: int
    total_steps: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def epoch_steps(self, epoch: int) -> int:
        """Steps of epoch ``epoch`` (0-based): all of them, except perhaps in the last with ``--steps``."""
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    @classmethod
    def of(cls, recipe: Recipe, n_train: int) -> "Plan":
        steps = recipe.steps or recipe.epochs * math.ceil(n_train / recipe.batch_size)
        return cls(n_train, recipe.batch_size, steps)


@dataclass(frozen=True)
class Chunk:
    """One compiled call: ``steps`` mini-batches of ``batch`` images from step ``first`` of the epoch."""

    first: int
    steps: int
    batch: int


def plan_chunks(n_train: int, batch_size: int, start: int, stop: int, chunk_steps: int = CHUNK_STEPS) -> list[Chunk]:
    """Cut steps ``start`` .. ``stop - 1`` of an epoch into compiled calls of at most ``chunk_steps``
    full batches each; a last, smaller batch (``n_train`` not a multiple of ``batch_size``) runs alone.

    >>> plan_chunks(250, 100, 0, 3)
    [Chunk(first=0, steps=2, batch=100), Chunk(first=2, steps=1, batch=50)]
    """
    full = n_train // batch_size  # steps with a whole batch
    chunks, step = [], start
    while step < stop:
        if step < full:
            count = min(chunk_steps, stop - step, full - step)
            chunks.append(Chunk(step, count, batch_size))
        else:
            count = 1
            chunks.append(Chunk(step, 1, n_train - full * batch_size))
        step += count
    return chunks


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of ``epoch``: a permutation drawn from ``(seed, epoch)`` alone."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


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


def make_optimizer(recipe: Recipe, plan: Plan, precision: str = "float32") -> Any:
    """Keras optimizer for ``recipe`` with its schedule attached (and dynamic loss scaling under
    ``mixed_float16``, whose small range would otherwise flush small gradients to zero)."""
    import keras

    optimizer = _optimizer(recipe, plan)
    return keras.optimizers.LossScaleOptimizer(optimizer) if precision == "mixed_float16" else optimizer


def _optimizer(recipe: Recipe, plan: Plan) -> Any:
    import keras

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return learning_rate_at(step, recipe, plan.total_steps, plan.steps_per_epoch)

        def get_config(self):
            return {}

    lr = Schedule() if recipe.schedule != "constant" else recipe.learning_rate
    # Keras keeps the moving average of the weights itself (use_ema); finalize_variable_values puts it in
    ema = {"use_ema": True, "ema_momentum": recipe.ema} if recipe.ema else {}
    name = recipe.optimizer
    if name == "sgd":
        return keras.optimizers.SGD(lr, **ema)
    if name == "momentum":
        return keras.optimizers.SGD(lr, momentum=recipe.rho, nesterov=True, **ema)
    if name == "adam":
        return keras.optimizers.Adam(lr, **ema)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=recipe.weight_decay, **ema)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr, rho=recipe.rho, **ema)
    return keras.optimizers.Adadelta(lr, rho=0.9, epsilon=1e-6, **ema)  # pytorch/examples' Adadelta


# ---------------------------------------------------------------------------- state and step
class TrainingState:
    """The complete state of a training run, as TensorFlow variables (one checkpoint holds it all)."""

    def __init__(self, model: Any, optimizer: Any) -> None:
        import tensorflow as tf

        self.model, self.optimizer = model, optimizer
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")  # epochs finished
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)  # this epoch: plain cross-entropy
        self.correct = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.seen = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.finite = tf.Variable(True, trainable=False)  # not saved: a diverged run is never checkpointed

    def trackables(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "loss_sum": self.loss_sum, "correct": self.correct,
                "seen": self.seen}

    def start_epoch(self) -> None:
        for v in (self.step_in_epoch, self.loss_sum, self.correct, self.seen):
            v.assign(0 if v.dtype.is_integer else 0.0)

    def train_metrics(self) -> tuple[float, float]:
        """Mean plain cross-entropy and accuracy of the epoch's training batches so far."""
        seen = max(int(self.seen.numpy()), 1)
        return float(self.loss_sum.numpy() / seen), float(self.correct.numpy() / seen)


def seed_generators(model: Any) -> list[Any]:
    """The state variables of the model's random layers (Dropout), in layer order."""
    return [layer.seed_generator.state for layer in model.layers if getattr(layer, "seed_generator", None)]


def compile_chunk(state: TrainingState, recipe: Recipe, seed: int, strategy: Any = None,
                  jit_compile: bool = False, smallest_batch: int | None = None) -> Callable:
    """The compiled chunk: ``chunk(x_all, y_all, order, start, n_steps, batch, augmenting)`` runs
    ``n_steps`` optimizer steps on batches ``order[start + i * batch : ...]``.

    Each step runs on every replica of ``strategy`` (``strategy.run``), each taking every R-th image
    of the batch; the loss is averaged over the global batch and the gradients all-reduced. The
    optimized loss is softmax cross-entropy with label smoothing; the loss *reported* (summed into
    ``state.loss_sum``) is plain cross-entropy, the same quantity as the validation loss. Each
    step's random streams come from ``fold_in((seed, 0), optimizer step)``. With ``recipe.towers`` > 1
    each replica's share is computed in that many parts side by side (``tower_logits``); a
    ``smallest_batch`` whose share fills every part leaves the whole-batch fallback out of the graph."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    model, optimizer = models.network_of(state.model), state.optimizer  # a shift average trains its network
    params = model.trainable_variables
    dropout_states = seed_generators(model)
    smoothing, towers = recipe.label_smoothing, recipe.towers
    # whether every replica's share of the smallest batch it will get fills every tower (unknown: assume not)
    share = None if smallest_batch is None else smallest_batch // strategy.num_replicas_in_sync
    whole_if_smaller = share is None or share < towers
    base_seed = tf.constant([seed, 0], tf.int64)
    single = strategy.num_replicas_in_sync == 1
    scale_loss = getattr(optimizer, "scale_loss", None)  # LossScaleOptimizer (mixed_float16)
    if recipe.augment != "none":
        from mnistlab.augment import augment_batch, policy

        augmentation = policy(recipe.augment)

        def augment(x, seed):
            return augment_batch(x, seed, augmentation)

    def learn(x, y, global_size):
        """One optimizer step on this replica's share ``x, y`` of a global batch of ``global_size``
        images; returns the share's summed plain loss, hits, count and whether the loss is finite."""
        # Only the trained parameters: TensorFlow would watch a frozen layer's variables too (a Keras
        # layer made non-trainable keeps a trainable tf.Variable) and compute gradients for them.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([getattr(p, "value", p) for p in params])
            logits = model(x, training=True) if towers == 1 else tower_logits(model, x, towers, True, whole_if_smaller)
            targets = tf.one_hot(y, models.NUM_CLASSES) * (1.0 - smoothing) + smoothing / models.NUM_CLASSES
            per_example = tf.nn.softmax_cross_entropy_with_logits(targets, logits)
            # one replica: the plain mean, bit for bit the single-device loss; else over the global batch
            loss = tf.reduce_mean(per_example) if single else \
                tf.nn.compute_average_loss(per_example, global_batch_size=global_size)
            total = loss + tf.nn.scale_regularization_loss(tf.add_n(model.losses)) if model.losses else loss
            scaled = scale_loss(total) if scale_loss else total
        grads = tape.gradient(scaled, params)
        optimizer.apply_gradients(zip(grads, params))
        plain = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        hits = tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y)
        return (tf.reduce_sum(tf.cast(plain, tf.float64)), tf.reduce_sum(tf.cast(hits, tf.int64)),
                tf.size(y, out_type=tf.int64), tf.cast(tf.math.is_finite(loss), tf.int64))

    if jit_compile:  # XLA compiles the step for each batch shape it meets (the gathers stay outside)
        learn = tf.function(learn, jit_compile=True, reduce_retracing=True)

    def replica_step(x_all, y_all, idx, step_seed, augmenting):
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group
        mine = idx if single else idx[replica::context.num_replicas_in_sync]
        x, y = tf.gather(x_all, mine), tf.gather(y_all, mine)
        if augmenting:  # a Python bool: one graph with augmentation, one without
            stream = tf.random.experimental.stateless_fold_in(step_seed, AUGMENT_STREAM)
            x = augment(x, seed=stream if single else tf.random.experimental.stateless_fold_in(stream, replica))
        return learn(x, y, tf.size(idx))

    def reduce(value):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    # A plain tf.while_loop, traced without AutoGraph: converting this module's Python source took
    # about 60 % of the first call's tracing (fast: 0.9 s of tracing became 0.4 s), for no graph it needs.
    @tf.function(reduce_retracing=True, autograph=False)
    def chunk(x_all, y_all, order, start, n_steps, batch, augmenting):
        def step(i):
            step_seed = tf.random.experimental.stateless_fold_in(base_seed, optimizer.iterations)
            for j, dropout_state in enumerate(dropout_states):
                dropout_state.assign(tf.cast(tf.random.experimental.stateless_fold_in(step_seed, DROPOUT_STREAM + j),
                                             dropout_state.dtype))
            idx = order[start + i * batch:start + (i + 1) * batch]
            loss_sum, correct, seen, finite = strategy.run(replica_step, args=(x_all, y_all, idx, step_seed,
                                                                             augmenting))
            state.loss_sum.assign_add(reduce(loss_sum))
            state.correct.assign_add(reduce(correct))
            state.seen.assign_add(reduce(seen))
            finite_everywhere = tf.equal(reduce(finite), strategy.num_replicas_in_sync)
            state.finite.assign(tf.logical_and(state.finite, finite_everywhere))
            with tf.control_dependencies([state.step_in_epoch.assign_add(1)]):
                return i + 1

        tf.while_loop(lambda i: i < n_steps, step, [tf.zeros_like(n_steps)])

    return chunk


# ---------------------------------------------------------------------------- Ctrl-C
class _Stopped(Exception):
    """Raised (and turned into KeyboardInterrupt) once a Ctrl-C's position has been saved."""


class StopRequest:
    """Set by the first Ctrl-C while training; the epoch loop stops at the next chunk boundary."""

    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[StopRequest]:
    """Turn the first SIGINT into a stop request (a second one interrupts at once). Outside the
    main thread, where Python delivers no signals, Ctrl-C cannot reach training anyway."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------- summaries
class Summaries:
    """TensorBoard event files in ``tensorboard/train`` and ``tensorboard/validation`` (or nothing)."""

    def __init__(self, folder: RunFolder, enabled: bool) -> None:
        import tensorflow as tf

        self._writers = {name: tf.summary.create_file_writer(str(folder.tensorboard / name))
                         for name in ("train", "validation")} if enabled else {}

    def graph(self, fn: Any, *args: Any) -> None:
        """The training graph, once (TensorBoard's Graphs tab)."""
        import tensorflow as tf

        if self._writers:
            with self._writers["train"].as_default():
                tf.summary.graph(fn.get_concrete_function(*args).graph)

    def epoch(self, row: dict[str, float], model: Any) -> None:
        """Loss/accuracy for both splits, the learning rate, a histogram per weight."""
        import tensorflow as tf

        if not self._writers:
            return
        step = int(row["epoch"])
        with self._writers["train"].as_default():
            tf.summary.scalar("epoch_loss", row["train_loss"], step=step)
            tf.summary.scalar("epoch_accuracy", row["train_accuracy"], step=step)
            tf.summary.scalar("learning_rate", row["learning_rate"], step=step)
            for w in model.weights:
                tf.summary.histogram(w.path, w.value, step=step)
        with self._writers["validation"].as_default():
            tf.summary.scalar("epoch_loss", row["val_loss"], step=step)
            tf.summary.scalar("epoch_accuracy", row["val_accuracy"], step=step)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def _progress_bar(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), transient=True,
                    disable=not (enabled and sys.stderr.isatty()))


# ---------------------------------------------------------------------------- time
class Clock:
    """Seconds of training (the compiled steps, per epoch) and of wall time, summed over every
    session of a run: machine-dependent, so they go to ``timing.json``, not to the metrics."""

    def __init__(self, saved: dict[str, Any] | None = None, epochs_done: int = 0, mid_epoch: bool = False) -> None:
        saved = saved or {}
        self.epoch_seconds: list[float] = list(saved.get("epoch_seconds", []))[:epochs_done]
        self.partial = float(saved.get("partial_epoch_seconds", 0.0)) if mid_epoch else 0.0
        self.earlier_wall = float(saved.get("wall_seconds", 0.0))
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.partial += time.perf_counter() - t0

    def end_epoch(self) -> float:
        seconds, self.partial = self.partial, 0.0
        self.epoch_seconds.append(seconds)
        return seconds

    def to_json(self) -> dict[str, Any]:
        train = sum(self.epoch_seconds) + self.partial
        return {"train_seconds": round(train, 3),
                "wall_seconds": round(self.earlier_wall + time.perf_counter() - self.started, 3),
                "epoch_seconds": [round(s, 3) for s in self.epoch_seconds],
                "partial_epoch_seconds": round(self.partial, 3)}


# ---------------------------------------------------------------------------- the epoch
@dataclass
class Loop:
    """What one epoch needs: the compiled chunk, the data as tensors, the state and the plan."""

    chunk: Callable
    x: Any
    y: Any
    state: TrainingState
    plan: Plan
    recipe: Recipe
    seed: int
    summaries: Summaries
    bar: Any
    stop: StopRequest
    on_chunk: Callable[[int, int], None] | None = None
    graph_written: bool = True

    def run_epoch(self, epoch: int) -> bool:
        """Train epoch ``epoch`` (0-based) from the state's position in it; False if stopped early."""
        import tensorflow as tf

        order = tf.constant(epoch_order(self.seed, epoch, self.plan.n_train))
        augmenting = self.recipe.augment != "none" and epoch < self.plan.epochs - self.recipe.clean_epochs
        steps = self.plan.epoch_steps(epoch)
        start = int(self.state.step_in_epoch.numpy())
        task = self.bar.add_task(f"epoch {epoch + 1}/{self.plan.epochs}", total=steps, completed=start,
                                 loss=float("nan"))
        try:
            for c in plan_chunks(self.plan.n_train, self.recipe.batch_size, start, steps, CHUNK_STEPS):
                args = (self.x, self.y, order, tf.constant(c.first * self.recipe.batch_size), tf.constant(c.steps),
                        tf.constant(c.batch), augmenting)
                self.chunk(*args)
                if not self.graph_written:
                    self.summaries.graph(self.chunk, *args)
                    self.graph_written = True
                if not bool(self.state.finite.numpy()):
                    raise TrainingDiverged(f"loss became NaN/inf in epoch {epoch + 1} (step {c.first + c.steps} of "
                                           f"{steps}); stopped")
                self.bar.update(task, completed=c.first + c.steps, loss=self.state.train_metrics()[0])
                if self.on_chunk is not None:
                    self.on_chunk(epoch, int(self.state.optimizer.iterations.numpy()))
                if self.stop.requested and c.first + c.steps < steps:
                    return False
        finally:
            self.bar.remove_task(task)
        return True


# ---------------------------------------------------------------------------- train
def train(model_name: str | None, data: Dataset, out: str | Path, config: TrainConfig = TrainConfig(),
          recipe: dict[str, Any] | None = None, arch: dict[str, Any] | None = None,
          data_config: DataConfig | None = None, resume: bool = False, log: Callable[[str], None] = print,
          on_chunk: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train ``model_name`` on ``data.train``, validating each epoch on ``data.validation``.

    ``recipe`` and ``arch`` override the model's recipe and builder options, e.g.
    ``train("cnn", data, "runs/cnn", recipe={"epochs": 2}, arch={"filters": (16, 32, 64)})``.
    Writes the run folder ``out`` (see ``runs``). Ctrl-C stops at the next chunk of steps and
    saves the exact position; ``resume=True`` continues from it and ends bit-identical to a
    straight run. ``on_chunk(epoch, step)`` is called after each compiled chunk (tests use it).
    """
    folder = RunFolder(Path(out))
    data_config = data_config or getattr(data, "config", None) or DataConfig()  # recorded in config.json
    if resume:
        settings = settings_to_resume(folder, model_name, changes(config, TrainConfig()), recipe, arch,
                                      changes(data_config, DataConfig()))
    else:
        if folder.is_run():
            raise MnistlabError(f"--out {folder.path}: already holds a run; pass --resume to continue it "
                                f"or choose a new folder")
        if folder.path.is_dir() and any(folder.path.iterdir()):
            raise MnistlabError(f"--out {folder.path}: holds other files; choose a new or empty folder")
        settings = resolve_settings(model_name or "", config, recipe, arch, data_config)
    if len(data.train) == 0:
        raise MnistlabError("training split is empty; expected at least one image")
    with _devices(settings.train, folder, settings.recipe.towers) as (strategy, writes, chief):
        if not chief:
            log = _silent  # one voice: the chief's
        log(f"{settings.model}: {settings.recipe.summary()}, seed {settings.train.seed}"
            + (f" ({runtime.resolve_precision(settings.recipe.precision)} here)"
               if settings.recipe.precision == "auto" else "")
            + (f", {strategy.num_replicas_in_sync} replicas" if strategy.num_replicas_in_sync > 1 else "")
            + (" (resuming)" if resume else ""))
        result = _train(settings, folder, writes, strategy, data, resume, log, on_chunk)
    return result if chief else dataclasses.replace(result, run_dir=folder.path, chief=False)


def _silent(line: str) -> None:
    """The log of a non-chief worker: the chief speaks for the cluster."""


@contextlib.contextmanager
def _devices(config: TrainConfig, folder: RunFolder, towers: int = 1) -> Iterator[tuple[Any, RunFolder, bool]]:
    """The strategy (made first: TensorFlow's runtime must not have started), the folder this
    process writes (the run's; a temporary one on non-chief workers), and whether it is the chief.
    With ``towers`` > 1 each op gets cores / towers threads and the towers run side by side."""
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
    threads = config.threads or max(1, runtime.cpu_count() // towers)
    runtime.configure_tensorflow(config.seed, threads=threads, deterministic=not config.jit_compile,
                                 inter_op=max(2, towers))
    if distribute.is_chief(strategy):
        folder.check_writable()
        yield strategy, folder, True
        return
    with tempfile.TemporaryDirectory(prefix="mnistlab-worker-") as tmp:
        yield strategy, RunFolder(Path(tmp)), False


def _train(settings: Settings, folder: RunFolder, writes: RunFolder, strategy: Any, data: Dataset, resume: bool,
           log: Callable[[str], None], on_chunk: Callable[[int, int], None] | None) -> TrainResult:
    """``train`` once the settings are checked and the devices are set up."""
    import tensorflow as tf

    data = with_font_digits(data, settings.recipe.fonts, settings.train.seed, log)
    plan = Plan.of(settings.recipe, len(data.train))
    precision = runtime.resolve_precision(settings.recipe.precision)
    with strategy.scope(), distribute.dtype_policy(precision):
        model = models.build(settings.model, **settings.arch)
        optimizer = make_optimizer(settings.recipe, plan, precision)
        optimizer.build(model.trainable_variables)
        state = TrainingState(model, optimizer)
    checkpoints = Checkpoints(writes, state.trackables(), settings.train.keep_checkpoints, read_from=folder)
    history, clock = _start(writes, settings, checkpoints, state, resume, log)
    if int(state.optimizer.iterations.numpy()) == 0:  # not restored: a whitened stem's filters (timed: training)
        with clock.timing():
            models.whiten_stem(model, data.train.images)
    folder = writes

    from mnistlab.evaluate import evaluate_split

    infer = compile_inference(model, settings.recipe.towers)  # one traced graph for every validation pass
    summaries = Summaries(folder, settings.train.tensorboard)
    with _progress_bar(settings.train.progress) as bar, deferred_interrupt() as stop:
        smallest = min(plan.batch_size, plan.n_train % plan.batch_size or plan.batch_size)
        loop = Loop(compile_chunk(state, settings.recipe, settings.train.seed, strategy, settings.train.jit_compile,
                                  smallest),
                    tf.constant(data.train.images), tf.constant(data.train.labels.astype(np.int32)), state, plan,
                    settings.recipe, settings.train.seed, summaries, bar, stop, on_chunk, graph_written=resume)
        try:
            for epoch in range(int(state.epoch.numpy()), plan.epochs):
                with clock.timing():
                    finished = loop.run_epoch(epoch)
                if not finished:
                    _save_interrupted(folder, checkpoints, state, plan, clock, log)
                    raise _Stopped
                seconds = clock.end_epoch()
                if epoch + 1 == plan.epochs:  # with --ema, the averaged weights are the model from here on
                    state.optimizer.finalize_variable_values(model.trainable_variables)
                row = _epoch_row(epoch, state, plan, settings.recipe, evaluate_split, model, data, infer)
                history.append(row)
                state.epoch.assign(epoch + 1)
                state.start_epoch()
                checkpoints.save_epoch(epoch + 1)
                if row["val_accuracy"] > max((r["val_accuracy"] for r in history[:-1]), default=-1.0):
                    checkpoints.save_best()
                folder.write_history(history)
                folder.write_timing(clock.to_json())
                summaries.epoch(row, model)
                log(f"Train Epoch: {epoch + 1:02d}  train_loss={row['train_loss']:.4f}  "
                    f"val_loss={row['val_loss']:.4f}  val_accuracy={row['val_accuracy']:.4f}  time={seconds:.1f}s")
                if stop.requested and epoch + 1 < plan.epochs:  # Ctrl-C in the epoch's last chunk
                    log(f"interrupted after epoch {epoch + 1}: saved in {checkpoints.latest()}; "
                        f"continue with `mnistlab train --resume --out {folder.path}`")
                    raise _Stopped
        except TrainingDiverged as exc:
            last = checkpoints.latest()
            if last is None:
                folder.remove_training_outputs()
            raise TrainingDiverged(f"{exc}. " + (f"Last good checkpoint: {last}" if last else
                                   "Nothing was saved (it diverged in the first epoch)")
                                   + ". Try a lower --learning-rate") from None
        except _Stopped:
            raise KeyboardInterrupt from None
        except KeyboardInterrupt:  # a second Ctrl-C, or one from elsewhere: nothing is saved now
            log(f"interrupted at once: nothing saved since the last checkpoint "
                f"({checkpoints.latest() or 'none: --resume starts over'})")
            raise
        finally:
            summaries.close()
    return _finish(folder, settings, state, history, clock, evaluate_split, data, infer, log)


def with_font_digits(data: Dataset, share: float, seed: int, log: Callable[[str], None] = print,
                     dirs: tuple[str, ...] | None = None) -> Dataset:
    """``data`` with ``share`` x its training split more training digits set in the training half of
    the installed fonts (``shifts.training_font_digits``): other shapes than MNIST's writers make.
    Validation and test stay MNIST's. Without such fonts, says so and trains on MNIST alone."""
    n = round(share * len(data.train))
    if not n:
        return data
    from mnistlab import shifts

    try:
        fonts = shifts.training_font_digits(n, seed, dirs or shifts.FONT_DIRS)
    except shifts.Unavailable as exc:
        log(f"--fonts {share:g}: {exc}; training on MNIST's digits alone")
        return data
    log(f"--fonts {share:g}: {len(fonts.labels):,} font digits added to the training split ({fonts.note})")
    train = data.train
    extra = fonts.images.reshape((-1, *train.images.shape[1:])).astype(train.images.dtype)
    labels = one_hot(fonts.labels) if train.labels.ndim == 2 else fonts.labels
    return dataclasses.replace(data, train=Split(np.concatenate([train.images, extra]),
                                                 np.concatenate([train.labels, labels.astype(train.labels.dtype)])))


def _start(folder: RunFolder, settings: Settings, checkpoints: Checkpoints, state: TrainingState, resume: bool,
           log: Callable[[str], None]) -> tuple[list[dict[str, float]], Clock]:
    """Restore the state to resume from (history and timing up to it), or write a new run's config."""
    if not resume:
        folder.write_config(settings.to_json())
        return [], Clock()
    latest = checkpoints.latest()
    if latest is None:
        log(f"no checkpoint in {folder.checkpoints}: starting from the beginning")
        return [], Clock(folder.read_timing())
    checkpoints.restore(latest)
    done, step = int(state.epoch.numpy()), int(state.step_in_epoch.numpy())
    log(f"resumed from {latest}: epoch {done + 1}, step {step}" if step else f"resumed from {latest} after epoch {done}")
    return folder.read_history()[:done], Clock(folder.read_timing(), done, mid_epoch=step > 0)


def _epoch_row(epoch: int, state: TrainingState, plan: Plan, recipe: Recipe, evaluate_split: Callable, model: Any,
               data: Dataset, infer: Callable) -> dict[str, float]:
    """The epoch's line of ``history.csv``: plain cross-entropy and accuracy on both splits."""
    train_loss, train_accuracy = state.train_metrics()
    val = evaluate_split(model, data.validation, infer) if len(data.validation) else None
    return {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy,
            "val_loss": val.loss if val else float("nan"), "val_accuracy": val.accuracy if val else float("nan"),
            "learning_rate": float(learning_rate_at(state.optimizer.iterations, recipe, plan.total_steps,
                                                    plan.steps_per_epoch))}


def _save_interrupted(folder: RunFolder, checkpoints: Checkpoints, state: TrainingState, plan: Plan,
                      clock: Clock, log: Callable[[str], None]) -> None:
    path = checkpoints.save_interrupted()
    folder.write_timing(clock.to_json())
    epoch, step = int(state.epoch.numpy()) + 1, int(state.step_in_epoch.numpy())
    log(f"interrupted in epoch {epoch} after step {step} of {plan.epoch_steps(epoch - 1)}: the exact position "
        f"is saved in {path}; continue with `mnistlab train --resume --out {folder.path}`")


def float32_model(settings: Settings, model: Any) -> Any:
    """The trained model as users get it: float32 (a mixed-precision model is rebuilt in float32
    and given the same weights, which mixed precision keeps in float32 anyway)."""
    if model.dtype_policy.name == "float32":  # the policy it was built under
        return model
    with distribute.dtype_policy("float32"):
        copy = models.build(settings.model, **settings.arch)
    copy.set_weights(model.get_weights())
    return copy


def _calibrate(folder: RunFolder, model: Any, data: Dataset, infer: Callable,
               evaluate_split: Callable) -> calibrate.Calibration | None:
    """Fit the temperature on the validation split and save it (``calibration.json``); None without one."""
    if not len(data.validation):
        return None
    val = evaluate_split(model, data.validation, infer)
    calibration = calibrate.calibrate(val.logits, val.labels)
    folder.write_calibration(calibration.to_json())
    return calibration


def _finish(folder: RunFolder, settings: Settings, state: TrainingState, history: list[dict[str, float]],
            clock: Clock, evaluate_split: Callable, data: Dataset, infer: Callable,
            log: Callable[[str], None]) -> TrainResult:
    """Save the final model, test it, write ``metrics.json`` and ``timing.json``."""
    log(f"Train Finished takes: {clock.to_json()['train_seconds']:.2f} s")
    model = float32_model(settings, state.model)
    if model is not state.model:
        infer = compile_inference(model, settings.recipe.towers)
    folder.write_model(model)
    calibration = _calibrate(folder, model, data, infer, evaluate_split)
    temperature = calibration.temperature if calibration else 1.0
    test = evaluate_split(model, data.test, infer, temperature)
    best = max(history, key=lambda r: r["val_accuracy"]) if history and len(data.validation) else None
    metrics = {
        "model": settings.model,
        "params": int(model.count_params()),
        "train_images": len(data.train),
        "epochs": len(history),
        "steps": int(state.optimizer.iterations.numpy()),
        "test_loss": test.loss,
        "test_accuracy": test.accuracy,
        "val_accuracy": history[-1]["val_accuracy"] if history else float("nan"),
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "temperature": temperature,
        "test_ece": test.ece,
        "test_ece_uncalibrated": test.ece_uncalibrated,
    }
    folder.write_metrics(metrics)
    timing = clock.to_json()
    folder.write_timing(timing)
    log(f"Test Accuracy: {test.accuracy:.4f}  Test Loss: {test.loss:.6f}")
    if calibration:
        log(f"Calibrated: temperature {temperature:.3f} (fitted on validation); test ECE "
            f"{test.ece_uncalibrated:.2%} -> {test.ece:.2%}")
    if settings.train.tflite:
        folder.convert_to_tflite(model, data.test.images, log, test.logits)  # predict/serve answer from it without TensorFlow
    else:
        folder.remove_tflite()  # an older one no longer matches model.keras
    return TrainResult(folder.path, history, metrics, timing)

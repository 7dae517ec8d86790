"""Models and training on tiny synthetic data: build, learn, determinism, NaN guard, exact resume, logs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnistlab import models, train as train_module
from mnistlab.data import Split, one_hot
from mnistlab.errors import MnistlabError
from mnistlab.inference import predict_logits
from mnistlab.runs import RunFolder
from mnistlab.train import Chunk, TrainConfig, TrainingDiverged, learning_rate_at, plan_chunks, train
from synthetic import synthetic_dataset

QUIET = dict(progress=False, tflite=False)  # model.tflite is tested where predict uses it
NO_TB = dict(progress=False, tensorboard=False, tflite=False)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_model_builds_trains_and_loss_falls(name, data, tmp_path):
    model = models.build(name)
    assert model.output_shape == (None, 10)
    assert model.input_shape == (None, 28, 28, 1)
    lines: list[str] = []
    recipe = dict(epochs=3, batch_size=32, learning_rate=1e-3, optimizer="adam", schedule="constant")
    result = train(name, data, tmp_path / name, TrainConfig(**NO_TB), recipe, log=lines.append)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0], losses
    assert np.isfinite(losses).all()
    assert lines[0].startswith(f"{name}: adam 0.001 (constant), batch 32, 3 epochs")  # the resolved recipe first
    assert len([line for line in lines if line.startswith("Train Epoch:")]) == 3
    assert any(line.startswith("Train Finished takes:") for line in lines)
    for name_ in ("config.json", "history.csv", "metrics.json", "timing.json", "model.keras"):
        assert (tmp_path / name / name_).is_file()
    assert not (tmp_path / name / "model.tflite").exists()  # --no-tflite


def test_learns_synthetic_data(data, tmp_path):
    result = train("softmax", data, tmp_path / "r", TrainConfig(**NO_TB), dict(epochs=10), log=[].append)
    assert result.metrics["test_accuracy"] > 0.9


def test_train_and_validation_loss_are_the_same_quantity(data, tmp_path):
    """With label smoothing the optimized loss is not cross-entropy; the reported one must be."""
    import keras

    result = train("mlp", data, tmp_path / "ls", TrainConfig(**NO_TB), dict(epochs=2, label_smoothing=0.3),
                   log=[].append)
    model = keras.saving.load_model(tmp_path / "ls" / "model.keras")
    logits = model.predict(data.validation.images, verbose=0)
    plain = float(keras.ops.mean(keras.losses.sparse_categorical_crossentropy(data.validation.labels, logits,
                                                                              from_logits=True)))
    assert result.history[-1]["val_loss"] == pytest.approx(plain, rel=1e-4)
    # the train loss of the last epoch is also plain cross-entropy: near the validation loss, not the
    # smoothed loss (which is >= 0.3 * ln 10 / 10 * 9 ~ 0.62 at best)
    assert result.history[-1]["train_loss"] < 0.5


def test_same_seed_same_weights_and_numbers(data, tmp_path):
    config = TrainConfig(seed=7, **NO_TB)
    arch = dict(filters=(4, 8), fc_units=(16,))
    runs = [train("cnn-hvass", data, tmp_path / f"r{i}", config, dict(epochs=2), arch, log=[].append) for i in range(2)]
    assert runs[0].history == runs[1].history
    assert_same_run(tmp_path / "r0", tmp_path / "r1")
    other = train("cnn-hvass", data, tmp_path / "r2", TrainConfig(seed=8, **NO_TB), dict(epochs=2), arch,
                  log=[].append)
    assert other.history[0]["train_loss"] != runs[0].history[0]["train_loss"]


def test_font_digits_join_the_training_split_only(data, tmp_path):
    dejavu = [p for p in models_fonts("print") if p.name == "DejaVuSans-Bold.ttf"]  # a training-half font
    if not dejavu:
        pytest.skip("fonts-dejavu-core is not installed")
    (tmp_path / dejavu[0].name).write_bytes(dejavu[0].read_bytes())
    lines: list[str] = []
    more = train_module.with_font_digits(data, 0.25, seed=0, log=lines.append, dirs=(str(tmp_path),))
    n = len(data.train)
    assert len(more.train) == n + round(0.25 * n) and more.validation is data.validation and more.test is data.test
    np.testing.assert_array_equal(more.train.images[:n], data.train.images)
    assert more.train.images.dtype == data.train.images.dtype and more.train.labels.dtype == data.train.labels.dtype
    assert np.bincount(more.train.labels[n:], minlength=10).min() >= round(0.25 * n) // 10
    assert "font digits added to the training split (1 print fonts" in lines[0]
    assert train_module.with_font_digits(data, 0.0, seed=0, log=lines.append) is data
    lines.clear()
    empty = tmp_path / "none"
    empty.mkdir()
    assert train_module.with_font_digits(data, 0.25, seed=0, log=lines.append, dirs=(str(empty),)) is data
    assert lines == [lines[0]] and "no fonts of the training half installed" in lines[0] and "MNIST's digits alone" in lines[0]


def test_font_digits_take_the_form_of_one_hot_labels(data, tmp_path):
    dejavu = [p for p in models_fonts("print") if p.name == "DejaVuSans-Bold.ttf"]
    if not dejavu:
        pytest.skip("fonts-dejavu-core is not installed")
    (tmp_path / dejavu[0].name).write_bytes(dejavu[0].read_bytes())
    hot = dataclasses.replace(data, train=Split(data.train.images, one_hot(data.train.labels)))
    more = train_module.with_font_digits(hot, 0.25, seed=0, log=[].append, dirs=(str(tmp_path),))
    plain = train_module.with_font_digits(data, 0.25, seed=0, log=[].append, dirs=(str(tmp_path),))
    assert more.train.labels.shape == (len(plain.train), 10) and more.train.labels.dtype == np.float32
    np.testing.assert_array_equal(more.train.labels.argmax(1), plain.train.labels)


def test_recipe_fonts_train_on_more_images(data, tmp_path):
    if not models_fonts("hand") and not models_fonts("print"):
        pytest.skip("no fonts of the training half installed")
    result = train("softmax", data, tmp_path / "f", TrainConfig(**NO_TB), dict(epochs=1, fonts=0.5), log=[].append)
    assert result.metrics["train_images"] == len(data.train) + round(0.5 * len(data.train))
    assert json.loads((tmp_path / "f" / "config.json").read_text())["recipe"]["fonts"] == 0.5


def models_fonts(style: str) -> list[Path]:
    from mnistlab import shifts

    return shifts.find_fonts(style, half="train")[0]


def exploding_rate(after_steps: int):
    """A schedule (patched in for ``learning_rate_at``) that is sane for ``after_steps`` steps, then
    1e12: the way to reach divergence now that impossible flag values are refused."""
    def rate(step, recipe, total_steps, steps_per_epoch):
        import tensorflow as tf

        return tf.where(tf.cast(step, tf.float32) < after_steps, 0.1, 1e12)
    return rate


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "learning_rate_at", exploding_rate(after_steps=19))  # epoch 2 diverges
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"NaN/inf in epoch 2.*Last good checkpoint: .*epoch-1"):
        train("mlp", data, run, TrainConfig(**NO_TB), dict(epochs=4, optimizer="sgd", schedule="step",
                                                            batch_size=32), log=[].append)
    assert (run / "checkpoints" / "epoch-1.index").exists()
    assert not (run / "checkpoints" / "epoch-2.index").exists()
    assert not (run / "model.keras").exists()
    assert [r["epoch"] for r in RunFolder(run).read_history()] == [1]


def test_divergence_in_the_first_epoch_leaves_a_folder_that_can_be_reused(data, tmp_path, monkeypatch):
    run = tmp_path / "nan1"
    with monkeypatch.context() as mp:
        mp.setattr(train_module, "learning_rate_at", exploding_rate(after_steps=0))
        with pytest.raises(TrainingDiverged, match="Nothing was saved"):
            train("mlp", data, run, TrainConfig(**NO_TB), dict(epochs=2, optimizer="sgd", schedule="step"),
                  log=[].append)
    assert not RunFolder(run).is_run()
    train("mlp", data, run, TrainConfig(**NO_TB), dict(epochs=1), log=[].append)  # the same --out works again


def test_existing_run_folder_needs_resume_and_other_folders_are_not_overwritten(data, tmp_path):
    train("softmax", data, tmp_path / "r", TrainConfig(**NO_TB), dict(epochs=1), log=[].append)
    with pytest.raises(MnistlabError, match="already holds a run"):
        train("softmax", data, tmp_path / "r", TrainConfig(**QUIET), dict(epochs=1), log=[].append)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "history.csv").write_text("my own file")
    with pytest.raises(MnistlabError, match="holds other files"):
        train("softmax", data, mine, TrainConfig(**NO_TB), dict(epochs=1), log=[].append)
    assert (mine / "history.csv").read_text() == "my own file"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MnistlabError, match="is a file"):
        train("softmax", data, tmp_path / "afile", TrainConfig(**NO_TB), dict(epochs=1), log=[].append)


def test_tensorboard_events_hold_scalars_histograms_and_graph(data, tmp_path):
    import tensorflow as tf

    train("cnn-hvass", data, tmp_path / "tb", TrainConfig(**QUIET), dict(epochs=2),
          dict(filters=(4, 8), fc_units=(16,)), log=[].append)
    found = {"train": set(), "validation": set()}
    graphs = 0
    for split in found:
        for path in (tmp_path / "tb" / "tensorboard" / split).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                graphs += bool(event.graph_def)
                for value in event.summary.value:
                    found[split].add((value.tag, value.metadata.plugin_data.plugin_name))
    for split in found:
        assert ("epoch_loss", "scalars") in found[split]
        assert ("epoch_accuracy", "scalars") in found[split]
    histograms = {tag for tag, plugin in found["train"] if plugin == "histograms"}
    model = models.build("cnn-hvass", filters=(4, 8), fc_units=(16,))
    assert len(histograms) == len(model.weights)  # one histogram per weight
    assert graphs >= 1


def test_config_json_records_resolved_settings(data, tmp_path):
    train("mlp", data, tmp_path / "c", TrainConfig(course=True, **NO_TB), dict(epochs=1), dict(hidden=(32,)),
          log=[].append)
    saved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert saved["model"] == "mlp"
    assert saved["arch"]["hidden"] == [32] and saved["arch"]["activation"] == "relu"
    assert saved["recipe"]["optimizer"] == "adam" and saved["recipe"]["learning_rate"] == 0.01
    assert saved["recipe"]["batch_size"] == 50 and saved["recipe"]["epochs"] == 1
    assert "tensorflow" in saved["versions"]


@pytest.mark.parametrize("recipe, arch, config, message", [
    (dict(learning_rate=-0.1), {}, {}, "--learning-rate -0.1: expected a positive number"),
    (dict(batch_size=0), {}, {}, "--batch-size 0"),
    (dict(epochs=0, steps=0), {}, {}, "--epochs 0 / --steps 0"),
    (dict(label_smoothing=1.5), {}, {}, "--label-smoothing 1.5"),
    (dict(gamma=-1.0, schedule="step"), {}, {}, "--gamma -1.0"),
    (dict(rho=1.0), {}, {}, "--rho 1.0"),
    (dict(optimizer="lion"), {}, {}, "--optimizer lion: expected one of sgd"),
    (dict(momentum=0.9), {}, {}, "unknown recipe setting momentum"),
    ({}, dict(dropout=1.5), {}, "--dropout 1.5"),
    ({}, dict(dropout=-0.5), {}, "--dropout -0.5"),
    ({}, dict(hidden=(0,)), {}, "--hidden 0"),
    ({}, dict(filters=(0,)), {}, None),  # softmax has no filters: refused as an unknown option
    ({}, {}, dict(seed=-1), "--seed -1"),
    ({}, {}, dict(keep_checkpoints=0), "--keep-checkpoints 0"),
])
def test_bad_options_fail_before_any_work(recipe, arch, config, message, data, tmp_path):
    with pytest.raises(MnistlabError, match=message or "no option filters"):
        train("softmax" if "filters" not in arch else "softmax", data, tmp_path / "bad", TrainConfig(**config),
              recipe, arch, log=[].append)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("arch, message", [
    (dict(filters=(0,)), "--filters 0"), (dict(filters=(-4,)), "--filters -4"), (dict(kernel_size=0), "--kernel-size 0"),
    (dict(kernel_size=100), "--kernel-size 100"), (dict(fc_units=(0,)), "--fc-units 0"),
    (dict(convs=(0,)), "--convs 0"), (dict(pooling="huge"), "--pooling huge"),
])
def test_bad_architecture_values_are_refused_with_the_flag(arch, message):
    with pytest.raises(MnistlabError, match=message):
        models.build("cnn-hvass", **arch)


def test_architecture_options_cover_the_course_exercises():
    base = models.build("cnn-hvass")
    assert models.build("cnn-hvass", filters=(16, 36, 64)).count_params() != base.count_params()
    assert any(l.__class__.__name__ == "MaxPooling2D" for l in base.layers)
    stride = models.build("cnn-hvass", pooling="stride")
    assert not any("Pooling" in l.__class__.__name__ for l in stride.layers)
    assert [l.strides for l in stride.layers if l.__class__.__name__ == "Conv2D"] == [(2, 2), (2, 2)]
    nopool = models.build("cnn-hvass", pooling="none")
    assert nopool.count_params() > base.count_params()  # 28x28 feature maps into fc128
    order = [l.__class__.__name__ for l in base.layers][:3]
    assert order == ["Conv2D", "MaxPooling2D", "Activation"]  # S4: pool, then relu
    assert [l.__class__.__name__ for l in models.build("cnn-hvass", act_after_pool=False).layers][:2] == \
        ["Conv2D", "MaxPooling2D"]  # relu fused into the conv, before pooling
    tanh = models.build("mlp", activation="tanh")
    assert tanh.layers[1].activation.__name__ == "tanh"
    normal = models.build("mlp", init="random_normal", seed=0)
    assert 0.9 < float(np.std(normal.layers[1].get_weights()[0])) < 1.1  # TF1's N(0, 1)
    with pytest.raises(MnistlabError, match="no option filters"):
        models.build("mlp", filters=(8,))


def test_convs_stack_several_convolutions_per_stage():
    def kinds(model):
        return [l.__class__.__name__ for l in model.layers]

    vgg = models.build("cnn-hvass", filters=(4, 8), convs=(1, 2), fc_units=(), act_after_pool=False)
    assert kinds(vgg) == ["Conv2D", "MaxPooling2D", "Conv2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert [l.filters for l in vgg.layers if hasattr(l, "filters")] == [4, 8, 8]
    assert vgg.output_shape == (None, 10)
    same = models.build("cnn-hvass", filters=(4, 8), convs=(2,), fc_units=())
    assert [l.filters for l in same.layers if hasattr(l, "filters")] == [4, 4, 8, 8]  # one count: every stage
    bn = models.build("cnn-hvass", filters=(4,), convs=(2,), fc_units=(), batchnorm=True)
    assert kinds(bn)[:7] == ["Conv2D", "BatchNormalization", "Activation", "Conv2D", "BatchNormalization",
                             "MaxPooling2D", "Activation"]  # S4's order: the last conv pools, then relu
    stride = models.build("cnn-hvass", filters=(4,), convs=(2,), fc_units=(), pooling="stride")
    assert [l.strides for l in stride.layers if hasattr(l, "strides") and hasattr(l, "filters")] == [(1, 1), (2, 2)]
    for bad in ((1, 2, 3), (0,)):
        with pytest.raises(MnistlabError, match="--convs"):
            models.build("cnn-hvass", filters=(4, 8), convs=bad)
    with pytest.raises(MnistlabError, match="--activation swish"):
        models.build("mlp", activation="swish")


def test_clean_epochs_train_the_last_epochs_without_augmentation(data, tmp_path, monkeypatch):
    import tensorflow as tf

    from mnistlab import augment

    augmented = tf.Variable(0, dtype=tf.int64)

    def counting(x, seed, augmentation):  # counts the images it is given, at run time, inside the compiled step
        augmented.assign_add(tf.shape(x, out_type=tf.int64)[0])
        return x

    monkeypatch.setattr(augment, "augment_batch", counting)
    recipe = dict(epochs=3, batch_size=40, augment="affine", clean_epochs=1)
    train("softmax", data, tmp_path / "clean", TrainConfig(**NO_TB), recipe, log=[].append)
    assert int(augmented.numpy()) == 2 * len(data.train)  # epochs 1-2 augmented, epoch 3 as they are
    with pytest.raises(MnistlabError, match="--clean-epochs -1"):
        train("softmax", data, tmp_path / "bad", TrainConfig(), dict(clean_epochs=-1), log=[].append)


def test_learning_rate_schedules_are_pure_functions_of_the_step():
    def lr(schedule: str, step: int) -> float:
        recipe = models.Recipe("sgd", 1.0, 10, epochs=10, schedule=schedule, gamma=0.5)
        return float(learning_rate_at(step, recipe, total_steps=100, steps_per_epoch=10))
    assert lr("constant", 57) == 1.0
    assert lr("cosine", 0) == pytest.approx(1.0) and lr("cosine", 50) == pytest.approx(0.5) and lr("cosine", 100) == pytest.approx(0.0, abs=1e-7)
    assert lr("onecycle", 0) == pytest.approx(0.04) and lr("onecycle", 20) == pytest.approx(1.0)
    assert lr("onecycle", 60) == pytest.approx(0.5) and lr("onecycle", 100) == pytest.approx(0.0, abs=1e-7)
    assert lr("step", 9) == 1.0 and lr("step", 10) == 0.5 and lr("step", 35) == 0.125


def test_stable_loss_where_log_softmax_would_give_nan():
    """S1's loss -sum(y*log(softmax(z))) is NaN for confident logits; ours stays finite."""
    import tensorflow as tf

    logits = tf.constant([[1000.0, -1000.0] + [0.0] * 8])
    labels = tf.constant([1])
    naive = -tf.math.log(tf.nn.softmax(logits))[0, 1]
    ours = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)[0]
    assert not np.isfinite(naive.numpy())
    assert np.isfinite(ours.numpy()) and ours.numpy() == pytest.approx(2000.0)


# ---------------------------------------------------------------------------- chunk planning
def test_plan_chunks_covers_every_step_once_with_the_partial_batch_alone():
    assert plan_chunks(250, 100, 0, 3) == [Chunk(0, 2, 100), Chunk(2, 1, 50)]
    assert plan_chunks(1000, 10, 0, 100, chunk_steps=30) == [Chunk(0, 30, 10), Chunk(30, 30, 10),
                                                              Chunk(60, 30, 10), Chunk(90, 10, 10)]
    assert plan_chunks(1000, 10, 45, 100, chunk_steps=30) == [Chunk(45, 30, 10), Chunk(75, 25, 10)]  # resumed
    assert plan_chunks(1005, 10, 95, 101, chunk_steps=30) == [Chunk(95, 5, 10), Chunk(100, 1, 5)]
    assert plan_chunks(1000, 10, 0, 7) == [Chunk(0, 7, 10)]  # --steps shorter than an epoch
    assert plan_chunks(1000, 10, 100, 100) == []
    for n, b, start, stop, size in ((997, 32, 0, 32, 7), (640, 64, 3, 10, 4), (5, 10, 0, 1, 3)):
        chunks = plan_chunks(n, b, start, stop, size)
        steps = [c.first + i for c in chunks for i in range(c.steps)]
        assert steps == list(range(start, stop))
        images = sum(c.steps * c.batch for c in chunks)
        assert images == min(n, stop * b) - start * b
        assert all(c.steps <= size for c in chunks)


def test_plan_counts_steps_and_epochs():
    plan = train_module.Plan.of(models.Recipe("adam", 1e-3, 128, epochs=3), 55_000)
    assert (plan.steps_per_epoch, plan.total_steps, plan.epochs) == (430, 1290, 3)
    steps = train_module.Plan.of(models.Recipe("adam", 1e-4, 64, steps=10_000), 55_000)
    assert (steps.epochs, steps.epoch_steps(0), steps.epoch_steps(11)) == (12, 860, 10_000 - 11 * 860)


# ---------------------------------------------------------------------------- exact resume
def model_weights(run: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(run / "model.keras").get_weights()


def assert_same_run(a: Path, b: Path) -> None:
    """Weights bit for bit, and the deterministic files byte for byte."""
    for x, y in zip(model_weights(a), model_weights(b), strict=True):
        np.testing.assert_array_equal(x, y)
    for name in ("history.csv", "metrics.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("recipe", [dict(steps=6, batch_size=33),  # 17 + 16 images a tower
                                    dict(epochs=1, batch_size=599)])  # the epoch's last batch: 1 image, one tower empty
def test_towers_train_the_same_model_as_one_batch(recipe, data, tmp_path):
    """Two towers compute the same gradient, summed in another order: in float32 the same weights to rounding."""
    arch = dict(filters=(4, 8, 8))
    runs = [train("fast", data, tmp_path / f"t{k}", TrainConfig(seed=3, **NO_TB),
                  dict(recipe, towers=k, precision="float32"), arch, log=[].append) for k in (1, 2)]
    assert [r.metrics["steps"] for r in runs] == [runs[0].metrics["steps"]] * 2
    one, two = model_weights(tmp_path / "t1"), model_weights(tmp_path / "t2")
    assert not all(np.array_equal(a, b) for a, b in zip(one, two))  # another summation order ...
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # ... of the same gradient
    assert json.loads((tmp_path / "t2" / "config.json").read_text())["recipe"]["towers"] == 2


def test_inference_in_parts_gives_the_same_logits_as_one_batch(tmp_path):
    """Validation and the after-training passes run in ``towers`` pieces: every batch size, one image included."""
    from mnistlab.inference import compile_inference

    model = models.build("fast", filters=(4, 8, 8))
    images = np.random.default_rng(1).random((7, 28, 28, 1), dtype=np.float32)
    whole, parts = compile_inference(model), compile_inference(model, parts=2)
    for n in (1, 2, 7):  # smaller than the parts, even, odd
        np.testing.assert_allclose(parts(images[:n]), whole(images[:n]), rtol=1e-5, atol=1e-6)
    assert parts(images).shape == (7, 10)


def test_towers_are_refused_for_batch_norm_and_for_batches_smaller_than_them(data, tmp_path):
    with pytest.raises(MnistlabError, match="--towers 2: model 'cnn' has batch normalization"):
        train("cnn", data, tmp_path / "bn", TrainConfig(**NO_TB), dict(towers=2), log=[].append)
    with pytest.raises(MnistlabError, match="--towers 4 with --batch-size 2: expected at most one tower per image"):
        train("fast", data, tmp_path / "small", TrainConfig(**NO_TB), dict(towers=4, batch_size=2), log=[].append)
    assert not (tmp_path / "bn").exists() and not (tmp_path / "small").exists()


def test_towers_size_the_thread_pools_before_tensorflow_starts(tmp_path):
    """In a fresh process, as `mnistlab train` runs: each op gets cores / towers threads, the towers one
    inter-op thread each (a setting TensorFlow ignores once its runtime has started)."""
    script = tmp_path / "towers.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from synthetic import synthetic_dataset\n"
        "from mnistlab import runtime\n"
        "from mnistlab.train import TrainConfig, train\n"
        "train('fast', synthetic_dataset(), sys.argv[1], TrainConfig(progress=False, tensorboard=False, tflite=False),\n"
        "      dict(steps=2, batch_size=32, towers=2), dict(filters=(4, 8, 8)), log=lambda line: None)\n"
        "import tensorflow as tf\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),\n"
        "      tf.config.threading.get_inter_op_parallelism_threads(), runtime.cpu_count())\n")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    intra, inter, cores = map(int, done.stdout.split()[-3:])
    assert (intra, inter) == (max(1, cores // 2), 2)


# Three kinds the issue names: fast (no BN, no dropout), cnn (batch norm, AdamW, label smoothing) and a
# dropout + augmentation model (cnn3: conv and fc dropout), each small, 3 epochs of 19 steps.
RESUME_CASES = {
    "fast": ("fast", dict(epochs=3, batch_size=32), dict(filters=(4, 8, 8))),
    "cnn": ("cnn", dict(epochs=3, batch_size=32), dict(filters=(4, 8, 8))),
    "dropout+augment": ("cnn3", dict(epochs=3, batch_size=32, augment="robust", clean_epochs=1),
                        dict(filters=(4, 8, 8), fc_units=(16,))),
}


@pytest.fixture(scope="module")
def straight_runs(data, tmp_path_factory):
    """Each case trained straight through once."""
    root = tmp_path_factory.mktemp("straight")
    for case, (name, recipe, arch) in RESUME_CASES.items():
        train(name, data, root / case, TrainConfig(seed=5, **NO_TB), recipe, arch, log=[].append)
    return root


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_ctrl_c_mid_epoch_then_resume_is_bit_identical_to_a_straight_run(case, data, straight_runs, tmp_path,
                                                                         monkeypatch):
    """A real SIGINT, sent right after an observed step in the middle of epoch 2 (not after a sleep)."""
    name, recipe, arch = RESUME_CASES[case]
    monkeypatch.setattr(train_module, "CHUNK_STEPS", 4)  # several chunks per epoch of 19 steps
    sent = []

    def interrupt_mid_epoch_2(epoch: int, step: int) -> None:
        if epoch == 1 and step >= 19 + 8 and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / case
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        train(name, data, run, TrainConfig(seed=5, **NO_TB), recipe, arch, log=lines.append,
              on_chunk=interrupt_mid_epoch_2)
    assert sent == [27]
    assert lines[-1].startswith("interrupted in epoch 2 after step 8 of 19: the exact position is saved in")
    assert (run / "checkpoints" / "interrupted.index").is_file() and not (run / "model.keras").exists()
    assert (run / "checkpoints" / "epoch-1.index").is_file()  # the clean epoch checkpoint is untouched
    resumed: list[str] = []
    result = train(None, data, run, TrainConfig(**NO_TB), resume=True, log=resumed.append)
    assert resumed[1].startswith("resumed from") and resumed[1].endswith("epoch 2, step 8")
    assert result.metrics["steps"] == 3 * 19
    assert not (run / "checkpoints" / "interrupted.index").exists()  # gone at the next epoch's end
    assert_same_run(straight_runs / case, run)
    timing = json.loads((run / "timing.json").read_text())
    assert timing["wall_seconds"] >= timing["train_seconds"] > 0 and len(timing["epoch_seconds"]) == 3


def test_resume_from_an_epoch_checkpoint_after_a_hard_stop_is_bit_identical(data, straight_runs, tmp_path):
    """A KeyboardInterrupt that is not a deferred Ctrl-C (here raised from the epoch log line) saves
    nothing new: the run continues from the last epoch checkpoint, still exactly."""
    name, recipe, arch = RESUME_CASES["dropout+augment"]

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("Train Epoch: 01"):
            raise KeyboardInterrupt

    run = tmp_path / "hard"
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        train(name, data, run, TrainConfig(seed=5, **NO_TB), recipe, arch,
              log=lambda line: (lines.append(line), stop_after_epoch_1(line)))
    assert lines[-1].startswith("interrupted at once: nothing saved since the last checkpoint")
    train(name, data, run, TrainConfig(seed=5, **NO_TB), recipe, arch, resume=True, log=[].append)
    assert_same_run(straight_runs / "dropout+augment", run)


def test_a_second_ctrl_c_interrupts_at_once(data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "CHUNK_STEPS", 4)

    def twice(epoch: int, step: int) -> None:
        if step == 8:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        train("softmax", data, tmp_path / "twice", TrainConfig(**NO_TB), dict(epochs=2, batch_size=32),
              log=lines.append, on_chunk=twice)
    assert lines[-1].startswith("interrupted at once")
    assert not (tmp_path / "twice" / "checkpoints" / "interrupted.index").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_resume_refuses_what_it_would_ignore(data, tmp_path):
    run = tmp_path / "run"
    train("softmax", data, run, TrainConfig(seed=3, **NO_TB), dict(epochs=1), log=[].append)
    folder = RunFolder(run)
    for kwargs, message in [
        (dict(model="mlp"), "it holds a 'softmax' run, not 'mlp'"),
        (dict(recipe={"epochs": 5}), "--epochs 5 \\(the run's recipe has 1\\)"),
        (dict(arch={"hidden": (8,)}), "--hidden 8 \\(the run's model has \\)"),
        (dict(config={"seed": 4}), "--seed 4 \\(the run has 3\\)"),
        (dict(data={"dataset": "fashion-mnist"}), "--dataset fashion-mnist \\(the run used mnist\\)"),
        (dict(data={"validation_size": 10}), "--validation-size 10"),
    ]:
        with pytest.raises(MnistlabError, match="--resume .*refused, " + message):
            train_module.settings_to_resume(folder, **kwargs)
    settings = train_module.settings_to_resume(folder, config={"progress": True, "seed": 3},
                                               data={"data_dir": "/elsewhere", "dataset": "mnist"})
    assert settings.train.progress is True and settings.data.data_dir == "/elsewhere"
    with pytest.raises(MnistlabError, match="--seed 4"):
        train("softmax", data, run, TrainConfig(seed=4), resume=True, log=[].append)


def test_cli_resume_refuses_flags_before_loading_data(tmp_path, capsys, monkeypatch):
    from mnistlab import cli, data as data_module

    run = tmp_path / "run"
    train("softmax", synthetic_dataset(n_train=100, n_val=20, n_test=20), run, TrainConfig(**NO_TB), dict(epochs=1),
          log=[].append)
    monkeypatch.setattr(data_module, "load", lambda config: pytest.fail("data loaded before the flags were checked"))
    assert cli.main(["train", "--resume", "--out", str(run), "--dataset", "fashion-mnist"]) == 2
    assert "--dataset fashion-mnist (the run used mnist)" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(run), "--learning-rate", "0.1"]) == 2
    assert "--learning-rate 0.1 (the run's recipe has 0.002)" in capsys.readouterr().err


def test_ema_ends_with_the_moving_average_of_the_weights(data, tmp_path):
    """--ema 0.9: the saved model is Keras' moving average, not the last step's weights, and it
    differs from a run without it; validation of the last epoch already uses it."""
    import keras

    plain = train("mlp", data, tmp_path / "plain", TrainConfig(seed=2, **NO_TB), dict(epochs=2, batch_size=32),
                  log=[].append)
    averaged = train("mlp", data, tmp_path / "ema", TrainConfig(seed=2, **NO_TB), dict(epochs=2, batch_size=32,
                     ema=0.9), log=[].append)
    a = keras.saving.load_model(tmp_path / "plain" / "model.keras").get_weights()
    b = keras.saving.load_model(tmp_path / "ema" / "model.keras").get_weights()
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))
    assert averaged.history[0]["val_loss"] == plain.history[0]["val_loss"]  # same steps; raw weights until the end
    assert averaged.history[-1]["val_loss"] != plain.history[-1]["val_loss"]
    assert averaged.metrics["test_accuracy"] > 0.8
    with pytest.raises(MnistlabError, match="--ema 1.0"):
        train("mlp", data, tmp_path / "bad", TrainConfig(), dict(ema=1.0), log=[].append)


def shifted_views(images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``images`` with a black border (MNIST's, so that np.roll brings in zeros as a shift does),
    and the five views the shift average sees: as they are, then each of ``models.SHIFTS``."""
    x = images.copy()
    x[:, [0, -1]] = 0
    x[:, :, [0, -1]] = 0
    return x, [x] + [np.roll(x, shift, axis=(1, 2)) for shift in models.SHIFTS]


def test_shift_average_answers_with_the_mean_over_one_pixel_shifts():
    import keras

    model = models.build("fast", seed=0)
    network = models.network_of(model)
    assert network is not model and network.name == models.NETWORK
    assert not [v for v in model.trainable_variables if all(v is not w for w in network.trainable_variables)]
    x, views = shifted_views(np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32))
    expected = np.mean([keras.ops.convert_to_numpy(network(v)) for v in views], axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), expected, atol=1e-5)
    assert sorted(models.SHIFTS) == [(-1, 0), (0, -1), (0, 1), (1, 0)]
    plain = models.build("fast", shift_average=False)
    assert models.network_of(plain) is plain


def test_a_shift_average_run_trains_the_same_network_and_answers_with_the_average(data, tmp_path):
    """Training sees the network alone: with the same seed its weights are bit for bit those of a
    run without the shift average; validation, the saved model and the test figures use the average."""
    import keras

    results = {avg: train("fast", data, tmp_path / f"avg-{avg}", TrainConfig(seed=3, **NO_TB),
                          dict(steps=12, batch_size=32), dict(filters=(4, 8, 8), shift_average=avg), log=[].append)
               for avg in (False, True)}
    plain = keras.saving.load_model(tmp_path / "avg-False" / "model.keras")
    averaged = keras.saving.load_model(tmp_path / "avg-True" / "model.keras")
    for a, b in zip(plain.get_weights(), models.network_of(averaged).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert results[True].history[0]["train_loss"] == results[False].history[0]["train_loss"]
    x, views = shifted_views(data.test.images)
    mean = np.mean([predict_logits(plain, v) for v in views], axis=0)
    np.testing.assert_allclose(predict_logits(averaged, x), mean, atol=1e-4)
    assert results[True].history[0]["val_loss"] != results[False].history[0]["val_loss"]


def test_first_stride_replaces_the_first_stages_pooling():
    model = models.network_of(models.build("fast"))
    kinds = [(l.__class__.__name__, getattr(l, "strides", None)) for l in model.layers]
    assert kinds[0] == ("Conv2D", (2, 2)) and kinds[1] == ("Conv2D", (1, 1))  # no pooling after the stem
    assert [k for k, _ in kinds].count("AveragePooling2D") == 2 and "MaxPooling2D" not in dict(kinds)  # fast's pools
    assert model.layers[-1].output.shape[1:] == (10,)
    assert models.build("cnn-hvass", first_stride=2).count_params() == models.build("cnn-hvass").count_params()
    with pytest.raises(MnistlabError, match="--first-stride 3"):
        models.build("fast", first_stride=3)

"""Models and training on tiny synthetic data: build, learn, determinism, NaN guard, resume, logs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mnistlab import models
from mnistlab.errors import MnistlabError
from mnistlab.train import ArchConfig, TrainConfig, TrainingDiverged, learning_rate_at, read_history, train
from synthetic import synthetic_dataset

QUIET = dict(progress=False)


def quiet_log(lines: list[str]):
    return lines.append


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_model_builds_trains_and_loss_falls(name, data, tmp_path):
    model = models.build(name)
    assert model.output_shape == (None, 10)
    assert model.input_shape == (None, 28, 28, 1)
    lines: list[str] = []
    config = TrainConfig(epochs=3, batch_size=32, learning_rate=1e-3, optimizer="adam", schedule="constant",
                         tensorboard=False, **QUIET)
    result = train(name, data, tmp_path / name, config, log=lines.append)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0], losses
    assert np.isfinite(losses).all()
    assert len([line for line in lines if line.startswith("Train Epoch:")]) == 3
    assert any(line.startswith("Train Finished takes:") for line in lines)
    for name_ in ("config.json", "history.csv", "metrics.json", "model.keras"):
        assert (tmp_path / name / name_).is_file()


def test_learns_synthetic_data(data, tmp_path):
    result = train("softmax", data, tmp_path / "r", TrainConfig(epochs=10, tensorboard=False, **QUIET), log=[].append)
    assert result.metrics["test_accuracy"] > 0.9


def test_same_seed_same_weights_and_numbers(data, tmp_path):
    config = TrainConfig(epochs=2, seed=7, tensorboard=False, **QUIET)
    arch = ArchConfig(filters=(4, 8), fc_units=(16,))
    runs = [train("cnn-hvass", data, tmp_path / f"r{i}", config, arch, log=[].append) for i in range(2)]
    assert runs[0].history == [dict(r, seconds=runs[0].history[i]["seconds"]) for i, r in enumerate(runs[1].history)]
    import keras
    w = [keras.saving.load_model(r.run_dir / "model.keras").get_weights() for r in runs]
    for a, b in zip(*w):
        np.testing.assert_array_equal(a, b)
    other = train("cnn-hvass", data, tmp_path / "r2", TrainConfig(epochs=2, seed=8, tensorboard=False, **QUIET),
                  arch, log=[].append)
    assert other.history[0]["train_loss"] != runs[0].history[0]["train_loss"]


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(data, tmp_path):
    # Epoch 1 trains normally; the step schedule then multiplies the rate by 1e12 -> divergence in epoch 2.
    config = TrainConfig(epochs=4, optimizer="sgd", learning_rate=0.1, schedule="step", gamma=1e12,
                         tensorboard=False, **QUIET)
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"NaN/inf in epoch 2.*ckpt-1"):
        train("mlp", data, run, config, log=[].append)
    assert (run / "checkpoints" / "ckpt-1.index").exists()
    assert not (run / "checkpoints" / "ckpt-2.index").exists()
    assert not (run / "model.keras").exists()
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [1]


def test_interrupt_saves_checkpoint_and_resume_matches_uninterrupted_run(data, tmp_path):
    config = TrainConfig(epochs=3, seed=3, tensorboard=False, **QUIET)
    straight = train("softmax", data, tmp_path / "straight", config, log=[].append)

    def interrupt_after_first_epoch(line: str) -> None:
        if line.startswith("Train Epoch: 01"):
            raise KeyboardInterrupt

    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train("softmax", data, run, config, log=interrupt_after_first_epoch)
    assert not (run / "model.keras").exists()
    lines: list[str] = []
    resumed = train("softmax", data, run, config, resume=True, log=lines.append)
    assert lines[0].startswith("resumed from")
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.metrics["steps"] == straight.metrics["steps"]
    import keras
    a = keras.saving.load_model(straight.run_dir / "model.keras").get_weights()
    b = keras.saving.load_model(run / "model.keras").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_existing_run_folder_needs_resume(data, tmp_path):
    train("softmax", data, tmp_path / "r", TrainConfig(epochs=1, tensorboard=False, **QUIET), log=[].append)
    with pytest.raises(MnistlabError, match="already holds a run"):
        train("softmax", data, tmp_path / "r", TrainConfig(epochs=1, **QUIET), log=[].append)


def test_tensorboard_events_hold_scalars_histograms_and_graph(data, tmp_path):
    import tensorflow as tf

    train("cnn-hvass", data, tmp_path / "tb", TrainConfig(epochs=2, **QUIET),
          ArchConfig(filters=(4, 8), fc_units=(16,)), log=[].append)
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
    train("mlp", data, tmp_path / "c", TrainConfig(epochs=1, course=True, tensorboard=False, **QUIET),
          ArchConfig(hidden=(32,)), log=[].append)
    saved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert saved["model"] == "mlp"
    assert saved["arch"]["hidden"] == [32]
    assert saved["recipe"]["optimizer"] == "adam" and saved["recipe"]["learning_rate"] == 0.01
    assert saved["recipe"]["batch_size"] == 50 and saved["recipe"]["epochs"] == 1
    assert "tensorflow" in saved["versions"]


@pytest.mark.parametrize("config, message", [
    (TrainConfig(learning_rate=-0.1), "--learning-rate -0.1"),
    (TrainConfig(batch_size=0), "--batch-size 0"),
    (TrainConfig(epochs=0, steps=0), "--epochs/--steps"),
    (TrainConfig(label_smoothing=1.5), "--label-smoothing"),
])
def test_bad_options_fail_before_any_work(config, message, data, tmp_path):
    with pytest.raises(MnistlabError, match=message):
        train("softmax", data, tmp_path / "bad", config, log=[].append)
    assert not (tmp_path / "bad").exists()


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
    with pytest.raises(MnistlabError, match="--activation 'swish'"):
        models.build("mlp", activation="swish")


def test_clean_epochs_train_the_last_epochs_without_augmentation(data, tmp_path, monkeypatch):
    import tensorflow as tf

    from mnistlab import augment

    augmented = tf.Variable(0, dtype=tf.int64)

    def counting(x):  # counts the images it is given, at run time, inside the compiled step
        augmented.assign_add(tf.shape(x, out_type=tf.int64)[0])
        return x

    monkeypatch.setattr(augment, "augment_batch", counting)
    config = TrainConfig(epochs=3, batch_size=40, augment=True, clean_epochs=1, progress=False, tensorboard=False)
    train("softmax", data, tmp_path / "clean", config, log=[].append)
    assert int(augmented.numpy()) == 2 * len(data.train)  # epochs 1-2 augmented, epoch 3 as they are
    with pytest.raises(MnistlabError, match="--clean-epochs -1"):
        train("softmax", data, tmp_path / "bad", TrainConfig(clean_epochs=-1), log=[].append)


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

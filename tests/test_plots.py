"""`mnistlab plot`: every picture drawn from tiny trained models on synthetic data.

The run folders are written here in the layout `mnistlab train` uses (model.keras, config.json,
metrics.json, history.csv), with the data as IDX files the config points at, so `Run` loads
them exactly as it loads a real run. Feature maps and the confusion matrix are checked against
an independent computation (raw TensorFlow ops, NumPy), the PNGs for size and content.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistlab import cli, data, evaluate, idx, plots, report
from mnistlab import runs as runs_module

N_TRAIN, N_TEST, N_VALIDATION = 200, 60, 20
FLIP_EVERY = 10  # every 10th test label is shifted by one, so some test images are always misclassified


def synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Role -> uint8 array: class c is a Gaussian blob at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:data.IMAGE_SIDE, 0:data.IMAGE_SIDE]
    centres = [(6 + 8 * (c // 4), 5 + 6 * (c % 4)) for c in range(data.NUM_CLASSES)]  # (row, column)
    out = {}
    for prefix, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = rng.integers(0, data.NUM_CLASSES, n)
        blobs = np.stack([np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 3.0 ** 2)) for r, c in centres])
        images = blobs[labels] * 230 + rng.uniform(0, 25, (n, data.IMAGE_SIDE, data.IMAGE_SIDE))
        if prefix == "test":
            labels[::FLIP_EVERY] = (labels[::FLIP_EVERY] + 1) % data.NUM_CLASSES
        out[f"{prefix}_images"] = images.clip(0, 255).astype(np.uint8)
        out[f"{prefix}_labels"] = labels.astype(np.uint8)
    return out


def tiny_cnn():
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(4, 3, activation="relu", name="conv_a"),  # 26 x 26 x 4
        layers.MaxPooling2D(2, name="pool_a"),  # 13 x 13 x 4: layer 1's feature maps
        layers.Conv2D(6, 3, name="conv_b"),  # 11 x 11 x 6
        layers.Activation("relu", name="relu_b"),
        layers.MaxPooling2D(2, name="pool_b"),  # 5 x 5 x 6: layer 2's feature maps
        layers.Flatten(name="flatten"),
        layers.Dense(10, name="logits"),
    ])


def tiny_softmax():
    import keras
    from keras import layers

    return keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(10, name="logits")])


def write_run(folder: Path, name: str, model, data_dir: Path, epochs: int = 2) -> Path:
    """Fit ``model`` on the synthetic data in ``data_dir`` and write a run folder."""
    import keras

    keras.utils.set_random_seed(0)
    config = data.DataConfig(data_dir=str(data_dir), validation_size=N_VALIDATION, download=False)
    ds = data.load(config)
    model.compile(optimizer=keras.optimizers.Adam(0.01), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rows = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        h = model.fit(ds.train.images, ds.train.labels, batch_size=32, epochs=1, verbose=0,
                      validation_data=(ds.validation.images, ds.validation.labels)).history
        rows.append({"epoch": epoch, "train_loss": h["loss"][0], "train_accuracy": h["accuracy"][0],
                     "val_loss": h["val_loss"][0], "val_accuracy": h["val_accuracy"][0],
                     "learning_rate": 0.01})
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    test_loss, test_accuracy = model.evaluate(ds.test.images, ds.test.labels, verbose=0)
    (folder / "metrics.json").write_text(json.dumps({"test_accuracy": test_accuracy, "test_loss": test_loss}))
    (folder / "config.json").write_text(json.dumps({
        "model": name,
        "data": {"dataset": "mnist", "data_dir": str(data_dir), "validation_size": N_VALIDATION, "download": False,
                 "mirrors": []},
        "train": {"epochs": epochs, "batch_size": 32, "note": "<script>alert('x')</script> & more"},
    }))
    with (folder / "history.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=runs_module.HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def make_runs(root: Path) -> dict[str, Path]:
    """Synthetic IDX data under ``root/data`` and two runs: ``cnn`` and ``softmax``."""
    for role, fact in data.DATASETS["mnist"].files.items():
        idx.write_idx(root / "data" / (fact.name + ".gz"), synthetic_arrays()[role])
    return {"cnn": write_run(root / "runs" / "cnn", "tiny-cnn", tiny_cnn(), root / "data"),
            "softmax": write_run(root / "runs" / "softmax", "softmax", tiny_softmax(), root / "data")}


def shared_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two runs, built once per session under pytest's base temp folder (test_report uses them too)."""
    root = tmp_path_factory.getbasetemp() / "mnistlab-plot-runs"
    if not (root / "complete").exists():
        make_runs(root)
        (root / "complete").touch()
    return {name: root / "runs" / name for name in ("cnn", "softmax")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return shared_runs(tmp_path_factory)


def check_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The PNG opens, has ``size`` (width, height) and is not blank; returns its RGB pixels."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.var() > 0
    return pixels


# (kind, extra arguments, file name under RUN/plots, (width, height) in pixels): sizes follow
# the figure sizes documented in plots.py (DPI 100, fixed inches per tile).
CNN_PLOTS = [
    ("samples", [], "samples.png", (1000, 5 * 240)),
    ("samples", ["--index", "50", "--count", "7"], "samples.png", (1000, 2 * 240)),  # 7 images: 2 rows
    ("confusion", [], "confusion.png", (700, 600)),
    ("curves", [], "curves.png", (1100, 400)),
    ("filters", [], "filters-layer1.png", (420, 380)),  # 4 filters: 2 x 2 tiles + colour bar
    ("filters", ["--layer", "2", "--channel", "3"], "filters-layer2.png", (580, 380)),  # 6: 3 x 2
    ("filters", ["--layer", "conv_b"], "filters-layer2.png", (580, 380)),
    ("feature-maps", ["--layer", "1", "--index", "5"], "feature-maps-layer1.png", (420, 380)),
    ("feature-maps", ["--layer", "2"], "feature-maps-layer2.png", (580, 380)),
    ("weights", [], "weights.png", (1200, 300)),  # histograms of conv_a, conv_b, logits kernels
]


@pytest.mark.parametrize("kind, extra, name, size", CNN_PLOTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_plot_cnn(runs, capsys, kind, extra, name, size):
    out = runs["cnn"] / "plots" / name
    out.unlink(missing_ok=True)
    assert cli.main(["plot", str(runs["cnn"]), kind, *extra]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    check_png(out, size)


def test_plot_errors_shows_only_misclassified(runs, tmp_path, capsys):
    run = report.Run(runs["cnn"])
    wrong = np.flatnonzero(run.probabilities.argmax(1) != run.test.labels)
    assert len(wrong) >= N_TEST // FLIP_EVERY - 1  # the shifted labels cannot be learned
    out = tmp_path / "errors.png"
    assert cli.main(["plot", str(runs["cnn"]), "errors", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    check_png(out, (1000, 240 * -(-min(len(wrong), 25) // 5)))


def test_plot_softmax_weights_are_ten_images_in_red_and_blue(runs):
    out = report.draw(report.Run(runs["softmax"]), "weights")
    assert out == runs["softmax"] / "plots" / "weights.png"
    pixels = check_png(out, (900, 380))  # 5 x 2 tiles of 160 + colour bar 100; title 60
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((r > 150) & (g < 100) & (b < 100)).any(), "no red (positive) weights drawn"
    assert ((b > 150) & (r < 100) & (g < 100)).any(), "no blue (negative) weights drawn"


def test_feature_maps_match_raw_tensorflow_ops(runs):
    """Layer N's maps = the conv block's output, recomputed with tf.nn ops from the kernels."""
    import tensorflow as tf

    run = report.Run(runs["cnn"])
    image = run.test.images[3:4]
    x = tf.constant(image)
    for number in (1, 2):
        _, conv = run.conv_layer(number)
        kernel, bias = conv.get_weights()
        x = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "VALID") + bias), 2, 2, "VALID")
        block, maps = run.feature_maps(conv, 3)
        assert [layer.name for layer in block] == [["conv_a", "pool_a"], ["conv_b", "relu_b", "pool_b"]][number - 1]
        np.testing.assert_allclose(maps, x.numpy()[0], rtol=1e-5, atol=1e-5)
    assert maps.shape == (5, 5, 6)


def test_confusion_matrix_matches_numpy_count():
    rng = np.random.default_rng(1)
    labels, predictions = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (labels, predictions), 1)
    np.testing.assert_array_equal(evaluate.confusion_matrix(labels, predictions, 10), expected)


def test_confusion_uses_evaluation_json_only_when_current(runs, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.json", "model.keras"):
        (run_dir / name).write_bytes((runs["cnn"] / name).read_bytes())
    fake = np.arange(100).reshape(10, 10).tolist()
    digest = runs_module.RunFolder(run_dir).model_digest()
    (run_dir / "evaluation-test.json").write_text(json.dumps({"confusion_matrix": fake, "split": "test",
                                                              "model_sha256": digest}))
    np.testing.assert_array_equal(report.Run(run_dir).confusion(), fake)
    (run_dir / "model.keras").write_bytes((runs["softmax"] / "model.keras").read_bytes())  # another model: recomputed
    computed = report.Run(run_dir).confusion()
    assert computed.sum() == N_TEST and computed.tolist() != fake


@pytest.mark.parametrize("run_name, args, message", [
    ("cnn", ["filters", "--layer", "3"], "--layer 3: not a conv layer number; expected 1..2, counting the Conv2D "
     "layers in order: 1 = conv_a (Conv2D 3x3, 4 filters); 2 = conv_b (Conv2D 3x3, 6 filters)"),
    ("cnn", ["feature-maps", "--layer", "0"], "expected 1..2"),
    ("cnn", ["filters", "--layer", "logits"], "--layer logits: a Dense layer, not a conv layer; expected one of "
     "1 = conv_a"),
    ("cnn", ["filters", "--layer", "nope"], "--layer 'nope': no such layer"),
    ("cnn", ["filters", "--channel", "1"], "--channel 1: expected 0..0 (layer 1, conv_a, has 1 input channels)"),
    ("cnn", ["filters", "--layer", "2", "--channel", "4"], "--channel 4: expected 0..3"),
    ("cnn", ["feature-maps", "--index", "60"], "--index 60: expected 0..59 for the 60 test images"),
    ("cnn", ["samples", "--index", "-1"], "--index -1: expected 0..59"),
    ("cnn", ["samples", "--count", "26"], "--count 26: expected 1..25"),
    ("cnn", ["samples", "--channel", "0"], "--channel does not apply to samples; samples takes --index, --count"),
    ("cnn", ["confusion", "--layer", "1"], "--layer does not apply to confusion; confusion takes no options"),
    ("softmax", ["filters"], "--layer: model 'softmax' has no Conv2D layer"),
    ("softmax", ["feature-maps", "--layer", "1"], "filters and feature-maps need a conv model"),
])
def test_plot_options_are_validated(runs, capsys, run_name, args, message):
    assert cli.main(["plot", str(runs[run_name]), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_plot_missing_run_and_missing_history(tmp_path, runs, capsys):
    assert cli.main(["plot", str(tmp_path / "nowhere"), "curves"]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text((runs["cnn"] / "config.json").read_text())
    assert cli.main(["plot", str(tmp_path / "bare"), "curves"]) == 2
    assert "history.csv: missing" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path / "bare"), "weights"]) == 2
    assert "model.keras" in capsys.readouterr().err


def test_every_plot_kind_has_a_drawer_and_a_test():
    assert set(report._DRAWERS) == set(report.PLOT_KINDS) == {kind for kind, *_ in CNN_PLOTS} | {"errors"}


def test_plot_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["plot", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--index", "--count", "--layer", "--channel", "--out"):
        assert flag in text
    assert text.count("(default:") >= 5
    assert "1 = first conv, 2 = second" in text


def test_prediction_titles():
    digits = [str(d) for d in range(10)]
    assert plots.prediction_titles([7, 2], [7, 3], digits) == ["label=7 predict=7", "label=2 predict=3"]
    assert plots.prediction_titles([2], [3], digits, [0.834], [1234]) == ["label=2 predict=3\n83% #1234"]
    fashion = data.DATASETS["fashion-mnist"].class_names
    assert plots.prediction_titles([9], [7], fashion) == ["label=Ankle boot\npredict=Sneaker"]


def test_symmetric_limit():
    assert plots.symmetric_limit(np.array([-0.5, 0.25])) == 0.5
    assert plots.symmetric_limit(np.zeros(3)) == 1.0


def test_image_grid_keeps_its_signature(tmp_path):
    """`mnistlab data grid` calls image_grid(images, titles, out)."""
    images = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    plots.image_grid(images, ["a", "b", "c"], tmp_path / "grid.png")
    check_png(tmp_path / "grid.png", (1000, 240))

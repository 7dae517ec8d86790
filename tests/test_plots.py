"""`mnistlab plot` and `mnistlab.plots`: every picture drawn from tiny trained models on synthetic data.

The run folders are written here in the layout `mnistlab train` uses (model.keras, config.json,
metrics.json, timing.json, history.csv), with the data as IDX files the config points at, so
`Run` loads them exactly as it loads a real run. Feature maps, the confusion matrix and the ECE
are checked against an independent computation (raw TensorFlow ops, NumPy, a hand-computed
example), the PNGs for size and content, the figures for what they hold.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistlab import calibrate, cli, data, evaluate, idx, plots, report
from mnistlab import runs as runs_module
from mnistlab.errors import MnistlabError

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
        "data": {"dataset": "mnist", "data_dir": str(data_dir), "cache_dir": None, "validation_size": N_VALIDATION,
                 "download": False, "mirrors": []},
        "train": {"epochs": epochs, "batch_size": 32, "note": "<script>alert('x')</script> & more"},
    }))
    (folder / "timing.json").write_text(json.dumps({"train_seconds": 361.055, "wall_seconds": 400.2,
                                                    "epoch_seconds": [180.5, 180.555][:epochs]}))
    with (folder / "history.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=runs_module.HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return folder


CALIBRATION = {"temperature": 1.7, "ece_before": 0.0312, "ece_after": 0.0081, "nll_before": 0.1234567,
               "nll_after": 0.1, "images": N_VALIDATION, "bins": 15, "fitted_on": "validation"}


def make_runs(root: Path) -> dict[str, Path]:
    """Synthetic IDX data under ``root/data`` and two runs: ``cnn`` and ``softmax``."""
    for role, fact in data.DATASETS["mnist"].files.items():
        idx.write_idx(root / "data" / (fact.name + ".gz"), synthetic_arrays()[role])
    made = {"cnn": write_run(root / "runs" / "cnn", "tiny-cnn", tiny_cnn(), root / "data"),
            "softmax": write_run(root / "runs" / "softmax", "softmax", tiny_softmax(), root / "data")}
    (made["cnn"] / "calibration.json").write_text(json.dumps(CALIBRATION))  # softmax's run has none
    return made


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
    ("reliability", [], "reliability.png", (700, 600)),
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
    captured = capsys.readouterr()
    assert captured.out.strip() == f"wrote {out}"
    assert f"drawing {kind.replace('-', ' ')}" in captured.err and f"writing {out}…" in captured.err  # progress
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
    assert err.splitlines()[-1].startswith("error: ") and message in err, err  # after any progress lines


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


def test_image_grid_is_a_figure_saved_separately(tmp_path):
    images = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    fig = plots.image_grid(images, ["a", "b", "c"])
    plots.save_figure(fig, tmp_path / "grid.png")
    check_png(tmp_path / "grid.png", (1000, 240))
    assert tile_titles(fig) == ["a", "b", "c"]


# ---------------------------------------------------------------------- figures, not only files
def tile_titles(fig) -> list[str]:
    """The titles of a grid's tiles (one Axes holds every tile)."""
    return [text.get_text() for text in fig.axes[0].texts]


def heading(fig) -> str:
    """A grid's title on one line."""
    return fig.texts[0].get_text().replace("\n", " ")


def test_importing_and_drawing_leave_matplotlib_alone():
    """No backend switch and no pyplot: a notebook's backend stays; matplotlib loads only when drawing."""
    code = ("import sys, numpy as np\n"
            "import mnistlab.plots as plots, mnistlab.report\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'\n"
            "fig = plots.confusion_heatmap(np.eye(3, dtype=int), ['a', 'b', 'c'])\n"
            "assert len(plots.png_bytes(fig)) > 1000\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
            "import matplotlib, matplotlib.figure\n"
            "assert isinstance(fig, matplotlib.figure.Figure)\n"
            "print(matplotlib.get_backend())")
    env = {**os.environ, "MPLBACKEND": "svg"}  # stands for a notebook's inline backend
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg"]


def test_a_figure_shows_inline_as_the_png_save_figure_writes(tmp_path):
    fig = plots.softmax_weight_images(np.random.default_rng(0).normal(size=(784, 10)))
    canvas = fig.canvas
    plots.save_figure(fig, tmp_path / "w.png")
    assert fig.canvas is canvas  # rendering borrowed an Agg canvas and gave the figure's own back
    assert fig._repr_png_() == (tmp_path / "w.png").read_bytes()  # what Jupyter displays: the same pixels
    check_png(tmp_path / "w.png", (900, 380))
    assert not list(tmp_path.glob(".w.png*"))  # atomic write left no temp file
    confusion = plots.confusion_heatmap(np.arange(9).reshape(3, 3), ["a", "b", "c"])
    with Image.open(io.BytesIO(confusion._repr_png_())) as shown:
        assert shown.size == (700, 600)


def test_report_figure_of_a_run_announces_slow_steps_once(runs):
    import matplotlib.figure

    messages: list[str] = []
    run = report.Run(runs["cnn"])
    fig = report.figure(run, "errors", log=messages.append)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert messages == ["loading the mnist test split…", f"loading {runs['cnn'] / 'model.keras'}…",
                        f"predicting {N_TEST} test images…", "drawing errors…"]
    messages.clear()
    report.figure(run, "reliability", log=messages.append)
    assert messages == ["drawing reliability…"]  # the run keeps what it loaded


def test_draw_wants_a_png_name(runs, tmp_path):
    with pytest.raises(MnistlabError, match=r"--out .*x\.jpg: expected a file name ending in \.png"):
        report.draw(report.Run(runs["cnn"]), "confusion", tmp_path / "x.jpg")
    assert not list(tmp_path.iterdir())


def test_training_curves_plot_cross_entropy_and_keep_zeros():
    rows = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.0, "val_loss": "", "val_accuracy": None},
            {"epoch": 2, "train_loss": 0.0, "train_accuracy": 1.0, "val_loss": "", "val_accuracy": None}]
    loss, accuracy = plots.training_curves(rows).axes
    assert loss.get_ylabel() == "cross-entropy (nats)" and "cross-entropy" in loss.get_title()
    assert len(loss.lines) == 1 and len(accuracy.lines) == 1  # no validation split: no validation curve
    np.testing.assert_array_equal(loss.lines[0].get_ydata(), [0.5, 0.0])  # a 0 is a value, not a gap
    np.testing.assert_array_equal(accuracy.lines[0].get_ydata(), [0.0, 1.0])


def test_filter_grid_of_128_filters_stays_readable(tmp_path):
    weights = np.random.default_rng(0).normal(size=(3, 3, 1, 128))
    fig = plots.filter_grid(weights)
    plots.save_figure(fig, tmp_path / "f.png")
    check_png(tmp_path / "f.png", (6 * 160 + 100, 11 * 160 + 60))  # 64 tiles of 160 px in 6 columns
    assert heading(fig).endswith("(showing the first 64 of 128 filters)")
    assert tile_titles(fig) == [f"filter {k}" for k in range(64)]
    everything = plots.filter_grid(weights, max_tiles=None)
    np.testing.assert_allclose(everything.get_size_inches(), (6 * 1.6 + 1, 22 * 1.6 + 0.6))
    assert "showing" not in heading(everything) and len(tile_titles(everything)) == 128


def test_feature_map_grid_caps_channels_too():
    fig = plots.feature_map_grid(np.random.default_rng(0).uniform(size=(7, 7, 100)), max_tiles=10)
    assert tile_titles(fig)[-1] == "channel 9"
    assert "(showing the first 10 of 100 channels)" in heading(fig)


# Four images, four classes. Confidences: 0.9 (right), 0.9 (wrong), 0.5 (right), 0.3 (wrong).
HAND_PROBABILITIES = np.array([[0.9, 0.05, 0.03, 0.02], [0.9, 0.05, 0.03, 0.02],
                               [0.5, 0.3, 0.1, 0.1], [0.3, 0.25, 0.25, 0.2]])
HAND_LABELS = np.array([0, 1, 0, 1])


def test_calibration_bins_and_expected_calibration_error_by_hand():
    # 5 bins: (0.8, 1] holds 2 images, accuracy 0.5, confidence 0.9: 2/4 * 0.4 = 0.2
    #         (0.4, 0.6] holds 1,      accuracy 1,   confidence 0.5: 1/4 * 0.5 = 0.125
    #         (0.2, 0.4] holds 1,      accuracy 0,   confidence 0.3: 1/4 * 0.3 = 0.075; ECE = 0.4
    counts, accuracy, confidence = calibrate.calibration_bins(HAND_PROBABILITIES, HAND_LABELS, bins=5)
    assert counts.tolist() == [0, 1, 1, 0, 2]
    np.testing.assert_allclose(accuracy, [np.nan, 0.0, 1.0, np.nan, 0.5])
    np.testing.assert_allclose(confidence, [np.nan, 0.3, 0.5, np.nan, 0.9])
    ece = calibrate.expected_calibration_error  # the one ECE, which the diagram's title shows
    assert ece(HAND_PROBABILITIES, HAND_LABELS, bins=5) == pytest.approx(0.4)
    assert ece(HAND_PROBABILITIES, HAND_LABELS) == pytest.approx(0.4)  # 15 bins: the same groups
    assert ece(HAND_PROBABILITIES, HAND_LABELS, bins=1) == pytest.approx(0.15)  # |2/4 - 2.6/4|
    assert ece(np.tile([0.75, 0.25], (4, 1)), np.array([0, 0, 0, 1])) == pytest.approx(0.0)  # 75% sure, 3 of 4 right
    edge = np.array([[1.0, 0.0], [0.6, 0.4]])  # on bin edges: 1.0 in the last bin, 0.6 in (0.4, 0.6]
    assert calibrate.calibration_bins(edge, np.array([0, 0]), bins=5)[0].tolist() == [0, 0, 1, 0, 1]


def test_calibration_bins_give_calibrates_ece():
    """The diagram's bars and its title's ECE come from the same bins."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(500, 10)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.where(rng.uniform(size=500) < 0.7, probabilities.argmax(1), rng.integers(0, 10, 500))
    for bins in (1, 7, 15):
        counts, accuracy, confidence = calibrate.calibration_bins(probabilities, labels, bins)
        assert counts.sum() == 500
        full = counts > 0
        from_bins = np.sum(counts[full] / 500 * np.abs(accuracy[full] - confidence[full]))
        assert from_bins == pytest.approx(calibrate.expected_calibration_error(probabilities, labels, bins), abs=1e-12)


@pytest.mark.parametrize("probabilities, labels", [(np.ones((3, 10)), np.zeros(2)), (np.ones(10), np.zeros(1)),
                                                   (np.ones((0, 10)), np.zeros(0))])
def test_reliability_diagram_rejects_bad_shapes(probabilities, labels):
    with pytest.raises(MnistlabError, match="expected \\(N, classes\\) and \\(N,\\)"):
        plots.reliability_diagram(probabilities, labels)


def test_reliability_diagram_holds_bins_counts_and_ece(tmp_path):
    fig = plots.reliability_diagram(HAND_PROBABILITIES, HAND_LABELS, bins=5)
    plots.save_figure(fig, tmp_path / "r.png")
    check_png(tmp_path / "r.png", (700, 600))
    top, bottom = fig.axes
    assert top.get_title() == "Reliability: ECE 40.00% (5 bins, 4 images)"
    accuracy_bars = top.containers[0]
    np.testing.assert_allclose([bar.get_height() for bar in accuracy_bars], [0.0, 1.0, 0.5])
    np.testing.assert_allclose([bar.get_x() + bar.get_width() / 2 for bar in accuracy_bars], [0.3, 0.5, 0.9])
    assert [t.get_text() for t in bottom.texts] == ["1", "1", "2"]
    assert any(tuple(line.get_xdata()) == (0, 1) == tuple(line.get_ydata()) for line in top.lines)  # the diagonal

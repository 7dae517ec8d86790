"""Loading models safely in every accepted form, and predicting picture files (library and CLI)."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _models
from _models import FOUR, SEVEN, draw
from mnistlab import cli, predict
from mnistlab.inference import softmax
from mnistlab.runs import load_predictor
from mnistlab.errors import MnistlabError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return _models.untrained_run(tmp_path_factory.mktemp("predict") / "tiny")


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pictures")
    paths = [folder / "seven.png", folder / "four.jpg"]
    draw(SEVEN).save(paths[0])
    draw(FOUR, mode="RGB").save(paths[1], quality=90)
    return paths


# ---------------------------------------------------------------------------- loading
def test_run_folder_and_keras_file_load(tiny_run: Path):
    run = load_predictor(tiny_run)
    assert (run.name, run.format, run.parameters) == ("tiny", "keras", 28 * 28 * 10 + 10)
    assert run.info() == {"name": "tiny", "format": "keras", "parameters": 7850,
                          "test_accuracy": 0.1, "test_loss": 2.3, "temperature": 1.0}
    file = load_predictor(tiny_run / "model.keras")
    assert file.name == "tiny" and file.metrics == {"test_accuracy": 0.1, "test_loss": 2.3}


def test_logits_match_keras_and_softmax_matches_numpy(tiny_run: Path):
    import keras

    images = np.random.default_rng(0).random((37, 28, 28, 1), dtype=np.float32)
    run = load_predictor(tiny_run)
    reference = keras.saving.load_model(tiny_run / "model.keras").predict(images, verbose=0)
    np.testing.assert_allclose(run.logits(images, batch_size=10), reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run.logits(images.reshape(37, 784)), reference, rtol=1e-5, atol=1e-5)
    e = np.exp(reference - reference.max(1, keepdims=True))
    np.testing.assert_allclose(run.probabilities(images), e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert softmax(np.array([[1000.0, 0.0]]))[0, 0] == 1.0  # no overflow
    with pytest.raises(MnistlabError, match=r"expected \(N, 28, 28, 1\)"):
        run.logits(np.zeros((2, 32, 32, 1)))


def test_missing_metrics_are_fine(tmp_path: Path):
    run = load_predictor(_models.untrained_run(tmp_path / "run", with_metrics=False))
    assert run.metrics == {} and run.info()["test_accuracy"] is None


@pytest.mark.parametrize("name", ["model.h5", "model.hdf5", "model.pkl", "model.pickle", "model.pt", "weights.npz",
                                  "model.joblib", "model"])
def test_other_formats_are_refused(tmp_path: Path, name: str):
    (tmp_path / name).write_bytes(b"\x80\x04 not loaded")
    with pytest.raises(MnistlabError, match="expected a run folder .* a .keras file, a SavedModel folder"):
        load_predictor(tmp_path / name)


def test_empty_folder_and_missing_path_are_refused(tmp_path: Path):
    with pytest.raises(MnistlabError, match="no model.keras, saved_model.pb or model.tflite in this folder"):
        load_predictor(tmp_path)
    with pytest.raises(MnistlabError, match="no such file or folder"):
        load_predictor(tmp_path / "nope.keras")


def test_a_keras_file_carrying_code_is_refused(tmp_path: Path):
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Lambda(lambda x: x * 2), layers.Flatten(),
                              layers.Dense(10)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(MnistlabError, match=r"lambda.keras: refused, layer 'lambda' is a Lambda layer"):
        load_predictor(tmp_path / "lambda.keras")


def test_damaged_or_misshapen_models_are_refused(tmp_path: Path):
    import keras
    from keras import layers

    (tmp_path / "junk.keras").write_bytes(b"PK\x03\x04 but not really a zip")
    with pytest.raises(MnistlabError, match="junk.keras: refused, damaged .keras archive"):
        load_predictor(tmp_path / "junk.keras")
    keras.Sequential([keras.Input((32, 32, 3)), layers.Flatten(), layers.Dense(10)]).save(tmp_path / "cifar.keras")
    with pytest.raises(MnistlabError, match=r"expected \(None, 28, 28, 1\) -> \(None, 10\)"):
        load_predictor(tmp_path / "cifar.keras")
    run = _models.untrained_run(tmp_path / "run")
    (run / "config.json").write_text("{not json")
    with pytest.raises(MnistlabError, match="config.json: not readable JSON"):
        load_predictor(run)


def test_a_saved_model_that_touches_files_is_refused(tmp_path: Path):
    import tensorflow as tf

    class Sneaky(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(tmp_path / "written"), "gotcha")
            return {"logits": tf.zeros((tf.shape(x)[0], 10))}

    module = Sneaky()
    tf.saved_model.save(module, str(tmp_path / "sneaky"), signatures={"serving_default": module.serve})
    with pytest.raises(MnistlabError, match="refused, function .* uses the op WriteFile"):
        load_predictor(tmp_path / "sneaky")
    assert not (tmp_path / "written").exists()


def test_a_broken_tflite_file_is_refused(tmp_path: Path):
    (tmp_path / "model.tflite").write_bytes(b"TFL3 definitely not a flatbuffer")
    with pytest.raises(MnistlabError, match="model.tflite: refused, not a TFLite flat buffer"):
        load_predictor(tmp_path / "model.tflite")


# ---------------------------------------------------------------------------- files
def test_predict_files_reports_bad_files_and_predicts_the_rest(tiny_run: Path, digit_files, tmp_path: Path):
    (tmp_path / "text.png").write_text("not a picture")
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    paths = [digit_files[0], tmp_path / "text.png", digit_files[1], tmp_path / "blank.png", tmp_path / "gone.png"]
    run = load_predictor(tiny_run)
    results = predict.predict_files(run, paths, top=4)
    assert [r["file"] for r in results] == [str(p) for p in paths]
    assert [("error" in r) for r in results] == [False, True, False, True, True]
    assert "text.png: not a readable image" in results[1]["error"]
    assert "blank.png: no digit found" in results[3]["error"]
    for r in (results[0], results[2]):
        probabilities = [t["probability"] for t in r["top"]]
        assert len(r["top"]) == 4 and probabilities == sorted(probabilities, reverse=True)
        assert r["digit"] == r["top"][0]["digit"] and r["probability"] == probabilities[0]
    with pytest.raises(MnistlabError, match="--top 11: expected 1..10"):
        predict.predict_files(run, paths, top=11)


def test_every_file_gets_its_own_result_or_its_own_error(tiny_run: Path, digit_files, tmp_path: Path, capsys):
    """Pictures Pillow rejects with errors other than OSError once cut the whole run short, and
    FIFOs, devices and folders were all called "no such file"."""
    png = _models.encode(draw(), "PNG")
    (tmp_path / "icc.png").write_bytes(_models.png_with_chunk(png, b"iCCP", b"p\0\0" + zlib.compress(bytes(2**21))))
    grey = np.asarray(draw(), np.float32) / 255
    grey[::5, ::5] = np.nan
    Image.fromarray(grey, "F").save(tmp_path / "nan.tif")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "folder.png").mkdir()
    good = str(digit_files[0])
    paths = [good, *(str(tmp_path / n) for n in ("icc.png", "nan.tif", "pipe.png", "zero.png", "folder.png")), good]
    results = predict.predict_files(load_predictor(tiny_run), paths)
    assert [r["file"] for r in results] == paths
    assert [("error" in r) for r in results] == [False, True, False, True, True, True, False]
    assert results[0]["top"] == results[-1]["top"]
    for r, what in zip(results[3:6], ("is a FIFO", "is a device", "is a folder")):
        assert r["error"] == f"{r['file']}: {what}; expected a picture file"
    assert cli.main(["predict", str(tiny_run), good, paths[1], good]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0] == lines[2] and lines[0].startswith(f"{good}: ")
    assert lines[1].startswith(f"error: {paths[1]}: damaged picture data")


def test_cli_predict_text_and_json(tiny_run: Path, digit_files, tmp_path: Path, capsys):
    assert cli.main(["predict", str(tiny_run), *map(str, digit_files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{digit_files[0]}: ")
    assert " or " in lines[0] and "?" in lines[0]  # an untrained model is unsure, and says so
    (tmp_path / "bad.gif").write_bytes(b"GIF89a broken")
    assert cli.main(["predict", str(tiny_run), str(digit_files[0]), str(tmp_path / "bad.gif"),
                     "--json", "--top", "2"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "tiny" and out["format"] == "keras"
    assert len(out["results"][0]["top"]) == 2 and "bad.gif" in out["results"][1]["error"]
    assert cli.main(["predict", str(tmp_path / "model.h5"), str(digit_files[0])]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.slow
def test_trained_model_reads_mnist_test_pictures(real_mnist, tmp_path_factory, tmp_path: Path):
    """MNIST test digits saved as the 28 x 28 PNG files they are: the CLI must read them as the
    model reads the arrays (the recipe leaves MNIST digits nearly unchanged)."""
    run = _models.trained_run(real_mnist, tmp_path_factory)
    paths = []
    for i in range(50):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.round(real_mnist.test.images[i, ..., 0] * 255).astype(np.uint8)).save(paths[-1])
    results = predict.predict_files(load_predictor(run), paths)
    digits = np.array([r["digit"] for r in results])
    assert (digits == real_mnist.test.labels[:50]).mean() >= 0.94


def test_a_run_written_by_mnistlab_train_loads(tiny_mnist_dir: Path, tmp_path: Path):
    """The contract with train.py: its run folder is a model for predict, serve and export."""
    from mnistlab import data, train

    dataset = data.load(data.DataConfig(data_dir=str(tiny_mnist_dir), validation_size=10, download=False))
    config = train.TrainConfig(tensorboard=False, progress=False)
    train.train("softmax", dataset, tmp_path / "run", config, dict(epochs=1, batch_size=16), log=lambda line: None)
    keras_run = load_predictor(tmp_path / "run", keras=True)
    assert keras_run.name == "softmax" and keras_run.format == "keras" and keras_run.parameters == 7850
    assert isinstance(keras_run.metrics.get("test_accuracy"), float)
    assert keras_run.logits(dataset.test.images).shape == (len(dataset.test), 10)
    pytest.importorskip("ai_edge_litert")
    run = load_predictor(tmp_path / "run")  # training also wrote a checked model.tflite
    assert run.info() == {**keras_run.info(), "format": "tflite"}
    np.testing.assert_allclose(run.probabilities(dataset.test.images), keras_run.probabilities(dataset.test.images),
                               atol=1e-5)


# ---------------------------------------------------------------------------- answers that say when they are unsure
def fixed(logits: list[float]):
    """A Predictor answering ``logits`` for every picture."""
    from mnistlab.inference import Predictor

    row = np.asarray(logits, np.float32)
    return Predictor("fixed", "keras", Path("fixed"), 0, {}, call=lambda x: np.tile(row, (len(x), 1)))


def test_a_clear_answer_and_an_unsure_one(digit_files):
    sure = predict.predict_files(fixed([0, 0, 0, 0, 9, 0, 0, 0, 0, 0]), digit_files[:1])[0]
    assert sure["digit"] == 4 and sure["probability"] > 0.99 and sure["unsure"] is False
    assert sure["candidates"] == [4] and predict.verdict(sure) == f"4 ({sure['probability']:.1%})"
    torn = predict.predict_files(fixed([0, 0, 0, 0, 3, 0, 0, 0, 0, 2.8]), digit_files[:1])[0]
    assert torn["unsure"] is True and torn["candidates"] == [4, 9]
    assert predict.verdict(torn).startswith("4 or 9? (")
    low = predict.predict_files(fixed([1.0] * 10), digit_files[:1], top=1)[0]  # ten equal digits: unsure too
    assert low["unsure"] is True and len(low["top"]) == 1 and predict.verdict(low).endswith("?" + predict.verdict(low).split("?")[1])


def test_the_temperature_decides_what_is_sure(digit_files):
    """The same logits: sure with a sharpening temperature, unsure with a flattening one."""
    model = fixed([0, 0, 0, 0, 2.5, 0, 0, 0, 0, 0])
    model.temperature = 0.5
    assert predict.predict_files(model, digit_files[:1])[0]["unsure"] is False
    model.temperature = 2.0
    assert predict.predict_files(model, digit_files[:1])[0]["unsure"] is True


def test_cli_says_4_or_9(monkeypatch, digit_files, capsys):
    from mnistlab import runs

    monkeypatch.setattr(runs, "load_predictor", lambda path: fixed([0, 0, 0, 0, 3, 0, 0, 0, 0, 2.8]))
    assert cli.main(["predict", "anything", str(digit_files[0])]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{digit_files[0]}: 4 or 9? (") and "then" not in out


def test_grey_arrays_are_pictures_too(tiny_run: Path):
    from _models import SEVEN, draw

    grey = np.asarray(draw(SEVEN).convert("L"), np.float32) / 255
    results = predict.predict_files(load_predictor(tiny_run), [grey, np.zeros((40, 40), np.float32)])
    assert results[0]["file"] == "image 0" and "digit" in results[0]
    assert results[1]["file"] == "image 1" and "no digit found" in results[1]["error"]

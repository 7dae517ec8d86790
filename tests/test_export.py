"""Export: a SavedModel that a TF-Serving-style (TF1 session) loader runs, a TFLite file, and both
giving the same digits as the Keras model on the whole MNIST test set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import _models
from _models import SEVEN, draw
from mnistlab import cli, export
from mnistlab.runs import load_predictor
from mnistlab.errors import MnistlabError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return _models.untrained_run(tmp_path_factory.mktemp("export") / "tiny")


@pytest.fixture(scope="module")
def trained(real_mnist, tmp_path_factory) -> dict[str, Path]:
    """The shared trained run, exported once in both formats."""
    run = _models.trained_run(real_mnist, tmp_path_factory)
    out = tmp_path_factory.mktemp("exports")
    return {"run": run, "savedmodel": export.export(run, "savedmodel", out / "savedmodel" / "1"),
            "tflite": export.export(run, "tflite", out / "tflite")}


# ---------------------------------------------------------------------------- fast
def test_export_writes_both_formats_with_metadata(tiny_run: Path, tmp_path: Path):
    saved = export.export(tiny_run, "savedmodel", tmp_path / "sm")
    assert (saved / "saved_model.pb").is_file() and (saved / "variables").is_dir()
    lite = export.export(tiny_run / "model.keras", "tflite", tmp_path / "lite")
    assert (lite / "model.tflite").is_file()
    metadata = json.loads((lite / "mnistlab.json").read_text())
    assert metadata["model"] == "tiny" and metadata["parameters"] == 7850 and metadata["format"] == "tflite"
    for folder in (saved, lite, lite / "model.tflite"):
        assert load_predictor(folder).info() == {"name": "tiny", "format": "savedmodel" if folder == saved
                                                         else "tflite", "parameters": 7850,
                                                         "test_accuracy": 0.1, "test_loss": 2.3}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_existing_output_needs_force(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "lite"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MnistlabError, match="already exists; choose a new folder or pass --force"):
        export.export(tiny_run, "tflite", out)
    assert (out / "keep.txt").read_text() == "mine"
    export.export(tiny_run, "tflite", out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["mnistlab.json", "model.tflite"]


def test_bad_requests_are_refused_and_leave_nothing(tiny_run: Path, tmp_path: Path):
    with pytest.raises(MnistlabError, match="--format 'onnx': expected one of savedmodel, tflite"):
        export.export(tiny_run, "onnx", tmp_path / "x")
    lite = export.export(tiny_run, "tflite", tmp_path / "lite")
    with pytest.raises(MnistlabError, match="export needs a run folder or a .keras file"):
        export.export(lite, "savedmodel", tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lite"]


def test_cli_export_then_predict(tiny_run: Path, tmp_path: Path, capsys):
    draw(SEVEN).save(tmp_path / "seven.png")
    assert cli.main(["predict", str(tiny_run), str(tmp_path / "seven.png"), "--json"]) == 0
    original = json.loads(capsys.readouterr().out)["results"][0]
    for fmt in ("savedmodel", "tflite"):
        assert cli.main(["export", str(tiny_run), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
        assert "wrote" in capsys.readouterr().out
        assert cli.main(["predict", str(tmp_path / fmt), str(tmp_path / "seven.png"), "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["format"] == fmt and answer["results"][0]["digit"] == original["digit"]
        assert answer["results"][0]["probability"] == pytest.approx(original["probability"], abs=1e-5)
    assert cli.main(["export", str(tiny_run), "--format", "tflite", "--out", str(tmp_path / "tflite")]) == 2
    assert "--force" in capsys.readouterr().err


# ---------------------------------------------------------------------------- trained, real MNIST
@pytest.mark.slow
def test_saved_model_loads_like_tensorflow_serving(trained, real_mnist):
    """TF Serving loads the 'serve' tag in a TF1 session and runs the serving_default signature
    by tensor names; do the same and compare with the Keras model."""
    import tensorflow as tf

    images = real_mnist.test.images[:256]
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(trained["savedmodel"]))
        signature = meta.signature_def["serving_default"]
        (name, spec), = signature.inputs.items()
        (_, out), = signature.outputs.items()
        assert spec.dtype == tf.float32.as_datatype_enum
        assert [d.size for d in spec.tensor_shape.dim] == [-1, 28, 28, 1]
        assert [d.size for d in out.tensor_shape.dim] == [-1, 10]
        logits = session.run(out.name, {spec.name: images})
    expected = load_predictor(trained["run"]).logits(images)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_exports_give_the_same_digits_on_the_test_set(trained, real_mnist, tmp_path_factory):
    original = load_predictor(trained["run"])
    found = {}
    for fmt in ("savedmodel", "tflite"):
        exported = load_predictor(trained[fmt])
        assert exported.info() == {**original.info(), "format": fmt}
        found[fmt] = export.check_export(original, exported, real_mnist.test.images)
    (_models.artifacts_dir(tmp_path_factory) / "export-agreement.json").write_text(json.dumps(found, indent=2))
    print(f"\nexport agreement on the 10,000 test images: {found}")
    assert found["savedmodel"]["different_digits"] == 0  # the same graph and weights
    assert found["tflite"]["different_digits"] <= 2  # float32 kernels may round a near-tie the other way
    assert found["tflite"]["max_abs_logit_diff"] < 1e-2

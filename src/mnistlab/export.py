"""Export a trained Keras model for serving elsewhere: a TensorFlow SavedModel, or a TFLite file.

``export(run, "savedmodel", out)`` writes a SavedModel with a ``serving_default`` signature taking
float32 ``(None, 28, 28, 1)`` in [0, 1] and returning ``(None, 10)`` logits, as TensorFlow
Serving expects; serve it by placing ``out`` as a numbered version folder (``models/cnn/1``) and
pointing ``--model_base_path`` at ``models/cnn``. ``export(run, "tflite", out)`` writes
``out/model.tflite`` (float32, built-in ops only). Both hold ``mnistlab.json`` (name, parameter
count, test metrics) so ``mnistlab predict`` and ``serve`` report the same model facts.

The folder is built beside ``out`` and renamed into place when complete (``--force`` replaces
an existing one), so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mnistlab import fileio
from mnistlab.errors import MnistlabError
from mnistlab.inference import INPUT_SHAPE, METADATA_FILE, SAVED_MODEL_METADATA, TFLITE_FILE, Predictor
from mnistlab.runs import load_predictor

FORMATS = ("savedmodel", "tflite")


def export(run: str | os.PathLike, fmt: str, out: str | os.PathLike, force: bool = False) -> Path:
    """Export the Keras model of ``run`` (run folder or ``.keras`` file) as ``fmt`` into folder ``out``."""
    if fmt not in FORMATS:
        raise MnistlabError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    predictor = load_predictor(run)
    if predictor.keras_model is None:
        raise MnistlabError(f"{run}: is a {predictor.format} model; export needs a run folder or a .keras file")
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise MnistlabError(f"--out {out}: already exists; choose a new folder or pass --force to replace it")
    metadata = {"model": predictor.name, "parameters": predictor.parameters, **predictor.metrics,
                "exported_from": str(predictor.source), "format": fmt}
    with _building(out) as tmp:
        if fmt == "savedmodel":
            write_saved_model(predictor.keras_model, tmp)
            fileio.write_json(tmp / SAVED_MODEL_METADATA, metadata)
        else:
            fileio.write_bytes(tmp / TFLITE_FILE, tflite_bytes(predictor.keras_model))
            fileio.write_json(tmp / METADATA_FILE, metadata)
    return out


def write_saved_model(model: Any, folder: Path) -> None:
    """``model.export`` with an explicit float32 ``(None, 28, 28, 1)`` serving signature."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *INPUT_SHAPE), tf.float32, name="image")
    model.export(str(folder), format="tf_saved_model", verbose=False, input_signature=[spec])


def tflite_bytes(model: Any) -> bytes:
    """The model as a float32 TFLite flat buffer, built-in ops only (converted via a SavedModel,
    the path TensorFlow documents for Keras 3)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="mnistlab-tflite-") as tmp:
        write_saved_model(model, Path(tmp) / "saved")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "saved"))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            return converter.convert()
        except Exception as exc:  # the converter raises ConverterError and friends
            raise MnistlabError(f"TFLite conversion failed: {str(exc).splitlines()[0][:300]}") from None


@contextlib.contextmanager
def _building(out: Path):
    """Yield an empty temp folder beside ``out``; on success it replaces ``out``, else it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        yield tmp
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def check_export(original: Predictor, exported: Predictor, images: Any) -> dict[str, Any]:
    """Compare two predictors on ``images``: digits that differ, and the largest logit difference."""
    import numpy as np

    a, b = original.logits(images), exported.logits(images)
    return {"images": len(images), "different_digits": int((a.argmax(1) != b.argmax(1)).sum()),
            "max_abs_logit_diff": float(np.abs(a - b).max()) if len(images) else 0.0}

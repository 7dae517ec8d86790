"""Export a trained Keras model for serving elsewhere: a TensorFlow SavedModel, or a TFLite file.

``export(run, "savedmodel", out)`` writes a SavedModel with a ``serving_default`` signature taking
float32 ``(None, 28, 28, 1)`` in [0, 1] and returning ``(None, 10)`` logits, as TensorFlow
Serving expects; serve it by placing ``out`` as a numbered version folder (``models/cnn/1``) and
pointing ``--model_base_path`` at ``models/cnn``. ``export(run, "tflite", out)`` writes
``out/model.tflite`` (built-in ops only): float32, or with ``quantize`` float16 weights or int8
weights and activations (post-training, calibrated on training images; float32 in and out).
Both hold ``mnistlab.json`` (name, parameter count, test metrics, and ``check``: the export
against the Keras model on the run's test images) so ``mnistlab predict`` and ``serve`` report
the same model facts. ``write_run_tflite`` keeps a run folder's own ``model.tflite`` (written
by training and by ``export`` without ``out``), tied to its ``model.keras``.

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
from mnistlab.convert import check_export, tflite_bytes, write_run_tflite, write_saved_model
from mnistlab.errors import MnistlabError
from mnistlab.inference import METADATA_FILE, SAVED_MODEL_METADATA, TFLITE_FILE, load_model_file
from mnistlab.runs import RunFolder, load_predictor

FORMATS = ("savedmodel", "tflite")
QUANTIZATIONS = ("int8", "float16")
CALIBRATION_IMAGES = 500  # training images that set the int8 scales (TFLite's guide: 100-500)


def export(run: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None, force: bool = False,
           quantize: str | None = None, data: Any = None) -> Path:
    """Export the Keras model of ``run`` (run folder or ``.keras`` file) as ``fmt`` into folder ``out``.

    ``quantize`` (tflite only): ``int8`` (full-integer, scales from ``CALIBRATION_IMAGES``
    training images; float32 in and out) or ``float16`` (weights). ``data`` (a ``Dataset``;
    default: the run's own) calibrates int8 and checks the export on its test split: digits
    that differ, largest logit and probability differences, accuracy before and after.
    Without ``out``, a float32 ``tflite`` goes into the run folder itself (``model.tflite``,
    which predict/serve use when it agrees with ``model.keras``)."""
    if fmt not in FORMATS:
        raise MnistlabError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if quantize is not None and (quantize not in QUANTIZATIONS or fmt != "tflite"):
        raise MnistlabError(f"--quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)} with --format tflite")
    predictor = load_predictor(run, keras=True)
    if predictor.keras_model is None:
        raise MnistlabError(f"{run}: is a {predictor.format} model; export needs a run folder or a .keras file")
    folder = RunFolder(Path(run))
    if out is None:
        if fmt != "tflite" or quantize or not folder.is_run():
            raise MnistlabError("--out: required, except for a float32 --format tflite of a run folder "
                                "(written into the run folder as model.tflite)")
        dataset = data if data is not None else run_dataset(run, required=True)
        refusals: list[str] = []
        if write_run_tflite(folder, predictor.keras_model, dataset.test.images, log=refusals.append) is None:
            raise MnistlabError(f"{folder.path}: {refusals[-1]}")
        return folder.path
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise MnistlabError(f"--out {out}: already exists; choose a new folder or pass --force to replace it")
    dataset = data if data is not None else run_dataset(run, required=quantize == "int8")
    metadata = {"model": predictor.name, "parameters": predictor.parameters, **predictor.metrics,
                "temperature": predictor.temperature,
                "exported_from": str(predictor.source), "format": fmt, "quantize": quantize}
    with _building(out) as tmp:
        if fmt == "savedmodel":
            write_saved_model(predictor.keras_model, tmp)
            exported_path, metadata_path = tmp, tmp / SAVED_MODEL_METADATA
        else:
            calibration = dataset.train.images[:CALIBRATION_IMAGES] if quantize == "int8" else None
            content = tflite_bytes(predictor.keras_model, quantize, calibration)
            fileio.write_bytes(tmp / TFLITE_FILE, content)
            exported_path, metadata_path = tmp / TFLITE_FILE, tmp / METADATA_FILE
            metadata["bytes"] = len(content)
        if dataset is not None:
            exported = load_model_file(exported_path)
            metadata["check"] = check_export(predictor, exported, dataset.test.images, dataset.test.labels)
        fileio.write_json(metadata_path, metadata)
    return out


def run_dataset(run: str | os.PathLike, required: bool) -> Any:
    """The data set a run folder was trained on (its ``config.json`` "data"), or None for a
    ``.keras`` file when not ``required``."""
    folder = RunFolder(Path(run))
    saved = folder.read_config().get("data") if folder.is_run() else None
    if not isinstance(saved, dict):
        if required:
            raise MnistlabError(f"{run}: no data settings (config.json \"data\"); --quantize int8 and a run "
                                f"folder's model.tflite need the run's training and test images")
        return None
    from mnistlab import data
    from mnistlab.config import from_json

    return data.load(from_json(data.DataConfig, saved))


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


def read_check(out: str | os.PathLike) -> dict[str, Any] | None:
    """The ``check`` an export recorded (export folder or run folder), or None."""
    out = Path(out)
    folder = RunFolder(out)
    if folder.is_run():
        return folder.read_tflite_check()
    for metadata in (out / METADATA_FILE, out / SAVED_MODEL_METADATA):
        if metadata.is_file():
            return (fileio.read_json(metadata) or {}).get("check")
    return None


def describe_check(check: dict[str, Any]) -> str:
    """One line: how the export compares with the Keras model on the test images."""
    line = (f"checked on {check['images']:,} test images: {check['different_digits']} digits differ from the "
            f"Keras model, probabilities by at most {check['max_abs_probability_diff']:.2g}")
    if "exported_accuracy" in check:
        line += (f"; accuracy {check['exported_accuracy']:.2%} (Keras {check['accuracy']:.2%}, "
                 f"{check['accuracy_change_points']:+.2f} points)")
    return line

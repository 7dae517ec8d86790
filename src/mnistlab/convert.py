"""Converting a Keras model: a SavedModel with a serving signature, a TFLite flat buffer (float32,
float16 or int8), and a run folder's own ``model.tflite``, each checked against the model.

The leaf under ``export`` and ``runs``: it imports no run-folder code (``write_run_tflite``
takes the folder as an argument), so ``runs.RunFolder.convert_to_tflite`` can call it.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from mnistlab import fileio
from mnistlab.errors import MnistlabError
from mnistlab.inference import INPUT_SHAPE, TFLITE_FILE, Predictor, load_model_file, predict_logits, quiet_stderr
from mnistlab.modelcheck import first_line

TFLITE_TOLERANCE = 1e-5  # largest probability difference at which model.tflite may answer for model.keras


@contextlib.contextmanager
def _quiet_tensorflow_logger() -> Iterator[None]:
    """Hide TensorFlow's Python INFO lines ("Assets written to ...") while converting."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def write_saved_model(model: Any, folder: Path) -> None:
    """``model.export`` with an explicit float32 ``(None, 28, 28, 1)`` serving signature."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *INPUT_SHAPE), tf.float32, name="image")
    model.export(str(folder), format="tf_saved_model", verbose=False, input_signature=[spec])


def tflite_bytes(model: Any, quantize: str | None = None, calibration: Any = None) -> bytes:
    """The model as a TFLite flat buffer, built-in ops only (converted via a SavedModel, the
    path TensorFlow documents for Keras 3): float32, or ``quantize`` ``float16`` (weights) or
    ``int8`` (weights and activations, scales from ``calibration`` images ``(N, 28, 28, 1)``;
    the model still takes and gives float32, quantized at its edges)."""
    import numpy as np
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="mnistlab-tflite-") as tmp, _quiet_tensorflow_logger():
        write_saved_model(model, Path(tmp) / "saved")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "saved"))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            images = np.asarray(calibration, np.float32)
            converter.representative_dataset = lambda: ([image[None]] for image in images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            with quiet_stderr():  # the converter's C++ log lines
                return converter.convert()
        except Exception as exc:  # the converter raises ConverterError and friends
            raise MnistlabError(f"TFLite conversion failed: {str(exc).splitlines()[0][:300]}") from None


def write_run_tflite(folder: Any, model: Any, images: Any, log: Callable[[str], None] = print,
                     reference: Any = None) -> dict | None:
    """Convert a run's model to ``model.tflite`` and check it against ``model`` on ``images``
    (``folder``: a ``runs.RunFolder``; ``reference``: ``model``'s logits of ``images`` when the
    caller has them, as training has its test logits);
    kept only when every probability agrees within ``TFLITE_TOLERANCE``, so predict and serve
    answer the same from either file. On failure: one line to ``log``, no ``model.tflite``
    (a stale one is removed), and None: training goes on without it."""
    try:
        content = tflite_bytes(model)
        with tempfile.TemporaryDirectory(prefix="mnistlab-tflite-") as tmp:
            fileio.write_bytes(Path(tmp) / TFLITE_FILE, content)
            exported = load_model_file(Path(tmp) / TFLITE_FILE)
            if reference is None:
                reference = predict_logits(model, images)
            check = compare_logits(reference, exported.logits(images))
    except Exception as exc:  # any failure here must not fail the training that called it
        folder.remove_tflite()
        log(f"model.tflite not written ({first_line(exc)}); predict and serve will use model.keras")
        return None
    if check["max_abs_probability_diff"] > TFLITE_TOLERANCE:
        folder.remove_tflite()
        log(f"model.tflite not kept: its probabilities differ from model.keras by up to "
            f"{check['max_abs_probability_diff']:.2g} (> {TFLITE_TOLERANCE:g}); predict and serve will use model.keras")
        return None
    folder.write_tflite(content, {**check, "accepted": True, "parameters": int(model.count_params())})
    log(f"wrote {folder.tflite_file.name}: within {check['max_abs_probability_diff']:.1g} of "
        f"{folder.model_file.name} on {check['images']:,} test images")
    return check


def check_export(original: Predictor, exported: Predictor, images: Any, labels: Any = None) -> dict[str, Any]:
    """Compare two predictors on ``images``: digits that differ, largest logit and probability
    differences, and with ``labels`` both accuracies and the change in percentage points."""
    return compare_logits(original.logits(images), exported.logits(images), labels)


def compare_logits(a: Any, b: Any, labels: Any = None) -> dict[str, Any]:
    """``check_export``'s figures from two models' logits ``(N, 10)`` of the same images."""
    import numpy as np

    from mnistlab.inference import softmax

    n = len(a)
    result: dict[str, Any] = {"images": n, "different_digits": int((a.argmax(1) != b.argmax(1)).sum()),
                              "max_abs_logit_diff": float(np.abs(a - b).max()) if n else 0.0,
                              "max_abs_probability_diff": float(np.abs(softmax(a) - softmax(b)).max()) if n else 0.0}
    if labels is not None and n:
        before, after = float((a.argmax(1) == labels).mean()), float((b.argmax(1) == labels).mean())
        result.update(accuracy=before, exported_accuracy=after, accuracy_change_points=round(100 * (after - before), 4))
    return result

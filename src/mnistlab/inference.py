"""Inference, the leaf every consumer shares: softmax, compiled inference, batched logits, and a
``Predictor`` loaded safely from a model file, whatever its format.

Accepted: a ``.keras`` file, a SavedModel folder (``saved_model.pb``, as ``mnistlab export
--format savedmodel`` writes) and a ``.tflite`` file or a folder holding ``model.tflite``. Run
folders are ``runs.load_predictor``'s: it reads the run's own files and calls ``load_model_file``.
Models are data, never code from the file:

- ``.keras`` loads with ``keras.saving.load_model(..., safe_mode=True)``, which refuses layers
  that carry Python (``Lambda``) and arbitrary classes;
- a SavedModel is a graph of TensorFlow ops (no Python is saved in it); its serving function is
  also refused if it contains ops that touch files or call Python (``ReadFile``, ``PyFunc``...);
- a ``.tflite`` file runs only TFLite's built-in ops (no custom or Flex ops);
- ``.h5``, pickles and anything else are refused with the list above.

This module imports nothing of the package but ``errors`` and ``fileio``, and TensorFlow only
inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mnistlab import fileio
from mnistlab.errors import MnistlabError

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
SAVED_MODEL_FILE = "saved_model.pb"
METADATA_FILE = "mnistlab.json"  # written by export: name, parameters, test metrics
SAVED_MODEL_METADATA = Path("assets.extra") / METADATA_FILE  # TF Serving ignores assets.extra
BATCH = 1024  # images per model call when predicting many
ACCEPTED = ("a run folder (holding model.keras), a .keras file, a SavedModel folder (holding "
            "saved_model.pb) or a .tflite file (or a folder holding model.tflite)")
# Op-name fragments a digit classifier never needs: file and checkpoint I/O, Python calls.
FORBIDDEN_OP_PARTS = ("File", "PyFunc", "Save", "Restore", "Reader", "Writer", "Dataset",
                      "Summary", "ImmutableConst", "Debug")


# ---------------------------------------------------------------------------- maths
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``(N, C)``, shifted by the row maximum so it cannot overflow.

    Computed in float64; returned as float64 for float64 input, else float32."""
    logits = np.asarray(logits)
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.result_type(logits.dtype, np.float32))


def compile_inference(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``images -> logits`` for a Keras model through one traced graph for every batch size:
    far cheaper per call than Keras' eager ``model(x)`` or ``model.predict`` (about 1 ms vs 11 ms
    for one image here, ``benchmarks/bench_inference.py``)."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec((None, *INPUT_SHAPE), tf.float32)])
    return lambda x: fn(tf.constant(x, tf.float32)).numpy()


def batched_logits(call: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """Logits ``(N, 10)`` of ``call`` over ``images`` in batches of ``batch_size``."""
    outputs = [call(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, NUM_CLASSES), np.float32)


def predict_logits(model: Any, images: np.ndarray, batch_size: int = BATCH,
                   call: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Logits ``(N, 10)`` of a Keras ``model`` in inference mode, in batches, through a compiled graph.

    Pass ``call`` (from ``compile_inference(model)``) to reuse one traced graph across calls, as
    training does for its per-epoch validation."""
    return batched_logits(call or compile_inference(model), images, batch_size)


# ---------------------------------------------------------------------------- the predictor
@dataclass
class Predictor:
    """One model, whatever its file format: ``(N, 28, 28, 1)`` float32 in [0, 1] -> ``(N, 10)`` logits."""

    name: str  # registry name (config.json "model"), else the file or folder name
    format: str  # keras | savedmodel | tflite
    source: Path
    parameters: int | None
    metrics: dict[str, Any]  # metrics.json (test_accuracy, test_loss), {} when missing
    call: Callable[[np.ndarray], np.ndarray] = field(repr=False)  # one batch -> logits
    keras_model: Any = field(default=None, repr=False)  # the keras.Model, for the keras format

    def logits(self, images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
        """Logits ``(N, 10)`` float32 for images ``(N, 28, 28, 1)`` (or ``(N, 784)``) in [0, 1]."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2 and images.shape[1] == np.prod(INPUT_SHAPE):
            images = images.reshape(-1, *INPUT_SHAPE)
        if images.ndim != 4 or images.shape[1:] != INPUT_SHAPE:
            raise MnistlabError(f"{self.name}: images of shape {images.shape}; expected (N, 28, 28, 1)")
        return batched_logits(self.call, images, batch_size)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax of the logits, ``(N, 10)``, each row summing to 1."""
        return softmax(self.logits(images))

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` reports: name, format, parameters, test accuracy and loss."""
        return {"name": self.name, "format": self.format, "parameters": self.parameters,
                "test_accuracy": self.metrics.get("test_accuracy"), "test_loss": self.metrics.get("test_loss")}


def model_metrics(metadata: dict[str, Any]) -> dict[str, Any]:
    """The test metrics a Predictor reports, from a metrics or metadata dict."""
    return {k: metadata[k] for k in ("test_accuracy", "test_loss") if isinstance(metadata.get(k), (int, float))}


# ---------------------------------------------------------------------------- loading
def load_model_file(path: str | os.PathLike, name: str | None = None,
                    metrics: dict[str, Any] | None = None) -> Predictor:
    """Load a model file or format folder (see ``ACCEPTED``) into a Predictor; a clear error for
    anything else. ``name`` and ``metrics`` override what the file's metadata says."""
    path = Path(path)
    if path.is_dir():
        if (path / KERAS_FILE).is_file():
            predictor = _keras_predictor(path / KERAS_FILE)
        elif (path / SAVED_MODEL_FILE).is_file():
            predictor = _saved_model_predictor(path)
        elif (path / TFLITE_FILE).is_file():
            predictor = _tflite_predictor(path / TFLITE_FILE)
        else:
            raise MnistlabError(f"{path}: no {KERAS_FILE}, {SAVED_MODEL_FILE} or {TFLITE_FILE} in this folder; "
                                f"expected {ACCEPTED}")
    elif not path.exists():
        raise MnistlabError(f"{path}: no such file or folder; expected {ACCEPTED}")
    elif path.suffix.lower() == ".keras":
        predictor = _keras_predictor(path)
    elif path.suffix.lower() == ".tflite":
        predictor = _tflite_predictor(path)
    else:
        raise MnistlabError(f"{path}: {path.suffix.lower() or 'this'} files are not loaded (they can carry code); "
                            f"expected {ACCEPTED}")
    if name is not None:
        predictor.name = name
    if metrics is not None:
        predictor.metrics = model_metrics(metrics)
    return predictor


def load_keras(path: str | os.PathLike) -> Any:
    """A ``keras.Model`` from a ``.keras`` file, in safe mode, checked for MNIST's shapes."""
    import keras

    path = Path(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, zipfile errors, OSError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MnistlabError(f"{path}: cannot load this .keras model safely ({first[:300]})") from None
    check_shapes(path, tuple(model.input_shape), tuple(model.output_shape))
    return model


def check_shapes(path: Path, input_shape: tuple, output_shape: tuple) -> None:
    """A clear error unless the model maps ``(None, 28, 28, 1)`` to ``(None, 10)``."""
    if tuple(input_shape[1:]) != INPUT_SHAPE or tuple(output_shape[1:]) != (NUM_CLASSES,):
        raise MnistlabError(f"{path}: the model maps {input_shape} -> {output_shape}; "
                            f"expected (None, 28, 28, 1) -> (None, 10)")


def _sidecar(folder: Path, relative: Path | str = METADATA_FILE) -> dict[str, Any]:
    """The ``mnistlab.json`` export writes beside a model, or {}."""
    return fileio.read_json(folder / relative) or {}


def _keras_predictor(path: Path) -> Predictor:
    model = load_keras(path)
    name = path.parent.name if path.name == KERAS_FILE else path.stem
    return Predictor(name, "keras", path, int(model.count_params()), {},
                     call=compile_inference(model), keras_model=model)


def _forbidden_ops(graph_def: Any) -> set[str]:
    ops = {node.op for node in graph_def.node}
    ops |= {node.op for function in graph_def.library.function for node in function.node_def}
    return {op for op in ops if any(part in op for part in FORBIDDEN_OP_PARTS)}


def _saved_model_predictor(folder: Path) -> Predictor:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MnistlabError(f"{folder}: not a loadable SavedModel ({first[:300]})") from None
    if "serving_default" not in loaded.signatures:
        raise MnistlabError(f"{folder}: the SavedModel has no 'serving_default' signature; "
                            f"expected one (mnistlab export --format savedmodel writes it)")
    fn = loaded.signatures["serving_default"]
    bad = _forbidden_ops(fn.graph.as_graph_def())
    if bad:
        raise MnistlabError(f"{folder}: refused, the serving function uses {', '.join(sorted(bad))}; "
                            f"expected tensor maths only")
    inputs = fn.structured_input_signature[1]
    outputs = fn.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise MnistlabError(f"{folder}: serving_default takes {list(inputs)} and gives {list(outputs)}; "
                            f"expected one input and one output")
    (in_key, spec), out_key = next(iter(inputs.items())), next(iter(outputs))
    check_shapes(folder, tuple(spec.shape), tuple(outputs[out_key].shape))
    metadata = _sidecar(folder, SAVED_MODEL_METADATA)
    parameters = metadata.get("parameters")
    if parameters is None and hasattr(loaded, "variables"):
        parameters = int(sum(np.prod(v.shape) for v in loaded.variables))
    lock = threading.Lock()  # the function is thread-safe; the lock keeps batches from interleaving

    def call(x: np.ndarray) -> np.ndarray:
        with lock:
            return fn(**{in_key: tf.constant(x)})[out_key].numpy()

    return Predictor(str(metadata.get("model") or folder.name), "savedmodel", folder, parameters,
                     model_metrics(metadata), call=call, keras_model=None)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Mute file descriptor 2 (C++ logging, which Python's sys.stderr does not see) for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _tflite_interpreter(path: Path) -> Any:
    """LiteRT's interpreter when installed, else TensorFlow's (deprecated, same engine); built-in ops only."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType  # type: ignore[import-not-found]
    except ImportError:
        import tensorflow as tf

        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite's deprecation notice
        try:
            return Interpreter(model_content=path.read_bytes(),
                               experimental_op_resolver_type=OpResolverType.BUILTIN)
        except (ValueError, RuntimeError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MnistlabError(f"{path}: not a loadable TFLite model with built-in ops only ({first[:300]})") from None


def _tflite_predictor(path: Path) -> Predictor:
    interpreter = _tflite_interpreter(path)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    check_shapes(path, tuple(inp["shape_signature"]), tuple(out["shape_signature"]))
    if inp["dtype"] != np.float32:
        raise MnistlabError(f"{path}: input is {np.dtype(inp['dtype']).name}; expected float32")
    with quiet_stderr():  # TFLite's C++ log announces its XNNPACK delegate on the first allocation
        interpreter.allocate_tensors()
    lock = threading.Lock()  # one interpreter, one call at a time
    batch = [int(inp["shape"][0])]  # the batch size the tensors are allocated for

    def call(x: np.ndarray) -> np.ndarray:
        with lock:
            if batch[0] != len(x):
                interpreter.resize_tensor_input(inp["index"], [len(x), *INPUT_SHAPE], strict=False)
                interpreter.allocate_tensors()
                batch[0] = len(x)
            interpreter.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=np.float32))
            interpreter.invoke()
            return interpreter.get_tensor(out["index"]).copy()

    metadata = _sidecar(path.parent) if path.name == TFLITE_FILE else {}
    name = str(metadata.get("model") or (path.parent.name if path.name == TFLITE_FILE else path.stem))
    return Predictor(name, "tflite", path, metadata.get("parameters"), model_metrics(metadata), call=call)

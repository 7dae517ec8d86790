"""Load a trained model from any of its forms into one ``Predictor``, and predict picture files.

Accepted: a run folder (holding ``model.keras``), a ``.keras`` file, a SavedModel folder
(``saved_model.pb``, as ``mnistlab export --format savedmodel`` writes) and a ``.tflite`` file
or a folder holding ``model.tflite``. Models are data, never code from the file:

- ``.keras`` loads with ``keras.saving.load_model(..., safe_mode=True)``, which refuses layers
  that carry Python (``Lambda``) and arbitrary classes;
- a SavedModel is a graph of TensorFlow ops (no Python is saved in it); its serving function is
  also refused if it contains ops that touch files or call Python (``ReadFile``, ``PyFunc``...);
- a ``.tflite`` file runs only TFLite's built-in ops (no custom or Flex ops);
- ``.h5``, pickles and anything else are refused with the list above.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mnistlab import fileio
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import softmax  # noqa: F401  (re-exported for serve)

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
        if not len(images):
            return np.zeros((0, NUM_CLASSES), np.float32)
        return np.concatenate([self.call(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax of the logits, ``(N, 10)``, each row summing to 1."""
        return softmax(self.logits(images))

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` reports: name, format, parameters, test accuracy and loss."""
        return {"name": self.name, "format": self.format, "parameters": self.parameters,
                "test_accuracy": self.metrics.get("test_accuracy"), "test_loss": self.metrics.get("test_loss")}


# ---------------------------------------------------------------------------- loading
def load_predictor(path: str | os.PathLike) -> Predictor:
    """Load ``path`` (see ``ACCEPTED``) into a Predictor; a clear error for anything else."""
    path = Path(path)
    if path.is_dir():
        if (path / KERAS_FILE).is_file():
            return _keras_predictor(path / KERAS_FILE, path)
        if (path / SAVED_MODEL_FILE).is_file():
            return _saved_model_predictor(path)
        if (path / TFLITE_FILE).is_file():
            return _tflite_predictor(path / TFLITE_FILE, path)
        raise MnistlabError(f"{path}: no {KERAS_FILE}, {SAVED_MODEL_FILE} or {TFLITE_FILE} in this folder; "
                            f"expected {ACCEPTED}")
    if not path.exists():
        raise MnistlabError(f"{path}: no such file or folder; expected {ACCEPTED}")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _keras_predictor(path, path.parent)
    if suffix == ".tflite":
        return _tflite_predictor(path, path.parent)
    raise MnistlabError(f"{path}: {suffix or 'this'} files are not loaded (they can carry code); expected {ACCEPTED}")


def load_keras(path: str | os.PathLike) -> Any:
    """A ``keras.Model`` from a ``.keras`` file, in safe mode, checked for MNIST's shapes."""
    import keras

    path = Path(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, zipfile errors, OSError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MnistlabError(f"{path}: cannot load this .keras model safely ({first[:300]})") from None
    _check_shapes(path, tuple(model.input_shape), tuple(model.output_shape))
    return model


def _check_shapes(path: Path, input_shape: tuple, output_shape: tuple) -> None:
    if tuple(input_shape[1:]) != INPUT_SHAPE or tuple(output_shape[1:]) != (NUM_CLASSES,):
        raise MnistlabError(f"{path}: the model maps {input_shape} -> {output_shape}; "
                            f"expected (None, 28, 28, 1) -> (None, 10)")


def _metrics(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: metadata[k] for k in ("test_accuracy", "test_loss") if isinstance(metadata.get(k), (int, float))}


def _keras_predictor(path: Path, folder: Path) -> Predictor:

    model = load_keras(path)
    config = (fileio.read_json(folder / "config.json") or {}) if path.name == KERAS_FILE else {}
    name = str(config.get("model") or (folder.name if path.name == KERAS_FILE else path.stem))
    metrics = _metrics((fileio.read_json(folder / "metrics.json") or {})) if path.name == KERAS_FILE else {}
    return Predictor(name, "keras", path, int(model.count_params()), metrics,
                     call=compile_inference(model), keras_model=model)


def compile_inference(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``images -> logits`` for a Keras model through one traced graph for every batch size:
    far cheaper per call than Keras' eager ``model(x)`` or ``model.predict`` (about 1 ms vs 11 ms
    for one image here, ``benchmarks/bench_inference.py``)."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec((None, *INPUT_SHAPE), tf.float32)])
    return lambda x: fn(tf.constant(x, tf.float32)).numpy()


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
    _check_shapes(folder, tuple(spec.shape), tuple(outputs[out_key].shape))
    metadata = (fileio.read_json(folder / SAVED_MODEL_METADATA) or {})
    parameters = metadata.get("parameters")
    if parameters is None and hasattr(loaded, "variables"):
        parameters = int(sum(np.prod(v.shape) for v in loaded.variables))
    lock = threading.Lock()  # the function is thread-safe; the lock keeps batches from interleaving

    def call(x: np.ndarray) -> np.ndarray:
        with lock:
            return fn(**{in_key: tf.constant(x)})[out_key].numpy()

    return Predictor(str(metadata.get("model") or folder.name), "savedmodel", folder, parameters,
                     _metrics(metadata), call=call, keras_model=None)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
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


def _tflite_predictor(path: Path, folder: Path) -> Predictor:
    interpreter = _tflite_interpreter(path)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    _check_shapes(path, tuple(inp["shape_signature"]), tuple(out["shape_signature"]))
    if inp["dtype"] != np.float32:
        raise MnistlabError(f"{path}: input is {np.dtype(inp['dtype']).name}; expected float32")
    with _quiet_stderr():  # TFLite's C++ log announces its XNNPACK delegate on the first allocation
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

    metadata = (fileio.read_json(folder / METADATA_FILE) or {}) if path.name == TFLITE_FILE else {}
    name = str(metadata.get("model") or (folder.name if path.name == TFLITE_FILE else path.stem))
    return Predictor(name, "tflite", path, metadata.get("parameters"), _metrics(metadata), call=call)


# ---------------------------------------------------------------------------- files
def top_k(probabilities: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The ``k`` likeliest digits of one probability row, likeliest first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"digit": int(d), "probability": float(probabilities[d])} for d in order]


def predict_files(predictor: Predictor, paths: Sequence[str | os.PathLike], top: int = 3) -> list[dict[str, Any]]:
    """One result per file, in order: ``{"file", "digit", "probability", "top": [...]}``, or
    ``{"file", "error"}`` for a file that cannot be read or holds no digit (the rest still run)."""
    from mnistlab import preprocess

    if not 1 <= top <= NUM_CLASSES:
        raise MnistlabError(f"--top {top}: expected 1..{NUM_CLASSES}")
    results: list[dict[str, Any]] = []
    images, slots = [], []
    for path in paths:
        try:
            images.append(preprocess.preprocess(path))
            slots.append(len(results))
            results.append({"file": str(path)})
        except MnistlabError as exc:
            results.append({"file": str(path), "error": str(exc)})
    if images:
        probabilities = predictor.probabilities(np.stack(images))
        for slot, row in zip(slots, probabilities):
            best = top_k(row, top)
            results[slot].update(digit=best[0]["digit"], probability=best[0]["probability"], top=best)
    return results

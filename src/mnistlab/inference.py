"""Inference, the leaf every consumer shares: softmax, compiled inference, batched logits, and a
``Predictor`` loaded safely from a model file, whatever its format.

Accepted: a ``.keras`` file, a SavedModel folder (``saved_model.pb``, as ``mnistlab export
--format savedmodel`` writes) and a ``.tflite`` file or a folder holding ``model.tflite``. Run
folders are ``runs.load_predictor``'s: it reads the run's own files and calls ``load_model_file``.
Models are data, never code from the file. Each format is parsed and checked by ``modelcheck``
before anything loads it (an op allowlist for SavedModels, a layer allowlist and bounded sizes for
``.keras``, built-in ops and bounded tensors for ``.tflite``), then loaded:

- ``.keras`` with ``keras.saving.load_model(..., safe_mode=True)``;
- a SavedModel with ``tf.saved_model.load`` (its graph holds tensor maths only);
- a ``.tflite`` file with LiteRT (``ai-edge-litert``; TensorFlow's deprecated ``tf.lite`` where
  LiteRT is not installed), built-in ops only; int8/uint8 inputs and outputs are quantized here;
- ``.h5``, pickles and anything else are refused with the list above.

Every loaded model answers one blank image under a deadline (``probe``) before it is returned.
This module imports nothing of the package but ``errors``, ``fileio`` and ``modelcheck``, and
TensorFlow only inside the functions that need it: a ``.tflite`` model on LiteRT runs without it.
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

from mnistlab import fileio, modelcheck
from mnistlab.errors import MnistlabError

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
SAVED_MODEL_FILE = "saved_model.pb"
METADATA_FILE = "mnistlab.json"  # written by export: name, parameters, test metrics
SAVED_MODEL_METADATA = Path("assets.extra") / METADATA_FILE  # TF Serving ignores assets.extra
BATCH = 1024  # images per model call when predicting many
SIZES_KEPT = 13  # tflite: interpreters kept, one per batch size (the server's 11 up to 64, 1024, a rest)
ACCEPTED = ("a run folder (holding model.keras), a .keras file, a SavedModel folder (holding "
            "saved_model.pb) or a .tflite file (or a folder holding model.tflite)")


# ---------------------------------------------------------------------------- maths
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``(N, C)``, shifted by the row maximum so it cannot overflow.

    Computed in float64; returned as float64 for float64 input, else float32."""
    logits = np.asarray(logits)
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.result_type(logits.dtype, np.float32))


def split_batch(x: Any, parts: int) -> list[Any]:
    """``x`` cut along the batch into ``parts`` consecutive pieces, the first ``len % parts`` one longer."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    sizes = n // parts + tf.cast(tf.range(parts) < n % parts, n.dtype)
    return tf.split(x, sizes, num=parts)


def tower_logits(model: Any, x: Any, towers: int, training: bool, whole_if_smaller: bool = True) -> Any:
    """The logits of ``x`` computed in ``towers`` parts: independent branches of the graph, which
    TensorFlow's inter-op threads run side by side (training's ``--towers``, and inference after
    it). With ``whole_if_smaller`` a batch smaller than that (an epoch's last) goes whole, since a
    convolution refuses an empty part; without it the graph has no such branch (a third model call
    less to trace)."""
    import tensorflow as tf

    def parts():
        return tf.concat([model(part, training=training) for part in split_batch(x, towers)], 0)

    if not whole_if_smaller:
        return parts()
    return tf.cond(tf.shape(x)[0] >= towers, parts, lambda: model(x, training=training))


def compile_inference(model: Any, parts: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """``images -> logits`` for a Keras model through one traced graph for every batch size:
    far cheaper per call than Keras' eager ``model(x)`` or ``model.predict`` (about 1 ms vs 11 ms
    for one image here, ``benchmarks/bench_inference.py``). With ``parts`` > 1 each batch is
    computed in that many pieces side by side, as training's towers are (``--towers``: TensorFlow
    then gives each op one thread, so one piece alone would use one core)."""
    import tensorflow as tf

    def logits(x):
        return model(x, training=False) if parts == 1 else tower_logits(model, x, parts, False)

    fn = tf.function(logits, input_signature=[tf.TensorSpec((None, *INPUT_SHAPE), tf.float32)])
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
    temperature: float = 1.0  # calibration (runs' calibration.json, exports' mnistlab.json): probabilities use it

    def logits(self, images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
        """Logits ``(N, 10)`` float32 for images ``(N, 28, 28, 1)`` (or ``(N, 784)``) in [0, 1]."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2 and images.shape[1] == np.prod(INPUT_SHAPE):
            images = images.reshape(-1, *INPUT_SHAPE)
        if images.ndim != 4 or images.shape[1:] != INPUT_SHAPE:
            raise MnistlabError(f"{self.name}: images of shape {images.shape}; expected (N, 28, 28, 1)")
        return batched_logits(self.call, images, batch_size)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, 10)``: softmax of the logits over the temperature."""
        return self.probabilities_of(self.logits(images))

    def probabilities_of(self, logits: np.ndarray) -> np.ndarray:
        """``softmax(logits / temperature)``: what this model's percentages mean."""
        return softmax(np.asarray(logits, np.float32) / np.float32(self.temperature))

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` reports: name, format, parameters, test accuracy and loss."""
        return {"name": self.name, "format": self.format, "parameters": self.parameters,
                "test_accuracy": self.metrics.get("test_accuracy"), "test_loss": self.metrics.get("test_loss"),
                "temperature": self.temperature}


def metadata_temperature(metadata: dict[str, Any], where: Path) -> float:
    """The calibration temperature an export recorded (1.0 when it has none), checked."""
    value = metadata.get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e3:
        raise MnistlabError(f"{where}: {METADATA_FILE} temperature {value!r}; expected a positive number")
    return float(value)


def model_metrics(metadata: dict[str, Any]) -> dict[str, Any]:
    """The test metrics a Predictor reports, from a metrics or metadata dict."""
    return {k: metadata[k] for k in ("test_accuracy", "test_loss") if isinstance(metadata.get(k), (int, float))}


# ---------------------------------------------------------------------------- loading
def load_model_file(path: str | os.PathLike, name: str | None = None, metrics: dict[str, Any] | None = None,
                    threads: int | None = None, temperature: float | None = None) -> Predictor:
    """Load a model file or format folder (see ``ACCEPTED``) into a Predictor, checked before
    loading (``modelcheck``) and probed with one blank image under a deadline; a clear error for
    anything else. ``name`` and ``metrics`` override what the file's metadata says; ``threads``
    sizes a ``.tflite`` interpreter (default: every usable core)."""
    path = Path(path)
    if path.is_dir():
        if (path / KERAS_FILE).is_file():
            predictor = _keras_predictor(path / KERAS_FILE)
        elif (path / SAVED_MODEL_FILE).is_file():
            predictor = _saved_model_predictor(path)
        elif (path / TFLITE_FILE).is_file():
            predictor = tflite_predictor(path / TFLITE_FILE, threads=threads)
        else:
            raise MnistlabError(f"{path}: no {KERAS_FILE}, {SAVED_MODEL_FILE} or {TFLITE_FILE} in this folder; "
                                f"expected {ACCEPTED}")
    elif not path.exists():
        raise MnistlabError(f"{path}: no such file or folder; expected {ACCEPTED}")
    elif path.suffix.lower() == ".keras":
        predictor = _keras_predictor(path)
    elif path.suffix.lower() == ".tflite":
        predictor = tflite_predictor(path, threads=threads)
    else:
        raise MnistlabError(f"{path}: {path.suffix.lower() or 'this'} files are not loaded (they can carry code); "
                            f"expected {ACCEPTED}")
    if name is not None:
        predictor.name = name
    if metrics is not None:
        predictor.metrics = model_metrics(metrics)
    if temperature is not None:
        predictor.temperature = float(temperature)
    return predictor


def probe(predictor: Predictor, seconds: float = modelcheck.PROBE_SECONDS) -> Predictor:
    """Run one blank image through ``predictor`` under a deadline: a model that hangs or fails
    is refused at loading, with one line, not at the first request."""
    blank = np.zeros((1, *INPUT_SHAPE), np.float32)
    logits = modelcheck.call_with_deadline(lambda: predictor.call(blank), seconds, str(predictor.source))
    if np.shape(logits) != (1, NUM_CLASSES):
        raise MnistlabError(f"{predictor.source}: gives shape {np.shape(logits)} for one image; expected (1, 10)")
    return predictor


def load_keras(path: str | os.PathLike) -> Any:
    """A ``keras.Model`` from a ``.keras`` file: the archive and its config checked first
    (``modelcheck``), then loaded in safe mode and checked for MNIST's shapes."""
    path = Path(path)
    config = modelcheck.check_keras_file(path)
    modelcheck.check_keras_size(path, config)
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, zipfile errors, OSError...
        raise MnistlabError(f"{path}: cannot load this .keras model safely ({modelcheck.keras_reason(exc)})") from None
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
    return probe(Predictor(name, "keras", path, int(model.count_params()), {},
                           call=compile_inference(model), keras_model=model))


def _saved_model_predictor(folder: Path) -> Predictor:
    modelcheck.check_saved_model(folder)  # before TensorFlow runs anything in it
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:
        raise MnistlabError(f"{folder}: not a loadable SavedModel ({modelcheck.first_line(exc)})") from None
    fn = loaded.signatures["serving_default"]
    inputs, outputs = fn.structured_input_signature[1], fn.structured_outputs
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

    return probe(Predictor(str(metadata.get("model") or folder.name), "savedmodel", folder, parameters,
                           model_metrics(metadata), call=call, keras_model=None,
                           temperature=metadata_temperature(metadata, folder)))


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


def litert_available() -> bool:
    """True when LiteRT (``ai-edge-litert``) is installed: ``.tflite`` runs without TensorFlow."""
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


def default_threads() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _tflite_interpreter(path: Path, content: bytes, threads: int) -> Any:
    """LiteRT's interpreter when installed, else TensorFlow's (deprecated, same engine); built-in ops only."""
    if litert_available():
        from ai_edge_litert.interpreter import Interpreter, OpResolverType  # type: ignore[import-not-found]
    else:
        import tensorflow as tf

        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite's deprecation notice
        try:
            return Interpreter(model_content=content, num_threads=threads,
                               experimental_op_resolver_type=OpResolverType.BUILTIN)
        except (ValueError, RuntimeError, OSError) as exc:
            raise MnistlabError(f"{path}: not a loadable TFLite model with built-in ops only "
                                f"({modelcheck.first_line(exc)})") from None


def _quantized(detail: dict[str, Any]) -> tuple[float, int] | None:
    """``(scale, zero_point)`` of an integer input or output tensor, None for float32."""
    if detail["dtype"] == np.float32:
        return None
    scale, zero = detail["quantization"]
    if detail["dtype"] not in (np.int8, np.uint8) or not scale:
        raise MnistlabError(f"tensor {detail['name']!r} is {np.dtype(detail['dtype']).name}; "
                            f"expected float32, or int8/uint8 with a quantization scale")
    return float(scale), int(zero)


def tflite_predictor(path: Path, threads: int | None = None) -> Predictor:
    """A Predictor for a ``.tflite`` file: float32 or integer (int8/uint8) input and output, the
    integer ones quantized here with the file's own scale and zero point."""
    content = path.read_bytes()
    modelcheck.check_tflite(path, content)
    interpreter = _tflite_interpreter(path, content, threads or default_threads())
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    check_shapes(path, tuple(inp["shape_signature"]), tuple(out["shape_signature"]))
    try:
        q_in, q_out = _quantized(inp), _quantized(out)
    except MnistlabError as exc:
        raise MnistlabError(f"{path}: {exc}") from None
    lock = threading.Lock()  # one call at a time (interpreters are not thread-safe)
    # One interpreter per batch size met (the server pads to a few sizes): allocating
    # tensors again at every change of size would cost each batch a re-plan, and muting fd 2 for
    # it (TFLite's C++ log) would hide other threads' lines. Beyond SIZES_KEPT sizes the oldest goes.
    ready: dict[int, Any] = {}

    def interpreter_for(n: int) -> Any:
        if n not in ready:
            one = interpreter if not ready else _tflite_interpreter(path, content, threads or default_threads())
            one.resize_tensor_input(inp["index"], [n, *INPUT_SHAPE], strict=False)
            with quiet_stderr():  # TFLite's C++ log announces its XNNPACK delegate on the first allocation
                try:
                    one.allocate_tensors()
                except RuntimeError as exc:
                    raise MnistlabError(f"{path}: TFLite cannot prepare this model "
                                        f"({modelcheck.first_line(exc)})") from None
            if len(ready) >= SIZES_KEPT:
                ready.pop(next(iter(ready)))
            ready[n] = one
        return ready[n]

    def call(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if q_in:
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / q_in[0]) + q_in[1], info.min, info.max).astype(inp["dtype"])
        with lock:
            one = interpreter_for(len(x))
            one.set_tensor(inp["index"], x)
            try:
                one.invoke()
            except RuntimeError as exc:
                raise MnistlabError(f"{path}: TFLite failed to run this model ({modelcheck.first_line(exc)})") from None
            y = one.get_tensor(out["index"]).copy()
        return ((y.astype(np.float32) - q_out[1]) * q_out[0]) if q_out else y

    metadata = _sidecar(path.parent) if path.name == TFLITE_FILE else {}
    name = str(metadata.get("model") or (path.parent.name if path.name == TFLITE_FILE else path.stem))
    return probe(Predictor(name, "tflite", path, metadata.get("parameters"), model_metrics(metadata), call=call,
                           temperature=metadata_temperature(metadata, path)))

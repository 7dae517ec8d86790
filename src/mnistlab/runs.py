"""A run folder written by ``mnistlab train``: the one module that knows its layout.

``RunFolder`` names every file and reads and writes them (config, per-epoch history, metrics,
timings, per-split evaluations, checkpoints); ``load_predictor`` opens a run folder (or any model
file ``inference`` accepts) for prediction; ``Run`` loads what a picture or the report needs
only when first asked (model, test split, predictions), and knows the model's conv layers as the
course numbers them: layer 1 is the first Conv2D. A layer's feature maps are the output of its
*block*: the Conv2D and the batch-norm, activation and pooling layers right after it, so S4's
layer 1 gives 16 maps at 14 x 14.

The layout::

    config.json       the resolved settings (model, arch, recipe, train, data) and library versions
    history.csv       one row per epoch: losses, accuracies, learning rate (same seed => same bytes)
    metrics.json      test metrics of the final model (same seed => same bytes)
    timing.json       seconds per epoch and in all (machine-dependent, so kept apart)
    model.keras       the final model
    model.tflite      the same model for LiteRT (predict/serve/ensemble without TensorFlow), and
    model.tflite.json its check against model.keras and the SHA-256 of both (a stale one is ignored)
    checkpoints/      epoch-N (the last few), best, and interrupted (a Ctrl-C mid-epoch)
    tensorboard/      train/ and validation/ event files
    evaluation-SPLIT.json, misclassified-SPLIT.csv   written by ``mnistlab evaluate``
    plots/, report.html                              written by ``mnistlab plot`` / ``report``
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mnistlab import fileio
from mnistlab.config import from_json
from mnistlab.errors import MnistlabError
from mnistlab.inference import (INPUT_SHAPE, KERAS_FILE, TFLITE_FILE, Predictor, litert_available, load_keras,
                                load_model_file,
                                predict_logits, softmax)

CONFIG_FILE = "config.json"
MODEL_FILE = KERAS_FILE
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
TIMING_FILE = "timing.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
PLOTS_DIR = "plots"
REPORT_FILE = "report.html"
TFLITE_CHECK_FILE = "model.tflite.json"  # model.tflite's tie to model.keras (SHA-256 of both) and its check
HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate")
INTERRUPTED = "interrupted"  # checkpoint name of a Ctrl-C mid-epoch; removed at the next epoch's end


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder, by name; reading and writing them (writes are atomic)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------ names
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tflite_file(self) -> Path:
        return self.path / TFLITE_FILE

    @property
    def tflite_check_file(self) -> Path:
        return self.path / TFLITE_CHECK_FILE

    @property
    def history_file(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def timing_file(self) -> Path:
        return self.path / TIMING_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def plots(self) -> Path:
        return self.path / PLOTS_DIR

    @property
    def report_file(self) -> Path:
        return self.path / REPORT_FILE

    def evaluation_file(self, split: str) -> Path:
        return self.path / f"evaluation-{split}.json"

    def misclassified_file(self, split: str) -> Path:
        return self.path / f"misclassified-{split}.csv"

    # ------------------------------------------------------------------ state
    def is_run(self) -> bool:
        return self.config_file.is_file()

    def check_writable(self, flag: str = "--out") -> None:
        """A clear error unless the folder can be created and written (before any work)."""
        if self.path.exists() and not self.path.is_dir():
            raise MnistlabError(f"{flag} {self.path}: is a file; expected a folder (new, or a run to resume)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with fileio.atomic_path(self.path / ".write-test") as tmp:
                tmp.write_bytes(b"")
            (self.path / ".write-test").unlink()
        except OSError as exc:
            raise MnistlabError(f"{flag} {self.path}: cannot write there ({exc.strerror or exc}); "
                                f"choose a folder you can write to") from None

    # ------------------------------------------------------------------ files
    def read_config(self) -> dict[str, Any]:
        """``config.json``, or a clear error if this is not a run folder."""
        if not self.path.is_dir():
            raise MnistlabError(f"{self.path}: no such run folder; expected one written by `mnistlab train`")
        return fileio.read_json(self.config_file, required=True)  # type: ignore[return-value]

    def write_config(self, config: dict[str, Any]) -> None:
        fileio.write_json(self.config_file, config)

    def read_history(self) -> list[dict[str, float]]:
        """Rows of ``history.csv`` (``epoch`` as int, the rest floats); [] when there is none."""
        if not self.history_file.is_file():
            return []
        with self.history_file.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("epoch", "train_loss", "train_accuracy") if c not in (reader.fieldnames or ())]
            if missing:
                raise MnistlabError(f"{self.history_file}: no column {', '.join(missing)}; "
                                    f"expected {','.join(HISTORY_FIELDS)}")
            try:
                return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if k is not None}
                        for row in reader]
            except (TypeError, ValueError) as exc:
                raise MnistlabError(f"{self.history_file}: not numbers ({exc}); expected one row per epoch") from None

    def write_history(self, rows: Sequence[dict[str, float]]) -> None:
        """``history.csv``, numbers written with ``repr`` so a resumed run matches byte for byte."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HISTORY_FIELDS)
        for row in rows:
            writer.writerow([int(row["epoch"]) if k == "epoch" else repr(float(row[k])) for k in HISTORY_FIELDS])
        fileio.write_text(self.history_file, out.getvalue())

    def read_metrics(self) -> dict[str, Any]:
        return fileio.read_json(self.metrics_file) or {}

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        fileio.write_json(self.metrics_file, metrics)

    def read_timing(self) -> dict[str, Any]:
        return fileio.read_json(self.timing_file) or {}

    def write_timing(self, timing: dict[str, Any]) -> None:
        fileio.write_json(self.timing_file, timing)

    def model_digest(self) -> str | None:
        """SHA-256 of ``model.keras``: which model an evaluation was made with."""
        if not self.model_file.is_file():
            return None
        return hashlib.sha256(self.model_file.read_bytes()).hexdigest()

    def read_tflite_check(self) -> dict[str, Any] | None:
        """``model.tflite.json`` if ``model.tflite`` was converted from the current ``model.keras``
        (both SHA-256 match) and agreed with it; else None: a stale or swapped file is ignored."""
        check = fileio.read_json(self.tflite_check_file) if self.tflite_file.is_file() else None
        if not check or not check.get("accepted") or check.get("keras_sha256") != self.model_digest():
            return None
        if check.get("tflite_sha256") != hashlib.sha256(self.tflite_file.read_bytes()).hexdigest():
            return None
        return check

    def write_tflite(self, content: bytes, check: dict[str, Any]) -> None:
        """``model.tflite`` and its check (with both files' SHA-256), each written atomically."""
        fileio.write_bytes(self.tflite_file, content)
        fileio.write_json(self.tflite_check_file, {**check, "keras_sha256": self.model_digest(),
                                                   "tflite_sha256": hashlib.sha256(content).hexdigest()})

    def convert_to_tflite(self, model: Any, images: np.ndarray, log: Any = print) -> dict[str, Any] | None:
        """Write ``model.tflite`` from ``model`` (just saved as ``model.keras``), checked on
        ``images``; None, after one line to ``log``, when it cannot be (see ``export.write_run_tflite``)."""
        from mnistlab.export import write_run_tflite  # export imports this module

        return write_run_tflite(self, model, images, log)

    def remove_tflite(self) -> None:
        """Forget ``model.tflite`` (it no longer matches ``model.keras``)."""
        for stale in (self.tflite_check_file, self.tflite_file):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def read_evaluation(self, split: str) -> dict[str, Any] | None:
        """``evaluation-SPLIT.json`` if it was made with the current ``model.keras``, else None."""
        value = fileio.read_json(self.evaluation_file(split))
        if not value or value.get("model_sha256") != self.model_digest():
            return None
        return value

    def write_evaluation(self, split: str, evaluation: dict[str, Any]) -> None:
        fileio.write_json(self.evaluation_file(split), evaluation)

    def write_misclassified(self, split: str, text: str) -> None:
        fileio.write_text(self.misclassified_file(split), text)

    def write_model(self, model: Any) -> None:
        """``model.keras``, atomically (a killed save leaves no temp file behind for long:
        stale ``.model.keras.*`` files of earlier kills are removed first)."""
        for stale in self.path.glob(f".{MODEL_FILE}.*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        with fileio.atomic_path(self.model_file, suffix=".keras") as tmp:
            model.save(tmp)

    def remove_training_outputs(self) -> None:
        """Forget a run that produced nothing to resume (it diverged before its first checkpoint)."""
        for name in (CONFIG_FILE, HISTORY_FILE, METRICS_FILE, TIMING_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        shutil.rmtree(self.tensorboard, ignore_errors=True)
        shutil.rmtree(self.checkpoints, ignore_errors=True)


# ---------------------------------------------------------------------------- checkpoints
class Checkpoints:
    """The training checkpoints of a run folder: ``epoch-N`` after each epoch (the last
    ``keep`` of them), ``best`` (best validation accuracy) and ``interrupted`` (the exact
    position of a Ctrl-C mid-epoch). ``trackables`` must be the complete training state."""

    def __init__(self, folder: RunFolder, trackables: dict[str, Any], keep: int,
                 read_from: RunFolder | None = None) -> None:
        import tensorflow as tf

        self._dir = folder.checkpoints
        self._read = (read_from or folder).checkpoints  # non-chief workers write elsewhere, resume from here
        self._checkpoint = tf.train.Checkpoint(**trackables)
        self._manager = tf.train.CheckpointManager(self._checkpoint, str(self._dir), max_to_keep=keep,
                                                   checkpoint_name="epoch")

    @property
    def interrupted(self) -> Path:
        return self._dir / INTERRUPTED

    def latest(self) -> str | None:
        """The checkpoint to resume from: ``interrupted`` when present (it is newer than any
        epoch checkpoint: the next epoch's end removes it), else the last epoch's."""
        if Path(f"{self._read / INTERRUPTED}.index").is_file():
            return str(self._read / INTERRUPTED)
        return tf_latest_checkpoint(self._read)

    def restore(self, path: str) -> None:
        self._guard(lambda: self._checkpoint.restore(path).assert_existing_objects_matched(), path)

    def save_epoch(self, epoch: int) -> str:
        """Save after epoch ``epoch`` (as ``epoch-N``) and drop an ``interrupted`` one."""
        path = self._guard(lambda: self._manager.save(checkpoint_number=epoch), f"{self._dir}/epoch-{epoch}")
        for stale in self._dir.glob(f"{INTERRUPTED}.*"):
            stale.unlink()
        return path

    def save_interrupted(self) -> str:
        return self._guard(lambda: self._checkpoint.write(str(self.interrupted)), str(self.interrupted))

    def save_best(self) -> str:
        return self._guard(lambda: self._checkpoint.write(str(self._dir / "best")), str(self._dir / "best"))

    def _guard(self, action: Any, path: str) -> Any:
        """Run a save or restore; OS errors (disk full, read-only) become one clear line, and a
        half-written ``*_temp`` folder is removed."""
        import tensorflow as tf

        try:
            return action()
        except (OSError, tf.errors.OpError) as exc:
            for temp in self._dir.glob("*_temp*"):
                shutil.rmtree(temp, ignore_errors=True)
            first = (getattr(exc, "message", None) or str(exc)).strip().splitlines()[0][:200]
            raise MnistlabError(f"{path}: checkpoint failed ({first}); free some disk space or check "
                                f"the folder's permissions") from None


def tf_latest_checkpoint(folder: Path) -> str | None:
    """The newest ``epoch-N`` checkpoint in ``folder`` (CheckpointManager's bookkeeping), or None."""
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(folder)) if folder.is_dir() else None


# ---------------------------------------------------------------------------- opening for prediction
def load_predictor(path: str | os.PathLike, keras: bool = False, threads: int | None = None) -> Predictor:
    """A Predictor for a run folder (name, metrics from the run's own files) or for any model
    file or export folder ``inference.load_model_file`` takes.

    A run folder answers from its ``model.tflite`` on LiteRT, without TensorFlow, when that file
    was converted from the current ``model.keras`` and checked against it
    (``RunFolder.read_tflite_check``); else, or with ``keras=True``, from ``model.keras``.
    ``threads`` sizes the LiteRT interpreter (default: every usable core)."""
    path = Path(path)
    folder = RunFolder(path if path.is_dir() else path.parent)
    if folder.is_run() and (path.is_dir() or path.name == MODEL_FILE):
        config = folder.read_config()
        if not folder.model_file.is_file():
            raise MnistlabError(f"{folder.path}: no {MODEL_FILE}; expected a finished `mnistlab train --out` folder")
        name, metrics = str(config.get("model") or folder.path.name), folder.read_metrics()
        check = None if keras or not path.is_dir() or not litert_available() else folder.read_tflite_check()
        if check is not None:
            predictor = load_model_file(folder.tflite_file, name=name, metrics=metrics, threads=threads)
            predictor.parameters = check.get("parameters")
            return predictor
        return load_model_file(folder.model_file, name=name, metrics=metrics)
    return load_model_file(path, threads=threads)


def load_model(run_dir: str | os.PathLike) -> Any:
    """The ``model.keras`` of a run folder, loaded with Keras' ``safe_mode`` (no code from the file)."""
    folder = RunFolder(Path(run_dir))
    if not folder.model_file.is_file():
        raise MnistlabError(f"{run_dir}: no {MODEL_FILE}; expected a finished `mnistlab train --out` folder")
    return load_keras(folder.model_file)


class Run:
    """A run folder (``config.json``, ``model.keras``, ``metrics.json``, ``history.csv``, ...).

    The model, the test split (from the config's ``data`` section) and the predictions load on
    first use. ``test`` and ``class_names`` may be given instead, e.g. by a test.
    """

    def __init__(self, folder: str | Path, test: Any = None, class_names: Sequence[str] | None = None) -> None:
        self.files = RunFolder(Path(folder))
        self.folder = self.files.path
        self.config = self.files.read_config()
        if test is not None:
            self.__dict__["test"] = test  # fills the cached_property
        if class_names is not None:
            self.__dict__["class_names"] = tuple(class_names)

    @property
    def name(self) -> str:
        return str(self.config.get("model", self.folder.name))

    # ------------------------------------------------------------------ loading
    def _data_config(self):
        from mnistlab.data import DataConfig

        fields = self.config.get("data")
        if not isinstance(fields, dict):
            raise MnistlabError(f"{self.folder / CONFIG_FILE}: no \"data\" object; expected the run's data settings")
        return from_json(DataConfig, fields)

    @cached_property
    def test(self):
        """The test split the run was trained for: images ``(N, 28, 28, 1)``, labels ``(N,)``."""
        from mnistlab import data

        dataset = data.load(self._data_config())
        self.__dict__.setdefault("class_names", dataset.facts.class_names)
        return dataset.test

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        from mnistlab import data

        return data.facts_for(self._data_config().dataset).class_names

    @cached_property
    def model(self):
        """``model.keras``, loaded with Keras' ``safe_mode``."""
        return load_model(self.folder)

    @cached_property
    def metrics(self) -> dict:
        return self.files.read_metrics()

    @cached_property
    def timing(self) -> dict:
        return self.files.read_timing()

    @cached_property
    def evaluation(self) -> dict | None:
        """``evaluation-test.json`` if it was made with the current model, else None."""
        return self.files.read_evaluation("test")

    def history(self) -> list[dict[str, float]]:
        """Rows of ``history.csv`` (one per epoch); a clear error when there are none."""
        rows = self.files.read_history()
        if not rows:
            raise MnistlabError(f"{self.files.history_file}: missing or empty; curves need the per-epoch "
                                f"history `mnistlab train` writes")
        return rows

    # ------------------------------------------------------------------ predictions
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, 10)`` (softmax of the model's logits)."""
        return softmax(predict_logits(self.model, images))

    @cached_property
    def probabilities(self) -> np.ndarray:
        """Class probabilities for every test image ``(N, 10)``."""
        return self.predict(self.test.images)

    def probabilities_at(self, indices: np.ndarray) -> np.ndarray:
        """Probabilities of some test images, predicting only those unless all are known."""
        if "probabilities" in self.__dict__:
            return self.probabilities[indices]
        return self.predict(self.test.images[indices])

    def confusion(self) -> np.ndarray:
        """Test confusion matrix: from ``evaluation.json`` when current, else computed."""
        n = len(self.class_names)
        if self.evaluation and "confusion_matrix" in self.evaluation:
            matrix = np.asarray(self.evaluation["confusion_matrix"], dtype=np.int64)
            if matrix.shape == (n, n):
                return matrix
        from mnistlab.evaluate import confusion_matrix

        return confusion_matrix(self.test.labels, self.probabilities.argmax(1), n)

    def check_index(self, index: int) -> None:
        n = len(self.test)
        if not 0 <= index < n:
            raise MnistlabError(f"--index {index}: expected 0..{n - 1} for the {n} test images")

    # ------------------------------------------------------------------ layers
    def conv_layers(self) -> list:
        import keras

        return [layer for layer in self.model.layers if isinstance(layer, keras.layers.Conv2D)]

    def conv_layer(self, spec: str | int) -> tuple[int, Any]:
        """Resolve ``--layer``: a number 1..K over the Conv2D layers, or a layer name."""
        convs = self.conv_layers()
        kinds = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in self.model.layers)
        if not convs:
            raise MnistlabError(f"--layer: model {self.name!r} has no Conv2D layer ({kinds}); "
                                f"filters and feature-maps need a conv model")
        valid = "; ".join(f"{n} = {describe_conv(layer)}" for n, layer in enumerate(convs, 1))
        text = str(spec).strip()
        if text.lstrip("-").isdigit():
            number = int(text)
            if 1 <= number <= len(convs):
                return number, convs[number - 1]
            raise MnistlabError(f"--layer {text}: not a conv layer number; expected 1..{len(convs)}, "
                                f"counting the Conv2D layers in order: {valid}")
        for layer in self.model.layers:
            if layer.name == text:
                if layer in convs:
                    return convs.index(layer) + 1, layer
                raise MnistlabError(f"--layer {text}: a {type(layer).__name__} layer, not a conv layer; "
                                    f"expected one of {valid}")
        raise MnistlabError(f"--layer {text!r}: no such layer; expected a conv layer number or name: {valid}")

    def conv_block(self, conv) -> list:
        """``conv`` and the batch-norm / activation / pooling layers right after it."""
        import keras

        follow = (keras.layers.BatchNormalization, keras.layers.Activation, keras.layers.ReLU,
                  keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.PReLU,
                  keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
        layers = list(self.model.layers)
        block = [conv]
        for layer in layers[layers.index(conv) + 1:]:
            if not isinstance(layer, follow):
                break
            block.append(layer)
        return block

    def feature_maps(self, conv, index: int) -> tuple[list, np.ndarray]:
        """The block of ``conv`` and its output ``(H, W, C)`` for test image ``index``."""
        import keras

        block = self.conv_block(conv)
        try:
            inputs = self.model.inputs
            probe = keras.Model(inputs[0] if len(inputs) == 1 else inputs, block[-1].output)
        except (AttributeError, ValueError, TypeError) as exc:
            raise MnistlabError(f"model {self.name!r}: cannot read its layer outputs ({exc}); "
                                f"feature maps need a Sequential or functional model") from None
        out = probe(self.test.images[index:index + 1], training=False)
        return block, keras.ops.convert_to_numpy(out)[0]

    def softmax_kernel(self) -> np.ndarray | None:
        """The ``(784, 10)`` kernel if the model is softmax regression (one Dense layer), else None."""
        import keras

        weighted = [layer for layer in self.model.layers if layer.weights]
        if len(weighted) == 1 and isinstance(weighted[0], keras.layers.Dense):
            kernel = keras.ops.convert_to_numpy(weighted[0].kernel)
            if kernel.shape == (INPUT_SHAPE[0] * INPUT_SHAPE[1], len(self.class_names)):
                return kernel
        return None

    def kernels(self) -> list[tuple[str, np.ndarray]]:
        """``(label, kernel)`` for every layer with a kernel (weights of rank 2 or more)."""
        import keras

        return [(f"{layer.name} ({type(layer).__name__})", keras.ops.convert_to_numpy(w))
                for layer in self.model.layers for w in layer.weights if len(w.shape) >= 2]


def describe_conv(layer) -> str:
    kh, kw = layer.kernel_size
    return f"{layer.name} (Conv2D {kh}x{kw}, {layer.filters} filters)"

"""A run folder written by ``mnistlab train``: the one module that knows its layout.

``RunFolder`` names every file and reads and writes them (config, per-epoch history, metrics,
timings, per-split evaluations, checkpoints); ``Checkpoints`` keeps the training checkpoints;
``load_predictor`` opens a run folder (or any model file ``inference`` accepts) for prediction.
``analysis.Run`` opens a finished run for looking inside.

The layout::

    config.json       the resolved settings (model, arch, recipe, train, data) and library versions
    history.csv       one row per epoch: losses, accuracies, learning rate (same seed => same bytes)
    metrics.json      test metrics of the final model (same seed => same bytes)
    timing.json       seconds per epoch and in all (machine-dependent, so kept apart)
    calibration.json  the temperature fitted on the validation split, ECE and NLL before and after
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
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mnistlab import fileio
from mnistlab.errors import MnistlabError
from mnistlab.inference import KERAS_FILE, TFLITE_FILE, Predictor, litert_available, load_keras, load_model_file

CONFIG_FILE = "config.json"
MODEL_FILE = KERAS_FILE
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
TIMING_FILE = "timing.json"
CALIBRATION_FILE = "calibration.json"
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
    def calibration_file(self) -> Path:
        return self.path / CALIBRATION_FILE

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

    def write_calibration(self, calibration: dict[str, Any]) -> None:
        fileio.write_json(self.calibration_file, calibration)

    def temperature(self) -> float:
        """The run's calibration temperature (``calibration.json``), 1.0 for a run without one."""
        value = (fileio.read_json(self.calibration_file) or {}).get("temperature", 1.0)
        if not isinstance(value, (int, float)) or not 0 < value < 1e3:
            raise MnistlabError(f"{self.calibration_file}: temperature {value!r}; expected a positive number")
        return float(value)

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

    def convert_to_tflite(self, model: Any, images: np.ndarray, log: Any = print,
                          reference: np.ndarray | None = None) -> dict[str, Any] | None:
        """Write ``model.tflite`` from ``model`` (just saved as ``model.keras``), checked on
        ``images`` (``reference``: the model's logits of them, when already computed); None, after
        one line to ``log``, when it cannot be (see ``convert.write_run_tflite``)."""
        from mnistlab.convert import write_run_tflite  # TensorFlow's converter: only when asked

        return write_run_tflite(self, model, images, log, reference)

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
        for name in (CONFIG_FILE, HISTORY_FILE, METRICS_FILE, TIMING_FILE, CALIBRATION_FILE):
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
            predictor = load_model_file(folder.tflite_file, name=name, metrics=metrics, threads=threads,
                                        temperature=folder.temperature())
            predictor.parameters = check.get("parameters")
            return predictor
        _import_tensorflow()
        return load_model_file(folder.model_file, name=name, metrics=metrics, temperature=folder.temperature())
    lite = path.suffix.lower() == ".tflite" or (path.is_dir() and not (path / MODEL_FILE).is_file()
                                                 and not (path / "saved_model.pb").is_file())
    if not (lite and litert_available()):
        _import_tensorflow()
    return load_model_file(path, threads=threads)


def _import_tensorflow() -> None:
    """TensorFlow imported with its C++ start-up lines muted, for the models that need it (the
    CLI no longer imports it for every command: LiteRT models run without it)."""
    from mnistlab import runtime

    runtime.import_tensorflow_quietly()


def load_model(run_dir: str | os.PathLike) -> Any:
    """The ``model.keras`` of a run folder, loaded with Keras' ``safe_mode`` (no code from the file)."""
    folder = RunFolder(Path(run_dir))
    if not folder.model_file.is_file():
        raise MnistlabError(f"{run_dir}: no {MODEL_FILE}; expected a finished `mnistlab train --out` folder")
    return load_keras(folder.model_file)

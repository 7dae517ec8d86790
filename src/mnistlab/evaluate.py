"""Evaluation: loss, accuracy, confusion matrix, per-class precision/recall, misclassified list."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnistlab import fileio
from mnistlab.data import NUM_CLASSES, Split
from mnistlab.errors import MnistlabError

EVAL_BATCH = 1000  # images per forward pass: large enough to be fast, small enough for little memory


@dataclass(frozen=True)
class Evaluation:
    """Results on one split. ``probabilities`` is ``(N, 10)``; ``confusion[true, predicted]``."""

    loss: float
    accuracy: float
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    confusion: np.ndarray

    @property
    def correct(self) -> int:
        return int((self.predictions == self.labels).sum())

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class precision (of each predicted class) and recall (of each true class)."""
        tp = np.diag(self.confusion).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.nan_to_num(tp / self.confusion.sum(axis=0))
            recall = np.nan_to_num(tp / self.confusion.sum(axis=1))
        return precision, recall

    def misclassified(self) -> list[dict[str, Any]]:
        """Wrongly predicted samples in index order, with the model's confidence in its answer."""
        wrong = np.flatnonzero(self.predictions != self.labels)
        return [{"index": int(i), "label": int(self.labels[i]), "prediction": int(self.predictions[i]),
                 "confidence": float(self.probabilities[i, self.predictions[i]])} for i in wrong]


def predict_logits(model: Any, images: np.ndarray, batch_size: int = EVAL_BATCH,
                   call: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Logits ``(N, 10)`` of ``model`` in inference mode, in batches, through a compiled graph.

    Pass ``call`` (from ``predict.compile_inference(model)``) to reuse one traced graph across
    calls, as training does for its per-epoch validation."""
    if call is None:
        from mnistlab.predict import compile_inference

        call = compile_inference(model)
    outputs = [call(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, NUM_CLASSES), np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``(N, C)``, shifted by the row maximum so it cannot overflow.

    Computed in float64; returned as float64 for float64 input, else float32."""
    logits = np.asarray(logits)
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.result_type(logits.dtype, np.float32))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Counts ``(C, C)``, row = true class, column = predicted class (``tf.math.confusion_matrix``)."""
    import tensorflow as tf

    return tf.math.confusion_matrix(labels, predictions, num_classes=num_classes).numpy().astype(np.int64)


def evaluate_logits(logits: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Metrics from logits and integer labels (softmax cross-entropy, computed stably by TF)."""
    import tensorflow as tf

    labels = labels.argmax(1) if labels.ndim == 2 else labels
    labels = labels.astype(np.int64)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    probabilities = softmax(np.asarray(logits, np.float32))
    predictions = probabilities.argmax(1)
    confusion = confusion_matrix(labels, predictions)
    return Evaluation(
        loss=float(tf.reduce_mean(losses).numpy()) if len(labels) else float("nan"),
        accuracy=float((predictions == labels).mean()) if len(labels) else float("nan"),
        labels=labels, predictions=predictions, probabilities=probabilities, confusion=confusion)


def evaluate_split(model: Any, split: Split, call: Callable[[np.ndarray], np.ndarray] | None = None) -> Evaluation:
    """Evaluate ``model`` on one split (``call``: a compiled inference function to reuse)."""
    return evaluate_logits(predict_logits(model, split.images, call=call), split.labels)


def load_model(run_dir: str | os.PathLike) -> Any:
    """The ``model.keras`` of a run folder, loaded with Keras' ``safe_mode`` (no code from the file)."""
    from mnistlab.predict import load_keras

    path = Path(run_dir) / "model.keras"
    if not path.is_file():
        raise MnistlabError(f"{run_dir}: no model.keras; expected a finished `mnistlab train --out` folder")
    return load_keras(path)


def confusion_table(confusion: np.ndarray, class_names: tuple[str, ...]) -> str:
    """The confusion matrix as a text table: rows are true classes, columns predictions."""
    width = max(5, len(str(confusion.max())) + 1)
    short = [name[:width - 1] for name in class_names]
    lines = ["true\\pred " + "".join(f"{n:>{width}}" for n in short)]
    for name, row in zip(short, confusion):
        lines.append(f"{name:>9} " + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def write_reports(run_dir: str | os.PathLike, result: Evaluation, split: str) -> tuple[Path, Path]:
    """Write ``evaluation.json`` and ``misclassified.csv`` (index,label,prediction,confidence)."""
    run_dir = Path(run_dir)
    precision, recall = result.precision_recall()
    eval_path = run_dir / "evaluation.json"
    fileio.write_json(eval_path, {
        "split": split, "loss": result.loss, "accuracy": result.accuracy, "correct": result.correct,
        "total": int(len(result.labels)), "confusion_matrix": result.confusion.tolist(),
        "precision": precision.round(6).tolist(), "recall": recall.round(6).tolist()})
    rows = ["index,label,prediction,confidence"]
    rows += [f"{m['index']},{m['label']},{m['prediction']},{m['confidence']:.6f}" for m in result.misclassified()]
    csv_path = run_dir / "misclassified.csv"
    fileio.write_text(csv_path, "\n".join(rows) + "\n")
    return eval_path, csv_path

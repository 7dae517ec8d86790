"""Evaluation: loss, accuracy, confusion matrix, per-class precision/recall, misclassified list."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnistlab import calibrate
from mnistlab.data import NUM_CLASSES, Split
from mnistlab.inference import predict_logits, softmax
from mnistlab.runs import RunFolder

EVAL_BATCH = 1000  # images per forward pass: large enough to be fast, small enough for little memory


@dataclass(frozen=True)
class Evaluation:
    """Results on one split. ``probabilities`` ``(N, 10)`` are ``softmax(logits / temperature)``
    (the run's calibration); ``loss`` is the plain cross-entropy of the raw logits, as training
    reports it; ``confusion[true, predicted]``."""

    loss: float
    accuracy: float
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    confusion: np.ndarray
    logits: np.ndarray
    temperature: float = 1.0

    @property
    def ece(self) -> float:
        """Expected calibration error of the (calibrated) probabilities, 15 bins."""
        return calibrate.expected_calibration_error(self.probabilities, self.labels)

    def selective(self) -> dict[str, float]:
        """What the unsure rule does here (``calibrate.selective_accuracy``): answers kept, their accuracy,
        errors flagged."""
        return calibrate.selective_accuracy(self.probabilities, self.labels)

    @property
    def ece_uncalibrated(self) -> float:
        """The same of the raw softmax (temperature 1)."""
        return calibrate.expected_calibration_error(calibrate.probabilities(self.logits), self.labels)

    @property
    def correct(self) -> int:
        return int((self.predictions == self.labels).sum())

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class precision and recall (``precision_recall`` of the confusion matrix)."""
        return precision_recall(self.confusion)

    def misclassified(self) -> list[dict[str, Any]]:
        """Wrongly predicted samples in index order, with the model's confidence in its answer."""
        wrong = np.flatnonzero(self.predictions != self.labels)
        return [{"index": int(i), "label": int(self.labels[i]), "prediction": int(self.predictions[i]),
                 "confidence": float(self.probabilities[i, self.predictions[i]])} for i in wrong]


def precision_recall(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision (of each predicted class) and recall (of each true class) from a
    confusion matrix; NaN where undefined (a class never predicted has no precision)."""
    tp = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / confusion.sum(axis=0), tp / confusion.sum(axis=1)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Counts ``(C, C)``, row = true class, column = predicted class (``tf.math.confusion_matrix``)."""
    import tensorflow as tf

    return tf.math.confusion_matrix(labels, predictions, num_classes=num_classes).numpy().astype(np.int64)


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> Evaluation:
    """Metrics from logits and integer labels (softmax cross-entropy, computed stably by TF);
    probabilities calibrated by ``temperature``."""
    import tensorflow as tf

    labels = labels.argmax(1) if labels.ndim == 2 else labels
    labels = labels.astype(np.int64)
    logits = np.asarray(logits, np.float32)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    probabilities = softmax(logits / np.float32(temperature))
    predictions = probabilities.argmax(1)
    confusion = confusion_matrix(labels, predictions)
    return Evaluation(
        loss=float(tf.reduce_mean(losses).numpy()) if len(labels) else float("nan"),
        accuracy=float((predictions == labels).mean()) if len(labels) else float("nan"),
        labels=labels, predictions=predictions, probabilities=probabilities, confusion=confusion, logits=logits,
        temperature=float(temperature))


def evaluate_split(model: Any, split: Split, call: Callable[[np.ndarray], np.ndarray] | None = None,
                   temperature: float = 1.0) -> Evaluation:
    """Evaluate ``model`` on one split (``call``: a compiled inference function to reuse)."""
    return evaluate_logits(predict_logits(model, split.images, call=call), split.labels, temperature)


def confusion_table(confusion: np.ndarray, class_names: tuple[str, ...]) -> str:
    """The confusion matrix as a text table: rows are true classes, columns predictions."""
    width = max(5, len(str(confusion.max())) + 1)
    short = [name[:width - 1] for name in class_names]
    lines = ["true\\pred " + "".join(f"{n:>{width}}" for n in short)]
    for name, row in zip(short, confusion):
        lines.append(f"{name:>9} " + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def format_rate(value: float) -> str:
    """A precision or recall for people: four decimals, or "–" where it is undefined (NaN)."""
    return "–" if np.isnan(value) else f"{value:.4f}"


def _number(value: float) -> float | None:
    """A metric for JSON: NaN (undefined) becomes null."""
    return None if np.isnan(value) else round(float(value), 6)


def write_reports(run_dir: str | os.PathLike, result: Evaluation, split: str) -> tuple[Path, Path]:
    """Write ``evaluation-SPLIT.json`` and ``misclassified-SPLIT.csv`` (index,label,prediction,confidence)."""
    folder = RunFolder(Path(run_dir))
    precision, recall = result.precision_recall()
    eval_path, csv_path = folder.evaluation_file(split), folder.misclassified_file(split)
    folder.write_evaluation(split, {
        "split": split, "model_sha256": folder.model_digest(), "loss": result.loss, "accuracy": result.accuracy,
        "correct": result.correct, "total": int(len(result.labels)), "confusion_matrix": result.confusion.tolist(),
        "temperature": result.temperature, "ece": _number(result.ece), "ece_uncalibrated": _number(result.ece_uncalibrated),
        "unsure": {k: _number(v) for k, v in result.selective().items()},
        "precision": [_number(p) for p in precision], "recall": [_number(r) for r in recall]})
    rows = ["index,label,prediction,confidence"]
    rows += [f"{m['index']},{m['label']},{m['prediction']},{m['confidence']:.6f}" for m in result.misclassified()]
    folder.write_misclassified(split, "\n".join(rows) + "\n")
    return eval_path, csv_path

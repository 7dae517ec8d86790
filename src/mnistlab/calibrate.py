"""Answers whose percentages mean what they say: temperature scaling, calibration error, "unsure".

A model trained with label smoothing tops out near 91 % on an obvious digit; one trained without
it is over-confident on its mistakes. One scalar fixes most of both (Guo et al. 2017): the
*temperature* ``T`` that minimises the negative log-likelihood of ``softmax(logits / T)`` on the
validation split. Accuracy is unchanged (dividing by ``T > 0`` keeps each row's order); the
expected calibration error (ECE, 15 equal-width confidence bins, Naeini et al. 2015) says how far
the stated confidence is from the accuracy actually reached.

An answer is *unsure* when its top probability is below ``UNSURE_BELOW`` or the runner-up is
within ``UNSURE_MARGIN`` of it: then mnistlab says "4 or 9?" instead of a confident wrong digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mnistlab.errors import MnistlabError

ECE_BINS = 15
UNSURE_BELOW = 0.80  # calibrated top probability under which an answer is called unsure
UNSURE_MARGIN = 0.25  # ... or when the second digit is this close to the first
TEMPERATURE_RANGE = (0.05, 20.0)  # searched; outside it the logits are broken, not miscalibrated


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, shifted by the row maximum so it cannot overflow."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of ``softmax(logits / temperature)``."""
    labels = np.asarray(labels, np.int64)
    return float(-log_softmax(np.asarray(logits, np.float64) / temperature)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising ``nll`` on ``(logits, labels)``: golden-section search over
    ``beta = 1 / T``, in which the NLL is convex (log-sum-exp of a linear function, minus a linear one)."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    if len(labels) == 0:
        raise MnistlabError("calibration: the validation split is empty; expected images to fit the temperature on")
    lo, hi = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits * a, labels), nll(logits * b, labels)
    for _ in range(80):  # the bracket shrinks by 0.618 each time: 80 steps reach float precision
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits * a, labels)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits * b, labels)
    return float(1 / ((lo + hi) / 2))


def _check_probabilities(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` float64 probabilities and ``(N,)`` integer labels, or a clear error."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1] or not len(labels):
        raise MnistlabError(f"probabilities {probabilities.shape} and labels {labels.shape}: "
                            f"expected (N, classes) and (N,) with N >= 1")
    return probabilities, labels.astype(np.int64)


def calibration_bins(probabilities: np.ndarray, labels: np.ndarray,
                     bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: image count, accuracy and mean confidence, ``(bins,)``
    each (NaN where a bin is empty), binned as ``expected_calibration_error`` uses them:
    an image's confidence is its predicted class's probability, bin ``b`` holds confidences in
    ``(b/bins, (b+1)/bins]`` (the first also 0)."""
    if bins < 1:
        raise MnistlabError(f"bins {bins}: expected at least 1")
    probabilities, labels = _check_probabilities(probabilities, labels)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins: 0 / 0 = NaN on purpose
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / counts
    return counts, accuracy, mean_confidence


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = sum over equal-width confidence bins of (n_b / N) |accuracy_b - confidence_b|,
    confidence being each row's top probability (Naeini et al. 2015; Guo et al. 2017)."""
    if len(np.asarray(labels)) == 0:
        return float("nan")
    counts, accuracy, confidence = calibration_bins(probabilities, labels, bins)
    full = counts > 0
    return float((counts[full] / counts.sum() * np.abs(accuracy[full] - confidence[full])).sum())


@dataclass(frozen=True)
class Calibration:
    """The fitted temperature and what it does on the split it was fitted on."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    images: int

    def to_json(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "ece_before": self.ece_before, "ece_after": self.ece_after,
                "nll_before": self.nll_before, "nll_after": self.nll_after, "images": self.images,
                "bins": ECE_BINS, "fitted_on": "validation"}


def calibrate(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """Fit the temperature on ``(logits, labels)`` and report ECE and NLL before and after."""
    t = fit_temperature(logits, labels)
    before, after = probabilities(logits), probabilities(logits, t)
    return Calibration(t, expected_calibration_error(before, labels), expected_calibration_error(after, labels),
                       nll(logits, labels), nll(logits, labels, t), int(len(labels)))


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` in float64."""
    return np.exp(log_softmax(np.asarray(logits, np.float64) / temperature))


def is_unsure(row: np.ndarray, below: float = UNSURE_BELOW, margin: float = UNSURE_MARGIN) -> bool:
    """True when the top probability of ``row`` is under ``below`` or the runner-up is within ``margin``."""
    top2 = np.sort(np.asarray(row, np.float64))[-2:]
    return bool(top2[1] < below or top2[1] - top2[0] < margin)


def selective_accuracy(probabilities_: np.ndarray, labels: np.ndarray, below: float = UNSURE_BELOW,
                       margin: float = UNSURE_MARGIN) -> dict[str, float]:
    """What the unsure rule buys: the share of answers kept (sure), their accuracy, and the share of
    all errors that were flagged unsure (measured, not assumed: arXiv:2403.14715)."""
    probabilities_, labels = np.asarray(probabilities_, np.float64), np.asarray(labels, np.int64)
    unsure = np.array([is_unsure(row, below, margin) for row in probabilities_], dtype=bool)
    wrong = probabilities_.argmax(axis=1) != labels
    kept = ~unsure
    return {"kept": float(kept.mean()) if len(labels) else float("nan"),
            "accuracy_kept": float((~wrong[kept]).mean()) if kept.any() else float("nan"),
            "accuracy_all": float((~wrong).mean()) if len(labels) else float("nan"),
            "errors_flagged": float(unsure[wrong].mean()) if wrong.any() else float("nan")}

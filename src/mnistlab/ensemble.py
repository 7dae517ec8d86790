"""Ensembles: average the class probabilities of several trained runs and evaluate the average
(without TensorFlow when every run has its checked ``model.tflite`` and LiteRT is installed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mnistlab.data import Split
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import Evaluation, evaluate_logits
from mnistlab.inference import softmax
from mnistlab.runs import load_predictor


@dataclass(frozen=True)
class EnsembleResult:
    """The ensemble's evaluation and each member's accuracy, in the order the runs were given."""

    evaluation: Evaluation
    member_accuracies: tuple[float, ...]


def average_probabilities(member_logits: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the members' softmax probabilities: ``K`` arrays ``(N, 10)`` -> ``(N, 10)``."""
    if not member_logits:
        raise MnistlabError("ensemble: expected at least one run")
    return np.mean([softmax(np.asarray(z, np.float64)) for z in member_logits], axis=0)


def evaluate_ensemble(runs: Sequence[str | os.PathLike], split: Split) -> EnsembleResult:
    """Load each run (its ``model.tflite`` on LiteRT when current, else ``model.keras``: see
    ``runs.load_predictor``), average the probabilities on ``split``, evaluate.

    Each member's probabilities are calibrated by its own temperature. The averaged probabilities
    go through ``evaluate_logits`` as log-probabilities, so the loss is the ensemble's
    cross-entropy and its predictions are the argmax of the average.
    """
    predictors = [load_predictor(run) for run in runs]
    # each member's logits over its own calibration temperature: the average of calibrated answers
    member_logits = [p.logits(split.images) / np.float32(p.temperature) for p in predictors]
    accuracies = tuple(evaluate_logits(z, split.labels).accuracy for z in member_logits)
    mean = average_probabilities(member_logits)
    log_mean = np.log(np.maximum(mean, np.finfo(np.float64).tiny)).astype(np.float32)
    return EnsembleResult(evaluate_logits(log_mean, split.labels), accuracies)

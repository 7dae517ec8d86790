"""Predict picture files: each file through ``preprocess`` and one model call for all of them.

The model comes from ``runs.load_predictor`` (a run folder, a ``.keras`` file, a SavedModel or a
``.tflite`` file); every file gets its own result or its own one-line error.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from mnistlab.errors import MnistlabError
from mnistlab.inference import NUM_CLASSES, Predictor


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

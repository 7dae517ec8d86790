"""Predict picture files: each file through ``preprocess`` and one model call for all of them.

The model comes from ``runs.load_predictor`` (a run folder, a ``.keras`` file, a SavedModel or a
``.tflite`` file); every file gets its own result or its own one-line error.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mnistlab.errors import MnistlabError
from mnistlab.inference import NUM_CLASSES, Predictor


# ---------------------------------------------------------------------------- answers
def top_k(probabilities: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The ``k`` likeliest digits of one probability row, likeliest first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"digit": int(d), "probability": float(probabilities[d])} for d in order]


def answer(probabilities: np.ndarray, top: int = 3) -> dict[str, Any]:
    """What a user is told about one picture, from its calibrated probabilities: the digit, its
    probability, the ``top`` likeliest, and whether the model is unsure (``calibrate.is_unsure``:
    then ``candidates`` holds the two digits it hesitates between)."""
    from mnistlab.calibrate import is_unsure

    best = top_k(probabilities, max(top, 2))
    unsure = is_unsure(probabilities)
    return {"digit": best[0]["digit"], "probability": best[0]["probability"], "top": best[:top],
            "unsure": unsure, "candidates": [t["digit"] for t in best[:2]] if unsure else [best[0]["digit"]]}


def verdict(result: dict[str, Any]) -> str:
    """``7 (98.2 %)``, or ``4 or 9? (55.0 %, 40.2 %)`` when unsure."""
    if result["unsure"]:
        first, second = result["top"][0], result["top"][1] if len(result["top"]) > 1 else None
        if second is None:
            return f"{first['digit']}? ({first['probability']:.1%})"
        return f"{first['digit']} or {second['digit']}? ({first['probability']:.1%}, {second['probability']:.1%})"
    return f"{result['digit']} ({result['probability']:.1%})"


# ---------------------------------------------------------------------------- files
def predict_files(predictor: Predictor, pictures: Sequence[Any], top: int = 3) -> list[dict[str, Any]]:
    """One result per picture, in order: ``{"file", "digit", "probability", "top", "unsure",
    "candidates"}`` (see ``answer``), or ``{"file", "error"}`` for a picture that cannot be read or
    holds no digit (the rest still run). A picture is a file path, its bytes, or a grey array
    ``(H, W)`` in [0, 1] of either polarity."""
    from mnistlab import preprocess

    if not 1 <= top <= NUM_CLASSES:
        raise MnistlabError(f"--top {top}: expected 1..{NUM_CLASSES}")
    results: list[dict[str, Any]] = []
    images, slots = [], []
    for i, picture in enumerate(pictures):
        name = f"image {i}" if isinstance(picture, (np.ndarray, bytes, bytearray, memoryview)) else str(picture)
        try:
            images.append(preprocess.to_mnist(np.asarray(picture, np.float32), name) if isinstance(picture, np.ndarray)
                          else preprocess.preprocess(picture, name))
            slots.append(len(results))
            results.append({"file": name})
        except MnistlabError as exc:
            results.append({"file": name, "error": str(exc)})
    if images:
        for slot, row in zip(slots, predictor.probabilities(np.stack(images))):
            results[slot].update(answer(row, top))
    return results

"""Calibration: the temperature recovered from data whose true temperature is known, ECE against a
hand computation, the unsure rule and what it keeps."""

from __future__ import annotations

import numpy as np
import pytest

from mnistlab import calibrate
from mnistlab.errors import MnistlabError


def sampled(n: int, true_temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / true_temperature): a model that is
    miscalibrated by exactly that temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 10))
    p = calibrate.probabilities(logits, true_temperature)
    labels = np.array([rng.choice(10, p=row) for row in p])
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_that_made_the_labels(true_temperature):
    logits, labels = sampled(20_000, true_temperature)
    fitted = calibrate.fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    # and it is the minimum of the NLL: nudging it either way is worse
    for factor in (0.9, 1.1):
        assert calibrate.nll(logits, labels, fitted) < calibrate.nll(logits, labels, fitted * factor)


def test_calibration_lowers_ece_and_nll_and_keeps_accuracy():
    logits, labels = sampled(5000, 0.4, seed=1)  # the model's logits are 2.5x too small: under-confident
    result = calibrate.calibrate(logits, labels)
    assert result.ece_after < result.ece_before / 3
    assert result.nll_after < result.nll_before
    before, after = calibrate.probabilities(logits), calibrate.probabilities(logits, result.temperature)
    np.testing.assert_array_equal(before.argmax(1), after.argmax(1))


def test_ece_matches_a_hand_computation():
    # four answers: confidences 0.95, 0.95 (bin 14), 0.55 (bin 8), 0.3 (bin 4); correct: yes, no, yes, no
    probs = np.zeros((4, 10))
    for i, (top, digit) in enumerate([(0.95, 1), (0.95, 2), (0.55, 3), (0.3, 4)]):
        probs[i] = (1 - top) / 9
        probs[i, digit] = top
    labels = np.array([1, 0, 3, 0])
    expected = 2 / 4 * abs(0.5 - 0.95) + 1 / 4 * abs(1 - 0.55) + 1 / 4 * abs(0 - 0.3)
    assert calibrate.expected_calibration_error(probs, labels) == pytest.approx(expected)
    assert calibrate.expected_calibration_error(np.eye(10), np.arange(10)) == 0.0  # sure and right


def test_an_empty_split_cannot_be_fitted():
    with pytest.raises(MnistlabError, match="validation split is empty"):
        calibrate.fit_temperature(np.zeros((0, 10)), np.zeros(0, int))


def test_unsure_means_a_low_top_or_a_close_second():
    assert not calibrate.is_unsure(np.array([0.97, 0.02] + [0.00125] * 8))
    assert calibrate.is_unsure(np.array([0.6, 0.1] + [0.0375] * 8))  # low top
    assert calibrate.is_unsure(np.array([0.81, 0.19] + [0.0] * 8), below=0.8, margin=0.7)  # close second
    probs = np.array([[0.99, 0.01] + [0] * 8, [0.5, 0.45] + [0.00625] * 8, [0.9, 0.05] + [0.00625] * 8])
    labels = np.array([0, 1, 1])
    kept = calibrate.selective_accuracy(probs, labels)
    assert kept["kept"] == pytest.approx(2 / 3)
    assert kept["accuracy_kept"] == pytest.approx(0.5) and kept["accuracy_all"] == pytest.approx(1 / 3)
    assert kept["errors_flagged"] == pytest.approx(0.5)

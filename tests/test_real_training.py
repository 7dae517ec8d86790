"""Short training runs on the real MNIST that must clear an accuracy bar (tinygrad's habit)."""

from __future__ import annotations

import json
import os

import pytest

from mnistlab import data
from mnistlab.errors import MnistlabError
from mnistlab.train import TrainConfig, train

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def mnist():
    try:
        return data.load(data.DataConfig(download=False))
    except MnistlabError as exc:
        if os.environ.get("MNISTLAB_REQUIRE_REAL_DATA"):
            raise
        pytest.skip(f"real MNIST not found ({exc}); set MNISTLAB_DATA_DIR")


def test_softmax_regression_clears_90_percent(mnist, tmp_path):
    result = train("softmax", mnist, tmp_path / "softmax", TrainConfig(progress=False), dict(epochs=2),
                   log=[].append)
    assert result.metrics["test_accuracy"] >= 0.90


def test_course_mlp_one_epoch_clears_95_percent(mnist, tmp_path):
    result = train("mlp", mnist, tmp_path / "mlp", TrainConfig(course=True, progress=False),
                   dict(epochs=1), log=[].append)
    assert result.metrics["test_accuracy"] >= 0.95


def test_default_cnn_one_epoch_clears_97_percent_and_its_answers_are_calibrated(mnist, tmp_path):
    result = train("cnn", mnist, tmp_path / "cnn", TrainConfig(progress=False), dict(epochs=1), log=[].append)
    assert result.metrics["test_accuracy"] >= 0.97
    # label smoothing leaves the raw softmax under-confident; the temperature fitted on validation fixes it
    calibration = json.loads((tmp_path / "cnn" / "calibration.json").read_text())
    assert calibration["temperature"] < 1 and calibration["ece_after"] < calibration["ece_before"] / 3
    assert result.metrics["test_ece"] < result.metrics["test_ece_uncalibrated"] / 3  # and it holds on test
    assert result.metrics["test_accuracy"] == pytest.approx(float((tmp_path / "cnn" / "metrics.json").read_text()
                                                                  .split('"test_accuracy": ')[1].split(",")[0]))

"""The loader against the published facts of the real MNIST and Fashion-MNIST files.

Skipped when the files are missing, failed instead under $MNISTLAB_REQUIRE_REAL_DATA=1 (CI).
MNIST's facts come from its README; Fashion-MNIST's were computed once with NumPy from Debian's
``dataset-fashion-mnist`` (6,000 / 1,000 per class; training pixels mean 0.28604, std 0.35302).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnistlab import data
from mnistlab.data import DataConfig, Dataset
from mnistlab.errors import MnistlabError

pytestmark = pytest.mark.integration

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # train + validation
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
MNIST_FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the validation split's first ten
FASHION_FIRST_TEST_LABELS = [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
PIXEL_TOLERANCE = 0.0005


def _training_labels(ds: Dataset) -> np.ndarray:
    """All 60,000 labels of the training file, in file order (validation first)."""
    return np.concatenate([ds.validation.labels, ds.train.labels])


def _training_pixel_mean_std(ds: Dataset, chunk: int = 5000) -> tuple[float, float]:
    """Mean and std of every pixel of the training file (train + validation), accumulated in
    float64 chunk by chunk (no 188 MB concatenation or squared copy)."""
    total = total_sq = 0.0
    count = 0
    for split in (ds.validation, ds.train):
        for start in range(0, len(split), chunk):
            block = split.images[start:start + chunk].astype(np.float64)
            total, total_sq, count = total + block.sum(), total_sq + np.square(block).sum(), count + block.size
    mean = total / count
    return mean, (total_sq / count - mean**2) ** 0.5


def test_mnist_split_sizes_and_shapes(real_mnist: Dataset) -> None:
    assert (len(real_mnist.train), len(real_mnist.validation), len(real_mnist.test)) == (55_000, 5_000, 10_000)
    assert real_mnist.train.images.shape == (55_000, 28, 28, 1) and real_mnist.train.images.dtype == np.float32


def test_mnist_label_counts(real_mnist: Dataset) -> None:
    labels = _training_labels(real_mnist)
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(real_mnist.test.labels, minlength=10).tolist() == MNIST_TEST_COUNTS


def test_mnist_first_labels(real_mnist: Dataset) -> None:
    assert real_mnist.test.labels[:10].tolist() == MNIST_FIRST_TEST_LABELS
    assert real_mnist.validation.labels[:10].tolist() == MNIST_FIRST_TRAIN_LABELS


def test_mnist_training_pixel_mean_and_std(real_mnist: Dataset) -> None:
    mean, std = _training_pixel_mean_std(real_mnist)
    assert mean == pytest.approx(0.1307, abs=PIXEL_TOLERANCE)
    assert std == pytest.approx(0.3081, abs=PIXEL_TOLERANCE)
    assert real_mnist.train.images.min() == 0.0 and real_mnist.train.images.max() == 1.0


def test_mnist_files_verify(real_mnist_dir: Path) -> None:
    results = data.verify(DataConfig(data_dir=str(real_mnist_dir)))
    assert set(results) == set(data.ROLES) and all(ok for _, ok in results.values())


def test_mnist_validation_size_is_settable(real_mnist_dir: Path) -> None:
    ds = data.load(DataConfig(data_dir=str(real_mnist_dir), validation_size=10_000, download=False), flatten=True)
    assert (len(ds.train), len(ds.validation)) == (50_000, 10_000) and ds.train.images.shape[1] == 784
    assert ds.validation.labels[:10].tolist() == MNIST_FIRST_TRAIN_LABELS


def test_fashion_is_found_in_its_system_dir(fashion_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system_dir = Path(data.DATASETS["fashion-mnist"].system_dirs[0])
    if fashion_dir != system_dir:
        pytest.skip(f"Fashion-MNIST found in {fashion_dir}, not in its system dir {system_dir}")
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    folder, _, source = data.locate(DataConfig(dataset="fashion-mnist", download=False))
    assert (folder, source) == (system_dir, "system package")


def test_fashion_split_sizes_and_label_counts(real_fashion: Dataset) -> None:
    assert (len(real_fashion.train), len(real_fashion.validation), len(real_fashion.test)) == (55_000, 5_000, 10_000)
    labels = _training_labels(real_fashion)
    assert np.bincount(labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(real_fashion.test.labels, minlength=10).tolist() == [1000] * 10
    assert real_fashion.test.labels[:10].tolist() == FASHION_FIRST_TEST_LABELS


def test_fashion_training_pixel_mean_and_std(real_fashion: Dataset) -> None:
    mean, std = _training_pixel_mean_std(real_fashion)
    assert mean == pytest.approx(0.2860, abs=PIXEL_TOLERANCE)
    assert std == pytest.approx(0.3530, abs=PIXEL_TOLERANCE)


def test_fashion_class_names(real_fashion: Dataset) -> None:
    assert real_fashion.facts.class_names == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert real_fashion.facts.class_names[real_fashion.test.labels[0]] == "Ankle boot"


def test_fashion_files_verify(fashion_dir: Path) -> None:
    results = data.verify(DataConfig(dataset="fashion-mnist", data_dir=str(fashion_dir)))
    assert all(ok for _, ok in results.values())


def test_mnist_folder_does_not_pass_for_fashion(real_mnist_dir: Path, fashion_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MnistlabError, match="holds mnist, not fashion-mnist"):
        data.locate(DataConfig(dataset="fashion-mnist", data_dir=str(real_mnist_dir)))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(real_mnist_dir))  # the files themselves, no mnist/ level
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))
    folder, _, source = data.locate(DataConfig(dataset="fashion-mnist", download=False))
    assert folder == fashion_dir and source != "$MNISTLAB_DATA_DIR"

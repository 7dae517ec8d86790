"""Tiny synthetic digit-like data the training tests build themselves (no files, no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnistlab.data import DATASETS, Dataset, Split
from mnistlab.idx import write_idx


def class_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 (N, 28, 28): class k is a bright bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        row = 3 + 2 * int(k)
        col = 4 + rng.integers(-2, 3)
        images[i, row:row + 2, col:col + 18] = 255
    return images


def synthetic_dataset(n_train: int = 600, n_val: int = 100, n_test: int = 200, seed: int = 0) -> Dataset:
    """A Dataset of learnable synthetic images with the real splits' shapes and dtypes."""
    def split(n: int, offset: int) -> Split:
        labels = np.arange(n) % 10
        images = class_images(labels, seed + offset)
        return Split((images / 255.0).astype(np.float32)[..., None], labels.astype(np.int64))

    return Dataset(train=split(n_train, 1), validation=split(n_val, 2), test=split(n_test, 3),
                   facts=DATASETS["mnist"], data_dir=Path("."), source="synthetic")


def write_synthetic_idx(folder: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """Write the four MNIST-named IDX files of a synthetic set into ``folder``; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 3)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", class_images(labels, seed))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder

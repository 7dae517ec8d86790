"""Shared fixtures: tiny IDX data sets written by the test, the real data sets, env isolation.

Real data (MNIST, Fashion-MNIST) is optional locally: tests that need it skip when it is
missing, unless ``$MNISTLAB_REQUIRE_REAL_DATA=1`` (set by ``.ci/run``), where they fail.
Nothing here is autouse: CI relies on ``$MNISTLAB_DATA_DIR`` reaching other tests.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from _users import ordinary_user  # noqa: F401  (a fixture: children that obey file permissions)
from mnistlab import data, idx

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"  # where CI and the README keep MNIST
REQUIRE_REAL_DATA_ENV = "MNISTLAB_REQUIRE_REAL_DATA"
TINY_TRAIN = 60  # images in the tiny training file
TINY_TEST = 20  # images in the tiny test file


@dataclass(frozen=True)
class TinyMnist:
    """A small MNIST-format data set written by a test: the same arrays as .gz and raw IDX files.

    ``facts`` is a ``DatasetFacts`` entry (named ``tiny``) with the files' content SHA-256, usable
    with ``monkeypatch.setitem(mnistlab.data.DATASETS, "tiny", tiny.facts)`` for download tests.
    """

    gz_dir: Path  # the four <name>.gz files
    raw_dir: Path  # the four uncompressed files
    arrays: dict[str, np.ndarray]  # role -> uint8 array, as written
    contents: dict[str, bytes]  # role -> uncompressed IDX bytes
    facts: data.DatasetFacts


def tiny_arrays(n_train: int = TINY_TRAIN, n_test: int = TINY_TEST, seed: int = 0) -> dict[str, np.ndarray]:
    """Role -> uint8 array: labels cycle 0..9, each image is its class's template plus noise,
    so a model can learn them and every label count is known (``n // 10`` or one more)."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(data.NUM_CLASSES, data.IMAGE_SIDE, data.IMAGE_SIDE))
    out = {}
    for prefix, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % data.NUM_CLASSES).astype(np.uint8)
        noise = rng.integers(-20, 21, size=(n, data.IMAGE_SIDE, data.IMAGE_SIDE))
        out[f"{prefix}_images"] = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        out[f"{prefix}_labels"] = labels
    return out


def write_dataset(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> dict[str, Path]:
    """Write ``arrays`` (role -> array) under MNIST's file names in ``folder``; role -> path."""
    paths = {}
    for role, fact in data.DATASETS["mnist"].files.items():
        paths[role] = folder / (fact.name + (".gz" if gz else ""))
        idx.write_idx(paths[role], arrays[role])
    return paths


def tiny_facts(contents: dict[str, bytes], mirrors: tuple[str, ...] = ()) -> data.DatasetFacts:
    """A ``DatasetFacts`` named ``tiny`` whose hashes match ``contents`` (role -> IDX bytes)."""
    files = {
        role: data.FileFact(fact.name, len(contents[role]), hashlib.sha256(contents[role]).hexdigest())
        for role, fact in data.DATASETS["mnist"].files.items()
    }
    return data.DatasetFacts("tiny", files, mirrors, data.DATASETS["mnist"].class_names)


@pytest.fixture
def make_tiny_mnist(tmp_path: Path) -> Callable[..., TinyMnist]:
    """Factory: ``make_tiny_mnist(n_train=60, n_test=20, seed=0, name="tiny")`` -> TinyMnist
    under ``tmp_path/name``. Use it when a test needs other sizes than ``tiny_mnist``'s."""

    def make(n_train: int = TINY_TRAIN, n_test: int = TINY_TEST, seed: int = 0, name: str = "tiny") -> TinyMnist:
        arrays = tiny_arrays(n_train, n_test, seed)
        gz_dir, raw_dir = tmp_path / name / "gz", tmp_path / name / "raw"
        write_dataset(gz_dir, arrays, gz=True)
        write_dataset(raw_dir, arrays, gz=False)
        contents = {role: idx.encode_idx(a) for role, a in arrays.items()}
        return TinyMnist(gz_dir, raw_dir, arrays, contents, tiny_facts(contents))

    return make


@pytest.fixture
def tiny_mnist(make_tiny_mnist: Callable[..., TinyMnist]) -> TinyMnist:
    """60 training and 20 test images (labels cycling 0..9) as .gz and raw IDX files."""
    return make_tiny_mnist()


@pytest.fixture
def tiny_mnist_dir(tiny_mnist: TinyMnist) -> Path:
    """A folder with the four tiny .gz IDX files; load it with
    ``DataConfig(data_dir=str(tiny_mnist_dir), validation_size=10)`` (5000 is too many)."""
    return tiny_mnist.gz_dir


@pytest.fixture
def isolated_data_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No data from the environment: $MNISTLAB_CACHE_DIR -> an empty tmp folder (returned),
    $MNISTLAB_DATA_DIR and $MNISTLAB_MIRRORS unset, the system dirs of every data set emptied."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(cache))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(data.MIRRORS_ENV, raising=False)
    for name, facts in list(data.DATASETS.items()):
        monkeypatch.setitem(data.DATASETS, name, data.DatasetFacts(
            facts.name, facts.files, facts.mirrors, facts.class_names, system_dirs=()))
    return cache


def _missing_real_data(what: str) -> None:
    """Skip, or fail when $MNISTLAB_REQUIRE_REAL_DATA=1 (CI must not pass by skipping)."""
    if os.environ.get(REQUIRE_REAL_DATA_ENV) == "1":
        pytest.fail(f"{what} ({REQUIRE_REAL_DATA_ENV}=1, so this is a failure, not a skip)")
    pytest.skip(what)


def _find_real(dataset: str) -> Path | None:
    """The folder holding ``dataset``'s four files: $MNISTLAB_DATA_DIR, ../shared/datasets, system."""
    facts = data.DATASETS[dataset]
    roots = [Path(os.environ[data.DATA_DIR_ENV])] if os.environ.get(data.DATA_DIR_ENV) else []
    roots.append(DEFAULT_SHARED_DATASETS)
    candidates = [folder for root in roots for folder in (root / dataset, root)]
    candidates += [Path(d) for d in facts.system_dirs]
    for folder in candidates:
        # A bare folder of MNIST-named files could hold either data set: only trust it by hash.
        files = data.find_files(folder, facts)
        if files and data.verify_file(files["test_labels"], facts.files["test_labels"]):
            return folder
    return None


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    """The folder with the real MNIST files (skip, or fail under $MNISTLAB_REQUIRE_REAL_DATA=1)."""
    folder = _find_real("mnist")
    if folder is None:
        _missing_real_data(f"real MNIST not found (set ${data.DATA_DIR_ENV} or put it in {DEFAULT_SHARED_DATASETS}/mnist)")
    return folder


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The folder with the real Fashion-MNIST files (Debian's dataset-fashion-mnist)."""
    folder = _find_real("fashion-mnist")
    if folder is None:
        _missing_real_data("Fashion-MNIST not found (apt-get install dataset-fashion-mnist)")
    return folder


@pytest.fixture(scope="session")
def real_mnist(real_mnist_dir: Path) -> data.Dataset:
    """Real MNIST loaded once per session with the default 5,000-image validation split."""
    return data.load(data.DataConfig(data_dir=str(real_mnist_dir), download=False))


@pytest.fixture(scope="session")
def real_fashion(fashion_dir: Path) -> data.Dataset:
    """Real Fashion-MNIST loaded once per session with the default validation split."""
    return data.load(data.DataConfig(dataset="fashion-mnist", data_dir=str(fashion_dir), download=False))


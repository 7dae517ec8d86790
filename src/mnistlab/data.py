"""MNIST-format data: where the files are, how they load, the course's splits, and batches.

Files are looked for in this order: ``--data-dir``, ``$MNISTLAB_DATA_DIR``, the cache
(``~/.cache/mnistlab/<dataset>``, moved by ``--cache-dir`` / ``$MNISTLAB_CACHE_DIR``), a system
copy (Debian's ``dataset-fashion-mnist``), then a download into the cache from public mirrors.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from mnistlab import download as downloader
from mnistlab.config import option, validate
from mnistlab.errors import MnistlabError
from mnistlab.idx import decompressed_bytes, parse_idx

IMAGE_SIDE = 28  # pixels
NUM_CLASSES = 10
ROLES = ("train_images", "train_labels", "test_images", "test_labels")
DATA_DIR_ENV = "MNISTLAB_DATA_DIR"
CACHE_DIR_ENV = "MNISTLAB_CACHE_DIR"
MIRRORS_ENV = "MNISTLAB_MIRRORS"  # comma-separated base URLs, replacing the built-in list


@dataclass(frozen=True)
class FileFact:
    """One IDX file: its name and the size and SHA-256 of its decompressed content."""

    name: str
    content_bytes: int
    sha256: str


@dataclass(frozen=True)
class DatasetFacts:
    """Everything known about a data set ahead of time: files, mirrors, class names."""

    name: str
    files: dict[str, FileFact]  # role (see ROLES) -> file
    mirrors: tuple[str, ...]  # base URLs, each serving the four ``<name>.gz`` files
    class_names: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()  # where an OS package installs a copy


DATASETS: dict[str, DatasetFacts] = {
    "mnist": DatasetFacts(
        name="mnist",
        files={
            "train_images": FileFact("train-images-idx3-ubyte", 47040016,
                                     "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
            "train_labels": FileFact("train-labels-idx1-ubyte", 60008,
                                     "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
            "test_images": FileFact("t10k-images-idx3-ubyte", 7840016,
                                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
            "test_labels": FileFact("t10k-labels-idx1-ubyte", 10008,
                                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        class_names=tuple(str(d) for d in range(NUM_CLASSES)),
    ),
    "fashion-mnist": DatasetFacts(
        name="fashion-mnist",
        files={
            "train_images": FileFact("train-images-idx3-ubyte", 47040016,
                                     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            "train_labels": FileFact("train-labels-idx1-ubyte", 60008,
                                     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            "test_images": FileFact("t10k-images-idx3-ubyte", 7840016,
                                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            "test_labels": FileFact("t10k-labels-idx1-ubyte", 10008,
                                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        ),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


PATH_CHECK = (lambda v: isinstance(v, str) and v.strip() != "", "a folder path")
MIRRORS_CHECK = (lambda v: all(downloader.is_http_url(u) for u in v),
                 "comma-separated http:// or https:// base URLs, e.g. https://host/mnist/")


@dataclass(frozen=True)
class DataConfig:
    """Which data set, where to find it, how to download it, and how to split it."""

    # choices is the live key view, so a data set added to DATASETS (tests add "tiny") is known
    dataset: str = option("mnist", "data set", choices=DATASETS.keys())
    data_dir: str | None = option(None, "folder holding the four IDX files (or a <dataset>/ subfolder)",
                                  check=PATH_CHECK)
    cache_dir: str | None = option(None, f"cache root (else ${CACHE_DIR_ENV} or ~/.cache/mnistlab)",
                                   check=PATH_CHECK)
    validation_size: int = option(5000, "validation images, taken from the start of the training file",
                                  check=(lambda v: type(v) is int and v >= 0, "a whole number, 0 or more"))
    download: bool = option(True, "download from the mirrors when there is no local copy",
                            check=(lambda v: isinstance(v, bool), "true or false"))
    mirrors: tuple[str, ...] = option((), f"mirror base URL to try instead of the built-in list (or ${MIRRORS_ENV})",
                                      check=MIRRORS_CHECK)
    download_deadline: float = option(downloader.Limits.deadline_s,
                                      "seconds one file may take from one mirror, however slowly it arrives",
                                      check=(lambda v: 0 < v < math.inf, "a positive number of seconds"))
    download_retries: int = option(downloader.Limits.retries,
                                   "retries of a mirror after a transient failure (refused, reset, timeout, "
                                   "HTTP 5xx), waiting 1 s, 2 s, 4 s, ... before each",
                                   check=(lambda v: type(v) is int and 0 <= v <= 10, "a whole number 0..10"))

    def limits(self) -> downloader.Limits:
        """The download limits these settings ask for."""
        return downloader.Limits(deadline_s=float(self.download_deadline), retries=self.download_retries)


class _Cursor:
    """Where ``Split.next_batch`` is: the epoch and the position in its shuffled order."""

    def __init__(self, seed: int = 0) -> None:
        self.seed, self.epoch, self.position, self.order = seed, 0, 0, None


@dataclass(frozen=True)
class Split:
    """Images ``(N, 28, 28, 1)`` (or ``(N, 784)``) float32 in [0, 1]; labels ``(N,)`` int64 (or one-hot).

    ``next_batch(100)`` works as the course's ``mnist.train.next_batch(100)`` did: the next 100
    images and labels of a shuffled pass, reshuffled (from ``seed`` and the epoch) at each new pass."""

    images: np.ndarray
    labels: np.ndarray
    _cursor: _Cursor = field(default_factory=_Cursor, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_examples(self) -> int:
        """The number of images (TF1's ``DataSet.num_examples``)."""
        return len(self.images)

    @property
    def epochs_completed(self) -> int:
        """Full passes ``next_batch`` has made (TF1's ``DataSet.epochs_completed``)."""
        return self._cursor.epoch

    def next_batch(self, batch_size: int, shuffle: bool = True, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The next ``batch_size`` ``(images, labels)``; a batch that runs past the end of a pass is
        completed from the start of the next one, so every image comes once per pass.

        >>> images, labels = mnistlab.load_data().train.next_batch(100)
        """
        if not 1 <= batch_size <= len(self.images):
            raise MnistlabError(f"next_batch({batch_size}): expected 1 .. {len(self.images)} images")
        cursor = self._cursor
        if seed is not None and seed != cursor.seed:
            cursor.__init__(seed)
        parts, need = [], batch_size
        while need:
            if cursor.order is None:
                n = len(self.images)
                cursor.order = (np.random.default_rng([cursor.seed, cursor.epoch]).permutation(n) if shuffle
                                else np.arange(n))
            take = cursor.order[cursor.position:cursor.position + need]
            parts.append(take)
            cursor.position += len(take)
            need -= len(take)
            if cursor.position == len(cursor.order):
                cursor.epoch, cursor.position, cursor.order = cursor.epoch + 1, 0, None
        index = np.concatenate(parts)
        return self.images[index], self.labels[index]


@dataclass(frozen=True)
class Dataset:
    """The course's three splits, plus where they came from."""

    train: Split
    validation: Split
    test: Split
    facts: DatasetFacts
    data_dir: Path
    source: str  # how data_dir was found: flag, environment, cache, system, download
    files: dict[str, Path] = field(default_factory=dict)  # role -> file read
    config: "DataConfig | None" = None  # the settings it was loaded with (a run records them)

    def split(self, name: str) -> Split:
        """Return the split called ``name`` (train, validation or test)."""
        if name not in ("train", "validation", "test"):
            raise MnistlabError(f"--split: unknown split {name!r}; expected train, validation or test")
        return getattr(self, name)


def facts_for(dataset: str) -> DatasetFacts:
    """Return the facts table entry for ``dataset``, or a clear error listing the choices."""
    if dataset not in DATASETS:
        raise MnistlabError(f"--dataset: unknown data set {dataset!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


def cache_root(config: DataConfig) -> Path:
    """The cache folder that holds one subfolder per data set."""
    root = config.cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "mnistlab"
    return Path(root).expanduser()


def mirrors_for(config: DataConfig) -> tuple[str, ...]:
    """Mirror base URLs to try, in order: the config's, then $MNISTLAB_MIRRORS, then the table's."""
    if config.mirrors:
        return config.mirrors
    if os.environ.get(MIRRORS_ENV):
        mirrors = tuple(u.strip() for u in os.environ[MIRRORS_ENV].split(",") if u.strip())
        for url in mirrors:
            if not downloader.is_http_url(url):
                raise MnistlabError(f"${MIRRORS_ENV}: {url!r} is not an http(s) URL; expected {MIRRORS_CHECK[1]}")
        return mirrors
    return facts_for(config.dataset).mirrors


def _unreadable(path: Path, exc: OSError, what: str) -> MnistlabError:
    """The one-line error for an OS error on ``path``: which path, what failed, what to do."""
    return MnistlabError(f"{path}: cannot read the {what} ({exc.strerror or exc}); make it readable "
                         f"(check its permissions) or point --data-dir elsewhere")


def find_files(folder: Path, facts: DatasetFacts) -> dict[str, Path] | None:
    """Map each role to ``<name>.gz`` or ``<name>`` in ``folder``; None unless all four exist.

    A folder that exists but cannot be searched is a MnistlabError, not a missing copy."""
    found = {}
    try:
        for role, fact in facts.files.items():
            for candidate in (folder / (fact.name + ".gz"), folder / fact.name):
                if candidate.is_file():  # a folder, FIFO or dangling link of that name is no file
                    found[role] = candidate
                    break
            else:
                return None
    except OSError as exc:  # pathlib passes over ENOENT/ENOTDIR, raises EACCES and the like
        raise _unreadable(folder, exc, "folder") from None
    return found


def other_dataset(files: dict[str, Path], facts: DatasetFacts) -> str | None:
    """The name of another known data set whose test labels ``files`` holds, else None.

    MNIST and Fashion-MNIST share their file names, so a folder of one would otherwise load
    silently as the other; the 10 kB test-labels file tells them apart.
    """
    others = {f.files["test_labels"].sha256: f.name for f in DATASETS.values() if f.name != facts.name}
    try:
        content = decompressed_bytes(files["test_labels"].read_bytes(), str(files["test_labels"]))
    except (OSError, MnistlabError):
        return None  # unreadable or malformed: loading it reports the problem
    return others.get(hashlib.sha256(content).hexdigest())


def _in_folder(folder: Path, facts: DatasetFacts) -> tuple[Path, dict[str, Path]] | None:
    """Look for the files in ``folder/<dataset>`` first, then in ``folder`` itself,
    passing over a folder that holds another known data set."""
    try:  # name the folder itself when it cannot be listed (r) or searched (x), not a subfolder
        os.scandir(folder).close()
        os.stat(os.path.join(folder, os.curdir))  # pathlib would drop the "."
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _unreadable(folder, exc, "folder") from None
    for candidate in (folder / facts.name, folder):
        files = find_files(candidate, facts)
        if files and not other_dataset(files, facts):
            return candidate, files
    return None


def locate(config: DataConfig) -> tuple[Path, dict[str, Path], str]:
    """Find (or download) the four files; return (folder, role -> path, how it was found)."""
    validate(config)
    facts = facts_for(config.dataset)
    if config.data_dir:
        folder = Path(config.data_dir).expanduser()
        hit = _in_folder(folder, facts)
        if not hit:
            files = find_files(folder, facts)
            if files and (other := other_dataset(files, facts)):
                raise MnistlabError(f"--data-dir {config.data_dir}: holds {other}, not {facts.name}; "
                                    f"give {facts.name}'s folder or --dataset {other}")
            names = ", ".join(f.name + "[.gz]" for f in facts.files.values())
            raise MnistlabError(f"--data-dir {config.data_dir}: expected the files {names} there")
        return (*hit, "--data-dir")
    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir and (hit := _in_folder(Path(env_dir).expanduser(), facts)):
        return (*hit, f"${DATA_DIR_ENV}")
    cache = cache_root(config) / facts.name
    if files := find_files(cache, facts):
        return cache, files, "cache"
    for system_dir in facts.system_dirs:
        if files := find_files(Path(system_dir), facts):
            return Path(system_dir), files, "system package"
    if not config.download:
        raise MnistlabError(
            f"no local copy of {facts.name} and downloading is off; put the four IDX files in "
            f"{cache} (or any folder given by --data-dir or ${DATA_DIR_ENV})"
        )
    return cache, download(config), "download"


def download(config: DataConfig, progress: bool = True) -> dict[str, Path]:
    """Download the four files into the cache, skipping ones already there and verified."""
    validate(config)
    facts = facts_for(config.dataset)
    folder = cache_root(config) / facts.name
    mirrors = mirrors_for(config)
    files = {}
    for role, fact in facts.files.items():
        existing = find_files(folder, DatasetFacts(facts.name, {role: fact}, (), ()))
        if existing and verify_file(existing[role], fact):
            files[role] = existing[role]
            continue
        files[role] = downloader.download_file(fact.name + ".gz", folder, mirrors, fact.sha256,
                                                fact.content_bytes, config.limits(), progress)
    return files


def verify_file(path: Path, fact: FileFact) -> bool:
    """True when the decompressed content of ``path`` has the known SHA-256."""
    try:
        content = decompressed_bytes(path.read_bytes(), str(path))
    except MnistlabError:
        return False
    except OSError as exc:
        raise MnistlabError(f"{path}: cannot read ({exc.strerror or exc}); make it readable, or delete "
                            f"it and run `mnistlab data download`") from None
    return hashlib.sha256(content).hexdigest() == fact.sha256


def _read_four(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """Read the four files in parallel threads (zlib releases the GIL)."""
    def read(path: Path) -> np.ndarray:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise MnistlabError(f"{path}: cannot read ({exc.strerror or exc}); make it readable "
                                f"(check its permissions) or replace it") from None
        return parse_idx(decompressed_bytes(raw, str(path)), str(path))

    with ThreadPoolExecutor(max_workers=len(files)) as pool:
        arrays = dict(zip(files, pool.map(read, files.values())))
    return arrays


def check_arrays(images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path) -> None:
    """Check shapes, dtypes, counts and label range of one images/labels pair."""
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or images.dtype != np.uint8:
        raise MnistlabError(
            f"{images_path}: images are {images.dtype} {images.shape}; expected uint8 (N, 28, 28)"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise MnistlabError(f"{labels_path}: labels are {labels.dtype} {labels.shape}; expected uint8 (N,)")
    if len(labels) != len(images):
        raise MnistlabError(
            f"{labels_path}: {len(labels)} labels but {images_path} has {len(images)} images; expected equal counts"
        )
    if len(images) == 0:  # nothing to train on, or an accuracy of 0/0
        raise MnistlabError(f"{images_path}: holds 0 images; expected at least one")
    if len(labels) and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise MnistlabError(f"{labels_path}: label {labels[bad]} at index {bad}; expected 0..9")


def to_float_images(images: np.ndarray, flatten: bool = False) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` -> float32 in [0, 1], shape ``(N, 28, 28, 1)`` or ``(N, 784)``."""
    out = np.multiply(images, np.float32(1 / 255), dtype=np.float32)
    return out.reshape(len(images), -1) if flatten else out[..., np.newaxis]


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Class ids ``(N,)`` -> one-hot float32 ``(N, num_classes)``."""
    return np.eye(num_classes, dtype=np.float32)[labels]


def load(config: DataConfig = DataConfig(), flatten: bool = False, one_hot_labels: bool = False) -> Dataset:
    """Load the data set named in ``config`` as train / validation / test splits.

    Validation is the first ``validation_size`` training images, as TF1's ``read_data_sets``
    did, so MNIST gives 55,000 / 5,000 / 10,000.
    """
    folder, files, source = locate(config)
    arrays = _read_four(files)
    for prefix in ("train", "test"):
        check_arrays(arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"],
                     files[f"{prefix}_images"], files[f"{prefix}_labels"])
    n_train = len(arrays["train_labels"])
    if not 0 <= config.validation_size < n_train:
        raise MnistlabError(
            f"--validation-size {config.validation_size}: expected 0..{n_train - 1} for {n_train} training images"
        )

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        labels = labels.astype(np.int64)
        return Split(to_float_images(images, flatten), one_hot(labels) if one_hot_labels else labels)

    v = config.validation_size
    return Dataset(
        train=split(arrays["train_images"][v:], arrays["train_labels"][v:]),
        validation=split(arrays["train_images"][:v], arrays["train_labels"][:v]),
        test=split(arrays["test_images"], arrays["test_labels"]),
        facts=facts_for(config.dataset),
        data_dir=folder,
        source=source,
        files=files,
        config=config,
    )


def verify(config: DataConfig) -> dict[str, tuple[Path, bool]]:
    """Check each local file's decompressed SHA-256 against the table; role -> (path, ok)."""
    folder, files, _ = locate(replace(validate(config), download=False))
    facts = facts_for(config.dataset)
    return {role: (path, verify_file(path, facts.files[role])) for role, path in files.items()}


def describe(data: Dataset) -> dict:
    """Summary for ``data info``: source, shapes, dtype, label counts and pixel mean/std per split."""
    out = {"dataset": data.facts.name, "data_dir": str(data.data_dir), "source": data.source, "splits": {}}
    for name in ("train", "validation", "test"):
        s = data.split(name)
        ids = s.labels.argmax(1) if s.labels.ndim == 2 else s.labels
        out["splits"][name] = {
            "images": list(s.images.shape),
            "dtype": str(s.images.dtype),
            "labels": list(s.labels.shape),
            "label_counts": np.bincount(ids, minlength=NUM_CLASSES).tolist(),
            "pixel_mean": float(s.images.mean(dtype=np.float64)) if len(s) else float("nan"),
            "pixel_std": float(s.images.std(dtype=np.float64)) if len(s) else float("nan"),
        }
    return out


class Batches:
    """Mini-batches of one split, reshuffled each epoch from ``seed``: same seed, same batches.

    Every sample appears exactly once per epoch; the last batch is smaller unless
    ``drop_remainder``. Iterate one epoch with ``epoch(k)``, or get a ``tf.data.Dataset``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 0,
                 shuffle: bool = True, drop_remainder: bool = False) -> None:
        if batch_size < 1:
            raise MnistlabError(f"--batch-size {batch_size}: expected a positive integer")
        if len(images) != len(labels):
            raise MnistlabError(f"batches: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.batch_size, self.seed = batch_size, seed
        self.shuffle, self.drop_remainder = shuffle, drop_remainder

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch``: a permutation drawn from (seed, epoch), or 0..N-1."""
        n = len(self.images)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(images, labels)`` batches of ``epoch`` in its shuffled order."""
        order = self.order(epoch)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.images[idx], self.labels[idx]

    def tf_dataset(self, epoch: int = 0):
        """The same batches as ``epoch(epoch)``, as a prefetching ``tf.data.Dataset``."""
        import tensorflow as tf

        order = self.order(epoch)
        ds = tf.data.Dataset.from_tensor_slices((self.images[order], self.labels[order]))
        return ds.batch(self.batch_size, drop_remainder=self.drop_remainder).prefetch(tf.data.AUTOTUNE)

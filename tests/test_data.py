"""The data layer on tiny IDX files the tests write: splits, conversions, checks, batches,
and where the files are looked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnistlab import data, idx
from mnistlab.data import Batches, DataConfig
from mnistlab.errors import MnistlabError


def _config(folder: Path, **kw) -> DataConfig:
    """A config reading ``folder`` only (no download), with a validation split that fits."""
    return DataConfig(data_dir=str(folder), download=False, **{"validation_size": 10, **kw})


def _file(folder: Path, role: str, gz: bool = True) -> Path:
    """The path of ``role``'s MNIST file in ``folder``."""
    return folder / (data.DATASETS["mnist"].files[role].name + (".gz" if gz else ""))


# ---------------------------------------------------------------- loading and splits
@pytest.mark.parametrize("variant", ["gz_dir", "raw_dir"])
def test_load_matches_the_written_arrays(tiny_mnist, variant: str) -> None:
    ds = data.load(_config(getattr(tiny_mnist, variant)))
    a = tiny_mnist.arrays
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (50, 10, 20)
    np.testing.assert_array_equal(np.round(ds.validation.images[..., 0] * 255), a["train_images"][:10])
    np.testing.assert_array_equal(np.round(ds.train.images[..., 0] * 255), a["train_images"][10:])
    np.testing.assert_array_equal(ds.validation.labels, a["train_labels"][:10])
    np.testing.assert_array_equal(ds.train.labels, a["train_labels"][10:])
    np.testing.assert_array_equal(ds.test.labels, a["test_labels"])
    np.testing.assert_allclose(ds.test.images[..., 0], a["test_images"] / 255, rtol=1e-6)
    assert ds.source == "--data-dir" and ds.data_dir == getattr(tiny_mnist, variant)
    assert set(ds.files) == set(data.ROLES)


def test_images_are_float32_in_unit_range_and_labels_int64(tiny_mnist_dir: Path) -> None:
    ds = data.load(_config(tiny_mnist_dir))
    for split in (ds.train, ds.validation, ds.test):
        assert split.images.dtype == np.float32 and split.images.shape[1:] == (28, 28, 1)
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
        assert split.labels.dtype == np.int64 and split.labels.ndim == 1


def test_full_grey_range_maps_onto_zero_to_one() -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    out = data.to_float_images(levels)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), levels[..., np.newaxis])


def test_flatten_gives_784_columns_in_row_major_order(tiny_mnist_dir: Path) -> None:
    flat = data.load(_config(tiny_mnist_dir), flatten=True)
    square = data.load(_config(tiny_mnist_dir))
    assert flat.train.images.shape == (50, 784) and flat.test.images.shape == (20, 784)
    np.testing.assert_array_equal(flat.test.images, square.test.images.reshape(20, 784))


def test_one_hot_labels(tiny_mnist_dir: Path) -> None:
    ds = data.load(_config(tiny_mnist_dir), one_hot_labels=True)
    assert ds.test.labels.shape == (20, 10) and ds.test.labels.dtype == np.float32
    np.testing.assert_array_equal(ds.test.labels.argmax(1), np.arange(20) % 10)
    np.testing.assert_array_equal(ds.test.labels.sum(1), np.ones(20))
    np.testing.assert_array_equal(data.one_hot(np.array([3, 0])), np.eye(10, dtype=np.float32)[[3, 0]])


def test_default_validation_size_is_5000() -> None:
    assert DataConfig().validation_size == 5000


@pytest.mark.parametrize("size", [0, 1, 25, 59])
def test_validation_is_the_first_n_training_images(tiny_mnist_dir: Path, tiny_mnist, size: int) -> None:
    ds = data.load(_config(tiny_mnist_dir, validation_size=size))
    assert (len(ds.validation), len(ds.train)) == (size, 60 - size)
    np.testing.assert_array_equal(ds.validation.labels, tiny_mnist.arrays["train_labels"][:size])


@pytest.mark.parametrize("size", [60, 5000])
def test_validation_size_over_the_training_file_is_a_clear_error(tiny_mnist_dir: Path, size: int) -> None:
    with pytest.raises(MnistlabError, match=rf"--validation-size {size}: expected 0\.\.59"):
        data.load(_config(tiny_mnist_dir, validation_size=size))


@pytest.mark.parametrize("field,value,expected", [
    ("validation_size", -1, "--validation-size -1: expected a whole number, 0 or more"),
    ("validation_size", 2.5, "--validation-size 2.5: expected a whole number, 0 or more"),
    ("mirrors", ("ftp://host/mnist/",), "--mirrors ftp://host/mnist/: expected comma-separated http:// or https://"),
    ("mirrors", ("https://ok/", "host/mnist"), "--mirrors https://ok/,host/mnist: expected comma-separated http"),
    ("mirrors", ("http://",), "--mirrors http://: expected"),
    ("download_deadline", 0, "--download-deadline 0: expected a positive number of seconds"),
    ("download_deadline", float("nan"), "--download-deadline nan: expected a positive number of seconds"),
    ("download_retries", -1, "--download-retries -1: expected a whole number 0..10"),
    ("download_retries", 11, "--download-retries 11: expected a whole number 0..10"),
    ("data_dir", "", "--data-dir : expected a folder path"),
    ("cache_dir", " ", "--cache-dir  : expected a folder path"),
    ("dataset", "emnist", "--dataset emnist: expected one of mnist, fashion-mnist"),
    ("download", "yes", "--download yes: expected true or false"),
])
@pytest.mark.parametrize("entry", ["locate", "download", "load", "verify"])
def test_every_field_is_checked_before_any_work(isolated_data_env: Path, entry: str, field: str, value, expected: str) -> None:
    config = DataConfig(**{field: value})
    with pytest.raises(MnistlabError) as info:
        getattr(data, entry)(config)
    assert str(info.value).startswith(expected)
    assert list(isolated_data_env.iterdir()) == []  # nothing looked up or downloaded


def test_a_dataset_added_to_the_table_is_a_valid_choice(tiny_mnist, monkeypatch) -> None:
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_mnist.facts)
    assert data.locate(DataConfig(dataset="tiny", data_dir=str(tiny_mnist.gz_dir), download=False))[2] == "--data-dir"


@pytest.mark.parametrize("value", ["ftp://h/m/", "https://ok/, not a url"])
def test_mirrors_from_the_environment_are_checked(isolated_data_env: Path, monkeypatch, value: str) -> None:
    monkeypatch.setenv(data.MIRRORS_ENV, value)
    with pytest.raises(MnistlabError, match=rf"^\${data.MIRRORS_ENV}: '[^']+' is not an http\(s\) URL"):
        data.download(DataConfig())
    assert list(isolated_data_env.iterdir()) == []


def test_split_by_name(tiny_mnist_dir: Path) -> None:
    ds = data.load(_config(tiny_mnist_dir))
    assert ds.split("test") is ds.test and ds.split("validation") is ds.validation
    with pytest.raises(MnistlabError, match="unknown split 'dev'"):
        ds.split("dev")


def test_describe_counts_labels_and_pixels(tiny_mnist_dir: Path, tiny_mnist) -> None:
    summary = data.describe(data.load(_config(tiny_mnist_dir), one_hot_labels=True))
    test = summary["splits"]["test"]
    assert test["images"] == [20, 28, 28, 1] and test["label_counts"] == [2] * 10
    assert test["pixel_mean"] == pytest.approx(tiny_mnist.arrays["test_images"].mean() / 255, rel=1e-5)
    assert summary["splits"]["validation"]["label_counts"] == [1] * 10


# ---------------------------------------------------------------- malformed data sets
def _broken(folder: Path, role: str, array: np.ndarray) -> Path:
    """Replace ``role``'s file in ``folder`` by ``array``; return the file's path."""
    path = _file(folder, role)
    idx.write_idx(path, array)
    return path


def test_label_count_mismatch_names_both_files(tiny_mnist_dir: Path, tiny_mnist) -> None:
    path = _broken(tiny_mnist_dir, "test_labels", tiny_mnist.arrays["test_labels"][:-1])
    with pytest.raises(MnistlabError, match="19 labels but") as info:
        data.load(_config(tiny_mnist_dir))
    assert str(path) in str(info.value) and str(_file(tiny_mnist_dir, "test_images")) in str(info.value)


def test_label_outside_zero_to_nine_names_the_file(tiny_mnist_dir: Path, tiny_mnist) -> None:
    labels = tiny_mnist.arrays["train_labels"].copy()
    labels[13] = 10
    path = _broken(tiny_mnist_dir, "train_labels", labels)
    with pytest.raises(MnistlabError, match=r"label 10 at index 13; expected 0\.\.9") as info:
        data.load(_config(tiny_mnist_dir))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("shape", [(60, 28, 27), (60, 32, 32), (60, 784)])
def test_images_not_28_by_28_name_the_file(tiny_mnist_dir: Path, shape: tuple) -> None:
    path = _broken(tiny_mnist_dir, "train_images", np.zeros(shape, dtype=np.uint8))
    with pytest.raises(MnistlabError, match=r"expected uint8 \(N, 28, 28\)") as info:
        data.load(_config(tiny_mnist_dir))
    assert str(path) in str(info.value)


def test_images_of_another_type_code_name_the_file(tiny_mnist_dir: Path) -> None:
    path = _broken(tiny_mnist_dir, "test_images", np.zeros((20, 28, 28), dtype=np.float32))
    with pytest.raises(MnistlabError, match="float32") as info:
        data.load(_config(tiny_mnist_dir))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("prefix", ["train", "test"])
def test_a_file_of_zero_images_is_refused_at_load(tiny_mnist_dir: Path, prefix: str) -> None:
    images = _broken(tiny_mnist_dir, f"{prefix}_images", np.zeros((0, 28, 28), dtype=np.uint8))
    _broken(tiny_mnist_dir, f"{prefix}_labels", np.zeros(0, dtype=np.uint8))
    with pytest.raises(MnistlabError, match=rf"^{images}: holds 0 images; expected at least one$"):
        data.load(_config(tiny_mnist_dir, validation_size=0))


def test_multi_member_gzip_files_load(tiny_mnist) -> None:
    import gzip

    for role, content in tiny_mnist.contents.items():  # each file as three members, as pigz/bgzip/cat write
        cuts = (0, 7, len(content) // 2, len(content))
        _file(tiny_mnist.gz_dir, role).write_bytes(b"".join(gzip.compress(content[a:b]) for a, b in zip(cuts, cuts[1:])))
    ds = data.load(_config(tiny_mnist.gz_dir))
    np.testing.assert_array_equal(ds.test.labels, tiny_mnist.arrays["test_labels"])
    np.testing.assert_array_equal(np.round(ds.train.images[..., 0] * 255), tiny_mnist.arrays["train_images"][10:])
    assert all(data.verify_file(_file(tiny_mnist.gz_dir, role), fact) for role, fact in tiny_mnist.facts.files.items())


def test_truncated_file_in_a_data_set_names_the_file(tiny_mnist) -> None:
    path = _file(tiny_mnist.raw_dir, "test_images", gz=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(MnistlabError, match="truncated") as info:
        data.load(_config(tiny_mnist.raw_dir))
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- batches
def _batches(n: int = 23, batch_size: int = 5, **kw) -> Batches:
    """Batches over images whose single pixel is the sample's index (so order is visible)."""
    images = np.arange(n, dtype=np.float32).reshape(n, 1)
    return Batches(images, np.arange(n) % 10, batch_size, **kw)


def _ids(batches: Batches, epoch: int) -> list[list[int]]:
    return [x[:, 0].astype(int).tolist() for x, _ in batches.epoch(epoch)]


def test_same_seed_gives_the_same_batches() -> None:
    assert _ids(_batches(seed=3), 0) == _ids(_batches(seed=3), 0)
    assert _ids(_batches(seed=3), 4) == _ids(_batches(seed=3), 4)


def test_different_epoch_or_seed_gives_a_different_order() -> None:
    b = _batches(n=100, seed=3)
    assert _ids(b, 0) != _ids(b, 1)
    assert _ids(b, 0) != _ids(_batches(n=100, seed=4), 0)
    assert _ids(b, 0) != [list(range(i, min(i + 5, 100))) for i in range(0, 100, 5)]


@pytest.mark.parametrize("n,batch_size", [(23, 5), (25, 5), (1, 7), (7, 1)])
def test_every_sample_once_per_epoch_with_last_partial_batch(n: int, batch_size: int) -> None:
    b = _batches(n, batch_size, seed=1)
    for epoch in range(3):
        ids = _ids(b, epoch)
        assert sorted(i for batch in ids for i in batch) == list(range(n))
        assert [len(x) for x in ids[:-1]] == [batch_size] * (len(ids) - 1)
        assert len(ids[-1]) == (n % batch_size or batch_size) and len(ids) == len(b)


def test_drop_remainder_drops_only_the_partial_batch() -> None:
    b = _batches(23, 5, seed=1, drop_remainder=True)
    ids = _ids(b, 2)
    assert len(b) == 4 and [len(x) for x in ids] == [5, 5, 5, 5]
    assert len(set(i for batch in ids for i in batch)) == 20
    assert set(b.order(2)[:20]) == set(i for batch in ids for i in batch)


def test_labels_travel_with_their_images() -> None:
    for x, y in _batches(23, 4, seed=9).epoch(5):
        np.testing.assert_array_equal(y, x[:, 0].astype(int) % 10)


def test_no_shuffle_keeps_file_order() -> None:
    assert _ids(_batches(7, 3, shuffle=False), 5) == [[0, 1, 2], [3, 4, 5], [6]]


def test_bad_batches_are_clear_errors() -> None:
    with pytest.raises(MnistlabError, match="--batch-size 0"):
        _batches(batch_size=0)
    with pytest.raises(MnistlabError, match="3 images but 2 labels"):
        Batches(np.zeros((3, 1)), np.zeros(2), 2)


def test_tf_dataset_yields_the_same_batches_as_epoch() -> None:
    pytest.importorskip("tensorflow")
    for drop in (False, True):
        b = _batches(23, 5, seed=2, drop_remainder=drop)
        tf_batches = [(x.numpy(), y.numpy()) for x, y in b.tf_dataset(3)]
        np_batches = list(b.epoch(3))
        assert len(tf_batches) == len(np_batches) == len(b)
        for (tx, ty), (nx, ny) in zip(tf_batches, np_batches):
            np.testing.assert_array_equal(tx, nx)
            np.testing.assert_array_equal(ty, ny)


# ---------------------------------------------------------------- where the files are found
def test_data_dir_flag_wins_over_everything(isolated_data_env: Path, tiny_mnist, make_tiny_mnist, monkeypatch) -> None:
    other = make_tiny_mnist(seed=1, name="other")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(other.gz_dir))
    folder, files, source = data.locate(_config(tiny_mnist.raw_dir))
    assert (folder, source) == (tiny_mnist.raw_dir, "--data-dir")
    assert files["test_images"] == _file(tiny_mnist.raw_dir, "test_images", gz=False)


def test_data_dir_flag_accepts_a_dataset_subfolder(isolated_data_env: Path, tiny_mnist, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    tiny_mnist.gz_dir.rename(root / "mnist")
    folder, _, source = data.locate(_config(root))
    assert (folder, source) == (root / "mnist", "--data-dir")


def test_data_dir_flag_without_the_files_is_an_error_without_fallback(
        isolated_data_env: Path, tiny_mnist, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tiny_mnist.gz_dir))  # a good copy elsewhere is ignored
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MnistlabError, match=rf"--data-dir {empty}: expected the files train-images-idx3-ubyte"):
        data.locate(_config(empty))


@pytest.mark.parametrize("layout", ["files", "subfolder"])
def test_environment_data_dir(isolated_data_env: Path, tiny_mnist, tmp_path: Path, monkeypatch, layout: str) -> None:
    folder = tiny_mnist.gz_dir
    if layout == "subfolder":
        root = tmp_path / "shared"
        root.mkdir()
        folder = tiny_mnist.gz_dir.rename(root / "mnist")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(folder.parent if layout == "subfolder" else folder))
    found, _, source = data.locate(DataConfig(download=False))
    assert (found, source) == (folder, "$MNISTLAB_DATA_DIR")


def test_cache_is_used_when_the_environment_has_no_copy(isolated_data_env: Path, tiny_mnist, tmp_path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(empty))
    cached = tiny_mnist.gz_dir.rename(isolated_data_env / "mnist")
    found, _, source = data.locate(DataConfig(download=False))
    assert (found, source) == (cached, "cache")


def test_environment_wins_over_cache(isolated_data_env: Path, tiny_mnist, make_tiny_mnist, monkeypatch) -> None:
    make_tiny_mnist(name="c").gz_dir.rename(isolated_data_env / "mnist")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tiny_mnist.gz_dir))
    assert data.locate(DataConfig(download=False))[2] == "$MNISTLAB_DATA_DIR"


def test_cache_dir_option_wins_over_its_environment_variable(isolated_data_env: Path, tiny_mnist, tmp_path) -> None:
    root = tmp_path / "mycache"
    root.mkdir()
    cached = tiny_mnist.gz_dir.rename(root / "mnist")
    found, _, source = data.locate(DataConfig(cache_dir=str(root), download=False))
    assert (found, source) == (cached, "cache")


def test_system_dir_after_cache(isolated_data_env: Path, tiny_mnist, make_tiny_mnist, monkeypatch) -> None:
    facts = data.DATASETS["mnist"]
    monkeypatch.setitem(data.DATASETS, "mnist", data.DatasetFacts(
        facts.name, facts.files, facts.mirrors, facts.class_names, system_dirs=(str(tiny_mnist.raw_dir),)))
    assert data.locate(DataConfig(download=False))[:3:2] == (tiny_mnist.raw_dir, "system package")
    cached = make_tiny_mnist(name="c").gz_dir.rename(isolated_data_env / "mnist")
    assert data.locate(DataConfig(download=False))[:3:2] == (cached, "cache")


def test_no_copy_and_no_download_says_where_to_put_the_files(isolated_data_env: Path) -> None:
    with pytest.raises(MnistlabError) as info:
        data.load(DataConfig(download=False))
    message = str(info.value)
    assert "downloading is off" in message and str(isolated_data_env / "mnist") in message
    assert "--data-dir" in message and "MNISTLAB_DATA_DIR" in message and "\n" not in message


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(MnistlabError, match="expected one of mnist, fashion-mnist"):
        data.load(DataConfig(dataset="emnist"))


def _as_other_dataset(monkeypatch: pytest.MonkeyPatch, tiny_mnist) -> None:
    """Register the tiny files as a known data set ``other`` (same file names as MNIST)."""
    monkeypatch.setitem(data.DATASETS, "other", data.DatasetFacts(
        "other", tiny_mnist.facts.files, (), tiny_mnist.facts.class_names))


def test_data_dir_holding_another_dataset_is_an_error(isolated_data_env: Path, tiny_mnist, monkeypatch) -> None:
    _as_other_dataset(monkeypatch, tiny_mnist)
    with pytest.raises(MnistlabError, match=rf"--data-dir {tiny_mnist.gz_dir}: holds other, not mnist"):
        data.locate(_config(tiny_mnist.gz_dir))
    assert data.locate(_config(tiny_mnist.gz_dir, dataset="other"))[0] == tiny_mnist.gz_dir


def test_environment_folder_of_another_dataset_is_passed_over(isolated_data_env: Path, tiny_mnist,
                                                              make_tiny_mnist, monkeypatch) -> None:
    _as_other_dataset(monkeypatch, tiny_mnist)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tiny_mnist.raw_dir))
    cached = make_tiny_mnist(seed=1, name="c").gz_dir.rename(isolated_data_env / "mnist")
    assert data.locate(DataConfig(download=False))[:3:2] == (cached, "cache")

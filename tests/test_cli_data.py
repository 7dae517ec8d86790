"""``mnistlab data ...`` through ``cli.main``: output on real MNIST, exit codes, help text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from _users import as_ordinary_user as _as_ordinary_user
from mnistlab import cli

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run ``mnistlab *argv``; return (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code: int, err: str, starts: str) -> None:
    """A user error: exit 2 and exactly one ``error: ...`` line on stderr, no traceback."""
    assert code == 2
    assert err.startswith(f"error: {starts}") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.integration
def test_info(real_mnist_dir: Path, capsys) -> None:
    code, out, _ = _run(capsys, "data", "info", "--data-dir", str(real_mnist_dir))
    assert code == 0
    assert "dataset: mnist" in out and f"--data-dir ({real_mnist_dir})" in out
    assert "train      images (55000, 28, 28, 1) float32" in out
    assert "validation images (5000, 28, 28, 1)" in out and "test       images (10000, 28, 28, 1)" in out
    assert "label counts " + " ".join(map(str, MNIST_TEST_COUNTS)) in out


@pytest.mark.integration
def test_info_json(real_mnist_dir: Path, capsys) -> None:
    code, out, _ = _run(capsys, "data", "info", "--json", "--data-dir", str(real_mnist_dir), "--validation-size", "0")
    assert code == 0
    summary = json.loads(out)
    assert summary["dataset"] == "mnist" and summary["source"] == "--data-dir"
    splits = summary["splits"]
    assert splits["train"]["images"] == [60000, 28, 28, 1] and splits["validation"]["images"] == [0, 28, 28, 1]
    assert splits["test"]["label_counts"] == MNIST_TEST_COUNTS
    assert splits["train"]["pixel_mean"] == pytest.approx(0.1307, abs=0.0005)
    assert splits["train"]["pixel_std"] == pytest.approx(0.3081, abs=0.0005)


@pytest.mark.integration
def test_show_prints_28_rows_and_the_label(real_mnist_dir: Path, capsys) -> None:
    code, out, _ = _run(capsys, "data", "show", "--split", "test", "--index", "0", "--data-dir", str(real_mnist_dir))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 29 and lines[-1] == "test[0] label=7 (7)" and max(map(len, lines)) <= 80
    rows = [line.split() for line in lines[:28]]
    assert all(len(row) == 28 for row in rows)
    tenths = np.array([[0 if v == "." else int(v) for v in row] for row in rows])  # tenths of [0, 1], 9 = ink
    assert tenths.max() == 9 and (tenths > 0).sum() > 50


@pytest.mark.integration
def test_show_raw_prints_grey_levels(real_mnist_dir: Path, capsys) -> None:
    code, out, _ = _run(capsys, "data", "show", "--raw", "--split", "train", "--index", "3",
                        "--data-dir", str(real_mnist_dir), "--validation-size", "0")
    assert code == 0
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80
    values = np.array([[int(v) for v in (lines[2 * r] + " " + lines[2 * r + 1]).split()] for r in range(28)])
    assert values.shape == (28, 28) and values.max() == 255 and values.min() == 0
    assert out.splitlines()[-1] == "train[3] label=1 (1)"  # the training file's labels: 5 0 4 1 ...


@pytest.mark.integration
def test_grid_writes_a_png(real_mnist_dir: Path, tmp_path: Path, capsys) -> None:
    out_path = tmp_path / "grid.png"
    code, out, _ = _run(capsys, "data", "grid", "--count", "25", "--out", str(out_path), "--data-dir", str(real_mnist_dir))
    assert code == 0 and out.strip() == f"wrote {out_path}"
    with Image.open(out_path) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert width > 300 and height > 300
    assert pixels.min() < 50 and pixels.max() > 200 and pixels.std() > 20  # ink on paper, not blank
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp files left


@pytest.mark.integration
def test_verify(real_mnist_dir: Path, capsys) -> None:
    code, out, _ = _run(capsys, "data", "verify", "--data-dir", str(real_mnist_dir))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4 and all(line.startswith("ok  ") for line in lines)


@pytest.mark.parametrize("argv,starts", [
    (["data", "show", "--index", "20"], "--index 20: expected 0..19 for the test split"),
    (["data", "show", "--index", "-1"], "--index -1: expected 0..19"),
    (["data", "grid", "--count", "26"], "--count 26: expected 1..25"),
    (["data", "grid", "--index", "50", "--count", "5"], "--index 50: expected 0..45"),
    (["data", "info", "--validation-size", "60"], "--validation-size 60: expected 0..59"),
])
def test_bad_values_exit_2_with_one_line(tiny_mnist_dir: Path, tmp_path: Path, capsys, argv: list[str], starts: str) -> None:
    extra = ["--data-dir", str(tiny_mnist_dir)]
    extra += [] if "--validation-size" in argv else ["--validation-size", "10"]
    extra += ["--out", str(tmp_path / "g.png")] if "grid" in argv else []
    code, _, err = _run(capsys, *argv, *extra)
    _assert_one_line_error(code, err, starts)
    assert not (tmp_path / "g.png").exists()


def test_missing_data_dir_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, "data", "info", "--data-dir", str(tmp_path))
    _assert_one_line_error(code, err, f"--data-dir {tmp_path}: expected the files")


def test_tiny_show_uses_the_class_names(tiny_mnist_dir: Path, capsys) -> None:
    code, out, _ = _run(capsys, "data", "show", "--index", "13", "--data-dir", str(tiny_mnist_dir), "--validation-size", "10")
    assert code == 0 and out.splitlines()[-1] == "test[13] label=3 (3)"


def test_help_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mnistlab" in out and "data" in out


def test_data_info_help_shows_the_defaults(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["data", "info", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for flag, default in [("--dataset", "mnist"), ("--data-dir", "None"), ("--validation-size", "5000"),
                          ("--download", "True"), ("--json", "False")]:
        assert flag in out
        assert f"(default: {default})" in out, (flag, default)


# ---------------------------------------------------------------- flags checked before work
@pytest.mark.parametrize("argv,starts", [
    (["data", "download", "--mirrors", "ftp://host/mnist/"], "--mirrors ftp://host/mnist/: expected comma-separated http"),
    (["data", "download", "--download-deadline", "0"], "--download-deadline 0.0: expected a positive number of seconds"),
    (["data", "download", "--download-retries", "-2"], "--download-retries -2: expected a whole number 0..10"),
    (["data", "info", "--validation-size", "-1"], "--validation-size -1: expected a whole number, 0 or more"),
    (["data", "verify", "--data-dir", ""], "--data-dir : expected a folder path"),
])
def test_bad_data_flags_exit_2_before_any_work(isolated_data_env: Path, capsys, argv: list[str], starts: str) -> None:
    code, _, err = _run(capsys, *argv)
    _assert_one_line_error(code, err, starts)
    assert list(isolated_data_env.iterdir()) == []


def test_download_help_shows_the_limits_with_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["data", "download", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--download-deadline" in out and "(default: 600.0)" in out
    assert "--download-retries" in out and "(default: 2)" in out


# ---------------------------------------------------------------- folders and files that cannot be used
def test_cache_dir_that_is_a_file_exits_2_with_one_line(isolated_data_env: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = _run(capsys, "data", "download", "--cache-dir", str(blocker), "--mirrors", "http://127.0.0.1:9/")
    _assert_one_line_error(code, err, f"{blocker / 'mnist'}: cannot create the folder")
    assert "--cache-dir" in err


@pytest.mark.parametrize("kind", ["directory", "fifo", "dangling symlink"])
def test_something_else_in_place_of_a_file_is_a_missing_file(tiny_mnist_dir: Path, capsys, kind: str) -> None:
    path = tiny_mnist_dir / "t10k-labels-idx1-ubyte.gz"
    path.unlink()
    {"directory": path.mkdir, "fifo": lambda: os.mkfifo(path),
     "dangling symlink": lambda: path.symlink_to(path.parent / "nowhere")}[kind]()
    for command in ("verify", "info"):
        code, _, err = _run(capsys, "data", command, "--data-dir", str(tiny_mnist_dir), "--validation-size", "10")
        _assert_one_line_error(code, err, f"--data-dir {tiny_mnist_dir}: expected the files")


@pytest.fixture
def shared_dir(tiny_mnist, tmp_path: Path) -> Iterator[Path]:
    """A folder with ``data/`` holding the tiny .gz files; permissions are restored afterwards."""
    folder = tmp_path / "perm"
    shutil.copytree(tiny_mnist.gz_dir, folder / "data")
    try:
        yield folder
    finally:
        for path in (folder, *folder.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)


def _assert_one_line(result: subprocess.CompletedProcess, starts: str) -> None:
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"error: {starts}") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_verify_of_an_unreadable_file_is_one_line(ordinary_user, shared_dir: Path) -> None:
    labels = shared_dir / "data" / "t10k-labels-idx1-ubyte.gz"
    labels.chmod(0)
    result = _as_ordinary_user(ordinary_user, shared_dir, "data", "verify", "--data-dir", str(shared_dir / "data"))
    _assert_one_line(result, f"{labels}: cannot read (Permission denied); make it readable")


def test_loading_an_unreadable_file_is_one_line(ordinary_user, shared_dir: Path) -> None:
    images = shared_dir / "data" / "train-images-idx3-ubyte.gz"
    images.chmod(0)
    result = _as_ordinary_user(ordinary_user, shared_dir, "data", "info", "--data-dir", str(shared_dir / "data"), "--validation-size", "10")
    _assert_one_line(result, f"{images}: cannot read (Permission denied); make it readable")


@pytest.mark.parametrize("mode", [0, 0o600, 0o311], ids=["no access", "owner only", "no listing"])
def test_an_unreadable_data_dir_is_one_line(ordinary_user, shared_dir: Path, mode: int) -> None:
    folder = shared_dir / "data"
    folder.chmod(mode)
    result = _as_ordinary_user(ordinary_user, shared_dir, "data", "info", "--data-dir", str(folder))
    _assert_one_line(result, f"{folder}: cannot read the folder (Permission denied); make it readable")


def test_an_unreadable_cache_is_one_line(ordinary_user, shared_dir: Path) -> None:
    cache = shared_dir / "cache"
    cache.mkdir()
    (shared_dir / "data").rename(cache / "mnist")
    cache.chmod(0)
    result = _as_ordinary_user(ordinary_user, shared_dir, "data", "info", "--no-download")
    _assert_one_line(result, f"{cache / 'mnist'}: cannot read the folder (Permission denied)")


def test_grid_out_that_cannot_be_written_is_one_line(tiny_mnist_dir: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, "data", "grid", "--out", str(tmp_path), "--data-dir", str(tiny_mnist_dir), "--validation-size", "10")
    _assert_one_line_error(code, err, f"--out {tmp_path}: is a folder; expected a PNG file name")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = _run(capsys, "data", "grid", "--out", str(blocker / "g.png"), "--data-dir", str(tiny_mnist_dir),
                        "--validation-size", "10")
    _assert_one_line_error(code, err, f"--out {blocker / 'g.png'}: cannot write (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "tiny"]  # tiny: the data set

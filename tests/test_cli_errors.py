"""Every command, given bad input, says one line and exits non-zero, without a traceback; output
folders that cannot be written (read-only, full) are named, and nothing half-written is left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import _models
from _users import as_ordinary_user
from mnistlab import cli
from synthetic import write_synthetic_idx


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_synthetic_idx(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real (untrained-quality) run folder to point commands at."""
    return _models.untrained_run(tmp_path_factory.mktemp("runs") / "tiny")


def one_line(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``mnistlab *argv`` in this process; (exit status, stderr), asserting the one line."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), (argv, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    assert "Traceback" not in err
    return code, lines[0]


# (argv with {tiny} / {run} / {tmp} placeholders, what the line must name)
BAD = [
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["data", "info", "--validation-size", "-1", "--data-dir", "{tiny}"], "--validation-size -1"),
    (["data", "show", "--index", "99999", "--data-dir", "{tiny}", "--validation-size", "100"], "--index 99999"),
    (["data", "grid", "--count", "0", "--data-dir", "{tiny}", "--validation-size", "100"], "--count 0"),
    (["data", "download", "--mirrors", "ftp://example.org/", "--cache-dir", "{tmp}/c"], "--mirrors"),
    (["data", "verify", "--data-dir", "{tmp}/nowhere"], "{tmp}/nowhere"),
    (["train", "nosuch", "--out", "{tmp}/r"], "unknown model 'nosuch'"),
    (["train", "cnn", "--out", "{tmp}/r", "--filters", "0"], "--filters 0"),
    (["train", "cnn", "--out", "{tmp}/r", "--filters", "-4"], "--filters -4"),
    (["train", "cnn", "--out", "{tmp}/r", "--dropout", "1.5"], "--dropout 1.5"),
    (["train", "cnn", "--out", "{tmp}/r", "--dropout", "-0.5"], "--dropout -0.5"),
    (["train", "mlp", "--out", "{tmp}/r", "--hidden", "0"], "--hidden 0"),
    (["train", "mlp", "--out", "{tmp}/r", "--hidden", "x"], "--hidden: expected comma-separated int"),
    (["train", "cnn", "--out", "{tmp}/r", "--kernel-size", "0"], "--kernel-size 0"),
    (["train", "cnn", "--out", "{tmp}/r", "--kernel-size", "100"], "--kernel-size 100"),
    (["train", "cnn", "--out", "{tmp}/r", "--whitened-stem"], "--whitened-stem with --filters 32"),
    (["train", "fast", "--out", "{tmp}/r", "--filters", "15,32"], "--whitened-stem with --filters 15"),
    (["train", "cnn-hvass", "--out", "{tmp}/r", "--fc-units", "0"], "--fc-units 0"),
    (["train", "cnn", "--out", "{tmp}/r", "--keep-checkpoints", "0"], "--keep-checkpoints 0"),
    (["train", "cnn", "--out", "{tmp}/r", "--seed", "-1"], "--seed -1"),
    (["train", "cnn", "--out", "{tmp}/r", "--seed", "1e23"], "invalid int value: '1e23'"),
    (["train", "cnn", "--out", "{tmp}/r", "--schedule", "step", "--gamma", "-1"], "--gamma -1"),
    (["train", "mlp", "--course", "--epochs", "0", "--out", "{tmp}/r"], "--epochs 0"),
    (["train", "cnn", "--out", "{tmp}/afile", "--data-dir", "{tiny}", "--validation-size", "100"], "is a file"),
    (["train", "--resume", "--out", "{tmp}/nothing"], "no such run folder"),
    (["evaluate", "{tmp}/nothing"], "no such run folder"),
    (["evaluate", "{run}", "--split", "nope"], "invalid choice: 'nope'"),
    (["zoo", "--models", "softmax,nope", "--out", "{tmp}/z"], "unknown model 'nope'"),
    (["zoo", "--max-epochs", "0", "--out", "{tmp}/z"], "--max-epochs 0"),
    (["ensemble", "{tmp}/nothing"], "{tmp}/nothing"),
    (["plot", "{run}", "nope"], "invalid choice: 'nope'"),
    (["plot", "{tmp}/nothing", "samples"], "no such run folder"),
    (["report", "{tmp}/nothing"], "no such run folder"),
    (["preprocess", "{tmp}/nothing.png"], "{tmp}/nothing.png"),
    (["predict", "{tmp}/nothing", "{tmp}/x.png"], "{tmp}/nothing"),
    (["predict", "{run}/model.h5", "{tmp}/x.png"], "files are not loaded"),
    (["predict", "{run}", "x.png", "--top", "11"], "--top 11"),
    (["serve", "{tmp}/nothing"], "{tmp}/nothing"),
    (["serve", "{run}", "--port", "70000"], "--port 70000"),
    (["serve", "{run}", "--workers", "0"], "--workers 0"),
    (["export", "{tmp}/nothing", "--format", "tflite"], "{tmp}/nothing"),
    (["export", "{run}", "--format", "onnx"], "invalid choice: 'onnx'"),
    (["robustness", "{tmp}/nothing"], "{tmp}/nothing"),
]


@pytest.mark.parametrize("argv, names", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_every_command_with_bad_input_says_one_line(argv, names, tiny_dir, run, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    (run / "model.h5").write_bytes(b"\x89HDF")
    fill = {"tiny": str(tiny_dir), "run": str(run), "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    _, line = one_line(argv, capsys)
    assert names.format(**fill) in line, line
    assert not (tmp_path / "r").exists()  # nothing was started


def test_ensemble_of_a_missing_folder_says_so(tmp_path, capsys):
    _, line = one_line(["ensemble", str(tmp_path / "nonexist")], capsys)
    assert "no such" in line and "model.keras" not in line


# ---------------------------------------------------------------------------- folders that cannot be written
@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["train", "softmax", "--out", str(out), "--epochs", "1", "--data-dir", str(tiny_dir),
                     "--validation-size", "100", "--no-progress", "--no-tensorboard"]) == 0
    return out


def _read_only(folder: Path) -> None:
    for path in (folder, *folder.rglob("*")):
        path.chmod(0o555 if path.is_dir() else 0o444)


def _writable(folder: Path) -> None:
    for path in (folder, *folder.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _assert_one_line_names(result: subprocess.CompletedProcess, what: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and what in lines[0] and "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow
def test_read_only_output_folders_are_one_line_each(ordinary_user, trained, tiny_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    _read_only(locked)
    _read_only(copy)
    data = ["--data-dir", str(tiny_dir), "--validation-size", "100"]
    try:
        _assert_one_line_names(as_ordinary_user(ordinary_user, tmp_path, "train", "softmax", "--out",
                                                str(locked / "new"), "--epochs", "1", "--no-progress", *data),
                               str(locked / "new"))
        _assert_one_line_names(as_ordinary_user(ordinary_user, tmp_path, "evaluate", str(copy), *data[:2]),
                               str(copy))
        _assert_one_line_names(as_ordinary_user(ordinary_user, tmp_path, "report", str(copy)), str(copy))
        _assert_one_line_names(as_ordinary_user(ordinary_user, tmp_path, "train", "--resume", "--out", str(copy),
                                                "--no-progress", "--data-dir", str(tiny_dir)), str(copy))
    finally:
        _writable(locked)
        _writable(copy)


@pytest.fixture
def tiny_disk(tmp_path) -> Path:
    """A 600 kB tmpfs: room for a config and a little more, not for a model's checkpoints."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_temp_folder(tiny_disk, tiny_dir, capsys):
    out = tiny_disk / "run"
    _, line = one_line(["train", "mlp", "--out", str(out), "--epochs", "2", "--hidden", "256",
                        "--data-dir", str(tiny_dir), "--validation-size", "100", "--no-progress", "--no-tensorboard"],
                       capsys)
    assert "checkpoint failed" in line or "No space left" in line or "disk" in line, line
    leftovers = [p.name for p in (out / "checkpoints").glob("*_temp*")] if (out / "checkpoints").exists() else []
    assert leftovers == []
    assert not list(out.glob(".*.part"))  # no half-written temp file of fileio's either
    if (out / "config.json").is_file():
        json.loads((out / "config.json").read_text())  # what was written is whole

"""The five lesson notebooks: stored clean (no outputs), installed as package data, copied for a
student by ``mnistlab notebooks``, and run top to bottom on real MNIST in quick mode (slow: each
in a fresh kernel, in a temporary working folder, any failing cell fails the test).

The executed copies (with their outputs and pictures) go to ``$MNISTLAB_TEST_ARTIFACTS/notebooks/``
when that is set, so CI keeps what each lesson printed and drew."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from mnistlab import cli, lessons

nbformat = pytest.importorskip("nbformat")

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "src" / "mnistlab" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
LESSONS = ["01_data_and_softmax.ipynb", "02_mlp_activations.ipynb", "03_cnn.ipynb",
           "04_tensorboard_and_errors.ipynb", "05_beyond_the_course.ipynb"]
QUICK_LINE = 'QUICK = os.environ.get("MNISTLAB_QUICK") == "1"'
TF1_ONLY = ("tf.placeholder(", "tf.Session(", "tf.compat.v1", "input_data.read_data_sets(", "feed_dict=")
KERNEL = "mnistlab-lessons-test"


def code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


# ---------------------------------------------------------------------------- stored form
def test_five_lessons_in_the_course_order_and_the_top_level_link():
    assert [p.name for p in NOTEBOOKS] == LESSONS
    link = REPO_ROOT / "notebooks"
    assert link.is_symlink() and link.resolve() == NOTEBOOK_DIR.resolve()
    assert list(lessons.lesson_files()) == LESSONS  # what the installed package holds
    assert 'notebooks/*.ipynb' in (REPO_ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_clean_without_outputs(path):
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    for cell in code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a cell was saved with outputs"
    assert all(not cell.metadata for cell in nb.cells), f"{path.name}: cell metadata (widgets, tags) saved"
    assert set(nb.metadata) == {"kernelspec", "language_info"}
    assert text == nbformat.writes(nb) + "\n", f"{path.name}: not in nbformat's canonical layout (diffs would be noisy)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_holds_the_quick_switch_and_no_cell_uses_tf1(path):
    nb = nbformat.read(path, as_version=4)
    cells = code_cells(nb)
    assert QUICK_LINE in cells[0].source and lessons.QUICK_ENV in QUICK_LINE
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# 第")
    for cell in cells:
        for api in TF1_ONLY:
            assert api not in cell.source, f"{path.name}: TF1's {api} in a code cell"
    last_text = max(i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown")
    assert "练习 (exercises)" in nb.cells[last_text].source  # it ends with the exercises, as cells to change
    assert nb.cells[-1].cell_type == "code" and "EXERCISE" in "".join(c.source for c in nb.cells[last_text:])


# ---------------------------------------------------------------------------- copying for a student
def test_notebooks_command_copies_then_refuses_to_overwrite_edits(tmp_path, capsys):
    dest = tmp_path / "lessons"
    assert cli.main(["notebooks", "--dir", str(dest)]) == 0
    for name, content in lessons.lesson_files().items():
        assert (dest / name).read_bytes() == content
    assert capsys.readouterr().out.count("copied") == len(LESSONS)

    assert cli.main(["notebooks", "--dir", str(dest)]) == 0  # identical copies: nothing to do
    assert capsys.readouterr().out.count("unchanged") == len(LESSONS)

    edited = dest / LESSONS[2]
    edited.write_text("my notes", encoding="utf-8")
    (dest / LESSONS[0]).unlink()
    assert cli.main(["notebooks", "--dir", str(dest)]) == 2
    err = capsys.readouterr().err
    assert LESSONS[2] in err and "--force" in err and err.count("\n") == 1
    assert edited.read_text(encoding="utf-8") == "my notes"  # the student's work is kept...
    assert not (dest / LESSONS[0]).exists()  # ...and nothing was written before the refusal

    assert cli.main(["notebooks", "--dir", str(dest), "--force"]) == 0
    out = capsys.readouterr().out
    assert f"replaced  {edited}" in out and f"copied    {dest / LESSONS[0]}" in out
    assert edited.read_bytes() == lessons.lesson_files()[LESSONS[2]]


def test_notebooks_command_refuses_a_file_as_dir(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert cli.main(["notebooks", "--dir", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_next_run_dir_keeps_earlier_runs(tmp_path):
    base = tmp_path / "runs" / "cnn"
    assert lessons.next_run_dir(base) == base
    base.mkdir(parents=True)
    assert lessons.next_run_dir(base) == base  # an empty folder is free
    (base / "config.json").write_text("{}")
    assert lessons.next_run_dir(base) == tmp_path / "runs" / "cnn-2"
    (tmp_path / "runs" / "cnn-2").mkdir()
    (tmp_path / "runs" / "cnn-2" / "x").write_text("")
    assert lessons.next_run_dir(base) == tmp_path / "runs" / "cnn-3"


def test_show_digits_titles_labels_and_predictions():
    import numpy as np
    from matplotlib.text import Text

    images = np.zeros((3, 784), dtype=np.float32)
    fig = lessons.show_digits(images, [7, 2, 1], [7, 3, 1])
    texts = {t.get_text() for t in fig.findobj(Text)}
    assert {"label=7 predict=7", "label=2 predict=3", "label=1 predict=1"} <= texts
    assert fig._repr_png_().startswith(b"\x89PNG")


# ---------------------------------------------------------------------------- running them
@pytest.fixture(scope="module")
def kernel_spec(tmp_path_factory) -> str:
    """A kernel spec for this interpreter (the venv's, with mnistlab): a system-wide "python3"
    spec could start another Python."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL / "kernel.json"
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                "display_name": "mnistlab tests", "language": "python"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        yield KERNEL


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_in_quick_mode(path, kernel_spec, real_mnist_dir, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv(lessons.QUICK_ENV, "1")
    monkeypatch.setenv("MNISTLAB_DATA_DIR", str(real_mnist_dir))
    monkeypatch.setenv("MNISTLAB_CACHE_DIR", str(tmp_path / "cache"))  # the shift sets of lesson 5
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=kernel_spec, timeout=600, resources={"metadata": {"path": str(work)}})
    start = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError, naming the cell, on the first failing cell
    finally:
        seconds = time.perf_counter() - start
        artifacts = os.environ.get("MNISTLAB_TEST_ARTIFACTS")
        if artifacts:
            (Path(artifacts) / "notebooks").mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, Path(artifacts) / "notebooks" / path.name)
        print(f"{path.name}: {seconds:.1f} s in quick mode")
    cells = code_cells(nb)
    assert all(cell.execution_count for cell in cells)
    assert not [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    pictures = [o for cell in cells for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 2, f"{path.name}: its pictures should show inline"
    assert (work / "runs").is_dir() and not (NOTEBOOK_DIR / "runs").exists()  # runs land in the working folder

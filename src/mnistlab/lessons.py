"""The course's five lesson notebooks (installed with the package) and the little they need beyond the API.

``copy_lessons(dest)`` puts the notebooks where a student can edit them (``mnistlab notebooks
--dir DIR``). A copy already there is never overwritten silently: one identical to the installed
notebook is left as it is, one that differs (a student's edits) is refused unless ``force``,
and the check covers every file before anything is written. ``next_run_dir`` gives a notebook
cell a new run folder each time it runs (``train_model`` refuses to overwrite a run), and
``show_digits`` is S1's ``plot_images_labels_prediction`` as a Figure.

The notebooks read ``$MNISTLAB_QUICK`` themselves (``QUICK_ENV``), in their first code cell, so a
student sees the course's settings and CI runs short ones.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from mnistlab import fileio
from mnistlab.errors import MnistlabError

NOTEBOOKS_PACKAGE_DIR = "notebooks"  # src/mnistlab/notebooks, package data
QUICK_ENV = "MNISTLAB_QUICK"  # "1": the notebooks train for a few steps only (CI)
DEFAULT_DIR = "mnistlab-lessons"  # where ``mnistlab notebooks`` copies them by default


def lesson_files() -> dict[str, bytes]:
    """Installed notebook file name -> its bytes, in lesson order (``01_…`` to ``05_…``)."""
    folder = resources.files("mnistlab") / NOTEBOOKS_PACKAGE_DIR
    found = {entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.name.endswith(".ipynb")}
    if not found:
        raise MnistlabError(f"no lesson notebooks in {folder}; expected the package data mnistlab/notebooks/*.ipynb "
                            f"(reinstall mnistlab)")
    return dict(sorted(found.items()))


def copy_lessons(dest: str | os.PathLike, force: bool = False) -> dict[Path, str]:
    """Copy every lesson notebook into folder ``dest`` (created if needed); path -> ``copied``,
    ``replaced`` (only with ``force``) or ``unchanged`` (already identical).

    >>> copy_lessons("mnistlab-lessons")  # doctest: +SKIP
    """
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():
        raise MnistlabError(f"--dir {folder}: is a file; expected a folder to copy the notebooks into")
    lessons = lesson_files()
    targets = {folder / name: content for name, content in lessons.items()}
    edited = [path for path, content in targets.items() if path.exists() and _read(path) != content]
    if edited and not force:
        names = ", ".join(path.name for path in edited)
        raise MnistlabError(f"--dir {folder}: {names} already there and different from the installed "
                            f"lesson (your edits?); pass --force to replace them, or choose another --dir")
    status: dict[Path, str] = {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, content in targets.items():
            if path.exists() and path not in edited:
                status[path] = "unchanged"
                continue
            fileio.write_bytes(path, content)
            status[path] = "replaced" if path in edited else "copied"
    except OSError as exc:
        raise MnistlabError(f"--dir {folder}: cannot write ({exc.strerror or exc}); expected a writable folder") from None
    return status


def _read(path: Path) -> bytes:
    """A student's copy, or a one-line error when it cannot be read (a folder by that name, say)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MnistlabError(f"{path}: cannot read ({exc.strerror or exc}); expected a notebook file") from None


def next_run_dir(base: str | os.PathLike) -> Path:
    """``base`` if it is free (missing or an empty folder), else the first free ``base-2``,
    ``base-3``, …: running a training cell again keeps the earlier run to compare with.

    >>> next_run_dir("runs/softmax")  # doctest: +SKIP
    PosixPath('runs/softmax-2')
    """
    base = Path(base)
    candidate, number = base, 1
    while candidate.exists() and not (candidate.is_dir() and not any(candidate.iterdir())):
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def show_digits(images: Any, labels: Sequence[int], predictions: Sequence[int] | None = None,
                title: str | None = None, titles: Sequence[str] | None = None) -> Any:
    """Up to 25 images ``(N, 28, 28[, 1])`` or ``(N, 784)`` titled ``label=7`` or
    ``label=7 predict=1`` (or ``titles``), as S1's ``plot_images_labels_prediction``: a Figure,
    inline in Jupyter."""
    import numpy as np

    from mnistlab import plots

    images = np.asarray(images, dtype=np.float32)
    images = images.reshape(len(images), 28, 28)[: plots.MAX_GRID]
    if titles is not None:
        titles = list(titles)[: len(images)]
    elif predictions is None:
        titles = [f"label={int(y)}" for y in labels[: len(images)]]
    else:
        titles = [f"label={int(y)} predict={int(p)}" for y, p in zip(labels[: len(images)], predictions)]
    return plots.image_grid(images, titles, title=title)

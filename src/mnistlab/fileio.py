"""Atomic file writes: a temp file in the destination folder, renamed into place when complete.

A crash, Ctrl-C or error part-way leaves either the old file or none, never half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mnistlab.errors import MnistlabError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success rename it over ``path``, else delete it.

    ``suffix`` keeps an extension on the temp name for writers that insist on one
    (Keras' ``model.save`` wants ``.keras``, matplotlib infers the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    if suffix:  # writers that add or check extensions get a name ending in the suffix
        tmp_path.unlink()
        tmp_path = tmp_path.with_name(tmp_path.name[: -len(".part")])
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, required: bool = False) -> dict | None:
    if not path.is_file():
        if required:
            raise MnistlabError(f"{path}: missing; expected a run folder written by `mnistlab train`")
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MnistlabError(f"{path}: not readable JSON ({exc}); expected a JSON object") from None
    if not isinstance(value, dict):
        raise MnistlabError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value

"""Running mnistlab as an ordinary user would, from a root test process: children that obey file
permissions (root's permission bypass dropped), for tests of unreadable and read-only files."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

PR_CAPBSET_DROP = 24  # prctl(2) option: remove a capability from the bounding set
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2  # capabilities(7): root's bypass of file permissions


def drop_permission_bypass() -> None:
    """In the child before exec: give up root's right to ignore file permissions.

    Root with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH reads any file; without them, the
    permission bits of its own files apply, as they do for any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def ordinary_env(home: Path) -> dict[str, str]:
    """The environment of a child run: no MNISTLAB_* settings from outside, HOME and cache in ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNISTLAB_")}
    env.update(HOME=str(home), MNISTLAB_CACHE_DIR=str(home / "cache"), PYTHONDONTWRITEBYTECODE="1")
    return env


@pytest.fixture(scope="module")
def ordinary_user(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], None] | None:
    """The ``preexec_fn`` that makes a child obey file permissions (None when not root); skips
    where none can, as checked once on a file of mode 000."""
    preexec = drop_permission_bypass if os.geteuid() == 0 else None
    probe = tmp_path_factory.mktemp("probe") / "mode-000"
    probe.write_text("")
    probe.chmod(0)
    try:
        check = subprocess.run([sys.executable, "-c", f"import mnistlab.cli; open({str(probe)!r})"],
                               env=ordinary_env(probe.parent), preexec_fn=preexec, capture_output=True,
                               text=True, timeout=120)
    except OSError as exc:
        pytest.skip(f"cannot drop root's permission bypass here: {exc}")
    finally:
        probe.chmod(0o644)
    if "PermissionError" not in check.stderr:
        pytest.skip(f"file permissions do not apply to a child process here: {check.stderr.strip()[-200:]}")
    return preexec


def as_ordinary_user(preexec: Callable[[], None] | None, home: Path, *argv: str) -> subprocess.CompletedProcess:
    """``mnistlab *argv`` in a fresh process where file permissions apply (root's bypass dropped)."""
    return subprocess.run([sys.executable, "-m", "mnistlab.cli", *argv], env=ordinary_env(home),
                          preexec_fn=preexec, capture_output=True, text=True, timeout=120)

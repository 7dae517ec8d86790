"""Fetch a file from a list of mirrors, verify its decompressed content, then move it into place.

Bytes stream into a ``.part`` file in the destination folder and are renamed only once the
SHA-256 of their *decompressed* content matches, so any mirror's gzip level is accepted and an
interrupted, oversized, slow or corrupt download never leaves a file that later loads as data.
Each try of a mirror is bounded in size (``size_limit``: a little over the known content size,
checked against ``Content-Length`` and while streaming), in time (``Limits.deadline_s`` for the
whole file, ``Limits.timeout_s`` for one connect or read) and in number (``Limits.retries`` after
a transient failure, with doubling waits), before the next mirror is tried.
"""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from mnistlab import fileio
from mnistlab.errors import MnistlabError
from mnistlab.idx import decompressed_bytes

CHUNK_BYTES = 1 << 16  # most bytes taken from the socket per read
GZIP_SLACK_BYTES = 1 << 16  # gzip header (file name, comment, extra field) and trailer, generously
GZIP_SLACK_FRACTION = 100  # deflate's stored blocks add 5 bytes per <= 64 KiB (0.01%); allow 1%
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})  # statuses worth asking again


@dataclass(frozen=True)
class Limits:
    """How long, and how often, one file is tried on one mirror."""

    deadline_s: float = 600.0  # wall seconds for the whole file from one mirror, however it trickles
    retries: int = 2  # further tries of a mirror after a transient failure (refused, reset, timeout, 5xx)
    backoff_s: float = 1.0  # seconds before the first retry, doubled before each next one
    timeout_s: float = 30.0  # seconds one connect or one read may wait for a byte


def size_limit(content_bytes: int) -> int:
    """The most bytes a copy of a file with ``content_bytes`` of IDX content may take on the wire.

    A raw copy is exactly ``content_bytes``. Gzip at its worst stores the content in blocks of at
    most 64 KiB with 5 bytes of framing each, plus a header and trailer; 1% + 64 KiB is far above
    that, yet stops an endless or forged body within 1% of the real size.
    """
    return content_bytes + content_bytes // GZIP_SLACK_FRACTION + GZIP_SLACK_BYTES


def retry_delays(limits: Limits) -> list[float]:
    """Seconds to wait before each retry: ``backoff_s``, twice that, four times that, ..."""
    return [limits.backoff_s * 2**i for i in range(limits.retries)]


def is_http_url(text: str) -> bool:
    """True for an ``http://`` or ``https://`` URL with a host."""
    try:
        parts = urllib.parse.urlsplit(text)
    except (ValueError, TypeError, AttributeError):
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in text)


def mirror_url(base: str, filename: str) -> str:
    """The URL of ``filename`` on the mirror whose base URL is ``base`` (its trailing ``/`` optional)."""
    return (base if base.endswith("/") else base + "/") + filename


def content_sha256(raw: bytes, name: str = "<bytes>") -> str:
    """SHA-256 hex digest of the IDX content of ``raw`` (gunzipped first when it is gzip)."""
    return hashlib.sha256(decompressed_bytes(raw, name)).hexdigest()


class _TryFailed(Exception):
    """One try of one mirror failed; ``transient`` says whether asking the same mirror again may help."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


def _wait(seconds: float) -> None:
    """Sleep between tries of a mirror (tests replace it to record the waits instead)."""
    time.sleep(seconds)


def _console() -> Console:
    """Where progress is drawn: stderr, so stdout stays the command's output."""
    return Console(stderr=True)


def _progress(enabled: bool) -> Progress:
    """A bar with bytes, rate and time left, drawn only on a terminal and erased when done."""
    console = _console()
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=True,
                    disable=not (enabled and console.is_terminal))


def _write(out: BinaryIO, chunk: bytes, part: Path) -> None:
    """Append ``chunk`` to the ``.part`` file; a full disk is the user's to fix, not a mirror's fault."""
    try:
        out.write(chunk)
    except OSError as exc:
        raise MnistlabError(f"{part}: cannot write ({exc.strerror}); free some space or pass another "
                            f"--cache-dir") from None


def _stream(url: str, out: BinaryIO, part: Path, max_bytes: int, limits: Limits, bar: Progress) -> None:
    """Copy the body of ``url`` into ``out``, stopping past ``max_bytes`` or the deadline."""
    start = time.monotonic()
    request = urllib.request.Request(url, headers={"User-Agent": "mnistlab"})
    with urllib.request.urlopen(request, timeout=min(limits.timeout_s, limits.deadline_s)) as response:
        announced = response.length  # None when absent, chunked or not a number
        if announced is not None and announced > max_bytes:
            raise _TryFailed(f"announces {announced} bytes, more than the {max_bytes} this file can take", False)
        task = bar.add_task(f"{url.rsplit('/', 1)[-1]} from {urllib.parse.urlsplit(url).hostname}", total=announced)
        received = 0
        try:
            # read1 returns whatever has arrived (read(n) would wait for all n bytes), so a mirror
            # trickling a byte at a time cannot keep one read, and the deadline check, waiting.
            while chunk := response.read1(CHUNK_BYTES):
                received += len(chunk)
                if received > max_bytes:
                    raise _TryFailed(f"sent more than the {max_bytes} bytes this file can take", False)
                _write(out, chunk, part)
                bar.update(task, completed=received)
                if time.monotonic() - start > limits.deadline_s:
                    raise _TryFailed(f"too slow: {received} of {announced or 'unknown'} bytes after the "
                                     f"{limits.deadline_s:g} s deadline (--download-deadline)", False)
        finally:
            bar.remove_task(task)
    if announced is not None and received != announced:  # connection dropped before the end
        raise _TryFailed(f"connection closed after {received} of {announced} bytes", True)


def _fetch_into(url: str, part: Path, max_bytes: int, limits: Limits, bar: Progress) -> None:
    """Stream ``url`` into ``part``; every transport failure becomes a _TryFailed saying why."""
    if not is_http_url(url):
        raise _TryFailed("not an http:// or https:// URL", False)
    try:
        with part.open("wb") as out:
            _stream(url, out, part, max_bytes, limits, bar)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _TryFailed(f"HTTP {exc.code}", exc.code in TRANSIENT_HTTP) from None
    except urllib.error.URLError as exc:  # refused, no route, DNS, connect timeout
        raise _TryFailed(str(exc.reason), True) from None
    except TimeoutError:
        raise _TryFailed(f"no data for {min(limits.timeout_s, limits.deadline_s):g} s", True) from None
    except (ConnectionError, http.client.IncompleteRead) as exc:  # reset or closed mid-way
        raise _TryFailed(f"{type(exc).__name__}: {exc}", True) from None
    except (http.client.HTTPException, ValueError) as exc:  # not HTTP at all, or not a URL
        raise _TryFailed(f"{type(exc).__name__}: {' '.join(str(exc).split())}", False) from None
    except OSError as exc:
        raise _TryFailed(exc.strerror or str(exc), True) from None


def _check_content(part: Path, sha256: str) -> None:
    """A _TryFailed unless the decompressed content of ``part`` has the SHA-256 ``sha256``."""
    try:
        digest = content_sha256(part.read_bytes(), "body")
    except MnistlabError as exc:
        raise _TryFailed(str(exc), False) from None
    if digest != sha256:
        raise _TryFailed(f"content SHA-256 {digest[:12]}… expected {sha256[:12]}…", False)


def _try_mirror(url: str, dest: Path, sha256: str, max_bytes: int, limits: Limits, bar: Progress) -> str | None:
    """Try ``url`` once, then again after each retry delay while failures are transient.

    Returns None once ``dest`` holds the verified file, else why the mirror failed."""
    delays = retry_delays(limits)
    for tries in range(1, len(delays) + 2):
        try:
            with fileio.atomic_path(dest) as part:  # the .part file is removed on any failure
                _fetch_into(url, part, max_bytes, limits, bar)
                _check_content(part, sha256)
            return None
        except _TryFailed as failed:
            if not failed.transient or tries > len(delays):
                return str(failed) + (f" ({tries} tries)" if tries > 1 else "")
        _wait(delays[tries - 1])
    raise AssertionError("unreachable: the last try returns")


def download_file(
    filename: str,
    dest_dir: str | Path,
    mirrors: Sequence[str],
    sha256: str,
    content_bytes: int,
    limits: Limits = Limits(),
    progress: bool = True,
) -> Path:
    """Download ``filename`` from the first mirror whose copy checks out; return its path.

    Each mirror is a base URL (``https://host/mnist/``). ``content_bytes`` is the known size of
    the decompressed content: it bounds the download (``size_limit``). A mirror is retried after
    transient failures (see ``Limits``); other failures (HTTP 404, wrong content, too big, too
    slow) move on to the next mirror at once. When all fail, one MnistlabError lists why.
    """
    dest = Path(dest_dir) / filename
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MnistlabError(f"{dest.parent}: cannot create the folder ({exc.strerror}); "
                            f"pass a writable --cache-dir") from None
    max_bytes = size_limit(content_bytes)
    failures = []
    with _progress(progress) as bar:
        for base in mirrors:
            url = mirror_url(base, filename)
            try:
                reason = _try_mirror(url, dest, sha256, max_bytes, limits, bar)
            except OSError as exc:  # the temp file itself could not be made: a local problem
                raise MnistlabError(f"{dest.parent}: cannot write a file there ({exc.strerror}); "
                                    f"pass a writable --cache-dir") from None
            if reason is None:
                return dest
            failures.append(f"{url}: {reason}")
    raise MnistlabError(
        f"could not download {filename} into {dest.parent} from any mirror ("
        + "; ".join(failures)
        + f"). Offline? Copy the four IDX files into {dest.parent} or pass --data-dir."
    )

"""Fetch a file from a list of mirrors, verify its decompressed content, then move it into place.

Bytes land in a ``.part`` file in the destination folder and are renamed only once the
SHA-256 of their *decompressed* content matches, so any mirror's gzip level is accepted and an
interrupted or corrupt download never leaves a file that later loads as data.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from rich.progress import DownloadColumn, Progress

from mnistlab import fileio
from mnistlab.errors import MnistlabError
from mnistlab.idx import decompressed_bytes

CHUNK_BYTES = 1 << 16
TIMEOUT_S = 30.0  # per socket operation, not per file


def content_sha256(raw: bytes, name: str = "<bytes>") -> str:
    """SHA-256 hex digest of the IDX content of ``raw`` (gunzipped first when it is gzip)."""
    return hashlib.sha256(decompressed_bytes(raw, name)).hexdigest()


def _fetch(url: str, progress: bool) -> bytes:
    """Return the body of ``url``; raise OSError/URLError on any transport failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "mnistlab"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks = []
        with Progress(*Progress.get_default_columns(), DownloadColumn(), transient=True,
                      disable=not progress) as bar:
            task = bar.add_task(url.rsplit("/", 1)[-1], total=total)
            while chunk := response.read(CHUNK_BYTES):
                chunks.append(chunk)
                bar.advance(task, len(chunk))
        body = b"".join(chunks)
    if total is not None and len(body) != total:  # connection dropped before the end
        raise OSError(f"connection closed after {len(body)} of {total} bytes")
    return body


def download_file(
    filename: str,
    dest_dir: str | os.PathLike,
    mirrors: Sequence[str],
    sha256: str,
    progress: bool = True,
) -> Path:
    """Download ``filename`` from the first mirror whose copy checks out; return its path.

    Each mirror is a base URL ending in ``/``. Failures (HTTP errors, dropped connections,
    wrong content) move on to the next mirror; when all fail, one MnistlabError lists why.
    """
    dest = Path(dest_dir) / filename
    failures = []
    for base in mirrors:
        url = base + filename
        try:
            body = _fetch(url, progress)
            digest = content_sha256(body, url)
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: HTTP {exc.code}")
            continue
        except (urllib.error.URLError, OSError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
            continue
        except (http.client.HTTPException, ValueError) as exc:  # not HTTP at all, or not a URL
            failures.append(f"{url}: {type(exc).__name__}: {' '.join(str(exc).split())}")
            continue
        except MnistlabError as exc:
            failures.append(f"{url}: {exc}")
            continue
        if digest != sha256:
            failures.append(f"{url}: content SHA-256 {digest[:12]}… expected {sha256[:12]}…")
            continue
        fileio.write_bytes(dest, body)
        return dest
    raise MnistlabError(
        f"could not download {filename} into {dest.parent} from any mirror ("
        + "; ".join(failures)
        + f"). Offline? Copy the four IDX files into {dest.parent} or pass --data-dir."
    )

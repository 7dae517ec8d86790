"""Downloads against a real HTTP server on 127.0.0.1 started by the test: good, missing, corrupt,
cut-off and stalled mirrors. Every test is bounded in time (socket timeout and pytest-timeout)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from mnistlab import cli, data, download
from mnistlab.data import DataConfig
from mnistlab.errors import MnistlabError

pytestmark = pytest.mark.timeout(30)
SOCKET_TIMEOUT_S = 2.0  # the downloader's per-socket-operation timeout during these tests
LABELS_GZ = "train-labels-idx1-ubyte.gz"


@dataclass
class Route:
    """What the server does for one path: ``ok`` (serve body), ``drop`` (announce
    ``len(body) + missing`` bytes, send ``body``, close), ``stall`` (answer nothing) or ``garbage``
    (not HTTP at all). Paths without a route get 404."""

    action: str
    body: bytes = b""
    missing: int = 1000


@dataclass
class MirrorServer:
    """A local HTTP server; ``routes`` maps a URL path to a Route, ``requests`` logs the paths asked."""

    base: str  # http://127.0.0.1:<port>
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def mirror(self, name: str) -> str:
        """The base URL of mirror ``name`` (a folder on this server), ending in ``/``."""
        return f"{self.base}/{name}/"

    def serve(self, mirror: str, filename: str, action: str, body: bytes = b"") -> None:
        """Make ``mirror``'s ``filename`` behave as ``action`` (see Route)."""
        self.routes[f"/{mirror}/{filename}"] = Route(action, body)


def _handler(server: MirrorServer) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler class bound to ``server``'s routes."""

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # a handler never outlives a test

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            server.requests.append(self.path)
            route = server.routes.get(self.path)
            if route is None:
                self.send_error(404)
            elif route.action == "stall":
                server.release.wait(10)
            elif route.action == "garbage":
                self.wfile.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            else:
                missing = route.missing if route.action == "drop" else 0
                self.send_response(200)
                self.send_header("Content-Length", str(len(route.body) + missing))
                self.end_headers()
                self.wfile.write(route.body)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def mirror_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MirrorServer]:
    """A threaded HTTP server on 127.0.0.1 (port chosen by the OS), shut down after the test."""
    monkeypatch.setattr(download, "TIMEOUT_S", SOCKET_TIMEOUT_S)
    state = MirrorServer(base="")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def _labels_content() -> bytes:
    """A small labels IDX file (uncompressed)."""
    from mnistlab import idx

    return idx.encode_idx((np.arange(100) % 10).astype(np.uint8))


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _fetch(server: MirrorServer, dest: Path, *mirrors: str) -> Path:
    """Download LABELS_GZ from ``mirrors`` (names on ``server``, or full URLs) into ``dest``."""
    urls = [m if m.startswith("http") or "/" in m else server.mirror(m) for m in mirrors]
    return download.download_file(LABELS_GZ, dest, urls, _sha(_labels_content()), progress=False)


def _leftovers(folder: Path) -> list[str]:
    """Names of everything in ``folder`` (none when it does not exist)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- download_file
def test_good_mirror(mirror_server: MirrorServer, tmp_path: Path) -> None:
    body = gzip.compress(_labels_content(), mtime=0)
    mirror_server.serve("a", LABELS_GZ, "ok", body)
    path = _fetch(mirror_server, tmp_path / "dest", "a")
    assert path == tmp_path / "dest" / LABELS_GZ and path.read_bytes() == body
    assert _leftovers(tmp_path / "dest") == [LABELS_GZ]
    assert mirror_server.requests == [f"/a/{LABELS_GZ}"]


def test_404_then_good_mirror(mirror_server: MirrorServer, tmp_path: Path) -> None:
    mirror_server.serve("b", LABELS_GZ, "ok", gzip.compress(_labels_content()))
    path = _fetch(mirror_server, tmp_path, "a", "b")
    assert gzip.decompress(path.read_bytes()) == _labels_content()
    assert mirror_server.requests == [f"/a/{LABELS_GZ}", f"/b/{LABELS_GZ}"]


@pytest.mark.parametrize("corruption", ["flipped byte", "not gzip", "truncated gzip", "other file"])
def test_corrupt_mirror_is_rejected_by_content_hash(mirror_server: MirrorServer, tmp_path: Path, corruption: str) -> None:
    content = _labels_content()
    bad = {
        "flipped byte": gzip.compress(content[:-1] + bytes([content[-1] ^ 1])),
        "not gzip": b"<html>503 Service Unavailable</html>",
        "truncated gzip": gzip.compress(content)[:-20],
        "other file": gzip.compress(content[:-1] + b"\x05"),
    }[corruption]
    mirror_server.serve("bad", LABELS_GZ, "ok", bad)
    mirror_server.serve("good", LABELS_GZ, "ok", gzip.compress(content, compresslevel=9))
    path = _fetch(mirror_server, tmp_path, "bad", "good")
    assert gzip.decompress(path.read_bytes()) == content
    assert mirror_server.requests == [f"/bad/{LABELS_GZ}", f"/good/{LABELS_GZ}"]
    assert _leftovers(tmp_path) == [LABELS_GZ]


@pytest.mark.parametrize("level", [0, 1, 9])
def test_content_hash_is_of_the_decompressed_bytes(mirror_server: MirrorServer, tmp_path: Path, level: int) -> None:
    body = gzip.compress(_labels_content(), compresslevel=level, mtime=12345)
    mirror_server.serve("a", LABELS_GZ, "ok", body)
    assert _fetch(mirror_server, tmp_path, "a").read_bytes() == body


def test_uncompressed_copy_is_accepted(mirror_server: MirrorServer, tmp_path: Path) -> None:
    mirror_server.serve("a", LABELS_GZ, "ok", _labels_content())
    assert _fetch(mirror_server, tmp_path, "a").read_bytes() == _labels_content()


def test_connection_dropped_mid_file_leaves_nothing_behind(mirror_server: MirrorServer, tmp_path: Path) -> None:
    body = gzip.compress(_labels_content())
    mirror_server.serve("a", LABELS_GZ, "drop", body[: len(body) // 2])
    dest = tmp_path / "dest"
    with pytest.raises(MnistlabError, match=r"connection closed after \d+ of \d+ bytes") as info:
        _fetch(mirror_server, dest, "a")
    assert f"{mirror_server.mirror('a')}{LABELS_GZ}" in str(info.value)
    assert _leftovers(dest) == []


def test_dropped_whole_body_with_longer_length_is_still_rejected(mirror_server: MirrorServer, tmp_path: Path) -> None:
    mirror_server.serve("a", LABELS_GZ, "drop", gzip.compress(_labels_content()))  # body complete, length lies
    mirror_server.serve("b", LABELS_GZ, "ok", gzip.compress(_labels_content()))
    _fetch(mirror_server, tmp_path, "a", "b")
    assert mirror_server.requests == [f"/a/{LABELS_GZ}", f"/b/{LABELS_GZ}"]
    assert _leftovers(tmp_path) == [LABELS_GZ]


def test_stalled_mirror_times_out_and_the_next_is_used(mirror_server: MirrorServer, tmp_path: Path) -> None:
    mirror_server.serve("slow", LABELS_GZ, "stall")
    mirror_server.serve("b", LABELS_GZ, "ok", gzip.compress(_labels_content()))
    _fetch(mirror_server, tmp_path, "slow", "b")
    assert mirror_server.requests == [f"/slow/{LABELS_GZ}", f"/b/{LABELS_GZ}"]


def test_all_mirrors_failing_lists_each_failure(mirror_server: MirrorServer, tmp_path: Path, closed_port_url: str) -> None:
    content = _labels_content()
    mirror_server.serve("corrupt", LABELS_GZ, "ok", gzip.compress(content[:-1] + b"\x05"))
    mirror_server.serve("cut", LABELS_GZ, "drop", gzip.compress(content)[:30])
    mirror_server.serve("junk", LABELS_GZ, "garbage")
    dest = tmp_path / "dest"
    with pytest.raises(MnistlabError) as info:
        _fetch(mirror_server, dest, "missing", "corrupt", "cut", "junk", closed_port_url, "no-scheme.example/")
    message = str(info.value)
    reasons = message[message.index("(") + 1: message.rindex(")")].split("; ")
    assert len(reasons) == 6, message
    assert reasons[0] == f"{mirror_server.mirror('missing')}{LABELS_GZ}: HTTP 404"
    assert reasons[1].startswith(f"{mirror_server.mirror('corrupt')}{LABELS_GZ}: content SHA-256")
    assert reasons[2].startswith(f"{mirror_server.mirror('cut')}{LABELS_GZ}: connection closed after")
    assert reasons[3].startswith(f"{mirror_server.mirror('junk')}{LABELS_GZ}: ")
    assert reasons[4].startswith(f"{closed_port_url}{LABELS_GZ}: ") and "refused" in reasons[4]
    assert reasons[5].startswith(f"no-scheme.example/{LABELS_GZ}: ")
    assert f"Copy the four IDX files into {dest}" in message and "\n" not in message
    assert _leftovers(dest) == []


# ---------------------------------------------------------------- through the data layer
def _serve_tiny(server: MirrorServer, tiny_mnist, mirror: str = "m", level: int = 9) -> None:
    """Serve the tiny data set's four files, gzip'd at ``level``, under ``mirror``."""
    for role, fact in tiny_mnist.facts.files.items():
        server.serve(mirror, fact.name + ".gz", "ok", gzip.compress(tiny_mnist.contents[role], compresslevel=level))


def test_load_downloads_into_the_cache_then_reuses_it(
        mirror_server: MirrorServer, tiny_mnist, isolated_data_env: Path, monkeypatch) -> None:
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_mnist.facts)
    _serve_tiny(mirror_server, tiny_mnist, level=1)
    config = DataConfig(dataset="tiny", validation_size=10, mirrors=(mirror_server.base + "/404/", mirror_server.mirror("m")))
    ds = data.load(config)
    assert ds.source == "download" and ds.data_dir == isolated_data_env / "tiny"
    assert len(ds.train) == 50 and len(ds.test) == 20
    np.testing.assert_array_equal(ds.test.labels, tiny_mnist.arrays["test_labels"])
    assert _leftovers(isolated_data_env / "tiny") == sorted(f.name + ".gz" for f in tiny_mnist.facts.files.values())
    asked = len(mirror_server.requests)
    assert asked == 8  # each file: 404 mirror, then the good one
    assert data.load(config).source == "cache" and len(mirror_server.requests) == asked
    assert all(ok for _, ok in data.verify(config).values())


def test_mirrors_from_the_environment(mirror_server: MirrorServer, tiny_mnist, isolated_data_env: Path, monkeypatch) -> None:
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_mnist.facts)
    monkeypatch.setenv(data.MIRRORS_ENV, f" {mirror_server.mirror('nope')} , {mirror_server.mirror('m')}")
    _serve_tiny(mirror_server, tiny_mnist)
    assert data.load(DataConfig(dataset="tiny", validation_size=0)).source == "download"
    assert mirror_server.requests[:2] == ["/nope/train-images-idx3-ubyte.gz", "/m/train-images-idx3-ubyte.gz"]


def test_download_replaces_only_a_corrupt_cached_file(
        mirror_server: MirrorServer, tiny_mnist, isolated_data_env: Path, monkeypatch) -> None:
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_mnist.facts)
    cached = tiny_mnist.gz_dir.rename(isolated_data_env / "tiny")
    (cached / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bjunk")
    _serve_tiny(mirror_server, tiny_mnist)
    files = data.download(DataConfig(dataset="tiny", mirrors=(mirror_server.mirror("m"),)), progress=False)
    assert mirror_server.requests == ["/m/t10k-labels-idx1-ubyte.gz"]
    assert gzip.decompress(files["test_labels"].read_bytes()) == tiny_mnist.contents["test_labels"]


def test_offline_with_all_mirrors_unreachable_is_one_clear_error(
        tiny_mnist, isolated_data_env: Path, closed_port_url: str, monkeypatch) -> None:
    monkeypatch.setattr(download, "TIMEOUT_S", SOCKET_TIMEOUT_S)
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_mnist.facts)
    with pytest.raises(MnistlabError) as info:
        data.load(DataConfig(dataset="tiny", mirrors=(closed_port_url,)))
    message = str(info.value)
    assert closed_port_url in message and "refused" in message
    assert f"Copy the four IDX files into {isolated_data_env / 'tiny'}" in message and "--data-dir" in message
    assert _leftovers(isolated_data_env / "tiny") == []


def test_cli_download_then_verify(mirror_server: MirrorServer, tiny_mnist, isolated_data_env: Path,
                                  monkeypatch, capsys) -> None:
    monkeypatch.setitem(data.DATASETS, "mnist", replace(tiny_mnist.facts, name="mnist"))
    _serve_tiny(mirror_server, tiny_mnist)
    assert cli.main(["data", "download", "--mirrors", mirror_server.mirror("m")]) == 0
    assert capsys.readouterr().out.count(f"ok  {isolated_data_env / 'mnist'}") == 4
    assert cli.main(["data", "verify"]) == 0
    assert capsys.readouterr().out.count("ok  ") == 4
    (isolated_data_env / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\0"))
    assert cli.main(["data", "verify"]) == 2
    captured = capsys.readouterr()
    assert "BAD" in captured.out and captured.err.startswith("error: ") and "Traceback" not in captured.err

"""Downloads against a real HTTP server on 127.0.0.1 started by the test: good, missing, corrupt,
cut-off, stalled, flaky, endless, huge and trickling mirrors. No test waits for a time: limits are
set small, retries wait through a recorder, and pacing waits for events the test observes."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import socket
import threading
import tracemalloc
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from rich.console import Console

from mnistlab import cli, data, download
from mnistlab.data import DataConfig
from mnistlab.download import Limits
from mnistlab.errors import MnistlabError

pytestmark = pytest.mark.timeout(60)
FAST = Limits(deadline_s=30, retries=0, backoff_s=0, timeout_s=2)  # socket timeout 2 s: stalls end fast
LABELS_GZ = "train-labels-idx1-ubyte.gz"
FOREVER = 1 << 30  # bytes an endless route would send at most (a safety net, never reached)


@dataclass
class Route:
    """What the server does for one path: ``ok`` (serve body), ``drop`` (announce
    ``len(body) + missing`` bytes, send ``body``, close), ``stall`` (answer nothing), ``garbage``
    (not HTTP at all), ``flaky`` (answer ``status`` to the first ``fails`` requests, then serve
    body), ``endless`` (no Content-Length, zeros until the client hangs up), ``huge`` (announce
    ``length`` bytes, then zeros), ``trickle`` (announce ``length``, then one byte every 10 ms) or
    ``paced`` (send ``body`` in ``len(gates) + 1`` parts, waiting for each gate Event in between).
    Paths without a route get 404."""

    action: str
    body: bytes = b""
    missing: int = 1000
    fails: int = 0
    status: int = 503
    length: int = 0
    gates: list[threading.Event] = field(default_factory=list)


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

    def serve(self, mirror: str, filename: str, action: str, body: bytes = b"", **route: object) -> Route:
        """Make ``mirror``'s ``filename`` behave as ``action`` (see Route); return the route."""
        self.routes[f"/{mirror}/{filename}"] = Route(action, body, **route)
        return self.routes[f"/{mirror}/{filename}"]


def _handler(server: MirrorServer) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler class bound to ``server``'s routes."""

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # a handler never outlives a test

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            server.requests.append(self.path)
            route = server.routes.get(self.path)
            try:
                self._answer(route)
            except OSError:  # the client hung up, as it should on endless or huge bodies
                pass
            self.close_connection = True

        def _answer(self, route: Route | None) -> None:
            if route is None:
                self.send_error(404)
            elif route.action == "stall":
                server.release.wait(10)
            elif route.action == "garbage":
                self.wfile.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            elif route.action == "flaky" and route.fails > 0:
                route.fails -= 1
                self.send_error(route.status)
            elif route.action in ("endless", "huge", "trickle"):
                self.send_response(200)
                if route.action != "endless":
                    self.send_header("Content-Length", str(route.length))
                self.end_headers()
                chunk = bytes(1 if route.action == "trickle" else 1 << 16)
                sent = 0
                while sent < FOREVER and not server.release.is_set():
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if route.action == "trickle":
                        server.release.wait(0.01)  # pacing only: the client's deadline decides
            else:
                missing = route.missing if route.action == "drop" else 0
                self.send_response(200)
                self.send_header("Content-Length", str(len(route.body) + missing))
                self.end_headers()
                parts = np.array_split(np.frombuffer(route.body, np.uint8), len(route.gates) + 1)
                for i, part in enumerate(parts):
                    if i:
                        route.gates[i - 1].wait(10)
                    self.wfile.write(part.tobytes())

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def mirror_server() -> Iterator[MirrorServer]:
    """A threaded HTTP server on 127.0.0.1 (port chosen by the OS), shut down after the test."""
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
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds the downloader asked to wait between tries, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(download, "_wait", recorded.append)
    return recorded


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


def _fetch(server: MirrorServer, dest: Path, *mirrors: str, limits: Limits = FAST,
           content_bytes: int | None = None, progress: bool = False) -> Path:
    """Download LABELS_GZ from ``mirrors`` (names on ``server``, or full URLs) into ``dest``."""
    urls = [m if m.startswith("http") or "/" in m else server.mirror(m) for m in mirrors]
    content = _labels_content()
    return download.download_file(LABELS_GZ, dest, urls, _sha(content),
                                  len(content) if content_bytes is None else content_bytes, limits, progress)


def _leftovers(folder: Path) -> list[str]:
    """Names of everything in ``folder`` (none when it does not exist)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _reasons(error: pytest.ExceptionInfo) -> list[str]:
    """The per-mirror reasons listed in a download error."""
    message = str(error.value)
    return message[message.index("(") + 1: message.rindex(")")].split("; ")


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
    reasons = _reasons(info)
    assert len(reasons) == 6, message
    assert reasons[0] == f"{mirror_server.mirror('missing')}{LABELS_GZ}: HTTP 404"
    assert reasons[1].startswith(f"{mirror_server.mirror('corrupt')}{LABELS_GZ}: content SHA-256")
    assert reasons[2].startswith(f"{mirror_server.mirror('cut')}{LABELS_GZ}: connection closed after")
    assert reasons[3].startswith(f"{mirror_server.mirror('junk')}{LABELS_GZ}: ")
    assert reasons[4].startswith(f"{closed_port_url}{LABELS_GZ}: ") and "refused" in reasons[4]
    assert reasons[5] == f"no-scheme.example/{LABELS_GZ}: not an http:// or https:// URL"
    assert f"Copy the four IDX files into {dest}" in message and "\n" not in message
    assert _leftovers(dest) == []


def test_mirror_without_a_trailing_slash(mirror_server: MirrorServer, tmp_path: Path) -> None:
    mirror_server.serve("a", LABELS_GZ, "ok", gzip.compress(_labels_content()))
    _fetch(mirror_server, tmp_path, mirror_server.base + "/a")
    assert mirror_server.requests == [f"/a/{LABELS_GZ}"]
    assert download.mirror_url("https://h/m", "f.gz") == download.mirror_url("https://h/m/", "f.gz") == "https://h/m/f.gz"


# ---------------------------------------------------------------- retries
def test_transient_failures_are_retried_with_doubling_waits(mirror_server: MirrorServer, tmp_path: Path,
                                                            waits: list[float]) -> None:
    mirror_server.serve("a", LABELS_GZ, "flaky", gzip.compress(_labels_content()), fails=2, status=503)
    path = _fetch(mirror_server, tmp_path, "a", limits=replace(FAST, retries=3, backoff_s=0.5))
    assert gzip.decompress(path.read_bytes()) == _labels_content()
    assert mirror_server.requests == [f"/a/{LABELS_GZ}"] * 3
    assert waits == [0.5, 1.0]  # waited before the 2nd and 3rd tries; the 3rd worked
    assert _leftovers(tmp_path) == [LABELS_GZ]


def test_retries_used_up_move_on_to_the_next_mirror(mirror_server: MirrorServer, tmp_path: Path,
                                                    waits: list[float]) -> None:
    mirror_server.serve("a", LABELS_GZ, "flaky", fails=99, status=502)
    mirror_server.serve("b", LABELS_GZ, "drop", gzip.compress(_labels_content())[:20])
    with pytest.raises(MnistlabError) as info:
        _fetch(mirror_server, tmp_path / "dest", "a", "b", limits=replace(FAST, retries=2, backoff_s=1))
    assert mirror_server.requests == [f"/a/{LABELS_GZ}"] * 3 + [f"/b/{LABELS_GZ}"] * 3
    a, b = _reasons(info)
    assert a == f"{mirror_server.mirror('a')}{LABELS_GZ}: HTTP 502 (3 tries)"
    assert b.startswith(f"{mirror_server.mirror('b')}{LABELS_GZ}: connection closed after 20 of") and b.endswith("(3 tries)")
    assert waits == [1, 2, 1, 2] and _leftovers(tmp_path / "dest") == []


@pytest.mark.parametrize("status", [404, 403])
def test_permanent_http_errors_are_not_retried(mirror_server: MirrorServer, tmp_path: Path, waits: list[float],
                                               status: int) -> None:
    mirror_server.serve("a", LABELS_GZ, "flaky", fails=99, status=status)
    mirror_server.serve("b", LABELS_GZ, "ok", gzip.compress(_labels_content()))
    _fetch(mirror_server, tmp_path, "a", "b", limits=replace(FAST, retries=5))
    assert mirror_server.requests == [f"/a/{LABELS_GZ}", f"/b/{LABELS_GZ}"] and waits == []


def test_wrong_content_is_not_retried(mirror_server: MirrorServer, tmp_path: Path, waits: list[float]) -> None:
    mirror_server.serve("a", LABELS_GZ, "ok", gzip.compress(_labels_content()[:-1] + b"\x05"))
    with pytest.raises(MnistlabError, match="content SHA-256"):
        _fetch(mirror_server, tmp_path, "a", limits=replace(FAST, retries=5))
    assert mirror_server.requests == [f"/a/{LABELS_GZ}"] and waits == []


def test_retry_delays_double() -> None:
    assert download.retry_delays(Limits(retries=4, backoff_s=1.5)) == [1.5, 3.0, 6.0, 12.0]
    assert download.retry_delays(Limits(retries=0)) == []


# ---------------------------------------------------------------- endless, huge, trickling mirrors
def test_size_limit_holds_every_gzip_level_of_incompressible_content() -> None:
    content = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    sizes = [len(gzip.compress(content, compresslevel=level)) for level in range(10)] + [len(content)]
    assert max(sizes) <= download.size_limit(len(content)) <= len(content) * 1.01 + 65536


def test_endless_mirror_is_cut_off_at_the_size_limit_without_holding_the_body(
        mirror_server: MirrorServer, tmp_path: Path) -> None:
    content_bytes = 4 << 20  # a 4 MiB file: the old downloader would have held 4+ MiB in memory
    mirror_server.serve("endless", LABELS_GZ, "endless")
    mirror_server.serve("b", LABELS_GZ, "ok", gzip.compress(_labels_content()))
    tracemalloc.start()
    try:
        with pytest.raises(MnistlabError) as info:
            _fetch(mirror_server, tmp_path / "dest", "endless", content_bytes=content_bytes,
                   limits=replace(FAST, retries=3))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    limit = download.size_limit(content_bytes)
    assert _reasons(info)[0] == f"{mirror_server.mirror('endless')}{LABELS_GZ}: sent more than the {limit} bytes this file can take"
    assert peak < 1 << 20, peak  # streamed to the .part file in chunks
    assert mirror_server.requests[0] == f"/endless/{LABELS_GZ}" and mirror_server.requests.count(f"/endless/{LABELS_GZ}") == 1
    assert _leftovers(tmp_path / "dest") == []


def test_endless_mirror_then_a_good_one(mirror_server: MirrorServer, tmp_path: Path) -> None:
    mirror_server.serve("endless", LABELS_GZ, "endless")
    mirror_server.serve("b", LABELS_GZ, "ok", gzip.compress(_labels_content()))
    _fetch(mirror_server, tmp_path, "endless", "b")
    assert _leftovers(tmp_path) == [LABELS_GZ]


def test_huge_content_length_is_refused_before_reading_the_body(mirror_server: MirrorServer, tmp_path: Path) -> None:
    mirror_server.serve("huge", LABELS_GZ, "huge", length=10**13)
    with pytest.raises(MnistlabError) as info:
        _fetch(mirror_server, tmp_path / "dest", "huge", limits=replace(FAST, retries=3))
    limit = download.size_limit(len(_labels_content()))
    assert _reasons(info) == [f"{mirror_server.mirror('huge')}{LABELS_GZ}: announces 10000000000000 bytes, "
                              f"more than the {limit} this file can take"]
    assert mirror_server.requests == [f"/huge/{LABELS_GZ}"]  # not retried: it will not shrink
    assert _leftovers(tmp_path / "dest") == []


def test_trickling_mirror_fails_at_the_deadline_and_leaves_nothing(mirror_server: MirrorServer, tmp_path: Path) -> None:
    # One byte every 10 ms of 60,000 announced: ten minutes to finish, but each read gets a byte
    # long before the 30 s socket timeout, so only the whole-file deadline can stop it.
    mirror_server.serve("slow", LABELS_GZ, "trickle", length=60_000)
    mirror_server.serve("b", LABELS_GZ, "ok", gzip.compress(_labels_content()))
    limits = Limits(deadline_s=0.3, retries=3, backoff_s=0, timeout_s=30)
    with pytest.raises(MnistlabError) as info:
        _fetch(mirror_server, tmp_path / "dest", "slow", limits=limits)
    reason, = _reasons(info)
    assert reason.startswith(f"{mirror_server.mirror('slow')}{LABELS_GZ}: too slow: ")
    assert reason.endswith(" of 60000 bytes after the 0.3 s deadline (--download-deadline)")
    assert mirror_server.requests == [f"/slow/{LABELS_GZ}"]  # a slow mirror is not asked again
    assert _leftovers(tmp_path / "dest") == []
    _fetch(mirror_server, tmp_path / "dest", "slow", "b", limits=limits)  # the next mirror is used
    assert _leftovers(tmp_path / "dest") == [LABELS_GZ]


# ---------------------------------------------------------------- progress
def _wait_for(buffer: io.StringIO, text: str) -> None:
    """Wait until the progress display has drawn ``text`` (10 s safety net)."""
    ready = threading.Event()
    for _ in range(1000):
        if text in buffer.getvalue():
            return
        ready.wait(0.01)
    raise AssertionError(f"progress never showed {text!r}: {buffer.getvalue()[-300:]!r}")


def test_progress_shows_bytes_and_rate_on_a_terminal(mirror_server: MirrorServer, tmp_path: Path, monkeypatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(download, "_console", lambda: Console(file=screen, force_terminal=True, width=150))
    from mnistlab import idx

    content = idx.encode_idx(np.random.default_rng(1).integers(0, 256, 30_000, dtype=np.uint8))
    body = gzip.compress(content, compresslevel=0)
    first = -(-len(body) // 3)  # the first of the three parts the route sends
    gates = [threading.Event(), threading.Event()]
    mirror_server.serve("a", LABELS_GZ, "ok", body, gates=gates)
    worker = threading.Thread(target=lambda: download.download_file(
        LABELS_GZ, tmp_path, [mirror_server.mirror("a")], _sha(content), len(content), FAST, progress=True))
    worker.start()
    try:
        _wait_for(screen, f"{LABELS_GZ} from 127.0.0.1")
        _wait_for(screen, f"{first / 1000:.1f}/{len(body) / 1000:.1f} kB")  # bytes so far, of the total
        gates[0].set()
        _wait_for(screen, "kB/s")  # two samples: a rate
    finally:
        for gate in gates:
            gate.set()
        worker.join(20)
    assert (tmp_path / LABELS_GZ).read_bytes() == body


def test_no_progress_off_a_terminal(mirror_server: MirrorServer, tmp_path: Path, capfd, monkeypatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):  # rich's overrides
        monkeypatch.delenv(name, raising=False)
    mirror_server.serve("a", LABELS_GZ, "ok", gzip.compress(_labels_content()))
    _fetch(mirror_server, tmp_path, "a", progress=True)
    assert capfd.readouterr() == ("", "")


# ---------------------------------------------------------------- local problems
def test_unwritable_destination_is_one_clear_error(mirror_server: MirrorServer, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MnistlabError, match=rf"^{blocker / 'sub'}: cannot create the folder .*--cache-dir$"):
        _fetch(mirror_server, blocker / "sub", "a")
    assert mirror_server.requests == []  # nothing asked of a mirror


def test_interrupted_download_leaves_nothing(mirror_server: MirrorServer, tmp_path: Path, monkeypatch) -> None:
    mirror_server.serve("a", LABELS_GZ, "ok", gzip.compress(_labels_content()))

    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _fetch(mirror_server, tmp_path, "a")
    assert _leftovers(tmp_path) == []


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
        tiny_mnist, isolated_data_env: Path, closed_port_url: str, monkeypatch, waits: list[float]) -> None:
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_mnist.facts)
    with pytest.raises(MnistlabError) as info:
        data.load(DataConfig(dataset="tiny", mirrors=(closed_port_url,)))
    message = str(info.value)
    assert closed_port_url in message and "refused" in message and "(3 tries)" in message
    assert waits == [1.0, 2.0]  # the default: two retries after 1 s and 2 s
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

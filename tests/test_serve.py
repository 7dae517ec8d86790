"""The HTTP server, tested over real HTTP on loopback: answers, every refusal, the page, batching,
and clients that try to hold it (slow, huge headers, costly pictures, foreign pages).

Most tests serve a tiny untrained model (answers are checked against the same model called
directly, and ``seen`` against ``preprocess.py``); the slow test serves the trained one. Servers
run as ``mnistlab serve`` runs them (``serve.uvicorn_config``: GuardedProtocol and its deadlines).
No test depends on timing: each waits for an observed event (a status, a closed connection, a
count in /health) with a generous safety timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import _models
from _models import FOUR, SEVEN, draw, encode, png_header_only
from mnistlab import cli, preprocess, serve
from mnistlab.errors import MnistlabError
from mnistlab.runs import load_predictor

pytestmark = pytest.mark.timeout(120)
LIMIT = 200_000  # bytes: the test server's body limit, small so the tests send little
SAFETY_S = 60.0  # the longest any wait for an event may take before the test fails


class Served:
    """``app`` served by uvicorn as ``serve.serve`` configures it, on a free loopback port, in a
    thread; ``url`` and ``port`` when up, ``state`` is uvicorn's (connections, tasks)."""

    def __init__(self, app, config: serve.ServeConfig) -> None:
        import uvicorn

        self.sock = serve.listening_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # log_config=None: uvicorn's records go to pytest's log capture (caplog), not to a stream
        # of whichever test happened to create the server
        self.server = uvicorn.Server(serve.uvicorn_config(app, config, log_level="warning", log_config=None))
        self.state = self.server.server_state

    def __enter__(self) -> "Served":
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), "the server to start")
        assert self.server.started, "the test server did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def wait_for(condition, what: str, timeout: float = SAFETY_S) -> None:
    """Poll ``condition()`` until true; fail after ``timeout`` s (a safety net, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=SAFETY_S)
    if data:
        sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout is the safety net)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return received


def answers_health(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=SAFETY_S).status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


def page_png() -> bytes:
    """A 7 as the page sends it: drawn on the 280 x 280 canvas, downscaled to 56 x 56, RGBA."""
    from PIL import Image

    canvas = draw(SEVEN, size=(280, 280), mode="RGBA", paper=(255, 255, 255, 255), ink=(0, 0, 0, 255))
    return encode(canvas.resize((56, 56), Image.Resampling.BOX), "PNG")


@pytest.fixture(scope="module")
def tiny_predictor(tmp_path_factory):
    return load_predictor(_models.untrained_run(tmp_path_factory.mktemp("serve") / "tiny"))


@pytest.fixture(scope="module")
def served(tiny_predictor):
    config = serve.ServeConfig(max_body_bytes=LIMIT, max_pixels=1_000_000, batch_wait_ms=5)
    with Served(serve.create_app(tiny_predictor, config), config) as running:
        yield running


@pytest.fixture(scope="module")
def server(served):
    return served.url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    return body["error"]


# ---------------------------------------------------------------------------- answers
def test_health_and_model(client: httpx.Client, tiny_predictor):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"
    model = client.get("/model").json()
    assert model == json.loads(json.dumps(tiny_predictor.info()))
    assert {k: model[k] for k in ("name", "format", "parameters", "test_accuracy", "test_loss")} == {
        "name": "tiny", "format": "keras", "parameters": 7850, "test_accuracy": 0.1, "test_loss": 2.3}


@pytest.mark.parametrize("which", ["page's 56 x 56, on the event loop", "280 x 280, in the pool"])
def test_predict_a_png_body(client: httpx.Client, tiny_predictor, which: str):
    picture = page_png() if which.startswith("page") else encode(draw(SEVEN), "PNG")
    assert (serve.picture_pixels(picture) <= serve.INLINE_PIXELS) == which.startswith("page")
    answer = client.post("/predict", content=picture, headers={"content-type": "image/png"}).json()
    assert set(answer) == {"digit", "probability", "probabilities", "top", "unsure", "candidates", "model", "seen"}
    seen = preprocess.preprocess(picture)  # the server must apply the very same pipeline
    assert answer["seen"] == np.round(seen.ravel() * 255).astype(int).tolist()
    expected = tiny_predictor.probabilities(seen[None])[0]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=2e-6)
    assert answer["digit"] == int(expected.argmax()) == answer["top"][0]["digit"]
    assert answer["model"] == "tiny" and sum(answer["probabilities"]) == pytest.approx(1, abs=1e-4)
    from mnistlab.predict import answer as said  # the same unsure rule as `mnistlab predict`
    assert (answer["unsure"], answer["candidates"]) == (said(expected)["unsure"], said(expected)["candidates"])


def test_multipart_upload_gives_the_same_answer(client: httpx.Client):
    picture = encode(draw(FOUR, mode="RGB"), "JPEG", quality=90)
    raw = client.post("/predict", content=picture, headers={"content-type": "image/jpeg"}).json()
    form = client.post("/predict", files={"image": ("four.jpg", picture, "image/jpeg")}).json()
    assert form == raw


@pytest.mark.parametrize("shape", [(28, 28), (784,)])
def test_predict_json_pixels(client: httpx.Client, tiny_predictor, shape):
    pixels = np.random.default_rng(0).random(shape).round(3)
    answer = client.post("/predict", json={"pixels": pixels.tolist()}).json()
    assert answer["seen"] == np.round(pixels.ravel() * 255).astype(int).tolist()
    expected = tiny_predictor.probabilities(pixels.reshape(1, 28, 28, 1))[0]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=2e-6)


def test_probabilities_are_the_models_calibrated_ones(tiny_predictor):
    import dataclasses

    warm = dataclasses.replace(tiny_predictor, temperature=2.5)  # as a run's calibration.json would set it
    pixels = np.random.default_rng(1).random(784).round(3)
    config = serve.ServeConfig()
    with Served(serve.create_app(warm, config), config) as running:
        answer = httpx.post(running.url + "/predict", json={"pixels": pixels.tolist()}, timeout=30).json()
    logits = tiny_predictor.logits(pixels.reshape(1, 28, 28, 1))[0]
    expected = np.exp(logits / 2.5 - (logits / 2.5).max())
    np.testing.assert_allclose(answer["probabilities"], expected / expected.sum(), atol=2e-6)


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2, 3]", 'expected an object {"pixels"'),
    (b'{"image": []}', 'expected an object {"pixels"'),
    (json.dumps({"pixels": [0.5] * 783}).encode(), r"shape \(783,\)"),
    (json.dumps({"pixels": [[0.5] * 28] * 27 + [[0.5] * 27]}).encode(), "ragged rows"),
    (json.dumps({"pixels": [[0.5] * 784]}).encode(), r"shape \(1, 784\)"),
    (json.dumps({"pixels": ["0.5"] * 784}).encode(), "str"),
    (json.dumps({"pixels": [255] * 784}).encode(), r"expected \[0, 1\]"),
    (json.dumps({"pixels": [-0.1] + [0.0] * 783}).encode(), r"expected \[0, 1\]"),
    (b'{"pixels": [NaN' + b", 0" * 783 + b"]}", "not valid JSON"),
])
def test_bad_json_is_a_400(client: httpx.Client, body: bytes, message: str):
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert re.search(message, error_of(response, 400))


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "image/svg+xml", None])
def test_other_content_types_are_a_415(client: httpx.Client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/predict", content=b"<svg/>", headers=headers)
    assert "expected application/json, multipart/form-data or an image type" in error_of(response, 415)


def test_bodies_over_the_limit_are_a_413(client: httpx.Client):
    big = b"\x00" * (LIMIT + 1)
    assert "expected at most 200,000" in error_of(
        client.post("/predict", content=big, headers={"content-type": "image/png"}), 413)

    def chunks():  # no Content-Length: the server counts as it reads
        for _ in range(30):
            yield b"\x00" * 10_000

    assert "expected at most 200,000" in error_of(
        client.post("/predict", content=chunks(), headers={"content-type": "image/png"}), 413)
    huge = b"\x00" * (serve.DRAIN_FACTOR * LIMIT + 1)  # declared too large: refused unread
    with httpx.Client(base_url=client.base_url, timeout=30) as fresh:
        try:
            response = fresh.post("/predict", content=huge, headers={"content-type": "image/png"})
        except httpx.TransportError:  # the server may close before the client finishes sending
            return
    assert response.status_code == 413


def test_decompression_bombs_are_a_413(client: httpx.Client):
    response = client.post("/predict", content=png_header_only(2000, 1000), headers={"content-type": "image/png"})
    assert "2,000,000 pixels; expected at most 1,000,000" in error_of(response, 413)
    response = client.post("/predict", files={"image": ("bomb.png", png_header_only(100_000, 100_000), "image/png")})
    assert "refused" in error_of(response, 413)


def test_unreadable_and_empty_pictures_are_a_400(client: httpx.Client):
    for body in (b"GIF89a broken", encode(draw(), "PNG")[:300], b"%!PS-Adobe-3.0 EPSF-3.0\n"):
        error_of(client.post("/predict", content=body, headers={"content-type": "image/png"}), 400)
    assert "empty picture" in error_of(client.post("/predict", content=b"",
                                                   headers={"content-type": "image/png"}), 400)
    error_of(client.post("/predict", data={"note": "a form without a file"}), 415)  # urlencoded
    response = client.post("/predict", content=b"--x\r\n\r\n", headers={"content-type": "multipart/form-data; boundary=x"})
    error_of(response, 400)


def test_a_picture_without_a_digit_is_a_422(client: httpx.Client):
    blank = encode(draw([], size=(200, 200)), "PNG")
    assert "no digit found" in error_of(client.post("/predict", content=blank,
                                                    headers={"content-type": "image/png"}), 422)


def test_unknown_routes_and_methods_answer_json(client: httpx.Client):
    error_of(client.get("/nope"), 404)
    error_of(client.get("/predict"), 405)
    error_of(client.delete("/model"), 405)


def test_json_with_a_wrong_nesting_is_refused_before_conversion(client: httpx.Client, monkeypatch):
    lists = b'{"pixels": [' + b",".join([b"[0]"] * 40_000) + b"]}"  # 160 KB: parsed off the event loop
    assert serve.JSON_INLINE_BYTES < len(lists) < LIMIT
    response = client.post("/predict", content=lists, headers={"content-type": "application/json"})
    assert "got shape (40000, 1)" in error_of(response, 400)
    with pytest.raises(serve.ApiError, match="JSON body of 262,145 bytes") as refused:
        serve.pixels_from_json(b" " * (serve.MAX_JSON_BYTES + 1))  # refused before parsing
    assert refused.value.status == 413
    converted = []
    real = np.asarray
    monkeypatch.setattr(np, "asarray", lambda *a, **k: converted.append(1) or real(*a, **k))
    for wrong in ([[0.0]] * 28, [[0.0] * 28] * 27 + [0.0], {"a": 1}, [[0]] * 45_000):
        with pytest.raises(serve.ApiError, match="got shape|ragged rows"):
            serve.pixels_from_json(json.dumps({"pixels": wrong}).encode())
    assert not converted  # the nesting was checked on the lists themselves


def test_picture_sizes_are_read_from_headers_alone():
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        assert serve.picture_pixels(encode(draw(size=(123, 45), mode="RGB"), fmt)) == 123 * 45, fmt
    assert serve.picture_pixels(png_header_only(100_000, 100_000)) == 10**10  # nothing decoded
    for junk in (b"", b"\x89PNG\r\n\x1a\n", b"GIF89a broken", b"%!PS-Adobe-3.0"):
        assert serve.picture_pixels(junk) is None


# ---------------------------------------------------------------------------- who may ask
def test_host_names(monkeypatch):
    assert serve.host_name("[::1]:8000") == "::1" and serve.host_name("Digits.Example:80") == "digits.example"
    assert serve.host_name("localhost.") == "localhost" and serve.host_name("127.0.0.1") == "127.0.0.1"
    monkeypatch.setattr(serve.socket, "gethostname", lambda: "Lab-PC")
    config = serve.ServeConfig(host="0.0.0.0", allowed_hosts="digits.example, api.example:8443")
    assert serve.allowed_host_names(config) == {"localhost", "lab-pc", "digits.example", "api.example"}
    guard = serve.Guard(None, None, config)

    def scope(method: str = "GET", **headers: str) -> dict:
        return {"method": method, "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}

    for host in ("127.0.0.1:8000", "[::1]:8000", "10.1.2.3", "localhost:8000", "LAB-PC:8000", "digits.example"):
        assert guard.refusal(scope(host=host)) is None, host
    assert guard.refusal(scope()) is None  # no Host (HTTP/1.0 clients): nothing to rebind
    refused = guard.refusal(scope(host="evil.example:8000"))
    assert refused.status == 400 and "--allowed-hosts" in str(refused)
    assert serve.Guard(None, None, serve.ServeConfig(allowed_hosts="*")).refusal(scope(host="evil.example")) is None
    own = "http://127.0.0.1:8000"
    assert guard.refusal(scope("POST", host="127.0.0.1:8000", origin=own)) is None
    assert guard.refusal(scope("POST", host="127.0.0.1:8000")) is None  # curl and scripts send no Origin
    assert guard.refusal(scope("GET", host="127.0.0.1:8000", origin="http://evil.example")) is None
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999", "http://localhost:8000"):
        assert guard.refusal(scope("POST", host="127.0.0.1:8000", origin=origin)).status == 403, origin
    for site in ("cross-site", "same-site"):
        assert guard.refusal(scope("POST", host="127.0.0.1:8000", **{"sec-fetch-site": site})).status == 403
    assert guard.refusal(scope("POST", host="127.0.0.1:8000", origin=own, **{"sec-fetch-site": "same-origin"})) is None


def test_foreign_hosts_and_pages_are_refused_over_http(client: httpx.Client, server: str):
    assert "not a name of this server" in error_of(client.get("/", headers={"host": "rebound.example"}), 400)
    response = client.post("/predict", files={"image": ("7.png", page_png(), "image/png")},
                           headers={"origin": "http://evil.example"})  # a form POST needs no preflight
    assert "refused" in error_of(response, 403)
    same = client.post("/predict", content=page_png(), headers={"content-type": "image/png", "origin": server})
    assert same.status_code == 200
    assert client.get("/health", headers={"host": f"localhost:{server.rsplit(':', 1)[1]}"}).status_code == 200


# ---------------------------------------------------------------------------- clients that try to hold the server
@pytest.fixture(scope="module")
def strict(tiny_predictor):
    """A server with short deadlines: each test waits for the server to act on them."""
    config = serve.ServeConfig(header_timeout=0.3, body_timeout=0.3, max_header_bytes=4096)
    with Served(serve.create_app(tiny_predictor, config), config) as running:
        yield running


@pytest.mark.parametrize("sent, part", [
    (b"", "line and headers"),  # connects and says nothing
    (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n", "line and headers"),
    (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 500\r\n\r\n"
     b"\x89PNG", "body"),
    (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"1\r\n\x89\r\n", "body"),  # a chunked body at a byte now and then
])
def test_slow_clients_are_answered_408_and_closed(strict, sent: bytes, part: str):
    answer = read_until_closed(connect(strict.port, sent))
    assert answer.startswith(b"HTTP/1.1 408 ") and f"request {part} not received".encode() in answer, answer


def test_huge_headers_are_refused_unread(strict):
    sock = connect(strict.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 5000)
    answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"--max-header-bytes" in answer, answer
    assert httpx.get(strict.url + "/health", headers={"x-fine": "b" * 3000}).status_code == 200


def test_normal_requests_are_answered_while_slow_clients_fill_the_connections(tiny_predictor):
    config = serve.ServeConfig(max_connections=8, header_timeout=SAFETY_S * 3)  # deadlines play no part here
    with Served(serve.create_app(tiny_predictor, config), config) as running:
        slow = [connect(running.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(20)]
        with httpx.Client(base_url=running.url, timeout=SAFETY_S) as visitor:  # one more connection
            for _ in range(3):
                assert visitor.post("/predict", content=page_png(), headers={"content-type": "image/png"}).status_code == 200
            closed: set[int] = set()

            def count_closed() -> bool:
                readable, _, _ = select.select([s for i, s in enumerate(slow) if i not in closed], [], [], 0)
                closed.update(slow.index(s) for s in readable)
                return len(closed) >= 13

            wait_for(count_closed, "13 slow clients to be closed")
            assert closed == set(range(13))  # the longest-waiting went first; 7 slow ones still connected
        for s in slow:
            s.close()


def test_connections_fit_the_open_files_limit(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert serve.connection_cap(1000) == 1024 - serve.NOFILE_RESERVE
    assert serve.connection_cap(100) == 100
    monkeypatch.undo()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    serve.raise_open_files_limit(2000)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= min(2000 + serve.NOFILE_RESERVE, hard, max(soft, 2064))


@pytest.fixture
def gate(monkeypatch):
    """Pictures over BIG_PIXELS wait in their thread until ``gate.set()``: a costly photo, held
    still for as long as the test needs. Opened at the end whatever happens."""
    opened = threading.Event()
    real = serve.model_input

    def held(picture: bytes, max_pixels: int):
        if serve.picture_pixels(picture) > serve.BIG_PIXELS:
            opened.wait(SAFETY_S)
        return real(picture, max_pixels)

    monkeypatch.setattr(serve, "model_input", held)
    yield opened
    opened.set()


def test_costly_pictures_cannot_hold_up_the_rest(tiny_predictor, gate):
    config = serve.ServeConfig(max_waiting_pictures=6, picture_timeout=SAFETY_S * 2)
    big = encode(draw(SEVEN, size=(1100, 1000)), "PNG")  # 1.1 MP: one at a time, in the pool
    medium = encode(draw(FOUR, size=(200, 200)), "PNG")  # in the pool, on the other thread
    pending = lambda c: c.get("/health").json()["pictures_pending"]  # noqa: E731

    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=SAFETY_S) as c:
            sync = httpx.Client(base_url=url, timeout=SAFETY_S)
            photos = [asyncio.create_task(c.post("/predict", content=big, headers={"content-type": "image/png"}))
                      for _ in range(5)]
            while pending(sync) < 5:
                await asyncio.sleep(0.01)
            for body in (page_png(), medium):
                assert (await c.post("/predict", content=body, headers={"content-type": "image/png"})).status_code == 200
            assert (await c.post("/predict", json={"pixels": [0.5] * 784})).status_code == 200
            assert pending(sync) == 5 and not any(p.done() for p in photos)  # the photos are still held
            photos.append(asyncio.create_task(c.post("/predict", content=big, headers={"content-type": "image/png"})))
            while pending(sync) < 6:
                await asyncio.sleep(0.01)
            busy = await c.post("/predict", content=medium, headers={"content-type": "image/png"})
            assert "busy: 6 pictures are waiting" in error_of(busy, 503) and busy.headers["retry-after"] == "1"
            gate.set()
            assert [r.status_code for r in await asyncio.gather(*photos)] == [200] * 6
            assert pending(sync) == 0
            sync.close()

    with Served(serve.create_app(tiny_predictor, config), config) as running:
        asyncio.run(scenario(running.url))


def test_a_picture_past_its_deadline_is_a_503(tiny_predictor, gate):
    config = serve.ServeConfig(picture_timeout=0.3)
    big = encode(draw(SEVEN, size=(1100, 1000)), "PNG")
    with Served(serve.create_app(tiny_predictor, config), config) as running, \
            httpx.Client(base_url=running.url, timeout=SAFETY_S) as c:
        late = c.post("/predict", content=big, headers={"content-type": "image/png"})  # held until gate.set()
        assert "not decoded within 0.3 s (--picture-timeout)" in error_of(late, 503)
        gate.set()
        assert c.post("/predict", content=big, headers={"content-type": "image/png"}).status_code == 200


def test_requests_cut_by_the_shutdown_timeout_are_a_503_without_traceback(tiny_predictor, gate, capfd, caplog):
    config = serve.ServeConfig(shutdown_timeout=0.2)
    big = encode(draw(SEVEN, size=(1100, 1000)), "PNG")
    running = Served(serve.create_app(tiny_predictor, config), config).__enter__()
    try:
        request = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                   f"Content-Length: {len(big)}\r\n\r\n").encode() + big
        sock = connect(running.port, request)  # held in the pool until gate.set()
        wait_for(lambda: httpx.get(running.url + "/health").json()["pictures_pending"] == 1, "the picture to be held")
        capfd.readouterr()
        running.server.should_exit = True  # what SIGTERM does
        answer = read_until_closed(sock)
    finally:
        gate.set()
        running.__exit__(None, None, None)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"shutting down" in answer, answer
    assert not running.thread.is_alive()
    err = capfd.readouterr().err
    assert "Traceback" not in err and not [r for r in caplog.records if r.exc_info], err


@pytest.mark.slow
def test_a_real_costly_photo_leaves_small_pictures_answered(tiny_predictor):
    from PIL import Image, ImageDraw

    photo = Image.new("RGBA", (3460, 3460), (255, 255, 255, 0))  # issue 16: 46 KB, 12 MP once decoded
    ImageDraw.Draw(photo).line([(1000, 900), (2500, 900), (1500, 2800)], fill=(0, 0, 0, 255), width=280)
    costly = encode(photo, "PNG")
    config = serve.ServeConfig()

    async def scenario(url: str) -> tuple[list[int], list[int]]:
        async with httpx.AsyncClient(base_url=url, timeout=SAFETY_S * 2) as c:
            photos = [asyncio.create_task(c.post("/predict", content=costly, headers={"content-type": "image/png"}))
                      for _ in range(4)]
            small = [(await c.post("/predict", content=page_png(), headers={"content-type": "image/png"})).status_code
                     for _ in range(10)]
            return small, [r.status_code for r in await asyncio.gather(*photos)]

    with Served(serve.create_app(tiny_predictor, config), config) as running:
        small, photos = asyncio.run(scenario(running.url))
    assert small == [200] * 10 and set(photos) <= {200, 422, 503}, photos


# ---------------------------------------------------------------------------- the page
def test_the_page_and_its_files_are_served_without_outside_resources(client: httpx.Client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for needle in ('<canvas id="pad"', 'id="clear"', 'id="bars"', 'id="seen"', "/static/app.js", "/static/style.css"):
        assert needle in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), "no outside resources"
    assert client.get("/docs").status_code == 404  # FastAPI's docs page pulls from a CDN: off


def test_the_page_is_package_data():
    from importlib import resources

    files = {p.name for p in resources.files("mnistlab").joinpath("static").iterdir()}
    assert {"index.html", "app.js", "style.css"} <= files
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["mnistlab"]


# ---------------------------------------------------------------------------- batching
def test_concurrent_requests_are_batched(server: str):
    pictures = [encode(draw(SEVEN if i % 2 else FOUR, size=(120 + i, 140)), "PNG") for i in range(50)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as c:
            return await asyncio.gather(*(c.post("/predict", content=p, headers={"content-type": "image/png"})
                                          for p in pictures))

    before = httpx.get(f"{server}/health").json()
    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 50
    after = httpx.get(f"{server}/health").json()
    assert after["requests"] - before["requests"] == 50
    assert after["batches"] - before["batches"] < 50 and after["largest_batch"] > 1


def test_micro_batcher_routes_rows_and_errors():
    calls = []

    def model(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if (batch < 0).any():
            raise ValueError("negative pixels")
        return np.repeat(batch.reshape(len(batch), -1)[:, :1], 10, axis=1)  # row i -> its first pixel

    async def run() -> tuple[list, list]:
        batcher = serve.MicroBatcher(model, max_batch=8, wait_s=0.01)
        batcher.start()
        try:
            rows = await asyncio.gather(*(batcher.submit(np.full((28, 28, 1), i, np.float32)) for i in range(20)))
            failed = await asyncio.gather(*(batcher.submit(np.full((28, 28, 1), -1, np.float32)) for _ in range(3)),
                                          return_exceptions=True)
        finally:
            await batcher.stop()
        return rows, failed

    rows, failed = asyncio.run(run())
    assert [int(r[0]) for r in rows] == list(range(20))
    assert calls[:3] == [8, 8, 4] and all(isinstance(f, ValueError) for f in failed)
    with pytest.raises(MnistlabError, match="--max-batch 0"):
        serve.MicroBatcher(model, 0, 0.0)


def test_batches_are_padded_to_a_few_sizes_with_little_padding():
    """A handful of shapes (each warmed up at start-up, each one LiteRT interpreter kept), and at
    most a third of any batch is padding."""
    from mnistlab import inference

    batcher = serve.MicroBatcher(lambda x: x, max_batch=64, wait_s=0.0)
    assert batcher.sizes() == [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert len(batcher.sizes()) + 2 <= inference.SIZES_KEPT  # + the 1,024 batches of evaluation and a rest
    for n in range(1, 65):
        size = batcher.padded_size(n)
        assert size in batcher.sizes() and n <= size and 3 * (size - n) <= size, n
    assert serve.MicroBatcher(lambda x: x, max_batch=20, wait_s=0.0).sizes()[-1] == 20


def test_serve_agrees_with_preprocess_on_the_input_size():
    assert serve.SIDE == preprocess.SIDE and serve.PIXELS == preprocess.SIDE ** 2  # serve does not import it up front


def test_loopback_by_default():
    assert serve.ServeConfig().host == "127.0.0.1"
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.2")


@pytest.mark.timeout(360)  # three processes load TensorFlow: minutes on a busy 2-core machine
def test_several_worker_processes_serve_one_port(tiny_predictor):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mnistlab.cli", "serve", str(tiny_predictor.source),
                               "--port", str(port), "--workers", "2"], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.3)
        children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and
                    (p / "stat").exists() and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(server.pid)]
        pixels = np.random.default_rng(3).random((6, 784)).astype(np.float32)
        expected = tiny_predictor.logits(pixels.reshape(-1, 28, 28, 1)).argmax(1).tolist()
        answers = []
        for row in pixels:  # a new connection each: the workers share the listening socket
            answer = httpx.post(url + "/predict", json={"pixels": row.tolist()}, timeout=30).json()
            answers.append(answer["digit"])
        assert answers == expected
        pids: set[int] = set()  # each worker listens on its own socket of the port: both get new connections
        deadline = time.monotonic() + 120
        while len(pids) < 2:
            assert time.monotonic() < deadline, f"only worker(s) {pids} answered"
            pids.add(httpx.get(url + "/health", timeout=5).json()["pid"])
        assert pids <= set(children)  # answered by workers, not the parent
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:  # gone
            return False

    deadline = time.monotonic() + 10
    while any(map(alive, children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, children)), "worker processes outlived the server"
    log = server.stderr.read()
    assert "with 2 worker processes" in log
    assert "cuInit" not in log and "cuda" not in log.lower(), log  # TensorFlow's start-up noise, per worker
    assert "died" not in log, log  # no worker killed for missing uvicorn's ping while TensorFlow loaded


def test_a_busy_port_is_one_line_and_exit_status_2(tiny_predictor, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = cli.main(["serve", str(tiny_predictor.source), "--port", str(port)])
    err = capsys.readouterr().err
    assert status == 2 and err == f"error: port {port} is in use on 127.0.0.1 (another server?); " \
                                  "stop it or pick another with --port\n", err  # and no "serving ... on"


@pytest.mark.timeout(300)
def test_sigterm_stops_the_server_while_slow_clients_hold_connections(tiny_predictor):
    server = subprocess.Popen([sys.executable, "-m", "mnistlab.cli", "serve", str(tiny_predictor.source), "--port", "0",
                               "--header-timeout", "600", "--body-timeout", "600"],  # only the shutdown may end them
                              stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:  # "serving tiny (keras) on http://127.0.0.1:PORT/"
            if found := re.search(r"serving .* on http://127\.0\.0\.1:(\d+)/", line):
                port = int(found.group(1))
                break
        else:
            pytest.fail(f"the server exited with {server.wait()} before serving")
        wait_for(lambda: answers_health(f"http://127.0.0.1:{port}"), "the server to answer")
        head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        clients = [connect(port, head), connect(port, head + b"Content-Length: 1000\r\n\r\n\x89PNG")]
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=SAFETY_S).status_code == 200  # they are in
        server.send_signal(signal.SIGTERM)
        answers = [read_until_closed(c) for c in clients]  # closed by the server, not by their deadlines
        server.wait(timeout=SAFETY_S)
    finally:
        server.kill()
        server.wait()
    # Told (503) if the server had read their bytes, else just closed; either way, not waited for.
    assert all(a == b"" or a.startswith(b"HTTP/1.1 503 ") and b"shutting down" in a for a in answers), answers
    assert "Traceback" not in server.stderr.read()


@pytest.mark.skipif(not serve.balances_connections(), reason="SO_REUSEPORT shares connections out on Linux only")
def test_worker_sockets_share_the_ports_connections_out():
    """uvicorn pickles its sockets to each worker; ``WorkerSocket`` unpickles as a socket of the
    worker's own on the same port (SO_REUSEPORT), and the kernel spreads new connections over
    them: 64 connections, counted in each worker's accept queue (all 64 in one: odds 2**-63)."""
    parent = serve.listening_socket("127.0.0.1", 0, reuse_port=True)
    address = parent.getsockname()
    workers = [pickle.loads(pickle.dumps(serve.WorkerSocket(parent.family, address))) for _ in range(2)]
    clients = []
    try:
        for worker in workers:
            assert worker.getsockname() == address
            worker.listen(128)
            worker.setblocking(False)
        clients = [socket.create_connection(address, timeout=10) for _ in range(64)]
        counts = [0, 0]
        deadline = time.monotonic() + 30
        while sum(counts) < 64 and time.monotonic() < deadline:  # until every handshake is queued
            ready, _, _ = select.select(workers, [], [], 1)
            for worker in ready:
                with contextlib.suppress(BlockingIOError):
                    worker.accept()[0].close()
                    counts[workers.index(worker)] += 1
        assert sum(counts) == 64 and min(counts) > 0, counts
    finally:
        for each in [*clients, *workers, parent]:
            each.close()


def test_workers_must_be_positive(tiny_predictor):
    with pytest.raises(MnistlabError, match="--workers 0"):
        serve.serve(str(tiny_predictor.source), serve.ServeConfig(workers=0))


# ---------------------------------------------------------------------------- a trained model
@pytest.mark.slow
def test_trained_model_over_http(real_mnist, tmp_path_factory):
    predictor = load_predictor(_models.trained_run(real_mnist, tmp_path_factory))
    rng = np.random.default_rng(7)
    with _models.RunningServer(serve.create_app(predictor)) as running, \
            httpx.Client(base_url=running.url, timeout=30) as c:
        assert c.get("/model").json()["test_accuracy"] > 0.95
        digits = []
        for i in range(20):
            photo = encode(_models.render_digit(real_mnist.test.images[i], rng), "JPEG", quality=80)
            digits.append(c.post("/predict", files={"image": (f"{i}.jpg", photo, "image/jpeg")}).json()["digit"])
        assert (np.array(digits) == real_mnist.test.labels[:20]).mean() >= 0.9
        pixels = real_mnist.test.images[:20].reshape(20, 784)
        answers = [c.post("/predict", json={"pixels": p.tolist()}).json()["digit"] for p in pixels]
        assert answers == predictor.logits(real_mnist.test.images[:20]).argmax(1).tolist()


def test_a_failing_model_is_a_json_500_and_one_log_line(tiny_predictor, capfd, caplog):
    import dataclasses

    def call(images: np.ndarray) -> np.ndarray:
        if images.any():  # the start-up call (all zeros) passes, real pictures fail
            raise RuntimeError("the model fell over\nsecond line of the message")
        return tiny_predictor.call(images)

    failing = dataclasses.replace(tiny_predictor, call=call)
    config = serve.ServeConfig()
    with Served(serve.create_app(failing, config), config) as running:
        capfd.readouterr()
        response = httpx.post(f"{running.url}/predict", json={"pixels": [0.5] * 784}, timeout=30)
        assert httpx.get(f"{running.url}/health").json()["status"] == "ok"  # still serving
        log = capfd.readouterr().err
    assert response.status_code == 500 and response.json() == {"error": "internal error; see the server's log"}
    assert log.splitlines() == ["error: POST /predict: RuntimeError: the model fell over"], log
    assert not [r for r in caplog.records if r.exc_info], caplog.text  # and no traceback through logging


def test_clients_that_hang_up_leave_no_traceback(served, capfd, caplog):
    capfd.readouterr()
    body = json.dumps({"pixels": [0.5] * 784}).encode()
    head = "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    connect(served.port, (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:100]).close()  # mid-body
    connect(served.port, (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body).close()  # before the answer
    sock = connect(served.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.close()
    wait_for(lambda: not served.state.connections and not served.state.tasks, "the server to see the hang-ups")
    assert httpx.get(served.url + "/health").status_code == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"], caplog.text

"""The HTTP server, tested over real HTTP on loopback: answers, every refusal, the page, batching.

Most tests serve a tiny untrained model (answers are checked against the same model called
directly, and ``seen`` against ``preprocess.py``); the slow test serves the trained one.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

import _models
from _models import FOUR, SEVEN, draw, encode, png_header_only
from mnistlab import preprocess, serve
from mnistlab.errors import MnistlabError
from mnistlab.inference import softmax
from mnistlab.runs import load_predictor

pytestmark = pytest.mark.timeout(120)
LIMIT = 200_000  # bytes: the test server's body limit, small so the tests send little


@pytest.fixture(scope="module")
def tiny_predictor(tmp_path_factory):
    return load_predictor(_models.untrained_run(tmp_path_factory.mktemp("serve") / "tiny"))


@pytest.fixture(scope="module")
def server(tiny_predictor):
    config = serve.ServeConfig(max_body_bytes=LIMIT, max_pixels=1_000_000, batch_wait_ms=5)
    with _models.RunningServer(serve.create_app(tiny_predictor, config)) as running:
        yield running.url


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
def test_health_and_model(client: httpx.Client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"
    assert client.get("/model").json() == {"name": "tiny", "format": "keras", "parameters": 7850,
                                           "test_accuracy": 0.1, "test_loss": 2.3}


def test_predict_a_png_body(client: httpx.Client, tiny_predictor):
    picture = encode(draw(SEVEN), "PNG")
    answer = client.post("/predict", content=picture, headers={"content-type": "image/png"}).json()
    assert set(answer) == {"digit", "probability", "probabilities", "top", "model", "seen"}
    seen = preprocess.preprocess(picture)  # the server must apply the very same pipeline
    assert answer["seen"] == np.round(seen.ravel() * 255).astype(int).tolist()
    expected = tiny_predictor.probabilities(seen[None])[0]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=2e-6)
    assert answer["digit"] == int(expected.argmax()) == answer["top"][0]["digit"]
    assert answer["model"] == "tiny" and sum(answer["probabilities"]) == pytest.approx(1, abs=1e-4)


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
    expected = softmax(tiny_predictor.logits(pixels.reshape(1, 28, 28, 1)))[0]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=2e-6)


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
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'mnistlab = ["static/*"]' in pyproject


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


def test_loopback_by_default():
    assert serve.ServeConfig().host == "127.0.0.1"
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.2")


def test_several_worker_processes_serve_one_port(tiny_predictor):
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mnistlab.cli", "serve", str(tiny_predictor.source),
                               "--port", str(port), "--workers", "2"], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 100
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
        pids = {httpx.get(url + "/health", timeout=5).json()["pid"] for _ in range(20)}
        assert pids <= set(children) and len(children) >= 2  # answered by workers, not the parent
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
    assert "with 2 worker processes" in server.stderr.read()


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


def test_a_failing_model_is_a_json_500(tiny_predictor):
    import dataclasses

    def call(images: np.ndarray) -> np.ndarray:
        if images.any():  # the start-up call (all zeros) passes, real pictures fail
            raise RuntimeError("the model fell over")
        return tiny_predictor.call(images)

    failing = dataclasses.replace(tiny_predictor, call=call)
    with _models.RunningServer(serve.create_app(failing)) as running:
        response = httpx.post(f"{running.url}/predict", json={"pixels": [0.5] * 784}, timeout=30)
        assert httpx.get(f"{running.url}/health").json()["status"] == "ok"  # still serving
    assert response.status_code == 500 and response.json() == {"error": "internal error; see the server's log"}

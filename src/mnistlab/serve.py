"""An HTTP server for a trained model (FastAPI on uvicorn), with a page to draw digits on.

- ``POST /predict``: a picture (raw body with an image content type, or multipart with one file
  part) or JSON ``{"pixels": 28 x 28 or 784 numbers in [0, 1]}`` (already MNIST's format) ->
  ``{"digit", "probability", "probabilities", "top", "model", "seen"}`` where ``seen`` is the
  28 x 28 input the model got (784 grey levels 0-255, row by row) after ``preprocess.py``;
- ``GET /health``, ``GET /model`` (name, format, parameters, test accuracy);
- ``GET /``: the drawing page (``static/``: plain HTML/JS/CSS, nothing fetched from elsewhere).

Every refusal is a 4xx with ``{"error": "..."}``: 413 for a body over ``max_body_bytes`` or a
picture over ``max_pixels`` (decompression bombs), 415 for other content types, 400 for
unreadable pictures and malformed JSON, 422 for a picture with no digit in it.

Concurrent requests are batched: each request's picture is decoded and preprocessed on one of
``PREPROCESS_THREADS`` threads, then queued; one model thread takes everything queued (up to
``max_batch``, after waiting ``batch_wait_ms`` for company) and runs it as one batch. While it
runs, the next batch gathers.
HTTP is parsed by httptools on uvloop and JSON by orjson: the Python left per request is small.
``workers=N`` runs N such processes on one listening socket (uvicorn's process manager), so
decoding pictures and speaking HTTP use every core instead of one interpreter's.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations
# (``request: Request``) at runtime, and Request is imported inside create_app to keep
# ``import mnistlab.serve`` (and so the CLI) light.
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

import numpy as np

from mnistlab import preprocess
from mnistlab.config import option
from mnistlab.errors import MnistlabError
from mnistlab.inference import NUM_CLASSES, Predictor, softmax
from mnistlab.predict import top_k
from mnistlab.runs import load_predictor

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/x-ms-bmp", "image/webp",
               "image/tiff", "application/octet-stream")
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
PIXELS = preprocess.SIDE * preprocess.SIDE
PREPROCESS_THREADS = 2  # per server process
SERVE_ENV = "MNISTLAB_SERVE"  # run + config for worker processes (``--workers``)
DRAIN_FACTOR = 4  # read (and drop) up to 4x the body limit, so the client can read the 413
PAGE_HEADERS = {  # the page may load only its own files and talk only to this server
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class ServeConfig:
    """Where to listen and what to accept."""

    host: str = option("127.0.0.1", "address to listen on (loopback: this machine only)")
    port: int = option(8000, "TCP port")
    max_body_bytes: int = option(2_000_000, "largest request body, bytes")
    max_pixels: int = option(12_000_000, "largest picture, width x height pixels (decompression bombs)")
    max_batch: int = option(64, "most requests run as one model call")
    batch_wait_ms: float = option(1.0, "how long a lone request waits for others to batch with, ms")
    access_log: bool = option(False, "log every request")
    workers: int = option(1, "server processes sharing the port, each with its own copy of the model "
                             "(more use more cores for decoding and HTTP; TensorFlow threads are split)")


class ApiError(Exception):
    """A refusal: HTTP status and a one-line message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MicroBatcher:
    """Collect concurrent single-image requests into batches for one model thread.

    ``await submit(image)`` -> that image's logits ``(10,)``. Statistics: ``requests``,
    ``batches``, ``largest_batch``.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int, wait_s: float) -> None:
        if max_batch < 1:
            raise MnistlabError(f"--max-batch {max_batch}: expected a positive integer")
        if wait_s < 0:
            raise MnistlabError(f"--batch-wait-ms {wait_s * 1000}: expected 0 or more")
        self._predict, self._max_batch, self._wait_s = predict, max_batch, wait_s
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.requests = self.batches = self.largest_batch = 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mnistlab-model")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray) -> np.ndarray:
        assert self._queue is not None, "MicroBatcher.start() was not called"
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((image, future))
        return await future

    def padded_size(self, n: int) -> int:
        """Batches are padded to a power of two (at most ``max_batch``): a handful of shapes, each
        warmed up at start-up (``sizes``), instead of oneDNN building kernels for every new size
        while requests wait."""
        return min(1 << (n - 1).bit_length(), self._max_batch)

    def sizes(self) -> list[int]:
        return sorted({self.padded_size(n) for n in range(1, self._max_batch + 1)})

    def _drain(self, items: list) -> None:
        assert self._queue is not None
        while len(items) < self._max_batch and not self._queue.empty():
            items.append(self._queue.get_nowait())

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            self._drain(items)
            if len(items) < self._max_batch and self._wait_s > 0:
                await asyncio.sleep(self._wait_s)
                self._drain(items)
            items = [(image, future) for image, future in items if not future.done()]  # clients gone
            if not items:
                continue
            batch = np.stack([i for i, _ in items])
            padded = np.zeros((self.padded_size(len(items)), *batch.shape[1:]), batch.dtype)
            padded[:len(items)] = batch
            try:
                logits = await loop.run_in_executor(self._executor, self._predict, padded)
            except Exception as exc:  # the model failed: every waiting request gets the error
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.requests += len(items)
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(items))
            for (_, future), row in zip(items, logits):
                if not future.done():
                    future.set_result(row)


# ---------------------------------------------------------------------------- request bodies
async def read_body(request: Any, limit: int) -> bytes:
    """The request body, or ApiError 413 when it is over ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length {declared!r}: expected a number of bytes")
        if int(declared) > DRAIN_FACTOR * limit:
            raise ApiError(413, f"body of {int(declared):,} bytes; expected at most {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise ApiError(413, f"body of {'over ' if size > DRAIN_FACTOR * limit else ''}{size:,} bytes; "
                            f"expected at most {limit:,}")
    return b"".join(chunks)


def pixels_from_json(body: bytes) -> np.ndarray:
    """``{"pixels": 28 x 28 or 784 numbers in [0, 1]}`` -> model input ``(28, 28, 1)`` float32."""
    import orjson

    try:
        payload = orjson.loads(body)  # strict RFC 8259: NaN / Infinity are errors
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise ApiError(400, 'JSON body: expected an object {"pixels": [...]} with 28 x 28 or 784 numbers')
    try:
        pixels = np.asarray(payload["pixels"])
    except ValueError:
        raise ApiError(400, '"pixels": ragged rows; expected 28 rows of 28 numbers, or 784 numbers') from None
    if pixels.dtype.kind not in "iuf" or pixels.size != PIXELS or pixels.shape not in ((PIXELS,), (28, 28)):
        raise ApiError(400, f'"pixels": got shape {pixels.shape} of {pixels.dtype.name}; '
                            f"expected 28 x 28 or 784 numbers in [0, 1]")
    pixels = pixels.astype(np.float32)
    if pixels.min() < 0 or pixels.max() > 1:
        raise ApiError(400, f'"pixels": values from {pixels.min():g} to {pixels.max():g}; expected [0, 1] '
                            "(divide 0-255 grey levels by 255; light digit on dark, as MNIST)")
    return pixels.reshape(preprocess.SIDE, preprocess.SIDE, 1)


async def file_from_multipart(request: Any, body: bytes, limit: int) -> bytes:
    """The one file part of a multipart body (already read and size-checked)."""
    from starlette.requests import Request

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8, max_part_size=limit)
    except Exception as exc:  # malformed multipart, or over the part limits
        raise ApiError(400, f"multipart body: {getattr(exc, 'detail', exc)}") from None
    try:
        for value in form.values():
            if hasattr(value, "read"):
                return await value.read()
    finally:
        await form.close()
    raise ApiError(400, "multipart body has no file part; expected one field (e.g. 'image') holding the picture")


# ---------------------------------------------------------------------------- the app
def create_app(predictor: Predictor, config: ServeConfig = ServeConfig()) -> Any:
    """The FastAPI application serving ``predictor`` under ``config``'s limits."""
    from fastapi import FastAPI, Request
    import orjson
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    batcher = MicroBatcher(predictor.logits, config.max_batch, config.batch_wait_ms / 1000)
    page = resources.files("mnistlab").joinpath("static/index.html").read_text(encoding="utf-8")
    # Pictures are decoded and normalised on a few threads of their own: mostly Python, so more
    # threads (Starlette's pool has 40) only fight over the GIL and stretch every request.
    pictures = ThreadPoolExecutor(PREPROCESS_THREADS, thread_name_prefix="mnistlab-picture")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for size in batcher.sizes():  # trace and build kernels for every batch shape now, not under load
            await run_in_threadpool(predictor.logits, np.zeros((size, 28, 28, 1), np.float32))
        batcher.start()
        yield
        await batcher.stop()
        pictures.shutdown(wait=True)

    app = FastAPI(title="mnistlab", lifespan=lifespan, docs_url=None, redoc_url=None)  # docs pull from a CDN
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:  # a bug or a failing model
        print(f"error: {request.method} {request.url.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return JSONResponse({"error": "internal error; see the server's log"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": predictor.name, "pid": os.getpid(), "requests": batcher.requests,
                "batches": batcher.batches, "largest_batch": batcher.largest_batch}

    @app.get("/model")
    async def model_info() -> dict:
        return predictor.info()

    async def predict(request: Request) -> Response:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in (JSON_TYPE, MULTIPART_TYPE, *IMAGE_TYPES):
            raise ApiError(415, f"content type {kind or '(none)'!r}; expected {JSON_TYPE}, {MULTIPART_TYPE} "
                                f"or an image type ({', '.join(IMAGE_TYPES)})")
        body = await read_body(request, config.max_body_bytes)
        if kind == JSON_TYPE:
            image = pixels_from_json(body)
        else:
            picture = await file_from_multipart(request, body, config.max_body_bytes) if kind == MULTIPART_TYPE else body
            if not picture:
                raise ApiError(400, "empty picture; expected the bytes of a PNG, JPEG, GIF, BMP, WebP or TIFF file")
            try:
                image = await asyncio.get_running_loop().run_in_executor(
                    pictures, preprocess.preprocess, picture, "picture", config.max_pixels)
            except preprocess.NoDigitFound as exc:
                raise ApiError(422, str(exc)) from None
            except preprocess.ImageTooLarge as exc:
                raise ApiError(413, str(exc)) from None
            except MnistlabError as exc:
                raise ApiError(400, str(exc)) from None
        probabilities = softmax(await batcher.submit(image))
        best = top_k(probabilities, 3)
        return Response(orjson.dumps({
            "digit": best[0]["digit"],
            "probability": round(best[0]["probability"], 6),
            "probabilities": [round(float(p), 6) for p in probabilities[:NUM_CLASSES]],
            "top": [{"digit": t["digit"], "probability": round(t["probability"], 6)} for t in best],
            "model": predictor.name,
            "seen": np.round(image.reshape(-1) * 255).astype(np.int64),
        }, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON_TYPE)

    # A plain Starlette route: the handler reads the request itself, so FastAPI's parameter
    # machinery would only add CPU time to the hottest path.
    app.router.add_route("/predict", predict, methods=["POST"])
    app.mount("/static", StaticFiles(packages=[("mnistlab", "static")]), name="static")
    return app


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run: str, config: ServeConfig = ServeConfig()) -> None:
    """Load ``run`` (any form ``predict.load_predictor`` takes) and serve it until Ctrl-C.

    With ``workers > 1``, uvicorn starts that many processes on one listening socket; each one
    builds its app with ``app_from_environment`` (the run and config travel in ``SERVE_ENV``).
    """
    import uvicorn

    if not 0 <= config.port <= 65535:
        raise MnistlabError(f"--port {config.port}: expected 0..65535")
    if config.max_body_bytes < 1 or config.max_pixels < 1:
        raise MnistlabError("--max-body-bytes and --max-pixels: expected positive numbers")
    if config.workers < 1:
        raise MnistlabError(f"--workers {config.workers}: expected a positive integer")
    predictor = load_predictor(run)  # in the parent too: a bad path is one clear error, not one per worker
    if not is_loopback(config.host):
        print(f"warning: listening on {config.host}, reachable from other machines", file=sys.stderr)
    print(f"serving {predictor.name} ({predictor.format}) on http://{config.host}:{config.port}/"
          + (f" with {config.workers} worker processes" if config.workers > 1 else ""), file=sys.stderr)
    options = dict(host=config.host, port=config.port, access_log=config.access_log, log_level="info")
    if config.workers == 1:
        uvicorn.run(create_app(predictor, config), **options)
        return
    del predictor
    os.environ[SERVE_ENV] = json.dumps({"run": str(run), "config": dataclasses.asdict(config)})
    uvicorn.run("mnistlab.serve:app_from_environment", factory=True, workers=config.workers, **options)


def app_from_environment() -> Any:
    """A worker process's app: the run and ServeConfig from ``SERVE_ENV``, TensorFlow's threads
    set to this worker's share of the cores (so workers do not fight over them)."""
    settings = json.loads(os.environ[SERVE_ENV])
    config = ServeConfig(**settings["config"])
    import tensorflow as tf

    threads = max(1, len(os.sched_getaffinity(0)) // config.workers)
    with contextlib.suppress(RuntimeError):  # only possible before TensorFlow's runtime starts
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    return create_app(load_predictor(settings["run"]), config)

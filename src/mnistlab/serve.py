"""An HTTP server for a trained model (uvicorn, FastAPI for the small routes), with a page to draw digits on.

- ``POST /predict``: a picture (raw body with an image content type, or multipart with one file
  part) or JSON ``{"pixels": 28 x 28 or 784 numbers in [0, 1]}`` (already MNIST's format) ->
  ``{"digit", "probability", "probabilities", "top", "unsure", "candidates", "model", "seen"}`` where ``seen`` is the
  28 x 28 input the model got (784 grey levels 0-255, row by row) after ``preprocess.py``;
- ``GET /health`` (status, model, pid, requests, batches, largest_batch, pictures_pending),
  ``GET /model`` (name, format, parameters, test accuracy);
- ``GET /``: the drawing page (``static/``: plain HTML/JS/CSS, nothing fetched from elsewhere).

Every refusal is ``{"error": "..."}`` with a status: 400 unreadable picture, malformed JSON or a
Host this server does not answer to; 403 a POST from a page of another origin; 404 / 405; 408
headers or body not received in time; 413 body over ``max_body_bytes``, JSON over
``MAX_JSON_BYTES`` or picture over ``max_pixels`` (decompression bombs); 415 other content
types; 422 a picture with no digit in it; 431 headers over ``max_header_bytes``; 500 a failing
model (one log line, no traceback); 503 busy (pictures waiting, or not decoded in time).

A request's way through, and why:

1. HTTP is parsed by httptools on uvloop in ``GuardedProtocol``, which adds what uvicorn lacks:
   deadlines for a request's headers and body, a header size limit, and a cap on open
   connections (past it, the connection that has waited longest on its client is closed), so
   slow clients can hold neither a file descriptor for long nor every one of them.
2. ``Guard`` (the ASGI app) answers only to Host names of this server (IP addresses,
   localhost, ``--host``, this machine's name, ``--allowed-hosts``): a web page cannot reach
   the API through DNS rebinding. POSTs whose Origin is another site are refused (a form can
   POST across origins without a preflight). ``POST /predict`` is a plain ASGI handler, the
   hottest path with the least Python; the other routes are FastAPI's.
3. A picture's size is read from its header first (nothing decoded). Small ones (at most
   ``INLINE_PIXELS``, the page's 56 x 56) are normalised right on the event loop: about
   1 ms, less than handing them to a thread costs under load (GIL hand-offs). The rest go to a
   ``PicturePool``: two threads per process, a bounded number waiting (then 503), one big
   picture (over ``BIG_PIXELS``) at a time so photos cannot take every thread, and a deadline
   per request after which it is answered 503 and, if not started, dropped.
4. One model thread runs everything queued as one batch (``MicroBatcher``); while it runs, the
   next batch gathers.

``workers=N`` runs N such processes on one listening socket (uvicorn's process manager), so
decoding pictures and speaking HTTP use every core instead of one interpreter's.
"""

# ``import mnistlab.serve`` stays light (the CLI reads ServeConfig to parse ``mnistlab serve``):
# NumPy, Pillow, the model code, FastAPI and uvicorn are imported where they are used. The
# FastAPI routes in create_app carry no annotations FastAPI would have to resolve.
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import io
import ipaddress
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from mnistlab.config import NON_NEGATIVE, POSITIVE, option, validate
from mnistlab.errors import MnistlabError

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from mnistlab.inference import Predictor

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/x-ms-bmp", "image/webp",
               "image/tiff", "application/octet-stream")
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
SIDE = 28  # the model's input is SIDE x SIDE (preprocess.SIDE; a test checks they agree)
PIXELS = SIDE * SIDE
PICTURE_THREADS = 2  # per server process: normalising is mostly Python, more threads only fight over the GIL
# Pictures up to the page's own size are normalised on the event loop: ~1 ms, 9 ms for the worst
# found (a checkerboard); a thread hand-off would cost more CPU than that under load.
INLINE_PIXELS = 56 * 56
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BIG_PIXELS = 1_000_000  # pictures over this size are decoded one at a time per process
MAX_JSON_BYTES = 262_144  # 784 numbers fit in 20 KB; orjson takes ~7 ms for 256 KB of nested lists
JSON_INLINE_BYTES = 32_768  # bigger JSON bodies (still valid, but odd) are parsed off the event loop
NOFILE_RESERVE = 64  # file descriptors kept for the model, logs and the listening socket
SERVE_ENV = "MNISTLAB_SERVE"  # run + config for worker processes (``--workers``)
# uvicorn kills and restarts a worker that misses its 5 s ping; importing TensorFlow holds the GIL
# for longer than that on a busy machine, so workers died and restarted over and over at start-up.
WORKER_PING_S = 60
DRAIN_FACTOR = 4  # read (and drop) up to 4x the body limit, so the client can read the 413
PAGE_HEADERS = {  # the page may load only its own files and talk only to this server
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # methods a cross-origin page may send (they change nothing)


@dataclass(frozen=True)
class ServeConfig:
    """Where to listen, what to accept, and how long to wait for clients."""

    host: str = option("127.0.0.1", "address to listen on (loopback: this machine only)")
    port: int = option(8000, "TCP port (0: any free one, printed at start)",
                       check=(lambda p: 0 <= p <= 65535, "0..65535"))
    max_body_bytes: int = option(2_000_000, "largest request body, bytes", check=POSITIVE)
    max_pixels: int = option(12_000_000, "largest picture, width x height pixels (decompression bombs)",
                             check=POSITIVE)
    max_batch: int = option(64, "most requests run as one model call", check=POSITIVE)
    batch_wait_ms: float = option(1.0, "how long a lone request waits for others to batch with, ms",
                                  check=NON_NEGATIVE)
    access_log: bool = option(False, "log every request")
    workers: int = option(1, "server processes sharing the port, each with its own copy of the model "
                             "(more use more cores for decoding and HTTP; TensorFlow threads are split)",
                          check=POSITIVE)
    allowed_hosts: str = option("", "more Host names to answer to, comma-separated ('*': any); IP addresses, "
                                    "localhost, --host and this machine's name are always answered")
    header_timeout: float = option(10.0, "seconds a client has to send a request's line and headers", check=POSITIVE)
    body_timeout: float = option(30.0, "seconds a client has to send a request's body", check=POSITIVE)
    keep_alive: float = option(5.0, "seconds an idle connection is kept open", check=POSITIVE)
    max_header_bytes: int = option(16_384, "largest request line + headers, bytes", check=POSITIVE)
    max_connections: int = option(1000, "open connections per process; past it, the one waiting longest on its "
                                        "client (idle, or slow to send) is closed", check=POSITIVE)
    picture_timeout: float = option(10.0, "seconds a picture may wait for and take decoding before a 503",
                                    check=POSITIVE)
    max_waiting_pictures: int = option(64, "pictures waiting to be decoded per process; past it, a 503",
                                       check=POSITIVE)
    shutdown_timeout: float = option(3.0, "seconds requests in progress get to finish after SIGTERM or Ctrl-C",
                                     check=NON_NEGATIVE)


class ApiError(Exception):
    """A refusal: HTTP status and a one-line message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class ClientGone(Exception):
    """The client closed the connection before its request was read: nobody to answer."""


def log_error(scope: dict, exc: BaseException) -> None:
    """One line on stderr for a request that failed on our side (no traceback: the type and
    message say what broke; a bug is reproduced with the request, not read from a log)."""
    message = (str(exc).strip().splitlines() or [""])[0][:300]
    print(f"error: {scope.get('method')} {scope.get('path')}: {type(exc).__name__}: {message}",
          file=sys.stderr, flush=True)


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
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mnistlab-model")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        import asyncio

        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray) -> np.ndarray:
        import asyncio

        assert self._queue is not None, "MicroBatcher.start() was not called"
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((image, future))
        return await future

    def padded_size(self, n: int) -> int:
        """Batches are padded to the next of a few sizes, powers of two and 3/4 of them (1, 2, 4,
        6, 8, 12, 16, 24, 32, 48, 64, at most ``max_batch``): a handful of shapes, each warmed up
        at start-up (``sizes``), instead of a model re-planned for every new size while requests
        wait; and at most a third of a batch is padding (25 requests run as 32 with powers of two)."""
        power = 1 << (n - 1).bit_length()
        size = power * 3 // 4 if power >= 8 and n <= power * 3 // 4 else power
        return min(size, self._max_batch)

    def sizes(self) -> list[int]:
        return sorted({self.padded_size(n) for n in range(1, self._max_batch + 1)})

    def _drain(self, items: list) -> None:
        assert self._queue is not None
        while len(items) < self._max_batch and not self._queue.empty():
            items.append(self._queue.get_nowait())

    async def _run(self) -> None:
        import asyncio

        import numpy as np

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


class PicturePool:
    """Work off the event loop, bounded: ``threads`` threads, at most ``max_waiting`` jobs admitted
    (then 503), one ``heavy`` job at a time (so big photos cannot take every thread from ordinary
    pictures), and a deadline per job, after which its request is answered 503 and the job, if
    not started yet, is dropped. A heavy job keeps its slot until its thread is done with it,
    even when its request has given up: memory stays bounded by one big picture at a time."""

    def __init__(self, threads: int, max_waiting: int, timeout_s: float) -> None:
        self._threads, self._max_waiting, self._timeout_s = threads, max_waiting, timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._heavy: asyncio.Semaphore | None = None
        self.pending = 0  # admitted and not answered yet (waiting or running)

    def start(self) -> None:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="mnistlab-picture")
        self._heavy = asyncio.Semaphore(1)

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def run(self, fn: Callable[..., Any], *args: Any, heavy: bool = False) -> Any:
        """``fn(*args)`` on a pool thread; ApiError 503 when too many wait or it takes too long."""
        import asyncio

        assert self._executor is not None and self._heavy is not None, "PicturePool.start() was not called"
        if self.pending >= self._max_waiting:
            raise ApiError(503, f"busy: {self.pending} pictures are waiting to be decoded; try again in a moment",
                           ((b"retry-after", b"1"),))
        self.pending += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                return await (self._run_heavy(fn, args) if heavy else asyncio.wrap_future(self._executor.submit(fn, *args)))
        except TimeoutError:
            raise ApiError(503, f"the picture was not decoded within {self._timeout_s:g} s (--picture-timeout); "
                                "try again, or send a smaller picture", ((b"retry-after", b"1"),)) from None
        finally:
            self.pending -= 1

    async def _run_heavy(self, fn: Callable[..., Any], args: tuple) -> Any:
        import asyncio

        assert self._executor is not None and self._heavy is not None
        await self._heavy.acquire()
        loop = asyncio.get_running_loop()
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._heavy.release()
            raise
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._heavy.release))
        return await asyncio.wrap_future(future)


# ---------------------------------------------------------------------------- request bodies
def header(scope: dict, name: bytes) -> bytes | None:
    """The value of request header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(receive: Callable[[], Awaitable[dict]], declared: bytes | None, limit: int) -> bytes:
    """The request body, or ApiError 413 when it is over ``limit`` bytes (declared or streamed);
    ClientGone when the client hangs up first."""
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length {declared.decode('latin-1')!r}: expected a number of bytes")
        if int(declared) > DRAIN_FACTOR * limit:
            raise ApiError(413, f"body of {int(declared):,} bytes; expected at most {limit:,}")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk, more = message.get("body", b""), message.get("more_body", False)
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise ApiError(413, f"body of {'over ' if size > DRAIN_FACTOR * limit else ''}{size:,} bytes; "
                            f"expected at most {limit:,}")
    return b"".join(chunks)


def _shape(value: list) -> tuple[int, ...]:
    """The shape a nested list claims from its first elements (cheap: nothing converted)."""
    return (len(value), len(value[0])) if value and isinstance(value[0], list) else (len(value),)


def pixels_from_json(body: bytes) -> np.ndarray:
    """``{"pixels": 28 x 28 or 784 numbers in [0, 1]}`` -> model input ``(28, 28, 1)`` float32.

    The nesting is checked before NumPy converts anything: 500,000 one-element lists would
    otherwise cost a second of conversion before being refused."""
    import numpy as np
    import orjson

    if len(body) > MAX_JSON_BYTES:
        raise ApiError(413, f"JSON body of {len(body):,} bytes; expected at most {MAX_JSON_BYTES:,} "
                            "(784 numbers fit in 20 KB)")
    try:
        payload = orjson.loads(body)  # strict RFC 8259: NaN / Infinity are errors
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise ApiError(400, 'JSON body: expected an object {"pixels": [...]} with 28 x 28 or 784 numbers')
    pixels = payload["pixels"]
    expected = "expected 28 x 28 or 784 numbers in [0, 1]"
    if not isinstance(pixels, list) or len(pixels) not in (PIXELS, SIDE):
        shape = _shape(pixels) if isinstance(pixels, list) else type(pixels).__name__
        raise ApiError(400, f'"pixels": got shape {shape}; {expected}')
    if len(pixels) == SIDE and not all(isinstance(r, list) and len(r) == SIDE for r in pixels):
        if all(isinstance(r, list) for r in pixels):
            raise ApiError(400, '"pixels": ragged rows; expected 28 rows of 28 numbers, or 784 numbers')
        raise ApiError(400, f'"pixels": got shape {_shape(pixels)}; {expected}')
    try:
        array = np.asarray(pixels)
    except (ValueError, OverflowError):
        raise ApiError(400, f'"pixels": not a grid of numbers; {expected}') from None
    if array.dtype.kind not in "iuf" or array.shape not in ((PIXELS,), (28, 28)):
        raise ApiError(400, f'"pixels": got shape {array.shape} of {array.dtype.name}; {expected}')
    array = array.astype(np.float32)
    if array.min() < 0 or array.max() > 1:
        raise ApiError(400, f'"pixels": values from {array.min():g} to {array.max():g}; expected [0, 1] '
                            "(divide 0-255 grey levels by 255; light digit on dark, as MNIST)")
    return array.reshape(SIDE, SIDE, 1)


async def file_from_multipart(scope: dict, body: bytes, limit: int) -> bytes:
    """The one file part of a multipart body (already read and size-checked)."""
    from starlette.requests import Request

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form(max_files=1, max_fields=8, max_part_size=limit)
    except Exception as exc:  # malformed multipart, or over the part limits
        raise ApiError(400, f"multipart body: {getattr(exc, 'detail', exc)}") from None
    try:
        for value in form.values():
            if hasattr(value, "read"):
                return await value.read()
    finally:
        await form.close()
    raise ApiError(400, "multipart body has no file part; expected one field (e.g. 'image') holding the picture")


def picture_pixels(picture: bytes) -> int | None:
    """Width x height from the picture's header (nothing is decoded), or None when Pillow cannot
    tell (then ``preprocess`` says why, quickly). A PNG's size is read straight from its IHDR."""
    from PIL import Image

    from mnistlab import preprocess

    if picture[:8] == PNG_SIGNATURE and picture[12:16] == b"IHDR" and len(picture) >= 24:
        return int.from_bytes(picture[16:20], "big") * int.from_bytes(picture[20:24], "big")
    try:
        with Image.open(io.BytesIO(picture), formats=preprocess.ACCEPTED_FORMATS) as image:
            return image.size[0] * image.size[1]
    except Exception:  # any unreadable header: preprocess gives the one-line reason
        return None


def model_input(picture: bytes, max_pixels: int) -> np.ndarray:
    """``preprocess`` with its refusals as API errors: 422 no digit, 413 too large, 400 unreadable."""
    from mnistlab import preprocess

    try:
        return preprocess.preprocess(picture, "picture", max_pixels)
    except preprocess.NoDigitFound as exc:
        raise ApiError(422, str(exc)) from None
    except preprocess.ImageTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except MnistlabError as exc:
        raise ApiError(400, str(exc)) from None


async def send_json(send: Callable[[dict], Awaitable[None]], status: int, body: bytes,
                    headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """A complete JSON response in two ASGI messages."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def error_body(message: str) -> bytes:
    """``{"error": message}`` as JSON bytes."""
    return json.dumps({"error": message}).encode()


# ---------------------------------------------------------------------------- POST /predict
class PredictHandler:
    """``POST /predict`` as a plain ASGI handler: it reads the request itself, so Starlette's and
    FastAPI's layers add no CPU time to the hottest path."""

    def __init__(self, predictor: Predictor, batcher: MicroBatcher, pool: PicturePool, config: ServeConfig) -> None:
        self.predictor, self.batcher, self.pool, self.config = predictor, batcher, pool, config

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        try:
            status, body, headers = 200, await self.answer(scope, receive), ()
        except ApiError as exc:
            status, body, headers = exc.status, error_body(str(exc)), exc.headers
        except ClientGone:
            return
        except Exception as exc:  # a bug or a failing model: one log line, a JSON 500
            log_error(scope, exc)
            status, body, headers = 500, error_body("internal error; see the server's log"), ()
        await send_json(send, status, body, headers)

    async def answer(self, scope: dict, receive: Callable[[], Awaitable[dict]]) -> bytes:
        import numpy as np
        import orjson

        from mnistlab.predict import answer

        raw_type = header(scope, b"content-type") or b""
        kind = raw_type.split(b";")[0].strip().lower().decode("latin-1")
        if kind not in (JSON_TYPE, MULTIPART_TYPE, *IMAGE_TYPES):
            raise ApiError(415, f"content type {kind or '(none)'!r}; expected {JSON_TYPE}, {MULTIPART_TYPE} "
                                f"or an image type ({', '.join(IMAGE_TYPES)})")
        body = await read_body(receive, header(scope, b"content-length"), self.config.max_body_bytes)
        if kind == JSON_TYPE:
            image = (await self.pool.run(pixels_from_json, body) if JSON_INLINE_BYTES < len(body) <= MAX_JSON_BYTES
                     else pixels_from_json(body))  # small, or refused for its size unparsed
        else:
            picture = (await file_from_multipart(scope, body, self.config.max_body_bytes)
                       if kind == MULTIPART_TYPE else body)
            if not picture:
                raise ApiError(400, "empty picture; expected the bytes of a PNG, JPEG, GIF, BMP, WebP or TIFF file")
            image = await self.normalise(picture)
        probabilities = self.predictor.probabilities_of(await self.batcher.submit(image))  # calibrated
        said = answer(probabilities, 3)
        return orjson.dumps({
            "digit": said["digit"],
            "probability": round(said["probability"], 6),
            "probabilities": [round(float(p), 6) for p in probabilities],
            "top": [{"digit": t["digit"], "probability": round(t["probability"], 6)} for t in said["top"]],
            "unsure": said["unsure"],
            "candidates": said["candidates"],
            "model": self.predictor.name,
            "seen": np.round(image.reshape(-1) * 255).astype(np.int64),
        }, option=orjson.OPT_SERIALIZE_NUMPY)

    async def normalise(self, picture: bytes) -> np.ndarray:
        """The model input for a picture: small ones right here, the rest in the pool."""
        pixels = picture_pixels(picture)
        if pixels is None or pixels <= INLINE_PIXELS or pixels > self.config.max_pixels:
            return model_input(picture, self.config.max_pixels)  # cheap: small, or refused from the header
        return await self.pool.run(model_input, picture, self.config.max_pixels, heavy=pixels > BIG_PIXELS)


# ---------------------------------------------------------------------------- who may ask
def host_name(value: str) -> str:
    """A Host header's name, lower case, without port or brackets: ``[::1]:8000`` -> ``::1``."""
    text = value.strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return (text.rsplit(":", 1)[0] if text.count(":") == 1 else text).rstrip(".")


def is_ip_address(name: str) -> bool:
    """True for an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def allowed_host_names(config: ServeConfig) -> frozenset[str]:
    """Names (besides IP addresses) that Host may carry: localhost, ``--host``, this machine's
    name and ``--allowed-hosts`` (``*``: any). An IP address cannot be rebound by DNS."""
    names = {"localhost", host_name(config.host), socket.gethostname().lower()}
    names |= {host_name(n) if n.strip() != "*" else "*" for n in config.allowed_hosts.split(",") if n.strip()}
    return frozenset(n for n in names if n and not is_ip_address(n))


class Guard:
    """The ASGI app uvicorn runs: refuses foreign Host names and cross-origin POSTs, sends
    ``POST /predict`` to its handler and the rest to FastAPI, and logs any exception that
    escapes as one line (uvicorn would log a 50-line traceback)."""

    def __init__(self, api: Any, predict: PredictHandler, config: ServeConfig) -> None:
        self.api, self.predict, self.serve_config = api, predict, config
        self.hosts = allowed_host_names(config)

    def refusal(self, scope: dict) -> ApiError | None:
        """Why this request is not answered, or None."""
        host = origin = site = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value
            elif key == b"origin":
                origin = value
            elif key == b"sec-fetch-site":
                site = value
        if host is not None and "*" not in self.hosts:
            name = host_name(host.decode("latin-1"))
            if name not in self.hosts and not is_ip_address(name):
                return ApiError(400, f"Host {name!r}: not a name of this server; expected an IP address, "
                                     f"{', '.join(sorted(self.hosts))} (add names with --allowed-hosts)")
        if scope["method"] in SAFE_METHODS:
            return None
        own = host.decode("latin-1").lower() if host is not None else ""
        if origin is not None and origin.decode("latin-1").lower() not in (f"http://{own}", f"https://{own}"):
            return ApiError(403, f"{scope['method']} from the page at {origin.decode('latin-1')!r}: "
                                 "refused; only this server's own page may send requests from a browser")
        if site in (b"cross-site", b"same-site"):  # a browser saying so, Origin or not
            return ApiError(403, f"{scope['method']} from a page of another site ({site.decode()}): refused; "
                                 "only this server's own page may send requests from a browser")
        return None

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        import asyncio

        if scope["type"] != "http":  # lifespan
            await self.api(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is not None:
            await send_json(send, refused.status, error_body(str(refused)))
            return
        try:
            if scope["path"] != "/predict":
                await self.api(scope, receive, send)
            elif scope["method"] == "POST":
                await self.predict(scope, receive, send)
            else:
                await send_json(send, 405, error_body(f"{scope['method']} /predict: expected POST"),
                                ((b"allow", b"POST"),))
        except Exception as exc:  # FastAPI has already answered 500 (see create_app)
            log_error(scope, exc)
        except asyncio.CancelledError:  # --shutdown-timeout ran out while this request was in progress
            with contextlib.suppress(Exception):  # a response may have begun: then nothing more is sent
                await send_json(send, 503, error_body("the server is shutting down"))


# ---------------------------------------------------------------------------- HTTP with deadlines
def serve_config_of(app: Any) -> ServeConfig:
    """The ServeConfig of the Guard inside ``app`` (uvicorn may wrap it), else the defaults."""
    while app is not None and not hasattr(app, "serve_config"):
        app = getattr(app, "app", None)
    return app.serve_config if app is not None else ServeConfig()


def connection_cap(wanted: int) -> int:
    """``wanted`` connections, or fewer when the open-files limit would run out first (then
    accepting fails for everyone, which is what slow clients would aim for)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # not a POSIX system
        return wanted
    return wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft - NOFILE_RESERVE))


def raise_open_files_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files toward its hard limit (a soft 1,024 is
    common), so that ``--max-connections`` decides how many clients fit, not the OS."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted + NOFILE_RESERVE if hard == resource.RLIM_INFINITY else min(wanted + NOFILE_RESERVE, hard)
        if soft != resource.RLIM_INFINITY and target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, OSError, ValueError):  # not POSIX, or not allowed: connection_cap copes
        pass


def raw_response(status: int, message: str) -> bytes:
    """A whole JSON error response that closes the connection, for the protocol to write itself."""
    from http import HTTPStatus

    body = error_body(message)
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


@functools.cache
def guarded_protocol() -> type:
    """The GuardedProtocol class, built on first use: uvicorn is imported only to serve."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol plus deadlines for headers and body, a header size limit
        and the connection cap. Timers are armed only for requests that arrive in pieces."""

        def __init__(self, config: Any, server_state: Any, app_state: dict, _loop: Any = None) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self.limits = serve_config_of(self.app)
            self.cap = connection_cap(self.limits.max_connections)
            self.reading = "head"  # the part of the request being received: "head" or "body"
            self.since = 0.0  # when that part began; perf_counter: the loop's clock ticks once per iteration
            self.head_bytes = 0
            self.deadline: asyncio.TimerHandle | None = None

        # -- connection
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.since = time.perf_counter()
            self.arm(self.limits.header_timeout, "line and headers", "header-timeout")
            self.make_room()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return
            if self.reading == "head":
                self.head_bytes += len(data)
            super().data_received(data)
            if self.transport.is_closing():
                return
            if self.reading == "head" and self.head_bytes:
                if self.head_bytes > self.limits.max_header_bytes:
                    self.refuse(431, f"request line and headers over {self.limits.max_header_bytes:,} bytes "
                                     "(--max-header-bytes)")
                elif self.deadline is None:
                    self.arm(self.limits.header_timeout, "line and headers", "header-timeout")
            elif self.reading == "body" and self.deadline is None:
                self.arm(self.limits.body_timeout, "body", "body-timeout")

        def shutdown(self) -> None:
            if self.reading == "body" or (self.reading == "head" and self.head_bytes):
                self.refuse(503, "the server is shutting down")  # a request still arriving would hold the exit
            else:
                super().shutdown()

        # -- parser callbacks
        def on_headers_complete(self) -> None:
            self.disarm()
            self.reading, self.head_bytes, self.since = "body", 0, time.perf_counter()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.disarm()
            self.reading, self.since = "head", time.perf_counter()
            super().on_message_complete()

        # -- limits
        def arm(self, seconds: float, part: str, flag: str) -> None:
            self.disarm()
            self.deadline = self.loop.call_later(
                seconds, self.refuse, 408, f"request {part} not received within {seconds:g} s (--{flag})")

        def disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def refuse(self, status: int, message: str, tell: bool = True) -> None:
            """Close the connection, first answering ``status`` if ``tell`` and the request being
            received has no response yet; a request in the app sees a disconnect."""
            self.disarm()  # harmless when the deadline itself is calling
            if self.transport.is_closing():
                return
            cycle = self.cycle
            busy = cycle is not None and not cycle.response_complete
            if busy:
                cycle.disconnected = True
                cycle.message_event.set()
            unanswered = not busy if self.reading == "head" else cycle is not None and not cycle.response_started
            if tell and unanswered:
                self.transport.write(raw_response(status, message))
            self.transport.close()

        def evictable(self) -> bool:
            """Waiting on its client (idle, or still sending), not on us."""
            return self.reading == "body" or self.cycle is None or (self.cycle.response_complete and not self.pipeline)

        def make_room(self) -> None:
            """Over the cap, close the connection that has waited longest on its client."""
            if len(self.connections) <= self.cap:
                return
            waiting = [c for c in self.connections if c is not self and isinstance(c, GuardedProtocol) and c.evictable()]
            victim = min(waiting, key=lambda c: c.since) if waiting else self
            idle = victim is not self and victim.reading == "head" and not victim.head_bytes
            victim.refuse(503, f"too many open connections (--max-connections {self.limits.max_connections})",
                          tell=not idle)  # an idle connection is simply closed, as a keep-alive timeout would

    return GuardedProtocol


def http_protocol(config: Any, server_state: Any, app_state: dict, _loop: Any = None) -> Any:
    """uvicorn's ``http=`` factory: one GuardedProtocol per connection."""
    return guarded_protocol()(config, server_state, app_state, _loop)


def uvicorn_config(app: Any, config: ServeConfig, log_level: str = "info", **extra: Any) -> Any:
    """The uvicorn.Config for ``app`` under ``config``'s deadlines (GuardedProtocol enforces the
    rest). No proxy headers: nothing here sits behind a proxy unless told, and they cost CPU."""
    import uvicorn

    return uvicorn.Config(app, http=http_protocol, timeout_keep_alive=config.keep_alive,  # type: ignore[arg-type]
                          timeout_graceful_shutdown=config.shutdown_timeout,  # type: ignore[arg-type]
                          proxy_headers=False, server_header=False, access_log=config.access_log,
                          log_level=log_level, lifespan="on", **extra)


# ---------------------------------------------------------------------------- the app
def create_app(predictor: Predictor, config: ServeConfig = ServeConfig()) -> Guard:
    """The ASGI application serving ``predictor`` under ``config``'s limits."""
    import numpy as np
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    batcher = MicroBatcher(predictor.logits, config.max_batch, config.batch_wait_ms / 1000)
    pool = PicturePool(PICTURE_THREADS, config.max_waiting_pictures, config.picture_timeout)
    page = resources.files("mnistlab").joinpath("static/index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for size in batcher.sizes():  # trace and build kernels for every batch shape now, not under load
            await run_in_threadpool(predictor.logits, np.zeros((size, 28, 28, 1), np.float32))
        batcher.start()
        pool.start()
        yield
        await batcher.stop()
        pool.stop()

    api = FastAPI(title="mnistlab", lifespan=lifespan, docs_url=None, redoc_url=None)  # docs pull from a CDN

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Any, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @api.exception_handler(Exception)
    async def server_error(request: Any, exc: Exception) -> JSONResponse:  # Guard logs the line
        return JSONResponse({"error": "internal error; see the server's log"}, status_code=500)

    # Routes without return annotations: FastAPI would resolve them (as response models) by name.
    @api.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @api.get("/health")
    async def health():
        return {"status": "ok", "model": predictor.name, "pid": os.getpid(), "requests": batcher.requests,
                "batches": batcher.batches, "largest_batch": batcher.largest_batch,
                "pictures_pending": pool.pending}

    @api.get("/model")
    async def model_info():
        return predictor.info()

    api.mount("/static", StaticFiles(packages=[("mnistlab", "static")]), name="static")
    return Guard(api, PredictHandler(predictor, batcher, pool, config), config)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn and every worker serve on it), or one line saying
    why not: bound here, before the model loads, so a busy port is the only thing reported.
    ``reuse_port``: the workers will bind sockets of their own to the same port (``WorkerSocket``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise MnistlabError(f"port {port} is in use on {host} (another server?); stop it or pick another "
                                "with --port") from None
        if exc.errno == errno.EACCES:
            raise MnistlabError(f"--port {port}: not allowed (ports below 1024 need privileges)") from None
        raise MnistlabError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    sock.set_inheritable(True)  # worker processes get it
    return sock


class WorkerSocket:
    """The listening socket as uvicorn hands it to each worker process (pickled): unpickled in a
    worker, it is a socket of that worker's own, bound to the same address with SO_REUSEPORT, so
    Linux spreads new connections evenly over the workers. With one socket shared by all, the
    first worker to wake accepts a whole burst of connections and keeps them (keep-alive): in
    bench_serve, one worker answered all 50 clients while the other one idled."""

    def __init__(self, family: int, address: tuple) -> None:
        self.family, self.address = family, address

    def __reduce__(self) -> tuple:
        return reuse_port_socket, (self.family, self.address)


def reuse_port_socket(family: int, address: tuple) -> socket.socket:
    """A TCP socket bound to ``address`` beside the other sockets of the same port (SO_REUSEPORT)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def balances_connections() -> bool:
    """True where sockets sharing a port (SO_REUSEPORT) share its connections out: Linux. Elsewhere
    the option does not balance (macOS, most BSDs) or does not exist (Windows), so the workers
    share one socket there."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def serve(run: str, config: ServeConfig = ServeConfig()) -> None:
    """Load ``run`` (any form ``runs.load_predictor`` takes) and serve it until Ctrl-C or SIGTERM.

    With ``workers > 1``, uvicorn starts that many processes, each on its own socket of the port
    (``WorkerSocket``; one shared socket where the system cannot balance them); each one builds its
    app with ``app_from_environment`` (the run and config travel in ``SERVE_ENV``).
    """
    import uvicorn

    from mnistlab.runs import load_predictor

    validate(config)
    raise_open_files_limit(config.max_connections)
    balance = config.workers > 1 and balances_connections()
    sock = listening_socket(config.host, config.port, reuse_port=balance)
    try:
        predictor = load_predictor(run)  # in the parent too: a bad path is one clear error, not one per worker
        if not is_loopback(config.host):
            print(f"warning: listening on {config.host}, reachable from other machines", file=sys.stderr)
        print(f"serving {predictor.name} ({predictor.format}) on http://{config.host}:{sock.getsockname()[1]}/"
              + (f" with {config.workers} worker processes" if config.workers > 1 else ""), file=sys.stderr,
              flush=True)
        if config.workers == 1:
            uvicorn.Server(uvicorn_config(create_app(predictor, config), config)).run(sockets=[sock])
            return
        del predictor
        from uvicorn.supervisors import Multiprocess

        os.environ[SERVE_ENV] = json.dumps({"run": str(run), "config": dataclasses.asdict(config)})
        # Each worker's TensorFlow gets its share of the cores (read when its runtime starts);
        # LiteRT's share is passed to load_predictor (app_from_environment).
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(worker_threads(config.workers)))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        Multiprocess(uvicorn_config("mnistlab.serve:app_from_environment", config, factory=True,
                                    workers=config.workers, timeout_worker_healthcheck=WORKER_PING_S),
                     sockets=[WorkerSocket(sock.family, sock.getsockname()) if balance else sock]).run()
    finally:
        sock.close()


def app_from_environment() -> Guard:
    """A worker process's app: the run and ServeConfig from ``SERVE_ENV``. The model loads with
    file descriptor 2 muted: TensorFlow's C++ start-up lines ('failed call to cuInit'...) would
    otherwise print once per worker; a failure still raises, with its one-line message."""
    from mnistlab.inference import quiet_stderr
    from mnistlab.runs import load_predictor

    settings = json.loads(os.environ[SERVE_ENV])
    config = ServeConfig(**settings["config"])
    with quiet_stderr():
        predictor = load_predictor(settings["run"], threads=worker_threads(config.workers))
    return create_app(predictor, config)


def worker_threads(workers: int) -> int:
    """Model threads per worker process: its share of the usable cores (at least one)."""
    return max(1, len(os.sched_getaffinity(0)) // workers) if hasattr(os, "sched_getaffinity") else 1

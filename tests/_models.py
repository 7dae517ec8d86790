"""One small CNN trained on real MNIST once per test session, shared by the inference tests.

``trained_run(real_mnist, tmp_path_factory)`` trains on the first ``TRAIN_IMAGES`` training
images for one epoch (a few seconds on two CPU cores, about 97% test accuracy) and writes a run
folder in the project's layout (``model.keras``, ``config.json``, ``metrics.json``). Every test
module that asks gets the same folder: the result is cached in this module, not in a fixture,
so modules can share it without a conftest entry.

``untrained_run(folder)`` writes a tiny random model (no data needed) for tests of plumbing;
``RunningServer`` serves an app on a free loopback port; ``draw`` and ``render_digit`` make the
pictures the tests read.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnistlab import data, fileio

TRAIN_IMAGES = 30_000  # first N training images: ~97% test accuracy after one epoch
BATCH = 64
SEED = 0
ARTIFACTS_ENV = "MNISTLAB_TEST_ARTIFACTS"
_cache: dict[str, Path] = {}


def small_cnn():
    """conv3x3x16-pool-conv3x3x32-pool-dense10: 28 x 28 x 1 -> 10 logits, ~15k parameters."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(16, 3, activation="relu", padding="same"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, activation="relu", padding="same"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(10, name="logits"),
    ], name="small-cnn")


def write_run(folder: Path, model, name: str, metrics: dict | None) -> Path:
    """Save ``model`` as a run folder: model.keras, config.json and (if given) metrics.json."""
    folder.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_path(folder / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    fileio.write_json(folder / "config.json", {"model": name, "trained_by": "tests/_models.py"})
    if metrics is not None:
        fileio.write_json(folder / "metrics.json", metrics)
    return folder


def trained_run(real_mnist: data.Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared trained run folder (trained on first use in this process)."""
    if "trained" in _cache:
        return _cache["trained"]
    import keras

    keras.utils.set_random_seed(SEED)
    model = small_cnn()
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(real_mnist.train.images[:TRAIN_IMAGES], real_mnist.train.labels[:TRAIN_IMAGES],
              batch_size=BATCH, epochs=1, verbose=0)
    loss, accuracy = model.evaluate(real_mnist.test.images, real_mnist.test.labels, batch_size=1000, verbose=0)
    assert accuracy > 0.95, f"the shared test model reached only {accuracy:.4f}"
    folder = write_run(tmp_path_factory.mktemp("trained") / "small-cnn", model, "small-cnn",
                       {"test_accuracy": float(accuracy), "test_loss": float(loss),
                        "train_seconds": time.perf_counter() - start})
    _cache["trained"] = folder
    return folder


def untrained_run(folder: Path, with_metrics: bool = True) -> Path:
    """A random Flatten-Dense model in a run folder (fast; for tests that need no accuracy)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(10)], name="tiny")
    return write_run(folder, model, "tiny", {"test_accuracy": 0.1, "test_loss": 2.3} if with_metrics else None)


def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$MNISTLAB_TEST_ARTIFACTS (created), else a pytest temp folder."""
    folder = Path(os.environ[ARTIFACTS_ENV]) if os.environ.get(ARTIFACTS_ENV) else tmp_path_factory.mktemp("artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def render_digit(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An MNIST test digit ``(28, 28[, 1])`` made to look like a photo or scan: scaled up 3-9x,
    shifted on a larger (non-square) sheet, inverted to dark ink on light paper, with a shadow
    across the sheet, pixel noise, a few specks of dust and a colour cast. Returns an RGB image."""
    digit = np.asarray(image, dtype=np.float32).reshape(28, 28)
    scale = rng.uniform(3, 9)
    side = int(28 * scale)
    big = np.asarray(Image.fromarray(digit, mode="F").resize((side, side), Image.Resampling.BILINEAR))
    height, width = side + int(rng.integers(0, side)), side + int(rng.integers(0, side))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    ink = np.zeros((height, width), np.float32)
    ink[top:top + side, left:left + side] = np.clip(big, 0, 1)
    paper = rng.uniform(0.75, 0.95)
    pen = rng.uniform(0.0, 0.25)
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
    lighting = 1 - 0.2 * (rng.uniform() * ys + rng.uniform() * xs)  # a shadow across the sheet
    grey = (paper + (pen - paper) * ink) * lighting + rng.normal(0, rng.uniform(0.02, 0.1), (height, width))
    for _ in range(int(rng.integers(0, 12))):  # dust: dark dots 1-3 px across
        y, x, r = int(rng.integers(0, height)), int(rng.integers(0, width)), int(rng.integers(1, 3))
        grey[max(0, y - r):y + r, max(0, x - r):x + r] = pen
    rgb = np.clip(grey[..., None] * rng.uniform(0.85, 1.0, 3), 0, 1)  # a slight colour cast
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB")


class RunningServer:
    """uvicorn serving ``app`` in a background thread on a free loopback port; ``url`` when up.

    Use as a context manager; leaving it asks the server to finish its requests and stop.
    """

    def __init__(self, app, startup_timeout: float = 60.0) -> None:
        import socket

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._timeout = startup_timeout

    def __enter__(self) -> "RunningServer":
        import threading

        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()


# ---------------------------------------------------------------------------- pictures drawn by the tests
SEVEN = [[(0.29, 0.25), (0.71, 0.25), (0.43, 0.79)]]  # strokes in [0, 1] box coordinates
FOUR = [[(0.61, 0.18), (0.29, 0.57), (0.71, 0.57)], [(0.61, 0.18), (0.61, 0.82)]]


def _loop(cx: float, cy: float, rx: float, ry: float, points: int = 32) -> list[tuple[float, float]]:
    """A closed elliptic stroke, as a polyline in [0, 1] box coordinates."""
    angles = np.linspace(0, 2 * np.pi, points + 1)
    return [(cx + rx * float(np.cos(a)), cy + ry * float(np.sin(a))) for a in angles]


ZERO = [_loop(0.5, 0.5, 0.3, 0.38)]
EIGHT = [_loop(0.5, 0.3, 0.25, 0.2), _loop(0.5, 0.71, 0.29, 0.22)]  # squat: its box is nearly square


def draw(strokes=SEVEN, size=(280, 280), box=None, ink=0, paper=255, width=0.08, mode="L") -> Image.Image:
    """Strokes drawn into ``box`` (left, top, side) of a ``size`` sheet; width as a share of the side."""
    w, h = size
    left, top, side = box or (0, 0, min(w, h))
    image = Image.new(mode, size, paper)
    pen = ImageDraw.Draw(image)
    r = max(1, round(width * side / 2))
    for stroke in strokes:
        points = [(left + x * side, top + y * side) for x, y in stroke]
        pen.line(points, fill=ink, width=2 * r)
        for x, y in points:
            pen.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    return image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels (greyscale, 1 bit) with a tiny stub of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """``png`` with one more chunk right after its IHDR (signature 8 bytes + IHDR 25 bytes)."""
    return png[:33] + png_chunk(kind, data) + png[33:]



def shadow_across(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``picture`` with a hard-edged shadow over one side of a straight line through its middle
    half (where the digit is): that side 30-60 % darker, the edge 1-3 px wide, as a phone held
    over the page casts it."""
    grey = np.asarray(picture, dtype=np.float32) / 255
    h, w = grey.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx, angle = h * rng.uniform(0.25, 0.75), w * rng.uniform(0.25, 0.75), rng.uniform(0, np.pi)
    distance = (ys - cy) * np.cos(angle) - (xs - cx) * np.sin(angle)  # signed, px
    shade = 1 - rng.uniform(0.3, 0.6) * 0.5 * (1 + np.tanh(distance / (2 * rng.uniform(0.3, 1.0))))  # a logistic step
    shaded = grey * (shade[..., None] if grey.ndim == 3 else shade)
    return Image.fromarray(np.round(np.clip(shaded, 0, 1) * 255).astype(np.uint8), mode=picture.mode)

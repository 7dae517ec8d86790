"""Fuzzing the picture decoders: mutated PNG, JPEG, BMP, GIF, TIFF and WebP files (every mode and
variant mnistlab reads) and random grey arrays either give a model input or raise one of the
project's one-line errors naming the picture; never another exception.

The mutations are seeded (one seed per file kind) and their number is fixed, so a failure names
the kind and the case that reproduces it: ``mutate(SEEDS[kind](), np.random.default_rng(seed))``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from _models import FOUR, draw, encode
from mnistlab import preprocess
from mnistlab.errors import MnistlabError

CASES = 40  # mutations per file kind; about 1,000 decodes in all, a few seconds
pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore")]  # Pillow warns about damaged data


def _grey() -> Image.Image:
    return draw(size=(64, 48), box=(8, 4, 40))


def _rgb() -> Image.Image:
    return draw(size=(64, 48), box=(8, 4, 40), mode="RGB")


def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif


SEEDS = {  # file kind -> its valid bytes (small pictures: mutations of big ones only cost time)
    "png-grey": lambda: encode(_grey(), "PNG"),
    "png-rgba": lambda: encode(_rgb().convert("RGBA"), "PNG"),
    "png-palette-transparent": lambda: encode(_rgb().convert("P"), "PNG", transparency=0),
    "png-16-bit": lambda: encode(Image.fromarray(np.asarray(_grey(), np.uint16) * 257), "PNG"),
    "png-1-bit": lambda: encode(_grey().convert("1"), "PNG"),
    "apng": lambda: encode(_grey(), "PNG", save_all=True, append_images=[draw(FOUR, size=(64, 48))]),
    "jpeg": lambda: encode(_rgb(), "JPEG", quality=70),
    "jpeg-progressive": lambda: encode(_rgb(), "JPEG", quality=70, progressive=True),
    "jpeg-exif": lambda: encode(_rgb(), "JPEG", exif=_exif()),
    "jpeg-cmyk": lambda: encode(_rgb().convert("CMYK"), "JPEG"),
    "bmp": lambda: encode(_rgb(), "BMP"),
    "bmp-palette": lambda: encode(_grey().convert("P"), "BMP"),
    "gif": lambda: encode(_grey().convert("P"), "GIF", save_all=True,
                          append_images=[draw(FOUR, size=(64, 48)).convert("P")]),
    "tiff": lambda: encode(_rgb(), "TIFF"),
    "tiff-lzw": lambda: encode(_grey(), "TIFF", compression="tiff_lzw"),
    "tiff-deflate-rgba": lambda: encode(_rgb().convert("RGBA"), "TIFF", compression="tiff_adobe_deflate"),
    "tiff-float": lambda: encode(Image.fromarray(np.asarray(_grey(), np.float32) / 255, "F"), "TIFF"),
    "tiff-pages": lambda: encode(_grey(), "TIFF", save_all=True, append_images=[_grey()]),
    "tiff-exif": lambda: encode(_rgb(), "TIFF", exif=_exif()),
    "tiff-jpeg": lambda: encode(_rgb(), "TIFF", compression="jpeg"),
    "webp": lambda: encode(_rgb(), "WEBP", quality=80),
    "webp-lossless-rgba": lambda: encode(_rgb().convert("RGBA"), "WEBP", lossless=True),
    "webp-animated": lambda: encode(_rgb(), "WEBP", save_all=True, append_images=[_rgb()]),
}
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)  # lengths, sizes, offsets at their edges


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """1-4 random edits: overwrite bytes, truncate, delete, duplicate or insert a range, or write
    an interesting integer (1-4 bytes) where a length, size or offset may be."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op, at = int(rng.integers(0, 6)), int(rng.integers(0, max(len(b), 1)))
        if op == 0:
            for i in rng.integers(0, max(len(b), 1), int(rng.integers(1, 9))):
                b[int(i):int(i) + 1] = bytes([int(rng.integers(0, 256))])
        elif op == 1:
            del b[at:]
        elif op == 2:
            del b[at:at + int(rng.integers(1, 64))]
        elif op == 3:
            b[at:at] = b[at:at + int(rng.integers(1, 256))]
        elif op == 4:
            width = int(rng.integers(1, 5))
            value = INTERESTING[int(rng.integers(0, len(INTERESTING)))] & ((1 << 8 * width) - 1)
            b[at:at + width] = value.to_bytes(width, "big" if rng.integers(0, 2) else "little")
        else:
            b[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
    return bytes(b)


def _check(data: bytes, label: str) -> None:
    """preprocess on ``data``: a (28, 28, 1) input in [0, 1], or a one-line MnistlabError naming ``label``."""
    try:
        x = preprocess.preprocess(data, name=label)
    except MnistlabError as exc:
        message = str(exc)
        assert message.startswith(f"{label}: ") and "\n" not in message, message
        return
    assert x.shape == (28, 28, 1) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def test_every_seed_is_read():
    """The unmutated files are digits: the fuzzer starts from pictures that decode all the way."""
    upright = preprocess.preprocess(SEEDS["png-grey"]())
    turned = preprocess.preprocess(encode(_grey().transpose(Image.Transpose.ROTATE_270), "PNG"))  # EXIF 6
    for kind, make in SEEDS.items():
        x = preprocess.preprocess(make(), name=kind)
        reference = turned if kind.endswith("exif") else upright
        assert float(np.corrcoef(x.ravel(), reference.ravel())[0, 1]) > 0.8, kind


@pytest.mark.parametrize("kind", SEEDS)
def test_mutated_files_give_an_input_or_a_one_line_error(kind: str):
    data = SEEDS[kind]()
    rng = np.random.default_rng(list(SEEDS).index(kind))
    for case in range(CASES):
        _check(mutate(data, rng), f"{kind}-{case}")


def test_mutated_files_from_disk_give_an_input_or_a_one_line_error(tmp_path):
    """The path route (opened by mnistlab, read lazily by Pillow) behaves as the bytes route."""
    rng = np.random.default_rng(99)
    for case, kind in enumerate(list(SEEDS) * 2):
        path = tmp_path / f"{kind}-{case}"
        path.write_bytes(mutate(SEEDS[kind](), rng))
        try:
            x = preprocess.preprocess(path)
        except MnistlabError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            continue
        assert x.shape == (28, 28, 1) and np.isfinite(x).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.binary(max_size=300))
def test_random_bytes_give_a_one_line_error(data: bytes):
    _check(data, "random")


GREY = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=90),
                  elements=st.one_of(st.floats(0, 1, width=32), st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1.0])))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(GREY)
def test_any_grey_array_gives_an_input_or_no_digit(grey: np.ndarray):
    try:
        x = preprocess.to_mnist(grey, "array")
    except MnistlabError as exc:
        assert str(exc).startswith("array: ") and "\n" not in str(exc)
        return
    assert x.shape == (28, 28, 1) and np.isfinite(x).all() and 0 <= x.min() and x.max() <= 1


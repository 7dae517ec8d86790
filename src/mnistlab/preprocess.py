"""Any picture of one digit -> the 28 x 28 input an MNIST model expects, by MNIST's own recipe.

MNIST's digits are light on dark, cropped to their bounding box, scaled so the longest side is
20 px (keeping the aspect ratio, anti-aliased), then pasted into 28 x 28 so that the centre of
mass sits at the centre (row 14.0, column 14.0 on average over the test set). Photos and scans
are dark ink on light paper, any size, with uneven lighting, shadows and noise, so ``to_mnist``:

1. shrinks big pictures to at most ``WORK_SIDE`` px (area averaging; the digit ends up 20 px,
   so 6 x that keeps every detail that survives);
2. finds the polarity: the border is paper (lit or in shadow), so the ink is what lies beyond
   the border's range of grey levels, below it (dark ink) or above it;
3. flattens the lighting: the background under the strokes is a grey-level opening whose
   square window is just wider than the widest stroke (chosen by how much ink each width
   removes); it keeps a shadow's straight edge where a smooth estimate would smear it into a
   stroke. Dark ink is then measured as the share of the paper's brightness it takes away, so
   ink in a shadow reads as ink in the light;
4. thresholds with Otsu on a lightly blurred copy and keeps the connected strokes big enough
   to matter (specks of noise are dropped), refusing pictures with no clear stroke: flat,
   noise, a speck, or a solid blob such as a tap of the pen (a filled, squarish, convex shape
   without a loop; heavy-ink digits keep a loop or a hollow and are read);
5. keeps the stroke's own grey levels (scaled so the stroke core is 1.0) inside that mask.

Images are data: only the formats in ``ACCEPTED_FORMATS`` are decoded (Pillow's EPS reader, for
one, would run Ghostscript); only regular files are opened (a FIFO or /dev/zero is named, not
read); the pixels to be decoded are counted before decoding (decompression bombs); JPEGs decode
at 1/2, 1/4 or 1/8 scale and the rest are box-reduced in Pillow, so big photos are cheap; any
decoder error, whatever its type, becomes one ``UnreadableImage`` line; animations give their
first frame.

The costly steps (blur, Otsu, polarity, the flattening, the stroke pieces, the crop, the resize and
the centring) also exist compiled, in ``_recipe.c`` (built by setup.py where a C compiler is
found), with this code's float32/float64 arithmetic and order: the same numbers to the bit
(tests/test_preprocess.py) for about 2.4x less CPU on a drawing (benchmarks/bench_preprocess.py).
The NumPy code below defines each step and runs wherever the module is not built.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterator
from types import MappingProxyType
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnistlab import fileio
from mnistlab.errors import MnistlabError

try:  # the costly steps compiled (setup.py builds it where a C compiler is found): same numbers, less CPU
    from mnistlab import _recipe
except ImportError:  # no compiler at install time: the NumPy code below, which defines every step
    _recipe = None

SIDE = 28  # px, the model's input
DIGIT_BOX = 20  # px, MNIST's longest side of a digit
CENTRE = 14.0  # row / column of MNIST's centre of mass, in pixel-index coordinates
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")  # Pillow format names
MAX_PIXELS = 40_000_000  # width x height; a 40 MP photo is fine, a decompression bomb is not
WORK_SIDE = 128  # px, longest side the steps below work at: 6.4x MNIST's 20 px digit box
MIN_CONTRAST = 0.2  # stroke minus background mean, [0, 1] grey levels
MIN_SEPARABILITY = 0.7  # Otsu's between-class / total variance (2/pi ~ 0.64 for pure noise)
MIN_STROKE_PIXELS = 12  # px at working size: less is a speck, not a digit
MIN_DIGIT_SHARE = 0.06  # the digit's longest side, as a share of the picture's: smaller is a speck
MAX_BLOB_FILL = 0.7  # ink share of a squarish bounding box above which it may be a blob (a dot: pi/4)
BLOB_ASPECT = (0.6, 1.6)  # width / height of a "squarish" box
MIN_BLOB_SOLIDITY = 0.9  # ink / convex hull area above which a loopless filled box is a blob (heavy digits: < 0.9)
MIN_HOLE_PIXELS = 2  # px at working size: paper enclosed by ink, a digit's loop (0, 6, 8, 9)
KEEP_FRACTION = 0.05  # a stroke piece smaller than this share of the largest is noise
FEW_LINKS = 64  # merging links between stroke runs joined one by one in Python; more, in NumPy rounds
MAX_RUNS = 25_000  # stroke runs (row segments) at working size: more is noise, not a digit
BORDER_PERCENTILE = 5  # the border's range of grey levels (paper, lit or in shadow): 5th to 95th percentile
POLARITY_MARGIN = 1.5  # ink beyond one side of that range must outweigh the other side's this many times
WINDOWS = (3, 5, 7, 9, 11, 15, 21, 29, 41, 57, 81, 115)  # px, square windows tried for the strokes, ~sqrt(2) apart
WINDOW_STAGES = (11, 29)  # the last window of each group sharing one extension past the border (then the rest)
SATURATION = 0.2  # a window holds the strokes once the next wider one removes under 20 % more ink
NOISE_MARGIN = 4.0  # ink removed by an opening counts above this many noise sigmas (of the blurred picture)
PAPER_FLOOR = 0.15  # paper brightness under which dark ink is measured against this (deep shadow: noise)
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (C4, C8, CC are tables)
JPEG_SEQUENTIAL_FRAMES = frozenset({0xC0, 0xC1, 0xC9})  # baseline and extended sequential (Huffman, arithmetic)
JPEG_START_OF_SCAN = 0xDA
JPEG_MAX_SEGMENTS = 1_000  # marker segments read before the first scan; more is not a camera's JPEG
EXIF_ORIENTATION = 0x0112
ORIENTATIONS = MappingProxyType({  # EXIF orientation -> the transpose that displays the picture upright
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90})


OTSU_BINS = 256  # grey-level histogram bins for Otsu's threshold


def _frozen(values: np.ndarray) -> np.ndarray:
    """``values`` made read-only: a module constant nobody can change by accident."""
    values.flags.writeable = False
    return values


OTSU_EDGES = _frozen(np.linspace(0.0, 1.0, OTSU_BINS + 1))
OTSU_CENTRES = _frozen((OTSU_EDGES[:-1] + OTSU_EDGES[1:]) / 2)


class NoDigitFound(MnistlabError):
    """The picture was read but holds no clear stroke (blank, flat, or noise)."""


class ImageTooLarge(MnistlabError):
    """The picture has more pixels than allowed (a decompression bomb, or just too big)."""


class UnreadableImage(MnistlabError):
    """The bytes are not a picture in one of ``ACCEPTED_FORMATS``, or are damaged."""


# ---------------------------------------------------------------------------- reading
def read_grey(source: str | os.PathLike | bytes, name: str | None = None,
              max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> np.ndarray:
    """Decode a picture (a path, or the file's bytes) into grey levels ``(H, W)`` float32 in [0, 1].

    Transparent pictures are laid on a background that contrasts with their ink; GIF and other
    animations give their first frame; EXIF rotation is applied. With ``max_side``, bigger
    pictures come back shrunk by a whole factor towards that longest side (JPEGs are decoded at
    1/2, 1/4 or 1/8 scale to begin with, so a 108 MP photo decodes as 1.7 MP). ``max_pixels``
    bounds the pixels decoded. Raises ``UnreadableImage`` or ``ImageTooLarge``, never another
    error; ``name`` labels them.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        with io.BytesIO(bytes(source)) as fp:
            return _decode(fp, name or "image", max_pixels, max_side)
    name = name or str(source)
    with _open_file(source, name) as fp:
        return _decode(fp, name, max_pixels, max_side)


def _open_file(path: str | os.PathLike, name: str) -> BinaryIO:
    """Open a regular file for reading. Folders, FIFOs and devices are refused as what they are,
    without blocking on a FIFO or reading a device such as /dev/zero forever."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise UnreadableImage(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UnreadableImage(f"{name}: is a folder; expected a picture file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise UnreadableImage(f"{name}: cannot open ({getattr(exc, 'strerror', None) or exc})") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        what = ("a folder" if stat.S_ISDIR(kind) else "a FIFO" if stat.S_ISFIFO(kind) else
                "a device" if stat.S_ISCHR(kind) or stat.S_ISBLK(kind) else "not a regular file")
        raise UnreadableImage(f"{name}: is {what}; expected a picture file")
    return os.fdopen(fd, "rb")


def _decode(fp: BinaryIO, name: str, max_pixels: int, max_side: int | None) -> np.ndarray:
    """``read_grey`` on an open file: Pillow's errors, whatever their type, become one line."""
    accepted = ", ".join(ACCEPTED_FORMATS)
    try:
        image = Image.open(fp, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name}: refused, {exc}") from None
    except UnidentifiedImageError:
        raise UnreadableImage(f"{name}: not a readable image; expected one of {accepted}") from None
    except Exception as exc:  # damaged headers raise ValueError, struct.error, EOFError, ... as they come
        raise UnreadableImage(f"{name}: damaged picture data ({_why(exc)}); expected one of {accepted}") from None
    with image:
        fmt = image.format
        try:
            return _decode_open(image, fp, name, max_pixels, max_side)
        except MnistlabError:
            raise
        except Exception as exc:  # Pillow's decoders of damaged data raise every type there is
            raise UnreadableImage(f"{name}: damaged {fmt} data ({_why(exc)}); expected a complete picture") from None


def _why(exc: Exception) -> str:
    """An exception as a short single line, for an error message about untrusted data."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _decode_open(image: Image.Image, fp: BinaryIO, name: str, max_pixels: int,
                 max_side: int | None) -> np.ndarray:
    """Check the work, decode the first frame (reduced where the format allows), shrink, orient."""
    width, height = image.size
    if width < 1 or height < 1:
        raise UnreadableImage(f"{name}: empty image ({width} x {height})")
    image.seek(0)
    scaled = image.format == "JPEG" and bool(max_side) and _jpeg_scales_in_one_pass(fp)
    if scaled:
        image.draft("L", _fit(image.size, max_side))  # decode at 1/2, 1/4 or 1/8 scale, never below max_side
    decoded = image.size[0] * image.size[1]
    if decoded > max_pixels:
        at = f", {image.size[0]} x {image.size[1]} decoded" if image.size != (width, height) else ""
        raise ImageTooLarge(f"{name}: {width} x {height} = {width * height:,} pixels{at}; "
                            f"expected at most {max_pixels:,} decoded")
    image.load()
    orientation = _orientation(image)  # after load: Pillow's TIFF loader turns the picture itself
    working, full_scale = _working_image(image, max_side)
    if orientation in ORIENTATIONS:
        working = working.transpose(ORIENTATIONS[orientation])
    return _grey_levels(working, full_scale, name)


def _jpeg_scales_in_one_pass(fp: BinaryIO) -> bool:
    """True for a sequential JPEG whose first scan holds every component: libjpeg then decodes it
    at a reduced scale block row by block row. Progressive and multi-scan JPEGs buffer the whole
    picture's coefficients (2 bytes per pixel per component), so their full size is what counts."""
    fp.seek(2)  # after the start-of-image marker
    components = None
    for _ in range(JPEG_MAX_SEGMENTS):
        head = fp.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return False
        marker, length = head[1], int.from_bytes(head[2:4], "big")
        if marker == 0xFF:  # a fill byte before the marker
            fp.seek(-3, io.SEEK_CUR)
            continue
        if marker in JPEG_FRAMES:
            frame = fp.read(length - 2)
            if marker not in JPEG_SEQUENTIAL_FRAMES or len(frame) < 6:
                return False
            components = frame[5]
        elif marker == JPEG_START_OF_SCAN:
            scan = fp.read(1)
            return components is not None and scan == bytes([components])
        elif length < 2:
            return False
        else:
            fp.seek(length - 2, io.SEEK_CUR)
    return False


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8), or 1 when there is none or it cannot be read."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
        return value if isinstance(value, int) else 1
    except Exception:  # a damaged EXIF block costs the picture its rotation, not its answer
        return 1


def _working_image(image: Image.Image, max_side: int | None) -> tuple[Image.Image, float | None]:
    """The decoded picture as "L", "RGBA" or "F", shrunk by a whole factor (Pillow's C box
    reduction, alpha premultiplied) so its longest side is within 2x of ``max_side``; with the
    value of full brightness (None: a float picture, scaled by its own range). Opaque colour
    pictures are reduced before they are made grey: no full-size grey copy."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        image, final, full_scale = (image.convert("RGBA") if mode != "RGBA" else image), "RGBA", 255.0
    elif mode in ("L", "RGB", "RGBX", "CMYK", "YCbCr"):
        final, full_scale = "L", 255.0
    elif mode in ("I", "F") or mode.startswith("I;16"):
        image, final = (image.convert("F") if mode.startswith("I;16") else image), "F"
        full_scale = None if mode == "F" else 65535.0
    elif mode == "LAB":
        image, final, full_scale = image.getchannel("L"), "L", 255.0
    else:  # "1", "P", "HSV": averaging their codes would be meaningless, so grey first
        image, final, full_scale = image.convert("L"), "L", 255.0
    if max_side and max(image.size) >= 2 * max_side:
        image = image.reduce(max(image.size) // max_side)
    return (image.convert(final) if image.mode != final else image), full_scale


def _grey_levels(image: Image.Image, full_scale: float | None, name: str) -> np.ndarray:
    """A working image from ``_working_image`` -> ``(H, W)`` float32 grey levels in [0, 1]."""
    if image.mode == "RGBA":
        la = np.asarray(image.convert("LA"))
        if la[..., 1].min() == 255:  # opaque (a drawing page's canvas): only the grey levels are needed
            return la[..., 0] / np.float32(255)
        la = la.astype(np.float32) / 255
        grey, alpha = la[..., 0], la[..., 1]
        # Ink drawn on a transparent canvas: lay it on white if the ink is dark, on black if light.
        ink = float((grey * alpha).sum() / max(alpha.sum(), 1e-6))
        background = 1.0 if ink < 0.5 else 0.0
        return grey * alpha + background * (1 - alpha)
    values = np.asarray(image, dtype=np.float32)
    if full_scale is not None:
        return _clip01(values * np.float32(1 / full_scale))
    return _own_range(values, name)


def _own_range(values: np.ndarray, name: str) -> np.ndarray:
    """Float pixels -> [0, 1]: missing (NaN, infinite) pixels take the median of the rest, and a
    range outside [0, 1] is scaled from its own minimum and maximum."""
    finite = np.isfinite(values)
    if not finite.any():
        raise UnreadableImage(f"{name}: no finite pixel values; expected grey levels")
    if not finite.all():
        values = np.where(finite, values, np.median(values[finite]))
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1:
        return values.astype(np.float32)
    spread = np.float64(high) - np.float64(low)  # float64: float32's extremes would overflow
    return ((values.astype(np.float64) - low) / max(spread, 1e-30)).astype(np.float32)


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so the longest side is ``side``."""
    f = side / max(size)
    return max(1, round(size[0] * f)), max(1, round(size[1] * f))


# ---------------------------------------------------------------------------- the recipe
def to_mnist(grey: np.ndarray, name: str = "image") -> np.ndarray:
    """Grey levels ``(H, W)`` in [0, 1], either polarity -> MNIST input ``(28, 28, 1)`` float32 in [0, 1].

    Raises ``NoDigitFound`` for a blank, flat or noisy picture with no clear stroke.
    """
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise UnreadableImage(f"{name}: grey levels of shape {grey.shape}; expected (height, width)")
    low, high = grey.min(), grey.max()
    if not (low >= 0 and high <= 1):  # NaN, infinite or out-of-range pixels (decoded pictures have none)
        if not np.isfinite(grey).all():
            grey = _own_range(grey, name)
        grey, low = np.clip(grey, 0, 1), None
    if max(grey.shape) > WORK_SIDE:
        grey, low = _shrink(grey), None
    if low is None:
        low, high = grey.min(), grey.max()
    if high - low < MIN_CONTRAST:
        raise NoDigitFound(f"{name}: no digit found (the picture is nearly uniform)")
    grey = _flatten(grey)
    smooth = _blur(grey)
    threshold, separability = _otsu(smooth)
    mask, stroke_level, background_level = _split(grey, smooth, threshold)
    if stroke_level - background_level < MIN_CONTRAST or separability < MIN_SEPARABILITY:
        raise NoDigitFound(f"{name}: no digit found (no stroke stands out from the background)")
    mask, box = _main_strokes(mask, name)
    crop, mask = _crop(grey, mask, box, background_level)  # nothing outside the kept strokes' box is used
    if max(crop.shape) < MIN_DIGIT_SHARE * max(smooth.shape):
        raise NoDigitFound(f"{name}: no digit found (only a speck, {crop.shape[1]} x {crop.shape[0]} px "
                           f"of {smooth.shape[1]} x {smooth.shape[0]})")
    if _is_blob(mask, crop):
        raise NoDigitFound(f"{name}: no digit found (a solid blob, not strokes)")
    return _place(crop)


def preprocess(source: str | os.PathLike | bytes, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a picture file (or its bytes) and return the model's input ``(28, 28, 1)`` float32.

    Example: ``preprocess("photo.jpg")`` -> array whose digit is light on dark, 20 px tall, centred.
    """
    label = name or (str(source) if not isinstance(source, (bytes, bytearray, memoryview)) else "image")
    return to_mnist(read_grey(source, label, max_pixels, max_side=WORK_SIDE), label)


def quiet_pillow_size_warning() -> None:
    """Silence Pillow's DecompressionBombWarning (pictures over 89 MP) for this process: ``read_grey``
    holds what it decodes to its own pixel budget, so a 108 MP photo read at 1/8 scale is fine.
    Called by the CLI commands, which own their process; warnings filters are process-wide."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def save_seen(image: np.ndarray, out: str | os.PathLike, scale: int = 1) -> None:
    """Write a model input ``(28, 28[, 1])`` in [0, 1] as a greyscale PNG, each pixel ``scale`` px wide."""
    if scale < 1:
        raise MnistlabError(f"--scale {scale}: expected a positive integer")
    pixels = np.round(np.clip(np.asarray(image).reshape(SIDE, SIDE), 0, 1) * 255).astype(np.uint8)
    picture = Image.fromarray(pixels, mode="L").resize((SIDE * scale, SIDE * scale), Image.Resampling.NEAREST)
    with fileio.atomic_path(out, suffix=".png") as tmp:
        picture.save(tmp, format="PNG")


def ascii_art(image: np.ndarray) -> str:
    """The 28 x 28 input as 28 lines of text, darker characters for brighter (ink) pixels."""
    shades = " .:-=+*#%@"
    pixels = np.clip(np.asarray(image).reshape(SIDE, SIDE), 0, 1)
    return "\n".join("".join(shades[min(int(v * len(shades)), len(shades) - 1)] * 2 for v in row)
                     for row in pixels)


# ---------------------------------------------------------------------------- steps
def _shrink(grey: np.ndarray) -> np.ndarray:
    """Area-average down so the longest side is at most WORK_SIDE."""
    if max(grey.shape) <= WORK_SIDE:
        return grey
    size = _fit((grey.shape[1], grey.shape[0]), WORK_SIDE)
    return np.asarray(Image.fromarray(grey, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)


def _split(grey: np.ndarray, smooth: np.ndarray, threshold: float) -> tuple[np.ndarray, float, float]:
    """The stroke mask (``smooth`` above ``threshold``) and the mean grey level on and off it."""
    if _recipe is not None:
        mask = np.empty(grey.shape, dtype=bool)
        _, stroke_level, background_level = _recipe.split(np.ascontiguousarray(grey), np.ascontiguousarray(smooth),
                                                           *grey.shape, threshold, mask)
        return mask, stroke_level, background_level
    mask = smooth > threshold
    inked = np.count_nonzero(mask)  # the means below as sum / count: np.mean's value, without its overhead
    stroke_level = float(grey[mask].sum() / inked) if inked else 0.0
    background_level = float(grey[~mask].sum() / (mask.size - inked)) if inked < mask.size else 0.0
    return mask, stroke_level, background_level


def _crop(grey: np.ndarray, mask: np.ndarray, box: tuple[slice, slice],
          background_level: float) -> tuple[np.ndarray, np.ndarray]:
    """The strokes' box: grey levels scaled so the stroke core (90th percentile) is 1.0, kept where
    the strokes grown by a pixel are (anti-aliased edges keep their grey), 0 elsewhere; with the
    strokes' mask in the box."""
    if _recipe is not None:
        crop = np.empty((box[0].stop - box[0].start, box[1].stop - box[1].start), dtype=np.float32)
        _recipe.crop(np.ascontiguousarray(grey), np.ascontiguousarray(mask), *grey.shape, box[0].start, box[0].stop,
                     box[1].start, box[1].stop, background_level, crop)
        return crop, mask[box]
    grey, mask = grey[box], mask[box]
    core = _percentile(grey[mask], 90, strong=False)  # float32, as np.percentile(grey[mask], 90) gives
    levels = _clip01((grey - background_level) / max(core - background_level, 1e-6))
    return np.where(_dilate(mask), levels, 0), mask  # the mask is empty outside the box, so its growth too


def _otsu(values: np.ndarray) -> tuple[float, float]:
    """Otsu's threshold of ``values`` in [0, 1] (none below 0) and its separability (between /
    total variance)."""
    if _recipe is not None and values.dtype == np.float32:
        return _recipe.otsu(np.ascontiguousarray(values))
    bins = OTSU_BINS
    hist = np.bincount(np.minimum((values * bins).astype(np.intp), bins - 1).ravel(), minlength=bins)  # 1.0: last bin
    p = hist / max(values.size, 1)
    w0 = np.cumsum(p)
    m = np.cumsum(p * OTSU_CENTRES)
    total_mean = m[-1]
    spread = (w0 * (1 - w0))[:-1]  # 0 where one class is empty: no split there
    between = np.divide(((total_mean * w0 - m) ** 2)[:-1], spread, out=np.zeros(bins - 1), where=spread != 0)
    k = int(np.argmax(between))
    total_var = float((p * (OTSU_CENTRES - total_mean) ** 2).sum())
    return float(OTSU_EDGES[k + 1]), float(between[k] / total_var) if total_var > 0 else 0.0


def _percentiles(values: np.ndarray, qs: tuple[float, ...], strong: bool = True) -> list[np.floating]:
    """``np.percentile(values, q)`` (linear interpolation) for each q of ``qs``, rounded as NumPy
    rounds it: in float64 when ``strong`` (its answer for a list of q), else in the values' dtype
    (its answer for one number q). Several times cheaper on a working-size picture: one SIMD
    sort, where NumPy partitions around all the indices it needs at once (a slow path) and
    introselect itself slows down tenfold on a picture's many equal values (flat paper)."""
    ordered = np.sort(values, axis=None)
    last = ordered.size - 1
    out = []
    for q in qs:
        position = last * (q / 100)
        i = min(int(position), last)
        a, b, t = ordered[i], ordered[min(i + 1, last)], position - i
        t = np.float64(t) if strong else t
        out.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)
    return out


def _percentile(values: np.ndarray, q: float, strong: bool = True) -> np.floating:
    """``np.percentile(values, q)``, as ``_percentiles`` computes it."""
    return _percentiles(values, (q,), strong)[0]


def _median(values: np.ndarray) -> np.floating:
    """``np.median(values)`` of finite values, as NumPy rounds it (the mean of the two middle
    values in their own dtype), from a sort (see ``_percentiles``)."""
    ordered = np.sort(values, axis=None)
    middle = ordered.size // 2
    return ordered[middle] if ordered.size % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _border(grey: np.ndarray) -> np.ndarray:
    """The pixels of a frame 3% of the shorter side wide (at least 1 px), where the paper is."""
    h, w = grey.shape
    b = max(1, round(0.03 * min(h, w)))
    return np.concatenate([grey[:b].ravel(), grey[-b:].ravel(), grey[:, :b].ravel(), grey[:, -b:].ravel()])


def _ink_beyond_the_border(grey: np.ndarray) -> bool | None:
    """True (dark ink) or False (light ink) when the ink beyond the border's range of grey levels
    lies clearly on one side of it; None when neither side wins."""
    if _recipe is not None and grey.dtype == np.float32:
        dark = _recipe.polarity(np.ascontiguousarray(grey), *grey.shape, BORDER_PERCENTILE, POLARITY_MARGIN)
        return None if dark < 0 else bool(dark)
    low, high = _percentiles(_border(grey), (BORDER_PERCENTILE, 100 - BORDER_PERCENTILE))
    below = float(np.maximum(low - grey, 0).sum())
    above = float(np.maximum(grey - high, 0).sum())
    if max(below, above) >= POLARITY_MARGIN * min(below, above) and max(below, above) > 1e-3 * grey.size:
        return below > above
    return None


def _is_dark_on_light(grey: np.ndarray) -> bool:
    """True when the ink is darker than the paper. The border is paper, lit or in shadow, so the
    ink is what lies outside the border's range of grey levels: below it (dark ink) or above it.
    When neither side clearly wins (ink touching the border, a near-blank picture), the Otsu
    class holding most of the border is taken for the background."""
    dark = _ink_beyond_the_border(grey)
    if dark is not None:
        return dark
    border = _border(grey)
    threshold, _ = _otsu(grey)
    light_share = float((border > threshold).mean())
    if abs(light_share - 0.5) < 0.1:  # border split evenly: the larger class overall is background
        light_share = float((grey > threshold).mean())
    return light_share > 0.5


def _flatten(grey: np.ndarray) -> np.ndarray:
    """Grey levels -> ink as light on black with the paper's lighting taken out, shadow edges
    included. The background under the strokes is a grey-level opening (``_stroke_background``),
    which keeps straight edges exactly where a smooth estimate would smear them into a stroke.
    Dark ink is measured as the share of the paper's brightness it takes away, so a stroke reads
    the same in a shadow as in the light; light ink as its excess over the background."""
    smooth = _blur(grey)
    dark = _is_dark_on_light(smooth)
    if _recipe is not None and grey.dtype == np.float32:
        flat = np.empty(grey.shape, dtype=np.float32)
        _recipe.flatten(np.ascontiguousarray(grey), smooth, *grey.shape, dark, _windows(grey.shape), NOISE_MARGIN,
                        SATURATION, PAPER_FLOOR, flat)
        return flat
    ink, ink_smooth = (1 - grey, 1 - smooth) if dark else (grey, smooth)
    background = _stroke_background(ink_smooth, NOISE_MARGIN * _noise_sigma(grey, smooth) / 3)  # / 3: the blur's effect
    if dark:  # 1 - background is the paper's brightness
        return _clip01((ink - background) / np.maximum(1 - background, PAPER_FLOOR))
    return _clip01(ink - background)


def _clip01(values: np.ndarray) -> np.ndarray:
    """``np.clip(values, 0, 1)`` as two ufunc calls, without np.clip's Python layers."""
    return np.minimum(np.maximum(values, 0), 1)


def _noise_sigma(grey: np.ndarray, smooth: np.ndarray | None = None) -> float:
    """Pixel noise (standard deviation) from the median absolute residue of a 3 x 3 mean, which
    strokes (a minority of pixels) barely move; 0.943 is that residue's share of the noise.
    ``smooth``: ``_blur(grey)`` where the caller has it already."""
    smooth = _blur(grey) if smooth is None else smooth
    return float(_median(np.abs(grey - smooth))) * 1.4826 / 0.943


def _windows(shape: tuple[int, ...]) -> list[int]:
    """The windows of WINDOWS that fit in a picture of ``shape`` (at least the narrowest)."""
    return [k for k in WINDOWS if k <= max(shape)] or list(WINDOWS[:1])


def _stroke_background(ink: np.ndarray, noise: float) -> np.ndarray:
    """The background under light strokes: a grey-level opening (minimum, then maximum, over a
    square window) whose window is just wider than the widest stroke. Windows from WINDOWS are
    tried narrowest first (a granulometry): the ink the opening removes, counted above the
    ``noise`` level, grows while the window is narrower than the strokes and stops growing past
    them, at which width it is kept; wider things (lighting, the halves of a shadow) stay put.
    Each window's opening is ``_opening``'s, from ``_openings``, which shares work between windows."""
    removed_before = 0.0
    for background in _openings(ink, _windows(ink.shape)):
        removed = float(np.maximum(ink - background - noise, 0).sum())
        if 0 < removed_before and removed < (1 + SATURATION) * removed_before:
            break
        removed_before = removed
    return background


def _openings(ink: np.ndarray, windows: list[int]) -> Iterator[np.ndarray]:
    """``_opening(ink, k)`` for each k of ``windows`` (odd, increasing) in turn, exactly, for a
    fraction of the work: the picture is extended once for each group of windows (WINDOW_STAGES)
    as far as its widest window reads; each window's minimum goes on from the one before (a k x k
    minimum is a j x j one's followed by a (k - j + 1) square's); and every pass works on the
    extended picture as one flat row of pixels (see ``_slide``), keeping only full windows, so
    nothing is padded, copied or transposed again. Minima and maxima do not round, and no window
    reads past what the extension added, so each result is ``_opening``'s to the bit."""
    h, w = ink.shape
    pad = -1
    for k in windows:
        if k - 1 > pad:  # a new group of windows: extend the picture as far as its widest reads
            end = next((e for e in WINDOW_STAGES if k <= e), windows[-1])
            pad = max(j for j in windows if k <= j <= end) - 1
            extended = np.ascontiguousarray(_point_reflect(_point_reflect(ink, pad).T, pad).T)
            rows, line = extended.shape
            eroded, done = extended.ravel(), 1
        grow = k - done + 1  # the minimum so far covers done x done pixels
        eroded, done = _slide(_slide(eroded, grow, np.minimum), grow, np.minimum, line), k
        opened = np.empty(rows * line, dtype=eroded.dtype)  # whole lines, to be seen as rows
        _slide(_slide(eroded, k, np.maximum), k, np.maximum, line, out=opened[:len(eroded) - (k - 1) * (line + 1)])
        skip = pad - (k - 1)  # results stand at their window's first pixel, (k - 1) / 2 up and left, twice over
        yield opened.reshape(rows, line)[skip:skip + h, skip:skip + w]


def _opening(grey: np.ndarray, k: int) -> np.ndarray:
    """Grey-level opening with a k x k square: removes light things narrower than k, keeps the
    rest. The picture is first extended past its border by point reflection (a lighting ramp
    goes on rising, flat paper stays flat), so a bright border is not taken for a narrow peak.
    (The plain definition, for any k: ``_openings`` computes the same for a row of odd windows.)"""
    pad = k - 1  # the opening reads up to k - 1 px away: two passes of k // 2
    extended = _point_reflect(_point_reflect(grey, pad).T, pad).T
    opened = _square(_square(extended, k, np.minimum), k, np.maximum)
    return opened[pad:pad + grey.shape[0], pad:pad + grey.shape[1]]


def _point_reflect(grey: np.ndarray, pad: int) -> np.ndarray:
    """``pad`` rows added above and below: the picture's rows reflected through its edge row
    (2 * edge - mirror, NumPy's "odd" reflection), and past one reflection the last row repeated."""
    n = min(pad, grey.shape[0] - 1)
    top, bottom = 2 * grey[:1] - grey[n:0:-1], 2 * grey[-1:] - grey[-2:-n - 2:-1]
    out = np.concatenate([top, grey, bottom])
    if pad > n:
        out = np.concatenate([np.repeat(out[:1], pad - n, 0), out, np.repeat(out[-1:], pad - n, 0)])
    return out


def _square(grey: np.ndarray, k: int, op: np.ufunc) -> np.ndarray:
    """``op`` (np.minimum or np.maximum) over the k x k square centred on each pixel."""
    return _rows(_rows(grey, k, op).T, k, op).T


def _rows(grey: np.ndarray, k: int, op: np.ufunc) -> np.ndarray:
    """``op`` over the k rows centred on each row, the edge rows repeated outward (the paper goes
    on past the picture, so a margin between digit and edge is never taken for a stroke); by
    doubling the span covered, log2(k) passes instead of k."""
    before = k // 2
    return _slide(np.concatenate([np.repeat(grey[:1], before, 0), grey, np.repeat(grey[-1:], k - 1 - before, 0)]),
                  k, op)


def _slide(values: np.ndarray, k: int, op: np.ufunc, step: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """``op`` over each k consecutive rows of ``values``; on a flat picture (one row of pixels,
    lines of ``step`` px one after the other), over k pixels ``step`` apart: k in a line for step
    1, k down a column for a line's length. Only full windows: n - (k - 1) step results, each
    standing at its window's first pixel (a window running past a line's end into the next one
    stands where no full window does, so it is never read). By doubling the span covered,
    log2(k) passes instead of k, each one contiguous run of memory (the cheapest a ufunc gets)."""
    n, span, y = len(values) - (k - 1) * step, 1, values
    while 2 * span <= k:
        y = op(y[:-span * step], y[span * step:])  # y[i] now covers i, i + step, ..., i + (2 span - 1) step
        span *= 2
    return op(y[:n], y[(k - span) * step:(k - span) * step + n], out=out)


def _blur(grey: np.ndarray) -> np.ndarray:
    """A 3 x 3 mean (edges repeated) to steady the threshold against pixel noise. The edges are
    repeated by concatenation, not np.pad, whose own overhead outweighs a small picture's sums."""
    if _recipe is not None and grey.dtype == np.float32 and grey.size:
        out = np.empty(grey.shape, dtype=np.float32)
        _recipe.blur(np.ascontiguousarray(grey), *grey.shape, out)
        return out
    framed = np.concatenate([grey[:1], grey, grey[-1:]])
    rows = framed[:-2] + framed[1:-1] + framed[2:]
    rows = np.concatenate([rows[:, :1], rows, rows[:, -1:]], axis=1)
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 9


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Grow ``mask`` by one pixel (8-neighbours), so anti-aliased stroke edges keep their grey."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    out = grown.copy()
    out[:, 1:] |= grown[:, :-1]
    out[:, :-1] |= grown[:, 1:]
    return out


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True: (row, start, end) arrays, ``end`` exclusive, in row-major order."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=bool)  # a False column each side: no run crosses a row's end
    padded[:, 1:-1] = mask
    flat = padded.ravel()
    rows, cols = np.divmod(np.flatnonzero(flat[1:] != flat[:-1]), w + 2)  # each row: start, end, start, ...
    return rows[::2], cols[::2], cols[1::2]


def _pieces(runs: tuple[np.ndarray, np.ndarray, np.ndarray], width: int, diagonal: bool) -> np.ndarray:
    """The connected piece of each run of a ``width`` px wide mask (the index of a run standing
    for the piece): runs of adjacent rows are linked where they overlap, or touch corner to
    corner if ``diagonal`` (8-connected pieces, as strokes; 4-connected, as the paper around and
    inside them). Vectorised: each run first points to the first run it touches in the row
    above, a forest that pointer jumping flattens; the other links (where pieces merge) then
    join their pieces' roots (``_join``)."""
    rows, starts, ends = runs
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    reach = 0 if diagonal else 1  # 4-connected runs must share a column, not just a corner
    line = (width + 2) * rows  # keys line + column order the runs by row, then column, rows apart
    key_start, key_end = line + starts, line + ends
    # The runs of the row above touching run b are those ending at or after b's start (+ reach)
    # and starting at or before its end (- reach): the run indices first[b] <= a < stop[b].
    first = np.searchsorted(key_end, key_start - (width + 2 - reach), side="left")
    stop = np.searchsorted(key_start, key_end - (width + 2 + reach), side="right")
    count = stop - first
    label = np.where(count > 0, first, np.arange(n))
    for _ in range(int(rows[-1] - rows[0]).bit_length()):  # 2**j rows up after j jumps: all the way
        label = label[label]
    extra = count > 1  # run b touches more than one run above: pieces may merge there
    if extra.any():
        more = count[extra] - 1  # links besides the first, per such run
        b = np.repeat(np.flatnonzero(extra), more)
        offset = np.arange(len(b)) - np.repeat(np.cumsum(more) - more, more)  # 0, 1, ... within each run's links
        label = _join(label, first[b] + 1 + offset, b)
    return label


def _flatten_forest(parent: np.ndarray) -> np.ndarray:
    """Every node of a forest (``parent[i] <= i``, roots their own parent) pointed at its root,
    by pointer jumping: each pass halves the distance left, so log2(depth) passes."""
    while True:
        grand = parent[parent]
        if (grand == parent).all():
            return parent
        parent = grand


def _join(label: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Roots ``label`` (flattened, each node's root the smallest index of its piece so far)
    merged along the links ``a[i] -- b[i]``. A few links (a digit's merging strokes) are joined
    one by one, in Python; many (noise) in rounds of NumPy: each root of a link moves to the
    smaller root of that link, then the forest is flattened again, until every link joins one
    piece."""
    if len(a) <= FEW_LINKS:
        parent: dict[int, int] = {}

        def root(i: int) -> int:
            while i in parent:
                i = parent[i]
            return i

        for x, y in zip(label[a].tolist(), label[b].tolist()):
            x, y = root(x), root(y)
            if x != y:
                parent[max(x, y)] = min(x, y)
        if not parent:
            return label
        remap = np.arange(len(label))
        remap[list(parent)] = [root(i) for i in parent]
        return remap[label]
    while True:
        la, lb = label[a], label[b]
        split = la != lb
        if not split.any():
            return label
        la, lb = la[split], lb[split]
        np.minimum.at(label, np.maximum(la, lb), np.minimum(la, lb))
        label = _flatten_forest(label)
        a, b = a[split], b[split]


def _main_strokes(mask: np.ndarray, name: str) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Keep the 8-connected pieces of ``mask`` that matter (each at least KEEP_FRACTION of the
    largest); with their bounding box."""
    if _recipe is not None:
        kept = np.empty(mask.shape, dtype=bool)
        noise, largest, _, top, bottom, left, right = _recipe.strokes(
            np.ascontiguousarray(mask, dtype=bool), *mask.shape, MAX_RUNS, KEEP_FRACTION, kept)
        if noise:
            raise NoDigitFound(f"{name}: no digit found (the picture is mostly noise)")
        if largest < MIN_STROKE_PIXELS:
            raise NoDigitFound(f"{name}: no digit found (only specks stand out)")
        return kept, (slice(top, bottom), slice(left, right))
    rows, starts, ends = runs = _runs(mask)
    if len(rows) > MAX_RUNS:
        raise NoDigitFound(f"{name}: no digit found (the picture is mostly noise)")
    pieces = _pieces(runs, mask.shape[1], diagonal=True)
    sizes = np.bincount(pieces, weights=ends - starts, minlength=len(rows)) if len(rows) else np.zeros(0)
    if not len(sizes) or sizes.max() < MIN_STROKE_PIXELS:
        raise NoDigitFound(f"{name}: no digit found (only specks stand out)")
    keep = sizes[pieces] >= KEEP_FRACTION * sizes.max()
    if keep.all():
        kept = mask
    else:  # +1 where a kept run starts, -1 where it ends: the running sum along each row is the run
        rows, starts, ends = rows[keep], starts[keep], ends[keep]
        marks = np.zeros((mask.shape[0], mask.shape[1] + 1), dtype=np.int8)
        marks[rows, starts] = 1
        marks[rows, ends] = -1
        kept = np.cumsum(marks[:, :-1], axis=1, dtype=np.int8).astype(bool)
    return kept, (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(starts.min()), int(ends.max())))


def _is_blob(ink: np.ndarray, levels: np.ndarray) -> bool:
    """A tap of the pen, a dot or a filled shape rather than strokes: a squarish box mostly
    inked, with no loop in the ink's core (``levels`` >= 0.5) and an outline without hollows.
    Heavy-ink digits fill their box too, but 0, 6, 8 and 9 keep a loop and the rest a hollow."""
    h, w = ink.shape
    if np.count_nonzero(ink) / ink.size <= MAX_BLOB_FILL or not BLOB_ASPECT[0] < w / h < BLOB_ASPECT[1]:
        return False
    return not _has_loop(ink & (levels >= 0.5)) and _solidity(ink) > MIN_BLOB_SOLIDITY


def _has_loop(ink: np.ndarray) -> bool:
    """True when ``ink`` (a cropped mask) encloses paper: a 4-connected piece of paper of at
    least MIN_HOLE_PIXELS that does not reach the frame around the crop."""
    paper = ~np.pad(ink, 1)
    rows, starts, ends = runs = _runs(paper)
    pieces = _pieces(runs, paper.shape[1], diagonal=False)
    sizes = np.bincount(pieces, weights=ends - starts, minlength=len(rows))
    sizes[pieces[0]] = 0  # the first run lies in the frame: the paper outside
    return bool(sizes.max() >= MIN_HOLE_PIXELS)


def _solidity(ink: np.ndarray) -> float:
    """Inked area / the area of its convex hull (over pixel corners): near 1 for a dot or a
    square, lower for the hollowed outline of a digit's strokes."""
    rows, starts, ends = _runs(ink)
    corners = np.concatenate([np.stack([x, y], 1) for x in (starts, ends) for y in (rows, rows + 1)])
    hull = _convex_hull(np.unique(corners, axis=0))
    x, y = hull[:, 0].astype(np.float64), hull[:, 1].astype(np.float64)
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))  # the shoelace formula
    return float(ink.sum()) / area if area > 0 else 1.0


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain: the hull's corners of ``(N, 2)`` points sorted by x then y."""
    def chain(ordered: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for p in ordered:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()  # no left turn: out[-1] is inside
            out.append(p)
        return out[:-1]

    ordered = [(int(x), int(y)) for x, y in points]
    return np.array(chain(ordered) + chain(ordered[::-1]))


def _place(crop: np.ndarray) -> np.ndarray:
    """The crop scaled to the 20 px box and centred in 28 x 28: ``_centre(_scale_to_box(crop))``."""
    if _recipe is None:
        return _centre(_scale_to_box(crop))
    resized = _resized(crop)
    out = np.empty((SIDE, SIDE, 1), dtype=np.float32)
    _recipe.place(resized, *resized.shape, SIDE, CENTRE, out)
    return out


def _resized(crop: np.ndarray) -> np.ndarray:
    """``crop`` resized (Lanczos, anti-aliased) so its longest side is DIGIT_BOX px, aspect kept:
    across, then down, as two one-axis passes (Pillow 13 picks the order of its two passes by the
    shape, so a single call's last bits depend on the version)."""
    h, w = crop.shape
    f = DIGIT_BOX / max(h, w)
    width, height = max(1, round(w * f)), max(1, round(h * f))
    crop = np.ascontiguousarray(crop, dtype=np.float32)
    if _recipe is not None:
        out = np.empty((height, width), dtype=np.float32)
        _recipe.resize(crop, h, w, height, width, out)
        return out
    image = Image.frombuffer("F", (w, h), crop, "raw", "F", 0, 1)  # shares crop's memory: no copy, no checks
    lanczos = Image.Resampling.LANCZOS
    return np.asarray(image.resize((width, h), lanczos).resize((width, height), lanczos))


def _scale_to_box(crop: np.ndarray) -> np.ndarray:
    """Scale so the longest side is DIGIT_BOX px, keeping the aspect ratio; stroke core -> 1.0."""
    scaled = _clip01(_resized(crop))
    peak = scaled.max()
    return scaled / peak if peak > 0 else scaled


def _centre(digit: np.ndarray) -> np.ndarray:
    """Paste ``digit`` (at most 20 x 20) into 28 x 28 with its centre of mass at (14, 14)."""
    h, w = digit.shape
    mass = digit.sum()
    com_r = float((digit.sum(1) * np.arange(h)).sum() / mass) if mass else (h - 1) / 2
    com_c = float((digit.sum(0) * np.arange(w)).sum() / mass) if mass else (w - 1) / 2
    top = min(max(round(CENTRE - com_r), 0), SIDE - h)  # clipped: never cut the digit
    left = min(max(round(CENTRE - com_c), 0), SIDE - w)
    out = np.zeros((SIDE, SIDE, 1), dtype=np.float32)
    out[top:top + h, left:left + w, 0] = digit
    return out

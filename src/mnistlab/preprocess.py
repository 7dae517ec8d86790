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
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from types import MappingProxyType
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnistlab import fileio
from mnistlab.errors import MnistlabError

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
MAX_RUNS = 25_000  # stroke runs (row segments) at working size: more is noise, not a digit
BORDER_PERCENTILE = 5  # the border's range of grey levels (paper, lit or in shadow): 5th to 95th percentile
POLARITY_MARGIN = 1.5  # ink beyond one side of that range must outweigh the other side's this many times
WINDOWS = (3, 5, 7, 9, 11, 15, 21, 29, 41, 57, 81, 115)  # px, square windows tried for the strokes, ~sqrt(2) apart
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
        la = np.asarray(image.convert("LA"), dtype=np.float32) / 255
        grey, alpha = la[..., 0], la[..., 1]
        if alpha.min() >= 1:
            return grey
        # Ink drawn on a transparent canvas: lay it on white if the ink is dark, on black if light.
        ink = float((grey * alpha).sum() / max(alpha.sum(), 1e-6))
        background = 1.0 if ink < 0.5 else 0.0
        return grey * alpha + background * (1 - alpha)
    values = np.asarray(image, dtype=np.float32)
    if full_scale is not None:
        return np.clip(values * np.float32(1 / full_scale), 0, 1)
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
    if not np.isfinite(grey).all():
        grey = _own_range(grey, name)
    grey = _shrink(np.clip(grey, 0, 1))
    if grey.max() - grey.min() < MIN_CONTRAST:
        raise NoDigitFound(f"{name}: no digit found (the picture is nearly uniform)")
    grey = _flatten(grey)
    smooth = _blur(grey)
    threshold, separability = _otsu(smooth)
    mask = smooth > threshold
    stroke_level = float(grey[mask].mean()) if mask.any() else 0.0
    background_level = float(grey[~mask].mean()) if (~mask).any() else 0.0
    if stroke_level - background_level < MIN_CONTRAST or separability < MIN_SEPARABILITY:
        raise NoDigitFound(f"{name}: no digit found (no stroke stands out from the background)")
    mask = _main_strokes(mask, name)
    levels = np.clip((grey - background_level) / max(np.percentile(grey[mask], 90) - background_level, 1e-6), 0, 1)
    levels = np.where(_dilate(mask), levels, 0)
    rows, cols = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    crop = levels[box]
    if max(crop.shape) < MIN_DIGIT_SHARE * max(grey.shape):
        raise NoDigitFound(f"{name}: no digit found (only a speck, {crop.shape[1]} x {crop.shape[0]} px "
                           f"of {grey.shape[1]} x {grey.shape[0]})")
    if _is_blob(mask[box], crop):
        raise NoDigitFound(f"{name}: no digit found (a solid blob, not strokes)")
    return _centre(_scale_to_box(crop))


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


def _otsu(values: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """Otsu's threshold of ``values`` in [0, 1] and its separability (between / total variance)."""
    hist = np.bincount(np.clip((values * bins).astype(np.int32), 0, bins - 1).ravel(), minlength=bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m = np.cumsum(p * centres)
    total_mean = m[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * w0 - m) ** 2 / (w0 * (1 - w0))
    between = np.nan_to_num(between[:-1], nan=0.0, posinf=0.0)
    k = int(np.argmax(between))
    total_var = float((p * (centres - total_mean) ** 2).sum())
    return float(edges[k + 1]), float(between[k] / total_var) if total_var > 0 else 0.0


def _border(grey: np.ndarray) -> np.ndarray:
    """The pixels of a frame 3% of the shorter side wide (at least 1 px), where the paper is."""
    h, w = grey.shape
    b = max(1, round(0.03 * min(h, w)))
    return np.concatenate([grey[:b].ravel(), grey[-b:].ravel(), grey[:, :b].ravel(), grey[:, -b:].ravel()])


def _is_dark_on_light(grey: np.ndarray) -> bool:
    """True when the ink is darker than the paper. The border is paper, lit or in shadow, so the
    ink is what lies outside the border's range of grey levels: below it (dark ink) or above it.
    When neither side clearly wins (ink touching the border, a near-blank picture), the Otsu
    class holding most of the border is taken for the background."""
    border = _border(grey)
    low, high = np.percentile(border, [BORDER_PERCENTILE, 100 - BORDER_PERCENTILE])
    below = float(np.maximum(low - grey, 0).sum())
    above = float(np.maximum(grey - high, 0).sum())
    if max(below, above) >= POLARITY_MARGIN * min(below, above) and max(below, above) > 1e-3 * grey.size:
        return below > above
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
    ink, ink_smooth = (1 - grey, 1 - smooth) if dark else (grey, smooth)
    background = _stroke_background(ink_smooth, NOISE_MARGIN * _noise_sigma(grey) / 3)  # / 3: the blur's effect
    if dark:  # 1 - background is the paper's brightness
        return np.clip((ink - background) / np.maximum(1 - background, PAPER_FLOOR), 0, 1)
    return np.clip(ink - background, 0, 1)


def _noise_sigma(grey: np.ndarray) -> float:
    """Pixel noise (standard deviation) from the median absolute residue of a 3 x 3 mean, which
    strokes (a minority of pixels) barely move; 0.943 is that residue's share of the noise."""
    return float(np.median(np.abs(grey - _blur(grey)))) * 1.4826 / 0.943


def _stroke_background(ink: np.ndarray, noise: float) -> np.ndarray:
    """The background under light strokes: a grey-level opening (minimum, then maximum, over a
    square window) whose window is just wider than the widest stroke. Windows from WINDOWS are
    tried narrowest first (a granulometry): the ink the opening removes, counted above the
    ``noise`` level, grows while the window is narrower than the strokes and stops growing past
    them, at which width it is kept; wider things (lighting, the halves of a shadow) stay put."""
    windows = [k for k in WINDOWS if k <= max(ink.shape)] or list(WINDOWS[:1])
    removed_before = 0.0
    for k in windows:
        background = _opening(ink, k)
        removed = float(np.maximum(ink - background - noise, 0).sum())
        if 0 < removed_before and removed < (1 + SATURATION) * removed_before:
            break
        removed_before = removed
    return background


def _opening(grey: np.ndarray, k: int) -> np.ndarray:
    """Grey-level opening with a k x k square: removes light things narrower than k, keeps the
    rest. The picture is first extended past its border by point reflection (a lighting ramp
    goes on rising, flat paper stays flat), so a bright border is not taken for a narrow peak."""
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
    y = np.concatenate([np.repeat(grey[:1], before, 0), grey, np.repeat(grey[-1:], k - 1 - before, 0)])
    n, span = grey.shape[0], 1
    while 2 * span <= k:
        y = op(y[:-span], y[span:])  # row i now covers rows i .. i + 2 span - 1
        span *= 2
    return op(y[:n], y[k - span:k - span + n])


def _blur(grey: np.ndarray) -> np.ndarray:
    """A 3 x 3 mean (edges repeated) to steady the threshold against pixel noise."""
    framed = np.pad(grey, 1, mode="edge")
    rows = framed[:-2] + framed[1:-1] + framed[2:]
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
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    return rows, starts, ends


def _pieces(runs: tuple[np.ndarray, np.ndarray, np.ndarray], height: int, diagonal: bool) -> np.ndarray:
    """The connected piece of each run (the index of a run standing for the piece): runs of
    adjacent rows are linked where they overlap, or touch corner to corner if ``diagonal``
    (8-connected pieces, as strokes; 4-connected, as the paper around and inside them)."""
    rows, starts, ends = runs
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    reach = 0 if diagonal else 1  # 4-connected runs must share a column, not just a corner
    row_first = np.searchsorted(rows, np.arange(height + 1))
    for r in range(1, height):
        a, a_end = int(row_first[r - 1]), int(row_first[r])  # runs of the row above
        b, b_end = a_end, int(row_first[r + 1])
        while a < a_end and b < b_end:
            if starts[a] + reach <= ends[b] and starts[b] + reach <= ends[a]:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[ra] = rb
            if ends[a] < ends[b]:
                a += 1
            else:
                b += 1
    return np.array([find(i) for i in range(len(rows))], dtype=np.int64)


def _main_strokes(mask: np.ndarray, name: str) -> np.ndarray:
    """Keep the 8-connected pieces of ``mask`` that matter (each at least KEEP_FRACTION of the largest)."""
    rows, starts, ends = runs = _runs(mask)
    if len(rows) > MAX_RUNS:
        raise NoDigitFound(f"{name}: no digit found (the picture is mostly noise)")
    pieces = _pieces(runs, mask.shape[0], diagonal=True)
    sizes = np.bincount(pieces, weights=ends - starts, minlength=len(rows)) if len(rows) else np.zeros(0)
    if not len(sizes) or sizes.max() < MIN_STROKE_PIXELS:
        raise NoDigitFound(f"{name}: no digit found (only specks stand out)")
    keep = sizes[pieces] >= KEEP_FRACTION * sizes.max()
    kept = np.zeros_like(mask)
    for r, s, e in zip(rows[keep], starts[keep], ends[keep]):
        kept[r, s:e] = True
    return kept


def _is_blob(ink: np.ndarray, levels: np.ndarray) -> bool:
    """A tap of the pen, a dot or a filled shape rather than strokes: a squarish box mostly
    inked, with no loop in the ink's core (``levels`` >= 0.5) and an outline without hollows.
    Heavy-ink digits fill their box too, but 0, 6, 8 and 9 keep a loop and the rest a hollow."""
    h, w = ink.shape
    if ink.mean() <= MAX_BLOB_FILL or not BLOB_ASPECT[0] < w / h < BLOB_ASPECT[1]:
        return False
    return not _has_loop(ink & (levels >= 0.5)) and _solidity(ink) > MIN_BLOB_SOLIDITY


def _has_loop(ink: np.ndarray) -> bool:
    """True when ``ink`` (a cropped mask) encloses paper: a 4-connected piece of paper of at
    least MIN_HOLE_PIXELS that does not reach the frame around the crop."""
    paper = ~np.pad(ink, 1)
    rows, starts, ends = runs = _runs(paper)
    pieces = _pieces(runs, paper.shape[0], diagonal=False)
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


def _scale_to_box(crop: np.ndarray) -> np.ndarray:
    """Scale so the longest side is DIGIT_BOX px, keeping the aspect ratio; stroke core -> 1.0."""
    h, w = crop.shape
    f = DIGIT_BOX / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    scaled = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))
    scaled = np.clip(scaled, 0, 1)
    peak = scaled.max()
    return scaled / peak if peak > 0 else scaled


def _centre(digit: np.ndarray) -> np.ndarray:
    """Paste ``digit`` (at most 20 x 20) into 28 x 28 with its centre of mass at (14, 14)."""
    h, w = digit.shape
    mass = digit.sum()
    com_r = float((digit.sum(1) * np.arange(h)).sum() / mass) if mass else (h - 1) / 2
    com_c = float((digit.sum(0) * np.arange(w)).sum() / mass) if mass else (w - 1) / 2
    top = int(np.clip(round(CENTRE - com_r), 0, SIDE - h))  # clipped: never cut the digit
    left = int(np.clip(round(CENTRE - com_c), 0, SIDE - w))
    out = np.zeros((SIDE, SIDE, 1), dtype=np.float32)
    out[top:top + h, left:left + w, 0] = digit
    return out

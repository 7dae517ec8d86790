"""Any picture of one digit -> the 28 x 28 input an MNIST model expects, by MNIST's own recipe.

MNIST's digits are light on dark, cropped to their bounding box, scaled so the longest side is
20 px (keeping the aspect ratio, anti-aliased), then pasted into 28 x 28 so that the centre of
mass sits at the centre (row 14.0, column 14.0 on average over the test set). Photos and scans
are dark ink on light paper, any size, with uneven lighting and noise, so ``to_mnist`` first:

1. shrinks big pictures to at most ``WORK_SIDE`` px (area averaging; the digit ends up 20 px,
   so 6 x that keeps every detail that survives);
2. finds the polarity: the Otsu class that holds most of the border is the background, and a
   light background means dark ink, so the picture is inverted;
3. flattens the lighting: a coarse grey-level opening (cell medians, then a 3 x 3 cell minimum)
   estimates the background, which is subtracted;
4. thresholds with Otsu on a lightly blurred copy and keeps the connected strokes big enough
   to matter (specks of noise are dropped), refusing pictures with no clear stroke: flat,
   noise, a speck, or a solid blob such as a single tap of the pen;
5. keeps the stroke's own grey levels (scaled so the stroke core is 1.0) inside that mask.

Images are data: only the formats in ``ACCEPTED_FORMATS`` are decoded (Pillow's EPS reader, for
one, would run Ghostscript), the pixel count is checked before decoding (decompression bombs),
and animations give their first frame.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
MAX_BLOB_FILL = 0.7  # ink share of a squarish bounding box above which it is a blob (2 of MNIST's 10,000 test digits)
BLOB_ASPECT = (0.6, 1.6)  # width / height of a "squarish" box
KEEP_FRACTION = 0.05  # a stroke piece smaller than this share of the largest is noise
MAX_RUNS = 25_000  # stroke runs (row segments) at working size: more is noise, not a digit
CELLS = 8  # background grid: cells per side for the lighting estimate


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
    pictures come back area-averaged down to that longest side (JPEGs are decoded at a reduced
    scale to begin with, which makes a 12 MP photo cheap). ``name`` labels errors.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "image"
        fp: io.BytesIO | Path = io.BytesIO(bytes(source))
    else:
        name = name or str(source)
        fp = Path(source)
        if not fp.is_file():
            raise UnreadableImage(f"{name}: no such file")
    accepted = ", ".join(ACCEPTED_FORMATS)
    try:
        image = Image.open(fp, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name}: refused, {exc}") from None
    except UnidentifiedImageError:
        raise UnreadableImage(f"{name}: not a readable image; expected one of {accepted}") from None
    except OSError as exc:
        raise UnreadableImage(f"{name}: cannot read ({exc.strerror or exc})") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{name}: {width} x {height} = {width * height:,} pixels; "
                                f"expected at most {max_pixels:,}")
        if width < 1 or height < 1:
            raise UnreadableImage(f"{name}: empty image ({width} x {height})")
        fmt = image.format
        try:
            image.seek(0)
            if max_side and fmt == "JPEG":
                image.draft("L", (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale, never below max_side
            image.load()
            image = ImageOps.exif_transpose(image)
            return _grey_levels(image, max_side)
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
            raise UnreadableImage(f"{name}: damaged {fmt} data ({exc}); expected a complete image") from None


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so the longest side is ``side``."""
    f = side / max(size)
    return max(1, round(size[0] * f)), max(1, round(size[1] * f))


def _grey_levels(image: Image.Image, max_side: int | None = None) -> np.ndarray:
    """Any Pillow mode -> ``(H, W)`` float32 grey levels in [0, 1] (opaque 8-bit pictures shrunk to
    ``max_side`` in 8 bits, the cheap way; the rest are shrunk later by ``to_mnist``)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale PNG / TIFF
        return np.clip(np.asarray(image, dtype=np.float32) / 65535, 0, 1)
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        grey = image.convert("L")
        if max_side and max(grey.size) > max_side:
            grey = grey.resize(_fit(grey.size, max_side), Image.Resampling.BOX)
        return np.multiply(np.asarray(grey), np.float32(1 / 255), dtype=np.float32)
    la = np.asarray(image.convert("RGBA").convert("LA"), dtype=np.float32) / 255
    grey, alpha = la[..., 0], la[..., 1]
    if alpha.min() >= 1:
        return grey
    # Ink drawn on a transparent canvas: lay it on white if the ink is dark, on black if light.
    ink = float((grey * alpha).sum() / max(alpha.sum(), 1e-6))
    background = 1.0 if ink < 0.5 else 0.0
    return grey * alpha + background * (1 - alpha)


# ---------------------------------------------------------------------------- the recipe
def to_mnist(grey: np.ndarray, name: str = "image") -> np.ndarray:
    """Grey levels ``(H, W)`` in [0, 1], either polarity -> MNIST input ``(28, 28, 1)`` float32 in [0, 1].

    Raises ``NoDigitFound`` for a blank, flat or noisy picture with no clear stroke.
    """
    grey = _shrink(np.asarray(grey, dtype=np.float32))
    if grey.max() - grey.min() < MIN_CONTRAST:
        raise NoDigitFound(f"{name}: no digit found (the picture is nearly uniform)")
    if _is_dark_on_light(grey):
        grey = 1 - grey
    grey = np.clip(grey - _background(grey), 0, 1)
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
    if mask[box].mean() > MAX_BLOB_FILL and BLOB_ASPECT[0] < crop.shape[1] / crop.shape[0] < BLOB_ASPECT[1]:
        raise NoDigitFound(f"{name}: no digit found (a solid blob, not strokes)")
    return _centre(_scale_to_box(crop))


def preprocess(source: str | os.PathLike | bytes, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a picture file (or its bytes) and return the model's input ``(28, 28, 1)`` float32.

    Example: ``preprocess("photo.jpg")`` -> array whose digit is light on dark, 20 px tall, centred.
    """
    label = name or (str(source) if not isinstance(source, (bytes, bytearray, memoryview)) else "image")
    return to_mnist(read_grey(source, label, max_pixels, max_side=WORK_SIDE), label)


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


def _is_dark_on_light(grey: np.ndarray) -> bool:
    """True when the background (the Otsu class holding most of the border) is the lighter one."""
    threshold, _ = _otsu(grey)
    h, w = grey.shape
    b = max(1, round(0.03 * min(h, w)))  # border frame width, px
    border = np.concatenate([grey[:b].ravel(), grey[-b:].ravel(), grey[:, :b].ravel(), grey[:, -b:].ravel()])
    light_share = float((border > threshold).mean())
    if abs(light_share - 0.5) < 0.1:  # border split evenly: the larger class overall is background
        light_share = float((grey > threshold).mean())
    return light_share > 0.5


def _background(grey: np.ndarray) -> np.ndarray:
    """Lighting estimate of a light-on-dark picture: median per cell (of a 4 x 4 area-averaged
    grid), minimum over 3 x 3 cells, bilinear back to full size. Strokes narrower than ~2 cells
    do not raise it."""
    h, w = grey.shape
    grid = 4 * CELLS
    small = np.asarray(Image.fromarray(grey, mode="F").resize((grid, grid), Image.Resampling.BOX))
    cells = np.median(small.reshape(CELLS, 4, CELLS, 4).transpose(0, 2, 1, 3).reshape(CELLS, CELLS, 16), axis=2)
    framed = np.pad(cells, 1, mode="edge")
    opened = np.min([framed[i:i + CELLS, j:j + CELLS] for i in range(3) for j in range(3)], axis=0)
    estimate = Image.fromarray(opened.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(estimate, dtype=np.float32)


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


def _main_strokes(mask: np.ndarray, name: str) -> np.ndarray:
    """Keep the 8-connected pieces of ``mask`` that matter (each at least KEEP_FRACTION of the
    largest); connected pieces are found by linking overlapping runs of adjacent rows."""
    rows, starts, ends = _runs(mask)
    if len(rows) > MAX_RUNS:
        raise NoDigitFound(f"{name}: no digit found (the picture is mostly noise)")
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(1, mask.shape[0]):
        a, a_end = int(row_first[r - 1]), int(row_first[r])  # runs of the row above
        b, b_end = a_end, int(row_first[r + 1])
        while a < a_end and b < b_end:
            if starts[a] <= ends[b] and starts[b] <= ends[a]:  # touch, diagonals included
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[ra] = rb
            if ends[a] < ends[b]:
                a += 1
            else:
                b += 1
    roots = np.array([find(i) for i in range(len(rows))], dtype=np.int64)
    sizes = np.bincount(roots, weights=ends - starts, minlength=len(rows)) if len(rows) else np.zeros(0)
    if not len(sizes) or sizes.max() < MIN_STROKE_PIXELS:
        raise NoDigitFound(f"{name}: no digit found (only specks stand out)")
    keep = sizes[roots] >= KEEP_FRACTION * sizes.max()
    kept = np.zeros_like(mask)
    for r, s, e in zip(rows[keep], starts[keep], ends[keep]):
        kept[r, s:e] = True
    return kept


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

"""Test sets that differ from MNIST the way real handwriting does: the shift benchmark's generators.

Every set is a pure function of a seed: ``build_set(spec, n, seed, test)`` returns a ``ShiftData``
with images ``(N, 28, 28, 1)`` float32 in [0, 1] (multiples of 1/255, so a cached copy equals a
fresh one) and their labels. Most sets transform a seeded subset of MNIST's 10,000 test digits
(the same subset for every set, so the sets compare digit for digit with ``clean``):

- shapes are changed at the source resolution (``UPSCALE`` x, where a stroke is ~10 px wide) and
  brought back by MNIST's own framing (``frame``: 20 px box, centre of mass), as a user's picture
  would be by ``preprocess.to_mnist``;
- ``offcentre`` and ``small`` are the exception: they are fed as 28 x 28 without re-framing, as a
  client sending raw pixels would;
- camera sets render the digit as a photo (dark ink on light paper, shadow, uneven light, noise,
  JPEG) and read it back through ``preprocess.preprocess`` like a user's photo.

Two populations are not MNIST's writers at all and are held out from any recipe tuning: digits
set in installed fonts (``FONTS``; Debian packages) and scikit-learn's 1,797 8 x 8 scans of other
writers (``load_digits``), upscaled onto noisy paper. A digit that preprocessing refuses comes
back as an all-zero image (``ShiftData.refused``): a user would get an error, not an answer.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mnistlab import preprocess
from mnistlab.errors import MnistlabError

SIDE = 28  # px, MNIST's frame
UPSCALE = 4  # source resolution: the 20 px digit box becomes 80 px, a stroke ~10 px wide
BIG = SIDE * UPSCALE  # px
CANVAS = BIG * 3 // 2  # px: room for a rotated, sheared or stretched 80 px digit
CHUNK = 128  # images per NumPy batch: ~6 MB per float array at UPSCALE x, ~70 MB for a disk of radius 10
INK_THRESHOLD = 0.4  # grey level above which an upscaled pixel is stroke (for the skeleton)
FRAME_LEVEL = 0.4  # share of the peak above which a pixel counts for the digit's box (closest to to_mnist's)
LEVELS = ("none", "moderate", "severe", "external")
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts")
FONT_SIZE = 64  # px (em size): a digit ~45 px tall, over twice MNIST's 20 px box
DIGITS_SCANS = 1797  # scikit-learn's load_digits
OPT_SIDE, OPT_BLOCK = 32, 4  # UCI optical digits: 32 x 32 bitmaps counted in 4 x 4 blocks


class Unavailable(MnistlabError):
    """A set cannot be built on this machine (a package or its data is missing)."""


@dataclass(frozen=True)
class ShiftData:
    """One built set: images ``(N, 28, 28, 1)`` float32 in [0, 1], labels ``(N,)`` int64, a note."""

    images: np.ndarray
    labels: np.ndarray
    note: str = ""  # what was used or skipped, e.g. fonts found

    @property
    def refused(self) -> np.ndarray:
        """``(N,)`` bool: digits preprocessing refused (all-zero images), counted as errors."""
        return self.images.reshape(len(self.images), -1).max(axis=1) == 0


# ---------------------------------------------------------------------------- helpers
def _grey(images: np.ndarray) -> np.ndarray:
    """``(N, 28, 28[, 1])`` -> ``(N, 28, 28)`` float32, or a one-line error."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise MnistlabError(f"images of shape {np.shape(images)}; expected (N, 28, 28, 1)")
    return x


def _finish(grey: np.ndarray) -> np.ndarray:
    """``(N, 28, 28)`` -> ``(N, 28, 28, 1)`` float32 in [0, 1], rounded to 8-bit levels."""
    return (np.round(np.clip(grey, 0, 1) * 255) / 255).astype(np.float32)[..., None]


def _per_image(values: Any, n: int) -> np.ndarray:
    """A scalar or ``(n,)`` parameter as ``(n,)`` float64."""
    return np.broadcast_to(np.asarray(values, dtype=np.float64), (n,))


def _upscale(grey28: np.ndarray) -> np.ndarray:
    """``(28, 28)`` -> ``(112, 112)`` bicubic: the digit at the resolution its strokes were written."""
    big = Image.fromarray(grey28, mode="F").resize((BIG, BIG), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(big, dtype=np.float32), 0, 1)


def frame(grey: np.ndarray) -> np.ndarray:
    """A clean light-on-dark digit ``(H, W)`` (no noise, no background) -> ``(28, 28)`` by MNIST's
    framing, the last two steps of ``preprocess.to_mnist``: the box of the pixels above 40 % of the
    peak, its longest side scaled to 20 px (Lanczos), peak to 1, the centre of mass at (14, 14).
    The shapes made here need none of to_mnist's clean-up (polarity, lighting, specks, refusals),
    which costs ten times as much per picture. Zeros for an empty picture."""
    grey = np.clip(np.asarray(grey, dtype=np.float32), 0, 1)
    peak = float(grey.max())
    out = np.zeros((SIDE, SIDE), np.float32)
    if peak <= 0:
        return out
    rows, cols = np.nonzero(grey > FRAME_LEVEL * peak)
    crop = grey[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    f = preprocess.DIGIT_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f)))
    digit = np.clip(np.asarray(Image.fromarray(crop, mode="F").resize(size, Image.Resampling.LANCZOS)), 0, 1)
    digit /= max(float(digit.max()), 1e-6)
    h, w = digit.shape
    mass = digit.sum()
    com = ((digit.sum(1) * np.arange(h)).sum() / mass, (digit.sum(0) * np.arange(w)).sum() / mass)
    top = int(np.clip(round(preprocess.CENTRE - com[0]), 0, SIDE - h))  # clipped: never cut the digit
    left = int(np.clip(round(preprocess.CENTRE - com[1]), 0, SIDE - w))
    out[top:top + h, left:left + w] = digit
    return out


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``x`` (N, H, W) moved by (dy, dx) pixels, zeros shifted in."""
    out = np.zeros_like(x)
    h, w = x.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _disk_max(x: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation of ``x`` (N, H, W) by a disk of ``radius`` px: horizontal runs per disk row,
    then one vertical shift per row (about 4 x radius array operations instead of pi x radius^2)."""
    runs = [x]
    for w in range(1, radius + 1):
        runs.append(np.maximum(runs[-1], np.maximum(_shift(x, 0, w), _shift(x, 0, -w))))
    out = x.copy()
    for dy in range(-radius, radius + 1):
        half = int(math.isqrt(radius * radius - dy * dy))
        np.maximum(out, _shift(runs[half], dy, 0), out=out)
    return out


def _morph(x: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation (``radius`` > 0) or erosion (< 0) by a disk, as ``(N, H, W)``."""
    if radius == 0:
        return x
    return _disk_max(x, radius) if radius > 0 else 1 - _disk_max(1 - x, -radius)


def _grouped(values: np.ndarray, fn: Callable[[np.ndarray, int], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Apply ``fn(x[group], value)`` per distinct integer ``value``, in chunks of CHUNK images."""
    out = np.empty_like(x)
    for value in np.unique(values):
        index = np.flatnonzero(values == value)
        for start in range(0, len(index), CHUNK):
            part = index[start:start + CHUNK]
            out[part] = fn(x[part], int(value))
    return out


def _stack(grey28: list[np.ndarray]) -> np.ndarray:
    """A list of ``(28, 28)`` images as a finished ``(N, 28, 28, 1)`` batch (N may be 0)."""
    return _finish(np.stack(grey28) if grey28 else np.zeros((0, SIDE, SIDE), np.float32))


def _upscale_all(grey: np.ndarray) -> np.ndarray:
    return np.stack([_upscale(g) for g in grey]) if len(grey) else np.zeros((0, BIG, BIG), np.float32)


def _frame_all(bigs: np.ndarray) -> np.ndarray:
    return _stack([frame(b) for b in bigs])


# ---------------------------------------------------------------------------- shape primitives
def stroke_width(images: np.ndarray, radius: Any) -> np.ndarray:
    """Thicker (``radius`` > 0, grey dilation) or thinner (< 0, erosion) strokes by a disk of
    ``|radius|`` MNIST px per image, applied at UPSCALE x and re-framed. ``(N, 28, 28, 1)`` in and out."""
    grey = _grey(images)
    big = _upscale_all(grey)
    px = np.round(_per_image(radius, len(grey)) * UPSCALE).astype(int)
    return _frame_all(_grouped(px, _morph, big))


def _thinning_tables() -> np.ndarray:
    """``(2, 256)`` bool: Zhang-Suen's removal rule for each 8-neighbourhood code, per sub-step.

    Bit k of a code is the neighbour k steps clockwise from north (N, NE, E, SE, S, SW, W, NW)."""
    tables = np.zeros((2, 256), dtype=bool)
    for code in range(256):
        p = [(code >> k) & 1 for k in range(8)]
        count = sum(p)
        crossings = sum(1 for k in range(8) if not p[k] and p[(k + 1) % 8])
        n, e, s, w = p[0], p[2], p[4], p[6]
        base = 2 <= count <= 6 and crossings == 1
        tables[0, code] = base and not (n and e and s) and not (e and s and w)
        tables[1, code] = base and not (n and e and w) and not (n and s and w)
    return tables


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of ``mask`` (N, H, W) bool to 1 px wide, 8-connected centre lines.

    Each pass reads every pixel's neighbourhood as one byte and looks its fate up in a table;
    only the images still changing, cropped to the batch's ink, are worked on."""
    out = np.zeros(np.shape(mask), dtype=bool)
    rows, cols = np.nonzero(np.asarray(mask).any(axis=0))
    if not len(rows):
        return out
    box = (slice(None), slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    img = np.asarray(mask, dtype=bool)[box].copy()
    tables = _thinning_tables()
    offsets = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))  # N, NE, ... NW
    h, w = img.shape[1:]
    active = np.arange(len(img))
    while len(active):
        still = np.zeros(len(active), dtype=bool)
        for table in tables:
            part = img[active]
            p = np.pad(part, ((0, 0), (1, 1), (1, 1))).view(np.uint8)
            code = np.zeros(part.shape, np.uint8)
            for k, (dy, dx) in enumerate(offsets):
                code |= p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] << k
            remove = part & table[code]
            still |= remove.any(axis=(1, 2))
            img[active] = part & ~remove
        active = active[still]
    out[box] = img
    return out


def _centre_lines(big: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stroke masks and their skeletons of upscaled digits ``(N, H, W)``, in chunks."""
    masks = big > INK_THRESHOLD
    lines = np.empty_like(masks)
    for start in range(0, len(big), CHUNK):
        lines[start:start + CHUNK] = skeleton(masks[start:start + CHUNK])
    return masks, lines


def thin(images: np.ndarray, keep: Any) -> np.ndarray:
    """Thinner strokes: eroded (disk, at UPSCALE x) so each digit keeps ``keep`` of its own mean
    stroke width (ink area / centre-line length), then re-framed; a thin digit never vanishes."""
    grey = _grey(images)
    big = _upscale_all(grey)
    masks, lines = _centre_lines(big)
    width = masks.sum(axis=(1, 2)) / np.maximum(lines.sum(axis=(1, 2)), 1)  # px at UPSCALE x
    px = np.round((1 - _per_image(keep, len(grey))) * width / 2).astype(int)
    return _frame_all(_grouped(-px, _morph, big))


def redraw(images: np.ndarray, pen: Any) -> np.ndarray:
    """The skeleton of each digit redrawn with a uniform round pen ``pen`` MNIST px wide (at the
    source resolution, then re-framed): the even strokes of the draw page and tablet apps."""
    grey = _grey(images)
    big = _upscale_all(grey)
    _, lines = _centre_lines(big)
    radius = np.maximum(np.round((_per_image(pen, len(grey)) * UPSCALE - 1) / 2), 0).astype(int)
    return _frame_all(_grouped(radius, _morph, lines.astype(np.float32)))


def affine(images: np.ndarray, matrices: np.ndarray, reframe: bool = True) -> np.ndarray:
    """Each digit mapped by its 2 x 2 matrix about the frame's centre (rows: output y, x from input
    y, x), at UPSCALE x. ``reframe``: on a larger canvas, then MNIST's framing; else kept in the
    28 x 28 frame (area-averaged down), as raw pixels would arrive."""
    grey = _grey(images)
    matrices = np.asarray(matrices, dtype=np.float64).reshape(len(grey), 2, 2)
    side = CANVAS if reframe else BIG
    out = []
    for g, m in zip(grey, matrices):
        inv = np.linalg.inv(m)  # PIL maps each output pixel back to its input point
        c_in, c_out = BIG / 2, side / 2
        # input (x, y) = inv @ (output - c_out) + c_in, with (x, y) ordering for PIL
        a, b = inv[1, 1], inv[1, 0]
        d, e = inv[0, 1], inv[0, 0]
        coeffs = (a, b, c_in - a * c_out - b * c_out, d, e, c_in - d * c_out - e * c_out)
        warped = Image.fromarray(_upscale(g), mode="F").transform(
            (side, side), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
        if reframe:
            out.append(frame(np.asarray(warped, dtype=np.float32)))
        else:
            out.append(np.asarray(warped.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32))
    return _stack(out)


def rotate(images: np.ndarray, degrees: Any) -> np.ndarray:
    """Rotated by ``degrees`` per image (counter-clockwise as seen), re-framed."""
    t = np.radians(_per_image(degrees, len(_grey(images))))
    m = np.stack([np.stack([np.cos(t), -np.sin(t)], -1), np.stack([np.sin(t), np.cos(t)], -1)], 1)
    return affine(images, m)


def shear(images: np.ndarray, factor: Any) -> np.ndarray:
    """Slanted: x moves by ``factor`` x (centre row - y), so ``factor`` > 0 leans right, re-framed."""
    f = _per_image(factor, len(_grey(images)))
    m = np.zeros((len(f), 2, 2))
    m[:, 0, 0], m[:, 1, 1], m[:, 1, 0] = 1, 1, -f
    return affine(images, m)


def aspect(images: np.ndarray, factor: Any) -> np.ndarray:
    """Width times ``factor`` per image (< 1 squeezed, > 1 stretched), re-framed."""
    f = _per_image(factor, len(_grey(images)))
    m = np.zeros((len(f), 2, 2))
    m[:, 0, 0], m[:, 1, 1] = 1, f
    return affine(images, m)


def translate(images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Moved by ``offsets`` (N, 2) = (down, right) MNIST px inside the 28 x 28 frame, not re-framed."""
    grey = _grey(images)
    offsets = np.asarray(offsets, dtype=np.float64).reshape(len(grey), 2)
    out = []
    for g, (dy, dx) in zip(grey, offsets * UPSCALE):
        moved = Image.fromarray(_upscale(g), mode="F").transform(
            (BIG, BIG), Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy), Image.Resampling.BILINEAR)
        out.append(np.asarray(moved.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32))
    return _stack(out)


def shrink(images: np.ndarray, scale: Any) -> np.ndarray:
    """Scaled by ``scale`` about the frame's centre inside 28 x 28 (a 20 px digit -> 20 x scale px),
    not re-framed."""
    s = _per_image(scale, len(_grey(images)))
    return affine(images, s[:, None, None] * np.eye(2), reframe=False)


def low_resolution(images: np.ndarray, box: int) -> np.ndarray:
    """Each digit area-averaged down so its 20 px box is ``box`` px, then bicubic back to 28 x 28
    and its peak restored to 1 (a thumbnail or a coarse scan, stretched as preprocessing would)."""
    grey = _grey(images)
    small = max(2, round(SIDE * box / preprocess.DIGIT_BOX))
    out = []
    for g in grey:
        down = Image.fromarray(g, mode="F").resize((small, small), Image.Resampling.BOX)
        up = np.clip(np.asarray(down.resize((SIDE, SIDE), Image.Resampling.BICUBIC)), 0, 1)
        out.append(up / max(float(up.max()), 1e-6))
    return _stack(out)


def blur(images: np.ndarray, sigma: Any) -> np.ndarray:
    """Gaussian blur of ``sigma`` MNIST px per image, peak restored to 1 (a soft pen, defocus)."""
    grey = _grey(images)
    sigma = _per_image(sigma, len(grey))
    radius = int(math.ceil(3 * max(float(sigma.max(initial=0)), 1e-3)))
    t = np.arange(-radius, radius + 1)
    kernels = np.exp(-0.5 * (t[None] / np.maximum(sigma[:, None], 1e-3)) ** 2)
    kernels /= kernels.sum(axis=1, keepdims=True)
    out = np.zeros_like(grey)
    rows = np.zeros_like(grey)
    for k, dt in enumerate(t):  # separable: rows, then columns
        rows += kernels[:, k, None, None] * _shift(grey, 0, int(dt))
    for k, dt in enumerate(t):
        out += kernels[:, k, None, None] * _shift(rows, int(dt), 0)
    return _finish(out / np.maximum(out.max(axis=(1, 2), keepdims=True), 1e-6))


# ---------------------------------------------------------------------------- camera and scans
@dataclass(frozen=True)
class Camera:
    """How a digit is photographed or scanned: each picture draws its own values from these ranges."""

    size: tuple[float, float] = (50, 120)  # px, the digit's longest side on the sheet (preprocess works at 128)
    paper: tuple[float, float] = (0.75, 0.95)  # grey level of the paper
    pen: tuple[float, float] = (0.05, 0.3)  # grey level of the ink
    gradient: tuple[float, float] = (0.05, 0.25)  # light lost from one corner of the sheet to the other
    vignette: tuple[float, float] = (0.0, 0.15)  # light lost at the corners relative to the centre
    shadow: tuple[float, float] = (0.0, 0.0)  # light lost under a soft-edged hard shadow (a hand, a phone)
    noise: tuple[float, float] = (0.01, 0.04)  # sensor noise sigma, grey levels
    defocus: tuple[float, float] = (0.0, 0.0)  # Gaussian blur radius as a share of the digit's size
    jpeg: tuple[int, int] = (60, 90)  # JPEG quality


PHOTO_MODERATE = Camera()
PHOTO_SEVERE = Camera(size=(45, 140), paper=(0.6, 0.9), pen=(0.1, 0.3), gradient=(0.2, 0.45),  # ink/paper >= 0.3 apart
                      vignette=(0.1, 0.3), noise=(0.04, 0.08), defocus=(0.005, 0.02), jpeg=(20, 45))
PHOTO_SHADOW = Camera(shadow=(0.15, 0.3))  # a moderate photo, half in the shadow of a hand or phone
SCAN = Camera(size=(60, 120), paper=(0.8, 0.97), pen=(0.0, 0.25), gradient=(0.0, 0.1), vignette=(0.0, 0.05),
              noise=(0.02, 0.06), jpeg=(70, 95))  # a flatbed scan: even light, paper grain


def render_photo(digit: np.ndarray, rng: np.random.Generator, camera: Camera = PHOTO_MODERATE,
                 resample: Image.Resampling = Image.Resampling.BICUBIC) -> bytes:
    """A light-on-dark digit ``(H, W)`` in [0, 1] (any resolution) as a JPEG of dark ink on paper:
    scaled up onto a larger sheet, with a light gradient, vignette, optional hard shadow, noise,
    defocus and a colour cast. The bytes are what a user would upload."""
    digit = np.clip(np.asarray(digit, dtype=np.float32), 0, 1)
    scale = rng.uniform(*camera.size) / max(digit.shape)
    w, h = max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale))
    ink_small = np.asarray(Image.fromarray(digit, mode="F").resize((w, h), resample), dtype=np.float32)
    height, width = h + int(rng.integers(h // 3, h + 1)), w + int(rng.integers(w // 2, w + h + 1))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    ink = np.zeros((height, width), np.float32)
    ink[top:top + h, left:left + w] = np.clip(ink_small, 0, 1)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / max(height, width)
    u, v = rng.dirichlet((1, 1))
    light = 1 - rng.uniform(*camera.gradient) * (u * ys + v * xs) / max(u * ys.max() + v * xs.max(), 1e-6)
    r2 = ((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2) / max(float(ys.max() ** 2 + xs.max() ** 2) / 4, 1e-6)
    light *= 1 - rng.uniform(*camera.vignette) * r2
    if camera.shadow[1] > 0:  # a half-plane in shadow with a soft edge, crossing the sheet
        angle = rng.uniform(0, 2 * math.pi)
        side = (xs - rng.uniform(0.3, 0.7) * xs.max()) * math.cos(angle) + (ys - rng.uniform(0.3, 0.7) * ys.max()) * math.sin(angle)
        light *= 1 - rng.uniform(*camera.shadow) / (1 + np.exp(-side / 0.03))
    paper, pen = rng.uniform(*camera.paper), rng.uniform(*camera.pen)
    grey = (paper + (pen - paper) * ink) * light + rng.normal(0, rng.uniform(*camera.noise), ink.shape)
    picture = Image.fromarray(np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8), mode="L")
    if camera.defocus[1] > 0:
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(*camera.defocus) * max(w, h)))
    cast = rng.uniform(0.85, 1.0, 3)  # white balance off a little
    rgb = np.round(np.asarray(picture, np.float32)[..., None] * cast).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="JPEG", quality=int(rng.integers(*camera.jpeg, endpoint=True)))
    return buffer.getvalue()


def _read_back(picture: bytes, name: str) -> np.ndarray:
    """A picture's bytes through the user's path, ``preprocess.preprocess``; zeros if refused."""
    try:
        return preprocess.preprocess(picture, name=name)[..., 0]
    except MnistlabError:
        return np.zeros((SIDE, SIDE), np.float32)


def photo(images: np.ndarray, rng: np.random.Generator, camera: Camera = PHOTO_MODERATE) -> np.ndarray:
    """Each digit photographed (``render_photo``) and read back as a user's photo would be."""
    grey = _grey(images)
    out = [_read_back(render_photo(g, rng, camera), f"photo[{i}]") for i, g in enumerate(grey)]
    return _stack(out)


# ---------------------------------------------------------------------------- fonts
@dataclass(frozen=True)
class FontFace:
    """One font file, the Debian package that installs it, and whether it imitates handwriting."""

    package: str
    file: str  # file name, looked for under FONT_DIRS
    style: str  # "hand" or "print"


_HAND = {  # package -> files; outline (femkeklaver) and hairline (ecolier) fonts left out
    "fonts-comic-neue": ("ComicNeue-Regular.otf", "ComicNeue-Bold.otf", "ComicNeue-Italic.otf",
                         "ComicNeue-BoldItalic.otf", "ComicNeue-Light.otf", "ComicNeue-LightItalic.otf"),
    "fonts-dkg-handwriting": ("dkg.ttf", "dkgBd.ttf", "dkgIt.ttf", "dkgBI.ttf"),
    "fonts-breip": ("Breip.ttf",),
    "fonts-humor-sans": ("Humor-Sans.ttf",),
    "fonts-kristi": ("Kristi.ttf",),
    "fonts-dancingscript": ("DancingScript-Regular.otf", "DancingScript-Bold.otf"),
    "fonts-kaushanscript": ("KaushanScript-Regular.otf",),
    "fonts-bwht": ("BecauseWeBuild-Regular.otf", "BecauseWeConnect-Regular.otf", "BecauseWeCreate-Regular.otf",
                   "BecauseWeLearn-Regular.otf", "BecauseWeMentor-Regular.otf", "BecauseWeOrganize-Regular.otf"),
}
_PRINT = {  # monospaced faces left out: their slashed or dotted zeros are not handwriting
    "fonts-dejavu-core": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf"),
    "fonts-dejavu-extra": ("DejaVuSans-Oblique.ttf", "DejaVuSans-ExtraLight.ttf", "DejaVuSansCondensed.ttf",
                           "DejaVuSerif-Italic.ttf", "DejaVuSerifCondensed.ttf"),
    "fonts-liberation2": ("LiberationSans-Regular.ttf", "LiberationSans-Bold.ttf", "LiberationSans-Italic.ttf",
                          "LiberationSerif-Regular.ttf", "LiberationSerif-Bold.ttf", "LiberationSerif-Italic.ttf"),
    "fonts-freefont-ttf": ("FreeSans.ttf", "FreeSansBold.ttf", "FreeSansOblique.ttf", "FreeSerif.ttf",
                           "FreeSerifBold.ttf", "FreeSerifItalic.ttf"),
}
FONTS: tuple[FontFace, ...] = tuple(FontFace(package, file, style)
                                    for style, table in (("hand", _HAND), ("print", _PRINT))
                                    for package, files in table.items() for file in files)
HALVES = ("train", "test")  # font halves: training may add digits set in one, the benchmark scores the other


def font_half(face: FontFace) -> str:
    """``train`` or ``test``: the fonts of each style, sorted by file name, alternate, so each half
    has faces of most families (a bold in one, the regular in the other) and never depends on
    what is installed. Training digits come from ``train``; the ``fonts-*`` sets from ``test``."""
    names = sorted(f.file for f in FONTS if f.style == face.style)
    return HALVES[names.index(face.file) % 2]


def find_fonts(style: str, dirs: tuple[str, ...] = FONT_DIRS, half: str = "") -> tuple[list[Path], list[str]]:
    """The installed files of ``FONTS`` of ``style`` (sorted by name), of one ``half`` if given
    (see ``font_half``), and the packages missing."""
    wanted = {f.file: f for f in FONTS if f.style == style and (not half or font_half(f) == half)}
    found: dict[str, Path] = {}
    for root in dirs:
        if Path(root).is_dir():
            for path in Path(root).rglob("*"):
                if path.name in wanted and path.name not in found and path.is_file():
                    found[path.name] = path
    missing = sorted({f.package for f in wanted.values() if f.file not in found})
    return [found[name] for name in sorted(found)], missing


def render_font_digit(font: ImageFont.FreeTypeFont, digit: int, rotation: float = 0.0,
                      slant: float = 0.0) -> np.ndarray:
    """``digit`` set in ``font``, light on dark, rotated ``rotation`` degrees and slanted by
    ``slant`` (x += slant x height above the centre): ``(H, W)`` float32 grey levels."""
    side = 5 * int(font.size) // 2  # room for the glyph turned and slanted
    picture = Image.new("L", (side, side), 0)
    ImageDraw.Draw(picture).text((side / 2, side / 2), str(digit), fill=255, font=font, anchor="mm")
    picture = picture.transform(picture.size, Image.Transform.AFFINE,
                                (1, slant, -slant * side / 2, 0, 1, 0), Image.Resampling.BICUBIC)
    picture = picture.rotate(rotation, resample=Image.Resampling.BICUBIC)
    return np.asarray(picture, dtype=np.float32) / 255


def font_digits(n: int, rng: np.random.Generator, style: str = "hand", rotation: float = 8.0,
                slant: float = 0.15, dirs: tuple[str, ...] = FONT_DIRS, half: str = "") -> ShiftData:
    """``n`` digits (labels balanced 0-9) set in the installed fonts of ``style`` (of one ``half``
    if given), each with a random font, rotation (+-``rotation`` degrees) and slant (+-``slant``),
    framed as MNIST. Set at FONT_SIZE px: framing scales every glyph to 20 px anyway, so a size
    jitter would add nothing."""
    paths, missing = find_fonts(style, dirs, half)
    if not paths:
        raise Unavailable(f"no {style} fonts{f' of the {half} half' if half else ''} installed; "
                          f"apt-get install {' '.join(missing)}")
    labels = rng.permutation(np.arange(n) % 10)
    faces = rng.integers(0, len(paths), n)
    fonts = [ImageFont.truetype(str(path), FONT_SIZE) for path in paths]
    out = [frame(render_font_digit(fonts[face], int(label), rng.uniform(-rotation, rotation), rng.uniform(-slant, slant)))
           for label, face in zip(labels, faces)]
    note = f"{len(paths)} {style} fonts" + (f"; not installed: {', '.join(missing)}" if missing else "")
    return ShiftData(_stack(out), labels.astype(np.int64), note)


def training_font_digits(n: int, seed: int, dirs: tuple[str, ...] = FONT_DIRS) -> ShiftData:
    """``n`` training digits set in the ``train`` half of the fonts, half handwriting-like and half
    print (all from one style when only it is installed), jittered as the benchmark's font sets.
    A pure function of ``seed``; ``Unavailable`` when no font of that half is installed."""
    styles = [style for style in ("hand", "print") if find_fonts(style, dirs, "train")[0]]
    if not styles:
        missing = sorted({f.package for f in FONTS if font_half(f) == "train"})
        raise Unavailable(f"no fonts of the training half installed; apt-get install {' '.join(missing)}")
    counts = [n // len(styles) + (i < n % len(styles)) for i in range(len(styles))]
    parts = [font_digits(count, set_rng(seed, f"train-fonts-{style}"), style, dirs=dirs, half="train")
             for style, count in zip(styles, counts) if count]
    if not parts:
        return ShiftData(np.zeros((0, SIDE, SIDE, 1), np.float32), np.zeros(0, np.int64), "no font digits")
    return ShiftData(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                     "; ".join(p.note for p in parts))


# ---------------------------------------------------------------------------- other writers
def other_writers(n: int, rng: np.random.Generator, camera: Camera = SCAN) -> ShiftData:
    """scikit-learn's 1,797 8 x 8 scans by 13 writers outside MNIST (``load_digits``: the UCI optical
    digits test set, 32 x 32 bitmaps counted in 4 x 4 blocks, so 17 grey levels),
    upscaled onto noisy paper (``render_photo``) and read back by ``preprocess.preprocess``; all of
    them, or a seeded subset when ``n`` is smaller. ``Unavailable`` without scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise Unavailable("scikit-learn is not installed (pip install 'mnistlab[robust]')") from None
    digits = load_digits()
    scans = np.asarray(digits.images, dtype=np.float32) / 16
    labels = np.asarray(digits.target, dtype=np.int64)
    if n < len(scans):
        pick = np.sort(rng.choice(len(scans), n, replace=False))
        scans, labels = scans[pick], labels[pick]
    return ShiftData(_scanned(scans, rng, camera), labels, f"{len(scans)} of scikit-learn's {DIGITS_SCANS} scans")


def _scanned(scans: Any, rng: np.random.Generator, camera: Camera = SCAN) -> np.ndarray:
    """Coarse light-on-dark bitmaps upscaled onto paper (bilinear or bicubic, as scanners and viewers
    do) and read back by ``preprocess.preprocess``: ``(N, 28, 28, 1)``."""
    filters = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
    return _stack([_read_back(render_photo(s, rng, camera, filters[int(rng.integers(len(filters)))]), f"scan[{i}]")
                   for i, s in enumerate(scans)])


def optdigits_bitmap(grey28: np.ndarray) -> np.ndarray:
    """An MNIST digit ``(28, 28)`` in UCI optical digits' format, the one scikit-learn's scans use:
    a binary bitmap (the digit at ``UPSCALE`` x, above half its peak) whose height is scaled to 32
    px (aspect kept, width at most 32, centred), counted in 4 x 4 blocks -> ``(8, 8)`` in 17 levels."""
    big = _upscale(np.asarray(grey28, np.float32))
    mask = big > 0.5 * max(float(big.max()), 1e-6)
    blocks = OPT_SIDE // OPT_BLOCK
    if not mask.any():
        return np.zeros((blocks, blocks), np.float32)
    out = np.zeros((OPT_SIDE, OPT_SIDE), np.float32)
    rows, cols = np.nonzero(mask)
    crop = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(np.float32)
    width = max(1, min(OPT_SIDE, round(crop.shape[1] * OPT_SIDE / crop.shape[0])))
    bitmap = np.asarray(Image.fromarray(crop, mode="F").resize((width, OPT_SIDE), Image.Resampling.BILINEAR)) > 0.5
    left = (OPT_SIDE - width) // 2
    out[:, left:left + width] = bitmap
    return out.reshape(blocks, OPT_BLOCK, blocks, OPT_BLOCK).sum(axis=(1, 3)) / OPT_BLOCK ** 2


def _coarse_scan(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MNIST's digits in the other-writers set's format (``optdigits_bitmap``), scanned and read back
    the same way: what the format alone costs, apart from the writers."""
    return _scanned([optdigits_bitmap(g) for g in _grey(images)], rng)


# ---------------------------------------------------------------------------- random draws per set
def _clean(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digits as they are: the reference row every other set is compared with."""
    return _finish(_grey(images))


def _ranged(images: np.ndarray, rng: np.random.Generator, primitive: Callable[..., np.ndarray],
            low: float, high: float, signed: bool = False) -> np.ndarray:
    """``primitive(images, v)`` with ``v`` uniform in [low, high] per image (random sign if ``signed``)."""
    values = rng.uniform(low, high, len(images))
    if signed:
        values *= rng.choice((-1.0, 1.0), len(images))
    return primitive(images, values)


def _either(images: np.ndarray, rng: np.random.Generator, primitive: Callable[..., np.ndarray],
            ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    """``primitive(images, v)`` with ``v`` uniform in one of ``ranges``, chosen at random per image."""
    bounds = np.asarray(ranges, dtype=np.float64)[rng.integers(0, len(ranges), len(images))]
    return primitive(images, rng.uniform(bounds[:, 0], bounds[:, 1]))


def _fixed(images: np.ndarray, rng: np.random.Generator, primitive: Callable[..., np.ndarray], value: Any) -> np.ndarray:
    return primitive(images, value)


def _offcentre(images: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Moved ``low``-``high`` MNIST px in a random direction."""
    r, angle = rng.uniform(low, high, len(images)), rng.uniform(0, 2 * math.pi, len(images))
    return translate(images, np.stack([r * np.sin(angle), r * np.cos(angle)], axis=1))


def _photo(images: np.ndarray, rng: np.random.Generator, camera: Camera) -> np.ndarray:
    return photo(images, rng, camera)


def _mixed_photo(images: np.ndarray, rng: np.random.Generator, shifts: str, camera: Camera) -> np.ndarray:
    """Each digit first shifted by one of ``MIXED`` at level ``shifts`` (chosen at random), then photographed."""
    choice = rng.integers(0, len(MIXED), len(images))
    shifted = np.empty((len(images), SIDE, SIDE, 1), np.float32)
    for k, family in enumerate(MIXED):
        spec = get(f"{family}-{shifts}")
        part = np.flatnonzero(choice == k)
        if len(part):
            shifted[part] = spec.make(images[part], rng, **dict(spec.params))
    return photo(shifted, rng, camera)


# ---------------------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class ShiftSet:
    """A named test set: what it is, how hard, and the pure seeded function that builds it.

    ``make(images, rng, **params) -> images`` for sets of MNIST test digits; for other sources
    ``make(n, rng, **params) -> ShiftData``."""

    name: str
    family: str
    level: str  # see LEVELS
    about: str  # one line for tables and the README
    make: Callable[..., Any]
    params: tuple[tuple[str, Any], ...] = ()
    source: str = "mnist-test"  # mnist-test | fonts | sklearn-digits
    held_out: bool = False  # never look at it when choosing a recipe; report it separately

    def key(self) -> str:
        """A stable text naming the function and every parameter (for cache file names)."""
        def show(v: Any) -> str:
            return v.__name__ if callable(v) else repr(v)
        return f"{self.name}|{self.make.__name__}|" + ",".join(f"{k}={show(v)}" for k, v in self.params)


def _set(name: str, family: str, level: str, about: str, make: Callable[..., Any], **params: Any) -> ShiftSet:
    return ShiftSet(name, family, level, about, make, tuple(params.items()))


def _count_test(style: str) -> int:
    return sum(f.style == style and font_half(f) == "test" for f in FONTS)


MIXED = ("thick", "thin", "rotate", "shear", "squeeze", "drawn", "blur")  # camera on top of these
SETS: tuple[ShiftSet, ...] = (
    _set("clean", "none", "none", "the subset of MNIST test digits as they are", _clean),
    _set("thin-moderate", "stroke", "moderate", "strokes eroded to 55-70 % of their width (disk, at 4x)", _ranged,
         primitive=thin, low=0.55, high=0.7),
    _set("thin-severe", "stroke", "severe", "strokes eroded to 25-40 % of their width", _ranged,
         primitive=thin, low=0.25, high=0.4),
    _set("thick-moderate", "stroke", "moderate", "strokes dilated by 0.5-1.0 px (disk, at 4x)", _ranged,
         primitive=stroke_width, low=0.5, high=1.0),
    _set("thick-severe", "stroke", "severe", "strokes dilated by 1.5-2.25 px: a marker", _ranged,
         primitive=stroke_width, low=1.5, high=2.25),
    _set("lowres-16", "resolution", "moderate", "the 20 px digit down to 16 px and back (bicubic)", _fixed,
         primitive=low_resolution, value=16),
    _set("lowres-12", "resolution", "moderate", "down to 12 px and back: a thumbnail", _fixed,
         primitive=low_resolution, value=12),
    _set("lowres-8", "resolution", "severe", "down to 8 px and back: a coarse scan", _fixed,
         primitive=low_resolution, value=8),
    _set("blur-moderate", "resolution", "moderate", "Gaussian blur, sigma 0.7-1.0 px", _ranged,
         primitive=blur, low=0.7, high=1.0),
    _set("blur-severe", "resolution", "severe", "Gaussian blur, sigma 1.3-1.7 px", _ranged,
         primitive=blur, low=1.3, high=1.7),
    _set("rotate-moderate", "geometry", "moderate", "rotated 10-15 degrees either way, re-framed", _ranged,
         primitive=rotate, low=10, high=15, signed=True),
    _set("rotate-severe", "geometry", "severe", "rotated 20-25 degrees either way, re-framed", _ranged,
         primitive=rotate, low=20, high=25, signed=True),
    _set("shear-moderate", "geometry", "moderate", "slanted by a shear of 0.2-0.3 (11-17 degrees)", _ranged,
         primitive=shear, low=0.2, high=0.3, signed=True),
    _set("shear-severe", "geometry", "severe", "slanted by a shear of 0.4-0.5 (22-27 degrees)", _ranged,
         primitive=shear, low=0.4, high=0.5, signed=True),
    _set("squeeze-moderate", "geometry", "moderate", "width x 0.6-0.75, re-framed", _ranged,
         primitive=aspect, low=0.6, high=0.75),
    _set("squeeze-severe", "geometry", "severe", "width x 0.4-0.5, re-framed", _ranged,
         primitive=aspect, low=0.4, high=0.5),
    _set("stretch-moderate", "geometry", "moderate", "width x 1.3-1.5, re-framed", _ranged,
         primitive=aspect, low=1.3, high=1.5),
    _set("stretch-severe", "geometry", "severe", "width x 1.7-2.0, re-framed", _ranged,
         primitive=aspect, low=1.7, high=2.0),
    _set("offcentre-moderate", "framing", "moderate", "moved 2-3 px inside the 28 x 28 frame (not re-framed)",
         _offcentre, low=2.0, high=3.0),
    _set("offcentre-severe", "framing", "severe", "moved 4-5 px (not re-framed)", _offcentre, low=4.0, high=5.0),
    _set("small-moderate", "framing", "moderate", "scaled x 0.7-0.85 in the frame (not re-framed)", _ranged,
         primitive=shrink, low=0.7, high=0.85),
    _set("small-severe", "framing", "severe", "scaled x 0.5-0.6 in the frame (not re-framed)", _ranged,
         primitive=shrink, low=0.5, high=0.6),
    _set("drawn-moderate", "drawn", "moderate", "skeleton redrawn with a round pen 1.5-3.5 px wide", _ranged,
         primitive=redraw, low=1.5, high=3.5),
    _set("drawn-severe", "drawn", "severe", "skeleton redrawn with a round pen 0.75-1.25 or 4.5-5.5 px wide",
         _either, primitive=redraw, ranges=((0.75, 1.25), (4.5, 5.5))),
    _set("photo-moderate", "camera", "moderate", "photo: gradient, vignette, noise, JPEG 60-90, via preprocess",
         _photo, camera=PHOTO_MODERATE),
    _set("photo-severe", "camera", "severe", "photo: low contrast, strong gradient, defocus, noise, JPEG 20-45, "
         "via preprocess", _photo, camera=PHOTO_SEVERE),
    _set("photo-shadow", "camera", "severe", "moderate photo with a soft-edged shadow taking 15-30 % of the light",
         _photo, camera=PHOTO_SHADOW),
    _set("photo-mixed-moderate", "camera", "moderate", f"one of {'/'.join(MIXED)} (moderate), then a moderate photo",
         _mixed_photo, shifts="moderate", camera=PHOTO_MODERATE),
    _set("photo-mixed-severe", "camera", "severe", f"one of {'/'.join(MIXED)} (severe), then a severe photo",
         _mixed_photo, shifts="severe", camera=PHOTO_SEVERE),
    _set("scan-8x8", "camera", "severe", "the other-writers set's format: a binary bitmap counted in 8 x 8 "
         "blocks (17 levels), scanned, via preprocess", _coarse_scan),
    ShiftSet("fonts-hand", "fonts", "moderate", f"digits in the {_count_test('hand')} handwriting-like fonts of the "
             "test half (training may use the other), rotation +-8, slant +-0.15",
             font_digits, (("style", "hand"), ("half", "test")), source="fonts", held_out=True),
    ShiftSet("fonts-print", "fonts", "moderate", f"digits in the {_count_test('print')} print fonts of the test half "
             "(sans, serif; bold, italic), jitter as above",
             font_digits, (("style", "print"), ("half", "test")), source="fonts", held_out=True),
    ShiftSet("other-writers", "writers", "external", "scikit-learn's 1,797 8 x 8 scans by 13 other writers, "
             "upscaled onto noisy paper, via preprocess", other_writers, source="sklearn-digits", held_out=True),
)


def get(name: str) -> ShiftSet:
    """The set called ``name``, or a one-line error listing the names."""
    for spec in SETS:
        if spec.name == name:
            return spec
    raise MnistlabError(f"--sets: unknown set {name!r}; expected one of {', '.join(s.name for s in SETS)}")


def select(names: tuple[str, ...] = (), levels: tuple[str, ...] = (), held_out: bool = True) -> tuple[ShiftSet, ...]:
    """The sets called ``names``, in that order; without names, every set whose level is in
    ``levels`` (all if none; ``clean`` always), less the held-out ones unless ``held_out``
    (recipe tuning passes False, so it never looks at them)."""
    for level in levels:
        if level not in LEVELS:
            raise MnistlabError(f"--levels: unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    if names:
        return tuple(dict.fromkeys(get(n) for n in names))
    return tuple(s for s in SETS if (not levels or s.level in levels or s.level == "none")
                 and (held_out or not s.held_out))


def set_rng(seed: int, name: str) -> np.random.Generator:
    """The random stream of set ``name`` for ``seed``: stable across runs and Python versions."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def mnist_subset(total: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(n, total)`` test digits, the same for every set of one seed."""
    if n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng([seed, 0]).choice(total, n, replace=False))


def build_set(spec: ShiftSet, n: int, seed: int, test: tuple[np.ndarray, np.ndarray] | None = None) -> ShiftData:
    """Build ``spec`` with ``n`` images from ``seed``; ``test`` = MNIST's test (images, labels) for
    sets made from them. Raises ``Unavailable`` when the machine lacks what the set needs."""
    rng = set_rng(seed, spec.name)
    if spec.source != "mnist-test":
        return spec.make(n, rng, **dict(spec.params))
    if test is None:
        raise MnistlabError(f"{spec.name}: needs MNIST's test digits")
    images, labels = test
    pick = mnist_subset(len(images), n, seed)
    out = spec.make(images[pick], rng, **dict(spec.params))
    return ShiftData(out, np.asarray(labels)[pick].astype(np.int64), f"{len(pick)} of {len(images)} MNIST test digits")

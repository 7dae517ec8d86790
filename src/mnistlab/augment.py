"""On-the-fly data augmentation in TensorFlow, inside the compiled training step.

Two policies. ``affine`` is one random affine warp plus an elastic distortion (Simard et al. 2003,
"Best practices for convolutional neural networks applied to visual document analysis"): every
output pixel is read, by bilinear interpolation, from the point of its input image that the map
(rotation, shear, scale, shift about the centre, plus a smooth random displacement field) sends
it to, so each image is resampled once. ``robust`` adds what makes other people's handwriting
differ from MNIST's writers (``shifts.py`` measures each): a thinner or thicker pen (grey
erosion/dilation at twice the resolution), a wider range of slant, rotation, aspect and framing,
low resolution and blur (scans, thumbnails), and the stroke profile and noise of photos.

Pixels read from outside the image are 0 (MNIST's background); every output is in [0, 1]. The
output is a pure function of the images and the seed (an int pair, which training derives from
the run's seed and the optimizer step, so a resumed run draws the same warps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

IMAGE_SIDE = 28  # pixels
ELASTIC_RADIUS = 8  # kernel half-width of the field's Gaussian, 2 sigma: the tails add nothing visible


@dataclass(frozen=True)
class Augmentation:
    """One policy's ranges; each image draws its own values (uniform in each range)."""

    rotation_deg: float = 12.0  # uniform in [-r, r] degrees
    shear: float = 0.0  # x moves by up to +-shear x (centre row - y): slant
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor
    aspect: tuple[float, float] = (1.0, 1.0)  # width / height factor on top of the zoom
    shift_px: float = 2.5  # uniform in [-s, s] pixels, x and y independently
    elastic_alpha: float = 24.0  # pixels: scale of the smoothed displacement field (Simard used 34)
    elastic_sigma: float = 4.0  # pixels: Gaussian smoothing of the field (Simard: 4)
    stroke_p: float = 0.0  # share of images whose pen gets thinner or thicker
    stroke_steps: tuple[int, ...] = ()  # 3 x 3 erosions (< 0) / dilations (> 0) at 2x: one is 0.5 MNIST px
    lowres_p: float = 0.0  # share of images brought down to a coarse resolution and back
    lowres_sides: tuple[int, ...] = ()  # the 28 px frame down to this many pixels (bicubic back)
    blur_p: float = 0.0  # share of images blurred (Gaussian), peak restored to 1
    blur_sigmas: tuple[float, ...] = ()  # pixels
    gamma: tuple[float, float] = (1.0, 1.0)  # stroke profile: pixels ** gamma (>1 sharper edges)
    noise_p: float = 0.0  # share of images with Gaussian pixel noise
    noise_sigma: float = 0.0  # its largest standard deviation


AFFINE = Augmentation()
ROBUST = Augmentation(rotation_deg=18.0, shear=0.35, scale=(0.75, 1.1), aspect=(0.7, 1.3), shift_px=3.0,
                      elastic_alpha=20.0, elastic_sigma=4.0, stroke_p=0.5, stroke_steps=(-1, 1, 2, 3),
                      lowres_p=0.2, lowres_sides=(12, 15, 18, 22), blur_p=0.15, blur_sigmas=(0.7, 1.0, 1.4),
                      gamma=(0.6, 1.6), noise_p=0.1, noise_sigma=0.08)
POLICIES = {"affine": AFFINE, "robust": ROBUST}


def policy(name: str) -> Augmentation:
    """The augmentation called ``name`` (a Recipe's ``augment``)."""
    return POLICIES[name]


# ---------------------------------------------------------------------------- randomness
def _uniform(shape: Any, low: float, high: float, seed: Any, salt: int) -> Any:
    """Uniform noise, a pure function of ``seed`` (an int pair) and ``salt`` (one stream per use):
    ``fold_in`` hashes the two, so streams of nearby seeds do not overlap."""
    import tensorflow as tf

    stream = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), salt)
    return tf.random.stateless_uniform(shape, seed=stream, minval=low, maxval=high)


def _choose(images: Any, variants: list[Any], p: float, seed: Any, salt: int) -> Any:
    """Each image replaced, with probability ``p``, by one of ``variants`` (same shape), chosen at random."""
    import tensorflow as tf

    if p <= 0 or not variants:
        return images
    batch = tf.shape(images)[0]
    pick = tf.cast(tf.floor(_uniform([batch], 0.0, float(len(variants)), seed, salt)), tf.int32)
    pick = tf.minimum(pick, len(variants) - 1)
    chosen = tf.gather_nd(tf.stack(variants), tf.stack([pick, tf.range(batch)], axis=1))
    use = tf.reshape(_uniform([batch], 0.0, 1.0, seed, salt + 1) < p, [-1, 1, 1, 1])
    return tf.where(use, chosen, images)


# ---------------------------------------------------------------------------- the warp
def _gaussian_kernel(sigma: float, radius: int) -> Any:
    import tensorflow as tf

    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * (t / sigma) ** 2)
    return k / tf.reduce_sum(k)


def _separable_blur(x: Any, sigma: float, radius: int) -> Any:
    """Gaussian blur of ``x (B, H, W, C)``, one depthwise pass per axis, zero padding."""
    import tensorflow as tf

    k = _gaussian_kernel(sigma, radius)
    n = 2 * radius + 1
    channels = x.shape[-1]
    row = tf.tile(tf.reshape(k, [1, n, 1, 1]), [1, 1, channels, 1])
    col = tf.tile(tf.reshape(k, [n, 1, 1, 1]), [1, 1, channels, 1])
    return tf.nn.depthwise_conv2d(tf.nn.depthwise_conv2d(x, row, [1, 1, 1, 1], "SAME"), col, [1, 1, 1, 1], "SAME")


def _elastic_field(batch: Any, seed: Any, alpha: float, sigma: float) -> tuple[Any, Any]:
    """Smooth random displacements ``(B, 28, 28)`` for x and y: uniform noise, Gaussian-blurred, times alpha."""
    noise = _uniform([batch, IMAGE_SIDE, IMAGE_SIDE, 2], -1.0, 1.0, seed, 1)
    field = _separable_blur(noise, sigma, ELASTIC_RADIUS) * alpha
    return field[..., 0], field[..., 1]


def _bilinear(images: Any, xs: Any, ys: Any) -> Any:
    """Sample ``images (B, H, W)`` at float coordinates ``xs, ys (B, H, W)``; outside reads 0."""
    import tensorflow as tf

    side = IMAGE_SIDE
    flat = tf.reshape(images, [-1, side * side])
    x0, y0 = tf.floor(xs), tf.floor(ys)
    out = tf.zeros_like(xs)
    for dx in (0.0, 1.0):
        for dy in (0.0, 1.0):
            xi, yi = x0 + dx, y0 + dy
            weight = (1.0 - tf.abs(xs - xi)) * (1.0 - tf.abs(ys - yi))
            inside = (xi >= 0) & (xi <= side - 1) & (yi >= 0) & (yi <= side - 1)
            index = tf.cast(tf.clip_by_value(yi, 0, side - 1) * side + tf.clip_by_value(xi, 0, side - 1), tf.int32)
            values = tf.gather(flat, tf.reshape(index, [-1, side * side]), batch_dims=1)
            out += tf.where(inside, weight * tf.reshape(values, tf.shape(xs)), 0.0)
    return out


def _warp(x: Any, seed: Any, p: Augmentation) -> Any:
    """One resampling: rotation, shear, zoom and aspect about the centre, shift, elastic field."""
    import tensorflow as tf

    batch = tf.shape(x)[0]
    angle = _uniform([batch, 1, 1], -p.rotation_deg, p.rotation_deg, seed, 2) * (math.pi / 180.0)
    zoom = _uniform([batch, 1, 1], p.scale[0], p.scale[1], seed, 3)
    shift = _uniform([batch, 1, 1, 2], -p.shift_px, p.shift_px, seed, 4)
    shear = _uniform([batch, 1, 1], -p.shear, p.shear, seed, 5)
    aspect = tf.exp(_uniform([batch, 1, 1], math.log(p.aspect[0]), math.log(p.aspect[1]), seed, 6))
    centre = (IMAGE_SIDE - 1) / 2.0
    grid = tf.range(IMAGE_SIDE, dtype=tf.float32) - centre
    u = tf.reshape(grid, [1, 1, IMAGE_SIDE])  # output x, relative to the centre
    v = tf.reshape(grid, [1, IMAGE_SIDE, 1])  # output y
    # Inverse map, output -> input: undo the shift, the zoom and aspect, the shear, then the rotation.
    u, v = u - shift[..., 0], v - shift[..., 1]
    u, v = u / (zoom * aspect), v / zoom
    u = u - shear * v
    cos, sin = tf.cos(angle), tf.sin(angle)
    xs = cos * u + sin * v + centre
    ys = -sin * u + cos * v + centre
    if p.elastic_alpha > 0:
        ex, ey = _elastic_field(batch, seed, p.elastic_alpha, p.elastic_sigma)
        xs, ys = xs + ex, ys + ey
    return tf.expand_dims(_bilinear(x[..., 0], xs, ys), -1)


# ---------------------------------------------------------------------------- the pen and the picture
def _stroke_variants(x: Any, steps: tuple[int, ...]) -> list[Any]:
    """``x`` with its strokes eroded (< 0) or dilated (> 0) by ``|step|`` 3 x 3 grey-morphology
    passes at 56 x 56, then area-averaged back: steps of half an MNIST pixel."""
    import tensorflow as tf

    big = tf.image.resize(x, [2 * IMAGE_SIDE, 2 * IMAGE_SIDE], "bilinear")
    out = []
    for step in steps:
        y = big
        for _ in range(abs(step)):
            y = tf.nn.max_pool2d(y, 3, 1, "SAME") if step > 0 else -tf.nn.max_pool2d(-y, 3, 1, "SAME")
        out.append(tf.nn.avg_pool2d(y, 2, 2, "VALID"))
    return out


def _lowres_variants(x: Any, sides: tuple[int, ...]) -> list[Any]:
    """``x`` area-averaged down to ``side x side`` and bicubic back up: lost detail, soft edges."""
    import tensorflow as tf

    return [tf.clip_by_value(tf.image.resize(tf.image.resize(x, [s, s], "area"), [IMAGE_SIDE, IMAGE_SIDE], "bicubic"),
                             0.0, 1.0) for s in sides]


def _peak_to_one(x: Any) -> Any:
    import tensorflow as tf

    return x / tf.maximum(tf.reduce_max(x, axis=[1, 2, 3], keepdims=True), 1e-6)


def augment_batch(x: Any, seed: Any, augmentation: Augmentation = AFFINE) -> Any:
    """Randomly change each image of a batch by ``augmentation`` (``AFFINE`` or ``ROBUST``).

    ``x``: ``(B, 28, 28, 1)`` float32 in [0, 1] -> the same shape and range; a pure function of
    ``x`` and ``seed`` (an int pair: tensor or list).

    >>> augment_batch(tf.zeros([8, 28, 28, 1]), seed=[0, 1]).shape
    TensorShape([8, 28, 28, 1])
    """
    import tensorflow as tf

    p = augmentation
    x = tf.convert_to_tensor(x, tf.float32)
    if p.stroke_p > 0:
        x = _choose(x, _stroke_variants(x, p.stroke_steps), p.stroke_p, seed, 10)
    x = _warp(x, seed, p)
    if p.lowres_p > 0:
        x = _choose(x, _lowres_variants(x, p.lowres_sides), p.lowres_p, seed, 20)
    if p.blur_p > 0:
        x = _choose(x, [_peak_to_one(_separable_blur(x, s, max(1, round(2.5 * s)))) for s in p.blur_sigmas],
                    p.blur_p, seed, 30)
    if p.gamma != (1.0, 1.0):
        batch = tf.shape(x)[0]
        gamma = tf.exp(_uniform([batch, 1, 1, 1], math.log(p.gamma[0]), math.log(p.gamma[1]), seed, 40))
        x = tf.pow(tf.maximum(x, 0.0), gamma)
    if p.noise_p > 0:
        batch = tf.shape(x)[0]
        sigma = _uniform([batch, 1, 1, 1], 0.0, p.noise_sigma, seed, 50)
        use = tf.cast(_uniform([batch, 1, 1, 1], 0.0, 1.0, seed, 51) < p.noise_p, tf.float32)
        noise = tf.random.stateless_normal(tf.shape(x), tf.random.experimental.stateless_fold_in(
            tf.cast(seed, tf.int64), 52))
        x = x + use * sigma * noise
    return tf.clip_by_value(x, 0.0, 1.0)


def identity() -> Augmentation:
    """A policy that changes nothing (for tests)."""
    return replace(AFFINE, rotation_deg=0.0, scale=(1.0, 1.0), shift_px=0.0, elastic_alpha=0.0)

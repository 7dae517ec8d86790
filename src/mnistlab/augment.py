"""On-the-fly data augmentation in TensorFlow: one random affine warp plus an elastic distortion.

Every output pixel is read, by bilinear interpolation, from a point of its input image: the point
an affine map (rotation, scale, shift about the centre) sends it to, moved further by a smooth
random displacement field (Simard et al. 2003, "Best practices for convolutional neural networks
applied to visual document analysis"). Both are folded into one sampling grid, so each image is
resampled once. Pixels read from outside the image are 0 (MNIST's background), so the result
stays in [0, 1]. Everything is TensorFlow ops: it runs inside the compiled training step.
"""

from __future__ import annotations

import math
from typing import Any

IMAGE_SIDE = 28  # pixels
MAX_ROTATION_DEG = 12.0  # uniform in [-12, 12] degrees
SCALE_RANGE = (0.9, 1.1)  # uniform zoom factor
MAX_SHIFT_PX = 2.5  # uniform in [-2.5, 2.5] pixels, x and y independently
ELASTIC_ALPHA = 24.0  # pixels: scale of the smoothed displacement field (Simard used 34)
ELASTIC_SIGMA = 4.0  # pixels: Gaussian smoothing of the field (Simard: 4)
ELASTIC_RADIUS = 8  # kernel half-width, 2 sigma: the tails beyond add nothing visible


def _gaussian_kernel(sigma: float, radius: int) -> Any:
    import tensorflow as tf

    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * (t / sigma) ** 2)
    return k / tf.reduce_sum(k)


def _uniform(shape: Any, low: float, high: float, seed: Any, salt: int) -> Any:
    """Uniform noise, a pure function of ``seed`` (an int pair) and ``salt`` (one stream per use):
    ``fold_in`` hashes the two, so streams of nearby seeds do not overlap."""
    import tensorflow as tf

    stream = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), salt)
    return tf.random.stateless_uniform(shape, seed=stream, minval=low, maxval=high)


def _elastic_field(batch: Any, seed: Any, alpha: float, sigma: float) -> tuple[Any, Any]:
    """Smooth random displacements ``(B, 28, 28)`` for x and y: uniform noise, Gaussian-blurred, times alpha."""
    import tensorflow as tf

    noise = _uniform([batch, IMAGE_SIDE, IMAGE_SIDE, 2], -1.0, 1.0, seed, 1)
    k = _gaussian_kernel(sigma, ELASTIC_RADIUS)
    n = 2 * ELASTIC_RADIUS + 1
    # Separable blur, one depthwise pass per axis; zero padding at the border, like Simard's.
    row = tf.tile(tf.reshape(k, [1, n, 1, 1]), [1, 1, 2, 1])
    col = tf.tile(tf.reshape(k, [n, 1, 1, 1]), [1, 1, 2, 1])
    field = tf.nn.depthwise_conv2d(noise, row, [1, 1, 1, 1], "SAME")
    field = tf.nn.depthwise_conv2d(field, col, [1, 1, 1, 1], "SAME") * alpha
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


def augment_batch(x: Any, seed: Any, rotation_deg: float = MAX_ROTATION_DEG,
                  scale_range: tuple[float, float] = SCALE_RANGE, shift_px: float = MAX_SHIFT_PX,
                  elastic_alpha: float = ELASTIC_ALPHA, elastic_sigma: float = ELASTIC_SIGMA) -> Any:
    """Randomly rotate, scale, shift and elastically distort each image of a batch.

    ``x``: ``(B, 28, 28, 1)`` float32 in [0, 1] -> the same shape and range. ``seed``: an int pair
    (tensor or list); the output is a pure function of ``x`` and ``seed`` (training passes a seed
    derived from the run's seed and the optimizer step, so a resumed run draws the same warps).

    >>> augment_batch(tf.zeros([8, 28, 28, 1]), seed=[0, 1]).shape
    TensorShape([8, 28, 28, 1])
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(x, tf.float32)
    batch = tf.shape(x)[0]
    angle = _uniform([batch, 1, 1], -rotation_deg, rotation_deg, seed, 2) * (math.pi / 180.0)
    scale = _uniform([batch, 1, 1], scale_range[0], scale_range[1], seed, 3)
    shift = _uniform([batch, 1, 1, 2], -shift_px, shift_px, seed, 4)
    centre = (IMAGE_SIDE - 1) / 2.0
    grid = tf.range(IMAGE_SIDE, dtype=tf.float32) - centre
    u = tf.reshape(grid, [1, 1, IMAGE_SIDE])  # output x, relative to the centre
    v = tf.reshape(grid, [1, IMAGE_SIDE, 1])  # output y
    # Inverse map, output -> input: rotate by -angle and divide by the zoom, then undo the shift.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    xs = cos * u + sin * v + centre - shift[..., 0]
    ys = -sin * u + cos * v + centre - shift[..., 1]
    if elastic_alpha > 0:
        ex, ey = _elastic_field(batch, seed, elastic_alpha, elastic_sigma)
        xs, ys = xs + ex, ys + ey
    return tf.expand_dims(_bilinear(x[..., 0], xs, ys), -1)

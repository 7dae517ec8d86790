"""On-the-fly augmentation: shape and range kept, reproducible from a seed, pixels really move."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from synthetic import class_images

from mnistlab.augment import augment_batch


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """(16, 28, 28, 1) float32 in [0, 1]: bars at class-specific places, plus noise."""
    return (class_images(np.arange(16) % 10) / 255.0).astype(np.float32)[..., None]


def test_keeps_shape_dtype_and_range(images):
    out = augment_batch(images, seed=[0, 1]).numpy()
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_same_seed_same_output_other_seed_other_output(images):
    a, b = (augment_batch(images, seed=[3, 4]).numpy() for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment_batch(images, seed=[3, 5]).numpy())


def test_moves_pixels_but_keeps_most_ink(images):
    out = augment_batch(images, seed=[0, 2]).numpy()
    assert np.abs(out - images).mean() > 0.02  # something moved
    ink_ratio = out.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3))
    assert np.all((ink_ratio > 0.6) & (ink_ratio < 1.4)), ink_ratio  # a warp, not a wipe


def test_zero_strength_is_the_identity(images):
    out = augment_batch(images, seed=[0, 0], rotation_deg=0.0, scale_range=(1.0, 1.0), shift_px=0.0,
                        elastic_alpha=0.0).numpy()
    np.testing.assert_allclose(out, images, atol=1e-6)


def test_runs_inside_tf_function_as_a_pure_function_of_the_seed(images):
    def run(global_seed: int) -> np.ndarray:
        tf.random.set_seed(global_seed)  # no global stream is used
        fn = tf.function(lambda x, s: augment_batch(x, s))
        return fn(tf.constant(images), tf.constant([7, 8], tf.int64)).numpy()

    np.testing.assert_array_equal(run(1), run(2))
    np.testing.assert_allclose(run(1), augment_batch(images, [7, 8]).numpy(), atol=1e-5)  # eager: other fusions


def test_neighbouring_step_seeds_give_unrelated_warps(images):
    """Step seeds (s, k) and (s, k + 1) must not share streams (``seed + [0, salt]`` did)."""
    a = augment_batch(images, seed=[5, 10]).numpy()
    b = augment_batch(images, seed=[5, 11]).numpy()
    assert np.abs(a - b).mean() > 0.02

"""On-the-fly augmentation: shape and range kept, reproducible from a seed, pixels really move."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from synthetic import class_images

from mnistlab.augment import AFFINE, ROBUST, augment_batch, identity


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
    out = augment_batch(images, [0, 0], identity()).numpy()
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


@pytest.mark.parametrize("policy", [AFFINE, ROBUST], ids=["affine", "robust"])
def test_each_policy_keeps_shape_range_and_is_a_pure_function_of_the_seed(images, policy):
    a = augment_batch(images, [1, 2], policy).numpy()
    assert a.shape == images.shape and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, augment_batch(images, [1, 2], policy).numpy())
    assert not np.array_equal(a, augment_batch(images, [1, 3], policy).numpy())


def only(**changes):
    """The identity policy with one family of changes switched on for every image."""
    from dataclasses import replace

    return replace(identity(), **changes)


def ink(x) -> np.ndarray:
    return np.asarray(x).sum(axis=(1, 2, 3))


def test_the_pen_gets_thicker_or_thinner(images):
    thicker = augment_batch(images, [0, 1], only(stroke_p=1.0, stroke_steps=(2,))).numpy()
    thinner = augment_batch(images, [0, 1], only(stroke_p=1.0, stroke_steps=(-1,))).numpy()
    assert np.all(ink(thicker) > 1.1 * ink(images)) and np.all(ink(thinner) < 0.95 * ink(images))


def test_low_resolution_and_blur_remove_fine_detail(images):
    def detail(x):  # mean absolute difference between neighbouring pixels: edges
        x = np.asarray(x)[..., 0]
        return np.abs(np.diff(x, axis=2)).mean()

    for policy in (only(lowres_p=1.0, lowres_sides=(12,)), only(blur_p=1.0, blur_sigmas=(1.4,))):
        out = augment_batch(images, [0, 1], policy).numpy()
        assert detail(out) < 0.8 * detail(images)
        assert out.max(axis=(1, 2, 3)).min() > 0.5  # a faint digit, not an erased one


def test_slant_moves_the_top_and_bottom_apart():
    """Vertical bars sheared by up to 0.4: their top rows move one way and their bottom rows the
    other, by up to 0.4 x 17 rows ~ 7 px, each bar by its own amount."""
    bars = np.zeros((16, 28, 28, 1), np.float32)
    bars[:, 4:24, 13:15] = 1.0
    out = augment_batch(bars, [0, 7], only(shear=0.4)).numpy()[..., 0]
    columns = np.arange(28)
    lean = (out[:, 5] * columns).sum(1) / out[:, 5].sum(1) - (out[:, 22] * columns).sum(1) / out[:, 22].sum(1)
    assert np.abs(lean).max() > 4 and np.abs(lean).max() < 8 and np.ptp(lean) > 2


def test_the_robust_policy_changes_digits_more_than_affine(images):
    moved = [np.abs(augment_batch(images, [s, 9], p).numpy() - images).mean() for p in (AFFINE, ROBUST) for s in (0,)]
    assert moved[1] > moved[0]

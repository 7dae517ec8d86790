"""Shift generators: every set keeps MNIST's format, is a pure function of its seed, and moves the
digits in the direction its name says (measured on digits the tests draw themselves).

Oracles: a plain per-pixel Zhang-Suen for the vectorised skeleton, a plain maximum for the disk
dilation, preprocess.to_mnist for the framing; moments, bounding boxes, centres of mass and the
energy of fine detail for the geometric and resolution shifts.
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _models import FOUR, SEVEN, draw
from mnistlab import preprocess, shifts
from mnistlab.errors import MnistlabError

BAR = [[(0.5, 0.1), (0.5, 0.9)]]  # a vertical stroke
RING = [[(0.5 + 0.3 * math.sin(t), 0.5 - 0.4 * math.cos(t)) for t in np.linspace(0, 2 * math.pi, 40)]]
SHAPES = (SEVEN, FOUR, BAR, RING)


def framed(strokes, width: float = 0.08) -> np.ndarray:
    """Strokes drawn light on dark and framed as MNIST: ``(28, 28, 1)`` float32."""
    picture = draw(strokes, size=(280, 280), ink=255, paper=0, width=width)
    return shifts.frame(np.asarray(picture, np.float32) / 255)[..., None]


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Sixteen MNIST-framed digits: each shape at four pen widths, ``(16, 28, 28, 1)``."""
    return np.stack([framed(s, w) for s in SHAPES for w in (0.05, 0.07, 0.09, 0.11)])


def ink(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).sum(axis=1)


def axis_angle(image: np.ndarray) -> float:
    """Angle of the principal axis from vertical, degrees, positive when the top leans right."""
    x = image.reshape(28, 28)
    ys, xs = np.mgrid[0:28, 0:28]
    m = x.sum()
    cy, cx = (x * ys).sum() / m, (x * xs).sum() / m
    cov = np.cov(np.stack([(ys - cy).ravel(), (xs - cx).ravel()]), aweights=x.ravel())
    vals, vecs = np.linalg.eigh(cov)
    dy, dx = vecs[:, np.argmax(vals)]
    if dy > 0:  # point upwards (rows grow downwards)
        dy, dx = -dy, -dx
    return math.degrees(math.atan2(dx, -dy))


def bbox(image: np.ndarray, level: float = 0.1) -> tuple[int, int]:
    """(height, width) of the pixels above ``level``."""
    rows, cols = np.nonzero(image.reshape(28, 28) > level)
    return int(np.ptp(rows) + 1), int(np.ptp(cols) + 1)


def centre_of_mass(image: np.ndarray) -> np.ndarray:
    x = image.reshape(28, 28)
    ys, xs = np.mgrid[0:28, 0:28]
    return np.array([(x * ys).sum(), (x * xs).sum()]) / x.sum()


def sharpness(images: np.ndarray) -> float:
    """Squared differences of neighbouring pixels per unit of ink: the energy of the finest detail
    (a derivative weighs each frequency by its square), independent of how bold the digits are."""
    x = images[..., 0]
    return float(((np.diff(x, axis=1) ** 2).sum() + (np.diff(x, axis=2) ** 2).sum()) / x.sum())


def check_format(x: np.ndarray, n: int) -> None:
    assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(x, np.round(x * 255) / 255)  # 8-bit levels: caches are exact


# ---------------------------------------------------------------------------- every set
MNIST_SETS = [s.name for s in shifts.SETS if s.source == "mnist-test"]
NOT_RANDOM = {"clean", "lowres-16", "lowres-12", "lowres-8"}


@pytest.mark.parametrize("name", MNIST_SETS)
def test_every_set_keeps_the_format_and_is_a_pure_function_of_its_seed(name, digits):
    labels = np.arange(len(digits)) % 10
    spec = shifts.get(name)
    first = shifts.build_set(spec, len(digits), 0, (digits, labels))
    check_format(first.images, len(digits))
    np.testing.assert_array_equal(first.labels, labels)
    again = shifts.build_set(spec, len(digits), 0, (digits, labels))
    np.testing.assert_array_equal(first.images, again.images)
    other = shifts.build_set(spec, len(digits), 1, (digits, labels))
    if name not in NOT_RANDOM:
        assert not np.array_equal(first.images, other.images)
    if name != "clean":
        assert not np.array_equal(first.images, shifts._finish(digits[..., 0]))  # it does change them
    if spec.family != "camera":  # photos may be refused by preprocessing, as a user's would
        assert not first.refused.any()


def test_the_subset_is_seeded_and_shared_by_every_set():
    a, b = shifts.mnist_subset(10_000, 50, 0), shifts.mnist_subset(10_000, 50, 1)
    np.testing.assert_array_equal(a, shifts.mnist_subset(10_000, 50, 0))
    assert len(set(a)) == 50 and list(a) == sorted(a) and not np.array_equal(a, b)
    np.testing.assert_array_equal(shifts.mnist_subset(30, 50, 0), np.arange(30))


def test_catalogue():
    names = [s.name for s in shifts.SETS]
    assert len(names) == len(set(names)) and names[0] == "clean"
    assert all(s.level in shifts.LEVELS for s in shifts.SETS)
    assert {s.name for s in shifts.SETS if s.held_out} == {"fonts-hand", "fonts-print", "other-writers"}
    assert all(s.source == "mnist-test" for s in shifts.SETS if not s.held_out)
    assert {s.family for s in shifts.SETS} >= {"stroke", "resolution", "geometry", "framing", "drawn", "camera",
                                              "fonts", "writers"}
    tuning = shifts.select(held_out=False)
    assert tuning[0].name == "clean" and not any(s.held_out for s in tuning)
    severe = shifts.select(levels=("severe",))
    assert {s.level for s in severe} == {"none", "severe"}
    assert [s.name for s in shifts.select(("blur-severe", "clean"))] == ["blur-severe", "clean"]
    with pytest.raises(MnistlabError, match=r"^--sets: unknown set 'blurry'; expected one of clean, "):
        shifts.select(("blurry",))
    with pytest.raises(MnistlabError, match="^--levels: unknown level 'hard'"):
        shifts.select(levels=("hard",))
    assert shifts.get("thick-severe").key() == "thick-severe|_ranged|primitive=stroke_width,low=1.5,high=2.25"


def test_random_streams_differ_per_set_and_repeat_per_seed():
    assert shifts.set_rng(0, "thin-moderate").random() == shifts.set_rng(0, "thin-moderate").random()
    assert shifts.set_rng(0, "thin-moderate").random() != shifts.set_rng(0, "thick-moderate").random()
    assert shifts.set_rng(0, "thin-moderate").random() != shifts.set_rng(1, "thin-moderate").random()


def test_bad_input_shape_is_one_line():
    with pytest.raises(MnistlabError, match=r"images of shape \(3, 32, 32\); expected \(N, 28, 28, 1\)"):
        shifts.blur(np.zeros((3, 32, 32)), 1.0)


# ---------------------------------------------------------------------------- directions
def curved(digits: np.ndarray) -> np.ndarray:
    """The digits but the vertical bars: a bar on the pixel grid is 1-2 px wide whatever its source
    width, so its ink cannot show a change of width at 28 x 28."""
    return digits[[i for i in range(len(digits)) if SHAPES[i // 4] is not BAR]]


def test_stroke_width_dilation_raises_ink_and_erosion_lowers_it(digits):
    digits = curved(digits)
    reference = ink(shifts.stroke_width(digits, 0.0))
    thicker, thickest = ink(shifts.stroke_width(digits, 0.75)), ink(shifts.stroke_width(digits, 1.5))
    thinner = ink(shifts.stroke_width(digits, -0.5))
    assert (thickest > thicker).all() and (thicker > reference).all() and (thinner < reference).all()


def test_thin_keeps_a_share_of_each_digits_own_width(digits):
    digits = curved(digits)
    reference = ink(shifts.thin(digits, 1.0))
    half, quarter = ink(shifts.thin(digits, 0.5)), ink(shifts.thin(digits, 0.25))
    assert (half < 0.9 * reference).all() and (quarter < half).all()
    assert (half / reference).mean() < 0.75 and (quarter / reference).mean() < 0.6
    hairline = framed(SEVEN, 0.02)[None]  # about 1 px wide: thinning must not erase it
    assert ink(shifts.thin(hairline, 0.25))[0] > 0.3 * ink(hairline)[0]


def test_low_resolution_and_blur_remove_fine_detail(digits):
    lowres = {box: shifts.low_resolution(digits, box) for box in (8, 12, 16)}
    assert sharpness(lowres[8]) < sharpness(lowres[12]) < sharpness(lowres[16]) < 0.8 * sharpness(digits)
    error = {box: float(((x - digits) ** 2).mean()) for box, x in lowres.items()}
    assert error[8] > error[12] > error[16] > 0  # the coarser, the more is lost
    assert sharpness(shifts.blur(digits, 1.5)) < sharpness(shifts.blur(digits, 0.8)) < 0.8 * sharpness(digits)
    assert np.allclose(shifts.blur(digits, 1.0).max(axis=(1, 2, 3)), 1.0)  # peak restored, as preprocess does


@pytest.mark.parametrize("degrees", [-20.0, 15.0, 25.0])
def test_rotation_turns_the_principal_axis(degrees):
    bar = framed(BAR)[None]
    assert abs(axis_angle(bar[0])) < 1.0
    turned = shifts.rotate(bar, degrees)[0]
    assert axis_angle(turned) == pytest.approx(-degrees, abs=2.5)  # counter-clockwise: the top leans left
    assert max(bbox(turned)) in (19, 20, 21)  # re-framed to MNIST's 20 px box


def test_shear_slants_to_the_right_for_positive_factors():
    bar = framed(BAR)[None]
    for factor in (0.3, -0.45):
        assert axis_angle(shifts.shear(bar, factor)[0]) == pytest.approx(math.degrees(math.atan(factor)), abs=2.5)


def test_aspect_squeezes_and_stretches_the_width():
    ring = framed(RING)[None]
    h0, w0 = bbox(ring[0])
    h1, w1 = bbox(shifts.aspect(ring, 0.5)[0])
    h2, w2 = bbox(shifts.aspect(ring, 1.4)[0])
    assert w1 / h1 == pytest.approx(0.5 * w0 / h0, rel=0.15)
    assert w2 / h2 == pytest.approx(1.4 * w0 / h0, rel=0.15)


def test_translate_moves_the_centre_of_mass_and_does_not_reframe(digits):
    digits = digits[8:]  # bars and rings: a margin all round, so nothing leaves the frame
    offsets = np.array([[3.0, 0.0], [0.0, -2.5], [-2.0, 2.0], [1.5, 1.5]] * 2)
    moved = shifts.translate(digits, offsets)
    for before, after, offset in zip(digits, moved, offsets):
        np.testing.assert_allclose(centre_of_mass(after) - centre_of_mass(before), offset, atol=0.35)


def test_shrink_makes_small_digits_in_the_frame(digits):
    for scale in (0.5, 0.8):
        small = shifts.shrink(digits, scale)
        for before, after in zip(digits, small):
            assert max(bbox(after)) == pytest.approx(scale * max(bbox(before)), abs=1.6)
            np.testing.assert_allclose(centre_of_mass(after), centre_of_mass(before), atol=1.5)


def test_redraw_gives_a_uniform_pen_of_the_asked_width():
    thick_bar = framed(BAR, 0.25)[None]  # a bar ~5 px wide
    for pen in (1.0, 2.0, 4.0):
        row = shifts.redraw(thick_bar, pen)[0, 14, :, 0]
        assert (row > 0.5).sum() == pytest.approx(pen, abs=1.0)
    # a stroke thin in one half and thick in the other comes back even
    picture = np.asarray(draw([[(0.5, 0.1), (0.5, 0.5)]], width=0.05, ink=255, paper=0), np.float32)
    picture = np.maximum(picture, np.asarray(draw([[(0.5, 0.5), (0.5, 0.9)]], width=0.2, ink=255, paper=0), np.float32))
    uneven = shifts.frame(picture / 255)[None, ..., None]
    even = shifts.redraw(uneven, 2.0)[0, ..., 0]
    widths = [(even[r] > 0.5).sum() for r in (7, 21)]
    assert abs(widths[0] - widths[1]) <= 1


def reference_zhang_suen(mask: np.ndarray) -> np.ndarray:
    """Zhang & Suen (1984) pixel by pixel, as published: the oracle for ``shifts.skeleton``."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            remove = []
            for y in range(1, img.shape[0] - 1):
                for x in range(1, img.shape[1] - 1):
                    if not img[y, x]:
                        continue
                    p = [img[y - 1, x], img[y - 1, x + 1], img[y, x + 1], img[y + 1, x + 1],
                         img[y + 1, x], img[y + 1, x - 1], img[y, x - 1], img[y - 1, x - 1]]
                    b = sum(p)
                    a = sum(1 for k in range(8) if p[k] == 0 and p[(k + 1) % 8] == 1)
                    p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
                    first = p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
                    second = p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
                    if 2 <= b <= 6 and a == 1 and (first if step == 0 else second):
                        remove.append((y, x))
            for y, x in remove:
                img[y, x] = 0
            changed |= bool(remove)
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def test_skeleton_matches_the_published_algorithm():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 24, 24), bool)
    ys, xs = np.mgrid[0:24, 0:24]
    for m in masks:
        for _ in range(3):
            y, x, r = rng.integers(5, 19), rng.integers(5, 19), rng.integers(2, 5)
            m |= (ys - y) ** 2 + (xs - x) ** 2 <= r * r
        m[rng.integers(3, 20), 2:22] = True
    masks[5] = 0  # an empty image stays empty
    got = shifts.skeleton(masks)
    for m, g in zip(masks, got):
        np.testing.assert_array_equal(g, reference_zhang_suen(m))
    assert (got <= masks).all()


def test_disk_dilation_and_erosion_match_a_plain_maximum_over_the_disk():
    x = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4)))
    for radius in (1, 2, 4):
        offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                   if dy * dy + dx * dx <= radius * radius]
        expected = np.max([padded[:, 4 + dy:24 + dy, 4 + dx:28 + dx] for dy, dx in offsets], axis=0)
        np.testing.assert_array_equal(shifts._morph(x, radius), expected)
        eroded = 1 - np.max([np.pad(1 - x, ((0, 0), (4, 4), (4, 4)))[:, 4 + dy:24 + dy, 4 + dx:28 + dx]
                             for dy, dx in offsets], axis=0)
        np.testing.assert_allclose(shifts._morph(x, -radius), eroded, atol=1e-6)


def test_frame_is_mnists_framing_as_preprocess_does_it():
    scores = []
    for strokes in SHAPES:
        for width in (0.06, 0.09, 0.12):
            picture = np.asarray(draw(strokes, (300, 200), (40, 10, 170), 255, 0, width), np.float32) / 255
            ours, theirs = shifts.frame(picture), preprocess.to_mnist(picture)[..., 0]
            assert max(bbox(ours, 0.0)) in (19, 20, 21) and abs(bbox(ours, 0.0)[1] - bbox(theirs, 0.0)[1]) <= 1
            np.testing.assert_allclose(centre_of_mass(ours), [14, 14], atol=0.5)
            if strokes is not BAR:  # a 1-2 px bar on the pixel grid flips with the sub-pixel phase
                scores.append(max(np.corrcoef(np.roll(ours, (dy, dx), (0, 1)).ravel(), theirs.ravel())[0, 1]
                                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)))
    # the two resample at different sub-pixel phases (preprocess shrinks first), so thin strokes differ a little
    assert min(scores) > 0.85 and np.median(scores) > 0.98, scores
    assert (shifts.frame(np.zeros((50, 50))) == 0).all()


# ---------------------------------------------------------------------------- camera, fonts, writers
def test_photos_are_dark_ink_on_paper_and_read_back_as_the_digit(digits):
    rng = np.random.default_rng(0)
    jpeg = shifts.render_photo(digits[0, ..., 0], rng)
    picture = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float32) / 255
    assert picture.shape[0] > 60 and picture.mean() > 0.5  # mostly light paper
    back = shifts.photo(digits, np.random.default_rng(1))
    check_format(back, len(digits))
    for a, b in zip(digits, back):
        best = max(np.corrcoef(np.roll(a[..., 0], (dy, dx), (0, 1)).ravel(), b.ravel())[0, 1]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        assert best > 0.75  # the same digit
    assert not np.array_equal(back, digits)  # but not the same pixels


def test_a_picture_preprocessing_refuses_comes_back_blank_and_counts_as_refused(digits):
    blank = np.zeros((2, 28, 28, 1), np.float32)
    back = shifts.photo(blank, np.random.default_rng(0))
    assert (back == 0).all()
    assert shifts.ShiftData(back, np.zeros(2, np.int64)).refused.all()


def test_severe_photos_have_less_contrast_than_moderate_ones(digits):
    def contrast(camera):
        rng = np.random.default_rng(0)
        pictures = [np.asarray(Image.open(io.BytesIO(shifts.render_photo(d[..., 0], rng, camera))).convert("L"))
                    for d in digits]
        return np.mean([np.percentile(p, 99) - np.percentile(p, 1) for p in pictures])
    assert contrast(shifts.PHOTO_SEVERE) < contrast(shifts.PHOTO_MODERATE) - 20


def test_missing_fonts_are_named_with_their_package(tmp_path: Path):
    with pytest.raises(shifts.Unavailable, match=r"no hand fonts installed; apt-get install .*fonts-comic-neue"):
        shifts.font_digits(10, np.random.default_rng(0), "hand", dirs=(str(tmp_path),))


def test_font_digits_from_a_font_folder(tmp_path: Path):
    dejavu = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if not dejavu.is_file():
        pytest.skip("fonts-dejavu-core is not installed")
    (tmp_path / "DejaVuSans.ttf").write_bytes(dejavu.read_bytes())
    paths, missing = shifts.find_fonts("print", (str(tmp_path),))
    assert paths == [tmp_path / "DejaVuSans.ttf"] and "fonts-liberation2" in missing
    first = shifts.font_digits(30, np.random.default_rng(0), "print", dirs=(str(tmp_path),))
    check_format(first.images, 30)
    assert np.bincount(first.labels, minlength=10).tolist() == [3] * 10
    assert not first.refused.any() and "1 print fonts" in first.note
    again = shifts.font_digits(30, np.random.default_rng(0), "print", dirs=(str(tmp_path),))
    np.testing.assert_array_equal(first.images, again.images)
    other = shifts.font_digits(30, np.random.default_rng(1), "print", dirs=(str(tmp_path),))
    assert not np.array_equal(first.images, other.images)
    ones, zeros = first.images[first.labels == 1], first.images[first.labels == 0]
    assert ink(ones).mean() < ink(zeros).mean()  # a 1 is one stroke, a 0 a loop: the labels match the glyphs


def test_font_halves_split_every_style_whatever_is_installed():
    for style in ("hand", "print"):
        faces = [f for f in shifts.FONTS if f.style == style]
        halves = [shifts.font_half(f) for f in faces]
        assert set(halves) == set(shifts.HALVES) and abs(halves.count("train") - halves.count("test")) <= 1
    regular = {f.file: shifts.font_half(f) for f in shifts.FONTS}
    assert regular["DejaVuSans.ttf"] != regular["DejaVuSans-Bold.ttf"]  # neighbours by name part
    assert {s.name: dict(s.params).get("half") for s in shifts.SETS if s.source == "fonts"} == \
        {"fonts-hand": "test", "fonts-print": "test"}  # the benchmark never scores a training font


def copy_fonts(folder: Path, names: tuple[str, ...]) -> None:
    found = {p.name: p for style in ("hand", "print") for p in shifts.find_fonts(style)[0]}
    if not set(names) <= set(found):
        pytest.skip(f"fonts not installed: {sorted(set(names) - set(found))}")
    for name in names:
        (folder / name).write_bytes(found[name].read_bytes())


def test_training_font_digits_come_from_the_training_half_only(tmp_path: Path):
    train_face, test_face = "DejaVuSans-Bold.ttf", "DejaVuSans.ttf"
    halves = {f.file: shifts.font_half(f) for f in shifts.FONTS}
    assert (halves[train_face], halves[test_face]) == ("train", "test")
    copy_fonts(tmp_path, (train_face, test_face))
    dirs = (str(tmp_path),)
    assert shifts.find_fonts("print", dirs, "train")[0] == [tmp_path / train_face]
    assert shifts.find_fonts("print", dirs, "test")[0] == [tmp_path / test_face]
    made = shifts.training_font_digits(40, seed=3, dirs=dirs)
    check_format(made.images, 40)
    assert np.bincount(made.labels, minlength=10).tolist() == [4] * 10 and "1 print fonts" in made.note
    only = shifts.font_digits(40, shifts.set_rng(3, "train-fonts-print"), "print", dirs=dirs, half="train")
    np.testing.assert_array_equal(made.images, only.images)  # every digit from the one training font
    np.testing.assert_array_equal(made.images, shifts.training_font_digits(40, seed=3, dirs=dirs).images)
    assert not np.array_equal(made.images, shifts.training_font_digits(40, seed=4, dirs=dirs).images)
    (tmp_path / train_face).unlink()
    with pytest.raises(shifts.Unavailable, match="no fonts of the training half installed; apt-get install"):
        shifts.training_font_digits(40, seed=3, dirs=dirs)


def test_other_writers_needs_scikit_learn(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(shifts.Unavailable, match=r"scikit-learn is not installed \(pip install 'mnistlab\[robust\]'\)"):
        shifts.other_writers(10, np.random.default_rng(0))


def test_other_writers_are_scikit_learns_scans():
    datasets = pytest.importorskip("sklearn.datasets")
    built = shifts.other_writers(40, np.random.default_rng(0))
    check_format(built.images, 40)
    target = datasets.load_digits().target
    pick = np.sort(np.random.default_rng(0).choice(len(target), 40, replace=False))
    np.testing.assert_array_equal(built.labels, target[pick])
    assert built.refused.mean() < 0.1
    again = shifts.other_writers(40, np.random.default_rng(0))
    np.testing.assert_array_equal(built.images, again.images)


def test_optdigits_bitmap_is_the_other_writers_format():
    """UCI optical digits' format: 8 x 8 block counts of a 32 x 32 binary bitmap (17 levels), the
    digit's height filling all 8 rows, its aspect kept; scikit-learn's scans have the same traits."""
    bar, ring = framed(BAR)[..., 0], framed(RING)[..., 0]
    for digit in (bar, ring):
        bitmap = shifts.optdigits_bitmap(digit)
        assert bitmap.shape == (8, 8) and bitmap.min() == 0 and 0 < bitmap.max() <= 1
        np.testing.assert_array_equal(bitmap * 16, np.round(bitmap * 16))  # counts of 16 pixels
        assert (bitmap > 0).any(axis=1).all()  # the height is normalised: ink in every row
    assert shifts.optdigits_bitmap(framed(RING, 0.2)[..., 0]).max() == 1  # a block inside a broad pen is all ink
    columns = lambda b: int((b > 0).any(axis=0).sum())  # noqa: E731
    assert columns(shifts.optdigits_bitmap(bar)) <= 3 < 6 <= columns(shifts.optdigits_bitmap(ring))
    np.testing.assert_array_equal(shifts.optdigits_bitmap(np.zeros((28, 28), np.float32)), np.zeros((8, 8)))
    datasets = pytest.importorskip("sklearn.datasets")
    scans = datasets.load_digits().images / 16
    assert (scans > 0).any(axis=2).all()  # theirs fill all 8 rows too


def test_the_coarse_scan_set_loses_detail_like_the_other_writers_scans(digits):
    labels = np.arange(len(digits)) % 10
    built = shifts.build_set(shifts.get("scan-8x8"), len(digits), 0, (digits, labels))
    scanned, read = built.images, ~built.refused
    finest = shifts.build_set(shifts.get("lowres-16"), len(digits), 0, (digits, labels)).images
    assert read.mean() > 0.8  # a faint hairline may be refused, as a user's would
    assert sharpness(scanned[read]) < sharpness(finest[read]) < sharpness(digits[read])
    moved = np.array([np.linalg.norm(centre_of_mass(a) - centre_of_mass(b)) for a, b in zip(scanned[read], digits[read])])
    assert moved.max() < 2.5  # read back and re-framed where MNIST puts a digit

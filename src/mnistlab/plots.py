"""Pictures of data and models, drawn with matplotlib's Agg backend (no display needed).

Every function here takes arrays (and an output path) and writes one PNG; none opens a run
folder or a model file (``mnistlab.report`` does that). Figures have a fixed size in inches and
constrained layout, so a PNG is exactly its figure size times ``DPI`` pixels.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnistlab import fileio  # noqa: E402
from mnistlab.errors import MnistlabError  # noqa: E402

MAX_GRID = 25  # the course shows at most 25 images, 5 x 5
GRID_COLUMNS = 5
DPI = 100  # pixels per inch of every PNG
IMAGE_TILE = (2.0, 2.4)  # inches per image in image_grid (width, height): room for a two-line title
MAP_TILE = 1.6  # inches per tile in filter, feature-map and weight-image grids
COLORBAR_WIDTH = 1.0  # inches added on the right of a tile grid for its one shared colour scale
TITLE_HEIGHT = 0.6  # inches added on top of a tile grid for its title
MIN_GRID_WIDTH = 4.0  # inches: a grid of one or two tiles still has room for its title
CONFUSION_SIZE = (7.0, 6.0)  # inches
CURVES_SIZE = (11.0, 4.0)  # inches: loss and accuracy side by side
HISTOGRAM_TILE = (4.0, 3.0)  # inches per layer histogram
HISTOGRAM_COLUMNS = 3
TILE_TITLE_POINTS = 11  # font size of a tile grid's title; long titles wrap
DIVERGING_CMAP = "seismic"  # the course's weight colours: positive red, zero white, negative blue
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")


def save_figure(fig: plt.Figure, out: str | os.PathLike, dpi: int = DPI) -> None:
    """Save ``fig`` as a PNG atomically (``figsize * dpi`` pixels) and free it."""
    with fileio.atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)


def image_grid(images: np.ndarray, titles: Sequence[str], out: str | os.PathLike,
               cmap: str = "binary", columns: int = GRID_COLUMNS, title: str | None = None) -> None:
    """Draw up to 25 images ``(N, 28, 28[, 1])`` in a grid, each with its title, as S1's
    ``plot_images_labels_prediction`` did (``binary`` colour map: ink black on white).

    The PNG is ``columns * 200`` by ``rows * 240`` pixels.
    """
    images = np.asarray(images)[:MAX_GRID]
    rows = max(1, math.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(IMAGE_TILE[0] * columns, IMAGE_TILE[1] * rows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, titles):
        ax.imshow(image.reshape(image.shape[0], -1) if image.ndim == 3 else image, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(text, fontsize=10)
    if title:
        fig.suptitle(title)
    save_figure(fig, out)


def prediction_titles(labels: Sequence[int], predictions: Sequence[int], class_names: Sequence[str],
                      confidences: Sequence[float] | None = None,
                      indices: Sequence[int] | None = None) -> list[str]:
    """Titles ``label=7 predict=7`` (S1's), split over two lines when the class names are long;
    with ``confidences`` and ``indices`` a line ``83% #1234`` (the predicted class's probability
    and the test index) is added."""
    titles = []
    for k, (y, p) in enumerate(zip(labels, predictions)):
        label, predict = f"label={class_names[int(y)]}", f"predict={class_names[int(p)]}"
        text = f"{label} {predict}" if len(label) + len(predict) < 20 else f"{label}\n{predict}"
        if confidences is not None:
            text += f"\n{confidences[k]:.0%}" + (f" #{indices[k]}" if indices is not None else "")
        titles.append(text)
    return titles


def confusion_heatmap(matrix: np.ndarray, class_names: Sequence[str], out: str | os.PathLike,
                      title: str | None = None) -> None:
    """Heat map of a confusion matrix ``(C, C)`` (rows: true class, columns: predicted), each
    cell labelled with its count. 700 x 600 pixels."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    assert matrix.shape == (n, n), (matrix.shape, n)
    fig, ax = plt.subplots(figsize=CONFUSION_SIZE, layout="constrained")
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    fig.colorbar(im, ax=ax, label="images")
    long_names = max(map(len, class_names)) > 2  # Fashion-MNIST's names: slant them
    ax.set_xticks(range(n), class_names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    dark = matrix.max() / 2  # white text on cells darker than half the scale
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > dark else "black")
    total = int(matrix.sum())
    accuracy = np.trace(matrix) / total if total else float("nan")
    ax.set_title(title or f"Confusion matrix: {total} images, accuracy {accuracy:.2%}")
    save_figure(fig, out)


def _column(rows: Sequence[Mapping[str, object]], name: str) -> np.ndarray:
    """One history column as floats; a missing or empty cell (no validation split) is NaN."""
    return np.array([float(r.get(name) or "nan") for r in rows], dtype=np.float64)


def training_curves(history_rows: Sequence[Mapping[str, object]], out: str | os.PathLike,
                    title: str | None = None) -> None:
    """Loss and accuracy per epoch, train vs validation, from ``history.csv`` rows (dicts keyed
    by ``HISTORY_COLUMNS``; values may be strings). 1100 x 400 pixels."""
    if not history_rows:
        raise MnistlabError("history has no epochs; expected at least one row to plot")
    epochs = _column(history_rows, "epoch")
    fig, axes = plt.subplots(1, 2, figsize=CURVES_SIZE, layout="constrained")
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "o-"), ("val", "s--")):
            values = _column(history_rows, f"{split}_{metric}")
            if not np.isnan(values).all():
                ax.plot(epochs, values, style, label="train" if split == "train" else "validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    save_figure(fig, out)


def _wrap(text: str, width_inches: float, points: float) -> str:
    """Break ``text`` into lines that fit ``width_inches`` at font size ``points``."""
    average_char_inches = 0.6 * points / 72  # DejaVu Sans averages about 0.6 em per character
    return textwrap.fill(text, width=max(12, int(width_inches / average_char_inches)))


def symmetric_limit(values: np.ndarray) -> float:
    """The largest magnitude in ``values`` (1.0 if all are zero), for a colour scale centred on 0."""
    limit = float(np.max(np.abs(values))) if np.size(values) else 0.0
    return limit if limit > 0 else 1.0


def tile_grid(tiles: np.ndarray, titles: Sequence[str], out: str | os.PathLike, *, cmap: str,
              vmin: float, vmax: float, title: str, colorbar_label: str = "",
              columns: int | None = None) -> None:
    """Draw ``tiles`` ``(N, H, W)`` in a grid, all on one colour scale ``[vmin, vmax]`` with one
    colour bar. ``columns`` defaults to ceil(sqrt(N)); each tile is 160 x 160 pixels, plus 100
    pixels for the colour bar and 60 for the title."""
    tiles = np.asarray(tiles)
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    figsize = (max(columns * MAP_TILE + COLORBAR_WIDTH, MIN_GRID_WIDTH), rows * MAP_TILE + TITLE_HEIGHT)
    fig, axes = plt.subplots(rows, columns, figsize=figsize, squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile, text in zip(axes.flat, tiles, titles):
        im = ax.imshow(tile, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(text, fontsize=9)
        ax.axis("on")  # a thin frame, so an all-white tile (a dead channel) still shows as a tile
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("0.75")
    fig.colorbar(im, ax=axes.ravel().tolist(), label=colorbar_label, shrink=0.9)
    fig.suptitle(_wrap(title, figsize[0], TILE_TITLE_POINTS), fontsize=TILE_TITLE_POINTS)
    save_figure(fig, out)


def filter_grid(weights: np.ndarray, out: str | os.PathLike, channel: int = 0, title: str | None = None) -> None:
    """A Conv2D kernel ``(kh, kw, in_channels, filters)``: one tile per filter, its weights on
    input channel ``channel``, with one symmetric ``seismic`` scale (red > 0, blue < 0)."""
    weights = np.asarray(weights)
    assert weights.ndim == 4, weights.shape
    kh, kw, in_channels, filters = weights.shape
    if not 0 <= channel < in_channels:
        raise MnistlabError(f"--channel {channel}: expected 0..{in_channels - 1} "
                            f"(this layer has {in_channels} input channel{'s' * (in_channels > 1)})")
    tiles = np.moveaxis(weights[:, :, channel, :], -1, 0)
    limit = symmetric_limit(tiles)
    tile_grid(tiles, [f"filter {k}" for k in range(filters)], out, cmap=DIVERGING_CMAP,
              vmin=-limit, vmax=limit, colorbar_label="weight",
              title=title or f"{filters} filters {kh}x{kw}, input channel {channel}")


def feature_map_grid(activations: np.ndarray, out: str | os.PathLike, title: str | None = None) -> None:
    """A layer's output for one image ``(H, W, C)``: one tile per channel, all on one scale
    (``binary``: strong activation dark, as S4 shows them)."""
    activations = np.asarray(activations)
    assert activations.ndim == 3, activations.shape
    height, width, channels = activations.shape
    tiles = np.moveaxis(activations, -1, 0)
    low, high = min(float(tiles.min()), 0.0), float(tiles.max())
    tile_grid(tiles, [f"channel {c}" for c in range(channels)], out, cmap="binary",
              vmin=low, vmax=high if high > low else low + 1.0, colorbar_label="activation",
              title=title or f"{channels} feature maps {height}x{width}")


def softmax_weight_images(kernel: np.ndarray, out: str | os.PathLike,
                          class_names: Sequence[str] | None = None, title: str | None = None) -> None:
    """Softmax regression's kernel ``(784, 10)`` as ten 28x28 images, one per class: red pixels
    raise that class's score, blue ones lower it (one symmetric ``seismic`` scale)."""
    kernel = np.asarray(kernel)
    side = math.isqrt(kernel.shape[0])
    assert kernel.ndim == 2 and side * side == kernel.shape[0], kernel.shape
    tiles = kernel.T.reshape(kernel.shape[1], side, side)
    names = class_names or [str(k) for k in range(len(tiles))]
    limit = symmetric_limit(tiles)
    tile_grid(tiles, list(names), out, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit,
              colorbar_label="weight", columns=GRID_COLUMNS,
              title=title or "Softmax weights: what each class looks for")


def weight_histograms(named_weights: Sequence[tuple[str, np.ndarray]], out: str | os.PathLike,
                      bins: int = 50, title: str | None = None) -> None:
    """One histogram per ``(name, array)`` (e.g. each layer's kernel), three per row,
    each titled with its shape, mean and standard deviation. 400 x 300 pixels per histogram."""
    if not named_weights:
        raise MnistlabError("the model has no weights to plot")
    columns = min(HISTOGRAM_COLUMNS, len(named_weights))
    rows = math.ceil(len(named_weights) / columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained",
                             figsize=(HISTOGRAM_TILE[0] * columns, HISTOGRAM_TILE[1] * rows))
    for ax in axes.flat[len(named_weights):]:
        ax.axis("off")
    for ax, (name, values) in zip(axes.flat, named_weights):
        values = np.asarray(values)
        ax.hist(values.ravel(), bins=bins, color="tab:blue")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{name}\nshape {values.shape}, mean {values.mean():.3g}, std {values.std():.3g}",
                     fontsize=9)
        ax.set_xlabel("weight")
        ax.set_ylabel("count")
    fig.suptitle(title or "Weight histograms")
    save_figure(fig, out)

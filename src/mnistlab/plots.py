"""Pictures of data and models as matplotlib Figures, built with the object-oriented API.

Every function takes arrays and returns a ``matplotlib.figure.Figure``; none opens a run folder
or a model file (``mnistlab.report`` does that), none touches pyplot or the backend, so a
notebook's own backend keeps working. ``save_figure(fig, path)`` writes a PNG (Agg canvas,
atomic); ``png_bytes(fig)`` renders one in memory. In Jupyter a returned figure shows inline
(it has ``_repr_png_``), whether or not pyplot was ever imported. Figures have a fixed size in
inches and constrained layout, so a PNG is exactly its figure size times ``DPI`` pixels.

matplotlib is imported on first use, not at import: the CLI reads ``report.PLOT_KINDS`` to build
its parser for every command and should not pay half a second for it.
"""

from __future__ import annotations

import functools
import io
import math
import os
import textwrap
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mnistlab import fileio
from mnistlab.calibrate import ECE_BINS, calibration_bins, expected_calibration_error
from mnistlab.errors import MnistlabError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_GRID = 25  # the course shows at most 25 images, 5 x 5
GRID_COLUMNS = 5
DPI = 100  # pixels per inch of every PNG
IMAGE_TILE = (2.0, 2.4)  # inches per image in image_grid (width, height): room for a two-line title
MAP_TILE = 1.6  # inches per tile in filter, feature-map and weight-image grids
MAX_TILE_COLUMNS = 6  # 6 tiles + colour bar = 1060 px: fits the report's 1150 px column unshrunk
MAX_TILES = 64  # tiles per filter / feature-map grid; a 128-filter layer shows its first 64
COLORBAR_WIDTH = 1.0  # inches added on the right of a tile grid for its one shared colour scale
TITLE_HEIGHT = 0.6  # inches added on top of a tile grid for its title
MIN_GRID_WIDTH = 4.0  # inches: a grid of one or two tiles still has room for its title
CONFUSION_SIZE = (7.0, 6.0)  # inches
RELIABILITY_SIZE = (7.0, 6.0)  # inches: accuracy per bin above, image count per bin below
CURVES_SIZE = (11.0, 4.0)  # inches: loss and accuracy side by side
HISTOGRAM_TILE = (4.0, 3.0)  # inches per layer histogram
HISTOGRAM_COLUMNS = 3
TILE_TITLE_POINTS = 11  # font size of a tile grid's title; long titles wrap
SUPTITLE_POINTS = 12  # font size of an image grid's title
LINE_SPACING = 1.2  # line height in em, as matplotlib spaces a multi-line text
HEADING_PAD = 0.08  # inches above and below a grid's title
TILE_PAD = 0.1  # inches around each tile in its cell, and between a tile and its title
COLORBAR_BAR = 0.18  # inches: the bar itself; its ticks and label take the rest of COLORBAR_WIDTH
COLORBAR_MAX_HEIGHT = 4.0  # inches: a tall grid's colour bar stays the size of a short one's
DIVERGING_CMAP = "seismic"  # the course's weight colours: positive red, zero white, negative blue
LOSS_LABEL = "cross-entropy (nats)"  # history.csv's train_loss and val_loss: both plain, no label smoothing


# ---------------------------------------------------------------------- figures and PNGs
@functools.cache
def _figure_class() -> type:
    """``matplotlib.figure.Figure`` plus ``_repr_png_``, so Jupyter shows it inline without pyplot."""
    from matplotlib.figure import Figure

    class PlotFigure(Figure):
        """A Figure that IPython displays as its PNG (exactly what ``save_figure`` writes)."""

        def _repr_png_(self) -> bytes:
            return png_bytes(self)

    return PlotFigure


def new_figure(figsize: tuple[float, float], layout: str | None = "constrained") -> Figure:
    """An empty Figure of ``figsize`` inches at ``DPI``, in no pyplot registry (constrained
    layout unless ``layout=None``: the grids place their tiles themselves)."""
    return _figure_class()(figsize=figsize, dpi=DPI, layout=layout)


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """Render ``fig`` with the Agg canvas as PNG bytes (``figsize * dpi`` pixels); the figure's
    own canvas (a notebook's, say) is put back afterwards."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    own = fig.canvas
    buffer = io.BytesIO()
    try:
        FigureCanvasAgg(fig).print_figure(buffer, format="png", dpi=dpi, metadata={"Software": None})
    finally:
        fig.set_canvas(own)
    return buffer.getvalue()


def save_figure(fig: Figure, out: str | os.PathLike, dpi: int = DPI) -> None:
    """Save ``fig`` as a PNG, atomically (``figsize * dpi`` pixels)."""
    fileio.write_bytes(out, png_bytes(fig, dpi))


# ---------------------------------------------------------------------- images
def image_grid(images: np.ndarray, titles: Sequence[str], cmap: str = "binary", columns: int = GRID_COLUMNS,
               title: str | None = None) -> Figure:
    """Up to 25 images ``(N, 28, 28[, 1])`` in a grid, each with its title, as S1's
    ``plot_images_labels_prediction`` did (``binary`` colour map: ink black on white).

    The figure is ``columns * 200`` by ``rows * 240`` pixels.
    """
    images = np.asarray(images)[:MAX_GRID]
    images = images.reshape(images.shape[:3]) if images.ndim == 4 else images
    rows = max(1, math.ceil(len(images) / columns))
    width, height = IMAGE_TILE[0] * columns, IMAGE_TILE[1] * rows
    fig = new_figure((width, height), layout=None)
    heading = _heading(fig, title, width, points=SUPTITLE_POINTS) if title else 0.0
    cell = (IMAGE_TILE[0], (height - heading) / rows)
    _draw_tiles(fig, (0.0, 0.0, width, height - heading), images, titles, columns, cell, points=10,
                cmap=cmap, vmin=0.0, vmax=1.0, frame=False)
    return fig


# ---------------------------------------------------------------------- tiles, placed by hand
# A grid of images is one invisible Axes whose data units are inches, holding one AxesImage per
# tile: dozens of tiles cost one Axes, not dozens (constrained layout over 66 Axes took seconds
# per grid), and the layout is exact, so every render of a figure gives the same pixels.
def _heading(fig: Figure, title: str, width: float, points: float) -> float:
    """Write ``title`` across the top of ``fig`` (wrapped to ``width`` inches); its height in inches."""
    text = _wrap(title, width, points)
    fig.text(0.5, 1 - HEADING_PAD / fig.get_size_inches()[1], text, ha="center", va="top", fontsize=points)
    return _text_height(text, points) + 2 * HEADING_PAD


def _text_height(text: str, points: float) -> float:
    """Inches taken by ``text``'s lines at ``points`` (matplotlib spaces lines 1.2 em apart)."""
    return (text.count("\n") + 1) * points * LINE_SPACING / 72


def _draw_tiles(fig: Figure, box: tuple[float, float, float, float], tiles: np.ndarray, titles: Sequence[str],
                columns: int, cell: tuple[float, float], *, points: float, cmap: str, vmin: float, vmax: float,
                frame: bool) -> Any:
    """Draw ``tiles`` ``(N, H, W)`` row by row in cells of ``cell`` inches inside ``box`` (left,
    bottom, width, height in inches), each titled above and scaled to fit its cell, all with
    one colour scale; returns the last image (for a colour bar)."""
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    fig_width, fig_height = fig.get_size_inches()
    left, bottom, width, height = box
    ax = fig.add_axes((left / fig_width, bottom / fig_height, width / fig_width, height / fig_height))
    ax.axis("off")
    title_space = max((_text_height(t, points) for t in titles[:len(tiles)]), default=0.0) + TILE_PAD
    side = max(min(cell[0] - 2 * TILE_PAD, cell[1] - title_space - TILE_PAD), 0.1)  # the tile's box, inches
    norm, image = Normalize(vmin, vmax), None
    for k, (tile, text) in enumerate(zip(tiles, titles)):
        row, column = divmod(k, columns)
        scale = side / max(tile.shape[:2])
        tile_width, tile_height = tile.shape[1] * scale, tile.shape[0] * scale
        x = column * cell[0] + (cell[0] - tile_width) / 2
        y = row * cell[1] + title_space  # top edge; y grows downwards, as in the tiles themselves
        image = ax.imshow(tile, cmap=cmap, norm=norm, interpolation="nearest", aspect="auto",
                          extent=(x, x + tile_width, y + tile_height, y))
        ax.text(x + tile_width / 2, y - TILE_PAD / 2, text, ha="center", va="bottom", fontsize=points)
        if frame:  # so an all-white tile (a dead channel) still shows as a tile
            ax.add_patch(Rectangle((x, y), tile_width, tile_height, fill=False, edgecolor="0.75", linewidth=0.8))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    return image


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


# ---------------------------------------------------------------------- results
def confusion_heatmap(matrix: np.ndarray, class_names: Sequence[str], title: str | None = None) -> Figure:
    """Heat map of a confusion matrix ``(C, C)`` (rows: true class, columns: predicted), each
    cell labelled with its count. 700 x 600 pixels."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise MnistlabError(f"confusion matrix of shape {matrix.shape}: expected ({n}, {n}) for {n} class names")
    fig = new_figure(CONFUSION_SIZE)
    ax = fig.subplots()
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
    return fig


def _column(rows: Sequence[Mapping[str, object]], name: str) -> np.ndarray:
    """One history column as floats; a missing or empty cell (no validation split) is NaN."""
    return np.array([np.nan if r.get(name) in (None, "") else float(r[name]) for r in rows], dtype=np.float64)


def training_curves(history_rows: Sequence[Mapping[str, object]], title: str | None = None) -> Figure:
    """Loss and accuracy per epoch, train vs validation, from ``history.csv`` rows (dicts keyed
    by ``runs.HISTORY_FIELDS``; values may be strings). Both losses are plain cross-entropy
    (training's label smoothing is not in them), so the curves compare. 1100 x 400 pixels."""
    from matplotlib.ticker import PercentFormatter

    if not history_rows:
        raise MnistlabError("history has no epochs; expected at least one row to plot")
    epochs = _column(history_rows, "epoch")
    fig = new_figure(CURVES_SIZE)
    axes = fig.subplots(1, 2)
    for ax, metric, label, heading in ((axes[0], "loss", LOSS_LABEL, "Loss: plain cross-entropy on both splits"),
                                       (axes[1], "accuracy", "accuracy", "Accuracy")):
        for split, style in (("train", "o-"), ("val", "s--")):
            values = _column(history_rows, f"{split}_{metric}")
            if not np.isnan(values).all():
                ax.plot(epochs, values, style, label="train" if split == "train" else "validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(heading)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].yaxis.set_major_formatter(PercentFormatter(xmax=1))
    if title:
        fig.suptitle(title)
    return fig


def reliability_diagram(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS,
                        title: str | None = None) -> Figure:
    """Calibration of ``probabilities`` ``(N, C)`` against ``labels`` ``(N,)``: accuracy per
    confidence bin as bars beside the diagonal of perfect calibration, the gap to each bin's
    mean confidence hatched, and below it the images per bin (log scale). The title (``title``
    or "Reliability") ends with the ECE, the bins and the images. 700 x 600 pixels."""
    from matplotlib.ticker import FuncFormatter

    counts, accuracy, confidence = calibration_bins(probabilities, labels, bins)
    ece = expected_calibration_error(probabilities, labels, bins)
    width = 1.0 / bins
    centres = (np.arange(bins) + 0.5) * width
    full = counts > 0
    fig = new_figure(RELIABILITY_SIZE)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.bar(centres[full], accuracy[full], width=width, color="tab:blue", edgecolor="white", label="accuracy")
    top.bar(centres[full], (confidence - accuracy)[full], bottom=accuracy[full], width=width, fill=False,
            edgecolor="tab:red", hatch="///", label="gap to the mean confidence")  # unfilled: the bar shows through
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in the bin")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar(centres[full], counts[full], width=width, color="0.5", edgecolor="white")
    for x, n in zip(centres[full], counts[full]):
        bottom.text(x, n, f"{n:,}", ha="center", va="bottom", fontsize=7)
    bottom.set_yscale("log")
    bottom.set_ylim(0.5, counts.max() * 4)  # room above the tallest bar for its count
    bottom.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else ""))
    bottom.set_ylabel("images")
    bottom.set_xlabel("confidence (probability of the predicted class)")
    top.set_title(f"{title or 'Reliability'}: ECE {ece:.2%} ({bins} bins, {int(counts.sum()):,} images)")
    return fig


# ---------------------------------------------------------------------- model insides
def _wrap(text: str, width_inches: float, points: float) -> str:
    """Break ``text`` into lines that fit ``width_inches`` at font size ``points``."""
    average_char_inches = 0.6 * points / 72  # DejaVu Sans averages about 0.6 em per character
    return textwrap.fill(text, width=max(12, int(width_inches / average_char_inches)))


def symmetric_limit(values: np.ndarray) -> float:
    """The largest magnitude in ``values`` (1.0 if all are zero), for a colour scale centred on 0."""
    limit = float(np.max(np.abs(values))) if np.size(values) else 0.0
    return limit if limit > 0 else 1.0


def tile_grid(tiles: np.ndarray, titles: Sequence[str], *, cmap: str, vmin: float, vmax: float, title: str,
              colorbar_label: str = "", columns: int | None = None) -> Figure:
    """``tiles`` ``(N, H, W)`` in a grid, all on one colour scale ``[vmin, vmax]`` with one
    colour bar. ``columns`` defaults to ceil(sqrt(N)), at most ``MAX_TILE_COLUMNS`` (so 64
    tiles are 11 rows of 6, not shrunk tiles); each tile is 160 x 160 pixels, plus 100 pixels
    for the colour bar and 60 for the title (more if it wraps over three lines or more)."""
    tiles = np.asarray(tiles)
    if not len(tiles):
        raise MnistlabError("no tiles to draw; expected at least one")
    columns = columns or min(math.ceil(math.sqrt(len(tiles))), MAX_TILE_COLUMNS)
    rows = math.ceil(len(tiles) / columns)
    width = max(columns * MAP_TILE + COLORBAR_WIDTH, MIN_GRID_WIDTH)
    text = _wrap(title, width, TILE_TITLE_POINTS)
    heading = max(TITLE_HEIGHT, _text_height(text, TILE_TITLE_POINTS) + 2 * HEADING_PAD)
    fig = new_figure((width, rows * MAP_TILE + heading), layout=None)
    fig.text(0.5, 1 - HEADING_PAD / (rows * MAP_TILE + heading), text, ha="center", va="top",
             fontsize=TILE_TITLE_POINTS)
    left = (width - columns * MAP_TILE - COLORBAR_WIDTH) / 2  # centred when MIN_GRID_WIDTH widened it
    image = _draw_tiles(fig, (left, 0.0, columns * MAP_TILE, rows * MAP_TILE), tiles, titles, columns,
                        (MAP_TILE, MAP_TILE), points=9, cmap=cmap, vmin=vmin, vmax=vmax, frame=True)
    bar_height = min(rows * MAP_TILE - 2 * TILE_PAD, COLORBAR_MAX_HEIGHT)
    bar_bottom = rows * MAP_TILE - TILE_PAD - bar_height  # level with the first row of tiles
    cax = fig.add_axes(((left + columns * MAP_TILE + TILE_PAD) / width, bar_bottom / fig.get_size_inches()[1],
                        COLORBAR_BAR / width, bar_height / fig.get_size_inches()[1]))
    fig.colorbar(image, cax=cax, label=colorbar_label)
    cax.tick_params(labelsize=8)
    return fig


def _first(total: int, max_tiles: int | None, what: str) -> tuple[int, str]:
    """How many of ``total`` tiles to draw, and the title's note when not all of them."""
    shown = total if max_tiles is None else max(1, min(total, max_tiles))
    return shown, "" if shown == total else f" (showing the first {shown} of {total} {what})"


def filter_grid(weights: np.ndarray, channel: int = 0, title: str | None = None,
                max_tiles: int | None = MAX_TILES) -> Figure:
    """A Conv2D kernel ``(kh, kw, in_channels, filters)``: one tile per filter (the first
    ``max_tiles``; None: all), its weights on input channel ``channel``, with one symmetric
    ``seismic`` scale (red > 0, blue < 0)."""
    weights = np.asarray(weights)
    if weights.ndim != 4:
        raise MnistlabError(f"kernel of shape {weights.shape}: expected (height, width, in_channels, filters)")
    kh, kw, in_channels, filters = weights.shape
    if not 0 <= channel < in_channels:
        raise MnistlabError(f"--channel {channel}: expected 0..{in_channels - 1} "
                            f"(this layer has {in_channels} input channel{'s' * (in_channels > 1)})")
    shown, note = _first(filters, max_tiles, "filters")
    tiles = np.moveaxis(weights[:, :, channel, :shown], -1, 0)
    limit = symmetric_limit(tiles)
    return tile_grid(tiles, [f"filter {k}" for k in range(shown)], cmap=DIVERGING_CMAP,
                     vmin=-limit, vmax=limit, colorbar_label="weight",
                     title=(title or f"{filters} filters {kh}x{kw}, input channel {channel}") + note)


def feature_map_grid(activations: np.ndarray, title: str | None = None, max_tiles: int | None = MAX_TILES) -> Figure:
    """A layer's output for one image ``(H, W, C)``: one tile per channel (the first
    ``max_tiles``; None: all), all on one scale (``binary``: strong activation dark, as S4
    shows them)."""
    activations = np.asarray(activations)
    if activations.ndim != 3:
        raise MnistlabError(f"activations of shape {activations.shape}: expected (height, width, channels)")
    height, width, channels = activations.shape
    shown, note = _first(channels, max_tiles, "channels")
    tiles = np.moveaxis(activations[:, :, :shown], -1, 0)
    low, high = min(float(tiles.min()), 0.0), float(tiles.max())
    return tile_grid(tiles, [f"channel {c}" for c in range(shown)], cmap="binary",
                     vmin=low, vmax=high if high > low else low + 1.0, colorbar_label="activation",
                     title=(title or f"{channels} feature maps {height}x{width}") + note)


def softmax_weight_images(kernel: np.ndarray, class_names: Sequence[str] | None = None,
                          title: str | None = None) -> Figure:
    """Softmax regression's kernel ``(784, 10)`` as ten 28x28 images, one per class: red pixels
    raise that class's score, blue ones lower it (one symmetric ``seismic`` scale)."""
    kernel = np.asarray(kernel)
    side = math.isqrt(kernel.shape[0]) if kernel.ndim == 2 else 0
    if side * side != kernel.shape[0] or side == 0:
        raise MnistlabError(f"kernel of shape {kernel.shape}: expected (pixels, classes) with square pictures")
    tiles = kernel.T.reshape(kernel.shape[1], side, side)
    names = class_names or [str(k) for k in range(len(tiles))]
    limit = symmetric_limit(tiles)
    return tile_grid(tiles, list(names), cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit,
                     colorbar_label="weight", columns=GRID_COLUMNS,
                     title=title or "Softmax weights: what each class looks for")


def weight_histograms(named_weights: Sequence[tuple[str, np.ndarray]], bins: int = 50,
                      title: str | None = None) -> Figure:
    """One histogram per ``(name, array)`` (e.g. each layer's kernel), three per row,
    each titled with its shape, mean and standard deviation. 400 x 300 pixels per histogram."""
    if not named_weights:
        raise MnistlabError("the model has no weights to plot")
    columns = min(HISTOGRAM_COLUMNS, len(named_weights))
    rows = math.ceil(len(named_weights) / columns)
    fig = new_figure((HISTOGRAM_TILE[0] * columns, HISTOGRAM_TILE[1] * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
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
    return fig

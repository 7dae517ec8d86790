"""Pictures of data and models, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnistlab import fileio  # noqa: E402

MAX_GRID = 25  # the course shows at most 25 images, 5 x 5


def save_figure(fig: plt.Figure, out: str | os.PathLike, dpi: int = 100) -> None:
    """Save ``fig`` as a PNG atomically and free it."""
    with fileio.atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def image_grid(images: np.ndarray, titles: Sequence[str], out: str | os.PathLike,
               cmap: str = "binary", columns: int = 5) -> None:
    """Draw up to 25 images ``(N, 28, 28[, 1])`` in a grid, each with its title, as S1's
    ``plot_images_labels_prediction`` did (``binary`` colour map: ink black on white)."""
    images = np.asarray(images)[:MAX_GRID]
    rows = max(1, math.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.axis("on")
        ax.imshow(image.reshape(image.shape[0], -1) if image.ndim == 3 else image, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
    save_figure(fig, out)

"""Drawing helpers shared by the figures: a grid of panels, a K x K window map, a feature map, saving a PNG.

Matplotlib runs headless (Agg). A window map puts the relative position (dx, dy) on its axes, the centre at 0,
as the paper's Fig. 4 and Fig. 5 draw it; positions outside the image are blank (NaN, drawn grey).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import torch

from lrrobust.io import atomic_path

PANEL_INCHES = 1.9
MIN_WIDTH_INCHES = 4.5


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid(rows: int, cols: int, title: str) -> tuple[Any, Any]:
    """A figure of rows x cols panels (a 2-D array of axes, every one blank until drawn on) and its title."""
    plt = pyplot()
    width = max(cols * PANEL_INCHES + 0.6, MIN_WIDTH_INCHES)
    lines = [part for line in title.splitlines() for part in textwrap.wrap(line, int(width * 11))]
    fig, axes = plt.subplots(rows, cols, figsize=(width, rows * PANEL_INCHES + 0.3 + 0.2 * len(lines)),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("\n".join(lines), fontsize=9)
    return fig, axes


def square_grid(count: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid holding ``count`` panels."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def window_map(fig: Any, ax: Any, values: torch.Tensor, title: str, label: str, cmap: str = "viridis",
               vmin: float | None = None, vmax: float | None = None, bar: bool = True) -> Any:
    """A K x K map over the window's relative positions (dy down, dx right), with its colour bar unless ``bar``
    is False (panels on one scale share one: ``colour_bar``)."""
    k = values.shape[-1]
    r = (k - 1) // 2
    colours = pyplot().get_cmap(cmap).with_extremes(bad="0.85")
    ax.set_axis_on()
    image = ax.imshow(values.detach().double().cpu().numpy(), cmap=colours, vmin=vmin, vmax=vmax,
                      extent=(-r - 0.5, r + 0.5, r + 0.5, -r - 0.5), interpolation="nearest")
    ticks = sorted({-r, 0, r})
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("dx", fontsize=7, labelpad=1)
    ax.set_ylabel("dy", fontsize=7, labelpad=1)
    ax.tick_params(labelsize=6, length=2)
    ax.set_title(title, fontsize=7)
    if bar:
        colour_bar(fig, ax, image, label)
    return image


def feature_map(fig: Any, ax: Any, values: torch.Tensor, title: str, label: str, cmap: str = "viridis",
                vmin: float | None = None, vmax: float | None = None) -> Any:
    """An H x W map (a feature map or an image, one channel or RGB in [0, 1]) in pixel coordinates."""
    ax.set_axis_on()
    array = values.detach().double().cpu().numpy()
    rgb = array.ndim == 3
    image = ax.imshow(array.transpose(1, 2, 0) if rgb else array, cmap=None if rgb else cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    ax.set_xlabel("x", fontsize=7, labelpad=1)
    ax.set_ylabel("y", fontsize=7, labelpad=1)
    ax.tick_params(labelsize=6, length=2)
    ax.set_title(title, fontsize=7)
    if not rgb:
        colour_bar(fig, ax, image, label)
    return image


def colour_bar(fig: Any, ax: Any, image: Any, label: str) -> None:
    """A colour bar for ``image`` beside ``ax`` (one panel, or a list of panels sharing it)."""
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, shrink=1.0 if not isinstance(ax, list) else 0.6)
    bar.ax.tick_params(labelsize=6, length=2)
    bar.set_label(label, fontsize=6)


def panels(fig: Any) -> int:
    """The panels of a figure that show data (colour bars and blank cells are not panels)."""
    return sum(1 for ax in fig.axes if ax.images)


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    pyplot().close(fig)
    return path

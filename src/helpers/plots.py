"""One plotting style for the whole book: every figure titled, every axis labelled with
its unit.

The style is set in matplotlib's global settings when the first figure is
made, so that plots a notebook draws by hand look the same.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

STYLE = {
    "figure.figsize": (7, 4),
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titleweight": "bold",
    "legend.frameon": False,
}


def figure(
    title: str, xlabel: str, ylabel: str, *, logx: bool = False, logy: bool = False
) -> Axes:
    """A new figure in the book's style, with its title and axis labels set.

    Put the unit in each label, e.g. ``"object size (MB)"``.
    """
    if not (title and xlabel and ylabel):
        raise ValueError("Every figure needs a title and both axis labels.")
    plt.rcParams.update(STYLE)
    _, ax = plt.subplots()
    ax.set(
        title=title,
        xlabel=xlabel,
        ylabel=ylabel,
        xscale="log" if logx else "linear",
        yscale="log" if logy else "linear",
    )
    return ax

"""Figures the package draws (``lep eval --plot``, ``lep vocab report --plot``): headless, saved atomically.

Each plot is built by a function that returns the matplotlib figure, so tests read what it shows (axes,
labels, bar heights) rather than only that a PNG exists; :func:`save_figure` writes and closes it.
"""

from __future__ import annotations

from pathlib import Path

from lep_plugin.common.fs import atomic_file


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display on servers or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, dpi: int = 110) -> None:
    """``fig`` as a PNG at ``out``, written atomically; the figure is closed."""
    plt = pyplot()
    try:
        with atomic_file(out) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)

"""Tables and plots of ``lep eval`` result records (one record per model, see ``evaluate_model``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lep_plugin.common.plots import pyplot, save_figure
from lep_plugin.evaluation.evaluate import METRICS

HEADERS = {
    "sentence_copy": "sent. copy",
    "paragraph_copy": "par. copy",
    "chars_per_token": "chars/tok",
    "tokens_per_word": "tok/word",
    "gen_chars_per_token": "gen chars/tok",
    "bits_per_char": "bits/char",
}


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per model; a column per (text, metric)."""
    labels = list(records[0]["texts"])
    header = ["model"] + [f"{label} {HEADERS[m]}" for label in labels for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in records:
        cells = [record["model"]] + [_fmt(record["texts"][label][m]) for label in labels for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_figure(records: list[dict[str, Any]]):
    """Grouped bars, one panel per metric, one bar series per model (one bar per text in each panel)."""
    plt = pyplot()
    labels = list(records[0]["texts"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.6), squeeze=False)
    width = 0.8 / len(records)
    for ax, metric in zip(axes[0], METRICS):
        for k, record in enumerate(records):
            values = [record["texts"][label][metric] for label in labels]
            xs = [i + (k - (len(records) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(xs, [0 if math.isnan(v) else v for v in values], width, label=record["model"])
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(HEADERS[metric], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def comparison_plot(records: list[dict[str, Any]], out: Path) -> None:
    save_figure(comparison_figure(records), out)


def model_names(paths: list[Path]) -> list[str]:
    """Directory names, or parent/name where names clash (checkpoint-100 of two runs)."""
    names = [p.name for p in paths]
    names = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]

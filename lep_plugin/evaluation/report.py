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
TITLES = {
    "sentence_copy": "sentence copy",
    "paragraph_copy": "paragraph copy",
    "chars_per_token": "characters per token",
    "tokens_per_word": "tokens per word",
    "gen_chars_per_token": "characters per generated token",
    "bits_per_char": "bits per character",
}
LOWER_IS_BETTER = frozenset({"tokens_per_word", "bits_per_char"})
CHANCE_ROW = "chance (another sample's text)"


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per model and a last row with the copy tasks' chance level; a column per (text, metric)."""
    labels = list(records[0]["texts"])
    header = ["model"] + [f"{label} {HEADERS[m]}" for label in labels for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in records:
        cells = [record["model"]] + [_fmt(record["texts"][label][m]) for label in labels for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    chance = [records[0]["texts"][label].get("chance", {}) for label in labels]
    cells = [CHANCE_ROW] + [_fmt(c[m]) if m in c else "" for c in chance for m in METRICS]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _value(record: dict[str, Any], label: str, metric: str) -> float:
    value = record["texts"][label][metric]
    return math.nan if value is None else float(value)


def shown_metrics(records: list[dict[str, Any]]) -> list[str]:
    """The metrics with something to show: not NaN or zero for every model and text."""
    labels = list(records[0]["texts"])
    return [m for m in METRICS if any(not math.isnan(v) and v != 0 for v in (_value(r, t, m) for r in records for t in labels))]


def comparison_figure(records: list[dict[str, Any]], columns: int = 3):
    """A grid of panels, one per metric with something to show, sized for a screen: in each, one bar
    series per model (one bar per text) with its value written on it, and which direction is better."""
    plt = pyplot()
    labels = list(records[0]["texts"])
    metrics = shown_metrics(records)
    columns = max(1, min(columns, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.3 * rows + 0.9), squeeze=False)
    width = 0.8 / len(records)
    for ax, metric in zip(axes.flat, metrics):
        for k, record in enumerate(records):
            values = [_value(record, label, metric) for label in labels]
            xs = [i + (k - (len(records) - 1) / 2) * width for i in range(len(labels))]
            bars = ax.bar(xs, [0 if math.isnan(v) else v for v in values], width, label=record["model"])
            ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=8, padding=1)
        ax.set_xticks(range(len(labels)), labels, fontsize=9)
        better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{TITLES[metric]} ({better})", fontsize=10)
        ax.margins(y=0.18)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.remove()
    hidden = [TITLES[m] for m in METRICS if m not in metrics]
    if hidden:
        fig.suptitle(f"not shown (0 or not measured for every model): {', '.join(hidden)}", fontsize=9)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(records), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.45 / (3.3 * rows + 0.9), 1, 0.95 if hidden else 1))  # room for the legend
    return fig


def comparison_plot(records: list[dict[str, Any]], out: Path) -> None:
    save_figure(comparison_figure(records), out)


def model_names(paths: list[Path]) -> list[str]:
    """Directory names, or parent/name where names clash (checkpoint-100 of two runs)."""
    names = [p.name for p in paths]
    names = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]

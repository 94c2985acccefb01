"""Tables and plots of ``lep eval`` result records (one record per model, see ``evaluate_model``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lep_plugin.common.plots import pyplot, save_figure
from lep_plugin.evaluation.evaluate import COPY_METRICS, METRICS

HEADERS = {
    "sentence_strict": "sent. strict",
    "sentence_exact": "sent. exact",
    "sentence_copy": "sent. Darumeru",
    "paragraph_strict": "par. strict",
    "paragraph_exact": "par. exact",
    "paragraph_copy": "par. Darumeru",
    "bits_per_char": "bits/char",
    "chars_per_token": "chars/tok",
    "tokens_per_word": "tok/word",
    "copied_chars_per_token": "copied chars/gen. tok",
}
TITLES = {
    "sentence_strict": "sentence copy, strict",
    "sentence_exact": "sentence copy, exact match",
    "sentence_copy": "sentence copy, Darumeru",
    "paragraph_strict": "paragraph copy, strict",
    "paragraph_exact": "paragraph copy, exact match",
    "paragraph_copy": "paragraph copy, Darumeru",
    "bits_per_char": "bits per character",
    "chars_per_token": "characters per token",
    "tokens_per_word": "tokens per word",
    "copied_chars_per_token": "copied chars per generated token",
}
LOWER_IS_BETTER = frozenset({"tokens_per_word", "bits_per_char"})
CHANCE_LABEL = "chance (another sample's text)"


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _chance(record: dict[str, Any], label: str, metric: str) -> float:
    """The model's own chance level of a copy metric on a text (nan where there is none)."""
    value = record["texts"][label].get("chance", {}).get(metric)
    return math.nan if value is None else float(value)


def _cell(record: dict[str, Any], label: str, metric: str) -> str:
    """The value, and for a copy metric the model's own chance level in parentheses."""
    cell = _fmt(record["texts"][label][metric])
    if metric in COPY_METRICS and metric in record["texts"][label].get("chance", {}):
        cell += f" ({_fmt(_chance(record, label, metric))})"
    return cell


def at_or_below_chance(records: list[dict[str, Any]], metric: str = "sentence_strict") -> list[str]:
    """``model on text (score ≤ chance)`` for each model and held-out text whose copy score (the strict one
    by default, the score to judge copying by) is not above its own chance level: such a model does not
    copy that text, and its number is no result to compare LEP by."""
    found = []
    for record in records:
        for label, values in record["texts"].items():
            score, chance = values.get(metric, math.nan), _chance(record, label, metric)
            if not math.isnan(chance) and not math.isnan(score) and score <= chance:
                found.append(f"{record['model']} on {label} ({_fmt(score)} ≤ chance {_fmt(chance)})")
    return found


def identical_groups(records: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of models whose every value (and chance level) reads the same to the table's three decimals,
    in groups of two or more: methods that gave one result must not look like separate evidence."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, record in enumerate(records):
        key = tuple(_cell(record, label, m) for label in record["texts"] for m in METRICS)
        groups.setdefault(key, []).append(i)
    return [group for group in groups.values() if len(group) > 1]


def display_names(records: list[dict[str, Any]]) -> list[str]:
    """Model names, a model identical to an earlier one marked "(identical to NAME)"."""
    names = [r["model"] for r in records]
    for first, *rest in identical_groups(records):
        for i in rest:
            names[i] += f" (identical to {records[first]['model']})"
    return names


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per model, a column per (text, metric); copy metrics show the model's own chance level in
    parentheses (answering with another sample's text; Darumeru's sentence level depends on the tokenizer).
    A model identical to an earlier one says so in its name cell, and a line under the table names them."""
    labels = list(records[0]["texts"])
    header = ["model"] + [
        f"{label} {HEADERS[m]}" + (" (chance)" if m in COPY_METRICS else "") for label in labels for m in METRICS
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record, name in zip(records, display_names(records)):
        cells = [name] + [_cell(record, label, m) for label in labels for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [" = ".join(records[i]["model"] for i in group) for group in identical_groups(records)]
    if notes:
        lines += ["", "Identical results (every metric to three decimals): " + "; ".join(notes) + "."]
    return "\n".join(lines)


def _value(record: dict[str, Any], label: str, metric: str) -> float:
    value = record["texts"][label][metric]
    return math.nan if value is None else float(value)


def shown_metrics(records: list[dict[str, Any]]) -> list[str]:
    """The metrics with something to show: not NaN or zero for every model and text — or, for a copy
    metric, with a chance level above zero (every model at 0 is then far *below* chance, worth seeing)."""
    labels = list(records[0]["texts"])

    def something(m: str) -> bool:
        values = [_value(r, t, m) for r in records for t in labels] + [
            _chance(r, t, m) for r in records for t in labels
        ]
        return any(not math.isnan(v) and v != 0 for v in values)

    return [m for m in METRICS if something(m)]


def _draw_chance(ax, xs: list[float], width: float, chances: list[float], labelled: bool) -> None:
    """A dashed black line across each bar at its model's chance level: a bar below it is visibly below."""
    points = [(x, c) for x, c in zip(xs, chances) if not math.isnan(c)]
    if points:
        ax.hlines(
            [c for _, c in points],
            [x - width / 2 for x, _ in points],
            [x + width / 2 for x, _ in points],
            colors="black",
            linestyles="--",
            linewidth=1.4,
            zorder=3,
            label=CHANCE_LABEL if labelled else "_nolegend_",
        )


def _panel(ax, records: list[dict[str, Any]], labels: list[str], metric: str) -> None:
    width = 0.8 / len(records)
    for k, (record, name) in enumerate(zip(records, display_names(records))):
        values = [_value(record, label, metric) for label in labels]
        xs = [i + (k - (len(records) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, [0 if math.isnan(v) else v for v in values], width, label=name)
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=8, padding=1)
        if metric in COPY_METRICS:
            _draw_chance(ax, xs, width, [_chance(record, label, metric) for label in labels], labelled=k == 0)
    ax.set_xticks(range(len(labels)), labels, fontsize=9)
    better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    ax.set_title(f"{TITLES[metric]}\n({better})", fontsize=10)  # one line is cut at the panel's width
    ax.margins(y=0.18)
    ax.grid(axis="y", alpha=0.3)


def comparison_figure(records: list[dict[str, Any]], max_columns: int = 4):
    """A grid of panels, one per metric with something to show, sized for a screen (about square, at most
    ``max_columns`` wide): in each, one bar series per model (one bar per text) with its value written on
    it, which direction is better and, on the copy panels, each model's chance level as a dashed line
    across its bar."""
    plt = pyplot()
    labels = list(records[0]["texts"])
    metrics = shown_metrics(records)
    columns = max(1, min(max_columns, math.ceil(math.sqrt(len(metrics)))))
    rows = max(1, math.ceil(len(metrics) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns + 0.4, 2.9 * rows + 0.9), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        _panel(ax, records, labels, metric)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.remove()
    hidden = [TITLES[m] for m in METRICS if m not in metrics]
    if hidden:
        fig.suptitle(f"not shown (0 or not measured for every model): {'; '.join(hidden)}", fontsize=9)
    legend: dict[str, Any] = {}
    for ax in fig.get_axes():  # every model once, and the chance line (last) if a copy panel drew one
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    if CHANCE_LABEL in legend:
        legend[CHANCE_LABEL] = legend.pop(CHANCE_LABEL)
    fig.legend(
        list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 4), fontsize=9, frameon=False
    )
    fig.tight_layout(rect=(0, 0.45 / (2.9 * rows + 0.9), 1, 0.95 if hidden else 1))  # room for the legend
    return fig


def comparison_plot(records: list[dict[str, Any]], out: Path) -> None:
    save_figure(comparison_figure(records), out)


def model_names(paths: list[Path]) -> list[str]:
    """Directory names, or parent/name where names clash (checkpoint-100 of two runs)."""
    names = [p.name for p in paths]
    names = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]

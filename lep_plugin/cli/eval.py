"""``lep eval MODEL [MODEL...] --text FILE...``: copy tasks, tokenization statistics and bits per character
of one or more models on the same held-out samples, as a Markdown table (and JSON, and a comparison plot)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import Field

from lep_plugin.cli.options import options_from_model
from lep_plugin.errors import LEPError
from lep_plugin.io.evaluate import METRICS, EvalSettings

HEADERS = {
    "sentence_copy": "sent. copy",
    "paragraph_copy": "par. copy",
    "chars_per_token": "chars/tok",
    "tokens_per_word": "tok/word",
    "gen_chars_per_token": "gen chars/tok",
    "bits_per_char": "bits/char",
}


class EvalOptions(EvalSettings):
    """Options of ``lep eval``: the evaluation settings plus where the text and the models are."""

    text: list[Path] = Field(..., description="Held-out text file(s), .jsonl (a text field) or .txt; repeat for several languages.")
    device: str | None = Field(None, description="Torch device (default: cuda if available, else cpu).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype of the loaded models.")


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


def _atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary file beside it, so a failure leaves no half-written file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise LEPError(f"directory of {path} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def comparison_plot(records: list[dict[str, Any]], out: Path) -> None:
    """Grouped bars, one panel per metric, one bar per model in each text's group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    _atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def model_names(paths: list[Path]) -> list[str]:
    """Directory names, or parent/name where names clash (checkpoint-100 of two runs)."""
    names = [p.name for p in paths]
    names = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


@click.command("eval", help=__doc__)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@options_from_model(EvalOptions)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the result records as JSON.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), default=None, help="Write a comparison bar plot (PNG).")
def eval_command(models: tuple[Path, ...], options: EvalOptions, json_out: Path | None, plot_out: Path | None) -> None:
    from lep_plugin.io.evaluate import evaluate_model, load_model, load_tasks

    models = tuple(Path(m) for m in models)
    # Check every input before the first (slow) model load, so a typo fails at once.
    for path in models:
        if not path.is_dir():
            raise LEPError(f"model dir {path} does not exist")
        if not (path / "config.json").is_file():
            raise LEPError(f"{path} is not a model dir (no config.json)")
    inputs = {p.resolve() for p in (*models, *options.text)}
    for out in (json_out, plot_out):
        if out is not None and (out.resolve() in inputs or out.is_dir()):
            raise LEPError(f"output {out} is an input or a directory; choose another file name")
        if out is not None and not out.parent.resolve().is_dir():
            raise LEPError(f"directory of output {out} does not exist")
    tasks = load_tasks(options.text, options)
    settings = EvalSettings(**{k: getattr(options, k) for k in EvalSettings.model_fields})
    records = []
    for path, name in zip(models, model_names(list(models))):
        model, tokenizer = load_model(path, options.device, options.dtype)
        click.echo(f"evaluating {name} ...", err=True)
        records.append(evaluate_model(model, tokenizer, tasks, settings, name=name))
        del model
    click.echo(markdown_table(records))
    if json_out is not None:
        payload = {"settings": settings.model_dump(), "texts": [str(p) for p in options.text], "results": records}
        _atomic_write(json_out, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"))
    if plot_out is not None:
        if len(records) < 2:
            click.echo("note: --plot compares models; with one model the plot has single bars", err=True)
        comparison_plot(records, plot_out)

"""``lep eval MODEL [MODEL...] --text FILE...``: copy tasks, tokenization statistics and bits per character
of one or more models on the same held-out samples, as a Markdown table (and JSON, and a comparison plot)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import click
from pydantic import Field

from lep_plugin.cli.options import options_from_model
from lep_plugin.common.devices import DEVICE_PATTERN
from lep_plugin.common.fs import check_no_overlap, check_output_file
from lep_plugin.evaluation.compare import compare_models, write_results
from lep_plugin.evaluation.evaluate import check_model_dir, load_tasks
from lep_plugin.evaluation.report import markdown_table, model_names
from lep_plugin.evaluation.settings import EvalSettings


class EvalOptions(EvalSettings):
    """Options of ``lep eval``: the evaluation settings plus where the text and the models are."""

    text: list[Path] = Field(
        ..., description="Held-out text file(s), .jsonl (a text field) or .txt; repeat for several languages."
    )
    device: str = Field(
        "auto",
        pattern=DEVICE_PATTERN,
        description="auto (the first GPU if there is one, else the CPU), cpu, cuda or cuda:N.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype of the loaded models."
    )


@click.command("eval", help=__doc__)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@options_from_model(EvalOptions)
@click.option(
    "--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the result records as JSON."
)
@click.option(
    "--plot", "plot_out", type=click.Path(path_type=Path), default=None, help="Write a comparison bar plot (PNG)."
)
def eval_command(models: tuple[Path, ...], options: EvalOptions, json_out: Path | None, plot_out: Path | None) -> None:

    models = tuple(Path(m) for m in models)
    # Check every input before the first (slow) model load, so a typo fails at once.
    for path in models:
        check_model_dir(path)
    inputs = [("model", p) for p in models] + [("text", p) for p in options.text]
    for out in (json_out, plot_out):
        if out is not None:
            check_output_file(out, force=True)
            check_no_overlap(out, inputs)
    tasks = load_tasks(options.text, options)
    settings = EvalSettings.of(options)
    if settings.paragraphs:
        click.echo(
            "note: paragraph copy is most of the time; --no-paragraphs skips it "
            "(sentence copy and bits/char still run)",
            err=True,
        )
    echo = functools.partial(click.echo, err=True)
    records = compare_models(
        list(zip(model_names(list(models)), models)), tasks, settings, options.device, options.dtype, echo
    )
    click.echo(markdown_table(records))
    if plot_out is not None and len(records) < 2:
        click.echo("note: --plot compares models; with one model the plot has single bars", err=True)
    write_results(records, settings, options.text, json_out, plot_out)

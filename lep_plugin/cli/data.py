"""``lep data``: training data helpers (calibration copy instructions)."""

from __future__ import annotations

from pathlib import Path

import click

from lep_plugin.calibration.copy_task import CopyTaskOptions, write_copy_task
from lep_plugin.cli.options import options_from_model
from lep_plugin.errors import LEPError


@click.group(help="Make training data: copy-instruction examples for the calibration LoRA.")
def data() -> None:
    pass


@data.command("copy-task")
@click.option(
    "--text",
    "text_files",
    multiple=True,
    metavar="FILE",
    help="Source text: .jsonl (one object per line) or .txt (one paragraph per line); repeatable, globs allowed.",
)
@click.option("--output", type=click.Path(path_type=Path), default=None, metavar="OUT.jsonl", help="Output file.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@options_from_model(CopyTaskOptions)
def copy_task(text_files: tuple[str, ...], output: Path | None, force: bool, options: CopyTaskOptions) -> None:
    """Copy-instruction examples in Axolotl chat format ({"messages": [...]}): the user asks, in the
    text's language, to repeat a sentence or paragraph exactly; the assistant answers with it verbatim."""
    if not text_files:
        raise LEPError("give at least one --text FILE")
    if output is None:
        raise LEPError("give --output OUT.jsonl")
    counts = write_copy_task(text_files, output, options, force=force)
    if options.samples is not None and counts["candidates"] < options.samples:
        click.echo(
            f"note: asked for {options.samples} examples but the input has only {counts['candidates']} "
            f"distinct {options.unit}s of {options.min_chars}-{options.max_chars} characters",
            err=True,
        )
    per_language = ", ".join(f"{k.removeprefix('texts_')}: {v}" for k, v in counts.items() if k.startswith("texts_"))
    click.echo(f"wrote {counts['examples']} copy examples ({per_language}) to {output}", err=True)

"""``lep demo``: the method end to end on this machine, with what it bought at the end."""

from __future__ import annotations

from pathlib import Path

import click

from lep_plugin.demo.pipeline import run_demo


@click.command(
    help="Run LEP end to end on the CPU (the shipped pretrained tiny base, its instruct version trained here) "
    "and print what it bought."
)
@click.option("--output", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
@click.option(
    "--corpus",
    multiple=True,
    help="target-language text (.jsonl/.txt); default: ../shared/data or the shipped demo texts",
)
@click.option(
    "--vocab-size",
    type=int,
    default=3000,
    show_default=True,
    help="size of the Russian BPE that extends the vocabulary (3000: ~2,500 new tokens, each seen often enough "
    "in the demo's 300 embedding steps)",
)
def demo(output: Path, corpus: tuple[str, ...], vocab_size: int) -> None:

    report = run_demo(output, corpus, vocab_size, echo=lambda m: click.echo(m, err=False))
    click.echo("\n" + report)
    click.echo(f"report: {output / 'report.md'}, plot: {output / 'eval.png'}")

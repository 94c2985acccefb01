"""``lep tiny``: a tiny base and instruct model of a model family, to try LEP on a CPU in minutes."""

from __future__ import annotations

from pathlib import Path

import click

from lep_plugin.demo.families import FAMILIES, make_tiny_family


@click.command(
    help="Make a tiny base and instruct model of a family (OUTPUT/base, OUTPUT/instruct) whose "
    "tokenizer has the family's layout: special tokens, BOS, chat template, padded rows. The base "
    "has random weights (untrained); the instruct model is the base with every tensor moved by "
    "noise of 2 % of its RMS and the family's chat EOS: a related pair for trying the tools, "
    "whose scores say nothing about LEP."
)
@click.option("--family", "name", required=True, type=click.Choice(list(FAMILIES)), help="model family")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="dir to write")
@click.option(
    "--bpe-size",
    type=int,
    default=None,
    help="cut the byte-level BPE (llama3, qwen) to this many tokens: smaller models",
)
@click.option("--hidden", type=int, default=64, show_default=True, help="hidden size")
@click.option("--layers", type=int, default=2, show_default=True, help="transformer layers")
@click.option("--force", is_flag=True, help="replace an existing output dir")
def tiny(name: str, output: Path, bpe_size: int | None, hidden: int, layers: int, force: bool) -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # bars over a few-MB model, gone in milliseconds
    click.echo(make_tiny_family(name, output, bpe_size, hidden, layers, force))

"""``lep tiny``: a tiny base and instruct model to try LEP on a CPU in minutes: by default the pretrained
base shipped with lep-plugin (it copies in context, as LEP's premise asks) and its instruct version; with
``--family``, a random pair of that family's layout."""

from __future__ import annotations

from pathlib import Path

import click

from lep_plugin.demo.families import FAMILIES, make_tiny_family
from lep_plugin.errors import LEPError


@click.command(
    help="Make a tiny base and instruct model (OUTPUT/base, OUTPUT/instruct). By default: the pretrained "
    "tiny base shipped with lep-plugin (2-layer Llama, English-leaning byte-level vocabulary; it copies "
    "in context) and its instruct version, trained now on chat instructions and copy chats "
    "(--instruct-seconds): a pair whose LEP versions can be judged. With --family: a random base whose "
    "tokenizer has the family's layout (special tokens, BOS, chat template, padded rows) and an instruct "
    "model = the base moved by noise of 2 % of each tensor's RMS: for trying the tools on a layout, its "
    "scores say nothing about LEP."
)
@click.option("--family", "name", default=None, type=click.Choice(list(FAMILIES)), help="a random pair of this family")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="dir to write")
@click.option(
    "--instruct-seconds",
    type=float,
    default=90,
    show_default=True,
    help="time box of the instruction step (the default pair)",
)
@click.option(
    "--bpe-size",
    type=int,
    default=None,
    help="--family llama3/qwen: cut the byte-level BPE to this many tokens: smaller models",
)
@click.option("--hidden", type=int, default=64, show_default=True, help="--family: hidden size")
@click.option("--layers", type=int, default=2, show_default=True, help="--family: transformer layers")
@click.option("--force", is_flag=True, help="replace an existing output dir")
def tiny(
    name: str | None,
    output: Path,
    instruct_seconds: float,
    bpe_size: int | None,
    hidden: int,
    layers: int,
    force: bool,
) -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # bars over a few-MB model, gone in milliseconds
    if name is None:
        if bpe_size is not None:
            raise LEPError(
                "--bpe-size applies to --family llama3/qwen only (the pretrained pair has its own vocabulary)"
            )
        from lep_plugin.demo.pipeline import pretrained_pair  # lazy: pulls in the evaluation and training code

        click.echo(pretrained_pair(output, instruct_seconds, force, log=lambda m: None))
        return
    click.echo(make_tiny_family(name, output, bpe_size, hidden, layers, force))

"""``lep export``: publish an LEP model in other formats (``gguf``: llama.cpp, Ollama, LM Studio)."""

from __future__ import annotations

from pathlib import Path

import click

from lep_plugin.cli.options import options_from_model
from lep_plugin.publish.gguf import GGUFOptions, export_gguf


@click.group(help="Publish a model in other formats.")
def export() -> None:
    pass


@export.command("gguf")
@click.argument("model_dir", type=click.Path(path_type=Path))
@options_from_model(GGUFOptions)
@click.option("--verbose", is_flag=True, help="show the converter's log (default: only a failure's one-line reason)")
def gguf(model_dir: Path, options: GGUFOptions, verbose: bool) -> None:
    """Convert MODEL_DIR (an HF model dir, e.g. a lep-merge output) to one GGUF file with llama.cpp's own
    converter; an LEP model keeps its original pre-tokenizer identity, so the GGUF tokenizes like the HF model."""

    def log(line: str) -> None:
        click.echo(line, err=True)

    export_gguf(model_dir, options, echo=click.echo, log=log if verbose else None)

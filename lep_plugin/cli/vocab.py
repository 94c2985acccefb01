"""``lep vocab``: build, import, convert and report vocabularies."""

from __future__ import annotations

from pathlib import Path

import click

from lep_plugin.cli.options import options_from_model
from lep_plugin.common.fs import atomic_output_dir, check_output_dir
from lep_plugin.common.tokenizers import read_manifest
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.mistral import (
    import_mistral_common_tokenizer,
    mistral_common_file,
)
from lep_plugin.vocab.options import ConvertOptions, VocabOptions
from lep_plugin.vocab.report import (
    build_summary,
    few_new_tokens_warning,
    markdown_table,
    plot,
    report,
    write_json,
)


@click.group(help="Build, import, convert and report vocabularies.")
def vocab() -> None:
    pass


@vocab.command("build")
@click.option("--tokenizer", "old", required=True, type=click.Path(path_type=Path), help="old tokenizer (or model) dir")
@click.option("--corpus", required=True, multiple=True, help="corpus file or glob (.jsonl/.txt); repeatable")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="new tokenizer dir to write")
@click.option("--force", is_flag=True, help="replace an existing output dir")
@click.option(
    "--check-text",
    "check_texts",
    multiple=True,
    help="held-out text (.jsonl/.txt) to compare the old and new tokenizers on, e.g. one per language; repeatable",
)
@options_from_model(VocabOptions)
def build(
    old: Path, corpus: tuple[str, ...], output: Path, force: bool, check_texts: tuple[str, ...], options: VocabOptions
) -> None:
    """Train a new vocabulary on CORPUS in the style of the old tokenizer."""

    build_vocabulary(old, list(corpus), options, output, force)
    manifest = read_manifest(output)
    click.echo(build_summary(output, manifest))
    if check_texts:
        click.echo(markdown_table(report([old, output], list(check_texts), options.text_field)))
    warning = few_new_tokens_warning(manifest)
    if warning:
        click.echo(warning, err=True)


@vocab.command("import")
@click.option(
    "--source",
    required=True,
    type=click.Path(path_type=Path),
    help=(
        "mistral-common tokenizer file (.model or tekken .json), or a name shipped in mistral-common such as "
        "tokenizer.model.v1"
    ),
)
@click.option("--output", required=True, type=click.Path(path_type=Path), help="HF tokenizer dir to write")
@click.option("--force", is_flag=True, help="replace an existing output dir")
def import_(source: Path, output: Path, force: bool) -> None:
    """Convert a SentencePiece/Tekken tokenizer file into an HF fast tokenizer dir."""

    if not source.exists() and source.parent == Path("."):
        source = mistral_common_file(source.name)
    with atomic_output_dir(output, force) as tmp:
        import_mistral_common_tokenizer(source, tmp)
    click.echo(f"wrote {output}")


@vocab.command("convert")
@click.option(
    "--model",
    required=True,
    type=click.Path(path_type=Path),
    help="model dir (old vocabulary): HF weights, or a DeepSpeed checkpoint dir",
)
@click.option("--tokenizer", "new", required=True, type=click.Path(path_type=Path), help="new tokenizer dir")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="model dir to write")
@click.option("--force", is_flag=True, help="replace an existing output dir")
@options_from_model(ConvertOptions)
def convert(model: Path, new: Path, output: Path, force: bool, options: ConvertOptions) -> None:
    """Write MODEL with the new vocabulary: T-initialised embedding and lm_head, streamed shard by shard."""
    check_output_dir(output, force)  # before torch loads: a usage error answers at once
    # lazy: the conversion loads torch; the other vocabulary commands never need it
    from lep_plugin.vocab.convert import convert_checkpoint

    summary = convert_checkpoint(model, new, output, options, force)
    click.echo(summary)


@vocab.command("report")
@click.option(
    "--tokenizer",
    "tokenizers",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="tokenizer dir; repeatable",
)
@click.option("--text", "texts", required=True, multiple=True, help="text file (.jsonl/.txt); repeatable")
@click.option("--text-field", default="text", show_default=True, help="field of .jsonl records holding the text")
@click.option("--max-chars", type=int, default=None, help="read at most this many characters per file")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="also write the rows as JSON")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), help="also draw a bar chart (PNG)")
def report_command(tokenizers, texts, text_field, max_chars, json_out, plot_out) -> None:
    """Characters per token, tokens per word and words split into ≥ 3 pieces, per tokenizer and text."""

    rows = report(list(tokenizers), list(texts), text_field, max_chars)
    click.echo(markdown_table(rows))
    if json_out:
        write_json(rows, json_out)
    if plot_out:
        plot(rows, plot_out)

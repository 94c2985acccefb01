"""``lep demo``: the method end to end on this machine, with what it bought at the end."""

from __future__ import annotations

from pathlib import Path

import click

SHARED = Path("../shared/data")
DEMO_DATA = Path(__file__).resolve().parents[1] / "data" / "demo"


def demo_corpus(corpus: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(training files, held-out files): ``--corpus`` if given, ``../shared/data`` if present, else the
    texts that ship with the package."""
    if corpus:
        return list(corpus), list(corpus)
    if (SHARED / "ru" / "train.jsonl").is_file():
        return [str(SHARED / "ru" / "train.jsonl")], [str(SHARED / "ru" / "heldout.jsonl"), str(SHARED / "en" / "heldout.jsonl")]
    return [str(DEMO_DATA / "ru.jsonl")], [str(DEMO_DATA / "ru.jsonl"), str(DEMO_DATA / "en.jsonl")]


@click.command(help="Run LEP end to end on the CPU and print what it bought.")
@click.option("--output", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
@click.option("--corpus", multiple=True, help="training text (.jsonl/.txt); default: ../shared/data or the shipped demo texts")
@click.option("--vocab-size", type=int, default=32000, show_default=True, help="size of the Russian BPE")
def demo(output: Path, corpus: tuple[str, ...], vocab_size: int) -> None:
    from lep_plugin.io.tokenizers import import_mistral_common_tokenizer, mistral_common_file
    from lep_plugin.io.vocab import VocabOptions, build_vocabulary
    from lep_plugin.io.vocab_report import markdown_table, plot, report, write_json

    train, heldout = demo_corpus(corpus)
    output.mkdir(parents=True, exist_ok=True)
    old = output / "tokenizer-mistral"
    if not old.exists():
        click.echo("1/3 importing the Mistral-7B v0.1 tokenizer from mistral-common")
        import_mistral_common_tokenizer(mistral_common_file("tokenizer.model.v1"), old)
    tokenizers = [old]
    for step, method in enumerate(("bpe", "extend"), 2):
        new = output / f"tokenizer-{method}"
        click.echo(f"{step}/3 building a {method} vocabulary on {', '.join(train)}")
        build_vocabulary(old, train, VocabOptions(method=method, vocab_size=vocab_size), new, force=True)
        tokenizers.append(new)
    rows = report(tokenizers, heldout)
    write_json(rows, output / "vocab_report.json")
    plot(rows, output / "vocab_report.png")
    table = markdown_table(rows)
    (output / "report.md").write_text(table + "\n", encoding="utf-8")
    click.echo(table)
    click.echo(f"report: {output / 'report.md'}, plot: {output / 'vocab_report.png'}")

"""Tokenization statistics of tokenizers on text files: characters per token, tokens per word and the
share of words split into three or more pieces (``lep vocab report``)."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from lep_plugin.common.corpus import expand_corpus, iter_texts
from lep_plugin.common.fs import write_text_atomic
from lep_plugin.common.plots import pyplot, save_figure
from lep_plugin.common.tokenizers import (
    load_tokenizer,
    token_counts,
    tokenizer_json,
    tokenizer_style,
)
from lep_plugin.errors import setting_name

# fewer new tokens than this share of the old vocabulary: the vocabulary change is almost no change
FEW_NEW_TOKENS = 0.01


def few_new_tokens_warning(manifest: dict) -> str | None:
    """A warning when an ``extend``/``optimize`` vocabulary added almost nothing (a ``vocab_size`` far too
    small trains a BPE that is mostly the alphabet the old vocabulary already has)."""
    new_tokens = manifest.get("new_tokens")
    if manifest.get("method") not in ("extend", "optimize") or new_tokens is None:
        return None
    old = int(manifest.get("old_vocab_size") or 0)
    if new_tokens >= max(1, FEW_NEW_TOKENS * old):
        return None
    size = manifest.get("options", {}).get("vocab_size")
    return (
        f"warning: {setting_name('vocab_size')} {size} added only {new_tokens} new token(s) to the old {old:,} "
        f"(under {FEW_NEW_TOKENS:.0%}): it is the size of the target-language BPE, most of whose first tokens the old "
        "vocabulary already has; use thousands (the paper: 32,000 to 64,000)"
    )


@dataclass(frozen=True)
class TokenizationStats:
    tokenizer: str
    text: str
    vocab_size: int
    characters: int
    words: int
    tokens: int
    chars_per_token: float
    tokens_per_word: float
    split_words_3plus: float  # share of word occurrences split into ≥ 3 tokens


def tokenization_stats(
    tok, name: str, text_file: Path, text_field: str = "text", max_chars: int | None = None
) -> TokenizationStats:
    words: Counter[str] = Counter()

    def texts():
        for text in iter_texts([text_file], text_field, max_chars):
            words.update(text.split())
            yield text

    counts = token_counts(tok, texts())
    # a word as it appears inside running text: after a space (SentencePiece adds its ▁ by itself)
    prefix = " " if tokenizer_style(tokenizer_json(tok)) == "byte_level" else ""
    distinct = list(words)
    pieces = [
        len(e.ids) for e in tok.backend_tokenizer.encode_batch([prefix + w for w in distinct], add_special_tokens=False)
    ]
    split3 = sum(words[w] for w, n in zip(distinct, pieces) if n >= 3)
    return TokenizationStats(
        tokenizer=name,
        text=str(text_file),
        vocab_size=len(tok),
        characters=counts.characters,
        words=counts.words,
        tokens=counts.tokens,
        chars_per_token=counts.chars_per_token,
        tokens_per_word=counts.tokens_per_word,
        split_words_3plus=split3 / max(counts.words, 1),
    )


def report(
    tokenizers: list[str | os.PathLike],
    texts: list[str | os.PathLike],
    text_field: str = "text",
    max_chars: int | None = None,
) -> list[TokenizationStats]:
    files = expand_corpus(texts)
    rows = []
    for path in tokenizers:
        tok = load_tokenizer(path)
        rows += [tokenization_stats(tok, str(path), f, text_field, max_chars) for f in files]
    return rows


def markdown_table(rows: list[TokenizationStats]) -> str:
    lines = [
        "| tokenizer | text | vocab | chars/token | tokens/word | words in ≥3 pieces |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.tokenizer} | {r.text} | {r.vocab_size:,} | {r.chars_per_token:.3f} | "
            f"{r.tokens_per_word:.3f} | {r.split_words_3plus:.1%} |"
        )
    return "\n".join(lines)


def write_json(rows: list[TokenizationStats], path: Path) -> None:
    write_text_atomic(path, json.dumps([asdict(r) for r in rows], indent=2, ensure_ascii=False) + "\n")


def report_figure(rows: list[TokenizationStats]):
    """Grouped bar chart of characters per token: one group per text file, one bar per tokenizer."""
    plt = pyplot()
    texts = list(dict.fromkeys(r.text for r in rows))
    names = list(dict.fromkeys(r.tokenizer for r in rows))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 2 + 1.5 * len(texts) * len(names) * 0.5), 4))
    for k, name in enumerate(names):
        values = [next(r.chars_per_token for r in rows if r.tokenizer == name and r.text == t) for t in texts]
        ax.bar([i + k * width for i in range(len(texts))], values, width, label=Path(name).name)
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(texts))], [Path(t).parent.name + "/" + Path(t).name for t in texts]
    )
    ax.set_ylabel("characters per token")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot(rows: list[TokenizationStats], path: Path) -> None:
    save_figure(report_figure(rows), path, dpi=100)

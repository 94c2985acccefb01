"""Tokenization statistics of tokenizers on text files: characters per token, tokens per word and the
share of words split into three or more pieces (``lep vocab report``)."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from lep_plugin.io.corpus import expand_corpus, iter_texts
from lep_plugin.io.tokenizers import load_tokenizer, tokenizer_json, tokenizer_style


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


def tokenization_stats(tok, name: str, text_file: Path, text_field: str = "text", max_chars: int | None = None) -> TokenizationStats:
    backend = tok.backend_tokenizer
    characters = tokens = 0
    words: Counter[str] = Counter()
    batch: list[str] = []

    def flush():
        nonlocal tokens
        tokens += sum(len(e.ids) for e in backend.encode_batch(batch, add_special_tokens=False))
        batch.clear()

    for text in iter_texts([text_file], text_field, max_chars):
        characters += len(text)
        words.update(text.split())
        batch.append(text)
        if len(batch) >= 128:
            flush()
    flush()
    # a word as it appears inside running text: after a space (SentencePiece adds its ▁ by itself)
    prefix = " " if tokenizer_style(tokenizer_json(tok)) == "byte_level" else ""
    distinct = list(words)
    pieces = [len(e.ids) for e in backend.encode_batch([prefix + w for w in distinct], add_special_tokens=False)]
    total_words = sum(words.values())
    split3 = sum(words[w] for w, n in zip(distinct, pieces) if n >= 3)
    return TokenizationStats(
        tokenizer=name,
        text=str(text_file),
        vocab_size=len(tok),
        characters=characters,
        words=total_words,
        tokens=tokens,
        chars_per_token=characters / max(tokens, 1),
        tokens_per_word=tokens / max(total_words, 1),
        split_words_3plus=split3 / max(total_words, 1),
    )


def report(tokenizers: list[str | os.PathLike], texts: list[str | os.PathLike], text_field: str = "text", max_chars: int | None = None) -> list[TokenizationStats]:
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
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def plot(rows: list[TokenizationStats], path: Path) -> None:
    """Grouped bar chart of characters per token: one group per text file, one bar per tokenizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = list(dict.fromkeys(r.text for r in rows))
    names = list(dict.fromkeys(r.tokenizer for r in rows))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 2 + 1.5 * len(texts) * len(names) * 0.5), 4))
    for k, name in enumerate(names):
        values = [next(r.chars_per_token for r in rows if r.tokenizer == name and r.text == t) for t in texts]
        ax.bar([i + k * width for i in range(len(texts))], values, width, label=Path(name).name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(texts))], [Path(t).parent.name + "/" + Path(t).name for t in texts])
    ax.set_ylabel("characters per token")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

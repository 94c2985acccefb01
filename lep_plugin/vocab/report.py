"""Tokenization statistics of tokenizers on text files: characters per token, tokens per word, the
share of words split into three or more pieces, the share of words tokenized differently from the first
tokenizer, and tokens no text reaches (``lep vocab report``)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lep_plugin.common.corpus import expand_corpus, iter_texts
from lep_plugin.common.fs import write_text_atomic
from lep_plugin.common.plots import pyplot, save_figure
from lep_plugin.common.tokenizers import (
    is_byte_piece,
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


def build_summary(output, manifest: dict) -> str:
    """What ``lep vocab build`` says it made: sizes, new tokens, the unreachable ones and, for ``extend``
    and ``optimize``, whether old-language text keeps its tokenization."""
    line = (
        f"wrote {output}: {manifest['method']} vocabulary of {manifest['new_vocab_size']:,} tokens "
        f"(old: {manifest['old_vocab_size']:,})"
    )
    if "new_tokens" in manifest:
        line += f"; {manifest['new_tokens']:,} new tokens"
    if "unreachable_new_tokens" in manifest:
        line += f", {manifest['unreachable_new_tokens']:,} of the new tokens unreachable"
    scripts = manifest.get("new_token_scripts")
    if scripts:
        line += f"; every new token holds a {'/'.join(scripts)} letter"
        if manifest.get("method") == "extend":
            line += ": text without one is tokenized as before"
    elif manifest.get("method") in ("extend", "optimize"):
        line += "; new merges ranked first: old-language words may split differently (keep_old_tokenization false)"
    return line


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
    words_changed: float | None = None  # share of word occurrences tokenized unlike the reference tokenizer
    unreachable: int | None = None  # vocabulary tokens their own text does not tokenize to


def unreachable_tokens(tok, ids: Iterable[int] | None = None) -> list[int]:
    """The ids (all of the model's vocabulary, or ``ids``) whose token the model does not make from the
    token's own text by its merges: rows no text trains or uses. Added tokens, byte tokens and single
    characters are reached by definition; Llama-3's whole-word lookup (``ignore_merges``) is left out, so
    the merges alone must make each token."""
    return unreachable_in_spec(tokenizer_json(tok), ids)


def unreachable_in_spec(spec: dict, ids: Iterable[int] | None = None) -> list[int]:
    """:func:`unreachable_tokens` of a ``tokenizer.json``."""
    from tokenizers import Tokenizer

    model = spec["model"]
    if model["type"] != "BPE":
        return []
    model = {**model, "ignore_merges": False, "dropout": None}
    bpe = Tokenizer.from_str(json.dumps({**spec, "model": model, "added_tokens": []}, ensure_ascii=False)).model
    vocab: dict[str, int] = model["vocab"]
    added = {t["content"] for t in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}
    wanted = vocab.values() if ids is None else [i for i in ids if i in by_id]
    out = []
    for i in wanted:
        token = by_id[i]
        if token in added or len(token) == 1 or is_byte_piece(token):
            continue
        if [t.id for t in bpe.tokenize(token)] != [i]:
            out.append(i)
    return sorted(out)


def _word_tokens(tok, words: list[str]) -> list[list[str]]:
    """Each word tokenized as inside running text: after a space (SentencePiece adds its ▁ by itself)."""
    prefix = " " if tokenizer_style(tokenizer_json(tok)) == "byte_level" else ""
    encodings = tok.backend_tokenizer.encode_batch([prefix + w for w in words], add_special_tokens=False)
    return [e.tokens for e in encodings]


def tokenization_stats(
    tok,
    name: str,
    text_file: Path,
    text_field: str = "text",
    max_chars: int | None = None,
    reference=None,
) -> TokenizationStats:
    """The statistics of ``tok`` on ``text_file``; with a ``reference`` tokenizer, also the share of word
    occurrences ``tok`` tokenizes differently from it."""
    words: Counter[str] = Counter()

    def texts():
        for text in iter_texts([text_file], text_field, max_chars):
            words.update(text.split())
            yield text

    counts = token_counts(tok, texts())
    distinct = list(words)
    pieces = _word_tokens(tok, distinct)
    split3 = sum(words[w] for w, p in zip(distinct, pieces) if len(p) >= 3)
    changed = None
    if reference is not None:
        before = _word_tokens(reference, distinct)
        changed = sum(words[w] for w, a, b in zip(distinct, before, pieces) if a != b) / max(counts.words, 1)
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
        words_changed=changed,
    )


def report(
    tokenizers: list[str | os.PathLike],
    texts: list[str | os.PathLike],
    text_field: str = "text",
    max_chars: int | None = None,
) -> list[TokenizationStats]:
    """Rows per tokenizer and text; words tokenized differently are counted against the first tokenizer."""
    files = expand_corpus(texts)
    rows = []
    reference = None
    for path in tokenizers:
        tok = load_tokenizer(path)
        unreachable = len(unreachable_tokens(tok))
        for f in files:
            stats = tokenization_stats(tok, str(path), f, text_field, max_chars, reference)
            rows.append(replace(stats, unreachable=unreachable))
        reference = reference or tok
    return rows


def markdown_table(rows: list[TokenizationStats]) -> str:
    lines = [
        "| tokenizer | text | vocab | chars/token | tokens/word | words in ≥3 pieces | words tokenized "
        "differently | unreachable tokens |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        changed = "–" if r.words_changed is None else f"{r.words_changed:.2%}"
        unreachable = "–" if r.unreachable is None else f"{r.unreachable:,}"
        lines.append(
            f"| {r.tokenizer} | {r.text} | {r.vocab_size:,} | {r.chars_per_token:.3f} | "
            f"{r.tokens_per_word:.3f} | {r.split_words_3plus:.1%} | {changed} | {unreachable} |"
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

"""Continued BPE: new merges learned *on top of* what an old BPE leaves of a corpus (``extend``'s default).

The old merges keep their ranks and run first; the new ones are learned greedily on the old segmentation of
the target corpus, so a new token is a pair of pieces the old tokenizer really leaves side by side. A new
merge may only make a token that holds a letter of the target scripts (Cyrillic for Russian): text without
such letters – the old language – cannot contain the new token, so it is tokenized exactly as before (the
merges, SentencePiece's completed merges and Llama-3's whole-word lookup alike).

Words are counted once and merged as symbol tuples with their counts (the trainer of Sennrich et al.,
2016, with a lazy max-heap over pair counts); only words holding a target letter take part.
"""

from __future__ import annotations

import heapq
import json
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lep_plugin.common.tokenizers import is_byte_piece
from lep_plugin.errors import LEPError

if TYPE_CHECKING:
    from lep_plugin.vocab.options import VocabOptions

Word = tuple[str, ...]
# a script is a target script when this share of the corpus's letters is written in it
MAIN_SCRIPT_SHARE = 0.25
MAX_TOKEN_LENGTH = 24


@dataclass(frozen=True)
class GrownVocabulary:
    """What continued BPE adds: new tokens in id order (new characters first), their merges in rank order
    (to go after the old ones), and the scripts every new token holds a letter of."""

    tokens: list[str]
    merges: list[tuple[str, str]]
    scripts: tuple[str, ...]


def continue_bpe(
    pipeline: dict[str, Any],
    byte_level: bool,
    kept_model: dict[str, Any],
    texts: Callable[[], Iterator[str]],
    count: int,
    options: VocabOptions,
) -> GrownVocabulary:
    """``count`` new tokens learned on what ``kept_model`` (a ``tokenizers`` BPE model JSON) leaves of the
    corpus ``texts``, split into words by ``pipeline`` (a ``tokenizer.json`` without its model); ``byte_level``:
    the symbols are GPT-2 byte characters (else SentencePiece-style pieces with byte-fallback tokens)."""
    from tokenizers import Tokenizer, decoders

    tokenizer = Tokenizer.from_str(json.dumps({**pipeline, "model": kept_model}, ensure_ascii=False))
    words, letters = _count_words(tokenizer, texts)
    scripts = _target_scripts(options.new_token_scripts, letters)
    wanted = frozenset(scripts)
    decode = decoders.ByteLevel().decode if byte_level else "".join
    vocab = kept_model["vocab"]
    target_words = {w: n for w, n in words.items() if has_script_letter(decode([w]), wanted)}
    # SentencePiece-style vocabularies spell a character they lack with byte tokens, which no merge joins:
    # the target script's characters the corpus uses often enough become tokens of their own first
    new_chars = [] if byte_level else _new_characters(target_words, vocab, wanted, options.min_frequency)
    known = set(vocab) | set(new_chars)
    segmented = _old_segmentation(tokenizer.model, target_words, set(new_chars))

    def allowed(a: str, b: str) -> bool:
        return not (is_byte_piece(a) or is_byte_piece(b)) and has_script_letter(decode([a + b]), wanted)

    merges = learn_merges(
        segmented.items(), max(count - len(new_chars), 0), options.min_frequency, allowed, MAX_TOKEN_LENGTH, known
    )
    made = list(dict.fromkeys(a + b for a, b in merges if a + b not in known))
    return GrownVocabulary(new_chars + made, merges, scripts)


def _count_words(tokenizer, texts: Callable[[], Iterator[str]]) -> tuple[Counter[str], Counter[str]]:
    """Word (pre-tokenized, normalized) counts and character counts of the corpus."""
    words: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
    for text in texts():
        chars.update(text)
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(text))
    return words, chars


def _target_scripts(setting: str, letters: Counter[str]) -> tuple[str, ...]:
    if setting != "auto":
        return tuple(s.strip().upper() for s in setting.split(",") if s.strip())
    scripts = main_scripts(letters, MAIN_SCRIPT_SHARE)
    if not scripts:
        raise LEPError("the corpus has no letters: no script to make new tokens for (set new_token_scripts)")
    return scripts


def _new_characters(words: dict[str, int], vocab, scripts: frozenset[str], min_frequency: int) -> list[str]:
    chars: Counter[str] = Counter()
    for word, n in words.items():
        for char in word:
            if char not in vocab:
                chars[char] += n
    return sorted(
        (c for c, n in chars.items() if n >= min_frequency and letter_script(c) in scripts), key=lambda c: -chars[c]
    )


def _old_segmentation(model, words: dict[str, int], new_chars: set[str]) -> dict[Word, int]:
    """Each word as the kept model tokenizes it, a new character's byte tokens joined back into it."""
    segmented: Counter[Word] = Counter()
    for word, n in words.items():
        pieces: list[str] = []
        last = None
        for token in model.tokenize(word):
            char = word[token.offsets[0] : token.offsets[1]]
            if is_byte_piece(token.value) and char in new_chars:
                if token.offsets != last:  # the first byte of the character stands for all of it
                    pieces.append(char)
            else:
                pieces.append(token.value)
            last = token.offsets
        segmented[tuple(pieces)] += n
    return segmented


def letter_script(char: str) -> str | None:
    """The script of a letter as the first word of its Unicode name (CYRILLIC, LATIN, GREEK, CJK ...);
    None for anything that is not a letter (digits, punctuation, spaces, marks)."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else None


def main_scripts(letters: Counter[str], share: float) -> tuple[str, ...]:
    """The scripts of at least ``share`` of the letters counted in ``letters`` (character -> count), most
    used first."""
    scripts: Counter[str] = Counter()
    for char, count in letters.items():
        script = letter_script(char)
        if script is not None:
            scripts[script] += count
    total = sum(scripts.values())
    return tuple(s for s, n in scripts.most_common() if total and n >= share * total)


def has_script_letter(text: str, scripts: frozenset[str]) -> bool:
    return any(letter_script(c) in scripts for c in text)


def learn_merges(
    words: Iterable[tuple[Word, int]],
    count: int,
    min_frequency: int,
    allowed: Callable[[str, str], bool],
    max_length: int,
    known: set[str] = frozenset(),
) -> list[tuple[str, str]]:
    """Merges making at most ``count`` tokens not in ``known``, each merge the most frequent adjacent pair
    (ties: the smaller pair) that ``allowed`` accepts, occurs ``min_frequency`` times or more, and makes a
    token of at most ``max_length`` characters; every occurrence is merged before the next pair is chosen."""
    symbols: list[list[str]] = []
    freq: list[int] = []
    for word, n in words:
        if len(word) > 1:
            symbols.append(list(word))
            freq.append(n)
    pairs: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    permitted: dict[tuple[str, str], bool] = {}

    def ok(pair: tuple[str, str]) -> bool:
        if pair not in permitted:
            permitted[pair] = len(pair[0]) + len(pair[1]) <= max_length and allowed(*pair)
        return permitted[pair]

    for i, word in enumerate(symbols):
        for pair in zip(word, word[1:]):
            if ok(pair):
                pairs[pair] += freq[i]
                where[pair].add(i)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    made = 0
    while heap and made < count:
        negative, pair = heapq.heappop(heap)
        if -negative != pairs.get(pair, 0):  # a stale entry: the pair's count changed since it was pushed
            continue
        if -negative < min_frequency:
            break
        merges.append(pair)
        made += pair[0] + pair[1] not in known
        changed = _merge_everywhere(pair, symbols, freq, pairs, where, ok)
        for other in changed:
            if pairs.get(other, 0) > 0:
                heapq.heappush(heap, (-pairs[other], other))
    return merges


def _merge_everywhere(pair, symbols, freq, pairs, where, ok) -> set[tuple[str, str]]:
    """Merge ``pair`` in every word holding it, left to right, keeping the pair counts and their word index
    up to date; returns the pairs whose count changed."""
    a, b = pair
    merged = a + b
    changed: set[tuple[str, str]] = set()

    def add(p: tuple[str, str], n: int, i: int) -> None:
        if ok(p):
            pairs[p] += n
            if n > 0:
                where[p].add(i)
            changed.add(p)

    for i in where.pop(pair, ()):
        word, n = symbols[i], freq[i]
        for p in zip(word, word[1:]):
            add(p, -n, i)
        out, k = [], 0
        while k < len(word):
            if k + 1 < len(word) and word[k] == a and word[k + 1] == b:
                out.append(merged)
                k += 2
            else:
                out.append(word[k])
                k += 1
        symbols[i] = out
        for p in zip(out, out[1:]):
            add(p, n, i)
    pairs.pop(pair, None)
    changed.discard(pair)
    return changed

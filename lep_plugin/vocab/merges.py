"""Merges of a SentencePiece-style BPE vocabulary, completed the way SentencePiece itself tokenizes.

SentencePiece (and llama.cpp, which runs these vocabularies the same way) merges *any* two adjacent pieces
whose concatenation is a piece, preferring the piece made earliest. An HF ``tokenizer.json`` merges only
the pairs its ``merges`` list names, and a BPE trainer lists one pair per learned piece: ``дел`` + ``ь``
is missing when ``дель`` was learned as ``де`` + ``ль``, so HF writes ``дел ь`` where SentencePiece and
llama.cpp write ``дель``. Listing every other split of a piece right after the merge that first makes it
(what transformers' own SentencePiece converter does) makes all three tokenize alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def completed_merges(vocab: Mapping[str, int], merges: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every piece's merges together, pieces in the order ``merges`` first makes them: its first merge, then
    every other split of it into two vocabulary pieces (a later merge of the same piece moves up here)."""
    emitted: set[tuple[str, str]] = set()
    out: list[tuple[str, str]] = []
    for first in merges:
        first = tuple(first)
        if first in emitted:
            continue
        piece = first[0] + first[1]
        splits = [(piece[:cut], piece[cut:]) for cut in range(1, len(piece))]
        for pair in [first] + [s for s in splits if s[0] in vocab and s[1] in vocab]:
            if pair not in emitted:
                emitted.add(pair)
                out.append(pair)
    return out

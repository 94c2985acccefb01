"""One rule for what a paragraph, a sentence and a word of running text are, shared by the evaluation
samples, the calibration copy examples and the tokenization statistics.

A paragraph is one ``\n``-separated line of a document (the convention of the ``.jsonl`` corpora, whose
``text`` joins whole paragraphs with ``\n``); sentences are cut inside a paragraph; a word is a run of
non-space characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

Unit = Literal["sentence", "paragraph"]


def paragraphs(text: str) -> Iterator[str]:
    """The non-empty lines of ``text``, outer spaces stripped, in order."""
    for line in text.split("\n"):
        paragraph = line.strip()
        if paragraph:
            yield paragraph


def normalise_space(text: str) -> str:
    """Every run of whitespace as one space (a unit that must fit on one line of a prompt)."""
    return " ".join(text.split())


def count_words(text: str) -> int:
    return len(text.split())


# A candidate boundary: end punctuation (".", "!", "?", "…", runs like "?!" or "..."), optional closing
# quotes/brackets, whitespace, and then something that starts a sentence: a capital letter or digit
# (perhaps after an opening quote or bracket), or a dialogue dash followed by one. Requiring a capital
# keeps "т. е. так" and "— Куда? — спросил он." (lower-case after the dash) in one sentence.
_BOUNDARY = re.compile(
    r"""[.!?…]+[»"”’)\]]*"""
    r"""(?P<gap>\s+)"""
    r"""(?=[«"“„'(\[]?[A-ZА-ЯЁ0-9]|[-–—]\s*[«"“„]?[A-ZА-ЯЁ0-9])"""
)
# Words after which a full stop does not end a sentence (compared lower-cased, without the dot).
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof st jr sr vs etc e.g i.e fig vol pp
    г гг тт см ср стр им ул проф акад доц рис напр""".split()
)


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph (no ``\\n`` expected), each an exact substring, outer spaces stripped.

    Deterministic regex rules, good enough for Russian and English prose: a sentence ends at ``.``,
    ``!``, ``?`` or ``…`` (plus closing quotes) when the next non-space character starts a new
    sentence (see ``_BOUNDARY``); not after a known abbreviation (``Mr.``, ``г.``, ``см.``) or a single
    capital letter (initials such as ``А. С. Пушкин``).
    """
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(paragraph):
        end = match.start("gap")
        if match.group(0).startswith(".") and _no_break_before(paragraph[start : match.start()]):
            continue
        piece = paragraph[start:end].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _no_break_before(head: str) -> bool:
    """True when the word ending ``head`` (just before a ".") is an abbreviation or an initial."""
    word = re.search(r"(\w[\w.]*)$", head)
    if word is None:
        return False
    token = word.group(1)
    if len(token) == 1 and token.isupper():
        return True
    return token.lower() in _ABBREVIATIONS


def text_units(text: str, unit: Unit) -> Iterator[str]:
    """Paragraphs or sentences of ``text``, in order."""
    for paragraph in paragraphs(text):
        if unit == "paragraph":
            yield paragraph
        else:
            yield from split_sentences(paragraph)


_CYRILLIC = re.compile(r"[\u0400-\u04FF]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> str:
    """ "ru" when Cyrillic letters outnumber Latin ones, else "en"."""
    return "ru" if len(_CYRILLIC.findall(text)) > len(_LATIN.findall(text)) else "en"

"""Pretraining text in which passages come back: the data that makes a tiny base copy in context.

LEP's premise is a base that already has the skill an instruct model shows: a pretrained model copies a
passage it has seen earlier in its context (induction heads), and instruction tuning only teaches it when
to. Web text is full of such repetition (quotes, boilerplate, names); the demo's literature is not, and a
tiny model trained on it never learns to copy. So the demo's pretraining and embedding-training texts are
cut into short *windows* and a share of them get one of their passages written again after a gap of other
text::

    <text before> <passage> <gap: other text> <passage> <text after>

The windows are short enough (a sequence of the tiny base's) that both occurrences share one context.
:func:`random_token_rows` is the other half of the recipe: a few hundred steps of random token strings
written several times over, where only copying lowers the loss, form the copy heads before the natural
text, which alone would take far longer than the demo's minutes (measured in ``benchmarks/lep_claim.py``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from lep_plugin.common.fs import write_jsonl_atomic


class RepetitionOptions(BaseModel):
    """How texts are cut into windows and how many of those repeat a passage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    share: float = Field(0.5, ge=0, le=1, description="Fraction of windows that repeat one of their passages.")
    window_chars: int = Field(200, ge=20, description="Characters per window (cut at whitespace).")
    passage_chars: tuple[int, int] = Field((30, 80), description="Length range of the repeated passage.")
    gap_chars: tuple[int, int] = Field((0, 60), description="Length range of the other text between the two.")


def _word_start(text: str, position: int) -> int:
    """The start of the word at or after ``position`` (``len(text)`` if none)."""
    while 0 < position < len(text) and not text[position - 1].isspace():
        position += 1
    return min(position, len(text))


def windows(text: str, chars: int) -> Iterator[str]:
    """``text`` in consecutive pieces of about ``chars`` characters, each ending before a word."""
    start = 0
    while start < len(text):
        end = _word_start(text, start + chars)
        piece = text[start:end].strip()
        if piece:
            yield piece
        start = end


def repeat_passage(window: str, rng: random.Random, options: RepetitionOptions) -> str:
    """``window`` with one of its passages (whole words) written again after a gap of the window's own text.

    A window too short for a passage and its gap is returned as it is."""
    length = rng.randint(*options.passage_chars)
    gap = rng.randint(*options.gap_chars)
    latest = len(window) - length - gap
    if latest <= 0:
        return window
    start = _word_start(window, rng.randint(0, latest))
    end = _word_start(window, start + length)
    resume = _word_start(window, end + gap)
    passage = window[start:end].strip()
    if not passage:
        return window
    return f"{window[:resume].rstrip()} {passage} {window[resume:].lstrip()}".rstrip()


def repetition_texts(texts: Iterable[str], options: RepetitionOptions, seed: int = 0) -> Iterator[str]:
    """The windows of ``texts`` in order, ``options.share`` of them (drawn with ``seed``) with a repeated passage."""
    rng = random.Random(seed)
    for text in texts:
        for window in windows(text, options.window_chars):
            yield repeat_passage(window, rng, options) if rng.random() < options.share else window


def write_repetition_corpus(texts: Iterable[str], out: Path, options: RepetitionOptions, seed: int = 0) -> Path:
    """``repetition_texts`` as a ``{"text": ...}`` JSONL file (what Axolotl's ``completion`` datasets read)."""
    write_jsonl_atomic(({"text": t} for t in repetition_texts(texts, options, seed)), out, force=True)
    return out


def random_token_rows(
    token_ids: torch.Tensor, rows: int, length: int, times: int, generator: torch.Generator
) -> torch.Tensor:
    """``rows`` strings of ``length`` tokens drawn from ``token_ids``, each written ``times`` times in a row: after
    the first copy, every token is predictable by copying alone."""
    picks = torch.randint(len(token_ids), (rows, length), generator=generator)
    return token_ids[picks].repeat(1, times)

"""Label-free evaluation metrics of the Darumeru copy tasks and tokenizer-independent likelihood.

Pure functions over numbers, strings and tensors: no model, no tokenizer, no file I/O.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence

import torch

PARAGRAPH_MATCH_THRESHOLD = 0.99


def sentence_copy_score(predicted_tokens: int, source_tokens: int) -> float:
    """min(P/S, S/P) with P the predicted and S the source length in tokens.

    Only the lengths count (the Darumeru definition): a model that stops early or runs on is penalised
    in proportion. An empty prediction (or an empty source) scores 0, both empty scores 1.
    """
    if predicted_tokens < 0 or source_tokens < 0:
        raise ValueError("token counts must be non-negative")
    if predicted_tokens == 0 and source_tokens == 0:
        return 1.0
    if predicted_tokens == 0 or source_tokens == 0:
        return 0.0
    return min(predicted_tokens / source_tokens, source_tokens / predicted_tokens)


def _matcher(prediction: str, source: str) -> difflib.SequenceMatcher:
    # autojunk=False: the heuristic would treat frequent characters (spaces, vowels) of texts longer than
    # 200 characters as junk and under-count matches of long paragraphs.
    return difflib.SequenceMatcher(None, prediction, source, autojunk=False)


def matched_chars(prediction: str, source: str) -> int:
    """Characters of ``prediction`` matched, in order, in ``source`` (difflib's matching blocks)."""
    if not prediction or not source:
        return 0
    return sum(block.size for block in _matcher(prediction, source).get_matching_blocks())


def matched_fraction(prediction: str, source: str) -> float:
    """Characters of ``prediction`` matched in ``source`` (difflib, no junk heuristic) over len(prediction)."""
    if not prediction:
        return 0.0
    return matched_chars(prediction, source) / len(prediction)


def char_similarity(prediction: str, reference: str) -> float:
    """The strict copy score: 2·M / (len(prediction) + len(reference)), M the characters matched in order
    (difflib's ``ratio()``, no junk heuristic).

    1.0 only for the identical text; stopping early, running on, dropping or changing characters all cost
    in proportion, unlike Darumeru's sentence score (token counts only) and paragraph score (matched share
    of the *prediction*, so a correct first word scores 1). Chosen over chrF because a copy is a sequence
    (order counts, chrF's n-gram bags do not see it), it needs no dependency and it is the matcher
    Darumeru's paragraph task already uses. Both empty: 1.0.
    """
    if not prediction and not reference:
        return 1.0
    return 2.0 * matched_chars(prediction, reference) / (len(prediction) + len(reference))


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the texts are equal up to runs of whitespace, else 0.0 (decoders differ in spacing only)."""
    return 1.0 if prediction.split() == reference.split() else 0.0


def wrong_answers(references: Sequence[str]) -> list[str]:
    """Each sample's chance answer: the *next* sample's reference (the last gets the first); none with
    fewer than two samples. A fluent but wrong answer of a typical length, on the same samples."""
    if len(references) < 2:
        return []
    return list(references[1:]) + list(references[:1])


def chance_level(score: Callable[[str, str], float], references: Sequence[str]) -> float:
    """Mean ``score(wrong, reference)`` over :func:`wrong_answers` (nan with fewer than two samples): a copy
    score means little until it is clearly above this."""
    return mean([score(w, r) for w, r in zip(wrong_answers(references), references)])


def paragraph_copy_score(prediction: str, source: str, threshold: float = PARAGRAPH_MATCH_THRESHOLD) -> float:
    """1.0 if at least ``threshold`` of the prediction's characters match the source, else 0.0."""
    return 1.0 if matched_fraction(prediction, source) >= threshold else 0.0


def chars_per_token(num_chars: int, num_tokens: int) -> float:
    """Characters per token (higher = a more compact tokenization); nan when there are no tokens."""
    return num_chars / num_tokens if num_tokens else math.nan


def tokens_per_word(num_tokens: int, num_words: int) -> float:
    """Tokens per whitespace-separated word (lower = a more compact tokenization); nan without words."""
    return num_tokens / num_words if num_words else math.nan


def bits_per_character(nll_nats: float, num_chars: int) -> float:
    """Summed token negative log-likelihood (nats) over all tokens of a text, in bits per character.

    The total NLL of a text is its code length whatever the tokenization, so dividing by characters (not
    tokens) makes models with different vocabularies comparable.
    """
    if num_chars <= 0:
        raise ValueError("bits per character needs at least one character")
    return nll_nats / (math.log(2) * num_chars)


def summed_token_nll(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> tuple[float, int]:
    """(sum of -log p(label), number of scored positions) for next-token logits already aligned to labels.

    ``logits``: [..., V] at the positions that predict ``labels`` [...]; positions with ``ignore_index``
    are not scored. Computed in float32 so bf16 models do not lose the sum.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1)
    nll = torch.nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index, reduction="sum")
    return float(nll), int((flat_labels != ignore_index).sum())


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan

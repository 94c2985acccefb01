"""The metric functions against hand-worked cases."""

import math

import pytest
import torch

from lep_plugin.math import metrics


def test_sentence_copy_score_is_symmetric_length_ratio():
    assert metrics.sentence_copy_score(10, 10) == 1.0
    assert metrics.sentence_copy_score(5, 10) == 0.5  # stopped half way
    assert metrics.sentence_copy_score(40, 10) == 0.25  # ran on to 4x the length
    assert metrics.sentence_copy_score(0, 10) == 0.0
    assert metrics.sentence_copy_score(0, 0) == 1.0
    with pytest.raises(ValueError):
        metrics.sentence_copy_score(-1, 3)


def test_paragraph_copy_matched_fraction_by_hand():
    source = "abcdefghij" * 20  # 200 chars: long enough that difflib's autojunk would have kicked in
    assert metrics.matched_fraction(source, source) == 1.0
    assert metrics.paragraph_copy_score(source, source) == 1.0
    # one wrong character in 200: 199/200 = 0.995 >= 0.99
    wrong1 = "X" + source[1:]
    assert metrics.matched_fraction(wrong1, source) == pytest.approx(199 / 200)
    assert metrics.paragraph_copy_score(wrong1, source) == 1.0
    # three wrong characters: 197/200 = 0.985 < 0.99
    wrong3 = "XYZ" + source[3:]
    assert metrics.matched_fraction(wrong3, source) == pytest.approx(197 / 200)
    assert metrics.paragraph_copy_score(wrong3, source) == 0.0
    # a prediction with 5 extra chars: 200 matched over 205
    assert metrics.matched_fraction(source + "12345", source) == pytest.approx(200 / 205)
    assert metrics.paragraph_copy_score("", source) == 0.0


def test_chars_per_token_tokens_per_word_bits_per_char():
    assert metrics.chars_per_token(230, 100) == 2.3
    assert math.isnan(metrics.chars_per_token(5, 0))
    assert metrics.tokens_per_word(150, 100) == 1.5
    # 8 chars whose NLL is 8 * ln 2 nats: exactly one bit per char
    assert metrics.bits_per_character(8 * math.log(2), 8) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.bits_per_character(1.0, 0)


def test_summed_token_nll_uniform_and_ignored_positions():
    logits = torch.zeros(2, 3, 16)  # uniform over 16: ln 16 nats per token
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    nll, count = metrics.summed_token_nll(logits, labels)
    assert count == 3
    assert nll == pytest.approx(3 * math.log(16), rel=1e-6)

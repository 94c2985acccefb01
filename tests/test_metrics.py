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


def test_strict_copy_score_and_exact_match_by_hand():
    text = "Мама мыла раму, а папа читал газету."
    assert metrics.char_similarity(text, text) == 1.0
    assert metrics.exact_match(text, text) == 1.0
    assert metrics.char_similarity("", "") == 1.0
    assert metrics.char_similarity("", text) == 0.0 and metrics.char_similarity(text, "") == 0.0
    # 3 of 4 characters matched in order: 2*3 / (4 + 4)
    assert metrics.char_similarity("abce", "abcd") == pytest.approx(0.75)
    # stopping half way or running on to twice the length both cost (Darumeru's paragraph score gives a
    # correct prefix 1.0: matched share of the prediction)
    assert metrics.char_similarity(text[:18], text) == pytest.approx(2 * 18 / (18 + len(text)))
    assert metrics.paragraph_copy_score(text[:18], text) == 1.0
    assert metrics.char_similarity(text + text, text) == pytest.approx(2 / 3)
    # order counts: the same characters shuffled by word are far from a copy
    assert metrics.char_similarity(" ".join(reversed(text.split())), text) < 0.6
    assert metrics.exact_match(f"  {text.replace(' ', '  ')}\n", text) == 1.0  # spacing only
    assert metrics.exact_match(text[:-1] + "!", text) == 0.0
    assert metrics.matched_chars("xabcx", "abc") == 3 and metrics.matched_chars("", "abc") == 0


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_unrelated_text_scores_near_the_strict_chance_level(lang, shared_data):
    """On real held-out sentences: the chance level (each answered with the next sample) is what any other
    unrelated pairing gets, far below a copy; Darumeru's length score gives the same wrong answers ~0.5."""
    from lep_plugin.evaluation.tasks import load_copy_tasks

    sentences = load_copy_tasks(shared_data / lang / "heldout.jsonl", lang, 32, pool_chars=200_000).sentences
    chance = metrics.chance_level(metrics.char_similarity, sentences)
    assert 0.1 < chance < 0.35, chance
    unrelated = metrics.mean([metrics.char_similarity(sentences[(i + 5) % 32], s) for i, s in enumerate(sentences)])
    assert unrelated == pytest.approx(chance, abs=0.06)
    assert metrics.chance_level(metrics.exact_match, sentences) == 0.0
    by_length = metrics.chance_level(
        lambda w, r: metrics.sentence_copy_score(len(w.split()), len(r.split())), sentences
    )
    assert by_length > chance + 0.2  # fluent nonsense of the right length: why the strict score exists
    # one word changed in every sentence is still a near copy, far above chance
    edited = [s.replace(s.split()[1], "X", 1) for s in sentences]
    assert metrics.mean([metrics.char_similarity(e, s) for e, s in zip(edited, sentences)]) > 0.85


def test_chance_level_answers_with_the_next_sample():
    assert metrics.wrong_answers(["a", "b", "c"]) == ["b", "c", "a"]
    assert metrics.wrong_answers(["a"]) == []
    assert math.isnan(metrics.chance_level(metrics.exact_match, ["a"]))
    assert metrics.chance_level(metrics.exact_match, ["a", "a", "b"]) == pytest.approx(1 / 3)

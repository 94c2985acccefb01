"""The repetition data builder of the copier base (lep_plugin.demo.repetition): pure functions on strings."""

import json
import random

import pytest
import torch

from lep_plugin.common.corpus import iter_texts
from lep_plugin.demo.repetition import (
    RepetitionOptions,
    random_token_rows,
    repeat_passage,
    repetition_texts,
    windows,
    write_repetition_corpus,
)

TEXT = (
    "Когда у Лебедевых ночью загорелась баня, Пётр Семёнович первым прибежал с вёдрами. "
    "Соседи проснулись не сразу; кто-то звонил в колокол, кто-то искал лестницу, а дети смотрели с крыльца. "
    "К утру от бани остались только обгоревшие брёвна и запах дыма над огородами."
)


def test_windows_cover_the_text_in_order_and_end_before_a_word():
    pieces = list(windows(TEXT, 60))
    assert " ".join(pieces).split() == TEXT.split()  # no word lost, cut or reordered
    assert len(pieces) > 3
    assert all(len(p) < 60 + 20 for p in pieces)


def test_a_repeated_passage_comes_back_after_a_gap_and_nothing_else_changes():
    options = RepetitionOptions(passage_chars=(20, 40), gap_chars=(10, 30))
    for seed in range(20):
        out = repeat_passage(TEXT, random.Random(seed), options)
        words, original = out.split(), TEXT.split()
        extra = len(words) - len(original)
        assert extra >= 2  # at least a few words written again
        # the inserted words are a copy of words that came earlier, and removing them gives the text back
        found = False
        for at in range(len(words) - extra + 1):
            if words[:at] + words[at + extra :] == original:
                inserted = words[at : at + extra]
                before = " ".join(words[:at])
                found = " ".join(inserted) in before
                if found:
                    break
        assert found, out


def test_a_window_too_short_for_passage_and_gap_is_kept_as_it_is():
    assert repeat_passage("Коротко.", random.Random(0), RepetitionOptions()) == "Коротко."


def test_the_share_of_repeating_windows_and_the_seed(shared_data):
    texts = list(iter_texts([shared_data / "ru" / "train.jsonl"], max_chars=200_000))
    options = RepetitionOptions(share=0.5, window_chars=200)
    plain = list(windows_of(texts, options))
    first = list(repetition_texts(texts, options, seed=3))
    assert first == list(repetition_texts(texts, options, seed=3))  # same seed, same corpus
    assert first != list(repetition_texts(texts, options, seed=4))
    assert len(first) == len(plain) > 500
    changed = sum(a != b for a, b in zip(first, plain)) / len(plain)
    assert 0.4 < changed < 0.6
    none = list(repetition_texts(texts, options.model_copy(update={"share": 0.0}), seed=3))
    assert none == plain


def windows_of(texts, options):
    for text in texts:
        yield from windows(text, options.window_chars)


def test_the_corpus_file_is_what_axolotl_completion_datasets_read(tmp_path):
    out = write_repetition_corpus([TEXT] * 3, tmp_path / "rep.jsonl", RepetitionOptions(window_chars=80), seed=0)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records and all(set(r) == {"text"} and r["text"] for r in records)


def test_random_token_rows_repeat_their_string_and_draw_from_the_given_ids():
    ids = torch.arange(100, 200)
    rows = random_token_rows(ids, rows=4, length=7, times=3, generator=torch.Generator().manual_seed(0))
    assert rows.shape == (4, 21)
    assert torch.equal(rows[:, :7], rows[:, 7:14]) and torch.equal(rows[:, :7], rows[:, 14:])
    assert bool(((rows >= 100) & (rows < 200)).all())
    assert len(set(rows[:, :7].flatten().tolist())) > 7  # rows differ from one another


def test_options_are_checked():
    with pytest.raises(ValueError):
        RepetitionOptions(share=1.5)

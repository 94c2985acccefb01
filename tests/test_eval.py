"""Evaluation (issue 4): metric arithmetic, bits per character, copy scores of a trained copier vs a random
model through `lep eval`, and the training callback under a real transformers Trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _eval_helpers import build_word_tokenizer, lexicon, random_model, synthetic_documents, train_copier, write_jsonl
from lep_plugin.cli.lep import main
from lep_plugin.io.evaluate import bits_per_char
from lep_plugin.math import metrics


def test_metrics_hand_worked():
    assert metrics.sentence_copy_score(10, 10) == 1.0
    assert metrics.sentence_copy_score(5, 10) == 0.5 and metrics.sentence_copy_score(20, 10) == 0.5
    assert metrics.sentence_copy_score(0, 10) == 0.0
    source = "Мороз и солнце; день чудесный."
    assert metrics.paragraph_copy_score(source, source) == 1.0
    assert metrics.matched_fraction(source + " x", source) == pytest.approx(len(source) / (len(source) + 2))
    assert metrics.paragraph_copy_score(source[:-3] + "!!!", source) == 0.0  # 27/30 matched < 0.99
    assert metrics.chars_per_token(30, 10) == 3.0 and metrics.tokens_per_word(12, 4) == 3.0
    assert metrics.bits_per_character(100 * math.log(2), 50) == pytest.approx(2.0)


def test_bits_per_char_of_a_uniform_model_is_closed_form(tiny_mistral, ru_heldout):
    """A model with a zero lm_head predicts uniformly over V: bpc = tokens · log2 V / characters, whatever
    the window cuts (every token is scored exactly once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fixtures import read_texts

    model = AutoModelForCausalLM.from_pretrained(tiny_mistral)
    tok = AutoTokenizer.from_pretrained(tiny_mistral)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    texts = [t[:600] for t in read_texts(ru_heldout, 4)]
    tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    expected = tokens * math.log2(model.config.vocab_size) / sum(map(len, texts))
    for window in (1024, 37):
        assert bits_per_char(model, tok, texts, window=window) == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def copier_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("copier")
    words = lexicon()
    tok = build_word_tokenizer(root / "tok", words)
    heldout = write_jsonl(root / "heldout.jsonl", synthetic_documents(words, 12, seed=1))
    copier = train_copier(tok, root / "copier", steps=300)
    rand = random_model(tok, root / "random")
    return root, heldout, copier, rand


def test_copier_scores_high_and_random_model_low(copier_setup, capsys):
    root, heldout, copier, rand = copier_setup
    capsys.readouterr()
    main(["eval", str(copier), str(rand), "--text", str(heldout), "--samples", "6",
          "--max-new-tokens-paragraph", "80", "--bpc-chars", "2000",
          "--json", str(root / "eval.json"), "--plot", str(root / "eval.png")])
    table = capsys.readouterr().out
    assert "| copier" in table and "| random" in table
    results = {r["model"]: r["texts"] for r in json.loads((root / "eval.json").read_text())["results"]}
    copier_scores, random_scores = next(iter(results["copier"].values())), next(iter(results["random"].values()))
    # measured: copier 0.75-1.0 (CPU training is not bit-reproducible across thread counts), random 0.05
    assert copier_scores["sentence_copy"] >= 0.7, copier_scores
    # (a 300-step copier is not yet exact over whole 40-word paragraphs: that score is only compared)
    assert copier_scores["paragraph_copy"] >= random_scores["paragraph_copy"]
    assert random_scores["sentence_copy"] <= 0.3 and random_scores["paragraph_copy"] == 0.0, random_scores
    assert (root / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_bad_input(copier_setup, tmp_path, capsys):
    _, heldout, copier, _ = copier_setup
    (tmp_path / "empty.jsonl").write_text("")
    for argv, expected in (
        (["eval", str(tmp_path / "missing"), "--text", str(heldout)], "does not exist"),
        (["eval", str(copier), "--text", str(tmp_path / "empty.jsonl")], "empty"),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_callback_logs_into_a_trainer(copier_setup, tmp_path):
    """The callback under a plain transformers Trainer: numbers in log_history and a JSON history."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from lep_plugin.plugin.eval_callback import HISTORY_FILE, build_eval_callback

    _, heldout, copier, _ = copier_setup
    tok = AutoTokenizer.from_pretrained(copier)
    model = AutoModelForCausalLM.from_pretrained(copier)
    ids = tok("ba be bi " * 8, add_special_tokens=True)["input_ids"]
    data = Dataset.from_dict({"input_ids": [ids] * 8, "labels": [ids] * 8})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, report_to=[],
                             save_strategy="no", logging_steps=1, use_cpu=True, learning_rate=1e-5)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    callback = build_eval_callback({"texts": [str(heldout)], "every_n_steps": 2, "samples": 2, "paragraphs": False,
                                    "bpc_chars": 500}, tok, tmp_path, trainer=trainer)
    trainer.add_callback(callback)
    trainer.train()
    logged = [h for h in trainer.state.log_history if any(k.startswith("lep_eval/") for k in h)]
    assert [h["step"] for h in logged] == [2, 4]
    history = json.loads((tmp_path / HISTORY_FILE).read_text())
    assert [h["step"] for h in history] == [2, 4]
    assert all(0.0 <= next(iter(h["texts"].values()))["sentence_copy"] <= 1.0 for h in history)

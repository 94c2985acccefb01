"""The demo's tiny-model makers at a very small size (the full demo runs with `make demo`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import generate_from_chat

from lep_plugin.common.corpus import iter_texts
from lep_plugin.demo.models import repeat_losses, train_base, train_instruct
from lep_plugin.demo.pipeline import DEMO_DATA, SHARED, corpora
from lep_plugin.demo.repetition import RepetitionOptions


def test_tiny_base_and_instruct_models_train_and_chat(mistral_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lines: list[str] = []
    base = train_base(
        mistral_tokenizer,
        [DEMO_DATA / "en.jsonl"],
        tmp_path / "base",
        seconds=4,
        log=lines.append,
        hidden=32,
        layers=1,
        repetition=RepetitionOptions(share=0.5),
        copy_warmup_seconds=2,
    )
    instruct = train_instruct(
        base, DEMO_DATA / "instructions.jsonl", tmp_path / "instruct", seconds=4, log=lines.append
    )
    assert any(line.startswith("  base:") for line in lines) and any(line.startswith("  instruct:") for line in lines)
    assert any(line.startswith("  copy warm-up:") for line in lines)
    losses = repeat_losses(base, iter_texts([DEMO_DATA / "ru.jsonl"]), docs=2, length=20)
    assert losses["ratio"] == pytest.approx(losses["second"] / losses["first"]) and losses["first"] > 0
    model = AutoModelForCausalLM.from_pretrained(instruct)
    tok = AutoTokenizer.from_pretrained(instruct)
    base_model = AutoModelForCausalLM.from_pretrained(base)
    assert any(not (a == b).all() for a, b in zip(model.parameters(), base_model.parameters())), (
        "instruct tuning changed nothing"
    )
    ids, generated = generate_from_chat(model, tok, "Повтори: привет", max_new_tokens=4)
    assert generated.shape[1] > ids.shape[1]


def test_demo_corpora_roles(shared_data):
    found = corpora(())  # ../shared/data is beside the project in tests
    assert found["target"] == [str(SHARED / "ru" / "train.jsonl")] and len(found["heldout"]) == 2
    given = corpora(("my.jsonl",))
    assert given["target"] == given["heldout"] == ["my.jsonl"]
    assert all(Path(p).is_file() for p in given["lm"] + given["instructions"])  # shipped with the package


def test_the_demo_summary_says_what_each_lep_model_keeps_above_chance():
    """retention = (model − its chance) / (instruct − chance); null when the instruct model is not above chance."""
    from lep_plugin.demo.pipeline import strict_copy_summary

    def record(model: str, strict: float, chance: float) -> dict:
        return {
            "model": model,
            "texts": {"ru/heldout": {"sentence_strict": strict, "chance": {"sentence_strict": chance}}},
        }

    summary = strict_copy_summary(
        [record("instruct", 0.8, 0.2), record("lep/swap", 0.5, 0.2), record("lep/conversion", 0.2, 0.2)]
    )
    assert summary["instruct"]["ru_strict"] == 0.8 and summary["chance"]["ru_strict"] == 0.2
    assert summary["retention"]["lep/swap"]["ru_strict"] == pytest.approx(0.5)
    assert summary["retention"]["lep/conversion"]["ru_strict"] == pytest.approx(0.0)
    flat = strict_copy_summary([record("instruct", 0.2, 0.25), record("lep/swap", 0.5, 0.2)])
    assert flat["retention"]["lep/swap"]["ru_strict"] is None

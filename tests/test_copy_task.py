"""`lep data copy-task`: copy-instruction examples from real corpora (../shared Dostoevsky heldout and the
demo corpus shipped in the package), through the real `lep` command line in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from lep_plugin.calibration.copy_task import (
    PROMPTS,
    CopyTaskOptions,
    build_copy_examples,
)
from lep_plugin.common.text import detect_language, split_sentences, text_units

DEMO = Path(__file__).resolve().parents[1] / "lep_plugin" / "data" / "demo"


def lep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lep_plugin.cli.lep", *args], capture_output=True, text=True, timeout=300
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def source_paragraphs(*files: Path) -> set[str]:
    return {
        line.strip() for f in files for record in read_jsonl(f) for line in record["text"].split("\n") if line.strip()
    }


def test_split_sentences_russian_and_english_rules():
    assert split_sentences("— Привет, — сказал он. — Как дела? Никто не ответил…") == [
        "— Привет, — сказал он.",
        "— Как дела?",
        "Никто не ответил…",
    ]
    # a lower-case word after "?»" or "!" + dash continues the sentence; initials and abbreviations do not cut
    assert split_sentences("«Куда?» — спросил он. Это сказал А. С. Пушкин, т. е. поэт. Всё!") == [
        "«Куда?» — спросил он.",
        "Это сказал А. С. Пушкин, т. е. поэт.",
        "Всё!",
    ]
    assert split_sentences('Mr. Brown met Dr. Lee at 5 p.m. They left! Why?! "Because." 42 came.') == [
        "Mr. Brown met Dr. Lee at 5 p.m.",
        "They left!",
        "Why?!",
        '"Because."',
        "42 came.",
    ]
    assert list(text_units("  Один. Два три.\n\nЧетыре  \n", "paragraph")) == ["Один. Два три.", "Четыре"]


def test_language_and_options():
    assert detect_language("Тихо падает снег.") == "ru"
    assert detect_language("Snow falls quietly.") == "en"
    assert CopyTaskOptions(language_prompts="en, ru").language_prompts == ("en", "ru")
    assert CopyTaskOptions(language_prompts=["ru", "en,ru"]).language_prompts == ("ru", "en")
    with pytest.raises(ValueError, match="unknown language"):
        CopyTaskOptions(language_prompts="ru,de")
    with pytest.raises(ValueError, match="min_chars"):
        CopyTaskOptions(min_chars=50, max_chars=10)


def test_sentence_examples_from_heldout_and_demo_are_exact_and_deterministic(tmp_path, ru_heldout):
    ru_demo, en_demo = DEMO / "ru.jsonl", DEMO / "en.jsonl"
    args = ["--text", str(ru_heldout), "--text", str(ru_demo), "--text", str(en_demo), "--samples", "300"]
    out1, out2, out3 = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    first = lep("data", "copy-task", *args, "--seed", "7", "--output", str(out1))
    assert first.returncode == 0, first.stderr
    assert "wrote 300 copy examples" in first.stderr
    assert lep("data", "copy-task", *args, "--seed", "7", "--output", str(out2)).returncode == 0
    assert lep("data", "copy-task", *args, "--seed", "8", "--output", str(out3)).returncode == 0
    assert out1.read_bytes() == out2.read_bytes()  # same seed, same file
    assert out1.read_bytes() != out3.read_bytes()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left

    examples = read_jsonl(out1)
    assert len(examples) == 300
    paragraphs = source_paragraphs(ru_heldout, ru_demo, en_demo)
    sentences = {s for p in paragraphs for s in split_sentences(p)}
    answers = [e["messages"][1]["content"] for e in examples]
    assert len(set(answers)) == 300  # sampled without replacement
    languages = set()
    for example in examples:
        user, assistant = example["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        text = assistant["content"]
        assert text in sentences
        assert any(text in p for p in paragraphs)  # verbatim: not re-joined or normalised
        assert 10 <= len(text) <= 1000
        lang = detect_language(text)
        languages.add(lang)
        # the request is in the text's language and wraps the text unchanged
        assert user["content"] in {prompt.replace("{text}", text) for prompt in PROMPTS[lang]}
    assert "ru" in languages
    # several wordings were used
    assert len({e["messages"][0]["content"].replace(e["messages"][1]["content"], "") for e in examples}) >= 5


def test_every_demo_sentence_once_with_a_request_in_its_language():
    texts = [r["text"] for name in ("ru.jsonl", "en.jsonl") for r in read_jsonl(DEMO / name)]
    examples, candidates = build_copy_examples(texts, CopyTaskOptions(min_chars=1, max_chars=10_000))
    expected = {s for t in texts for s in text_units(t, "sentence")}
    assert candidates == len(examples) == len(expected)
    assert {e["messages"][1]["content"] for e in examples} == expected
    by_language = {"ru": 0, "en": 0}
    for e in examples:
        text = e["messages"][1]["content"]
        lang = detect_language(text)
        by_language[lang] += 1
        assert e["messages"][0]["content"] in {p.replace("{text}", text) for p in PROMPTS[lang]}
    assert min(by_language.values()) > 100
    # same seed, same list; other seed, other order
    assert build_copy_examples(texts, CopyTaskOptions(min_chars=1, max_chars=10_000))[0] == examples
    assert build_copy_examples(texts, CopyTaskOptions(min_chars=1, max_chars=10_000, seed=1))[0] != examples


def test_paragraph_examples_cover_every_demo_paragraph(tmp_path):
    out = tmp_path / "para.jsonl"
    result = lep(
        "data", "copy-task", "--text", str(DEMO / "en.jsonl"), "--unit", "paragraph",
        "--max-chars", "5000", "--min-chars", "1", "--output", str(out), "--language-prompts", "en",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answers = [e["messages"][1]["content"] for e in read_jsonl(out)]
    assert sorted(answers) == sorted(source_paragraphs(DEMO / "en.jsonl"))


def test_txt_input_and_cross_language_prompt(tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("Первая строка про погоду. Вторая фраза здесь.\n\nThird line in English.\n", encoding="utf-8")
    options = CopyTaskOptions(language_prompts="en", min_chars=5)
    examples, candidates = build_copy_examples(
        ["Первая строка про погоду. Вторая фраза здесь.", "Third line in English."], options
    )
    assert candidates == 3
    # only English requests allowed: the Russian sentences get an English request
    assert all(e["messages"][0]["content"].replace(e["messages"][1]["content"], "") in
               {p.replace("{text}", "") for p in PROMPTS["en"]} for e in examples)  # fmt: skip
    out = tmp_path / "out.jsonl"
    result = lep("data", "copy-task", "--text", str(src), "--output", str(out), "--min-chars", "5", "--samples", "10")
    assert result.returncode == 0, result.stderr
    assert "only 3 distinct sentences" in result.stderr
    assert sorted(e["messages"][1]["content"] for e in read_jsonl(out)) == sorted(
        ["Первая строка про погоду.", "Вторая фраза здесь.", "Third line in English."]
    )


def _bad(tmp_path: Path, *args: str) -> str:
    before = sorted(p.name for p in tmp_path.iterdir())
    result = lep("data", "copy-task", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp file
    return lines[0]


def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    assert "does not exist" in _bad(tmp_path, "--text", str(tmp_path / "missing.jsonl"), "--output", str(out))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert "is empty" in _bad(tmp_path, "--text", str(empty), "--output", str(out))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n", encoding="utf-8")
    assert "no sentence" in _bad(tmp_path, "--text", str(blank), "--output", str(out))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Ceci n'est pas de l'UTF-8: café, où, déjà.\n".encode("latin-1"))
    assert "not UTF-8" in _bad(tmp_path, "--text", str(latin1), "--output", str(out))
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"body": "Текст без нужного поля."}\n', encoding="utf-8")
    assert "--text-field" in _bad(tmp_path, "--text", str(no_field), "--output", str(out))
    assert "--text" in _bad(tmp_path, "--output", str(out))

    out.write_text("keep me\n", encoding="utf-8")
    demo = str(DEMO / "ru.jsonl")
    assert "already exists" in _bad(tmp_path, "--text", demo, "--output", str(out))
    assert out.read_text(encoding="utf-8") == "keep me\n"
    assert "overlaps the text input" in _bad(tmp_path, "--text", str(out), "--output", str(out), "--force")
    assert out.read_text(encoding="utf-8") == "keep me\n"
    # --force replaces it
    result = lep("data", "copy-task", "--text", demo, "--output", str(out), "--force", "--samples", "5")
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(out)) == 5


def test_demo_corpus_is_valid():
    """The shipped demo corpus: every line parses, NFC text, no duplicates, size floors of issue 5."""
    for name, floor in (("ru.jsonl", 200_000), ("en.jsonl", 40_000)):
        path = DEMO / name
        assert path.stat().st_size >= floor, (name, path.stat().st_size)
        records = read_jsonl(path)
        texts = [r["text"] for r in records]
        assert len(set(texts)) == len(texts)
        for record in records:
            assert set(record) == {"text", "title"}
            assert 0 < len(record["text"]) <= 4000
            assert unicodedata.is_normalized("NFC", record["text"])
        lang = "ru" if name == "ru.jsonl" else "en"
        assert all(detect_language(t) == lang for t in texts)
    instructions = read_jsonl(DEMO / "instructions.jsonl")
    assert len(instructions) >= 500
    for example in instructions:
        roles = [m["role"] for m in example["messages"]]
        assert roles == ["user", "assistant"]
        assert all(m["content"] and unicodedata.is_normalized("NFC", m["content"]) for m in example["messages"])

"""Copy-instruction examples for the calibration step (the optional LoRA of arXiv:2412.21140, §4).

Each example is one Axolotl chat-format record::

    {"messages": [{"role": "user", "content": "<request to repeat>\\n\\n<text>"},
                  {"role": "assistant", "content": "<text>"}]}

where ``<text>`` is one *unit* of a source corpus, a sentence or a paragraph, copied byte for byte, and
the request is phrased in the unit's language (Russian or English) in one of several wordings picked
by a seeded random generator, so the same inputs and seed always give the same file.

Units never cross a line break: paragraphs and sentences are those of :mod:`lep_plugin.common.text`.
The pure part (:func:`copy_example`, :func:`build_copy_examples`) works on strings;
:func:`write_copy_task` reads the files and writes the output atomically.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lep_plugin.common.corpus import expand_corpus, iter_texts
from lep_plugin.common.fs import check_no_overlap, check_output_file, write_jsonl_atomic
from lep_plugin.common.text import Unit, detect_language, text_units
from lep_plugin.errors import LEPError

LANGUAGES = ("ru", "en")

# Requests to copy, per language. "{text}" marks where the unit goes; most wordings put the text after
# the request, a few before it, so a model cannot learn to copy only from one position.
PROMPTS: dict[str, tuple[str, ...]] = {
    "ru": (
        "Повтори этот текст дословно:\n\n{text}",
        "Перепиши следующий текст без изменений.\n\n{text}",
        "Скопируй текст ниже в точности, ничего не добавляя и не убирая.\n\n{text}",
        "Повтори, пожалуйста, слово в слово:\n\n{text}",
        "Напиши ровно то же самое, что написано ниже.\n\n{text}",
        "Вот текст:\n\n{text}\n\nПовтори его точно, символ в символ.",
        "Воспроизведи этот фрагмент без единого изменения:\n\n{text}",
        "{text}\n\nПерепиши это дословно.",
    ),
    "en": (
        "Repeat this text exactly:\n\n{text}",
        "Copy the following text without any changes.\n\n{text}",
        "Rewrite the text below word for word, adding nothing and leaving nothing out.\n\n{text}",
        "Please repeat, verbatim:\n\n{text}",
        "Write exactly the same thing as written below.\n\n{text}",
        "Here is a text:\n\n{text}\n\nRepeat it exactly, character for character.",
        "Reproduce this passage without a single change:\n\n{text}",
        "{text}\n\nCopy this out verbatim.",
    ),
}


class CopyTaskOptions(BaseModel):
    """How copy examples are made from a corpus (the ``lep data copy-task`` options)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: int | None = Field(
        None, ge=1, description="Number of examples (sampled without replacement); all units if not given."
    )
    seed: int = Field(0, description="Seed for sampling, order and wording; same inputs + seed = same file.")
    unit: Unit = Field("sentence", description="What one example copies.")
    language_prompts: tuple[str, ...] = Field(
        ",".join(LANGUAGES),
        validate_default=True,
        description="Languages the request may be phrased in (comma-separated, from ru,en); a text gets its own "
        "language if listed, else the first one.",
    )
    text_field: str = Field("text", description="Field holding the text in .jsonl inputs.")
    min_chars: int = Field(10, ge=1, description="Skip units shorter than this many characters.")
    max_chars: int = Field(1000, ge=1, description="Skip units longer than this many characters (never truncated).")

    @field_validator("language_prompts", mode="before")
    @classmethod
    def _split_languages(cls, value):
        if isinstance(value, str):
            value = [value]
        langs: list[str] = []
        for item in value:
            for lang in str(item).split(","):
                lang = lang.strip().lower()
                if not lang:
                    continue
                if lang not in PROMPTS:
                    raise ValueError(f"unknown language {lang!r} (known: {', '.join(PROMPTS)})")
                if lang not in langs:
                    langs.append(lang)
        if not langs:
            raise ValueError("give at least one language")
        return tuple(langs)

    @field_validator("max_chars")
    @classmethod
    def _max_over_min(cls, value, info):
        low = info.data.get("min_chars")
        if low is not None and value < low:
            raise ValueError(f"must be at least min_chars ({low})")
        return value


# --- examples --------------------------------------------------------------------------------------


def copy_example(text: str, prompt: str) -> dict:
    """One chat record: ``prompt`` (with ``{text}``) as the user turn, ``text`` verbatim as the answer."""
    return {
        "messages": [
            {"role": "user", "content": prompt.replace("{text}", text)},
            {"role": "assistant", "content": text},
        ]
    }


def _sample_units(units: Iterable[str], options: CopyTaskOptions) -> tuple[list[str], int]:
    """Distinct units that pass the length filter: all of them, or a seeded reservoir sample of
    ``options.samples`` (streaming, so memory is bounded by the sample, plus 8 bytes per distinct unit
    for duplicate detection). Returns (sample in seeded random order, number of candidates seen)."""
    rng = random.Random(options.seed)
    seen: set[bytes] = set()
    chosen: list[str] = []
    count = 0
    for unit in units:
        if not (options.min_chars <= len(unit) <= options.max_chars):
            continue
        key = hashlib.blake2b(unit.encode("utf-8"), digest_size=8).digest()
        if key in seen:
            continue
        seen.add(key)
        count += 1
        if options.samples is None or len(chosen) < options.samples:
            chosen.append(unit)
        else:
            slot = rng.randrange(count)
            if slot < options.samples:
                chosen[slot] = unit
    rng.shuffle(chosen)
    return chosen, count


def build_copy_examples(texts: Iterable[str], options: CopyTaskOptions) -> tuple[list[dict], int]:
    """Copy examples from documents ``texts`` (pure: no I/O) and the number of distinct units that
    could have been used. Raises :class:`LEPError` if no unit fits."""
    units = (u for text in texts for u in text_units(text, options.unit))
    chosen, count = _sample_units(units, options)
    if not chosen:
        raise LEPError(f"no {options.unit} of {options.min_chars}-{options.max_chars} characters found in the input")
    # A second generator for the wording, so the sample does not depend on the prompt list.
    wording = random.Random(f"copy-task-wording:{options.seed}")
    examples = []
    for unit in chosen:
        lang = detect_language(unit)
        if lang not in options.language_prompts:
            lang = options.language_prompts[0]
        examples.append(copy_example(unit, wording.choice(PROMPTS[lang])))
    return examples, count


# --- files -----------------------------------------------------------------------------------------


def write_copy_task(
    text_files: Iterable[str | os.PathLike], output: Path, options: CopyTaskOptions, force: bool = False
) -> dict[str, int]:
    """Read ``text_files`` (.jsonl with ``options.text_field`` or .txt; globs allowed), write the copy
    examples to ``output`` atomically. Returns counts: examples, candidates, and examples per language."""
    output = Path(output)
    # All checks before any reading, so a bad call fails at once and writes nothing.
    check_output_file(output, force)
    files = expand_corpus(text_files)
    check_no_overlap(output, [("text", path) for path in files])
    examples, candidates = build_copy_examples(iter_texts(files, options.text_field), options)
    written = write_jsonl_atomic(examples, output, force=force)
    languages = Counter(detect_language(e["messages"][1]["content"]) for e in examples)
    return {"examples": written, "candidates": candidates, **{f"texts_{k}": v for k, v in sorted(languages.items())}}


# ---------------------------------------------------------------------- a copy-chat mixture for tiny models

# Share of the copy examples per (text language, unit, language of the request). Half of the Russian
# texts are asked for in English, as the evaluation does and as users of an English-first model do.
# English has only the small shipped text, so its units come back with a second seed's wording.
# Russian sentences are the largest share: with 45 % of them a run's instruct model copied at 0.49, with
# about 57 % (an earlier run) at 0.81 — copying in a model this small forms or not with the mixture.
COPY_MIX = (
    ("ru", "sentence", "ru", 0.29),
    ("ru", "sentence", "en", 0.29),
    ("en", "sentence", "en", 0.22),
    ("ru", "paragraph", "ru", 0.06),
    ("ru", "paragraph", "en", 0.06),
    ("en", "paragraph", "en", 0.08),
)
UNIT_CHARS = {"sentence": (20, 300), "paragraph": (20, 700)}


def copy_mixture(texts: dict[str, list[str]], total: int) -> tuple[list[dict], Counter]:
    """About ``total`` copy chats from the training texts of each language, in COPY_MIX proportions, and
    their count per (text language, unit, request language)."""
    records: list[dict] = []
    counts: Counter = Counter()
    for seed, (lang, unit, request, share) in enumerate(COPY_MIX):
        wanted = round(total * share)
        low, high = UNIT_CHARS[unit]
        while wanted > 0:  # a small text gives fewer units than asked: take them again with another wording
            options = CopyTaskOptions(
                samples=wanted, seed=seed, unit=unit, language_prompts=request, min_chars=low, max_chars=high
            )
            examples, _ = build_copy_examples(texts[lang], options)
            records += examples
            counts[(lang, unit, request)] += len(examples)
            wanted -= len(examples)
            seed += len(COPY_MIX)
    return records, counts


def mixture_summary(counts: Counter) -> str:
    """The mixture's counts in words, for logs and reports."""
    return ", ".join(f"{n} {lang} {unit}s asked in {request}" for (lang, unit, request), n in counts.items())

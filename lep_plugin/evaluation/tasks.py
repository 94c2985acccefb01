"""Copy-task samples and prompts built from any held-out text (``.jsonl`` with a text field, or ``.txt``).

Splitting is deterministic and sampling is seeded, so two models (or two checkpoints of one run) are
always asked to copy exactly the same sentences and paragraphs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lep_plugin.common.corpus import iter_texts
from lep_plugin.common.text import (
    count_words,
    normalise_space,
    paragraphs,
    split_sentences,
)
from lep_plugin.errors import LEPError

PromptStyle = Literal["auto", "base", "chat"]
Kind = Literal["sentence", "paragraph"]

# One instruction for every language: the copy task measures whether the model can reproduce the text,
# and the original Darumeru tasks also use a fixed instruction.
CHAT_INSTRUCTION = "Repeat the following text exactly, without any changes. Answer with the text only."
BASE_HEADER = "Repeat each text exactly."


@dataclass(frozen=True)
class CopyTasks:
    """The samples of one held-out file."""

    label: str
    path: Path
    sentences: tuple[str, ...]
    paragraphs: tuple[str, ...]
    shots: tuple[str, ...]  # few-shot examples for base models (sentences not among the samples)
    heldout: tuple[str, ...]  # whole documents for bits per character


def text_labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names of held-out files: the stem, or parent/stem where stems clash (ru/heldout)."""
    stems = [Path(p).stem for p in paths]
    labels = [f"{Path(p).parent.name}/{Path(p).stem}" if stems.count(Path(p).stem) > 1 else Path(p).stem for p in paths]
    if len(set(labels)) != len(labels):
        raise LEPError(f"held-out text files must have distinct names: {', '.join(map(str, paths))}")
    return labels


def paragraph_samples(document: str, min_chars: int, max_chars: int) -> list[str]:
    """Single-line paragraphs of ``min_chars``..``max_chars`` characters.

    Consecutive short paragraphs (verse, dialogue) are joined with a space until the block is long
    enough. Whitespace is normalised so a sample never contains a newline (the base-model prompt ends a
    copy at the first newline).
    """
    out: list[str] = []
    block: list[str] = []
    size = 0
    for paragraph in paragraphs(document):
        paragraph = normalise_space(paragraph)
        block.append(paragraph)
        size += len(paragraph) + 1
        if size - 1 >= min_chars:
            joined = " ".join(block)
            if len(joined) <= max_chars:
                out.append(joined)
            block, size = [], 0
    return out


def sentence_samples(paragraph: str, min_chars: int, max_chars: int, min_words: int = 3) -> list[str]:
    """Sentences of a (single-line) paragraph within the length bounds."""
    return [s for s in split_sentences(paragraph) if min_chars <= len(s) <= max_chars and count_words(s) >= min_words]


def _scan(
    documents: Iterable[str], bpc_chars: int, sentence_chars: tuple[int, int], paragraph_chars: tuple[int, int]
) -> tuple[list[str], list[str], list[str]]:
    """Candidate paragraphs and sentences in document order, de-duplicated, and the first ``bpc_chars``
    characters as whole documents (the last one cut)."""
    paragraphs: dict[str, None] = {}
    sentences: dict[str, None] = {}
    heldout: list[str] = []
    seen = 0
    for document in documents:
        if seen < bpc_chars:
            heldout.append(document[: bpc_chars - seen])
            seen += len(heldout[-1])
        for paragraph in paragraph_samples(document, *paragraph_chars):
            paragraphs.setdefault(paragraph)
            for sentence in sentence_samples(paragraph, *sentence_chars):
                sentences.setdefault(sentence)
    return list(paragraphs), list(sentences), heldout


def load_copy_tasks(
    path: Path,
    label: str,
    samples: int,
    seed: int = 0,
    shots: int = 3,
    text_field: str = "text",
    pool_chars: int = 1_000_000,
    bpc_chars: int = 20_000,
    sentence_chars: tuple[int, int] = (20, 300),
    paragraph_chars: tuple[int, int] = (200, 1000),
) -> CopyTasks:
    """Seeded samples of ``samples`` sentences and paragraphs from the first ``pool_chars`` of ``path``.

    Candidates are taken in file order and de-duplicated; ``random.Random(seed)`` picks the samples and
    then the few-shot examples from the remaining sentences, so the result depends only on the file's
    content and the arguments. ``heldout`` is the file's first ``bpc_chars`` characters as whole documents
    (the last one cut), for bits per character.
    """
    path = Path(path)
    if not path.is_file():
        raise LEPError(f"held-out text file {path} does not exist")
    if path.stat().st_size == 0:
        raise LEPError(f"held-out text file {path} is empty")
    if samples < 1:
        raise LEPError("samples must be at least 1")
    documents = iter_texts([path], text_field=text_field, max_chars=max(pool_chars, bpc_chars))
    candidates, sentences, heldout = _scan(documents, bpc_chars, sentence_chars, paragraph_chars)
    if not heldout:
        raise LEPError(f"held-out text file {path} contains no text")
    if not sentences or not candidates:
        what = "sentences" if not sentences else "paragraphs"
        raise LEPError(
            f"held-out text file {path} has no {what} of usable length "
            f"(sentences {sentence_chars[0]}-{sentence_chars[1]} chars, "
            f"paragraphs {paragraph_chars[0]}-{paragraph_chars[1]} chars)"
        )
    rng = random.Random(seed)
    sentence_pool = sentences
    picked_sentences = rng.sample(sentence_pool, min(samples, len(sentence_pool)))
    picked_paragraphs = rng.sample(candidates, min(samples, len(candidates)))
    chosen = set(picked_sentences)
    rest = [s for s in sentence_pool if s not in chosen] or sentence_pool
    picked_shots = rng.sample(rest, min(shots, len(rest)))
    return CopyTasks(
        label=label,
        path=path,
        sentences=tuple(picked_sentences),
        paragraphs=tuple(picked_paragraphs),
        shots=tuple(picked_shots),
        heldout=tuple(heldout),
    )


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_prompt_style(tokenizer, style: PromptStyle = "auto") -> Literal["base", "chat"]:
    """'chat' (zero-shot through the chat template) for instruct models, 'base' (plain few-shot) otherwise.

    'auto' decides by whether the tokenizer has a chat template; an explicit style overrides (a base
    tokenizer may ship a template, and an instruct model can be probed with the plain prompt).
    """
    if style == "auto":
        return "chat" if has_chat_template(tokenizer) else "base"
    if style == "chat" and not has_chat_template(tokenizer):
        raise LEPError("prompt style 'chat' needs a tokenizer with a chat template (use 'base')")
    return style


def base_prompt(text: str, shots: Sequence[str]) -> str:
    """Plain few-shot prompt; the model's copy ends at the first newline."""
    parts = [BASE_HEADER, ""]
    for shot in shots:
        parts += [f"Text: {shot}", f"Copy: {shot}", ""]
    parts += [f"Text: {text}", "Copy:"]
    return "\n".join(parts)


def chat_messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{CHAT_INSTRUCTION}\n\n{text}"}]


def copy_prompt_ids(tokenizer, text: str, style: Literal["base", "chat"], shots: Sequence[str] = ()) -> list[int]:
    """Token ids of the prompt asking the model to copy ``text``."""
    if style == "chat":
        rendered = tokenizer.apply_chat_template(chat_messages(text), tokenize=False, add_generation_prompt=True)
        # The template already writes BOS; encoding it again would double it.
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(base_prompt(text, shots), add_special_tokens=True)["input_ids"])
    # Some post-processors also append EOS; a prompt must not end the document.
    if tokenizer.eos_token_id is not None and len(ids) > 1 and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids

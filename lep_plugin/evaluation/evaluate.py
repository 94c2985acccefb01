"""Running the label-free evaluation on a model: batched greedy copy tasks and bits per character.

Shared by ``lep eval`` (models loaded from disk) and the training callback (the model being trained).
The metric arithmetic lives in :mod:`lep_plugin.math.metrics`; here are the model calls.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from lep_plugin.common.devices import resolve_device
from lep_plugin.common.tokenizers import load_tokenizer, token_counts
from lep_plugin.errors import LEPError
from lep_plugin.evaluation.generate import (
    eos_token_ids,
    greedy_generate,
    inference_mode,
    model_device,
    newline_token_ids,
)
from lep_plugin.evaluation.settings import EvalSettings
from lep_plugin.evaluation.tasks import (
    CopyTasks,
    copy_prompt_ids,
    load_copy_tasks,
    resolve_prompt_style,
    text_labels,
)
from lep_plugin.math import metrics

# Copy-task and statistic names, in table order. Per copy task (sentence, paragraph): ``*_strict`` is the
# character similarity of output and reference (difflib ratio; the score to judge copying by), ``*_exact``
# exact match, ``*_copy`` Darumeru's score (token-count ratio for sentences, >= 99 % of the output's
# characters matched for paragraphs; kept to compare with the paper).
SCORES = ("strict", "exact", "copy")
COPY_METRICS = tuple(f"{kind}_{score}" for kind in ("sentence", "paragraph") for score in SCORES)
METRICS = (*COPY_METRICS, "bits_per_char", "chars_per_token", "tokens_per_word", "copied_chars_per_token")
# Short names of the copy metrics in a record's ``summary`` (``ru_strict`` = Russian sentence strict score).
SUMMARY_NAMES = {f"sentence_{score}": score for score in SCORES} | {
    f"paragraph_{score}": f"paragraph_{score}" for score in SCORES
}


def load_tasks(paths: Sequence[Path], settings: EvalSettings) -> list[CopyTasks]:
    """Copy-task samples of every held-out file (all checked before any model is loaded)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise LEPError("no held-out text file given (--text FILE)")
    return [
        load_copy_tasks(
            path,
            label,
            settings.samples,
            seed=settings.seed,
            shots=settings.shots,
            text_field=settings.text_field,
            bpc_chars=settings.bpc_chars,
        )
        for path, label in zip(paths, text_labels(paths))
    ]


def _clean_prediction(tokenizer, tokens: list[int], style: str) -> str:
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if style == "base":
        text = text.split("\n", 1)[0]  # the plain prompt's copy ends at the newline
    return text.strip()


def _count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def _copy_score(tokenizer, kind: str, prediction: str, reference: str) -> float:
    """Darumeru's score of one sample."""
    if kind == "sentence":
        return metrics.sentence_copy_score(_count_tokens(tokenizer, prediction), _count_tokens(tokenizer, reference))
    return metrics.paragraph_copy_score(prediction, reference)


def sample_scores(tokenizer, kind: str, prediction: str, reference: str) -> dict[str, float]:
    """``{kind}_strict``, ``{kind}_exact`` and ``{kind}_copy`` (Darumeru) of one output."""
    return {
        f"{kind}_strict": metrics.char_similarity(prediction, reference),
        f"{kind}_exact": metrics.exact_match(prediction, reference),
        f"{kind}_copy": _copy_score(tokenizer, kind, prediction, reference),
    }


def mean_scores(rows: Sequence[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    """The mean of each of ``names`` over per-sample score rows (nan without rows)."""
    return {name: metrics.mean([row[name] for row in rows]) for name in names}


def chance_scores(tokenizer, kind: str, references: Sequence[str]) -> dict[str, float]:
    """Each copy metric's chance level on these samples (:func:`metrics.wrong_answers`: every sample
    answered with the next one's text). The strict and exact levels depend on the texts only; Darumeru's
    sentence level counts tokens, so it differs from model to model when their tokenizers differ."""
    return {
        name: metrics.chance_level(lambda wrong, ref, n=name: sample_scores(tokenizer, kind, wrong, ref)[n], references)
        for name in (f"{kind}_{score}" for score in SCORES)
    }


def generation_budgets(tokenizer, references: Sequence[str], factor: float, cap: int) -> list[int]:
    """New tokens allowed per reference: ``factor`` x its token count + 1 (the end token), at most ``cap``.

    A copy needs the reference's tokens and an end token; a model that loops is cut at ``factor`` x the
    text instead of running to the cap (1,024 tokens for a 200-token paragraph was most of the time)."""
    return [max(1, min(cap, math.ceil(factor * _count_tokens(tokenizer, r)) + 1)) for r in references]


def copy_task_scores(
    model,
    tokenizer,
    tasks: CopyTasks,
    settings: EvalSettings,
    style: Literal["base", "chat"],
    progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:
    """Every copy metric, its chance level, copied characters per generated token and (if
    ``settings.log_samples``) every prompt, reference and output, on one file's samples."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    stop = set(eos_token_ids(model, tokenizer))
    if style == "base":
        stop |= newline_token_ids(tokenizer)
    copied_chars = gen_tokens = 0
    result: dict[str, Any] = {"chance": {}, "log": []}
    jobs = [("sentence", tasks.sentences, [settings.max_new_tokens_sentence] * len(tasks.sentences))]
    if settings.paragraphs:
        budgets = generation_budgets(
            tokenizer, tasks.paragraphs, settings.paragraph_budget, settings.max_new_tokens_paragraph
        )
        jobs.append(("paragraph", tasks.paragraphs, budgets))
    for kind, sources, limits in jobs:
        prompts = [copy_prompt_ids(tokenizer, s, style, tasks.shots) for s in sources]
        outputs = greedy_generate(model, prompts, limits, stop, pad_id, settings.batch_size, progress=progress)
        scores: list[dict[str, float]] = []
        for source, prompt, tokens, limit in zip(sources, prompts, outputs, limits):
            prediction = _clean_prediction(tokenizer, tokens, style)
            # only characters that match the reference count: a model that loops or rambles in long tokens
            # must not look like a compact tokenization
            copied_chars += metrics.matched_chars(prediction, source)
            gen_tokens += sum(1 for t in tokens if t not in stop)  # the tokens the model wrote, not a re-encoding
            scores.append(sample_scores(tokenizer, kind, prediction, source))
            if settings.log_samples:
                result["log"].append(
                    {
                        "task": f"{kind}_copy",
                        "prompt": tokenizer.decode(prompt),
                        "reference": source,
                        "output": prediction,
                        "score": scores[-1][f"{kind}_copy"],
                        "scores": scores[-1],
                        "new_tokens": len(tokens),
                        "limit": limit,  # new_tokens == limit: cut by the budget
                    }
                )
        result.update(mean_scores(scores, [f"{kind}_{score}" for score in SCORES]))
        result["chance"].update(chance_scores(tokenizer, kind, sources))
    for name in COPY_METRICS:
        result.setdefault(name, math.nan)  # paragraphs off
    result["copied_chars_per_token"] = metrics.chars_per_token(copied_chars, gen_tokens)
    return result


def tokenization_stats(tokenizer, texts: Sequence[str]) -> dict[str, float]:
    """Characters per token and tokens per whitespace word of ``texts`` (no special tokens)."""
    counts = token_counts(tokenizer, texts)
    return {
        "chars_per_token": metrics.chars_per_token(counts.characters, counts.tokens),
        "tokens_per_word": metrics.tokens_per_word(counts.tokens, counts.words),
    }


def bits_per_char(model, tokenizer, texts: Sequence[str], window: int = 1024, batch_size: int = 8) -> float:
    """Bits per character of ``texts`` under the model; every character is paid for by exactly one NLL sum.

    Each text is scored after a start token (BOS, else EOS, as at the start of a document) so its first
    token is predicted too. Long texts are cut into windows of ``window`` tokens; each window's first
    prediction is conditioned on the last token of the previous one (truncated context, every token
    scored once).
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_positions:
        window = min(window, int(max_positions))
    chunks: list[list[int]] = []
    chars = 0
    for text in texts:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=start is None)
        ids = list(encoded["input_ids"])
        if not ids:
            continue
        if start is None:
            # Nothing to condition the first token on: leave it and its characters out.
            chars += len(text) - encoded["offset_mapping"][0][1]
        else:
            ids = [start] + ids
            chars += len(text)
        for a in range(0, len(ids) - 1, window):
            chunks.append(ids[a : a + window + 1])
    if chars == 0:
        raise LEPError("no held-out text to score for bits per character")
    device = model_device(model)
    vocab = len(tokenizer)
    # Bound the float32 logits of one forward pass (~256 MiB) so a 128k vocabulary fits in memory.
    per_batch = max(1, min(batch_size, (64 << 20) // max(1, window * vocab)))
    chunks.sort(key=len)
    nll = 0.0
    for a in range(0, len(chunks), per_batch):
        batch = chunks[a : a + per_batch]
        width = max(len(c) for c in batch) - 1
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, chunk in enumerate(batch):
            n = len(chunk) - 1
            ids[r, :n] = torch.tensor(chunk[:-1])
            labels[r, :n] = torch.tensor(chunk[1:])
            mask[r, :n] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        total, _ = metrics.summed_token_nll(logits, labels.to(device))
        nll += total
    return metrics.bits_per_character(nll, chars)


def summary_prefixes(labels: Sequence[str]) -> dict[str, str]:
    """The short name of each text label in a record's ``summary``: its first path part ("ru/heldout" ->
    "ru", the language where the files are laid out per language), or the whole label if that clashes."""
    firsts = [label.split("/", 1)[0] for label in labels]
    return {label: first if firsts.count(first) == 1 else label for label, first in zip(labels, firsts)}


def summary(per_text: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """(scores, chance levels) of the copy metrics keyed ``<text>_<name>``: ``ru_strict`` is the Russian
    sentence strict score, ``ru_exact``, ``ru_copy`` (Darumeru), ``ru_paragraph_strict``, ... (see
    :data:`SUMMARY_NAMES`)."""
    scores: dict[str, float] = {}
    chance: dict[str, float] = {}
    for label, prefix in summary_prefixes(list(per_text)).items():
        for metric, short in SUMMARY_NAMES.items():
            scores[f"{prefix}_{short}"] = per_text[label][metric]
            chance[f"{prefix}_{short}"] = per_text[label]["chance"].get(metric, math.nan)
    return scores, chance


def evaluate_model(
    model, tokenizer, tasks: Sequence[CopyTasks], settings: EvalSettings, name: str = "model", progress: bool = False
) -> dict[str, Any]:
    """The result record of one model over every held-out file (model left in its previous train/eval mode).

    ``texts.<label>`` holds every metric of :data:`METRICS`, ``chance`` (each copy metric's chance level)
    and ``samples``; ``summary`` / ``summary_chance`` the copy metrics and their chance levels under short
    keys (``ru_strict``); ``progress`` shows a bar over the samples on a terminal (stderr)."""
    style = resolve_prompt_style(tokenizer, settings.prompt_style)
    began = time.perf_counter()
    per_text: dict[str, dict[str, Any]] = {}
    total = sum(len(t.sentences) + (len(t.paragraphs) if settings.paragraphs else 0) for t in tasks)
    # disable=None: tqdm draws only on a terminal, so logs and CI output stay clean
    with (
        inference_mode(model),
        tqdm(total=total, desc=name, unit="sample", disable=None if progress else True, leave=False) as bar,
    ):
        for task in tasks:
            row: dict[str, Any] = {}
            row.update(copy_task_scores(model, tokenizer, task, settings, style, progress=bar.update))
            row.update(tokenization_stats(tokenizer, task.heldout))
            row["bits_per_char"] = (
                bits_per_char(model, tokenizer, task.heldout, settings.bpc_window, settings.batch_size)
                if settings.bpc_chars
                else math.nan
            )
            row["samples"] = {
                "sentences": len(task.sentences),
                "paragraphs": len(task.paragraphs) if settings.paragraphs else 0,
            }
            per_text[task.label] = {k: row[k] for k in (*METRICS, "chance", "samples")}
            if settings.log_samples:
                per_text[task.label]["log"] = row["log"]
    scores, chance = summary(per_text)
    return {
        "model": name,
        "prompt_style": style,
        "vocab_size": len(tokenizer),
        "texts": per_text,
        "summary": scores,
        "summary_chance": chance,
        "seconds": round(time.perf_counter() - began, 3),
    }


def flat_metrics(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{prefix}{text}/{metric}: value`` of a result record and ``{prefix}{text}/chance/{metric}`` of each
    copy metric's chance level (for trainer logs: the chance curve beside the score)."""
    flat = {
        f"{prefix}{label}/{name}": float(values[name]) for label, values in record["texts"].items() for name in METRICS
    }
    for label, values in record["texts"].items():
        flat.update({f"{prefix}{label}/chance/{name}": float(v) for name, v in values.get("chance", {}).items()})
    return flat


def check_model_dir(path: str | os.PathLike) -> Path:
    """``path`` if it is an HF model dir (has a ``config.json``); one clear error if not."""
    path = Path(path)
    if not path.is_dir():
        raise LEPError(f"model dir {path} does not exist")
    if not (path / "config.json").is_file():
        raise LEPError(f"{path} is not a model dir (no config.json)")
    return path


def load_model(path: str | os.PathLike, device: str | None = None, dtype: str = "auto"):
    """(model, tokenizer) of an HF causal-LM dir on ``device`` (see ``common.devices``); one clear error if
    it is not one."""
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    path = check_model_dir(path)
    tokenizer = load_tokenizer(path)
    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    except Exception as err:  # transformers raises many types for a broken checkpoint
        raise LEPError(f"cannot load the model in {path}: {err}") from err
    return model.to(target), tokenizer

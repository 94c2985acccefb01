"""Builders of the locally made test fixtures (no hub): real tokenizers from mistral-common and tiny
random models saved as sharded safetensors with those tokenizers."""

from __future__ import annotations

from pathlib import Path

import torch

from lep_plugin.vocab.mistral import (
    import_mistral_common_tokenizer,
    mistral_common_file,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RU_TRAIN = SHARED_DATA / "ru" / "train.jsonl"
RU_HELDOUT = SHARED_DATA / "ru" / "heldout.jsonl"
EN_HELDOUT = SHARED_DATA / "en" / "heldout.jsonl"


def build_mistral_tokenizer(out: Path) -> Path:
    """The Mistral-7B v0.1 SentencePiece vocabulary (32,000) as an HF fast tokenizer dir."""
    return import_mistral_common_tokenizer(mistral_common_file("tokenizer.model.v1"), out)


def build_tekken_tokenizer(out: Path) -> Path:
    """The 131k byte-level Tekken BPE (Llama-3-like) as an HF fast tokenizer dir."""
    return import_mistral_common_tokenizer(mistral_common_file("tekken_240718.json"), out)


def build_tiny_model(
    arch: str,
    tokenizer_dir: Path,
    out: Path,
    hidden: int = 64,
    layers: int = 2,
    tie: bool = False,
    seed: int = 0,
    shard_size: str = "2MB",
) -> Path:
    """A randomly initialised tiny ``arch`` ("llama", "mistral", any transformers model type) model with
    the given tokenizer (the families' own tiny models: ``lep_plugin.demo.families``)."""
    from lep_plugin.common.tokenizers import load_tokenizer
    from lep_plugin.demo.families import save_random_model, tiny_config

    config = tiny_config(arch, load_tokenizer(tokenizer_dir), hidden, layers, tie)
    return save_random_model(config, tokenizer_dir, out, seed, shard_size)


def read_texts(path: Path, limit: int | None = None) -> list[str]:
    from lep_plugin.common.corpus import first_texts

    return first_texts([path], limit)


def write_corpus_slice(path: Path, out: Path, docs: int) -> Path:
    """The first ``docs`` documents of a jsonl corpus (fast vocabulary builds in tests)."""
    with open(path, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= docs:
                break
            dst.write(line)
    return out


def generate_from_chat(model, tok, text: str, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, greedy output ids) for one user message through the tokenizer's chat template: the
    check that a model dir is chat-ready. ``apply_chat_template`` returns a tensor or, in newer
    transformers, a BatchEncoding; both are accepted."""
    prompt = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt")
    ids = prompt if isinstance(prompt, torch.Tensor) else prompt["input_ids"]
    return ids, model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)

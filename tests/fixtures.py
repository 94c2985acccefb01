"""Builders of the locally made test fixtures (no hub): real tokenizers from mistral-common and tiny
random Llama / Mistral models saved as sharded safetensors with those tokenizers."""

from __future__ import annotations

import json
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
    """A randomly initialised tiny ``arch`` ("llama" or "mistral") model with the given tokenizer."""
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}[arch]
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    model.save_pretrained(str(out), max_shard_size=shard_size, safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def read_texts(path: Path, limit: int | None = None) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
            if limit and len(texts) >= limit:
                break
    return texts


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

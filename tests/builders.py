"""Builders of the tests' local fixtures (no hub), used by the session fixtures in ``conftest.py``:

- real tokenizers from mistral-common and tiny random models saved as sharded safetensors with them;
- base / instruct / adapted trios of tiny models for the lep-merge tests: base = a tiny model (random d=64
  weights, real tokenizer); instruct = base with perturbed non-embedding weights and embedding rows, plus one
  added chat marker (``<|im_end|>``, appended with its own instruct row) and a chat template using it;
  adapted = base converted to a new BPE vocabulary of the Russian corpus (T-initialised, as `lep vocab convert`
  does) with its embeddings then moved, as embedding training would;
- session caches of the families' tokenizer layouts and tiny models (behind ``family_layouts`` and
  ``tiny_families``), each built on first use from the Mistral and Tekken tokenizers the session imported.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lep_plugin.demo.families import (
    LAYOUT_SOURCES,
    LAYOUTS,
    build_layout,
    family,
    tiny_base,
    tiny_instruct,
)
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.mistral import (
    import_mistral_common_tokenizer,
    mistral_common_file,
)
from lep_plugin.vocab.options import VocabOptions

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
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt if isinstance(prompt, torch.Tensor) else prompt["input_ids"]
    return ids, model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)


CHAT_MARKER = "<|im_end|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


@dataclass(frozen=True)
class Trio:
    base: Path
    instruct: Path
    adapted: Path
    new_tokenizer: Path


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def build_instruct(base: Path, out: Path, seed: int = 1) -> Path:
    from transformers import AutoTokenizer

    model = _load(base)
    tok = AutoTokenizer.from_pretrained(str(base))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, param in model.named_parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=g))
        tok.add_tokens([CHAT_MARKER], special_tokens=True)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        marker = tok.convert_tokens_to_ids(CHAT_MARKER)
        model.get_input_embeddings().weight[marker] = torch.randn(model.config.hidden_size, generator=g)
        if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
            model.get_output_embeddings().weight[marker] = torch.randn(model.config.hidden_size, generator=g)
    tok.chat_template = CHAT_TEMPLATE
    model.generation_config.eos_token_id = [tok.eos_token_id, marker]
    model.save_pretrained(str(out), max_shard_size="2MB", safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def build_adapted(base: Path, new_tok_dir: Path, out: Path, seed: int = 2) -> Path:
    from transformers import AutoTokenizer

    from lep_plugin.vocab.convert import convert_embeddings

    model = _load(base)
    old = AutoTokenizer.from_pretrained(str(base))
    new = AutoTokenizer.from_pretrained(str(new_tok_dir))
    convert_embeddings(model, new, old)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # "training" moved the new rows
        model.get_input_embeddings().weight.add_(
            0.01 * torch.randn(model.get_input_embeddings().weight.shape, generator=g)
        )
        out_emb = model.get_output_embeddings()
        if out_emb.weight is not model.get_input_embeddings().weight:
            out_emb.weight.add_(0.01 * torch.randn(out_emb.weight.shape, generator=g))
    model.save_pretrained(str(out), max_shard_size="2MB", safe_serialization=True)
    new.save_pretrained(str(out))
    return out


def build_trio(root: Path, base: Path, corpus: Path, new_tokenizer: Path | None = None) -> Trio:
    """A trio on ``base``; ``new_tokenizer``: reuse a vocabulary already built from the same old tokenizer."""
    new_tok = root / "new-tokenizer"
    if new_tokenizer is not None:
        shutil.copytree(new_tokenizer, new_tok)
    else:
        build_vocabulary(base, [corpus], VocabOptions(method="bpe", vocab_size=3000, max_chars=300_000), new_tok)
    return Trio(base, build_instruct(base, root / "instruct"), build_adapted(base, new_tok, root / "adapted"), new_tok)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def index_of(model_dir: Path) -> dict:
    return json.loads((model_dir / "model.safetensors.index.json").read_text())


# the byte-level BPEs (131k) cut for the tiny end-to-end models: the layout is the same, the models small
TINY_BPE = {"llama3": 8000, "qwen": 8000}


class LayoutCache:
    """``get(layout)``: the full-size tokenizer of a layout; ``get(layout, bpe_size)``: a cut one."""

    def __init__(self, root: Path, sources: dict[str, Path]):
        self.root = root
        self.sources = sources  # imported shipped tokenizers: {"mistral": dir, "tekken": dir}
        self._dirs: dict[tuple[str, int | None], Path] = {}

    def get(self, layout: str, bpe_size: int | None = None) -> Path:
        key = (layout, bpe_size)
        if key not in self._dirs:
            out = self.root / f"{layout}-{bpe_size or 'full'}"
            self._dirs[key] = build_layout(layout, out, bpe_size, self.sources.get(LAYOUT_SOURCES[layout]))
        return self._dirs[key]


ALL_LAYOUTS = list(LAYOUTS)


@dataclass(frozen=True)
class TinyFamily:
    name: str
    base: Path
    instruct: Path


class FamilyCache:
    """``get(name)``: the tiny base and instruct models of a family (random weights, d=64, 2 layers)."""

    def __init__(self, root: Path, layouts: LayoutCache):
        self.root = root
        self.layouts = layouts
        self._models: dict[str, TinyFamily] = {}

    def get(self, name: str) -> TinyFamily:
        if name not in self._models:
            layout = family(name).layout
            tokenizer = self.layouts.get(layout, TINY_BPE.get(layout))
            base = tiny_base(name, tokenizer, self.root / name / "base")
            self._models[name] = TinyFamily(name, base, tiny_instruct(name, base, self.root / name / "instruct"))
        return self._models[name]


def merge_args(trio: Trio, output: Path, adapted: Path | None = None) -> list[str]:
    """``lep-merge``'s four model arguments for a trio (its own adapted model unless ``adapted`` is given)."""
    return [
        "--base", str(trio.base), "--instruct", str(trio.instruct),
        "--adapted", str(adapted if adapted is not None else trio.adapted), "--output", str(output),
    ]  # fmt: skip

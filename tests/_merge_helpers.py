"""Base / instruct / adapted trios of tiny models for the lep-merge tests (built once per session).

- base: the conftest tiny model (random d=64 weights, real tokenizer);
- instruct: base with perturbed non-embedding weights and embedding rows, plus one added chat marker
  (``<|im_end|>``, appended with its own instruct row) and a chat template using it;
- adapted: base converted to a new BPE vocabulary of the Russian corpus (T-initialised, as `lep vocab
  convert` does) with its embeddings then moved, as embedding training would.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.options import VocabOptions

CHAT_MARKER = "<|im_end|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)

_CACHE: dict[str, "Trio"] = {}


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
        for name, param in model.named_parameters():
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
        model.get_input_embeddings().weight.add_(0.01 * torch.randn(model.get_input_embeddings().weight.shape, generator=g))
        out_emb = model.get_output_embeddings()
        if out_emb.weight is not model.get_input_embeddings().weight:
            out_emb.weight.add_(0.01 * torch.randn(out_emb.weight.shape, generator=g))
    model.save_pretrained(str(out), max_shard_size="2MB", safe_serialization=True)
    new.save_pretrained(str(out))
    return out


def build_trio(root: Path, base: Path, corpus: Path, key: str) -> Trio:
    if key in _CACHE:
        return _CACHE[key]
    new_tok = root / "new-tokenizer"
    if key.endswith("tied") and "mistral" in _CACHE:
        shutil.copytree(_CACHE["mistral"].new_tokenizer, new_tok)  # same old tokenizer: reuse its vocabulary
    else:
        build_vocabulary(base, [corpus], VocabOptions(method="bpe", vocab_size=3000, max_chars=300_000), new_tok)
    trio = Trio(base, build_instruct(base, root / "instruct"), build_adapted(base, new_tok, root / "adapted"), new_tok)
    _CACHE[key] = trio
    return trio


@pytest.fixture(scope="session")
def mistral_trio(tmp_path_factory, tiny_mistral, ru_corpus_small) -> Trio:
    return build_trio(tmp_path_factory.mktemp("trio-mistral"), tiny_mistral, ru_corpus_small, "mistral")


@pytest.fixture(scope="session")
def tied_trio(tmp_path_factory, tiny_llama_tied, ru_corpus_small, mistral_trio) -> Trio:
    return build_trio(tmp_path_factory.mktemp("trio-tied"), tiny_llama_tied, ru_corpus_small, "llama-tied")


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def index_of(model_dir: Path) -> dict:
    return json.loads((model_dir / "model.safetensors.index.json").read_text())

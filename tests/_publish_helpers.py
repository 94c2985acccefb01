"""Reading a GGUF file back with the ``gguf`` package and comparing it with the HF model it came from:
the tokens in id order, the special-token ids and (for an f32 export) every tensor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# HF special-token attribute -> GGUF metadata key
SPECIAL_KEYS = {
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
    "unk_token_id": "tokenizer.ggml.unknown_token_id",
    "pad_token_id": "tokenizer.ggml.padding_token_id",
}


def field(reader, key: str):
    found = reader.get_field(key)
    return None if found is None else found.contents()


def read_gguf(path: Path):
    """The file parsed once (the ``gguf`` reader takes ~14 s for a 131k vocabulary with its merges)."""
    from gguf import GGUFReader

    return GGUFReader(str(path))


def check_tokenizer(reader, model_dir: Path) -> dict:
    """Tokens in id order and special ids of the GGUF equal the HF tokenizer's; returns the GGUF metadata
    that was compared."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tokens = field(reader, "tokenizer.ggml.tokens")
    hf = tok.convert_ids_to_tokens(list(range(len(tok))))
    assert len(tokens) >= len(tok)
    mismatched = [i for i, (a, b) in enumerate(zip(tokens, hf)) if a != b]
    assert not mismatched, f"{len(mismatched)} tokens differ, first: {[(i, tokens[i], hf[i]) for i in mismatched[:3]]}"
    assert all(t.startswith("[PAD") for t in tokens[len(tok) :])  # embedding rows beyond the tokenizer
    for attr, key in SPECIAL_KEYS.items():
        value = getattr(tok, attr)
        if value is not None:
            assert field(reader, key) == value, (attr, field(reader, key), value)
    return {
        "tokens": len(tokens),
        "model": field(reader, "tokenizer.ggml.model"),
        "pre": field(reader, "tokenizer.ggml.pre"),
    }


def _hf_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        tensors |= load_file(str(file))
    return tensors


def _llama_rope_layout(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp stores Llama/Mistral q/k projections with each head's two rotary halves interleaved."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def check_tensors(reader, model_dir: Path) -> int:
    """Every HF tensor equals its GGUF tensor (f32 export of a Llama-architecture model); returns how many."""
    import gguf

    config = json.loads((Path(model_dir) / "config.json").read_text())
    stored = {t.name: np.asarray(t.data) for t in reader.tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    compared = 0
    for name, weight in _hf_tensors(model_dir).items():
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert target in stored, f"{name} -> {target} not in the GGUF"
        if name.endswith("q_proj.weight"):
            weight = _llama_rope_layout(weight, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            weight = _llama_rope_layout(weight, config["num_key_value_heads"])
        data = stored.pop(target)
        assert data.dtype == np.float32 and data.shape == tuple(weight.shape), (
            name,
            data.dtype,
            data.shape,
            weight.shape,
        )
        assert np.array_equal(data, weight.float().numpy()), name
        compared += 1
    assert not stored, f"GGUF tensors without an HF tensor: {sorted(stored)}"
    return compared


def fake_eval_json(path: Path, models: list[str]) -> Path:
    """A ``lep eval --json`` file (the record layout of ``evaluate_model``) for card tests."""
    from lep_plugin.evaluation.evaluate import METRICS

    records = [
        {
            "model": m,
            "texts": {"ru": {metric: 0.5 + 0.1 * k for metric in METRICS}, "en": {metric: 0.25 for metric in METRICS}},
        }
        for k, m in enumerate(models)
    ]
    path.write_text(
        json.dumps({"settings": {}, "texts": ["ru.jsonl", "en.jsonl"], "results": records}), encoding="utf-8"
    )
    return path


def lep_exit_code(args: list[str]) -> int:
    """``lep ARGS`` in this process: its exit code (0 when it returns)."""
    from lep_plugin.cli.lep import main as lep_main

    try:
        lep_main(args)
    except SystemExit as done:
        return done.code or 0
    return 0

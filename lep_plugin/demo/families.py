"""The model families people adapt, rebuilt locally: tokenizers in each family's *layout* and tiny models of
its architecture (the facts are in FAMILIES.md beside the project's data).

No hub is reachable here, so each tokenizer is rebuilt from a real BPE that ships in ``mistral-common``
(the Tekken byte-level BPE, or the Mistral-7B SentencePiece vocabulary) and laid out the way the family
lays out its own: where the special and added tokens sit (inside the BPE vocabulary or appended after
it), how BOS is inserted, the chat markers and template, and how many embedding rows the model has. The
merges are not the family's; the layout is what the vocabulary tools must get right.

* ``llama3`` – byte-level BPE (the first 128,000 Tekken ranks), 256 specials *appended* as added tokens,
  BOS by a ``TemplateProcessing`` post-processor, turns end on ``<|eot_id|>``;
* ``qwen`` (Qwen2, 2.5, 3) – byte-level BPE, added tokens appended (some not special: ``<tool_call>``,
  ``<think>``), no BOS, ChatML, model rows padded past the tokenizer;
* ``gemma`` – SentencePiece-style BPE with byte fallback, specials *inside* (``<pad>`` 0, ``<eos>`` 1,
  ``<bos>`` 2, ``<unk>`` 3, ``<start_of_turn>`` 106), no dummy prefix, BOS;
* ``phi3`` – the Llama-2 SentencePiece vocabulary with chat tokens appended after 32,000;
* ``mistral`` / ``mistral-v3`` / ``tekken`` – the real Mistral tokenizers (specials inside).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lep_plugin.common.fs import atomic_output_dir
from lep_plugin.common.tokenizers import (
    load_tokenizer,
    save_tokenizer_dir,
    tokenizer_json,
)
from lep_plugin.errors import LEPError
from lep_plugin.vocab.mistral import (
    import_mistral_common_tokenizer,
    mistral_common_file,
    set_bos_template,
)
from lep_plugin.vocab.operator import padded_size

MISTRAL_V1 = "tokenizer.model.v1"
MISTRAL_V3 = "mistral_instruct_tokenizer_240323.model.v3"
TEKKEN = "tekken_240718.json"
TEKKEN_CONTROL_TOKENS = 1000  # Tekken's control tokens, ids 0-999, inside its vocabulary

LLAMA3_BPE = 128_000
LLAMA3_SPECIALS = 256
# Llama-3.1's named specials at their offsets after the BPE; the rest are <|reserved_special_token_N|>
LLAMA3_NAMED = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    4: "<|finetune_right_pad_id|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    8: "<|eom_id|>",
    9: "<|eot_id|>",
    10: "<|python_tag|>",
}
LLAMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim "
    "+ '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Qwen2.5 appends these after its 151,643 BPE tokens (151,643-151,664); Qwen3 adds four more. The
# tool-call and fill-in-the-middle markers are added tokens that are *not* special.
QWEN25_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN25_NOT_SPECIAL = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
QWEN3_NOT_SPECIAL = ["<tool_response>", "</tool_response>", "<think>", "</think>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

GEMMA_FRONT = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]"]
GEMMA_TURN = ["<start_of_turn>", "<end_of_turn>"]  # ids 106, 107: after <unused0> ... <unused99>
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# Phi-3 (mini) appends these after the Llama-2 vocabulary's 32,000 tokens; the model has 32,064 rows
PHI3_APPENDED = [
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
]
PHI3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


# ------------------------------------------------------------------------------------------ tokenizers


def _added(content: str, token_id: int, special: bool = True, rstrip: bool = False) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": rstrip,
        "normalized": False,
        "special": special,
    }


def _save(spec: dict[str, Any], out: Path, chat_template: str, **special: str | None) -> Path:
    """Write ``spec`` as an HF tokenizer dir with the given special tokens and chat template."""
    like = SimpleNamespace(
        model_max_length=131072,
        padding_side="left",
        chat_template=chat_template,
        bos_token=None,
        eos_token=None,
        unk_token=None,
        pad_token=None,
    )
    like.__dict__.update(special)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer_dir(spec, like, out)
    return out


def _source_spec(name: str, source: Path | None) -> dict[str, Any]:
    """The tokenizer.json of the shipped tokenizer ``name``: read from ``source`` (a dir it was imported to
    before; importing Tekken takes ~20 s) or imported now."""
    if source is not None:
        return tokenizer_json(load_tokenizer(source))
    with tempfile.TemporaryDirectory() as tmp:
        return tokenizer_json(
            load_tokenizer(import_mistral_common_tokenizer(mistral_common_file(name), Path(tmp) / "t"))
        )


def _merge_kept(merge, vocab: dict[str, int]) -> bool:
    a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
    return a in vocab and b in vocab and a + b in vocab


def _tekken_bpe(source: Path | None, size: int | None) -> dict[str, Any]:
    """Tekken's pipeline around its BPE part alone: the control tokens (ids 0-999) and their BOS step
    removed, the BPE renumbered from 0 and cut to its first ``size`` ranks.

    Tekken's ranks grow with merge order (each token is merged from lower-ranked ones, the byte alphabet
    comes first), so its first N ranks with the merges among them are a complete smaller BPE.
    """
    spec = _source_spec(TEKKEN, source)
    order = sorted((i, t) for t, i in spec["model"]["vocab"].items() if i >= TEKKEN_CONTROL_TOKENS)
    if size is not None:
        if not 256 <= size <= len(order):
            raise LEPError(f"a byte-level BPE of {size} tokens cannot be cut from Tekken's {len(order)}")
        order = order[:size]
    vocab = {t: n for n, (_, t) in enumerate(order)}
    spec["model"] = {
        **spec["model"],
        "vocab": vocab,
        "merges": [m for m in spec["model"]["merges"] if _merge_kept(m, vocab)],
    }
    spec["added_tokens"] = []
    spec["post_processor"] = spec["post_processor"]["processors"][0]  # the ByteLevel step, without BOS
    return spec


def llama3_tokenizer(out: Path, bpe_size: int | None = None, source: Path | None = None) -> Path:
    """Llama-3 layout: byte-level BPE, then 256 special tokens appended as added tokens; BOS by the
    post-processor; the Instruct model's ``<|eot_id|>`` ends turns."""
    spec = _tekken_bpe(source, bpe_size or LLAMA3_BPE)
    size = len(spec["model"]["vocab"])
    reserved = iter(range(LLAMA3_SPECIALS))
    names = [LLAMA3_NAMED.get(i) or f"<|reserved_special_token_{next(reserved)}|>" for i in range(LLAMA3_SPECIALS)]
    spec["added_tokens"] = [_added(name, size + i) for i, name in enumerate(names)]
    set_bos_template(spec, "<|begin_of_text|>", size)
    return _save(spec, out, LLAMA3_CHAT_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")


def qwen_tokenizer(out: Path, bpe_size: int | None = None, source: Path | None = None) -> Path:
    """Qwen2 / Qwen2.5 / Qwen3 layout: byte-level BPE, then added tokens appended from ``<|endoftext|>`` on
    (Qwen3's list: Qwen2.5's 22 and ``<tool_response>``, ``<think>`` ...; the tool and think markers are
    not special); NFC normalizer, no BOS, ChatML."""
    spec = _tekken_bpe(source, bpe_size)
    spec["normalizer"] = {"type": "NFC"}
    size = len(spec["model"]["vocab"])
    tokens = [(t, True) for t in QWEN25_SPECIAL] + [(t, False) for t in QWEN25_NOT_SPECIAL + QWEN3_NOT_SPECIAL]
    spec["added_tokens"] = [_added(t, size + i, special) for i, (t, special) in enumerate(tokens)]
    return _save(spec, out, CHATML_TEMPLATE, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def gemma_tokenizer(out: Path, bpe_size: int | None = None, source: Path | None = None) -> Path:
    """Gemma 2/3 layout: SentencePiece-style BPE with byte fallback and its specials inside the vocabulary;
    spaces become ``▁`` by a normalizer (no dummy prefix); BOS by the post-processor."""
    spec = _source_spec(MISTRAL_V1, source)
    model = spec["model"]
    pieces = [t for t, i in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if i >= 3]  # bytes, then pieces
    front = GEMMA_FRONT + [f"<unused{i}>" for i in range(106 - len(GEMMA_FRONT))] + GEMMA_TURN
    pieces = pieces[: None if bpe_size is None else bpe_size - len(front)]
    vocab = {t: i for i, t in enumerate(front + pieces)}
    merges = [m for m in model["merges"] if _merge_kept(m, vocab)]
    spec["model"] = {**model, "vocab": vocab, "merges": merges, "unk_token": "<unk>"}
    spec["added_tokens"] = [_added(t, i) for i, t in enumerate(front)]
    spec["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    spec["pre_tokenizer"] = {
        "type": "Split",
        "pattern": {"String": " "},
        "behavior": "MergedWithPrevious",
        "invert": False,
    }
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ],
    }
    set_bos_template(spec, "<bos>", vocab["<bos>"])
    return _save(
        spec, out, GEMMA_CHAT_TEMPLATE, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )


def phi3_tokenizer(out: Path, bpe_size: int | None = None, source: Path | None = None) -> Path:
    """Phi-3 (mini) layout: the Llama-2 SentencePiece vocabulary (32,000), chat tokens appended after it."""
    if bpe_size is not None:
        raise LEPError("the phi3 layout keeps its 32,000-token SentencePiece vocabulary")
    spec = _source_spec(MISTRAL_V1, source)
    size = len(spec["model"]["vocab"])
    # Phi-3's chat markers strip the whitespace after them (``<|user|>\n`` encodes as the marker alone)
    spec["added_tokens"] += [_added(t, size + i, rstrip=t != "<|endoftext|>") for i, t in enumerate(PHI3_APPENDED)]
    return _save(
        spec,
        out,
        PHI3_CHAT_TEMPLATE,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
    )


def _imported(name: str) -> Layout:
    def build(out: Path, bpe_size: int | None = None, source: Path | None = None) -> Path:
        if bpe_size is not None:
            raise LEPError(f"the {name} tokenizer is used as it ships; it cannot be cut")
        if source is not None:
            shutil.copytree(source, out, dirs_exist_ok=True)
            return out
        return import_mistral_common_tokenizer(mistral_common_file(name), out)

    return build


Layout = Callable[[Path, "int | None", "Path | None"], Path]
# layout name -> builder(out dir, BPE size or None for the layout's own, source dir or None) -> out
LAYOUTS: dict[str, Layout] = {
    "mistral": _imported(MISTRAL_V1),
    "mistral-v3": _imported(MISTRAL_V3),
    "tekken": _imported(TEKKEN),
    "llama3": llama3_tokenizer,
    "qwen": qwen_tokenizer,
    "gemma": gemma_tokenizer,
    "phi3": phi3_tokenizer,
}
# the shipped tokenizer each layout is made from (what ``source`` must hold)
LAYOUT_SOURCES = {
    "mistral": "mistral",
    "mistral-v3": "mistral-v3",
    "tekken": "tekken",
    "llama3": "tekken",
    "qwen": "tekken",
    "gemma": "mistral",
    "phi3": "mistral",
}


def build_layout(
    layout: str, out: str | os.PathLike, bpe_size: int | None = None, source: str | os.PathLike | None = None
) -> Path:
    """The tokenizer dir of ``layout``, written to ``out``. ``bpe_size`` cuts a byte-level BPE to fewer
    tokens (for tiny models); ``source`` is a dir already holding the imported ``LAYOUT_SOURCES[layout]``."""
    if layout not in LAYOUTS:
        raise LEPError(f"unknown tokenizer layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout](Path(out), bpe_size, None if source is None else Path(source))


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Family:
    """A family's tokenizer layout and the architecture of its tiny models."""

    layout: str
    model_type: str  # the transformers model type (AutoConfig)
    tied: bool
    chat_eos: tuple[str, ...]  # the instruct model's EOS list (generation_config), as token strings
    chat_eos_token: str | None = None  # the instruct tokenizer's eos_token, where it is not the base's
    row_multiple: int | None = None  # the model's rows: the tokenizer's length rounded up (padding rows)
    config: dict[str, Any] = field(default_factory=dict)  # architecture settings of the tiny config


LLAMA3_EOS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
QWEN_EOS = ("<|im_end|>", "<|endoftext|>")
GEMMA_EOS = ("<eos>", "<end_of_turn>")
# Gemma's default head_dim (256) and attention scale would dwarf a d=64 model
GEMMA_TINY = {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64}

FAMILIES: dict[str, Family] = {
    "llama3": Family("llama3", "llama", tied=False, chat_eos=LLAMA3_EOS, chat_eos_token="<|eot_id|>"),
    "llama3.2": Family("llama3", "llama", tied=True, chat_eos=LLAMA3_EOS, chat_eos_token="<|eot_id|>"),
    "mistral": Family("mistral", "mistral", tied=False, chat_eos=("</s>",)),
    "mistral-v3": Family("mistral-v3", "mistral", tied=False, chat_eos=("</s>",)),
    "tekken": Family("tekken", "mistral", tied=False, chat_eos=("</s>",)),  # Mistral NeMo
    # Qwen2.5 pads 151,665 tokens to 151,936 rows; 7B and larger are untied, up to 3B tied
    "qwen2": Family("qwen", "qwen2", tied=False, chat_eos=QWEN_EOS, chat_eos_token="<|im_end|>", row_multiple=128),
    "qwen2-tied": Family("qwen", "qwen2", tied=True, chat_eos=QWEN_EOS, chat_eos_token="<|im_end|>", row_multiple=128),
    "qwen3": Family(
        "qwen",
        "qwen3",
        tied=True,
        chat_eos=QWEN_EOS,
        chat_eos_token="<|im_end|>",
        row_multiple=128,
        config={"head_dim": 16},
    ),
    "gemma2": Family("gemma", "gemma2", tied=True, chat_eos=GEMMA_EOS, config=GEMMA_TINY),
    "gemma3": Family("gemma", "gemma3_text", tied=True, chat_eos=GEMMA_EOS, config=GEMMA_TINY),
    "phi3": Family(
        "phi3",
        "phi3",
        tied=False,
        chat_eos=("<|endoftext|>", "<|assistant|>", "<|end|>"),
        chat_eos_token="<|end|>",
        row_multiple=64,
    ),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise LEPError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def tiny_config(
    model_type: str,
    tok,
    hidden: int = 64,
    layers: int = 2,
    tied: bool = False,
    rows: int | None = None,
    **settings: Any,
):
    """A tiny config of ``model_type`` for ``tok`` (``rows`` ≥ its length); ``settings`` add to or override
    the defaults (Gemma's head size, a longer MLP ...)."""
    from transformers import AutoConfig

    values = {
        "vocab_size": rows or len(tok),
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": tied,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    return AutoConfig.for_model(model_type, **(values | settings))


def save_random_model(config, tokenizer_dir: Path, out: Path, seed: int = 0, shard_size: str = "2MB") -> Path:
    """A model of ``config`` with random weights, saved as sharded safetensors, its tokenizer files beside."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out), max_shard_size=shard_size, safe_serialization=True)
    if Path(tokenizer_dir).resolve() != Path(out).resolve():  # the tokenizer exactly as built
        for path in Path(tokenizer_dir).iterdir():
            if path.is_file():
                shutil.copyfile(path, Path(out) / path.name)
    return out


def tiny_base(name: str, tokenizer_dir: Path, out: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """The family's tiny base model (random weights) on the tokenizer in ``tokenizer_dir``."""

    fam = family(name)
    tok = load_tokenizer(tokenizer_dir)
    rows = padded_size(len(tok), fam.row_multiple)
    config = tiny_config(fam.model_type, tok, hidden, layers, fam.tied, rows, **fam.config)
    return save_random_model(config, tokenizer_dir, out, seed)


# How far the tiny instruct model is from its base, relative to each tensor's RMS: published base/instruct
# pairs differ by < 2 % (Llama-3.1-8B, Shadow-FT), the premise LEP's propagation rests on (METHOD.md)
INSTRUCT_SHIFT = 0.02


def perturb_(tensor, relative: float, generator) -> None:
    """Add Gaussian noise of ``relative`` × the tensor's RMS, in place: a ±2 % move of a 0.02-scale
    projection and of a norm's ones alike (an absolute scale would replace the one, barely touch the other)."""
    import torch

    rms = tensor.double().pow(2).mean().sqrt().item()
    tensor.add_(relative * rms * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))


def tiny_instruct(name: str, base: Path, out: Path, seed: int = 1, shift: float = INSTRUCT_SHIFT) -> Path:
    """The family's tiny "instruct" model: the base with every weight moved by ``shift`` of its RMS
    (instruction tuning changes every layer a little), the chat EOS list in the configs, the instruct
    tokenizer's own ``eos_token``. A related pair, like a published one, not two unrelated random models."""
    import torch
    from transformers import AutoModelForCausalLM

    fam = family(name)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():  # a tied matrix is one parameter: moved once
            perturb_(param, shift, generator)
    tok = load_tokenizer(base)
    if fam.chat_eos_token:
        tok.eos_token = fam.chat_eos_token
    eos = [tok.convert_tokens_to_ids(t) for t in fam.chat_eos]
    model.config.eos_token_id = model.generation_config.eos_token_id = eos if len(eos) > 1 else eos[0]
    model.save_pretrained(str(out), max_shard_size="2MB", safe_serialization=True)
    save_tokenizer_dir(tokenizer_json(tok), tok, Path(out))
    return out


def make_tiny_family(
    name: str,
    output: str | os.PathLike,
    bpe_size: int | None = None,
    hidden: int = 64,
    layers: int = 2,
    force: bool = False,
    source: str | os.PathLike | None = None,
) -> str:
    """``lep tiny``: ``output/base`` and ``output/instruct`` of family ``name`` (random weights, the
    family's tokenizer layout), written atomically; returns a one-line summary."""
    fam = family(name)
    output = Path(output)
    with atomic_output_dir(output, force) as tmp:
        base = build_layout(fam.layout, tmp / "base", bpe_size, source)
        tiny_base(name, base, base, hidden, layers)
        tiny_instruct(name, base, tmp / "instruct")
        tokens = len(load_tokenizer(base))
    tied = "tied" if fam.tied else "untied"
    return (
        f"wrote {output}/base and {output}/instruct: tiny {fam.model_type} ({tied}, d={hidden}, {layers} layers), "
        f"{fam.layout} tokenizer layout of {tokens:,} tokens; "
        f"random base, instruct = base + {INSTRUCT_SHIFT:.0%} noise "
        "(untrained: for trying the tools, not for judging LEP)"
    )

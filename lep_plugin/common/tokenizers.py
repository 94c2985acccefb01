"""Loading, inspecting and saving HF fast tokenizers, and the ``lep_vocab.json`` manifest of a new vocabulary.

A tokenizer's pipeline (normalizer, pre-tokenizer, decoder, post-processor) is handled as the
``tokenizer.json`` dict that the ``tokenizers`` library reads and writes, so a new vocabulary can be
dropped into an old tokenizer's pipeline without re-implementing any of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lep_plugin.common.text import count_words
from lep_plugin.errors import LEPError

Style = Literal["sentencepiece", "byte_level"]

# Written beside every tokenizer the package builds, and into every model trained or merged with one:
# how the vocabulary was made (method, sizes, corpus and old-tokenizer fingerprints).
MANIFEST = "lep_vocab.json"
# a SentencePiece-style byte-fallback token (<0x0A>): one byte, never merged with anything
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def is_byte_piece(token: str) -> bool:
    return BYTE_PIECE.fullmatch(token) is not None


def load_tokenizer(path: str | os.PathLike):
    """An HF fast tokenizer from a tokenizer or model dir; a clear error if there is none."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise LEPError(f"tokenizer dir {path} does not exist")
    if not (path / "tokenizer.json").is_file():
        raise LEPError(f"{path} has no tokenizer.json (a fast HF tokenizer is required; see `lep vocab import`)")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # transformers raises many types for a broken dir
        raise LEPError(f"cannot load the tokenizer in {path}: {err}") from err
    if not getattr(tok, "is_fast", False):
        raise LEPError(f"the tokenizer in {path} is not a fast (tokenizers-backed) tokenizer")
    return tok


def tokenizer_json(tok) -> dict[str, Any]:
    """The backend pipeline as the ``tokenizer.json`` dict."""
    return json.loads(tok.backend_tokenizer.to_str())


def fingerprint_tokenizer(tok) -> str:
    """Content hash of the pipeline and vocabulary (not of file names or timestamps)."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def _contains_type(node: Any, kind: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == kind or any(_contains_type(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_contains_type(v, kind) for v in node)
    return False


def tokenizer_style(spec: dict[str, Any]) -> Style:
    """'byte_level' (GPT-2/Llama-3/Tekken/Qwen) or 'sentencepiece' (Llama-2/Mistral: ▁ and byte fallback)."""
    model = spec.get("model", {})
    if model.get("type") not in ("BPE", "Unigram"):
        raise LEPError(f"unsupported tokenizer model type {model.get('type')!r}: only BPE and Unigram are supported")
    if _contains_type(spec.get("pre_tokenizer"), "ByteLevel"):
        return "byte_level"
    if (
        model.get("byte_fallback")
        or _contains_type(spec.get("pre_tokenizer"), "Metaspace")
        or "▁" in json.dumps(spec.get("normalizer"), ensure_ascii=False)
    ):
        return "sentencepiece"
    raise LEPError("unsupported tokenizer: neither byte-level nor SentencePiece-style (▁ with byte fallback)")


def special_token_strings(tok) -> list[str]:
    """Strings of all special and added tokens (bos/eos/unk/pad, chat markers) in id order."""
    added = sorted(tok.added_tokens_decoder.items())
    names = [t.content for _, t in added]
    for value in (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token):
        if value and value not in names:
            names.append(value)
    return names


def save_tokenizer_dir(spec: dict[str, Any], like, output: Path, extra_files: dict[str, Any] | None = None) -> None:
    """Write ``spec`` (a tokenizer.json dict) as an HF tokenizer dir carrying ``like``'s special tokens,
    chat template, ``model_max_length`` and padding side.

    Saved with the generic fast-tokenizer class so that the pipeline in ``tokenizer.json`` is used
    verbatim (model-specific classes may rebuild parts of it).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    kwargs = {
        name: getattr(like, name)
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        if getattr(like, name, None) is not None
    }
    new = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=like.model_max_length,
        padding_side=like.padding_side,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    if getattr(like, "chat_template", None):
        new.chat_template = like.chat_template
    new.save_pretrained(str(output))
    # tokenizer.json exactly as built (save_pretrained may re-serialise with library defaults)
    (output / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    for name, content in (extra_files or {}).items():
        (output / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The ``lep_vocab.json`` of a tokenizer or model dir, or None if it has none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise LEPError(f"{path} is not a readable LEP manifest: {err}") from None


@dataclass(frozen=True)
class TokenCounts:
    """Characters, whitespace words and tokens (no special tokens) of some texts."""

    characters: int
    words: int
    tokens: int

    @property
    def chars_per_token(self) -> float:
        return self.characters / max(self.tokens, 1)

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / max(self.words, 1)


def token_counts(tok, texts: Iterable[str], batch_size: int = 128) -> TokenCounts:
    """The one way texts are counted for characters per token and tokens per word (streamed in batches)."""
    backend = tok.backend_tokenizer
    characters = words = tokens = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal tokens
        tokens += sum(len(e.ids) for e in backend.encode_batch(batch, add_special_tokens=False))
        batch.clear()

    for text in texts:
        characters += len(text)
        words += count_words(text)
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return TokenCounts(characters, words, tokens)


def chars_per_token_change(old_tok, new_tok, texts: list[str]) -> dict[str, float]:
    """Characters per token of ``texts`` under the old and the new tokenizer, and how many times fewer
    tokens the new one needs (the number LEP is for)."""
    old, new = token_counts(old_tok, texts), token_counts(new_tok, texts)
    return {"old": old.chars_per_token, "new": new.chars_per_token, "gain": old.tokens / max(new.tokens, 1)}
